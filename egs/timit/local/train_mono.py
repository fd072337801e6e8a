#!/usr/bin/env python3
"""Monophone GMM stage of egs/timit/run.sh (``--loss hmm``): train a monophone GMM-HMM with
kaldi-hmm-gmm (:func:`wfst_asr.gmm.train_mono`), align train and dev, decode dev and test.

* features: 13 MFCCs (kaldi-native-fbank, the frame options of the fbank features, so the
  frame counts match) + deltas + delta-deltas, per-speaker mean normalisation;
* training: Kaldi's ``train_mono.sh`` schedule (flat start, equal alignment, ``--num-iters``
  EM iterations, realignment on ``--realign-iters``, Gaussians added up to ``--tot-gauss``);
  per-iteration log in ``<out_dir>/train_log.tsv``;
* outputs (atomic): ``gmm.pt`` (the model's parameters and options), ``ali_{train,dev}.pt``
  (``{utt: int16 pdf ids per 10 ms frame}``) and ``cuts_{train,dev}.jsonl.gz``: the fbank cuts
  with the alignment in the supervision field ``gmm_ali`` (space-separated pdf ids) for the
  hybrid's frame cross-entropy (``timit.hmm_blstm``); an utterance that cannot be aligned is
  left out and counted;
* decoding (unless ``--no-decode``): the GMM log-likelihoods (times ``--acoustic-scale``) with
  the HCLG of the same topology (self-loop scale 0.1, as Kaldi's mkgraph), ``lm_scale`` x phone
  insertion penalty tuned on DEV, PER (39 phones) in ``<out_dir>/results.txt``.

    python egs/timit/local/train_mono.py --out-dir exp/mono
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wfst_asr  # noqa: F401  (before torch: it sets OMP_WAIT_POLICY=PASSIVE)

# isort: split
import torch
from lhotse import CutSet

from wfst_asr.atomic import atomic_output, atomic_write_text
from wfst_asr.data import make_extractor
from wfst_asr.gmm import MonoGmm, MonoOptions, add_deltas, speaker_cmn, train_mono
from wfst_asr.graphs.lang import read_token_list
from wfst_asr.graphs.topo import make_topology

SPLITS = ("train", "dev", "test")
ALI_FIELD = "gmm_ali"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = MonoOptions()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest-dir", type=Path, default=Path("data/manifests"))
    p.add_argument("--fbank-dir", type=Path, default=Path("data/fbank"))
    p.add_argument("--lang-dir", type=Path, default=Path("data/lang_phone"))
    p.add_argument("--out-dir", type=Path, default=Path("exp/mono"))
    p.add_argument("--topology", default="hmm-3state", choices=("hmm-3state", "hmm-1state"))
    p.add_argument("--token-field", default="phones_48")
    p.add_argument("--num-iters", type=int, default=d.num_iters)
    p.add_argument("--max-iter-inc", type=int, default=d.max_iter_inc)
    p.add_argument("--tot-gauss", type=int, default=d.tot_gauss)
    p.add_argument("--realign-iters", type=_ints, default=d.realign_iters,
                   help="comma-separated iterations that realign first")
    p.add_argument("--acoustic-scale", type=float, default=d.acoustic_scale)
    p.add_argument("--self-loop-scale", type=float, default=0.1)
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--decode-only", action="store_true",
                   help="load <out_dir>/gmm.pt and only decode (e.g. other --lm-scales)")
    p.add_argument("--lm-scales", default="0.2,0.3,0.5,0.7,1.0")
    p.add_argument("--word-penalties", default="-1,0,1,2")
    p.add_argument("--search-beam", type=float, default=20.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    return args


def load_split(args: argparse.Namespace, split: str, token_ids: dict[str, int]):
    """``(fbank cuts, {utt: [T, 39] features}, {utt: phone ids}, {utt: speaker})`` of a split;
    the MFCCs are cut or edge-padded to the fbank cut's frame count (counted)."""
    src = CutSet.from_file(args.manifest_dir / f"timit_cuts_{split}.jsonl.gz")
    fb = CutSet.from_file(args.fbank_dir / f"timit_cuts_{split}.jsonl.gz")
    fb_frames = {c.id: c.num_frames for c in fb}
    ext = make_extractor("mfcc")
    raw, texts, spk, fixed, skipped = {}, {}, {}, 0, []
    for c in src:
        if c.id not in fb_frames:
            continue
        sup = c.supervisions[0]
        try:
            texts[c.id] = [token_ids[t] for t in sup.custom[args.token_field].split()]
            f = torch.from_numpy(c.compute_features(ext)).float()
        except (KeyError, RuntimeError, ValueError, OSError) as e:
            skipped.append(f"{c.id}: {type(e).__name__}: {e}")
            texts.pop(c.id, None)
            continue
        n = fb_frames[c.id]
        if f.shape[0] != n:
            fixed += 1
            f = f[:n] if f.shape[0] > n else torch.cat([f, f[-1:].expand(n - f.shape[0], -1)])
        raw[c.id], spk[c.id] = f, str(sup.speaker)
    feats = {u: add_deltas(x) for u, x in speaker_cmn(raw, spk).items()}
    print(f"[{split}] {len(feats)} utterances with MFCC+deltas ({fixed} frame counts adjusted "
          f"to the fbank's, {len(skipped)} skipped{': ' + '; '.join(skipped[:5]) if skipped else ''})",
          flush=True)
    return fb, feats, texts, spk


def save_alignments(out_dir: Path, split: str, fb: CutSet, alis: dict[str, torch.Tensor]
                    ) -> int:
    """Write ``ali_<split>.pt`` and ``cuts_<split>.jsonl.gz`` (cuts with ``gmm_ali``)
    atomically; return the number of cuts left out (no alignment)."""
    with atomic_output(out_dir / f"ali_{split}.pt") as tmp:
        torch.save({u: a.to(torch.int16) for u, a in alis.items()}, tmp)
    kept, missing = [], 0
    for c in fb:
        if c.id not in alis:
            missing += 1
            continue
        sup = c.supervisions[0]
        sup.custom = {**(sup.custom or {}), ALI_FIELD: " ".join(map(str, alis[c.id].tolist()))}
        kept.append(c)
    dst = out_dir / f"cuts_{split}.jsonl.gz"
    with atomic_output(dst) as tmp:
        tmp_gz = tmp + ".jsonl.gz"
        CutSet.from_cuts(kept).to_file(tmp_gz)
        Path(tmp_gz).replace(tmp)
    print(f"[{split}] alignments of {len(kept)} cuts -> {dst}" +
          (f" ({missing} cuts without an alignment left out)" if missing else ""), flush=True)
    return missing


def manual_agreement(fb: CutSet, alis: dict[str, torch.Tensor], pdf_phone: dict[int, str],
                     frame_shift: float = 0.01, window: float = 0.025) -> float | None:
    """Share of frames (in %) whose aligned phone (48 set) is the phone of TIMIT's hand
    segmentation at the frame's centre (61 -> 48 folding; frames on a phone folded away, e.g.
    ``q``, or outside the segmentation are not counted); None without segmentations."""
    from decode_timit import MAP_FILE

    from wfst_asr.scoring import PhoneMap

    pmap = PhoneMap.from_file(MAP_FILE)
    hits = total = 0
    for c in fb:
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
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tokens = read_token_list(args.lang_dir / "tokens.txt")
    token_ids = {t: i for i, t in enumerate(tokens, start=1)}
    topo = make_topology(args.topology, len(tokens), self_loop_scale=args.self_loop_scale)
    data = {s: load_split(args, s, token_ids) for s in SPLITS}
    if args.decode_only:
        from decode_mono import decode_gmm

        saved = torch.load(args.out_dir / "gmm.pt")
        if saved["topology"] != args.topology:
            raise SystemExit(f"error: {args.out_dir}/gmm.pt is a {saved['topology']} model")
        decode_gmm(MonoGmm.from_params(topo, saved["params"]), topo, data, args)
        return 0
    opts = MonoOptions(num_iters=args.num_iters, max_iter_inc=args.max_iter_inc,
                       tot_gauss=args.tot_gauss, realign_iters=args.realign_iters,
                       acoustic_scale=args.acoustic_scale)
    _, feats, texts, _ = data["train"]
    ids = sorted(feats)
    rows = ["iter\trealigned\tloglike_per_frame\tframes\tnum_gauss\tunaligned\tseconds"]
    t0 = time.perf_counter()
    model, final = train_mono(topo, [feats[u] for u in ids], [texts[u] for u in ids], opts,
                              names=ids, report=lambda r: rows.append("\t".join(
                                  f"{v:.4f}" if isinstance(v, float) else str(v)
                                  for v in r.values())))
    train_s = time.perf_counter() - t0
    atomic_write_text(args.out_dir / "train_log.tsv", "\n".join(rows) + "\n")
    print(f"trained {args.topology} monophone GMM: {model.num_gauss} Gaussians, "
          f"{len(rows) - 1} iterations in {train_s:.1f} s (log: {args.out_dir}/train_log.tsv)")
    with atomic_output(args.out_dir / "gmm.pt") as tmp:
        torch.save({"params": model.params(), "topology": args.topology,
                    "self_loop_scale": args.self_loop_scale, "num_tokens": len(tokens),
                    "options": vars(opts)}, tmp)
    alis = {"train": {u: a for u, a in zip(ids, final) if a is not None}}
    _, dfeats, dtexts, _ = data["dev"]
    dids = sorted(dfeats)
    dev_ali = model.align([dfeats[u] for u in dids], [dtexts[u] for u in dids],
                          opts.acoustic_scale, opts.align_batch)
    alis["dev"] = {u: a for u, a in zip(dids, dev_ali) if a is not None}
    for split in ("train", "dev"):
        save_alignments(args.out_dir, split, data[split][0], alis[split])
    pdf_phone = {q: tokens[phone - 1] for phone, qs in model.pdfs_of.items() for q in qs}
    agree = {s: manual_agreement(data[s][0], alis[s], pdf_phone) for s in ("train", "dev")}
    print("frames whose aligned phone is the hand-labelled one: " + ", ".join(
        f"{s} {a:.1f}%" for s, a in agree.items() if a is not None))
    summary = {"topology": args.topology, "num_gauss": model.num_gauss,
               "train_seconds": round(train_s, 1), "aligned_train": len(alis["train"]),
               "aligned_dev": len(alis["dev"]), "manual_agreement_percent": agree}
    atomic_write_text(args.out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    if not args.no_decode:
        from decode_mono import decode_gmm

        decode_gmm(model, topo, data, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
