"""Held-out evaluation of a G2P model: a seeded split by word, word and phone error rates.

* :func:`split_by_word` -- a seeded split of lexicon entries by word: a word goes to the
  held-out side with all its pronunciations, or stays with all of them.
* :func:`evaluate` -- decode the held-out words (top 1) and score them: a word is correct when
  its hypothesis equals *any* of its reference pronunciations (word error rate); the phone
  errors of a word are the edit distance (:func:`wfst_asr.scoring.align_and_count`) to its
  closest reference, whose length counts as the word's reference length (phone error rate).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wfst_asr.scoring import ErrorCounts, align_and_count

from .model import G2PModel

__all__ = ["G2PEval", "evaluate", "split_by_word"]


def split_by_word(entries: Sequence[tuple[str, Sequence[str]]], fraction: float, seed: int = 0,
                  lowercase: bool = True
                  ) -> tuple[list[tuple[str, tuple[str, ...]]], dict[str, list[tuple[str, ...]]]]:
    """``(train entries, held-out word -> its pronunciations)``.

    ``round(fraction * number of distinct words)`` words (lower-cased with ``lowercase``) are
    drawn with ``numpy.random.default_rng(seed)`` from the sorted distinct words; the same
    entries, fraction and seed give the same split.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    norm = [((w.lower() if lowercase else w), tuple(p)) for w, p in entries]
    words = sorted({w for w, _ in norm})
    k = round(fraction * len(words))
    rng = np.random.default_rng(seed)
    held = {words[i] for i in rng.permutation(len(words))[:k].tolist()}
    train: list[tuple[str, tuple[str, ...]]] = []
    refs: dict[str, list[tuple[str, ...]]] = {}
    for w, p in norm:
        if w in held:
            if p not in refs.setdefault(w, []):
                refs[w].append(p)
        else:
            train.append((w, p))
    return train, dict(sorted(refs.items()))


@dataclass
class G2PEval:
    """Error rates on held-out words.

    Attributes:
      num_words: words scored; word_errors: how many got a top-1 outside their references.
      phone_counts: the phone errors against the closest reference of each word.
      decode_seconds: wall time of the decoding.
      hyps: word -> top-1 phones (empty for a word without any hypothesis).
    """

    num_words: int
    word_errors: int
    phone_counts: ErrorCounts
    decode_seconds: float
    hyps: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def wer(self) -> float:
        """Word error rate in percent."""
        return 100.0 * self.word_errors / max(self.num_words, 1)

    @property
    def per(self) -> float:
        """Phone error rate in percent."""
        return self.phone_counts.rate

    def to_dict(self) -> dict:
        c = self.phone_counts
        return {"num_words": self.num_words, "word_errors": self.word_errors,
                "wer": round(self.wer, 3), "per": round(self.per, 3),
                "phone_ref_len": c.ref_len, "phone_ins": c.ins, "phone_del": c.dels,
                "phone_sub": c.subs, "decode_seconds": round(self.decode_seconds, 2)}

    def summary(self) -> str:
        return (f"%WER {self.wer:.2f} [ {self.word_errors} / {self.num_words} words ], "
                f"{self.phone_counts.format('PER')}")


def evaluate(model: G2PModel, refs: dict[str, list[tuple[str, ...]]], **decode_kwargs
             ) -> G2PEval:
    """Top-1 of every word of ``refs`` (:meth:`G2PModel.predict`, ``decode_kwargs``: beam,
    ...) scored against its pronunciations (module docstring). Words with letters outside the
    model are counted as errors (no hypothesis)."""
    words = list(refs)
    known = [w for w in words if not model.unknown_letters(w)]
    start = time.perf_counter()
    results = model.predict(known, nbest=1, **decode_kwargs) if known else []
    seconds = time.perf_counter() - start
    hyps = {w: (r[0][0] if r else []) for w, r in zip(known, results)}
    word_errors = 0
    total = ErrorCounts(metric="PER")
    for w in words:
        hyp = hyps.get(w, [])
        word_errors += tuple(hyp) not in refs[w]
        best = min((align_and_count(list(r), hyp, metric="PER") for r in refs[w]),
                   key=lambda c: (c.errors, c.ref_len))
        total = total + best
    return G2PEval(len(words), word_errors, total, seconds, hyps)
