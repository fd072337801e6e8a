"""Neural network models: acoustic encoders (:mod:`wfst_asr.models.encoders`), transducer
decoder/joiner/head and the BLSTM transducer (:mod:`wfst_asr.models.transducer`), and the LSTM language model of n-best
rescoring (:mod:`wfst_asr.models.lm`). Models are plain ``nn.Module`` s that import only torch:
their training is in :mod:`wfst_asr.train`, their searches in :mod:`wfst_asr.decode`."""

from wfst_asr.models.attention import AttentionDecoder, BlstmAttention
from wfst_asr.models.encoders import (
    MODELS,
    Blstm,
    Encoder,
    TdnnLstm,
    build_model,
    check_output_dim,
    register_model,
)
from wfst_asr.models.lm import LstmLm
from wfst_asr.models.segmental import SegmentalBlstm, SegmentScorer
from wfst_asr.models.transducer import (
    BlstmTransducer,
    Joiner,
    StatelessDecoder,
    Transducer,
    add_sos,
)

__all__ = [
    "MODELS",
    "Blstm",
    "Encoder",
    "TdnnLstm",
    "build_model",
    "check_output_dim",
    "register_model",
]
__all__ += ["BlstmTransducer", "Joiner", "StatelessDecoder", "Transducer", "add_sos"]
__all__ += ["AttentionDecoder", "BlstmAttention", "LstmLm", "SegmentScorer", "SegmentalBlstm"]
