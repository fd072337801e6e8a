"""``wfst-asr estimate-lm``, ``prune-lm`` and ``compile-lm``: n-gram LMs (ARPA) and the grammar G.

A bad input (a text or ARPA file that is missing, not UTF-8 or malformed, an empty text, an
order above the longest n-gram of the text, a missing output folder) is one line ``wfst-asr
CMD: error: FILE[:LINE]: what`` and exit code 2 (:func:`wfst_asr.bin.cli.main`); nothing is
written.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wfst_asr.graphs.ngram import NgramModel

_SKIP_VOCAB = re.compile(r"^(<eps>|<s>|</s>|#\d+)$")
_SENTENCE_NO = re.compile(r"^sentence \d+: ")


class _Text:
    """The sentences of a text file (``-``: standard input), with the line being read, the
    number of sentences and the longest one, for error messages and checks."""

    def __init__(self, path: str, skip_first_field: bool, keep_only: set[str] | None = None
                 ) -> None:
        self.path, self.skip, self.keep_only = path, skip_first_field, keep_only
        self.name = "<stdin>" if path == "-" else path
        self.lineno = self.sentences = self.longest = self.dropped = 0

    def _lines(self) -> Iterator[str]:
        from wfst_asr.atomic import iter_text_lines, utf8_error

        if self.path != "-":
            yield from iter_text_lines(self.path)
            return
        for no, raw in enumerate(sys.stdin.buffer, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise utf8_error(self.name, raw, e, no) from None

    def __iter__(self) -> Iterator[list[str]]:
        """The words of each non-blank line."""
        for no, line in enumerate(self._lines(), start=1):
            self.lineno = no
            words = line.split()[1:] if self.skip else line.split()
            if words and self.keep_only is not None and not set(words) <= self.keep_only:
                self.dropped += 1  # --drop-oov-sentences
                continue
            if words:
                self.sentences += 1
                self.longest = max(self.longest, len(words))
                yield words


def read_vocab(path: str) -> list[str]:
    """Words of a vocabulary file: the first field of each line (``words.txt`` or a word list),
    without ``<eps>``, ``<s>``, ``</s>`` and ``#N`` disambiguation symbols."""
    from wfst_asr.atomic import iter_text_lines

    first = (line.split()[0] for line in iter_text_lines(path) if line.strip())
    return [w for w in first if not _SKIP_VOCAB.match(w)]


def _counts(model: NgramModel) -> str:
    """``1-grams: M1, 2-grams: M2, ...`` of ``model``."""
    return ", ".join(f"{n}-grams: {m}" for n, m in enumerate(model.counts, start=1))


def _prune(model: NgramModel, threshold: float, min_order: int) -> NgramModel:
    """Relative-entropy pruning, with the counts before and after on stderr."""
    from wfst_asr.graphs.ngram_prune import prune_ngram

    start = time.perf_counter()
    pruned = prune_ngram(model, threshold, min_order=min_order)
    changes = ", ".join(f"{n}-grams: {a} -> {b}" for n, (a, b)
                        in enumerate(zip(model.counts, pruned.counts), start=1))
    print(f"pruned with threshold {threshold:g} (orders >= {min_order}): {changes} in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return pruned


def cmd_estimate_lm(args: argparse.Namespace) -> int:
    """Estimate an n-gram LM from a text file (then prune it with ``--prune``) and write it as
    ARPA; refuse an empty text and an order above the longest n-gram of the text (<s>, the
    longest sentence, </s>)."""
    from wfst_asr.graphs.ngram import estimate_ngram

    start = time.perf_counter()
    if args.order < 1:
        raise ValueError(f"--order must be >= 1, got {args.order}")
    if args.prune is not None:
        from wfst_asr.graphs.ngram_prune import check_pruning_args

        check_pruning_args(args.prune, 2)
    vocab = read_vocab(args.vocab) if args.vocab else None
    if args.drop_oov_sentences and vocab is None:
        raise ValueError("--drop-oov-sentences needs --vocab")
    text = _Text(args.text, args.skip_first_field,
                 set(vocab) if args.drop_oov_sentences and vocab is not None else None)
    try:
        model = estimate_ngram(text, args.order, method=args.method, vocab=vocab, unk=args.unk)
    except ValueError as e:  # a word of the sentence being read: name the line
        if not _SENTENCE_NO.match(str(e)):
            raise
        raise ValueError(f"{text.name}:{text.lineno}: {_SENTENCE_NO.sub('', str(e))}") from None
    if text.dropped:
        print(f"{text.name}: dropped {text.dropped} sentences with words outside {args.vocab}",
              file=sys.stderr)
    if text.sentences == 0 and text.dropped:
        raise ValueError(f"{text.name}: no sentences left: all {text.dropped} have a word "
                         f"outside {args.vocab} (--drop-oov-sentences)")
    if text.sentences == 0:
        raise ValueError(f"{text.name}: no sentences (the text is empty or blank); an LM of "
                         "<s> </s> alone would be useless")
    if args.order > text.longest + 2:
        raise ValueError(f"{text.name}: --order {args.order} is above {text.longest + 2}, the "
                         f"longest n-gram of the text (<s>, its longest sentence of "
                         f"{text.longest} words, </s>): the higher orders would be empty")
    if args.prune is not None:
        model = _prune(model, args.prune, 2)
    model.write_arpa(args.out)
    print(f"wrote {args.out} ({model.method}, {_counts(model)}) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def cmd_prune_lm(args: argparse.Namespace) -> int:
    """Prune an ARPA LM by relative entropy (Stolcke 1998) and write it as ARPA."""
    from wfst_asr.graphs.ngram import read_arpa
    from wfst_asr.graphs.ngram_prune import check_pruning_args

    start = time.perf_counter()
    check_pruning_args(args.threshold, args.min_order)
    model = _prune(read_arpa(args.arpa), args.threshold, args.min_order)
    model.write_arpa(args.out)
    print(f"wrote {args.out} ({_counts(model)}) in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0


def cmd_compile_lm(args: argparse.Namespace) -> int:
    """Compile an ARPA LM into G (OpenFst binary + .pt) over words.txt."""
    from wfst_asr.graphs.lm import arpa_to_fst, g_pt_path

    start = time.perf_counter()
    g = arpa_to_fst(args.arpa, args.words, args.out, disambig_symbol=args.disambig,
                    max_order=args.max_order)
    print(f"wrote {args.out} and {g_pt_path(args.out)}: {g.num_states} states, "
          f"{g.num_arcs} arcs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    """Perplexity and OOV rate of each ``--arpa`` on each ``--text`` (a TSV table)."""
    from wfst_asr.graphs.ngram import perplexity, read_arpa

    texts = [(t, list(_Text(t, args.skip_first_field))) for t in args.text]
    print("lm\torder\tngrams\ttext\tsentences\twords\toovs\toov_rate\tppl")
    for path in args.arpa:
        model = read_arpa(path)
        for name, sentences in texts:
            r = perplexity(model, sentences)
            print(f"{path}\t{model.order}\t{sum(model.counts)}\t{name}\t{r.sentences}\t"
                  f"{r.words}\t{r.oovs}\t{100 * r.oov_rate:.2f}%\t{r.ppl:.2f}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``estimate-lm``, ``prune-lm``, ``compile-lm`` and ``lm-eval`` to the ``wfst-asr``
    sub-commands."""
    ev = sub.add_parser(
        "lm-eval", help="perplexity and OOV rate of ARPA LMs on texts",
        description="Perplexity of each ARPA LM on each text, SRILM's way: out-of-vocabulary "
        "words are not predicted (counted as OOVs) and start a new history; </s> is predicted. "
        "Prints a TSV table: lm, order, n-grams, text, sentences, words, OOVs, OOV rate, ppl.")
    ev.add_argument("--arpa", action="append", required=True, help="an ARPA LM (repeatable)")
    ev.add_argument("--text", action="append", required=True, help="a text (repeatable)")
    ev.add_argument("--skip-first-field", action="store_true",
                    help="drop the first field of each line (Kaldi 'text': utterance ids)")
    ev.set_defaults(func=cmd_lm_eval)
    est = sub.add_parser(
        "estimate-lm", help="estimate an n-gram LM (Kneser-Ney / Witten-Bell) as ARPA",
        description="Estimate an interpolated modified Kneser-Ney (kn) or Witten-Bell (wb) "
        "back-off n-gram LM from a text file (one sentence per line, words separated by "
        "white space; <s> and </s> are added) and write it as an ARPA file, atomically.")
    est.add_argument("--text", required=True, help="training text ('-': standard input)")
    est.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    est.add_argument("--method", choices=("kn", "wb"), default="kn",
                     help="kn: interpolated modified Kneser-Ney (default); wb: Witten-Bell")
    est.add_argument("--out", required=True, help="output ARPA file")
    est.add_argument("--vocab", help="vocabulary file (words.txt or one word a line; first "
                     "field; <eps>, <s>, </s>, #N skipped): every word gets a unigram")
    est.add_argument("--drop-oov-sentences", action="store_true",
                     help="with --vocab: leave out (and count) the sentences with a word outside "
                          "it, e.g. words a lexicon could not spell")
    est.add_argument("--unk", help="with --vocab: map words outside it to this word "
                     "(default: an error)")
    est.add_argument("--skip-first-field", action="store_true",
                     help="drop the first field of each line (Kaldi 'text': utterance ids)")
    est.add_argument("--prune", type=float, default=None, metavar="THRESHOLD",
                     help="then prune by relative entropy (Stolcke; SRILM's -prune), as "
                     "prune-lm --threshold THRESHOLD")
    est.set_defaults(func=cmd_estimate_lm)

    prune = sub.add_parser(
        "prune-lm", help="prune an ARPA LM by relative entropy (Stolcke; SRILM -prune)",
        description="Remove the n-grams (order >= --min-order) whose removal alone raises the "
        "model's relative entropy by less than THRESHOLD (Stolcke 1998: ~ the relative "
        "perplexity increase; e.g. 1e-7 as icefall's 3-gram.pruned.1e-7), never the context of "
        "a kept higher-order n-gram; recompute the back-off weights; write ARPA atomically.")
    prune.add_argument("--arpa", required=True, help="input ARPA file")
    prune.add_argument("--threshold", type=float, required=True,
                       help="relative-entropy threshold (>= 0; 0 keeps everything)")
    prune.add_argument("--out", required=True, help="output ARPA file")
    prune.add_argument("--min-order", type=int, default=2,
                       help="prune only n-grams of this order and above (default 2)")
    prune.set_defaults(func=cmd_prune_lm)

    comp = sub.add_parser(
        "compile-lm", help="compile an ARPA LM into G.fst (+ G.pt) over words.txt",
        description="Compile an ARPA LM into the grammar transducer G with kaldilm's arpa2fst "
        "(back-off arcs #0:<eps>, <s>/</s> removed), over the ids of words.txt; write it as an "
        "OpenFst binary and a torch file (same name, .pt), atomically. Every ARPA word must be "
        "in words.txt.")
    comp.add_argument("--arpa", required=True, help="input ARPA file")
    comp.add_argument("--words", required=True, help="words.txt (symbol id per line)")
    comp.add_argument("--out", required=True, help="output G.fst (G.pt is written next to it)")
    comp.add_argument("--disambig", default="#0",
                      help="input label of back-off arcs (default '#0'; '' for epsilon)")
    comp.add_argument("--max-order", type=int, default=None,
                      help="use n-grams up to this order only (default: all)")
    comp.set_defaults(func=cmd_compile_lm)
