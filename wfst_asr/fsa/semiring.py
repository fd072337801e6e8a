"""Semiring reductions shared by the sweeps (log: logsumexp, tropical: max)."""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def scatter_reduce_semiring(values: torch.Tensor, index: torch.Tensor, size: int,
                            log_semiring: bool, want_arg: bool = False
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Reduce ``values [K]`` into ``size`` slots given by ``index [K]``.

    Returns ``(out [size], arg [size] or None)``: ``out[j]`` is the logsumexp (log semiring) or
    max (tropical) of the values sent to slot j, -inf for an empty slot; ``arg[j]`` is the
    position in ``values`` of the first maximum (-1 if none), only when ``want_arg``.
    """
    m = torch.full((size,), NEG_INF, dtype=values.dtype, device=values.device)
    m = m.scatter_reduce(0, index, values, "amax", include_self=True)
    arg = None
    if want_arg and not log_semiring:
        big = values.numel()
        pos = torch.arange(big, device=values.device)
        hit = (values == m[index]) & torch.isfinite(values)
        cand = torch.where(hit, pos, torch.full_like(pos, big))
        arg = torch.full((size,), big, dtype=torch.int64, device=values.device)
        arg = arg.scatter_reduce(0, index, cand, "amin", include_self=True)
        arg = torch.where(arg == big, torch.full_like(arg, -1), arg)
    if not log_semiring:
        return m, arg
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros_like(m).index_add_(0, index, torch.exp(values - m_safe[index]))
    return torch.log(s) + m_safe, arg


def padded_reduce(x: torch.Tensor, log_semiring: bool,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``x [K, S]`` over dim 0 (padding entries are -inf), into ``out`` if given.

    Small K uses a chain of pairwise ``logaddexp``/``maximum`` (fewer passes over memory than
    a general logsumexp); -inf rows stay -inf, never NaN.
    """
    K = x.shape[0]
    if K == 1:
        return x[0] if out is None else out.copy_(x[0])
    if K <= 4:
        op = torch.logaddexp if log_semiring else torch.maximum
        if K == 2:
            return op(x[0], x[1], out=out) if out is not None else op(x[0], x[1])
        acc = op(x[0], x[1])
        for k in range(2, K - 1):
            acc = op(acc, x[k], out=acc)
        return op(acc, x[K - 1], out=out) if out is not None else op(acc, x[K - 1])
    if log_semiring:
        return torch.logsumexp(x, dim=0, out=out) if out is not None else torch.logsumexp(x, 0)
    return torch.amax(x, dim=0, out=out) if out is not None else x.amax(dim=0)
