"""Decoding graphs whose LM log-weights are parameters (for :mod:`wfst_asr.losses.dbd`).

A back-off n-gram's values (every n-gram's log-probability and every history's back-off
weight, natural log) become one parameter vector (:class:`NgramScores`). An arc of
:func:`~wfst_asr.graphs.lm.ngram_acceptor` built with ``terms=True`` holds in ``lm_terms`` the
indices of the values its score sums under the back-off rule (the back-off weights of the
histories it backs off from, then the n-gram found), so the back-off structure is kept: a
back-off weight shared by many arcs is one parameter.

:class:`TrainableGraph` holds a graph's structure and its fixed part of the scores; each call
gives the :class:`~wfst_asr.fsa.Fsa` with ``scores = base + lm_scale * LM(lm_terms)``, whose
gradients reach the LM's parameters through every arc the criterion uses.

Graph: :func:`ctc_lm_graph` is ``H o G`` for CTC (``H`` = the CTC topology) and an LM over the
network's own tokens (TIMIT's phone bigram), not determinized, so every arc keeps the one G arc
it comes from.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wfst_asr.fsa import Fsa

from .ngram import NgramModel
from .training import ctc_graph_from_acceptors

__all__ = ["NgramScores", "TrainableGraph", "ctc_lm_graph"]


class NgramScores(nn.Module):
    """The values of a back-off n-gram as parameters, natural log.

    ``weight [P]``: :meth:`NgramModel.param_values` times ``ln 10`` (probabilities of all
    orders, then back-off weights; a missing back-off weight is 0 and no arc uses it).
    ``forward(terms [A, K]) -> [A]``: the sum of the values each row indexes (-1: none).
    """

    def __init__(self, model: NgramModel, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        values = torch.from_numpy(model.param_values()).to(torch.float64) * math.log(10.0)
        self.weight = nn.Parameter(torch.nan_to_num(values, nan=0.0).to(dtype))

    def forward(self, terms: torch.Tensor) -> torch.Tensor:
        ext = torch.cat([self.weight.new_zeros(1), self.weight])
        return ext[terms.long() + 1].sum(-1)


class TrainableGraph(nn.Module):
    """A graph with fixed structure whose scores are ``base + lm_scale * lm(lm_terms)``.

    Args:
      graph: an Fsa (or FsaVec) with the per-arc attribute ``lm_terms`` ``[A, K]``; its
        current scores are taken to be ``base + lm_scale * lm(lm_terms)`` with ``lm``'s initial
        values, which fixes ``base`` (e.g. the topology's or the lexicon's scores).
      lm: the LM's parameters.
      lm_scale: the LM weight (as at decoding).
    """

    def __init__(self, graph: Fsa, lm: NgramScores, lm_scale: float = 1.0) -> None:
        super().__init__()
        if not graph.has_attr("lm_terms"):
            raise ValueError("the graph has no lm_terms (build G with ngram_acceptor(..., "
                             "terms=True))")
        self.lm = lm
        self.lm_scale = float(lm_scale)
        self._graph = graph.detach()
        with torch.no_grad():
            lm_part = lm(graph.lm_terms).to(torch.float64)
        self.register_buffer("base", graph.scores.detach().to(torch.float64)
                             - self.lm_scale * lm_part)

    def forward(self) -> Fsa:
        """The graph with the current LM scores (differentiable w.r.t. ``lm.weight``)."""
        g = self._graph
        scores = self.base.to(self.lm.weight.dtype) + self.lm_scale * self.lm(g.lm_terms)
        return g.index_arcs(torch.arange(g.num_arcs), g.arcs, g.arc_splits if g.is_vec
                            else None, g.num_states_per_fsa if g.is_vec else g.num_states,
                            scores=scores)


def ctc_lm_graph(G: Fsa, modified: bool = False) -> Fsa:
    """``H o G`` for the CTC topology and a token LM acceptor ``G`` with ``lm_terms``: its
    arcs carry ``lm_terms`` of the G arc whose score they hold (-1 rows elsewhere) and
    ``aux_labels`` = the tokens (the "words" :mod:`wfst_asr.losses.dbd` matches)."""
    if not G.has_attr("lm_terms"):
        raise ValueError("G has no lm_terms (ngram_acceptor(..., terms=True))")
    g = ctc_graph_from_acceptors(G.as_vec() if not G.is_vec else G, modified=modified,
                                 arc_map=True)
    src = g.arc_map
    terms = G.lm_terms[src.clamp(min=0)]
    g.lm_terms = torch.where((src >= 0).unsqueeze(1), terms, torch.full_like(terms, -1))
    return g[0] if not G.is_vec else g
