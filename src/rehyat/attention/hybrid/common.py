"""Shared pieces of every fast ReHyAt path: input validation, chunk states, and the guarded combine.

Every fast path (chunked PyTorch, recurrent, fused kernels) goes through :func:`combine` so that the
output convention of docs/method.md §3 — softmax part stabilised by the row max, linear part *not* rescaled,
one shared normaliser, guarded denominator — is written exactly once. The standalone reference
(:mod:`rehyat.attention.hybrid.naive`) writes the formula out on its own and takes only constants from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.hybrid.geometry import resolve_scale as resolve_scale  # a common helper too
from rehyat.utils import check_bool as check_bool  # the attention modules import it from here

#: The denominator guard: ``den = max(nS + nL, DENOMINATOR_EPS * nS)``. ``nS >= 1`` (the row-max key
#: contributes ``exp(0) = 1``), so a guarded row divides by at least ``DENOMINATOR_EPS`` and its
#: softmax part keeps its sign. Rows where ``nS + nL < DENOMINATOR_EPS * nS`` are counted as guarded.
DENOMINATOR_EPS = 1e-3


@dataclass
class AttentionStats:
    """Counts of query rows (one row = one query token of one head) seen and guarded.

    Pass an instance as ``stats=`` to any ReHyAt op; it accumulates across calls, so a caller can
    measure the fraction of rows where the denominator guard fired over a whole run.
    """

    total_rows: int = 0
    guarded_rows: int = 0

    @property
    def guarded_fraction(self) -> float:
        return self.guarded_rows / self.total_rows if self.total_rows else 0.0

    def reset(self) -> None:
        self.total_rows = 0
        self.guarded_rows = 0


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and normalisers are fp32 for half inputs (docs/method.md §3), fp64 stays fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def combine(
    a_softmax: Tensor,
    n_softmax: Tensor,
    a_linear: Tensor | None,
    n_linear: Tensor | None,
    stats: AttentionStats | None = None,
    valid_rows: Tensor | None = None,
) -> Tensor:
    """``y = (aS + aL) / max(nS + nL, eps * nS)`` with ``n*`` shaped like ``a*`` minus the last dim.

    ``valid_rows`` (broadcastable to ``n_softmax``) excludes padding rows from ``stats``.
    """
    numerator = a_softmax if a_linear is None else a_softmax + a_linear
    denominator = n_softmax if n_linear is None else n_softmax + n_linear
    floor = DENOMINATOR_EPS * n_softmax
    if stats is not None:
        with torch.no_grad():
            guarded = denominator < floor
            if valid_rows is None:
                stats.total_rows += guarded.numel()
            else:
                guarded = guarded & valid_rows
                stats.total_rows += int(valid_rows.expand_as(guarded).sum())
            stats.guarded_rows += int(guarded.sum())
    denominator = torch.maximum(denominator, floor)
    return numerator / denominator.unsqueeze(-1)


def states_from_frame_sums(
    kv_frames: Tensor, z_frames: Tensor, starts: Tensor, ends: Tensor, causal: bool
) -> tuple[Tensor, Tensor]:
    """Per-chunk linear-attention states from per-frame sums kv_frames [B, T, H, D', D], z_frames [B, T, H, D'].

    ``starts``/``ends`` ([C]) bound each chunk's softmax window in frames. Causal: the state sums frames
    [0, start); bidirectional: all frames outside [start, end), summed as prefix + suffix (no cancelling
    subtraction). Returns kv [B, C, H, D', D] and z [B, C, H, D'].
    """

    def exclusive_prefix(x: Tensor) -> Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x.cumsum(dim=1)], dim=1)

    kv, z = exclusive_prefix(kv_frames)[:, starts], exclusive_prefix(z_frames)[:, starts]
    if not causal:
        kv_suffix = exclusive_prefix(kv_frames.flip(1)).flip(1)  # kv_suffix[f] = sum over frames >= f
        z_suffix = exclusive_prefix(z_frames.flip(1)).flip(1)
        kv, z = kv + kv_suffix[:, ends], z + z_suffix[:, ends]
    return kv, z


def validate_geometry(frame_tokens: object, chunk_frames: object | None, overlap_frames: object) -> None:
    """``ValueError`` unless these are a :class:`Geometry`'s (kept for callers that hold no Geometry)."""
    Geometry(frame_tokens, chunk_frames, overlap_frames)


def validate_inputs(q: Tensor, k: Tensor, v: Tensor, fq: Tensor, fk: Tensor, frame_tokens: int) -> int:
    """Check the five inputs of a ReHyAt op; return the number of frames T. Raises ``ValueError``.

    B = 0 or H = 0 is allowed (the ops return an empty result); N, D and D' must be positive."""
    named = {"q": q, "k": k, "v": v, "fq": fq, "fk": fk}
    for name, tensor in named.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must have 4 dims [B, N, H, D], got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if tensor.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {tensor.dtype} but q has dtype {q.dtype}")
        if tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")
    for name in ("k", "v"):
        if named[name].shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(named[name].shape)} but q has shape {tuple(q.shape)}")
    for name in ("fq", "fk"):
        if named[name].shape[:3] != q.shape[:3]:
            raise ValueError(
                f"{name} has shape {tuple(named[name].shape)}: its [B, N, H] must match q's {tuple(q.shape[:3])}"
            )
    if fq.shape[-1] != fk.shape[-1]:
        raise ValueError(f"fq and fk feature dims differ: fq has {fq.shape[-1]}, fk has {fk.shape[-1]}")
    if q.shape[-1] == 0:
        raise ValueError("head dim D (q.shape[-1]) must be >= 1, got 0")
    if fq.shape[-1] == 0:
        raise ValueError(
            "feature dim D' (fq.shape[-1]) must be >= 1, got 0: the linear part needs features (for "
            "attention without it use rehyat.baselines.local_attention)"
        )
    n_tokens = q.shape[1]
    if n_tokens == 0 or n_tokens % frame_tokens != 0:
        raise ValueError(
            f"N = {n_tokens} (q.shape[1]) must be a positive multiple of frame_tokens = {frame_tokens}"
        )
    return n_tokens // frame_tokens


def validate_globals(
    q: Tensor, global_k: object, global_v: object, global_mask: object
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Check the global keys of a call (docs/method.md §2.1) against q [B, N, H, D]: ``global_k`` and
    ``global_v`` [B, G, H, D] in q's dtype and device, ``global_mask`` None or a bool [B, G] (True =
    attend). Returns them, or None when there are none (not given, or G = 0). Raises ``ValueError``."""
    if global_k is None and global_v is None:
        if global_mask is not None:
            raise ValueError("global_mask was given without global_k and global_v")
        return None
    if global_k is None or global_v is None:
        raise ValueError("global_k and global_v go together: give both or neither")
    for name, tensor in (("global_k", global_k), ("global_v", global_v)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4 or tensor.shape[0] != q.shape[0] or tensor.shape[2:] != q.shape[2:]:
            raise ValueError(
                f"{name} must be [B, G, H, D] with q's B, H, D {(q.shape[0], q.shape[2], q.shape[3])}, "
                f"got shape {tuple(tensor.shape)}"
            )
        if tensor.dtype != q.dtype or tensor.device != q.device:
            raise ValueError(f"{name} is {tensor.dtype} on {tensor.device} but q is {q.dtype} on {q.device}")
    if global_v.shape != global_k.shape:
        raise ValueError(
            f"global_v has shape {tuple(global_v.shape)} but global_k has {tuple(global_k.shape)}"
        )
    if global_mask is not None:
        if not isinstance(global_mask, Tensor) or global_mask.dtype != torch.bool:
            raise ValueError(f"global_mask must be a bool tensor [B, G] (True = attend), got {global_mask!r}")
        if global_mask.shape != global_k.shape[:2] or global_mask.device != q.device:
            raise ValueError(
                f"global_mask must be [B, G] = {tuple(global_k.shape[:2])} on {q.device}, got "
                f"{tuple(global_mask.shape)} on {global_mask.device}"
            )
    if global_k.shape[1] == 0:
        return None
    return global_k, global_v, global_mask


def extras_reason(anchor_frames: int, global_keys: object, first_chunk_frames: int = 0) -> str | None:
    """Why the kernels cannot take a call with an anchor, global keys or a first chunk of its own size,
    or None without them."""
    if first_chunk_frames:
        return f"a call with first_chunk_frames={first_chunk_frames} (the kernels chunk uniformly)"
    if global_keys is None and not anchor_frames:
        return None
    used = "global keys" if global_keys is not None else f"anchor_frames={anchor_frames}"
    return f"a call with {used} (the kernels have no anchor or global keys)"


def check_output_buffer(out: Tensor, like: Tensor) -> None:
    """``out=`` must match the result's shape, dtype and device and have rows with a unit last stride."""
    if not isinstance(out, Tensor):
        raise ValueError(f"out must be a tensor, got {type(out).__name__}")
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"out is {tuple(out.shape)} {out.dtype} on {out.device}; the result is {tuple(like.shape)} "
            f"{like.dtype} on {like.device}"
        )
    if out.stride(-1) != 1:
        raise ValueError(f"out needs a unit last stride (rows of head_dim), got strides {out.stride()}")


def _byte_span(t: Tensor) -> tuple[int, int]:
    """[first, last) byte addresses that ``t``'s elements can occupy (strides are non-negative)."""
    start = t.data_ptr()
    extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return start, start + (extent + 1) * t.element_size()


def shares_memory(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` may share bytes: same device and overlapping address ranges (whatever
    their dtypes or storages). Conservative: two views interleaved within one range count as sharing."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.device.type == "meta":
        return False
    (a_start, a_end), (b_start, b_end) = _byte_span(a), _byte_span(b)
    return a_start < b_end and b_start < a_end


def check_out_overlap(out: Tensor, inputs: dict[str, Tensor | None]) -> None:
    """``out=`` may not share memory with any of ``inputs`` (name → tensor): a path that writes the
    output before it has read everything it needs (the step keeps k and v for the next chunk, the
    kernels read keys while writing rows) would give corrupted results. Raises ``ValueError``."""
    for name, tensor in inputs.items():
        if tensor is not None and shares_memory(out, tensor):
            raise ValueError(
                f"out shares memory with {name}: the op still reads {name} after writing out (for this "
                "chunk or the next state), so out must be a separate buffer"
            )


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd would record an op on these tensors (grad mode on and one requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
