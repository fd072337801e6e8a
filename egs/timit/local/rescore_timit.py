#!/usr/bin/env python3
"""Stages 6-8 of egs/timit/run.sh (``--loss ctc``): lattices of the CTC model with the bigram
HLG, then phone 3-gram whole-lattice rescoring, LSTM-LM n-best rescoring and the lattice
oracle, PER on 39 phones. Thin: the work is in :mod:`wfst_asr.decode.pipeline`,
:mod:`wfst_asr.decode.rescore`, :mod:`wfst_asr.decode.nnlm` and :mod:`wfst_asr.scoring`.

``lattices`` (stage 6)
    the model (``<exp_dir>/averaged.pt``) over the dev and test cuts, lattices with the HLG
    (:func:`~wfst_asr.decode.pipeline.write_lattice_dir`: ``intersect_dense_pruned``, per-arc
    acoustic and LM scores kept) -> ``<exp_dir>/lats/{dev,test}``.
``lms`` (stage 7)
    the 48-phone transcripts of the TRAINING cuts only (``utt p1 p2 ...``), a phone 3-gram on
    them (``wfst-asr estimate-lm``) and an LSTM LM (``wfst-asr train-nnlm``) -> ``--out-dir``
    (``text_train``, ``3gram.arpa``, ``nnlm/lm.pt``).
``rescore`` (stage 8)
    on DEV: the lattices' best path over ``--lm-scales`` x ``--word-penalties`` (the 1-best of
    the bigram HLG); the lattices rescored with the 3-gram (whole lattice) over the same grid;
    the n-best lists (at the 1-best's chosen setting) reranked with the LSTM LM over
    ``--nnlm-lm-scales`` x ``--nnlm-scales`` x ``--nnlm-word-penalties``. Each chosen setting is
    applied once to TEST. The lattice oracle PER on both. Writes (atomically) into
    ``<exp_dir>/rescore/``: ``per_{lat1best,3gram,nnlm,oracle}_{dev,test}.txt``,
    ``sweep_{lat1best,3gram,nnlm}_dev.txt``, ``settings.json`` and ``results.txt``.

    python egs/timit/local/rescore_timit.py lattices --exp-dir exp/ctc_blstm
    python egs/timit/local/rescore_timit.py lms --out-dir exp/ctc_blstm/lm
    python egs/timit/local/rescore_timit.py rescore --exp-dir exp/ctc_blstm \\
        --lm3 exp/ctc_blstm/lm/3gram.arpa --nnlm exp/ctc_blstm/lm/nnlm/lm.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from wfst_asr.atomic import atomic_write_text
from wfst_asr.decode.grid import parse_grid
from wfst_asr.decode.nnlm import add_nnlm_scores, rescore, sweep
from wfst_asr.decode.pipeline import (
    best_word_seqs,
    load_lattice_dir,
    nbest_lists,
    oracle_errors,
    rescore_lattices,
    sweep_lattices,
    write_lattice_dir,
)
from wfst_asr.decode.rescore import load_g
from wfst_asr.fsa import SymbolTable
from wfst_asr.graphs.compile import compile_graph
from wfst_asr.scoring import PhoneMap, score
from wfst_asr.scoring.edit_distance import align_and_count
from wfst_asr.train.checkpoint import CheckpointError
from wfst_asr.train.inference import load_model, read_references, run_model
from wfst_asr.train.lm import load_lm

SPLITS = ("dev", "test")


REF_FIELD = "phones_48"  # the supervision field of the 48-phone references


# ---------------------------------------------------------------------- stage 6
def cmd_lattices(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, cfg, ckpt = load_model(args.exp_dir, device)
    except (OSError, ValueError, CheckpointError) as e:
        raise SystemExit(f"error: {e} (run the training stage)") from e
    words = SymbolTable.from_file(args.lang_dir / "words.txt")
    tokens = SymbolTable.from_file(args.lang_dir / "tokens.txt")
    hlg, _ = compile_graph(args.lang_dir, kind="HLG", topo="ctc")
    for split, cuts in zip(SPLITS, (args.dev_cuts, args.test_cuts)):
        t0 = time.perf_counter()
        batches = [(ids, lp, lens) for ids, _, _, lp, lens in
                   run_model(model, cuts, cfg, device, args.max_duration)]
        t_model = time.perf_counter() - t0
        out = args.exp_dir / "lats" / split
        st = write_lattice_dir(hlg, batches, out, words=words, tokens=tokens,
                               search_beam=args.search_beam, output_beam=args.output_beam,
                               max_active_states=args.max_active_states,
                               lm_scale=args.lm_scale, word_penalty=args.word_penalty,
                               meta={"model": str(ckpt), "graph": str(args.lang_dir / "HLG"),
                                     "frame_shift": 0.01,
                                     "subsampling": int(getattr(model, "subsampling_factor",
                                                                1))},
                               overwrite=True)
        print(f"{split}: {int(st['utterances'])} lattices ({int(st['empty'])} empty), "
              f"{st['arcs'] / max(st['frames'], 1):.1f} arcs per frame, model {t_model:.1f} s, "
              f"search {st['seconds']:.1f} s -> {out}")
    return 0


# ---------------------------------------------------------------------- stage 7
def cmd_lms(args: argparse.Namespace) -> int:
    """The training transcripts (``<out_dir>/text_train``), the phone 3-gram on them
    (``wfst-asr estimate-lm``, interpolated Kneser-Ney over every phone of words.txt, as the
    bigram G of stage 2) and the LSTM LM (``wfst-asr train-nnlm``, its dev set a held-out tenth
    of the training transcripts)."""
    from wfst_asr.bin.cli import main as cli

    refs, _ = read_references(args.train_cuts, REF_FIELD)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    text = args.out_dir / "text_train"
    atomic_write_text(text, "".join(f"{u} {' '.join(p)}\n" for u, p in refs.items()))
    print(f"{len(refs)} training transcripts -> {text}")
    words = str(args.lang_dir / "words.txt")
    rc = cli(["estimate-lm", "--text", str(text), "--skip-first-field", "--order",
              str(args.order), "--vocab", words, "--out",
              str(args.out_dir / f"{args.order}gram.arpa")])
    if rc:
        return rc
    return cli(["train-nnlm", str(text), words, str(args.out_dir / "nnlm"), "--epochs",
                str(args.nnlm_epochs), "--embed-dim", str(args.nnlm_dim), "--hidden-dim",
                str(args.nnlm_dim), "--num-layers", str(args.nnlm_layers), "--dropout",
                str(args.nnlm_dropout), "--batch-size", "16", "--lr", "2e-3", "--resume"])


# ---------------------------------------------------------------------- stage 8
class Scorer:
    """48-phone word ids -> 39-phone strings, PER against the folded references."""

    def __init__(self, words: SymbolTable, args: argparse.Namespace) -> None:
        self.words = words
        self.pmap = PhoneMap.from_file(MAP_FILE)
        fold = self.pmap.mapping("39", "48")
        self.refs39: dict[str, dict[str, list[str]]] = {}
        self.ref_ids: dict[str, dict[str, list[int]]] = {}
        self.speaker_of: dict[str, str] = {}
        for split, cuts in zip(SPLITS, (args.dev_cuts, args.test_cuts)):
            refs, spk = read_references(cuts, REF_FIELD)
            self.refs39[split] = {u: self.pmap.fold(r, "39", "48") for u, r in refs.items()}
            self.ref_ids[split] = {u: [int(words[p]) for p in r]
                                   for u, r in self.refs39[split].items()}
            self.speaker_of.update(spk)
        # word id -> the word id of its 39-phone class (0: deleted), for the oracle
        self.word_map = {int(words[p]): (int(words[q]) if q is not None else 0)
                         for p, q in fold.items() if p in words}

    def strs(self, ids: Sequence[int]) -> list[str]:
        return self.pmap.fold([str(self.words[int(i)]) for i in ids], "39", "48")

    def error(self, refs: list, hyps: list) -> float:
        """Corpus PER (%) of 39-phone references and word-id hypotheses (sweeps)."""
        total = sum((align_and_count(r, self.strs(h), metric="PER")
                     for r, h in zip(refs, hyps)), start=0)
        return float(total.rate) if total else 0.0

    def report(self, split: str, hyps: dict[str, list[int]]):
        return score(self.refs39[split], {u: self.strs(h) for u, h in hyps.items()},
                     self.speaker_of, metric="PER")


#: TIMIT's 60/48/39 phone folding table (scoring is on 39 phones).
MAP_FILE = Path(__file__).resolve().parent / "phones.60-48-39.map"


def cmd_rescore(args: argparse.Namespace) -> int:
    out_dir = args.exp_dir / "rescore"
    lats, bad = {}, Counter()
    words = None
    for split in SPLITS:
        try:
            lats[split], b = load_lattice_dir(args.exp_dir / "lats" / split)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: {e} (run stage 7)") from e
        bad.update({f"{split} {k}": v for k, v in b.items()})
        words = words or SymbolTable.from_file(args.exp_dir / "lats" / split / "words.txt")
    assert words is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    sc = Scorer(words, args)
    scales, penalties = parse_grid(args.lm_scales), parse_grid(args.word_penalties)
    results: dict[str, dict[str, object]] = {}
    settings: dict[str, dict[str, float]] = {}
    times: dict[str, float] = {}

    def tune(name: str, lat_sets: dict[str, dict], what: str) -> None:
        t0 = time.perf_counter()
        best = sweep_lattices(lat_sets["dev"], sc.refs39["dev"], scales, penalties,
                              error_fn=sc.error, metric="PER")
        atomic_write_text(out_dir / f"sweep_{name}_dev.txt",
                          f"# {what}, dev\n" + best.format_table())
        settings[name] = {"lm_scale": best.lm_scale, "word_penalty": best.word_penalty,
                          "dev_per": best.error}
        results[name] = {s: sc.report(s, best_word_seqs(lat_sets[s], best.lm_scale,
                                                        best.word_penalty)) for s in SPLITS}
        times[name] = time.perf_counter() - t0
        print(f"{name}: chosen {best.describe()} (dev PER {best.error:.2f}%); test PER "
              f"{results[name]['test'].rate:.2f}%")

    # (0) 1-best of the bigram HLG lattices
    tune("lat1best", lats, "best path of the bigram HLG lattices")
    s1, wp1 = settings["lat1best"]["lm_scale"], settings["lat1best"]["word_penalty"]

    # (a) whole-lattice rescoring with the phone 3-gram
    t0 = time.perf_counter()
    g3 = load_g(args.lm3, words=words)
    lats3 = {}
    for split in SPLITS:
        lats3[split], b = rescore_lattices(lats[split], g3, words=words)
        bad.update({f"{split} 3gram {k}": v for k, v in b.items()})
    t_compose = time.perf_counter() - t0
    tune("3gram", lats3, "best path of the lattices rescored with the phone 3-gram")
    times["3gram"] += t_compose

    # (b) n-best lists at the 1-best's setting, reranked with the LSTM LM
    t0 = time.perf_counter()
    lm = load_lm(args.nnlm)
    nbests = {}
    for split in SPLITS:
        nbests[split], b = nbest_lists(lats[split], args.nbest, lm_scale=s1, word_penalty=wp1,
                                       beam=args.nbest_beam, max_states=args.max_states)
        bad.update({f"{split} nbest {k}": v for k, v in b.items()})
        add_nnlm_scores(list(nbests[split].values()), lm)
    best = sweep(nbests["dev"], sc.refs39["dev"],
                 parse_grid(args.nnlm_lm_scales or args.lm_scales),
                 parse_grid(args.nnlm_scales),
                 parse_grid(args.nnlm_word_penalties or args.word_penalties),
                 error_fn=sc.error, metric="PER")
    atomic_write_text(out_dir / "sweep_nnlm_dev.txt",
                      f"# {args.nbest}-best lists (at lm_scale {s1:g}, word_penalty {wp1:g}) "
                      "reranked with am + lm_scale * bigram - word_penalty * phones + "
                      "nnlm_scale * LSTM LM, dev\n" + best.format_table())
    settings["nnlm"] = {**best.as_dict(), "dev_per": best.error, "nbest": args.nbest}
    del settings["nnlm"]["error"]
    results["nnlm"] = {}
    for split in SPLITS:
        keys = list(nbests[split])
        hyps = rescore([nbests[split][k] for k in keys], best.lm_scale,
                       best.best["nnlm_scale"], best.word_penalty)
        results["nnlm"][split] = sc.report(split, dict(zip(keys, hyps)))
    times["nnlm"] = time.perf_counter() - t0
    sizes = {s: sum(len(nb) for nb in nbests[s].values()) / max(len(nbests[s]), 1)
             for s in SPLITS}
    print(f"nnlm: chosen {best.describe()} (dev PER {best.error:.2f}%); test PER "
          f"{results['nnlm']['test'].rate:.2f}%")

    # lattice oracle (48 -> 39 folded word ids)
    t0 = time.perf_counter()
    results["oracle"] = {}
    for split in SPLITS:
        orc = oracle_errors(lats[split], sc.ref_ids[split], word_map=sc.word_map)
        results["oracle"][split] = score(
            sc.refs39[split], {u: [str(words[i]) for i in h] for u, (_, h) in orc.items()},
            sc.speaker_of, metric="PER")
    times["oracle"] = time.perf_counter() - t0

    # reports
    lines = [(f"TIMIT rescoring (PER on 39 phones), lattices of {args.exp_dir / 'lats'} "
              f"(lm_scale / word_penalty grid {scales} x {penalties}, chosen on dev)")]
    labels = {"lat1best": "1-best of the bigram HLG lattices",
              "3gram": "phone 3-gram whole-lattice rescoring",
              "nnlm": f"LSTM-LM {args.nbest}-best rescoring", "oracle": "lattice oracle"}
    for name, reps in results.items():
        st = settings.get(name)
        how = "" if st is None else "  [" + ", ".join(
            f"{k} {v:g}" for k, v in st.items() if k != "dev_per") + "]"
        lines.append(f"{name}: {labels[name]}{how}")
        for split in SPLITS:
            rep = reps[split]
            path = out_dir / f"per_{name}_{split}.txt"
            rep.write(path)
            lines.append(f"{name:8s} {split:4s} PER {rep.rate:6.2f}%  ({rep.summary()})  "
                         f"-> {path}")
    lines.append("n-best entries per utterance (mean): "
                 + ", ".join(f"{s} {sizes[s]:.1f}" for s in SPLITS))
    lines.append("seconds (dev + test): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    lines.append("skipped: " + (", ".join(f"{v} {k}" for k, v in sorted(bad.items()))
                                if bad else "none")
                 + (" (inexact n-best lists are kept, only counted)" if any(
                     "inexact" in k for k in bad) else ""))
    text = "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "settings.json", json.dumps(settings, indent=1) + "\n")
    atomic_write_text(out_dir / "results.txt", text)
    print(text, end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--exp-dir", type=Path, required=True)
        p.add_argument("--lang-dir", type=Path, default=Path("data/lang_phone"))
        p.add_argument("--dev-cuts", default="data/fbank/timit_cuts_dev.jsonl.gz")
        p.add_argument("--test-cuts", default="data/fbank/timit_cuts_test.jsonl.gz")

    p = sub.add_parser("lattices", help="stage 6: dev/test lattices with the HLG")
    common(p)
    p.add_argument("--search-beam", type=float, default=20.0)
    p.add_argument("--max-active-states", type=int, default=10000)
    p.add_argument("--output-beam", type=float, default=6.0,
                   help="lattice beam (log-score units at --lm-scale)")
    p.add_argument("--lm-scale", type=float, default=0.5,
                   help="graph-score scale of the search (the sweeps rescale the lattices)")
    p.add_argument("--word-penalty", type=float, default=0.0)
    p.add_argument("--max-duration", type=float, default=200.0)
    p.set_defaults(func=cmd_lattices)

    p = sub.add_parser("lms", help="stage 7: the rescoring LMs on the training transcripts")
    p.add_argument("--train-cuts", default="data/fbank/timit_cuts_train.jsonl.gz")
    p.add_argument("--lang-dir", type=Path, default=Path("data/lang_phone"))
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--nnlm-epochs", type=int, default=20)
    p.add_argument("--nnlm-dim", type=int, default=128, help="embedding and LSTM size")
    p.add_argument("--nnlm-layers", type=int, default=2)
    p.add_argument("--nnlm-dropout", type=float, default=0.2)
    p.set_defaults(func=cmd_lms)

    p = sub.add_parser("rescore", help="stage 8: sweeps on dev, PER on dev and test")
    common(p)
    p.add_argument("--lm3", type=Path, required=True, help="phone 3-gram (ARPA)")
    p.add_argument("--nnlm", type=Path, required=True, help="lm.pt from wfst-asr train-nnlm")
    p.add_argument("--lm-scales", default="0.1,0.2,0.3,0.5,0.7,1.0")
    p.add_argument("--word-penalties", default="-2,-1,0,1")
    p.add_argument("--nbest", type=int, default=50)
    p.add_argument("--nbest-beam", type=float, default=1.0,
                   help="starting beam of the n-best search (widened until the list is exact)")
    p.add_argument("--max-states", type=int, default=20000)
    p.add_argument("--nnlm-lm-scales", default=None,
                   help="bigram scales of the n-best sweep (default: --lm-scales)")
    p.add_argument("--nnlm-scales", default="0,0.1,0.2,0.3,0.5,0.7,1.0")
    p.add_argument("--nnlm-word-penalties", default=None,
                   help="penalties of the n-best sweep (default: --word-penalties)")
    p.set_defaults(func=cmd_rescore)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
