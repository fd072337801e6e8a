"""Dense segment lattices: sums, maxima and best paths over all segmentations (semi-Markov).

A segment of an utterance of ``n`` frames is ``(s, t, y)``: frames ``s .. t - 1`` with label
``y``, ``1 <= t - s <= D``. The segment lattice of the utterance has the frame boundaries
``0 .. n`` as states and one arc ``s -> t`` with label ``y`` per segment; its paths from 0 to
``n`` are the segmentations of the utterance into labelled segments. This module holds such
lattices for a batch in a dense layout (no arc list) and runs the semiring computations of
:mod:`.forward_backward` on them:

* ``scores``: float ``[B, T, D, L]``, **end-indexed**: ``scores[b, e, d - 1, y]`` is the score
  of the segment ``(e + 1 - d, e + 1, y)`` of utterance ``b`` (last frame ``e``, duration
  ``d``). Entries with ``d > e + 1`` (starting before frame 0) are never read; entries ending
  at or after ``lens[b]`` do not reach the final state ``lens[b]``.
* the **constrained** lattice of a label sequence ``labels[b, :label_lens[b]]``: the
  segmentations whose labels, in order, are that sequence (states ``(t, u)``: boundary ``t``
  after ``u`` labels).

Semirings: log (``log_semiring=True``: logsumexp, the partition function; its gradient with
respect to ``scores`` is the segment posteriors) or tropical (max; gradient: the indicator of
one best path). The recursion runs over the frame boundaries (one vectorised step over
``[B, D, L]`` or ``[B, D, U]`` per boundary, as the engine's forward pass runs over a
lattice's levels); everything per segment is batched.

Impossible values are a large finite negative (:data:`NEG`), not ``-inf``, so that gradients
stay finite through unreachable states; totals at or below ``NEG / 2`` are returned as
``-inf`` (no segmentation: e.g. fewer frames than labels, or a label sequence longer than
``n``).
"""

from __future__ import annotations

import torch

__all__ = ["NEG", "best_paths_of", "best_segmentation", "constrained_scores", "path_segments",
           "segment_posteriors", "segment_tot_scores"]

#: "minus infinity" inside the recursions (finite: no NaN gradients through dead states)
NEG = -1.0e9


def _reduce(x: torch.Tensor, dim: int | tuple[int, ...], log_semiring: bool) -> torch.Tensor:
    if log_semiring:
        return torch.logsumexp(x, dim=dim)
    if isinstance(dim, tuple):
        for d in sorted(dim, reverse=True):
            x = x.max(dim=d).values
        return x
    return x.max(dim=dim).values


def _check(scores: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 4:
        raise ValueError(f"scores must be [B, T, D, L], got {tuple(scores.shape)}")
    lens = torch.as_tensor(lens, dtype=torch.int64, device=scores.device)
    if lens.shape != (scores.shape[0],):
        raise ValueError(f"lens must be [{scores.shape[0]}], got {tuple(lens.shape)}")
    if bool((lens < 0).any()) or bool((lens > scores.shape[1]).any()):
        raise ValueError(f"lens must be in [0, {scores.shape[1]}]")
    return lens


def _finish(tot: torch.Tensor) -> torch.Tensor:
    return torch.where(tot > NEG / 2, tot, torch.full_like(tot, float("-inf")))


def segment_tot_scores(scores: torch.Tensor, lens: torch.Tensor,
                       log_semiring: bool = True) -> torch.Tensor:
    """Total ``[B]`` over every segmentation and labelling of each utterance (log: the
    log-partition function; tropical: the best path's score); ``-inf`` for ``lens[b] == 0``.
    Differentiable with respect to ``scores``."""
    lens = _check(scores, lens)
    _, T, D, _ = scores.shape
    r = _reduce(scores, 3, log_semiring)  # [B, T, D]: the labels of each segment
    return _finish(_forward(r.unsqueeze(-1), lens, None, log_semiring, T, D).squeeze(-1))


def constrained_scores(scores: torch.Tensor, lens: torch.Tensor, labels: torch.Tensor,
                       label_lens: torch.Tensor, log_semiring: bool = True) -> torch.Tensor:
    """Total ``[B]`` over the segmentations whose label sequence is
    ``labels[b, :label_lens[b]]`` (int64 ``[B, U]``, padding anything in ``[0, L)``);
    ``-inf`` where there is none (more labels than frames, or too few frames per ``D``).
    Differentiable with respect to ``scores``."""
    lens = _check(scores, lens)
    B, T, D, L = scores.shape
    labels = torch.as_tensor(labels, dtype=torch.int64, device=scores.device)
    label_lens = torch.as_tensor(label_lens, dtype=torch.int64, device=scores.device)
    U = labels.shape[1]
    if U == 0:
        labels = torch.zeros(B, 1, dtype=torch.int64, device=scores.device)
    idx = labels.clamp(0, L - 1)[:, None, None, :].expand(B, T, D, labels.shape[1])
    c = scores.gather(3, idx)  # [B, T, D, U]: each segment's score with label u
    return _finish(_forward(c, lens, label_lens, log_semiring, T, D))


def _forward(c: torch.Tensor, lens: torch.Tensor, label_lens: torch.Tensor | None,
             log_semiring: bool, T: int, D: int) -> torch.Tensor:
    """The recursion. ``c``: ``[B, T, D, U]`` segment scores per label position (``U = 1``
    and ``label_lens`` None: unconstrained, one "label" already reduced). Returns the value at
    ``(lens[b], label_lens[b])`` (``[B]``; unconstrained: ``[B, 1]``)."""
    B, _, _, U = c.shape
    dev, dt = c.device, c.dtype
    constrained = label_lens is not None
    S = U + 1 if constrained else 1
    start = torch.full((B, S), NEG, dtype=dt, device=dev)
    start[:, 0] = 0.0
    alphas = [start]  # alphas[t]: [B, S]
    pad = torch.full((B, S), NEG, dtype=dt, device=dev)
    # one view per frame: the backward of unbind stacks the frames' gradients once (slicing
    # c itself would add a gradient of c's full size per frame)
    steps = c.unbind(1)
    for t in range(1, T + 1):
        k = min(D, t)
        # window[:, d - 1] = alpha[t - d], d = 1..k  -> [B, k, S]
        window = torch.stack(alphas[t - k:][::-1], dim=1)
        seg = steps[t - 1][:, :k]  # [B, k, U]: segments ending at frame t - 1, duration d
        if constrained:
            cand = window[:, :, :-1] + seg  # from (t - d, u - 1) to (t, u) with label u
            new = torch.cat([pad[:, :1], _reduce(cand, 1, log_semiring)], dim=1)
        else:
            new = _reduce(window + seg, 1, log_semiring)
        alphas.append(new)
    alpha = torch.stack(alphas, dim=1)  # [B, T + 1, S]
    at_end = alpha.gather(1, lens.view(B, 1, 1).expand(B, 1, S)).squeeze(1)  # [B, S]
    if not constrained:
        return torch.where((lens > 0).unsqueeze(1), at_end, torch.full_like(at_end, NEG))
    return at_end.gather(1, label_lens.clamp(0, U).view(B, 1)).squeeze(1)


def _total(x: torch.Tensor, lens: torch.Tensor, labels: torch.Tensor | None,
           label_lens: torch.Tensor | None, log_semiring: bool) -> torch.Tensor:
    if labels is None:
        return segment_tot_scores(x, lens, log_semiring=log_semiring)
    return constrained_scores(x, lens, labels, label_lens, log_semiring=log_semiring)


def _grad_of_total(tot: torch.Tensor, scores: torch.Tensor, retain_graph: bool = False
                   ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(d sum(finite totals) / d scores or None, finite [B])``."""
    ok = torch.isfinite(tot)
    (grad,) = torch.autograd.grad(tot.masked_fill(~ok, 0.0).sum(), scores,
                                  retain_graph=retain_graph, allow_unused=True)
    return grad, ok


def path_segments(indicator: torch.Tensor | None, ok: torch.Tensor
                  ) -> list[list[tuple[int, int, int]]]:
    """``[(s, t, y), ...]`` per utterance, in time order, of a path indicator ``[B, T, D, L]``
    (the gradient of a tropical total); ``[]`` where ``ok[b]`` is False (no path)."""
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(ok.shape[0])]
    if indicator is None:
        return out
    nz = (indicator > 0.5).nonzero().tolist()  # (b, e, d - 1, y), sorted by b then e
    for b, e, d1, y in nz:
        if bool(ok[b]):
            out[b].append((e - d1, e + 1, y))
    return out


def best_paths_of(tot: torch.Tensor, scores: torch.Tensor) -> list[list[tuple[int, int, int]]]:
    """The best paths behind a tropical total ``tot`` already computed from ``scores`` (which
    requires grad), read from its gradient without a second forward pass; ``tot``'s graph is
    kept for a later ``backward()``."""
    return path_segments(*_grad_of_total(tot, scores, retain_graph=True))


def best_segmentation(scores: torch.Tensor, lens: torch.Tensor,
                      labels: torch.Tensor | None = None,
                      label_lens: torch.Tensor | None = None
                      ) -> list[list[tuple[int, int, int]]]:
    """The best path of each utterance's segment lattice (or, with ``labels``, of its
    constrained lattice: a forced alignment): ``[(s, t, y), ...]`` in time order, ``[]``
    where there is none. The indicator of the path is the gradient of the tropical total, so
    it is the same path :func:`segment_tot_scores` / :func:`constrained_scores` score."""
    lens = _check(scores, lens)
    x = scores.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        grad, ok = _grad_of_total(_total(x, lens, labels, label_lens, False), x)
    return path_segments(grad, ok)


def segment_posteriors(scores: torch.Tensor, lens: torch.Tensor,
                       labels: torch.Tensor | None = None,
                       label_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Segment (arc) posteriors ``[B, T, D, L]`` of the segment lattices (with ``labels``: of
    the constrained lattices), log semiring: the probability that segment ``(e + 1 - d, e + 1,
    y)`` is on a path, the gradient of the log total. Zero for an utterance without a path;
    per utterance the posteriors of the segments covering any frame ``< lens[b]`` sum to 1."""
    lens = _check(scores, lens)
    x = scores.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        grad, _ = _grad_of_total(_total(x, lens, labels, label_lens, True), x)
    return torch.zeros_like(scores) if grad is None else grad
