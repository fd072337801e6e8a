"""Whole-lattice rescoring with a back-off n-gram queried on demand (large ARPA LMs).

:func:`~.rescore.rescore_lattice` composes the lattices with G built as an epsilon-free
acceptor (:func:`~wfst_asr.graphs.lm.ngram_acceptor`): (contexts x vocabulary) arcs, fine for
a phone LM, billions of arcs for a word 4-gram. Here the LM is never expanded (the idea of
Kaldi's ``lattice-lmrescore`` with a back-off on-demand FST): :class:`OnDemandNgram` has one
state per *context* (as in ``ngram_acceptor``: the longest suffix, at most order - 1 words, of
the history that is a proper prefix of an n-gram, an n-gram with a non-zero back-off weight or
empty) and its arcs are computed when asked for: ``ln P(word | context)`` with the ARPA
back-off rule and the next context. :func:`rescore_lattice_ngram` composes each lattice with it
on the words (arcs without a word keep the LM state), creating only the reachable
``(lattice state, context)`` pairs, and adds ``ln P(</s> | context)`` on the final arcs. The
result is what :func:`~.rescore.rescore_lattice` gives with ``ngram_acceptor`` (same paths,
same ``lm_scores``, ``am_scores``, labels, frames), up to the numbering of its states.

:func:`load_rescoring_lm` picks the path: an ARPA file whose acceptor could exceed
``max_acceptor_arcs`` becomes an :class:`OnDemandNgram`, anything else a G (:func:`load_g`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from wfst_asr.fsa import Fsa, SymbolTable
from wfst_asr.graphs.ngram import BOS, EOS, NgramModel, read_arpa

from .lattice import check_lattice
from .rescore import _lattice_from_arcs, compose_each, load_g

__all__ = ["DEFAULT_MAX_ACCEPTOR_ARCS", "OnDemandNgram", "acceptor_arcs_bound", "load_rescoring_lm",
           "rescore_lattice_ngram"]

#: above this bound on (contexts x vocabulary) arcs an ARPA LM is queried on demand.
DEFAULT_MAX_ACCEPTOR_ARCS = 2_000_000


class OnDemandNgram:
    """A back-off n-gram as a deterministic word acceptor whose arcs are computed on demand.

    States are integers, each a context (a tuple of LM word ids); :attr:`start` is the context
    of ``<s>``. :meth:`arc` and :meth:`final` give natural-log probabilities (log / tropical
    semiring *scores*, not costs) and are cached, so each ``(context, word)`` is looked up once.

    Args:
      model: the n-gram model (:func:`~wfst_asr.graphs.ngram.read_arpa`).
      words: the lattices' word table (``word -> id``); lattice words that are not LM words
        (``<s>``, ``</s>`` included) have no arc, as in G.
    """

    def __init__(self, model: NgramModel, words: SymbolTable | Mapping[str, int]) -> None:
        self.model = model
        ids = {w: int(i) for w, i in words.items()}
        size = max(ids.values(), default=0) + 1
        lm_of = np.full(size, -1, dtype=np.int64)
        for i, w in enumerate(model.vocab):
            if w not in (BOS, EOS) and w in ids and ids[w] >= 1:
                lm_of[ids[w]] = i
        #: lattice word id -> LM word id (-1: no arc)
        self.lm_of: list[int] = lm_of.tolist()
        self._eos = model.word_id(EOS)
        self._ctx: list[tuple[int, ...]] = []
        self._ctx_id: dict[tuple[int, ...], int] = {}
        self._arcs: dict[tuple[int, int], tuple[int, float]] = {}
        self._final: dict[int, float] = {}
        self.start = self._state(self.model.context((model.word_id(BOS),)))

    @property
    def num_contexts(self) -> int:
        """Number of contexts of the model (the states an expanded acceptor could have)."""
        return len(self.model.contexts())

    def _state(self, ctx: tuple[int, ...]) -> int:
        s = self._ctx_id.get(ctx)
        if s is None:
            s = self._ctx_id[ctx] = len(self._ctx)
            self._ctx.append(ctx)
        return s

    def arc(self, state: int, word: int) -> tuple[int, float] | None:
        """``(next state, ln P(word | state's context))`` for a lattice word id; None when the
        word is not an LM word."""
        got = self._arcs.get((state, word))
        if got is not None:
            return got
        w = self.lm_of[word] if 0 <= word < len(self.lm_of) else -1
        if w < 0:
            return None
        h = self._ctx[state]
        score = math.log(10.0) * self.model._log10_prob_ids(w, h)
        got = self._arcs[(state, word)] = (self._state(self.model.context(h + (w,))), score)
        return got

    def final(self, state: int) -> float:
        """``ln P(</s> | state's context)``."""
        got = self._final.get(state)
        if got is None:
            got = self._final[state] = \
                math.log(10.0) * self.model._log10_prob_ids(self._eos, self._ctx[state])
        return got


def _compose_one(one: Fsa, lm: OnDemandNgram) -> Fsa | None:
    """ONE lattice composed with the on-demand LM on its words (``aux_labels``; arcs with no
    word, <= 0, keep the LM state), connected; None when no path survives.

    States of the result: the reachable and co-reachable ``(lattice state, LM state)`` pairs,
    ordered by lattice state (so a topologically sorted lattice gives a topologically sorted
    result), the start pair first, plus a new final state (last) reached by one ``-1`` arc per
    pair whose lattice state has a final arc, scored ``ln P(</s> | context)``."""
    src, dst, lab = (one.arcs[:, k].tolist() for k in range(3))
    aux = one.aux_labels.tolist()
    leaving: dict[int, list[int]] = {}
    for a, q in enumerate(src):
        leaving.setdefault(q, []).append(a)
    start = (0, lm.start)
    pid = {start: 0}
    pairs = [start]
    e_src: list[int] = []
    e_dst: list[int] = []     # pair index, or -1: the final state
    e_arc: list[int] = []     # lattice arc, or -1 for a final arc
    e_lm: list[float] = []
    i = 0
    while i < len(pairs):
        q, s = pairs[i]
        has_final = False
        for a in leaving.get(q, ()):
            if lab[a] == -1:
                if not has_final:
                    has_final = True
                    e_src.append(i)
                    e_dst.append(-1)
                    e_arc.append(-1)
                    e_lm.append(lm.final(s))
                continue
            w = aux[a]
            if w <= 0:
                nxt, sc = (dst[a], s), 0.0
            else:
                got = lm.arc(s, w)
                if got is None:
                    continue
                nxt, sc = (dst[a], got[0]), got[1]
            j = pid.get(nxt)
            if j is None:
                j = pid[nxt] = len(pairs)
                pairs.append(nxt)
            e_src.append(i)
            e_dst.append(j)
            e_arc.append(a)
            e_lm.append(sc)
        i += 1
    # co-reachable pairs: backwards from the final arcs
    into: dict[int, list[int]] = {}
    alive = [False] * len(pairs)
    stack = []
    for k, (p, d) in enumerate(zip(e_src, e_dst)):
        if d < 0:
            if not alive[p]:
                alive[p] = True
                stack.append(p)
        else:
            into.setdefault(d, []).append(p)
    while stack:
        d = stack.pop()
        for p in into.get(d, ()):
            if not alive[p]:
                alive[p] = True
                stack.append(p)
    if not alive[0]:
        return None
    kept = sorted((k for k in range(len(pairs)) if alive[k]),
                  key=lambda k: (k != 0, pairs[k][0], k))
    new_id = [-1] * len(pairs)
    for n, k in enumerate(kept):
        new_id[k] = n
    final = len(kept)
    rows = [(new_id[p], final if d < 0 else new_id[d], a, sc)
            for p, d, a, sc in zip(e_src, e_dst, e_arc, e_lm)
            if alive[p] and (d < 0 or alive[d])]
    rows.sort(key=lambda r: r[0])  # stable: arcs of a state keep the lattice's order
    sd = torch.tensor([r[:2] for r in rows], dtype=torch.int64).reshape(-1, 2)
    src_arc = torch.tensor([r[2] for r in rows], dtype=torch.int64)
    words = one.aux_labels[src_arc.clamp(min=0)]
    scores = torch.tensor([r[3] for r in rows], dtype=torch.float32)
    return _lattice_from_arcs(one, src_arc, sd, final + 1, words, scores)


def rescore_lattice_ngram(lattice: Fsa, lm: OnDemandNgram, lm_scale: float | None = None,
                          word_penalty: float | None = None) -> Fsa:
    """Whole-lattice rescoring with an n-gram queried on demand: the old ``lm_scores`` are
    replaced by ``ln P`` of the path's words (``</s>`` included) under ``lm``.

    Args:
      lattice: lattices (FsaVec or one), words in ``aux_labels`` over ``lm``'s word table.
      lm: the LM (:class:`OnDemandNgram`, over the lattices' word table).
      lm_scale, word_penalty: weights of the rescored lattice's ``scores``; default: the
        lattice's own.

    Returns:
      An FsaVec, as :func:`~.rescore.rescore_lattice` with G = ``ngram_acceptor`` of the same
      model gives: paths = the lattice's paths all of whose words are LM words, ``lm_scores`` =
      the LM's natural-log probabilities along them, ``am_scores``, labels and frames
      unchanged; ``scores = lm_scale * lm_scores - word_penalty * [word] + am_scores``. A
      lattice with no such path gives an empty FSA.
    """
    lat = lattice.as_vec().detach().to("cpu")
    check_lattice(lat)
    return compose_each(lat, lambda one: _compose_one(one, lm), lm_scale, word_penalty)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def acceptor_arcs_bound(model: NgramModel) -> int:
    """An upper bound of the arcs of ``ngram_acceptor(model)``: (1 + the n-grams below the
    highest order, each a possible context) x (vocabulary size - 1)."""
    return (1 + sum(model.counts[:-1])) * max(len(model.vocab) - 1, 1)


def load_rescoring_lm(path: str | os.PathLike, words: SymbolTable | str | os.PathLike,
                      max_acceptor_arcs: int = DEFAULT_MAX_ACCEPTOR_ARCS,
                      ) -> Fsa | OnDemandNgram:
    """The new LM for whole-lattice rescoring: an :class:`OnDemandNgram` for an ARPA file
    whose acceptor could exceed ``max_acceptor_arcs`` arcs (:func:`acceptor_arcs_bound`),
    else G as :func:`~.rescore.load_g` makes it (a ``.pt`` / OpenFst G file included)."""
    p = Path(path)
    table = words if isinstance(words, SymbolTable) else SymbolTable.from_file(words)
    if p.suffix == ".arpa" and p.is_file():
        model = read_arpa(p)
        if acceptor_arcs_bound(model) > max_acceptor_arcs:
            return OnDemandNgram(model, table)
    return load_g(p, words=table)
