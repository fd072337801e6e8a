"""wfst_asr.decode: turning network outputs into token / word sequences.

* :func:`greedy_ctc`: per-frame argmax, repeats collapsed, blanks dropped (no graph).
* :func:`one_best`: best path of a decoding graph (HLG, TLG, :func:`~wfst_asr.fsa.ctc_topo`,
  ...) with the engine's beam search (:func:`~wfst_asr.fsa.intersect_dense_pruned` +
  :func:`~wfst_asr.fsa.shortest_path`).
* :mod:`.transducer`: transducer search: :func:`greedy_search`, :func:`beam_search` (modified
  beam search) and :func:`fast_beam_search` (k2's, constrained by a decoding graph: trivial or
  LG; lattices as FsaVecs) with :func:`fast_beam_search_one_best`.
* :func:`kaldi_one_best`: the same 1-best with kaldi-decoder's ``FasterDecoder`` (a second,
  independent backend used to cross-check the engine); :func:`kaldi_ctc_graph` prepares the
  graph once for many calls.

Conventions: ``log_probs`` is ``[B, T, V]`` (0 = blank), ``lens`` ``[B]`` the number of valid
frames of each utterance; results are one Python list per utterance, in batch order. Graph
scores are multiplied by ``lm_scale`` before they are added to the acoustic log-probs (icefall's
convention; Kaldi's ``acoustic_scale = 1 / lm_scale`` gives the same best path).
"""

from .ctc import aux_label_sequences, greedy_ctc, one_best, scale_graph
from .kaldi import kaldi_ctc_graph, kaldi_one_best

__all__ = ["aux_label_sequences", "greedy_ctc", "kaldi_ctc_graph", "kaldi_one_best", "one_best",
           "scale_graph"]
# transducer search: greedy, modified beam search, fast beam search in a graph (lattices)
from .transducer import (
    beam_search,
    fast_beam_search,
    fast_beam_search_one_best,
    greedy_search,
    trivial_graph,
)

__all__ += ["beam_search", "fast_beam_search", "fast_beam_search_one_best", "greedy_search",
            "trivial_graph"]
