"""The chunked PyTorch parallel form of ReHyAt attention: what ``hybrid_attention(backend="torch")`` runs.

All chunks are processed at once. Memory is O(N · window): the softmax scores of a chunk cover only its
window (chunk + overlap frames), and the linear part keeps per-frame sums of φk(k)vᵀ, never an N×N
matrix. Gradients are plain autograd through the formula of docs/method.md §3, including through the row max.
It is tested, like the Triton kernels, against the standalone dense reference
:mod:`rehyat.attention.hybrid.naive`, which shares no code with it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rehyat.attention.hybrid.common import (
    AttentionStats,
    accumulation_dtype,
    combine,
    states_from_frame_sums,
)
from rehyat.attention.hybrid.geometry import Geometry, with_keywords


def _pad_frames(x: Tensor, front: int, back: int) -> Tensor:
    """Zero-pad dim 1 (frames) of ``x`` ([B, T, ...]) by ``front`` and ``back`` frames."""
    if front == 0 and back == 0:
        return x
    shape = list(x.shape)
    parts = []
    if front:
        parts.append(x.new_zeros([shape[0], front, *shape[2:]]))
    parts.append(x)
    if back:
        parts.append(x.new_zeros([shape[0], back, *shape[2:]]))
    return torch.cat(parts, dim=1)


def linear_states(fk: Tensor, v: Tensor, starts: Tensor, ends: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    """Per-chunk states (see :func:`states_from_frame_sums`) from fk [B, T, S, H, D'] and v [B, T, S, H, D]."""
    return states_from_frame_sums(
        torch.einsum("btshe,btshd->bthed", fk, v), fk.sum(dim=2), starts, ends, causal
    )


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    geometry: Geometry,
    stats: AttentionStats | None = None,
) -> Tensor:
    """Parallel ReHyAt attention in PyTorch, chunk by chunk in one batch. Inputs are assumed validated (see ``hybrid_attention``).

    ``fq``/``fk`` set to ``None`` drops the linear part (the local-only baseline).
    """
    frame_tokens = geometry.frame_tokens
    batch, n_tokens, heads, head_dim = q.shape
    frames = n_tokens // frame_tokens
    chunk = geometry.chunk_tokens(frames) // frame_tokens
    n_chunks = -(-frames // chunk)
    # Frames further back than the first chunk's start never enter a window: clamp the overlap.
    overlap = min(geometry.overlap_frames, (n_chunks - 1) * chunk)
    window = chunk + overlap
    padded_frames = n_chunks * chunk
    acc = accumulation_dtype(q.dtype)
    scale = geometry.softmax_scale(head_dim)

    def frames_view(x: Tensor) -> Tensor:
        return x.to(acc).reshape(batch, frames, frame_tokens, heads, x.shape[-1])

    def chunk_queries(x: Tensor) -> Tensor:  # -> [B, C, H, Tc*S, D]
        x = _pad_frames(frames_view(x), 0, padded_frames - frames)
        x = x.reshape(batch, n_chunks, chunk * frame_tokens, heads, x.shape[-1])
        return x.permute(0, 1, 3, 2, 4)

    def window_keys(x: Tensor) -> Tensor:  # -> [B, C, H, W*S, D]
        x = _pad_frames(frames_view(x), overlap, padded_frames - frames)
        x = x.unfold(1, window, chunk)  # [B, C, S, H, D, W]
        x = x.permute(0, 1, 3, 5, 2, 4)  # [B, C, H, W, S, D]
        return x.reshape(batch, n_chunks, heads, window * frame_tokens, x.shape[-1])

    chunk_index = torch.arange(n_chunks, device=q.device)
    # Absolute frame of each window slot; slots before frame 0 or past the end are padding.
    key_frame = chunk_index[:, None] * chunk - overlap + torch.arange(window, device=q.device)
    key_valid = ((key_frame >= 0) & (key_frame < frames)).repeat_interleave(frame_tokens, dim=1)

    qc = chunk_queries(q)
    scores = torch.einsum("bchid,bchjd->bchij", qc, window_keys(k)) * scale
    scores = scores.masked_fill(~key_valid[None, :, None, None, :], float("-inf"))
    row_max = torch.amax(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - row_max)
    n_softmax = probs.sum(dim=-1)
    a_softmax = torch.einsum("bchij,bchjd->bchid", probs, window_keys(v))

    a_linear = n_linear = None
    if fq is not None and fk is not None:
        starts = (chunk_index * chunk - overlap).clamp(min=0)
        ends = ((chunk_index + 1) * chunk).clamp(max=frames)
        kv, z = linear_states(frames_view(fk), frames_view(v), starts, ends, geometry.causal)
        fqc = chunk_queries(fq)
        a_linear = torch.einsum("bchie,bched->bchid", fqc, kv)
        n_linear = torch.einsum("bchie,bche->bchi", fqc, z)

    query_frame = chunk_index[:, None] * chunk + torch.arange(chunk, device=q.device)
    query_valid = (query_frame < frames).repeat_interleave(frame_tokens, dim=1)[None, :, None, :]
    out = combine(a_softmax, n_softmax, a_linear, n_linear, stats, valid_rows=query_valid)
    out = out.permute(0, 1, 3, 2, 4).reshape(batch, padded_frames * frame_tokens, heads, head_dim)
    return out[:, :n_tokens].to(q.dtype)


#: :func:`chunked_attention` with :func:`rehyat.hybrid_attention`'s keywords (tests, benchmarks).
chunked_hybrid_attention = with_keywords(chunked_attention)
