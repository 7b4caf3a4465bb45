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
    anchor_frames: int = 0,
    first_chunk_frames: int = 0,
) -> tuple[Tensor, Tensor]:
    """Token-level [N, N] boolean masks (query row, key column) of the softmax keys and the linear keys
    of every query, written directly from the set definitions of docs/method.md §2 and §2.1.

    Query frame f lies in chunk t = f // Tc, whose softmax keys are the frames
    [max(t·Tc − To, 0), min((t+1)·Tc, T)) and the anchor frames [0, A) (causal: those before the
    chunk's end only); its linear keys are the frames before the window that are not softmax keys
    (causal) or every frame that is not a softmax key (bidirectional). With a first chunk of F0 =
    ``first_chunk_frames`` > 0 frames, frame f < F0 lies in the chunk [0, F0) (no overlap before it)
    and frame f >= F0 in [F0 + j·Tc, F0 + (j+1)·Tc) with j = (f − F0) // Tc.
    """
    token_frame = torch.arange(frames * frame_tokens, device=device) // frame_tokens
    if first_chunk_frames:
        later = token_frame >= first_chunk_frames
        start = (
            first_chunk_frames
            + (token_frame - first_chunk_frames).div(chunk_frames, rounding_mode="floor") * chunk_frames
        )
        start = torch.where(later, start, torch.zeros_like(start))
        end = torch.where(later, start + chunk_frames, torch.full_like(start, first_chunk_frames))
    else:
        start = token_frame // chunk_frames * chunk_frames
        end = start + chunk_frames
    low = (start - overlap_frames).clamp(min=0)[:, None]
    high = end.clamp(max=frames)[:, None]
    key_frame = token_frame[None, :]
    softmax_keys = (key_frame >= low) & (key_frame < high)
    anchor = key_frame < anchor_frames
    softmax_keys = softmax_keys | (anchor & (key_frame < high) if causal else anchor)
    linear_keys = (key_frame < low) & ~softmax_keys if causal else ~softmax_keys
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
    anchor_frames: int = 0,
    first_chunk_frames: int = 0,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
    stats: AttentionStats | None = None,
) -> Tensor:
    """docs/method.md §3 evaluated with full N×N score and weight matrices; same call shape and result as
    :func:`rehyat.hybrid_attention`. Inputs are not validated (tests pass well-formed ones).

    Global keys ``global_k``/``global_v`` [B, G, H, D] (§2.1) are appended as G more key columns that
    are softmax keys of every query (where ``global_mask`` [B, G] is True) and never linear keys.

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
        frames,
        frame_tokens,
        chunk_frames,
        overlap_frames,
        causal,
        device=q.device,
        anchor_frames=anchor_frames,
        first_chunk_frames=first_chunk_frames,
    )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    batch, n_tokens = q.shape[:2]
    softmax_keys = softmax_keys.expand(batch, 1, n_tokens, n_tokens)  # [B, 1, N, keys]
    linear_keys = linear_keys.expand(batch, 1, n_tokens, n_tokens)
    if global_k is not None:
        k, v = torch.cat([k, global_k.to(acc)], dim=1), torch.cat([v, global_v.to(acc)], dim=1)
        attend = torch.ones(global_k.shape[:2], dtype=torch.bool, device=q.device)
        attend = attend if global_mask is None else global_mask
        softmax_keys = torch.cat([softmax_keys, attend[:, None, None, :].expand(-1, 1, n_tokens, -1)], -1)
        linear_keys = torch.cat([linear_keys, torch.zeros_like(softmax_keys[..., n_tokens:])], -1)
        if fk is not None:
            fk = torch.cat([fk, fk.new_zeros(batch, global_k.shape[1], *fk.shape[2:])], dim=1)

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
