"""``wfst-asr align``: forced alignments of transcripts with a trained model, as CTM, with
boundary accuracy against reference segmentations and optional pictures
(:mod:`wfst_asr.train.aligner`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Align each set's transcripts (--ref-field, default the model's token field) with the model of
an experiment directory (segmental, CTC, HMM / LF-MMI models, or a monophone GMM directory with
--lang-dir) and write OUT/<set>.ctm. With --ref-alignment TYPE (the supervisions' lhotse
alignment of that type, e.g. TIMIT's hand-labelled phones, symbols folded with --map) or
--ref-frames-field (per-frame reference labels, `wfst-asr frame-labels`), also score boundary
accuracy: the share of reference boundaries within 10/20/30/40 ms (OUT/boundaries.txt, and
printed). With --plot DIR, one PNG per utterance: features, frame posteriors, reference and
hypothesis segments.

  wfst-asr align --exp-dir exp/segmental_blstm --cuts test=data/frames/timit_cuts_test.jsonl.gz \\
      --ref-field phones_48 --ref-alignment phone --map local/phones.60-48-39.map \\
      --map-from 61 --map-to 48 --out-dir exp/segmental_blstm/ali"""


def cmd_align(args: argparse.Namespace) -> int:
    from lhotse import CutSet

    from wfst_asr.atomic import atomic_write_text
    from wfst_asr.scoring.boundaries import boundary_accuracy
    from wfst_asr.train.aligner import Aligner, AlignError, reference_alignments, write_ctm

    try:
        sets = {}
        for item in args.cuts:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise AlignError(f"--cuts {item!r}: expected NAME=PATH")
            if not Path(path).is_file():
                raise AlignError(f"{path}: no such cuts file ({name})")
            sets[name] = path
        tols = [float(t) / 1000 for t in args.tolerances_ms.split(",") if t.strip()]
        mapping = None
        if args.map:
            from wfst_asr.scoring.text import load_phone_map

            mapping = load_phone_map(args.map).mapping(args.map_to, args.map_from)
        aligner = Aligner(args.exp_dir, args.lang_dir, ref_field=args.ref_field,
                          device=args.device)
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lines = []
        for name, path in sets.items():
            hyps, outputs = aligner.align(path, keep_outputs=bool(args.plot))
            write_ctm(out / f"{name}.ctm", hyps)
            failed = sorted(u for u, s in hyps.items() if not s)
            msg = f"{name}: {len(hyps)} utterances aligned -> {out / f'{name}.ctm'}"
            if failed:
                msg += f" ({len(failed)} without a path, e.g. {failed[0]})"
            refs = None
            if args.ref_frames_field or args.ref_alignment:
                refs = reference_alignments(path, args.ref_frames_field, args.ref_alignment,
                                            mapping)
                rep = boundary_accuracy(refs, hyps, tols)
                line = f"{name} boundary accuracy: {rep.summary()}"
                lines.append(line)
                msg += "\n" + line
            print(msg)
            if args.plot:
                from wfst_asr.scoring.plot import plot_alignment

                pdir = Path(args.plot) / name
                pdir.mkdir(parents=True, exist_ok=True)
                n = 0
                for cut in CutSet.from_file(path):
                    u = cut.supervisions[0].id
                    if u not in hyps or n >= args.max_plots:
                        continue
                    import torch

                    feats = torch.from_numpy(cut.load_features())
                    step = aligner.subsampling * float(cut.frame_shift)
                    plot_alignment(pdir / f"{u}.png", feats, float(cut.frame_shift),
                                   outputs.get(u), step, refs.get(u) if refs else None,
                                   hyps[u], title=f"{u} ({aligner.loss})")
                    n += 1
                print(f"{name}: {n} pictures -> {pdir}")
        if lines:
            atomic_write_text(out / "boundaries.txt", "\n".join(lines) + "\n")
    except (AlignError, OSError, ValueError, KeyError) as e:
        print(f"wfst-asr align: error: {e}", file=sys.stderr)
        return 2
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``align`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser("align", help="forced alignments as CTM, boundary accuracy, pictures",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp-dir", required=True, help="the experiment directory")
    p.add_argument("--cuts", action="append", required=True, metavar="NAME=PATH",
                   help="a set to align (repeatable)")
    p.add_argument("--out-dir", required=True, help="where the CTM files go")
    p.add_argument("--lang-dir", default=None,
                   help="the lang dir (its tokens.txt: needed for a GMM directory)")
    p.add_argument("--ref-field", default=None,
                   help="the supervision field of the transcripts (default: the model's "
                        "token field)")
    p.add_argument("--ref-frames-field", default=None,
                   help="per-frame reference labels: score boundary accuracy against them")
    p.add_argument("--ref-alignment", default=None, metavar="TYPE",
                   help="score boundary accuracy against the supervisions' alignment of this "
                        "type (e.g. phone)")
    p.add_argument("--map", default=None, help="a symbol map table for --ref-alignment")
    p.add_argument("--map-from", default=None, help="its column of the alignment symbols")
    p.add_argument("--map-to", default=None, help="its column of the model's tokens")
    p.add_argument("--tolerances-ms", default="10,20,30,40",
                   help="boundary accuracy tolerances (default 10,20,30,40)")
    p.add_argument("--plot", default=None, metavar="DIR", help="write a PNG per utterance")
    p.add_argument("--max-plots", type=int, default=20, help="pictures per set (default 20)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_align)
