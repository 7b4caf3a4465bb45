"""Tiny stage-2 fixtures shared by the fine-tune, resume and distributed tests."""

from __future__ import annotations

from pathlib import Path

import torch

from rehyat.settings import load_config
from rehyat.training.data import write_latent_dataset
from rehyat.training.finetune import FinetuneConfig

LATENT_SHAPE, PROMPT_SHAPE = (16, 4, 8, 8), (6, 32)  # tiny Wan: 4 frames × 16 tokens, text dim 32


def tiny_dataset(path: Path, samples: int = 8, shard_size: int = 3, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    pairs = [
        (torch.randn(*LATENT_SHAPE, generator=gen), torch.randn(*PROMPT_SHAPE, generator=gen))
        for _ in range(samples)
    ]
    return write_latent_dataset(path, pairs, shard_size=shard_size)


def tiny_base(path: Path) -> Path:
    """A diffusers-layout Wan folder holding a tiny random transformer."""
    from diffusers import WanTransformer3DModel

    from rehyat.models.wan_configs import tiny_wan_config

    torch.manual_seed(0)
    WanTransformer3DModel(**tiny_wan_config()).save_pretrained(path / "transformer")
    return path


def tiny_overrides(out: Path, data: Path, model: Path | None = None, **extra: object) -> list[str]:
    """``key=value`` overrides of a short fp32 CPU run (4 steps, checkpoints every 2)."""
    values = {
        "output_dir": out,
        "data.path": data,
        "steps": 4,
        "checkpoint_every": 2,
        "mixed_precision": "no",
        "optim.lr": 1e-3,
        "progress": "false",
        "model.rehyat": '{"chunk_frames": 2}',
    }
    if model is None:
        values["model.architecture"] = "tiny"
    else:
        values["model.path"] = model
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def tiny_config(out: Path, data: Path, model: Path | None = None, **extra: object) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, tiny_overrides(out, data, model, **extra))


def damage_data_behind_header(file: Path) -> None:
    """Overwrite a safetensors file's tensor bytes with 0xFF (NaN in every float), keeping its header intact."""
    data = bytearray(file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start:] = b"\xff" * (len(data) - start)
    file.write_bytes(bytes(data))
