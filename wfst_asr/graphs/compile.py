"""Decoding-graph compilation: LG, HLG / TLG (CTC) and HCLG (HMM), as Kaldi's mkgraph and
icefall's compile_hlg do.

Conventions: graphs are :class:`~wfst_asr.fsa.Fsa` transducers, ``labels`` = input side,
``aux_labels`` = output side (words), scores = log-weights (tropical semiring in OpenFst,
``cost = -score``). L_disambig: tokens (``tokens.txt`` ids; 0 = epsilon/blank) -> words
(``words.txt`` ids), with ``#0`` self-loop; G: an acceptor (or transducer) over word ids whose
back-off arcs carry ``#0``.

Pipeline
--------
:func:`compile_lg`: arcsort, ``L o G``, DeterminizeStar (disambiguation symbols present, so
``L o G`` is determinizable), then (unless ``keep_disambig``) disambiguation symbols -> 0, RmEpsilon;
MinimizeEncoded, Connect, ArcSort. With ``keep_disambig=True`` the result is Kaldi's LG: deterministic
(no state has two arcs with the same input label). Without, it may have arcs ``0:word`` (a
homophone or prefix word is only known at its ``#n``), and backoff epsilons removed by RmEpsilon
make it non-deterministic.

:func:`compile_hlg` (CTC): every input label of the result must consume a frame in
:func:`wfst_asr.fsa.intersect_dense_pruned` (0 = blank). k2 removes LG's ``0:word`` arcs with
ragged aux_labels; an Fsa has one aux_label per arc, so :func:`remove_input_epsilons` moves the
word of each ``0:w`` arc onto the token arcs entering its source state (or, failing that, leaving
its destination), which keeps every path's token sequence, word sequence and total score.
Then ``H o LG`` (no determinization of H; H's blank ``0:0`` arcs only mean "H moves, LG stays";
kaldifst's Compose connects), ArcSort. Result: labels = network output ids (0 = blank),
aux_labels = words, -1 arcs into one final state.

:func:`compile_hclg` (HMM, monophone: C = identity): H (transition-ids -> phones, self-loops and
transition probabilities included, :mod:`.topo`) ``o`` epsilon-free LG (connected), RmEpsilon
(H's ``0:0`` phone-exit arcs; connects), ArcSort. Labels = transition-ids (no epsilon left),
aux_labels = words. Unlike Kaldi, HCLG is not determinized again before adding self-loops
(icefall's HLG is not either).

:func:`compile_graph`: reads a lang dir, writes ``<kind>.fst`` (OpenFst binary) and ``<kind>.pt``
(:func:`wfst_asr.fsa.save`) atomically with a JSON stamp ``<kind>.stamp.json``; recompiles only
when an output is missing or older than an input, or the options changed.

Memory: with a vocabulary of 10^4 words LG has ~10^7 arcs (epsilon-free, each back-off state
holds a copy of the unigram state's arcs) and HLG 2-3 times more, so the steps keep few copies
alive: the epsilon-free LG goes to ``H o LG`` as a kaldifst FST (no Fsa round trip), each FST is
freed as soon as the next one exists and the C heap trimmed (:func:`_trim_heap`), conversions
work on int32 columns (:mod:`wfst_asr.fsa.io`), and ``compile_graph`` writes ``HLG.fst`` /
``HCLG.fst`` straight from kaldifst, frees it and reads the file back (:func:`read_fst`) instead
of converting the FST in memory and again for writing. The largest transient left is reading
the graph back (about 70 bytes per arc, in :mod:`wfst_asr.fsa._fstbin`).

Every function returns/records a *stats* dict: ``kaldifst_s`` (time inside kaldifst's own
operations: compose, determinize_star, rmepsilon, minimize_encoded, connect, arcsort),
``convert_s`` (Fsa <-> kaldifst conversions), ``python_s`` (the rest), ``total_s``, and sizes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wfst_asr.atomic import atomic_output
from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.fsa.io import from_kaldifst, load, read_fst, save, to_kaldifst, write_fst
from wfst_asr.fsa.symbol_table import atomic_write_text

from .topo import TOPOLOGIES, Topology, make_topology

__all__ = ["GRAPH_KINDS", "CompileStats", "EmptyGraphError", "compile_graph", "compile_hclg",
           "compile_hlg", "compile_lg", "remove_input_epsilons"]

log = logging.getLogger(__name__)

#: Graph kinds of :func:`compile_graph`. TLG is HLG under EESEN's name (T = CTC token topology).
GRAPH_KINDS = ("LG", "HLG", "TLG", "HCLG")
_STAMP_VERSION = 1


class EmptyGraphError(ValueError):
    """A step of the compilation left no path (``step`` names it: ``"L o G"``, ...)."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(message)


def _nonempty(fst, step: str, hint: str) -> None:
    """EmptyGraphError when the kaldifst FST ``fst`` (the result of ``step``) has no state."""
    if fst.num_states == 0:
        raise EmptyGraphError(step, f"{step} is empty (no complete path left): {hint}")


# ---------------------------------------------------------------------- timing
class CompileStats(dict):
    """A dict of timings (seconds) and sizes; :meth:`kaldifst` / :meth:`convert` time blocks."""

    def __init__(self) -> None:
        super().__init__(kaldifst_s=0.0, convert_s=0.0, total_s=0.0, python_s=0.0)
        self._t0 = time.perf_counter()

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self[key] = self.get(key, 0.0) + time.perf_counter() - t

    @contextmanager
    def kaldifst(self, op: str) -> Iterator[None]:
        """Time a block inside kaldifst (also under ``kaldifst_<op>_s``)."""
        with self._timed("kaldifst_s"), self._timed(f"kaldifst_{op}_s"):
            yield

    def convert(self) -> contextlib.AbstractContextManager[None]:
        """Time a block of Fsa <-> kaldifst conversion."""
        return self._timed("convert_s")

    def finish(self) -> CompileStats:
        """Set ``total_s``, ``python_s`` and ``kaldifst_share``."""
        self["total_s"] = time.perf_counter() - self._t0
        self["python_s"] = self["total_s"] - self["kaldifst_s"] - self["convert_s"]
        self["kaldifst_share"] = self["kaldifst_s"] / max(self["total_s"], 1e-12)
        return self

    def merge(self, other: dict[str, Any], prefix: str = "") -> None:
        """Add another stats dict's timings; copy its other entries under ``prefix``."""
        for k, v in other.items():
            if k in ("total_s", "python_s", "kaldifst_share"):
                continue
            if k.endswith("_s") and not prefix:
                self[k] = self.get(k, 0.0) + v
            else:
                self[prefix + k] = v


def _kfst():
    from wfst_asr import _kaldi
    return _kaldi.kaldifst()


def _trim_heap() -> None:
    """Give the memory that freed OpenFst objects leave in the C heap back to the system
    (glibc's ``malloc_trim``; nothing elsewhere). Without it the resident size after freeing a
    graph of 10^7 arcs stays near its peak, and the next step adds to it."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _to_k(fsa: Fsa, stats: CompileStats):
    with stats.convert():
        return to_kaldifst(fsa, attach_symbols=False)


def _from_k(fst, stats: CompileStats, acceptor: bool = False) -> Fsa:
    with stats.convert():
        return from_kaldifst(fst, acceptor=acceptor)


def _size(fsa: Fsa) -> tuple[int, int]:
    """(states, arcs) without k2's extra final state and -1 arcs (OpenFst's counting)."""
    n_final = int((fsa.labels == -1).sum())
    return max(fsa.num_states - 1, 0), fsa.num_arcs - n_final


# ---------------------------------------------------------------------- LG
def compile_lg(L_disambig: Fsa, G: Fsa, first_token_disambig: int, first_word_disambig: int,
               *, keep_disambig: bool = False, use_log: bool = False, minimize: bool = True,
               delta: float = 1.0 / 1024, stats: CompileStats | None = None) -> Fsa:
    """``LG = min(det*(L_disambig o G))`` with disambiguation symbols removed (see module doc).

    Args:
      L_disambig: transducer tokens -> words (``#n`` token ids >= ``first_token_disambig``,
        the ``#0:#0`` loop included).
      G: acceptor (or transducer) over word ids; back-off arcs carry word ``#0``
        (``first_word_disambig``).
      first_token_disambig / first_word_disambig: ids of ``#0`` in tokens.txt / words.txt.
        Input ids >= the first and output ids >= the second are removed (in words.txt of
        :func:`~wfst_asr.graphs.lang.prepare_lang` that also clears ``<s>``, ``</s>``).
      keep_disambig: return Kaldi's deterministic LG with ``#n`` symbols still present.
      use_log: DeterminizeStar in the log semiring (Kaldi's mkgraph) instead of tropical.
      minimize: MinimizeEncoded (weights quantized to ``delta``, as Kaldi).
      stats: a :class:`CompileStats` to add timings to.

    Returns:
      LG, labels = tokens, aux_labels = words, scores = log-weights.
    """
    own = stats is None
    stats = CompileStats() if own else stats
    kf = _kfst()
    if not L_disambig.has_attr("aux_labels"):
        raise ValueError("L_disambig must be a transducer (aux_labels = words)")
    fl, fg = _to_k(L_disambig, stats), _to_k(G, stats)
    with stats.kaldifst("compose"):
        kf.arcsort(fl, sort_type="olabel")
        kf.arcsort(fg, sort_type="ilabel")
        fst = kf.compose(fl, fg, connect=True)
    _nonempty(fst, "L o G", "no word sequence of G can be spelt with L's words (do L and G "
              "use the same words.txt? is G's start state final or connected?)")
    with stats.kaldifst("determinize_star"):
        if kf.determinize_star(fst, use_log=use_log):
            raise RuntimeError("determinize_star stopped early")
    _nonempty(fst, "det(L o G)", "determinization lost every path")
    if not keep_disambig:
        fsa = _remove_disambig(_from_k(fst, stats), first_token_disambig, first_word_disambig)
        fst = _to_k(fsa, stats)
        del fsa
        with stats.kaldifst("rmepsilon"):
            kf.rmepsilon(fst)
        _nonempty(fst, "rmepsilon(LG)", "epsilon removal lost every path")
    with stats.kaldifst("minimize"):
        if minimize:
            kf.minimize_encoded(fst, delta=delta)
    with stats.kaldifst("connect"):
        kf.connect(fst)
        kf.arcsort(fst, sort_type="ilabel")
    _nonempty(fst, "min(LG)", "minimization and connection left no path")
    LG = _from_k(fst, stats)
    del fst, fl, fg
    _trim_heap()
    _copy_syms(LG, L_disambig, G)
    stats["LG_states"], stats["LG_arcs"] = _size(LG)
    if own:
        log.info("compile_lg: %s", stats.finish())
    return LG


def _remove_disambig(fsa: Fsa, first_token_disambig: int, first_word_disambig: int) -> Fsa:
    """Input ids >= first_token_disambig and output ids >= first_word_disambig -> 0."""
    lab = fsa.labels.clone()
    lab[lab >= first_token_disambig] = 0
    aux = fsa.aux_labels.clone()
    aux[aux >= first_word_disambig] = 0
    arcs = torch.cat([fsa.arcs[:, :2], lab.unsqueeze(1)], dim=1)
    return Fsa(arcs, fsa.scores.detach().clone(), num_states=fsa.num_states, aux_labels=aux)


def _copy_syms(out: Fsa, L: Fsa, G: Fsa) -> None:
    """Symbol tables: tokens from L's labels, words from L's aux labels (or G's)."""
    if L.has_attr("labels_sym"):
        out.labels_sym = L.labels_sym
    for src, name in ((L, "aux_labels_sym"), (G, "aux_labels_sym"), (G, "labels_sym")):
        if src.has_attr(name):
            out.aux_labels_sym = getattr(src, name)
            break


# ---------------------------------------------------------------------- epsilon removal
def remove_input_epsilons(fsa: Fsa) -> Fsa:
    """Remove the arcs with input label 0 of a transducer whose epsilon arcs all have a word.

    For an arc ``e = p -> r`` with label 0, aux_label ``w`` and score ``s`` (each step keeps the
    set of (labels, words, total score) paths):

    * backward: when ``p`` is not the start state and every arc ``f = o -> p`` entering it has a
      label > 0 and aux_label 0, add ``o -> r`` with ``f``'s label, aux_label ``w``, score
      ``f.score + s`` for each ``f`` (``f`` stays, for ``p``'s other arcs);
    * forward: else, when every arc ``g = r -> x`` leaving ``r`` has a label > 0 and aux_label 0
      (and ``r`` is not final), add ``p -> x`` with ``g``'s label, aux_label ``w``, score
      ``s + g.score``;

    then delete ``e``. Arcs ``0:0`` must have been removed before (RmEpsilon). Raises ValueError
    when neither rule applies to some arc (two words would have to share a frame-consuming arc).
    States that become useless are left in place (call Connect).

    Vectorised (numpy), in rounds. Each round looks at the graph as it is at the round's start:
    ``B`` = the epsilon arcs the backward rule applies to, ``F`` = the others the forward rule
    applies to. An arc of ``B`` whose ``p`` is entered by an arc leaving the ``r`` of an arc of
    ``F`` waits for the next round (done one after the other, the first of the two would change
    what the second sees); all the others are done at once. They do not interfere: a backward
    step reads the arcs entering its ``p``, adds arcs ``o -> r`` and deletes ``e``; ``r`` has
    ``e`` entering it, so it is no backward ``p``, and an ``o`` is no forward ``r`` (that would
    be the deferred case). A forward step reads the arcs leaving its ``r``, adds arcs ``p -> x``
    and deletes ``e``; ``p`` has ``e`` leaving it, so it is no forward ``r``, and an ``x`` is no
    backward ``p`` (the deferred case again). So a round is the one-at-a-time process in some
    order, and the paths are kept.
    """
    if fsa.is_vec or not fsa.has_attr("aux_labels"):
        raise ValueError("remove_input_epsilons takes a single transducer")
    # int32 columns (views of the Fsa's tensors until the first round copies them) and float64
    # scores: about 24 bytes per arc, where the graphs of large vocabularies have 10^7 arcs
    a = fsa.arcs.cpu().numpy()
    src, dst, lab = a[:, 0], a[:, 1], a[:, 2]
    aux = fsa.aux_labels.cpu().numpy().astype(np.int32, copy=False)
    sc = fsa.scores.detach().cpu().numpy().astype(np.float64)
    n = fsa.num_states
    if bool((aux[lab == 0] == 0).any()):
        raise ValueError("remove_input_epsilons: arcs 0:0 present; run RmEpsilon first")
    alive = np.ones(len(src), dtype=bool)
    while True:
        pending = np.flatnonzero(alive & (lab == 0))
        if not len(pending):
            break
        ok_arc = alive & (lab > 0) & (aux == 0)
        not_ok = alive & ~ok_arc
        bad_in = np.zeros(n, dtype=bool)
        bad_in[dst[not_ok]] = True
        bad_out = np.zeros(n, dtype=bool)
        bad_out[src[not_ok]] = True
        del not_ok
        has_out = np.zeros(n, dtype=bool)
        has_out[src if alive.all() else src[alive]] = True
        p, r = src[pending], dst[pending]
        back = (p != 0) & ~bad_in[p]
        fwd = ~back & has_out[r] & ~bad_out[r]
        F = pending[fwd]
        r_of_f = np.zeros(n, dtype=bool)
        r_of_f[dst[F]] = True
        conflict = np.zeros(n, dtype=bool)
        conflict[dst[ok_arc & r_of_f[src]]] = True
        del ok_arc
        B = pending[back & ~conflict[p]]
        if not len(B) and not len(F):
            e0 = int(pending[0])
            raise ValueError(
                f"remove_input_epsilons: cannot move the word of {len(pending)} epsilon arc(s) "
                f"(e.g. {src[e0]} -> {dst[e0]} word {aux[e0]}) onto a "
                "frame-consuming arc without a word")
        eb, fb = _arc_pairs(B, src[B], dst, alive, n)  # arcs f entering p
        ef, gf = _arc_pairs(F, dst[F], src, alive, n)  # arcs g leaving r
        alive[B] = False
        alive[F] = False
        src = np.concatenate([src, src[fb], src[ef]])
        dst = np.concatenate([dst, dst[eb], dst[gf]])
        lab = np.concatenate([lab, lab[fb], lab[gf]])
        aux = np.concatenate([aux, aux[eb], aux[ef]])
        sc = np.concatenate([sc, sc[fb] + sc[eb], sc[ef] + sc[gf]])
        alive = np.concatenate([alive, np.ones(len(eb) + len(ef), dtype=bool)])
        del eb, fb, ef, gf
    # by source state, -1 arcs last, otherwise in arc order (stable); deleted arcs at the end
    key = src.astype(np.int64) * 2
    key[lab == -1] += 1
    key[~alive] = 2 * n + 2
    order = np.argsort(key, kind="stable")[:int(alive.sum())]
    del key, alive
    arcs = np.empty((len(order), 3), dtype=np.int32)
    for k, col in enumerate((src, dst, lab)):
        arcs[:, k] = col[order]
    out_fsa = Fsa(torch.from_numpy(arcs), torch.from_numpy(sc[order].astype(np.float32)),
                  num_states=n, aux_labels=torch.from_numpy(aux[order]), validate=False)
    for k, v in fsa._other_attrs.items():
        setattr(out_fsa, k, v)
    return out_fsa


def _arc_pairs(sel: np.ndarray, state: np.ndarray, at: np.ndarray, alive: np.ndarray,
               num_states: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (arc of ``sel``, alive arc ``j`` with ``at[j] == state`` of that arc) pair, the
    ``j`` of one arc in increasing order. Only the arcs at one of the ``state`` s are sorted."""
    if not len(sel):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    wanted = np.zeros(num_states, dtype=bool)
    wanted[state] = True
    idx = np.flatnonzero(alive & wanted[at])
    idx = idx[np.argsort(at[idx], kind="stable")]
    deg = np.bincount(at[idx], minlength=int(max(state.max(), 0)) + 1)
    first = np.concatenate([[0], np.cumsum(deg)])
    cnt = deg[state]
    rep = np.repeat(np.arange(len(sel)), cnt)
    offs = np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return sel[rep], idx[first[state][rep] + offs]


def _epsilon_free_lg(LG: Fsa, stats: CompileStats):
    """LG without input epsilons (``0:w`` arcs moved, then Connect, ArcSort) as a kaldifst FST,
    ready for ``H o LG`` (no trip back to an Fsa: LG has ~10^7 arcs for a large vocabulary)."""
    if not bool((LG.labels == 0).any()):
        return _to_k(LG, stats)
    t = time.perf_counter()
    fixed = remove_input_epsilons(LG)
    stats["remove_input_epsilons_s"] = time.perf_counter() - t
    fst = _to_k(fixed, stats)
    del fixed
    _trim_heap()
    kf = _kfst()
    with stats.kaldifst("connect"):
        kf.connect(fst)
        kf.arcsort(fst, sort_type="ilabel")
    _nonempty(fst, "remove_input_epsilons(LG)", "moving the words of LG's epsilon arcs left no "
              "path")
    return fst


# ---------------------------------------------------------------------- H o LG
def _compose_h(H: Fsa, flg, stats: CompileStats, rmeps: bool, name: str = "H", *,
               syms: tuple[SymbolTable | None, SymbolTable | None] = (None, None),
               fst_path: str | None = None) -> Fsa:
    """``H o LG`` (connected by Compose, optional RmEpsilon, ArcSort) through kaldifst; ``flg``
    is LG as a kaldifst FST (:func:`_epsilon_free_lg`; freed after Compose when the caller
    hands it over as a temporary). ``syms``: (labels_sym, aux_labels_sym) of the
    result; ``fst_path``: also write the result there as an OpenFst binary FST with those symbol
    tables (what :func:`~wfst_asr.fsa.write_fst` of the returned Fsa writes), from the kaldifst
    FST, before it is converted."""
    kf = _kfst()
    if flg.num_states == 0:
        raise EmptyGraphError("LG", "LG is empty (no path): nothing to compose H with")
    fh = _to_k(H, stats)
    with stats.kaldifst("compose"):
        kf.arcsort(fh, sort_type="olabel")
        kf.arcsort(flg, sort_type="ilabel")
        fst = kf.compose(fh, flg, connect=True)
    del fh, flg  # the caller passes its last reference to LG's FST
    _trim_heap()
    _nonempty(fst, f"{name} o LG", f"no token sequence of LG is an output of {name} (does the "
              "topology cover every token of L?)")
    if rmeps:
        with stats.kaldifst("rmepsilon"):
            kf.rmepsilon(fst)  # connects too (as compose did): no Connect (memory) needed
    with stats.kaldifst("connect"):
        kf.arcsort(fst, sort_type="ilabel")
    _nonempty(fst, f"connect({name} o LG)", "epsilon removal / connection left no path")
    if fst_path is None:
        out = _from_k(fst, stats)
    else:  # write it, free it, read the file back: less memory, and faster, than _from_k
        with stats._timed("write_s"):
            _write_k(fst, fst_path, syms)
        del fst
        _trim_heap()
        with stats.convert():
            out = read_fst(fst_path, acceptor=False)
    for attr, table in zip(("labels_sym", "aux_labels_sym"), syms):
        if table is not None:
            setattr(out, attr, table)
    return out


def _write_k(fst, path: str, syms: tuple[SymbolTable | None, SymbolTable | None]) -> None:
    """Write a kaldifst FST to ``path`` (not atomically: ``path`` is a temporary file) with the
    symbol tables ``syms`` (input, output), as :func:`~wfst_asr.fsa.write_fst` would."""
    isym, osym = syms
    if isym is not None:
        fst.input_symbols = isym.to_kaldifst()
    if osym is not None:
        fst.output_symbols = osym.to_kaldifst()
    if not fst.write(path):
        raise OSError(errno.EIO, "OpenFst could not write it", path)


def _lg_syms(LG: Fsa) -> SymbolTable | None:
    return LG.aux_labels_sym if LG.has_attr("aux_labels_sym") else None


def compile_hlg(H: Fsa | Topology, LG: Fsa, *, stats: CompileStats | None = None) -> Fsa:
    """CTC decoding graph ``H o LG`` for :func:`wfst_asr.fsa.intersect_dense_pruned`.

    ``H``: a CTC topology (:func:`wfst_asr.graphs.topo.ctc_topo`, or a :class:`Topology`); ``LG`` from
    :func:`compile_lg` (disambiguation symbols removed). Returns labels = network output ids
    (0 = blank; every label >= 0 consumes one frame), aux_labels = words (0 = none), -1 arcs
    into the single final state. See the module docstring for the epsilon scheme.
    """
    own = stats is None
    stats = CompileStats() if own else stats
    HLG = _hlg(_ctc_h(H), _epsilon_free_lg(LG, stats), stats, (None, _lg_syms(LG)))
    if own:
        log.info("compile_hlg: %s", stats.finish())
    return HLG


def _ctc_h(H: Fsa | Topology) -> Fsa:
    """The H of a CTC topology (ValueError for an HMM one)."""
    if isinstance(H, Topology):
        if not H.is_ctc:
            raise ValueError(f"compile_hlg needs a CTC topology, got {H.name!r}; use "
                             "compile_hclg")
        return H.H
    return H


def _hlg(H: Fsa, flg, stats: CompileStats, syms: tuple, fst_path: str | None = None) -> Fsa:
    """:func:`compile_hlg` from LG's kaldifst FST (consumed)."""
    HLG = _compose_h(H, flg, stats, rmeps=False, syms=syms, fst_path=fst_path)
    stats["HLG_states"], stats["HLG_arcs"] = _size(HLG)
    return HLG


def compile_hclg(topo: Topology, LG: Fsa, *, stats: CompileStats | None = None) -> Fsa:
    """HMM decoding graph ``H o C o LG`` (monophone: C = identity) with self-loops and transition
    probabilities (in H). Labels = transition-ids (1-based, no epsilon: every arc with a label
    >= 0 consumes a frame; map network pdf outputs with :attr:`Topology.tid2pdf`), aux_labels =
    words."""
    own = stats is None
    stats = CompileStats() if own else stats
    if topo.is_ctc:
        raise ValueError(f"compile_hclg needs an HMM topology, got {topo.name!r}")
    HCLG = _hclg(topo, _epsilon_free_lg(LG, stats), stats, (None, _lg_syms(LG)))
    if own:
        log.info("compile_hclg: %s", stats.finish())
    return HCLG


def _hclg(topo: Topology, flg, stats: CompileStats, syms: tuple, fst_path: str | None = None
          ) -> Fsa:
    """:func:`compile_hclg` from LG's kaldifst FST (consumed)."""
    HCLG = _compose_h(topo.H, flg, stats, rmeps=True, name="HC", syms=syms, fst_path=fst_path)
    if bool((HCLG.labels == 0).any()):
        raise RuntimeError("HCLG still has epsilon input arcs after RmEpsilon")
    stats["HCLG_states"], stats["HCLG_arcs"] = _size(HCLG)
    return HCLG


# ---------------------------------------------------------------------- lang dir
def _lang_inputs(lang_dir: Path) -> dict[str, Path]:
    names = {"L_disambig": "L_disambig.fst", "G": "G.fst", "tokens": "tokens.txt",
             "words": "words.txt"}
    paths = {k: lang_dir / v for k, v in names.items()}
    for p in paths.values():
        if not p.is_file():
            raise FileNotFoundError(f"compile_graph: {p} not found")
    return paths


def _first_disambig(table: SymbolTable, path: Path) -> int:
    if "#0" not in table:
        raise ValueError(f"{path}: no disambiguation symbol #0")
    return int(table["#0"])


def _check_ids(labels: torch.Tensor, table: SymbolTable, fst_path: Path, table_path: Path,
               side: str) -> None:
    """Every label (other than 0 and -1) of ``fst_path`` must be an id of ``table_path``."""
    ids = torch.unique(labels.long())
    ids = ids[ids > 0].tolist()
    missing = [i for i in ids if i not in table]
    if missing:
        raise ValueError(f"{fst_path}: {side} label ids {missing[:5]} (and {len(missing)} in "
                         f"all) are not in {table_path}: the graph was built with other symbols")


def _checksum(table: SymbolTable) -> str:
    return hashlib.sha256(table.to_str().encode("utf-8")).hexdigest()[:12]


def _check_table(fsa: Fsa, attr: str, table: SymbolTable, fst_path: Path, table_path: Path
                 ) -> bool:
    """A symbol table stored in the FST file must equal the lang dir's table (ValueError naming
    both files); False when the file stores none."""
    own = getattr(fsa, attr, None) if fsa.has_attr(attr) else None
    if not isinstance(own, SymbolTable):
        return False
    if own != table:
        diff = next((sym for sym, i in own.items() if sym not in table or table[sym] != i),
                    None)
        if diff is None:
            diff = next(sym for sym, _ in table.items() if sym not in own)
        raise ValueError(f"{fst_path}: its symbol table (checksum {_checksum(own)}) differs "
                         f"from {table_path} (checksum {_checksum(table)}; first difference: "
                         f"{diff!r}): it was built with another symbol table; rebuild it with "
                         f"{table_path}")
    return True


def _check_g_tables(G: Fsa, g_path: Path, words: SymbolTable, words_path: Path) -> None:
    """G's word tables against words.txt: those of G.fst, else those of the G.pt next to it
    (``wfst-asr compile-lm`` writes both, G.pt with the table of the words.txt G was compiled
    over) when it holds the same graph."""
    if any(_check_table(G, a, words, g_path, words_path)
           for a in ("labels_sym", "aux_labels_sym")):
        return
    pt = g_path.with_suffix(".pt")
    if g_path.suffix != ".fst" or not pt.is_file():
        return
    try:
        g_pt = load(pt)
    except Exception as e:  # noqa: BLE001 -- an unreadable G.pt: G.fst is what is compiled
        log.warning("%s: cannot read it (%s); its symbol tables are not checked", pt, e)
        return
    if g_pt.num_states != G.num_states or g_pt.num_arcs != G.num_arcs or \
            not torch.equal(g_pt.arcs.long(), G.arcs.long()):
        log.warning("%s does not hold the graph of %s: its symbol tables are not checked", pt,
                    g_path)
        return
    for attr in ("labels_sym", "aux_labels_sym"):
        _check_table(g_pt, attr, words, pt, words_path)


def _disambig_ids(table: SymbolTable) -> torch.Tensor:
    return torch.tensor([i for sym, i in table.items() if sym.startswith("#")], dtype=torch.long)


def _check_g_arcs(G: Fsa, words: SymbolTable, g_path: Path, words_path: Path) -> None:
    """Label ranges of a G without symbol tables: with ``words_path``'s ids, a G's arcs are
    ``w:w`` (words) or back-offs ``#n:<eps>``; any other pair means another words.txt."""
    if not G.has_attr("aux_labels"):
        return
    lab, aux = G.labels.long(), G.aux_labels.long()
    backoff = (aux == 0) & torch.isin(lab, _disambig_ids(words))
    bad = torch.nonzero((lab != aux) & (lab != -1) & ~backoff).flatten()
    if len(bad):
        i, o = int(lab[bad[0]]), int(aux[bad[0]])
        name = {i: f"{words.get(i)!r}" if i in words else "?" for i in (i, o)}
        raise ValueError(f"{g_path}: {len(bad)} arc(s) are neither word arcs w:w nor back-off "
                         f"arcs #0:<eps> with the ids of {words_path} (e.g. {i}:{o}, that is "
                         f"{name[i]}:{name[o]}): G was built with another words.txt")


def _check_h_range(L: Fsa, tokens: SymbolTable, ftd: int, l_path: Path, tokens_path: Path
                   ) -> None:
    """H produces the tokens 1 .. #0 - 1 of tokens.txt: every input label of L at or above #0
    must be a disambiguation symbol (removed before H o LG)."""
    lab = L.labels.long()
    hi = lab[lab >= ftd]
    bad = hi[~torch.isin(hi, _disambig_ids(tokens))]
    if len(bad):
        raise ValueError(f"{l_path}: input label(s) {sorted(set(bad.tolist()))[:5]} are at or "
                         f"above #0 ({ftd}) of {tokens_path} but no disambiguation symbols: the "
                         f"topology H (tokens 1..{ftd - 1}) cannot produce them")


def _stamp(kind: str, topo: str, options: dict[str, Any], inputs: dict[str, Path]) -> dict:
    return {"version": _STAMP_VERSION, "kind": kind, "topo": topo, "options": options,
            "inputs": {k: str(v.resolve()) for k, v in inputs.items()}}


def _up_to_date(outs: list[Path], stamp_path: Path, stamp: dict,
                inputs: dict[str, Path]) -> bool:
    """All outputs exist, are newer than every input, and the stamp is identical."""
    if not all(p.is_file() for p in outs + [stamp_path]):
        return False
    oldest_out = min(p.stat().st_mtime_ns for p in outs + [stamp_path])
    if any(p.stat().st_mtime_ns > oldest_out for p in inputs.values()):
        return False
    try:
        return json.loads(stamp_path.read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


def compile_graph(lang_dir: str | os.PathLike, kind: str = "HLG", topo: str = "ctc",
                  out_dir: str | os.PathLike | None = None, *, force: bool = False,
                  use_log: bool = False, transition_scale: float = 1.0,
                  self_loop_scale: float = 1.0,
                  progress: Callable[[str], None] | None = None
                  ) -> tuple[Fsa, dict[str, Any]]:
    """Compile ``kind`` ('LG', 'HLG'/'TLG' with a CTC ``topo``, 'HCLG' with an HMM ``topo``)
    from ``lang_dir`` (``L_disambig.fst``, ``G.fst``, ``tokens.txt``, ``words.txt``).

    Writes ``<kind>.fst`` (OpenFst binary), ``<kind>.pt`` and ``<kind>.stamp.json`` into
    ``out_dir`` (default ``lang_dir``), atomically; for HCLG also ``HCLG.tid2pdf.txt`` (pdf-id
    of transition-ids 1, 2, ..., one per line). When the outputs are newer than the inputs and
    the stamp (kind, topo, options, input paths) is unchanged, loads ``<kind>.pt`` instead
    (``stats['cached'] = True``) unless ``force``.

    Returns:
      (graph, stats): stats holds timings (``kaldifst_s``, ``convert_s``, ``total_s``,
      ``kaldifst_share``, ...) and sizes.
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; known: {', '.join(GRAPH_KINDS)}")
    if topo not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topo!r}; known topologies: {', '.join(TOPOLOGIES)}")
    ctc = topo.startswith("ctc")
    if kind in ("HLG", "TLG") and not ctc:
        raise ValueError(f"{kind} needs a CTC topology (ctc, ctc-modified), got {topo!r}")
    if kind == "HCLG" and ctc:
        raise ValueError(f"HCLG needs an HMM topology (hmm-1state, hmm-3state, chain), got "
                         f"{topo!r}")
    lang = Path(lang_dir)
    out = Path(out_dir) if out_dir is not None else lang
    out.mkdir(parents=True, exist_ok=True)
    inputs = _lang_inputs(lang)
    options = {"use_log": use_log}
    if kind == "HCLG":
        options.update(transition_scale=transition_scale, self_loop_scale=self_loop_scale)
    stamp = _stamp(kind, topo if kind != "LG" else "", options, inputs)
    fst_path, pt_path = out / f"{kind}.fst", out / f"{kind}.pt"
    stamp_path = out / f"{kind}.stamp.json"
    if not force and _up_to_date([fst_path, pt_path], stamp_path, stamp, inputs):
        t = time.perf_counter()
        graph = load(pt_path)
        if graph.num_states > 0:  # an empty one (older versions wrote them) is rebuilt
            return graph, {"cached": True, "total_s": time.perf_counter() - t}
    stats = CompileStats()
    with atomic_output(fst_path) as fst_tmp:
        # HLG / HCLG are written to fst_tmp from kaldifst as soon as they are complete
        graph, t, written = _compile_from_files(inputs, kind, topo, options, stats, progress,
                                                fst_tmp)
        if not written:
            with stats._timed("write_s"):
                write_fst(graph, fst_tmp)
    with stats._timed("write_s"):
        save(graph, pt_path)
        if t is not None and t.tid2pdf is not None:
            atomic_write_text(out / "HCLG.tid2pdf.txt",
                              "".join(f"{int(p)}\n" for p in t.tid2pdf[1:].tolist()))
            stats["num_pdfs"] = int(t.num_pdfs)
        atomic_write_text(stamp_path, json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    stats["cached"] = False
    stats.finish()
    log.info("compile_graph %s (%s): %s", kind, topo, dict(stats))
    return graph, dict(stats)


def _compile_from_files(inputs: dict[str, Path], kind: str, topo: str, options: dict,
                        stats: CompileStats, progress: Callable[[str], None] | None,
                        fst_path: str | None = None) -> tuple[Fsa, Topology | None, bool]:
    """(graph, topology or None, whether the graph was written to ``fst_path``)."""
    say = progress or (lambda _msg: None)
    tokens = SymbolTable.from_file(inputs["tokens"])
    words = SymbolTable.from_file(inputs["words"])
    ftd = _first_disambig(tokens, inputs["tokens"])
    fwd = _first_disambig(words, inputs["words"])
    with stats.convert():
        L = read_fst(inputs["L_disambig"], acceptor=False)
        G = read_fst(inputs["G"])
    # symbol tables first (checksums: the clearest message), then label ranges
    _check_table(L, "labels_sym", tokens, inputs["L_disambig"], inputs["tokens"])
    _check_table(L, "aux_labels_sym", words, inputs["L_disambig"], inputs["words"])
    _check_g_tables(G, inputs["G"], words, inputs["words"])
    _check_ids(G.labels, words, inputs["G"], inputs["words"], "input")
    if G.has_attr("aux_labels"):
        _check_ids(G.aux_labels, words, inputs["G"], inputs["words"], "output")
    _check_g_arcs(G, words, inputs["G"], inputs["words"])
    _check_ids(L.labels, tokens, inputs["L_disambig"], inputs["tokens"], "input")
    _check_ids(L.aux_labels, words, inputs["L_disambig"], inputs["words"], "output")
    _check_h_range(L, tokens, ftd, inputs["L_disambig"], inputs["tokens"])
    for fsa, path in ((L, inputs["L_disambig"]), (G, inputs["G"])):
        if fsa.num_states == 0:
            raise EmptyGraphError(path.stem, f"{path}: empty FST (no state)")
    L.labels_sym, L.aux_labels_sym = tokens, words
    say(f"L_disambig: {_size(L)}, G: {_size(G)} (states, arcs)")
    try:
        LG = compile_lg(L, G, ftd, fwd, use_log=options["use_log"], stats=stats)
        del L, G
        say(f"LG: {_size(LG)}")
        if kind == "LG":
            return LG, None, False
        t = make_topology(topo, ftd - 1, transition_scale=options.get("transition_scale", 1.0),
                          self_loop_scale=options.get("self_loop_scale", 1.0))
        syms = (None if kind == "HCLG" else tokens, _lg_syms(LG))
        # LG's FST goes to _hclg / _hlg as a call's temporary, and LG itself is dropped here:
        # both are freed once H o LG is composed (CPython hands a temporary argument over)
        box = [_epsilon_free_lg(LG, stats)]
        del LG
        _trim_heap()
        if kind == "HCLG":
            graph = _hclg(t, box.pop(), stats, syms, fst_path)
        else:
            graph = _hlg(_ctc_h(t), box.pop(), stats, syms, fst_path)
    except EmptyGraphError as e:
        raise EmptyGraphError(e.step, f"{kind} from {inputs['L_disambig']} and {inputs['G']} "
                                      f"(topology {topo}): {e}") from None
    say(f"{kind}: {_size(graph)}")
    return graph, t, True
