#!/usr/bin/env python3
"""TIMIT only, after ``wfst-asr train-mono`` (stage 3 of egs/timit/run.sh): how often the
monophone GMM's aligned phone is the one of TIMIT's hand segmentation.

For every frame of the train and dev alignments (``<gmm_dir>/ali_{train,dev}.pt`` with the
cuts ``<gmm_dir>/cuts_{train,dev}.jsonl.gz``, whose supervisions keep the 61-phone
segmentation), the aligned pdf's phone (48 set) is compared with the hand-labelled phone at
the frame's centre, folded 61 -> 48; frames on a phone folded away (``q``) or outside the
segmentation are not counted. Prints the shares and adds them to ``<gmm_dir>/summary.json``
(``manual_agreement_percent``).

    python local/gmm_agreement.py --lang-dir data/lang_phone --gmm-dir exp/mono
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from lhotse import CutSet

from wfst_asr.atomic import atomic_write_text
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.graphs.topo import make_topology, phone_pdfs
from wfst_asr.scoring import PhoneMap

MAP_FILE = Path(__file__).resolve().parent / "phones.60-48-39.map"


def manual_agreement(cuts: CutSet, alis: dict[str, torch.Tensor], pdf_phone: dict[int, str],
                     frame_shift: float = 0.01, window: float = 0.025) -> float | None:
    """Share of frames (in %) whose aligned phone is the hand-labelled one; None without
    segmentations."""
    pmap = PhoneMap.from_file(MAP_FILE)
    hits = total = 0
    for c in cuts:
        sup, ali = c.supervisions[0], alis.get(c.id)
        segs = (sup.alignment or {}).get("phone") if ali is not None else None
        if not segs:
            continue
        centre = torch.arange(ali.numel(), dtype=torch.float64) * frame_shift + window / 2
        for seg in segs:
            folded = pmap.fold([seg.symbol], to="48", source="61")
            inside = (centre >= seg.start) & (centre < seg.start + seg.duration)
            if not folded or not bool(inside.any()):
                continue
            got = [pdf_phone[int(p)] for p in ali[inside].tolist()]
            hits += sum(g == folded[0] for g in got)
            total += len(got)
    return 100.0 * hits / total if total else None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lang-dir", type=Path, default=Path("data/lang_phone"))
    p.add_argument("--gmm-dir", type=Path, default=Path("exp/mono"))
    args = p.parse_args(argv)
    tokens = read_token_list(args.lang_dir / "tokens.txt")
    saved = torch.load(args.gmm_dir / "gmm.pt", weights_only=True)
    topo = make_topology(saved["topology"], saved["num_tokens"])
    pdf_phone = {q: tokens[phone - 1] for phone, qs in phone_pdfs(topo).items() for q in qs}
    agree = {s: manual_agreement(CutSet.from_file(args.gmm_dir / f"cuts_{s}.jsonl.gz"),
                                 {u: a.long() for u, a in torch.load(
                                     args.gmm_dir / f"ali_{s}.pt", weights_only=True).items()},
                                 pdf_phone)
             for s in ("train", "dev")}
    print("frames whose aligned phone is the hand-labelled one: " + ", ".join(
        f"{s} {a:.1f}%" for s, a in agree.items() if a is not None))
    summary = json.loads((args.gmm_dir / "summary.json").read_text(encoding="utf-8"))
    summary["manual_agreement_percent"] = agree
    atomic_write_text(args.gmm_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
