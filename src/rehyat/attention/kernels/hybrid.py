"""Moved to :mod:`rehyat.attention.hybrid.kernels.launch` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.kernels.launch import (
    chunk_states,
    frame_sums,
    kernel_attention,
    retire_frames,
    triton_hybrid_attention,
    triton_step_attention,
)

__all__ = [
    "chunk_states",
    "frame_sums",
    "kernel_attention",
    "retire_frames",
    "triton_hybrid_attention",
    "triton_step_attention",
]
