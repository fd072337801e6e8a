"""``wfst-asr compile-lang``: build a lang directory (tokens.txt, words.txt, L.fst, ...);
``wfst-asr train-bpe``: a sentencepiece model for a word-piece lang directory."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Build an icefall-style lang directory from a Kaldi lexicon (lexicon.txt: "word tok1 tok2 ...",
or lexiconp.txt: "word prob tok1 tok2 ..."). Writes tokens.txt (<blk> 0, tokens, #0 #1 ...),
words.txt (<eps> 0, sorted words, #0 <s> </s>), lexicon_disambig.txt, L.fst and
L_disambig.fst (OpenFst binary, tokens -> words), L.pt and L_disambig.pt (wfst_asr.fsa.save)."""


def add_lang_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``compile-lang``."""
    parser.add_argument("--lang-dir", required=True, help="output directory (created)")
    parser.add_argument("--lexicon", required=True,
                        help="lexicon.txt or lexiconp.txt (probability column detected)")
    parser.add_argument("--tokens", default=None,
                        help="token list (one a line, or a tokens.txt with ids) fixing the token "
                             "ids; default: the lexicon's tokens, sorted")
    parser.add_argument("--sil-token", default=None,
                        help="optional-silence token (e.g. SIL); default: no optional silence")
    parser.add_argument("--sil-prob", type=float, default=0.5,
                        help="probability of silence at the start and after each word, in "
                             "[0, 1) (default 0.5; 0: no optional silence)")
    parser.add_argument("--oov-word", default=None,
                        help="word used for OOVs (must be in the lexicon), written to oov.txt")


def run_prepare_lang(args: argparse.Namespace) -> int:
    """Call :func:`wfst_asr.graphs.lang.prepare_lang`; print a summary. A bad input raises (one
    line and exit code 2 through :func:`wfst_asr.bin.cli.main`)."""
    from wfst_asr.graphs.lang import prepare_lang

    lang = prepare_lang(args.lang_dir, args.lexicon, tokens=args.tokens,
                        sil_token=args.sil_token, sil_prob=args.sil_prob,
                        oov_word=args.oov_word)
    n_tok = len(lang.token_table) - 1 - (lang.max_disambig + 1)
    n_words = len(lang.word_table) - 4
    print(f"{lang.lang_dir}: {n_tok} tokens (+ <blk>, #0..#{lang.max_disambig}), {n_words} words, "
          f"{len(lang.lexicon)} pronunciations, L: {lang.L.num_states} states "
          f"{lang.L.num_arcs} arcs, L_disambig: {lang.L_disambig.num_arcs} arcs")
    return 0


def run_train_bpe(args: argparse.Namespace) -> int:
    """Call :func:`wfst_asr.graphs.bpe.train_bpe`; a bad input raises (exit code 2)."""
    from wfst_asr.graphs.bpe import load_bpe, train_bpe

    model = train_bpe(args.text, args.out_dir, vocab_size=args.vocab_size,
                      model_type=args.model_type, skip_first_field=args.utt_ids)
    print(f"{model}: {load_bpe(model).get_piece_size()} pieces ({args.model_type}) from "
          f"{', '.join(args.text)}")
    return 0


BPE_DESCRIPTION = """Train a sentencepiece model (unigram by default, as icefall's lang_bpe_500) on text files and
write OUT_DIR/bpe.model and bpe.vocab. Then spell the words in pieces and build the lang dir:

  wfst-asr train-bpe --text data/lm_text --vocab-size 500 --out-dir data/lang_bpe_500
  wfst-asr lexicon --text data/lm_text --bpe-model data/lang_bpe_500/bpe.model \
      --out data/lang_bpe_500/lexicon.txt
  wfst-asr compile-lang --lang-dir data/lang_bpe_500 --lexicon data/lang_bpe_500/lexicon.txt"""


def cmd_spell(args: argparse.Namespace) -> int:
    """Spell word transcripts (a Kaldi text file or a cuts manifest's supervision text) in a
    lexicon's tokens."""
    import sys

    from wfst_asr.atomic import atomic_output, atomic_write_text, iter_text_lines
    from wfst_asr.graphs.lexicon import first_pronunciations, spell_words

    if bool(args.lexicon) == bool(args.bpe_model):
        raise ValueError("give one of --lexicon or --bpe-model")
    if args.lexicon:
        prons = first_pronunciations(args.lexicon)
    else:  # any word: its most likely pieces
        from wfst_asr.graphs.bpe import load_bpe

        sp = load_bpe(args.bpe_model)

        class _Pieces(dict):
            def get(self, w, default=None):
                return list(sp.encode(w, out_type=str))
        prons = _Pieces()
    source = args.lexicon or args.bpe_model
    skipped: list[str] = []

    def spell(words: list[str], where: str) -> list[str] | None:
        toks, oov = spell_words(words, prons)
        if oov is None:
            return toks
        if args.oov == "error":
            raise ValueError(f"{where}: word {oov!r} is not in {source}")
        skipped.append(f"{where} ({oov!r})")
        return None

    if bool(args.text) == bool(args.cuts):
        raise ValueError("give one of --text or --cuts")
    n = 0
    if args.text:
        lines = []
        for i, line in enumerate(iter_text_lines(args.text), start=1):
            f = line.split()
            if not f:
                continue
            head, words = (f[:1], f[1:]) if not args.no_utt_id else ([], f)
            toks = spell(words, f"{args.text}:{i}")
            if toks is not None:
                lines.append(" ".join([*head, *toks]) + "\n")
        atomic_write_text(args.out, "".join(lines))
        n = len(lines)
    else:
        from lhotse import CutSet

        keep = []
        for cut in CutSet.from_file(args.cuts):
            ok = True
            for sup in cut.supervisions:
                toks = spell((sup.text or "").split(), f"{args.cuts}: cut {cut.id}")
                if toks is None:
                    ok = False
                    break
                sup.custom = {**(sup.custom or {}), args.field: " ".join(toks)}
            if ok:
                keep.append(cut)
        with atomic_output(args.out) as tmp:
            CutSet.from_cuts(keep).to_file(tmp)
        n = len(keep)
    if skipped:
        print(f"spell: {len(skipped)} skipped with a word outside the lexicon: "
              f"{'; '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
    print(f"spell: {n} transcripts in the tokens of {source} -> {args.out}",
          file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``compile-lang``, ``train-bpe`` and ``spell`` to the ``wfst-asr`` sub-commands."""
    p = sub.add_parser("spell", help="word transcripts spelled in a lexicon's tokens",
                       description="Spell each transcript's words in the tokens of a lexicon "
                       "(its first pronunciation), or in the pieces of a sentencepiece model "
                       "(--bpe-model: any word): a "
                       "Kaldi text file (--text, first field the utterance id) or the "
                       "supervision text of a cuts manifest (--cuts: the tokens go to the "
                       "custom field --field). Transcripts with a word outside the lexicon "
                       "are skipped and counted (--oov error: an error naming it).")
    p.add_argument("--lexicon", help="lexicon.txt")
    p.add_argument("--bpe-model", help="a sentencepiece model (bpe.model of a BPE lang dir)")
    p.add_argument("--text", help="a Kaldi text file")
    p.add_argument("--cuts", help="a cuts manifest")
    p.add_argument("--field", default="tokens", help="--cuts: the supervision field written")
    p.add_argument("--no-utt-id", action="store_true", help="--text lines have no id")
    p.add_argument("--oov", choices=("skip", "error"), default="skip")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_spell)

    p = sub.add_parser("train-bpe", help="a sentencepiece (BPE/unigram) model on text",
                       description=BPE_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", action="append", required=True,
                   help="a text file, a sentence a line (repeatable)")
    p.add_argument("--utt-ids", action="store_true",
                   help="--text lines start with an utterance id (Kaldi text): skip it")
    p.add_argument("--vocab-size", type=int, default=500, help="pieces (default 500)")
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    p.add_argument("--out-dir", required=True, help="where bpe.model and bpe.vocab go")
    p.set_defaults(func=run_train_bpe)
    p = sub.add_parser("compile-lang", help="build a lang directory (tokens.txt, words.txt, L)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_lang_arguments(p)
    p.set_defaults(func=run_prepare_lang)
