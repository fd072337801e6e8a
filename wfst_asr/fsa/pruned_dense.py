"""Lattices of small graphs by an all-states search (:func:`~wfst_asr.fsa.intersect_dense_pruned`).

The sparse lattice search records every expanded arc within ``output_beam`` of its
destination's best, frame by frame, and prunes the records by a forward-backward in double
(:mod:`._records`). On a small, densely connected graph (a phone HLG, a small HCLG) that is
nearly every arc of every frame. Here instead:

1. the tokens of every frame come from the all-states search of the 1-best
   (:func:`~wfst_asr.fsa.viterbi.dense_forward`: ``[N, S]`` scores, the same float32
   arithmetic and pruning as the sparse search, so the same tokens);
2. a float32 backward pass over all states, along each state's padded leaving arcs, bounds
   each arc's posterior from above: ``beta`` over *all* the expanded arcs (not only the
   recorded ones) is at least the recorded arcs' ``beta``;
3. only the arcs whose float32 posterior is within ``output_beam`` plus a rounding margin of
   their segment's best are kept as candidates; those the sparse search would have recorded
   (its test, recomputed exactly on the candidates) go to the double forward-backward of
   :func:`._records.finish`.

Why the lattice is the same, arc for arc: a path through an arc that the sparse search does
not record scores below the best by more than ``output_beam`` (the arc is already that far
below its destination's best), so the arcs kept by the double pruning over all records all
have float32 posteriors (over all arcs) within the margin of the beam. And the kept arcs are
closed: the best arc into (and out of) the state of a kept arc has at least that arc's
posterior, so the double forward-backward over the candidates gives those states the scores it
gives them over all records.

The margin bounds the float32 rounding of the forward and backward sums: each of the ``4T + 8``
or so float32 additions on a path's way to a posterior errs by at most ``2^-24`` times a bound on
the magnitude of any partial sum of the segment (the sum over its frames of the largest finite
``|log-prob|`` plus the largest ``|graph score|``), and twice that is used.
"""

from __future__ import annotations

import math

import torch

from ._records import Frame, finish, keep_limit, record_finals
from .fsa import Fsa
from .viterbi import PaddedArcs, PaddedLogProbs, _AllStates, _Search, dense_forward

NEG_INF = float("-inf")
#: the rounding of one float32 addition, relative to the magnitude of its result
_ULP = 2.0 ** -24


def _margins(sr: _Search, al: _AllStates) -> torch.Tensor:
    """``[N]`` float32 rounding margins of the posteriors (see the module docstring)."""
    lp = sr.lp_rows
    big = torch.where(torch.isfinite(lp), lp.abs(), 0.0).amax(1).double()  # [rows]
    w = sr.e_score
    wmax = float(torch.where(torch.isfinite(w), w.abs(), 0.0).max()) if w.numel() else 0.0
    f = sr.fin_score
    fmax = float(torch.where(torch.isfinite(f), f.abs(), 0.0).max()) if f.numel() else 0.0
    T = al.rows.shape[0]
    per_frame = big.index_select(0, al.rows.reshape(-1)).view(T, sr.N) + wmax  # [T, N]
    lens = sr.lens.to(sr.device)
    live = torch.arange(T, device=sr.device).unsqueeze(1) < lens
    bound = (per_frame * live).sum(0) + fmax  # [N]
    return (2 * (4 * lens + 16) * _ULP * bound).float()


def dense_lattice(sr: _Search, search_beam: float, output_beam: float, min_active: int,
                  max_active: int) -> Fsa:
    """:func:`~wfst_asr.fsa.intersect_dense_pruned` of one shared small graph (see the module
    docstring); the same lattice as the sparse search's."""
    al = _AllStates(sr)
    tokens, _ = dense_forward(sr, al, search_beam, min_active, max_active, with_arg=False)
    N, S, device, ends = sr.N, sr.S, sr.device, sr.ends
    out = PaddedArcs(sr, by_dst=False)  # the arcs leaving each state
    tot = torch.full((N,), NEG_INF, device=device)
    for t, segs in ends.items():
        tot[segs] = (tokens[t][segs] + sr.fin_score).amax(1)
    lim = keep_limit(output_beam)
    finite_beam = math.isfinite(output_beam)
    thr = torch.where(torch.isfinite(tot), tot + (lim - _margins(sr, al)),
                      torch.full_like(tot, float("inf"))).unsqueeze(1)  # [N, 1]
    scores = PaddedLogProbs(sr, al.rows, out.lab, add=out.w)  # graph + log-prob, [N, L]
    seg_all = torch.arange(N, device=device).repeat_interleave(S)
    state_all = torch.arange(S, device=device).repeat(N)
    row_base = al.rows * sr.V  # [T, N]
    T = len(tokens)
    frames: list[Frame] = [Frame(seg_all, state_all) for _ in range(T)]
    beta = torch.full((N, S), NEG_INF, device=device)
    for t in range(T - 1, -1, -1):
        a = tokens[t]
        fr = frames[t]
        if t in ends:  # the ending segments' tokens take their -1 arcs, and expand no more
            a_exp = a.clone()
            a_exp[ends[t]] = NEG_INF
        else:
            a_exp = a
        if t < T - 1:
            v = beta.index_select(1, out.other)  # beta of each arc's destination, [N, L]
            v += scores(t)
            b = torch.empty((N, S), device=device)
            out.reduce(v, b)
            # candidates: float32 posterior (over all arcs) within the beam and the margin
            mask = out.ge(v, thr - a_exp)
            if not finite_beam:  # every arc is in the beam, -inf ones too: not the padding
                mask &= out.valid
            idx = torch.nonzero(mask.view(-1)).squeeze(1)
            if idx.numel():
                _record(sr, out, fr, idx, a_exp, tokens[t + 1], output_beam, row_base[t])
        else:
            b = torch.full((N, S), NEG_INF, device=device)
        if t in ends:
            b[ends[t]] = sr.fin_score
            ending = torch.zeros(N, dtype=torch.bool, device=device)
            ending[ends[t]] = True
            record_finals(sr, fr, (ending.unsqueeze(1) & (a > NEG_INF)).view(-1))
        beta = b.masked_fill_(a == NEG_INF, NEG_INF)
    # frame 0's token list is every (segment, state) cell: only the start cells score 0
    return finish(sr, frames, output_beam, start=tokens[0].reshape(-1).double())


def _record(sr: _Search, out: PaddedArcs, fr: Frame, idx: torch.Tensor, a_exp: torch.Tensor,
            nxt: torch.Tensor, output_beam: float, row_base: torch.Tensor) -> None:
    """Record the candidate slots ``idx`` (flat ``[N, L]`` indices of ``out``'s table) of a
    frame that the sparse search records: destination kept by the search's pruning, and
    score through the arc (``(token + graph) + log-prob``, its float32 arithmetic) within
    ``output_beam`` of the destination's."""
    S, L = sr.S, out.pos.numel()
    n = torch.div(idx, L, rounding_mode="floor")
    slot = idx - n * L
    tok = n * S + out.state.index_select(0, slot)  # the source token
    dtok = n * S + out.other.index_select(0, slot)
    w = out.w.index_select(0, slot)
    ac = sr.lp_flat.index_select(0, row_base.index_select(0, n) + out.lab.index_select(0, slot))
    cand = a_exp.view(-1).index_select(0, tok)
    cand += w
    cand += ac
    best = nxt.view(-1).index_select(0, dtok)
    sel = torch.nonzero((cand >= best - output_beam) & (best > NEG_INF)).squeeze(1)
    fr.src = tok.index_select(0, sel)
    fr.dst = dtok.index_select(0, sel)
    fr.e = out.pos.index_select(0, slot.index_select(0, sel))
    fr.score = w.index_select(0, sel) + ac.index_select(0, sel)
