# ruff: noqa: UP006, UP035 - TorchScript reads these annotations: keep typing.List
"""The per-level loops of the generic forward-backward (and Kahn's levels), in TorchScript.

A level of an acyclic FsaVec costs a handful of small tensor operations; in a Python loop the
interpreter's dispatch is most of the time (an RNN-T lattice has T + U levels of a few hundred
states). TorchScript runs the same loops without the interpreter; if scripting fails, the
same functions run as plain Python (see :mod:`._frames`).

Layout (built by ``forward_backward._layout``): the arcs of a sweep are grouped by the state
whose value they produce ("target": the destination for forward scores, the source for backward
scores), and the target states of one level form one or more buckets of ``n`` states with at
most ``K`` arcs each. A bucket is a padded ``[K, n]`` block in the flat tensors ``other``
(rank of each arc's other end; padding points at the sink, rank ``S``, which holds -inf in
value sweeps and 0 in adjoint sweeps) and ``arc_pad`` (arc index; padding: ``A``, a dummy arc).
Per bucket: ``p_offs`` (offset of its block), ``ns``, ``Ks``, ``s0s`` (first rank when its
states are the contiguous ranks ``s0 .. s0+n-1``, else -1), ``q_offs`` (offset of its state
ranks in ``states``) and ``merges`` (1 when a state of it has an initial value, start or
final, that must be combined with what its arcs bring).
"""

from typing import List

import torch
from torch import Tensor

from ._frames import _script, _unoptimized


def kahn_levels(num_states: int, src: Tensor, dst: Tensor) -> List[Tensor]:
    """Longest-path depth of each state by frontier-parallel Kahn; returns ``[levels, done]``
    where ``done`` (0-dim) is the number of states reached (``< num_states``: a cycle)."""
    device = src.device
    level = torch.zeros(num_states, dtype=torch.int64, device=device)
    indeg = torch.zeros(num_states, dtype=torch.int64, device=device)
    indeg.index_add_(0, dst, torch.ones_like(dst))
    order = torch.argsort(src, stable=True)
    dst_sorted = dst[order]
    deg = torch.bincount(src, minlength=num_states)
    out_start = torch.cumsum(deg, 0) - deg
    mark = torch.full((num_states,), -1, dtype=torch.int64, device=device)
    frontier = (indeg == 0).nonzero().squeeze(1)
    done = 0
    depth = 0
    while frontier.numel() > 0:
        done += frontier.numel()
        level.index_fill_(0, frontier, depth)
        cnt = deg[frontier]
        tot = int(cnt.sum())
        if tot == 0:
            break
        excl = torch.cumsum(cnt, 0) - cnt
        shift = torch.repeat_interleave(out_start[frontier] - excl, cnt, output_size=tot)
        nxt = dst_sorted[torch.arange(tot, device=device) + shift]
        indeg.index_add_(0, nxt, torch.full_like(nxt, -1))
        cand = nxt[indeg[nxt] == 0]
        # a state whose last entering arcs all came from this frontier appears once per such
        # arc: keep the copy whose position was written last (no sort)
        pos = torch.arange(cand.numel(), device=device)
        mark[cand] = pos
        frontier = cand[mark[cand] == pos]
        depth += 1
    return [level, torch.tensor(done)]


def sweep_buckets(vals: Tensor, best: Tensor, other: Tensor, sc: Tensor, arc_pad: Tensor,
                  states: Tensor, p_offs: List[int], ns: List[int], Ks: List[int],
                  s0s: List[int], q_offs: List[int], merges: List[int], log_semiring: bool,
                  want_best: bool) -> None:
    """``vals[t] = (+)_{a} vals[other(a)] * sc[a]`` bucket by bucket, in the given order.

    ``vals [S+1]`` (sink last, -inf), ``sc [P]``: arc scores in block layout (padding -inf).
    Buckets with ``merges[i]`` combine with the state's current value. With ``want_best``
    (tropical) ``best [S]`` gets the best arc (first of equal maxima; -1 if none is finite).
    """
    for i in range(len(ns)):
        p, n, K, s0 = p_offs[i], ns[i], Ks[i], s0s[i]
        x = torch.index_select(vals, 0, other.narrow(0, p, K * n)).view(K, n)
        x.add_(sc.narrow(0, p, K * n).view(K, n))
        idx = states.narrow(0, q_offs[i], n)
        if want_best:
            v, k = torch.max(x, 0)
            arc = arc_pad.narrow(0, p, K * n).view(K, n).gather(0, k.unsqueeze(0)).squeeze(0)
            ok = v > float("-inf")
            if merges[i] != 0:
                cur = torch.index_select(vals, 0, idx)
                ok = ok & (v > cur)
                v = torch.where(ok, v, cur)
            b_old = torch.index_select(best, 0, idx)
            best.index_copy_(0, idx, torch.where(ok, arc, b_old))
            if s0 >= 0:
                vals.narrow(0, s0, n).copy_(v)
            else:
                vals.index_copy_(0, idx, v)
            continue
        if K == 1:
            red = x[0]
        elif K == 2 and log_semiring:
            red = torch.logaddexp(x[0], x[1])
        elif K == 2:
            red = torch.maximum(x[0], x[1])
        elif log_semiring:
            red = torch.logsumexp(x, 0)
        else:
            red = torch.amax(x, 0)
        if merges[i] != 0:
            cur = torch.index_select(vals, 0, idx)
            red = torch.logaddexp(red, cur) if log_semiring else torch.maximum(red, cur)
        if s0 >= 0:
            vals.narrow(0, s0, n).copy_(red)
        else:
            vals.index_copy_(0, idx, red)


def adjoint_buckets(g: Tensor, other: Tensor, w: Tensor, states: Tensor, p_offs: List[int],
                    ns: List[int], Ks: List[int], s0s: List[int], q_offs: List[int]) -> None:
    """``g[t] += sum_a g[other(a)] * w[a]`` bucket by bucket, in the given order (the reverse
    of the value sweep that used the other layout). ``g [S+1]`` (sink last, 0), ``w [P]``
    (padding 0)."""
    for i in range(len(ns)):
        p, n, K, s0 = p_offs[i], ns[i], Ks[i], s0s[i]
        y = torch.index_select(g, 0, other.narrow(0, p, K * n)).view(K, n)
        y.mul_(w.narrow(0, p, K * n).view(K, n))
        if K == 1:
            s = y[0]
        elif K == 2:
            s = y[0] + y[1]
        else:
            s = y.sum(0)
        if s0 >= 0:
            g.narrow(0, s0, n).add_(s)
        else:
            g.index_add_(0, states.narrow(0, q_offs[i], n), s)


kahn_levels_jit = _unoptimized(_script(kahn_levels))
sweep_buckets_jit = _unoptimized(_script(sweep_buckets))
adjoint_buckets_jit = _unoptimized(_script(adjoint_buckets))
