"""Training tools: checkpoints (atomic, resumable, safetensors + JSON) and the training stages."""

from rehyat.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from rehyat.training.data import LatentDataset, build_latent_dataset, write_latent_dataset
from rehyat.training.finetune import FinetuneConfig, finetune
from rehyat.training.metrics import MetricsLogger

__all__ = [
    "CheckpointError",
    "FinetuneConfig",
    "LatentDataset",
    "MetricsLogger",
    "build_latent_dataset",
    "finetune",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_optimizer",
    "save_checkpoint",
    "write_latent_dataset",
]
