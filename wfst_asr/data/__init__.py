"""lhotse glue: features (kaldi-native-fbank), CMVN, datasets, samplers, supervision segments."""

from wfst_asr.data.dataset import (
    AsrDataset,
    TimeFreqMask,
    make_dataloader,
    make_sampler,
    subsampled_lengths,
    supervision_segments,
)
from wfst_asr.data.features import (
    FeatureResult,
    KnfFbank,
    KnfFbankConfig,
    KnfMfcc,
    KnfMfccConfig,
    apply_cmvn,
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
    "TimeFreqMask",
    "apply_cmvn",
    "compute_features",
    "compute_global_cmvn",
    "default_writer",
    "load_cmvn",
    "make_dataloader",
    "make_extractor",
    "make_sampler",
    "save_cmvn",
    "subsampled_lengths",
    "supervision_segments",
]
