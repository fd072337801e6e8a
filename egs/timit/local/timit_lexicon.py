#!/usr/bin/env python3
"""TIMIT lexicons and lang directories (phone level for PER, word level from timitdic.txt).

* Phone level: each phone of the 61-phone TIMIT set (or of the 48- or 39-phone set of Lee & Hon,
  1989, folded by the table ``phones.60-48-39.map`` next to this file) is its own "word" and its
  own token; no optional silence (``h#``/``pau``/``epi`` or ``sil`` are words themselves).
* Word level: ``timitdic.txt`` (lines ``word  /ph1 ph2 .../``, comment lines start with ``;``),
  stress digits 1/2 stripped. Its 45 phonemic symbols all belong to the 61-phone set, so the
  tokens are the 61 TIMIT phones unchanged (or mapped to the 48-phone set), with ``h#`` (``sil``
  for 48) as optional silence.

Usage::

    python egs/timit/local/timit_lexicon.py --timit-dir ../shared/data/timit_nltk_sample \\
        --out-dir data [--phone-set 48]

writes ``data/local/lexicon_{phone,word}.txt`` and ``data/lang_{phone,word}/``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from wfst_asr.fsa.symbol_table import atomic_write_text
from wfst_asr.graphs.lang import Lang, LexiconEntry, prepare_lang, write_lexicon
from wfst_asr.scoring import PhoneMap

#: The standard TIMIT folding table (Lee & Hon, 1989; the file Kaldi's TIMIT recipe uses too):
#: one line ``phone61 phone48 phone39`` per phone of the 61-phone set, ``q`` alone on its line
#: (the glottal stop maps to nothing).
PHONE_MAP_FILE = Path(__file__).resolve().with_name("phones.60-48-39.map")


#: The folding table (wfst_asr.scoring.PhoneMap: sets "61", "48", "39").
PHONE_MAP = PhoneMap.from_file(PHONE_MAP_FILE)

#: The 61 phone labels of the TIMIT .phn files (in the order of the folding table).
PHONES_61 = tuple(PHONE_MAP.mapping("61"))

#: 61 -> 48 phones (Lee & Hon 1989); ``q`` (glottal stop) maps to nothing (None).
MAP_61_TO_48 = PHONE_MAP.mapping("48")
#: 61 -> 39 phones (the 48 folded further for scoring); ``q`` maps to nothing.
MAP_61_TO_39 = PHONE_MAP.mapping("39")
PHONES_48 = PHONE_MAP.phones("48")
PHONES_39 = PHONE_MAP.phones("39")
_MAPS = {"48": MAP_61_TO_48, "39": MAP_61_TO_39}

_DIC_RE = re.compile(r"(\S+)\s+/([^/]*)/\s*\Z")


def phone_set(name: str) -> list[str]:
    """The phones of set ``"61"``, ``"48"`` or ``"39"``."""
    if name not in ("61", "48", "39"):
        raise ValueError(f"unknown phone set {name!r} (61, 48 or 39)")
    return list(PHONES_61) if name == "61" else list(PHONES_48 if name == "48" else PHONES_39)


def map_phones(phones: Sequence[str], name: str) -> list[str]:
    """Map 61-set phones to set ``name`` (``q`` disappears in the 48 and 39 sets).

    Raises KeyError for a phone outside the 61-phone set (when ``name`` is not ``"61"``).
    """
    if name == "61":
        return list(phones)
    table = _MAPS[name]
    return [m for m in (table[p] for p in phones) if m is not None]


def read_timitdic(path: str | os.PathLike) -> list[LexiconEntry]:
    """Read ``timitdic.txt``: (word, None, phones) with stress digits removed.

    Raises ValueError naming the file and line for a line that is not ``word /phones/`` or has
    an empty transcription.
    """
    out: list[LexiconEntry] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for no, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(";"):
            continue
        m = _DIC_RE.match(line.strip())
        if m is None:
            raise ValueError(f"{os.fspath(path)}:{no}: expected 'word  /phones/', got {line!r}")
        phones = [re.sub(r"[12]\Z", "", p) for p in m.group(2).split()]
        if not phones:
            raise ValueError(f"{os.fspath(path)}:{no}: empty pronunciation for {m.group(1)!r}")
        out.append((m.group(1), None, phones))
    return out


def phone_lexicon(phones: Sequence[str]) -> list[LexiconEntry]:
    """Each phone is a word pronounced by itself."""
    return [(p, None, [p]) for p in phones]


def word_lexicon(timitdic: str | os.PathLike, name: str = "61") -> list[LexiconEntry]:
    """timitdic.txt mapped to phone set ``name``; ValueError for a phone outside the 61 set."""
    lex = read_timitdic(timitdic)
    for word, _, phones in lex:
        bad = [p for p in phones if p not in MAP_61_TO_48]
        if bad:
            raise ValueError(f"{os.fspath(timitdic)}: word {word!r} has phones {bad} outside "
                             "the 61-phone TIMIT set")
    return [(w, p, map_phones(ph, name)) for w, p, ph in lex]


def prepare_timit_langs(timit_dir: str | os.PathLike, out_dir: str | os.PathLike,
                        name: str = "61") -> tuple[Lang, Lang]:
    """Write lexicons and ``lang_phone`` / ``lang_word`` under ``out_dir``; returns both."""
    out = Path(out_dir)
    (out / "local").mkdir(parents=True, exist_ok=True)
    phones = phone_set(name)
    tokens_path = out / "local" / "phones.txt"
    atomic_write_text(tokens_path, "".join(f"{p}\n" for p in phones))
    write_lexicon(out / "local" / "lexicon_phone.txt", phone_lexicon(phones))
    write_lexicon(out / "local" / "lexicon_word.txt",
                  word_lexicon(Path(timit_dir) / "timitdic.txt", name))
    lang_phone = prepare_lang(out / "lang_phone", out / "local" / "lexicon_phone.txt",
                              tokens=tokens_path, sil_prob=0.0)
    sil = "h#" if name == "61" else "sil"
    lang_word = prepare_lang(out / "lang_word", out / "local" / "lexicon_word.txt",
                             tokens=tokens_path, sil_token=sil, sil_prob=0.5)
    return lang_phone, lang_word


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timit-dir", required=True, help="folder holding timitdic.txt")
    parser.add_argument("--out-dir", required=True, help="output folder (e.g. data)")
    parser.add_argument("--phone-set", choices=("61", "48", "39"), default="61")
    args = parser.parse_args(argv)
    for lang in prepare_timit_langs(args.timit_dir, args.out_dir, args.phone_set):
        n_tok = len(lang.token_table) - 1 - (lang.max_disambig + 1)
        print(f"{lang.lang_dir}: {n_tok} tokens, {len(lang.word_table) - 4} words, "
              f"{len(lang.lexicon)} prons, #0..#{lang.max_disambig}, L {lang.L.num_states} "
              f"states {lang.L.num_arcs} arcs, L_disambig {lang.L_disambig.num_arcs} arcs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
