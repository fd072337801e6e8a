"""Training losses written as graph intersections with the FSA engine."""

from wfst_asr.losses.align import (
    alignment_prior,
    alignments_from_transition_ids,
    equal_alignment,
    subsample_alignments,
    viterbi_align,
)
from wfst_asr.losses.common import feasible, min_frames
from wfst_asr.losses.ctc import CtcLoss, ctc_min_frames, nan_guard
from wfst_asr.losses.hmm import AlignmentCeLoss, HmmLoss, frame_ce_loss
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
            "alignment_prior", "alignments_from_transition_ids", "equal_alignment", "feasible",
            "frame_ce_loss", "min_frames", "subsample_alignments", "viterbi_align"]
__all__ += ["TransducerLoss", "do_rnnt_pruning", "get_pruned_ranges", "pruned_rnnt_lattice",
            "pruned_transducer_loss", "rnnt_lattice", "simple_transducer_loss", "transducer_loss"]
