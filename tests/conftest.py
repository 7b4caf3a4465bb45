"""Shared test helpers: random ReHyAt inputs, the test geometries, and the dense O(N²) masked oracle
(the library's standalone reference, :func:`rehyat.attention.hybrid.naive.naive_hybrid_attention`)."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from rehyat.attention.hybrid.naive import naive_hybrid_attention

# Without a GPU the Triton kernels run in Triton's interpreter, which must be on before Triton is first
# imported, whichever test module imports it first.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

#: docs/method.md §3 with full N×N matrices and token masks; the reference every path is tested against.
dense_oracle = naive_hybrid_attention

# (frames, frame_tokens, chunk_frames, overlap_frames): To = 0, To >= Tc, short last chunk, Tc >= T.
GEOMETRIES = [
    (6, 3, 2, 1),
    (7, 3, 3, 1),  # short last chunk
    (7, 2, 3, 0),  # To = 0
    (8, 2, 2, 3),  # To > Tc
    (9, 2, 3, 3),  # To = Tc
    (5, 4, 1, 1),  # Tc = 1
    (4, 3, 4, 1),  # Tc = T
    (4, 3, 9, 2),  # Tc > T
    (10, 1, 4, 2),
    (1, 5, 3, 1),  # a single frame
]


def make_inputs(
    batch: int,
    frames: int,
    frame_tokens: int,
    heads: int,
    head_dim: int,
    feature_dim: int,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    positive_features: bool = True,
    requires_grad: bool = False,
) -> tuple[Tensor, ...]:
    """q, k, v [B, N, H, D] and fq, fk [B, N, H, D']; features are positive unless asked otherwise."""
    gen = torch.Generator().manual_seed(seed)
    n = frames * frame_tokens
    q, k, v = (torch.randn(batch, n, heads, head_dim, generator=gen, dtype=torch.float64) for _ in range(3))
    fq, fk = (torch.randn(batch, n, heads, feature_dim, generator=gen, dtype=torch.float64) for _ in range(2))
    if positive_features:
        fq, fk = fq.abs() * 0.5, fk.abs() * 0.5
    tensors = [t.to(dtype) for t in (q, k, v, fq, fk)]
    if requires_grad:
        for t in tensors:
            t.requires_grad_(True)
    return tuple(tensors)


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
