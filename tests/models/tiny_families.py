"""Tiny models of every convertible family (Wan2.2-TI2V, SkyReels-V2, LTX-Video) built from configs, with
their inputs, as one interface: ``Family.build()`` a model, ``Family.inputs(frames)`` the keyword
arguments of one forward call, ``Family.run(model, inputs)`` its output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import LTXVideoTransformer3DModel, SkyReelsV2Transformer3DModel, WanTransformer3DModel
from torch import Tensor

from rehyat.models.architectures import tiny_ltx_video_config
from rehyat.models.wan_configs import tiny_wan_config

FRAMES, TEXT_TOKENS, SIZE = 7, 6, 4  # 7 post-patch frames of 4×4 = 16 tokens


def _wan22_ti2v(seed: int) -> WanTransformer3DModel:
    """Wan2.2-TI2V-5B's layout (48 latent channels, per-token timesteps), tiny."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(**tiny_wan_config(in_channels=48, out_channels=48)).eval()


def _skyreels_v2(seed: int) -> SkyReelsV2Transformer3DModel:
    torch.manual_seed(seed)
    return SkyReelsV2Transformer3DModel(**tiny_wan_config()).eval()


def _ltx_video(seed: int) -> LTXVideoTransformer3DModel:
    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(**tiny_ltx_video_config()).eval()


def _video_inputs(
    channels: int, timestep: str = "batch", per_frame: bool = False
) -> Callable[[int, int, int], dict]:
    """Wan-style inputs: a latent [B, C, F, 8, 8] (patch 2×2 -> 4×4 tokens per frame)."""

    def make(batch: int, frames: int, seed: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        hidden = torch.randn(batch, channels, frames, 2 * SIZE, 2 * SIZE, generator=gen)
        tokens = frames * SIZE * SIZE
        if timestep == "token":
            steps = torch.rand(batch, tokens, generator=gen) * 1000
        elif timestep == "frame":
            steps = torch.rand(batch, frames, generator=gen) * 1000
        else:
            steps = torch.rand(batch, generator=gen) * 1000
        inputs = dict(
            hidden_states=hidden,
            timestep=steps,
            encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 32, generator=gen),
        )
        if per_frame:
            inputs["enable_diffusion_forcing"] = True
        return inputs

    return make


def _ltx_inputs(timestep: str = "batch", coords: str = "scale") -> Callable[[int, int, int], dict]:
    """LTX-Video's packed inputs [B, F·4·4, 8] with its pipeline's keyword arguments."""

    def make(batch: int, frames: int, seed: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        tokens = frames * SIZE * SIZE
        steps = torch.rand(batch, tokens if timestep == "token" else 1, generator=gen) * 1000
        inputs = dict(
            hidden_states=torch.randn(batch, tokens, 8, generator=gen),
            encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, 16, generator=gen),
            timestep=steps if timestep == "token" else steps[:, 0],
            encoder_attention_mask=torch.ones(batch, TEXT_TOKENS),
            num_frames=frames,
            height=SIZE,
            width=SIZE,
        )
        if coords == "scale":  # what LTXPipeline passes: (8 / frame rate, 32, 32)
            inputs["rope_interpolation_scale"] = (8 / 25, 32.0, 32.0)
        elif coords == "given":  # per-token coordinates, as LTXConditionPipeline computes them
            f, h, w = torch.meshgrid(
                torch.arange(frames) * 8.0,
                torch.arange(SIZE) * 32.0,
                torch.arange(SIZE) * 32.0,
                indexing="ij",
            )
            inputs["video_coords"] = torch.stack([f, h, w]).flatten(1).unsqueeze(0).expand(batch, -1, -1)
        return inputs

    return make


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[int], torch.nn.Module]
    make_inputs: Callable[[int, int, int], dict]
    blocks_attr: str = "blocks"

    def inputs(self, batch: int = 1, frames: int = FRAMES, seed: int = 1) -> dict:
        return self.make_inputs(batch, frames, seed)

    def blocks(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        return getattr(model, self.blocks_attr)

    def __str__(self) -> str:
        return self.name


def run(model: torch.nn.Module, inputs: dict) -> Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


FAMILIES = [
    Family("wan2.2-ti2v", lambda seed=0: _wan22_ti2v(seed), _video_inputs(48, timestep="token")),
    Family("skyreels-v2", lambda seed=0: _skyreels_v2(seed), _video_inputs(16)),
    Family(
        "skyreels-v2-df",
        lambda seed=0: _skyreels_v2(seed),
        _video_inputs(16, timestep="frame", per_frame=True),
    ),
    Family("ltx-video", lambda seed=0: _ltx_video(seed), _ltx_inputs(), "transformer_blocks"),
    Family(
        "ltx-video-i2v", lambda seed=0: _ltx_video(seed), _ltx_inputs(timestep="token"), "transformer_blocks"
    ),
    Family(
        "ltx-video-coords", lambda seed=0: _ltx_video(seed), _ltx_inputs(coords="given"), "transformer_blocks"
    ),
    Family(
        "ltx-video-plain", lambda seed=0: _ltx_video(seed), _ltx_inputs(coords="none"), "transformer_blocks"
    ),
]
