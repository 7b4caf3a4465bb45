"""The streaming step on the Triton kernels with global keys (masked or not) and anchor frames as cached
keys (docs/method.md §2.1) against the PyTorch step: outputs without gradients, gradients without a
mask, and the refusal of a mask with gradients; the extra query rows of a step (a joint layer's text
queries, ``attend_rows``) likewise.

Runs in Triton's interpreter without a GPU (TRITON_INTERPRET=1, set before the kernel modules are
first imported), on tiny shapes: 16-wide blocks, so global keys, cached frames and the chunk end mid-block.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from rehyat import hybrid_attention, hybrid_attention_step, recurrent_hybrid_attention
from rehyat.attention.hybrid.kernels.windowed_attention import windowed_attention_forward
from rehyat.attention.hybrid.recurrent import attend_rows

from conftest import make_inputs, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5  # fp32 kernels against the fp32 PyTorch step


def _inputs(batch, frames, frame_tokens, heads, globals_, *, masked, seed, grad=False):
    q, k, v, fq, fk = make_inputs(batch, frames, frame_tokens, heads, 16, 32, dtype=torch.float32, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    gk, gv = (torch.randn(batch, globals_, heads, 16, generator=gen) for _ in range(2))
    mask = None
    if masked:
        mask = torch.rand(batch, globals_, generator=gen) > 0.5
        mask[:, :17] = False  # a whole leading key block of masked keys: rows start with m = -inf
        mask[0, -1] = True
    tensors = [x.to(DEVICE).requires_grad_(grad) for x in (q, k, v, fq, fk, gk, gv)]
    return tensors, (None if mask is None else mask.to(DEVICE))


def _recurrent(tensors, mask, backend, **geometry):
    q, k, v, fq, fk, gk, gv = tensors
    return recurrent_hybrid_attention(
        q, k, v, fq, fk, global_k=gk, global_v=gv, global_mask=mask, backend=backend, **geometry
    )


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(
    "geometry",
    [
        dict(frame_tokens=5, chunk_frames=2, overlap_frames=1, anchor_frames=0),
        dict(frame_tokens=5, chunk_frames=1, overlap_frames=2, anchor_frames=1),
        dict(frame_tokens=6, chunk_frames=3, overlap_frames=0, anchor_frames=2),
    ],
    ids=["To1", "To2_anchor1", "To0_anchor2"],
)
def test_no_grad_step_with_globals_and_anchor_matches_pytorch(geometry, masked):
    """7 frames; 40 global keys (three 16-key blocks, the last one short)."""
    tensors, mask = _inputs(2, 7, geometry["frame_tokens"], 2, 40, masked=masked, seed=3)
    with torch.no_grad():
        fast = _recurrent(tensors, mask, "triton", **geometry)
        reference = _recurrent(tensors, mask, "torch", **geometry)
        parallel = hybrid_attention(
            *tensors[:5],
            global_k=tensors[5],
            global_v=tensors[6],
            global_mask=mask,
            backend="torch",
            **geometry,
        )
    assert rel_err(fast, reference) < TOL
    assert rel_err(fast, parallel) < TOL


@pytest.mark.parametrize("anchor", [0, 1])
def test_step_gradients_with_unmasked_globals_match_pytorch(anchor):
    geometry = dict(frame_tokens=5, chunk_frames=2, overlap_frames=1, anchor_frames=anchor)
    grads = {}
    for backend in ("triton", "torch"):
        tensors, _ = _inputs(1, 5, 5, 2, 20, masked=False, seed=4, grad=True)
        out = _recurrent(tensors, None, backend, **geometry)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype, device=out.device)).view_as(out))
        grads[backend] = [x.grad for x in tensors]
    for fast, reference in zip(grads["triton"], grads["torch"], strict=True):
        assert rel_err(fast, reference) < 1e-4


def test_masked_globals_with_gradients_take_pytorch():
    geometry = dict(frame_tokens=5, chunk_frames=2, overlap_frames=1)
    tensors, mask = _inputs(1, 4, 5, 1, 20, masked=True, seed=5, grad=True)
    with pytest.raises(ValueError, match="masked global keys that needs gradients"):
        _recurrent(tensors, mask, "triton", **geometry)
    auto = _recurrent(tensors, mask, "auto", **geometry)
    assert torch.equal(auto, _recurrent(tensors, mask, "torch", **geometry))


def test_fully_masked_prefix_is_no_prefix():
    """Every cached key masked: the chunk's own keys alone (the -inf row max guard)."""
    q, k, v, fq, _ = make_inputs(1, 2, 8, 1, 16, 32, dtype=torch.float32, seed=6)
    q, k, v, fq = (x.to(DEVICE) for x in (q, k, v, fq))
    kv = torch.zeros(1, 1, 1, 32, 16, device=DEVICE)
    z = torch.zeros(1, 1, 1, 32, device=DEVICE)
    from rehyat.attention.hybrid.geometry import Geometry

    geometry = Geometry(8, None, 0, True, None)
    prefix = (torch.randn(1, 20, 1, 16, device=DEVICE), torch.randn(1, 20, 1, 16, device=DEVICE))
    none = torch.zeros(1, 20, dtype=torch.bool, device=DEVICE)
    masked = windowed_attention_forward(q, k, v, fq, kv, z, geometry, prefix=prefix, prefix_mask=none)
    alone = windowed_attention_forward(q, k, v, fq, kv, z, geometry)
    assert torch.isfinite(masked).all()
    assert rel_err(masked, alone) < TOL


def test_bad_prefix_mask_raises():
    q, k, v, fq, _ = make_inputs(1, 2, 8, 1, 16, 32, dtype=torch.float32, seed=6)
    kv, z = torch.zeros(1, 1, 1, 32, 16), torch.zeros(1, 1, 1, 32)
    from rehyat.attention.hybrid.geometry import Geometry

    prefix = (torch.randn(1, 20, 1, 16), torch.randn(1, 20, 1, 16))
    with pytest.raises(ValueError, match="prefix_mask must be a bool tensor"):
        windowed_attention_forward(
            q, k, v, fq, kv, z, Geometry(8, None, 0, True, None), prefix=prefix, prefix_mask=torch.ones(1, 20)
        )


def _rows_case(masked, *, seed, grad=False):
    """A stream stepped over 2 chunks of 2 frames (state with cached frames and sums), then 11 extra
    query rows (a joint layer's text queries) with the next chunk's key sets."""
    tensors, mask = _inputs(1, 6, 5, 2, 20, masked=masked, seed=seed)
    q, k, v, fq, fk, gk, gv = (x.detach() for x in tensors)
    globals_ = dict(global_k=gk, global_v=gv, global_mask=mask)
    state = None
    with torch.no_grad():
        for start in (0, 10):
            rows = slice(start, start + 10)
            _, state = hybrid_attention_step(
                q[:, rows], k[:, rows], v[:, rows], fq[:, rows], fk[:, rows], state,
                frame_tokens=5, overlap_frames=1, backend="torch", **globals_,
            )  # fmt: skip
    gen = torch.Generator().manual_seed(seed + 2)
    extra_q = torch.randn(1, 11, 2, 16, generator=gen).to(DEVICE).requires_grad_(grad)
    extra_fq = torch.rand(1, 11, 2, 32, generator=gen).to(DEVICE).requires_grad_(grad)
    chunk = [x[:, 20:].clone().requires_grad_(grad) for x in (k, v)]
    return extra_q, extra_fq, chunk, state, globals_


@pytest.mark.parametrize("masked", [False, True])
def test_extra_rows_on_the_kernels_match_pytorch(masked):
    q, fq, (k, v), state, globals_ = _rows_case(masked, seed=7)
    with torch.no_grad():
        fast = attend_rows(q, fq, k, v, state, backend="triton", **globals_)
        reference = attend_rows(q, fq, k, v, state, backend="torch", **globals_)
    assert fast.shape == q.shape
    assert rel_err(fast, reference) < TOL


def test_extra_rows_gradients_on_the_kernels_match_pytorch():
    grads = {}
    for backend in ("triton", "torch"):
        q, fq, (k, v), state, globals_ = _rows_case(False, seed=8, grad=True)
        out = attend_rows(q, fq, k, v, state, backend=backend, **globals_)
        out.backward(torch.sin(torch.arange(out.numel(), dtype=out.dtype, device=out.device)).view_as(out))
        grads[backend] = [x.grad for x in (q, fq, k, v)]
    for fast, reference in zip(grads["triton"], grads["torch"], strict=True):
        assert rel_err(fast, reference) < 1e-4


def test_extra_rows_check_their_shapes():
    q, fq, (k, v), state, globals_ = _rows_case(False, seed=9)
    with pytest.raises(ValueError, match="the state takes last dim 32"):
        attend_rows(q, fq[..., :16], k, v, state, **globals_)
    with pytest.raises(ValueError, match="must have q's rows"):
        attend_rows(q, fq[:, :3], k, v, state, **globals_)
