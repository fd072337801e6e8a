"""Fast exact transfer of arcs between numpy and kaldifst through OpenFst's binary ``const`` FST.

kaldifst's Python arc iterators cost several microseconds per arc; instead we let OpenFst write
(or read) a ``ConstFst<StdArc>`` file, whose body is two flat arrays that numpy handles at once:

* header: int32 magic 2125659606, string fst type ("const"), string arc type ("standard"),
  int32 version (2), int32 flags (1: input symbols follow, 2: output symbols, 4: aligned),
  uint64 properties, int64 start, int64 num_states, int64 num_arcs; strings are an int32 length
  then bytes; optional symbol tables (int32 magic 2125658996, string name, int64 available key,
  int64 size, then size x (string symbol, int64 key));
* states: num_states x (float32 final cost, uint32 first arc, uint32 num arcs, uint32 input
  epsilons, uint32 output epsilons), 16-byte aligned when flag 4 is set;
* arcs: num_arcs x (int32 ilabel, int32 olabel, float32 cost, int32 nextstate), likewise.

Anything unexpected makes :func:`read_const` return None (callers then iterate arcs).
"""

from __future__ import annotations

import os
import struct
import tempfile

import numpy as np

FST_MAGIC = 2125659606
SYMTAB_MAGIC = 2125658996
FLAG_ISYMS, FLAG_OSYMS, FLAG_ALIGNED = 1, 2, 4
PROP_EXPANDED = 0x1  # the only property we assert; all others are "unknown" (computed on demand)
STATE_DT = np.dtype([("final", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("nieps", "<u4"),
                     ("noeps", "<u4")])
ARC_DT = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"),
                   ("nextstate", "<i4")])


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.off = buf, 0

    def unpack(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.off)
        self.off += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string(self) -> bytes:
        n = self.unpack("i")
        if n < 0 or self.off + n > len(self.buf):
            raise ValueError("bad string")
        s = self.buf[self.off:self.off + n]
        self.off += n
        return s

    def skip_symbol_table(self) -> None:
        if self.unpack("i") != SYMTAB_MAGIC:
            raise ValueError("bad symbol table")
        self.string()
        _, size = self.unpack("qq")
        for _ in range(size):
            self.string()
            self.off += 8

    def align(self) -> None:
        self.off = (self.off + 15) // 16 * 16

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        a = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.off)
        self.off += dtype.itemsize * count
        return a


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
    except (ValueError, struct.error):
        return None


def _parse_const(buf: bytes) -> tuple | None:
    r = _Reader(buf)
    if r.unpack("i") != FST_MAGIC or r.string() != b"const" or r.string() != b"standard":
        return None
    _version, flags = r.unpack("ii")
    _props, start, ns, na = r.unpack("Qqqq")
    if flags & FLAG_ISYMS:
        r.skip_symbol_table()
    if flags & FLAG_OSYMS:
        r.skip_symbol_table()
    if flags & FLAG_ALIGNED:
        r.align()
    states = r.array(STATE_DT, ns)
    if flags & FLAG_ALIGNED:
        r.align()
    arcs = r.array(ARC_DT, na)
    narcs = states["narcs"].astype(np.int64)
    if r.off != len(buf) or narcs.sum() != na or \
            (states["pos"].astype(np.int64) != np.cumsum(narcs) - narcs).any():
        return None
    return start, states, arcs


def _string(s: bytes) -> bytes:
    return struct.pack("<i", len(s)) + s


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
    header = (struct.pack("<i", FST_MAGIC) + _string(b"const") + _string(b"standard")
              + struct.pack("<iiQqqq", 2, 0, PROP_EXPANDED, start, ns, na))
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
