"""Stage 2's checkpointing: resuming a run (as ``resume`` and ``resume_fallback`` say, refusing a config
that changes what the run learns unless ``allow_config_change``), recording ``config.json``, saving a
training checkpoint each ``checkpoint_every`` steps (never a non-finite one) and the final weights.
Every write is atomic (:mod:`rehyat.training.checkpoint`); see docs/failure_behaviour.md, "Training"."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rehyat.settings import config_to_dict, write_config
from rehyat.training import distributed
from rehyat.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    NonFiniteError,
    check_model_state,
    checkpoint_folders,
    find_resumable,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_aside,
)
from rehyat.training.ema import EMA
from rehyat.training.finetune.model import rehyat_config_of, save_final_weights
from rehyat.training.finetune.run_config import FinetuneConfig


def load_training_checkpoint(
    checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None
) -> tuple[int, dict[str, Any]]:
    """Load a training checkpoint into model, optimizer and EMA; return its step and metadata. Validates
    first."""
    path = checkpoint.path
    check_model_state(checkpoint, distributed.unwrap(model).state_dict())
    ours = rehyat_config_of(model)
    if checkpoint.metadata.get("rehyat") != ours:
        raise CheckpointError(
            f"checkpoint {path} was made with ReHyAt config {checkpoint.metadata.get('rehyat')}, "
            f"this run converts with {ours}"
        )
    if checkpoint.optimizer is None:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state")
    if (ema is None) != ("ema" not in checkpoint.extra):
        raise CheckpointError(
            f"checkpoint {path} {'has' if ema is None else 'lacks'} EMA weights but ema_decay is "
            f"{'unset' if ema is None else 'set'}"
        )
    distributed.load_full_state(model, optimizer, checkpoint.model, checkpoint.optimizer)
    if ema is not None:
        ema.load_state_dict(checkpoint.extra["ema"])
    return checkpoint.step, checkpoint.metadata


#: Options a resumed run may change freely: they shape where and how long it runs, not what it learns.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "steps",
        "optim.decay_start",  # a cooldown begun on resume: where the run ends, as steps
        "resume",
        "resume_fallback",
        "allow_config_change",
        "save",
        "progress",
        "checkpoint_every",
        "data.preload",  # where the samples are read from, not which
        "profile.start",
        "profile.steps",
        "keep_checkpoints",
        "log_every",
        "max_nonfinite_steps",
        "strategy",
        "model.compile",
    }
)


def config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key old -> new`` for each option outside :data:`RESUMABLE_CHANGES` that differs (keys that only
    one side has, from another version of this library, are not compared)."""
    changes = []
    for key in sorted(saved.keys() & current.keys()):
        old, new = saved[key], current[key]
        if prefix + key in RESUMABLE_CHANGES or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key} {old} -> {new}")
    return changes


def record_config(cfg: FinetuneConfig, path: Path) -> None:
    """Write ``config.json``; a different one already there is kept as ``config.<UTC time>.json``."""
    if path.is_file() and not path.is_symlink():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != config_to_dict(cfg):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            kept, number = path.with_name(f"config.{stamp}.json"), 1
            while kept.exists():
                kept, number = path.with_name(f"config.{stamp}-{number}.json"), number + 1
            os.replace(path, kept)
    write_config(cfg, path)


def resume_run(
    cfg: FinetuneConfig,
    env: distributed.DistEnv,
    checkpoints: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
) -> tuple[int, int] | None:
    """Resume from ``checkpoints`` as ``cfg.resume`` and ``cfg.resume_fallback`` say: (step, non-finite
    steps so far) of the checkpoint loaded, or None for a fresh start."""
    if not cfg.resume:
        if (checkpoints / "latest").exists() or checkpoint_folders(checkpoints):
            raise ValueError(
                f"{checkpoints} already holds checkpoints: set resume=true or another output_dir"
            )
        return None
    try:
        found = find_resumable(checkpoints, cfg.resume_fallback)
    except CheckpointError as error:
        if cfg.resume_fallback:
            raise
        raise CheckpointError(
            f"{error}. Set resume_fallback=true to resume from the newest checkpoint that can be read"
        ) from error
    if found is None:
        return None
    step, metadata = load_training_checkpoint(found.checkpoint, model, optimizer, ema)
    changes = config_changes(metadata.get("config", {}), config_to_dict(cfg))
    if changes and not cfg.allow_config_change:
        raise ValueError(
            f"{found.checkpoint.path} was trained with another config: {', '.join(changes)}. Resuming would "
            "quietly turn it into another run: set allow_config_change=true (--allow-config-change) to "
            "resume with the new values anyway (config.json is replaced, the old one kept as "
            "config.<time>.json), or choose another output_dir"
        )
    if found.fallback_reason is not None:
        distributed.barrier()  # every rank has read the folder before it changes
        if env.is_main:
            renamed = set_aside(checkpoints, found)
            warnings.warn(
                f"{found.fallback_reason}: resuming from {found.checkpoint.path.name} (resume_fallback)"
                + (f"; set aside {[p.name for p in renamed]}" if renamed else ""),
                RuntimeWarning,
                stacklevel=3,
            )
    return step, metadata.get("nonfinite_steps", 0)


def save_training_checkpoint(
    cfg: FinetuneConfig,
    env: distributed.DistEnv,
    checkpoints: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    metadata: dict[str, Any],
) -> None:
    """Save step ``step`` from rank 0 (gathering the full state is collective under FSDP); every rank
    raises :class:`NonFiniteError` when rank 0 refused non-finite weights (finite loss and gradients,
    yet the update overflowed)."""
    model_state, optim_state = distributed.full_state(model, optimizer)
    extra = {"ema": ema.state_dict()} if ema is not None else {}  # collective under FSDP
    refused = None
    if env.is_main:
        try:
            save_checkpoint(
                checkpoints, step, model_state, optim_state, metadata, cfg.keep_checkpoints, extra
            )
        except NonFiniteError as error:
            refused = error
    if distributed.any_rank(refused is not None):
        raise refused or NonFiniteError(f"step {step}: rank 0 refused to save non-finite weights")
    distributed.barrier()


def save_final(cfg: FinetuneConfig, checkpoints: Path, out: Path, ema: bool) -> None:
    """``out/final`` (and ``out/final-ema`` with ``ema``) as full weights, from the latest checkpoint."""
    final = load_checkpoint(latest_checkpoint(checkpoints))
    save_final_weights(cfg.model, cfg.seed, final.model, out / "final")
    if ema:
        save_final_weights(cfg.model, cfg.seed, final.model | final.extra["ema"], out / "final-ema")
