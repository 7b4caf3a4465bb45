"""Memory-layout helpers shared by the kernel launchers: rows with a unit stride, strides as keywords."""

from __future__ import annotations

from torch import Tensor


def last_dim_contiguous(x: Tensor) -> Tensor:
    """x itself if its last dim has unit stride (the kernels read rows in place), else a contiguous copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


def strides(name: str, x: Tensor) -> dict[str, int]:
    """The batch, token and head strides of a [B, N, H, ·] tensor as the kernels' keyword arguments
    ``stride_{name}b``, ``stride_{name}n``, ``stride_{name}h``."""
    return {f"stride_{name}b": x.stride(0), f"stride_{name}n": x.stride(1), f"stride_{name}h": x.stride(2)}
