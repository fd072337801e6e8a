"""Training losses written as graph intersections with the FSA engine."""

from wfst_asr.losses.ctc import CtcLoss, ctc_min_frames, nan_guard
from wfst_asr.losses.hmm import (
    AlignmentCeLoss,
    HmmLoss,
    alignments_from_transition_ids,
    frame_ce_loss,
    min_frames,
    pdf_topo,
    viterbi_align,
)
from wfst_asr.losses.mmi import MmiLoss, add_leaky_arcs
from wfst_asr.losses.transducer import (
    TransducerLoss,
    do_rnnt_pruning,
    get_pruned_ranges,
    pruned_rnnt_lattice,
    pruned_transducer_loss,
    rnnt_lattice,
    simple_transducer_loss,
    transducer_loss,
)

__all__ = ["CtcLoss", "ctc_min_frames", "nan_guard"]
__all__ += ["AlignmentCeLoss", "HmmLoss", "MmiLoss", "add_leaky_arcs",
            "alignments_from_transition_ids",
            "frame_ce_loss", "min_frames", "pdf_topo", "viterbi_align"]
__all__ += ["TransducerLoss", "do_rnnt_pruning", "get_pruned_ranges", "pruned_rnnt_lattice",
            "pruned_transducer_loss", "rnnt_lattice", "simple_transducer_loss", "transducer_loss"]
