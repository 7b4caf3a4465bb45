"""Every convertible family's published architecture and a tiny one, as plain numbers, to build models
with random weights without any download (stage 2's ``model.architecture``, ``rehyat bench model``,
tests and smoke runs).

An :class:`Architecture` names the diffusers class, its config, and the video geometry its pipeline uses
by default: the VAE's temporal and spatial compression, the pixel size, the text tokens and their width.
The published configs: Wan2.1-T2V-1.3B (:data:`rehyat.models.wan_configs.WAN21_T2V_1_3B`);
SkyReels-V2-T2V-1.3B-540P, which has Wan2.1-1.3B's transformer layout in its own class, at 544×960;
LTX-Video 2B, diffusers' defaults of ``LTXVideoTransformer3DModel`` (28 blocks, 32 heads × 64, 128 latent
channels, T5-XXL captions), at its pipeline's default 512×704. HunyuanVideo (13B, diffusers' defaults, at
its pipeline's default 720×1280) and CogVideoX-5B (at 480×720), with their tiny configs, are in
:data:`JOINT_ARCHITECTURES` (joint text–video attention, docs/method.md §6.1), which
:data:`ARCHITECTURES` includes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rehyat.models.wan_configs import WAN21_T2V_1_3B, tiny_wan_config

LTX_VIDEO_2B: dict[str, Any] = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 64,
    "cross_attention_dim": 2048,
    "num_layers": 28,
    "caption_channels": 4096,
}


#: HunyuanVideo (13B): diffusers' defaults of ``HunyuanVideoTransformer3DModel`` (20 dual- and 40
#: single-stream blocks, 24 heads × 128, RoPE axes 16/56/56, Llama text of 4096, pooled CLIP of 768).
HUNYUAN_VIDEO: dict[str, Any] = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "num_layers": 20,
    "num_single_layers": 40,
    "text_embed_dim": 4096,
    "pooled_projection_dim": 768,
    "rope_axes_dim": [16, 56, 56],
}

#: CogVideoX-5B (1.0): 42 blocks, 48 heads × 64, RoPE, T5-XXL text of 4096 (226 tokens).
COGVIDEOX_5B: dict[str, Any] = {
    "num_attention_heads": 48,
    "attention_head_dim": 64,
    "in_channels": 16,
    "out_channels": 16,
    "time_embed_dim": 512,
    "text_embed_dim": 4096,
    "num_layers": 42,
    "use_rotary_positional_embeddings": True,
}


def tiny_hunyuan_video_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny ``HunyuanVideoTransformer3DModel``: one dual- and one single-stream block
    (overrides replace entries)."""
    config = {
        "in_channels": 4,
        "out_channels": 4,
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "num_layers": 1,
        "num_single_layers": 1,
        "num_refiner_layers": 1,
        "mlp_ratio": 2.0,
        "text_embed_dim": 16,
        "pooled_projection_dim": 8,
        "rope_axes_dim": [4, 4, 4],
    }
    config.update(overrides)
    return config


def tiny_cogvideox_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny ``CogVideoXTransformer3DModel`` in the 5B layout (RoPE; 8×8 latents,
    6 text tokens); ``use_rotary_positional_embeddings=False`` gives 2B's, ``patch_size_t=2`` 1.5's."""
    config = {
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "in_channels": 4,
        "out_channels": 4,
        "time_embed_dim": 8,
        "text_embed_dim": 16,
        "num_layers": 2,
        "sample_width": 8,
        "sample_height": 8,
        "sample_frames": 9,
        "max_text_seq_length": 6,
        "use_rotary_positional_embeddings": True,
    }
    config.update(overrides)
    return config


def tiny_ltx_video_config(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a tiny ``LTXVideoTransformer3DModel`` (overrides replace entries)."""
    config = {
        "in_channels": 8,
        "out_channels": 8,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 16,
        "num_layers": 2,
        "caption_channels": 16,
    }
    config.update(overrides)
    return config


@dataclass(frozen=True)
class Architecture:
    """One model size of one family, with the video geometry of its pipeline's defaults.

    Attributes:
        family: the :class:`~rehyat.models.adapter.FamilyAdapter` name (``"wan"``, ``"ltx-video"``, ...).
        class_name: the diffusers transformer class.
        config: its keyword arguments.
        temporal_compression, spatial_compression: video frames and pixels per latent frame and latent
            pixel of the family's VAE.
        height, width: the pixel size the family generates by default.
        text_tokens, text_dim: the prompt embedding the transformer takes ([B, L, D]).
    """

    family: str
    class_name: str
    config: dict[str, Any] = field(hash=False)
    temporal_compression: int
    spatial_compression: int
    height: int
    width: int
    text_tokens: int
    text_dim: int

    @property
    def latent_channels(self) -> int:
        return self.config["in_channels"]

    def build(self, device: torch.device | str | None = None) -> nn.Module:
        """The model with random weights (fp32), in eval mode, made on ``device``."""
        import diffusers

        with torch.device(device or "cpu"):
            return getattr(diffusers, self.class_name)(**self.config).eval()


ARCHITECTURES: dict[str, Architecture] = {
    "wan2.1-t2v-1.3b": Architecture(
        "wan", "WanTransformer3DModel", WAN21_T2V_1_3B, 4, 8, 480, 832, 512, 4096
    ),
    "skyreels-v2-t2v-1.3b": Architecture(
        "skyreels-v2", "SkyReelsV2Transformer3DModel", WAN21_T2V_1_3B, 4, 8, 544, 960, 512, 4096
    ),
    "ltx-video-2b": Architecture(
        "ltx-video", "LTXVideoTransformer3DModel", LTX_VIDEO_2B, 8, 32, 512, 704, 128, 4096
    ),
    "tiny": Architecture("wan", "WanTransformer3DModel", tiny_wan_config(), 4, 8, 64, 64, 6, 32),
    "tiny-skyreels-v2": Architecture(
        "skyreels-v2", "SkyReelsV2Transformer3DModel", tiny_wan_config(), 4, 8, 64, 64, 6, 32
    ),
    "tiny-ltx-video": Architecture(
        "ltx-video", "LTXVideoTransformer3DModel", tiny_ltx_video_config(), 8, 32, 128, 128, 6, 16
    ),
}

#: The joint text–video attention families (docs/method.md §6.1), also in :data:`ARCHITECTURES`. Text:
#: HunyuanVideo's 256 Llama tokens of 4096 (beside a pooled CLIP vector of ``pooled_projection_dim``),
#: CogVideoX's 226 T5 tokens of 4096.
JOINT_ARCHITECTURES: dict[str, Architecture] = {
    "hunyuan-video": Architecture(
        "hunyuan-video", "HunyuanVideoTransformer3DModel", HUNYUAN_VIDEO, 4, 8, 720, 1280, 256, 4096
    ),
    "cogvideox-5b": Architecture(
        "cogvideox", "CogVideoXTransformer3DModel", COGVIDEOX_5B, 4, 8, 480, 720, 226, 4096
    ),
    "tiny-hunyuan-video": Architecture(
        "hunyuan-video", "HunyuanVideoTransformer3DModel", tiny_hunyuan_video_config(), 4, 8, 64, 64, 6, 16
    ),
    "tiny-cogvideox": Architecture(
        "cogvideox", "CogVideoXTransformer3DModel", tiny_cogvideox_config(), 4, 8, 64, 64, 6, 16
    ),
}

ARCHITECTURES.update(JOINT_ARCHITECTURES)

#: The published size of each family, by its adapter's name (``rehyat bench model --family``): a name in
#: :data:`ARCHITECTURES` or :data:`JOINT_ARCHITECTURES`.
PUBLISHED = {
    "wan": "wan2.1-t2v-1.3b",
    "skyreels-v2": "skyreels-v2-t2v-1.3b",
    "ltx-video": "ltx-video-2b",
    "hunyuan-video": "hunyuan-video",
    "cogvideox": "cogvideox-5b",
}


def architecture(name: str) -> Architecture:
    """The architecture ``name``; a ValueError listing the names otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    return ARCHITECTURES[name]
