"""Moved to :mod:`rehyat.attention.hybrid.parallel` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.parallel import (
    hybrid_attention,
)

__all__ = ["hybrid_attention"]
