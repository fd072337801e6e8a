"""Checks and helpers every graph loss shares: batch shapes, which utterances fit their
graphs, non-finite network outputs, supervision segments, graph selection, the ``info`` dict.

Graphs are :class:`~wfst_asr.fsa.Fsa` vectors whose arcs with a label >= 0 consume one frame
(the final ``-1`` arc none); log-probs are ``[B, T, V]``; lengths ``[B]`` int64 on the CPU.

Non-finite network output (:func:`isolate_nonfinite`): every loss passes its network output
through it before any graph computation. An utterance with a NaN or ``+inf`` (for a
log-softmax input also a row that is ``-inf`` everywhere; see
:data:`~wfst_asr.fsa.dense.NONFINITE_KINDS`) in its valid frames is excluded before the graphs
are built, reported in ``info["nonfinite_input"]`` and counted in ``num_excluded``; the bad
rows are replaced by zeros through ``torch.where``, so its gradient is exactly 0 and no NaN can
flow back, and bad rows outside every utterance's frames change nothing. The other
utterances' losses and gradients are those of the batch without it. The engine applies the
same isolation to direct users (:meth:`~wfst_asr.fsa.DenseFsaVec.finite`); the trainer's
``nan_guard`` stays the last line of defence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from wfst_asr.fsa import Fsa
from wfst_asr.fsa.dense import nonfinite_rows, zero_rows

__all__ = ["check_batch", "check_outputs", "connected_zero", "exclusion_info", "feasible", "frame_mask",
           "isolate_nonfinite", "min_frames", "num_outputs", "segments", "select_fsas"]

log = logging.getLogger(__name__)


_BIG = 1 << 40


def _frame_distances(g: Fsa, reverse: bool) -> torch.Tensor:
    """Fewest frames ``[S]`` from the start state to each state (``reverse``: from each state
    to the final state) of an FsaVec (CPU); ``_BIG`` where unreachable.

    Unweighted shortest distances (an arc with a label >= 0 costs one frame, the final -1 arc
    none) by relaxation rounds over all arcs of all graphs at once, as many rounds as the
    longest of the shortest paths."""
    S = g.num_states
    dist = torch.full((S,), _BIG, dtype=torch.int64)
    ends = g.final_states if reverse else g.start_states
    dist[ends[ends >= 0]] = 0
    cost = (g.labels >= 0).to(torch.int64)
    frm, to = (g.dst_global, g.src_global) if reverse else (g.src_global, g.dst_global)
    for _ in range(S + 1):
        new = dist.scatter_reduce(0, to, dist[frm] + cost, "amin", include_self=True)
        if torch.equal(new, dist):
            break
        dist = new
    return dist


def min_frames(graphs: Fsa) -> torch.Tensor:
    """int64 ``[N]`` (CPU): the fewest frames a complete path of each graph consumes (every
    arc with a label >= 0 consumes one frame, the final -1 arc none); -1 for a graph with no
    complete path."""
    g = graphs.as_vec().to("cpu")
    dist = _frame_distances(g, reverse=False)
    fin = g.final_states
    out = torch.full((g.num_fsas,), -1, dtype=torch.int64)
    has = fin >= 0
    d = dist[fin[has]]
    out[has] = torch.where(d >= _BIG, torch.full_like(d, -1), d)
    return out


def feasible(graphs: Fsa, lens: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ok [N] bool, need [N] int64)`` (CPU): can graph ``i`` consume exactly ``lens[i]``
    frames? ``need`` = :func:`min_frames`.

    ``ok`` is ``lens == need``, or ``lens >= `` the fewest frames of a complete path through a
    state with a frame self-loop (which can then absorb any number of extra frames). Exact
    for graphs whose only cycles are self-loops, such as the training graphs of HMM and CTC
    topologies (an empty transcript with an HMM topology fits 0 frames only; with CTC, any
    number through blank). For other graphs a length the test accepts may still have no path:
    the losses drop such a non-finite total afterwards.
    """
    g = graphs.as_vec().to("cpu")
    lens = torch.as_tensor(lens, dtype=torch.int64).reshape(-1)
    need = min_frames(g)
    d0 = _frame_distances(g, reverse=False)
    d1 = _frame_distances(g, reverse=True)
    a = g.arcs.long()
    loop = ((a[:, 0] == a[:, 1]) & (a[:, 2] >= 0)).nonzero().squeeze(1)
    q = g.src_global[loop]
    through = (d0[q] + d1[q]).clamp(max=_BIG)
    loop_need = torch.full((g.num_fsas,), _BIG, dtype=torch.int64)
    loop_need = loop_need.scatter_reduce(0, g.arc_fsa[loop], through, "amin", include_self=True)
    ok = (need >= 0) & (lens >= need) & ((lens == need) | (lens >= loop_need))
    return ok, need


def select_fsas(graphs: Fsa, idx: torch.Tensor) -> Fsa:
    """The FsaVec of ``graphs[idx]`` (in that order), attributes kept, in one gather."""
    g = graphs.as_vec()
    idx = torch.as_tensor(idx, dtype=torch.int64, device=g.device).reshape(-1)
    counts = (g.arc_splits[1:] - g.arc_splits[:-1])[idx]
    splits = torch.zeros(idx.numel() + 1, dtype=torch.int64, device=g.device)
    splits[1:] = counts.cumsum(0)
    total = int(splits[-1])
    run = torch.repeat_interleave(torch.arange(idx.numel(), device=g.device), counts,
                                  output_size=total)
    arc_map = g.arc_splits[idx][run] + torch.arange(total, device=g.device) - splits[run]
    return g.index_arcs(arc_map, g.arcs[arc_map], splits, g.num_states_per_fsa[idx])


def check_batch(log_probs: torch.Tensor, out_lens, num_texts: int | None) -> torch.Tensor:
    """Validate ``log_probs [B, T, V]`` and ``out_lens [B]``; return the lengths (CPU int64)."""
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be [B, T, V], got {tuple(log_probs.shape)}")
    B, T, _ = log_probs.shape
    lens = torch.as_tensor(out_lens).detach().to("cpu", torch.int64).reshape(-1)
    if lens.numel() != B or (num_texts is not None and num_texts != B):
        raise ValueError(f"got {B} sequences of log-probs, {lens.numel()} lengths and "
                         f"{num_texts} transcripts")
    if bool((lens < 0).any()) or bool((lens > T).any()):
        raise ValueError(f"out_lens must lie in [0, T={T}], got {lens.tolist()}")
    return lens


def frame_mask(lens: torch.Tensor, T: int, device=None) -> torch.Tensor:
    """bool ``[B, T]``: frame ``t`` of utterance ``b`` is valid (``t < lens[b]``)."""
    lens = torch.as_tensor(lens).to(device)
    return torch.arange(T, device=device) < lens.reshape(-1, 1)


def isolate_nonfinite(x: torch.Tensor, valid: torch.Tensor, kind: str = "log_probs",
                      name: str = "loss", rows: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Find the utterances whose network output is non-finite, and mask it (module doc).

    Args:
      x: the network output ``[B, ..., V]`` (a row is a vector over the last dimension).
      valid: bool ``x.shape[:-1]`` (or broadcastable to it): the rows that belong to an
        utterance (its frames; for a transducer, its ``(t, u)`` cells).
      kind: what is non-finite (:data:`~wfst_asr.fsa.dense.NONFINITE_KINDS`): ``"log_probs"``
        (NaN, +inf; -inf is a zero probability), ``"logits"`` (also a row that is -inf
        everywhere) or ``"finite"`` (any non-finite value).
      name: the loss, for the warning.
      rows: the bad rows (bool ``x.shape[:-1]``) when the caller already knows them (a loss
        that reduces every row anyway); None: one reduction over ``x`` finds them.

    Returns:
      ``(x', bad)``: ``x'`` is ``x`` itself when no row is bad (the common case: no copy),
      else ``x`` with its bad rows set to 0 through ``torch.where`` (gradient exactly 0
      there); ``bad`` is bool ``[B]`` (CPU): the utterances with a bad valid row, to exclude.
    """
    B = x.shape[0]
    if rows is None:
        rows = nonfinite_rows(x, kind)
    if rows is None or not bool(rows.any()):
        return x, torch.zeros(B, dtype=torch.bool)
    bad = (rows & valid.to(rows.device)).reshape(B, -1).any(1).cpu()
    if bool(bad.any()):
        log.warning("%s: %d utterance(s) have non-finite network output (NaN/inf) in their "
                    "frames; excluded: %s", name, int(bad.sum()),
                    bad.nonzero().squeeze(1).tolist())
    return zero_rows(x, rows, kind), bad


def connected_zero(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A 0 that depends on ``x`` (so ``backward()`` works when every utterance is excluded)
    with a gradient of exactly 0, never NaN, whatever ``x`` holds (``0 * x.sum()`` would be
    NaN for a NaN in ``x``): the sum of an empty slice of it."""
    return x.reshape(-1)[:0].sum().to(dtype or x.dtype)


def reduce_loss(per_utt: torch.Tensor, frames: int, reduction: str,
                empty_inputs: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """The loss of a batch from its per-utterance values ``[B]``: ``"none"``: them; ``"sum"``:
    their sum; ``"mean"``: the sum over ``frames`` (the kept utterances' output frames).
    ``empty_inputs``: the network outputs, when no utterance was kept, so that the result is a
    zero still connected to them (:func:`connected_zero`: ``backward()`` gives zero
    gradients)."""
    for x in empty_inputs:
        per_utt = per_utt + connected_zero(x, per_utt.dtype)
    if reduction == "none":
        return per_utt
    loss = per_utt.sum()
    return loss / max(frames, 1) if reduction == "mean" else loss


def drop_nonfinite(values: torch.Tensor, keep: torch.Tensor, ok: torch.Tensor, name: str,
                   what: str = "gave a non-finite total") -> tuple[torch.Tensor, int]:
    """``(fin, count)``: which of the kept utterances' ``values`` (``[K]``, row ``i`` for
    utterance ``keep[i]``) are finite; the others are marked not ``ok`` (in place) and named
    in one warning. Use ``torch.where(fin, value, 0)`` after it: the gradient of a dropped
    entry is then exactly 0."""
    fin = torch.isfinite(values).detach()
    if bool(fin.all()):
        return fin, 0
    bad = keep[(~fin).nonzero().squeeze(1).cpu()]
    ok[bad] = False
    log.warning("%s: %d feasible utterance(s) %s; excluded: %s", name, bad.numel(), what,
                bad.tolist())
    return fin, int(bad.numel())


def exclusion_info(B: int, ok: torch.Tensor, frames: int, num_nonfinite: int,
                   nonfinite_input: torch.Tensor) -> dict:
    """The ``info`` every loss returns: ``num_utts``; ``num_excluded``/``excluded`` (the
    utterances not ``ok``: infeasible, non-finite input or non-finite total);
    ``num_nonfinite`` (feasible utterances whose total still came out non-finite);
    ``nonfinite_input`` (the utterances excluded for non-finite network output,
    :func:`isolate_nonfinite`); ``frames`` (output frames of the kept utterances)."""
    excluded = (~ok).nonzero().squeeze(1).tolist()
    return {"num_utts": B, "num_excluded": len(excluded), "excluded": excluded,
            "num_nonfinite": num_nonfinite,
            "nonfinite_input": nonfinite_input.nonzero().squeeze(1).tolist(), "frames": frames}


def num_outputs(topo: Fsa) -> int:
    """The network output dimension a topology expects: its largest label + 1."""
    return int(topo.labels.max()) + 1 if topo.num_arcs else 0


def check_outputs(V: int, expected: int, what: str) -> None:
    if V != expected:
        raise ValueError(f"the network has {V} outputs per frame but {what} has labels "
                         f"0..{expected - 1} (expects {expected} outputs): the output layer "
                         f"and the topology do not match")


def segments(keep: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """int32 ``[K, 3]`` supervision segments ``(b, 0, lens[b])`` of the utterances ``keep``."""
    return torch.stack([keep, torch.zeros_like(keep), lens[keep]], 1).to(torch.int32)


def _as_token_lists(token_seqs) -> list[list[int]]:
    if isinstance(token_seqs, torch.Tensor):
        token_seqs = token_seqs.tolist()
    return [[int(t) for t in (s.tolist() if isinstance(s, torch.Tensor) else s)]
            for s in token_seqs]
