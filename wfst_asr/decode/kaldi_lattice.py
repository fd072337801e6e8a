"""Kaldi lattice archives: write and read Kaldi's ``Lattice`` and ``CompactLattice`` tables.

:func:`write_kaldi_lattices` writes a Kaldi table archive (``ark:``; ``text=True`` for
``ark,t:``) of ``Lattice`` (arc type ``lattice4``) or ``CompactLattice`` (``compactlattice44``)
entries, byte for byte what Kaldi's ``LatticeWriter`` / ``CompactLatticeWriter`` write:
``key + " \\0B" + `` an OpenFst binary ``vector`` FST (``key + " \\n"`` + printed arcs + a blank
line in text mode). Kaldi's lattice weight is the pair (graph cost, acoustic cost) =
``(-lm_scores, -am_scores)``, unscaled (apply ``--acoustic-scale=1/lm_scale`` and
``--word-ins-penalty`` in Kaldi's tools to get this toolkit's ``scores``). Input labels are
``label + ilabel_offset`` (default 1: Kaldi's input label 0 is epsilon, a frame-consuming CTC
blank must not be), output labels the word ids; -1 arcs become final weights. States keep their
numbers (start 0). A ``Lattice`` has one arc per lattice arc; a ``CompactLattice`` is the same
acceptor over words with each arc's input label as its one-element string (not determinized:
``lattice-determinize`` in Kaldi does that).

The binary FST is OpenFst's header (:mod:`wfst_asr.fsa._fstbin`: fst type ``vector``, version 2,
no symbol tables; its properties field holds only ``kExpanded | kMutable``, every other property
"unknown", which OpenFst recomputes on demand, and its arc count is 0, as OpenFst leaves it when
it writes a VectorFst whose states it counted first, so the bytes equal kaldifst's / Kaldi's but
for the properties), then per state (all little-endian):

* ``lattice4``: float32 graph and acoustic final cost, int64 num arcs, then per arc int32
  ilabel, int32 olabel, float32 graph cost, float32 acoustic cost, int32 nextstate;
* ``compactlattice44``: float32 graph and acoustic final cost, int32 string length, the string
  (int32 each), int64 num arcs, then per arc int32 ilabel, int32 olabel (the same word), float32
  graph cost, float32 acoustic cost, int32 string length, the string, int32 nextstate.

A non-final state has final weight (inf, inf). The text form (``fstprint`` with pair weights,
tab-separated) has arc lines ``src dst ilabel olabel g,a`` (``Lattice``) or ``src dst word
g,a,t1_t2_...`` (``CompactLattice``) and final lines ``state g,a`` (``state g,a,t1_...``).

:func:`read_kaldi_lattices` reads such archives back (both types, binary or text; a Kaldi
``CompactLattice`` arc with a longer string becomes a chain of arcs, its word and weight on the
first); :func:`to_kaldifst_lattice` gives a ``kaldifst.Lattice`` object (through an OpenFst
binary file) for kaldifst's lattice functions. Lattices here are those of
:mod:`wfst_asr.decode.lattice`; the project's own lattice files are :mod:`.lattice_io`.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from wfst_asr.atomic import atomic_output
from wfst_asr.fsa import Fsa
from wfst_asr.fsa._fstbin import (
    FLAG_ISYMS,
    FLAG_OSYMS,
    PROP_EXPANDED,
    PROP_MUTABLE,
    FstHeader,
    Reader,
)
from wfst_asr.fsa.io import MAX_STATE_GAP, format_float32

from .lattice import check_lattice, combine_scores

__all__ = [
    "kaldi_archive_bytes",
    "read_kaldi_lattices",
    "to_kaldifst_lattice",
    "write_kaldi_lattices",
]

PathLike = str | os.PathLike
_PROPS = PROP_EXPANDED | PROP_MUTABLE  # every other property unknown
_INF = np.float32(np.inf)
_LAT_ARC = np.dtype([("i", "<i4"), ("o", "<i4"), ("w1", "<f4"), ("w2", "<f4"), ("n", "<i4")])
_LAT_HDR = np.dtype([("f1", "<f4"), ("f2", "<f4"), ("narcs", "<i8")])
_CL_ARC = np.dtype([("i", "<i4"), ("o", "<i4"), ("w1", "<f4"), ("w2", "<f4"), ("slen", "<i4"),
                    ("s", "<i4"), ("n", "<i4")])
_CL_HDR = np.dtype([("f1", "<f4"), ("f2", "<f4"), ("slen", "<i4"), ("narcs", "<i8")])
_I32 = np.dtype("<i4")
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_INT32_MAX = 2 ** 31 - 1
LATTICE_ARC_TYPE = "lattice4"
COMPACT_ARC_TYPE = "compactlattice44"


def _lattice_parts(lat: Fsa, ilabel_offset: int):
    """Regular arcs (in order) and per-state final weights of ONE lattice, as numpy arrays."""
    check_lattice(lat)
    ns = lat.num_states
    F = max(ns - 1, 0)  # OpenFst states: all but the k2 final state
    lab = lat.labels.cpu().long().numpy()
    reg = lab != -1
    src = lat.arcs[:, 0].cpu().long().numpy()
    dst = lat.arcs[:, 1].cpu().long().numpy()
    aux = lat.aux_labels.cpu().long().numpy()
    g = (-lat.lm_scores.detach().cpu().float().numpy() + np.float32(0.0)).astype(np.float32)
    a = (-lat.am_scores.detach().cpu().float().numpy() + np.float32(0.0)).astype(np.float32)
    if bool((aux[reg] < 0).any()):
        raise ValueError("a lattice arc has a negative aux_label (OpenFst labels are >= 0)")
    il = lab[reg] + ilabel_offset
    if il.size and int(il.min()) < 0:
        raise ValueError("input labels + ilabel_offset must be >= 0")
    f1 = np.full(F, _INF, dtype=np.float32)
    f2 = np.full(F, _INF, dtype=np.float32)
    fin = np.nonzero(~reg)[0]
    if fin.size:
        # several -1 arcs from one state: keep the best (lowest total cost)
        order = fin[np.argsort(-(g[fin] + a[fin]), kind="stable")]
        f1[src[order]] = g[order]
        f2[src[order]] = a[order]
    return F, src[reg], dst[reg], il, aux[reg], g[reg], a[reg], f1, f2


def _fst_bytes(lat: Fsa, compact: bool, ilabel_offset: int) -> bytes:
    """One lattice as an OpenFst binary ``vector`` FST of arc type lattice4 / compactlattice44."""
    F, src, dst, il, ol, g, a, f1, f2 = _lattice_parts(lat, ilabel_offset)
    arc_type = COMPACT_ARC_TYPE if compact else LATTICE_ARC_TYPE
    head = FstHeader("vector", arc_type, 2, 0, _PROPS, 0 if F else -1, F, 0).to_bytes()
    if F == 0:
        return head
    narcs = np.bincount(src, minlength=F).astype(np.int64)
    hdt, adt = (_CL_HDR, _CL_ARC) if compact else (_LAT_HDR, _LAT_ARC)
    hdr = np.zeros(F, dtype=hdt)
    hdr["f1"], hdr["f2"], hdr["narcs"] = f1, f2, narcs
    arcs = np.zeros(src.size, dtype=adt)
    arcs["i"] = ol if compact else il
    arcs["o"] = ol
    arcs["w1"], arcs["w2"], arcs["n"] = g, a, dst
    if compact:
        arcs["slen"] = 1
        arcs["s"] = il
    sizes = hdt.itemsize + narcs * adt.itemsize
    offs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    buf = np.zeros(int(sizes.sum()), dtype=np.uint8)
    buf[offs[:, None] + np.arange(hdt.itemsize)] = hdr.view(np.uint8).reshape(F, hdt.itemsize)
    if src.size:
        first = np.concatenate([[0], np.cumsum(narcs)[:-1]])
        rank = np.arange(src.size) - first[src]
        pos = offs[src] + hdt.itemsize + rank * adt.itemsize
        buf[pos[:, None] + np.arange(adt.itemsize)] = arcs.view(np.uint8).reshape(
            src.size, adt.itemsize)
    return head + buf.tobytes()


def _fst_text(lat: Fsa, compact: bool, ilabel_offset: int) -> str:
    """The arcs and finals of one lattice as Kaldi's text form (fstprint with pair weights)."""
    F, src, dst, il, ol, g, a, f1, f2 = _lattice_parts(lat, ilabel_offset)
    gs, as_ = format_float32(torch.from_numpy(g)), format_float32(torch.from_numpy(a))
    fs1 = format_float32(torch.from_numpy(f1), openfst=True)
    fs2 = format_float32(torch.from_numpy(f2), openfst=True)
    by_state: list[list[str]] = [[] for _ in range(F)]
    for k in range(src.size):
        if compact:
            by_state[src[k]].append(f"{src[k]}\t{dst[k]}\t{ol[k]}\t{gs[k]},{as_[k]},{il[k]}\n")
        else:
            by_state[src[k]].append(f"{src[k]}\t{dst[k]}\t{il[k]}\t{ol[k]}\t{gs[k]},{as_[k]}\n")
    lines = []
    for q in range(F):
        lines.extend(by_state[q])
        if np.isfinite(f1[q]):
            lines.append(f"{q}\t{fs1[q]},{fs2[q]}" + ("," if compact else "") + "\n")
    return "".join(lines)


def _parse_wspecifier(spec: PathLike) -> tuple[str, bool]:
    s = os.fspath(spec)
    m = re.match(r"^ark(,[a-z]+)*:(.*)$", s)
    if m is None:
        return s, False
    opts = s[:s.index(":")].split(",")[1:]
    return m.group(2), "t" in opts


def write_kaldi_lattices(spec: PathLike, items: Iterable[tuple[str, Fsa]], compact: bool = False,
                         text: bool | None = None, ilabel_offset: int = 1) -> int:
    """Write ``(key, lattice)`` pairs to a Kaldi archive (atomically); returns the count.

    Args:
      spec: a path, or ``ark:PATH`` / ``ark,t:PATH`` (``t``: text mode).
      items: keys (no whitespace) and single lattices (or FsaVecs of one).
      compact: CompactLattice entries (else Lattice).
      text: text mode (default: binary unless ``spec`` says ``ark,t:``).
      ilabel_offset: added to every input label (see the module docstring).
    """
    path, text_spec = _parse_wspecifier(spec)
    text = text_spec if text is None else text
    n = 0
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for key, lat in items:
            if not key or any(c.isspace() for c in key):
                raise ValueError(f"invalid archive key {key!r}")
            one = lat[0] if lat.is_vec else lat
            if text:
                f.write(f"{key} \n".encode() + _fst_text(one, compact, ilabel_offset).encode()
                        + b"\n")
            else:
                f.write(key.encode() + b" \0B" + _fst_bytes(one, compact, ilabel_offset))
            n += 1
    return n


def _read_fst_binary(r: Reader) -> tuple[str, int, list]:
    """Parse one OpenFst binary vector FST of lattice type: ``(arc type, start, states)`` with
    states ``[(final (g, a, string) or None, [(ilabel, olabel, g, a, string, next), ...])]``;
    every ValueError names ``r.name``."""
    h = r.header()
    if h.fst_type != "vector":
        raise r.error(f"FST type {h.fst_type!r}: only 'vector' lattices are read")
    if h.arc_type not in (LATTICE_ARC_TYPE, COMPACT_ARC_TYPE):
        raise r.error(f"arc type {h.arc_type!r} is not a Kaldi lattice (lattice4 or "
                      "compactlattice44)")
    if h.flags & (FLAG_ISYMS | FLAG_OSYMS):
        raise r.error("lattices with symbol tables in the FST header are not supported")
    compact = h.arc_type == COMPACT_ARC_TYPE
    if h.num_states < 0:
        raise r.error("FST header without a state count (not supported)")
    states = []
    for _ in range(h.num_states):
        if compact:
            f1, f2, slen = r.unpack("ffi")
            fstr = r.array(_I32, slen).tolist()
        else:
            f1, f2 = r.unpack("ff")
            fstr = []
        (narcs,) = r.unpack("q")
        if not compact:
            arcs = [(int(a["i"]), int(a["o"]), float(a["w1"]), float(a["w2"]), None, int(a["n"]))
                    for a in r.array(_LAT_ARC, narcs)]
        else:
            # an arc takes at least 24 bytes (an empty string)
            if narcs < 0 or narcs * (_CL_ARC.itemsize - 4) > len(r.buf) - r.pos:
                raise r.error(f"{narcs} arcs at byte {r.pos - 8}: more than the data holds")
            arcs = []
            for _ in range(narcs):
                i, o, w1, w2, slen = r.unpack("iiffi")
                s = r.array(_I32, slen).tolist()
                (nxt,) = r.unpack("i")
                arcs.append((i, o, w1, w2, s, nxt))
        final = None if (f1 == np.inf and f2 == np.inf) else (f1, f2, fstr)
        states.append((final, arcs))
    return h.arc_type, int(h.start), states


def _int(tok: str, what: str, low: int = 0) -> int:
    """An ASCII integer of the text form, ``low`` to int32's largest (ValueError otherwise)."""
    if not _INT_RE.match(tok):
        raise ValueError(f"{what} {tok!r} is not an integer")
    v = int(tok)
    if not low <= v <= _INT32_MAX:
        raise ValueError(f"{what} {v} is out of range [{low}, {_INT32_MAX}]")
    return v


def _parse_weight(tok: str, compact: bool) -> tuple[float, float, list[int]]:
    parts = tok.split(",")
    if compact:
        if len(parts) != 3:
            raise ValueError(f"bad CompactLattice weight {tok!r}")
        s = [_int(x, "input label") for x in parts[2].split("_") if x] if parts[2] else []
    else:
        if len(parts) != 2:
            raise ValueError(f"bad Lattice weight {tok!r}")
        s = []

    def f(x: str) -> float:
        special = {"Infinity": float("inf"), "-Infinity": float("-inf")}
        return special[x] if x in special else float(np.float32(x))
    return f(parts[0]), f(parts[1]), s


def _read_fst_text(lines: list[str]) -> tuple[str, int, list]:
    """Parse Kaldi's text form of a Lattice / CompactLattice (as :func:`_read_fst_binary`).

    Lines: Lattice arcs ``src dst ilabel olabel [g,a]``, CompactLattice arcs ``src dst word
    [g,a,t1_t2_...]``, finals ``state [weight]`` (a missing weight is One)."""
    rows = [ln.split() for ln in lines]
    compact = False
    for r in rows:
        if len(r) == 5:
            break
        if len(r) == 3 or (len(r) == 4 and "," in r[3]) or (len(r) == 2 and r[1].count(",") == 2):
            compact = True
            break
    arcs_of: dict[int, list] = {}
    finals: dict[int, tuple] = {}
    max_state = -1
    start = _int(rows[0][0], "state") if rows else -1
    for r in rows:
        q = _int(r[0], "state")
        max_state = max(max_state, q)
        if len(r) >= 3:
            if len(r) > (4 if compact else 5):
                raise ValueError(f"bad lattice line: {' '.join(r)!r}")
            d = _int(r[1], "state")
            max_state = max(max_state, d)
            if compact:
                w = _parse_weight(r[3], True) if len(r) == 4 else (0.0, 0.0, [])
                word = _int(r[2], "word")
                arcs_of.setdefault(q, []).append((word, word, w[0], w[1], w[2], d))
            else:
                if len(r) < 4:
                    raise ValueError(f"bad lattice line: {' '.join(r)!r}")
                w = _parse_weight(r[4], False) if len(r) == 5 else (0.0, 0.0, [])
                arcs_of.setdefault(q, []).append((_int(r[2], "input label"),
                                                  _int(r[3], "output label"), w[0], w[1], None,
                                                  d))
        else:
            finals[q] = _parse_weight(r[1], compact) if len(r) == 2 else (0.0, 0.0, [])
    if max_state >= 2 * len(rows) + MAX_STATE_GAP:  # the states between cost memory, not text
        raise ValueError(f"state {max_state} is far beyond the {len(rows)} lines of the lattice")
    states = [(finals.get(q), arcs_of.get(q, ())) for q in range(max_state + 1)]
    return (COMPACT_ARC_TYPE if compact else LATTICE_ARC_TYPE), start, states


def _states_to_fsa(arc_type: str, start: int, states: list, ilabel_offset: int) -> Fsa:
    """Kaldi lattice states -> a lattice Fsa (start 0, final last, frame_idx from the
    topology)."""
    compact = arc_type == COMPACT_ARC_TYPE
    ns = len(states)
    if ns == 0 or start < 0:
        return _empty_lattice()
    if start >= ns:
        raise ValueError(f"start state {start} of a lattice of {ns} states")
    ren = list(range(ns))
    ren[0], ren[start] = start, 0
    next_state = ns  # chain states for CompactLattice strings
    rows: list[tuple[int, int, int, int, float, float]] = []  # src dst label aux lm am
    fin_rows: list[tuple[int, float, float]] = []

    def chain(q: int, d: int | None, word: int, g: float, a: float, s: list[int]) -> int:
        nonlocal next_state
        cur = q
        for k, tid in enumerate(s):
            last = k == len(s) - 1
            nxt = d if (last and d is not None) else next_state
            if nxt == next_state:
                next_state += 1
            rows.append((cur, nxt, tid - ilabel_offset, word if k == 0 else 0,
                         -g if k == 0 else 0.0, -a if k == 0 else 0.0))
            cur = nxt
        return cur

    for q_old, (final, arcs) in enumerate(states):
        q = ren[q_old]
        for i, o, w1, w2, s, d_old in arcs:
            if not 0 <= d_old < ns:
                raise ValueError(f"an arc of state {q_old} goes to state {d_old}, of a lattice "
                                 f"of {ns} states")
            if o < 0:
                raise ValueError(f"an arc of state {q_old} has output label {o} (< 0)")
            d = ren[d_old]
            if compact:
                if not s:
                    raise ValueError("a CompactLattice arc without input symbols (a word that "
                                     "consumes no frame) cannot be a frame-level lattice arc")
                chain(q, d, o, w1, w2, s)
            else:
                if i < ilabel_offset:
                    raise ValueError(f"input label {i} < ilabel_offset {ilabel_offset}: "
                                     "epsilon input arcs are not frame-level lattice arcs")
                rows.append((q, d, i - ilabel_offset, o, -w1, -w2))
        if final is not None:
            g, a, s = final
            end = chain(q, None, 0, 0.0, 0.0, s) if s else q
            fin_rows.append((end, -g, -a))
    total = next_state
    final_state = total
    all_rows = rows + [(q, final_state, -1, -1, g, a) for q, g, a in fin_rows]
    src = torch.tensor([r[0] for r in all_rows], dtype=torch.int64)
    order = torch.sort(src, stable=True).indices
    t = torch.tensor([r[:4] for r in all_rows], dtype=torch.int64).reshape(-1, 4)[order]
    lm = (torch.tensor([r[4] for r in all_rows], dtype=torch.float32) + 0.0)[order]
    am = (torch.tensor([r[5] for r in all_rows], dtype=torch.float32) + 0.0)[order]
    arcs = t[:, :3].to(torch.int32)
    aux = t[:, 3].to(torch.int32)
    fsa = Fsa(arcs, combine_scores(am, lm, aux, 1.0, 0.0), num_states=total + 1,
              aux_labels=aux, am_scores=am, lm_scores=lm,
              frame_idx=torch.zeros(len(all_rows), dtype=torch.int32), lm_scale=1.0,
              word_penalty=0.0)
    fsa.frame_idx = _frames_from_topology(fsa)
    return fsa


def _frames_from_topology(fsa: Fsa) -> torch.Tensor:
    """frame_idx of every arc: the number of regular arcs before it on any path; ValueError when
    paths to a state disagree (not a frame-synchronous lattice)."""
    if fsa.num_arcs == 0:
        return torch.zeros(0, dtype=torch.int32)
    lv = fsa.state_levels()
    src, dst = fsa.arcs[:, 0].long(), fsa.arcs[:, 1].long()
    reg = fsa.labels != -1
    frame = torch.full((fsa.num_states,), -1, dtype=torch.int64)
    frame[0] = 0
    order = torch.sort(lv[src], stable=True).indices.tolist()
    s_l, d_l, r_l = src.tolist(), dst.tolist(), reg.tolist()
    fr = frame.tolist()
    for k in order:
        if not r_l[k] or fr[s_l[k]] < 0:
            continue
        want = fr[s_l[k]] + 1
        if fr[d_l[k]] < 0:
            fr[d_l[k]] = want
        elif fr[d_l[k]] != want:
            raise ValueError(f"state {d_l[k]} is reached after {fr[d_l[k]]} and after {want} "
                             "frames: not a frame-synchronous lattice")
    return torch.tensor([fr[s] for s in s_l], dtype=torch.int32)


def _empty_lattice() -> Fsa:
    z = torch.zeros(0, dtype=torch.float32)
    zi = torch.zeros(0, dtype=torch.int32)
    return Fsa(torch.zeros(0, 3, dtype=torch.int32), z, num_states=0, aux_labels=zi,
               am_scores=z, lm_scores=z.clone(), frame_idx=zi.clone(), lm_scale=1.0,
               word_penalty=0.0)


def read_kaldi_lattices(spec: PathLike, ilabel_offset: int = 1) -> Iterator[tuple[str, Fsa]]:
    """Read a Kaldi lattice archive (``Lattice`` or ``CompactLattice`` entries, binary or text;
    ``ark:``/``ark,t:`` prefixes allowed): yields ``(key, lattice Fsa)`` with ``lm_scores`` =
    -graph cost, ``am_scores`` = -acoustic cost, ``labels`` = input label - ``ilabel_offset``,
    ``frame_idx`` from the topology, ``lm_scale`` 1 and ``word_penalty`` 0.

    A bad archive is a ValueError naming the file and the entry's key (or the byte where the
    key should be); memory stays bounded by the file's size (a text entry may name states at
    most :data:`~wfst_asr.fsa.io.MAX_STATE_GAP` beyond twice its number of lines)."""
    path, _ = _parse_wspecifier(spec)
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while True:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if pos >= len(data):
            return
        sp = data.find(b" ", pos)
        nl = data.find(b"\n", pos)
        if sp < 0 or (0 <= nl < sp):
            raise ValueError(f"{path}: bad archive key at byte {pos}")
        try:
            key = data[pos:sp].decode()
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: the archive key at byte {pos} is not UTF-8 "
                             f"({e.reason} at byte {pos + e.start})") from None
        where = f"{path}: entry {key}"
        body = None
        if data[sp + 1:sp + 3] == b"\0B":
            r = Reader(data, sp + 3, name=where)
            arc_type, start, states = _read_fst_binary(r)  # its errors name `where`
            pos = r.pos
        else:
            end = data.find(b"\n\n", sp + 1)
            end = len(data) if end < 0 else end
            body, pos = data[sp + 1:end], end + 2
        try:
            if body is not None:
                lines = [ln for ln in body.decode().split("\n") if ln.strip()]
                arc_type, start, states = _read_fst_text(lines)
            lat = _states_to_fsa(arc_type, start, states, ilabel_offset)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        yield key, lat


def to_kaldifst_lattice(lattice: Fsa, ilabel_offset: int = 1):
    """ONE lattice as a ``kaldifst.Lattice`` (weights (graph cost, acoustic cost), see the
    module docstring), through an OpenFst binary file read by kaldifst."""
    from wfst_asr import _kaldi

    kf = _kaldi.kaldifst()
    one = lattice[0] if lattice.is_vec else lattice
    data = _fst_bytes(one, compact=False, ilabel_offset=ilabel_offset)
    fd, tmp = tempfile.mkstemp(suffix=".fst")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        out = kf.Lattice.read(tmp)
    finally:
        os.unlink(tmp)
    if out is None:
        raise RuntimeError("kaldifst could not read the lattice written for it")
    return out


def kaldi_archive_bytes(items: Iterable[tuple[str, Fsa]], compact: bool = False,
                        ilabel_offset: int = 1) -> bytes:
    """The bytes of a binary archive (as :func:`write_kaldi_lattices`), in memory."""
    out = io.BytesIO()
    for key, lat in items:
        one = lat[0] if lat.is_vec else lat
        out.write(key.encode() + b" \0B" + _fst_bytes(one, compact, ilabel_offset))
    return out.getvalue()
