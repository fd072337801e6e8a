"""The OpenFst binary format (its one home in wfst_asr), and fast exact transfer of arcs between
numpy and kaldifst through OpenFst's binary ``const`` FST.

OpenFst binary FSTs
-------------------
Every OpenFst binary FST file starts with OpenFst's ``FstHeader`` (:class:`FstHeader`, read by
:meth:`Reader.header`, written by :meth:`FstHeader.to_bytes`), little-endian:

* int32 magic 2125659606 (:data:`FST_MAGIC`), string fst type (``"vector"``, ``"const"``),
  string arc type (``"standard"``: tropical; Kaldi's ``"lattice4"``, ``"compactlattice44"``),
  int32 version, int32 flags (1: input symbols follow, 2: output symbols, 4: aligned), uint64
  properties, int64 start, int64 num_states, int64 num_arcs;
* strings are an int32 length then bytes (:func:`fst_string`);
* optional symbol tables (int32 magic 2125658996, string name, int64 available key, int64 size,
  then size x (string symbol, int64 key)).

The body depends on the fst type and the arc type: the ``const`` body of ``standard`` arcs is
below; ``vector`` FSTs of Kaldi lattice arcs are in :mod:`wfst_asr.decode.kaldi_lattice`.
:class:`Reader` reads all of them: a short read or a bad value raises ValueError naming the file.

Const FSTs of standard arcs
---------------------------
kaldifst's Python arc iterators cost several microseconds per arc; instead we let OpenFst write
(or read) a ``ConstFst<StdArc>`` file (version 2), whose body is two flat arrays that numpy
handles at once:

* states: num_states x (float32 final cost, uint32 first arc, uint32 num arcs, uint32 input
  epsilons, uint32 output epsilons), 16-byte aligned when flag 4 is set;
* arcs: num_arcs x (int32 ilabel, int32 olabel, float32 cost, int32 nextstate), likewise.

Anything unexpected makes :func:`read_const` return None (callers then iterate arcs).
"""

from __future__ import annotations

import os
import struct
import tempfile
from typing import NamedTuple

import numpy as np

FST_MAGIC = 2125659606
FST_MAGIC_BYTES = struct.pack("<i", FST_MAGIC)  # how every OpenFst binary FST file starts
SYMTAB_MAGIC = 2125658996
FLAG_ISYMS, FLAG_OSYMS, FLAG_ALIGNED = 1, 2, 4
PROP_EXPANDED, PROP_MUTABLE = 0x1, 0x2  # all other properties "unknown" (computed on demand)
STATE_DT = np.dtype([("final", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("nieps", "<u4"),
                     ("noeps", "<u4")])
ARC_DT = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"),
                   ("nextstate", "<i4")])


def fst_string(s: str | bytes) -> bytes:
    """OpenFst's binary string: int32 length, then the (UTF-8) bytes."""
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<i", len(b)) + b


class FstHeader(NamedTuple):
    """OpenFst's ``FstHeader`` (layout: the module docstring)."""

    fst_type: str
    arc_type: str
    version: int
    flags: int
    properties: int
    start: int
    num_states: int
    num_arcs: int

    def to_bytes(self) -> bytes:
        return (FST_MAGIC_BYTES + fst_string(self.fst_type) + fst_string(self.arc_type)
                + struct.pack("<iiQqqq", self.version, self.flags, self.properties, self.start,
                              self.num_states, self.num_arcs))


class Reader:
    """Little-endian reads of OpenFst binary data ``buf`` from byte ``pos`` on.

    Every error is a ValueError that starts with ``name`` (the file, or a file and an archive
    entry) when one is given.
    """

    def __init__(self, buf: bytes, pos: int = 0, name: str = "") -> None:
        self.buf, self.pos, self.name = buf, pos, name

    def error(self, message: str) -> ValueError:
        return ValueError(f"{self.name}: {message}" if self.name else message)

    def _need(self, n: int) -> None:
        if n < 0:
            raise self.error(f"negative size {n} at byte {self.pos}")
        if self.pos + n > len(self.buf):
            raise self.error(f"unexpected end of data at byte {self.pos} (truncated file?)")

    def take(self, n: int) -> bytes:
        self._need(n)
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str) -> tuple:
        """``struct`` format ``fmt`` (without byte order: always little-endian)."""
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> bytes:
        """An OpenFst string (:func:`fst_string`)."""
        (n,) = self.unpack("i")
        return self.take(n)

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        """``count`` items of ``dtype``, a read-only view of the buffer."""
        self._need(dtype.itemsize * count)
        a = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += dtype.itemsize * count
        return a

    def align(self) -> None:
        self.pos = (self.pos + 15) // 16 * 16

    def header(self) -> FstHeader:
        """An ``FstHeader``; ValueError for data that is not an OpenFst binary FST or is cut
        short."""
        if self.buf[self.pos:self.pos + 4] != FST_MAGIC_BYTES:
            raise self.error(f"not an OpenFst binary FST (no magic number {FST_MAGIC} at byte "
                             f"{self.pos})")
        self.pos += 4
        fst_type = self.string().decode(errors="replace")
        arc_type = self.string().decode(errors="replace")
        return FstHeader(fst_type, arc_type, *self.unpack("iiQqqq"))

    def skip_symbol_table(self) -> None:
        if self.unpack("i")[0] != SYMTAB_MAGIC:
            raise self.error(f"bad symbol table at byte {self.pos - 4}")
        self.string()
        _, size = self.unpack("qq")
        for _ in range(size):
            self.string()
            self.take(8)


def _tmp_file() -> str:
    fd, path = tempfile.mkstemp(prefix="wfst_asr-", suffix=".fst")
    os.close(fd)
    return path


def read_const(kfst, fst) -> tuple | None:
    """``(start, states, arcs)`` structured arrays of ``fst`` via a const-FST file, or None."""
    const = fst if isinstance(fst, kfst.StdConstFst) else kfst.StdConstFst(fst)
    path = _tmp_file()
    try:
        if not const.write(path):
            return None
        with open(path, "rb") as f:
            buf = f.read()
    finally:
        os.unlink(path)
    try:
        return _parse_const(buf)
    except ValueError:
        return None


def _parse_const(buf: bytes) -> tuple | None:
    r = Reader(buf)
    h = r.header()
    if h.fst_type != "const" or h.arc_type != "standard":
        return None
    if h.flags & FLAG_ISYMS:
        r.skip_symbol_table()
    if h.flags & FLAG_OSYMS:
        r.skip_symbol_table()
    if h.flags & FLAG_ALIGNED:
        r.align()
    states = r.array(STATE_DT, h.num_states)
    if h.flags & FLAG_ALIGNED:
        r.align()
    arcs = r.array(ARC_DT, h.num_arcs)
    narcs = states["narcs"].astype(np.int64)
    if r.pos != len(buf) or narcs.sum() != h.num_arcs or \
            (states["pos"].astype(np.int64) != np.cumsum(narcs) - narcs).any():
        return None
    return h.start, states, arcs


def const_bytes(start: int, final_costs: np.ndarray, src: np.ndarray, ilabel: np.ndarray,
                olabel: np.ndarray, cost: np.ndarray, dst: np.ndarray) -> bytes:
    """A const-FST file for states ``0..len(final_costs)-1``; arcs must be sorted by ``src``."""
    ns, na = len(final_costs), len(src)
    states = np.zeros(ns, dtype=STATE_DT)
    states["final"] = final_costs
    narcs = np.bincount(src, minlength=ns)
    states["narcs"] = narcs
    states["pos"] = np.cumsum(narcs) - narcs
    states["nieps"] = np.bincount(src[ilabel == 0], minlength=ns)
    states["noeps"] = np.bincount(src[olabel == 0], minlength=ns)
    arcs = np.empty(na, dtype=ARC_DT)
    arcs["ilabel"], arcs["olabel"], arcs["weight"], arcs["nextstate"] = ilabel, olabel, cost, dst
    header = FstHeader("const", "standard", 2, 0, PROP_EXPANDED, start, ns, na).to_bytes()
    return header + states.tobytes() + arcs.tobytes()


def vector_fst_from_bytes(kfst, data: bytes):
    """Read const-FST bytes with OpenFst and return them as a ``StdVectorFst`` (or None)."""
    path = _tmp_file()
    try:
        with open(path, "wb") as f:
            f.write(data)
        const = kfst.StdConstFst.read(path)
    finally:
        os.unlink(path)
    return None if const is None else kfst.StdVectorFst(const)
