"""Tiny Wan transformers and inputs shared by the model tests (≥ 16 tokens per latent frame, 7 frames)."""

from __future__ import annotations

import copy

import torch
from diffusers import WanTransformer3DModel
from torch import Tensor

from rehyat import ReHyAtConfig, convert_wan
from rehyat.models.wan_configs import tiny_wan_config

FRAMES, LATENT_SIZE, TEXT_TOKENS = 7, 8, 6  # 8×8 latent, patch 2×2 -> 16 tokens per frame


def tiny_wan(seed: int = 0, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**tiny_wan_config(**overrides)).eval()


def tiny_inputs(
    batch: int = 1, frames: int = FRAMES, text_dim: int = 32, seed: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, 16, frames, LATENT_SIZE, LATENT_SIZE, generator=gen)
    timestep = torch.tensor([700.0, 300.0][:batch] + [500.0] * max(batch - 2, 0))
    context = torch.randn(batch, TEXT_TOKENS, text_dim, generator=gen)
    return hidden, timestep, context


def converted(model: WanTransformer3DModel, **config) -> WanTransformer3DModel:
    """A converted deep copy (the original stays a plain Wan model)."""
    return convert_wan(copy.deepcopy(model), ReHyAtConfig(**config))


def run(model: WanTransformer3DModel, hidden: Tensor, timestep: Tensor, context: Tensor, **kwargs) -> Tensor:
    with torch.no_grad():
        return model(hidden, timestep, context, return_dict=False, **kwargs)[0]
