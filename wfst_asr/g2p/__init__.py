"""wfst_asr.g2p: grapheme-to-phoneme conversion with a joint-sequence n-gram WFST
(Phonetisaurus' recipe, on the project's own estimator, graph compiler and FSA engine).

* :mod:`.align` -- EM many-to-many alignment of letters and phones (:func:`align_lexicon`):
  joint units of 1..2 letters and 0..2 phones, forward-backward in the log semiring, batched
  with torch over padded entries (``alpha`` / ``beta`` ``[N, L + 1, M + 1]``), Viterbi
  (tropical) alignment at the end; its log-likelihood per iteration never decreases.
* :mod:`.model` -- joint tokens (``p|h}F``), the n-gram over them
  (:func:`~wfst_asr.graphs.ngram.estimate_ngram`, Kneser-Ney or Witten-Bell), G
  (:func:`~wfst_asr.graphs.lm.arpa_to_fst`) expanded into the G2P WFST (input: letters,
  output: phones, a multi-letter / multi-phone token a chain; back-off arcs ``#0`` are failure
  arcs; scores are natural-log probabilities, OpenFst cost = -score), :class:`G2PModel` and the
  model directory (:func:`write_model_dir`, atomic).
* :mod:`.decode` -- :class:`G2PDecoder`: the word's letters composed with the WFST (failure
  semantics, so scores are the exact n-gram log-probabilities) and the exact n best distinct
  pronunciations, each with the score of its best path (Viterbi), batched over words in numpy,
  with an optional beam.
* :mod:`.evaluate` -- seeded held-out split by word, word / phone error rates.

Command line: ``wfst-asr train-g2p`` and ``wfst-asr g2p`` (:mod:`wfst_asr.bin.g2p_cmd`).
"""

from .align import AlignConfig, Alignment, align_lexicon
from .decode import G2PDecoder, Pronunciation
from .evaluate import G2PEval, evaluate, split_by_word
from .model import G2PModel, TrainConfig, train_g2p, write_model_dir

__all__ = ["AlignConfig", "Alignment", "G2PDecoder", "G2PEval", "G2PModel", "Pronunciation",
           "TrainConfig", "align_lexicon", "evaluate", "split_by_word", "train_g2p",
           "write_model_dir"]
