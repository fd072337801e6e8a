"""CTC prefix scores for joint CTC/attention decoding (Watanabe et al. 2017), log semiring.

For one utterance with CTC log-probs ``y [T, V]`` (blank = 0, which is also the attention
decoder's ``<eos>``), a prefix ``g`` is kept as a :class:`CtcPrefixState`: the forward variables
``r_n[t]`` / ``r_b[t]`` (log-prob of ``g`` on frames ``0..t`` with the last frame a label / a blank)
and ``psi(g)``, the log-prob of all label sequences that start with ``g``. One
:meth:`CtcPrefixScorer.score_batch` call extends ``K`` prefixes by all (or some) next ids at once:
a loop over ``T`` with vectorised ``[K, C]`` operations. For id 0 (``<eos>``) the score is the
full ``log p_ctc(g | x) = logaddexp(r_n[T-1], r_b[T-1])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["CtcPrefixScorer", "CtcPrefixScores", "CtcPrefixState", "ctc_prefix_log_prob",
           "ctc_seq_log_prob"]


@dataclass
class CtcPrefixState:
    """A prefix ``g``: ``r_n``, ``r_b`` ``[T]``, ``psi`` = log P(g...), ``last`` token (None: empty)."""

    r_n: torch.Tensor
    r_b: torch.Tensor
    psi: float
    last: int | None

    @property
    def log_prob(self) -> float:
        """Full ``log p_ctc(g | x)`` (the ``<eos>`` score of ``g``)."""
        return float(torch.logaddexp(self.r_n[-1], self.r_b[-1]))


@dataclass
class CtcPrefixScores:
    """Result of :meth:`CtcPrefixScorer.score_batch` for ``K`` states and ``C`` ids each.

    ``psi [K, C]`` log prefix scores of ``g_k + ids[k, j]``; ``r_n``, ``r_b`` ``[K, C, T]`` the
    forward variables of those extensions (``-inf`` rows for id 0); ``ids [K, C]``.
    """

    psi: torch.Tensor
    r_n: torch.Tensor
    r_b: torch.Tensor
    ids: torch.Tensor

    def state(self, k: int, c: int) -> CtcPrefixState:
        """State of prefix ``k`` extended by token ``c`` (must be among the scored ids, not 0)."""
        if c == 0:
            raise ValueError("id 0 is blank / <eos>: it ends a hypothesis, it has no state")
        j = (self.ids[k] == c).nonzero()
        if j.numel() == 0:
            raise ValueError(f"token {c} was not scored for state {k}")
        j = int(j[0, 0])
        return CtcPrefixState(self.r_n[k, j], self.r_b[k, j], float(self.psi[k, j]), c)


class CtcPrefixScorer:
    """CTC prefix scorer of one utterance.

    Args:
        log_probs: ``[T, V]`` log-softmax CTC output (blank = 0); the dtype is kept (float64 ok).
        length: number of valid frames (default ``T``); later frames are ignored.
    """

    def __init__(self, log_probs: torch.Tensor, length: int | None = None):
        if log_probs.dim() != 2:
            raise ValueError(f"log_probs must be [T, V], got {tuple(log_probs.shape)}")
        T = log_probs.shape[0] if length is None else int(length)
        if not 1 <= T <= log_probs.shape[0]:
            raise ValueError(f"length must be in [1, {log_probs.shape[0]}], got {length}")
        self.log_probs = log_probs[:T]
        self.T, self.V = T, log_probs.shape[1]
        # float64, -inf floored at -1e4 (the scans in score_batch subtract running sums)
        self.y64 = self.log_probs.double().clamp(min=-1e4)
        self.blank_cumsum = torch.cumsum(self.y64[:, 0], 0)

    def initial_state(self) -> CtcPrefixState:
        """The empty prefix: ``r_n = -inf``, ``r_b[t] = sum_{tau <= t} y[tau, 0]``, ``psi = 0``."""
        r_b = torch.cumsum(self.log_probs[:, 0], 0)
        return CtcPrefixState(torch.full_like(r_b, -torch.inf), r_b, 0.0, None)

    def score_batch(self, states: Sequence[CtcPrefixState],
                    ids: torch.Tensor | None = None) -> CtcPrefixScores:
        """Extend each of ``K`` states by every id (``ids=None``: ``0..V-1``) or by ``ids``.

        ``ids`` is ``[C]`` (same for all states) or ``[K, C]``; id 0 gets the full CTC log-prob
        of the prefix (``<eos>``). The recursions over frames are log-semiring scans
        (``logcumsumexp`` of the terms less the running sums of the frames' log-probs), in
        float64 with log-probs floored at -1e4; memory ``O(T K C)``.
        """
        y, dev, out_dtype = self.y64, self.log_probs.device, self.log_probs.dtype
        K = len(states)
        if ids is None:
            ids = torch.arange(self.V, device=dev)
        ids = torch.as_tensor(ids, device=dev, dtype=torch.long)
        ids = ids.expand(K, -1) if ids.dim() == 1 else ids  # [K, C]
        r_n_g = torch.stack([s.r_n for s in states]).T[:, :, None].to(y.dtype)  # [T, K, 1]
        r_b_g = torch.stack([s.r_b for s in states]).T[:, :, None].to(y.dtype)
        last = torch.tensor([-1 if s.last is None else s.last for s in states], device=dev)
        empty = torch.tensor([s.last is None for s in states], device=dev)
        yc = y[:, ids]  # [T, K, C]
        ninf = torch.tensor(-torch.inf, dtype=y.dtype, device=dev)
        # phi[t]: g on frames 0..t, ready to be followed by a new c (needs a blank if c == last)
        phi = torch.where(ids == last[:, None], r_b_g, torch.logaddexp(r_n_g, r_b_g))
        # r_n[t] = logaddexp(r_n[t-1], phi[t-1]) + yc[t] is a log-semiring scan: with
        # Y = cumsum(yc), r_n - Y = logcumsumexp([r_n[0] - Y[0], phi[0] - Y[0], ...])
        Y = torch.cumsum(yc, 0)
        r_n0 = torch.where(empty[:, None], yc[0], ninf)
        r_n = torch.logcumsumexp(torch.cat([(r_n0 - Y[0])[None], phi[:-1] - Y[:-1]]), 0) + Y
        # r_b[t] = logaddexp(r_b[t-1], r_n[t-1]) + y[t, 0], r_b[0] = -inf: the same scan
        Bc = self.blank_cumsum[:, None, None]
        r_b = torch.logcumsumexp(torch.cat([torch.full_like(r_n[:1], -torch.inf),
                                            r_n[:-1] - Bc[:-1]]), 0) + Bc
        psi = torch.logsumexp(torch.cat([r_n[:1], phi[:-1] + yc[1:]]), dim=0)  # [K, C]
        eos = ids == 0
        psi = torch.where(eos, torch.logaddexp(r_n_g[-1], r_b_g[-1]), psi).to(out_dtype)
        r_n = torch.where(eos, ninf, r_n).permute(1, 2, 0).to(out_dtype)
        r_b = torch.where(eos, ninf, r_b).permute(1, 2, 0).to(out_dtype)
        return CtcPrefixScores(psi, r_n, r_b, ids)

    def score(self, state: CtcPrefixState) -> tuple[torch.Tensor, CtcPrefixScores]:
        """``psi [V]`` of ``state + c`` for all ``c`` (entry 0: full log-prob of the prefix) and
        the :class:`CtcPrefixScores` (``K = 1``) to take new states from: ``scores.state(0, c)``."""
        scores = self.score_batch([state])
        return scores.psi[0], scores

    def extend(self, state: CtcPrefixState, c: int) -> CtcPrefixState:
        """State of ``state``'s prefix followed by token ``c`` (1..V-1), computed for ``c`` only."""
        if not 0 < c < self.V:
            raise ValueError(f"token must be in [1, {self.V - 1}], got {c}")
        return self.score_batch([state], torch.tensor([c])).state(0, c)

    def prefix_state(self, prefix: Sequence[int]) -> CtcPrefixState:
        """State of ``prefix`` (token ids 1..V-1), built from the empty prefix."""
        state = self.initial_state()
        for c in prefix:
            state = self.extend(state, int(c))
        return state


def ctc_prefix_log_prob(log_probs: torch.Tensor, prefix: Sequence[int]) -> float:
    """``psi(prefix)``: log of the total CTC prob of all label sequences starting with
    ``prefix`` (``log_probs [T, V]``; 0.0 for the empty prefix)."""
    return CtcPrefixScorer(log_probs).prefix_state(prefix).psi


def ctc_seq_log_prob(log_probs: torch.Tensor, seq: Sequence[int]) -> float:
    """Full ``log p_ctc(seq | x)`` for ``log_probs [T, V]`` (blank = 0)."""
    return CtcPrefixScorer(log_probs).prefix_state(seq).log_prob
