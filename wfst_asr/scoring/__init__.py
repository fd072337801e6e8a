"""wfst_asr.scoring: error rates (PER / WER) and the reports recipes write.

* :mod:`.edit_distance`: Levenshtein alignment through kaldialign, :class:`ErrorCounts`
  (``%WER 12.34 [ 56 / 789, 1 ins, 2 del, 3 sub ]``), :func:`score` for a whole test set
  with per-speaker and per-utterance detail, :class:`ScoreReport` (``write``, ``summary``)
* :mod:`.phone_map`: phone folding tables (61 -> 48 -> 39) read from a recipe's table file
* :mod:`.text`: Kaldi ``text`` / ``utt2spk`` files, :class:`Fold` (a table's column -> another)
  and :func:`score_texts`, the one scoring function of decoding and of ``wfst-asr score``
* :mod:`.decode_dir`: a decode directory (refs, hypotheses, settings) and
  :func:`score_decode_dir` (reports and ``results.txt``)
"""

from .decode_dir import score_decode_dir
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
from .text import (
    METRICS,
    Fold,
    load_phone_map,
    read_text,
    read_utt2spk,
    score_texts,
    write_text,
    write_utt2spk,
)

__all__ = [
    "GAP",
    "METRICS",
    "NOTHING",
    "ErrorCounts",
    "Fold",
    "PhoneMap",
    "ScoreReport",
    "UttScore",
    "align",
    "align_and_count",
    "counts_from_alignment",
    "load_phone_map",
    "read_phone_map",
    "read_text",
    "read_utt2spk",
    "score",
    "score_decode_dir",
    "score_texts",
    "write_phone_map",
    "write_text",
    "write_utt2spk",
]
