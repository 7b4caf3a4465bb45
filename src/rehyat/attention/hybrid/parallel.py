"""Public entry point of the parallel ReHyAt op: validation, then the implementation (PyTorch or Triton),
through the ``rehyat::hybrid_attention`` custom op in inference and under ``torch.compile``
(:mod:`rehyat.attention.hybrid.custom_ops`)."""

from __future__ import annotations

from torch import Tensor

from rehyat.attention.hybrid.common import AttentionStats, extras_reason, validate_globals, validate_inputs
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
    anchor_frames: int = 0,
    first_chunk_frames: int = 0,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
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
        anchor_frames: A, the first frames of the video kept in every chunk's softmax window and left
            out of the linear sums (an anchor, docs/method.md §2.1); causal chunks see only the anchor
            frames before their own end. 0 (the default): none.
        first_chunk_frames: F0, the first chunk's frames when it differs from Tc (causal only): chunks
            [0, F0), then Tc frames at a time (the first frames attended jointly). 0: uniform chunks.
        global_k, global_v: [B, G, H, D], keys in every chunk's softmax window and never in the linear
            part (e.g. text tokens of a joint text-video attention, docs/method.md §2.1); no query rows.
        global_mask: optional bool [B, G], True where a global key is attended (e.g. padded text: False).
        stats: optional :class:`AttentionStats` accumulating how many rows the denominator guard hit.
        backend: "torch" (the chunked PyTorch form), "triton" (the fused kernels; on CPU only under
            TRITON_INTERPRET=1), or "auto": the kernels on CUDA when Triton is installed and the
            shapes are supported (fp16/bf16/fp32, head dim a power of two in [16, 256], feature dim a
            multiple of 16), else PyTorch. Both give the same outputs and gradients (to rounding).
            A call with an anchor, global keys or a first chunk of its own size runs in PyTorch ("auto"
            picks it; "triton" is a ``ValueError``).

    Returns:
        [B, N, H, D] in q's dtype; states and normalisers are accumulated in fp32 (fp64 for fp64).
    """
    geometry = Geometry(
        frame_tokens, chunk_frames, overlap_frames, causal, scale, anchor_frames, first_chunk_frames
    )
    global_keys = dict(global_k=global_k, global_v=global_v, global_mask=global_mask)
    return attend(q, k, v, fq, fk, geometry, stats=stats, backend=backend, **global_keys)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    geometry: Geometry,
    *,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
    stats: AttentionStats | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """:func:`hybrid_attention` with its geometry given as one :class:`Geometry` (e.g.
    ``ReHyAtConfig.geometry(frame_tokens)``) instead of keywords: the entry of callers that carry a
    Geometry, so the same fields reach the kernels under the same names."""
    if not isinstance(geometry, Geometry):
        raise ValueError(f"geometry must be a Geometry, got {type(geometry).__name__}")
    validate_inputs(q, k, v, fq, fk, geometry.frame_tokens)
    global_keys = validate_globals(q, global_k, global_v, global_mask)
    reason = extras_reason(geometry.anchor_frames, global_keys, geometry.first_chunk_frames)
    chosen = resolve_backend(backend, q, fq, reason)
    return parallel_attention(q, k, v, fq, fk, geometry, backend=chosen, stats=stats, global_keys=global_keys)
