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

Graphs: :func:`lexicon_lm_graph` is ``L o G`` as a token acceptor (each G arc becomes one
chain of tokens per pronunciation of its word: the word and the G terms on the chain's first
arc); :func:`ctc_lm_graph` is ``H o G`` (or ``H o L o G``) for CTC. Neither is determinized,
so every arc keeps the one G arc it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from wfst_asr.fsa import Fsa

from .ngram import NgramModel
from .training import ctc_graph_from_acceptors

__all__ = ["NgramScores", "TrainableGraph", "ctc_lm_graph", "lexicon_lm_graph"]


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
        # derived from the graph, rebuilt with it: not part of a checkpoint
        self.register_buffer("base", graph.scores.detach().to(torch.float64)
                             - self.lm_scale * lm_part, persistent=False)

    def forward(self) -> Fsa:
        """The graph with the current LM scores (differentiable w.r.t. ``lm.weight``)."""
        g = self._graph.detach()  # a view: arcs and attributes shared, new scores
        g.scores = self.base.to(self.lm.weight.dtype) + self.lm_scale * self.lm(g.lm_terms)
        return g


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


def lexicon_lm_graph(G: Fsa, lexicon: Sequence[tuple[int, Sequence[int], float]]) -> Fsa:
    """``L o G`` as an epsilon-free token acceptor (for :func:`ctc_lm_graph`).

    Args:
      G: a word acceptor with ``lm_terms`` (:func:`~wfst_asr.graphs.lm.ngram_acceptor` with
        ``terms=True``): labels = word ids, -1 on final arcs.
      lexicon: ``(word id, token ids (>= 1), log-probability)`` per pronunciation.

    Returns:
      A single Fsa: the states of ``G`` (its final state last), plus ``len(p) - 1`` new
      states per (word arc, pronunciation ``p``). Arc ``k`` of a chain has label ``p[k]``;
      the first one holds the word (``aux_labels``, 0 on the others), the G arc's score plus
      the pronunciation's log-probability, and the G arc's ``lm_terms`` (-1 rows on the
      others). Final arcs are G's.

    Raises:
      ValueError: a word of G with no pronunciation (the LM's vocabulary must be the
        lexicon's), or a pronunciation with a token < 1.
    """
    if G.is_vec:
        raise ValueError("G must be a single Fsa")
    if not G.has_attr("lm_terms"):
        raise ValueError("G has no lm_terms (ngram_acceptor(..., terms=True))")
    words = torch.tensor([int(w) for w, _p, _s in lexicon], dtype=torch.int64)
    plen = torch.tensor([len(p) for _w, p, _s in lexicon], dtype=torch.int64)
    if bool((plen < 1).any()):
        raise ValueError("every pronunciation needs at least one token")
    toks = torch.tensor([int(t) for _w, p, _s in lexicon for t in p], dtype=torch.int64)
    if toks.numel() and int(toks.min()) < 1:
        raise ValueError("pronunciation tokens must be >= 1 (0 is blank)")
    plogp = torch.tensor([float(s) for _w, _p, s in lexicon], dtype=torch.float64)
    arcs = G.arcs.long()
    src, dst, lab = arcs[:, 0], arcs[:, 1], arcs[:, 2]
    fin = lab == -1
    word_arcs = (~fin).nonzero().squeeze(1)
    W = int(max(int(words.max()) if words.numel() else 0, int(lab.max()))) + 1
    # pronunciations of each word, by word (CSR)
    order = torch.argsort(words, stable=True)
    per_word = torch.bincount(words, minlength=W)
    first = torch.cumsum(per_word, 0) - per_word
    n_pron = per_word[lab[word_arcs]]
    if bool((n_pron == 0).any()):
        missing = sorted(set(lab[word_arcs][n_pron == 0].tolist()))
        raise ValueError(f"{len(missing)} word id(s) of G have no pronunciation in the "
                         f"lexicon: {missing[:10]}")
    pair_arc = torch.repeat_interleave(word_arcs, n_pron)
    pair_pos = torch.arange(pair_arc.numel()) - torch.repeat_interleave(
        torch.cumsum(n_pron, 0) - n_pron, n_pron)
    pron = order[first[lab[pair_arc]] + pair_pos]
    L = plen[pron]
    S = G.num_states  # G's final state is S - 1; new states from S - 1, the final moves last
    inter_base = (S - 1) + torch.cumsum(L - 1, 0) - (L - 1)
    final = (S - 1) + int((L - 1).sum())
    pair = torch.repeat_interleave(torch.arange(pron.numel()), L)
    k = torch.arange(pair.numel()) - torch.repeat_interleave(torch.cumsum(L, 0) - L, L)
    tok_first = torch.cumsum(plen, 0) - plen
    a = pair_arc[pair]
    is_first, is_last = k == 0, k == L[pair] - 1
    c_src = torch.where(is_first, src[a], inter_base[pair] + k - 1)
    c_dst = torch.where(is_last, torch.where(dst[a] == S - 1, final, dst[a]),
                        inter_base[pair] + k)
    c_lab = toks[tok_first[pron[pair]] + k]
    c_aux = torch.where(is_first, lab[a], 0)
    g_scores = G.scores.detach().to(torch.float64)
    c_sc = torch.where(is_first, g_scores[a] + plogp[pron[pair]], 0.0)
    terms = G.lm_terms.long()
    c_terms = torch.where(is_first.unsqueeze(1), terms[a], torch.full_like(terms[a], -1))
    f = fin.nonzero().squeeze(1)
    out_arcs = torch.stack([torch.cat([c_src, src[f]]),
                            torch.cat([c_dst, torch.full_like(f, final)]),
                            torch.cat([c_lab, lab[f]])], 1).to(torch.int32)
    return Fsa(out_arcs, torch.cat([c_sc, g_scores[f]]).to(G.scores.dtype),
               num_states=final + 1, aux_labels=torch.cat([c_aux, lab[f]]).to(torch.int32),
               lm_terms=torch.cat([c_terms, terms[f]]))
