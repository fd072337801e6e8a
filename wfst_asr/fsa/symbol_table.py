"""Symbol tables in the Kaldi/OpenFst text format (``words.txt``, ``tokens.txt``, ``phones.txt``).

Format: one ``symbol id`` pair per line, separated by whitespace (spaces or a tab); ``id`` is a
non-negative integer (ASCII digits) below 2**31 (labels are int32). Blank lines are ignored. Symbols and ids must both be unique. By the usual
convention id 0 is epsilon (``<eps>``) or blank (``<blk>``); :attr:`SymbolTable.eps` is whatever
symbol has id 0.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator

from ..atomic import atomic_write_text, read_text

__all__ = ["SymbolTable", "atomic_write_text"]

_ID_RE = re.compile(r"[0-9]+\Z")
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_MAX_ID = 2 ** 31 - 1


class SymbolTable:
    """A bijection between symbols (str) and ids (int >= 0).

    Example::

        >>> st = SymbolTable.from_str("<eps> 0\\na 1\\nb 2\\n")
        >>> st["a"], st[2], "b" in st, len(st)
        (1, 'b', True, 3)
    """

    def __init__(self, pairs: dict[str, int] | None = None) -> None:
        self._sym2id: dict[str, int] = {}
        self._id2sym: dict[int, str] = {}
        self._max_id = -1  # kept up to date by _add_new, so add() is O(1)
        for sym, i in (pairs or {}).items():
            self.add(sym, i)

    # ------------------------------------------------------------------ parsing / writing
    @classmethod
    def from_str(cls, s: str, source: str = "<string>") -> SymbolTable:
        """Parse ``symbol id`` lines; errors are ValueErrors naming ``source`` and the line."""
        table = cls()
        for lineno, line in enumerate(s.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{source}:{lineno}"
            if len(fields) != 2:
                raise ValueError(f"{where}: expected 'symbol id' (2 fields), got "
                                 f"{len(fields)}: {line!r}")
            sym, id_str = fields
            if not _INT_RE.match(id_str):
                raise ValueError(f"{where}: id {id_str!r} is not an integer")
            i = int(id_str)
            if i > _MAX_ID:
                raise ValueError(f"{where}: id {i} does not fit in int32 (labels are int32)")
            try:
                table._add_new(sym, i)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return table

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SymbolTable:
        """Read a ``words.txt``-style file (UTF-8; errors name the file and line)."""
        return cls.from_str(read_text(path), source=os.fspath(path))

    def to_str(self) -> str:
        """``symbol id`` lines sorted by id, each ending with a newline."""
        return "".join(f"{self._id2sym[i]} {i}\n" for i in sorted(self._id2sym))

    def to_file(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_str` to ``path`` atomically."""
        atomic_write_text(path, self.to_str())

    # ------------------------------------------------------------------ lookup
    def get(self, key: str | int) -> int | str:
        """The id of a symbol (str key) or the symbol of an id (int key); KeyError if absent."""
        if isinstance(key, str):
            return self._sym2id[key]
        if isinstance(key, int) or hasattr(key, "__index__"):
            return self._id2sym[int(key)]
        raise TypeError(f"SymbolTable keys are str or int, got {type(key).__name__}")

    def __getitem__(self, key: str | int) -> int | str:
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._sym2id
        if isinstance(key, int):
            return key in self._id2sym
        return False

    def __len__(self) -> int:
        return len(self._sym2id)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """``(symbol, id)`` pairs sorted by id."""
        return iter(self.items())

    def items(self) -> list[tuple[str, int]]:
        return [(self._id2sym[i], i) for i in sorted(self._id2sym)]

    @property
    def symbols(self) -> list[str]:
        """All symbols, sorted by id."""
        return [self._id2sym[i] for i in sorted(self._id2sym)]

    @property
    def ids(self) -> list[int]:
        """All ids, sorted."""
        return sorted(self._id2sym)

    @property
    def eps(self) -> str | None:
        """The symbol with id 0 (epsilon/blank), or None."""
        return self._id2sym.get(0)

    @property
    def max_id(self) -> int:
        """The largest id, -1 for an empty table."""
        return self._max_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolTable) and self._sym2id == other._sym2id

    def __repr__(self) -> str:
        return f"SymbolTable(num_symbols={len(self)}, max_id={self.max_id})"

    # ------------------------------------------------------------------ building
    def _add_new(self, sym: str, i: int) -> None:
        if not sym or any(c.isspace() for c in sym):
            raise ValueError(f"invalid symbol {sym!r} (empty or containing whitespace)")
        if i < 0:
            raise ValueError(f"negative id {i} for symbol {sym!r}")
        if sym in self._sym2id:
            raise ValueError(f"duplicate symbol {sym!r} (ids {self._sym2id[sym]} and {i})")
        if i in self._id2sym:
            raise ValueError(f"duplicate id {i} (symbols {self._id2sym[i]!r} and {sym!r})")
        self._sym2id[sym] = i
        self._id2sym[i] = sym
        self._max_id = max(self._max_id, i)

    def add(self, symbol: str, id: int | None = None) -> int:
        """Add ``symbol`` (with ``id``, default ``max_id + 1``); returns its id.

        Adding a symbol that is already present with the same id (or with ``id=None``) is a
        no-op; a conflicting symbol or id raises ValueError.
        """
        if symbol in self._sym2id and (id is None or self._sym2id[symbol] == id):
            return self._sym2id[symbol]
        i = self.max_id + 1 if id is None else int(id)
        self._add_new(symbol, i)
        return i

    def merge(self, other: SymbolTable) -> SymbolTable:
        """A new table with the symbols of both; ValueError if they disagree on a pair."""
        out = SymbolTable()
        for sym, i in self.items() + other.items():
            out.add(sym, i)
        return out

    def copy(self) -> SymbolTable:
        return SymbolTable(dict(self._sym2id))

    # ------------------------------------------------------------------ kaldifst interop
    def to_kaldifst(self):
        """This table as a ``kaldifst.SymbolTable``."""
        from wfst_asr._kaldi import kaldifst as _kfst
        kst = _kfst().SymbolTable()
        for sym, i in self.items():
            kst.add_symbol(sym, i)
        return kst

    @classmethod
    def from_kaldifst(cls, kst) -> SymbolTable:
        """Convert a ``kaldifst.SymbolTable``: keys ``0 .. available_key()-1`` are scanned when
        they are dense, else (a table read from a file may have any keys) its text dump is
        read. ValueError for a symbol or key this class does not allow."""
        table = cls()
        if kst.available_key() <= 2 * kst.num_symbols() + 1024:
            for i in range(kst.available_key()):
                sym = kst.find(i)
                if sym:
                    table.add(sym, i)
            return table
        fd, path = tempfile.mkstemp(prefix="wfst_asr-", suffix=".syms")
        os.close(fd)
        try:
            if not kst.write_text(path):
                raise ValueError("could not dump the OpenFst symbol table")
            text = read_text(path)
        finally:
            os.unlink(path)
        for no, line in enumerate(text.splitlines(), start=1):
            sym, _, key = line.rpartition("\t")
            if not _ID_RE.match(key) or int(key) > _MAX_ID:
                raise ValueError(f"OpenFst symbol table, entry {no}: key {key!r} is not an "
                                 "int32 label")
            table.add(sym, int(key))
        return table
