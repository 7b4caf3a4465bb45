"""Flash-style Triton kernels for the windowed softmax part of ReHyAt, fused with the linear part.

Geometry: the launchers take a :class:`~rehyat.attention.hybrid.geometry.Geometry` and hand the kernels its
token counts: queries of chunk t are rows [t·L, min((t+1)·L, NQ)) of q; their softmax keys are rows
[max(t·L − O, 0), min((t+1)·L + K0, NK)) of k and v, where L = ``chunk_tokens``, O = ``overlap_tokens``
and K0 = ``key_offset`` = NK − NQ: the queries are the last NQ key rows. The parallel form has K0 = 0
(k, v indexed like q); the streaming step is one chunk (``chunk_frames=None``) whose keys are [cached
keys ‖ chunk] (K0 = cached tokens: global keys, anchor frames and overlap frames, so its window is every
key). Without gradients the forward can read such keys from two sources in place (HAS_PREFIX: keys
j < M from the cached keys, the rest from the chunk's k, v at j − M) instead of from a concatenated
copy, and leave out masked cached keys (PREFIX_MASK: a padded prompt's global keys). The linear part enters
through each chunk's state KV_t [D', D] and z_t [D'] (fp32).

Forward (per query block, all rows in one chunk): online softmax over the window in the log2 domain,
then the epilogue ``y = (aS + φq·KV_t) / max(nS + φq·z_t, eps·nS)`` (docs/method.md §3; the linear part is not
rescaled by the row max). Saved per row: m = c·log2(e) (the row max), nS, nL.

Backward, with g = ∂L/∂y, den the guarded denominator, ĝ = g/den, δ = g·y:
  ∂L/∂den = −δ/den; unguarded rows pass it to nS and nL, guarded rows pass eps·(it) to nS only.
  ds_ij = p_ij (ĝ_i·v_j + ∂L/∂nS_i)  (through p with the row max c_i held fixed)
  ∂L/∂c_i = −Σ_j ds_ij, which flows to s_ij* for the argmax key j* (c_i = max_j s_ij). Without a linear
  part it is 0 exactly (y does not depend on c) and is skipped. torch.amax splits it evenly over tied
  maxima; the kernel gives it to the first maximum — ties have probability 0 with continuous inputs.
  ∂L/∂fq_i = KV_t ĝ_i + ∂L/∂nL_i z_t;  ∂L/∂KV_t, ∂L/∂z_t: chunk sums done by ``segment_sums``.
The dq kernel (per query block) also finds the argmax key, adds the ∂L/∂c term to dq and scatters it
into an fp32 dk buffer with atomics; the dk/dv kernel (per key block, looping over the chunks whose
window holds it) adds that buffer when it writes dk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rehyat.attention.hybrid.common import DENOMINATOR_EPS, AttentionStats, check_output_buffer
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.hybrid.kernels.state_sums import segment_sums
from rehyat.attention.kernels.memory_layout import last_dim_contiguous, strides
from rehyat.attention.kernels.tuning import attention_config, dot_precision, feature_block, key_splits

LOG2E = 1.4426950408889634
#: Query rows per program of the split merge, a memory-bound pass: small blocks, many programs.
COMBINE_BLOCK_M = 32
COMBINE_WARPS = 4


@triton.jit
def _query_block(n_heads, n_q, chunk_tokens, blocks_per_chunk, BLOCK_M: tl.constexpr):
    """This program's (batch·head, batch, head, chunk, first row, row mask): grid axis 0 runs over the
    query blocks of all chunks (none spans two chunks), axis 1 over batch × heads. batch·head, batch,
    head and the first row are int64: every offset built from them is, so none wraps at 2^31 elements
    (φq of 1001 Wan frames holds 4.8e9); offsets inside a block stay int32."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    chunk = pid // blocks_per_chunk
    row0 = chunk * chunk_tokens + (pid % blocks_per_chunk) * BLOCK_M
    row_valid = row0 + tl.arange(0, BLOCK_M) < tl.minimum((chunk + 1) * chunk_tokens, n_q)
    batch, head = (bh // n_heads).to(tl.int64), (bh % n_heads).to(tl.int64)
    return bh.to(tl.int64), batch, head, chunk, row0.to(tl.int64), row_valid


@triton.jit
def _key_block(k_base, v_base, stride_kn, stride_vn, start, hi, offs_n, offs_d, MASK: tl.constexpr):
    """Keys and values [start, start + BLOCK_N) (rows past ``hi`` zero with MASK) and their mask."""
    k_ptrs = k_base + tl.cast(start, tl.int64) * stride_kn + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_base + tl.cast(start, tl.int64) * stride_vn + offs_n[:, None] * stride_vn + offs_d[None, :]
    valid = start + offs_n < hi
    if MASK:
        k = tl.load(k_ptrs, mask=valid[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=valid[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v, valid


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    lo,
    hi,
    offs_n,
    offs_d,
    qk_scale,
    keep_base,
    MASK: tl.constexpr,
    KEY_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    for start in range(lo, hi, BLOCK_N):
        k, v, valid = _key_block(k_base, v_base, stride_kn, stride_vn, start, hi, offs_n, offs_d, MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if MASK:
            s = tl.where(valid[None, :], s, float("-inf"))
        if KEY_MASK:
            # Masked keys (a padded prompt's global keys) score -inf; a row that has seen only masked
            # keys keeps m = -inf, so its exponents are taken from 0 instead (no -inf - -inf).
            keep = tl.load(keep_base + start + offs_n, mask=valid, other=0)
            s = tl.where(keep[None, :] != 0, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_use)
            p = tl.math.exp2(s - m_use[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_range(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    lo,
    hi,
    offs_n,
    offs_d,
    qk_scale,
    keep_base,
    KEY_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    """Keys [lo, hi) of one source: its whole blocks unmasked, then the masked tail. With KEY_MASK the
    keys j whose ``keep_base[j]`` is 0 are left out."""
    full = lo + ((hi - lo) // BLOCK_N) * BLOCK_N
    for masked in tl.static_range(2):  # the whole blocks, then the masked tail
        acc, l_i, m_i = _fwd_inner(
            acc=acc,
            l_i=l_i,
            m_i=m_i,
            q=q,
            k_base=k_base,
            v_base=v_base,
            stride_kn=stride_kn,
            stride_vn=stride_vn,
            lo=full if masked else lo,
            hi=hi if masked else full,
            offs_n=offs_n,
            offs_d=offs_d,
            qk_scale=qk_scale,
            keep_base=keep_base,
            MASK=masked == 1,
            KEY_MASK=KEY_MASK,
            BLOCK_N=BLOCK_N,
            PREC=PREC,
        )
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    pk_ptr,
    pv_ptr,
    pmask_ptr,
    fq_ptr,
    kv_ptr,
    z_ptr,
    o_ptr,
    m_ptr,
    l_ptr,
    nl_ptr,
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_pkb,
    stride_pkn,
    stride_pkh,
    stride_pvb,
    stride_pvn,
    stride_pvh,
    stride_pmb,
    stride_fb,
    stride_fn,
    stride_fh,
    stride_ob,
    stride_on,
    stride_oh,
    n_heads,
    n_q,
    n_k,
    n_prefix,
    chunk_tokens,
    overlap_tokens,
    key_offset,
    blocks_per_chunk,
    n_chunks,
    qk_scale,
    eps,
    D: tl.constexpr,
    E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_LINEAR: tl.constexpr,
    HAS_PREFIX: tl.constexpr,
    PREFIX_MASK: tl.constexpr,
    SPLITS: tl.constexpr,
    PREC: tl.constexpr,
):
    bh, batch, head, chunk, row0, row_valid = _query_block(
        n_heads, n_q, chunk_tokens, blocks_per_chunk, BLOCK_M
    )
    key_lo = tl.maximum(chunk * chunk_tokens - overlap_tokens, 0)
    key_hi = tl.minimum((chunk + 1) * chunk_tokens + key_offset, n_k)
    if SPLITS > 1:
        # This program's part of the window: whole key blocks from the window start, the last part short.
        span = tl.cdiv(tl.cdiv(key_hi - key_lo, SPLITS), BLOCK_N) * BLOCK_N
        split_lo = tl.minimum(key_lo + tl.program_id(2) * span, key_hi)
        key_hi = tl.minimum(split_lo + span, key_hi)
        key_lo = split_lo
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)

    q_rows = q_ptr + batch * stride_qb + head * stride_qh + row0 * stride_qn
    q = tl.load(q_rows + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_valid[:, None], other=0.0)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    if HAS_PREFIX:
        # Keys j < n_prefix are rows of the prefix, the others rows j − n_prefix of k, v.
        prefix_hi = tl.maximum(tl.minimum(key_hi, n_prefix), key_lo)
        acc, l_i, m_i = _fwd_range(
            acc=acc,
            l_i=l_i,
            m_i=m_i,
            q=q,
            k_base=pk_ptr + batch * stride_pkb + head * stride_pkh,
            v_base=pv_ptr + batch * stride_pvb + head * stride_pvh,
            stride_kn=stride_pkn,
            stride_vn=stride_pvn,
            lo=key_lo,
            hi=prefix_hi,
            offs_n=offs_n,
            offs_d=offs_d,
            qk_scale=qk_scale,
            keep_base=pmask_ptr + batch * stride_pmb,
            KEY_MASK=PREFIX_MASK,
            BLOCK_N=BLOCK_N,
            PREC=PREC,
        )
        key_lo = tl.maximum(key_lo - n_prefix, 0)
        key_hi = tl.maximum(key_hi - n_prefix, key_lo)
    acc, l_i, m_i = _fwd_range(
        acc=acc,
        l_i=l_i,
        m_i=m_i,
        q=q,
        k_base=k_ptr + batch * stride_kb + head * stride_kh,
        v_base=v_ptr + batch * stride_vb + head * stride_vh,
        stride_kn=stride_kn,
        stride_vn=stride_vn,
        lo=key_lo,
        hi=key_hi,
        offs_n=offs_n,
        offs_d=offs_d,
        qk_scale=qk_scale,
        keep_base=pmask_ptr,
        KEY_MASK=False,
        BLOCK_N=BLOCK_N,
        PREC=PREC,
    )

    if SPLITS > 1:
        # Unnormalised softmax partials; _combine_kernel merges them and adds the linear part (there,
        # not in one of the parts: a part with the linear epilogue took longer than the merge saves).
        part = (tl.program_id(2) * tl.num_programs(1) + bh) * n_q + row0
        tl.store(
            part_acc_ptr + part * D + offs_m[:, None] * D + offs_d[None, :], acc, mask=row_valid[:, None]
        )
        tl.store(part_m_ptr + part + offs_m, m_i, mask=row_valid)
        tl.store(part_l_ptr + part + offs_m, l_i, mask=row_valid)
    else:
        _epilogue(
            num=acc,
            l_i=l_i,
            m_i=m_i,
            row_valid=row_valid,
            fq_rows=fq_ptr + batch * stride_fb + head * stride_fh + row0 * stride_fn,
            stride_fn=stride_fn,
            state=(batch * n_chunks + chunk) * n_heads + head,
            kv_ptr=kv_ptr,
            z_ptr=z_ptr,
            o_rows=o_ptr + batch * stride_ob + head * stride_oh + row0 * stride_on,
            stride_on=stride_on,
            stat_off=bh * n_q + row0,
            m_ptr=m_ptr,
            l_ptr=l_ptr,
            nl_ptr=nl_ptr,
            eps=eps,
            D=D,
            E=E,
            BLOCK_M=BLOCK_M,
            BLOCK_E=BLOCK_E,
            HAS_LINEAR=HAS_LINEAR,
            PREC=PREC,
        )


@triton.jit
def _epilogue(
    num,
    l_i,
    m_i,
    row_valid,
    fq_rows,
    stride_fn,
    state,
    kv_ptr,
    z_ptr,
    o_rows,
    stride_on,
    stat_off,
    m_ptr,
    l_ptr,
    nl_ptr,
    eps,
    D: tl.constexpr,
    E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_LINEAR: tl.constexpr,
    PREC: tl.constexpr,
):
    """Adds the linear part φq·KV_t, φq·z_t to the softmax numerator ``num`` and normaliser ``l_i``, then
    y = num / max(nS + nL, eps·nS) (docs/method.md §3's guarded shared normaliser); stores y, m, nS, nL.

    ``fq_rows``/``o_rows`` point at the block's first row of φq and y, ``state`` is the chunk's state
    index in kv [B, C, H, E, D] / z [B, C, H, E] and ``stat_off`` the first row's in [B, H, NQ]."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    n_lin = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_LINEAR:
        offs_e = tl.arange(0, BLOCK_E)
        for e0 in tl.static_range(0, E, BLOCK_E):
            fq_ptrs = fq_rows + offs_m[:, None] * stride_fn + (e0 + offs_e)[None, :]
            fq = tl.load(fq_ptrs, mask=row_valid[:, None], other=0.0).to(tl.float32)
            kv = tl.load(kv_ptr + state * E * D + (e0 + offs_e)[:, None] * D + offs_d[None, :])
            z = tl.load(z_ptr + state * E + e0 + offs_e)
            num += tl.dot(fq, kv, input_precision=PREC)
            n_lin += tl.sum(fq * z[None, :], axis=1)
    den = tl.maximum(l_i + n_lin, eps * l_i)
    out = num / den[:, None]
    o_ptrs = o_rows + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptrs.dtype.element_ty), mask=row_valid[:, None])
    tl.store(m_ptr + stat_off + offs_m, m_i, mask=row_valid)
    tl.store(l_ptr + stat_off + offs_m, l_i, mask=row_valid)
    tl.store(nl_ptr + stat_off + offs_m, n_lin, mask=row_valid)


@triton.jit
def _combine_kernel(
    part_acc_ptr,
    part_m_ptr,
    part_l_ptr,
    fq_ptr,
    kv_ptr,
    z_ptr,
    o_ptr,
    m_ptr,
    l_ptr,
    nl_ptr,
    stride_fb,
    stride_fn,
    stride_fh,
    stride_ob,
    stride_on,
    stride_oh,
    n_heads,
    n_q,
    chunk_tokens,
    blocks_per_chunk,
    n_chunks,
    eps,
    D: tl.constexpr,
    E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_LINEAR: tl.constexpr,
    SPLITS: tl.constexpr,
    PREC: tl.constexpr,
):
    """Merge the key splits of one query block (rescaled to the common row max), add the linear part
    and normalise."""
    bh, batch, head, chunk, row0, row_valid = _query_block(
        n_heads, n_q, chunk_tokens, blocks_per_chunk, BLOCK_M
    )
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    own = bh * n_q + row0
    stride_split = tl.cast(tl.num_programs(1), tl.int64) * n_q
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for split in tl.static_range(SPLITS):
        part_m = tl.load(part_m_ptr + split * stride_split + own + offs_m, mask=row_valid, other=0.0)
        m_i = tl.maximum(m_i, part_m)
    num = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for split in tl.static_range(SPLITS):
        part = split * stride_split + own
        weight = tl.math.exp2(tl.load(part_m_ptr + part + offs_m, mask=row_valid, other=0.0) - m_i)
        # other=1.0: no 0/0 in masked rows
        l_i += weight * tl.load(part_l_ptr + part + offs_m, mask=row_valid, other=1.0)
        acc_ptrs = part_acc_ptr + part * D + offs_m[:, None] * D + offs_d[None, :]
        num += weight[:, None] * tl.load(acc_ptrs, mask=row_valid[:, None], other=0.0)
    _epilogue(
        num=num,
        l_i=l_i,
        m_i=m_i,
        row_valid=row_valid,
        fq_rows=fq_ptr + batch * stride_fb + head * stride_fh + row0 * stride_fn,
        stride_fn=stride_fn,
        state=(batch * n_chunks + chunk) * n_heads + head,
        kv_ptr=kv_ptr,
        z_ptr=z_ptr,
        o_rows=o_ptr + batch * stride_ob + head * stride_oh + row0 * stride_on,
        stride_on=stride_on,
        stat_off=own,
        m_ptr=m_ptr,
        l_ptr=l_ptr,
        nl_ptr=nl_ptr,
        eps=eps,
        D=D,
        E=E,
        BLOCK_M=BLOCK_M,
        BLOCK_E=BLOCK_E,
        HAS_LINEAR=HAS_LINEAR,
        PREC=PREC,
    )


@triton.jit
def _bwd_preprocess_kernel(
    o_ptr,
    g_ptr,
    l_ptr,
    nl_ptr,
    rden_ptr,
    dns_ptr,
    dnl_ptr,
    stride_gb,
    stride_gn,
    stride_gh,
    n_heads,
    n_q,
    eps,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Per row: 1/den, ∂L/∂nS and ∂L/∂nL from δ = g·y and the guard (see the module docstring)."""
    bh = tl.program_id(1).to(tl.int64)
    batch = bh // n_heads
    head = bh % n_heads
    row0 = tl.program_id(0) * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    valid = row0 + offs_m < n_q
    row0 = row0.to(tl.int64)
    offs_d = tl.arange(0, D)
    o_rows = o_ptr + ((batch * n_q + row0) * n_heads + head) * D
    o = tl.load(o_rows + offs_m[:, None] * (n_heads * D) + offs_d[None, :], mask=valid[:, None], other=0.0)
    g_rows = g_ptr + batch * stride_gb + head * stride_gh + row0 * stride_gn
    g = tl.load(g_rows + offs_m[:, None] * stride_gn + offs_d[None, :], mask=valid[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * g.to(tl.float32), axis=1)
    stat_off = bh * n_q + row0  # of the block's first row in [B, H, NQ]
    n_soft = tl.load(l_ptr + stat_off + offs_m, mask=valid, other=1.0)
    n_lin = tl.load(nl_ptr + stat_off + offs_m, mask=valid, other=0.0)
    floor = eps * n_soft
    total = n_soft + n_lin
    guarded = total < floor
    rden = 1.0 / tl.maximum(total, floor)
    d_den = -delta * rden
    tl.store(rden_ptr + stat_off + offs_m, rden, mask=valid)
    tl.store(dns_ptr + stat_off + offs_m, tl.where(guarded, eps * d_den, d_den), mask=valid)
    tl.store(dnl_ptr + stat_off + offs_m, tl.where(guarded, 0.0, d_den), mask=valid)


@triton.jit
def _bwd_dq_inner(
    dq,
    row_sum,
    best,
    best_idx,
    q,
    gn,
    m,
    dns,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    lo,
    hi,
    offs_n,
    offs_d,
    qk_scale,
    MASK: tl.constexpr,
    HAS_LINEAR: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    for start in range(lo, hi, BLOCK_N):
        k, v, valid = _key_block(k_base, v_base, stride_kn, stride_vn, start, hi, offs_n, offs_d, MASK)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if MASK:
            s = tl.where(valid[None, :], s, float("-inf"))
        if HAS_LINEAR:
            block_best = tl.max(s, axis=1)
            block_idx = tl.argmax(s, axis=1) + start
            better = block_best > best
            best_idx = tl.where(better, block_idx, best_idx)
            best = tl.where(better, block_best, best)
        p = tl.math.exp2(s - m[:, None])
        dp = tl.dot(gn, tl.trans(v), input_precision=PREC) + dns[:, None]
        ds = p * dp
        row_sum += tl.sum(ds, axis=1)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    return dq, row_sum, best, best_idx


@triton.jit
def _bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    kv_ptr,
    z_ptr,
    m_ptr,
    rden_ptr,
    dns_ptr,
    dnl_ptr,
    dq_ptr,
    dfq_ptr,
    dk_extra_ptr,
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_gb,
    stride_gn,
    stride_gh,
    n_heads,
    n_q,
    n_k,
    chunk_tokens,
    overlap_tokens,
    key_offset,
    blocks_per_chunk,
    n_chunks,
    scale,
    qk_scale,
    D: tl.constexpr,
    E: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_E: tl.constexpr,
    HAS_LINEAR: tl.constexpr,
    PREC: tl.constexpr,
):
    bh, batch, head, chunk, row0, row_valid = _query_block(
        n_heads, n_q, chunk_tokens, blocks_per_chunk, BLOCK_M
    )
    key_lo = tl.maximum(chunk * chunk_tokens - overlap_tokens, 0)
    key_hi = tl.minimum((chunk + 1) * chunk_tokens + key_offset, n_k)
    key_full = key_lo + ((key_hi - key_lo) // BLOCK_N) * BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)

    q_rows = q_ptr + batch * stride_qb + head * stride_qh + row0 * stride_qn
    q = tl.load(q_rows + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_valid[:, None], other=0.0)
    g_rows = g_ptr + batch * stride_gb + head * stride_gh + row0 * stride_gn
    g = tl.load(g_rows + offs_m[:, None] * stride_gn + offs_d[None, :], mask=row_valid[:, None], other=0.0)
    stat_off = bh * n_q + row0  # of the block's first row in [B, H, NQ]
    m = tl.load(m_ptr + stat_off + offs_m, mask=row_valid, other=0.0)
    rden = tl.load(rden_ptr + stat_off + offs_m, mask=row_valid, other=0.0)
    dns = tl.load(dns_ptr + stat_off + offs_m, mask=row_valid, other=0.0)
    gn32 = g.to(tl.float32) * rden[:, None]
    gn = gn32.to(q.dtype)
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    best = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_M], dtype=tl.int32)
    for masked in tl.static_range(2):  # the window's whole key blocks, then its masked tail
        dq, row_sum, best, best_idx = _bwd_dq_inner(
            dq=dq,
            row_sum=row_sum,
            best=best,
            best_idx=best_idx,
            q=q,
            gn=gn,
            m=m,
            dns=dns,
            k_base=k_base,
            v_base=v_base,
            stride_kn=stride_kn,
            stride_vn=stride_vn,
            lo=key_full if masked else key_lo,
            hi=key_hi if masked else key_full,
            offs_n=offs_n,
            offs_d=offs_d,
            qk_scale=qk_scale,
            MASK=masked == 1,
            HAS_LINEAR=HAS_LINEAR,
            BLOCK_N=BLOCK_N,
            PREC=PREC,
        )

    if HAS_LINEAR:
        # The row-max term: ∂L/∂c_i = −Σ_j ds_ij lands on the argmax key (a key per row: int64 offsets).
        d_max = -row_sum
        best_key = best_idx.to(tl.int64)[:, None]
        k_best = tl.load(k_base + best_key * stride_kn + offs_d[None, :], mask=row_valid[:, None], other=0.0)
        dq += d_max[:, None] * k_best.to(tl.float32)
        extra_off = ((batch * n_k + best_key) * n_heads + head) * D + offs_d[None, :]
        tl.atomic_add(
            dk_extra_ptr + extra_off, (d_max * scale)[:, None] * q.to(tl.float32), mask=row_valid[:, None]
        )
    out_rows = (batch * n_q + row0) * n_heads + head  # of the block's first row in [B, NQ, H, ·]
    dq_ptrs = dq_ptr + out_rows * D + offs_m[:, None] * (n_heads * D) + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(q.dtype), mask=row_valid[:, None])

    if HAS_LINEAR:
        dnl = tl.load(dnl_ptr + stat_off + offs_m, mask=row_valid, other=0.0)
        offs_e = tl.arange(0, BLOCK_E)
        state = (batch * n_chunks + chunk) * n_heads + head
        dfq_rows = dfq_ptr + out_rows * E + offs_m[:, None] * (n_heads * E)
        for e0 in tl.static_range(0, E, BLOCK_E):
            kv = tl.load(kv_ptr + state * E * D + (e0 + offs_e)[:, None] * D + offs_d[None, :])
            z = tl.load(z_ptr + state * E + e0 + offs_e)
            dfq = tl.dot(gn32, tl.trans(kv), input_precision=PREC) + dnl[:, None] * z[None, :]
            tl.store(dfq_rows + (e0 + offs_e)[None, :], dfq.to(q.dtype), mask=row_valid[:, None])


@triton.jit
def _bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    g_ptr,
    m_ptr,
    rden_ptr,
    dns_ptr,
    dk_ptr,
    dv_ptr,
    dk_extra_ptr,
    stride_qb,
    stride_qn,
    stride_qh,
    stride_kb,
    stride_kn,
    stride_kh,
    stride_vb,
    stride_vn,
    stride_vh,
    stride_gb,
    stride_gn,
    stride_gh,
    n_heads,
    n_q,
    n_k,
    chunk_tokens,
    overlap_tokens,
    key_offset,
    n_chunks,
    scale,
    qk_scale,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_EXTRA: tl.constexpr,
    PREC: tl.constexpr,
):
    bh = tl.program_id(1).to(tl.int64)  # int64 offsets throughout, as in _query_block
    batch = bh // n_heads
    head = bh % n_heads
    key0 = tl.program_id(0) * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    cols = key0 + offs_n
    col_valid = cols < n_k
    offs_d = tl.arange(0, D)
    offs_m = tl.arange(0, BLOCK_M)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    g_base = g_ptr + batch * stride_gb + head * stride_gh
    k, v, _ = _key_block(
        k_base=k_ptr + batch * stride_kb + head * stride_kh,
        v_base=v_ptr + batch * stride_vb + head * stride_vh,
        stride_kn=stride_kn,
        stride_vn=stride_vn,
        start=key0,
        hi=n_k,
        offs_n=offs_n,
        offs_d=offs_d,
        MASK=True,
    )
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    # Chunks whose window [max(t·L − O, 0), min((t+1)·L + K0, NK)) meets this key block.
    last_key = tl.minimum(key0 + BLOCK_N, n_k) - 1
    first_chunk = tl.maximum(key0 - key_offset, 0) // chunk_tokens
    last_chunk = tl.minimum((last_key + overlap_tokens) // chunk_tokens, n_chunks - 1)
    for chunk in range(first_chunk, last_chunk + 1):
        key_lo = tl.maximum(chunk * chunk_tokens - overlap_tokens, 0)
        key_hi = tl.minimum((chunk + 1) * chunk_tokens + key_offset, n_k)
        in_window = (cols >= key_lo) & (cols < key_hi)
        row_hi = tl.minimum((chunk + 1) * chunk_tokens, n_q)
        for row0 in range(chunk * chunk_tokens, row_hi, BLOCK_M):
            row_valid = row0 + offs_m < row_hi
            row0_64 = tl.cast(row0, tl.int64)  # a loop index: a Python int under the interpreter
            rows64 = row0_64 + offs_m
            q_ptrs = q_base + rows64[:, None] * stride_qn + offs_d[None, :]
            q = tl.load(q_ptrs, mask=row_valid[:, None], other=0.0)
            g_ptrs = g_base + rows64[:, None] * stride_gn + offs_d[None, :]
            g = tl.load(g_ptrs, mask=row_valid[:, None], other=0.0)
            stat_off = bh * n_q + row0_64
            m = tl.load(m_ptr + stat_off + offs_m, mask=row_valid, other=float("inf"))
            rden = tl.load(rden_ptr + stat_off + offs_m, mask=row_valid, other=0.0)
            dns = tl.load(dns_ptr + stat_off + offs_m, mask=row_valid, other=0.0)
            gn = (g.to(tl.float32) * rden[:, None]).to(q.dtype)
            s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
            p_t = tl.math.exp2(s_t - m[None, :])
            p_t = tl.where(in_window[:, None], p_t, 0.0)
            dv += tl.dot(p_t.to(q.dtype), gn, input_precision=PREC)
            dp_t = tl.dot(v, tl.trans(gn), input_precision=PREC) + dns[None, :]
            ds_t = p_t * dp_t
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)
    dk *= scale
    out_rows = ((batch * n_k + key0) * n_heads + head) * D  # the block's first key in [B, NK, H, D]
    tile = offs_n[:, None] * (n_heads * D) + offs_d[None, :]
    if HAS_EXTRA:
        dk += tl.load(dk_extra_ptr + out_rows + tile, mask=col_valid[:, None], other=0.0)
    tl.store(dk_ptr + out_rows + tile, dk.to(k.dtype), mask=col_valid[:, None])
    tl.store(dv_ptr + out_rows + tile, dv.to(v.dtype), mask=col_valid[:, None])


def _grid_rows(n_q: int, chunk_tokens: int, block_m: int) -> tuple[int, int, int]:
    """(blocks per chunk, number of chunks, number of query-block programs) — no empty programs."""
    blocks_per_chunk = -(-chunk_tokens // block_m)
    n_chunks = -(-n_q // chunk_tokens)
    last_len = n_q - (n_chunks - 1) * chunk_tokens
    return blocks_per_chunk, n_chunks, (n_chunks - 1) * blocks_per_chunk + -(-last_len // block_m)


def _window(geometry: Geometry, n_q: int, n_k: int) -> tuple[int, int, int]:
    """The kernels' (chunk_tokens, overlap_tokens, key_offset) for ``n_q`` query rows, the last of
    ``n_k`` key rows (see the module docstring)."""
    return geometry.chunk_tokens(n_q // geometry.frame_tokens), geometry.overlap_tokens, n_k - n_q


def _contiguous_like(x: Tensor) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _prepared(
    q: Tensor, k: Tensor, v: Tensor, fq: Tensor | None, kv: Tensor | None, z: Tensor | None
) -> tuple[Tensor, ...]:
    """The kernels' layout: rows of q, k, v, fq with a unit last stride; whole kv, z contiguous."""
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    if fq is not None:
        fq, kv, z = last_dim_contiguous(fq), kv.contiguous(), z.contiguous()
    return q, k, v, fq, kv, z


def _launch_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    kv: Tensor | None,
    z: Tensor | None,
    *,
    prefix: tuple[Tensor, Tensor] | None,
    geometry: Geometry,
    stats: AttentionStats | None,
    splits: int | None = 1,
    out: Tensor | None = None,
    prefix_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run ``_fwd_kernel`` on prepared inputs and count ``stats``; returns (y, m, nS, nL).

    With ``prefix`` = (pk, pv) [B, M, H, D] the keys are [pk ‖ k] (values [pv ‖ v]) without being
    concatenated: key j < M is row j of the prefix, key j ≥ M row j − M of k, v; ``prefix_mask`` [B, M]
    (int8, contiguous rows; 0 = left out) masks prefix keys. With ``splits`` > 1
    (None: :func:`key_splits` picks) each window's keys are cut into that many parts, one program
    each, and ``_combine_kernel`` merges them: more programs when one chunk alone leaves SMs idle, for
    splits × [B·H, n_q, D] fp32 partials of extra memory. ``out``: where y goes (any strides with a
    unit last one; checked by the caller), else a new tensor.
    """
    has_linear = fq is not None
    batch, n_q, heads, head_dim = q.shape
    pk, pv = prefix if prefix is not None else (k, v)
    n_prefix = pk.shape[1] if prefix is not None else 0
    n_k = n_prefix + k.shape[1]
    chunk_tokens, overlap_tokens, key_offset = _window(geometry, n_q, n_k)
    scale = geometry.softmax_scale(head_dim)
    feat = fq.shape[-1] if has_linear else 0
    cfg = attention_config("fwd", head_dim, q.dtype, q.device)
    blocks_per_chunk, n_chunks, n_programs = _grid_rows(n_q, chunk_tokens, cfg.block_m)
    if splits is None:
        window_blocks = -(-min(chunk_tokens + overlap_tokens + key_offset, n_k) // cfg.block_n)
        splits = key_splits(n_programs * batch * heads, window_blocks, head_dim, q.dtype, q.device)
    if out is None:
        out = torch.empty(batch, n_q, heads, head_dim, device=q.device, dtype=q.dtype)
    m, l_soft, n_lin = (
        torch.empty(batch, heads, n_q, device=q.device, dtype=torch.float32) for _ in range(3)
    )
    part_acc, part_m, part_l = out, m, l_soft  # unused placeholders without splits
    if splits > 1:
        part_acc = torch.empty(splits, batch * heads, n_q, head_dim, device=q.device, dtype=torch.float32)
        part_m, part_l = (
            torch.empty(splits, batch * heads, n_q, device=q.device, dtype=torch.float32) for _ in range(2)
        )
    fq, kv, z = (fq, kv, z) if has_linear else (q, q, q)
    # Arguments _fwd_kernel shares with _combine_kernel, which merges split windows and finishes them.
    epilogue = dict(
        fq_ptr=fq,
        kv_ptr=kv,
        z_ptr=z,
        o_ptr=out,
        m_ptr=m,
        l_ptr=l_soft,
        nl_ptr=n_lin,
        part_acc_ptr=part_acc,
        part_m_ptr=part_m,
        part_l_ptr=part_l,
        **strides("f", fq),
        **strides("o", out),
        n_heads=heads,
        n_q=n_q,
        chunk_tokens=chunk_tokens,
        n_chunks=n_chunks,
        eps=DENOMINATOR_EPS,
        D=head_dim,
        E=feat,
        BLOCK_E=feature_block(feat) if has_linear else 16,
        HAS_LINEAR=has_linear,
        SPLITS=splits,
        PREC=dot_precision(q.dtype),
    )
    _fwd_kernel[(n_programs, batch * heads, splits)](
        q_ptr=q,
        k_ptr=k,
        v_ptr=v,
        pk_ptr=pk,
        pv_ptr=pv,
        pmask_ptr=prefix_mask if prefix_mask is not None else q,
        **strides("q", q),
        **strides("k", k),
        **strides("v", v),
        **strides("pk", pk),
        **strides("pv", pv),
        stride_pmb=prefix_mask.stride(0) if prefix_mask is not None else 0,
        n_k=n_k,
        n_prefix=n_prefix,
        overlap_tokens=overlap_tokens,
        key_offset=key_offset,
        blocks_per_chunk=blocks_per_chunk,
        qk_scale=scale * LOG2E,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        HAS_PREFIX=prefix is not None,
        PREFIX_MASK=prefix_mask is not None,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **epilogue,
    )
    if splits > 1:
        block_m = min(COMBINE_BLOCK_M, cfg.block_m)
        blocks_per_chunk, _, n_programs = _grid_rows(n_q, chunk_tokens, block_m)
        _combine_kernel[(n_programs, batch * heads)](
            blocks_per_chunk=blocks_per_chunk, BLOCK_M=block_m, num_warps=COMBINE_WARPS, **epilogue
        )
    if stats is not None:
        stats.total_rows += m.numel()
        stats.guarded_rows += int((l_soft + n_lin < DENOMINATOR_EPS * l_soft).sum())
    return out, m, l_soft, n_lin


def windowed_attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    kv: Tensor | None,
    z: Tensor | None,
    geometry: Geometry,
    stats: AttentionStats | None = None,
    *,
    prefix: tuple[Tensor, Tensor] | None = None,
    splits: int | None = None,
    out: Tensor | None = None,
    prefix_mask: Tensor | None = None,
) -> Tensor:
    """The forward of :class:`WindowedHybridAttention` alone: no autograd graph, nothing saved.

    ``prefix`` = (pk, pv) [B, M, H, D] gives the same result as passing k, v = [pk ‖ k], [pv ‖ v]
    (key indices count the prefix rows first) without building those
    concatenations — for the streaming step, whose cached frames come first. ``prefix_mask`` [B, M]
    bool (True = attend; a prefix is needed) leaves masked prefix keys out, as a padded prompt's global
    keys are left out. ``splits``: parts per
    key window (None: :func:`key_splits` decides from the grid and the GPU; 1 on CPU). ``out``: a
    tensor shaped and typed like q (e.g. a slice of a larger buffer) that receives y, which is returned.
    """
    q, k, v, fq, kv, z = _prepared(q, k, v, fq, kv, z)
    if prefix is not None:
        prefix = (last_dim_contiguous(prefix[0]), last_dim_contiguous(prefix[1]))
    if prefix_mask is not None:
        if prefix is None or prefix_mask.dtype != torch.bool or prefix_mask.shape != prefix[0].shape[:2]:
            shape = None if prefix is None else tuple(prefix[0].shape[:2])
            raise ValueError(
                f"prefix_mask must be a bool tensor [B, M] = {shape} over the prefix keys, got "
                f"{prefix_mask.dtype} {tuple(prefix_mask.shape)}"
            )
        prefix_mask = prefix_mask.to(torch.int8).contiguous()
    if splits is not None and splits < 1:
        raise ValueError(f"splits must be >= 1 or None, got {splits}")
    if out is not None:
        check_output_buffer(out, q)
    out, *_ = _launch_forward(
        q,
        k,
        v,
        fq,
        kv,
        z,
        prefix=prefix,
        geometry=geometry,
        stats=stats,
        splits=splits,
        out=out,
        prefix_mask=prefix_mask,
    )
    return out


class WindowedHybridAttention(torch.autograd.Function):
    """(q, k, v, fq, kv, z) -> y: windowed softmax part + linear part through chunk states kv, z.

    q, fq: [B, NQ, H, D|D']; k, v: [B, NK, H, D] (the queries are the last NQ key rows); kv:
    [B, C, H, D', D], z: [B, C, H, D'] fp32, one state per chunk of ``geometry`` (C = ceil(NQ / Tc·S));
    fq, kv, z all None drops the linear part. The backward sums state gradients frame by frame.
    """

    @staticmethod
    def forward(
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        fq: Tensor | None,
        kv: Tensor | None,
        z: Tensor | None,
        geometry: Geometry,
        stats: AttentionStats | None,
    ) -> Tensor:
        q, k, v, fq, kv, z = _prepared(q, k, v, fq, kv, z)
        out, m, l_soft, n_lin = _launch_forward(
            q, k, v, fq, kv, z, prefix=None, geometry=geometry, stats=stats
        )
        ctx.save_for_backward(q, k, v, fq, kv, z, out, m, l_soft, n_lin)
        ctx.geometry = geometry
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        q, k, v, fq, kv, z, out, m, l_soft, n_lin = ctx.saved_tensors
        geometry: Geometry = ctx.geometry
        g = last_dim_contiguous(g)
        has_linear = fq is not None
        batch, n_q, heads, head_dim = q.shape
        n_k = k.shape[1]
        chunk_tokens, overlap_tokens, key_offset = _window(geometry, n_q, n_k)
        frame_tokens, scale = geometry.frame_tokens, geometry.softmax_scale(head_dim)
        feat = fq.shape[-1] if has_linear else 0
        prec = dot_precision(q.dtype)

        rden, dns, dnl = (torch.empty_like(m) for _ in range(3))
        block = 64 if q.is_cuda else 16
        _bwd_preprocess_kernel[(-(-n_q // block), batch * heads)](
            o_ptr=out,
            g_ptr=g,
            l_ptr=l_soft,
            nl_ptr=n_lin,
            rden_ptr=rden,
            dns_ptr=dns,
            dnl_ptr=dnl,
            **strides("g", g),
            n_heads=heads,
            n_q=n_q,
            eps=DENOMINATOR_EPS,
            D=head_dim,
            BLOCK_M=block,
        )

        # Gradients are written contiguous [B, N, H, ·] (empty_like would keep a permuted input's strides).
        dq = _contiguous_like(q)
        dfq = _contiguous_like(fq) if has_linear else None
        dk_extra = torch.zeros(k.shape, device=k.device, dtype=torch.float32) if has_linear else q
        cfg = attention_config("bwd_dq", head_dim, q.dtype, q.device)
        blocks_per_chunk, n_chunks, n_programs = _grid_rows(n_q, chunk_tokens, cfg.block_m)
        _bwd_dq_kernel[(n_programs, batch * heads)](
            q_ptr=q,
            k_ptr=k,
            v_ptr=v,
            g_ptr=g,
            kv_ptr=kv if has_linear else q,
            z_ptr=z if has_linear else q,
            m_ptr=m,
            rden_ptr=rden,
            dns_ptr=dns,
            dnl_ptr=dnl,
            dq_ptr=dq,
            dfq_ptr=dfq if has_linear else q,
            dk_extra_ptr=dk_extra,
            **strides("q", q),
            **strides("k", k),
            **strides("v", v),
            **strides("g", g),
            n_heads=heads,
            n_q=n_q,
            n_k=n_k,
            chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens,
            key_offset=key_offset,
            blocks_per_chunk=blocks_per_chunk,
            n_chunks=n_chunks,
            scale=scale,
            qk_scale=scale * LOG2E,
            D=head_dim,
            E=feat,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_E=feature_block(feat) if has_linear else 16,
            HAS_LINEAR=has_linear,
            PREC=prec,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )

        dk, dv = _contiguous_like(k), _contiguous_like(v)
        cfg = attention_config("bwd_dkdv", head_dim, q.dtype, q.device)
        _bwd_dkdv_kernel[(-(-n_k // cfg.block_n), batch * heads)](
            q_ptr=q,
            k_ptr=k,
            v_ptr=v,
            g_ptr=g,
            m_ptr=m,
            rden_ptr=rden,
            dns_ptr=dns,
            dk_ptr=dk,
            dv_ptr=dv,
            dk_extra_ptr=dk_extra,
            **strides("q", q),
            **strides("k", k),
            **strides("v", v),
            **strides("g", g),
            n_heads=heads,
            n_q=n_q,
            n_k=n_k,
            chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens,
            key_offset=key_offset,
            n_chunks=n_chunks,
            scale=scale,
            qk_scale=scale * LOG2E,
            D=head_dim,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            HAS_EXTRA=has_linear,
            PREC=prec,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )

        dkv = dz = None
        if has_linear and (ctx.needs_input_grad[4] or ctx.needs_input_grad[5]):
            # Σ over a chunk's rows of φq ĝᵀ and ∂L/∂nL φq: partial sums over runs of frame_tokens rows
            # (more programs than one per chunk), then added per chunk.
            part_kv, part_z = segment_sums(fq, g, frame_tokens, wb=rden, wz=dnl)
            owner = torch.arange(part_kv.shape[1], device=q.device) * frame_tokens // chunk_tokens
            dkv = kv.new_zeros(kv.shape).index_add_(1, owner, part_kv)
            dz = z.new_zeros(z.shape).index_add_(1, owner, part_z)
        return dq, dk, dv, dfq, dkv, dz, None, None
