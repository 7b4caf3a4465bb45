"""Moved to :mod:`rehyat.attention.hybrid.kernels.windowed_attention` (the op's folder); this path keeps importing its public names."""

from rehyat.attention.hybrid.kernels.windowed_attention import (
    COMBINE_BLOCK_M,
    COMBINE_WARPS,
    WindowedHybridAttention,
    windowed_attention_forward,
)

__all__ = ["COMBINE_BLOCK_M", "COMBINE_WARPS", "WindowedHybridAttention", "windowed_attention_forward"]
