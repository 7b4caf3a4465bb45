"""ReHyAt attention over a video whose frames are split across ranks (parallel form, docs/method.md §2–§3).

Each rank holds q, k, v, φq(q), φk(k) of its own frames (:class:`~rehyat.parallel.FrameLayout`) and
computes the outputs of its own chunks. Per call, one :func:`~rehyat.parallel.comm.exchange`:

- point to point, from the earlier ranks that own them: K and V of the halo frames (the To frames
  before the rank's first chunk) and the partial linear sums at window starts inside their ranges;
- an all-gather of every rank's total Σφk vᵀ [H, D', D] and Σφk [H, D'] over its frames (fp32).

The rank's chunks then attend exactly as in :func:`rehyat.hybrid_attention`: softmax over the window
(halo ‖ own frames), linear part from the state = (sum of the totals of the ranks before the window
start, and bidirectionally of every later rank) + (the partial, where the window starts inside another
rank's range) + (the rank's own frames before the window start / after the chunk). Autograd runs
through the exchange, so the backward sends gradients back along the same edges.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from rehyat.attention.hybrid.chunk import pad_frames
from rehyat.attention.hybrid.common import (
    AttentionStats,
    accumulation_dtype,
    combine,
    resolve_scale,
    states_from_frame_sums,
    validate_inputs,
)
from rehyat.parallel.comm import Incoming, Outgoing, exchange
from rehyat.parallel.layout import FrameLayout

TAG_K, TAG_V, TAG_PARTIAL = 1, 2, 3


def _pack(kv: Tensor, z: Tensor) -> Tensor:
    """kv [..., H, D', D] and z [..., H, D'] -> one flat [..., H·D'·(D + 1)] payload."""
    return torch.cat([kv.flatten(-3), z.flatten(-2)], dim=-1)


def _unpack(packed: Tensor, heads: int, feature_dim: int, head_dim: int) -> tuple[Tensor, Tensor]:
    kv, z = packed.split([heads * feature_dim * head_dim, heads * feature_dim], dim=-1)
    lead = packed.shape[:-1]
    return kv.reshape(*lead, heads, feature_dim, head_dim), z.reshape(*lead, heads, feature_dim)


def _softmax_part(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    *,
    frame_tokens: int,
    chunk: int,
    reach: int,
    front: int,
    scale: float,
) -> tuple[Tensor, Tensor]:
    """Unnormalised softmax numerator [B, C, H, chunk·S, D] and denominator of each local chunk.

    ``keys``/``values`` are [B, halo + L, S, H, D] frames; ``front`` zero frames go before them so that
    local chunk c's window is padded frames [c·chunk, c·chunk + chunk + reach), the first ``front``
    of which (before frame 0 of the video) are masked out."""
    batch, frames, _, heads, _ = q.shape
    n_chunks = -(-frames // chunk)
    back = n_chunks * chunk - frames
    window = chunk + reach

    def tiles(x: Tensor) -> Tensor:  # [B, T', S, H, D] -> [B, C, H, window·S, D]
        x = pad_frames(x, front, back).unfold(1, window, chunk).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(batch, n_chunks, heads, window * frame_tokens, x.shape[-1])

    queries = pad_frames(q, 0, back).reshape(batch, n_chunks, chunk * frame_tokens, heads, -1)
    queries = queries.permute(0, 1, 3, 2, 4)
    slot = torch.arange(n_chunks, device=q.device)[:, None] * chunk + torch.arange(window, device=q.device)
    real = ((slot >= front) & (slot < front + keys.shape[1])).repeat_interleave(frame_tokens, dim=1)
    scores = torch.einsum("bchid,bchjd->bchij", queries, tiles(keys)) * scale
    scores = scores.masked_fill(~real[None, :, None, None, :], float("-inf"))
    weights = torch.exp(scores - torch.amax(scores, dim=-1, keepdim=True))
    return torch.einsum("bchij,bchjd->bchid", weights, tiles(values)), weights.sum(dim=-1)


def chunk_parallel_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    *,
    layout: FrameLayout,
    frame_tokens: int,
    group: dist.ProcessGroup | None = None,
    scale: float | None = None,
    stats: AttentionStats | None = None,
) -> Tensor:
    """This rank's rows of :func:`rehyat.hybrid_attention` over the whole video.

    Args:
        q, k, v: [B, N_r, H, D] and fq, fk: [B, N_r, H, D'] of this rank's frames ``layout.ranges[rank]``
            (tokens frame-major, ``frame_tokens`` per frame).
        layout: the frame ranges of all ranks of ``group`` (rank order), Tc, To and the variant; the
            same on every rank.
        group: the process group (default: the world).
        scale, stats: as in :func:`rehyat.hybrid_attention`.

    Returns [B, N_r, H, D] in q's dtype, equal (to float rounding) to the rows of this rank's frames of
    the single-process op. Every rank of the group must call it (collective); gradients flow back to
    the ranks that sent halos and sums.
    """
    rank = dist.get_rank(group)
    if layout.world != dist.get_world_size(group):
        raise ValueError(
            f"layout has {layout.world} ranges but the group has {dist.get_world_size(group)} ranks"
        )
    start, stop = layout.ranges[rank]
    frames = validate_inputs(q, k, v, fq, fk, frame_tokens)
    if frames != stop - start:
        raise ValueError(
            f"rank {rank} holds {frames} frames but its range [{start}, {stop}) has {stop - start}"
        )
    batch, _, heads, head_dim = q.shape
    feature_dim = fq.shape[-1]
    acc = accumulation_dtype(q.dtype)

    def frames_of(x: Tensor) -> Tensor:  # [B, N, H, E] -> [B, T, S, H, E] in the accumulation dtype
        return x.to(acc).reshape(batch, -1, frame_tokens, heads, x.shape[-1])

    # Per-frame linear sums of this rank's frames; prefix(i) = sum over its first i frames.
    fk_frames, v_frames = frames_of(fk), frames_of(v)
    kv_frames = torch.einsum("btshe,btshd->bthed", fk_frames, v_frames)
    z_frames = fk_frames.sum(dim=2)

    def prefix(local_positions: list[int]) -> Tensor:  # -> packed [B, len, F]
        index = torch.tensor(local_positions, device=q.device)
        return _pack(*states_from_frame_sums(kv_frames, z_frames, index, index, True))

    sends: list[tuple[Outgoing, Tensor]] = []
    for message in layout.sends(rank):
        tokens = slice((message.halo[0] - start) * frame_tokens, (message.halo[1] - start) * frame_tokens)
        sends += [
            (Outgoing(message.dst, TAG_K, "halo_k"), k[:, tokens]),
            (Outgoing(message.dst, TAG_V, "halo_v"), v[:, tokens]),
        ]
        if message.positions:
            partial = prefix([p - start for p in message.positions])
            sends.append((Outgoing(message.dst, TAG_PARTIAL, "partial"), partial))
    receives: list[Incoming] = []
    sources = layout.receives(rank)
    packed_size = heads * feature_dim * (head_dim + 1)
    for message in sources:
        halo_shape = (batch, message.halo_frames * frame_tokens, heads, head_dim)
        receives += [
            Incoming(message.src, TAG_K, "halo_k", halo_shape, k.dtype),
            Incoming(message.src, TAG_V, "halo_v", halo_shape, v.dtype),
        ]
        if message.positions:
            receives.append(
                Incoming(
                    message.src, TAG_PARTIAL, "partial", (batch, len(message.positions), packed_size), acc
                )
            )
    total = prefix([stop - start])[:, 0]
    received, totals = exchange(group, sends, receives, q.device, payload=total)

    # Incoming linear state of each local chunk: gathered totals, plus a partial where its window
    # starts inside an earlier rank's range.
    halo_k, halo_v, partials = [], [], {}
    items = iter(received)
    for message in sources:
        halo_k.append(next(items))
        halo_v.append(next(items))
        if message.positions:
            packed = next(items)
            partials.update({p: packed[:, i] for i, p in enumerate(message.positions)})
    chunks = layout.chunks(rank)
    weights = torch.tensor(layout.total_weights(rank), dtype=acc, device=q.device)
    incoming = torch.einsum("cq,qbf->bcf", weights, totals)
    zero = total.new_zeros(total.shape)
    extra = torch.stack([partials.get(c.window_start, zero) for c in chunks], dim=1)
    kv_in, z_in = _unpack(incoming + extra, heads, feature_dim, head_dim)
    local_starts = torch.tensor([max(c.window_start - start, 0) for c in chunks], device=q.device)
    local_ends = torch.tensor([c.stop - start for c in chunks], device=q.device)
    kv_state, z_state = states_from_frame_sums(kv_frames, z_frames, local_starts, local_ends, layout.causal)
    kv_state, z_state = kv_state + kv_in, z_state + z_in

    # Softmax part over halo ‖ own frames.
    halo = layout.halo(rank)
    keys = frames_of(torch.cat([*halo_k, k], dim=1))
    values = frames_of(torch.cat([*halo_v, v], dim=1))
    chunk = layout.chunk_frames if len(chunks) > 1 else frames
    reach = min(layout.overlap_frames, chunks[-1].start)  # no window reaches before frame 0
    a_softmax, n_softmax = _softmax_part(
        frames_of(q),
        keys,
        values,
        frame_tokens=frame_tokens,
        chunk=chunk,
        reach=reach,
        front=reach - (halo[1] - halo[0]),
        scale=resolve_scale(scale, head_dim),
    )

    fq_chunks = pad_frames(frames_of(fq), 0, len(chunks) * chunk - frames)
    fq_chunks = fq_chunks.reshape(batch, len(chunks), chunk * frame_tokens, heads, feature_dim).permute(
        0, 1, 3, 2, 4
    )
    a_linear = torch.einsum("bchie,bched->bchid", fq_chunks, kv_state)
    n_linear = torch.einsum("bchie,bche->bchi", fq_chunks, z_state)
    query_frame = torch.arange(len(chunks) * chunk, device=q.device).reshape(len(chunks), chunk)
    valid = (query_frame < frames).repeat_interleave(frame_tokens, dim=1)[None, :, None, :]
    out = combine(a_softmax, n_softmax, a_linear, n_linear, stats, valid_rows=valid)
    out = out.permute(0, 1, 3, 2, 4).reshape(batch, -1, heads, head_dim)
    return out[:, : frames * frame_tokens].to(q.dtype)
