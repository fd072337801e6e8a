"""Kaldi-style text files and the one scoring function of decoding and of ``wfst-asr score``.

* :func:`read_text` / :func:`write_text`: Kaldi's ``text`` format, ``utt w1 w2 ...`` one
  utterance a line (an utterance with no words is its id alone); :func:`read_utt2spk` /
  :func:`write_utt2spk`: ``utt speaker`` lines;
* :class:`Fold`: a folding of the symbols before scoring through a :class:`~.phone_map.PhoneMap`
  table (e.g. TIMIT's 48 -> 39 phones), :func:`load_phone_map` reads a table and names its
  columns;
* :func:`score_texts`: references and hypotheses (utterance id -> symbols), folded by a
  :class:`Fold`, scored as WER / PER (symbols as they are) or CER (the characters of the words,
  spaces left out) with :func:`~.edit_distance.score`. The dev tuning of ``wfst-asr decode``
  and the reports of ``wfst-asr score`` both call it, so a tuned error is the scored one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..atomic import atomic_write_text, iter_text_lines
from .edit_distance import ScoreReport, score
from .phone_map import DEFAULT_SETS, PhoneMap

__all__ = ["METRICS", "Fold", "load_phone_map", "read_text", "read_utt2spk", "score_texts",
           "write_text", "write_utt2spk"]

#: The metrics :func:`score_texts` knows.
METRICS = ("WER", "PER", "CER")

PathLike = str | os.PathLike


def read_text(path: PathLike) -> dict[str, list[str]]:
    """``{utt: words}`` of a Kaldi ``text`` file (blank lines skipped); ValueError naming the
    file and line for an utterance id given twice or bytes that are not UTF-8."""
    out: dict[str, list[str]] = {}
    for no, line in enumerate(iter_text_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] in out:
            raise ValueError(f"{os.fspath(path)}:{no}: utterance {fields[0]!r} appears twice")
        out[fields[0]] = fields[1:]
    return out


def write_text(path: PathLike, texts: Mapping[str, Sequence[str]]) -> None:
    """Write ``{utt: words}`` as a Kaldi ``text`` file (sorted by utterance id), atomically."""
    lines = [" ".join([utt, *map(str, texts[utt])]) for utt in sorted(texts)]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def read_utt2spk(path: PathLike) -> dict[str, str]:
    """``{utt: speaker}`` of an ``utt2spk`` file; ValueError naming the line for a line
    without exactly two fields."""
    out: dict[str, str] = {}
    for utt, rest in read_text(path).items():
        if len(rest) != 1:
            raise ValueError(f"{os.fspath(path)}: utterance {utt!r}: expected 'utt speaker', got "
                             f"{len(rest) + 1} fields")
        out[utt] = rest[0]
    return out


def write_utt2spk(path: PathLike, speaker_of: Mapping[str, str]) -> None:
    """Write ``{utt: speaker}`` as ``utt2spk`` (sorted by utterance id), atomically."""
    write_text(path, {u: [s] for u, s in speaker_of.items()})


def load_phone_map(path: PathLike) -> PhoneMap:
    """A folding table whose column names come from the file: a first ``# name name ...``
    line with as many names as the widest line has columns (what :meth:`PhoneMap.write`
    writes), else ``61 48 39`` for a three-column table (TIMIT's), else ``1 2 ... n``."""
    header: list[str] | None = None
    width = 0
    for line in iter_text_lines(path):
        fields = line.split()
        if not fields:
            continue
        if fields[0].startswith("#"):
            if header is None and width == 0 and fields[0] == "#":
                header = fields[1:]
            continue
        width = max(width, len(fields))
    if header is not None and len(header) == width and len(set(header)) == width >= 2:
        sets: Sequence[str] = header
    elif width == len(DEFAULT_SETS):
        sets = DEFAULT_SETS
    else:
        sets = [str(i) for i in range(1, max(width, 2) + 1)]
    return PhoneMap.from_file(path, sets)


@dataclass(frozen=True)
class Fold:
    """Symbols of column ``source`` of the table ``map_file`` mapped to column ``to`` (those
    mapped to nothing dropped); ``Fold.load`` reads the table. Calling it folds one sequence
    (ValueError for a symbol not in ``source``)."""

    map_file: str
    source: str
    to: str
    table: PhoneMap = field(repr=False, compare=False)

    @classmethod
    def load(cls, map_file: PathLike, source: str, to: str) -> Fold:
        """Read ``map_file`` (:func:`load_phone_map`); ValueError naming the file's columns
        for an unknown ``source`` or ``to``."""
        table = load_phone_map(map_file)
        for name in (source, to):
            if str(name) not in table.sets:
                raise ValueError(f"{os.fspath(map_file)}: no column {name!r} (its columns: "
                                 f"{' '.join(table.sets)})")
        table.mapping(str(to), str(source))  # a function between the two columns, or an error
        return cls(os.fspath(map_file), str(source), str(to), table)

    def __call__(self, seq: Sequence[str]) -> list[str]:
        return self.table.fold(seq, to=self.to, source=self.source)

    def describe(self) -> str:
        return f"folded {self.source} -> {self.to} by {self.map_file}"

    def as_dict(self) -> dict[str, str]:
        return {"file": self.map_file, "from": self.source, "to": self.to}


def _units(seq: Sequence[str], metric: str) -> list[str]:
    return list("".join(seq)) if metric == "CER" else list(seq)


def score_texts(refs: Mapping[str, Sequence[str]], hyps: Mapping[str, Sequence[str]],
                speaker_of: Mapping[str, str] | Callable[[str], str | None] | None = None,
                metric: str = "WER", fold: Callable[[Sequence[str]], list[str]] | None = None
                ) -> ScoreReport:
    """Score ``hyps`` against ``refs`` (utterance id -> symbols) after folding both with
    ``fold``: WER / PER on the symbols, CER on their characters (spaces left out).

    ``speaker_of``: the per-speaker breakdown; an utterance it does not know (a mapping without
    it, a function returning None) is counted in the totals only. An utterance of ``refs``
    without a hypothesis counts as all deletions; a hypothesis without a reference is a
    ValueError (:func:`~.edit_distance.score`).
    """
    metric = metric.upper()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    f = fold or list
    ref_units = {u: _units(f(r), metric) for u, r in refs.items()}
    hyp_units = {u: _units(f(h), metric) for u, h in hyps.items()}
    spk = speaker_of.get if isinstance(speaker_of, Mapping) else speaker_of
    return score(ref_units, hyp_units, spk, metric=metric)
