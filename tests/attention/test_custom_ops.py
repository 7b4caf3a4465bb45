"""The ReHyAt custom ops (rehyat::hybrid_attention, step_attention[_out], feature_map and their backward):
torch.library.opcheck on both backends (schema, fake tensors, autograd registration, AOT dispatch),
gradients equal to the direct path, eager inference routed through the ops, and torch.compile with
fullgraph=True of the op-level calls and of a converted tiny Wan model, equal to eager.

Without a GPU the Triton cases run in Triton's interpreter (TRITON_INTERPRET=1, set before the kernel
modules are first imported, as in test_kernels.py). Compilation uses the "aot_eager" backend
(AOTAutograd with the fake implementations, no C++ toolchain: seconds instead of minutes on a CPU).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from models.tiny_wan import converted, tiny_inputs, tiny_wan
from rehyat import (
    AttentionStats,
    PolynomialFeatureMap,
    hybrid_attention,
    hybrid_attention_step,
    recurrent_hybrid_attention,
)
from rehyat.attention.hybrid import custom_ops
from rehyat.attention.hybrid.chunk import chunked_hybrid_attention
from rehyat.attention.kernels import triton_available
from rehyat.models import rehyat_runtime

from conftest import make_inputs, rel_err

BACKENDS = [
    "torch",
    pytest.param("triton", marks=pytest.mark.skipif(not triton_available(), reason="no triton")),
]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GEOMETRY = (4, 2, 1, True)  # frame_tokens, chunk_frames, overlap_frames, causal


def _inputs(requires_grad=True, dtype=torch.float32, seed=0, positive=True, batch=2, heads=2):
    """q, k, v [B, 12, H, 16] (3 frames of 4 tokens), fq, fk [B, 12, H, 16]."""
    tensors = make_inputs(batch, 3, 4, heads, 16, 16, dtype=dtype, seed=seed, positive_features=positive)
    return [t.to(DEVICE).requires_grad_(requires_grad) for t in tensors]


def _state(requires_grad=True, dtype=torch.float32, batch=2, heads=2):
    """One cached frame k, v [B, 4, H, 16] and a state kv [B, H, 16, 16], z [B, H, 16]."""
    gen = torch.Generator().manual_seed(5)
    cached = [torch.randn(batch, 4, heads, 16, generator=gen, dtype=dtype) for _ in range(2)]
    kv = torch.rand(batch, heads, 16, 16, generator=gen, dtype=dtype)
    z = torch.rand(batch, heads, 16, generator=gen, dtype=dtype)
    return [t.to(DEVICE).requires_grad_(requires_grad) for t in (*cached, kv, z)]


def _sizes(backend: str) -> dict:
    """Smaller inputs for the kernels, which the interpreter runs one program at a time."""
    return dict(batch=1, heads=1) if backend == "triton" else {}


def _check(op, args) -> None:
    result = torch.library.opcheck(op, args)
    assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_parallel(backend):
    sizes = _sizes(backend)
    _check(custom_ops.hybrid_attention_op, (*_inputs(**sizes), *GEOMETRY, 0.25, backend, True))
    if backend == "torch":
        _check(
            custom_ops.hybrid_attention_op, (*_inputs(requires_grad=False), *GEOMETRY, 0.25, backend, False)
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_step(backend):
    q, k, v, fq, _ = _inputs(**_sizes(backend))
    cached_k, cached_v, kv, z = _state(**_sizes(backend))
    _check(
        custom_ops.step_attention_op, (q, k, v, cached_k, cached_v, fq, kv, z, None, 4, 0.25, backend, True)
    )
    plain = [t.detach() for t in (q, k, v, cached_k, cached_v, fq, kv, z)]
    out = torch.empty_like(plain[0])
    _check(custom_ops.step_attention_out_op, (*plain, out, None, 4, 0.25, backend, True))
    # A key mask over the cached keys (masked global keys): gradients on the PyTorch backend only.
    mask = torch.arange(cached_k.shape[1], device=cached_k.device).remainder(3).ne(0)
    mask = mask.expand(cached_k.shape[0], -1).contiguous()
    masked = (q, k, v, cached_k, cached_v, fq, kv, z) if backend == "torch" else plain
    _check(custom_ops.step_attention_op, (*masked, mask, 4, 0.25, backend, True))
    _check(custom_ops.step_attention_out_op, (*plain, out, mask, 4, 0.25, backend, True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_feature_map(backend):
    phi = PolynomialFeatureMap(1, 16, init="random").to(DEVICE)
    x = _inputs(heads=1, **({"batch": 1} if backend == "triton" else {}))[0]
    _check(custom_ops.feature_map_op, (x, list(phi.weights), list(phi.biases), 2, "relu", False, backend))
    if backend == "torch":
        _check(custom_ops.feature_map_op, (x.detach(), list(phi.weights), [], 2, "gelu", True, backend))


def _grads(out, tensors):
    return torch.autograd.grad(out, tensors, torch.ones_like(out))


def test_op_gradients_equal_the_direct_path():
    """The ops' backward (recompute + autograd of the same implementation) equals plain autograd."""
    tensors = _inputs(dtype=torch.float64, positive=False)
    geometry = dict(frame_tokens=4, chunk_frames=2, overlap_frames=1, causal=True, scale=0.25)
    direct = chunked_hybrid_attention(*tensors, **geometry)
    via_op, _ = custom_ops.hybrid_attention_op(*tensors, *GEOMETRY, 0.25, "torch", False)
    assert rel_err(via_op, direct) <= 1e-12
    for got, want in zip(_grads(via_op, tensors), _grads(direct, tensors), strict=True):
        assert rel_err(got, want) <= 1e-10

    q, k, v, fq, _ = tensors
    cached_k, cached_v, kv, z = _state(dtype=torch.float64)
    step_in = (q, k, v, cached_k, cached_v, fq, kv, z)
    mask = torch.arange(cached_k.shape[1], device=cached_k.device).remainder(3).ne(0)
    for key_mask in (None, mask.expand(cached_k.shape[0], -1)):
        direct = custom_ops._step(*step_in, key_mask, 4, 0.25, "torch", None)
        via_op, _ = custom_ops.step_attention_op(*step_in, key_mask, 4, 0.25, "torch", False)
        for got, want in zip(_grads(via_op, step_in), _grads(direct, step_in), strict=True):
            assert rel_err(got, want) <= 1e-10

    phi = PolynomialFeatureMap(2, 16, init="random").double().to(DEVICE)
    params = [q, *phi.weights, *phi.biases]
    direct = custom_ops._feature_map(q, list(phi.weights), list(phi.biases), 2, "relu", False, "torch")
    via_op = custom_ops.feature_map_op(q, list(phi.weights), list(phi.biases), 2, "relu", False, "torch")
    for got, want in zip(_grads(via_op, params), _grads(direct, params), strict=True):
        assert rel_err(got, want) <= 1e-10


class _OpLog(TorchDispatchMode):
    """Names of the rehyat ops dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "rehyat":
            self.names.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def test_inference_runs_the_ops_and_training_the_direct_path():
    q, k, v, fq, fk = _inputs(requires_grad=False)
    phi = PolynomialFeatureMap(2, 16).to(DEVICE)
    geometry = dict(frame_tokens=4, chunk_frames=2, overlap_frames=1, backend="torch")
    with _OpLog() as log, torch.no_grad():
        hybrid_attention(q, k, v, fq, fk, **geometry)
        phi(q)
        _, state = hybrid_attention_step(
            q, k, v, fq, fk, None, frame_tokens=4, overlap_frames=1, backend="torch"
        )
        buffer = torch.empty_like(q)
        hybrid_attention_step(
            q, k, v, fq, fk, state, frame_tokens=4, overlap_frames=1, backend="torch", out=buffer
        )
    assert log.names == ["hybrid_attention", "feature_map", "step_attention", "step_attention_out"]
    with _OpLog() as log:
        hybrid_attention(q.requires_grad_(), k, v, fq, fk, **geometry)
        phi(q)
    assert log.names == []  # eager with gradients: the direct path, no recompute in the backward


def test_stats_through_the_ops_equal_the_direct_path():
    tensors = _inputs(requires_grad=False, positive=False)
    counted = AttentionStats(), AttentionStats()
    hybrid_attention(
        *tensors, frame_tokens=4, chunk_frames=2, overlap_frames=1, backend="torch", stats=counted[0]
    )
    with torch.enable_grad():
        tensors[0].requires_grad_()
        hybrid_attention(
            *tensors, frame_tokens=4, chunk_frames=2, overlap_frames=1, backend="torch", stats=counted[1]
        )
    assert counted[0] == counted[1] and counted[0].total_rows == 2 * 12 * 2 and counted[0].guarded_rows > 0


def test_compiled_attention_and_feature_maps_train_as_in_eager():
    """fullgraph=True (no graph break) through φ and the parallel op, forward and backward, fp32."""
    phi_q, phi_k = (PolynomialFeatureMap(2, 16, init="random").to(DEVICE) for _ in range(2))
    q, k, v, _, _ = _inputs(requires_grad=False, seed=3)

    def loss(q, k, v):
        fq, fk = phi_q(q), phi_k(k)
        out = hybrid_attention(
            q, k, v, fq, fk, frame_tokens=4, chunk_frames=2, overlap_frames=1, backend="torch"
        )
        return out.square().mean()

    params = [*phi_q.parameters(), *phi_k.parameters()]
    eager_loss = loss(q, k, v)
    eager = torch.autograd.grad(eager_loss, params)
    compiled_loss = torch.compile(loss, fullgraph=True, backend="aot_eager")(q, k, v)
    compiled = torch.autograd.grad(compiled_loss, params)
    assert abs(compiled_loss.item() - eager_loss.item()) <= 1e-5 * abs(eager_loss.item())
    for got, want in zip(compiled, eager, strict=True):
        assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_converted_wan_has_no_graph_break(backend):
    """A converted tiny Wan (every block ReHyAt, parallel form) under torch.compile(fullgraph=True) equals
    eager; torch._dynamo.explain counts one graph and no break. The Triton case (head dim 16) runs the
    kernels in the interpreter."""
    model = tiny_wan(num_layers=1, attention_head_dim=16) if backend == "triton" else tiny_wan(num_layers=2)
    net = converted(model, chunk_frames=3, overlap_frames=1)
    rehyat_runtime(net).backend = backend
    hidden, timestep, context = tiny_inputs(batch=2)

    def forward(hidden, timestep, context):
        return net(hidden, timestep, context, return_dict=False)[0]

    with torch.no_grad():
        eager = forward(hidden, timestep, context)
        if backend == "torch":
            explained = torch._dynamo.explain(forward)(hidden, timestep, context)
            assert (explained.graph_count, explained.graph_break_count) == (1, 0)
            torch._dynamo.reset()
        compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")(hidden, timestep, context)
    assert rel_err(compiled, eager) <= 1e-5


@pytest.mark.skipif(not triton_available(), reason="no triton")
def test_opcheck_state_update_on_the_kernels():
    fk, v = _inputs(batch=1, heads=1)[3], _inputs(batch=1, heads=1)[2]
    _check(custom_ops.frame_sums_op, (fk, v, 4))
    kv, z = (t.detach() for t in _state(batch=1, heads=1)[2:])
    pending_kv, pending_z = kv[:, None].repeat(1, 2, 1, 1, 1), z[:, None].repeat(1, 2, 1, 1)
    for leaving in (0, 2, 5):
        _check(
            custom_ops.retire_frames_op, (fk.detach(), v.detach(), 4, kv, z, pending_kv, pending_z, leaving)
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_streaming_equals_eager(backend):
    """The chunk-by-chunk form (step op + state update) under torch.compile(fullgraph=True)."""
    q, k, v, fq, fk = _inputs(requires_grad=False, **_sizes(backend))

    def stream(q, k, v, fq, fk):
        return recurrent_hybrid_attention(
            q, k, v, fq, fk, frame_tokens=4, chunk_frames=1, overlap_frames=1, backend=backend
        )

    eager = stream(q, k, v, fq, fk)
    compiled = torch.compile(stream, fullgraph=True, backend="aot_eager")(q, k, v, fq, fk)
    assert rel_err(compiled, eager) <= 1e-6
