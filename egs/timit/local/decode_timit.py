#!/usr/bin/env python3
"""Stages 4-5 of egs/timit/run.sh: decode dev and test with a trained CTC model and score PER.

* loads ``<exp_dir>/averaged.pt`` (else ``best.pt``) and rebuilds the model from its saved
  configuration (``config.json``) with :func:`wfst_asr.models.build_model`;
* runs it once over the dev and test cuts (CMVN as in training) and keeps the log-probs;
* decodes with ``greedy_ctc``, with the HLG (``one_best``; ``lm_scale`` and the phone
  insertion penalty tuned on DEV over ``--lm-scales`` x ``--word-penalties``, then applied to
  test) and with ``kaldi_one_best`` at the chosen setting;
* reports the share of test utterances whose two graph 1-bests are identical;
* scores PER on the 39-phone set (48 -> 39 folding) with a per-speaker breakdown, writing
  ``<exp_dir>/per_{greedy,hlg,kaldi}_{dev,test}.txt`` (atomically) and printing a summary.

The pieces (:func:`parse_args`, :func:`load_exp_model`, :class:`Evaluation`,
:func:`tune_on_dev`, :func:`decode_graph`, :func:`write_results`) are shared with
``decode_hmm.py`` (HMM / LF-MMI models), ``decode_transducer.py`` and ``decode_mono.py``; the
model is loaded and run by :mod:`wfst_asr.train.inference`, the dev sweep is
:func:`wfst_asr.decode.grid.grid_search`.

    python egs/timit/local/decode_timit.py --exp-dir exp/ctc_blstm --lang-dir data/lang_phone
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from wfst_asr.atomic import atomic_write_text
from wfst_asr.decode import greedy_ctc, kaldi_ctc_graph, kaldi_one_best, one_best
from wfst_asr.decode.grid import GridResult, grid_search, parse_grid
from wfst_asr.fsa import SymbolTable
from wfst_asr.graphs.compile import compile_graph
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.scoring import PhoneMap, score
from wfst_asr.train.checkpoint import CheckpointError
from wfst_asr.train.inference import load_model, run_model

MAP_FILE = Path(__file__).resolve().parent / "phones.60-48-39.map"


def load_exp_model(exp_dir: Path, device: torch.device
                   ) -> tuple[torch.nn.Module, dict, Path]:
    """:func:`wfst_asr.train.inference.load_model`, its error as the script's exit message."""
    try:
        return load_model(exp_dir, device)
    except (OSError, ValueError, CheckpointError) as e:
        raise SystemExit(f"error: {e} (run stage 3)") from e


def decode_all(batches, fn) -> dict[str, list[int]]:
    hyps: dict[str, list[int]] = {}
    for ids, _, _, lp, lens in batches:
        for uid, h in zip(ids, fn(lp, lens)):
            hyps[uid] = h
    return hyps


def parse_args(argv: Sequence[str] | None = None, doc: str | None = __doc__,
               losses: Sequence[str] = ("ctc",),
               extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """The decoding scripts' common command line (``--loss`` takes one of ``losses``;
    ``extra(parser)`` adds a script's own options)."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp-dir", type=Path, required=True)
    parser.add_argument("--loss", choices=tuple(losses), default=losses[0],
                        help="the criterion the model was trained with "
                             f"(this script: {', '.join(losses)})")
    parser.add_argument("--lang-dir", type=Path, default=Path("data/lang_phone"))
    parser.add_argument("--dev-cuts", default="data/fbank/timit_cuts_dev.jsonl.gz")
    parser.add_argument("--test-cuts", default="data/fbank/timit_cuts_test.jsonl.gz")
    parser.add_argument("--lm-scales", default="0.1,0.2,0.3,0.5,0.7,1.0")
    parser.add_argument("--word-penalties", default="-2,-1,0,1",
                        help="word (here: phone) insertion penalties tried on dev with every "
                             "lm scale, Kaldi's --word-ins-penalty (negative = bonus)")
    parser.add_argument("--search-beam", type=float, default=20.0)
    parser.add_argument("--max-duration", type=float, default=200.0)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    return args


class Evaluation:
    """The model's outputs on dev and test (one pass each), their 39-phone references and
    speakers, and PER scoring (:meth:`per`)."""

    def __init__(self, model, cfg: dict, args: argparse.Namespace,
                 device: torch.device) -> None:
        self.pmap = PhoneMap.from_file(MAP_FILE)
        self.data, self.refs39, self.speaker_of = {}, {}, {}
        for split, path in (("dev", args.dev_cuts), ("test", args.test_cuts)):
            t0 = time.perf_counter()
            self.data[split] = run_model(model, path, cfg, device, args.max_duration)
            self.refs39[split] = {u: self.fold(r) for ids, _, refs, _, _ in self.data[split]
                                  for u, r in zip(ids, refs)}
            self.speaker_of.update({u: s for ids, spk, _, _, _ in self.data[split]
                                    for u, s in zip(ids, spk)})
            print(f"{split}: {len(self.refs39[split])} utterances through the model "
                  f"({time.perf_counter() - t0:.1f} s)")

    def fold(self, seq: list[str]) -> list[str]:
        return self.pmap.fold(seq, to="39", source="48")

    def per(self, split: str, hyps_str: dict[str, list[str]]):
        """The PER report of ``{utt: 48-phone hypothesis}`` on ``split`` (39-phone folding)."""
        return score(self.refs39[split], {u: self.fold(h) for u, h in hyps_str.items()},
                     self.speaker_of, metric="PER")


def tune_on_dev(ev: Evaluation, args: argparse.Namespace,
                dev_hyps: Callable[[float, float], dict[str, list[str]]], name: str
                ) -> tuple[GridResult, object, str]:
    """:func:`~wfst_asr.decode.grid.grid_search` of ``--lm-scales`` x ``--word-penalties`` on
    the DEV PER of ``dev_hyps(lm_scale, word_penalty) -> {utt: 48-phone hypothesis}`` (each
    setting and the choice printed).

    Returns ``(grid result, the chosen setting's dev report, a header line)``."""
    reports = {}

    def dev_per(lm_scale: float, word_penalty: float) -> float:
        rep = ev.per("dev", dev_hyps(lm_scale, word_penalty))
        reports[lm_scale, word_penalty] = rep
        print(f"  {name} dev lm_scale={lm_scale:<4g} word_penalty={word_penalty:<5g} PER "
              f"{rep.rate:.2f}%  ({rep.summary()})")
        return rep.rate

    scales, penalties = parse_grid(args.lm_scales), parse_grid(args.word_penalties)
    res = grid_search(dev_per, scales, penalties, metric="PER")
    print(f"chosen {res.describe()} (dev PER {res.error:.2f}%)")
    header = (f"{name} tuned on dev: lm_scale {res.lm_scale:g} (of {scales}), word_penalty "
              f"{res.word_penalty:g} (of {penalties})")
    return res, reports[res.lm_scale, res.word_penalty], header


def decode_graph(ev: Evaluation, graph, args: argparse.Namespace, label_str,
                 name: str = "HLG") -> tuple[dict[str, dict[str, object]], list[str], str]:
    """Decode with ``graph`` (labels = the network's output columns): ``one_best`` over
    ``--lm-scales`` x ``--word-penalties`` on DEV (:func:`tune_on_dev`), the best setting on
    test, then ``kaldi_one_best`` on both at that setting. ``label_str(ids) -> phones`` turns
    the graph's output labels into 48-phone strings.

    Returns ``(results, header lines, agreement line)``: results ``{name.lower(): {split:
    report}, "kaldi": {split: report}}``.
    """
    def dev_hyps(s: float, wp: float) -> dict[str, list[str]]:
        hyps = decode_all(ev.data["dev"], lambda lp, n: one_best(
            graph, lp, n, search_beam=args.search_beam, lm_scale=s, word_penalty=wp))
        return {u: label_str(h) for u, h in hyps.items()}

    res, best_dev, tuned = tune_on_dev(ev, args, dev_hyps, name)
    best_scale, best_wp = res.lm_scale, res.word_penalty
    key = name.lower()
    results: dict[str, dict[str, object]] = {key: {"dev": best_dev}}
    graph_test = decode_all(ev.data["test"], lambda lp, n: one_best(
        graph, lp, n, search_beam=args.search_beam, lm_scale=best_scale, word_penalty=best_wp))
    results[key]["test"] = ev.per("test", {u: label_str(h) for u, h in graph_test.items()})
    # kaldi at the chosen setting
    kgraph = kaldi_ctc_graph(graph, lm_scale=best_scale, word_penalty=best_wp)
    kaldi_hyps = {}
    for split in ("dev", "test"):
        kaldi_hyps[split] = decode_all(ev.data[split], lambda lp, n: kaldi_one_best(
            kgraph, lp, n, beam=args.search_beam))
        results.setdefault("kaldi", {})[split] = ev.per(
            split, {u: label_str(h) for u, h in kaldi_hyps[split].items()})
    same = sum(graph_test[u] == kaldi_hyps["test"][u] for u in graph_test)
    agree = 100.0 * same / max(len(graph_test), 1)
    header = [tuned]
    footer = (f"test utterances where {name} one_best and kaldi_one_best agree: "
              f"{same}/{len(graph_test)} ({agree:.1f}%)")
    return results, header, footer


def write_results(exp_dir: Path, ckpt: Path, results: dict[str, dict[str, object]],
                  header: list[str], footer: list[str]) -> str:
    """Write ``per_<method>_<split>.txt`` for every method of ``results`` (in order) and
    ``results.txt`` (atomically); return the summary text."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"TIMIT PER (39 phones, folded from 48), model {ckpt}", *header]
    for method, reports in results.items():
        for split in ("dev", "test"):
            rep = reports[split]
            path = exp_dir / f"per_{method}_{split}.txt"
            rep.write(path)
            lines.append(f"{method:6s} {split:4s} PER {rep.rate:6.2f}%  ({rep.summary()})  "
                         f"-> {path}")
    text = "\n".join(lines + footer) + "\n"
    atomic_write_text(exp_dir / "results.txt", text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg, ckpt = load_exp_model(args.exp_dir, device)
    print(f"model {cfg['model']} from {ckpt} on {device}")
    tokens = read_token_list(cfg["tokens"])            # id k (>= 1) = tokens[k - 1]
    words = SymbolTable.from_file(args.lang_dir / "words.txt")
    hlg, _ = compile_graph(args.lang_dir, kind="HLG", topo="ctc")
    ev = Evaluation(model, cfg, args, device)

    def tok_str(ids: list[int]) -> list[str]:
        return [tokens[i - 1] for i in ids]

    def word_str(ids: list[int]) -> list[str]:
        return [str(words.get(i)) for i in ids]

    results: dict[str, dict[str, object]] = {}
    # greedy
    for split in ("dev", "test"):
        hyps = decode_all(ev.data[split], greedy_ctc)
        results.setdefault("greedy", {})[split] = ev.per(split, {u: tok_str(h)
                                                                for u, h in hyps.items()})
    # HLG: tune (lm_scale, word_penalty) on dev only, then apply to test; kaldi cross-check
    graph_results, header, footer = decode_graph(ev, hlg, args, word_str, "HLG")
    results.update(graph_results)
    print(write_results(args.exp_dir, ckpt, results, header, [footer]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
