"""The parallel form against the dense oracle, SDPA, and autograd (float64)."""

from __future__ import annotations

import pytest
import torch

from rehyat import hybrid_attention

from conftest import GEOMETRIES, dense_oracle, make_inputs, rel_err


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("frames,frame_tokens,chunk,overlap", GEOMETRIES)
def test_parallel_matches_dense_oracle(frames, frame_tokens, chunk, overlap, causal):
    q, k, v, fq, fk = make_inputs(2, frames, frame_tokens, 3, 4, 6, seed=frames * 31 + chunk)
    kwargs = dict(frame_tokens=frame_tokens, chunk_frames=chunk, overlap_frames=overlap, causal=causal)
    out = hybrid_attention(q, k, v, fq, fk, **kwargs)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_err(out, dense_oracle(q, k, v, fq, fk, **kwargs)) <= 1e-10


@pytest.mark.parametrize("causal", [True, False])
def test_parallel_matches_oracle_with_signed_features_and_custom_scale(causal):
    q, k, v, fq, fk = make_inputs(1, 7, 3, 2, 5, 10, seed=3, positive_features=False)
    fq, fk = fq * 0.1, fk * 0.1  # signed but small: the guard does not fire here
    kwargs = dict(frame_tokens=3, chunk_frames=2, overlap_frames=1, causal=causal, scale=0.37)
    assert (
        rel_err(hybrid_attention(q, k, v, fq, fk, **kwargs), dense_oracle(q, k, v, fq, fk, **kwargs)) <= 1e-10
    )


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("chunk", [4, 5, 100])
def test_one_chunk_is_full_softmax(chunk, causal):
    q, k, v, fq, fk = make_inputs(2, 4, 5, 3, 8, 16, seed=chunk)
    out = hybrid_attention(
        q, k, v, fq, fk, frame_tokens=5, chunk_frames=chunk, overlap_frames=2, causal=causal
    )
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)
    assert rel_err(out, ref) <= 1e-12


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("frames,frame_tokens,chunk,overlap", [(5, 2, 2, 1), (4, 2, 3, 0), (5, 1, 2, 3)])
def test_gradients_match_oracle_autograd(frames, frame_tokens, chunk, overlap, causal):
    kwargs = dict(frame_tokens=frame_tokens, chunk_frames=chunk, overlap_frames=overlap, causal=causal)
    inputs = make_inputs(1, frames, frame_tokens, 2, 3, 4, seed=7, requires_grad=True)
    grad_out = torch.randn(inputs[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(hybrid_attention(*inputs, **kwargs), inputs, grad_out)
    want = torch.autograd.grad(dense_oracle(*inputs, **kwargs), inputs, grad_out)
    for name, g, w in zip(("q", "k", "v", "fq", "fk"), got, want, strict=True):
        assert rel_err(g, w) <= 1e-10, name


@pytest.mark.parametrize("causal", [True, False])
def test_gradcheck(causal):
    inputs = make_inputs(1, 4, 2, 2, 3, 4, seed=11, requires_grad=True)

    def fn(*xs):
        return hybrid_attention(*xs, frame_tokens=2, chunk_frames=2, overlap_frames=1, causal=causal)

    assert torch.autograd.gradcheck(fn, inputs)


def test_row_max_gradient_is_not_detached():
    """The linear part is not rescaled by exp(-c), so c's gradient matters; dropping it must be visible."""
    q, k, v, fq, fk = make_inputs(1, 4, 2, 1, 3, 4, seed=5, requires_grad=True)
    kwargs = dict(frame_tokens=2, chunk_frames=2, overlap_frames=0)
    (g_q,) = torch.autograd.grad(hybrid_attention(q, k, v, fq, fk, **kwargs).sum(), q)

    def detached_max_oracle():
        s = torch.einsum("bihd,bjhd->bhij", q, k) * 3**-0.5
        mask = torch.tensor([[i // 4 == j // 4 for j in range(8)] for i in range(8)])
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.exp(s - s.amax(-1, keepdim=True).detach())
        past_frames = torch.tensor([[j // 2 < (i // 4) * 2 for j in range(8)] for i in range(8)])
        lin = torch.einsum("bihe,bjhe->bhij", fq, fk) * past_frames
        return (
            torch.einsum("bhij,bjhd->bihd", p + lin, v) / (p.sum(-1) + lin.sum(-1)).transpose(1, 2)[..., None]
        )

    (g_detached,) = torch.autograd.grad(detached_max_oracle().sum(), q)
    assert rel_err(g_q, g_detached) > 1e-6
