"""ReHyAt for Wan2.1 in diffusers: the self-attention processor, RoPE at absolute frames, :func:`convert_wan`.

Conversion follows diffusers' idiom: the model stays a ``WanTransformer3DModel``; the chosen blocks'
``attn1`` gets a :class:`ReHyAtWanAttnProcessor` and two feature maps registered on the attention
module (``attn1.rehyat_phi_q``, ``attn1.rehyat_phi_k``), so ``parameters()``, ``state_dict()``,
``.to()`` and FSDP see them. Processors are not told the latent grid, so a forward pre-hook on the
transformer records the post-patch ``(T, H, W)`` of every call in a :class:`ReHyAtRuntime` that all
processors of the model share. The same runtime switches the processors into streaming mode for
:func:`rehyat.recurrent_forward`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.attention import (
    AttentionStats,
    HybridAttentionState,
    PolynomialFeatureMap,
    hybrid_attention,
    hybrid_attention_step,
)
from rehyat.attention.kernels import Backend
from rehyat.baselines import ATTENTION_VARIANTS, uniform_hybrid_attention
from rehyat.models.config import ReHyAtConfig

PHI_Q = "rehyat_phi_q"
PHI_K = "rehyat_phi_k"


@dataclass
class ReHyAtRuntime:
    """Per-model state shared by the processors: config, the current latent grid, streaming mode, the
    attention ``backend`` ("auto", "torch" or "triton", as in :func:`rehyat.hybrid_attention`), and
    ``attention``: when set, what the parallel mode calls instead of :func:`configured_attention`, with
    the same arguments (:mod:`rehyat.parallel` sets it to exchange halos and states between ranks)."""

    config: ReHyAtConfig
    blocks: list[int]
    grid: tuple[int, int, int] | None = None
    streaming: bool = False
    backend: str = "auto"
    attention: Callable[..., Tensor] | None = None

    def capture_grid(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: record the post-patch (T, H, W) of the transformer's input."""
        hidden_states = args[0] if args else kwargs.get("hidden_states")
        if hidden_states is None or hidden_states.dim() != 5:
            raise ValueError("ReHyAt expects hidden_states [B, C, F, H, W] as the transformer's first input")
        p_t, p_h, p_w = module.config.patch_size
        _, _, frames, height, width = hidden_states.shape
        if frames // p_t == 0:  # diffusers' patch embedding would fail with a RuntimeError of its own
            raise ValueError(
                f"hidden_states has no latent frames to run: {frames} frame(s) with a temporal patch of {p_t}"
            )
        self.grid = (frames // p_t, height // p_h, width // p_w)


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
    cos = torch.where(temporal, cos, torch.ones_like(cos))
    sin = torch.where(temporal, -sin, torch.zeros_like(sin))  # the inverse rotation
    return apply_rotary(x, cos, sin)


def configured_attention(
    config: ReHyAtConfig,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    *,
    backend: Backend = "auto",
    **geometry,
) -> Tensor:
    """The parallel attention ``config.attention`` names: ReHyAt, or a baseline for ablations.
    Shared by the processor and the stage-1 students, so both train and run the same op."""
    if config.attention == "hybrid":
        return hybrid_attention(q, k, v, fq, fk, backend=backend, **geometry)
    if config.attention == "uniform_hybrid":
        return uniform_hybrid_attention(q, k, v, fq, fk, stride=config.uniform_stride, **geometry)
    return ATTENTION_VARIANTS[config.attention](q, k, v, fq, fk, **geometry)


class ReHyAtWanAttnProcessor:
    """Self-attention processor for ``WanAttention`` computing ReHyAt instead of softmax attention.

    q, k, v are exactly the teacher's (projections, QK RMSNorm, 3D RoPE); the attention is
    :func:`rehyat.hybrid_attention` with the teacher's scale (1/sqrt(head_dim), as SDPA uses), with
    φq, φk read from the attention module. In streaming mode each call is one chunk of whole frames and
    :func:`rehyat.hybrid_attention_step` carries ``state`` to the next call.
    """

    def __init__(self, runtime: ReHyAtRuntime, stats: AttentionStats | None = None) -> None:
        self.runtime = runtime
        self.stats = stats
        self.state: HybridAttentionState | None = None

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the ReHyAt processor serves self-attention only (no context, no mask)")
        grid = self.runtime.grid
        if grid is None:
            raise ValueError("no latent grid captured: call the converted transformer, not its blocks")
        frame_tokens = grid[1] * grid[2]

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary(query, *rotary_emb)
            key = apply_rotary(key, *rotary_emb)

        config = self.runtime.config
        if self.runtime.streaming:
            # The step applies φq, φk (after the inputs' own transform), each only while it is needed
            # (lower peak memory).
            fq, fk = getattr(attn, PHI_Q), getattr(attn, PHI_K)
            if config.feature_rotary != "full":
                phi_q, phi_k = fq, fk
                fq = lambda q: phi_q(feature_input(config, q, rotary_emb))  # noqa: E731
                fk = lambda k: phi_k(feature_input(config, k, rotary_emb))  # noqa: E731
            out, self.state = hybrid_attention_step(
                query,
                key,
                value,
                fq,
                fk,
                self.state,
                frame_tokens=frame_tokens,
                overlap_frames=config.overlap_frames,
                stats=self.stats,
                backend=self.runtime.backend,
            )
        else:
            fq = fk = None
            if hasattr(attn, PHI_Q):  # every variant but "local"
                fq = getattr(attn, PHI_Q)(feature_input(config, query, rotary_emb))
                fk = getattr(attn, PHI_K)(feature_input(config, key, rotary_emb))
            if query.shape[1] != grid[0] * frame_tokens:
                raise ValueError(
                    f"attention got {query.shape[1]} tokens but the captured grid {grid} has "
                    f"{grid[0] * frame_tokens}"
                )
            geometry = dict(
                frame_tokens=frame_tokens,
                chunk_frames=config.chunk_frames,
                overlap_frames=config.overlap_frames,
                causal=config.causal,
                stats=self.stats,
            )
            attend = configured_attention if self.runtime.attention is None else self.runtime.attention
            out = attend(config, query, key, value, fq, fk, backend=self.runtime.backend, **geometry)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def rehyat_runtime(transformer: nn.Module) -> ReHyAtRuntime | None:
    """The runtime of a converted transformer, or None if it is not converted."""
    runtime = getattr(transformer, "_rehyat_runtime", None)
    return runtime if isinstance(runtime, ReHyAtRuntime) else None


def converted_blocks(transformer: nn.Module) -> list[int]:
    """Indices of the blocks whose self-attention runs the ReHyAt processor."""
    return [
        i
        for i, block in enumerate(transformer.blocks)
        if isinstance(block.attn1.processor, ReHyAtWanAttnProcessor)
    ]


def feature_maps(transformer: nn.Module) -> dict[int, tuple[PolynomialFeatureMap, PolynomialFeatureMap]]:
    """(φq, φk) of every converted block, by block index."""
    return {
        i: (getattr(transformer.blocks[i].attn1, PHI_Q), getattr(transformer.blocks[i].attn1, PHI_K))
        for i in converted_blocks(transformer)
        if hasattr(transformer.blocks[i].attn1, PHI_Q)
    }


def _check_wan(transformer: nn.Module) -> None:
    config = getattr(transformer, "config", None)
    if not hasattr(transformer, "blocks") or config is None or not hasattr(config, "patch_size"):
        raise ValueError(f"expected a diffusers WanTransformer3DModel, got {type(transformer).__name__}")


def convert_wan(transformer: nn.Module, config: ReHyAtConfig | None = None) -> nn.Module:
    """Convert the self-attention of the chosen blocks of a ``WanTransformer3DModel`` to ReHyAt, in place.

    Each converted ``blocks[i].attn1`` gets a :class:`ReHyAtWanAttnProcessor` and fresh feature maps
    (``config``'s degree, layers, activation, bias, init) on the module's device and dtype. attn2, the
    FFN, norms and unconverted blocks are not touched. Returns ``transformer``.
    """
    _check_wan(transformer)
    config = ReHyAtConfig() if config is None else config
    if not isinstance(config, ReHyAtConfig):
        raise ValueError(f"config must be a ReHyAtConfig, got {type(config).__name__}")
    if rehyat_runtime(transformer) is not None:
        raise ValueError("this transformer is already converted to ReHyAt")
    blocks = config.resolve_blocks(len(transformer.blocks))
    runtime = ReHyAtRuntime(config=config, blocks=blocks)
    for index in blocks:
        attn = transformer.blocks[index].attn1
        if getattr(attn, "is_cross_attention", False) or getattr(attn, "add_k_proj", None) is not None:
            raise ValueError(f"blocks[{index}].attn1 is not a plain self-attention layer")
        head_dim = attn.inner_dim // attn.heads
        reference = attn.to_q.weight
        for name in (PHI_Q, PHI_K) if config.attention != "local" else ():
            phi = config.feature_map(attn.heads, head_dim)
            attn.add_module(name, phi.to(device=reference.device, dtype=reference.dtype))
        attn.set_processor(ReHyAtWanAttnProcessor(runtime))
    transformer.register_forward_pre_hook(runtime.capture_grid, with_kwargs=True)
    transformer._rehyat_runtime = runtime
    return transformer
