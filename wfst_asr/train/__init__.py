"""Training: experiment configs and registry, checkpoints and averaging, the Trainer (DDP)."""

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
    CONFIGS,
    ExperimentConfig,
    apply_overrides,
    get_config,
    list_configs,
    register,
)
from wfst_asr.train.trainer import (
    Trainer,
    batch_targets,
    build_optimizer,
    build_scheduler,
    init_distributed,
    seed_everything,
)

__all__ = [
    "CONFIGS",
    "CheckpointError",
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
    "make_loader",
    "register",
    "save_checkpoint",
    "seed_everything",
    "token_table",
]
