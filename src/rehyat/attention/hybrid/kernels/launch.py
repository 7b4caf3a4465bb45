"""ReHyAt attention on the Triton kernels: the parallel form and the streaming step's attention.

Parallel form: per-frame sums Σ φk vᵀ, Σ φk (Triton, fp32) → exclusive prefix over frames and gather
at each chunk's window start (torch, tiny: [B, T, H, D', D]) → fused windowed-softmax + linear kernel.
Gradients flow through all three (the middle one by plain autograd).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rehyat.attention.hybrid.common import AttentionStats, extras_reason, needs_grad, states_from_frame_sums
from rehyat.attention.hybrid.geometry import Geometry, with_keywords
from rehyat.attention.hybrid.kernels.state_sums import SegmentSums, retire_sums, segment_sums
from rehyat.attention.hybrid.kernels.windowed_attention import (
    WindowedHybridAttention,
    windowed_attention_forward,
)
from rehyat.attention.kernels.tuning import feature_block


def _frame_splits(fk: Tensor, frame_tokens: int, min_programs: int) -> int:
    """Runs to cut each frame into for the sums kernel: one program per (frame, head, feature slice)
    leaves most of the GPU idle when a streaming step has only a chunk's frames, so frames are halved
    (up to 8 runs) while that gives fewer than ``min_programs`` programs and runs stay ≥ 64 tokens."""
    batch, n_tokens, heads, feat = fk.shape
    programs = n_tokens // frame_tokens * batch * heads * (feat // feature_block(feat))
    split = 1
    while (
        split < 8
        and programs * split < min_programs
        and frame_tokens % (2 * split) == 0
        and frame_tokens // (2 * split) >= 64
    ):
        split *= 2
    return split


def frame_sums(fk: Tensor, v: Tensor, frame_tokens: int, min_programs: int = 512) -> tuple[Tensor, Tensor]:
    """Per-frame Σ φk vᵀ [B, F, H, D', D] and Σ φk [B, F, H, D'] (fp32), for few frames as fast as for
    many (frames cut into runs whose partial sums are added, see :func:`_frame_splits`)."""
    split = _frame_splits(fk, frame_tokens, min_programs)
    kv, z = SegmentSums.apply(fk, v, frame_tokens // split)
    if split == 1:
        return kv, z
    batch, frames = fk.shape[0], fk.shape[1] // frame_tokens
    return (
        kv.view(batch, frames, split, *kv.shape[2:]).sum(dim=2),
        z.view(batch, frames, split, *z.shape[2:]).sum(dim=2),
    )


def retire_frames(
    fk: Tensor,
    v: Tensor,
    frame_tokens: int,
    kv: Tensor,
    z: Tensor,
    pending_kv: Tensor,
    pending_z: Tensor,
    leaving: int,
    min_programs: int = 512,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The streaming step's state update without gradients, in two launches: the chunk's per-frame sums
    (as partials) and :func:`retire_sums`, which adds the first ``leaving`` frames of [pending ‖ chunk]
    to (kv, z) and keeps the rest pending. Returns (kv, z, pending_kv, pending_z)."""
    split = _frame_splits(fk, frame_tokens, min_programs)
    parts_kv, parts_z = segment_sums(fk, v, frame_tokens // split)
    return retire_sums(parts_kv, parts_z, split, kv, z, pending_kv, pending_z, leaving)


def chunk_states(fk: Tensor, v: Tensor, geometry: Geometry) -> tuple[Tensor, Tensor]:
    """Each chunk's linear state (docs/method.md §2): kv [B, C, H, D', D], z [B, C, H, D'] in fp32."""
    frames = v.shape[1] // geometry.frame_tokens
    chunk_frames = geometry.chunk_tokens(frames) // geometry.frame_tokens
    kv_frames, z_frames = SegmentSums.apply(fk, v, geometry.frame_tokens)
    index = torch.arange(0, frames, chunk_frames, device=v.device)
    starts = (index - geometry.overlap_frames).clamp(min=0)
    ends = (index + chunk_frames).clamp(max=frames)
    return states_from_frame_sums(kv_frames, z_frames, starts, ends, geometry.causal)


def kernel_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    geometry: Geometry,
    stats: AttentionStats | None = None,
) -> Tensor:
    """Parallel ReHyAt attention on the kernels; inputs validated by the caller. ``fq = fk = None``
    drops the linear part (the local-only baseline, and the softmax part alone in the benchmark). A
    geometry with an anchor or a first chunk of its own size is a ValueError: the kernels chunk uniformly."""
    reason = extras_reason(geometry.anchor_frames, None, geometry.first_chunk_frames)
    if reason is not None:
        raise ValueError(f"the kernels cannot take {reason}; use the PyTorch form (backend='torch')")
    kv = z = None
    if fq is not None and fk is not None:
        kv, z = chunk_states(fk, v, geometry)
    else:
        fq = None
    return WindowedHybridAttention.apply(q, k, v, fq, kv, z, geometry, stats)


#: :func:`kernel_attention` with :func:`rehyat.hybrid_attention`'s keywords (tests, benchmarks).
triton_hybrid_attention = with_keywords(kernel_attention)


def triton_step_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cached_k: Tensor,
    cached_v: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    geometry: Geometry,
    stats: AttentionStats | None = None,
    out: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """One chunk of the streaming form: q [B, n, H, D] attends with softmax to the cached keys
    ``cached_k``/``cached_v`` [B, M, H, D] (global keys, anchor frames, overlap frames) followed by the
    chunk's k, v [B, n, H, D], and linearly through the state kv [B, H, D', D], z [B, H, D'].

    Without gradients to track, the kernel reads the cached keys and the chunk in place; otherwise
    the keys are concatenated for the autograd function, whose backward needs them as one tensor.
    ``out`` (no-grad only, checked by the caller) receives the output in place. ``key_mask`` [B, M] bool
    (True = attend) over the cached keys: no-grad only (the backward kernels take no mask).
    """
    kv, z = kv[:, None], z[:, None]
    if needs_grad(q, k, v, cached_k, cached_v, fq, kv, z):
        if out is not None:
            raise ValueError("out= is for inference (run it under torch.no_grad()), but inputs require grad")
        if key_mask is not None:
            raise ValueError(
                "the kernels' backward takes no key mask: a step with masked global keys that needs "
                "gradients runs on backend='torch'"
            )
        keys, values = torch.cat([cached_k, k], dim=1), torch.cat([cached_v, v], dim=1)
        return WindowedHybridAttention.apply(q, keys, values, fq, kv, z, geometry, stats)
    prefix = (cached_k, cached_v) if cached_k.shape[1] else None
    if prefix is None:
        key_mask = None  # no cached keys to mask
    return windowed_attention_forward(
        q, k, v, fq, kv, z, geometry, stats, prefix=prefix, out=out, prefix_mask=key_mask
    )
