"""Checks and helpers every graph loss shares: batch shapes, which utterances fit their
graphs, supervision segments, graph selection.

Graphs are :class:`~wfst_asr.fsa.Fsa` vectors whose arcs with a label >= 0 consume one frame
(the final ``-1`` arc none); log-probs are ``[B, T, V]``; lengths ``[B]`` int64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wfst_asr.fsa import Fsa

__all__ = ["check_batch", "check_outputs", "feasible", "min_frames", "num_outputs", "segments",
           "select_fsas"]


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
