"""Training checkpoints: safetensors + JSON, written atomically, never pickled.

A checkpoint is a folder ``step-<N>/`` holding ``model.safetensors`` (trainable weights),
``optimizer.safetensors`` (the optimizer's tensor state, flattened as ``<param index>.<name>``),
``rng.safetensors`` (CPU and CUDA generator states), ``state.json`` (step, the optimizer's
param groups and non-tensor state, the run's metadata) and one ``extra-<name>.safetensors`` per named
extra tensor set (EMA weights, say). The optimizer state may be keyed by parameter index (an optimizer's
own ``state_dict()``) or by parameter name (``torch.distributed.checkpoint.state_dict``). It is first written to a hidden temporary
folder beside it, then swapped into place whole (:func:`rehyat.utils.replacing_folder`, which also puts
back a step saved again if the swap fails), and only then does the ``latest`` file (itself replaced
atomically) point at it: a run killed at any moment leaves the previous checkpoint intact and loadable.

Only finite states are checkpointed: :func:`save_checkpoint` refuses a NaN or inf in any weight,
optimizer or extra tensor (:class:`NonFiniteError`, before anything is written or rotated out), and
:func:`load_checkpoint` reports one (data bytes damaged behind an intact header, say) as a
:class:`CheckpointError` naming the file.

``latest`` holds a ``step-<N>`` name of its own folder, never a path. A killed save leaves only hidden
staging (:func:`clean_staging` removes it); :func:`find_resumable` loads what a run resumes from, with an
optional fallback past an unreadable latest checkpoint, and :func:`set_aside` records that fallback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from rehyat.utils import atomic_write_text, replacing_folder

FORMAT_VERSION = 1
_CHECKPOINT_NAME = re.compile(r"step-\d+")
_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, holds non-finite values, or does not match what is loading it."""


class NonFiniteError(ValueError):
    """A loss, gradient or tensor to be saved is NaN or infinite: training stops rather than spread it."""


def first_nonfinite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf, or None when all are finite."""
    for name, tensor in tensors.items():
        if isinstance(tensor, Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


@dataclass
class Checkpoint:
    step: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any] | None
    rng: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    extra: dict[str, dict[str, Tensor]] = field(default_factory=dict)


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int | str, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.rsplit(".", 1)  # state names (exp_avg, step) hold no dots; parameter names may
        state.setdefault(_param_key(index), {})[name] = value
    for index, entries in meta["scalars"].items():
        state.setdefault(_param_key(index), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def _param_key(index: str) -> int | str:
    return int(index) if index.isdigit() else index


def _rng_state() -> dict[str, Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda.{index}"] = cuda_state
    return states


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    model_state: dict[str, Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    keep: int | None = 2,
    extra: dict[str, dict[str, Tensor]] | None = None,
) -> Path:
    """Write ``directory/step-<step>/`` atomically, point ``directory/latest`` at it, keep the newest ``keep``.

    ``optimizer`` is an optimizer or its state dict; ``extra`` maps names to further tensor sets.
    A NaN or inf in any of them raises :class:`NonFiniteError` before anything is written.
    """
    directory = Path(directory)
    optimizer_meta = None
    optimizer_tensors: dict[str, Tensor] = {}
    if optimizer is not None:
        state_dict = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        optimizer_tensors, optimizer_meta = _flatten_optimizer(state_dict)
    parts = [("model", model_state), ("optimizer", optimizer_tensors)]
    for where, tensors in [*parts, *((f"extra {name!r}", t) for name, t in (extra or {}).items())]:
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise NonFiniteError(
                f"refusing to save checkpoint step {step}: {where} tensor {bad} holds non-finite values "
                f"(NaN or inf); the checkpoints in {directory} are left as they are"
            )
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    with replacing_folder(final) as staging:  # staged beside, fsynced, swapped in whole
        save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, staging / _FILES[0])
        save_file(optimizer_tensors, staging / _FILES[1])
        save_file(_rng_state(), staging / _FILES[2])
        for name, tensors in (extra or {}).items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, staging / _extra_file(name)
            )
        state = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "optimizer": optimizer_meta,
            "metadata": metadata or {},
            "extra": sorted(extra or {}),
        }
        (staging / _FILES[3]).write_text(json.dumps(state, indent=2))
    atomic_write_text(directory / "latest", final.name + "\n")
    if keep is not None:
        old = sorted(p for p in directory.glob("step-*") if p.is_dir() and p != final)
        for stale in old[: max(len(old) - (keep - 1), 0)]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def clean_staging(
    directory: str | os.PathLike, patterns: tuple[str, ...] = (".step-*", ".latest.*.tmp")
) -> list[Path]:
    """Remove what a killed :func:`save_checkpoint` left in ``directory``: its hidden staging folders and
    the pointer's temporary files (by default; or the hidden files matching ``patterns``). Returns them.
    Call it before a run starts saving, never while another process saves into the folder."""
    removed = []
    for pattern in patterns:
        for path in Path(directory).glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _extra_file(name: str) -> str:
    return f"extra-{name}.safetensors"


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint ``directory/latest`` points at, or None when the folder holds none yet.

    The pointer must hold the name of a checkpoint folder of ``directory`` (``step-<N>``, not a link):
    a path (absolute, or with ``..``) that would resume another run is a :class:`CheckpointError`."""
    directory = Path(directory)
    pointer = directory / "latest"
    if not pointer.exists():
        return None
    if not pointer.is_file():
        raise CheckpointError(
            f"{pointer} must be a file holding a step-<N> name, not a folder or a link to one"
        )
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{pointer} is damaged: not UTF-8 text (it holds a step-<N> name)") from None
    path = directory / name
    if not _CHECKPOINT_NAME.fullmatch(name) or path.is_symlink():
        raise CheckpointError(
            f"{pointer} holds {name!r}, which is not the name of a checkpoint folder in {directory} "
            "(step-<N>); a run resumes only from its own checkpoints"
        )
    if not path.is_dir():
        raise CheckpointError(f"{pointer} points at {name}, which does not exist")
    return path


def checkpoint_folders(directory: str | os.PathLike) -> list[Path]:
    """The ``step-<N>`` checkpoint folders of ``directory`` (links excluded), oldest first."""
    folders = [
        p
        for p in Path(directory).glob("step-*")
        if _CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
    ]
    return sorted(folders, key=lambda p: int(p.name.removeprefix("step-")))


@dataclass
class Resumable:
    """What :func:`find_resumable` found: the loaded checkpoint and, when it fell back, why and past what."""

    checkpoint: Checkpoint
    fallback_reason: str | None = None
    """Why ``latest`` was not used (None when it was)."""
    passed_over: list[Path] = field(default_factory=list)
    """Unreadable checkpoint folders newer than the one found."""


def find_resumable(directory: str | os.PathLike, fallback: bool = False) -> Resumable | None:
    """Load the checkpoint a run in ``directory`` resumes from, or return None when there is none.

    That is the one ``latest`` points at. When it cannot be read (missing, truncated, damaged, non-finite,
    or a bad or missing pointer beside checkpoint folders) this raises its :class:`CheckpointError`, or
    with ``fallback`` loads the newest folder that can be read instead (a :class:`CheckpointError` when
    none can). Reads only: :func:`set_aside` then records a fallback in the folder.
    """
    folders = checkpoint_folders(directory)
    try:
        latest = latest_checkpoint(directory)
        if latest is None:
            if folders:
                raise CheckpointError(
                    f"{directory} holds checkpoint folders ({folders[-1].name}, ...) but no latest pointer"
                )
            return None
        return Resumable(load_checkpoint(latest))
    except CheckpointError as error:
        if not fallback:
            raise
        passed_over = []
        for folder in reversed(folders):
            try:
                return Resumable(load_checkpoint(folder), str(error), passed_over)
            except CheckpointError:
                passed_over.append(folder)
        raise CheckpointError(f"{error}; and no other checkpoint in {directory} can be read") from error


def set_aside(directory: str | os.PathLike, resumable: Resumable) -> list[Path]:
    """After a fallback: rename the unreadable newer folders to ``damaged-step-<N>`` (kept for inspection,
    out of rotation's reach) and point ``latest`` at the checkpoint found. Returns the new names."""
    directory = Path(directory)
    renamed = []
    for folder in resumable.passed_over:
        target = directory / f"damaged-{folder.name}"
        number = 1
        while target.exists():
            target, number = directory / f"damaged-{folder.name}.{number}", number + 1
        os.replace(folder, target)
        renamed.append(target)
    atomic_write_text(directory / "latest", resumable.checkpoint.path.name + "\n")
    return renamed


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint folder; any missing or damaged file, or a NaN or inf in a weight, optimizer or
    extra tensor, raises :class:`CheckpointError` naming the file."""
    path = Path(path)
    for name in _FILES:
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        state = json.loads((path / _FILES[3]).read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"checkpoint {path}: state.json is not valid JSON ({error})") from error
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state.get('format_version')}, expected {FORMAT_VERSION}"
        )
    tensors = {}
    for name in [*_FILES[:3], *map(_extra_file, state.get("extra", []))]:
        try:
            tensors[name] = load_file(path / name)
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"checkpoint {path}: {name} is damaged or truncated ({error})") from error
        bad = first_nonfinite(tensors[name])
        if bad is not None:
            raise CheckpointError(
                f"checkpoint {path}: {name} holds non-finite values (tensor {bad}): its data is damaged, "
                "or it was written by a run that diverged"
            )
    optimizer = None
    if state["optimizer"] is not None:
        optimizer = _unflatten_optimizer(tensors[_FILES[1]], state["optimizer"])
    return Checkpoint(
        step=state["step"],
        model=tensors[_FILES[0]],
        optimizer=optimizer,
        rng=tensors[_FILES[2]],
        metadata=state["metadata"],
        path=path,
        extra={name: tensors[_extra_file(name)] for name in state.get("extra", [])},
    )


def check_model_state(checkpoint: Checkpoint, expected: dict[str, Tensor]) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's weights have exactly the expected names and shapes."""
    missing = sorted(expected.keys() - checkpoint.model.keys())
    unexpected = sorted(checkpoint.model.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not match the model: missing {missing[:5]}"
            f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in expected.items():
        if tuple(checkpoint.model[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {checkpoint.path}: {name} has shape {tuple(checkpoint.model[name].shape)}, "
                f"the model has {tuple(tensor.shape)}"
            )


def restore_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    if checkpoint.optimizer is None:
        raise CheckpointError(f"checkpoint {checkpoint.path} holds no optimizer state")
    optimizer.load_state_dict(checkpoint.optimizer)


def restore_rng(checkpoint: Checkpoint) -> None:
    torch.set_rng_state(checkpoint.rng["cpu"])
    cuda_states = [checkpoint.rng[k] for k in sorted(checkpoint.rng) if k.startswith("cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
