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

Reading files
-------------
:func:`read_std_fst` parses ``vector`` and ``const`` FSTs of standard arcs here, with numpy,
and checks every count, label, next state and weight: OpenFst's own readers trust the file
(a crafted arc count makes them loop for ever, a bad next state crashes later code), so no
untrusted bytes reach them.
"""

from __future__ import annotations

import os
import struct
import tempfile
from array import array
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
        self.symbol_table()

    def symbol_table(self) -> list[tuple[str, int]]:
        """The ``(symbol, key)`` pairs of an OpenFst binary symbol table."""
        if self.unpack("i")[0] != SYMTAB_MAGIC:
            raise self.error(f"bad symbol table at byte {self.pos - 4}")
        self.string()
        _, size = self.unpack("qq")
        if size < 0 or size * 12 > len(self.buf) - self.pos:
            raise self.error(f"symbol table of {size} entries: more than the data holds")
        pairs = []
        for _ in range(size):
            sym = self.string().decode("utf-8", errors="replace")
            pairs.append((sym, self.unpack("q")[0]))
        return pairs


#: Bytes per state and per arc of the body of a ``vector`` FST of standard arcs (float32 final
#: cost and int64 arc count; int32 ilabel, olabel, float32 cost, int32 nextstate).
VECTOR_STATE_BYTES, STD_ARC_BYTES = 12, 16


def _check_counts(r: Reader, h: FstHeader) -> None:
    """State and arc counts of the header that the data after it can hold (so that no
    reader allocates what a corrupt header claims)."""
    if h.start < -1 or h.num_states < -1 or h.num_arcs < -1 or \
            (h.num_states >= 0 and h.start >= h.num_states):
        raise r.error(f"corrupt header: start state {h.start}, {h.num_states} states, "
                      f"{h.num_arcs} arcs")
    left = len(r.buf) - r.pos
    if h.fst_type == "vector":
        need = VECTOR_STATE_BYTES * max(h.num_states, 0)
    else:
        need = STATE_DT.itemsize * max(h.num_states, 0) + ARC_DT.itemsize * max(h.num_arcs, 0)
    if need > left:
        raise r.error(f"the header declares {h.num_states} states and {h.num_arcs} arcs, more "
                      f"than the {left} bytes after it hold (truncated or corrupt file)")


class StdFst(NamedTuple):
    """An OpenFst FST of standard (tropical) arcs as arrays (:func:`read_std_fst`): arcs in
    file order by source state; ``final[q]`` is the final cost of state ``q`` (inf: not
    final); symbol tables as ``(symbol, key)`` pairs or None."""

    header: FstHeader
    start: int
    num_states: int
    src: np.ndarray
    dst: np.ndarray
    ilabel: np.ndarray
    olabel: np.ndarray
    cost: np.ndarray
    final: np.ndarray
    isymbols: list[tuple[str, int]] | None
    osymbols: list[tuple[str, int]] | None


def read_std_fst(r: Reader) -> StdFst:
    """Parse a ``vector`` or ``const`` FST of standard arcs entirely here (numpy; no OpenFst
    code sees the data, which on crafted input may crash or loop forever). Every arc, state
    count, label and weight is checked: ValueError naming the file (``r.name``) for anything
    that is not a well-formed FST: a wrong type, a short read, trailing data, a negative
    label, a next state out of range, a NaN weight."""
    try:
        h = r.header()
    except ValueError as e:
        if r.pos == 0:  # no magic number
            raise
        what = str(e).removeprefix(f"{r.name}: ")
        raise r.error(f"a corrupt OpenFst header: {what}") from None
    if h.fst_type not in ("vector", "const") or h.arc_type != "standard":
        raise r.error(f"an OpenFst FST of type {h.fst_type!r} with arcs {h.arc_type!r}; "
                      "expected type vector or const with standard (tropical) arcs")
    isyms = r.symbol_table() if h.flags & FLAG_ISYMS else None
    osyms = r.symbol_table() if h.flags & FLAG_OSYMS else None
    _check_counts(r, h)
    if h.fst_type == "vector":
        ns, src, ilab, olab, cost, dst, final = _vector_body(r, h)
    else:
        ns, src, ilab, olab, cost, dst, final = _const_body(r, h)
    if r.pos != len(r.buf):
        raise r.error(f"{len(r.buf) - r.pos} bytes of unexpected data after the FST")
    if not -1 <= h.start < max(ns, 0) and not (ns == 0 and h.start == -1):
        raise r.error(f"start state {h.start} out of range (the FST has {ns} states)")
    bad = np.flatnonzero((dst < 0) | (dst >= ns) | (ilab < 0) | (olab < 0) | np.isnan(cost))
    if bad.size:
        i = int(bad[0])
        raise r.error(f"arc {i} of state {int(src[i])}: ilabel {int(ilab[i])}, olabel "
                      f"{int(olab[i])}, cost {float(cost[i])}, next state {int(dst[i])} (of "
                      f"{ns} states): a corrupt FST")
    if np.isnan(final).any():
        raise r.error(f"state {int(np.flatnonzero(np.isnan(final))[0])}: NaN final cost")
    return StdFst(h, int(h.start), ns, src, dst, ilab, olab, cost, final, isyms, osyms)


def _vector_body(r: Reader, h: FstHeader) -> tuple:
    """The states of a vector FST body, one record at a time (float32 final cost, int64 arc
    count, then the arcs), then the arcs gathered at once."""
    buf, pos, end = r.buf, r.pos, len(r.buf)
    state = struct.Struct("<fq").unpack_from
    finals, firsts, counts = array("f"), array("q"), array("q")
    total = 0
    while (len(finals) < h.num_states) if h.num_states >= 0 else (pos < end):
        if pos + VECTOR_STATE_BYTES > end:
            r.pos = pos
            raise r.error(f"unexpected end of data at byte {pos} in state {len(finals)} "
                          "(truncated file?)")
        f, narcs = state(buf, pos)
        pos += VECTOR_STATE_BYTES
        if narcs < 0 or pos + STD_ARC_BYTES * narcs > end:
            raise r.error(f"state {len(finals)} at byte {pos - 8}: {narcs} arcs, more than "
                          "the data holds (truncated or corrupt file)")
        finals.append(f)
        firsts.append(pos)
        counts.append(narcs)
        total += narcs
        pos += STD_ARC_BYTES * narcs
    ns = len(finals)
    cnt = np.frombuffer(counts, dtype=np.int64) if ns else np.zeros(0, np.int64)
    first = np.frombuffer(firsts, dtype=np.int64) if ns else np.zeros(0, np.int64)
    src = np.repeat(np.arange(ns, dtype=np.int64), cnt)
    # every field of every arc lies at the same offset modulo 4 (records are 12 and 16 bytes)
    base = r.pos % 4
    words = np.frombuffer(buf, dtype="<i4", offset=base, count=(end - base) // 4)
    k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    w = (np.repeat(first, cnt) - base) // 4 + 4 * k
    ilab, olab = words[w].astype(np.int64), words[w + 1].astype(np.int64)
    cost = words[w + 2].view("<f4").astype(np.float32)
    dst = words[w + 3].astype(np.int64)
    r.pos = pos
    final = np.frombuffer(finals, dtype=np.float32).copy() if ns else np.zeros(0, np.float32)
    return ns, src, ilab, olab, cost, dst, final


def _const_body(r: Reader, h: FstHeader) -> tuple:
    """The two arrays of a const FST body (version 2), checked against each other."""
    if h.version != 2:
        raise r.error(f"const FST version {h.version}: only version 2 is read")
    if h.flags & FLAG_ALIGNED:
        r.align()
    states = r.array(STATE_DT, h.num_states)
    if h.flags & FLAG_ALIGNED:
        r.align()
    arcs = r.array(ARC_DT, h.num_arcs)
    narcs = states["narcs"].astype(np.int64)
    if narcs.sum() != h.num_arcs or \
            (states["pos"].astype(np.int64) != np.cumsum(narcs) - narcs).any():
        raise r.error("the states' arc counts and offsets do not match the arcs (corrupt file)")
    src = np.repeat(np.arange(h.num_states, dtype=np.int64), narcs)
    return (h.num_states, src, arcs["ilabel"].astype(np.int64),
            arcs["olabel"].astype(np.int64), arcs["weight"].astype(np.float32),
            arcs["nextstate"].astype(np.int64), states["final"].astype(np.float32))


def read_std_fst_file(path: str) -> StdFst:
    """:func:`read_std_fst` of the file ``path``."""
    with open(path, "rb") as f:
        buf = f.read()
    if not buf:
        raise ValueError(f"{path}: empty file (not an OpenFst binary FST)")
    return read_std_fst(Reader(buf, name=path))




def _tmp_file() -> str:
    fd, path = tempfile.mkstemp(prefix="wfst_asr-", suffix=".fst")
    os.close(fd)
    return path


def read_const(kfst, fst) -> StdFst | None:
    """The arrays (:class:`StdFst`) of ``fst`` via a const-FST file, or None."""
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
        return read_std_fst(Reader(buf))
    except ValueError:
        return None


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
