"""The chunked PyTorch parallel form of ReHyAt attention: what ``hybrid_attention(backend="torch")`` runs.

All chunks are processed at once. Memory is O(N · window): the softmax scores of a chunk cover only its
window (chunk + overlap frames), and the linear part keeps per-frame sums of φk(k)vᵀ, never an N×N
matrix. Gradients are plain autograd through the formula of docs/method.md §3, including through the row max.
It is tested, like the Triton kernels, against the standalone dense reference
:mod:`rehyat.attention.hybrid.naive`, which shares no code with it.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from rehyat.attention.hybrid.common import (
    AttentionStats,
    accumulation_dtype,
    combine,
    states_from_frame_sums,
)
from rehyat.attention.hybrid.geometry import Geometry, with_keywords


def pad_frames(x: Tensor, front: int, back: int) -> Tensor:
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


def linear_states(
    fk: Tensor, v: Tensor, starts: Tensor, ends: Tensor, causal: bool, anchor_frames: int = 0
) -> tuple[Tensor, Tensor]:
    """Per-chunk states (see :func:`states_from_frame_sums`) from fk [B, T, S, H, D'] and v [B, T, S, H, D];
    the first ``anchor_frames`` frames (softmax keys of every chunk, docs/method.md §2.1) are left out."""
    kv_frames, z_frames = torch.einsum("btshe,btshd->bthed", fk, v), fk.sum(dim=2)
    if anchor_frames:
        keep = (torch.arange(fk.shape[1], device=fk.device) >= anchor_frames).to(kv_frames.dtype)
        kv_frames, z_frames = kv_frames * keep[:, None, None, None], z_frames * keep[:, None, None]
    return states_from_frame_sums(kv_frames, z_frames, starts, ends, causal)


def _extra_keys(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    geometry: Geometry,
    global_keys: tuple[Tensor, Tensor, Tensor | None] | None,
    starts: Tensor,
    ends: Tensor,
    acc: torch.dtype,
    front: int = 0,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """The keys every chunk adds to its window (docs/method.md §2.1): k, v [B, H, E, D] (global keys,
    then the anchor frames' tokens) and which of them each chunk attends to, [B or 1, C, E] (the global
    mask; an anchor frame only outside the chunk's window, and, causal, before the chunk's end).
    ``starts``/``ends`` count ``front`` empty frames before the video."""
    frame_tokens = geometry.frame_tokens
    batch, n_chunks = q.shape[0], starts.shape[0]
    keys, values, valid = [], [], []
    if global_keys is not None:
        global_k, global_v, global_mask = global_keys
        keys.append(global_k.to(acc).transpose(1, 2))
        values.append(global_v.to(acc).transpose(1, 2))
        mask = (
            global_mask
            if global_mask is not None
            else global_k.new_ones(global_k.shape[:2], dtype=torch.bool)
        )
        valid.append(mask[:, None, :].expand(batch, n_chunks, -1))
    anchor = min(geometry.anchor_frames, q.shape[1] // frame_tokens)
    if anchor:
        keys.append(k[:, : anchor * frame_tokens].to(acc).transpose(1, 2))
        values.append(v[:, : anchor * frame_tokens].to(acc).transpose(1, 2))
        frame = front + torch.arange(anchor, device=q.device)[None, :]
        outside = frame < starts[:, None]  # anchor frames in the window are already keys there
        if not geometry.causal:
            outside = outside | (frame >= ends[:, None])
        valid.append(outside.repeat_interleave(frame_tokens, dim=1)[None].expand(batch, -1, -1))
    if not keys:
        return None
    return torch.cat(keys, dim=2), torch.cat(values, dim=2), torch.cat(valid, dim=2)


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    geometry: Geometry,
    stats: AttentionStats | None = None,
    *,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
) -> Tensor:
    """Parallel ReHyAt attention in PyTorch, chunk by chunk in one batch. Inputs are assumed validated (see ``hybrid_attention``).

    ``fq``/``fk`` set to ``None`` drops the linear part (the local-only baseline). ``global_k``,
    ``global_v`` [B, G, H, D] (with ``global_mask`` [B, G]) and ``geometry.anchor_frames`` add keys to
    every chunk's softmax window (docs/method.md §2.1). A first chunk of its own size
    (``geometry.first_chunk_frames`` = F0) is attended on its own; the later chunks as uniform chunks of a
    video that starts with empty frames, so many that F0 falls on a chunk boundary.
    """
    global_keys = None if global_k is None else (global_k, global_v, global_mask)
    first, frame_tokens = geometry.first_chunk_frames, geometry.frame_tokens
    uniform = replace(geometry, first_chunk_frames=0)
    frames = q.shape[1] // frame_tokens
    if not first or geometry.chunk_frames is None:
        return _uniform_chunks(q, k, v, fq, fk, uniform, stats, global_keys)
    if first >= frames:  # the whole video is the first chunk
        return _uniform_chunks(q, k, v, fq, fk, replace(uniform, chunk_frames=first), stats, global_keys)
    tokens = first * frame_tokens
    head = _uniform_chunks(
        *(None if x is None else x[:, :tokens] for x in (q, k, v, fq, fk)),
        replace(uniform, chunk_frames=first, overlap_frames=0),
        stats,
        global_keys,
    )
    front = -first % geometry.chunk_frames
    rest = _uniform_chunks(q, k, v, fq, fk, uniform, stats, global_keys, front=front, skip=first)
    return torch.cat([head, rest[:, tokens:]], dim=1)


def _uniform_chunks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    geometry: Geometry,
    stats: AttentionStats | None,
    global_keys: tuple[Tensor, Tensor, Tensor | None] | None,
    *,
    front: int = 0,
    skip: int = 0,
) -> Tensor:
    """:func:`chunked_attention` with chunks of Tc frames counted from ``front`` empty frames before the
    video (never keys, no query rows); the rows of the first ``skip`` frames are left to another call
    (their values are dropped by the caller and not counted in ``stats``)."""
    frame_tokens = geometry.frame_tokens
    batch, n_tokens, heads, head_dim = q.shape
    frames = n_tokens // frame_tokens
    chunk = geometry.chunk_tokens(frames + front) // frame_tokens
    n_chunks = -(-(frames + front) // chunk)
    # Frames further back than the first chunk's start never enter a window: clamp the overlap.
    overlap = min(geometry.overlap_frames, (n_chunks - 1) * chunk)
    window = chunk + overlap
    padded_frames = n_chunks * chunk
    acc = accumulation_dtype(q.dtype)
    scale = geometry.softmax_scale(head_dim)

    def frames_view(x: Tensor) -> Tensor:
        return x.to(acc).reshape(batch, frames, frame_tokens, heads, x.shape[-1])

    def chunk_queries(x: Tensor) -> Tensor:  # -> [B, C, H, Tc*S, D]
        x = pad_frames(frames_view(x), front, padded_frames - frames - front)
        x = x.reshape(batch, n_chunks, chunk * frame_tokens, heads, x.shape[-1])
        return x.permute(0, 1, 3, 2, 4)

    def window_keys(x: Tensor) -> Tensor:  # -> [B, C, H, W*S, D]
        x = pad_frames(frames_view(x), overlap + front, padded_frames - frames - front)
        x = x.unfold(1, window, chunk)  # [B, C, S, H, D, W]
        x = x.permute(0, 1, 3, 5, 2, 4)  # [B, C, H, W, S, D]
        return x.reshape(batch, n_chunks, heads, window * frame_tokens, x.shape[-1])

    chunk_index = torch.arange(n_chunks, device=q.device)
    # Frame of each window slot counting the empty front frames; slots before the video or past its end
    # are padding.
    key_frame = chunk_index[:, None] * chunk - overlap + torch.arange(window, device=q.device)
    key_valid = ((key_frame >= front) & (key_frame < frames + front)).repeat_interleave(frame_tokens, dim=1)

    starts = (chunk_index * chunk - overlap).clamp(min=0)
    ends = ((chunk_index + 1) * chunk).clamp(max=frames + front)
    extra = _extra_keys(q, k, v, geometry, global_keys, starts, ends, acc, front)

    qc = chunk_queries(q)
    scores = torch.einsum("bchid,bchjd->bchij", qc, window_keys(k)) * scale
    scores = scores.masked_fill(~key_valid[None, :, None, None, :], float("-inf"))
    if extra is None:
        row_max = torch.amax(scores, dim=-1, keepdim=True)
        probs = torch.exp(scores - row_max)
        n_softmax = probs.sum(dim=-1)
        a_softmax = torch.einsum("bchij,bchjd->bchid", probs, window_keys(v))
    else:  # one row max over the window and the extra keys (docs/method.md §2.1)
        extra_k, extra_v, extra_valid = extra
        extra_scores = torch.einsum("bchid,bhjd->bchij", qc, extra_k) * scale
        extra_scores = extra_scores.masked_fill(~extra_valid[:, :, None, None, :], float("-inf"))
        row_max = torch.maximum(
            torch.amax(scores, dim=-1, keepdim=True), torch.amax(extra_scores, dim=-1, keepdim=True)
        )
        probs, extra_probs = torch.exp(scores - row_max), torch.exp(extra_scores - row_max)
        n_softmax = probs.sum(dim=-1) + extra_probs.sum(dim=-1)
        a_softmax = torch.einsum("bchij,bchjd->bchid", probs, window_keys(v))
        a_softmax = a_softmax + torch.einsum("bchij,bhjd->bchid", extra_probs, extra_v)

    a_linear = n_linear = None
    if fq is not None and fk is not None:
        anchor = geometry.anchor_frames and front + geometry.anchor_frames
        kv, z = linear_states(
            pad_frames(frames_view(fk), front, 0),
            pad_frames(frames_view(v), front, 0),
            starts,
            ends,
            geometry.causal,
            anchor,
        )
        fqc = chunk_queries(fq)
        a_linear = torch.einsum("bchie,bched->bchid", fqc, kv)
        n_linear = torch.einsum("bchie,bche->bchi", fqc, z)

    query_frame = chunk_index[:, None] * chunk + torch.arange(chunk, device=q.device)
    query_valid = (query_frame >= front + skip) & (query_frame < frames + front)
    query_valid = query_valid.repeat_interleave(frame_tokens, dim=1)[None, :, None, :]
    out = combine(a_softmax, n_softmax, a_linear, n_linear, stats, valid_rows=query_valid)
    out = out.permute(0, 1, 3, 2, 4).reshape(batch, padded_frames * frame_tokens, heads, head_dim)
    return out[:, front * frame_tokens : front * frame_tokens + n_tokens].to(q.dtype)


#: :func:`chunked_attention` with :func:`rehyat.hybrid_attention`'s keywords (tests, benchmarks).
chunked_hybrid_attention = with_keywords(chunked_attention)
