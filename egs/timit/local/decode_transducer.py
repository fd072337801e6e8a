#!/usr/bin/env python3
"""Stages 4-5 of egs/timit/run.sh --loss transducer: decode dev and test with a trained
transducer (``timit.transducer_blstm``) and score PER.

* loads ``<exp_dir>/averaged.pt`` (else ``best.pt``) and its configuration, runs the encoder
  once over the dev and test cuts (``decode_timit.Evaluation``);
* decodes with the model's prediction network and joiner (:mod:`wfst_asr.decode.transducer`):
  ``greedy`` (greedy search, one label per frame), ``beam`` (modified beam search,
  ``--beam-size``), ``fast`` (fast beam search in the trivial graph: no LM) and ``lg`` (fast
  beam search in the phone LG of the lang dir: the train-only phone bigram, its scores times
  ``lm_scale`` and a phone insertion penalty, both tuned on DEV over ``--lm-scales`` x
  ``--word-penalties`` and then applied to test); the fast searches use ``--search-beam``,
  ``--max-states`` and ``--max-contexts``; a model with an auxiliary CTC output
  (``model.aux_ctc``) is also decoded greedily through it (``ctc``);
* scores PER on the 39-phone set (48 -> 39 folding) with a per-speaker breakdown, writing
  ``<exp_dir>/per_{greedy,beam,fast,lg[,ctc]}_{dev,test}.txt`` and ``results.txt``
  (``decode_timit.write_results``).

The LG (``<lang_dir>/LG.fst``, compiled by stage 2, else here) has tokens in and words (the
48 phones again) out, and no input epsilons, as fast beam search needs.

    python egs/timit/local/decode_transducer.py --exp-dir exp/transducer_blstm \\
        --lang-dir data/lang_phone [--beam-size 4] [--max-states 64] [--max-contexts 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from decode_timit import (
    Evaluation,
    decode_all,
    load_exp_model,
    parse_args,
    tune_on_dev,
    write_results,
)

from wfst_asr.decode import greedy_ctc, scale_graph
from wfst_asr.decode.transducer import beam_search, fast_beam_search_one_best, greedy_search
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.graphs import trivial_graph
from wfst_asr.graphs.compile import compile_graph, remove_input_epsilons
from wfst_asr.graphs.lang import read_token_list


def transducer_lg(lang_dir: Path) -> Fsa:
    """The lang dir's LG (compiled and cached by :func:`compile_graph`), made free of input
    epsilons if needed (a phone lexicon leaves none)."""
    lg, _ = compile_graph(lang_dir, kind="LG")
    if bool((lg.labels == 0).any()):
        lg = remove_input_epsilons(lg)
    return lg


def _extra_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--beam-size", type=int, default=4, help="modified beam search")
    p.add_argument("--max-states", type=int, default=64, help="fast beam search")
    p.add_argument("--max-contexts", type=int, default=8, help="fast beam search")
    ns, rest = p.parse_known_args(argv)
    return ns, rest


def main(argv: Sequence[str] | None = None) -> int:
    extra, rest = _extra_args(sys.argv[1:] if argv is None else list(argv))
    args = parse_args(rest, __doc__, losses=("transducer",))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, ckpt = load_exp_model(args.exp_dir, device)
    if not hasattr(model, "head"):
        raise SystemExit(f"error: {cfg['model']} is no transducer model (no .head)")
    print(f"model {cfg['model']} from {ckpt} on {device}")
    tokens = read_token_list(cfg["tokens"])            # id k (>= 1) = tokens[k - 1]
    words = SymbolTable.from_file(args.lang_dir / "words.txt")
    lg = transducer_lg(args.lang_dir)
    ev = Evaluation(model, cfg, args, device)
    dec, joiner = model.decoder, model.joiner
    trivial = trivial_graph(model.num_classes)
    fast = {"beam": args.search_beam, "max_states": extra.max_states,
            "max_contexts": extra.max_contexts}

    def tok_str(ids: list[int]) -> list[str]:
        return [tokens[i - 1] for i in ids]

    def word_str(ids: list[int]) -> list[str]:
        return [str(words.get(i)) for i in ids]

    def run(split: str, fn, to_str) -> tuple[object, float]:
        t0 = time.perf_counter()
        hyps = decode_all(ev.data[split], fn)
        return ev.per(split, {u: to_str(h) for u, h in hyps.items()}), time.perf_counter() - t0

    methods = {
        "greedy": (lambda e, n: greedy_search(dec, joiner, e, n), tok_str),
        "beam": (lambda e, n: beam_search(dec, joiner, e, n, beam=extra.beam_size), tok_str),
        "fast": (lambda e, n: fast_beam_search_one_best(dec, joiner, e, n, trivial, **fast),
                 tok_str),
    }
    if getattr(model, "ctc_output", None) is not None:  # the auxiliary CTC output, greedy
        methods["ctc"] = (lambda e, n: greedy_ctc(model.ctc_log_probs(e), n), tok_str)
    results: dict[str, dict[str, object]] = {}
    seconds: dict[str, float] = {}
    for name, (fn, to_str) in methods.items():
        for split in ("dev", "test"):
            results.setdefault(name, {})[split], s = run(split, fn, to_str)
            seconds[name] = seconds.get(name, 0.0) + s
    # LG: tune (lm_scale, phone insertion penalty) on dev only, then apply to test
    def lg_fn(s: float, wp: float):
        graph = scale_graph(lg, s, wp)
        return lambda e, n: fast_beam_search_one_best(dec, joiner, e, n, graph,
                                                      output="aux_labels", **fast)

    def dev_hyps(s: float, wp: float) -> dict[str, list[str]]:
        return {u: word_str(h) for u, h in decode_all(ev.data["dev"], lg_fn(s, wp)).items()}

    best, best_dev, tuned = tune_on_dev(ev, args, dev_hyps, "LG")
    results["lg"] = {"dev": best_dev}
    results["lg"]["test"], seconds["lg"] = run("test", lg_fn(best.lm_scale, best.word_penalty),
                                               word_str)
    header = [(f"transducer search: greedy (1 label per frame), beam = modified beam search "
               f"(beam {extra.beam_size}), fast = fast beam search in the trivial graph, lg = "
               f"fast beam search in the phone LG (beam {args.search_beam:g}, max_states "
               f"{extra.max_states}, max_contexts {extra.max_contexts})"
               + ("; ctc = greedy CTC on the auxiliary CTC output" if "ctc" in results else "")),
              tuned]
    footer = ["decoding time, dev + test (lg: test only): " + ", ".join(
        f"{k} {v:.1f} s" for k, v in seconds.items())]
    print(write_results(args.exp_dir, ckpt, results, header, footer), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
