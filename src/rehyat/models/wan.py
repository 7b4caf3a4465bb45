"""ReHyAt for Wan2.1 and Wan2.2 in diffusers: the self-attention processor, RoPE at absolute frames, the
Wan :class:`~rehyat.models.adapter.FamilyAdapter` and :func:`convert_wan`.

Conversion follows diffusers' idiom: the model stays a ``WanTransformer3DModel``; the chosen blocks'
``attn1`` gets a :class:`ReHyAtWanAttnProcessor` and two feature maps registered on the attention
module (``attn1.rehyat_phi_q``, ``attn1.rehyat_phi_k``), so ``parameters()``, ``state_dict()``,
``.to()`` and FSDP see them. Processors are not told the latent grid, so a forward pre-hook on the
transformer records the post-patch ``(T, H, W)`` of every call in a :class:`ReHyAtRuntime` that all
processors of the model share. The same runtime switches the processors into streaming mode for
:func:`rehyat.recurrent_forward`. What is not Wan's own lives in :mod:`rehyat.models.adapter` (the runtime,
the block list, the feature maps; :mod:`rehyat.models` exports them, and their former names here still import).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.models.adapter import (
    FamilyAdapter,
    Grid,
    ReHyAtAttnProcessor,
    convert_with,
    no_frames_error,
    temporal_unrotation,
)
from rehyat.models.config import ReHyAtConfig

__all__ = [
    "WAN",
    "ReHyAtWanAttnProcessor",
    "WanAdapter",
    "apply_rotary",
    "check_rotary_limit",
    "convert_wan",
    "feature_input",
    "rotary_at_frames",
    "rotary_for_frames",
    "temporal_rotary_dims",
]

#: Names that lived here before they moved to :mod:`rehyat.models.adapter`; ``from rehyat.models.wan
#: import rehyat_runtime`` keeps working (the adapter's own objects), while new code imports them from
#: :mod:`rehyat.models` or the adapter.
_FORMER_NAMES = frozenset(
    {
        "PHI_K",
        "PHI_Q",
        "ReHyAtRuntime",
        "configured_attention",
        "converted_blocks",
        "feature_maps",
        "rehyat_runtime",
    }
)


def __getattr__(name: str):
    if name in _FORMER_NAMES:
        from rehyat.models import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Wan's interleaved rotary embedding, the same arithmetic as diffusers' ``WanAttnProcessor`` (the
    same values bit for bit), written without writes into strided slices: an exported graph turns those
    into scatters with an int64 index per element (44 MB each at 1,800 tokens × 12 heads × 128)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


def temporal_rotary_dims(head_dim: int) -> int:
    """How many leading channels of a head Wan's 3D RoPE rotates by the frame index (the rest: h, w)."""
    return head_dim - 4 * (head_dim // 6)


def rotary_for_frames(
    rope: nn.Module, start: int, stop: int, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Wan's 3D RoPE (cos, sin) for post-patch frames [start, stop) of a height × width token grid.

    Same tables and layout as ``WanRotaryPosEmbed.forward`` ([1, n·H·W, 1, D]), at absolute frame
    positions instead of frames counted from 0.
    """
    check_rotary_limit(rope, stop, height, width)
    return rotary_at_frames(rope, torch.arange(start, stop, device=rope.freqs_cos.device), height, width)


def check_rotary_limit(rope: nn.Module, frames: int, height: int, width: int) -> None:
    """ValueError unless the RoPE tables cover ``frames`` frames and a height × width grid."""
    limit = rope.freqs_cos.shape[0]
    if frames > limit or height > limit or width > limit:
        raise ValueError(
            f"RoPE table has {limit} positions (rope_max_seq_len) but the grid needs frames up to {frames}, "
            f"{height} rows and {width} columns"
        )


def rotary_at_frames(rope: nn.Module, frames: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """:func:`rotary_for_frames` at the post-patch frame indices ``frames`` [n] (int64, unchecked).

    The positions are a tensor, not Python ints, so a compiled chunk forward is one graph at every
    position of the video (the frame count n stays static).
    """
    count = frames.shape[0]
    grid = (count, height, width)
    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    tables = []
    for freqs in (rope.freqs_cos, rope.freqs_sin):
        f, h, w = freqs.split(split, dim=1)
        parts = [
            f.index_select(0, frames).view(count, 1, 1, -1).expand(*grid, -1),
            h[:height].view(1, height, 1, -1).expand(*grid, -1),
            w[:width].view(1, 1, width, -1).expand(*grid, -1),
        ]
        tables.append(torch.cat(parts, dim=-1).reshape(1, count * height * width, 1, -1))
    return tables[0], tables[1]


def feature_input(config: ReHyAtConfig, x: Tensor, rotary_emb: tuple[Tensor, Tensor] | None) -> Tensor:
    """What φ reads of q or k [B, N, H, D] after the full RoPE (``rotary_emb``: the (cos, sin) applied).

    ``feature_rotary="full"``: ``x`` itself (docs/method.md §5). ``"spatial"``: the temporal channels rotated
    back by their frame's angle (the height/width rotation stays), so φ's input does not depend on the frame
    index. Undoing the rotation costs one rounding in bf16. Shared by the processor (parallel and
    streaming) and the stage-1 students, so φ is trained on what it will be fed.
    """
    if config.feature_rotary == "full":
        return x
    if rotary_emb is None:
        raise ValueError("feature_rotary='spatial' needs the rotary embedding (cos, sin) that q and k got")
    cos, sin = rotary_emb
    temporal = torch.arange(cos.shape[-1], device=cos.device) < temporal_rotary_dims(x.shape[-1])
    return apply_rotary(x, *temporal_unrotation(temporal, cos, sin))


class ReHyAtWanAttnProcessor(ReHyAtAttnProcessor):
    """ReHyAt processor for ``WanAttention`` (and SkyReels-V2's, the same layer): q, k, v exactly as
    diffusers' ``WanAttnProcessor`` computes them for self-attention (projections, QK RMSNorm across
    heads, Wan's interleaved 3D RoPE on [B, N, H, D])."""

    def project(self, attn: nn.Module, hidden_states: Tensor, rotary_emb) -> tuple[Tensor, Tensor, Tensor]:
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = self.rotate(attn.norm_q(query), attn.heads, rotary_emb)
        key = self.rotate(attn.norm_k(key), attn.heads, rotary_emb)
        return query, key, value.unflatten(2, (attn.heads, -1))

    @staticmethod
    def rotate(x: Tensor, heads: int, rotary_emb) -> Tensor:
        """Wan applies its 3D RoPE per head, after the heads are split."""
        x = x.unflatten(2, (heads, -1))
        return x if rotary_emb is None else apply_rotary(x, *rotary_emb)

    feature_input = staticmethod(feature_input)


@dataclass(frozen=True)
class WanAdapter(FamilyAdapter):
    """Wan2.1 and Wan2.2 (``WanTransformer3DModel``; T2V, I2V, TI2V-5B): the latent [B, C, F, H, W] is
    patchified by ``config.patch_size``, RoPE tables come from ``transformer.rope`` and are applied inside
    attention; timesteps are [B] or, Wan2.2-TI2V, one per token [B, N]."""

    def grid(self, transformer: nn.Module, call: dict) -> Grid:
        hidden_states = call.get("hidden_states")
        if not isinstance(hidden_states, Tensor) or hidden_states.dim() != 5:
            raise ValueError(
                "ReHyAt expects hidden_states [B, C, F, H, W] as the transformer's first input, got "
                f"{tuple(hidden_states.shape) if isinstance(hidden_states, Tensor) else type(hidden_states)}"
            )
        p_t, p_h, p_w = self.patch_size(transformer)
        _, _, frames, height, width = hidden_states.shape
        if frames // p_t == 0:  # diffusers' patch embedding would fail with a RuntimeError of its own
            raise no_frames_error(frames, p_t)
        return frames // p_t, height // p_h, width // p_w

    def frame_axis(self, transformer: nn.Module, grid: Grid) -> tuple[int, int]:
        return 2, self.patch_size(transformer)[0]

    def empty_output(self, transformer: nn.Module, call: dict) -> Tensor:
        hidden_states = call["hidden_states"]
        channels = transformer.proj_out.out_features // math.prod(self.patch_size(transformer))
        return hidden_states.new_empty(0, channels, *hidden_states.shape[2:])

    def check_sweep(self, transformer: nn.Module, call: dict, grid: Grid) -> None:
        super().check_sweep(transformer, call, grid)
        check_rotary_limit(self.rope(transformer), *grid)


WAN = WanAdapter(
    name="wan",
    class_names=("WanTransformer3DModel",),
    processor=ReHyAtWanAttnProcessor,
    temporal_compression=4,
    rope_attr="rope",
)


def convert_wan(transformer: nn.Module, config: ReHyAtConfig | None = None) -> nn.Module:
    """Convert the self-attention of the chosen blocks of a ``WanTransformer3DModel`` to ReHyAt, in place.

    Each converted ``blocks[i].attn1`` gets a :class:`ReHyAtWanAttnProcessor` and fresh feature maps
    (``config``'s degree, layers, activation, bias, init) on the module's device and dtype. attn2, the
    FFN, norms and unconverted blocks are not touched. Returns ``transformer``. The same as
    :func:`rehyat.models.convert` on a Wan model.
    """
    return convert_with(WAN, transformer, config)
