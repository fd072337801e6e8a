#!/usr/bin/env python3
"""Rescoring speed and lattice size at several lattice beams, on the TIMIT dev set.

The trained CTC model (``--exp-dir``, default ``exp/ctc_blstm``: ``averaged.pt`` / ``best.pt``)
runs once over the dev cuts; its log-probs are then decoded with the recipe's bigram HLG
(``<lang_dir>/HLG``). Without a model (or with ``--synthetic``) random peaked log-probs of the
dev set's lengths stand in (lattice sizes then mean little). Per output beam (``--beams``, the
lattice beam of :func:`~wfst_asr.decode.get_lattice`; search beam ``--search-beam``), each
timed over the whole dev set:

* ``lattices``: :func:`~wfst_asr.decode.lattice.get_lattice` (the search that writes them);
* ``3-gram``: whole-lattice rescoring with the phone 3-gram
  (:func:`~wfst_asr.decode.pipeline.rescore_lattices`: compose with G, kaldifst) + best path;
* ``n-best nnlm``: ``--nbest``-best lists (:func:`~wfst_asr.decode.pipeline.nbest_lists`),
  scored by the LSTM LM (:func:`~wfst_asr.decode.nnlm.add_nnlm_scores`) and reranked;
* ``oracle``: the lattice oracle against the 48-phone references
  (:func:`~wfst_asr.decode.pipeline.oracle_errors`, DP).

Reference: 1-best decoding of the same log-probs with the same HLG and search beam
(:func:`~wfst_asr.decode.one_best`, no lattice), interleaved round by round with the cases; a
case's ratio is the median over ``--rounds`` of its time over the reference's time in the same
round. Also printed: utterances per second, arcs per frame (all arcs / all frames) and the
median lattice's states. The phone 3-gram and the LSTM LM are the recipe's (``--lm3``,
``--nnlm``, stage 7); when absent, a 3-gram is estimated on the training transcripts here and
an untrained LSTM LM of the recipe's size is used (its speed does not depend on its weights).

    python tools/bench/bench_rescore.py                       # beams 4, 6, 8
    python tools/bench/bench_rescore.py --beams 2,4 --rounds 1 --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

from wfst_asr.decode import one_best
from wfst_asr.decode.grid import parse_grid
from wfst_asr.decode.lattice import get_lattice, lattice_stats
from wfst_asr.decode.nnlm import add_nnlm_scores, rescore
from wfst_asr.decode.pipeline import (
    best_word_seqs,
    nbest_lists,
    oracle_errors,
    rescore_lattices,
)
from wfst_asr.decode.rescore import load_g, prepare_g
from wfst_asr.fsa import SymbolTable, create_fsa_vec
from wfst_asr.graphs.compile import compile_graph
from wfst_asr.train.inference import CHECKPOINT_NAMES, load_model, read_references, run_model

REF_FIELD = "phones_48"  # the TIMIT recipe's 48-phone references (supervision field)


def load_batches(args: argparse.Namespace) -> tuple[list, str]:
    """``([(ids, log_probs [B, T, V], lens [B])], description)`` of the dev set."""
    from lhotse import CutSet

    exp = Path(args.exp_dir)
    has_model = any((exp / n).is_file() for n in CHECKPOINT_NAMES)
    if has_model and not args.synthetic:
        model, cfg, ckpt = load_model(exp, torch.device("cpu"))
        out = [(ids, lp, lens) for ids, _, _, lp, lens in
               run_model(model, args.dev_cuts, cfg, torch.device("cpu"), 200.0)]
        return out, f"model {ckpt}"
    g = torch.Generator().manual_seed(0)
    cuts = CutSet.from_file(args.dev_cuts)
    ids = [c.id for c in cuts]
    T = [max(1, round(c.duration * 100 / 3)) for c in cuts]  # frames stacked by 3
    out = []
    for a in range(0, len(ids), 8):
        tb = T[a:a + 8]
        x = torch.randn(len(tb), max(tb), 49, generator=g) * 4.0
        out.append((ids[a:a + 8], x.log_softmax(-1), torch.tensor(tb)))
    return out, "synthetic log-probs (no model)"


def get_lms(args: argparse.Namespace, words: SymbolTable):
    from wfst_asr.graphs.ngram import estimate_ngram
    from wfst_asr.models.lm import LstmLm
    from wfst_asr.train.lm import load_lm

    lm3 = Path(args.lm3)
    note = []
    if not lm3.is_file():
        refs, _ = read_references(args.train_cuts, REF_FIELD)
        lm3 = Path("/tmp") / "bench_rescore_3gram.arpa"
        phones = [w for w, _ in words if not w.startswith(("#", "<"))]
        estimate_ngram(list(refs.values()), 3, "kneser_ney", vocab=phones).write_arpa(lm3)
        note.append("3-gram estimated here")
    g3 = prepare_g(load_g(lm3, words=words))
    if Path(args.nnlm).is_file():
        lm = load_lm(args.nnlm)
    else:
        lm = LstmLm(max(words.ids) + 1, 128, 128, 2).eval()
        note.append("untrained LSTM LM")
    return g3, lm, note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp-dir", default="exp/ctc_blstm")
    p.add_argument("--lang-dir", default="data/lang_phone")
    p.add_argument("--dev-cuts", default="data/fbank/timit_cuts_dev.jsonl.gz")
    p.add_argument("--train-cuts", default="data/fbank/timit_cuts_train.jsonl.gz")
    p.add_argument("--lm3", default=None, help="default: EXP_DIR/lm/3gram.arpa")
    p.add_argument("--nnlm", default=None, help="default: EXP_DIR/lm/nnlm/lm.pt")
    p.add_argument("--beams", default="4,6,8", help="lattice (output) beams")
    p.add_argument("--search-beam", type=float, default=20.0)
    p.add_argument("--lm-scale", type=float, default=0.5)
    p.add_argument("--word-penalty", type=float, default=0.0)
    p.add_argument("--nbest", type=int, default=50)
    p.add_argument("--nbest-beam", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--synthetic", action="store_true", help="random log-probs even with a model")
    p.add_argument("--quick", action="store_true", help="first 4 dev utterances only")
    args = p.parse_args(argv)
    args.lm3 = args.lm3 or f"{args.exp_dir}/lm/3gram.arpa"
    args.nnlm = args.nnlm or f"{args.exp_dir}/lm/nnlm/lm.pt"
    torch.set_num_threads(max(1, torch.get_num_threads()))

    batches, what = load_batches(args)
    if args.quick:
        ids, lp, lens = batches[0]
        batches = [(ids[:4], lp[:4], lens[:4])]
    words = SymbolTable.from_file(Path(args.lang_dir) / "words.txt")
    hlg, _ = compile_graph(args.lang_dir, kind="HLG", topo="ctc")
    g3, lm, note = get_lms(args, words)
    n_utt = sum(len(b[0]) for b in batches)
    frames = sum(int(b[2].sum()) for b in batches)
    print(f"dev: {n_utt} utterances, {frames} output frames; {what}"
          f"{'; ' + ', '.join(note) if note else ''}; {torch.get_num_threads()} threads")
    kw = {"lm_scale": args.lm_scale, "word_penalty": args.word_penalty}

    def ref() -> None:
        for _, lp, lens in batches:
            one_best(hlg, lp, lens, search_beam=args.search_beam, **kw)

    def lattices(beam: float) -> dict:
        out = {}
        for ids, lp, lens in batches:
            lat = get_lattice(hlg, lp, lens, search_beam=args.search_beam, output_beam=beam, **kw)
            out.update({u: lat[i] for i, u in enumerate(ids)})
        return out

    ref()  # warm-up (TorchScript, graph caches)
    refs, _ = read_references(args.dev_cuts, REF_FIELD)  # 48-phone references, for the oracle
    ref_ids = {u: [int(words[p]) for p in refs[u]] for b in batches for u in b[0]}
    rows = []
    for beam in parse_grid(args.beams):
        lats = lattices(beam)
        st = lattice_stats(create_fsa_vec(list(lats.values())))
        apf = float(st["arcs"].sum()) / max(float(st["frames"].sum()), 1.0)
        states = float(st["states"].double().median())
        cases = {
            "lattices": lambda beam=beam: lattices(beam),
            "3-gram": lambda lats=lats: best_word_seqs(
                rescore_lattices(lats, g3, words=words, on_skip=None)[0]),
            "n-best nnlm": lambda lats=lats: _nbest(lats, lm, args),
            "oracle": lambda lats=lats: oracle_errors(lats, ref_ids),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        ratios: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ref()
            t_ref = time.perf_counter() - t0
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                t = time.perf_counter() - t0
                times[k].append(t)
                ratios[k].append(t / t_ref)
        for k in cases:
            t = statistics.median(times[k])
            rows.append((beam, apf, states, k, n_utt / t, statistics.median(ratios[k])))
        print(f"beam {beam:g}: {apf:.1f} arcs per frame, median {states:.0f} states", flush=True)
    t0 = time.perf_counter()
    ref()
    t_ref = time.perf_counter() - t0
    print(f"reference: 1-best (one_best, HLG, search beam {args.search_beam:g}) "
          f"{n_utt / t_ref:.1f} utt/s in the last round")
    print("| lattice beam | arcs / frame | median states | step | utt / s | time / 1-best |")
    print("|---|---|---|---|---|---|")
    for beam, apf, states, k, ups, r in rows:
        print(f"| {beam:g} | {apf:.1f} | {states:.0f} | {k} | {ups:.1f} | {r:.2f} |")
    return 0


def _nbest(lats: dict, lm, args: argparse.Namespace) -> list[list[int]]:
    nbs, _ = nbest_lists(lats, args.nbest, beam=args.nbest_beam, on_skip=None)
    lists = list(nbs.values())
    add_nnlm_scores(lists, lm)
    return rescore(lists, None, 0.5, None)


if __name__ == "__main__":
    sys.exit(main())
