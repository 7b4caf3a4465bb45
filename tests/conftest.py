"""Shared test helpers: random ReHyAt inputs and the dense O(N²) masked oracle."""

from __future__ import annotations

import torch
from torch import Tensor

from rehyat.attention import DENOMINATOR_EPS

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


def chunk_masks(
    frames: int, frame_tokens: int, chunk: int, overlap: int, causal: bool
) -> tuple[Tensor, Tensor]:
    """Token-level [N, N] masks of the softmax keys and linear keys of each query (SPEC §2), written
    directly from the set definitions, independently of the library's implementation."""
    n = frames * frame_tokens
    soft = torch.zeros(n, n, dtype=torch.bool)
    lin = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        fi = i // frame_tokens
        t = fi // chunk
        lo, hi = max(t * chunk - overlap, 0), min((t + 1) * chunk, frames)
        for j in range(n):
            fj = j // frame_tokens
            in_window = lo <= fj < hi
            soft[i, j] = in_window
            lin[i, j] = (fj < lo) if causal else not in_window
    return soft, lin


def dense_oracle(q, k, v, fq, fk, *, frame_tokens, chunk_frames, overlap_frames, causal=True, scale=None):
    """SPEC §3 evaluated with full N×N matrices and masks (test-only, O(N²) memory)."""
    frames = q.shape[1] // frame_tokens
    soft, lin = chunk_masks(frames, frame_tokens, chunk_frames, overlap_frames, causal)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    s = s.masked_fill(~soft, float("-inf"))
    c = torch.amax(s, dim=-1, keepdim=True)
    p = torch.exp(s - c)
    w_lin = torch.einsum("bihe,bjhe->bhij", fq, fk) * lin
    n_s = p.sum(-1)
    den = torch.maximum(n_s + w_lin.sum(-1), DENOMINATOR_EPS * n_s)
    out = torch.einsum("bhij,bjhd->bihd", p + w_lin, v) / den.transpose(1, 2).unsqueeze(-1)
    return out


def rel_err(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
