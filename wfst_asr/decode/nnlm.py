"""N-best rescoring with a neural LM (:class:`~wfst_asr.models.lm.LstmLm`).

::

    nbests = [nbest_one(lat, 100) for lat in dev_lattices]
    add_nnlm_scores(nbests, lm)                 # every entry gets extra_scores["nnlm"]
    best = sweep(nbests, refs, lm_scales=[0.5, 1], nnlm_scales=[0, 0.5, 1],
                 word_penalties=[0, 0.5])       # grid_search: best setting and table
    print(best.format_table(), end="")
    hyps = rescore(test_nbests, best.lm_scale, best.best["nnlm_scale"], best.word_penalty)

An entry's total score is (:meth:`~wfst_asr.decode.nbest.Nbest.total_scores`)::

    am + lm_scale * lm - word_penalty * num_words + nnlm_scale * nnlm

with ``am`` / ``lm`` the lattice's acoustic and graph scores along the entry's best path
(unscaled) and ``nnlm`` the neural LM's ``log P(words </s>)``. ``nnlm_scale = 0`` gives back
the lattice's own ranking (at the lattice's own scales: its 1-best).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

from .grid import GridResult, grid_search
from .nbest import Nbest, add_flat_scores, flatten

__all__ = ["add_nnlm_scores", "error_rate", "rescore", "sweep"]

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
          log: Callable[[str], None] | None = None, metric: str = "ER") -> GridResult:
    """:func:`~.grid.grid_search` of the dev n-best lists reranked (:meth:`Nbest.best`) at
    every ``(lm_scale, word_penalty, <name>_scale)``, the best entries scored with
    ``error_fn(refs, hyps)`` (default :func:`error_rate`, in percent). The result's extra axis
    is ``f"{name}_scale"`` (default ``nnlm_scale``); apply its best setting to the test set
    with :func:`rescore`; ``result.format_table()`` is the table (``metric`` names the error).

    ``nbests_dev`` / ``refs_dev``: aligned sequences, or mappings utt -> list / words (an
    utterance without a list gets an empty hypothesis). The lists need ``name`` scores
    (:func:`add_nnlm_scores`) unless every ``nnlm_scale`` is 0.
    """
    lists, refs = _align(nbests_dev, refs_dev)
    err_fn = error_fn or error_rate
    axis = f"{name}_scale"

    def evaluate(lm_scale: float, word_penalty: float, **scale: float) -> float:
        weights = {name: scale[axis]} if scale[axis] else None
        hyps = [nb.best(lm_scale, word_penalty, weights) if nb is not None else []
                for nb in lists]
        return err_fn(refs, hyps)

    return grid_search(evaluate, lm_scales, word_penalties, {axis: nnlm_scales}, log=log,
                       metric=metric)
