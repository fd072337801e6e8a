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

Graphs: :func:`lexicon_lm_graph` is ``L o G`` of a word n-gram as a token acceptor (a prefix
tree of pronunciations per LM context, the word and its n-gram term on the last arc, back-off
through copies of the lower-order trees' first arcs); :func:`ctc_lm_graph` is ``H o G`` (or
``H o L o G``) for CTC. Neither is determinized, so every arc keeps the LM terms it sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from wfst_asr.fsa import Fsa

from .ngram import BOS, EOS, NgramModel
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
      graph: an Fsa (or FsaVec) with the per-arc attribute ``lm_terms`` ``[A, K]`` whose
        scores hold the LM at scale 1, as the builders here give them: ``base + lm(lm_terms)``
        with ``lm``'s initial values, which fixes ``base`` (the topology's, the lexicon's).
      lm: the LM's parameters.
      lm_scale: the LM weight (as at decoding): ``forward`` scales the LM part by it.
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
        self.register_buffer("base", graph.scores.detach().to(torch.float64) - lm_part,
                             persistent=False)

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
                                 arc_map=True, share_token_states=True)
    src = g.arc_map
    terms = G.lm_terms[src.clamp(min=0)]
    g.lm_terms = torch.where((src >= 0).unsqueeze(1), terms, torch.full_like(terms, -1))
    return g[0] if not G.is_vec else g


def lexicon_lm_graph(lm: NgramModel, words: Mapping[str, int],
                     lexicon: Sequence[tuple[int, Sequence[int], float]]) -> Fsa:
    """``L o G`` of a back-off word n-gram as an epsilon-free token acceptor with ``lm_terms``
    (for :func:`ctc_lm_graph`), of a size that grows with the n-grams, not the vocabulary.

    One state per context of ``lm`` (:meth:`NgramModel.contexts`; the start is ``<s>``'s), the
    root of a prefix tree of the pronunciations of the words seen after it: the last arc of a
    word's pronunciation holds the word (``aux_labels``), the n-gram's probability
    (``lm_terms``) and the pronunciation's log-probability, and goes to the context of the
    history plus that word. Back-off, as G's epsilon arcs to the lower-order state, without
    epsilons: every context also has a copy of the first arcs of each lower-order context's
    tree (of its suffixes), with the back-off weights passed on its ``lm_terms``. Final arcs:
    ``</s>`` with the exact back-off rule.

    LM look-ahead: a tree node's potential is the best score of the words below it (0 at the
    context states); every tree arc's score is shifted by the potential of its end minus that
    of its start, so along a whole word the shifts cancel and every path keeps its score, while
    a pruned search sees a word's LM cost from its first token on (without it, a search beam
    below the LM costs of the words ends mid-word).

    Semiring: as G with back-off arcs (Kaldi's), a word seen after a history keeps its backed-off
    paths too, so in the log semiring the graph's total for a sentence exceeds the LM's
    probability by those paths' mass (the back-off weight times the lower-order probability);
    the best path (tropical) is the ARPA score when the direct n-gram is the larger, as it is
    for smoothed models. Back-off weights stay one parameter each, shared by every copy.

    Args:
      lm: the word n-gram.
      words: ``word -> id`` of the graph's ``aux_labels`` (ids >= 1).
      lexicon: ``(word id, token ids (>= 1), log-probability)`` per pronunciation.

    Returns:
      A single Fsa (its final state last): labels = tokens, ``aux_labels`` = word ids or 0,
      ``lm_terms`` ``[A, lm.order]`` (indices into :meth:`NgramModel.param_values`, -1 pad).

    Raises:
      ValueError: an LM word outside ``words`` or without a pronunciation (the LM's
        vocabulary must be the lexicon's), or a pronunciation with a token < 1.
    """
    prons: dict[int, list[tuple[tuple[int, ...], float]]] = {}
    for w, p, lp in lexicon:
        toks = tuple(int(t) for t in p)
        if not toks or min(toks) < 1:
            raise ValueError(f"word id {w}: a pronunciation needs tokens >= 1 (0 is blank), "
                             f"got {list(toks)}")
        prons.setdefault(int(w), []).append((toks, float(lp)))
    bos, eos = lm.word_id(BOS), lm.word_id(EOS)
    wid = [0] * len(lm.vocab)
    no_id, no_pron = [], []
    for i, w in enumerate(lm.vocab):
        if i in (bos, eos):
            continue
        if w not in words or int(words[w]) < 1:
            no_id.append(w)
        elif int(words[w]) not in prons:
            no_pron.append(w)
        else:
            wid[i] = int(words[w])
    if no_id:
        raise ValueError(f"{len(no_id)} LM word(s) are not in the word table: {no_id[:10]}")
    if no_pron:
        raise ValueError(f"{len(no_pron)} LM word(s) have no pronunciation in the lexicon: "
                         f"{no_pron[:10]}")
    values = lm.param_values()
    prob_first = lm.param_offsets()[0]
    ln10, K = math.log(10.0), lm.order
    state: dict[tuple[int, ...], int] = {lm.context((bos,)): 0}
    for h in sorted(lm.contexts(), key=lambda c: (len(c), c)):
        state.setdefault(h, len(state))
    num_states = len(state)
    src, dst, lab, aux, sc, tm = [], [], [], [], [], []
    pad = [-1] * K

    def arc(s: int, d: int, t: int, w: int, score: float, terms: list[int]) -> None:
        src.append(s)
        dst.append(d)
        lab.append(t)
        aux.append(w)
        sc.append(score)
        tm.append(terms + pad[len(terms):])

    first_arcs: dict[int, list[int]] = {}  # context state -> its tree's first arcs
    child: dict[tuple[int, int], int] = {}  # (tree node, token) -> tree node
    for n, grams in enumerate(lm.ngrams):
        for row, g in enumerate(grams.tolist()):
            h, w = tuple(g[:-1]), g[-1]
            if w in (bos, eos) or h not in state:
                continue
            root, nxt = state[h], state[lm.context(g)]
            lp = ln10 * float(values[prob_first[n] + row])
            for toks, plp in prons[wid[w]]:
                node = root
                for t in toks[:-1]:
                    key = (node, t)
                    if key not in child:  # a prefix tree per context: shared by its words
                        child[key] = num_states
                        num_states += 1
                        if node == root:
                            first_arcs.setdefault(root, []).append(len(src))
                        arc(node, child[key], t, 0, 0.0, [])
                    node = child[key]
                if node == root:
                    first_arcs.setdefault(root, []).append(len(src))
                arc(node, nxt, toks[-1], wid[w], lp + plp, [prob_first[n] + row])
    _look_ahead(src, dst, aux, sc, len(state))
    # back-off: the first arcs of every lower-order context, through the back-off weights
    for h, s in state.items():
        chain, cur = [], h
        while cur:
            bow = lm.backoff_index(cur)
            if bow is not None:
                chain.append(bow)
            cur = lm.context(cur[1:])
            bw = ln10 * sum(float(values[k]) for k in chain)
            for a in first_arcs.get(state[cur], []):
                arc(s, dst[a], lab[a], aux[a], sc[a] + bw, chain + [k for k in tm[a] if k >= 0])
    final = num_states
    for h, s in state.items():
        terms = lm.backoff_terms(eos, h)
        arc(s, final, -1, -1, ln10 * sum(float(values[k]) for k in terms), terms)
    arcs = torch.tensor([src, dst, lab], dtype=torch.int64).T
    order = torch.argsort(arcs[:, 0], stable=True)
    return Fsa(arcs[order].to(torch.int32),
               torch.tensor(sc, dtype=torch.float64)[order].to(torch.float32),
               num_states=final + 1,
               aux_labels=torch.tensor(aux, dtype=torch.int32)[order],
               lm_terms=torch.tensor(tm, dtype=torch.int64)[order])


def _look_ahead(src: list[int], dst: list[int], aux: list[int], sc: list[float],
                num_roots: int) -> None:
    """Shift the scores ``sc`` of the tree arcs (in place) by ``phi(dst) - phi(src)``: ``phi``
    = 0 at the roots (states ``< num_roots``), else the best score of a word-final arc below
    (children are numbered after their parents, arcs made parent first)."""
    best: dict[int, float] = {}
    for a in range(len(src)):  # word-final arcs
        if aux[a] > 0 and src[a] >= num_roots:
            best[src[a]] = max(best.get(src[a], -math.inf), sc[a])
    for a in reversed(range(len(src))):  # inner arcs, deepest first
        if aux[a] == 0:
            best[src[a]] = max(best.get(src[a], -math.inf), best[dst[a]])
    for a in range(len(src)):
        phi_src = best[src[a]] if src[a] >= num_roots else 0.0
        phi_dst = best[dst[a]] if dst[a] >= num_roots else 0.0
        sc[a] += phi_dst - phi_src
