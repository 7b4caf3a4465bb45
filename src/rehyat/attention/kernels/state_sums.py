"""Moved to :mod:`rehyat.attention.hybrid.kernels.state_sums` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.kernels.state_sums import (
    RETIRE_ROWS,
    SegmentSums,
    retire_sums,
    segment_apply,
    segment_sums,
)

__all__ = ["RETIRE_ROWS", "SegmentSums", "retire_sums", "segment_apply", "segment_sums"]
