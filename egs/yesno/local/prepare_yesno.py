#!/usr/bin/env python3
"""Stage 0 of egs/yesno/run.sh: lhotse manifests of Kaldi's yesno corpus.

lhotse's own recipe (:func:`lhotse.recipes.prepare_yesno`) reads the 60 wavs (labels from the
file names: 1 = YES, 0 = NO) and splits them 30 / 30 (every other file); every sixth training
recording is held out as a dev set for tuning the decoding settings. Writes, atomically,
``<out-dir>/yesno_cuts_{train,dev,test}.jsonl.gz`` and the training transcripts as a Kaldi
``text`` file (``<out-dir>/text_train``: ``utt w1 w2 ...``) for the LM and the lexicon.

This is the only corpus-specific code of the recipe: a new corpus needs its own version of
this script (lhotse has recipes for most public corpora) and a config in conf/.

    python local/prepare_yesno.py --corpus-dir ../../../shared/data/yesno/waves_yesno \\
        --out-dir data/manifests
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lhotse import CutSet
from lhotse.recipes import prepare_yesno

from wfst_asr.atomic import atomic_output, atomic_write_text


def write_cuts(cuts: CutSet, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp_gz = tmp + ".jsonl.gz"  # lhotse picks the format from the name
        cuts.to_file(tmp_gz)
        Path(tmp_gz).replace(tmp)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus-dir", type=Path, required=True, help="the waves_yesno folder")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--dev-every", type=int, default=6,
                   help="hold out every N-th training recording as dev (default 6)")
    args = p.parse_args(argv)
    if not sorted(args.corpus_dir.glob("*.wav")):
        print(f"prepare_yesno: error: no *.wav files in {args.corpus_dir} (get waves_yesno from "
              "OpenSLR resource 1, or pass --corpus-dir)", file=sys.stderr)
        return 2
    manifests = prepare_yesno(args.corpus_dir)
    cuts = {name: CutSet.from_manifests(recordings=m["recordings"],
                                        supervisions=m["supervisions"]).sort_by_recording_id()
            for name, m in manifests.items()}
    train = list(cuts["train"])
    dev = train[args.dev_every - 1::args.dev_every]
    dev_ids = {c.id for c in dev}
    splits = {"train": CutSet.from_cuts(c for c in train if c.id not in dev_ids),
              "dev": CutSet.from_cuts(dev), "test": cuts["test"]}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, cs in splits.items():
        write_cuts(cs, args.out_dir / f"yesno_cuts_{name}.jsonl.gz")
        print(f"{name}: {len(cs)} cuts, {sum(c.duration for c in cs):.1f} s")
    atomic_write_text(args.out_dir / "text_train", "".join(
        f"{c.id} {c.supervisions[0].text}\n" for c in splits["train"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
