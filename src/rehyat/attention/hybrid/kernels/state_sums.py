"""Linear-attention sums over runs of tokens, in Triton: ``Σ_j a_jᵀ (w_j b_j)`` and ``Σ_j u_j a_j``.

The forward of the parallel form needs per-frame sums ``Σ φk(k_j) v_jᵀ`` and ``Σ φk(k_j)`` (then an
exclusive prefix over frames, in torch); the backward needs the same product per chunk with the
gradient in place of ``v`` (``Σ φq(q_i) ∇num_iᵀ``, ``Σ ∇nL_i φq(q_i)``). Both are one kernel over
"segments" of ``seg_len`` consecutive tokens, reading the [B, N, H, ·] layout in place, accumulating
in fp32. :class:`SegmentSums` is its autograd wrapper; its backward broadcasts the state gradients
back onto the tokens with a second kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rehyat.attention.kernels.memory_layout import last_dim_contiguous, strides
from rehyat.attention.kernels.tuning import dot_precision, segment_config


@triton.jit
def _segment_sums_kernel(
    a_ptr,
    b_ptr,
    wb_ptr,
    wz_ptr,
    kv_ptr,
    z_ptr,
    stride_ab,
    stride_an,
    stride_ah,
    stride_bb,
    stride_bn,
    stride_bh,
    n_tokens,
    seg_len,
    n_heads,
    n_segs,
    E: tl.constexpr,
    D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_WB: tl.constexpr,
    HAS_WZ: tl.constexpr,
    PREC: tl.constexpr,
):
    """One program: segment ``program_id(0)``, (batch, head) ``program_id(1)``, a BLOCK_E slice of E.

    ``wb``/``wz`` are per-token weights laid out [B, H, N]; kv out is [B, n_segs, H, E, D], z out
    [B, n_segs, H, E], both contiguous fp32.
    """
    seg = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # offsets built from batch·head are int64: no wrap at 2^31
    batch = bh // n_heads
    head = bh % n_heads
    start = seg * seg_len
    end = tl.minimum(start + seg_len, n_tokens)
    offs_t = tl.arange(0, BLOCK_T)
    offs_e = tl.program_id(2) * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_d = tl.arange(0, D)
    a_base = a_ptr + batch * stride_ab + head * stride_ah
    b_base = b_ptr + batch * stride_bb + head * stride_bh
    w_base = bh * n_tokens
    acc = tl.zeros([BLOCK_E, D], dtype=tl.float32)
    z_acc = tl.zeros([BLOCK_E], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        valid = t0 + offs_t < end
        t64 = tl.cast(t0, tl.int64)  # a loop index: a Python int under the interpreter
        a_ptrs = a_base + t64 * stride_an + offs_t[:, None] * stride_an + offs_e[None, :]
        a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
        b_ptrs = b_base + t64 * stride_bn + offs_t[:, None] * stride_bn + offs_d[None, :]
        b = tl.load(b_ptrs, mask=valid[:, None], other=0.0)
        if HAS_WB:
            wb = tl.load(wb_ptr + w_base + t64 + offs_t, mask=valid, other=0.0)
            b = (b.to(tl.float32) * wb[:, None]).to(a.dtype)
        acc += tl.dot(tl.trans(a), b, input_precision=PREC)
        if HAS_WZ:
            wz = tl.load(wz_ptr + w_base + t64 + offs_t, mask=valid, other=0.0)
            z_acc += tl.sum(a.to(tl.float32) * wz[:, None], axis=0)
        else:
            z_acc += tl.sum(a.to(tl.float32), axis=0)
    out = (batch * n_segs + seg) * n_heads + head
    tl.store(kv_ptr + out * E * D + offs_e[:, None] * D + offs_d[None, :], acc)
    tl.store(z_ptr + out * E + offs_e, z_acc)


@triton.jit
def _segment_apply_kernel(
    a_ptr,
    b_ptr,
    dkv_ptr,
    dz_ptr,
    da_ptr,
    db_ptr,
    stride_ab,
    stride_an,
    stride_ah,
    stride_bb,
    stride_bn,
    stride_bh,
    n_tokens,
    seg_len,
    n_heads,
    n_segs,
    blocks_per_seg,
    E: tl.constexpr,
    D: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    PREC: tl.constexpr,
):
    """Backward of the sums: ``da_j = dKV b_j + dz`` and ``db_j = dKVᵀ a_j`` for token j of a segment.

    da, db are written contiguous [B, N, H, E] / [B, N, H, D] in the inputs' dtype.
    """
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # offsets built from batch·head are int64: no wrap at 2^31
    batch = bh // n_heads
    head = bh % n_heads
    seg = pid // blocks_per_seg
    seg_end = tl.minimum((seg + 1) * seg_len, n_tokens)
    tok0 = seg * seg_len + (pid % blocks_per_seg) * BLOCK_T
    offs_t = tl.arange(0, BLOCK_T)
    valid = tok0 + offs_t < seg_end
    tok0 = tok0.to(tl.int64)
    offs_d = tl.arange(0, D)
    offs_e = tl.arange(0, BLOCK_E)
    b_rows = b_ptr + batch * stride_bb + head * stride_bh + tok0 * stride_bn
    b = tl.load(b_rows + offs_t[:, None] * stride_bn + offs_d[None, :], mask=valid[:, None], other=0.0)
    state = (batch * n_segs + seg) * n_heads + head
    a_base = a_ptr + batch * stride_ab + head * stride_ah + tok0 * stride_an + offs_t[:, None] * stride_an
    out_rows = (batch * n_tokens + tok0) * n_heads + head  # of the block's first token in [B, N, H, ·]
    da_base = da_ptr + out_rows * E + offs_t[:, None] * (n_heads * E)
    db = tl.zeros([BLOCK_T, D], dtype=tl.float32)
    for e0 in tl.static_range(0, E, BLOCK_E):
        # Gradients go out in the inputs' dtype: the dots take dKV in that dtype too (fp32 stays fp32).
        dkv = tl.load(dkv_ptr + state * E * D + (e0 + offs_e)[:, None] * D + offs_d[None, :]).to(b.dtype)
        dz = tl.load(dz_ptr + state * E + e0 + offs_e)
        a = tl.load(a_base + (e0 + offs_e)[None, :], mask=valid[:, None], other=0.0)
        db += tl.dot(a, dkv, input_precision=PREC)
        da = tl.dot(b, tl.trans(dkv), input_precision=PREC) + dz[None, :]
        tl.store(da_base + (e0 + offs_e)[None, :], da.to(a.dtype), mask=valid[:, None])
    db_ptrs = db_ptr + out_rows * D + offs_t[:, None] * (n_heads * D) + offs_d[None, :]
    tl.store(db_ptrs, db.to(b.dtype), mask=valid[:, None])


def segment_sums(
    a: Tensor, b: Tensor, seg_len: int, wb: Tensor | None = None, wz: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """kv [B, n_segs, H, E, D] = Σ_j a_jᵀ (wb_j b_j), z [B, n_segs, H, E] = Σ_j wz_j a_j, in fp32.

    a: [B, N, H, E], b: [B, N, H, D] (last dim contiguous); wb, wz: [B, H, N] fp32 or None (= 1).
    Segment s is tokens [s·seg_len, min((s+1)·seg_len, N)).
    """
    a, b = last_dim_contiguous(a), last_dim_contiguous(b)  # rows read with unit stride
    batch, n_tokens, heads, feat = a.shape
    head_dim = b.shape[-1]
    n_segs = -(-n_tokens // seg_len)
    kv = torch.empty(batch, n_segs, heads, feat, head_dim, device=a.device, dtype=torch.float32)
    z = torch.empty(batch, n_segs, heads, feat, device=a.device, dtype=torch.float32)
    cfg = segment_config(head_dim, feat, a.device)
    grid = (n_segs, batch * heads, feat // cfg.block_e)
    _segment_sums_kernel[grid](
        a_ptr=a,
        b_ptr=b,
        wb_ptr=a if wb is None else wb,
        wz_ptr=a if wz is None else wz,
        kv_ptr=kv,
        z_ptr=z,
        **strides("a", a),
        **strides("b", b),
        n_tokens=n_tokens,
        seg_len=seg_len,
        n_heads=heads,
        n_segs=n_segs,
        E=feat,
        D=head_dim,
        BLOCK_T=cfg.block_t,
        BLOCK_E=cfg.block_e,
        HAS_WB=wb is not None,
        HAS_WZ=wz is not None,
        PREC=dot_precision(a.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return kv, z


def segment_apply(a: Tensor, b: Tensor, dkv: Tensor, dz: Tensor, seg_len: int) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`segment_sums` (unweighted) w.r.t. a and b, given dkv and dz."""
    a, b = last_dim_contiguous(a), last_dim_contiguous(b)
    batch, n_tokens, heads, feat = a.shape
    head_dim = b.shape[-1]
    n_segs = dkv.shape[1]
    da = torch.empty(batch, n_tokens, heads, feat, device=a.device, dtype=a.dtype)
    db = torch.empty(batch, n_tokens, heads, head_dim, device=a.device, dtype=b.dtype)
    cfg = segment_config(head_dim, feat, a.device)
    blocks_per_seg = -(-seg_len // cfg.block_t)
    grid = (n_segs * blocks_per_seg, batch * heads)
    _segment_apply_kernel[grid](
        a_ptr=a,
        b_ptr=b,
        dkv_ptr=dkv.contiguous(),
        dz_ptr=dz.contiguous(),
        da_ptr=da,
        db_ptr=db,
        **strides("a", a),
        **strides("b", b),
        n_tokens=n_tokens,
        seg_len=seg_len,
        n_heads=heads,
        n_segs=n_segs,
        blocks_per_seg=blocks_per_seg,
        E=feat,
        D=head_dim,
        BLOCK_T=cfg.block_t,
        BLOCK_E=cfg.block_e,
        PREC=dot_precision(a.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return da, db


class SegmentSums(torch.autograd.Function):
    """Differentiable :func:`segment_sums` without weights: (a, b) -> (Σ aᵀb, Σ a) per segment."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, seg_len: int) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(a, b)
        ctx.seg_len = seg_len
        return segment_sums(a, b, seg_len)

    @staticmethod
    def backward(ctx, dkv: Tensor | None, dz: Tensor | None):
        a, b = ctx.saved_tensors
        batch, n_tokens, heads, feat = a.shape
        n_segs = -(-n_tokens // ctx.seg_len)
        if dkv is None:
            dkv = a.new_zeros(batch, n_segs, heads, feat, b.shape[-1], dtype=torch.float32)
        if dz is None:
            dz = a.new_zeros(batch, n_segs, heads, feat, dtype=torch.float32)
        da, db = segment_apply(a, b, dkv, dz, ctx.seg_len)
        return da, db, None


#: Feature rows per program of :func:`retire_sums` (feature dims are multiples of 16).
RETIRE_ROWS = 16


@triton.jit
def _retire_kernel(
    parts_kv_ptr,
    parts_z_ptr,
    kv_ptr,
    z_ptr,
    pending_kv_ptr,
    pending_z_ptr,
    kv_out_ptr,
    z_out_ptr,
    kept_kv_ptr,
    kept_z_ptr,
    n_heads,
    n_pending,
    from_pending,
    n_frames,
    from_new,
    splits,
    E: tl.constexpr,
    D: tl.constexpr,
    ROWS: tl.constexpr,
):
    """One program: feature rows [ROWS·program_id(1), +ROWS) of (batch, head) ``program_id(0)``.

    kv_out = kv + Σ_{i < from_pending} pending[i] + Σ_{f < from_new} sum_f, where frame f's sum is
    its ``splits`` consecutive partials; kept = [pending[from_pending:] ‖ sum_f for f ≥ from_new].
    All [B, ·, H, E(, D)] contiguous fp32; z the same without D.
    """
    bh = tl.program_id(0).to(tl.int64)  # state offsets reach B·F·splits·H·E·D: int64
    batch = bh // n_heads
    head = bh % n_heads
    offs_e = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    tile = offs_e[:, None] * D + tl.arange(0, D)[None, :]
    kv = tl.load(kv_ptr + bh * E * D + tile)
    z = tl.load(z_ptr + bh * E + offs_e)
    n_kept = n_pending - from_pending + n_frames - from_new
    for i in range(0, from_pending):
        src = (batch * n_pending + i) * n_heads + head
        kv += tl.load(pending_kv_ptr + src * E * D + tile)
        z += tl.load(pending_z_ptr + src * E + offs_e)
    for i in range(from_pending, n_pending):
        src = (batch * n_pending + i) * n_heads + head
        dst = (batch * n_kept + i - from_pending) * n_heads + head
        tl.store(kept_kv_ptr + dst * E * D + tile, tl.load(pending_kv_ptr + src * E * D + tile))
        tl.store(kept_z_ptr + dst * E + offs_e, tl.load(pending_z_ptr + src * E + offs_e))
    n_parts = n_frames * splits
    for f in range(0, from_new):
        for s in range(f * splits, (f + 1) * splits):
            src = (batch * n_parts + s) * n_heads + head
            kv += tl.load(parts_kv_ptr + src * E * D + tile)
            z += tl.load(parts_z_ptr + src * E + offs_e)
    for f in range(from_new, n_frames):
        frame_kv = tl.zeros([ROWS, D], dtype=tl.float32)
        frame_z = tl.zeros([ROWS], dtype=tl.float32)
        for s in range(f * splits, (f + 1) * splits):
            src = (batch * n_parts + s) * n_heads + head
            frame_kv += tl.load(parts_kv_ptr + src * E * D + tile)
            frame_z += tl.load(parts_z_ptr + src * E + offs_e)
        dst = (batch * n_kept + n_pending - from_pending + f - from_new) * n_heads + head
        tl.store(kept_kv_ptr + dst * E * D + tile, frame_kv)
        tl.store(kept_z_ptr + dst * E + offs_e, frame_z)
    tl.store(kv_out_ptr + bh * E * D + tile, kv)
    tl.store(z_out_ptr + bh * E + offs_e, z)


def retire_sums(
    parts_kv: Tensor,
    parts_z: Tensor,
    splits: int,
    kv: Tensor,
    z: Tensor,
    pending_kv: Tensor,
    pending_z: Tensor,
    leaving: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The streaming state update in one launch: the first ``leaving`` frames of [pending ‖ chunk]
    join (kv, z); the rest stay pending. Returns (kv, z, pending_kv, pending_z), new tensors.

    parts_kv [B, F·splits, H, E, D] / parts_z [B, F·splits, H, E]: the chunk's F frames as ``splits``
    partial sums each (:func:`segment_sums`); kv [B, H, E, D], z [B, H, E]; pending_kv
    [B, P, H, E, D], pending_z [B, P, H, E]; all fp32.
    """
    batch, n_parts, heads, feat, head_dim = parts_kv.shape
    n_frames, n_pending = n_parts // splits, pending_kv.shape[1]
    if not 0 <= leaving <= n_pending + n_frames or n_parts != n_frames * splits:
        raise ValueError(
            f"retire_sums: {leaving} leaving frames of {n_pending} pending + {n_parts} parts / {splits} splits"
        )
    from_pending = min(leaving, n_pending)
    n_kept = n_pending + n_frames - leaving
    kv, z, pending_kv, pending_z = (t.contiguous() for t in (kv, z, pending_kv, pending_z))
    kv_out, z_out = torch.empty_like(kv), torch.empty_like(z)
    kept_kv = kv.new_empty(batch, n_kept, heads, feat, head_dim)
    kept_z = z.new_empty(batch, n_kept, heads, feat)
    grid = (batch * heads, feat // RETIRE_ROWS)
    _retire_kernel[grid](
        parts_kv_ptr=parts_kv.contiguous(),
        parts_z_ptr=parts_z.contiguous(),
        kv_ptr=kv,
        z_ptr=z,
        pending_kv_ptr=pending_kv,
        pending_z_ptr=pending_z,
        kv_out_ptr=kv_out,
        z_out_ptr=z_out,
        kept_kv_ptr=kept_kv,
        kept_z_ptr=kept_z,
        n_heads=heads,
        n_pending=n_pending,
        from_pending=from_pending,
        n_frames=n_frames,
        from_new=leaving - from_pending,
        splits=splits,
        E=feat,
        D=head_dim,
        ROWS=RETIRE_ROWS,
    )
    return kv_out, z_out, kept_kv, kept_z
