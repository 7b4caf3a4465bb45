"""ReHyAt checkpoints: ``rehyat_config.json`` + ``rehyat.safetensors`` next to an untouched base model.

Only what conversion added (the φ weights) is stored, unless the base weights were fine-tuned: then
they go to ``transformer/`` in diffusers layout (``config.json`` + ``diffusion_pytorch_model.safetensors``,
loadable by ``WanTransformer3DModel.from_pretrained``). No pickle: JSON and safetensors only. Every file
is written to a temporary file in the same folder and moved into place with ``os.replace``; the JSON
is written last, so a folder with a ``rehyat_config.json`` is complete. Loading validates everything
(format, model dimensions, config, tensor names and shapes) before it changes the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from rehyat.models.config import ReHyAtConfig
from rehyat.models.wan import PHI_K, PHI_Q, convert_wan, converted_blocks, rehyat_runtime
from rehyat.utils import atomic_write_tensors, atomic_write_text

CONFIG_NAME = "rehyat_config.json"
WEIGHTS_NAME = "rehyat.safetensors"
BASE_FOLDER = "transformer"
BASE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
FORMAT = "rehyat"
FORMAT_VERSION = 1


def _is_rehyat_key(name: str) -> bool:
    return f".{PHI_Q}." in name or f".{PHI_K}." in name


def _model_dims(transformer: nn.Module) -> dict[str, object]:
    config = transformer.config
    return {
        "num_layers": len(transformer.blocks),
        "num_attention_heads": config.num_attention_heads,
        "attention_head_dim": config.attention_head_dim,
        "patch_size": list(config.patch_size),
    }


def _expected_shapes(transformer: nn.Module, config: ReHyAtConfig, blocks: list[int]) -> dict[str, tuple]:
    """Names and shapes of the φ tensors that conversion with ``config`` creates (built on meta)."""
    shapes = {}
    for index in blocks if config.attention != "local" else ():
        attn = transformer.blocks[index].attn1
        with torch.device("meta"):
            phi = config.feature_map(attn.heads, attn.inner_dim // attn.heads)
        for prefix in (PHI_Q, PHI_K):
            for name, tensor in phi.state_dict().items():
                shapes[f"blocks.{index}.attn1.{prefix}.{name}"] = tuple(tensor.shape)
    return shapes


def _check_tensors(what: str, tensors: dict[str, Tensor], expected: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the model: missing {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{what}: {name} has shape {tuple(tensors[name].shape)}, the model needs {shape}"
            )


def save_rehyat(
    transformer: nn.Module, path: str | os.PathLike, *, include_base_weights: bool = False
) -> Path:
    """Save a converted transformer's ReHyAt state to the folder ``path`` (created if needed).

    ``include_base_weights=True`` also saves the base weights (after fine-tuning) under ``transformer/``
    in diffusers layout. Returns the folder.
    """
    runtime = rehyat_runtime(transformer)
    if runtime is None:
        raise ValueError("save_rehyat needs a transformer converted with convert_wan")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = transformer.state_dict()
    if include_base_weights:
        base = folder / BASE_FOLDER
        base.mkdir(exist_ok=True)
        atomic_write_tensors(
            base / BASE_WEIGHTS_NAME, {k: v for k, v in state.items() if not _is_rehyat_key(k)}
        )
        atomic_write_text(base / "config.json", transformer.to_json_string())
    atomic_write_tensors(folder / WEIGHTS_NAME, {k: v for k, v in state.items() if _is_rehyat_key(k)})
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": type(transformer).__name__,
        "config": runtime.config.to_dict(),
        "converted_blocks": runtime.blocks,
        "model": _model_dims(transformer),
        "base_weights": include_base_weights,
    }
    atomic_write_text(folder / CONFIG_NAME, json.dumps(metadata, indent=2))
    return folder


def read_rehyat_config(path: str | os.PathLike) -> ReHyAtConfig:
    """The :class:`ReHyAtConfig` stored in a ReHyAt checkpoint folder."""
    return ReHyAtConfig.from_dict(_read_metadata(Path(path))["config"])


def _read_metadata(folder: Path) -> dict:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ValueError(f"{folder} is not a ReHyAt checkpoint: {CONFIG_NAME} is missing")
    metadata = json.loads(config_path.read_text())
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path} is not a ReHyAt checkpoint of format version {FORMAT_VERSION} "
            f"(format={metadata.get('format')!r}, version={metadata.get('format_version')!r})"
        )
    return metadata


def load_rehyat(transformer: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ReHyAt checkpoint into ``transformer``, converting it first if it is not converted yet.

    Raises ``ValueError`` — before anything in the model changes — if the checkpoint was made for
    another architecture (block count, heads, head dim, patch size), another ReHyAt config than the
    one the model is already converted with, or holds tensors of other names or shapes. Returns
    ``transformer``.
    """
    folder = Path(path)
    metadata = _read_metadata(folder)
    config = ReHyAtConfig.from_dict(metadata["config"])
    if metadata.get("architecture") != type(transformer).__name__:
        raise ValueError(
            f"checkpoint is for {metadata.get('architecture')}, the model is {type(transformer).__name__}"
        )
    dims = _model_dims(transformer)
    for key, value in metadata["model"].items():
        if dims.get(key) != value:
            raise ValueError(
                f"checkpoint was made for a model with {key}={value}, this model has {dims.get(key)}"
            )
    blocks = config.resolve_blocks(len(transformer.blocks))
    if metadata["converted_blocks"] != blocks:
        raise ValueError(
            f"checkpoint lists blocks {metadata['converted_blocks']} but its config gives {blocks}"
        )
    runtime = rehyat_runtime(transformer)
    if runtime is not None and (runtime.config != config or converted_blocks(transformer) != blocks):
        raise ValueError(
            f"the model is already converted with {runtime.config} on blocks {converted_blocks(transformer)}; "
            f"the checkpoint has {config} on blocks {blocks}"
        )

    tensors = load_file(folder / WEIGHTS_NAME)
    _check_tensors(f"{folder / WEIGHTS_NAME}", tensors, _expected_shapes(transformer, config, blocks))
    if metadata["base_weights"]:
        base_path = folder / BASE_FOLDER / BASE_WEIGHTS_NAME
        base = load_file(base_path)
        expected = {k: tuple(v.shape) for k, v in transformer.state_dict().items() if not _is_rehyat_key(k)}
        _check_tensors(str(base_path), base, expected)
        tensors.update(base)

    if runtime is None:
        convert_wan(transformer, config)
    transformer.load_state_dict(tensors, strict=False)  # names and shapes were checked above
    return transformer
