#!/usr/bin/env python3
"""Lang directories with G for TIMIT: the 48-phone phone LM and a CMUdict word LM.

* :func:`prepare_phone_lang` -- phone level (PER): the 48 phones of Lee & Hon (1989) (or the
  61), each its own word and token, no optional silence; G = an n-gram (Kneser-Ney, default a
  bigram) over the mapped ``.phn`` transcripts, every phone in the vocabulary.
* :func:`prepare_cmudict_lang` -- word level: the words of the ``.wrd`` transcripts with their
  CMUdict pronunciations (ARPAbet, stress removed,
  :func:`wfst_asr.graphs.lexicon.cmudict_lexicon`), tokens = the ARPAbet phones plus ``SIL``
  (optional silence, probability 0.5); G = an n-gram over the ``.wrd`` word sequences.

Both write ``<out_dir>/{lexicon.txt, lm.arpa}`` and the lang dir files of
:func:`wfst_asr.graphs.prepare_lang` plus ``G.fst`` / ``G.pt`` into ``out_dir``, ready for
:func:`wfst_asr.graphs.compile_graph`. Usage::

    python egs/timit/local/timit_graphs.py --timit-dir ../shared/data/timit_nltk_sample \\
        --out-dir data/graphs
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timit_lexicon import map_phones, phone_lexicon, phone_set
from timit_text import read_phn, read_wrd, utterances

from wfst_asr.graphs.lang import Lang, prepare_lang, write_lexicon
from wfst_asr.graphs.lexicon import cmudict_lexicon
from wfst_asr.graphs.lm import arpa_to_fst
from wfst_asr.graphs.ngram import estimate_ngram

PathLike = str | os.PathLike
SIL = "SIL"


def phone_transcripts(timit_dir: PathLike, name: str = "48") -> dict[str, list[str]]:
    """``{utt_id: phones}`` mapped to phone set ``name``."""
    return {u: map_phones(read_phn(p), name) for u, p in utterances(timit_dir).items()}


def word_transcripts(timit_dir: PathLike) -> dict[str, list[str]]:
    """``{utt_id: words}`` from the ``.wrd`` files."""
    return {u: read_wrd(p) for u, p in utterances(timit_dir).items()}


def _lm(out: Path, lang: Lang, sentences: list[list[str]], order: int, vocab: list[str]) -> None:
    estimate_ngram(sentences, order, "kneser_ney", vocab=vocab).write_arpa(out / "lm.arpa")
    arpa_to_fst(out / "lm.arpa", out / "words.txt", out_path=out / "G.fst")


def prepare_phone_lang(timit_dir: PathLike, out_dir: PathLike, order: int = 2,
                       name: str = "48") -> Lang:
    """Phone-level lang dir + G (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phones = phone_set(name)
    write_lexicon(out / "lexicon.txt", phone_lexicon(phones))
    lang = prepare_lang(out, out / "lexicon.txt", tokens=phones, sil_prob=0.0)
    _lm(out, lang, list(phone_transcripts(timit_dir, name).values()), order, phones)
    return lang


def prepare_cmudict_lang(timit_dir: PathLike, out_dir: PathLike, order: int = 3) -> Lang:
    """Word-level (CMUdict) lang dir + G (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sents = list(word_transcripts(timit_dir).values())
    lex = cmudict_lexicon(w for s in sents for w in s)
    write_lexicon(out / "lexicon.txt", lex)
    tokens = sorted({t for _, _, toks in lex for t in toks}) + [SIL]
    lang = prepare_lang(out, out / "lexicon.txt", tokens=tokens, sil_token=SIL, sil_prob=0.5)
    _lm(out, lang, sents, order, sorted({w for w, _, _ in lex}))
    return lang


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timit-dir", required=True)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--phone-order", type=int, default=2)
    parser.add_argument("--word-order", type=int, default=3)
    args = parser.parse_args(argv)
    for sub, lang in (("phone48", prepare_phone_lang(args.timit_dir, args.out_dir / "phone48",
                                                     args.phone_order)),
                      ("cmudict", prepare_cmudict_lang(args.timit_dir, args.out_dir / "cmudict",
                                                       args.word_order))):
        print(f"{args.out_dir / sub}: {len(lang.word_table) - 4} words, {len(lang.lexicon)} "
              f"prons, #0..#{lang.max_disambig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
