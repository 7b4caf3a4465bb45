"""The Triton side shared by the hybrid op and φ: the backend choice, block sizes (:mod:`.tuning`),
row layouts (:mod:`.memory_layout`) and φ's fused kernel (:mod:`.feature_map_kernel`); the op's own
kernels are in :mod:`rehyat.attention.hybrid.kernels`.

This package imports Triton only when a kernel is actually used, so ``import rehyat`` works without
it. :func:`resolve_backend` picks the implementation for ``backend="auto" | "torch" | "triton"``:
"auto" takes the kernels on CUDA when Triton is installed and the shapes are supported, else PyTorch
(``REHYAT_KERNELS=0`` in the environment makes "auto" take PyTorch everywhere);
"triton" forces them (on CPU this needs ``TRITON_INTERPRET=1``, Triton's interpreter — slow, for tests).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from rehyat.attention.kernels.tuning import interpreting

Backend = Literal["auto", "torch", "triton"]
BACKENDS = ("auto", "torch", "triton")
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# Looked up once, at import (without importing Triton): the backend is resolved inside compiled code, and
# Dynamo before torch 2.12 cannot trace ``find_spec`` (a graph break in every attention layer).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_INSTALLED


def unsupported_reason(q: Tensor, fq: Tensor | None) -> str | None:
    """Why the kernels cannot take these inputs, or None if they can."""
    head_dim = q.shape[-1]
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} (the kernels take float16, bfloat16, float32)"
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        return f"head dim {head_dim} (the kernels take a power of two in [16, 256])"
    if fq is not None and (fq.shape[-1] < 16 or fq.shape[-1] % 16):
        return f"feature dim {fq.shape[-1]} (the kernels take a multiple of 16)"
    if q.device.type != "cuda" and not interpreting():
        return f"device {q.device} (the kernels need CUDA, or TRITON_INTERPRET=1 on CPU)"
    return None


def resolve_backend(
    backend: str, q: Tensor, fq: Tensor | None, unsupported: str | None = None
) -> Literal["torch", "triton"]:
    """Turn the user's ``backend`` into "torch" or "triton" for the attention op (once per call, in its
    public functions); raise if "triton" cannot run here. An empty batch or no heads takes PyTorch,
    which returns the empty result: the kernels would have nothing to launch. ``unsupported``: the
    caller's own reason why the kernels cannot take this call (e.g. global keys), or None."""
    chosen = choose_backend(backend, q.device, lambda: unsupported or unsupported_reason(q, fq))
    return chosen if q.numel() > 0 else "torch"


def choose_backend(
    backend: str, device: torch.device, reason: Callable[[], str | None]
) -> Literal["torch", "triton"]:
    """:func:`resolve_backend` for any kernel: ``reason()`` says why it cannot run, or None."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if os.environ.get("REHYAT_KERNELS", "1") == "0":  # the user's switch: PyTorch everywhere
            return "torch"
        usable = device.type == "cuda" and triton_available() and reason() is None
        return "triton" if usable else "torch"
    if not triton_available():
        raise ImportError(
            "backend='triton' needs the triton package (pip install triton; on CPU also set TRITON_INTERPRET=1)"
        )
    why = reason()
    if why is not None:
        raise ValueError(f"backend='triton' cannot run on {why}; use backend='torch' or 'auto'")
    return "triton"
