"""ReHyAt attention on the Triton kernels: the parallel form and the streaming step's attention.

Parallel form: per-frame sums Σ φk vᵀ, Σ φk (Triton, fp32) → exclusive prefix over frames and gather
at each chunk's window start (torch, tiny: [B, T, H, D', D]) → fused windowed-softmax + linear kernel.
Gradients flow through all three (the middle one by plain autograd).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rehyat.attention._common import AttentionStats, resolve_scale
from rehyat.attention.kernels.states import SegmentSums
from rehyat.attention.kernels.windowed import WindowedHybridAttention
from rehyat.attention.naive import states_from_frame_sums


def chunk_states(
    fk: Tensor, v: Tensor, frame_tokens: int, chunk: int, overlap: int, causal: bool
) -> tuple[Tensor, Tensor]:
    """Each chunk's linear state (SPEC §2): kv [B, C, H, D', D], z [B, C, H, D'] in fp32."""
    frames = v.shape[1] // frame_tokens
    kv_frames, z_frames = SegmentSums.apply(fk, v, frame_tokens)
    index = torch.arange(0, frames, chunk, device=v.device)
    starts = (index - overlap).clamp(min=0)
    ends = (index + chunk).clamp(max=frames)
    return states_from_frame_sums(kv_frames, z_frames, starts, ends, causal)


def triton_hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    *,
    frame_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool = True,
    scale: float | None = None,
    stats: AttentionStats | None = None,
) -> Tensor:
    """Parallel ReHyAt attention on the kernels; inputs validated by the caller. ``fq = fk = None``
    drops the linear part (the local-only baseline, and the softmax part alone in the benchmark)."""
    frames = q.shape[1] // frame_tokens
    chunk = min(chunk_frames, frames)
    kv = z = None
    if fq is not None and fk is not None:
        kv, z = chunk_states(fk, v, frame_tokens, chunk, overlap_frames, causal)
    else:
        fq = None
    return WindowedHybridAttention.apply(
        q,
        k,
        v,
        fq,
        kv,
        z,
        chunk * frame_tokens,
        overlap_frames * frame_tokens,
        0,
        frame_tokens,
        resolve_scale(scale, q.shape[-1]),
        stats,
    )


def triton_step_attention(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    *,
    frame_tokens: int,
    scale: float,
    stats: AttentionStats | None = None,
) -> Tensor:
    """One chunk of the streaming form: q [B, n, H, D] attends with softmax to all of ``keys``/``values``
    ([B, M + n, H, D], cached frames first) and linearly through the state kv [B, H, D', D], z [B, H, D']."""
    n_q, n_k = q.shape[1], keys.shape[1]
    return WindowedHybridAttention.apply(
        q, keys, values, fq, kv[:, None], z[:, None], n_q, 0, n_k - n_q, frame_tokens, scale, stats
    )
