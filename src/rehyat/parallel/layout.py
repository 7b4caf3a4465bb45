"""Which rank owns which frames, and what each rank needs from the others (pure Python, no tensors).

A video of T post-patch latent frames is cut into chunks of Tc frames (docs/method.md §2); rank r owns the
contiguous frames ``[start_r, stop_r)``, a run of whole chunks (every start is a multiple of Tc; only
the video's last chunk may be short). Per layer, a chunk t reads:

- softmax keys: frames ``[max(t·Tc − To, 0), min((t+1)·Tc, T))``: the chunk and the To frames before
  it. For the rank's first chunks those To frames belong to earlier ranks: the **halo**, frames
  ``[max(start_r − To, 0), start_r)``, K and V sent point to point by whichever ranks own them (more
  than one when To is longer than a rank's range);
- linear keys (causal): frames ``[0, s_t)``, ``s_t = max(t·Tc − To, 0)``; bidirectional: also
  ``[e_t, T)``, ``e_t = min((t+1)·Tc, T)``. Each rank sums φk vᵀ and φk over its own frames (its
  **total**, a fixed-size state); all ranks all-gather the totals, so the prefix of any rank boundary
  (and, bidirectionally, the suffix) is a sum of totals. A window start ``s_t`` that falls strictly
  inside an earlier rank's range (the halo's frames are softmax keys of the first chunk but linear keys
  of later ones when To > 0) needs that rank's **partial** sum over ``[start_q, s_t)``, sent with the
  halo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

FrameRange = tuple[int, int]


@dataclass(frozen=True)
class Message:
    """What rank ``src`` sends rank ``dst`` per layer: K and V of frames ``halo`` ([start, stop), may be
    empty) and its partial sums up to each frame of ``positions`` (window starts inside src's range)."""

    src: int
    dst: int
    halo: FrameRange
    positions: tuple[int, ...]

    @property
    def halo_frames(self) -> int:
        return self.halo[1] - self.halo[0]


@dataclass(frozen=True)
class ChunkWindow:
    """One chunk of a rank: its frames ``[start, stop)`` and the start of its softmax window."""

    start: int
    stop: int
    window_start: int


@dataclass(frozen=True)
class FrameLayout:
    """Frame ranges of the ranks of one chunk-parallel group and the chunking they run.

    ``ranges[r]`` is rank r's ``(start, stop)`` in post-patch latent frames. Build with
    :meth:`checked` (or call :meth:`check`) to get a ValueError naming the first problem.
    """

    ranges: tuple[FrameRange, ...]
    chunk_frames: int
    overlap_frames: int
    causal: bool = True

    @classmethod
    def checked(cls, ranges, chunk_frames: int, overlap_frames: int, causal: bool = True) -> FrameLayout:
        layout = cls(
            tuple((int(a), int(b)) for a, b in ranges), int(chunk_frames), int(overlap_frames), causal
        )
        layout.check()
        return layout

    def check(self) -> None:
        """ValueError unless the ranges are non-empty, contiguous from frame 0, and on chunk boundaries."""
        if self.chunk_frames < 1 or self.overlap_frames < 0:
            raise ValueError(
                f"chunk_frames must be >= 1 and overlap_frames >= 0, got {self.chunk_frames}, "
                f"{self.overlap_frames}"
            )
        if not self.ranges:
            raise ValueError("frame_ranges is empty: every rank needs a range of frames")
        expected = 0
        for rank, (start, stop) in enumerate(self.ranges):
            if start != expected:
                raise ValueError(
                    f"frame_ranges must be contiguous from frame 0: rank {rank} starts at frame {start}, "
                    f"expected {expected} (ranges {list(self.ranges)})"
                )
            if stop <= start:
                raise ValueError(
                    f"rank {rank} has no frames: range [{start}, {stop}) (ranges {list(self.ranges)})"
                )
            if start % self.chunk_frames:
                raise ValueError(
                    f"rank {rank}'s range [{start}, {stop}) does not start on a chunk boundary: frame {start} "
                    f"is not a multiple of chunk_frames = {self.chunk_frames} (ranges {list(self.ranges)}); "
                    "every rank must own whole chunks"
                )
            expected = stop

    @property
    def world(self) -> int:
        return len(self.ranges)

    @property
    def total_frames(self) -> int:
        return self.ranges[-1][1]

    def owner(self, frame: int) -> int:
        """The rank whose range holds ``frame``."""
        for rank, (start, stop) in enumerate(self.ranges):
            if start <= frame < stop:
                return rank
        raise ValueError(f"frame {frame} is outside the video's {self.total_frames} frames")

    def chunks(self, rank: int) -> tuple[ChunkWindow, ...]:
        """The chunks of ``rank``, in order."""
        start, stop = self.ranges[rank]
        return tuple(
            ChunkWindow(first, min(first + self.chunk_frames, stop), max(first - self.overlap_frames, 0))
            for first in range(start, stop, self.chunk_frames)
        )

    def halo(self, rank: int) -> FrameRange:
        """Frames before ``rank``'s range that its chunks read as softmax keys."""
        start = self.ranges[rank][0]
        return (max(start - self.overlap_frames, 0), start)

    def interior_positions(self, rank: int) -> tuple[int, ...]:
        """Window starts of ``rank``'s chunks that fall strictly inside an earlier rank's range."""
        starts = {rank_start for rank_start, _ in self.ranges}
        first = self.ranges[rank][0]
        return tuple(sorted({c.window_start for c in self.chunks(rank) if c.window_start < first} - starts))

    @cached_property
    def messages(self) -> tuple[Message, ...]:
        """Every point-to-point message of one layer, ordered by (dst, src)."""
        found = []
        for dst in range(self.world):
            halo_start, halo_stop = self.halo(dst)
            positions = self.interior_positions(dst)
            for src in range(dst):
                start, stop = self.ranges[src]
                halo = (max(halo_start, start), min(halo_stop, stop))
                mine = tuple(p for p in positions if start < p < stop)
                if halo[1] > halo[0]:  # a position inside src's range is inside the halo too
                    found.append(Message(src, dst, halo, mine))
        return tuple(found)

    def sends(self, rank: int) -> tuple[Message, ...]:
        return tuple(m for m in self.messages if m.src == rank)

    def receives(self, rank: int) -> tuple[Message, ...]:
        return tuple(m for m in self.messages if m.dst == rank)

    def bytes_sent(
        self,
        rank: int,
        *,
        batch: int,
        frame_tokens: int,
        heads: int,
        head_dim: int,
        feature_dim: int,
        element_bytes: int,
        state_bytes: int = 4,
    ) -> dict[str, int]:
        """Bytes ``rank`` sends in one layer's forward: ``halo`` (K and V, ``element_bytes`` each),
        ``partial`` sums and ``total`` (its share of the all-gather: world − 1 copies of its sums, as a
        ring all-gather sends). Sums are [H, D', D] + [H, D'] per batch element, ``state_bytes`` each."""
        state = batch * heads * feature_dim * (head_dim + 1) * state_bytes
        token = batch * heads * head_dim * element_bytes
        sends = self.sends(rank)
        return {
            "halo": sum(2 * m.halo_frames * frame_tokens * token for m in sends),
            "partial": sum(len(m.positions) for m in sends) * state,
            "total": (self.world - 1) * state,
        }

    def total_weights(self, rank: int) -> list[list[float]]:
        """``W[c][q]``: how many times rank q's total enters the linear state of ``rank``'s chunk c
        (0 or 1): totals of ranks wholly before the window start (capped at the rank's own start,
        whose frames the rank sums itself) and, bidirectionally, of every later rank."""
        start = self.ranges[rank][0]
        weights = []
        for chunk in self.chunks(rank):
            prefix_end = min(chunk.window_start, start)
            row = [1.0 if stop <= prefix_end else 0.0 for _, stop in self.ranges]
            if not self.causal:
                row = [1.0 if q > rank else w for q, w in enumerate(row)]
            weights.append(row)
        return weights


def balanced_frame_ranges(total_frames: int, world: int, chunk_frames: int) -> tuple[FrameRange, ...]:
    """Whole chunks split over ``world`` ranks as evenly as possible (earlier ranks get the extra ones).

    ValueError when there are fewer chunks than ranks.
    """
    if total_frames < 1 or world < 1 or chunk_frames < 1:
        raise ValueError(
            f"total_frames, world and chunk_frames must be >= 1, got {total_frames}, {world}, {chunk_frames}"
        )
    chunks = -(-total_frames // chunk_frames)
    if chunks < world:
        raise ValueError(
            f"{total_frames} frames make {chunks} chunks of {chunk_frames}: fewer than {world} ranks "
            "(every rank must own at least one whole chunk)"
        )
    per_rank, extra = divmod(chunks, world)
    ranges, start = [], 0
    for rank in range(world):
        stop = min(start + (per_rank + (rank < extra)) * chunk_frames, total_frames)
        ranges.append((start, stop))
        start = stop
    return tuple(ranges)
