"""Reading and writing :class:`~wfst_asr.fsa.Fsa` objects.

Formats
-------

**k2 text format** (:func:`from_str`, :func:`to_str`, :func:`from_file`). One arc per line,
fields separated by whitespace; scores are log-weights (higher is better)::

    src dst label score                 # acceptor
    src dst label aux_label score       # transducer (aux_label -> ``fsa.aux_labels``)
    final_state                         # last line: the final state alone

Arcs entering the final state (and only those) carry label -1. Scores are written with the
fewest digits that read back to the identical float32 (``-0`` keeps the sign of zero), so
``from_str(to_str(fsa))`` is exact. An FsaVec is written as its FSAs separated by a blank line
(for display; :func:`from_str` reads one FSA).

**OpenFst/Kaldi text format** (:func:`from_openfst`, :func:`to_openfst_str`), as printed by
``fstprint`` and read by ``fstcompile``: arc lines ``src dst ilabel [olabel] [weight]`` and final
lines ``state [weight]``, tropical semiring, weights are *costs*: ``score = -weight``. The start
state is the first field of the first line.

**kaldifst** (:func:`to_kaldifst`, :func:`from_kaldifst`): ``kaldifst.StdVectorFst`` (tropical
arcs, float32 costs), and OpenFst binary files (:func:`write_fst` through it; :func:`read_fst`
parses and checks ``vector`` and ``const`` files itself, so that no corrupt file reaches OpenFst,
whose readers trust their input). The arcs travel as numpy arrays through an OpenFst ``const``
FST file (see :mod:`._fstbin`), not one Python call per arc, so graphs with millions of arcs
convert in about a second.

Text files may not name states far beyond their size (:data:`MAX_STATE_GAP`), and every reader
takes ``max_states``, checked before the states are allocated: the memory a file costs is
bounded by its size.

**torch** (:func:`save`, :func:`load`): a ``torch.save``'d dict of tensors and plain values,
read back with ``weights_only=True``.

Final weights
-------------
OpenFst has final weights where k2 has -1 arcs into one final state. Going to OpenFst, a state
with a -1 arc of score ``s`` becomes final with weight ``-s`` and the k2 final state is dropped
(its transducer aux_label on that arc must be -1 or 0: it cannot be kept). Coming from OpenFst,
a new final state is appended (the *last* state, even when nothing is final) and every final
state ``q`` with weight ``w`` gets an arc ``q -> final`` with label -1 (aux_label -1) and score
``-w``, placed after ``q``'s other arcs. So ``Fsa -> OpenFst -> Fsa`` is exact (arcs, arc order,
bitwise scores up to the sign of zero, aux_labels) when every state has at most one -1 arc and it
comes after the state's other arcs (k2's arc-sorted order puts -1 last). A state with several -1
arcs needs ``final_semiring='tropical'`` (max) or ``'log'`` (logsumexp), else ValueError.

The start state of an OpenFst FST becomes state 0 (it is swapped with state 0); other state
numbers are kept. (In OpenFst *text*, states numbered above every state that appears in it
cannot be expressed: they are lost, and so is a start state without arcs that is not final.) Only ``arcs``, ``scores``, ``aux_labels`` and the symbol tables ``labels_sym``
/ ``aux_labels_sym`` survive a trip through OpenFst; other per-arc attributes do not.
"""

from __future__ import annotations

import errno
import functools
import gc
import math
import os
import re
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_output, atomic_write_text, read_text
from . import _fstbin
from .fsa import TEXT_FORMAT, Fsa
from .symbol_table import SymbolTable

__all__ = [
    "TooManyStatesError",
    "from_file",
    "from_kaldifst",
    "from_openfst",
    "from_openfst_file",
    "from_str",
    "load",
    "read_fst",
    "save",
    "to_file",
    "to_kaldifst",
    "to_openfst_str",
    "to_str",
    "torch_load_reason",
    "write_fst",
]

PathLike = str | os.PathLike
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_INT32_MAX = 2 ** 31 - 1
#: A text FST names at most two states a line. Its state ids may go beyond that count by at most
#: this much (the unused states in between cost memory, not text): so the memory a text FST
#: takes is bounded by its size (a 2-line file with state 2e9 is refused, not allocated).
MAX_STATE_GAP = 1 << 20


class TooManyStatesError(ValueError):
    """An FST file with more states than the reader's ``max_states`` (checked before the states
    are allocated)."""

    def __init__(self, source: str, num_states: int, max_states: int) -> None:
        super().__init__(f"{source}: {num_states} states, more than the limit {max_states}")
        self.source, self.num_states, self.max_states = source, num_states, max_states


def _state_limit(num_lines: int) -> int:
    """The largest number of states (k2 numbering) a text of ``num_lines`` lines may have."""
    return 2 * num_lines + 1 + MAX_STATE_GAP


def _check_states(num_states: int, max_states: int | None, source: str) -> None:
    if max_states is not None and num_states > max_states:
        raise TooManyStatesError(source, num_states, max_states)


def _gc_paused(fn):
    """Run ``fn`` with the cyclic garbage collector paused: building millions of small lists
    and tuples otherwise triggers repeated full collections (several times slower)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return wrapper


def _kaldifst():
    from wfst_asr._kaldi import kaldifst as _kfst
    return _kfst()


# ---------------------------------------------------------------------- float32 text
def parse_float32(tokens: Sequence[str]) -> torch.Tensor:
    """Decimal strings -> float32, correctly rounded (no double-rounding through float64).

    Raises ValueError (from ``float``) for a token that is not a number.
    """
    return torch.from_numpy(_parse_float32(tokens)[0])


def _parse_float32(tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(correctly rounded float32, float32 rounded from the nearest double) of the tokens."""
    d = np.array([float(t) for t in tokens], dtype=np.float64)
    with np.errstate(over="ignore"):
        naive = d.astype(np.float32)
    f = naive.copy()
    back = f.astype(np.float64)
    inexact = np.isfinite(back) & (back != d)
    if inexact.any():
        toward = np.where(d > back, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
        with np.errstate(over="ignore"):
            g = np.nextafter(f, toward)
            mid = (back + g.astype(np.float64)) / 2
        for i in np.nonzero(inexact & (d == mid))[0]:  # d is a float32 midpoint: look closer
            exact, m = Decimal(tokens[i]), Decimal(float(mid[i]))
            if exact != m:
                f[i] = max(f[i], g[i]) if exact > m else min(f[i], g[i])
    return f, naive


def format_float32(values: torch.Tensor, openfst: bool = False) -> list[str]:
    """The shortest ``%g`` strings (6 to 9 digits) that read back to the identical float32.

    "Read back" both by :func:`parse_float32` (correct rounding) and by a C-style parser that
    goes through double (``(float) strtod(s)``, as OpenFst does); in the (theoretical) case where
    9 digits do not satisfy both, the exact decimal of the value is used (``repr`` of the double).
    ``openfst=True`` spells infinities ``Infinity``/``-Infinity`` as OpenFst does.
    """
    x = values.detach().to("cpu", torch.float32).reshape(-1).numpy()
    xs: list[float] = x.tolist()
    xb = x.view(np.uint32)
    out: list[str] = [""] * len(xs)
    todo = list(range(len(xs)))
    for prec in (6, 7, 8, 9):
        if not todo:
            break
        fmt = f"%.{prec}g"
        strs = [fmt % xs[i] for i in todo]
        idx = np.array(todo, dtype=np.int64)
        exact, naive = _parse_float32(strs)
        ok = (((exact.view(np.uint32) == xb[idx]) & (naive.view(np.uint32) == xb[idx]))
              | np.isnan(x[idx]))
        rest = []
        for i, t, good in zip(todo, strs, ok.tolist()):
            if good:
                out[i] = t
            else:
                rest.append(i)
        todo = rest
    for i in todo:
        out[i] = repr(xs[i])
    if openfst:
        out = [{"inf": "Infinity", "-inf": "-Infinity"}.get(t, t) for t in out]
    return out


# ---------------------------------------------------------------------- parsing helpers
def _lines(s: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines."""
    return [(n, f) for n, f in enumerate(map(str.split, s.splitlines()), start=1) if f]


def _int(tok: str, where: str, what: str) -> int:
    if not _INT_RE.match(tok):
        raise ValueError(f"{where}: {what} {tok!r} is not an integer")
    v = int(tok)
    if not -_INT32_MAX - 1 <= v <= _INT32_MAX:
        raise ValueError(f"{where}: {what} {v} does not fit in int32")
    return v


def _float(tok: str, where: str, what: str) -> str:
    try:
        v = float(tok)
    except ValueError:
        raise ValueError(f"{where}: {what} {tok!r} is not a number") from None
    if math.isnan(v):
        raise ValueError(f"{where}: {what} is NaN")
    return tok


def _make_fsa(arcs: list[list[int]], score_toks: list[str], num_states: int,
              aux: list[int] | None) -> Fsa:
    arcs_t = torch.tensor(arcs, dtype=torch.int32).reshape(-1, 3)
    scores = parse_float32(score_toks) if score_toks else torch.zeros(0)
    attrs: dict[str, Any] = {}
    if aux is not None:
        attrs["aux_labels"] = torch.tensor(aux, dtype=torch.int32)
    return Fsa(arcs_t, scores.to(torch.float32), num_states=num_states, **attrs)


# ---------------------------------------------------------------------- k2 text format
@_gc_paused
def from_str(s: str, acceptor: bool | None = None, source: str = "<string>",
             max_states: int | None = None) -> Fsa:
    """Parse one FSA in k2 text format (see the module docstring).

    Args:
      s: the text.
      acceptor: True: lines ``src dst label [score]``; False: ``src dst label aux_label
        [score]``; None: decided by the first arc line: 3 or 4 fields is an acceptor, 5 a
        transducer. Every arc line must have the same number of fields (a missing score is 0).
      source: the name used in error messages (a file name).
      max_states: refuse (:class:`TooManyStatesError`) an FSA with more states, before
        allocating them.

    Raises:
      ValueError: naming ``source`` and the line, for empty input, a wrong number of fields, a
        non-numeric field, a state out of range, a -1 label not entering the final state (or a
        non -1 label entering it), an arc leaving the final state, a label below -1, or a final
        state far beyond the number of lines (:data:`MAX_STATE_GAP`).
    """
    lines = _lines(s)
    if not lines:
        raise ValueError(f"{source}: empty input (expected arcs and a final-state line)")
    last_no, last = lines[-1]
    if len(last) != 1:
        raise ValueError(f"{source}:{last_no}: the last line must be the final state alone, "
                         f"got {len(last)} fields")
    final = _int(last[0], f"{source}:{last_no}", "final state")
    if final < 0:
        raise ValueError(f"{source}:{last_no}: negative final state {final}")
    if final + 1 > _state_limit(len(lines)):
        raise ValueError(f"{source}:{last_no}: final state {final} is far beyond the states a "
                         f"text of {len(lines)} lines can name (at most "
                         f"{_state_limit(len(lines)) - 1}); number the states densely")
    _check_states(final + 1, max_states, source)
    arc_lines = lines[:-1]
    nf = _arc_field_count(arc_lines, acceptor, source)
    transducer = nf == 5 or (nf == 4 and acceptor is False)
    has_score = nf == 5 or (nf == 4 and not transducer)
    fast = _from_str_fast([f for _, f in arc_lines], nf, transducer, has_score, final)
    if fast is not None:
        return fast
    arcs, scores, aux = [], [], []
    for no, fields in arc_lines:
        where = f"{source}:{no}"
        if len(fields) != nf:
            raise ValueError(f"{where}: expected {nf} fields like the first arc line, got "
                             f"{len(fields)}" + (" (only the last line may hold the final state "
                                                 "alone)" if len(fields) == 1 else ""))
        src, dst, lab = (_int(t, where, w) for t, w in zip(fields, ("src", "dst", "label")))
        _check_arc(where, src, dst, lab, final)
        arcs.append([src, dst, lab])
        if transducer:
            aux.append(_int(fields[3], where, "aux_label"))
        scores.append(_float(fields[-1], where, "score") if has_score else "0")
    return _make_fsa(arcs, scores, final + 1, aux if transducer else None)


class _Slow(Exception):
    """The vectorized parser gives up; the line-by-line one finds the error (or parses)."""


def _int_columns(rows: list[list[str]], ncols: int) -> np.ndarray:
    """int64 ``[ncols, len(rows)]`` from the first ``ncols`` fields; _Slow on anything odd."""
    try:
        cols = np.array([r[:ncols] for r in rows], dtype=np.int64).reshape(len(rows), ncols).T
    except (ValueError, OverflowError, TypeError):
        raise _Slow() from None
    if cols.size and (cols.min() < -_INT32_MAX - 1 or cols.max() > _INT32_MAX):
        raise _Slow()
    return cols


def _float_column(tokens: list[str]) -> np.ndarray:
    try:
        f = _parse_float32(tokens)[0]
    except ValueError:
        raise _Slow() from None
    if np.isnan(f).any():
        raise _Slow()
    return f


def _from_str_fast(rows: list[list[str]], nf: int, transducer: bool, has_score: bool,
                   final: int) -> Fsa | None:
    """Vectorized k2-text parsing of well-formed input; None when anything looks wrong."""
    try:
        if any(len(r) != nf for r in rows) or any("_" in t for r in rows for t in r[:-1]):
            raise _Slow()
        cols = _int_columns(rows, 4 if transducer else 3)
        src, dst, lab = cols[0], cols[1], cols[2]
        if (((src < 0) | (src >= final) | (dst < 0) | (dst > final) | (lab < -1)).any()
                or ((lab == -1) != (dst == final)).any()):
            raise _Slow()
        scores = _float_column([r[-1] for r in rows]) if has_score else \
            np.zeros(len(rows), dtype=np.float32)
    except _Slow:
        return None
    attrs = {"aux_labels": torch.from_numpy(cols[3].astype(np.int32))} if transducer else {}
    arcs = torch.from_numpy(cols[:3].T.astype(np.int32).reshape(-1, 3))
    return Fsa(arcs, torch.from_numpy(scores), num_states=final + 1, **attrs)


def _arc_field_count(arc_lines: list[tuple[int, list[str]]], acceptor: bool | None,
                     source: str) -> int:
    if not arc_lines:
        return 0
    no, fields = arc_lines[0]
    allowed = {None: (3, 4, 5), True: (3, 4), False: (4, 5)}[acceptor]
    if len(fields) not in allowed:
        kind = {None: "", True: "acceptor ", False: "transducer "}[acceptor]
        raise ValueError(f"{source}:{no}: a {kind}arc line has {' or '.join(map(str, allowed))} "
                         f"fields, got {len(fields)}")
    return len(fields)


def _check_arc(where: str, src: int, dst: int, lab: int, final: int) -> None:
    for what, q in (("src", src), ("dst", dst)):
        if not 0 <= q <= final:
            raise ValueError(f"{where}: {what} state {q} out of range [0, {final}] "
                             f"(the final state {final} is the highest state)")
    if src == final:
        raise ValueError(f"{where}: arc leaving the final state {final}")
    if lab < -1:
        raise ValueError(f"{where}: label {lab} < -1")
    if (lab == -1) != (dst == final):
        raise ValueError(f"{where}: label -1 must be used exactly on arcs entering the final "
                         f"state {final}, got {src} -> {dst} with label {lab}")


def from_file(path: PathLike, acceptor: bool | None = None,
              max_states: int | None = None) -> Fsa:
    """Read an FSA in k2 text format from a file (errors name the file and line)."""
    return from_str(read_text(path), acceptor=acceptor, source=os.fspath(path),
                    max_states=max_states)


def to_file(fsa: Fsa, path: PathLike, openfst: bool = False) -> None:
    """Write :func:`to_str` (``openfst=True``: :func:`to_openfst_str`) to ``path`` atomically."""
    atomic_write_text(path, to_str(fsa, openfst=openfst))


@_gc_paused
def to_str(fsa: Fsa, openfst: bool = False) -> str:
    """k2 text format (``openfst=True``: :func:`to_openfst_str`). Ends with a newline.

    An FsaVec gives its FSAs' texts separated by a blank line; an FSA with no states gives "".
    """
    if fsa.is_vec:
        return "\n".join(to_str(f, openfst) for f in fsa)
    if openfst:
        return to_openfst_str(fsa)
    ns = fsa.num_states
    if ns == 0:
        return ""
    arcs = fsa.arcs.tolist()
    scores = format_float32(fsa.scores)
    aux = _aux_list(fsa)
    if aux is None:
        lines = [f"{a[0]} {a[1]} {a[2]} {w}\n" for a, w in zip(arcs, scores)]
    else:
        lines = [f"{a[0]} {a[1]} {a[2]} {x} {w}\n" for a, x, w in zip(arcs, aux, scores)]
    lines.append(f"{ns - 1}\n")
    return "".join(lines)



TEXT_FORMAT["to_str"] = to_str  # str(fsa)

def _aux_list(fsa: Fsa) -> list[int] | None:
    if not fsa.has_attr("aux_labels"):
        return None
    aux = fsa.aux_labels
    if not isinstance(aux, torch.Tensor) or aux.dim() != 1:
        raise ValueError("aux_labels must be a 1-D tensor of ints to be written")
    return aux.tolist()


# ---------------------------------------------------------------------- OpenFst text format
@_gc_paused
def from_openfst(s: str, acceptor: bool | None = None, source: str = "<string>",
                 max_states: int | None = None) -> Fsa:
    """Parse the OpenFst text format (tropical weights are costs; ``score = -weight``).

    Args:
      s: lines ``src dst ilabel [olabel] [weight]`` and ``state [weight]`` (a final state).
      acceptor: True: arc lines have 3 or 4 fields (``ilabel == olabel``); False: 4 or 5 fields,
        olabels go to ``aux_labels``; None: a transducer if some arc line has 5 fields, else an
        acceptor. A 4-field line is ambiguous (acceptor with weight / transducer without
        weight): pass ``acceptor=False`` for weightless transducer text such as ``fstprint``
        output with unit weights.
      source: the name used in error messages.
      max_states: refuse (:class:`TooManyStatesError`) an FSA with more states (k2
        numbering: one more than OpenFst's), before allocating them.

    Returns:
      An Fsa whose state 0 is the start state (swapped with the old state 0), other states keep
      their numbers, and a new last state is the final state; see the module docstring.
      ``Infinity`` final weights mean "not final".

    Raises:
      ValueError: naming ``source`` and the line, for empty input, a wrong number of fields,
        non-numeric fields, negative states or labels, a state listed as final twice, or a
        state far beyond the number of lines (:data:`MAX_STATE_GAP`).
    """
    lines = _lines(s)
    if not lines:
        raise ValueError(f"{source}: empty input (an OpenFst FST needs a start state)")
    if acceptor is None:
        acceptor = not any(len(f) == 5 for _, f in lines)
    limit = _state_limit(len(lines)) - 1  # OpenFst states: the k2 final state is added
    try:
        parsed = _openfst_fast([f for _, f in lines], acceptor, limit)
    except _Slow:
        parsed = _openfst_slow(lines, acceptor, source, limit)
    _check_states(parsed[-1] + 1, max_states, source)
    return _assemble_arrays(*parsed, acceptor=acceptor)


def _openfst_fast(rows: list[list[str]], acceptor: bool, limit: int) -> tuple:
    """Vectorized parse of well-formed OpenFst text; _Slow when anything looks wrong."""
    arc_nf = (3, 4) if acceptor else (4, 5)
    arc_rows = [r for r in rows if len(r) > 2]
    fin_rows = [r for r in rows if len(r) <= 2]
    if (any(len(r) not in arc_nf for r in arc_rows)
            or any("_" in t for r in rows for t in r)):
        raise _Slow()
    cols = _int_columns(arc_rows, 3 if acceptor else 4)
    fq = _int_columns([r[:1] for r in fin_rows], 1)[0]
    start = _int_columns([rows[0][:1]], 1)[0]
    if cols.size and (cols.min() < 0) or (fq < 0).any() or len(np.unique(fq)) != len(fq):
        raise _Slow()
    w = _float_column([r[-1] if len(r) == arc_nf[1] else "0" for r in arc_rows])
    fw = _float_column([r[1] if len(r) == 2 else "0" for r in fin_rows])
    src, dst, ilab = (torch.from_numpy(c) for c in cols[:3])
    olab = ilab if acceptor else torch.from_numpy(cols[3])
    keep = fw != np.inf
    ns = int(max(start[0], cols[:2].max(initial=0), fq.max(initial=0))) + 1
    if ns > limit:
        raise _Slow()
    return (src, dst, ilab, olab, torch.from_numpy(w), torch.from_numpy(fq[keep]),
            torch.from_numpy(fw[keep]), int(start[0]), ns)


def _openfst_slow(lines: list[tuple[int, list[str]]], acceptor: bool, source: str,
                  limit: int) -> tuple:
    """Line-by-line parse of OpenFst text with precise errors; same result as the fast one."""
    arc_nf = (3, 4) if acceptor else (4, 5)
    start = _state(lines[0][1][0], f"{source}:{lines[0][0]}", limit)
    arcs: list[tuple[int, int, int, int]] = []  # src, dst, ilabel, olabel
    weights: list[str] = []
    finals: dict[int, str] = {}
    max_state = start
    for no, fields in lines:
        where = f"{source}:{no}"
        if len(fields) <= 2:
            q = _state(fields[0], where, limit)
            if q in finals:
                raise ValueError(f"{where}: state {q} is listed as final twice")
            finals[q] = _float(fields[1], where, "final weight") if len(fields) == 2 else "0"
            max_state = max(max_state, q)
            continue
        if len(fields) not in arc_nf:
            kind = "an acceptor" if acceptor else "a transducer"
            raise ValueError(f"{where}: {kind} arc line has {arc_nf[0]} or {arc_nf[1]} fields "
                             f"(final lines 1 or 2), got {len(fields)}")
        src, dst = _state(fields[0], where, limit), _state(fields[1], where, limit)
        ilab = _label(fields[2], where, "ilabel")
        olab = ilab if acceptor else _label(fields[3], where, "olabel")
        weights.append(_float(fields[-1], where, "weight") if len(fields) == arc_nf[1] else "0")
        arcs.append((src, dst, ilab, olab))
        max_state = max(max_state, src, dst)
    fin = [(q, w) for q, w in finals.items() if float(w) != math.inf]
    cols = [torch.tensor(c, dtype=torch.int64) for c in zip(*arcs)] if arcs else \
        [torch.zeros(0, dtype=torch.int64)] * 4
    return (*cols, parse_float32(weights) if weights else torch.zeros(0),
            torch.tensor([q for q, _ in fin], dtype=torch.int64),
            parse_float32([w for _, w in fin]) if fin else torch.zeros(0), start,
            max_state + 1)


def _state(tok: str, where: str, limit: int) -> int:
    q = _int(tok, where, "state")
    if q < 0:
        raise ValueError(f"{where}: negative state {q}")
    if q >= limit:
        raise ValueError(f"{where}: state {q} is far beyond the states a text of its length "
                         f"can name (at most {limit - 1}); number the states densely")
    return q


def _label(tok: str, where: str, what: str) -> int:
    v = _int(tok, where, what)
    if v < 0:
        raise ValueError(f"{where}: negative {what} {v} (OpenFst labels are >= 0)")
    return v


def from_openfst_file(path: PathLike, acceptor: bool | None = None,
                      max_states: int | None = None) -> Fsa:
    """Read OpenFst text format from a file (errors name the file and line)."""
    return from_openfst(read_text(path), acceptor=acceptor, source=os.fspath(path),
                        max_states=max_states)


def _final_weights(fsa: Fsa, final_semiring: str | None) -> tuple[list[int], torch.Tensor]:
    """States with -1 arcs (ascending) and their float32 scores, several per state combined."""
    idx = (fsa.labels == -1).nonzero().squeeze(1)
    if fsa.has_attr("aux_labels"):
        bad = idx[fsa.aux_labels[idx] > 0]
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"arc {i} enters the final state with aux_label "
                             f"{int(fsa.aux_labels[i])}; OpenFst final weights carry no output "
                             "label (make it an epsilon arc first)")
    src = fsa.arcs[idx, 0].long().cpu()
    sc = fsa.scores.detach()[idx].double().cpu()
    states, inv, counts = torch.unique(src, return_inverse=True, return_counts=True)
    if (counts > 1).any() and final_semiring not in ("tropical", "log"):
        q = int(states[counts > 1][0])
        raise ValueError(f"state {q} has {int(counts[states == q])} arcs with label -1; OpenFst "
                         "allows one final weight per state: pass final_semiring='tropical' "
                         "(max) or 'log' (logsumexp) to combine them")
    best = torch.full((len(states),), -math.inf, dtype=torch.float64)
    best = best.scatter_reduce(0, inv, sc, reduce="amax")
    if final_semiring == "log" and (counts > 1).any():
        m = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
        tot = torch.zeros_like(best).index_add_(0, inv, torch.exp(sc - m[inv]))
        best = torch.where(counts > 1, m + torch.log(tot), best)
    return states.tolist(), best.float()


@_gc_paused
def to_openfst_str(fsa: Fsa, final_semiring: str | None = None) -> str:
    """OpenFst text format: tab-separated, weights printed always (``weight = -score``).

    Acceptors print ``src dst label weight``; transducers (with ``aux_labels``) print ``src dst
    label aux_label weight``; each state's arcs are followed by its final line ``state weight``
    if it has a -1 arc. The k2 final state itself is not printed. A 1-state FSA prints
    ``0\\t0`` (the start state is final); an FSA with no states, or whose start state has no
    arcs and no -1 arc, prints "" (it accepts nothing). An FsaVec gives blank-line-separated
    FSAs. See the module docstring for ``final_semiring``.
    """
    if fsa.is_vec:
        return "\n".join(to_openfst_str(f, final_semiring) for f in fsa)
    ns = fsa.num_states
    if ns == 0:
        return ""
    if ns == 1:
        return "0\t0\n"
    fq, fscores = _final_weights(fsa, final_semiring)
    keep = (fsa.labels != -1).nonzero().squeeze(1)
    arcs = fsa.arcs[keep].tolist()
    costs = format_float32(-fsa.scores.detach()[keep] + 0.0, openfst=True)
    if fsa.has_attr("aux_labels"):
        aux = fsa.aux_labels[keep].tolist()
        lines = [f"{a[0]}\t{a[1]}\t{a[2]}\t{x}\t{w}\n" for a, x, w in zip(arcs, aux, costs)]
    else:
        lines = [f"{a[0]}\t{a[1]}\t{a[2]}\t{w}\n" for a, w in zip(arcs, costs)]
    lines += [f"{q}\t{w}\n" for q, w in zip(fq, format_float32(-fscores + 0.0, True))]
    # each state's arcs (already sorted by state), then its final line
    key = np.array([a[0] * 2 for a in arcs] + [q * 2 + 1 for q in fq], dtype=np.int64)
    if not len(key) or key.min() > 1:  # the start state has no line: nothing is accepted
        return ""
    return "".join(lines[i] for i in np.argsort(key, kind="stable").tolist())


# ---------------------------------------------------------------------- kaldifst
def to_kaldifst(fsa: Fsa, final_semiring: str | None = None, attach_symbols: bool = True):
    """Convert a single FSA to a ``kaldifst.StdVectorFst`` (tropical, ``cost = -score``).

    States ``0 .. F-1`` are kept with their numbers (``F`` = the k2 final state, dropped), start
    state 0; -1 arcs become final weights (see the module docstring, ``final_semiring``). With
    ``aux_labels`` the result is a transducer (``olabel = aux_label``), else an acceptor
    (``olabel = ilabel``). A 1-state FSA gives one state, start and final with weight 0; an FSA
    with no states an empty FST. ``attach_symbols``: set ``labels_sym`` / ``aux_labels_sym`` (or
    ``labels_sym`` for an acceptor) as the FST's input / output symbol tables.
    """
    kfst = _kaldifst()
    if fsa.is_vec:
        raise ValueError("to_kaldifst converts a single FSA; index the FsaVec first")
    transducer = fsa.has_attr("aux_labels")
    if transducer:
        bad = ((fsa.aux_labels < 0) & (fsa.labels != -1)).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"arc {i}: aux_label {int(fsa.aux_labels[i])} < 0 on an arc not "
                             "entering the final state (OpenFst labels are >= 0)")
    fst = _to_vector_fst(kfst, fsa, final_semiring)
    if attach_symbols:
        _attach_symbols(fsa, fst, transducer)
    return fst


def _to_vector_fst(kfst, fsa: Fsa, final_semiring: str | None):
    """Arrays -> OpenFst const-FST bytes -> StdVectorFst (see :mod:`._fstbin`).

    Lean on memory (graphs of tens of millions of arcs): the int32 columns of ``fsa`` are used
    as they are (arcs are sorted by source state, an Fsa invariant, checked here), with one
    copy without the -1 arcs, and freed before OpenFst reads the bytes."""
    ns = fsa.num_states
    if ns == 0:
        return kfst.StdVectorFst()
    final_costs = np.full(max(ns - 1, 1), np.inf, dtype=np.float32)
    if ns == 1:
        final_costs[0] = 0.0
    else:
        fq, fscores = _final_weights(fsa, final_semiring)
        final_costs[fq] = (-fscores + 0.0).numpy()
    arcs = fsa.arcs.cpu().numpy()
    regular = arcs[:, 2] != -1
    arcs = arcs[regular]  # int32 [R, 3], a copy
    cost = fsa.scores.detach().cpu().to(torch.float32).numpy()[regular]
    np.negative(cost, out=cost)
    cost += 0.0  # cost -> score; "+ 0.0" turns -0.0 into 0.0
    olab = fsa.aux_labels.cpu().numpy()[regular] if fsa.has_attr("aux_labels") else None
    del regular
    src = arcs[:, 0]
    if len(src) > 1 and bool((src[1:] < src[:-1]).any()):  # not an Fsa's order: sort
        order = np.argsort(src, kind="stable")
        arcs, cost = arcs[order], cost[order]
        olab = olab[order] if olab is not None else None
        src = arcs[:, 0]
        del order
    ilab = arcs[:, 2]
    data = _fstbin.const_bytes(0, final_costs, src, ilab, olab if olab is not None else ilab,
                               cost, arcs[:, 1])
    del arcs, cost, olab, src, ilab
    fst = _fstbin.vector_fst_from_bytes(kfst, data)
    if fst is None:
        raise RuntimeError("OpenFst could not read the const FST written by to_kaldifst")
    return fst


def _attach_symbols(fsa: Fsa, fst, transducer: bool) -> None:
    isym = fsa._other_attrs.get("labels_sym")
    osym = fsa._other_attrs.get("aux_labels_sym") if transducer else isym
    if isinstance(isym, SymbolTable):
        fst.input_symbols = isym.to_kaldifst()
    if isinstance(osym, SymbolTable):
        fst.output_symbols = osym.to_kaldifst()


@_gc_paused
def from_kaldifst(fst, acceptor: bool | None = None) -> Fsa:
    """Convert a ``kaldifst.StdVectorFst`` (or ``StdConstFst``) to an Fsa.

    Args:
      fst: the FST (tropical weights are costs: ``score = -cost``; a cost of 0 gives score 0.0).
      acceptor: True: labels only (ValueError if some arc has ``ilabel != olabel``); False:
        olabels go to ``aux_labels``; None: an acceptor iff every arc has ``ilabel == olabel``.

    Returns:
      An Fsa: the start state becomes state 0 (swapped with the old state 0), other states keep
      their numbers, one new final state is appended (always, so ``num_states = fst.num_states +
      1``), final weights become -1 arcs after each state's arcs. An FST without states (or
      start) gives an Fsa without states (with empty ``aux_labels`` if ``acceptor=False``).
      Input / output symbol tables become ``labels_sym`` / ``aux_labels_sym`` (``labels_sym``
      only, for an acceptor).
    """
    kfst = _kaldifst()
    ns = fst.num_states
    start = fst.start
    if ns == 0 or start < 0:
        attrs = {"aux_labels": torch.zeros(0, dtype=torch.int32)} if acceptor is False else {}
        return Fsa(torch.zeros(0, 3, dtype=torch.int32), num_states=0, **attrs)
    cols = _fst_columns(kfst, fst)
    if cols is None:  # unexpected layout: iterate (slower, same result)
        arcs, fin_q, fin_w = _read_fst(kfst, fst)
        cols = [np.array(c, dtype=np.int64) for c in arcs[:4]]
        cols += [np.array(arcs[4], dtype=np.float32), np.array(fin_q, dtype=np.int64),
                 np.array(fin_w, dtype=np.float32)]
        del arcs
    is_acc = bool((cols[2] == cols[3]).all())
    if acceptor and not is_acc:
        raise ValueError("the FST is not an acceptor (some arc has ilabel != olabel); "
                         "pass acceptor=False or None")
    acceptor = is_acc if acceptor is None else acceptor
    out = _assemble_sorted(cols, start, ns, acceptor=acceptor)
    isym, osym = fst.input_symbols, fst.output_symbols
    if isym is not None:
        out.labels_sym = SymbolTable.from_kaldifst(isym)
    if osym is not None and not acceptor:
        out.aux_labels_sym = SymbolTable.from_kaldifst(osym)
    return out


def _fst_columns(kfst, fst) -> list[np.ndarray] | None:
    """The columns of :func:`_take_columns` of ``fst`` through a const-FST file, or None (an
    unexpected layout)."""
    box = [_fstbin.read_const(kfst, fst)]
    return None if box[0] is None else _take_columns(box)


def _take_columns(box: list[_fstbin.StdFst]) -> list[np.ndarray]:
    """``[src, dst, ilabel, olabel, cost, final states, final costs]`` of the one
    :class:`~._fstbin.StdFst` in ``box``, which is emptied: the list returned is then the only
    owner of each array, so that :func:`_assemble_sorted` can free them one by one."""
    f = box.pop()
    fin = np.flatnonzero(f.final != np.inf)
    cols = [f.src, f.dst, f.ilabel, f.olabel, f.cost, fin, f.final[fin]]
    del f
    return cols


def _read_fst(kfst, fst) -> tuple[list, list[int], list[float]]:
    """Columns (src, dst, ilabel, olabel, cost) of all arcs in order, final states and costs."""
    lib = kfst.lib._kaldifst
    if isinstance(fst, kfst.StdVectorFst):
        make_it = lib._ArcIteratorStdVectorFst
    elif isinstance(fst, kfst.StdConstFst):
        make_it = lib._ArcIteratorStdConstFst
    else:
        raise TypeError(f"expected a kaldifst StdVectorFst or StdConstFst, got {type(fst)}")
    arcs: list[tuple] = []
    fin_q: list[int] = []
    fin_w: list[float] = []
    for q in range(fst.num_states):
        it = make_it(fst, q)
        while not it.done:
            a = it.value
            arcs.append((q, a.nextstate, a.ilabel, a.olabel, a.weight.value))
            it.next()
        w = fst.final(q).value
        if w != math.inf:
            fin_q.append(q)
            fin_w.append(w)
    cols = [list(c) for c in zip(*arcs)] if arcs else [[], [], [], [], []]
    return cols, fin_q, fin_w


def _assemble_arrays(src: torch.Tensor, dst: torch.Tensor, ilab: torch.Tensor,
                     olab: torch.Tensor, cost: torch.Tensor, fin_q: torch.Tensor,
                     fin_w: torch.Tensor, start: int, num_states: int, *,
                     acceptor: bool) -> Fsa:
    """An Fsa from OpenFst-style arcs and final weights: start <-> 0, new last final state.
    Arcs and final states in any order (OpenFst text); see :func:`_assemble_sorted`."""
    ren = torch.arange(num_states)
    ren[0], ren[start] = start, 0
    n_fin = len(fin_q)
    src = torch.cat([ren[src], ren[fin_q]])
    dst = torch.cat([ren[dst], torch.full((n_fin,), num_states, dtype=torch.int64)])
    minus1 = torch.full((n_fin,), -1, dtype=torch.int64)
    ilab, olab = torch.cat([ilab, minus1]), torch.cat([olab, minus1])
    scores = -torch.cat([cost, fin_w]) + 0.0  # cost -> score; "+ 0.0" turns -0.0 into 0.0
    order = torch.sort(src, stable=True).indices  # regular arcs keep their order, -1 arcs last
    arcs = torch.stack([src, dst, ilab], dim=1)[order].to(torch.int32)
    attrs = {} if acceptor else {"aux_labels": olab[order].to(torch.int32)}
    return Fsa(arcs, scores[order], num_states=num_states + 1, **attrs)


def _assemble_sorted(cols: list[np.ndarray], start: int, num_states: int, *,
                     acceptor: bool) -> Fsa:
    """:func:`_assemble_arrays` (the same Fsa) for the arcs of an OpenFst binary FST: ``cols``
    = ``[src, dst, ilabel, olabel, cost, final states, final costs]`` with ``src``
    non-decreasing and the final states ascending, all in range; ``cols`` is emptied.

    Each state's arcs stay in their order and its -1 arc (if final) follows them; states 0
    and ``start`` swap places. Built column by column in int32, each input freed once used:
    about 40 bytes per arc at the peak, where sorting int64 columns took over 100."""
    src, dst, ilab, olab, cost, fin_q, fin_w = cols
    cols.clear()
    ns = num_states
    narcs = np.bincount(src, minlength=ns)
    del src
    cnt = narcs.copy()
    cnt[fin_q] += 1  # arcs of each old state in the result, its -1 arc included
    ins = np.cumsum(narcs)[fin_q]  # where each -1 arc goes (np.insert: before that index)
    del narcs
    ren = None
    if start != 0:
        ren = np.arange(ns, dtype=np.int32)
        ren[0], ren[start] = start, 0
        first = np.cumsum(cnt) - cnt
        lo, hi = int(first[start]), int(first[start] + cnt[start])
        c0 = int(cnt[0])

    def place(x: np.ndarray) -> np.ndarray:
        """Old state order -> new: the block of ``start`` first, that of state 0 at its place."""
        if ren is None:
            return x
        return np.concatenate([x[lo:hi], x[c0:lo], x[:c0], x[hi:]])

    total = int(cnt.sum())
    arcs = np.empty((total, 3), dtype=np.int32)
    arcs[:, 0] = np.repeat(np.arange(ns, dtype=np.int32), cnt if ren is None else cnt[ren])
    del cnt
    d = dst.astype(np.int32)
    del dst
    if ren is not None:
        d = ren[d]
    arcs[:, 1] = place(np.insert(d, ins, np.int32(ns)))
    del d
    arcs[:, 2] = place(np.insert(ilab.astype(np.int32), ins, np.int32(-1)))
    del ilab
    aux = None if acceptor else place(np.insert(olab.astype(np.int32), ins, np.int32(-1)))
    del olab
    scores = place(np.insert(cost.astype(np.float32), ins, fin_w.astype(np.float32)))
    del cost
    np.negative(scores, out=scores)
    scores += 0.0  # cost -> score; "+ 0.0" turns -0.0 into 0.0
    attrs = {} if aux is None else {"aux_labels": torch.from_numpy(aux)}
    # valid by construction (OpenFst's or checked arcs): no validation pass over the arcs
    return Fsa(torch.from_numpy(arcs), torch.from_numpy(scores), num_states=ns + 1,
               validate=False, **attrs)


# ---------------------------------------------------------------------- binary files
def write_fst(fsa: Fsa, path: PathLike, final_semiring: str | None = None, *,
              attach_symbols: bool = True) -> None:
    """Write an OpenFst binary ``vector`` FST (tropical) through kaldifst, atomically
    (``attach_symbols``: with the symbol tables, see :func:`to_kaldifst`)."""
    path = os.fspath(path)
    fst = to_kaldifst(fsa, final_semiring=final_semiring, attach_symbols=attach_symbols)
    with atomic_output(path) as tmp, _openfst_messages() as said:
        if not fst.write(tmp):
            raise OSError(errno.EIO, f"OpenFst could not write it{said.text()}", path)


class _Said:
    """What OpenFst printed on stderr inside :func:`_openfst_messages` (after the block)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def text(self) -> str:
        """``" (OpenFst: first line)"`` or ""."""
        return f" (OpenFst: {self.lines[0]})" if self.lines else ""


@contextmanager
def _openfst_messages():
    """Catch what C++ code (OpenFst's ``ERROR: ...`` lines) writes to file descriptor 2 in the
    block, so that a failed read is one Python error, not stray lines on the terminal."""
    import sys
    import tempfile

    said = _Said()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield said
        return
    with tempfile.TemporaryFile() as cap:
        os.dup2(cap.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            cap.seek(0)
            text = cap.read(4096).decode(errors="replace")
            said.lines = [ln.strip() for ln in text.splitlines() if ln.strip()]


def read_fst(path: PathLike, acceptor: bool | None = None, max_states: int | None = None
             ) -> Fsa:
    """Read an OpenFst binary FST (``vector`` or ``const``, tropical arcs), as
    :func:`from_kaldifst` would convert it (symbol tables included).

    The file is parsed and checked here (:func:`._fstbin.read_std_fst`), not by OpenFst: a
    file that is not such an FST, or is corrupt or cut short, is a ValueError naming it.
    ``max_states`` (k2 numbering, one more than OpenFst's) refuses a larger FST
    (:class:`TooManyStatesError`) before its states are allocated.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        raise FileNotFoundError(errno.ENOENT, "no such file", path)
    if max_states is not None:
        with open(path, "rb") as f:
            head = f.read(4096)
        try:
            h = _fstbin.Reader(head, name=path).header()
        except ValueError:
            h = None  # read_std_fst names the problem
        if h is not None and h.num_states >= 0:
            _check_states(h.num_states + 1, max_states, path)
    f = _fstbin.read_std_fst_file(path)
    if max_states is not None:
        _check_states(f.num_states + 1, max_states, path)
    if f.num_states == 0 or f.start < 0:
        attrs = {"aux_labels": torch.zeros(0, dtype=torch.int32)} if acceptor is False else {}
        return Fsa(torch.zeros(0, 3, dtype=torch.int32), num_states=0, **attrs)
    is_acc = bool((f.ilabel == f.olabel).all())
    if acceptor and not is_acc:
        raise ValueError(f"{path}: the FST is not an acceptor (some arc has ilabel != "
                         "olabel); pass acceptor=False or None")
    acceptor = is_acc if acceptor is None else acceptor
    start, num_states, isymbols, osymbols = f.start, f.num_states, f.isymbols, f.osymbols
    box = [f]
    del f
    out = _assemble_sorted(_take_columns(box), start, num_states, acceptor=acceptor)
    try:
        if isymbols is not None:
            out.labels_sym = _symbol_table(isymbols)
        if osymbols is not None and not acceptor:
            out.aux_labels_sym = _symbol_table(osymbols)
    except ValueError as e:
        raise ValueError(f"{path}: a symbol table of the FST: {e}") from None
    return out


def _symbol_table(pairs: list[tuple[str, int]]) -> SymbolTable:
    """A SymbolTable of ``(symbol, key)`` pairs; ValueError for a conflict or a bad symbol."""
    table = SymbolTable()
    for sym, key in pairs:
        table.add(sym, key)
    return table


_SAVE_FORMAT = "wfst_asr.Fsa"
_PLAIN = (bool, int, float, str, type(None))


def save(fsa: Fsa, path: PathLike) -> None:
    """``torch.save`` an Fsa/FsaVec (scores detached) atomically; see :func:`load`.

    Saved: arcs, scores, splits, num_states, every per-arc tensor attribute, SymbolTable
    attributes (as text), and plain (bool/int/float/str/None) attributes; other attributes are
    skipped with a warning.
    """
    path = os.fspath(path)
    tensors = {k: v.detach().cpu() for k, v in fsa._tensor_attrs.items()}
    symtabs, plain = {}, {}
    for k, v in fsa._other_attrs.items():
        if isinstance(v, SymbolTable):
            symtabs[k] = v.to_str()
        elif isinstance(v, _PLAIN):
            plain[k] = v
        else:
            warnings.warn(f"save: attribute {k!r} of type {type(v).__name__} is not saved")
    obj = {"format": _SAVE_FORMAT, "version": 1, "is_vec": fsa.is_vec,
           "arcs": fsa.arcs.cpu(), "scores": fsa.scores.detach().cpu(),
           "arc_splits": fsa.arc_splits.cpu(), "num_states": fsa.num_states_per_fsa.cpu(),
           "tensor_attrs": tensors, "symbol_tables": symtabs, "plain_attrs": plain}
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def torch_load_reason(e: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` raised, as a short phrase: its first sentence, and
    never torch's advice to retry with ``weights_only=False`` (not for untrusted files)."""
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    first = first.split(". ")[0].rstrip(".")
    if "weights_only" in str(e) or "Weights only load failed" in first:
        first = "unreadable or disallowed pickle data"
    return first[:200]


def _torch_load_error(path: str, e: Exception) -> ValueError:
    """A ValueError naming ``path`` for what ``torch.load`` raised on a file that is not a torch
    file."""
    return ValueError(f"{path}: not a torch file written by wfst_asr ({torch_load_reason(e)})")


def load(path: PathLike, map_location: str | torch.device = "cpu") -> Fsa:
    """Load what :func:`save` wrote (``torch.load(weights_only=True)``); anything else (not a
    torch file, truncated, another object) is a ValueError naming the file."""
    path = os.fspath(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 -- torch raises RuntimeError, UnpicklingError, ...
        raise _torch_load_error(path, e) from None
    if not isinstance(obj, dict) or obj.get("format") != _SAVE_FORMAT:
        raise ValueError(f"{path}: not an Fsa saved by wfst_asr.fsa.save")
    try:
        attrs: dict[str, Any] = dict(obj["tensor_attrs"])
        attrs.update({k: SymbolTable.from_str(v, source=f"{path}: symbol table {k}")
                      for k, v in obj["symbol_tables"].items()})
        attrs.update(obj["plain_attrs"])
        if obj["is_vec"]:
            return Fsa(obj["arcs"], obj["scores"], num_states=obj["num_states"],
                       arc_splits=obj["arc_splits"], validate=False, **attrs)
        return Fsa(obj["arcs"], obj["scores"], num_states=int(obj["num_states"][0]),
                   validate=False, **attrs)
    except ValueError as e:
        raise ValueError(e if str(e).startswith(path) else f"{path}: {e}") from None
    except (KeyError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        raise ValueError(f"{path}: a corrupt Fsa file ({type(e).__name__}: {e})") from None
