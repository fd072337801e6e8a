"""Neural network models: acoustic encoders (:mod:`wfst_asr.models.encoders`), transducer
decoder/joiner/head and the BLSTM transducer (:mod:`wfst_asr.models.transducer`; its search,
:mod:`wfst_asr.decode.transducer`, is re-exported there), and the LSTM language model of n-best
rescoring (:mod:`wfst_asr.models.lm`)."""

from wfst_asr.models.encoders import (
    MODELS,
    Blstm,
    Encoder,
    TdnnLstm,
    build_model,
    check_output_dim,
    register_model,
)
from wfst_asr.models.lm import LmLoss, LstmLm, load_lm, train_lm
from wfst_asr.models.transducer import (
    BlstmTransducer,
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
__all__ += ["BlstmTransducer", "Joiner", "StatelessDecoder", "Transducer", "add_sos", "beam_search",
            "greedy_search"]
__all__ += ["LmLoss", "LstmLm", "load_lm", "train_lm"]
