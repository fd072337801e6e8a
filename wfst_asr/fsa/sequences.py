"""Restrict FSAs to the paths that spell given sequences (composition with linear acceptors).

:func:`intersect_sequences` keeps, for every sequence ``y_i``, the paths of FSA ``g(i)`` whose
non-zero labels of a per-arc attribute (e.g. the words in ``aux_labels`` of an HLG or of a
lattice) spell ``y_i`` exactly: the composition ``g(i) o linear(y_i)`` on that attribute, with
0 as epsilon. It works on any FSA, cyclic ones included (a decoding graph), and on lattices.

A product state is ``(s, j)``: state ``s`` of the FSA after ``j`` symbols of ``y_i``. It is
built breadth-first from ``(start, 0)``, so only accessible product states exist (a large
graph costs what the sequence reaches, not ``states x (len + 1)``), then trimmed to the
coaccessible ones by a breadth-first search backwards over the arcs found. Every path of the
result is one path of the input with the same arcs, so the result's scores are gathered
from the input's (gradients flow back) and hold in any semiring. The graph-level counterpart
for small topologies with dense closures is :class:`wfst_asr.graphs.LinearComposer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .fsa import Fsa
from .pruned import _expand, _out_arcs

__all__ = ["intersect_sequences"]


def _first_of_each(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ``keys`` and the index of one occurrence of each."""
    uniq, inv = torch.unique(keys, return_inverse=True)
    idx = torch.full((uniq.numel(),), keys.numel(), dtype=torch.int64, device=keys.device)
    idx = idx.scatter_reduce(0, inv, torch.arange(keys.numel(), device=keys.device), "amin")
    return uniq, idx


def _useful_arcs(G: Fsa, sym: torch.Tensor, lab: torch.Tensor, y: torch.Tensor
                 ) -> torch.Tensor:
    """bool ``[A]``: the arcs from which some symbol of ``y`` or the end is reachable without
    passing another symbol (the arcs with such a symbol, the final arcs, and the symbol-free
    arcs into a state one of these leaves from). No path spelling a sequence over ``y`` leaves
    them; in a graph whose symbols sit at the end of long symbol-free paths (a lexicon tree)
    the search would otherwise walk every tree at every position."""
    dev = sym.device
    wanted = torch.zeros(int(max(int(sym.max()), int(y.max()) if y.numel() else 0)) + 1,
                         dtype=torch.bool, device=dev)
    wanted[y] = True
    good = (lab == -1) | ((sym > 0) & wanted[sym.clamp(min=0)])
    src, dst = G.src_global, G.dst_global
    free = (sym == 0) & (lab != -1)
    ok = _reaching(src[free], dst[free], src[good], G.num_states)
    return good | (free & ok[dst])


def _reaching(src: torch.Tensor, dst: torch.Tensor, targets: torch.Tensor,
              num_states: int) -> torch.Tensor:
    """bool ``[num_states]``: the states from which the arcs ``src -> dst`` reach one of
    ``targets`` (the targets included), by a breadth-first search backwards."""
    ok = torch.zeros(num_states, dtype=torch.bool, device=src.device)
    frontier = torch.unique(targets)
    ok[frontier] = True
    order = torch.argsort(dst, stable=True)
    sorted_dst = dst[order]
    while frontier.numel():
        lo = torch.searchsorted(sorted_dst, frontier)
        hi = torch.searchsorted(sorted_dst, frontier, right=True)
        _, k = _expand(lo, hi - lo, torch.arange(lo.numel(), device=src.device))
        srcs = torch.unique(src[order[k]])
        frontier = srcs[~ok[srcs]]
        ok[frontier] = True
    return ok


def intersect_sequences(fsas: Fsa, seqs: Sequence[Sequence[int]],
                        attr: str = "aux_labels") -> Fsa:
    """The paths of ``fsas`` whose non-zero ``attr`` labels spell each sequence of ``seqs``.

    Args:
      fsas: one FSA shared by all sequences, or an FsaVec with one FSA per sequence. Its
        per-arc integer attribute ``attr`` ``[A]`` holds the symbols (0: none; the value on
        arcs entering the final state, label -1, is ignored).
      seqs: N sequences of symbols >= 1 (an empty sequence keeps the paths without symbols).
      attr: the attribute the sequences are matched against.

    Returns:
      An FsaVec of N FSAs, FSA ``i`` = ``g(i) o linear(seqs[i])`` (trimmed: every state is on
      a successful path; no path: an empty FSA). Arc ``k`` comes from input arc
      ``arc_map[k]`` (attribute ``arc_map``, int64): its label, score (differentiable) and
      every attribute are the input arc's. State 0 is ``(start, 0)``.
    """
    G = fsas if fsas.is_vec else fsas.as_vec()
    N = len(seqs)
    if G.num_fsas not in (1, N):
        raise ValueError(f"{G.num_fsas} FSAs for {N} sequences: give one shared FSA or one "
                         "per sequence")
    if not G.has_attr(attr):
        raise ValueError(f"the FSAs have no per-arc attribute {attr!r}")
    sym = getattr(G, attr)
    if sym.dim() != 1 or sym.is_floating_point():
        raise ValueError(f"attribute {attr!r} must be an integer tensor [num_arcs]")
    dev = G.device
    sym = sym.long()
    lab = G.labels.long()
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.int64, device=dev)
    y = torch.tensor([int(v) for s in seqs for v in s], dtype=torch.int64, device=dev)
    if y.numel() and int(y.min()) < 1:
        raise ValueError("sequence symbols must be >= 1 (0 is epsilon)")
    y_first = torch.cumsum(lens, 0) - lens
    gi = (torch.zeros(N, dtype=torch.int64, device=dev) if G.num_fsas == 1
          else torch.arange(N, device=dev))
    n_states = G.num_states_per_fsa.to(dev)[gi]
    g_off = G.state_offsets[:-1].to(dev)[gi]
    rows = lens + 1
    size = n_states * rows
    base = torch.cumsum(size, 0) - size
    visited = torch.zeros(int(size.sum()), dtype=torch.bool, device=dev)
    first, count = _out_arcs(G)
    dst_g = G.dst_global
    useful = _useful_arcs(G, sym, lab, y)
    # frontier: (sequence, local state, position, key)
    f_i = (n_states > 0).nonzero().squeeze(1)
    f_s = torch.zeros_like(f_i)
    f_j = torch.zeros_like(f_i)
    f_key = base[f_i]
    visited[f_key] = True
    rec: list[tuple[torch.Tensor, ...]] = []  # (sequence, src key, dst key or -1, arc)
    while f_i.numel():
        tok, arc = _expand(first, count, g_off[f_i] + f_s)
        i, j, w = f_i[tok], f_j[tok], sym[arc]
        is_fin = lab[arc] == -1
        at = y[(y_first[i] + j).clamp(max=max(y.numel() - 1, 0))] if y.numel() else \
            torch.zeros_like(j)
        word = ~is_fin & (w != 0) & (j < lens[i]) & (at == w)
        ok = ((is_fin & (j == lens[i])) | (~is_fin & (w == 0)) | word) & useful[arc]
        nj = j + word.long()
        d_loc = dst_g[arc] - g_off[i]
        d_key = torch.where(is_fin, torch.full_like(nj, -1), base[i] + d_loc * rows[i] + nj)
        i, arc, d_key, d_loc, nj, s_key = (x[ok] for x in (i, arc, d_key, d_loc, nj,
                                                            f_key[tok]))
        rec.append((i, s_key, d_key, arc))
        go = d_key >= 0
        uniq, at_idx = _first_of_each(d_key[go])
        new = ~visited[uniq]
        uniq, at_idx = uniq[new], at_idx[new]
        visited[uniq] = True
        pick = go.nonzero().squeeze(1)[at_idx]
        f_i, f_s, f_j, f_key = i[pick], d_loc[pick], nj[pick], uniq
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    r_i, r_src, r_dst, r_arc = ([torch.cat(c) for c in zip(*rec)] if rec else [empty] * 4)
    # coaccessible product states: backwards from the sources of final arcs
    fin = r_dst < 0
    inner = (~fin).nonzero().squeeze(1)
    coacc = _reaching(r_src[inner], r_dst[inner], r_src[fin], visited.numel())
    keep = coacc[r_src] & (fin | coacc[r_dst.clamp(min=0)])
    r_i, r_src, r_dst, r_arc = r_i[keep], r_src[keep], r_dst[keep], r_arc[keep]
    # number the kept states per sequence in key order: (start, 0) has the smallest key
    inner = r_dst >= 0
    keys, inv = torch.unique(torch.cat([r_src, r_dst[inner]]), return_inverse=True)
    # sequence i's keys lie in [base_i, base_i + size_i), and the keys are sorted
    seq_first = torch.searchsorted(keys, base)
    per_seq = torch.searchsorted(keys, base + size) - seq_first
    loc = inv - seq_first[torch.cat([r_i, r_i[inner]])]
    src = loc[:r_src.numel()]
    dst = torch.empty_like(r_src)
    dst[inner] = loc[r_src.numel():]
    dst[~inner] = per_seq[r_i[~inner]]
    num_states = torch.where(per_seq > 0, per_seq + 1, per_seq)
    order = torch.argsort(r_i * (int(num_states.max()) + 1 if N else 1) + src, stable=True)
    r_i, src, dst, r_arc = r_i[order], src[order], dst[order], r_arc[order]
    splits = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev),
                        torch.cumsum(torch.bincount(r_i, minlength=N), 0)])
    arcs = torch.stack([src, dst, lab[r_arc]], dim=1).to(torch.int32)
    out = G.index_arcs(r_arc, arcs, splits, num_states)
    out.arc_map = r_arc
    return out
