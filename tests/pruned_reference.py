"""The previous ``intersect_dense_pruned`` (commit a0f30a2), kept as the reference of the
current one: it records every arc of the search and prunes them with the engine's generic
forward-backward on an assembled lattice.

Beam-pruned intersection for decoding with large graphs (k2's intersect_dense_pruned).

A frame-synchronous Viterbi beam search over all segments at once: each frame expands the
active (segment, graph state) tokens along their leaving arcs, keeps the best score per new
token, and prunes tokens outside ``search_beam`` of the segment's best (keeping at least
``min_active_states`` and at most ``max_active_states`` per segment). Every expanded arc whose
destination survives is recorded; the recorded arcs are then pruned again with
``output_beam`` by a forward-backward pass and returned as a lattice.
"""

from __future__ import annotations

import torch

from wfst_asr.fsa import DenseFsaVec, Fsa
from wfst_asr.fsa.dense_plan import _check_graphs
from wfst_asr.fsa.forward_backward import get_arc_post
from wfst_asr.fsa.intersect import assemble_lattice
from wfst_asr.fsa.pruned import _expand, _out_arcs  # unchanged helpers, still in use

NEG_INF = float("-inf")
#: segment x state key spaces up to this size use a dense table per frame instead of a sort
DENSE_KEYS = 1 << 20


def _prune(seg: torch.Tensor, score: torch.Tensor, N: int, beam: float, min_active: int,
           max_active: int) -> torch.Tensor:
    """Mask of tokens to keep: within ``beam`` of their segment's best and among its
    ``max_active`` best, or among its ``min_active`` best."""
    best = torch.full((N,), NEG_INF, dtype=score.dtype, device=score.device)
    best = best.scatter_reduce(0, seg, score, "amax", include_self=True)
    in_beam = (score >= best[seg] - beam) & torch.isfinite(score)
    n_beam = torch.bincount(seg[in_beam], minlength=N)
    n_all = torch.bincount(seg, minlength=N)
    if bool(((n_beam <= max_active) & ((n_beam >= min_active) | (n_beam == n_all))).all()):
        return in_beam  # no segment needs ranks: the beam alone decides
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(seg[order], stable=True)]
    s_seg = seg[order]
    first = torch.searchsorted(s_seg, torch.arange(N, device=seg.device))
    rank_sorted = torch.arange(seg.numel(), device=seg.device) - first[s_seg]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    keep = (score >= best[seg] - beam) & (rank < max_active)
    return (keep | (rank < min_active)) & torch.isfinite(score)


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
    graphs = _check_graphs(graph, dense)
    dense, bad = dense.finite()
    device = dense.device
    N = dense.num_segments
    seg_tab = dense.segments.to(device)
    lens = seg_tab[:, 2]
    gi = torch.zeros(N, dtype=torch.int64, device=device) if graphs.num_fsas == 1 else \
        torch.arange(N, device=device)
    lp = dense.log_probs.detach()
    _B, T, V = lp.shape
    lp_flat = lp.reshape(-1).to(torch.float32)
    gsc = graphs.scores.detach().to(torch.float32)
    labels = graphs.labels.long()
    first, count = _out_arcs(graphs)
    start = graphs.start_states[gi]
    ok = start >= 0
    if bad is not None:
        ok &= ~bad.to(device)
    tok_seg = torch.arange(N, device=device)[ok]
    tok_state = start[ok]
    tok_score = torch.zeros(tok_seg.numel(), dtype=torch.float32, device=device)
    rec_f: list[tuple[torch.Tensor, ...]] = []  # (seg, t, src state, dst state, arc)
    rec_e: list[tuple[torch.Tensor, ...]] = []  # (seg, src state, arc)
    T_max = int(lens.max()) if N else 0
    for t in range(T_max + 1):
        _record_finals(t, lens, tok_seg, tok_state, first, count, labels, rec_e)
        live = lens[tok_seg] > t
        if t == T_max or not bool(live.any()):
            break
        tok_seg, tok_state, tok_score = tok_seg[live], tok_state[live], tok_score[live]
        ti, arc = _expand(first, count, tok_state)
        lab = labels[arc]
        fr = lab >= 0
        ti, arc, lab = ti[fr], arc[fr], lab[fr]
        sg = tok_seg[ti]
        row = (seg_tab[sg, 0] * T + seg_tab[sg, 1] + t) * V + lab
        cand = tok_score[ti] + gsc[arc] + lp_flat[row]
        dst = graphs.dst_global[arc]
        key = sg * graphs.num_states + dst
        ukey, best, best_of, keep_of = _best_per_key(key, cand, N * graphs.num_states)
        n_seg, n_state = ukey // graphs.num_states, ukey % graphs.num_states
        keep = _prune(n_seg, best, N, search_beam, min_active_states, max_active_states)
        arc_keep = keep_of(keep) & (cand >= best_of - output_beam)
        rec_f.append((sg[arc_keep], torch.full_like(arc[arc_keep], t), tok_state[ti][arc_keep],
                      dst[arc_keep], arc[arc_keep]))
        tok_seg, tok_state, tok_score = n_seg[keep], n_state[keep], best[keep]
    return _finish(graphs, dense, gi, rec_f, rec_e, output_beam)


def _best_per_key(key: torch.Tensor, cand: torch.Tensor, num_keys: int):
    """Max of ``cand`` per distinct ``key`` (a new token = segment x graph state).

    Returns ``(ukey [K] sorted, best [K], best_of [E] (best of each arc's key), keep_of)`` where
    ``keep_of(mask [K]) -> [E]`` maps a per-token mask to the arcs. Small key spaces use a
    dense table (no sort); large ones ``torch.unique``.
    """
    if num_keys <= DENSE_KEYS:
        table = torch.full((num_keys,), NEG_INF, dtype=cand.dtype, device=cand.device)
        table.scatter_reduce_(0, key, cand, "amax", include_self=True)
        ukey = torch.nonzero(table > NEG_INF).squeeze(1)

        def keep_of(mask: torch.Tensor) -> torch.Tensor:
            dense = torch.zeros(num_keys, dtype=torch.bool, device=cand.device)
            dense[ukey] = mask
            return dense[key]
        return ukey, table[ukey], table[key], keep_of
    ukey, inv = torch.unique(key, return_inverse=True)
    best = torch.full((ukey.numel(),), NEG_INF, dtype=cand.dtype, device=cand.device)
    best = best.scatter_reduce(0, inv, cand, "amax", include_self=True)
    return ukey, best, best[inv], lambda mask: mask[inv]


def _record_finals(t: int, lens: torch.Tensor, tok_seg: torch.Tensor, tok_state: torch.Tensor,
                   first: torch.Tensor, count: torch.Tensor, labels: torch.Tensor,
                   rec_e: list) -> None:
    """Record the -1 arcs of tokens whose segment ends at frame t."""
    ending = lens[tok_seg] == t
    if not bool(ending.any()):
        return
    ti, arc = _expand(first, count, tok_state[ending])
    fin = labels[arc] == -1
    rec_e.append((tok_seg[ending][ti[fin]], tok_state[ending][ti[fin]], arc[fin]))


def _finish(graphs: Fsa, dense: DenseFsaVec, gi: torch.Tensor, rec_f: list, rec_e: list,
            output_beam: float) -> Fsa:
    """Assemble the recorded arcs, keep those on complete paths within ``output_beam``."""
    device = dense.device
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    f = [torch.cat(c) if rec_f else empty for c in zip(*rec_f)] if rec_f else [empty] * 5
    e = [torch.cat(c) for c in zip(*rec_e)] if rec_e else [empty] * 3
    S = graphs.num_states
    start = graphs.start_states[gi]
    with torch.no_grad():
        raw = assemble_lattice(graphs, _detached(dense), S, start, f[0], f[1], f[2], f[3], f[4],
                               e[0], e[1], e[2])
        post = get_arc_post(raw, log_semiring=False, use_double_scores=True)
        keep = torch.isfinite(post) & (post >= -output_beam - 1e-6)
    # map the raw lattice's arcs back to the recorded lists, keep, re-assemble
    garc = raw.graph_arc_idx[keep]
    frame = raw.frame_idx[keep].long()
    seg = raw.arc_fsa[keep]
    lab = graphs.labels[garc]
    src_state = graphs.src_global[garc]
    dst_state = graphs.dst_global[garc]
    is_f = lab >= 0
    return assemble_lattice(graphs, dense, S, start, seg[is_f], frame[is_f], src_state[is_f],
                            dst_state[is_f], garc[is_f], seg[~is_f], src_state[~is_f],
                            garc[~is_f])


def _detached(dense: DenseFsaVec) -> DenseFsaVec:
    return DenseFsaVec(dense.log_probs.detach(), dense.segments)
