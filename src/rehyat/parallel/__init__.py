"""Chunk parallelism: one long video across several ranks, a halo and a state scan per layer.

Ranks own contiguous runs of whole chunks of one video. Per converted layer a rank receives the K, V
of the To frames before its range (the halo) point to point and the linear states of all earlier
ranks (an all-gather of fixed-size sums); nothing else crosses ranks. See docs/chunk_parallel.md.
"""

from rehyat.parallel.attention import chunk_parallel_attention
from rehyat.parallel.comm import CommCounter, CommRecord
from rehyat.parallel.layout import FrameLayout, balanced_frame_ranges
from rehyat.parallel.pipeline_form import chunk_parallel_recurrent_forward
from rehyat.parallel.wan import (
    ChunkParallel,
    chunk_parallel,
    chunk_parallel_of,
    disable_chunk_parallel,
    enable_chunk_parallel,
    gather_frames,
    shard_frames,
)

__all__ = [
    "ChunkParallel",
    "CommCounter",
    "CommRecord",
    "FrameLayout",
    "balanced_frame_ranges",
    "chunk_parallel",
    "chunk_parallel_attention",
    "chunk_parallel_of",
    "chunk_parallel_recurrent_forward",
    "disable_chunk_parallel",
    "enable_chunk_parallel",
    "gather_frames",
    "shard_frames",
]
