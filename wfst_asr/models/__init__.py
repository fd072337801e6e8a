"""Neural network models: acoustic encoders (:mod:`wfst_asr.models.encoders`), transducer
decoder/joiner and search (:mod:`wfst_asr.models.transducer`)."""

from wfst_asr.models.encoders import (
    MODELS,
    Blstm,
    Encoder,
    TdnnLstm,
    build_model,
    check_output_dim,
    register_model,
)
from wfst_asr.models.transducer import (
    Joiner,
    StatelessDecoder,
    Transducer,
    add_sos,
    beam_search,
    greedy_search,
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
__all__ += ["Joiner", "StatelessDecoder", "Transducer", "add_sos", "beam_search",
            "greedy_search"]
