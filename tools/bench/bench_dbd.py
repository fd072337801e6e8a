#!/usr/bin/env python3
"""Differentiable beam-search decoding (loss ``dbd``): forward + backward time and peak memory
against the beam size, as a ratio to the CTC loss on the same batch and to the project's
yardstick (torch ``ctc_loss`` fwd+bwd, B=16, T=500, V=500, U=100).

Batch: B=8 utterances of T=300 output frames over 48 phones + blank, transcripts of T/4
phones from a fixed random Markov chain (``bench_mmi.phone_sequences``); the outputs are
peaky along an even alignment of the transcript, plus noise (random outputs would make every
path alike and the beam meaningless). Graph: ``H o G`` for CTC, G a phone bigram with exact
back-off and trainable log-weights (:func:`wfst_asr.graphs.trainable.ctc_lm_graph`): the
recipe's graph when ``--arpa`` gives TIMIT's ``data/lang_phone/lm.arpa``, else a bigram
estimated on 2,000 sequences of the same chain (same size: 49 x 49 G arcs). The beam size is
``max_active_states`` (hypotheses kept per frame), search beam 20, lattice beam 8
(``dbd_exact``: no search, the exact sum over the graph, as LF-MMI on it); gradients
go to the outputs and to the LM's weights. Each case runs in a fresh subprocess (its peak RSS
growth is its own, :mod:`_children`), median of ``--rounds``.

``--config FILE`` (a recipe's DBD config, run from its folder, e.g. ``egs/ljspeech`` with
``conf/dbd_phone.yaml``): the recipe's graph as the criterion builds it (``H o L o G``, G the
word 3-gram), its search and lattice beams; the batch is the first B training transcripts
that fit (words, spelled by their first pronunciation for the peaky outputs), the outputs
the config's tokens + blank.

    python tools/bench/bench_dbd.py [--arpa PATH | --config FILE] [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import math
import os
import sys

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _children import measure, parent_or_child
from bench_fsa import case_torch_ctc
from bench_mmi import NUM_PHONES, phone_sequences

from wfst_asr.graphs.lm import ngram_acceptor
from wfst_asr.graphs.ngram import estimate_ngram, read_arpa
from wfst_asr.graphs.trainable import NgramScores, TrainableGraph, ctc_lm_graph
from wfst_asr.losses import CtcLoss
from wfst_asr.losses.dbd import DbdLoss

B, T = 8, 300
BEAMS = (4, 16, 64, 256)
CASES = ("torch_ctc_ref", "ctc", *(f"dbd_{k}" for k in BEAMS), "dbd_exact")


def _arpa() -> str | None:
    return os.environ.get("BENCH_DBD_ARPA") or None


def _config() -> str | None:
    return os.environ.get("BENCH_DBD_CONFIG") or None


def _recipe() -> tuple[DbdLoss, list[list[int]], list[list[int]], int]:
    """The criterion of ``--config``, B training transcripts (word ids) that fit in T frames,
    their first pronunciations (token ids) and the number of outputs."""
    from lhotse import load_manifest_lazy

    from wfst_asr.train import build_model_and_loss, load_config
    from wfst_asr.train.criteria import _lexicon_ids, target_table
    cfg = load_config(_config())
    crit = build_model_and_loss(cfg)[1]
    table = target_table(cfg)
    pron: dict[int, list[int]] = {}
    for w, toks, _ in _lexicon_ids(cfg.to_dict(), cfg.loss_kwargs["lexicon"]):
        pron.setdefault(w, toks)
    words, spelled = [], []
    for cut in load_manifest_lazy(cfg.train_cuts):
        ids = [table[w] for sup in cut.supervisions for w in sup.text.split()]
        toks = [t for w in ids for t in pron[w]]
        if len(toks) <= T // 3:
            words.append(ids)
            spelled.append(toks)
        if len(words) == B:
            break
    return crit, words, spelled, crit.num_outputs


def batch(spelled: list[list[int]] | None = None, num_outputs: int = NUM_PHONES + 1
          ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    g = torch.Generator().manual_seed(1)
    texts = spelled or [s[:T // 4] for s in phone_sequences(B, seed=101, mean_len=T // 3)]
    x = torch.randn(B, T, num_outputs, generator=g)
    for b, s in enumerate(texts):
        for t in range(T):
            k = t * len(s) // T
            pos = t * len(s) / T - k
            x[b, t, s[k] if pos < 0.5 else 0] += 4.0
    return x.requires_grad_(True), torch.full((B,), T), texts


def _graph() -> TrainableGraph:
    path = _arpa()
    if path:
        model = read_arpa(path)
        symbols = {w: i for i, w in enumerate(model.vocab) if w not in ("<s>", "</s>")}
        # the recipe's phones: their ids are those of its tokens.txt, next to the ARPA file
        tokens = os.path.join(os.path.dirname(path), "tokens.txt")
        G = ngram_acceptor(model, tokens if os.path.isfile(tokens) else symbols, terms=True)
    else:
        model = estimate_ngram([[str(t) for t in s] for s in phone_sequences(2000)], 2,
                               vocab=[str(p) for p in range(1, NUM_PHONES + 1)])
        G = ngram_acceptor(model, {str(p): p for p in range(1, NUM_PHONES + 1)}, terms=True)
    return TrainableGraph(ctc_lm_graph(G), NgramScores(model))


def child(name: str, rounds: int, threads: int) -> dict:
    if name == "torch_ctc_ref":
        return measure(case_torch_ctc(16, 500, 500, 100), rounds, threads)
    if _config():
        crit, words, spelled, v = _recipe()
        x, lens, texts = batch(spelled, v)
    else:
        x, lens, texts = batch()
    if name == "ctc":
        loss_fn = CtcLoss()

        def run() -> None:
            x.grad = None
            loss_fn(x.log_softmax(-1), lens, texts)[0].backward()
        return measure(run, rounds, threads)
    exact = name == "dbd_exact"  # search_beam = inf: the exact sum over the graph (LF-MMI)
    if exact and _config():
        return {"skipped": "the exact sum over a recipe's word graph: see docs/benchmarks.md"}
    beam = 0 if exact else int(name.split("_")[1])
    if _config():  # the recipe's criterion (its beams), the words as references
        crit.max_active, texts = beam, words
        graph = crit.graph
    else:
        graph = _graph()
        crit = DbdLoss(graph, search_beam=math.inf if exact else 20.0, output_beam=8.0,
                       max_active_states=beam or 10_000)
    info: dict = {}

    def run_dbd() -> None:
        x.grad = None
        graph.lm.weight.grad = None
        loss, i = crit(x.log_softmax(-1), lens, texts)
        loss.backward()
        info.update(i)
    out = measure(run_dbd, rounds, threads)
    return {**out, "out_of_beam": info["out_of_beam"], "partial": info["partial"],
            "loss": info["dbd"], "graph_arcs": graph().num_arcs}


def main() -> None:
    for opt, env in (("--arpa", "BENCH_DBD_ARPA"), ("--config", "BENCH_DBD_CONFIG")):
        if opt in sys.argv:  # passed to the children through the environment
            i = sys.argv.index(opt)
            os.environ[env] = sys.argv[i + 1]
            del sys.argv[i:i + 2]
    got = parent_or_child(__doc__, __file__, CASES, child, rounds=3)
    if got is None:
        return
    res, args = got
    ref, ctc = res["torch_ctc_ref"]["seconds"], res["ctc"]["seconds"]
    what = (f"the criterion of {_config()}" if _config() else
            f"H o G, G {'from ' + _arpa() if _arpa() else 'synthetic phone bigram'}")
    print(f"B={B} T={T}, {args.threads} threads, median of {args.rounds}; graph: {what} "
          f"({res['dbd_4']['graph_arcs']} arcs)")
    print(f"{'case':14s} {'seconds':>8s} {'x CtcLoss':>9s} {'x ref':>7s} {'peak MiB':>9s} "
          f"{'loss':>9s} {'out of beam':>11s} {'partial':>8s}")
    for name, r in res.items():
        if "skipped" in r:
            print(f"{name:14s} skipped: {r['skipped']}")
            continue
        extra = (f"{r['loss']:9.1f} {r['out_of_beam']:11d} {r['partial']:8d}"
                 if name.startswith("dbd") else "")
        print(f"{name:14s} {r['seconds']:8.3f} {r['seconds'] / ctc:9.2f} "
              f"{r['seconds'] / ref:7.2f} {r['peak_mib']:9.0f} {extra}")


if __name__ == "__main__":
    main()
