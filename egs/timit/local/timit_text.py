#!/usr/bin/env python3
"""TIMIT transcripts (``.phn`` / ``.wrd``) and a CMUdict word lexicon for their words.

Works on a full LDC TIMIT tree (``TRAIN/DR1/FCJF0/SA1.PHN``) as well as on the NLTK sample
(``dr1-fvmh0/sa1.phn``): an utterance is any ``*.phn`` file (any case) with its ``.wrd`` next to
it; utterance ids are ``<speaker folder>/<name>`` (lower case), sorted.

* :func:`utterances` -- ``{utt_id: path without extension}``;
* :func:`read_phn` / :func:`read_wrd` -- the label column of a ``.phn`` / ``.wrd`` file.

The command line prints counts of the utterances, phones and words, and the size of the
words' CMUdict lexicon (:func:`wfst_asr.graphs.lexicon.cmudict_lexicon`).

Example::

    python egs/timit/local/timit_text.py --timit-dir ../shared/data/timit_nltk_sample
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from wfst_asr.atomic import read_text
from wfst_asr.graphs.lexicon import cmudict_lexicon

PathLike = str | os.PathLike


def utterances(timit_dir: PathLike) -> dict[str, Path]:
    """``{speaker/utt: path without extension}`` of every ``.phn`` file under ``timit_dir``."""
    root = Path(timit_dir)
    out: dict[str, Path] = {}
    for p in root.rglob("*"):
        if p.suffix.lower() == ".phn" and p.is_file():
            out[f"{p.parent.name}/{p.stem}".lower()] = p.with_suffix("")
    if not out:
        raise FileNotFoundError(f"no .phn files under {root}")
    return dict(sorted(out.items()))


def _labels(path: Path, exts: tuple[str, str]) -> list[str]:
    """Third column of ``start end label`` lines; ValueError naming file:line otherwise (bytes
    that are not UTF-8 included)."""
    for ext in exts:
        f = path.with_suffix(ext)
        if f.is_file():
            break
    else:
        raise FileNotFoundError(f"{path}{exts[0]} not found")
    out = []
    for no, line in enumerate(read_text(f).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not (fields[0].isascii() and fields[0].isdigit()
                                    and fields[1].isascii() and fields[1].isdigit()):
            raise ValueError(f"{f}:{no}: expected 'start end label' (sample numbers, a label), "
                             f"got {line!r}")
        out.append(fields[2])
    return out


def read_phn(path: PathLike) -> list[str]:
    """The phone labels (61-phone set) of ``<path>.phn``."""
    return _labels(Path(path), (".phn", ".PHN"))


def read_wrd(path: PathLike) -> list[str]:
    """The words (lower case, as written in the file) of ``<path>.wrd``."""
    return _labels(Path(path), (".wrd", ".WRD"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timit-dir", required=True)
    args = parser.parse_args(argv)
    utts = utterances(args.timit_dir)
    phones = Counter(p for u in utts.values() for p in read_phn(u))
    words = Counter(w for u in utts.values() for w in read_wrd(u))
    lex = cmudict_lexicon(words)
    print(f"{len(utts)} utterances, {sum(phones.values())} phone tokens ({len(phones)} types), "
          f"{sum(words.values())} word tokens ({len(words)} types), CMUdict: {len(lex)} prons")
    return 0


if __name__ == "__main__":
    sys.exit(main())
