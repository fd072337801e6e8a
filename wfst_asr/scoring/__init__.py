"""wfst_asr.scoring: error rates (PER / WER) and the reports recipes write.

* :mod:`.edit_distance`: Levenshtein alignment through kaldialign, :class:`ErrorCounts`
  (``%WER 12.34 [ 56 / 789, 1 ins, 2 del, 3 sub ]``), :func:`score` for a whole test set
  with per-speaker and per-utterance detail, :class:`ScoreReport` (``write``, ``summary``)
* :mod:`.phone_map`: phone folding tables (61 -> 48 -> 39) read from a recipe's table file
"""

from .edit_distance import (
    GAP,
    ErrorCounts,
    ScoreReport,
    UttScore,
    align,
    align_and_count,
    counts_from_alignment,
    score,
)
from .phone_map import NOTHING, PhoneMap, read_phone_map, write_phone_map

__all__ = [
    "GAP",
    "NOTHING",
    "ErrorCounts",
    "PhoneMap",
    "ScoreReport",
    "UttScore",
    "align",
    "align_and_count",
    "counts_from_alignment",
    "read_phone_map",
    "score",
    "write_phone_map",
]
