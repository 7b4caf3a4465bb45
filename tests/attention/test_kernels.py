"""The Triton kernels against the PyTorch reference, forward and backward.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here before the kernel
modules are first imported; ``rehyat`` imports them lazily, only when the Triton backend is used).
Shapes are tiny and blocks are 16 wide there, so chunks and windows still span several blocks and
end mid-block. Inputs are float32 against a float64 reference: the kernels compute in fp32.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from rehyat import AttentionStats, hybrid_attention, recurrent_hybrid_attention
from rehyat.attention.hybrid.chunk import chunked_hybrid_attention as naive_hybrid_attention
from rehyat.attention.hybrid.kernels.launch import triton_hybrid_attention

from conftest import make_inputs, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-5


def _run(fn, inputs, grad_out, **kwargs):
    """Output and input gradients of ``fn`` on leaf copies of ``inputs`` (None entries stay None)."""
    leaves = [None if x is None else x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves, **kwargs)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [None if x is None else x.grad for x in leaves]


def _compare(inputs, kwargs, *, fn=hybrid_attention, tol=TOL, positive=True):
    """The kernels (float32, on DEVICE) against the reference (float64, CPU), output and gradients."""
    grad_out = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ref_out, ref_grads = _run(naive_hybrid_attention, inputs, grad_out, **kwargs)
    fast = [None if x is None else x.to(DEVICE, torch.float32) for x in inputs]
    backend = {"backend": "triton"} if fn is not triton_hybrid_attention else {}
    out, grads = _run(fn, fast, grad_out.to(DEVICE), **kwargs, **backend)
    assert out.dtype == torch.float32 and out.shape == ref_out.shape
    assert rel_err(out.cpu(), ref_out) <= tol
    for name, grad, ref in zip(("q", "k", "v", "fq", "fk"), grads, ref_grads, strict=True):
        if ref is None:
            continue
        if ref.norm() == 0:  # no linear keys at all (one chunk): the kernels must give exact zeros
            assert grad.abs().max() == 0, name
        else:
            assert rel_err(grad.cpu(), ref) <= tol, f"d{name}: {rel_err(grad.cpu(), ref):.2e}"


# Every (To, Tc) pair, To in {0, 1, 2} and Tc in {1, 2, 3, 5}, on 7 frames of 5 tokens: chunks and windows end mid-block, the last
# chunk is short for Tc in {2, 3, 5}. Batch 2 and 3 heads on some of them; bidirectional on a subset.
SIZES = {(1, 2): (2, 1), (2, 3): (1, 3), (0, 5): (2, 3)}
CASES = [
    (overlap, chunk, *SIZES.get((overlap, chunk), (1, 1)), True)
    for overlap in (0, 1, 2)
    for chunk in (1, 2, 3, 5)
] + [(1, 3, 1, 3, False), (2, 2, 2, 1, False), (0, 5, 1, 1, False)]


@pytest.mark.parametrize("overlap,chunk,batch,heads,causal", CASES)
def test_kernels_match_reference(overlap, chunk, batch, heads, causal):
    inputs = make_inputs(batch, 7, 5, heads, 16, 32, seed=10 * overlap + chunk)
    _compare(inputs, dict(frame_tokens=5, chunk_frames=chunk, overlap_frames=overlap, causal=causal))


def test_one_chunk_and_long_overlap():
    """Tc >= T (full softmax, no linear keys) and To > Tc, on frames longer than a block."""
    inputs = make_inputs(1, 3, 20, 2, 32, 16, seed=2)
    _compare(inputs, dict(frame_tokens=20, chunk_frames=5, overlap_frames=1))
    inputs = make_inputs(1, 6, 3, 1, 16, 16, seed=3)
    _compare(inputs, dict(frame_tokens=3, chunk_frames=1, overlap_frames=4, scale=0.3))


def test_peaked_scores_exercise_the_row_max_gradient():
    """Large logits make the row max term (∂L/∂c through the argmax key) dominate the gradient."""
    q, k, v, fq, fk = make_inputs(2, 5, 4, 1, 16, 16, seed=4)
    _compare((q * 3, k * 3, v, fq, fk), dict(frame_tokens=4, chunk_frames=2, overlap_frames=1))


def test_head_major_inputs():
    """[B, H, N, ·] tensors viewed as [B, N, H, ·] (dense, not contiguous): the gradients come back right
    (they were allocated with the inputs' strides, then written as if contiguous)."""
    inputs = [
        x.transpose(1, 2).contiguous().transpose(1, 2) for x in make_inputs(1, 6, 4, 2, 16, 32, seed=11)
    ]
    assert not inputs[0].is_contiguous()
    _compare(inputs, dict(frame_tokens=4, chunk_frames=2, overlap_frames=1))


@pytest.mark.parametrize("causal", [True, False])
def test_denominator_guard_matches_reference(causal):
    """Signed features drive nS + nL below eps·nS on some rows: same guard, same counts, same gradients."""
    q, k, v, fq, fk = make_inputs(1, 6, 4, 2, 16, 16, seed=3)
    fq = fq.clone()
    fq[:, 16:, 0] *= -50.0  # head 0, frames 4..5: a large negative linear part
    kwargs = dict(frame_tokens=4, chunk_frames=2, overlap_frames=0, causal=causal)
    ref_stats, stats = AttentionStats(), AttentionStats()
    naive_hybrid_attention(q, k, v, fq, fk, stats=ref_stats, **kwargs)
    fast = [x.to(DEVICE, torch.float32) for x in (q, k, v, fq, fk)]
    hybrid_attention(*fast, stats=stats, backend="triton", **kwargs)
    assert ref_stats.guarded_rows >= 8
    assert (stats.total_rows, stats.guarded_rows) == (ref_stats.total_rows, ref_stats.guarded_rows)
    _compare((q, k, v, fq, fk), kwargs)


def test_local_only_without_linear_part():
    inputs = (*make_inputs(2, 7, 5, 3, 16, 16, seed=6)[:3], None, None)
    _compare(inputs, dict(frame_tokens=5, chunk_frames=3, overlap_frames=1), fn=triton_hybrid_attention)


def test_recurrent_step_on_kernels_matches_parallel():
    q, k, v, fq, fk = make_inputs(2, 7, 5, 2, 16, 32, seed=8)
    kwargs = dict(frame_tokens=5, chunk_frames=3, overlap_frames=2)
    inputs = (q, k, v, fq, fk)
    grad_out = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads = _run(naive_hybrid_attention, inputs, grad_out, **kwargs)
    fast = [x.to(DEVICE, torch.float32) for x in inputs]
    out, grads = _run(recurrent_hybrid_attention, fast, grad_out.to(DEVICE), backend="triton", **kwargs)
    assert rel_err(out.cpu(), ref_out) <= TOL
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert rel_err(grad.cpu(), ref) <= TOL


INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(
            torch.bfloat16,
            marks=pytest.mark.skipif(INTERPRETED, reason="Triton's interpreter gets bf16 tl.dot wrong"),
        ),
        torch.float16,
    ],
)
def test_half_inputs(dtype):
    """Half inputs, fp32 accumulation: within half-precision rounding of the float64 reference."""
    q, k, v, fq, fk = make_inputs(1, 5, 6, 2, 16, 32, seed=9)
    kwargs = dict(frame_tokens=6, chunk_frames=2, overlap_frames=1)
    ref = naive_hybrid_attention(q, k, v, fq, fk, **kwargs)
    out = hybrid_attention(*[x.to(DEVICE, dtype) for x in (q, k, v, fq, fk)], backend="triton", **kwargs)
    assert out.dtype == dtype
    assert rel_err(out.cpu(), ref) <= 1e-2


def test_backend_choice():
    q, k, v, fq, fk = make_inputs(1, 4, 3, 1, 12, 16, seed=1)
    kwargs = dict(frame_tokens=3, chunk_frames=2, overlap_frames=1)
    # "auto" on CPU (or on unsupported shapes: head dim 12) is the PyTorch reference, bit for bit.
    torch.testing.assert_close(
        hybrid_attention(q, k, v, fq, fk, **kwargs),
        naive_hybrid_attention(q, k, v, fq, fk, **kwargs),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match="head dim 12"):
        hybrid_attention(q.float(), k.float(), v.float(), fq.float(), fk.float(), backend="triton", **kwargs)
    with pytest.raises(ValueError, match=r"dtype torch\.float64"):
        hybrid_attention(*make_inputs(1, 4, 3, 1, 16, 16), backend="triton", **kwargs)
    with pytest.raises(ValueError, match="backend must be one of"):
        hybrid_attention(q, k, v, fq, fk, backend="cuda", **kwargs)


def test_rehyat_imports_and_runs_without_triton():
    """Triton is optional: ``import rehyat`` and the torch path work without it; "triton" says why not."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # make `import triton` fail as if it were not installed
        import torch, rehyat
        x = torch.randn(1, 4, 1, 16)
        rehyat.hybrid_attention(x, x, x, x, x, frame_tokens=2, chunk_frames=1, overlap_frames=0)
        try:
            rehyat.hybrid_attention(x, x, x, x, x, frame_tokens=2, chunk_frames=1, overlap_frames=0, backend="triton")
        except ImportError as error:
            assert "pip install triton" in str(error)
            print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr
