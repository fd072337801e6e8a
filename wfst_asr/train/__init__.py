"""Training: experiment configs and registry (:mod:`.config`), the loss registry
(:mod:`.criteria`), building a run (:mod:`.build`), checkpoints and averaging, the Trainer (DDP),
the LSTM LM's training (:mod:`.lm`) and loading a trained model (:mod:`.inference`)."""

from wfst_asr.train.build import (
    build_model_and_loss,
    build_model_from_config,
    make_loader,
    token_table,
)
from wfst_asr.train.checkpoint import (
    CheckpointError,
    average_checkpoints,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from wfst_asr.train.config import (
    BASES,
    CONFIGS,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    get_config,
    list_configs,
    load_config,
    register,
)
from wfst_asr.train.criteria import LOSSES, register_loss
from wfst_asr.train.trainer import (
    Trainer,
    batch_targets,
    build_optimizer,
    build_scheduler,
    init_distributed,
    seed_everything,
)

__all__ = [
    "BASES",
    "CONFIGS",
    "LOSSES",
    "CheckpointError",
    "ConfigError",
    "ExperimentConfig",
    "Trainer",
    "apply_overrides",
    "average_checkpoints",
    "batch_targets",
    "build_model_and_loss",
    "build_model_from_config",
    "build_optimizer",
    "build_scheduler",
    "find_checkpoints",
    "get_config",
    "init_distributed",
    "latest_checkpoint",
    "list_configs",
    "load_checkpoint",
    "load_config",
    "make_loader",
    "register",
    "register_loss",
    "save_checkpoint",
    "seed_everything",
    "token_table",
]
