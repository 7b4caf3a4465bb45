"""Frame layouts of chunk parallelism: ranges, halos, partial sums, total weights, bytes (pure Python)."""

from __future__ import annotations

import pytest

from rehyat.parallel import FrameLayout, balanced_frame_ranges


def test_balanced_ranges_are_whole_chunks_with_a_short_last_one():
    assert balanced_frame_ranges(21, 4, 3) == ((0, 6), (6, 12), (12, 18), (18, 21))
    ranges = balanced_frame_ranges(161, 8, 3)  # 54 chunks, the last of 2 frames
    assert ranges[-1][1] == 161 and all(start % 3 == 0 for start, _ in ranges)
    assert [stop - start for start, stop in ranges] == [21] * 6 + [18, 17]
    with pytest.raises(ValueError, match="fewer than 8 ranks"):
        balanced_frame_ranges(21, 8, 3)


@pytest.mark.parametrize(
    "ranges, words",
    [
        ([(0, 3), (3, 6)], "not a multiple of chunk_frames = 2"),
        ([(0, 2), (3, 6)], "contiguous"),
        ([(1, 2), (2, 6)], "contiguous"),
        ([(0, 2), (2, 2), (2, 6)], "no frames"),
        ([], "empty"),
    ],
)
def test_bad_ranges_are_value_errors(ranges, words):
    with pytest.raises(ValueError, match=words):
        FrameLayout.checked(ranges, 2, 1)


def test_halo_reaching_back_over_two_ranks():
    layout = FrameLayout.checked([(0, 1), (1, 2), (2, 7)], chunk_frames=1, overlap_frames=2)
    assert layout.halo(2) == (0, 2)
    assert [(m.src, m.halo) for m in layout.receives(2)] == [(0, (0, 1)), (1, (1, 2))]
    assert layout.interior_positions(2) == ()  # window starts 0, 1 are rank starts: totals suffice
    assert [c.window_start for c in layout.chunks(2)] == [0, 1, 2, 3, 4]


def test_window_starts_inside_an_earlier_range_need_a_partial_sum():
    layout = FrameLayout.checked([(0, 4), (4, 6), (6, 7)], chunk_frames=2, overlap_frames=1)
    assert [(m.src, m.dst, m.halo, m.positions) for m in layout.messages] == [
        (0, 1, (3, 4), (3,)),
        (1, 2, (5, 6), (5,)),
    ]
    # rank 1's one chunk starts its window at 3 (rank 0's partial, no whole total); rank 2's at 5
    # (rank 0's total and rank 1's partial)
    assert layout.total_weights(1) == [[0.0, 0.0, 0.0]]
    assert layout.total_weights(2) == [[1.0, 0.0, 0.0]]
    both = FrameLayout.checked(layout.ranges, 2, 1, causal=False)
    assert both.total_weights(1) == [[0.0, 0.0, 1.0]]
    assert layout.bytes_sent(
        0, batch=1, frame_tokens=3, heads=2, head_dim=4, feature_dim=5, element_bytes=2
    ) == {"halo": 2 * 3 * 2 * 4 * 2, "partial": 2 * 5 * 5 * 4, "total": 2 * 2 * 5 * 5 * 4}


def test_no_overlap_needs_no_point_to_point():
    layout = FrameLayout.checked(balanced_frame_ranges(9, 3, 3), 3, 0)
    assert layout.messages == ()
