"""Differentiable beam-search decoding as a criterion (Collobert, Hannun and Synnaeve, 2019).

For utterance ``b`` with network output ``x_b [T_b, V]`` (log-probs), a decoding graph ``D``
(e.g. ``H o L o G``: labels = network outputs, ``aux_labels`` = words, 0 = none) whose scores
may be trainable (an LM's log-weights, :mod:`wfst_asr.graphs.trainable`) and the reference
word sequence ``w_b``; log semiring, a path's score = its graph scores + ``sum_t x_b[t, l_t]``:

* ``beam_b``: the total of the lattice of the beam search, ``intersect_dense_pruned(D, x_b)``
  (search beam, lattice beam, max active states). Paths that reach the same graph state at
  the same frame merge by log-add in the lattice, as hypotheses with the same word history and
  LM state merge in the paper's beam; the pruning decisions use the Viterbi scores;
* ``num_b``: the total of every path of ``D`` whose words are ``w_b``, all alignments, exact
  (``intersect_dense(D o w_b, x_b)``);
* ``in_b``: the part of ``num_b`` inside the beam (the lattice restricted to ``w_b``);
* the denominator is the union of the beam's paths and the reference's: as the paper adds the
  reference to the beam when it has fallen out, every reference path counts, whether the
  search kept it or not. ``den_b = log(e^beam_b + e^num_b - e^in_b)``, and
  ``loss_b = den_b - num_b >= 0``.

With beams wide enough to keep every path, ``beam_b`` is the full sum over ``D`` and the loss
is the exact MMI-style ``log sum_D - log sum_{D o w_b}``. Gradients reach ``x`` and the graph
scores through every arc of the lattice and of ``D o w_b``; a graph arc on neither gets none.
``out_of_beam`` counts the utterances whose reference had no path in the lattice, ``partial``
those where only part of its mass was there; an empty lattice (the search kept no complete
path) leaves the reference alone: loss 0 (``empty_beam``). An utterance whose reference no
path of ``D`` spells in ``T_b`` frames is dropped and counted (``infeasible``).
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
from torch import nn

from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    get_tot_scores,
    intersect_dense,
    intersect_dense_pruned,
    intersect_sequences,
)
from wfst_asr.graphs.trainable import TrainableGraph
from wfst_asr.losses.common import (
    _as_token_lists,
    check_batch,
    check_outputs,
    drop_nonfinite,
    exclusion_info,
    frame_mask,
    isolate_nonfinite,
    num_outputs,
    reduce_loss,
    segments,
)

__all__ = ["DbdLoss", "DbdTotals", "dbd_totals"]

log = logging.getLogger(__name__)
_REDUCTIONS = ("none", "sum", "mean")

#: relative tolerance under which the in-beam reference mass counts as all of it
_FULL = 1e-9


class DbdTotals(NamedTuple):
    """Per-utterance log totals ``[N]`` (float64) of :func:`dbd_totals`."""

    beam: torch.Tensor      #: the beam's lattice
    num: torch.Tensor       #: every path spelling the reference (exact)
    in_beam: torch.Tensor   #: the reference's paths inside the lattice
    den: torch.Tensor       #: the union of the two sets

    @property
    def loss(self) -> torch.Tensor:
        """``den - num`` ``[N]`` (``+inf`` where ``num`` is ``-inf``: an infeasible reference,
        which the caller drops)."""
        return self.den - self.num


def _all_in_beam(num: torch.Tensor, in_beam: torch.Tensor) -> torch.Tensor:
    """bool ``[N]``: the lattice holds all of the reference's mass (up to rounding)."""
    return in_beam >= num - _FULL * num.abs().clamp(min=1.0)


def _union(beam: torch.Tensor, num: torch.Tensor, in_beam: torch.Tensor) -> torch.Tensor:
    """``log(e^beam + e^num - e^in_beam)`` with ``in_beam <= num``, finite gradients."""
    full = _all_in_beam(num, in_beam)
    gap = torch.where(full | ~torch.isfinite(num), torch.full_like(num, -1.0), in_beam - num)
    gap = gap.clamp(max=-_FULL)
    rest = num + torch.log(-torch.expm1(gap))  # log(e^num - e^in_beam)
    return torch.where(full, beam, torch.logaddexp(beam, rest))


def dbd_totals(graph: Fsa, dense: DenseFsaVec, refs: list[list[int]], *, search_beam: float,
               output_beam: float, min_active_states: int = 1,
               max_active_states: int = 10_000, attr: str = "aux_labels") -> DbdTotals:
    """The totals of the criterion for every segment of ``dense``.

    Args:
      graph: the decoding graph, shared by all segments (or one per segment); ``attr`` holds
        the words. Its ``scores`` may require grad.
      dense: the network output, one segment per reference.
      refs: the reference word ids (>= 1) of every segment.
      search_beam, output_beam, min_active_states, max_active_states: the beam search's
        settings (:func:`wfst_asr.fsa.intersect_dense_pruned`); ``search_beam = inf``: no
        search at all, the exact full sum over the graph (:func:`~wfst_asr.fsa.intersect_dense`,
        the MMI counterpart: memory grows with arcs x frames).

    Returns:
      :class:`DbdTotals`; ``.loss`` is the per-segment loss.
    """
    if len(refs) != dense.num_segments:
        raise ValueError(f"{len(refs)} references for {dense.num_segments} segments")
    ref_graphs = intersect_sequences(graph, refs, attr)
    num = get_tot_scores(intersect_dense(ref_graphs, dense), log_semiring=True,
                         use_double_scores=True)
    if math.isinf(search_beam):  # no pruning: the exact full sum (LF-MMI on this graph)
        beam = get_tot_scores(intersect_dense(graph, dense), log_semiring=True,
                              use_double_scores=True)
        return DbdTotals(beam, num, num, beam)
    lattice = intersect_dense_pruned(graph, dense, search_beam, output_beam, min_active_states,
                                     max_active_states)
    beam = get_tot_scores(lattice, log_semiring=True, use_double_scores=True)
    in_beam = get_tot_scores(intersect_sequences(lattice, refs, attr), log_semiring=True,
                             use_double_scores=True)
    in_beam = torch.minimum(in_beam, num)  # the same paths, summed in another order
    return DbdTotals(beam, num, in_beam, _union(beam, num, in_beam))


class DbdLoss(nn.Module):
    """The criterion as a module: ``forward(x [B, T, V], out_lens [B], word_seqs)`` ->
    ``(loss, info)``.

    Args:
      graph: a :class:`~wfst_asr.graphs.trainable.TrainableGraph` (its LM parameters are this
        module's: an optimiser over ``parameters()`` trains them) or a fixed
        :class:`~wfst_asr.fsa.Fsa`; labels = network outputs, ``attr`` = words.
      search_beam, output_beam, min_active_states, max_active_states: the beam search
        (training and decoding use the same); ``search_beam = inf``: the exact full sum.
      reduction: ``"sum"`` over the kept utterances, ``"mean"`` over their frames, ``"none"``.
      lr_scale: the learning rate of the graph's LM weights, as a multiple of the network's
        (the trainer reads it: the LM's values move in nats, the network's weights do not).

    ``word_seqs``: word ids >= 1 per utterance. An utterance is excluded, counted and named
    in the log, with zero gradient, when its output is non-finite (NaN/+inf) or no path of
    the graph spells its words in its frames. ``info``: as every loss
    (:func:`~wfst_asr.losses.common.exclusion_info`) plus ``out_of_beam`` (kept utterances
    whose reference had no path in the beam: the forced reference), ``partial`` (part of its
    mass in the beam), ``empty_beam`` (no complete path in the beam), and the detached sums
    ``num``, ``den``, ``beam``, ``dbd``.
    """

    def __init__(self, graph: TrainableGraph | Fsa, search_beam: float = 20.0,
                 output_beam: float = 8.0, min_active_states: int = 1,
                 max_active_states: int = 10_000, reduction: str = "sum",
                 attr: str = "aux_labels", lr_scale: float = 1.0) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if isinstance(graph, TrainableGraph):
            self.graph = graph
        else:
            self._fixed = graph.detach()
        self.search_beam, self.output_beam = float(search_beam), float(output_beam)
        self.min_active, self.max_active = int(min_active_states), int(max_active_states)
        self.reduction, self.attr = reduction, attr
        if lr_scale <= 0:
            raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
        self.lr_scale = float(lr_scale)
        self.num_outputs = num_outputs(self.decoding_graph().detach())

    def decoding_graph(self) -> Fsa:
        """The graph with the current scores (differentiable w.r.t. the LM parameters)."""
        return self.graph() if hasattr(self, "graph") else self._fixed

    def forward(self, x: torch.Tensor, out_lens: torch.Tensor, word_seqs
                ) -> tuple[torch.Tensor, dict]:
        seqs = _as_token_lists(word_seqs)
        lens = check_batch(x, out_lens, len(seqs))
        B, T, V = x.shape
        check_outputs(V, self.num_outputs, "the decoding graph")
        x, bad_input = isolate_nonfinite(x, frame_mask(lens, T), "log_probs", "DbdLoss")
        ok = ~bad_input & (lens > 0)
        keep = ok.nonzero().squeeze(1)
        dtype = torch.float64
        zero = x.new_zeros(B, dtype=dtype)
        parts = {k: zero for k in ("num", "den", "beam", "dbd")}
        counts = {"out_of_beam": 0, "partial": 0, "empty_beam": 0}
        num_infeasible = 0
        if keep.numel():
            graph = self.decoding_graph().to(x.device)
            dense = DenseFsaVec(x, segments(keep, lens))
            tot = dbd_totals(graph, dense, [seqs[i] for i in keep.tolist()],
                             search_beam=self.search_beam, output_beam=self.output_beam,
                             min_active_states=self.min_active,
                             max_active_states=self.max_active, attr=self.attr)
            fin, num_infeasible = drop_nonfinite(tot.num, keep, ok, "DbdLoss",
                                                 "have no path spelling their words")
            beam_ok = torch.isfinite(tot.beam)
            counts["empty_beam"] = int((fin & ~beam_ok).sum())
            counts["out_of_beam"] = int((fin & beam_ok & ~torch.isfinite(tot.in_beam)).sum())
            counts["partial"] = int((fin & torch.isfinite(tot.in_beam)
                                     & ~_all_in_beam(tot.num, tot.in_beam)).sum())
            kd = keep.to(x.device)

            def put(v: torch.Tensor) -> torch.Tensor:
                v = torch.where(fin, v, torch.zeros_like(v)).to(dtype)
                return zero.index_put((kd,), v)

            parts = {"num": put(tot.num), "den": put(tot.den), "beam": put(tot.beam),
                     "dbd": put(tot.loss)}
        info = exclusion_info(B, ok, int(lens[ok].sum()), num_infeasible, bad_input)
        info.update(counts)
        info.update({k: float(v.detach().sum()) for k, v in parts.items()})
        return reduce_loss(parts["dbd"], info["frames"], self.reduction,
                           () if bool(ok.any()) else (x,)), info
