"""Training losses written as graph intersections with the FSA engine."""

from wfst_asr.losses.ctc import CtcLoss, ctc_min_frames, nan_guard

__all__ = ["CtcLoss", "ctc_min_frames", "nan_guard"]
