"""lhotse glue: features (kaldi-native-fbank), CMVN, datasets, samplers, supervision segments."""

from wfst_asr.data.dataset import (
    AsrDataset,
    TimeFreqMask,
    make_dataloader,
    make_sampler,
    supervision_segments,
)
from wfst_asr.data.features import (
    FeatureResult,
    KnfFbank,
    KnfFbankConfig,
    KnfMfcc,
    KnfMfccConfig,
    MelBinsCheck,
    apply_cmvn,
    check_mel_bins,
    compute_features,
    compute_global_cmvn,
    default_writer,
    load_cmvn,
    make_extractor,
    save_cmvn,
)

__all__ = [
    "AsrDataset",
    "FeatureResult",
    "KnfFbank",
    "KnfFbankConfig",
    "KnfMfcc",
    "KnfMfccConfig",
    "MelBinsCheck",
    "TimeFreqMask",
    "apply_cmvn",
    "check_mel_bins",
    "compute_features",
    "compute_global_cmvn",
    "default_writer",
    "load_cmvn",
    "make_dataloader",
    "make_extractor",
    "make_sampler",
    "save_cmvn",
    "supervision_segments",
]
