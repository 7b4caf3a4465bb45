"""Moved to :mod:`rehyat.attention.hybrid.common` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.common import (
    DENOMINATOR_EPS,
    AttentionStats,
    accumulation_dtype,
    check_bool,
    check_out_overlap,
    check_output_buffer,
    combine,
    needs_grad,
    resolve_scale,
    shares_memory,
    states_from_frame_sums,
    validate_geometry,
    validate_inputs,
)

__all__ = [
    "DENOMINATOR_EPS",
    "AttentionStats",
    "accumulation_dtype",
    "check_bool",
    "check_out_overlap",
    "check_output_buffer",
    "combine",
    "needs_grad",
    "resolve_scale",
    "shares_memory",
    "states_from_frame_sums",
    "validate_geometry",
    "validate_inputs",
]
