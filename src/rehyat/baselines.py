"""Baseline attentions with ReHyAt's call shape (docs/method.md §10), for comparisons and ablations.

Every function takes ``(q, k, v, fq, fk, *, frame_tokens, chunk_frames, overlap_frames, causal, scale)``
([B, N, H, D] / [B, N, H, D']) so they can stand in for :func:`rehyat.hybrid_attention`; arguments a
baseline does not use are accepted and ignored, as each docstring says (``causal`` must still be a
bool). Softmax parts accumulate in
fp32 (fp64 for fp64); linear parts share the denominator guard of the hybrid op.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rehyat.attention.hybrid.chunk import chunked_attention, linear_states
from rehyat.attention.hybrid.common import (
    DENOMINATOR_EPS,
    AttentionStats,
    accumulation_dtype,
    check_bool,
    combine,
    resolve_scale,
    validate_inputs,
)
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.hybrid.parallel import hybrid_attention


def full_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None = None,
    fk: Tensor | None = None,
    *,
    frame_tokens: int | None = None,
    chunk_frames: int | None = None,
    overlap_frames: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    stats: AttentionStats | None = None,
) -> Tensor:
    """Full bidirectional softmax attention (the teacher) through torch SDPA; ignores φ and chunking."""
    del fq, fk, frame_tokens, chunk_frames, overlap_frames, stats
    check_bool("causal", causal)
    scale = resolve_scale(scale, q.shape[-1])
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None = None,
    fk: Tensor | None = None,
    *,
    frame_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool = True,
    scale: float | None = None,
    stats: AttentionStats | None = None,
    first_chunk_frames: int = 0,
) -> Tensor:
    """Local-only: each chunk's softmax over its window (chunk + overlap), no linear part; ignores φ.
    ``first_chunk_frames``: the first chunk's frames when it differs from ``chunk_frames``."""
    check_bool("causal", causal)
    # The linear part's direction is all causal changes, and there is none: the causal geometry.
    geometry = Geometry(
        frame_tokens, chunk_frames, overlap_frames, scale=scale, first_chunk_frames=first_chunk_frames
    )
    validate_inputs(q, k, v, q, k, frame_tokens)
    return chunked_attention(q, k, v, None, None, geometry, stats)


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    *,
    frame_tokens: int,
    chunk_frames: int | None = None,
    overlap_frames: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    stats: AttentionStats | None = None,
) -> Tensor:
    """Linear-only: ``y_i = φq_i·Σ φk_j v_jᵀ / φq_i·Σ φk_j`` over all keys (``causal=False``) or over the
    frames up to the end of the query's own frame (``causal=True``, which has a recurrent form).
    Ignores ``chunk_frames``, ``overlap_frames`` and ``scale``. Rows whose normaliser falls below
    ``DENOMINATOR_EPS`` are guarded like the hybrid op's (with nS taken as 1)."""
    del chunk_frames, overlap_frames, scale
    check_bool("causal", causal)
    Geometry(frame_tokens, None, 0)  # only frame_tokens matters here
    frames = validate_inputs(q, k, v, fq, fk, frame_tokens)
    acc = accumulation_dtype(q.dtype)
    batch, n_tokens, heads, _ = q.shape

    def frames_view(x: Tensor) -> Tensor:
        return x.to(acc).reshape(batch, frames, frame_tokens, heads, x.shape[-1])

    frame_index = torch.arange(frames, device=q.device)
    # Frame f reads the sums over frames [0, f + 1) (causal) or all frames: a "window" [f + 1, f + 1)
    # or [frames, frames) that holds nothing, so prefix (+ suffix) covers exactly the linear keys.
    ends = frame_index + 1 if causal else torch.full_like(frame_index, frames)
    kv, z = linear_states(frames_view(fk), frames_view(v), ends, ends, causal)  # [B, T, H, D', D]
    fqf = frames_view(fq)
    numerator = torch.einsum("btshe,bthed->btshd", fqf, kv)
    normaliser = torch.einsum("btshe,bthe->btsh", fqf, z)
    if stats is not None:
        stats.total_rows += normaliser.numel()
        stats.guarded_rows += int((normaliser < DENOMINATOR_EPS).sum())
    out = numerator / normaliser.clamp(min=DENOMINATOR_EPS).unsqueeze(-1)
    return out.reshape(batch, n_tokens, heads, -1).to(q.dtype)


def uniform_hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    *,
    frame_tokens: int | None = None,
    chunk_frames: int | None = None,
    overlap_frames: int | None = None,
    causal: bool = True,
    scale: float | None = None,
    stats: AttentionStats | None = None,
    stride: int = 2,
) -> Tensor:
    """Uniform hybrid (Attention Surgery): softmax over every ``stride``-th token of the whole sequence,
    linear attention over all other tokens, one shared normaliser as in docs/method.md §3. Bidirectional and
    quadratic (N × N/stride scores), with no recurrent form; ignores chunking and ``causal``."""
    del frame_tokens, chunk_frames, overlap_frames
    check_bool("causal", causal)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    validate_inputs(q, k, v, fq, fk, 1)
    acc = accumulation_dtype(q.dtype)
    scale = resolve_scale(scale, q.shape[-1])
    qa, ka, va = q.to(acc), k.to(acc), v.to(acc)
    scores = torch.einsum("bihd,bjhd->bhij", qa, ka[:, ::stride]) * scale
    row_max = torch.amax(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - row_max)
    a_softmax = torch.einsum("bhij,bjhd->bihd", probs, va[:, ::stride])
    n_softmax = probs.sum(dim=-1).transpose(1, 2)
    linear_keys = torch.arange(q.shape[1], device=q.device) % stride != 0
    fk_rest = fk.to(acc) * linear_keys[None, :, None, None]
    kv = torch.einsum("bjhe,bjhd->bhed", fk_rest, va)
    fqa = fq.to(acc)
    a_linear = torch.einsum("bihe,bhed->bihd", fqa, kv)
    n_linear = torch.einsum("bihe,bhe->bih", fqa, fk_rest.sum(dim=1))
    return combine(a_softmax, n_softmax, a_linear, n_linear, stats).to(q.dtype)


AttentionFn = Callable[..., Tensor]


def call_keywords(geometry: Geometry) -> dict[str, object]:
    """The keywords of a baseline call (the call shape above) for ``geometry``: its fields but the anchor,
    which no baseline has (a :class:`~rehyat.models.ReHyAtConfig` allows one with ReHyAt only)."""
    return dict(
        frame_tokens=geometry.frame_tokens,
        chunk_frames=geometry.chunk_frames,
        overlap_frames=geometry.overlap_frames,
        causal=geometry.causal,
        scale=geometry.scale,
    )


#: Name → op with ReHyAt's call shape, for ablation tables and the training tools.
ATTENTION_VARIANTS: dict[str, AttentionFn] = {
    "rehyat": hybrid_attention,
    "full": full_attention,
    "local": local_attention,
    "linear": linear_attention,
    "uniform_hybrid": uniform_hybrid_attention,
}
