"""Fused Triton kernels for the learned feature map φ (docs/method.md §5), forward and backward.

Per (token block, head) the forward loads x [BLOCK_N, D] once, runs the whole per-head MLP in registers
and writes φ [BLOCK_N, P·D] once: no hidden activation goes through HBM. The hidden width P·D is
handled as P tiles of D columns, and the last layer's output as P accumulators (one per part ψ_p), so
each weight tile [D, D] is loaded once per program and layer 1 is computed once:

    one layer:   ψ_q = x W[:, q] + b_q
    two layers:  ψ_q = Σ_j act(x W1[:, j] + b1_j) W2[j, q] + b2_q,   φ_q = ψ_q^(e_q)

(``W[i, j]`` is the [D, D] tile of rows i·D.., columns j·D..). The power of the 0-based part q is
e_q = q + 1 (the paper's signed map) or, with EVEN (``nonnegative=True``), 2(q + 1)
(P = 2: [ψ_0², ψ_1⁴]); q and EVEN are compile-time, so each part is a fixed
product. Dots take the inputs' dtype (weights are cast to it, like the PyTorch path) and accumulate in
fp32; biases, activations and powers are fp32.

Backward (one kernel per token block, recomputing the forward; nothing is saved but x and the weights):
    dψ_q = dφ_q · e_q · ψ_q^(e_q − 1),   da_j = Σ_q dψ_q W2[j, q]ᵀ,   dh_j = da_j · act'(h_j),
    dx = Σ_j dh_j W1[:, j]ᵀ   (one layer: dx = Σ_q dψ_q W[:, q]ᵀ).
The weight gradients are reductions over all tokens: the kernel writes the layer inputs and output
gradients it has in registers anyway (a = act(h) and dh, dψ, in the inputs' dtype) and cuBLAS does
``dW2 = aᵀ dψ``, ``dW1 = xᵀ dh`` as one batched matmul over heads on strided views (no copies). Bias
gradients are per-program column sums (fp32) summed in torch. The kernels take 1 or 2 layers, degree
P ≤ 4 and head dims 16..128 (powers of two); the module falls back to PyTorch otherwise.

Triton's interpreter (CPU) gets bfloat16 ``tl.dot`` wrong, so there (only) bf16 dots run in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from rehyat.attention.kernels.memory_layout import last_dim_contiguous, strides
from rehyat.attention.kernels.tuning import MIN_BLOCK, dot_precision, interpreting

ACTIVATION_CODES = {"relu": 0, "gelu": 1, "silu": 2}
MAX_DEGREE = 4


def _configs() -> list[triton.Config]:
    """Autotuned per (D, P, layers, activation, bias, dtype); the interpreter gets one tiny config."""
    if interpreting():
        return [triton.Config({"BLOCK_N": MIN_BLOCK}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BLOCK_N": block}, num_warps=warps, num_stages=2)
        for block, warps in ((32, 4), (64, 4), (64, 8), (128, 4), (128, 8), (32, 8))
    ]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """float32 dots run exact ("ieee": FMAs, no tensor cores) and compile for minutes per config when
    unrolled over big tiles: float32 gets the one config with the least code per thread. The launch
    passes keyword arguments, which the autotuner hands over as ``kwargs`` (``named_args`` holds the
    positional ones)."""
    if {**named_args, **kwargs}["x_ptr"].dtype != torch.float32 or len(configs) == 1:
        return configs
    return [c for c in configs if (c.kwargs["BLOCK_N"], c.num_warps) == (32, 8)]


#: Bias-gradient partials have one row per _MIN_BLOCK_N tokens whatever config runs: a program of
#: BLOCK_N = R·_MIN_BLOCK_N tokens writes its column sums to its first row and zeros to the other R - 1,
#: so every launch rewrites every row that can hold a sum (autotuning runs several configs on one buffer).
_MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _configs())


def _partial_rows(n_tokens: int) -> int:
    """Rows per batch that any config writes (sums or zeros); rows past them stay zero."""
    return max(
        triton.cdiv(n_tokens, b) * (b // _MIN_BLOCK_N) for b in {c.kwargs["BLOCK_N"] for c in _configs()}
    )


_KEY = ["D", "P", "LAYERS", "ACT", "HAS_BIAS", "EVEN"]


@triton.jit
def _act(h, ACT: tl.constexpr):
    if ACT == 0:
        a = tl.maximum(h, 0.0)
    elif ACT == 1:
        a = 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))
    else:
        a = h * tl.sigmoid(h)
    return a


@triton.jit
def _act_grad(h, ACT: tl.constexpr):
    if ACT == 0:
        d = tl.where(h > 0.0, 1.0, 0.0)
    elif ACT == 1:
        d = 0.5 * (1.0 + tl.erf(h * 0.7071067811865476)) + h * 0.3989422804014327 * tl.exp(-0.5 * h * h)
    else:
        s = tl.sigmoid(h)
        d = s * (1.0 + h * (1.0 - s))
    return d


@triton.jit
def _tile(
    w_base, i: tl.constexpr, j: tl.constexpr, offs_d, E: tl.constexpr, D: tl.constexpr, DT: tl.constexpr
):
    """Weight tile W[i·D:(i+1)·D, j·D:(j+1)·D] of a row-major [·, E] matrix, as [D, D] in dtype DT."""
    return tl.load(w_base + (i * D + offs_d)[:, None] * E + (j * D + offs_d)[None, :]).to(DT)


@triton.jit
def _tile_t(
    w_base, i: tl.constexpr, j: tl.constexpr, offs_d, E: tl.constexpr, D: tl.constexpr, DT: tl.constexpr
):
    """The transpose of :func:`_tile`: [D (columns of W), D (rows of W)]."""
    return tl.load(w_base + (i * D + offs_d)[None, :] * E + (j * D + offs_d)[:, None]).to(DT)


@triton.jit
def _bias(b_base, j: tl.constexpr, offs_d, D: tl.constexpr):
    return tl.load(b_base + j * D + offs_d).to(tl.float32)


@triton.jit
def _hidden(
    x,
    w1,
    b1,
    j: tl.constexpr,
    offs_d,
    E: tl.constexpr,
    D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Pre-activation tile h_j = x W1[:, j] + b1_j (fp32)."""
    h = tl.dot(x, _tile(w1, 0, j, offs_d, E, D, DT), input_precision=PREC)
    if HAS_BIAS:
        h += _bias(b1, j, offs_d, D)[None, :]
    return h


@triton.jit
def _accumulate(
    acc0,
    acc1,
    acc2,
    acc3,
    a,
    w,
    i: tl.constexpr,
    offs_d,
    E: tl.constexpr,
    D: tl.constexpr,
    P: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """acc_q += a W[i, q] for every part q < P."""
    acc0 += tl.dot(a, _tile(w, i, 0, offs_d, E, D, DT), input_precision=PREC)
    if P > 1:
        acc1 += tl.dot(a, _tile(w, i, 1, offs_d, E, D, DT), input_precision=PREC)
    if P > 2:
        acc2 += tl.dot(a, _tile(w, i, 2, offs_d, E, D, DT), input_precision=PREC)
    if P > 3:
        acc3 += tl.dot(a, _tile(w, i, 3, offs_d, E, D, DT), input_precision=PREC)
    return acc0, acc1, acc2, acc3


@triton.jit
def _prologue(
    x_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    stride_xb,
    stride_xn,
    stride_xh,
    n_tokens,
    n_heads,
    D: tl.constexpr,
    E: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DT: tl.constexpr,
):
    """This program's batch, head, first row, its index in a contiguous [B, N, H, ·] (the last three
    int64, and so every offset built from them: no wrap at 2^31 elements), the row offsets and mask
    within the block, its x block [BLOCK_N, D] (dtype DT) and its head's weight and bias bases."""
    head = tl.program_id(1).to(tl.int64)
    batch = tl.program_id(2).to(tl.int64)
    row0 = tl.program_id(0) * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    row_valid = row0 + offs_n < n_tokens
    row0 = row0.to(tl.int64)
    offs_d = tl.arange(0, D)
    x_rows = x_ptr + batch * stride_xb + head * stride_xh + row0 * stride_xn
    x = tl.load(x_rows + offs_n[:, None] * stride_xn + offs_d[None, :], mask=row_valid[:, None], other=0.0)
    return (
        batch,
        head,
        row0,
        (batch * n_tokens + row0) * n_heads + head,
        offs_n,
        row_valid,
        offs_d,
        x.to(DT),
        w1_ptr + head * D * E,
        b1_ptr + head * E,
        w2_ptr + head * E * E,
        b2_ptr + head * E,
    )


@triton.jit
def _psi(
    x,
    w1,
    b1,
    w2,
    b2,
    a_ptrs,
    row_valid,
    offs_d,
    E: tl.constexpr,
    D: tl.constexpr,
    P: tl.constexpr,
    LAYERS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_A: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """The last layer's output ψ_0..ψ_3 (fp32, without its bias; unused parts stay zero). With two layers
    and STORE_A, the hidden activations a_j = act(h_j) are written to ``a_ptrs`` (for dW2)."""
    acc0 = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    if LAYERS == 1:
        acc0, acc1, acc2, acc3 = _accumulate(acc0, acc1, acc2, acc3, x, w1, 0, offs_d, E, D, P, DT, PREC)
    else:
        for j in tl.static_range(P):
            a = _act(_hidden(x, w1, b1, j, offs_d, E, D, HAS_BIAS, DT, PREC), ACT)
            if STORE_A:
                tl.store(a_ptrs + j * D, a.to(a_ptrs.dtype.element_ty), mask=row_valid[:, None])
            acc0, acc1, acc2, acc3 = _accumulate(
                acc0, acc1, acc2, acc3, a.to(DT), w2, j, offs_d, E, D, P, DT, PREC
            )
    return acc0, acc1, acc2, acc3


@triton.jit
def _store_power(
    acc,
    b_last,
    q: tl.constexpr,
    out_ptrs,
    row_valid,
    offs_d,
    D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN: tl.constexpr,
):
    """φ_q = ψ_q^(e_q): ψ_q^(q+1), and with EVEN ψ_q^(2q+2)."""
    psi = acc
    if HAS_BIAS:
        psi += _bias(b_last, q, offs_d, D)[None, :]
    phi = psi
    for _ in tl.static_range(2 * q + 1 if EVEN else q):
        phi *= psi
    tl.store(out_ptrs + q * D, phi.to(out_ptrs.dtype.element_ty), mask=row_valid[:, None])


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _fwd_kernel(
    x_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    out_ptr,
    stride_xb,
    stride_xn,
    stride_xh,
    n_tokens,
    n_heads,
    D: tl.constexpr,
    P: tl.constexpr,
    LAYERS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program: tokens [pid·BLOCK_N, +BLOCK_N) of batch ``program_id(2)``, head ``program_id(1)``.
    x is [B, N, H, D] (last stride 1); out is contiguous [B, N, H, P·D]; weights contiguous [H, ·, ·]."""
    E: tl.constexpr = P * D
    _, _, _, out_rows, offs_n, row_valid, offs_d, x, w1, b1, w2, b2 = _prologue(
        x_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        b2_ptr,
        stride_xb,
        stride_xn,
        stride_xh,
        n_tokens,
        n_heads,
        D,
        E,
        BLOCK_N,
        DT,
    )
    acc0, acc1, acc2, acc3 = _psi(
        x=x,
        w1=w1,
        b1=b1,
        w2=w2,
        b2=b2,
        a_ptrs=out_ptr,
        row_valid=row_valid,
        offs_d=offs_d,
        E=E,
        D=D,
        P=P,
        LAYERS=LAYERS,
        ACT=ACT,
        HAS_BIAS=HAS_BIAS,
        STORE_A=False,
        BLOCK_N=BLOCK_N,
        DT=DT,
        PREC=PREC,
    )
    b_last = b1 if LAYERS == 1 else b2
    out_ptrs = out_ptr + out_rows * E + offs_n[:, None] * (n_heads * E) + offs_d[None, :]
    _store_power(acc0, b_last, 0, out_ptrs, row_valid, offs_d, D, HAS_BIAS, EVEN)
    if P > 1:
        _store_power(acc1, b_last, 1, out_ptrs, row_valid, offs_d, D, HAS_BIAS, EVEN)
    if P > 2:
        _store_power(acc2, b_last, 2, out_ptrs, row_valid, offs_d, D, HAS_BIAS, EVEN)
    if P > 3:
        _store_power(acc3, b_last, 3, out_ptrs, row_valid, offs_d, D, HAS_BIAS, EVEN)


@triton.jit
def _dpsi(
    acc,
    b_last,
    q: tl.constexpr,
    g_ptrs,
    dpsi_ptrs,
    db_ptrs,
    row_valid,
    offs_d,
    D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN: tl.constexpr,
    STORE: tl.constexpr,
    DT: tl.constexpr,
):
    """dψ_q = dφ_q · e_q · ψ_q^(e_q − 1) (zero on rows past the end): (q+1) · ψ_q^q, and with EVEN
    (2q+2) · ψ_q^(2q+1) (2ψ_0 for ψ_0²). Stores it and its column sum if asked."""
    g = tl.load(g_ptrs + q * D, mask=row_valid[:, None], other=0.0).to(tl.float32)
    if q > 0 or EVEN:
        psi = acc
        if HAS_BIAS:
            psi += _bias(b_last, q, offs_d, D)[None, :]
        power = psi
        if EVEN:
            for _ in tl.static_range(2 * q):
                power *= psi
            g = g * (2.0 * q + 2.0) * power
        else:
            for _ in tl.static_range(q - 1):
                power *= psi
            g = g * (q + 1.0) * power
    if STORE:
        tl.store(dpsi_ptrs + q * D, g.to(dpsi_ptrs.dtype.element_ty), mask=row_valid[:, None])
        if HAS_BIAS:
            tl.store(db_ptrs + q * D + offs_d, tl.sum(g, axis=0))
    return g.to(DT)


@triton.jit
def _back_through(
    dp0,
    dp1,
    dp2,
    dp3,
    w,
    i: tl.constexpr,
    offs_d,
    E: tl.constexpr,
    D: tl.constexpr,
    P: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
):
    """Σ_q dψ_q W[i, q]ᵀ: the gradient of the layer's input tile i (fp32)."""
    da = tl.dot(dp0, _tile_t(w, i, 0, offs_d, E, D, DT), input_precision=PREC)
    if P > 1:
        da += tl.dot(dp1, _tile_t(w, i, 1, offs_d, E, D, DT), input_precision=PREC)
    if P > 2:
        da += tl.dot(dp2, _tile_t(w, i, 2, offs_d, E, D, DT), input_precision=PREC)
    if P > 3:
        da += tl.dot(dp3, _tile_t(w, i, 3, offs_d, E, D, DT), input_precision=PREC)
    return da


@triton.jit
def _zero_rows(base, n_heads, offs_d, D: tl.constexpr, E: tl.constexpr, R: tl.constexpr):
    """Zeros in rows 1..R-1 of a program's bias-gradient partials (row 0 gets its column sums)."""
    for r in tl.static_range(1, R):
        for q in tl.static_range(E // D):
            tl.store(base + r * n_heads * E + q * D + offs_d, tl.zeros([D], dtype=tl.float32))


@triton.autotune(configs=_configs(), key=_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _bwd_kernel(
    x_ptr,
    g_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    dx_ptr,
    a_ptr,
    dh_ptr,
    dpsi_ptr,
    db1_ptr,
    db2_ptr,
    stride_xb,
    stride_xn,
    stride_xh,
    stride_gb,
    stride_gn,
    stride_gh,
    n_tokens,
    n_heads,
    max_blocks,
    D: tl.constexpr,
    P: tl.constexpr,
    LAYERS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN: tl.constexpr,
    STORE: tl.constexpr,
    DT: tl.constexpr,
    PREC: tl.constexpr,
    MIN_BLOCK_N: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Same programs as the forward. Writes dx (contiguous [B, N, H, D]); with STORE also a, dh (two
    layers) and dψ (contiguous [B, N, H, P·D]) and the bias-gradient partials, [B·max_blocks, H, P·D]
    fp32 per layer (db1 for the first, db2 for the last of two)."""
    E: tl.constexpr = P * D
    pid = tl.program_id(0)
    batch, head, row0, out_rows, offs_n, row_valid, offs_d, x, w1, b1, w2, b2 = _prologue(
        x_ptr,
        w1_ptr,
        b1_ptr,
        w2_ptr,
        b2_ptr,
        stride_xb,
        stride_xn,
        stride_xh,
        n_tokens,
        n_heads,
        D,
        E,
        BLOCK_N,
        DT,
    )
    tile = offs_n[:, None] * (n_heads * E) + offs_d[None, :]  # of the block's [BLOCK_N, D] in [B, N, H, E]
    acc0, acc1, acc2, acc3 = _psi(
        x=x,
        w1=w1,
        b1=b1,
        w2=w2,
        b2=b2,
        a_ptrs=a_ptr + out_rows * E + tile,
        row_valid=row_valid,
        offs_d=offs_d,
        E=E,
        D=D,
        P=P,
        LAYERS=LAYERS,
        ACT=ACT,
        HAS_BIAS=HAS_BIAS,
        STORE_A=STORE,
        BLOCK_N=BLOCK_N,
        DT=DT,
        PREC=PREC,
    )
    g_rows = g_ptr + batch * stride_gb + head * stride_gh + row0 * stride_gn
    g_ptrs = g_rows + offs_n[:, None] * stride_gn + offs_d[None, :]
    part = ((batch * max_blocks + pid * (BLOCK_N // MIN_BLOCK_N)) * n_heads + head) * E
    if LAYERS == 1:
        b_last = b1
        db_last = db1_ptr + part
    else:
        b_last = b2
        db_last = db2_ptr + part
    dpsi_ptrs = dpsi_ptr + out_rows * E + tile
    if STORE and HAS_BIAS:
        _zero_rows(db1_ptr + part, n_heads, offs_d, D, E, BLOCK_N // MIN_BLOCK_N)
        if LAYERS == 2:
            _zero_rows(db2_ptr + part, n_heads, offs_d, D, E, BLOCK_N // MIN_BLOCK_N)
    dp0 = _dpsi(acc0, b_last, 0, g_ptrs, dpsi_ptrs, db_last, row_valid, offs_d, D, HAS_BIAS, EVEN, STORE, DT)
    dp1 = dp0
    dp2 = dp0
    dp3 = dp0
    if P > 1:
        dp1 = _dpsi(
            acc1, b_last, 1, g_ptrs, dpsi_ptrs, db_last, row_valid, offs_d, D, HAS_BIAS, EVEN, STORE, DT
        )
    if P > 2:
        dp2 = _dpsi(
            acc2, b_last, 2, g_ptrs, dpsi_ptrs, db_last, row_valid, offs_d, D, HAS_BIAS, EVEN, STORE, DT
        )
    if P > 3:
        dp3 = _dpsi(
            acc3, b_last, 3, g_ptrs, dpsi_ptrs, db_last, row_valid, offs_d, D, HAS_BIAS, EVEN, STORE, DT
        )
    if LAYERS == 1:
        dx = tl.zeros([BLOCK_N, D], dtype=tl.float32)
        for q in tl.static_range(P):
            if q == 0:
                dp = dp0
            elif q == 1:
                dp = dp1
            elif q == 2:
                dp = dp2
            else:
                dp = dp3
            dx += tl.dot(dp, _tile_t(w1, 0, q, offs_d, E, D, DT), input_precision=PREC)
    else:
        dx = tl.zeros([BLOCK_N, D], dtype=tl.float32)
        for j in tl.static_range(P):
            da = _back_through(dp0, dp1, dp2, dp3, w2, j, offs_d, E, D, P, DT, PREC)
            dh = da * _act_grad(_hidden(x, w1, b1, j, offs_d, E, D, HAS_BIAS, DT, PREC), ACT)
            if STORE:
                dh_ptrs = dh_ptr + out_rows * E + tile + j * D
                tl.store(dh_ptrs, dh.to(dh_ptr.dtype.element_ty), mask=row_valid[:, None])
                if HAS_BIAS:
                    tl.store(db1_ptr + part + j * D + offs_d, tl.sum(dh, axis=0))
            dx += tl.dot(dh.to(DT), _tile_t(w1, 0, j, offs_d, E, D, DT), input_precision=PREC)
    dx_ptrs = dx_ptr + out_rows * D + offs_n[:, None] * (n_heads * D) + offs_d[None, :]
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=row_valid[:, None])


_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _dot_dtype(dtype: torch.dtype):
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32  # the interpreter's bf16 tl.dot is wrong
    return _TL_DTYPES[dtype]


def _grid(x: Tensor):
    batch, n_tokens, heads, _ = x.shape
    return lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_N"]), heads, batch)


def feature_map_forward(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor] | None,
    degree: int,
    activation: str,
    nonnegative: bool = False,
) -> Tensor:
    """φ(x) [B, N, H, P·D] in x's dtype; ``weights`` already in x's dtype, contiguous [H, ·, ·].
    ``nonnegative``: the even powers 2p instead of p."""
    x = last_dim_contiguous(x)
    batch, n_tokens, heads, d = x.shape
    out = x.new_empty(batch, n_tokens, heads, degree * d)
    w1, w2 = weights[0], weights[-1]
    b1, b2 = (biases[0], biases[-1]) if biases is not None else (w1, w2)
    _fwd_kernel[_grid(x)](
        x_ptr=x,
        w1_ptr=w1,
        b1_ptr=b1,
        w2_ptr=w2,
        b2_ptr=b2,
        out_ptr=out,
        **strides("x", x),
        n_tokens=n_tokens,
        n_heads=heads,
        D=d,
        P=degree,
        LAYERS=len(weights),
        ACT=ACTIVATION_CODES[activation],
        HAS_BIAS=biases is not None,
        EVEN=nonnegative,
        DT=_dot_dtype(x.dtype),
        PREC=dot_precision(x.dtype),
    )
    return out


def _head_major(t: Tensor) -> Tensor:
    """[B, N, H, F] -> a [H, B·N, F] view (a copy only if B and N cannot be merged)."""
    return t.reshape(-1, t.shape[2], t.shape[3]).transpose(0, 1)


#: Position of the first weight among ``PolynomialFeatureMapFunction.apply``'s arguments.
_FIRST_PARAM = 4


class PolynomialFeatureMapFunction(torch.autograd.Function):
    """φ(x) through the kernels: ``apply(x, degree, activation, nonnegative, w_1, …, w_L, b_1, …, b_L)``
    (weights [H, d_in, d_out], biases [H, d_out] or left out), cast to x's dtype like the PyTorch path."""

    @staticmethod
    def forward(ctx, x: Tensor, degree: int, activation: str, nonnegative: bool, *params: Tensor) -> Tensor:
        layers = len(params) // 2 if any(p.dim() == 2 for p in params) else len(params)
        weights = [w.to(x.dtype).contiguous() for w in params[:layers]]
        biases = list(params[layers:]) or None
        ctx.save_for_backward(x, *weights, *(biases or []))
        ctx.layers, ctx.degree, ctx.activation, ctx.nonnegative = layers, degree, activation, nonnegative
        ctx.param_dtypes = [p.dtype for p in params]
        return feature_map_forward(x, weights, biases, degree, activation, nonnegative)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, *rest = ctx.saved_tensors
        layers = ctx.layers
        weights, biases = rest[:layers], (rest[layers:] or None)
        x = last_dim_contiguous(x)
        grad = last_dim_contiguous(grad.to(x.dtype))
        batch, n_tokens, heads, d = x.shape
        width = ctx.degree * d
        want_params = any(ctx.needs_input_grad[_FIRST_PARAM:])
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        acts = torch.empty(batch, n_tokens, heads, width, dtype=x.dtype, device=x.device)
        if want_params:
            dpsi = torch.empty_like(acts)
            dh = torch.empty_like(acts) if layers == 2 else dpsi
            if layers == 1:
                acts = dpsi  # unused
        else:
            dpsi = dh = acts
        max_blocks = _partial_rows(n_tokens)
        has_bias = biases is not None
        partial_shape = (batch * max_blocks, heads, width) if has_bias and want_params else (1,)
        db1 = torch.zeros(partial_shape, dtype=torch.float32, device=x.device)
        db2 = torch.zeros(partial_shape, dtype=torch.float32, device=x.device) if layers == 2 else db1
        w1, w2 = weights[0], weights[-1]
        b1, b2 = (biases[0], biases[-1]) if has_bias else (w1, w2)
        _bwd_kernel[_grid(x)](
            x_ptr=x,
            g_ptr=grad,
            w1_ptr=w1,
            b1_ptr=b1,
            w2_ptr=w2,
            b2_ptr=b2,
            dx_ptr=dx,
            a_ptr=acts,
            dh_ptr=dh,
            dpsi_ptr=dpsi,
            db1_ptr=db1,
            db2_ptr=db2,
            **strides("x", x),
            **strides("g", grad),
            n_tokens=n_tokens,
            n_heads=heads,
            max_blocks=max_blocks,
            D=d,
            P=ctx.degree,
            LAYERS=layers,
            ACT=ACTIVATION_CODES[ctx.activation],
            HAS_BIAS=has_bias,
            EVEN=ctx.nonnegative,
            STORE=want_params,
            DT=_dot_dtype(x.dtype),
            PREC=dot_precision(x.dtype),
            MIN_BLOCK_N=_MIN_BLOCK_N,
        )
        grads: list[Tensor | None] = [None] * len(ctx.param_dtypes)
        if want_params:
            # Layer inputs and output gradients, [H, tokens, ·] views: dW = inputᵀ · d(output), per head.
            pairs = [(x, dpsi)] if layers == 1 else [(x, dh), (acts, dpsi)]
            for index, (inp, dout) in enumerate(pairs):
                if ctx.needs_input_grad[_FIRST_PARAM + index]:
                    dw = torch.bmm(_head_major(inp).transpose(1, 2), _head_major(dout))
                    grads[index] = dw.to(ctx.param_dtypes[index])
            if has_bias:
                for index, partial in enumerate([db1] if layers == 1 else [db1, db2]):
                    if ctx.needs_input_grad[_FIRST_PARAM + layers + index]:
                        grads[layers + index] = partial.sum(0).to(ctx.param_dtypes[layers + index])
        return (dx if ctx.needs_input_grad[0] else None), None, None, None, *grads


def polynomial_feature_map(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor] | None,
    degree: int,
    activation: str,
    nonnegative: bool = False,
) -> Tensor:
    """Differentiable φ(x) on the kernels (inputs validated by the caller); ``nonnegative`` gives the
    even powers 2p of PolynomialFeatureMap(nonnegative=True) instead of the signed p."""
    return PolynomialFeatureMapFunction.apply(x, degree, activation, nonnegative, *weights, *(biases or []))
