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

from typing import NamedTuple

import torch

from wfst_asr.fsa import (
    DenseFsaVec,
    Fsa,
    get_tot_scores,
    intersect_dense,
    intersect_dense_pruned,
    intersect_sequences,
)

__all__ = ["DbdTotals", "dbd_totals"]

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


def _union(beam: torch.Tensor, num: torch.Tensor, in_beam: torch.Tensor) -> torch.Tensor:
    """``log(e^beam + e^num - e^in_beam)`` with ``in_beam <= num``, finite gradients."""
    full = in_beam >= num - _FULL * num.abs().clamp(min=1.0)
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
        settings (:func:`wfst_asr.fsa.intersect_dense_pruned`).

    Returns:
      :class:`DbdTotals`; ``.loss`` is the per-segment loss.
    """
    if len(refs) != dense.num_segments:
        raise ValueError(f"{len(refs)} references for {dense.num_segments} segments")
    lattice = intersect_dense_pruned(graph, dense, search_beam, output_beam, min_active_states,
                                     max_active_states)
    beam = get_tot_scores(lattice, log_semiring=True, use_double_scores=True)
    in_beam = get_tot_scores(intersect_sequences(lattice, refs, attr), log_semiring=True,
                             use_double_scores=True)
    ref_graphs = intersect_sequences(graph, refs, attr)
    num = get_tot_scores(intersect_dense(ref_graphs, dense), log_semiring=True,
                         use_double_scores=True)
    in_beam = torch.minimum(in_beam, num)  # the same paths, summed in another order
    return DbdTotals(beam, num, in_beam, _union(beam, num, in_beam))
