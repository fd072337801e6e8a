"""Neural network models: acoustic encoders (:mod:`wfst_asr.models.encoders`)."""

from wfst_asr.models.encoders import (
    MODELS,
    Blstm,
    Encoder,
    TdnnLstm,
    build_model,
    check_output_dim,
    register_model,
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
