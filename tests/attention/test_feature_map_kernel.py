"""The fused φ kernel (forward and backward) against PolynomialFeatureMap's PyTorch path.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set before the kernel module
is first imported, as in test_kernels.py). Blocks are 16 tokens there, so N = 19 spans two blocks and
ends mid-block. float32 kernel inputs are compared with the float64 PyTorch path: x, every weight and
every bias, with random weights and non-zero biases so that each term matters; both the paper's signed
powers and the even powers of ``nonnegative=True``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from rehyat import PolynomialFeatureMap

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _maps(heads, d, degree, layers, activation, bias, seed=0, nonnegative=False):
    """A random-weight map with non-zero biases, and its float64 copy (the reference)."""
    torch.manual_seed(seed)
    kwargs = dict(activation=activation, bias=bias, init="random", nonnegative=nonnegative)
    phi = PolynomialFeatureMap(heads, d, degree, layers, **kwargs)
    if bias:
        with torch.no_grad():
            for b in phi.biases:
                b.normal_(0.0, 0.3)
    ref = PolynomialFeatureMap(heads, d, degree, layers, **kwargs)
    ref.load_state_dict(phi.state_dict())
    return phi.to(DEVICE), ref.double()


def _run(phi, x, grad, **kwargs):
    leaf = x.detach().clone().requires_grad_(True)
    phi.zero_grad()
    out = phi(leaf, **kwargs)
    out.backward(grad.to(out.dtype))
    return out.detach(), [leaf.grad] + [p.grad for p in phi.parameters()]


def _compare(
    batch,
    n,
    heads,
    d,
    degree,
    layers,
    activation,
    bias,
    *,
    dtype=torch.float32,
    tol=TOL,
    x=None,
    nonnegative=False,
):
    phi, ref = _maps(heads, d, degree, layers, activation, bias, nonnegative=nonnegative)
    gen = torch.Generator().manual_seed(1)
    if x is None:
        x = torch.randn(batch, n, heads, d, generator=gen, dtype=torch.float64)
    grad = torch.randn(*x.shape[:3], degree * d, generator=gen, dtype=torch.float64)
    want, want_grads = _run(ref, x, grad, backend="torch")
    got, got_grads = _run(phi.to(dtype), x.to(DEVICE, dtype), grad.to(DEVICE), backend="triton")
    assert got.dtype == dtype and got.shape == want.shape
    assert rel_err(got.cpu(), want) <= tol, f"φ: {rel_err(got.cpu(), want):.2e}"
    if nonnegative:
        assert (got >= 0).all()
    names = ["x"] + [name for name, _ in ref.named_parameters()]
    assert len(got_grads) == len(want_grads) == 1 + layers * (2 if bias else 1)
    for name, g, w in zip(names, got_grads, want_grads, strict=True):
        assert g is not None and g.dtype == dtype, name
        assert rel_err(g.cpu(), w) <= tol, f"d{name}: {rel_err(g.cpu(), w):.2e}"


# (B, N, H, D, P, layers, activation, bias): every activation with one and two layers, P in {1, 2, 3},
# bias on and off, B and H in {1, 2/3}; N = 19 ends mid-block, N = 7 is one partial block.
CASES = [
    (1, 19, 1, 16, 2, 2, "relu", True),
    (2, 19, 3, 16, 2, 2, "gelu", True),
    (1, 19, 3, 16, 2, 2, "silu", False),
    (2, 7, 1, 32, 3, 2, "relu", False),
    (1, 19, 1, 16, 3, 2, "gelu", True),
    (1, 19, 3, 16, 1, 2, "silu", True),
    (2, 19, 1, 16, 1, 1, "relu", True),
    (1, 19, 3, 32, 2, 1, "gelu", False),
    (1, 7, 1, 16, 3, 1, "silu", True),
    (1, 19, 1, 16, 4, 2, "relu", True),
]


# The non-negative map's even powers 2·⌈p/2⌉ (ψ_1² for P = 1, [ψ_1², ψ_2², ψ_3⁴, ψ_4⁴] for P = 4): one
# and two layers, P = 1..4, bias on and off.
NONNEGATIVE_CASES = [
    (1, 19, 1, 16, 1, 1, "relu", True),
    (1, 19, 2, 16, 2, 1, "gelu", False),
    (1, 7, 1, 16, 4, 1, "silu", True),
    (1, 19, 1, 16, 1, 2, "silu", False),
    (2, 19, 1, 16, 2, 2, "relu", True),
    (1, 19, 3, 16, 3, 2, "gelu", False),
    (1, 19, 1, 16, 4, 2, "relu", True),
]


@pytest.mark.parametrize(
    "batch,n,heads,d,degree,layers,activation,bias,nonnegative",
    [(*case, False) for case in CASES] + [(*case, True) for case in NONNEGATIVE_CASES],
)
def test_kernel_matches_torch_path(batch, n, heads, d, degree, layers, activation, bias, nonnegative):
    _compare(batch, n, heads, d, degree, layers, activation, bias, nonnegative=nonnegative)


def test_strided_input():
    """x as a view with non-contiguous token and head strides (the kernel reads it in place)."""
    base = torch.randn(1, 3, 19, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _compare(1, 19, 3, 16, 2, 2, "relu", True, x=base[..., :16].transpose(1, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    """Half inputs, fp32 accumulation, φ in the input's dtype: within half rounding of float64."""
    _compare(2, 19, 2, 16, 2, 2, "gelu", True, dtype=dtype, tol=2e-2)


@pytest.mark.parametrize("nonnegative", [False, True])
def test_frozen_weights_and_input_only_gradients(nonnegative):
    """Gradients only where asked: frozen weights get none, and dx stays right without them."""
    phi, ref = _maps(2, 16, 2, 2, "silu", True, nonnegative=nonnegative)
    phi.requires_grad_(False)
    x = torch.randn(1, 19, 2, 16, dtype=torch.float64)
    grad = torch.randn(1, 19, 2, 32, dtype=torch.float64)
    _, (want, *_) = _run(ref, x, grad, backend="torch")
    _, (got, *params) = _run(phi.float(), x.to(DEVICE, torch.float32), grad.to(DEVICE), backend="triton")
    assert all(p is None for p in params)
    assert rel_err(got.cpu(), want) <= TOL
    # Weights only (x needs no gradient): dW through the stored activations.
    phi.requires_grad_(True)
    phi(x.to(DEVICE, torch.float32), backend="triton").backward(grad.to(DEVICE, torch.float32))
    ref.zero_grad()
    ref(x, backend="torch").backward(grad)
    for p, r in zip(phi.parameters(), ref.parameters(), strict=True):
        assert rel_err(p.grad.cpu(), r.grad) <= TOL


def test_backend_choice(monkeypatch):
    phi, _ = _maps(2, 16, 2, 2, "relu", True)
    phi = phi.cpu()
    x = torch.randn(1, 5, 2, 16)
    # "auto" on CPU is the PyTorch path, bit for bit; so is "torch".
    torch.testing.assert_close(phi(x), phi(x, backend="torch"), rtol=0, atol=0)
    assert phi.resolve_backend(x) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        phi(x, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        PolynomialFeatureMap(2, 16, backend="cuda")
    # Unsupported maps: "triton" says why, "auto" falls back.
    deep = PolynomialFeatureMap(2, 16, 2, 3)
    with pytest.raises(ValueError, match="num_layers 3"):
        deep(x, backend="triton")
    with pytest.raises(ValueError, match="degree 5"):
        PolynomialFeatureMap(2, 16, 5, 1)(x, backend="triton")
    with pytest.raises(ValueError, match="head dim 12"):
        PolynomialFeatureMap(2, 12)(torch.randn(1, 5, 2, 12), backend="triton")
    with pytest.raises(ValueError, match=r"dtype torch\.float64"):
        phi.double()(x.double(), backend="triton")
    # "triton" on CPU without the interpreter: a clear error, not a crash inside Triton.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        phi.float()(x, backend="triton")
    # The attribute sets the default; the state dict is unchanged.
    forced = PolynomialFeatureMap(2, 16, backend="triton")
    assert forced.backend == "triton" and set(forced.state_dict()) == set(phi.state_dict())
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        forced(x)


def test_float32_config_pruning_reads_keyword_arguments():
    """The kernels are launched with keyword arguments, which Triton's autotuner passes to the pruning
    hook as ``**kwargs`` (not in ``named_args``); float32 keeps the one cheap config."""
    import triton

    from rehyat.attention.kernels import feature_map_kernel

    configs = [triton.Config({"BLOCK_N": 64}, num_warps=4), triton.Config({"BLOCK_N": 32}, num_warps=8)]
    for dtype, kept in ((torch.float32, configs[1:]), (torch.bfloat16, configs)):
        x = torch.empty(1, dtype=dtype)
        assert feature_map_kernel._prune(configs, {}, x_ptr=x) == kept
        assert feature_map_kernel._prune(configs, {"x_ptr": x}) == kept


def test_bias_partials_are_rewritten_by_every_block_size():
    """Autotuning runs configs of different BLOCK_N on one partials buffer: a program of R minimum
    blocks writes its sums to its first row and zeros to the other R - 1, so no stale row survives."""
    from rehyat.attention.kernels import feature_map_kernel
    from rehyat.attention.kernels.memory_layout import strides

    phi, ref = _maps(2, 16, 2, 2, "relu", True)
    x = torch.randn(1, 40, 2, 16, dtype=torch.float64)
    grad = torch.randn(1, 40, 2, 32, dtype=torch.float64)
    _, want = _run(ref, x, grad, backend="torch")
    xf, gf = x.to(DEVICE, torch.float32), grad.to(DEVICE, torch.float32)
    w1, w2 = (w.detach().float() for w in phi.weights)
    b1, b2 = (b.detach().float() for b in phi.biases)
    out = [torch.empty(1, 40, 2, 32, device=DEVICE) for _ in range(3)]
    dx = torch.empty_like(xf)
    rows = 4  # 40 tokens: 3 blocks of 16, 2 blocks of 32 -> 4 rows of 16 (the last only ever zeros)
    db1, db2 = (torch.zeros(rows, 2, 32, device=DEVICE) for _ in range(2))
    db1[:3], db2[:3] = 7.0, 7.0  # stale sums of an earlier launch
    kernel = feature_map_kernel._bwd_kernel.fn  # the kernel without the autotuner: pick BLOCK_N by hand
    for block in (32, 16, 32):  # 16 writes rows 0-2; 32 writes sums to rows 0, 2 and zeros to 1, 3
        kernel[(triton_cdiv(40, block), 2, 1)](
            x_ptr=xf,
            g_ptr=gf,
            w1_ptr=w1,
            b1_ptr=b1,
            w2_ptr=w2,
            b2_ptr=b2,
            dx_ptr=dx,
            a_ptr=out[0],
            dh_ptr=out[1],
            dpsi_ptr=out[2],
            db1_ptr=db1,
            db2_ptr=db2,
            **strides("x", xf),
            **strides("g", gf),
            n_tokens=40,
            n_heads=2,
            max_blocks=rows,
            D=16,
            P=2,
            LAYERS=2,
            ACT=0,
            HAS_BIAS=True,
            EVEN=False,
            STORE=True,
            DT=feature_map_kernel._dot_dtype(torch.float32),
            PREC="ieee",
            MIN_BLOCK_N=16,
            BLOCK_N=block,
            num_warps=1,
        )
        assert rel_err(db1.sum(0).cpu(), want[-2]) <= TOL and rel_err(db2.sum(0).cpu(), want[-1]) <= TOL, (
            block
        )


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
