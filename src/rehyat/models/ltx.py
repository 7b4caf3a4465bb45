"""ReHyAt for LTX-Video in diffusers (``LTXVideoTransformer3DModel``).

What differs from Wan (docs/method.md §6):

- the latent comes packed: ``hidden_states`` [B, N, C] with tokens in (frame, row, column) order, and
  the grid is given by the call's ``num_frames``, ``height`` and ``width`` (post-patch; LTX-Video's
  patches are 1×1×1), not by a shape. One latent frame holds 8 video frames (``temporal_compression``);
- its RoPE rotates q and k over the whole inner dimension (all heads at once) before the heads are
  split, with frame, row and column angles interleaved pair by pair, positions scaled by
  ``rope_interpolation_scale`` (or given per token as ``video_coords``). The processor applies it
  exactly where LTX-Video's own does, with diffusers' own function;
- in the recurrent mode a chunk's RoPE positions are passed to diffusers' forward as ``video_coords``
  (the absolute coordinates of the chunk's tokens, the same numbers the rope computes for the whole
  video), so no hook on the rope is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.models.adapter import (
    FamilyAdapter,
    Grid,
    ReHyAtAttnProcessor,
    no_frames_error,
    temporal_unrotation,
)
from rehyat.models.config import ReHyAtConfig


def _apply_rotary(x: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
    """diffusers' LTX-Video RoPE (``transformer_ltx.apply_rotary_emb``) on x [B, N, H·D]."""
    from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

    return apply_rotary_emb(x, rotary_emb)


def ltx_temporal_channels(inner_dim: int, device: torch.device | None = None) -> Tensor:
    """Which of the inner dimension's channels LTX-Video's RoPE rotates by the frame coordinate: after
    ``inner_dim % 6`` unrotated channels, pairs cycle through (frame, row, column)."""
    channel = torch.arange(inner_dim, device=device)
    pad = inner_dim % 6
    return (channel >= pad) & (((channel - pad) // 2) % 3 == 0)


class ReHyAtLTXAttnProcessor(ReHyAtAttnProcessor):
    """ReHyAt processor for ``LTXAttention``: q, k, v exactly as diffusers' ``LTXVideoAttnProcessor``
    computes them for self-attention (projections, QK RMSNorm across heads, RoPE on [B, N, H·D])."""

    def project(self, attn: nn.Module, hidden_states: Tensor, rotary_emb) -> tuple[Tensor, Tensor, Tensor]:
        query = self.rotate(attn.norm_q(attn.to_q(hidden_states)), attn.heads, rotary_emb)
        key = self.rotate(attn.norm_k(attn.to_k(hidden_states)), attn.heads, rotary_emb)
        return query, key, attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))

    @staticmethod
    def rotate(x: Tensor, heads: int, rotary_emb) -> Tensor:
        """LTX-Video applies its RoPE over all heads at once, before they are split."""
        return (x if rotary_emb is None else _apply_rotary(x, rotary_emb)).unflatten(2, (heads, -1))

    @staticmethod
    def feature_input(config: ReHyAtConfig, x: Tensor, rotary_emb) -> Tensor:
        """``"full"``: x itself; ``"spatial"``: x [B, N, H, D] with the frame rotation undone."""
        if config.feature_rotary == "full":
            return x
        if rotary_emb is None:
            raise ValueError(
                "feature_rotary='spatial' needs the rotary embedding (cos, sin) that q and k got"
            )
        cos, sin = rotary_emb
        temporal = ltx_temporal_channels(cos.shape[-1], cos.device)
        return _apply_rotary(x.flatten(2), temporal_unrotation(temporal, cos, sin)).unflatten(2, x.shape[2:])


@dataclass(frozen=True)
class LTXVideoAdapter(FamilyAdapter):
    """LTX-Video: packed tokens [B, N, C], the grid from ``num_frames``, ``height``, ``width``; timesteps
    [B], [B, 1] or one per token [B, N] (image conditioning)."""

    def patch_size(self, transformer: nn.Module) -> tuple[int, int, int]:
        config = transformer.config
        return config.patch_size_t, config.patch_size, config.patch_size

    def grid(self, transformer: nn.Module, call: dict) -> Grid:
        hidden_states = call.get("hidden_states")
        if not isinstance(hidden_states, Tensor) or hidden_states.dim() != 3:
            raise ValueError("ReHyAt expects LTX-Video's packed hidden_states [B, N, C] as the first input")
        grid = tuple(call.get(name) for name in ("num_frames", "height", "width"))
        if any(not isinstance(n, int) for n in grid):
            raise ValueError(
                "ReHyAt needs LTX-Video's latent grid: call the transformer with num_frames, height and width "
                "(video_coords alone, as LTXConditionPipeline passes them, do not say which token is which frame)"
            )
        if grid[0] == 0:
            raise no_frames_error(0, 1)
        if hidden_states.shape[1] != grid[0] * grid[1] * grid[2]:
            raise ValueError(
                f"hidden_states has {hidden_states.shape[1]} tokens but num_frames × height × width = "
                f"{grid[0] * grid[1] * grid[2]}"
            )
        return grid

    def frame_axis(self, transformer: nn.Module, grid: Grid) -> tuple[int, int]:
        return 1, grid[1] * grid[2]

    def empty_output(self, transformer: nn.Module, call: dict) -> Tensor:
        hidden_states = call["hidden_states"]
        return hidden_states.new_empty(0, hidden_states.shape[1], transformer.proj_out.out_features)

    #: LTXPipeline's defaults: its RoPE positions are scaled by (8 / frame rate, 32, 32), the VAE's
    #: compression over the frame rate.
    frame_rate: int = 25
    spatial_compression: int = 32

    def text_dim(self, transformer: nn.Module) -> int:
        return transformer.config.caption_channels

    def latent_channels(self, transformer: nn.Module) -> int:
        config = transformer.config
        return config.in_channels // (config.patch_size_t * config.patch_size**2)

    def normalize_latents(self, vae: nn.Module, latents: Tensor) -> Tensor:
        """``LTXPipeline._normalize_latents``: (z − latents_mean) · scaling_factor / latents_std, with the
        VAE's ``latents_mean``/``latents_std`` buffers."""
        mean, std = (
            buffer.view(1, -1, 1, 1, 1).to(latents) for buffer in (vae.latents_mean, vae.latents_std)
        )
        return (latents - mean) * vae.config.scaling_factor / std

    def denoiser_inputs(
        self,
        transformer: nn.Module,
        latents: Tensor,
        timestep: Tensor,
        prompt_embeds: Tensor,
        prompt_attention_mask: Tensor | None = None,
    ) -> dict:
        """The latent packed as ``LTXPipeline`` packs it ([B, C, F, H, W] → [B, N, C·p_t·p·p], tokens in
        (frame, row, column) order), the prompt's T5 padding masked by ``prompt_attention_mask`` [B, L]
        (every token attended where none is given), RoPE scaled as the pipeline scales it."""
        if prompt_attention_mask is None:
            prompt_attention_mask = prompt_embeds.new_ones(prompt_embeds.shape[:2])
        p_t, p_h, p_w = self.patch_size(transformer)
        batch, channels, frames, height, width = latents.shape
        packed = latents.reshape(batch, channels, frames // p_t, p_t, height // p_h, p_h, width // p_w, p_w)
        packed = packed.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)
        return dict(
            hidden_states=packed,
            encoder_hidden_states=prompt_embeds,
            timestep=timestep,
            encoder_attention_mask=prompt_attention_mask,
            num_frames=frames // p_t,
            height=height // p_h,
            width=width // p_w,
            rope_interpolation_scale=(
                self.temporal_compression / self.frame_rate,
                self.spatial_compression,
                self.spatial_compression,
            ),
        )

    def denoiser_output(self, transformer: nn.Module, output: Tensor, latents: Tensor) -> Tensor:
        p_t, p_h, p_w = self.patch_size(transformer)
        batch, _, frames, height, width = latents.shape
        unpacked = output.reshape(batch, frames // p_t, height // p_h, width // p_w, -1, p_t, p_h, p_w)
        return unpacked.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def pipeline_prompt_arguments(
        self,
        prompt_embeds: Tensor,
        negative_prompt_embeds: Tensor | None,
        prompt_mask: Tensor | None = None,
        negative_prompt_mask: Tensor | None = None,
    ) -> dict:
        """LTXPipeline needs the prompts' attention masks beside precomputed embeddings (every token
        where none is given)."""
        ones = lambda embeds: embeds.new_ones(embeds.shape[:2])  # noqa: E731
        arguments = dict(
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=ones(prompt_embeds) if prompt_mask is None else prompt_mask,
        )
        if negative_prompt_embeds is not None:
            arguments.update(
                negative_prompt_embeds=negative_prompt_embeds,
                negative_prompt_attention_mask=(
                    ones(negative_prompt_embeds) if negative_prompt_mask is None else negative_prompt_mask
                ),
            )
        return arguments

    def chunk_call(self, transformer: nn.Module, call: dict, start: int, stop: int, grid: Grid) -> dict:
        chunk = super().chunk_call(transformer, call, start, stop, grid)
        tokens = grid[1] * grid[2]
        coords = call.get("video_coords")
        if coords is not None:
            coords = coords[:, :, start * tokens : stop * tokens]
        else:
            coords = self._video_coords(transformer.rope, call, start, stop, grid)
        chunk.update(num_frames=stop - start, video_coords=coords)
        return chunk

    @staticmethod
    def _video_coords(rope: nn.Module, call: dict, start: int, stop: int, grid: Grid) -> Tensor:
        """The ``video_coords`` [B, 3, n] of frames [start, stop) that give the RoPE of the whole video's
        call: the rope divides them by its base sizes, where the whole call's grid was multiplied by the
        interpolation scale and patch size first (the same operations, so the same numbers)."""
        hidden_states, scale = call["hidden_states"], call.get("rope_interpolation_scale")
        device = hidden_states.device
        axes = (
            torch.arange(start, stop, dtype=torch.float32, device=device),
            torch.arange(grid[1], dtype=torch.float32, device=device),
            torch.arange(grid[2], dtype=torch.float32, device=device),
        )
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).flatten(1)  # [3, n]
        bases = (rope.base_num_frames, rope.base_height, rope.base_width)
        patches = (rope.patch_size_t, rope.patch_size, rope.patch_size)
        if scale is None:  # the rope reads the plain grid: undo its division (exact for these integers)
            rows = [coords[i] * bases[i] for i in range(3)]
        else:
            rows = [coords[i] * scale[i] * patches[i] for i in range(3)]
        return torch.stack(rows, dim=0).unsqueeze(0).expand(hidden_states.shape[0], -1, -1)


LTX_VIDEO = LTXVideoAdapter(
    name="ltx-video",
    class_names=("LTXVideoTransformer3DModel",),
    processor=ReHyAtLTXAttnProcessor,
    temporal_compression=8,
    blocks_attr="transformer_blocks",
    ffn_attr="ff",
    pipeline_class="LTXPipeline",
    text_encoder_class="T5EncoderModel",
)
