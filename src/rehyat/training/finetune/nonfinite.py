"""Stage 2's non-finite policy: a step whose loss or gradient norm is not finite makes no optimizer or EMA
update; up to ``max_nonfinite_steps`` such steps are skipped with a warning, the next one stops the run
with :class:`~rehyat.training.checkpoint.NonFiniteError` before anything non-finite is saved."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from rehyat.training import distributed
from rehyat.training.checkpoint import NonFiniteError, latest_checkpoint
from rehyat.training.finetune.run_config import FinetuneConfig


def handle_non_finite_step(
    cfg: FinetuneConfig,
    env: distributed.DistEnv,
    step: int,
    loss: float,
    grad_norm: float,
    count: int,
    micro_losses: list[tuple[list[int], Tensor]],
    checkpoints: Path,
) -> None:
    """Warn about a skipped step, or raise :class:`NonFiniteError` once ``count`` passes the limit."""
    culprits = [i for indices, value in micro_losses if not torch.isfinite(value) for i in indices]
    where = f"; samples {culprits} of rank {env.rank} gave a non-finite loss" if culprits else ""
    what = f"step {step}: the loss is {loss} and the gradient norm {grad_norm}{where}"
    if count <= cfg.max_nonfinite_steps:
        if env.is_main:
            warnings.warn(
                f"{what}: skipped (no optimizer update); {count} of max_nonfinite_steps="
                f"{cfg.max_nonfinite_steps} non-finite steps",
                RuntimeWarning,
                stacklevel=3,
            )
        return
    latest = latest_checkpoint(checkpoints) if cfg.save else None
    raise NonFiniteError(
        f"{what}. Stopped at {count} non-finite step{'s' if count > 1 else ''}, more than "
        f"max_nonfinite_steps={cfg.max_nonfinite_steps}, before the optimizer step: nothing non-finite "
        f"was saved, and the last checkpoint is {latest.name if latest else 'none'}"
    )
