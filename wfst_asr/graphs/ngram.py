"""Back-off n-gram language models: estimation and ARPA files.

* :func:`estimate_ngram` -- interpolated modified Kneser-Ney (Chen & Goodman 1998, with the
  discounts estimated per order from counts-of-adjusted-counts as in KenLM's lmplz) or
  interpolated Witten-Bell, any order >= 1, written in back-off (ARPA) form;
* :class:`NgramModel` -- the model as numpy arrays, with :meth:`NgramModel.write_arpa` (atomic)
  and back-off look-ups (:meth:`NgramModel.log10_prob`, :meth:`NgramModel.sentence_log10_prob`);
* :func:`read_arpa` -- a strict ARPA reader (malformed or truncated file: ``ValueError`` naming
  the file and line).

Why our own estimator (surveyed Nov. 2025 on PyPI, CPython 3.11): ``kenlm`` ships only the query
side (no ``lmplz``); ``nltk.lm`` does not write ARPA; ``arpa`` only reads/writes; ``pynini`` /
OpenGrm have no 3.11 PyPI wheel; ``arpabo`` 0.3.0 is pure Python over nested dicts of strings
and its "kneser_ney" is absolute discounting with a fixed D=0.75 and back-off weights, not
interpolated modified KN; ``kaldingram`` 0.1.2 (alpha) ports Kaldi's make_kn_lm.py: back-off,
*unmodified* KN only, no Witten-Bell, per-history Python objects. None gives interpolated
modified KN / Witten-Bell with numpy-level speed, so this module implements them (about
300 lines, vectorised with numpy sorting; no per-history loops).

Conventions (ARPA, as SRILM/KenLM/Kaldi):

* every sentence is ``<s> w1 ... wk </s>``; ``<s>`` is only a history (log10 prob ``-99`` in the
  1-gram section), ``</s>`` only predicted; they may not occur inside a sentence;
* values are log10 probabilities and log10 back-off weights; ``P(w|h)`` of an n-gram absent from
  the model is ``bow(h) + P(w|h[1:])`` in log10 (``bow(h) = 0`` when ``h`` is absent);
* the predicted vocabulary is every word of the model except ``<s>``, ``</s>`` included; the
  unigram distribution is interpolated with the uniform one over it, so words given in
  ``vocab`` but never seen get a (small) probability;
* for every history ``h`` the probabilities ``P(w|h)`` over the predicted vocabulary sum to 1
  (up to the 7 significant digits written to the ARPA file).

Modified Kneser-Ney, order ``N``: the counts ``a`` of the highest order are the raw counts; those
of order ``n < N`` are continuation counts (the number of distinct words seen before the n-gram),
except for n-grams starting with ``<s>``, which keep their raw counts. For each order,
``D1, D2, D3+ = k - (k+1) Y n_{k+1} / n_k`` with ``Y = n1 / (n1 + 2 n2)`` and ``n_k`` the number of
n-grams with ``a == k``; when some ``n_k`` (k=1..4) is 0 or a discount falls outside ``(0, k]``
(tiny corpora), ``discount_fallback`` is used instead, as KenLM's ``--discount_fallback``. Then
``P(w|h) = (a(hw) - D(a(hw))) / a(h*) + gamma(h) P(w|h[1:])`` and
``gamma(h) = (D1 N1(h*) + D2 N2(h*) + D3+ N3+(h*)) / a(h*)`` is h's back-off weight.

Witten-Bell: raw counts at every order, ``P(w|h) = (c(hw) + T(h) P(w|h[1:])) / (c(h*) + T(h))``
with ``T(h)`` the number of distinct words seen after ``h``; back-off weight
``T(h) / (c(h*) + T(h))``.
"""

from __future__ import annotations

import math
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from wfst_asr.atomic import atomic_output, iter_text_lines

__all__ = ["BOS", "EOS", "NgramModel", "Perplexity", "estimate_ngram", "perplexity", "read_arpa"]

BOS = "<s>"
EOS = "</s>"
#: log10 probability written for ``<s>`` (never predicted), as SRILM and Kaldi do.
BOS_LOG10_PROB = -99.0
_METHODS = {"kneser_ney": "kneser_ney", "kn": "kneser_ney", "witten_bell": "witten_bell",
            "wb": "witten_bell"}
PathLike = str | os.PathLike


# ---------------------------------------------------------------------------- the model
@dataclass
class NgramModel:
    """A back-off n-gram model held as numpy arrays.

    Attributes:
      vocab: ``vocab[i]`` is the word with id ``i`` (``<s>`` and ``</s>`` included).
      ngrams: ``ngrams[n-1]`` int32 ``[M_n, n]``: the word ids of the n-grams of order ``n``.
      log10_probs: ``log10_probs[n-1]`` float64 ``[M_n]``: log10 P(last word | the others).
      backoffs: ``backoffs[n-1]`` float64 ``[M_n]``: log10 back-off weights, NaN where the ARPA
        line has none (always NaN for the highest order).
      method: ``"kneser_ney"``, ``"witten_bell"`` or None (read from a file).
      discounts: KN only: ``discounts[n-1] = (D1, D2, D3+)`` used for order ``n``.
    """

    vocab: list[str]
    ngrams: list[np.ndarray]
    log10_probs: list[np.ndarray]
    backoffs: list[np.ndarray]
    method: str | None = None
    discounts: list[tuple[float, float, float]] = field(default_factory=list)
    _index: list[dict[tuple[int, ...], int]] | None = field(default=None, repr=False)
    _word_ids: dict[str, int] | None = field(default=None, repr=False)
    _values: np.ndarray | None = field(default=None, repr=False)
    _offsets: tuple[list[int], list[int]] | None = field(default=None, repr=False)
    _contexts: set[tuple[int, ...]] | None = field(default=None, repr=False)

    @property
    def order(self) -> int:
        """The highest n-gram order."""
        return len(self.ngrams)

    @property
    def counts(self) -> list[int]:
        """Number of n-grams of each order (the ARPA ``ngram n=`` lines)."""
        return [int(a.shape[0]) for a in self.ngrams]

    def word_id(self, word: str) -> int:
        """The id of ``word``; ``KeyError`` if it is not in the vocabulary."""
        if self._word_ids is None:
            self._word_ids = {w: i for i, w in enumerate(self.vocab)}
        return self._word_ids[word]

    def contexts(self) -> set[tuple[int, ...]]:
        """The histories that can change a prediction (tuples of word ids): the empty one, every
        proper prefix of an n-gram, and every n-gram below the top order with a non-zero
        back-off weight. Any other history predicts as its longest suffix in this set."""
        if self._contexts is None:
            contexts: set[tuple[int, ...]] = {()}
            for n, (grams, bows) in enumerate(zip(self.ngrams, self.backoffs), start=1):
                for k in range(1, min(n, self.order)):
                    contexts.update(map(tuple, np.unique(grams[:, :k], axis=0).tolist()))
                if n < self.order:
                    keep = ~np.isnan(bows) & (bows != 0.0)
                    contexts.update(map(tuple, grams[keep].tolist()))
            self._contexts = contexts
        return self._contexts

    def context(self, hist: Sequence[int]) -> tuple[int, ...]:
        """The state of history ``hist`` (word ids): its longest suffix of at most
        ``order - 1`` words that is one of :meth:`contexts`."""
        contexts, keep = self.contexts(), max(self.order - 1, 0)
        h = tuple(hist)
        h = h[len(h) - keep:] if keep else ()
        while h not in contexts:
            h = h[1:]
        return h

    def _lookup(self) -> list[dict[tuple[int, ...], int]]:
        if self._index is None:
            self._index = [{tuple(r): i for i, r in enumerate(a.tolist())} for a in self.ngrams]
        return self._index

    def log10_prob(self, word: str, history: Sequence[str] = ()) -> float:
        """log10 P(word | history) with ARPA back-off (only the last order-1 words count).

        Raises ``KeyError`` for a word outside the vocabulary.
        """
        ids = [self.word_id(w) for w in history][max(0, len(history) - self.order + 1):]
        return self._log10_prob_ids(self.word_id(word), tuple(ids))

    def _log10_prob_ids(self, w: int, hist: tuple[int, ...]) -> float:
        values = self.param_values()
        total = 0.0
        for k in self.backoff_terms(w, hist):
            total += float(values[k])
        return total

    def param_offsets(self) -> tuple[list[int], list[int]]:
        """Where each order's values start in :meth:`param_values`: (log10 probs of order
        ``n`` at ``[0][n-1]``, back-off weights of order ``n`` at ``[1][n-1]``)."""
        if self._offsets is None:  # cached: every back-off look-up needs them
            counts = self.counts
            prob_first = [sum(counts[:n]) for n in range(self.order)]
            self._offsets = (prob_first, [sum(counts) + p for p in prob_first])
        return self._offsets

    def param_values(self) -> np.ndarray:
        """Every log10 value of the model, float64 ``[2 * sum(counts)]``: the probabilities of
        all orders, then the back-off weights of all orders (NaN where there is none)."""
        if self._values is None:
            self._values = np.concatenate(list(self.log10_probs) + list(self.backoffs))
        return self._values

    def backoff_index(self, hist: tuple[int, ...]) -> int | None:
        """Where the back-off weight of history ``hist`` (word ids, non-empty) is in
        :meth:`param_values`; None when the ARPA file gives it none (weight 1)."""
        row = self._lookup()[len(hist) - 1].get(hist)
        if row is None or math.isnan(self.backoffs[len(hist) - 1][row]):
            return None
        return self.param_offsets()[1][len(hist) - 1] + row

    def backoff_terms(self, w: int, hist: tuple[int, ...]) -> list[int]:
        """The ARPA back-off rule for ``log10 P(w | hist)`` as indices into
        :meth:`param_values` whose sum it is: the back-off weights of the histories left,
        longest first, then the probability of the n-gram found."""
        index = self._lookup()
        prob_first = self.param_offsets()[0]
        terms = []
        for start in range(len(hist) + 1):
            h = hist[start:]
            row = index[len(h)].get(h + (w,))
            if row is not None:
                return terms + [prob_first[len(h)] + row]
            bow = self.backoff_index(h) if h else None
            if bow is not None:
                terms.append(bow)
        raise KeyError(f"{self.vocab[w]!r} has no unigram")  # pragma: no cover

    def sentence_log10_prob(self, words: Sequence[str], eos: bool = True) -> float:
        """log10 P(words [</s>] | <s>): the sum of the back-off log10 probabilities."""
        seq = [self.word_id(BOS)] + [self.word_id(w) for w in words]
        if eos:
            seq.append(self.word_id(EOS))
        total = 0.0
        for i in range(1, len(seq)):
            total += self._log10_prob_ids(seq[i], tuple(seq[max(0, i - self.order + 1):i]))
        return total

    def truncated(self, order: int) -> NgramModel:
        """The model without the n-grams above ``order`` (and without the back-off weights of
        the ``order``-grams). Still normalised when every order's distributions are, as with
        :func:`estimate_ngram` (interpolated models)."""
        if not 1 <= order <= self.order:
            raise ValueError(f"order must be in 1..{self.order}, got {order}")
        bows = self.backoffs[:order]
        bows[-1] = np.full(bows[-1].shape, np.nan)
        return NgramModel(vocab=list(self.vocab), ngrams=self.ngrams[:order],
                          log10_probs=self.log10_probs[:order], backoffs=bows,
                          method=self.method, discounts=self.discounts[:order])

    def write_arpa(self, path: PathLike) -> None:
        """Write the model as an ARPA file, atomically (temp file in the same folder, then
        ``os.replace``). Values are written with 7 significant digits; fields are separated by
        tabs and the words of an n-gram by spaces."""
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            f.writelines(f"ngram {n}={m}\n" for n, m in enumerate(self.counts, start=1))
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                f.writelines(self._arpa_lines(n))
            f.write("\n\\end\\\n")

    def _arpa_lines(self, n: int, chunk: int = 100_000) -> Iterator[str]:
        """The lines of the n-gram section, built ``chunk`` n-grams at a time."""
        vocab = np.array(self.vocab, dtype=object)
        for start in range(0, self.ngrams[n - 1].shape[0], chunk):
            words = vocab[self.ngrams[n - 1][start:start + chunk]]
            text = words[:, 0]
            for k in range(1, n):
                text = text + " " + words[:, k]
            probs = self.log10_probs[n - 1][start:start + chunk].tolist()
            bows = self.backoffs[n - 1][start:start + chunk].tolist()
            yield "".join(f"{p:.7g}\t{t}\n" if math.isnan(b) else f"{p:.7g}\t{t}\t{b:.7g}\n"
                          for p, t, b in zip(probs, text.tolist(), bows))


# ---------------------------------------------------------------------------- estimation
@dataclass
class Perplexity:
    """Perplexity of a model on a text, SRILM's way: OOV words (outside the model) are not
    predicted and start a new history; ``</s>`` is predicted."""

    sentences: int
    words: int
    oovs: int
    log10_prob: float

    @property
    def predicted(self) -> int:
        return self.words - self.oovs + self.sentences

    @property
    def ppl(self) -> float:
        return 10 ** (-self.log10_prob / max(self.predicted, 1))

    @property
    def oov_rate(self) -> float:
        return self.oovs / max(self.words, 1)


def perplexity(model: NgramModel, sentences: Iterable[Sequence[str]]) -> Perplexity:
    """:class:`Perplexity` of ``model`` on ``sentences`` (lists of words)."""
    if model._word_ids is None:
        model._word_ids = {w: i for i, w in enumerate(model.vocab)}
    ids = model._word_ids
    n_sent = n_words = n_oov = 0
    total = 0.0
    for words in sentences:
        n_sent += 1
        hist: list[int] = [ids[BOS]]
        for k, w in enumerate([*words, EOS]):
            is_eos = k == len(words)
            n_words += not is_eos
            i = ids.get(w)
            if not is_eos and (i is None or w in (BOS, EOS)):
                n_oov += 1
                hist = []
                continue
            total += model._log10_prob_ids(i, tuple(hist[max(0, len(hist) - model.order + 1):]))
            hist.append(i)
    return Perplexity(n_sent, n_words, n_oov, total)


def estimate_ngram(sentences: Iterable[Sequence[str]], order: int,
                   method: str = "kneser_ney", vocab: Sequence[str] | None = None,
                   unk: str | None = None,
                   discount_fallback: tuple[float, float, float] = (0.5, 1.0, 1.5),
                   ) -> NgramModel:
    """Estimate a back-off n-gram model of order ``order`` from tokenised sentences.

    Args:
      sentences: each a sequence of words (without ``<s>`` / ``</s>``).
      order: the highest n-gram order (>= 1).
      method: ``"kneser_ney"`` (``"kn"``: interpolated modified Kneser-Ney) or
        ``"witten_bell"`` (``"wb"``: interpolated Witten-Bell).
      vocab: if given, the vocabulary: all its words get a unigram, seen or not; a sentence word
        outside it becomes ``unk`` (which must be in ``vocab``) or, without ``unk``, is a
        ``ValueError``. Default: the words seen. ``<s>`` / ``</s>`` in it are ignored.
      unk: see ``vocab``.
      discount_fallback: KN discounts used for an order whose counts-of-counts cannot give valid
        ones (see the module docstring).

    Returns:
      the model; its vocabulary is ``<s>``, ``</s>``, then the words (vocab order, or sorted).

    Raises:
      ValueError: bad order/method, a word outside ``vocab``, ``<s>``/``</s>`` in a sentence.
      TypeError: a sentence given as a str (pass ``line.split()``).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    method = _METHODS[method]
    tokens, words = _encode(sentences, vocab, unk)
    num_words = len(words)
    tables = _count_tables(tokens, order, num_words)
    if method == "kneser_ney":
        counts = _kn_counts(tables, order)
    else:
        counts = [t.raw.copy() for t in tables]
        counts[0][0] = 0  # <s> is never predicted
    probs, bows, discounts = _smooth(tables, counts, method, num_words, discount_fallback)
    ngrams = [_ngram_words(tables, n) for n in range(1, order + 1)]
    log10p = []
    for p in probs:
        with np.errstate(divide="ignore"):
            lp = np.log10(p)
        lp[p <= 0] = BOS_LOG10_PROB
        log10p.append(lp)
    return NgramModel(vocab=words, ngrams=ngrams, log10_probs=log10p, backoffs=bows,
                      method=method, discounts=discounts)


def _encode(sentences: Iterable[Sequence[str]], vocab: Sequence[str] | None,
            unk: str | None) -> tuple[np.ndarray, list[str]]:
    """All sentences as one int64 array ``<s> ids </s> <s> ...`` and the id -> word list."""
    ids: dict[str, int] = {BOS: 0, EOS: 1}
    closed = vocab is not None
    if closed:
        for w in vocab:
            if w not in ids:
                ids[w] = len(ids)
        if unk is not None and unk not in ids:
            raise ValueError(f"unk word {unk!r} is not in vocab")
    buf = array("q")
    get = ids.get if closed else None
    unk_id = ids.get(unk, -1) if unk is not None else -1
    for k, sent in enumerate(sentences):
        if isinstance(sent, str):
            raise TypeError(f"sentence {k} is a str; pass a sequence of words (str.split())")
        if closed:
            row = [get(w, unk_id) for w in sent]
        else:
            row = [ids.setdefault(w, len(ids)) for w in sent]
        if row and (min(row) <= 1):
            bad = next(w for w, i in zip(sent, row) if i <= 1)
            why = "not in vocab (and no unk)" if bad not in ids else "reserved: added by the LM"
            raise ValueError(f"sentence {k}: word {bad!r} is {why}")
        buf.append(0)
        buf.extend(row)
        buf.append(1)
    tokens = np.frombuffer(buf, dtype=np.int64).copy() if len(buf) else np.zeros(0, np.int64)
    words = list(ids)
    if not closed:  # sort the words (after <s> and </s>) for a stable, readable ARPA
        perm = np.argsort(np.array(words[2:], dtype=object), kind="stable") + 2
        new_id = np.empty(len(words), np.int64)
        new_id[:2] = (0, 1)
        new_id[perm] = np.arange(2, len(words))
        tokens = new_id[tokens]
        words = words[:2] + [words[i] for i in perm.tolist()]
    return tokens, words


@dataclass
class _Table:
    """The distinct n-grams of one order, sorted by ``key = prefix * V + last``.

    ``prefix`` / ``suffix``: row of the (n-1)-gram without the last / first word (order n-1
    table; for n == 1 prefix is 0 and suffix unused); ``first``: first word id; ``raw``: count.
    """

    key: np.ndarray
    prefix: np.ndarray
    suffix: np.ndarray
    first: np.ndarray
    raw: np.ndarray


def _count_tables(tokens: np.ndarray, order: int, num_words: int) -> list[_Table]:
    """Count every n-gram (n = 1..order) inside a sentence; unigrams: the whole vocabulary."""
    vsize = np.int64(num_words)
    words = np.arange(num_words, dtype=np.int64)
    raw1 = np.bincount(tokens, minlength=num_words).astype(np.int64)
    tables = [_Table(words, np.zeros(num_words, np.int64), words, words, raw1)]
    eos_pos = np.flatnonzero(tokens == 1)
    # tokens before the sentence's </s>: a window of length n at i fits iff room[i] >= n - 1
    room = eos_pos[np.searchsorted(eos_pos, np.arange(tokens.size))] - np.arange(tokens.size) \
        if tokens.size else np.zeros(0, np.int64)
    occ = tokens  # row (in the previous table) of the (n-1)-gram starting at each position
    for n in range(2, order + 1):
        valid = np.flatnonzero(room >= n - 1)
        keys = occ[valid] * vsize + tokens[valid + n - 1]
        uniq, inv, raw = np.unique(keys, return_inverse=True, return_counts=True)
        prev = tables[-1]
        prefix, last = uniq // vsize, uniq % vsize
        if n == 2:
            suffix = last
        else:
            skey = prev.suffix[prefix] * vsize + last
            suffix = np.searchsorted(prev.key, skey)
            if not np.array_equal(prev.key[np.minimum(suffix, prev.key.size - 1)], skey):
                raise AssertionError("internal: an n-gram suffix is missing")  # pragma: no cover
        tables.append(_Table(uniq, prefix, suffix, prev.first[prefix], raw.astype(np.int64)))
        new_occ = np.full(tokens.size, -1, np.int64)
        new_occ[valid] = inv.reshape(-1)
        occ = new_occ
    return tables


def _kn_counts(tables: list[_Table], order: int) -> list[np.ndarray]:
    """KN adjusted counts: continuation counts below the top order, raw for ``<s> ...``."""
    counts = []
    for n in range(1, order + 1):
        t = tables[n - 1]
        if n == order:
            counts.append(t.raw.copy())
            continue
        cont = np.bincount(tables[n].suffix, minlength=t.key.size).astype(np.int64)
        bos = t.first == 0
        cont[bos] = t.raw[bos]
        counts.append(cont)
    counts[0][0] = 0  # <s> is never predicted
    return counts


def _kn_discounts(counts: np.ndarray, fallback: tuple[float, float, float]
                  ) -> tuple[float, float, float]:
    """Modified KN discounts (D1, D2, D3+) from counts-of-counts, or ``fallback``."""
    cc = np.bincount(np.minimum(counts[counts > 0], 5), minlength=6)
    n1, n2, n3, n4 = (int(x) for x in cc[1:5])
    if min(n1, n2, n3, n4) == 0:
        return fallback
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if not all(0 < dk <= k for k, dk in enumerate(d, start=1)):
        return fallback
    return d


def _smooth(tables: list[_Table], counts: list[np.ndarray], method: str, num_words: int,
            fallback: tuple[float, float, float]
            ) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[float, float, float]]]:
    """Interpolated probabilities (not log) per order, log10 back-offs, KN discounts."""
    probs: list[np.ndarray] = []
    bows = [np.full(t.key.size, np.nan) for t in tables]
    discounts: list[tuple[float, float, float]] = []
    for n, (t, c) in enumerate(zip(tables, counts), start=1):
        num_hist = 1 if n == 1 else tables[n - 2].key.size
        hist = t.prefix
        c = c.astype(np.float64)
        total = np.bincount(hist, weights=c, minlength=num_hist)
        if method == "kneser_ney":
            d = _kn_discounts(counts[n - 1], fallback)
            discounts.append(d)
            dvec = np.array((0.0,) + tuple(d))[np.minimum(counts[n - 1], 3)]
            mass = np.bincount(hist, weights=dvec, minlength=num_hist)
            denom = total
        else:
            dvec = np.zeros_like(c)
            mass = np.bincount(hist, weights=(c > 0).astype(np.float64), minlength=num_hist)
            denom = total + mass
        has = denom > 0
        gamma = np.divide(mass, denom, out=np.zeros(num_hist), where=has)
        alpha = np.divide(c - dvec, denom[hist], out=np.zeros_like(c), where=has[hist])
        if n == 1:
            lower = np.full(t.key.size, 1.0 / max(num_words - 1, 1))
            gamma = np.where(has, gamma, 1.0)
        else:
            lower = probs[-1][t.suffix]
            bows[n - 2][has] = np.log10(gamma[has])
        p = alpha + gamma[hist] * lower
        if n == 1:
            p[0] = 0.0  # <s>
        probs.append(p)
    return probs, bows, discounts


def _ngram_words(tables: list[_Table], n: int) -> np.ndarray:
    """Word ids ``[M_n, n]`` of the order-n table, following prefix links."""
    cols = []
    rows = np.arange(tables[n - 1].key.size)
    for k in range(n, 0, -1):
        t = tables[k - 1]
        cols.append(t.key[rows] % np.int64(len(tables[0].key)) if k > 1 else t.key[rows])
        rows = t.prefix[rows]
    return np.stack(cols[::-1], axis=1).astype(np.int32)


# ---------------------------------------------------------------------------- reading
_COUNT_RE = re.compile(r"[0-9]+\Z")


class _Lines:
    """Numbered lines of a file, for error messages ``file:line``."""

    def __init__(self, path: str, lines: Iterator[str]) -> None:
        self.path, self.lines, self.lineno = path, lines, 0

    def next(self) -> str | None:
        line = next(self.lines, None)
        if line is None:
            return None
        self.lineno += 1
        return line.strip()

    def error(self, msg: str, lineno: int | None = None) -> ValueError:
        return ValueError(f"{self.path}:{self.lineno if lineno is None else lineno}: {msg}")

    def next_nonblank(self, what: str) -> str:
        while True:
            line = self.next()
            if line is None:
                raise self.error(f"truncated ARPA file: end of file while expecting {what}")
            if line:
                return line


def read_arpa(path: PathLike) -> NgramModel:
    """Read an ARPA file strictly.

    Accepted: any text before the ``\\data\\`` line; ``ngram n=M`` lines for n = 1, 2, ...;
    then the sections ``\\n-grams:`` in order, each with exactly ``M`` lines
    ``log10prob w1 .. wn [log10backoff]`` (no back-off at the highest order; every word of an
    n-gram must have a unigram; no duplicate n-grams); ``\\end\\``; only blank lines after it.

    Raises:
      ValueError: ``"<path>:<line>: <what is wrong>"`` for a malformed or truncated file (not
        UTF-8, or declaring more n-grams than the file can hold, included).
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    it = iter_text_lines(path)
    try:
        lines = _Lines(path, it)
        declared = _read_header(lines, size)
        word_ids: dict[str, int] = {}
        ngrams, probs, bows = [], [], []
        for n, m in enumerate(declared, start=1):
            header = lines.next_nonblank(f"\\{n}-grams:")
            if header != f"\\{n}-grams:":
                raise lines.error(f"expected \\{n}-grams:, got {header[:40]!r}")
            ids, p, b = _read_section(lines, n, m, len(declared), word_ids)
            ngrams.append(ids)
            probs.append(p)
            bows.append(b)
        end = lines.next_nonblank("\\end\\")
        if end != "\\end\\":
            raise lines.error(f"expected \\end\\ after {declared[-1]} {len(declared)}-grams, "
                              f"got {end[:40]!r} (more n-grams than declared?)")
        while (line := lines.next()) is not None:
            if line:
                raise lines.error(f"unexpected text after \\end\\: {line[:40]!r}")
    finally:
        it.close()
    return NgramModel(vocab=list(word_ids), ngrams=ngrams, log10_probs=probs, backoffs=bows)


def _read_header(lines: _Lines, size: int) -> list[int]:
    """Skip to ``\\data\\`` and return the declared counts of orders 1..N; a count above
    ``size`` (the file's bytes; an n-gram line has at least 4) is refused, so that the arrays
    allocated for the sections stay within a multiple of the file's size."""
    while True:
        line = lines.next()
        if line is None:
            raise lines.error("no \\data\\ line: not an ARPA file")
        if line == "\\data\\":
            break
    declared: list[int] = []
    while True:
        line = lines.next()
        if line is None:
            raise lines.error("truncated ARPA file: end of file in the \\data\\ section")
        if not line:
            if declared:
                return declared
            continue
        head, _, rest = line.partition("=")
        parts = head.split()
        if len(parts) != 2 or parts[0] != "ngram" or not _COUNT_RE.match(parts[1]) \
                or not _COUNT_RE.match(rest.strip()):
            if line.startswith("\\") and declared:
                raise lines.error(f"expected a blank line after the ngram counts, got {line!r}")
            raise lines.error(f"expected 'ngram N=COUNT', got {line[:40]!r}")
        if int(parts[1]) != len(declared) + 1:
            raise lines.error(f"expected 'ngram {len(declared) + 1}=...', got {line!r}")
        n, m = len(declared) + 1, int(rest)
        if m > size:
            raise lines.error(f"'ngram {n}={m}' declares more {n}-grams than the file "
                              f"({size} bytes) can hold (corrupt or truncated file?)")
        declared.append(m)


def _read_section(lines: _Lines, n: int, m: int, order: int, word_ids: dict[str, int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read the ``m`` entries of the n-gram section (ids [m, n], log10 probs, back-offs)."""
    ids = array("i")
    probs = np.empty(m, np.float64)
    bows = np.full(m, np.nan)
    first_line = lines.lineno + 1
    for i in range(m):
        line = lines.next()
        if line is None or not line or line.startswith("\\"):
            got = "end of file" if line is None else repr(line[:40]) if line else "a blank line"
            raise lines.error(f"truncated \\{n}-grams: section: {i} entries, 'ngram {n}={m}' "
                              f"declared, then {got}")
        fields = line.split()
        if len(fields) not in (n + 1, n + 2) or (len(fields) == n + 2 and n == order):
            raise lines.error(f"expected 'log10prob {' '.join(f'w{k}' for k in range(1, n + 1))}"
                              f"{' [backoff]' if n < order else ''}', got {line[:60]!r}")
        probs[i] = _float(lines, fields[0], "log10 probability")
        if probs[i] > 1e-4:
            raise lines.error(f"log10 probability {fields[0]} > 0")
        if len(fields) == n + 2:
            bows[i] = _float(lines, fields[-1], "log10 back-off weight")
        words = fields[1:n + 1]
        if n == 1:
            if words[0] in word_ids:
                raise lines.error(f"duplicate unigram {words[0]!r}")
            word_ids[words[0]] = len(word_ids)
            ids.append(word_ids[words[0]])
            continue
        for w in words:
            wid = word_ids.get(w)
            if wid is None:
                raise lines.error(f"word {w!r} has no unigram")
            ids.append(wid)
    arr = np.frombuffer(ids, dtype=np.int32).reshape(m, n).copy()
    _check_unique(lines, arr, first_line, n)
    return arr, probs, bows


def _float(lines: _Lines, tok: str, what: str) -> float:
    try:
        x = float(tok)
    except ValueError:
        raise lines.error(f"invalid {what} {tok!r}") from None
    if not math.isfinite(x):
        raise lines.error(f"{what} {tok!r} is not finite")
    return x


def _check_unique(lines: _Lines, arr: np.ndarray, first_line: int, n: int) -> None:
    if n == 1 or arr.shape[0] < 2:
        return
    order = np.lexsort(arr.T[::-1])
    srt = arr[order]
    dup = np.flatnonzero((srt[1:] == srt[:-1]).all(axis=1))
    if dup.size:
        i = int(max(order[dup[0]], order[dup[0] + 1]))
        raise lines.error(f"duplicate {n}-gram", lineno=first_line + i)
