"""FLOP counts of one self-attention layer: full softmax vs ReHyAt (docs/method.md §9). FLOP = 2 · MAC.

Counted: the two attention matmuls (QKᵀ and PV) of the softmax part over each chunk's window; for the
linear part, φk(k)vᵀ accumulation and φq(q)·S per token (D'·D MAC each); the feature maps as per-head
MLPs on q and k (D → P·D, then (layers − 1) × P·D → P·D). Lower-order terms are left out, as in the
docs/method.md §9's table: the normaliser sums φk and φq·z (D' per token, 1/D of the linear part), softmax
exponentials, the power in φ and the prefix sums over frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class AttentionFlops:
    full: float
    softmax: float
    linear: float
    feature_maps: float

    @property
    def rehyat_total(self) -> float:
        return self.softmax + self.linear + self.feature_maps

    @property
    def ratio(self) -> float:
        return self.full / self.rehyat_total

    @property
    def softmax_ratio(self) -> float:
        return self.full / self.softmax

    def as_dict(self) -> dict[str, float]:
        return {
            **asdict(self),
            "rehyat_total": self.rehyat_total,
            "ratio": self.ratio,
            "softmax_ratio": self.softmax_ratio,
        }


def softmax_pairs(
    frames: int, chunk_frames: int, overlap_frames: int, anchor_frames: int = 0, first_chunk_frames: int = 0
) -> int:
    """Σ over chunks of (query frames × softmax-key frames), in frame² units; with an anchor (causal,
    docs/method.md §2.1) a chunk also attends to the anchor frames before its window; with a first chunk
    of F0 frames the chunks start at 0, F0, F0 + Tc, …"""
    total = 0
    starts = list(range(0, frames, chunk_frames))
    if first_chunk_frames:
        starts = [0, *range(first_chunk_frames, frames, chunk_frames)]
    for start, stop in zip(starts, [*starts[1:], frames], strict=True):
        end = min(stop, frames)
        low = max(start - overlap_frames, 0)
        total += (end - start) * (end - low + min(anchor_frames, low))
    return total


def attention_flops(
    frames: int,
    frame_tokens: int,
    heads: int,
    head_dim: int,
    *,
    chunk_frames: int,
    overlap_frames: int,
    feature_dim: int,
    feature_layers: int = 2,
    batch: int = 1,
    anchor_frames: int = 0,
    global_tokens: int = 0,
    first_chunk_frames: int = 0,
) -> AttentionFlops:
    """FLOPs of one layer's self-attention for ``batch`` videos of ``frames`` × ``frame_tokens`` tokens.

    ``anchor_frames`` and ``global_tokens`` (docs/method.md §2.1, causal): the anchor frames every chunk
    adds to its window, and G global keys (e.g. text) in every window; the full softmax then attends the
    video queries to the N + G keys too. The global keys' own query rows are not counted.
    ``first_chunk_frames``: the first chunk's frames when it differs from ``chunk_frames``."""
    for name, value in (
        ("frames", frames),
        ("frame_tokens", frame_tokens),
        ("heads", heads),
        ("head_dim", head_dim),
        ("chunk_frames", chunk_frames),
        ("feature_dim", feature_dim),
        ("feature_layers", feature_layers),
        ("batch", batch),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name, value in (
        ("overlap_frames", overlap_frames),
        ("anchor_frames", anchor_frames),
        ("global_tokens", global_tokens),
        ("first_chunk_frames", first_chunk_frames),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    tokens = frames * frame_tokens
    per_head = batch * heads
    full = 4.0 * tokens * (tokens + global_tokens) * head_dim * per_head
    pairs = softmax_pairs(frames, chunk_frames, overlap_frames, anchor_frames, first_chunk_frames)
    pairs *= frame_tokens**2
    softmax = 4.0 * (pairs + tokens * global_tokens) * head_dim * per_head
    linear = 2.0 * tokens * per_head * 2 * feature_dim * head_dim  # keys add φk vᵀ, queries read φq·S
    map_macs = head_dim * feature_dim + (feature_layers - 1) * feature_dim * feature_dim
    feature_maps = 2.0 * 2 * tokens * per_head * map_macs  # φq and φk
    return AttentionFlops(full=full, softmax=softmax, linear=linear, feature_maps=feature_maps)


def block_flops(
    frames: int,
    frame_tokens: int,
    heads: int,
    head_dim: int,
    *,
    ffn_dim: int,
    text_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    feature_dim: int,
    feature_layers: int = 2,
) -> dict[str, float]:
    """FLOPs of one Wan DiT block over a whole video: the token-wise work every attention shares
    (self-attention q/k/v/o projections, cross-attention to ``text_tokens`` text tokens, the FFN) plus
    self-attention, full or ReHyAt. ``attention_free_ratio`` is the bound on any block speed-up from
    replacing attention alone: the full block against its token-wise work."""
    attention = attention_flops(
        frames,
        frame_tokens,
        heads,
        head_dim,
        chunk_frames=chunk_frames,
        overlap_frames=overlap_frames,
        feature_dim=feature_dim,
        feature_layers=feature_layers,
    )
    for name, value in (("ffn_dim", ffn_dim), ("text_tokens", text_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    dim, tokens = heads * head_dim, frames * frame_tokens
    projections = (
        2.0 * tokens * (4 * dim * dim + 2 * dim * dim + 2 * dim * ffn_dim)
    )  # self qkvo, cross q o, FFN
    cross = 2.0 * text_tokens * 2 * dim * dim + 4.0 * tokens * text_tokens * dim  # text k v; scores and PV
    tokenwise = projections + cross
    full, rehyat = tokenwise + attention.full, tokenwise + attention.rehyat_total
    return {
        "tokenwise": tokenwise,
        "full_attention": attention.full,
        "rehyat_attention": attention.rehyat_total,
        "full_block": full,
        "rehyat_block": rehyat,
        "block_ratio": full / rehyat,
        "attention_ratio": attention.ratio,
        "attention_free_ratio": full / tokenwise,
    }
