"""The standalone dense reference of ReHyAt attention: docs/method.md §2–§3 written out with N×N token masks.

Every fast path (the chunked PyTorch form in :mod:`rehyat.attention.hybrid.chunk`, the recurrent step, the
Triton kernels) is tested against :func:`naive_hybrid_attention`. It is deliberately independent of
them: nothing under ``src/rehyat`` imports this module, and it imports only plain constants and types
(``DENOMINATOR_EPS``, ``AttentionStats``), so an edit to a fast path can never move the reference too.
Memory is O(B·H·N²): for tests and small checks only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rehyat.attention.hybrid.common import DENOMINATOR_EPS, AttentionStats


def chunk_masks(
    frames: int,
    frame_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-level [N, N] boolean masks (query row, key column) of the softmax keys and the linear keys
    of every query, written directly from the set definitions of docs/method.md §2.

    Query frame f lies in chunk t = f // Tc, whose softmax keys are the frames
    [max(t·Tc − To, 0), min((t+1)·Tc, T)); its linear keys are the frames before that window (causal)
    or every frame outside it (bidirectional).
    """
    token_frame = torch.arange(frames * frame_tokens, device=device) // frame_tokens
    chunk = token_frame // chunk_frames
    low = (chunk * chunk_frames - overlap_frames).clamp(min=0)[:, None]
    high = ((chunk + 1) * chunk_frames).clamp(max=frames)[:, None]
    key_frame = token_frame[None, :]
    softmax_keys = (key_frame >= low) & (key_frame < high)
    linear_keys = key_frame < low if causal else ~softmax_keys
    return softmax_keys, linear_keys


def naive_hybrid_attention(
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
    """docs/method.md §3 evaluated with full N×N score and weight matrices; same call shape and result as
    :func:`rehyat.hybrid_attention`. Inputs are not validated (tests pass well-formed ones).

    ``fq = fk = None`` drops the linear part (local-only attention). Computes in float64 for float64
    inputs and float32 otherwise, returns q's dtype. Gradients are plain autograd through the formula,
    the row max included. The denominator guard is ``max(nS + nL, DENOMINATOR_EPS · nS)``; ``stats``
    counts the rows where it fires.
    """
    out_dtype = q.dtype
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    frames = q.shape[1] // frame_tokens
    softmax_keys, linear_keys = chunk_masks(
        frames, frame_tokens, chunk_frames, overlap_frames, causal, device=q.device
    )
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    s = s.masked_fill(~softmax_keys, float("-inf"))
    c = torch.amax(s, dim=-1, keepdim=True)  # the row max over the softmax keys only
    weights = torch.exp(s - c)
    n_softmax = weights.sum(dim=-1)
    denominator = n_softmax
    if fq is not None and fk is not None:
        w_linear = torch.einsum("bihe,bjhe->bhij", fq.to(acc), fk.to(acc)) * linear_keys
        denominator = n_softmax + w_linear.sum(dim=-1)  # not rescaled by exp(-c): docs/method.md §3
        weights = weights + w_linear
    floor = DENOMINATOR_EPS * n_softmax
    if stats is not None:
        stats.total_rows += denominator.numel()
        stats.guarded_rows += int((denominator < floor).sum())
    denominator = torch.maximum(denominator, floor)
    out = torch.einsum("bhij,bjhd->bihd", weights, v) / denominator.transpose(1, 2).unsqueeze(-1)
    return out.to(out_dtype)
