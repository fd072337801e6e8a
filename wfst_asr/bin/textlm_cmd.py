"""``wfst-asr train-mlm`` / ``soft-labels``: the text teacher of BERT distillation and its
offline soft labels (Futami et al. 2020), :mod:`wfst_asr.train.textlm` and
:mod:`wfst_asr.train.distill`.

::

    wfst-asr cuts-text --cuts data/fbank/cuts_train.jsonl.gz --field phones_48 --out text_train
    wfst-asr train-mlm text_train data/lang_phone/tokens.txt exp/mlm --dev-text text_dev
    wfst-asr soft-labels --teacher exp/mlm/textlm.pt --cuts data/fbank/cuts_train.jsonl.gz \\
        --tokens data/lang_phone/tokens.txt --field phones_48 --k 8 \\
        --out data/fbank/cuts_train.soft_mlm.pt

The units are the ASR model's (``tokens.txt``, ids from 1); ``--objective causal`` trains the
left-to-right transformer LM instead (LM distillation, ``decode --text-lm``).
"""

from __future__ import annotations

import argparse
import sys


def _table(tokens: str) -> dict[str, int]:
    from wfst_asr.train.build import token_table

    return token_table(tokens)


def _tokens_checksum(tokens: str) -> str | None:
    from wfst_asr.decode.lattice_io import symbol_table_checksum

    return symbol_table_checksum(tokens)


def cmd_train_mlm(args: argparse.Namespace) -> int:
    from wfst_asr.train.textlm import context_windows, read_unit_text, train_text_lm

    table = _table(args.tokens)
    oov: list[str] | None = [] if args.oov == "skip" else None
    utts, seqs, empty = read_unit_text(args.text, table, args.tokens, oov)
    ctx = args.context_tokens if args.objective == "mlm" else 0
    train = context_windows(utts, seqs, args.chapter_regex, ctx)
    if args.dev_text:
        d_utts, d_seqs, d_empty = read_unit_text(args.dev_text, table, args.tokens, oov)
        empty += d_empty
        dev = context_windows(d_utts, d_seqs, args.chapter_regex, ctx)
    else:  # a seeded random tenth, at least one
        import random

        order = list(range(len(train)))
        random.Random(args.seed).shuffle(order)
        n_dev = max(1, len(order) // 10)
        held = set(order[:n_dev])
        dev = [train[i] for i in sorted(held)]
        train = [e for i, e in enumerate(train) if i not in held]
    if empty:
        print(f"train-mlm: skipped {empty} empty transcripts", file=sys.stderr)
    if oov:
        print(f"train-mlm: skipped {len(oov)} transcripts with a unit not in {args.tokens}: "
              f"{'; '.join(oov[:3])}{' ...' if len(oov) > 3 else ''}", file=sys.stderr)
    kwargs = {"d_model": args.d_model, "nhead": args.nhead, "num_layers": args.num_layers,
              "dim_feedforward": args.dim_feedforward, "dropout": args.dropout,
              "max_len": args.max_len}
    meta = {"tokens_checksum": _tokens_checksum(args.tokens), "context_tokens": ctx,
            "chapter_regex": args.chapter_regex if ctx else None}
    try:
        _, rec = train_text_lm(train, dev, max(table.values()) + 1, args.exp_dir,
                               kind=args.objective, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, model_kwargs=kwargs,
                               mask_prob=args.mask_prob, seed=args.seed, device=args.device,
                               resume=args.resume, meta=meta)
    except RuntimeError as e:  # a checkpoint that cannot be resumed, a device, ...: one line
        raise ValueError(str(e)) from e
    for r in rec["history"]:
        print(f"epoch {r['epoch']}: train loss {r.get('train_loss', float('nan')):.4f}, "
              f"dev loss {r.get('dev_loss') or float('nan'):.4f}")
    what = "pseudo-perplexity" if args.objective == "mlm" else "perplexity"
    print(f"dev ({len(dev)} utterances, {rec['tokens']} tokens): {what} {rec['ppl']:.3f}, "
          f"{'masked-token' if args.objective == 'mlm' else 'next-token'} accuracy "
          f"{rec['accuracy']:.2f}% (best epoch {rec['best_epoch']}) -> "
          f"{args.exp_dir}/textlm.pt")
    return 0


def cmd_soft_labels(args: argparse.Namespace) -> int:
    from wfst_asr.train.checkpoint import CheckpointError
    from wfst_asr.train.distill import cut_token_seqs, make_soft_labels
    from wfst_asr.train.textlm import load_text_lm

    try:
        teacher = load_text_lm(args.teacher, args.device)
    except CheckpointError as e:
        raise ValueError(str(e)) from e
    table = _table(args.tokens)
    if teacher.vocab_size != max(table.values()) + 1:
        raise ValueError(f"the teacher {args.teacher} has {teacher.vocab_size} classes, "
                         f"{args.tokens} gives {max(table.values()) + 1} (blank + tokens)")
    want = teacher.meta.get("tokens_checksum")
    if want is not None and want != _tokens_checksum(args.tokens):
        raise ValueError(f"the teacher {args.teacher} was trained over other tokens than "
                         f"{args.tokens}")
    utts, seqs = cut_token_seqs(args.cuts, args.field, table)
    summary = make_soft_labels(teacher, args.teacher, utts, seqs, args.out, k=args.k,
                               context_tokens=args.context_tokens,
                               chapter_regex=args.chapter_regex, chunk=args.chunk,
                               batch_size=args.batch_size, progress=not args.no_progress)
    skipped = summary["skipped_empty"] + summary["skipped_long"]
    print(f"soft labels (top {args.k}) of {summary['utts']} utterances, {summary['tokens']} "
          f"tokens -> {args.out}" + (f"; {skipped} skipped ({summary['skipped_empty']} empty, "
                                     f"{summary['skipped_long']} longer than the teacher's "
                                     "max_len)" if skipped else "")
          + (f"; {summary['reused_parts']} chunks reused" if summary["reused_parts"] else ""))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train-mlm`` and ``soft-labels`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser("train-mlm", help="train a masked (or left-to-right) transformer LM "
                       "over the ASR model's units",
                       description="Train the BERT-style masked LM teacher of distillation "
                       "(or, --objective causal, a left-to-right transformer LM) on a Kaldi "
                       "text file in the model's units; reports the dev pseudo-perplexity / "
                       "masked-token accuracy (perplexity / next-token accuracy) and writes "
                       "EXP_DIR/textlm.pt.")
    p.add_argument("text", help="training text: 'utt unit unit ...' per line")
    p.add_argument("tokens", help="the ASR model's tokens.txt")
    p.add_argument("exp_dir", help="output directory (checkpoints, textlm.pt)")
    p.add_argument("--dev-text", help="dev text (default: a random tenth of the training text)")
    p.add_argument("--objective", choices=("mlm", "causal"), default="mlm")
    p.add_argument("--oov", choices=("error", "skip"), default="error",
                   help="a transcript with a unit not in TOKENS: an error naming it, or "
                   "skipped (counted, the first named)")
    p.add_argument("--context-tokens", type=int, default=0,
                   help="mlm: tokens of the previous and of the next utterances of the same "
                   "chapter in the input (0: the utterance alone)")
    p.add_argument("--chapter-regex", default=None,
                   help="the chapter of an utterance id: the regex's first group (e.g. "
                   "'^(LJ[0-9]+)-'); ids are sorted within a chapter")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--nhead", type=int, default=4)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--dim-feedforward", type=int, default=1024)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--max-len", type=int, default=512, help="longest input (with context)")
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true",
                   help="continue after the newest epoch checkpoint in EXP_DIR")
    p.set_defaults(func=cmd_train_mlm)

    p = sub.add_parser("soft-labels", help="the teacher's top-k soft labels of the training "
                       "transcripts (offline, resumable)",
                       description="For every transcript of a cuts manifest and every token "
                       "position, the teacher's distribution (MLM: the position masked, with "
                       "the chapter context it was trained with; causal LM: the next token), "
                       "top-k renormalised, into one file read by the attention criterion "
                       "(loss.soft_labels). Chunks are kept in OUT.parts/ until the end, so a "
                       "rerun resumes; the file is written under a temporary name and renamed.")
    p.add_argument("--teacher", required=True, help="textlm.pt of wfst-asr train-mlm")
    p.add_argument("--cuts", required=True, help="the training cuts")
    p.add_argument("--tokens", required=True, help="the ASR model's tokens.txt")
    p.add_argument("--field", default="text", help="supervision field of the transcripts")
    p.add_argument("--out", required=True, help="output file (e.g. next to the cuts)")
    p.add_argument("--k", type=int, default=8, help="labels kept per position")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="override the teacher's context budget (0: none)")
    p.add_argument("--chapter-regex", default=None, help="override the teacher's")
    p.add_argument("--chunk", type=int, default=200, help="utterances per resumable chunk")
    p.add_argument("--batch-size", type=int, default=512, help="masked copies per forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_soft_labels)
