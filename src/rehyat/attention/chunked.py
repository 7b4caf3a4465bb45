"""Moved to :mod:`rehyat.attention.hybrid.chunk` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.chunk import (
    chunked_attention,
    chunked_hybrid_attention,
    linear_states,
)

__all__ = ["chunked_attention", "chunked_hybrid_attention", "linear_states"]
