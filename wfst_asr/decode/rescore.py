"""Whole-lattice rescoring with a new grammar G, and lattice oracle error rates.

Whole-lattice rescoring (:func:`rescore_lattice`, icefall's ``rescore_with_whole_lattice`` and
Kaldi's ``lattice-lmrescore`` in one step): the old LM scores (``lm_scores``: every graph score)
are dropped, the lattice is composed with the new G on its word labels, and each arc's new
``lm_scores`` is the G score it picked up; ``am_scores``, tokens and frames stay. The result is
again a lattice (:mod:`.lattice`), so the best path, n-best lists, CTM, ... work on it.

The composition runs in OpenFst (kaldifst). To keep each arc's identity through it, the lattice
goes in with its arc index as input label and zero weights, so the composed arcs carry exactly
G's weights. G is used as a word acceptor without epsilons (:func:`prepare_g`): an n-gram as
:func:`~wfst_asr.graphs.lm.ngram_acceptor` makes it (exact back-off probabilities; the default for
an ARPA file in :func:`load_g`), or kaldilm's G (``#0`` back-off arcs) projected on its output
side, epsilon-removed and determinized (tropical: a word then keeps the larger of its direct and
its back-off score, as when G is compiled into HLG).

Oracle (:func:`oracle`): the lattice path whose word sequence is closest to a reference (edit
distance), exhaustively over the paths of small lattices, else by the edit-distance
recursion run over the lattice's states (the same recursion Kaldi's ``lattice-oracle`` gets by
composing with an edit-distance transducer, which ``method="compose"`` also offers).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import kaldialign
import torch

from wfst_asr import _kaldi
from wfst_asr.fsa import Fsa, SymbolTable, create_fsa_vec, ops, shortest_path
from wfst_asr.fsa.io import from_kaldifst, load, read_fst, to_kaldifst

from .lattice import (
    _scales,
    check_lattice,
    combine_scores,
    num_frames,
    with_frame_levels,
    word_acceptor,
)
from .lattice_io import symbol_table_checksum
from .nbest import arc_id_fst

__all__ = ["check_g_words", "load_g", "oracle", "prepare_g", "rescore_lattice", "words_of_g"]


# ---------------------------------------------------------------------- G
def words_of_g(G: Fsa) -> SymbolTable | None:
    """G's word table, when it carries one (output side of a transducer)."""
    for name in (("aux_labels_sym", "labels_sym") if G.has_attr("aux_labels") else
                 ("labels_sym",)):
        t = G._other_attrs.get(name)
        if isinstance(t, SymbolTable):
            return t
    return None


def prepare_g(G: Fsa) -> Fsa:
    """G as a word acceptor without epsilons, arc-sorted (a no-op for one already so).

    A transducer is projected on its output side (kaldilm's ``#0:<eps>`` back-off arcs become
    epsilons); epsilons are then removed and the result determinized (tropical). The word table
    (if any) is kept as ``labels_sym``.
    """
    if G.is_vec:
        if G.num_fsas != 1:
            raise ValueError(f"G must be one FSA, got an FsaVec of {G.num_fsas}")
        G = G[0]
    table = words_of_g(G)
    g = ops.project(G, project_output=True) if G.has_attr("aux_labels") else G
    reg = g.labels != -1
    if bool((g.labels[reg] == 0).any()):
        g = ops.determinize(ops.remove_epsilon(g))
    g = ops.arc_sort(g)
    if table is not None:
        g.labels_sym = table
    return g


def load_g(path: str | os.PathLike, words: SymbolTable | str | os.PathLike | None = None) -> Fsa:
    """Load a G for :func:`rescore_lattice`: an ARPA file (``.arpa``, ``.arpa.gz`` is not read;
    needs ``words``: compiled with :func:`~wfst_asr.graphs.lm.ngram_acceptor`), a ``.pt``
    (:func:`wfst_asr.fsa.save`, e.g. ``G.pt``) or an OpenFst binary (``G.fst``); then
    :func:`prepare_g`. The word table goes with it as ``labels_sym`` when known."""
    from wfst_asr.graphs.lm import ngram_acceptor

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such G / LM file")
    table = words if isinstance(words, SymbolTable) or words is None else \
        SymbolTable.from_file(words)
    if p.suffix == ".arpa":
        if table is None:
            raise ValueError(f"{p}: an ARPA LM needs the word table (words.txt) to become G")
        g = ngram_acceptor(p, table)
    elif p.suffix == ".pt":
        g = load(p)
    else:
        g = read_fst(p)
    g = prepare_g(g)
    if table is not None and not g.has_attr("labels_sym"):
        g.labels_sym = table
    return g


def check_g_words(G: Fsa, words: SymbolTable | None) -> None:
    """ValueError when G carries a word table (``labels_sym`` after :func:`prepare_g`) that
    differs from ``words`` (the lattices' table); nothing to check when either is unknown."""
    g_table = G._other_attrs.get("labels_sym")
    lat_table = words
    if isinstance(g_table, SymbolTable) and isinstance(lat_table, SymbolTable) and \
            symbol_table_checksum(g_table) != symbol_table_checksum(lat_table):
        raise ValueError("G's word table differs from the lattices' (checksums "
                         f"{symbol_table_checksum(g_table)[:12]} and "
                         f"{symbol_table_checksum(lat_table)[:12]}): G must be built over the "
                         "same words.txt")


# ---------------------------------------------------------------------- rescoring
def _compose_one(one: Fsa, gfst) -> Fsa | None:
    """ONE lattice composed with G (kaldifst) and mapped back to a lattice; None when no path
    of the lattice is accepted by G."""
    kf = _kaldi.kaldifst()
    zero = one.detach()
    zero.scores = torch.zeros_like(one.scores, dtype=torch.float32)
    fst = arc_id_fst(zero)
    comp = kf.compose(fst, gfst, compose_filter="sequence", connect=True)
    if comp.num_states == 0:
        return None
    c = from_kaldifst(comp, acceptor=False)
    reg = c.labels != -1
    src_arc = torch.where(reg, c.labels.long() - 1, torch.full_like(c.labels, -1).long())
    return _lattice_from_arcs(one, src_arc, c.arcs[:, :2], c.num_states, c.aux_labels,
                              c.scores)


def _lattice_from_arcs(one: Fsa, src_arc: torch.Tensor, src_dst: torch.Tensor,
                       num_states: int, aux_labels: torch.Tensor,
                       lm_scores: torch.Tensor) -> Fsa:
    """A rescored lattice from ONE lattice and the arcs of its composition with an LM.

    ``src_arc`` int64 ``[A]``: the lattice arc each new arc comes from, -1 for the arcs into the
    (new, last) final state; ``src_dst`` ``[A, 2]``: their states; ``aux_labels`` ``[A]``: the
    words (ignored where ``src_arc`` is -1); ``lm_scores`` ``[A]``: the LM's natural-log scores
    (log semiring values, not costs). Labels, ``am_scores`` and ``frame_idx`` follow
    ``src_arc`` (final arcs: label -1, am 0, frame = the utterance's frames); ``scores`` are 0
    (the caller combines them)."""
    reg = src_arc >= 0
    lab = torch.where(reg, one.labels[src_arc.clamp(min=0)],
                      torch.full(src_arc.shape, -1, dtype=one.labels.dtype))
    arcs = torch.cat([src_dst.to(torch.int32), lab.to(torch.int32).unsqueeze(1)], dim=1)
    out = one.index_arcs(src_arc, arcs, None, num_states, scores=torch.zeros(
        src_arc.shape[0], dtype=torch.float32), validate=False)
    T = int(num_frames(one)[0])
    aux = torch.where(reg, aux_labels, torch.full_like(aux_labels, -1)).to(torch.int32)
    out.aux_labels = aux
    out.frame_idx = torch.where(reg, out.frame_idx, torch.full_like(out.frame_idx, T))
    out.am_scores = torch.where(reg, out.am_scores, torch.zeros_like(out.am_scores))
    out.lm_scores = lm_scores.to(torch.float32) + 0.0
    if out.has_attr("graph_arc_idx"):
        delattr(out, "graph_arc_idx")
    return out


def _empty_like(one: Fsa) -> Fsa:
    idx = torch.zeros(0, dtype=torch.int64)
    out = one.index_arcs(idx, torch.zeros(0, 3, dtype=torch.int32), None, 0)
    if out.has_attr("graph_arc_idx"):
        delattr(out, "graph_arc_idx")
    return out


def rescore_lattice(lattice: Fsa, G: Fsa, lm_scale: float | None = None,
                    word_penalty: float | None = None, words: SymbolTable | None = None,
                    prepared: bool = False) -> Fsa:
    """Whole-lattice rescoring: replace the LM scores of each lattice by those of ``G``.

    Args:
      lattice: lattices (FsaVec or one).
      G: the new grammar over the same word ids (see :func:`prepare_g`, applied here unless
        ``prepared``).
      lm_scale, word_penalty: weights of the rescored lattice's ``scores``; default: the
        lattice's own.
      words: the lattices' word table, checked against G's (when G has one).

    Returns:
      An FsaVec of rescored lattices: paths = the lattice's paths whose word sequence G
      accepts, ``lm_scores`` = G's scores along them, ``am_scores``, labels and frames
      unchanged. A lattice none of whose paths G accepts gives an empty FSA. Best path:
      :func:`~wfst_asr.decode.lattice.best_paths`.
    """
    lat = lattice.as_vec().detach().to("cpu")
    check_lattice(lat)
    g = (G if prepared else prepare_g(G)).to("cpu")
    table = lat._other_attrs.get("aux_labels_sym")
    check_g_words(g, words or (table if isinstance(table, SymbolTable) else None))
    gfst = to_kaldifst(g, final_semiring="tropical", attach_symbols=False)
    _kaldi.kaldifst().arcsort(gfst, sort_type="ilabel")
    return compose_each(lat, lambda one: _compose_one(one, gfst), lm_scale, word_penalty)


def compose_each(lat: Fsa, compose, lm_scale: float | None, word_penalty: float | None) -> Fsa:
    """``compose(lattice)`` (a rescored lattice, or None when no path survives) for each
    lattice of the checked CPU FsaVec ``lat``; empty ones stay empty. ``scores`` are then
    recombined at ``lm_scale`` / ``word_penalty`` (default: the lattices' own)."""
    old_scale, old_wp = _scales(lat)
    s = old_scale if lm_scale is None else float(lm_scale)
    wp = old_wp if word_penalty is None else float(word_penalty)
    outs = []
    for i in range(lat.num_fsas):
        one = lat[i]
        res = compose(one) if one.num_arcs else None
        outs.append(res if res is not None else _empty_like(one))
    out = create_fsa_vec(outs)
    out.scores = combine_scores(out.am_scores, out.lm_scores, out.aux_labels, s, wp)
    out.lm_scale, out.word_penalty = s, wp
    return out


# ---------------------------------------------------------------------- oracle
def _edit_distance(ref: Sequence[int], hyp: Sequence[int]) -> int:
    return int(kaldialign.edit_distance(list(ref), list(hyp))["total"])


def _count_paths(fsa: Fsa) -> int:
    """Number of complete paths of an acyclic single FSA (exact, Python ints)."""
    if fsa.num_arcs == 0:
        return 0
    lv = fsa.state_levels()
    order = torch.sort(lv[fsa.arcs[:, 0].long()], stable=True).indices.tolist()
    src, dst = fsa.arcs[:, 0].tolist(), fsa.arcs[:, 1].tolist()
    n = [0] * fsa.num_states
    n[0] = 1
    for a in order:
        n[dst[a]] += n[src[a]]
    return n[fsa.num_states - 1]


def _word_sequences(fsa: Fsa) -> list[list[int]]:
    """Label sequences (labels > 0) of all paths of an acyclic single FSA."""
    leaving: dict[int, list[tuple[int, int]]] = {}
    for s, d, lab in fsa.arcs.tolist():
        leaving.setdefault(s, []).append((d, lab))
    final = fsa.num_states - 1
    out: list[list[int]] = []
    stack: list[tuple[int, list[int]]] = [(0, [])]
    while stack:
        q, seq = stack.pop()
        if q == final:
            out.append(seq)
            continue
        for d, lab in leaving.get(q, []):
            stack.append((d, seq + [lab] if lab > 0 else seq))
    return out


def _edit_transducer(ref: Sequence[int], vocab: Sequence[int]) -> Fsa:
    """Hypothesis words -> reference positions: match (score 0), substitution, insertion
    (self-loop) and deletion (input epsilon) each score -1; ``aux_labels`` = reference word
    (0 for an insertion)."""
    n = len(ref)
    rows: list[tuple[int, int, int, int, float]] = []
    for i in range(n + 1):
        for w in vocab:
            rows.append((i, i, w, 0, -1.0))  # insertion
        if i < n:
            r = ref[i]
            rows.append((i, i + 1, r, r, 0.0))
            rows.extend((i, i + 1, w, r, -1.0) for w in vocab if w != r)
            rows.append((i, i + 1, 0, r, -1.0))  # deletion
    rows.append((n, n + 1, -1, -1, 0.0))
    t = torch.tensor([r[:4] for r in rows], dtype=torch.int64)
    return Fsa(t[:, :3].to(torch.int32), torch.tensor([r[4] for r in rows]),
               num_states=n + 2, aux_labels=t[:, 3].to(torch.int32))


def _oracle_dp(acc: Fsa, ref: Sequence[int]) -> tuple[int, list[int]]:
    """Edit-distance DP over ONE acyclic word acceptor (labels: word > 0, 0 = epsilon, -1 on
    final arcs) against ``ref``: ``cost[q, i]`` = the fewest errors of a path prefix ending in
    state ``q`` aligned with ``ref[:i]`` (int64 ``[S, n + 1]``), filled level by level
    (:meth:`~wfst_asr.fsa.Fsa.state_levels`): a state's incoming arcs all come from lower
    levels, so once they are in, deletions close it (``cost[q, j] = min_i cost[q, i] + j - i``)
    and its leaving arcs push ``cost[q, i] + 1`` (insertion of the arc's word) and
    ``cost[q, i] + [word != ref[i]]`` into position ``i + 1`` (match / substitution) of the
    next state; epsilon arcs carry the row as is. The hypothesis is read back by retracing an
    optimal predecessor from ``(final, n)``."""
    n = len(ref)
    S = acc.num_states
    big = 1 << 40
    ref_t = torch.tensor(list(ref), dtype=torch.int64)
    jj = torch.arange(n + 1, dtype=torch.int64)
    pre = torch.full((S, n + 1), big, dtype=torch.int64)   # before the deletion closure
    post = torch.full((S, n + 1), big, dtype=torch.int64)
    pre[0, 0] = 0
    src = acc.arcs[:, 0].long()
    dst = acc.arcs[:, 1].long()
    lab = acc.labels.long()
    lv = acc.state_levels().long()
    arc_lv = lv[src]
    order = torch.sort(arc_lv, stable=True).indices
    state_order = torch.sort(lv, stable=True).indices
    num_lv = int(lv.max()) + 1
    s_bounds = torch.searchsorted(lv[state_order], torch.arange(num_lv + 1))
    a_bounds = torch.searchsorted(arc_lv[order], torch.arange(num_lv + 1))
    for level in range(num_lv):
        qs = state_order[int(s_bounds[level]):int(s_bounds[level + 1])]
        post[qs] = jj + torch.cummin(pre[qs] - jj, dim=1).values
        a = order[int(a_bounds[level]):int(a_bounds[level + 1])]
        if a.numel() == 0:
            continue
        row = post[src[a]]                                  # [A, n + 1]
        w = lab[a]
        cand = torch.where((w > 0).unsqueeze(1), row + 1, row)  # insertion / epsilon, final
        if n:
            sub = row[:, :-1] + (ref_t.unsqueeze(0) != w.unsqueeze(1)).long()
            cand[:, 1:] = torch.where((w > 0).unsqueeze(1), torch.minimum(cand[:, 1:], sub),
                                      cand[:, 1:])
        pre.scatter_reduce_(0, dst[a].unsqueeze(1).expand(-1, n + 1), cand, "amin")
    final = S - 1
    errors = int(post[final, n])
    # traceback
    incoming: dict[int, list[int]] = {}
    for i, d in enumerate(dst.tolist()):
        incoming.setdefault(d, []).append(i)
    P, Q = post.tolist(), pre.tolist()
    labs, srcs = lab.tolist(), src.tolist()
    hyp: list[int] = []
    q, j = final, n
    while q != 0 or j != 0:
        v = P[q][j]
        if Q[q][j] != v:          # came from a deletion of ref[j - 1]
            j -= 1
            continue
        for a in incoming.get(q, []):
            p_, w = srcs[a], labs[a]
            if w <= 0 and P[p_][j] == v:
                q = p_
                break
            if w > 0 and P[p_][j] + 1 == v:
                hyp.append(w)
                q = p_
                break
            if w > 0 and j > 0 and P[p_][j - 1] + (ref[j - 1] != w) == v:
                hyp.append(w)
                q, j = p_, j - 1
                break
        else:  # pragma: no cover - the DP guarantees a predecessor
            raise RuntimeError("oracle: no predecessor found in the traceback")
    hyp.reverse()
    return errors, hyp


def oracle(lattice: Fsa, ref: Sequence[int], method: str = "auto", max_paths: int = 1000,
           word_map: Mapping[int, int] | None = None) -> tuple[int, list[int]]:
    """The lattice's word sequence closest to ``ref``: ``(errors, hypothesis)``.

    Args:
      lattice: ONE lattice (an empty one gives ``(len(ref), [])``: all deletions).
      ref: reference word ids.
      method: ``"exhaustive"`` (edit distance to the word sequence of every path),
        ``"compose"`` (shortest path of the lattice's word acceptor composed with an
        edit-distance transducer for ``ref``, as Kaldi's ``lattice-oracle``; no determinization,
        but the composition is materialised: slow on dense phone lattices), ``"dp"`` (the same
        edit-distance recursion run directly over the lattice, level by level, ``O(arcs x
        (len(ref) + 1))`` in int64 tensors: :func:`_oracle_dp`), ``"auto"``: exhaustive when the
        lattice has at most ``max_paths`` paths, else ``"dp"``.
      word_map: applied to the lattice's words first (e.g. 48 -> 39 phones; 0 deletes a word).

    Unit costs (substitution, insertion, deletion), as the scoring module counts errors.
    """
    if method not in ("auto", "exhaustive", "compose", "dp"):
        raise ValueError(f"method must be auto, exhaustive, compose or dp, got {method!r}")
    one = (lattice[0] if lattice.is_vec else lattice).detach().to("cpu")
    ref = [int(r) for r in ref]
    if one.num_arcs == 0:
        return len(ref), []
    acc = word_acceptor(one)
    lab = acc.labels
    if word_map is not None:
        new = [x if x <= 0 else int(word_map.get(x, x)) for x in lab.tolist()]
        lab = torch.tensor(new, dtype=torch.int32)
    acc = with_frame_levels(Fsa(torch.cat([acc.arcs[:, :2], lab.unsqueeze(1)], dim=1),
                                torch.zeros(acc.num_arcs), num_states=acc.num_states,
                                validate=False), one)
    if method == "exhaustive" or (method == "auto" and _count_paths(acc) <= max_paths):
        best: tuple[int, list[int]] | None = None
        for seq in {tuple(x) for x in _word_sequences(acc)}:
            e = _edit_distance(ref, seq)
            if best is None or e < best[0] or (e == best[0] and list(seq) < best[1]):
                best = (e, list(seq))
        assert best is not None
        return best
    if method != "compose":
        return _oracle_dp(acc, ref)
    vocab = sorted({x for x in lab.tolist() if x > 0} | set(ref))
    comp = ops.compose(acc, _edit_transducer(ref, vocab))
    path = shortest_path(comp)
    if path.num_arcs == 0:
        return len(ref), []
    errors = round(-float(path.scores.sum()))
    hyp = [x for x in path.labels.tolist() if x > 0]
    return errors, hyp
