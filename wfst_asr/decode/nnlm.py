"""N-best rescoring with a neural LM (:class:`~wfst_asr.models.lm.LstmLm`).

::

    nbests = [nbest_one(lat, 100) for lat in dev_lattices]
    add_nnlm_scores(nbests, lm)                 # every entry gets extra_scores["nnlm"]
    best = sweep(nbests, refs, lm_scales=[0.5, 1], nnlm_scales=[0, 0.5, 1],
                 word_penalties=[0, 0.5])       # prints the error-rate table
    hyps = rescore(test_nbests, best.lm_scale, best.nnlm_scale, best.word_penalty)

An entry's total score is (:meth:`~wfst_asr.decode.nbest.Nbest.total_scores`)::

    am + lm_scale * lm - word_penalty * num_words + nnlm_scale * nnlm

with ``am`` / ``lm`` the lattice's acoustic and graph scores along the entry's best path
(unscaled) and ``nnlm`` the neural LM's ``log P(words </s>)``. ``nnlm_scale = 0`` gives back
the lattice's own ranking (at the lattice's own scales: its 1-best).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import torch

from .nbest import Nbest, add_flat_scores, flatten

__all__ = ["SweepResult", "add_nnlm_scores", "error_rate", "rescore", "sweep"]

NAME = "nnlm"


def add_nnlm_scores(nbests: Sequence[Nbest], lm: torch.nn.Module, name: str = NAME,
                    batch_size: int = 256) -> None:
    """Score every entry of every list with ``lm.score`` (all lists flattened into one batch
    of sequences, scored ``batch_size`` at a time) and attach the scores as ``name``."""
    seqs, offsets = flatten(nbests)
    scores = lm.score(seqs, batch_size=batch_size) if seqs else torch.zeros(0)
    add_flat_scores(nbests, name, scores, offsets)


def rescore(nbests: Iterable[Nbest], lm_scale: float | None = None,
            nnlm_scale: float = 1.0, word_penalty: float | None = None,
            name: str = NAME) -> list[list[int]]:
    """The best word sequence of each list under the combined score (see the module doc;
    ``lm_scale`` / ``word_penalty`` default to each list's own)."""
    return [nb.best(lm_scale, word_penalty, {name: nnlm_scale} if nnlm_scale else None)
            for nb in nbests]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus error rate in percent: total edit distance / total reference length
    (:func:`~wfst_asr.scoring.edit_distance.align_and_count`)."""
    from wfst_asr.scoring.edit_distance import align_and_count

    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references for {len(hyps)} hypotheses")
    total = sum((align_and_count([str(x) for x in r], [str(x) for x in h])
                 for r, h in zip(refs, hyps)), start=0)
    return float(total.rate) if total else 0.0


@dataclass
class SweepResult:
    """The best setting of a :func:`sweep` and the whole table.

    ``table`` rows are ``(lm_scale, nnlm_scale, word_penalty, error)`` in sweep order
    (lm_scale outermost, word_penalty innermost); the best is the first row with the lowest
    error."""

    lm_scale: float
    nnlm_scale: float
    word_penalty: float
    error: float
    table: list[tuple[float, float, float, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        return {"lm_scale": self.lm_scale, "nnlm_scale": self.nnlm_scale,
                "word_penalty": self.word_penalty, "error": self.error}


def _align(nbests, refs) -> tuple[list[Nbest | None], list[Sequence]]:
    if isinstance(refs, Mapping):
        if not isinstance(nbests, Mapping):
            raise TypeError("refs is a mapping (utt -> words): give nbests as one too")
        keys = list(refs)
        return [nbests.get(k) for k in keys], [refs[k] for k in keys]
    if isinstance(nbests, Mapping):
        raise TypeError("nbests is a mapping: give refs as one too (utt -> words)")
    nbests, refs = list(nbests), list(refs)
    if len(nbests) != len(refs):
        raise ValueError(f"{len(nbests)} n-best lists for {len(refs)} references")
    return nbests, refs


def sweep(nbests_dev: Sequence[Nbest] | Mapping[str, Nbest],
          refs_dev: Sequence[Sequence] | Mapping[str, Sequence],
          lm_scales: Sequence[float], nnlm_scales: Sequence[float],
          word_penalties: Sequence[float],
          error_fn: Callable[[list, list], float] | None = None, name: str = NAME,
          file: TextIO | None = None, quiet: bool = False, metric: str = "ER") -> SweepResult:
    """Rerank the dev n-best lists under every ``(lm_scale, nnlm_scale, word_penalty)``,
    score the best entries with ``error_fn(refs, hyps)`` (default :func:`error_rate`, in
    percent), print a table (to ``file``, default stdout; none with ``quiet``; ``metric``
    names the column) and return the best setting (the
    first of the lowest error, in sweep order), to be applied to the test set with
    :func:`rescore`.

    ``nbests_dev`` / ``refs_dev``: aligned sequences, or mappings utt -> list / words (an
    utterance without a list gets an empty hypothesis). The lists need ``name`` scores
    (:func:`add_nnlm_scores`) unless every ``nnlm_scale`` is 0.
    """
    lists, refs = _align(nbests_dev, refs_dev)
    err_fn = error_fn or error_rate
    if not (lm_scales and nnlm_scales and word_penalties):
        raise ValueError("sweep: empty grid")
    table: list[tuple[float, float, float, float]] = []
    for s in lm_scales:
        for w in nnlm_scales:
            weights = {name: float(w)} if w else None
            for wp in word_penalties:
                hyps = [nb.best(float(s), float(wp), weights) if nb is not None else []
                        for nb in lists]
                table.append((float(s), float(w), float(wp), float(err_fn(refs, hyps))))
    best = min(range(len(table)), key=lambda i: (table[i][3], i))
    res = SweepResult(*table[best], table=table)
    if not quiet:
        file = file if file is not None else sys.stdout
        print(f"{'lm_scale':>9} {'nnlm_scale':>10} {'word_pen':>9} {'%' + metric:>8}", file=file)
        for i, (s, w, wp, e) in enumerate(table):
            mark = "  <- best" if i == best else ""
            print(f"{s:9.3g} {w:10.3g} {wp:9.3g} {e:8.2f}{mark}", file=file)
    return res
