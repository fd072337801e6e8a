"""Relative-entropy pruning of back-off n-gram models (Stolcke 1998), as SRILM's ``-prune``.

A. Stolcke, "Entropy-based pruning of backoff language models", DARPA Broadcast News
Transcription and Understanding Workshop, 1998. Removing the explicit n-gram ``(h, w)`` of a
back-off model changes ``P(w|h)`` to ``a'(h) P(w|h')`` (``h'``: ``h`` without its first word)
and the back-off weight of ``h`` from ``a(h) = num(h) / den(h)`` to
``a'(h) = (num(h) + P(w|h)) / (den(h) + P(w|h'))``, where ``num(h) = 1 - sum P(v|h)`` and
``den(h) = 1 - sum P(v|h')`` over the explicit successors ``v`` of ``h``; every other
``P(v|h)`` is unchanged or (backed-off words) scaled by ``a'(h) / a(h)``. The relative entropy
``D(P || P')`` that this adds to the model, in nats, is

    D(h, w) = -P(h) * ( P(w|h) [ln P(w|h') + ln a'(h) - ln P(w|h)]
                        + num(h) [ln a'(h) - ln a(h)] )

with ``P(h)`` the history's marginal probability by the chain rule of the model's own
probabilities (``P(h1) P(h2|h1) ...``; a history starting with ``<s>`` takes ``<s>`` as given,
probability 1). Since the perplexity is ``exp`` of the entropy in nats, ``D`` is the log of the
relative perplexity increase (on text drawn from the model), ``~ (PP' - PP) / PP`` for a small
``D``; :func:`prune_ngram` removes every n-gram with ``D < threshold``, each judged alone on
the unpruned model, as Stolcke's criterion does.

:func:`prune_ngram` goes from the highest order down and never removes an n-gram that is the
context (prefix) of a kept higher-order one (ARPA's structural rule), then recomputes every
back-off weight so that each history's distribution sums to 1 again. The quantities that the
``D`` of order ``n`` needs (probabilities of orders <= ``n``, back-off weights of histories
shorter than ``n - 1``) are not changed by pruning the orders above, so all the ``D`` are computed
once (:func:`pruning_deltas`) on the model as given. All of it is vectorised with numpy
(sorted keys and ``searchsorted``, ``bincount`` per history): no loop over n-grams.
"""

from __future__ import annotations

import numpy as np

from wfst_asr.graphs.ngram import BOS, NgramModel

__all__ = ["check_pruning_args", "prune_ngram", "pruning_deltas", "recompute_backoffs"]

#: A back-off numerator/denominator at or below this is rounding noise: a numerator that small
#: (the explicit successors hold all the mass) gives the weight 10**-99, a denominator that
#: small (nothing left to back off to) the weight 1.
_TINY = 1e-12
_NO_MASS_LOG10 = -99.0
_LN10 = np.log(10.0)


class _NgramIndex:
    """Row look-up of a model's n-grams by word ids, vectorised.

    The n-grams of order ``n >= 2`` get the key ``row of the (n-1)-gram context * V + last
    word``; ``keys[n-1]`` holds them sorted and ``rows[n-1]`` their rows in the model;
    ``context[n-1]`` is the row of each n-gram's context in the order ``n-1`` arrays.
    """

    def __init__(self, model: NgramModel) -> None:
        self.vsize = np.int64(len(model.vocab))
        unigram_row = np.full(len(model.vocab), -1, np.int64)
        unigram_row[model.ngrams[0][:, 0]] = np.arange(model.counts[0])
        self.unigram_row = unigram_row
        self.keys: list[np.ndarray] = [np.zeros(0, np.int64)]
        self.rows: list[np.ndarray] = [np.zeros(0, np.int64)]
        self.context: list[np.ndarray] = [np.zeros(model.counts[0], np.int64)]
        for n in range(2, model.order + 1):
            ids = model.ngrams[n - 1].astype(np.int64)
            ctx = self.find(ids[:, :-1])
            if (ctx < 0).any():
                bad = ids[int(np.flatnonzero(ctx < 0)[0])]
                words = " ".join(model.vocab[i] for i in bad.tolist())
                raise ValueError(f"the {n}-gram {words!r} has no {n - 1}-gram context "
                                 f"{' '.join(words.split()[:-1])!r}: not a valid back-off model")
            key = ctx * self.vsize + ids[:, -1]
            perm = np.argsort(key, kind="stable")
            self.keys.append(key[perm])
            self.rows.append(perm)
            self.context.append(ctx)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Rows (in the order ``ids.shape[1]`` arrays) of the n-grams ``ids`` ``[k, n]``, -1 for
        the absent ones; ``n == 0`` gives 0 (the empty history)."""
        n = ids.shape[1]
        if n == 0:
            return np.zeros(ids.shape[0], np.int64)
        if n == 1:
            return self.unigram_row[ids[:, 0]]
        if n > len(self.keys):
            return np.full(ids.shape[0], -1, np.int64)
        ctx = self.find(ids[:, :-1])
        keys = self.keys[n - 1]
        if keys.size == 0:
            return np.full(ids.shape[0], -1, np.int64)
        key = ctx * self.vsize + ids[:, -1]
        pos = np.minimum(np.searchsorted(keys, key), keys.size - 1)
        return np.where((ctx >= 0) & (keys[pos] == key), self.rows[n - 1][pos], -1)


def _backoff_log10(model: NgramModel, index: _NgramIndex, bows: list[np.ndarray],
                   hist: np.ndarray, word: np.ndarray) -> np.ndarray:
    """log10 P(word | hist) by the ARPA back-off rule with the log10 back-off weights ``bows``
    (NaN: none), for ``hist`` ``[k, m]`` (``m < order``) and ``word`` ``[k]``."""
    m = hist.shape[1]
    out = np.zeros(word.shape[0])
    acc = np.zeros(word.shape[0])
    todo = np.ones(word.shape[0], bool)
    for start in range(m + 1):
        sub = hist[:, start:]
        rows = index.find(np.concatenate([sub, word[:, None]], axis=1))
        hit = todo & (rows >= 0)
        out[hit] = acc[hit] + model.log10_probs[m - start][rows[hit]]
        todo &= ~hit
        if start < m:
            hrow = index.find(sub)
            has = todo & (hrow >= 0)
            bow = bows[m - start - 1][hrow[has]]
            acc[has] += np.where(np.isnan(bow), 0.0, bow)
    if todo.any():  # pragma: no cover - every word has a unigram
        raise AssertionError("internal: a word without a unigram")
    return out


def _history_log10_marginals(model: NgramModel, index: _NgramIndex) -> list[np.ndarray]:
    """``out[k-1][r]``: log10 P(h) of the k-gram of row ``r`` as a history, by the chain rule of
    the model's explicit probabilities (every prefix of an n-gram is an n-gram); ``<s>``
    first: probability 1."""
    uni = model.log10_probs[0].copy()
    bos = model.vocab.index(BOS) if BOS in model.vocab else -1
    uni[model.ngrams[0][:, 0] == bos] = 0.0
    out = [uni]
    for n in range(2, model.order):
        out.append(out[-1][index.context[n - 1]] + model.log10_probs[n - 1])
    return out


def _successor_sums(model: NgramModel, index: _NgramIndex, bows: list[np.ndarray], n: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For the n-grams ``(h, w)`` of order ``n >= 2``: ``P(w|h)``, ``P(w|h')`` (back-off with
    ``bows``), and per (n-1)-gram history ``num = 1 - sum P(w|h)``, ``den = 1 - sum P(w|h')``
    over its explicit successors (1 for a history without any)."""
    ids = model.ngrams[n - 1].astype(np.int64)
    p = np.power(10.0, model.log10_probs[n - 1])
    q = np.power(10.0, _backoff_log10(model, index, bows, ids[:, 1:-1], ids[:, -1]))
    num_hist = model.counts[n - 2]
    num = 1.0 - np.bincount(index.context[n - 1], weights=p, minlength=num_hist)
    den = 1.0 - np.bincount(index.context[n - 1], weights=q, minlength=num_hist)
    return p, q, num, den


def check_pruning_args(threshold: float | None, min_order: int) -> None:
    """``ValueError`` unless ``threshold`` (None: not checked) is a finite number >= 0 and
    ``min_order >= 2`` (unigrams are never pruned)."""
    if threshold is not None and (not threshold >= 0 or not np.isfinite(threshold)):
        raise ValueError(f"the pruning threshold must be a finite number >= 0, got {threshold}")
    if min_order < 2:
        raise ValueError(f"min_order must be >= 2 (unigrams are never pruned), got {min_order}")


def pruning_deltas(model: NgramModel, min_order: int = 2) -> list[np.ndarray]:
    """Stolcke's relative-entropy increase ``D`` (nats) of removing each n-gram alone.

    Args:
      model: a back-off model (every n-gram's context an n-gram of the model).
      min_order: orders below it get NaN (not prunable); >= 2.

    Returns:
      ``deltas[n-1]``: float64 ``[M_n]``, ``D`` of each n-gram of order ``n`` (see the module
      docstring), NaN below ``min_order``.

    Raises:
      ValueError: ``min_order < 2``, or an n-gram whose context is not in the model.
    """
    check_pruning_args(None, min_order)
    return _deltas(model, _NgramIndex(model), min_order)


def _deltas(model: NgramModel, index: _NgramIndex, min_order: int) -> list[np.ndarray]:
    """:func:`pruning_deltas` with the model's index."""
    log10_ph = _history_log10_marginals(model, index)
    deltas = [np.full(m, np.nan) for m in model.counts]
    for n in range(min_order, model.order + 1):
        p, q, num, den = _successor_sums(model, index, model.backoffs, n)
        ctx = index.context[n - 1]
        num_h = np.maximum(num, 0.0)[ctx]
        den_h = np.maximum(den, _TINY)[ctx]
        # ln a'(h) and ln(a'(h) / a(h)) = ln(1 + p / num) - ln(1 + q / den)
        ln_alpha_new = np.log(num_h + p) - np.log(den_h + q)
        with np.errstate(divide="ignore"):
            ln_ratio = np.log1p(p / np.maximum(num_h, 1e-300)) - np.log1p(q / den_h)
        bo_term = np.where(num_h > 0, num_h * ln_ratio, 0.0)
        kl = p * (np.log(q) + ln_alpha_new - np.log(p)) + bo_term
        deltas[n - 1] = -np.power(10.0, log10_ph[n - 2][ctx]) * kl
    return deltas


def recompute_backoffs(model: NgramModel) -> NgramModel:
    """The model with every back-off weight recomputed, lowest order first, so that each
    history's ``P(.|h)`` sums to 1: ``bow(h) = (1 - sum P(w|h)) / (1 - sum P(w|h'))`` over the
    explicit successors ``w`` of ``h``; NaN (no ARPA field, weight 1) for a history without
    successors. A history whose successors hold all the mass (up to rounding) gets the weight
    ``10**-99``; one whose successors leave no lower-order mass to back off to, 1."""
    index = _NgramIndex(model)
    bows = [np.full(m, np.nan) for m in model.counts]
    for n in range(2, model.order + 1):
        _, _, num, den = _successor_sums(model, index, bows, n)
        has = np.bincount(index.context[n - 1], minlength=model.counts[n - 2]) > 0
        ok = has & (num > _TINY) & (den > _TINY)
        bow = np.where(den > _TINY, _NO_MASS_LOG10, 0.0)
        bow[ok] = np.log10(num[ok] / den[ok])
        bows[n - 2] = np.where(has, bow, np.nan)
    return NgramModel(vocab=list(model.vocab), ngrams=model.ngrams, log10_probs=model.log10_probs,
                      backoffs=bows, method=model.method, discounts=list(model.discounts))


def prune_ngram(model: NgramModel, threshold: float, min_order: int = 2) -> NgramModel:
    """Relative-entropy pruning (Stolcke 1998; SRILM's ``ngram -prune threshold``).

    Args:
      model: a back-off model (e.g. from :func:`~wfst_asr.graphs.ngram.estimate_ngram` or
        :func:`~wfst_asr.graphs.ngram.read_arpa`); not modified.
      threshold: remove the n-grams whose :func:`pruning_deltas` ``D`` is below it (``~`` the
        relative perplexity increase each removal alone causes; icefall's ``3-gram.pruned.1e-7``
        used ``1e-7``); ``0`` keeps everything.
      min_order: only n-grams of this order and above are pruned (SRILM's ``-minprune``).

    Returns:
      a new model: highest order first, an n-gram is removed iff ``D < threshold`` and it is not
      the context of a kept n-gram of the order above; back-off weights recomputed
      (:func:`recompute_backoffs`).

    Raises:
      ValueError: ``threshold < 0`` or not finite, ``min_order < 2``, or a model with an
        n-gram whose context is not in it.
    """
    check_pruning_args(threshold, min_order)
    keeps = [np.ones(m, bool) for m in model.counts]
    if threshold > 0:
        index = _NgramIndex(model)
        deltas = _deltas(model, index, min_order)
        for n in range(model.order, min_order - 1, -1):
            keep = deltas[n - 1] >= threshold
            if n < model.order:  # the context of a kept (n+1)-gram stays
                ctx = index.context[n][keeps[n]]
                keep |= np.bincount(ctx, minlength=model.counts[n - 1]) > 0
            keeps[n - 1] = keep
    pruned = NgramModel(vocab=list(model.vocab),
                        ngrams=[a[k] for a, k in zip(model.ngrams, keeps)],
                        log10_probs=[a[k] for a, k in zip(model.log10_probs, keeps)],
                        backoffs=[a[k] for a, k in zip(model.backoffs, keeps)],
                        method=model.method, discounts=list(model.discounts))
    return recompute_backoffs(pruned)
