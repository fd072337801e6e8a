"""Forward/backward scores, totals and arc posteriors of acyclic FsaVecs.

States are processed level by level (a level is the longest-path depth from the start, see
:meth:`Fsa.state_levels`), all FSAs of a batch at once. Gradients come from explicit adjoint
sweeps in the opposite direction, not from autograd through the level loop:

* log semiring: ``alpha[d] = logsumexp_{a: s->d} alpha[s] + score[a]``; the adjoint of ``alpha``
  flows back through arc weights ``exp(alpha[s] + score[a] - alpha[d])`` (arc posteriors);
* tropical semiring: ``max`` instead of ``logsumexp``; the adjoint flows along the best entering
  arc of each state (ties: the lowest arc index), so the gradient of a total is the indicator of
  one best path.

Scores are log-weights (higher is better). ``use_double_scores=True`` computes and returns
float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .fsa import Fsa
from .semiring import scatter_reduce_semiring

NEG_INF = float("-inf")


@dataclass
class _Plan:
    """Index tensors for level-wise sweeps of one FSA structure (scores excluded)."""

    num_states: int
    rank: torch.Tensor  # [S] position of each global state in level order
    src_r: torch.Tensor  # [A] rank of arc source
    dst_r: torch.Tensor  # [A] rank of arc destination
    state_bounds: list[int]  # [L+1] rank ranges of each level
    by_dst: torch.Tensor  # [A] arcs sorted by dst rank
    by_dst_bounds: list[int]  # [L+1] ranges in by_dst of arcs entering each level
    by_src: torch.Tensor  # [A] arcs sorted by src rank
    by_src_bounds: list[int]  # [L+1] ranges in by_src of arcs leaving each level
    start_r: torch.Tensor  # [N'] ranks of start states of non-empty FSAs
    final_r: torch.Tensor  # [N'] ranks of final states of non-empty FSAs
    nonempty: torch.Tensor  # [N'] indices of the non-empty FSAs


def _plan(fsas: Fsa) -> _Plan:
    cached = fsas._cache.get("fb_plan")
    if cached is not None:
        return cached
    levels = fsas.state_levels()  # raises ValueError if cyclic
    device = fsas.device
    S = fsas.num_states
    order = torch.argsort(levels, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(S, device=device)
    num_levels = int(levels.max()) + 1 if S else 0
    counts = torch.bincount(levels, minlength=num_levels)
    state_bounds = [0] + counts.cumsum(0).tolist()
    src_r = rank[fsas.src_global]
    dst_r = rank[fsas.dst_global]
    by_dst = torch.argsort(dst_r, stable=True)
    by_src = torch.argsort(src_r, stable=True)
    sb = torch.tensor(state_bounds, device=device)
    by_dst_bounds = torch.searchsorted(dst_r[by_dst], sb).tolist()
    by_src_bounds = torch.searchsorted(src_r[by_src], sb).tolist()
    nonempty = (fsas.num_states_per_fsa > 0).nonzero().squeeze(1)
    plan = _Plan(S, rank, src_r, dst_r, state_bounds, by_dst, by_dst_bounds, by_src,
                 by_src_bounds, rank[fsas.start_states[nonempty]],
                 rank[fsas.final_states[nonempty]], nonempty)
    fsas._cache["fb_plan"] = plan
    return plan


def _sweep(plan: _Plan, scores: torch.Tensor, log_semiring: bool, backward: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (or backward) scores in rank order, and the best arc into each state.

    Returns ``(values [S], best_arc [S])``; ``best_arc`` is -1 where undefined (only computed
    for the tropical semiring, else all -1).
    """
    S = plan.num_states
    vals = torch.full((S,), NEG_INF, dtype=scores.dtype, device=scores.device)
    best = torch.full((S,), -1, dtype=torch.int64, device=scores.device)
    if backward:
        vals[plan.final_r] = 0.0
        arcs, bounds, frm, to = plan.by_src, plan.by_src_bounds, plan.dst_r, plan.src_r
        levels = range(len(plan.state_bounds) - 2, -1, -1)
    else:
        vals[plan.start_r] = 0.0
        arcs, bounds, frm, to = plan.by_dst, plan.by_dst_bounds, plan.src_r, plan.dst_r
        levels = range(len(plan.state_bounds) - 1)
    for lv in levels:
        a0, a1 = bounds[lv], bounds[lv + 1]
        if a0 == a1:
            continue
        s0, s1 = plan.state_bounds[lv], plan.state_bounds[lv + 1]
        idx = arcs[a0:a1]
        cand = vals[frm[idx]] + scores[idx]
        local = to[idx] - s0
        red, arg = scatter_reduce_semiring(cand, local, s1 - s0, log_semiring, want_arg=True)
        cur = vals[s0:s1]
        if log_semiring:
            vals[s0:s1] = torch.logaddexp(cur, red)
        else:
            better = red > cur
            vals[s0:s1] = torch.where(better, red, cur)
            best[s0:s1] = torch.where(better, idx[arg.clamp(min=0)], best[s0:s1])
    return vals, best


def _adjoint(plan: _Plan, scores: torch.Tensor, vals: torch.Tensor, best: torch.Tensor,
             grad_vals: torch.Tensor, log_semiring: bool, backward: bool) -> torch.Tensor:
    """Gradient w.r.t. arc scores of ``sum(grad_vals * vals)`` (all in rank order).

    For the forward sweep the adjoint flows from destinations back to sources (levels in
    decreasing order); for the backward sweep the other way round.
    """
    frm, to = (plan.dst_r, plan.src_r) if backward else (plan.src_r, plan.dst_r)
    if log_semiring:
        w = torch.exp(vals[frm] + scores - vals[to])
        w = torch.where(torch.isfinite(vals[to]) & torch.isfinite(vals[frm]), w,
                        torch.zeros_like(w))
    else:
        on_best = torch.zeros_like(scores)
        ok = best >= 0
        on_best[best[ok]] = 1.0
        w = on_best
    g = grad_vals.clone()
    grad_scores = torch.zeros_like(scores)
    # adjoint sweep: arcs grouped by the level of their 'to' state, visited so that every
    # 'to' state's adjoint is complete before it is pushed to 'frm'.
    if backward:
        arcs, bounds = plan.by_src, plan.by_src_bounds
        levels = range(len(plan.state_bounds) - 1)
    else:
        arcs, bounds = plan.by_dst, plan.by_dst_bounds
        levels = range(len(plan.state_bounds) - 2, -1, -1)
    for lv in levels:
        a0, a1 = bounds[lv], bounds[lv + 1]
        if a0 == a1:
            continue
        idx = arcs[a0:a1]
        contrib = g[to[idx]] * w[idx]
        grad_scores[idx] = contrib
        g.index_add_(0, frm[idx], contrib)
    return grad_scores


class _ScoresFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, plan: _Plan, log_semiring: bool, backward: bool
                ) -> torch.Tensor:
        vals, best = _sweep(plan, scores, log_semiring, backward)
        ctx.plan, ctx.log_semiring, ctx.backward = plan, log_semiring, backward
        ctx.save_for_backward(scores, vals, best)
        return vals[plan.rank]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        scores, vals, best = ctx.saved_tensors
        plan = ctx.plan
        g = torch.empty_like(grad_out)
        g[plan.rank] = grad_out
        gs = _adjoint(plan, scores, vals, best, g, ctx.log_semiring, ctx.backward)
        return gs, None, None, None


def _scores_of(fsas: Fsa, use_double_scores: bool) -> torch.Tensor:
    s = fsas.scores
    return s.to(torch.float64) if use_double_scores else s.to(torch.float32)


def _lazy_dispatch(fsas: Fsa):
    hook = getattr(type(fsas), "_materialize", None)
    if hook is not None:
        hook(fsas)


def get_forward_scores(fsas: Fsa, log_semiring: bool = True,
                       use_double_scores: bool = False) -> torch.Tensor:
    """Forward scores ``[S]`` of every state (global numbering), differentiable.

    ``alpha[start] = 0``; ``alpha[d] = (+)_{a: s->d} alpha[s] * score[a]`` in the chosen semiring.
    """
    _lazy_dispatch(fsas)
    plan = _plan(fsas)
    return _ScoresFunction.apply(_scores_of(fsas, use_double_scores), plan, log_semiring, False)


def get_backward_scores(fsas: Fsa, log_semiring: bool = True,
                        use_double_scores: bool = False) -> torch.Tensor:
    """Backward scores ``[S]`` (``beta[final] = 0``), differentiable."""
    _lazy_dispatch(fsas)
    plan = _plan(fsas)
    return _ScoresFunction.apply(_scores_of(fsas, use_double_scores), plan, log_semiring, True)


def _gather_per_fsa(values: torch.Tensor, fsas: Fsa, which: torch.Tensor) -> torch.Tensor:
    """``values[which[i]]`` for each FSA, -inf for empty FSAs."""
    out = torch.full((fsas.num_fsas,), NEG_INF, dtype=values.dtype, device=values.device)
    ne = which >= 0
    return out.masked_scatter(ne, values[which[ne]]) if bool(ne.any()) else out


def get_tot_scores(fsas: Fsa, log_semiring: bool = True,
                   use_double_scores: bool = False) -> torch.Tensor:
    """Total score ``[N]`` of each FSA: (+) over all paths; -inf where there is no path.

    Differentiable w.r.t. ``fsas.scores``: the gradient of a total is the vector of arc
    posteriors (log semiring) or the indicator of one best path (tropical). A lattice returned
    by :func:`intersect_dense` that has not been materialised is handled by a streaming
    frame-synchronous computation instead (exact total over all its paths).
    """
    hook = getattr(type(fsas), "_tot_scores", None)
    if hook is not None:
        res = hook(fsas, log_semiring, use_double_scores)
        if res is not None:
            return res
    alpha = get_forward_scores(fsas, log_semiring, use_double_scores)
    return _gather_per_fsa(alpha, fsas, fsas.final_states)


def get_arc_post(fsas: Fsa, log_semiring: bool = True,
                 use_double_scores: bool = False) -> torch.Tensor:
    """Log arc posteriors ``[A]``: ``alpha[src] + score + beta[dst] - tot`` (differentiable).

    In the tropical semiring this is the score of the best path through each arc minus the best
    total (0 on best paths). Arcs of FSAs without any path get -inf.
    """
    alpha = get_forward_scores(fsas, log_semiring, use_double_scores)
    beta = get_backward_scores(fsas, log_semiring, use_double_scores)
    tot = _gather_per_fsa(alpha, fsas, fsas.final_states)
    s = _scores_of(fsas, use_double_scores)
    post = alpha[fsas.src_global] + s + beta[fsas.dst_global] - tot[fsas.arc_fsa]
    return torch.where(torch.isfinite(post), post, torch.full_like(post, NEG_INF))


def best_arcs(fsas: Fsa) -> tuple[torch.Tensor, torch.Tensor]:
    """Tropical forward sweep: ``(alpha [S], best entering arc [S] or -1)`` (global numbering).

    Used by :func:`shortest_path`; no gradient. Float64 scores are kept in float64.
    """
    _lazy_dispatch(fsas)
    plan = _plan(fsas)
    with torch.no_grad():
        scores = _scores_of(fsas, fsas.scores.dtype == torch.float64).detach()
        vals, best = _sweep(plan, scores, False, False)
    return vals[plan.rank], best[plan.rank]
