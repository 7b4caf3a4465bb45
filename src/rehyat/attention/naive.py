"""Moved to :mod:`rehyat.attention.hybrid.naive` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.naive import (
    chunk_masks,
    naive_hybrid_attention,
)

__all__ = ["chunk_masks", "naive_hybrid_attention"]
