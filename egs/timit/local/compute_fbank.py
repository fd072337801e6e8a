#!/usr/bin/env python3
"""Stage 1 of egs/timit/run.sh: 80-dim log-mel fbank features and global CMVN.

Reads ``<manifest_dir>/timit_cuts_{train,dev,test}.jsonl.gz`` (stage 0, prepare_timit.py),
computes features into ``<out_dir>`` (archives + ``timit_cuts_<split>.jsonl.gz`` with the
features attached, written atomically) and the global CMVN of the train split into
``<out_dir>/cmvn.pt``. These are the paths the ``timit.ctc_blstm`` config expects
(``data/fbank/...``). A split whose manifest is missing is reported and left out; cuts whose
audio cannot be featurised are skipped and summarised.

    python egs/timit/local/compute_fbank.py --manifest-dir data/manifests --out-dir data/fbank
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lhotse import CutSet

from wfst_asr.data import compute_features, compute_global_cmvn, make_extractor

SPLITS = ("train", "dev", "test")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    parser.add_argument("--out-dir", type=Path, default=Path("data/fbank"))
    parser.add_argument("--prefix", default="timit")
    parser.add_argument("--num-mel-bins", type=int, default=80)
    parser.add_argument("--num-jobs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")

    extractor = make_extractor("fbank", num_mel_bins=args.num_mel_bins)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary: list[str] = []
    all_skipped: list[tuple[str, str, str]] = []
    train_cuts = None
    for split in SPLITS:
        src = args.manifest_dir / f"{args.prefix}_cuts_{split}.jsonl.gz"
        if not src.is_file():
            print(f"[{split}] no manifest {src}: skipped")
            summary.append(f"{split}: no manifest")
            continue
        cuts = CutSet.from_file(src)
        dst = args.out_dir / f"{args.prefix}_cuts_{split}.jsonl.gz"
        t0 = time.perf_counter()
        print(f"[{split}] {len(cuts)} cuts -> {dst}", flush=True)
        res = compute_features(cuts, args.out_dir, extractor, num_jobs=args.num_jobs,
                               manifest_path=dst, storage_name=f"feats_{split}")
        n_ok = len(res.cuts)
        print(f"[{split}] {n_ok} cuts with features, {len(res.skipped)} skipped "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        summary.append(f"{split}: {n_ok} cuts, {len(res.skipped)} skipped")
        all_skipped += [(split, cid, why) for cid, why in res.skipped]
        if split == "train":
            train_cuts = res.cuts
    if train_cuts is None or len(train_cuts) == 0:
        print("error: no train cuts with features; cannot compute CMVN", file=sys.stderr)
        return 1
    cmvn_path = args.out_dir / "cmvn.pt"
    mean, _ = compute_global_cmvn(train_cuts, cmvn_path)
    print(f"global CMVN over {len(train_cuts)} train cuts ({mean.numel()} dims) -> {cmvn_path}")
    print("summary: " + "; ".join(summary))
    if all_skipped:
        print(f"skipped cuts ({len(all_skipped)}):")
        for split, cid, why in all_skipped[:20]:
            print(f"  {split} {cid}: {why}")
        if len(all_skipped) > 20:
            print(f"  ... and {len(all_skipped) - 20} more")
    return 0


if __name__ == "__main__":
    sys.exit(main())
