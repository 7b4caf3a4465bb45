"""Public entry point of the parallel ReHyAt op: validation, then the implementation."""

from __future__ import annotations

from torch import Tensor

from rehyat.attention._common import AttentionStats, validate_geometry, validate_inputs
from rehyat.attention.naive import naive_hybrid_attention


def hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    *,
    frame_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool = True,
    scale: float | None = None,
    stats: AttentionStats | None = None,
) -> Tensor:
    """ReHyAt attention (SPEC §2–§3), all chunks in parallel.

    Args:
        q, k, v: [B, N, H, D], tokens frame-major (a frame is a contiguous run of ``frame_tokens``).
        fq, fk: [B, N, H, D'], the feature-mapped q and k (e.g. by :class:`PolynomialFeatureMap`).
        frame_tokens: tokens per latent frame S; N must be a multiple of it.
        chunk_frames: Tc, frames per chunk (the last chunk may be shorter; Tc >= T is full softmax).
        overlap_frames: To, frames before a chunk that its queries also attend to with softmax.
        causal: linear part over past frames only (the recurrent-capable default) or over all others.
        scale: softmax scale, default 1/sqrt(D).
        stats: optional :class:`AttentionStats` accumulating how many rows the denominator guard hit.

    Returns:
        [B, N, H, D] in q's dtype; states and normalisers are accumulated in fp32 (fp64 for fp64).
    """
    validate_geometry(frame_tokens, chunk_frames, overlap_frames)
    validate_inputs(q, k, v, fq, fk, frame_tokens)
    return naive_hybrid_attention(
        q,
        k,
        v,
        fq,
        fk,
        frame_tokens=frame_tokens,
        chunk_frames=chunk_frames,
        overlap_frames=overlap_frames,
        causal=causal,
        scale=scale,
        stats=stats,
    )
