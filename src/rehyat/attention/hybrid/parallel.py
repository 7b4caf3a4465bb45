"""Public entry point of the parallel ReHyAt op: validation, then the implementation (PyTorch or Triton),
through the ``rehyat::hybrid_attention`` custom op in inference and under ``torch.compile``
(:mod:`rehyat.attention.hybrid.custom_ops`)."""

from __future__ import annotations

from torch import Tensor

from rehyat.attention.hybrid.common import AttentionStats, validate_inputs
from rehyat.attention.hybrid.custom_ops import parallel_attention
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.kernels import Backend, resolve_backend


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
    backend: Backend = "auto",
) -> Tensor:
    """ReHyAt attention (docs/method.md §2–§3), all chunks in parallel.

    Args:
        q, k, v: [B, N, H, D], tokens frame-major (a frame is a contiguous run of ``frame_tokens``).
        fq, fk: [B, N, H, D'], the feature-mapped q and k (e.g. by :class:`PolynomialFeatureMap`).
        frame_tokens: tokens per latent frame S; N must be a multiple of it.
        chunk_frames: Tc, frames per chunk (the last chunk may be shorter; Tc >= T is full softmax).
        overlap_frames: To, frames before a chunk that its queries also attend to with softmax.
        causal: linear part over past frames only (the recurrent-capable default) or over all others.
        scale: softmax scale, default 1/sqrt(D).
        stats: optional :class:`AttentionStats` accumulating how many rows the denominator guard hit.
        backend: "torch" (the chunked PyTorch form), "triton" (the fused kernels; on CPU only under
            TRITON_INTERPRET=1), or "auto": the kernels on CUDA when Triton is installed and the
            shapes are supported (fp16/bf16/fp32, head dim a power of two in [16, 256], feature dim a
            multiple of 16), else PyTorch. Both give the same outputs and gradients (to rounding).

    Returns:
        [B, N, H, D] in q's dtype; states and normalisers are accumulated in fp32 (fp64 for fp64).
    """
    geometry = Geometry(frame_tokens, chunk_frames, overlap_frames, causal, scale)
    validate_inputs(q, k, v, fq, fk, frame_tokens)
    chosen = resolve_backend(backend, q, fq)
    return parallel_attention(q, k, v, fq, fk, geometry, backend=chosen, stats=stats)
