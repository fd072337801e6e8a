#!/usr/bin/env python3
"""Training time per epoch and peak memory of each criterion on TIMIT, side by side.

Each registered config (default: ``timit.{ctc,hmm,mmi,transducer}_blstm``, the configs of
``egs/timit/run.sh --loss ...``, and ``timit.hmm_fullsum_blstm``) is trained for ``--epochs``
epochs by ``wfst-asr train``, in its own process started through ``local/timed.py`` (so
the peak resident memory is that process's alone), on the recipe's data (stages 0-2 must have
run: ``data/fbank``, ``data/lang_phone``; ``timit.hmm_blstm`` reads the GMM-aligned cuts of
``--gmm-dir``, from stage 3 of ``--loss hmm``). The seconds of every epoch (training + dev
loss) are read back from the last checkpoint's history; the first epoch is reported apart (it
includes warm-up and graph compilation), the others as a median.

Reported per config: the median epoch time after the first, the first epoch's, the ratio of
the median to that of the first config in the same run (``timit.ctc_blstm`` by default), and
the peak memory of the whole training process (model, graphs, optimizer, data loading).

    python tools/bench/bench_criteria.py                              # 3 epochs each
    python tools/bench/bench_criteria.py --configs egs/timit/conf/ctc_blstm.yaml egs/timit/conf/mmi_blstm.yaml --epochs 2
    python tools/bench/bench_criteria.py --json exp/bench_criteria.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch

from wfst_asr.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [f"egs/timit/conf/{n}.yaml" for n in ("ctc_blstm", "hmm_blstm", "hmm_fullsum_blstm",
                                                "mmi_blstm", "transducer_blstm")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="config files (or registered names)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data-dir", default="data", help="the recipe's DATA_DIR (stages 0-2)")
    p.add_argument("--gmm-dir", default="exp/mono",
                   help="the GMM's aligned cuts, for configs trained on alignments (gmm_ali)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every config (repeatable)")
    p.add_argument("--json", help="write the results to this file")
    return p.parse_args(argv)


def data_overrides(data_dir: Path) -> list[str]:
    """The ``--set`` options stage 3 of the recipe passes (paths under ``data_dir``)."""
    fbank, lang = data_dir / "fbank", data_dir / "lang_phone"
    needed = [fbank / "timit_cuts_train.jsonl.gz", fbank / "cmvn.pt", lang / "tokens.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run egs/timit/run.sh --stop-stage 2 "
                         "(for every --loss) first")
    return [f"train_cuts={fbank / 'timit_cuts_train.jsonl.gz'}",
            f"dev_cuts={fbank / 'timit_cuts_dev.jsonl.gz'}", f"cmvn={fbank / 'cmvn.pt'}",
            f"tokens={lang / 'tokens.txt'}", f"lang_dir={lang}"]


def alignment_overrides(name: str, gmm_dir: Path) -> list[str]:
    """For a config trained on GMM alignments (``token_field`` ``gmm_ali``, e.g.
    ``timit.hmm_blstm``): the aligned cuts of ``egs/timit/run.sh --loss hmm`` (stage 3)."""
    from wfst_asr.train import load_config

    if load_config(name).token_field != "gmm_ali":
        return []
    cuts = [gmm_dir / "cuts_train.jsonl.gz", gmm_dir / "cuts_dev.jsonl.gz"]
    if not cuts[0].exists():
        raise SystemExit(f"{name} trains on GMM alignments: missing {cuts[0]} (run "
                         "egs/timit/run.sh --loss hmm --stage 3, or pass --gmm-dir)")
    return [f"train_cuts={cuts[0]}", f"dev_cuts={cuts[1]}"]


def run_config(name: str, epochs: int, sets: list[str], work: Path) -> dict:
    """Train ``name`` for ``epochs`` epochs in a fresh process; its epoch times and peak MB."""
    stem = Path(name).stem
    exp, log = work / stem, work / f"{stem}.tsv"
    cmd = [sys.executable, str(ROOT / "local/timed.py"), "--label", name, "--log", str(log),
           "--", sys.executable, "-m", "wfst_asr.bin.cli", "train", "--config", name,
           "--exp-dir", str(exp), "--set", f"num_epochs={epochs}"]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name}: training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    _, wall, peak, _ = log.read_text().strip().splitlines()[-1].split("\t")
    state = torch.load(exp / f"epoch-{epochs}.pt", map_location="cpu", weights_only=True)
    secs = [float(h["seconds"]) for h in state["history"]]
    later = secs[1:] or secs
    return {"config": name, "epoch_seconds": secs, "first": secs[0],
            "median": statistics.median(later), "wall": float(wall), "peak_mb": float(peak)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sets = data_overrides((ROOT / args.data_dir).resolve()) + args.set
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_criteria.") as tmp:
        for name in args.configs:
            print(f"training {name} for {args.epochs} epochs ...", flush=True)
            extra = alignment_overrides(name, (ROOT / args.gmm_dir).resolve())
            rows.append(run_config(name, args.epochs, sets + extra, Path(tmp)))
    ref = rows[0]["median"]
    print(f"\n| config | s/epoch (median of epochs 2-{args.epochs}) | epoch 1 | "
          f"x {rows[0]['config']} | peak memory |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = r["median"] / ref
        print(f"| {r['config']} | {r['median']:.1f} s | {r['first']:.1f} s | "
              f"{r['ratio']:.2f} | {r['peak_mb']:.0f} MB |")
    if args.json:
        atomic_write_text(args.json, json.dumps({"threads": torch.get_num_threads(),
                                                 "epochs": args.epochs, "rows": rows},
                                                indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
