"""Forward/backward scores, totals and arc posteriors of acyclic FsaVecs.

States are processed level by level (a level is the longest-path depth from the start, see
:meth:`Fsa.state_levels`, or a layering given by :meth:`Fsa.set_state_levels`), all FSAs of a
batch at once. The arcs that feed the states of a level are laid out as padded ``[K, n]``
blocks (one per level, or one per degree class where degrees are very uneven), so a level costs
a gather, an add and a K-way reduction, in a TorchScript loop (:mod:`._levels`). Gradients come
from explicit adjoint sweeps in the opposite direction with the other layout (the adjoint of
a state is the weighted sum over the arcs it feeds), not from autograd through the level loop:

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

from ._levels import adjoint_buckets_jit, sweep_buckets_jit
from .fsa import Fsa

NEG_INF = float("-inf")


@dataclass
class _Layout:
    """Padded per-level arc blocks of one sweep direction (see :mod:`._levels`)."""

    other: torch.Tensor  # [P] rank of each arc's other end (padding: S, the sink)
    arc_pad: torch.Tensor  # [P] arc index (padding: A, a dummy arc)
    states: torch.Tensor  # [Q] target ranks of the buckets, in column order
    p_offs: list[int]
    ns: list[int]
    Ks: list[int]
    s0s: list[int]  # first rank when the bucket's ranks are contiguous, else -1
    q_offs: list[int]
    merges: list[int]  # 1: a state of the bucket has an initial value

    def args(self) -> tuple:
        return (self.states, self.p_offs, self.ns, self.Ks, self.s0s, self.q_offs)


@dataclass
class _Plan:
    """Index tensors for level-wise sweeps of one FSA structure (scores excluded)."""

    num_states: int
    num_arcs: int
    rank: torch.Tensor  # [S] position of each global state in level order
    src_r: torch.Tensor  # [A] rank of arc source
    dst_r: torch.Tensor  # [A] rank of arc destination
    state_bounds: list[int]  # [L+1] rank ranges of each level
    start_r: torch.Tensor  # [N'] ranks of start states of non-empty FSAs
    final_r: torch.Tensor  # [N'] ranks of final states of non-empty FSAs
    nonempty: torch.Tensor  # [N'] indices of the non-empty FSAs
    fwd: _Layout  # entering arcs by destination, levels in increasing order
    bwd: _Layout  # leaving arcs by source, levels in decreasing order


# One padded block per level unless that pads more than this factor (or this many entries)
# beyond the level's arcs; then one block per power-of-two degree class.
_PAD_FACTOR = 2
_PAD_SLACK = 1024


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.index_select(x, 0, idx)  # several times faster than x[idx] on CPU


def _degree_class(deg: torch.Tensor) -> torch.Tensor:
    """``ceil(log2(deg))`` for ``deg >= 1`` (0 for ``deg <= 1``)."""
    return torch.ceil(torch.log2(deg.clamp(min=1).double())).long()


def _split_levels(level: torch.Tensor, deg: torch.Tensor, num_levels: int) -> torch.Tensor:
    """bool ``[L]``: levels whose states (with ``deg > 0``) need more than one block."""
    z = torch.zeros(num_levels, dtype=torch.int64, device=level.device)
    n = z.index_add(0, level, (deg > 0).long())
    tot = z.index_add(0, level, deg)
    mx = z.scatter_reduce(0, level, deg, "amax", include_self=True)
    return mx * n > torch.maximum(_PAD_FACTOR * tot, tot + _PAD_SLACK)


def _argsort(x: torch.Tensor) -> torch.Tensor:
    """Stable argsort of non-negative int64 keys (as int32 when they fit: about 2x faster)."""
    if x.numel() and int(x.max()) < 2 ** 31 - 1:
        x = x.to(torch.int32)
    return torch.argsort(x, stable=True)


def _is_sorted(x: torch.Tensor) -> bool:
    return x.numel() < 2 or bool((x[1:] >= x[:-1]).all())


def _layout(grouped: torch.Tensor, k: torch.Tensor, tgt: torch.Tensor, oth: torch.Tensor,
            deg: torch.Tensor, level_r: torch.Tensor, split: torch.Tensor, init_r: torch.Tensor,
            descending: bool) -> _Layout:
    """Blocks of the arcs grouped by target state.

    ``grouped [A]``: the arc indices ordered so that the arcs of each target are contiguous and
    in increasing index order, ``k [A]``: the place of each among its target's arcs (in that
    order); ``tgt``, ``oth [A]``: rank of each arc's target and other end;
    ``deg [S]``: arcs per target rank. States with no arcs are left out (their value is their
    initial value). Buckets are sorted by (level, degree class where the level is split,
    rank); ``descending`` reverses the bucket order.
    """
    device = tgt.device
    A = tgt.numel()
    S = deg.numel()
    has = (deg > 0).nonzero().squeeze(1)  # ranks, ascending
    key = _take(level_r, has) * 64
    if bool(split.any()):
        key += _take(torch.where(_take(split, level_r), _degree_class(deg),
                                 torch.zeros_like(deg)), has)
    if _is_sorted(key):
        st, skey = has, key
    else:
        by_key = _argsort(key)
        st, skey = _take(has, by_key), _take(key, by_key)
    _, counts = torch.unique_consecutive(skey, return_counts=True)
    nb = counts.numel()
    bid_of = torch.repeat_interleave(torch.arange(nb, device=device), counts,
                                     output_size=st.numel())
    q_off = torch.cumsum(counts, 0) - counts
    col = torch.arange(st.numel(), device=device) - _take(q_off, bid_of)
    zb = torch.zeros(nb, dtype=torch.int64, device=device)
    Ks = zb.scatter_reduce(0, bid_of, _take(deg, st), "amax", include_self=True)
    sizes = Ks * counts
    p_off = torch.cumsum(sizes, 0) - sizes
    P = int(sizes.sum())
    # position of each arc in its block: base of its target's column + k * (bucket width),
    # k = its place among its target's arcs
    zs = torch.zeros(S, dtype=torch.int64, device=device)
    st_base = zs.index_copy(0, st, _take(p_off, bid_of) + col)
    st_width = zs.index_copy(0, st, _take(counts, bid_of))
    t = _take(tgt, grouped)
    pos = _take(st_base, t) + k * _take(st_width, t)
    other = torch.full((P,), S, dtype=torch.int64, device=device)
    other.scatter_(0, pos, _take(oth, grouped))
    arc_pad = torch.full((P,), A, dtype=torch.int64, device=device)
    arc_pad.scatter_(0, pos, grouped)
    diff = st - col
    lo = zb.fill_(S).scatter_reduce(0, bid_of, diff, "amin", include_self=True)
    hi = torch.full_like(lo, -1).scatter_reduce(0, bid_of, diff, "amax", include_self=True)
    s0 = torch.where(lo == hi, lo, torch.full_like(lo, -1))
    is_init = torch.zeros(S, dtype=torch.int64, device=device)
    is_init[init_r] = 1
    merge = torch.zeros_like(lo).scatter_reduce(0, bid_of, _take(is_init, st), "amax",
                                                include_self=True)
    meta = torch.stack([p_off, counts, Ks, s0, q_off, merge]).tolist()
    if descending:
        meta = [m[::-1] for m in meta]
    return _Layout(other, arc_pad, st, *meta)


def _grouped_by(x: torch.Tensor, deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arc indices sorted by ``x`` (global state numbers; ascending index within a group), and
    the place of each among the arcs of its state. Without a sort when ``x`` is already
    sorted (sources: arcs are stored sorted by source)."""
    pos = torch.arange(x.numel(), device=x.device)
    order = pos if _is_sorted(x) else _argsort(x)
    first = torch.cumsum(deg, 0) - deg
    return order, pos - _take(first, _take(x, order))


def _plan(fsas: Fsa) -> _Plan:
    cached = fsas._cache.get("fb_plan")
    if cached is not None:
        return cached
    levels = fsas.state_levels()  # raises ValueError if cyclic
    device = fsas.device
    S = fsas.num_states
    A = fsas.num_arcs
    src, dst = fsas.src_global, fsas.dst_global
    num_levels = int(levels.max()) + 1 if S else 0
    in_deg = torch.bincount(dst, minlength=S)
    out_deg = torch.bincount(src, minlength=S)
    split_in = _split_levels(levels, in_deg, num_levels)
    # rank order: by level, then (where a level is split) by in-degree class, then state
    key = levels * 64
    if bool(split_in.any()):
        key += torch.where(_take(split_in, levels), _degree_class(in_deg),
                           torch.zeros_like(in_deg))
    order = _argsort(key)
    idx = torch.arange(S, device=device)
    rank = torch.empty_like(order).scatter_(0, order, idx)
    counts = torch.bincount(levels, minlength=num_levels)
    state_bounds = [0] + counts.cumsum(0).tolist()
    src_r, dst_r = _take(rank, src), _take(rank, dst)
    level_r = _take(levels, order)
    in_deg_r, out_deg_r = _take(in_deg, order), _take(out_deg, order)
    nonempty = (fsas.num_states_per_fsa > 0).nonzero().squeeze(1)
    start_r = _take(rank, _take(fsas.start_states, nonempty))
    final_r = _take(rank, _take(fsas.final_states, nonempty))
    split_out = _split_levels(level_r, out_deg_r, num_levels)
    fwd = _layout(*_grouped_by(dst, in_deg), dst_r, src_r, in_deg_r, level_r, split_in,
                  start_r, descending=False)
    bwd = _layout(*_grouped_by(src, out_deg), src_r, dst_r, out_deg_r, level_r, split_out,
                  final_r, descending=True)
    plan = _Plan(S, A, rank, src_r, dst_r, state_bounds, start_r, final_r, nonempty, fwd, bwd)
    fsas._cache["fb_plan"] = plan
    return plan


def _sweep(plan: _Plan, scores: torch.Tensor, log_semiring: bool, backward: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (or backward) scores in rank order, and the best arc into each state.

    Returns ``(values [S], best_arc [S])``; ``best_arc`` is -1 where undefined (only computed
    for the tropical semiring, else all -1).
    """
    S = plan.num_states
    vals = torch.full((S + 1,), NEG_INF, dtype=scores.dtype, device=scores.device)
    best = torch.full((S,), -1, dtype=torch.int64, device=scores.device)
    lay = plan.bwd if backward else plan.fwd
    vals.index_fill_(0, plan.final_r if backward else plan.start_r, 0.0)
    sc = _take(torch.cat([scores, scores.new_full((1,), NEG_INF)]), lay.arc_pad)
    sweep_buckets_jit(vals, best, lay.other, sc, lay.arc_pad, lay.states, lay.p_offs, lay.ns,
                      lay.Ks, lay.s0s, lay.q_offs, lay.merges, log_semiring, not log_semiring)
    return vals[:S], best


def _adjoint(plan: _Plan, scores: torch.Tensor, vals: torch.Tensor, best: torch.Tensor,
             grad_vals: torch.Tensor, log_semiring: bool, backward: bool) -> torch.Tensor:
    """Gradient w.r.t. arc scores of ``sum(grad_vals * vals)`` (all in rank order).

    The adjoint ``g`` of the values satisfies ``g[s] = grad_vals[s] + sum_a g[to(a)] * w[a]``
    over the arcs ``a`` that feed ``to(a)`` from ``s`` (``w``: the arc's share of its target's
    value, ``exp(vals[s] + score - vals[to])``, or 1 on the best arc in the tropical
    semiring); it is computed level by level in the opposite direction of the value sweep,
    with the other layout, and the gradient of an arc's score is ``g[to(a)] * w[a]``.
    """
    frm, to = (plan.dst_r, plan.src_r) if backward else (plan.src_r, plan.dst_r)
    if log_semiring:
        v_frm, v_to = _take(vals, frm), _take(vals, to)
        w = torch.exp(v_frm + scores - v_to)
        w = torch.where(torch.isfinite(v_to) & torch.isfinite(v_frm), w, torch.zeros_like(w))
    else:
        w = torch.zeros_like(scores)
        ok = best >= 0
        w[best[ok]] = 1.0
    lay = plan.fwd if backward else plan.bwd
    g = torch.cat([grad_vals, grad_vals.new_zeros(1)])
    wl = _take(torch.cat([w, w.new_zeros(1)]), lay.arc_pad)
    adjoint_buckets_jit(g, lay.other, wl, *lay.args())
    return _take(g, to) * w


class _ScoresFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, plan: _Plan, log_semiring: bool, backward: bool
                ) -> torch.Tensor:
        vals, best = _sweep(plan, scores, log_semiring, backward)
        ctx.plan, ctx.log_semiring, ctx.backward = plan, log_semiring, backward
        ctx.save_for_backward(scores, vals, best)
        return _take(vals, plan.rank)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        scores, vals, best = ctx.saved_tensors
        plan = ctx.plan
        g = torch.empty_like(grad_out).index_copy_(0, plan.rank, grad_out)
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
