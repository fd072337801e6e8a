"""Phone folding tables (e.g. TIMIT's 61 -> 48 -> 39 phones) for scoring.

A table file has one line per phone of the largest set, its image in each smaller set after
it::

    # phone61 phone48 phone39
    aa   aa   aa
    ao   ao   aa
    ax-h ah   ah
    q

A line with only the first phone (``q``) maps it to nothing in every other set; ``-`` in a
column maps it to nothing in that set only. Blank lines and lines starting with ``#`` are
ignored (a ``#`` inside a line is part of a phone, as in TIMIT's ``h#``).
Folding drops the phones that map to nothing. The library holds no corpus data: the tables
live with the recipes (``egs/timit/local/phones.60-48-39.map``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from ..atomic import atomic_write_text, iter_text_lines

__all__ = ["NOTHING", "PhoneMap", "read_phone_map", "write_phone_map"]

#: Written in a column to say "maps to nothing in this set".
NOTHING = "-"

#: The column names of a table when none are given.
DEFAULT_SETS = ("61", "48", "39")


class PhoneMap:
    """Maps phones of the first set (``sets[0]``) to each of the other sets.

    ``rows`` maps each phone of the first set to its images in ``sets[1:]`` in order,
    ``None`` for "nothing".
    """

    def __init__(
        self,
        rows: Mapping[str, Sequence[str | None]],
        sets: Sequence[str] = DEFAULT_SETS,
    ) -> None:
        self.sets = tuple(str(s) for s in sets)
        if len(self.sets) < 2 or len(set(self.sets)) != len(self.sets):
            raise ValueError(f"a phone map needs two or more distinct set names, got {sets!r}")
        self._rows: dict[str, tuple[str | None, ...]] = {}
        for phone, images in rows.items():
            images = tuple(images)
            if len(images) != len(self.sets) - 1:
                raise ValueError(f"phone {phone!r}: {len(images)} images for sets {self.sets[1:]}")
            self._rows[phone] = images
        self._cache: dict[tuple[str, str], dict[str, str | None]] = {}

    # ---- construction and I/O ----------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike, sets: Sequence[str] = DEFAULT_SETS) -> PhoneMap:
        """Read a table file (see the module doc); ValueError naming file and line for a
        malformed or repeated line (or bytes that are not UTF-8)."""
        n = len(sets)
        rows: dict[str, tuple[str | None, ...]] = {}
        for lineno, line in enumerate(iter_text_lines(path), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"{os.fspath(path)}:{lineno}"
            if len(fields) not in (1, n):
                raise ValueError(
                    f"{where}: expected 1 or {n} columns ({' '.join(sets)}), got "
                    f"{len(fields)}: {line.strip()!r}"
                )
            phone = fields[0]
            if phone == NOTHING:
                raise ValueError(f"{where}: the first column cannot be {NOTHING!r}")
            if phone in rows:
                raise ValueError(f"{where}: phone {phone!r} appears twice")
            if len(fields) == 1:
                rows[phone] = (None,) * (n - 1)
            else:
                rows[phone] = tuple(None if x == NOTHING else x for x in fields[1:])
        if not rows:
            raise ValueError(f"{os.fspath(path)}: no phones in the table")
        return cls(rows, sets)

    def to_text(self) -> str:
        """The table in the file format (a lone phone for a phone mapped to nothing)."""
        lines = ["# " + " ".join(self.sets)]
        for phone, images in self._rows.items():
            if all(x is None for x in images):
                lines.append(phone)
            else:
                lines.append(" ".join([phone, *(NOTHING if x is None else x for x in images)]))
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write the table to ``path`` atomically; :meth:`from_file` reads it back."""
        atomic_write_text(path, self.to_text())

    # ---- queries -----------------------------------------------------------------------

    def _index(self, name: str) -> int:
        try:
            return self.sets.index(str(name))
        except ValueError:
            raise ValueError(f"unknown phone set {name!r}; this map has {self.sets}") from None

    def _column(self, i: int) -> list[str | None]:
        return list(self._rows) if i == 0 else [imgs[i - 1] for imgs in self._rows.values()]

    def phones(self, name: str | None = None) -> list[str]:
        """The distinct phones of set ``name`` (the first set by default), sorted."""
        i = self._index(self.sets[0] if name is None else name)
        return sorted({p for p in self._column(i) if p is not None})

    def mapping(self, to: str, source: str | None = None) -> dict[str, str | None]:
        """Phone of set ``source`` (the first set by default) -> phone of set ``to`` or
        ``None``. ValueError when the table does not define a function between the two
        sets (a ``source`` phone with two different images)."""
        source = self.sets[0] if source is None else str(source)
        key = (source, str(to))
        if key not in self._cache:
            src, dst = self._column(self._index(source)), self._column(self._index(to))
            out: dict[str, str | None] = {}
            for s, d in zip(src, dst):
                if s is None:
                    continue
                if s in out and out[s] != d:
                    raise ValueError(
                        f"set {source} -> {to} is not a mapping: {s!r} goes to both "
                        f"{out[s]!r} and {d!r}"
                    )
                out[s] = d
            self._cache[key] = out
        return dict(self._cache[key])

    def fold(self, seq: Iterable[str], to: str = "39", source: str | None = None) -> list[str]:
        """Map the phones of ``seq`` (set ``source``, the first by default) to set ``to``,
        dropping those that map to nothing; ValueError for a phone not in ``source``."""
        if source is None:
            source = self.sets[0]
        self.mapping(to, source)  # fills the cache
        m = self._cache[(str(source), str(to))]
        out = []
        for p in seq:
            try:
                q = m[p]
            except KeyError:
                raise ValueError(f"phone {p!r} is not in set {source} of this map") from None
            if q is not None:
                out.append(q)
        return out

    def fold_all(
        self, texts: Mapping[str, Sequence[str]], to: str = "39", source: str | None = None
    ) -> dict[str, list[str]]:
        """:meth:`fold` every sequence of ``texts`` (utterance id -> phones)."""
        return {utt: self.fold(seq, to, source) for utt, seq in texts.items()}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, phone: object) -> bool:
        return phone in self._rows

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PhoneMap):
            return NotImplemented
        return self.sets == other.sets and self._rows == other._rows

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PhoneMap({len(self)} phones, sets {'/'.join(self.sets)})"


def read_phone_map(path: str | os.PathLike, sets: Sequence[str] = DEFAULT_SETS) -> PhoneMap:
    """Same as :meth:`PhoneMap.from_file`."""
    return PhoneMap.from_file(path, sets)


def write_phone_map(path: str | os.PathLike, phone_map: PhoneMap) -> None:
    """Same as :meth:`PhoneMap.write`."""
    phone_map.write(path)
