"""Training tools: checkpoints (atomic, resumable, safetensors + JSON) and the training stages."""

from rehyat.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)

__all__ = ["CheckpointError", "latest_checkpoint", "load_checkpoint", "restore_optimizer", "save_checkpoint"]
