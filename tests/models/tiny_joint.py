"""Tiny models of the joint text–video attention families (HunyuanVideo, CogVideoX 5B / 2B / 1.5 layouts)
with their inputs, the interface of :mod:`tiny_families`: ``Family.build()``, ``Family.inputs()``, ``run``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import CogVideoXTransformer3DModel, HunyuanVideoTransformer3DModel
from tiny_families import FRAMES, SIZE, TEXT_TOKENS, Family, run

from rehyat.models.architectures import tiny_cogvideox_config, tiny_hunyuan_video_config
from rehyat.models.cogvideox import cogvideox_rotary

__all__ = ["FRAMES", "JOINT", "SIZE", "TEXT_TOKENS", "run"]


def _hunyuan(seed: int, **config) -> HunyuanVideoTransformer3DModel:
    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(**tiny_hunyuan_video_config(**config)).eval()


def _cogvideox(seed: int, **config) -> CogVideoXTransformer3DModel:
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**tiny_cogvideox_config(**config)).eval()


def _hunyuan_inputs(batch: int, frames: int, seed: int) -> dict:
    """Latent [B, 4, F, 8, 8] (4×4 tokens a frame); the second prompt's last 2 tokens are padding."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, TEXT_TOKENS)
    mask[1:, -2:] = 0
    return dict(
        hidden_states=torch.randn(batch, 4, frames, 2 * SIZE, 2 * SIZE, generator=gen),
        timestep=torch.rand(batch, generator=gen) * 1000,
        encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 16, generator=gen),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, 8, generator=gen),
        guidance=torch.full((batch,), 6000.0),
    )


def _cogvideox_inputs(patch_t: int = 1) -> Callable[[int, int, int], dict]:
    """Latent [B, F·p_t, 4, 8, 8] with the pipeline's RoPE tables (None for the 2B layout: the build decides)."""

    def make(batch: int, frames: int, seed: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        return dict(
            hidden_states=torch.randn(batch, frames * patch_t, 4, 2 * SIZE, 2 * SIZE, generator=gen),
            encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 16, generator=gen),
            timestep=torch.rand(batch, generator=gen) * 1000,
        )

    return make


class JointFamily(Family):
    """A :class:`Family` whose inputs may need the model (CogVideoX's RoPE tables come from its config)."""

    def inputs_for(self, model: torch.nn.Module, batch: int = 1, frames: int = FRAMES, seed: int = 1) -> dict:
        inputs = self.inputs(batch, frames, seed)
        if isinstance(model, CogVideoXTransformer3DModel):
            latent = inputs["hidden_states"]
            inputs["image_rotary_emb"] = cogvideox_rotary(model, latent.shape[1], *latent.shape[-2:])
        return inputs


JOINT = [
    JointFamily("hunyuan-video", lambda seed=0: _hunyuan(seed), _hunyuan_inputs, "transformer_blocks"),
    JointFamily("cogvideox-5b", lambda seed=0: _cogvideox(seed), _cogvideox_inputs(), "transformer_blocks"),
    JointFamily(
        "cogvideox-2b",
        lambda seed=0: _cogvideox(seed, use_rotary_positional_embeddings=False),
        _cogvideox_inputs(),
        "transformer_blocks",
    ),
    JointFamily(
        "cogvideox-1.5",
        lambda seed=0: _cogvideox(seed, patch_size_t=2),
        _cogvideox_inputs(2),
        "transformer_blocks",
    ),
]
