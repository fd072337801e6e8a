"""wfst_asr.decode: turning network outputs into token / word sequences.

* :func:`greedy_ctc`: per-frame argmax, repeats collapsed, blanks dropped (no graph).
* :func:`one_best`: best path of a decoding graph (HLG, TLG, :func:`~wfst_asr.graphs.topo.ctc_topo`,
  ...) with the engine's beam search (:func:`~wfst_asr.fsa.intersect_dense_pruned` +
  :func:`~wfst_asr.fsa.shortest_path`).
* :mod:`.transducer`: transducer search: :func:`greedy_search`, :func:`beam_search` (modified
  beam search) and :func:`fast_beam_search` (k2's, constrained by a decoding graph: trivial or
  LG; lattices as FsaVecs) with :func:`fast_beam_search_one_best`.
* :func:`kaldi_one_best`: the same 1-best with kaldi-decoder's ``FasterDecoder`` (a second,
  independent backend used to cross-check the engine); :func:`kaldi_ctc_graph` prepares the
  graph once for many calls.

* Lattices and second passes (issue 6): :mod:`.lattice` (:func:`get_lattice` keeps acoustic and
  LM scores per arc; :func:`rescale`, :func:`prune`, :func:`determinize_words`, posteriors,
  confidences, CTM), :mod:`.lattice_io` (lattice files and directories), :mod:`.kaldi_lattice`
  (Kaldi archives), :mod:`.nbest` (exact n-best lists with score parts), :mod:`.rescore`
  (whole-lattice rescoring with a new G, lattice oracle), :mod:`.nnlm` (neural-LM n-best
  rescoring and sweeps) and :mod:`.pipeline` (the same over a data set: lattice directories,
  LM-scale / penalty sweeps).
* :func:`grid_search` (:mod:`.grid`): the dev sweep of lm_scale x word penalty (x extra
  scales) with its one tie-break rule; every sweep of the library and the recipes uses it.

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
)

__all__ += ["beam_search", "fast_beam_search", "fast_beam_search_one_best", "greedy_search"]
# lattices, n-best lists, rescoring (issue 6); the dev grid search of decoding settings
from .grid import GridResult, grid_search, parse_grid
from .kaldi_lattice import read_kaldi_lattices, write_kaldi_lattices
from .lattice import (
           best_paths,
           best_word_sequences,
           ctm_lines,
           determinize_words,
           frame_word_posteriors,
           get_lattice,
           lattice_stats,
           lattice_to_ctm,
           prune,
           rescale,
           word_confidences,
           word_posteriors,
)
from .lattice_io import LatticeError, LatticeReader, LatticeWriter, load_lattices, save_lattices
from .nbest import Nbest, nbest, nbest_one
from .nnlm import add_nnlm_scores, sweep
from .nnlm import rescore as rescore_nbest
from .pipeline import (
           best_word_seqs,
           load_lattice_dir,
           nbest_lists,
           oracle_errors,
           rescore_lattices,
           sweep_lattices,
           write_lattice_dir,
)
from .rescore import load_g, oracle, prepare_g, rescore_lattice

__all__ += ["GridResult", "LatticeError", "LatticeReader", "LatticeWriter", "Nbest",
            "add_nnlm_scores", "best_paths", "best_word_seqs", "best_word_sequences",
            "ctm_lines", "determinize_words", "frame_word_posteriors", "get_lattice",
            "grid_search", "lattice_stats", "lattice_to_ctm", "load_g", "load_lattice_dir",
            "load_lattices", "nbest", "nbest_lists", "nbest_one", "oracle", "oracle_errors",
            "parse_grid", "prepare_g", "prune", "read_kaldi_lattices", "rescale",
            "rescore_lattice", "rescore_lattices", "rescore_nbest", "save_lattices", "sweep",
            "sweep_lattices", "word_confidences", "word_posteriors", "write_kaldi_lattices",
            "write_lattice_dir"]
