"""Offsets past 2^31 elements: the kernels index with int64.

At 501 Wan frames φq holds 2.4e9 elements; int32 offsets wrapped and the kernels read and wrote
outside their tensors ("CUDA error: an illegal memory access"). These tests reach such offsets on the
CPU, in Triton's interpreter (whose numpy offset arithmetic wraps at 2^31 like the GPU's), without
the memory: the tensors are views of anonymous MAP_NORESERVE mappings, where only the pages touched
take memory (a few MiB here, for views of up to 32 GiB).

- Far rows: the public ops on inputs whose token stride is 2^26 elements, so that rows from 32 on
  start past 2^31 (every kernel's reads of q, k, v, φ, gradients, and ``out=``).
- Far batches: each kernel launched as the ops launch it (arguments recorded), then again with its
  token / chunk counts grown so that the second batch element's rows of every tensor they lay out
  (outputs, statistics, states) start past 2^31, on the programs of the small problem: the grown
  tensors must hold exactly the small launch's results.

Before the int64 offsets both crashed (a wrapped offset points before the mapping).
"""

from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from rehyat import hybrid_attention, hybrid_attention_step, recurrent_hybrid_attention
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.hybrid.kernels import state_sums, windowed_attention
from rehyat.attention.kernels import feature_map_kernel
from rehyat.attention.kernels.tuning import MIN_BLOCK, interpreting

from conftest import make_inputs

pytestmark = [
    pytest.mark.skipif(
        not interpreting(), reason="the interpreter's test; on a GPU see scripts/check_long_inputs.py"
    ),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="lazy memory through Linux mmap flags"),
]

MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Python < 3.12 lacks the (Linux) constant
#: Far rows: a block's 16 rows span < 2^31 elements, row 32 starts past 2^31.
TOKEN_STRIDE = 2**26 + 2**10
#: Far batches, with 2 heads, D = 32 and D' = 64: token counts (a [B, N, 2, 32] row block of batch 1
#: starts past 2^31), chunk counts (a [B, C, 2, 64, 32] state) and bias-partial rows ([B·R, 2, 64]).
TOKENS = 2**25 + 2**10
STATES = 2**19 + 16
PARTIAL_ROWS = 2**24 + 16
BATCH = 2  # of the small problems whose launches are grown


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """Zeros in an anonymous MAP_NORESERVE mapping: untouched pages take no memory."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE
    try:
        buffer = mmap.mmap(-1, math.prod(shape) * dtype.itemsize, flags=flags)
    except (OSError, OverflowError, ValueError) as error:
        pytest.skip(f"no lazy mapping of {shape}: {error}")
    return torch.frombuffer(buffer, dtype=dtype).view(shape)  # the tensor keeps the mapping alive


def _far_rows(tensors: list[Tensor]) -> list[Tensor]:
    """Copies of [1, N, H, W] tensors as views with token stride TOKEN_STRIDE into one lazy buffer."""
    n = tensors[0].shape[1]
    buffer = _lazy_zeros((n * TOKEN_STRIDE,))
    views, column = [], 0
    for t in tensors:
        view = buffer.as_strided(t.shape, (n * TOKEN_STRIDE, TOKEN_STRIDE, t.shape[3], 1), column)
        views.append(view.copy_(t))
        column += t.shape[2] * t.shape[3]
    return views


def _outputs_and_grads(fn: Callable, inputs: list[Tensor], grad: Tensor, **kwargs) -> list[Tensor]:
    leaves = [x.requires_grad_(True) if x.is_leaf else x for x in inputs]
    out = fn(*leaves, **kwargs)
    out.backward(grad)
    return [out.detach().clone(), *(x.grad for x in leaves)]


def _assert_same(got: list[Tensor], want: list[Tensor]) -> None:
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=lambda m, i=index: f"result {i}: {m}")


def test_parallel_op_reads_rows_past_2_31():
    """Forward and backward of the parallel op (state sums, windowed attention, their backward)."""
    inputs = [x.float() for x in make_inputs(1, 6, 8, 2, 16, 32, seed=1)]
    grad = torch.randn_like(inputs[0])
    kwargs = dict(frame_tokens=8, chunk_frames=2, overlap_frames=1, backend="triton")
    want = _outputs_and_grads(hybrid_attention, [x.clone() for x in inputs], grad, **kwargs)
    *far, far_grad = _far_rows([*inputs, grad])
    _assert_same(_outputs_and_grads(hybrid_attention, far, far_grad, **kwargs), want)


def test_feature_map_reads_rows_past_2_31():
    torch.manual_seed(2)
    x, grad = torch.randn(1, 48, 2, 16), torch.randn(1, 48, 2, 32)
    params = [torch.randn(2, 16, 32) / 4, torch.randn(2, 32, 32) / 6, torch.randn(2, 32), torch.randn(2, 32)]

    def phi(x: Tensor, *params: Tensor) -> Tensor:
        return feature_map_kernel.PolynomialFeatureMapFunction.apply(x, 2, "gelu", False, *params)

    want = _outputs_and_grads(phi, [x.clone(), *(p.clone() for p in params)], grad)
    far_x, far_grad = _far_rows([x, grad])
    _assert_same(_outputs_and_grads(phi, [far_x, *(p.clone() for p in params)], far_grad), want)


def test_streaming_reads_and_writes_rows_past_2_31():
    """The recurrent op (prefix keys, state retirement) and a step writing into a far ``out=``."""
    inputs = [x.float() for x in make_inputs(1, 6, 8, 2, 16, 32, seed=3)]
    kwargs = dict(frame_tokens=8, overlap_frames=1, backend="triton")
    far, (far_out,) = _far_rows(inputs), _far_rows([torch.zeros_like(inputs[0])])  # out= apart from inputs
    with torch.no_grad():
        want = recurrent_hybrid_attention(*inputs, chunk_frames=2, **kwargs)
        got = recurrent_hybrid_attention(*far, chunk_frames=2, **kwargs)
        step, _ = hybrid_attention_step(*inputs, None, **kwargs)
        hybrid_attention_step(*far, None, out=far_out, **kwargs)
    _assert_same([got, far_out], [want, step])


class _Recorder:
    """Stands in for a kernel in its module: launches it and records each launch's grid and keyword
    arguments, tensors cloned before (what the kernel read) and after (what it should have written)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[tuple[object, dict, dict]] = []

    def __getitem__(self, grid):
        def launch(**kwargs):
            before = {name: value.clone() for name, value in kwargs.items() if isinstance(value, Tensor)}
            self.kernel[grid](**kwargs)
            after = {name: value.clone() for name, value in kwargs.items() if isinstance(value, Tensor)}
            self.launches.append((grid, {**kwargs, **before}, after))

        return launch


#: The forward and its split merge: statistics and partials per query row, states per chunk.
_FORWARD = (
    {"n_q": TOKENS, "n_chunks": STATES},
    {
        name: ("n_q", 2, False)
        for name in ("m_ptr", "l_ptr", "nl_ptr", "part_acc_ptr", "part_m_ptr", "part_l_ptr")
    }
    | {"kv_ptr": ("n_chunks", 1, False), "z_ptr": ("n_chunks", 1, False)},
)
#: Per kernel: the size arguments to grow, and the tensors each lays out as (size argument, dim,
#: whether dim 0 is batch × size); tensors with explicit strides (inputs, ``out=``) are not grown.
GROWN = {
    (feature_map_kernel, "_fwd_kernel"): ({"n_tokens": TOKENS}, {"out_ptr": ("n_tokens", 1, False)}),
    (feature_map_kernel, "_bwd_kernel"): (
        {"n_tokens": TOKENS, "max_blocks": PARTIAL_ROWS},
        {name: ("n_tokens", 1, False) for name in ("dx_ptr", "a_ptr", "dh_ptr", "dpsi_ptr")}
        | {"db1_ptr": ("max_blocks", 0, True), "db2_ptr": ("max_blocks", 0, True)},
    ),
    (windowed_attention, "_fwd_kernel"): _FORWARD,
    (windowed_attention, "_combine_kernel"): _FORWARD,
    (windowed_attention, "_bwd_preprocess_kernel"): (
        {"n_q": TOKENS},
        {"o_ptr": ("n_q", 1, False)}
        | {name: ("n_q", 2, False) for name in ("l_ptr", "nl_ptr", "rden_ptr", "dns_ptr", "dnl_ptr")},
    ),
    (windowed_attention, "_bwd_dq_kernel"): (
        {"n_q": TOKENS, "n_k": TOKENS, "n_chunks": STATES},
        {name: ("n_q", 2, False) for name in ("m_ptr", "rden_ptr", "dns_ptr", "dnl_ptr")}
        | {"dq_ptr": ("n_q", 1, False), "dfq_ptr": ("n_q", 1, False), "dk_extra_ptr": ("n_k", 1, False)}
        | {"kv_ptr": ("n_chunks", 1, False), "z_ptr": ("n_chunks", 1, False)},
    ),
    (windowed_attention, "_bwd_dkdv_kernel"): (
        {"n_q": TOKENS, "n_k": TOKENS},
        {name: ("n_q", 2, False) for name in ("m_ptr", "rden_ptr", "dns_ptr")}
        | {name: ("n_k", 1, False) for name in ("dk_ptr", "dv_ptr", "dk_extra_ptr")},
    ),
    (state_sums, "_segment_sums_kernel"): (
        {"n_tokens": TOKENS, "n_segs": STATES},
        {"kv_ptr": ("n_segs", 1, False), "z_ptr": ("n_segs", 1, False)}
        | {"wb_ptr": ("n_tokens", 2, False), "wz_ptr": ("n_tokens", 2, False)},
    ),
    (state_sums, "_segment_apply_kernel"): (
        {"n_tokens": TOKENS, "n_segs": STATES},
        {"da_ptr": ("n_tokens", 1, False), "db_ptr": ("n_tokens", 1, False)}
        | {"dkv_ptr": ("n_segs", 1, False), "dz_ptr": ("n_segs", 1, False)},
    ),
}


def _unused(kernel: str, name: str, kwargs: dict) -> bool:
    """Placeholder arguments of a launch (its constexpr flags switch their use off)."""
    if name in ("a_ptr", "dh_ptr", "dpsi_ptr", "db1_ptr", "db2_ptr"):
        return not kwargs["STORE"] or (name.startswith("db") and not kwargs["HAS_BIAS"])
    if name.startswith("part_"):
        return kwargs["SPLITS"] == 1
    if name in ("wb_ptr", "wz_ptr"):
        return not kwargs["HAS_" + name[:2].upper()]
    if name in ("kv_ptr", "z_ptr", "dfq_ptr"):
        return not kwargs.get("HAS_LINEAR", True)
    return kernel == "_fwd_kernel" and name.startswith(("m_", "l_", "nl_")) and kwargs.get("SPLITS", 1) > 1


def _grow(small: Tensor, dim: int, size: int, batch: int | None) -> tuple[Tensor, Tensor]:
    """A lazy tensor like ``small`` with ``dim`` grown to ``size`` and small's content at its start,
    and the view of that start. ``batch``: dim 0 of small is batch × its size (dim is then 0)."""
    shape = [batch, small.shape[0] // batch, *small.shape[1:]] if batch else list(small.shape)
    dim = 1 if batch else dim
    grown = _lazy_zeros((*shape[:dim], size, *shape[dim + 1 :]), small.dtype)
    region = grown.narrow(dim, 0, shape[dim])
    region.copy_(small.view(shape))
    return (grown.view(-1, *grown.shape[2:]) if batch else grown), region


@pytest.fixture(scope="module")
def launches() -> dict[tuple[object, str], list]:
    """The recorded launches of every kernel in GROWN, on small problems: 2 batch elements, 2 heads,
    D = 32, D' = 64, 64 tokens (whole blocks and chunks, so that grown sizes leave them unchanged)."""
    recorders = {key: _Recorder(getattr(*key)) for key in GROWN}
    with pytest.MonkeyPatch.context() as patch:
        for (module, name), recorder in recorders.items():
            patch.setattr(module, name, recorder)
        inputs = [x.float() for x in make_inputs(BATCH, 4, 16, 2, 32, 64, seed=4)]
        grad = torch.randn_like(inputs[0])
        kwargs = dict(frame_tokens=16, chunk_frames=2, overlap_frames=1, backend="triton")
        _outputs_and_grads(hybrid_attention, inputs, grad, **kwargs)
        q, k, v, fq = (x.detach() for x in inputs[:4])
        kv, z = (torch.rand(BATCH, 2, 2, 64, *d) for d in ((32,), ()))
        geometry = Geometry(frame_tokens=16, chunk_frames=2, overlap_frames=1, scale=0.2)
        windowed_attention.windowed_attention_forward(q, k, v, fq, kv, z, geometry, splits=2)
        # Parameters with gradients: the backward writes a, dh, dψ and the bias partials too.
        shapes = ((2, 32, 64), (2, 64, 64), (2, 64), (2, 64))
        params = [(torch.randn(shape) / shape[-1] ** 0.5).requires_grad_(True) for shape in shapes]
        phi = feature_map_kernel.polynomial_feature_map(
            q.requires_grad_(True), params[:2], params[2:], 2, "gelu"
        )
        phi.backward(torch.randn_like(phi))
    return {key: recorder.launches for key, recorder in recorders.items()}


@pytest.mark.parametrize("key", list(GROWN), ids=[f"{m.__name__.split('.')[-1]}.{n}" for m, n in GROWN])
def test_kernel_writes_batches_past_2_31(launches, key):
    module, name = key
    sizes, layouts = GROWN[key]
    assert launches[key], f"{name} was not launched"
    for grid, kwargs, after in launches[key]:
        grown_kwargs, regions = {**kwargs, **sizes}, {}
        for arg, (size_arg, dim, batch_major) in layouts.items():
            if arg in kwargs and not _unused(name, arg, kwargs):
                small = kwargs[arg]
                grown_kwargs[arg], regions[arg] = _grow(
                    small, dim, sizes[size_arg], BATCH if batch_major else None
                )
        kernel = getattr(module, name)
        if module is feature_map_kernel:  # the kernel without its autotuner, on the recorded blocks
            kernel, grid = kernel.fn, grid({"BLOCK_N": MIN_BLOCK})
            grown_kwargs.update(BLOCK_N=MIN_BLOCK, num_warps=1)
        kernel[grid](**grown_kwargs)
        assert regions
        for arg, region in regions.items():
            want = after[arg].view(region.shape)
            torch.testing.assert_close(region, want, rtol=0, atol=0, msg=lambda m, a=arg: f"{a}: {m}")
