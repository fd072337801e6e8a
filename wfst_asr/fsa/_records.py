"""The arcs a lattice search records frame by frame, and the pruning that turns them into a
lattice: a tropical forward-backward over the records (in double) keeps the arcs on complete
paths within ``output_beam`` of their segment's best, and only those are assembled
(:func:`~wfst_asr.fsa.intersect.assemble_lattice`). Shared by the sparse and the all-states
searches of :func:`~wfst_asr.fsa.intersect_dense_pruned`.
"""

from __future__ import annotations

import torch

from .fsa import Fsa
from .intersect import assemble_lattice
from .viterbi import _Search

NEG_INF = float("-inf")


class Frame:
    """The tokens of one frame (``seg``, ``state``: the list before the segments ending there
    are taken out) and the arcs recorded from them: ``src`` (index in this list), ``dst``
    (index in the next frame's), ``e`` (plan position), ``score`` (graph score + log-prob,
    float32); and the -1 arcs of the tokens whose segment ends here (``f_src``, ``f_arc``)."""

    def __init__(self, seg: torch.Tensor, state: torch.Tensor) -> None:
        self.seg, self.state = seg, state
        z = seg[:0]
        self.src = self.dst = self.e = self.f_src = self.f_arc = z
        self.score = torch.zeros(0, dtype=torch.float32, device=seg.device)


def record_finals(sr: _Search, fr: Frame, ending: torch.Tensor) -> None:
    """Record the -1 arcs of the tokens whose segment ends at this frame (``ending`` mask)."""
    tok = torch.nonzero(ending).squeeze(1)
    if tok.numel() == 0:
        return
    plan = sr.plan
    state = fr.state.index_select(0, tok)
    cnt = plan.final_count.index_select(0, state)
    total = int(cnt.sum())
    if total == 0:
        return
    ti = torch.repeat_interleave(cnt, output_size=total)
    csum = torch.cumsum(cnt, 0)
    pos = (plan.final_first.index_select(0, state) - (csum - cnt)).index_select(0, ti)
    pos += sr.arange(total)
    fr.f_src = tok.index_select(0, ti)
    fr.f_arc = plan.final_arc.index_select(0, pos)


def keep_limit(output_beam: float) -> float:
    """The lowest posterior (log, relative to the segment's best) of a kept arc: the beam and
    a small tolerance for arcs of the best path whose sums round below it."""
    return -output_beam - 1e-6


def finish(sr: _Search, frames: list[Frame], output_beam: float,
           start: torch.Tensor | None = None) -> Fsa:
    """Keep the recorded arcs on complete paths within ``output_beam`` of their segment's best
    (tropical forward-backward over the frames, in double) and assemble the lattice.
    ``start``: the float64 scores of frame 0's tokens (default: 0, every one a start token)."""
    device, N = sr.device, sr.N
    f64 = torch.float64
    gsc = sr.gsc
    T = len(frames)
    # forward: alpha per token, and alpha[src] + score per recorded arc (kept for the posts)
    alpha = [torch.zeros(frames[0].seg.numel(), dtype=f64, device=device)
             if start is None else start]
    thru: list[torch.Tensor] = []
    for t in range(T - 1):
        fr = frames[t]
        th = alpha[t].index_select(0, fr.src)
        th += fr.score
        a = torch.full((frames[t + 1].seg.numel(),), NEG_INF, dtype=f64, device=device)
        a.scatter_reduce_(0, fr.dst, th, "amax", include_self=True)
        alpha.append(a)
        thru.append(th)
    # totals: the best final arc of each segment (forward); final arcs' alpha[src] + score
    tot = torch.full((N,), NEG_INF, dtype=f64, device=device)
    f_thru = []
    for t, fr in enumerate(frames):
        th = alpha[t].index_select(0, fr.f_src)
        th += gsc.index_select(0, fr.f_arc)
        f_thru.append(th)
        if fr.f_src.numel():
            tot.scatter_reduce_(0, fr.seg.index_select(0, fr.f_src), th, "amax",
                                include_self=True)
    # backward, with each arc's post = alpha[src] + score + beta[dst] - tot (as get_arc_post)
    # kept: post >= lim, and finite (-inf and NaN fail the test; with an infinite beam, the
    # test is post > -inf)
    lim = keep_limit(output_beam)
    strict = lim == NEG_INF
    plan = sr.plan
    keep_f: list[tuple[torch.Tensor, ...]] = []
    keep_e: list[tuple[torch.Tensor, ...]] = []
    nxt = None
    for t in range(T - 1, -1, -1):
        fr = frames[t]
        b = torch.full((fr.seg.numel(),), NEG_INF, dtype=f64, device=device)
        if fr.f_src.numel():
            b.scatter_reduce_(0, fr.f_src, gsc.index_select(0, fr.f_arc).to(f64), "amax",
                              include_self=True)
            seg = fr.seg.index_select(0, fr.f_src)
            post = f_thru[t] - tot.index_select(0, seg)
            k = torch.nonzero(post > lim if strict else post >= lim).squeeze(1)
            keep_e.append((seg.index_select(0, k), fr.state.index_select(0, fr.f_src[k]),
                           fr.f_arc.index_select(0, k)))
        if fr.src.numel() and nxt is not None:
            bd = nxt.index_select(0, fr.dst)
            seg = fr.seg.index_select(0, fr.src)
            post = thru[t] + bd
            post -= tot.index_select(0, seg)
            k = torch.nonzero(post > lim if strict else post >= lim).squeeze(1)
            src, e = fr.src.index_select(0, k), fr.e.index_select(0, k)
            keep_f.append((seg.index_select(0, k), torch.full_like(k, t),
                           fr.state.index_select(0, src), plan.dst.index_select(0, e),
                           plan.arc.index_select(0, e)))
            bd += fr.score
            b.scatter_reduce_(0, fr.src, bd, "amax", include_self=True)
        nxt = b
    keep_f.reverse()
    keep_e.reverse()
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    f = [torch.cat(c) for c in zip(*keep_f)] if keep_f else [empty] * 5
    e = [torch.cat(c) for c in zip(*keep_e)] if keep_e else [empty] * 3
    return assemble_lattice(sr.graphs, sr.dense, sr.S, sr.start, *f, *e)