"""Beam-pruned intersection for decoding with large graphs (k2's intersect_dense_pruned).

A frame-synchronous Viterbi beam search over all segments at once: each frame expands the
active (segment, graph state) tokens along their leaving arcs, keeps the best score per new
token, and prunes tokens outside ``search_beam`` of the segment's best (keeping at least
``min_active_states`` and at most ``max_active_states`` per segment); the search itself is
:mod:`.viterbi`'s. Every expanded arc whose destination survives and that is within
``output_beam`` of the destination's best is recorded, frame by frame, with the indices of its
tokens; a tropical forward-backward over these per-frame records (in double) then keeps the arcs
on complete paths within ``output_beam`` of the best, and only those are assembled into the
lattice (:mod:`._records`).

Small shared graphs (those the 1-best searches over all states, :func:`.viterbi._use_dense`)
take the all-states route of :mod:`.pruned_dense` instead, which records only the arcs that can
be kept; the lattice is the same.
"""

from __future__ import annotations

import torch

from . import viterbi
from ._records import Frame, finish, record_finals
from .dense import DenseFsaVec
from .fsa import Fsa, create_fsa_vec
from .intersect import assemble_lattice
from .pruned_dense import dense_lattice
from .viterbi import _Search

NEG_INF = float("-inf")


def _out_arcs(graphs: Fsa) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, count)`` of the leaving arcs of every global graph state."""
    S = graphs.num_states
    src = graphs.src_global
    states = torch.arange(S, device=src.device)
    first = torch.searchsorted(src, states)
    count = torch.searchsorted(src, states, right=True) - first
    return first, count


def _expand(first: torch.Tensor, count: torch.Tensor, tok_state: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """All leaving arcs of the tokens: ``(token index [E], arc index [E])``."""
    cnt = count[tok_state]
    total = int(cnt.sum())
    tok = torch.repeat_interleave(torch.arange(tok_state.numel(), device=cnt.device), cnt,
                                  output_size=total)
    offs = torch.arange(total, device=cnt.device) - (torch.cumsum(cnt, 0) - cnt)[tok]
    return tok, first[tok_state][tok] + offs


def intersect_dense_pruned(graph: Fsa, dense: DenseFsaVec, search_beam: float,
                           output_beam: float, min_active_states: int,
                           max_active_states: int) -> Fsa:
    """Beam-pruned lattices of ``graph x dense`` (one lattice per segment).

    Args:
      graph: a decoding graph (e.g. HLG) shared by all segments, or one graph per segment. Arcs
        with labels >= 0 consume a frame (0 = blank), -1 arcs end a path.
      dense: network output.
      search_beam: beam of the frame-by-frame search (log-prob units).
      output_beam: beam for the arcs kept in the output lattice, relative to the best path.
      min_active_states, max_active_states: bounds on active states per segment and frame.

    Returns:
      An FsaVec like :func:`intersect_dense`'s (attributes ``graph_arc_idx``, ``frame_idx`` and
      the graph's own). Segments whose search found no complete path get an empty FSA, and
      so do segments with a NaN or +inf log-prob in their frames
      (:meth:`DenseFsaVec.finite`); the beams are per segment, so the other segments'
      lattices are those of the batch without them.
    """
    sr = _Search(graph, dense, None)
    if sr.N and sr.graphs.num_fsas == 1 and viterbi._use_dense(sr.plan, sr.S, sr.N):
        return dense_lattice(sr, search_beam, output_beam, min_active_states,
                             max_active_states)
    device = sr.device
    if sr.N > 1 and sr.graphs.num_fsas == 1 and sr.plan.arc.numel() >= viterbi.SPLIT_ARCS:
        return _by_segment(sr, graph, search_beam, output_beam, min_active_states,
                           max_active_states)
    tok_seg, tok_state, tok_score = sr.start_tokens()
    frames: list[Frame] = []
    for t in range(sr.T_max + 1):
        fr = Frame(tok_seg, tok_state)
        frames.append(fr)
        if t in sr.ends:
            ending = torch.isin(tok_seg, torch.tensor(sr.ends[t], device=device))
            record_finals(sr, fr, ending)
            live = torch.nonzero(~ending).squeeze(1)
        else:
            live = None
        if t == sr.T_max:
            break
        if live is not None:
            tok_seg, tok_state, tok_score = (x.index_select(0, live) for x in
                                             (tok_seg, tok_state, tok_score))
        ex = sr.expand(t, tok_seg, tok_state, tok_score) if tok_seg.numel() else None
        if ex is None:
            tok_seg, tok_state = tok_seg[:0], tok_state[:0]
            tok_score = tok_score[:0]
            frames.append(Frame(tok_seg, tok_state))
            break
        ti, e, cand, key, ac = ex
        ukey, best, best_of, inv = viterbi._max_per_key(key, cand, sr.K, sr.use_table)
        new_seg, new_state = sr.split_key(ukey)
        keep = sr.prune(new_seg, best, search_beam, min_active_states, max_active_states)
        if keep is not None:
            ukey, best, new_seg, new_state = (x.index_select(0, keep) for x in
                                              (ukey, best, new_seg, new_state))
        dpos = _dst_index(sr, key, ukey, inv, keep)
        sel = torch.nonzero((dpos >= 0) & (cand >= best_of - output_beam)).squeeze(1)
        src = ti.index_select(0, sel)
        fr.src = src.long() if live is None else live.index_select(0, src)  # int64: scatters
        fr.dst = dpos.index_select(0, sel)
        fr.e = e.index_select(0, sel)
        fr.score = sr.e_score.index_select(0, fr.e) + ac.index_select(0, sel)
        tok_seg, tok_state, tok_score = new_seg, new_state, best
    return finish(sr, frames, output_beam)


def _by_segment(sr: _Search, graph: Fsa, search_beam: float, output_beam: float,
                min_active: int, max_active: int) -> Fsa:
    """A large graph: each segment searched on its own (the beams are per segment, so the
    lattices are the same), which bounds the arcs recorded at once by one segment's."""
    lats = []
    for n in range(sr.N):
        one = DenseFsaVec(sr.dense.log_probs, sr.dense.segments[n:n + 1])
        if bool(sr.ok[n]):
            lats.append(intersect_dense_pruned(graph, one, search_beam, output_beam,
                                               min_active, max_active))
        else:  # NaN / +inf log-probs (or no start state): an empty lattice
            z = torch.zeros(0, dtype=torch.int64, device=sr.device)
            lats.append(assemble_lattice(sr.graphs, one, sr.S, sr.start[n:n + 1],
                                         *([z] * 8)))
    return create_fsa_vec(lats)


def _dst_index(sr: _Search, key: torch.Tensor, ukey_kept: torch.Tensor,
               inv: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor:
    """``[E]``: index of each expanded arc's new token among the kept ones (-1: pruned).
    ``inv``: the arcs' index among all new tokens (sorted-keys path) or None (table path)."""
    if inv is None:
        slot = torch.full((sr.K,), -1, dtype=torch.int64, device=key.device)
        slot.index_copy_(0, ukey_kept, sr.arange(ukey_kept.numel()))
        return slot.index_select(0, key)
    if keep is None:
        return inv
    idx = torch.full((inv.numel() and int(inv.max()) + 1,), -1, dtype=torch.int64,
                     device=key.device)
    idx[keep] = sr.arange(keep.numel())
    return idx.index_select(0, inv)
