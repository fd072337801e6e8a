"""GMM-HMM systems with kaldi-hmm-gmm (alignments for hybrid training): :mod:`.mono`
(monophone training, alignment with the FSA engine), :mod:`.features` (MFCC deltas, CMN) and
:mod:`.recipe` (``wfst-asr train-mono``: a monophone system on any lhotse cuts)."""

from wfst_asr.gmm.features import add_deltas, delta_filters, speaker_cmn
from wfst_asr.gmm.mono import MonoGmm, MonoOptions, train_mono

__all__ = ["MonoGmm", "MonoOptions", "add_deltas", "delta_filters", "speaker_cmn", "train_mono"]
