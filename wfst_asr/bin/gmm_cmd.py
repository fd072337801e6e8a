"""``wfst-asr train-mono``: a monophone GMM-HMM on any lhotse cuts, and its alignments
(:mod:`wfst_asr.gmm.recipe`).

::

    wfst-asr train-mono --train-cuts data/fbank/timit_cuts_train.jsonl.gz \\
        --align-cuts data/fbank/timit_cuts_dev.jsonl.gz --lang-dir data/lang_phone \\
        --token-field phones_48 --out-dir exp/mono
    wfst-asr train-mono --train-cuts data/fbank/yesno_cuts_train.jsonl.gz --lang-dir data/lang \\
        --token-field text --optional-silence SIL --out-dir exp/mono

A bad input (a missing file, a token not in tokens.txt, a word not in the lexicon, ...) is one
line ``wfst-asr train-mono: error: FILE[:LINE]: what`` on stderr and exit code 2 (``--debug``:
the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys

DESCRIPTION = """\
Train a monophone GMM-HMM (Kaldi's train_mono.sh schedule, kaldi-hmm-gmm; 13 MFCCs + deltas,
per-speaker CMN, computed from the cuts' audio) on --train-cuts and write its per-frame pdf
alignments of the training cuts and of every --align-cuts set. Cuts that also carry features
(e.g. fbank) get exactly their frame count, so the alignments fit them. Outputs in --out-dir:
gmm.pt, train_log.tsv, summary.json, and per set NAME: ali_NAME.pt and cuts_NAME.jsonl.gz (the
input cuts with the alignment in the supervision field --ali-field; cuts that cannot be aligned
are left out and counted). NAME: give NAME=PATH, or it is the file name without its manifest
suffix (.jsonl.gz, .jsonl, .json.gz, .json), and of that the part after the last underscore:
timit_cuts_dev.jsonl.gz -> dev."""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None


def _prob(text: str) -> float:
    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0.0 < p < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {text!r}")
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train-mono`` to the ``wfst-asr`` sub-commands."""
    from wfst_asr.gmm.mono import MonoOptions

    d = MonoOptions()
    p = sub.add_parser("train-mono", help="train a monophone GMM-HMM on cuts and align them",
                       description=DESCRIPTION)
    p.add_argument("--train-cuts", required=True, metavar="[NAME=]PATH",
                   help="cuts with recordings to train on (and align)")
    p.add_argument("--align-cuts", action="append", default=[], metavar="[NAME=]PATH",
                   help="another cut set to align with the trained model (repeatable)")
    p.add_argument("--lang-dir", required=True,
                   help="tokens.txt; lexicon.txt (or lexiconp.txt) and words.txt for "
                        "--token-field text")
    p.add_argument("--token-field", required=True,
                   help="supervision custom field with the token transcript, or 'text' for "
                        "the word transcript (through the lang dir's lexicon)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--topology", default="hmm-3state", choices=("hmm-3state", "hmm-1state"))
    p.add_argument("--optional-silence", metavar="TOKEN",
                   help="a token (e.g. SIL) the training graphs allow at the start and after "
                        "every word (token), as Kaldi's L with sil_prob: for transcripts "
                        "without silence")
    p.add_argument("--sil-prob", type=_prob, default=0.5,
                   help="probability of the optional silence (default 0.5)")
    p.add_argument("--num-iters", type=int, default=d.num_iters,
                   help=f"EM iterations (default {d.num_iters})")
    p.add_argument("--max-iter-inc", type=int, default=d.max_iter_inc,
                   help=f"add Gaussians after iterations 0..N (default {d.max_iter_inc})")
    p.add_argument("--tot-gauss", type=int, default=d.tot_gauss,
                   help=f"target number of Gaussians (default {d.tot_gauss})")
    p.add_argument("--realign-iters", type=_ints, default=d.realign_iters, metavar="I,J,...",
                   help="iterations that realign first (default Kaldi's: "
                        f"{','.join(map(str, d.realign_iters))})")
    p.add_argument("--acoustic-scale", type=float, default=d.acoustic_scale,
                   help=f"GMM log-likelihood scale in alignment (default {d.acoustic_scale})")
    p.add_argument("--self-loop-scale", type=float, default=0.1,
                   help="scale of the HMM self-loop log-probs (default 0.1, as Kaldi)")
    p.add_argument("--ali-field", default="gmm_ali",
                   help="supervision field of the alignments (default gmm_ali)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=cmd_train_mono)


def cmd_train_mono(args: argparse.Namespace) -> int:
    """Run :func:`wfst_asr.gmm.recipe.run_train_mono`; exit 2 with one line on bad input."""
    from wfst_asr.gmm.mono import MonoOptions
    from wfst_asr.gmm.recipe import InputError, parse_set, run_train_mono
    from wfst_asr.train.lock import ExpDirLock

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    opts = MonoOptions(num_iters=args.num_iters, max_iter_inc=args.max_iter_inc,
                       tot_gauss=args.tot_gauss, realign_iters=args.realign_iters,
                       acoustic_scale=args.acoustic_scale)
    try:
        with ExpDirLock(args.out_dir, what=" ".join(sys.argv)[:300]):  # one run at a time
            run_train_mono(parse_set(args.train_cuts), [parse_set(s) for s in args.align_cuts],
                           args.lang_dir, args.token_field, args.out_dir, args.topology, opts,
                           args.self_loop_scale, args.optional_silence, args.sil_prob,
                           args.ali_field, say=lambda line: print(line, flush=True))
    except (InputError, OSError) as e:
        if args.debug:
            raise
        from wfst_asr.bin.cli import error_message

        print(f"wfst-asr train-mono: error: {error_message(e)}", file=sys.stderr)
        return 2
    return 0
