"""wfst_asr.graphs: H, L and G, decoding graphs (LG, HLG, TLG, HCLG) and training graphs.

* :mod:`.lang`: lexicons, Kaldi/icefall lang directories, L and L_disambig
* :mod:`.lexicon`: pronunciations from CMUdict, word lists
* :mod:`.ngram`, :mod:`.lm`: n-gram estimation (Kneser-Ney, Witten-Bell) to ARPA, ARPA to G
* :mod:`.topo`: every topology (H): CTC, Kaldi HMMs (through kaldi-hmm-gmm), simple HMMs, the
  transducer's trivial graph, and the pdf maps between them
* :mod:`.compile`: LG / HLG / TLG / HCLG compilation with OpenFst (kaldifst), cached on disk
* :mod:`.training`: batched per-utterance training graphs (CTC, LF-MMI num/den, HMM)
* :mod:`.trainable`: graphs whose n-gram log-weights are parameters (back-off kept)
"""

from .compile import (
    GRAPH_KINDS,
    CompileStats,
    compile_graph,
    compile_hclg,
    compile_hlg,
    compile_lg,
    remove_input_epsilons,
)
from .lang import (
    Lang,
    LexiconEntry,
    add_disambig_symbols,
    lexicon_to_fst,
    prepare_lang,
    read_lexicon,
    read_token_list,
    remove_disambig_symbols,
    write_lexicon,
    write_token_list,
)
from .lexicon import cmudict_lexicon, lookup_cmudict
from .lm import arpa_to_fst, make_token_lm
from .ngram import BOS, EOS, NgramModel, estimate_ngram, read_arpa
from .topo import (
    TOPOLOGIES,
    Topology,
    ctc_topo,
    hmm_output_id,
    hmm_topo,
    make_topology,
    pdf_map,
    pdf_to_tid_log_probs,
    pdf_topo,
    phone_pdfs,
    trivial_graph,
)
from .training import (
    CtcTrainingGraphCompiler,
    HmmTrainingGraphCompiler,
    LinearComposer,
    MmiTrainingGraphCompiler,
    compose_linear,
    ctc_graph,
    ctc_graph_from_acceptors,
)

__all__ = [
    "BOS",
    "EOS",
    "GRAPH_KINDS",
    "TOPOLOGIES",
    "CompileStats",
    "CtcTrainingGraphCompiler",
    "HmmTrainingGraphCompiler",
    "Lang",
    "LexiconEntry",
    "LinearComposer",
    "MmiTrainingGraphCompiler",
    "NgramModel",
    "Topology",
    "add_disambig_symbols",
    "arpa_to_fst",
    "cmudict_lexicon",
    "compile_graph",
    "compile_hclg",
    "compile_hlg",
    "compile_lg",
    "compose_linear",
    "ctc_graph",
    "ctc_graph_from_acceptors",
    "ctc_topo",
    "estimate_ngram",
    "hmm_output_id",
    "hmm_topo",
    "lexicon_to_fst",
    "lookup_cmudict",
    "make_token_lm",
    "make_topology",
    "pdf_map",
    "pdf_to_tid_log_probs",
    "pdf_topo",
    "phone_pdfs",
    "prepare_lang",
    "read_arpa",
    "read_lexicon",
    "read_token_list",
    "remove_disambig_symbols",
    "remove_input_epsilons",
    "trivial_graph",
    "write_lexicon",
    "write_token_list",
]
