"""Baselines against dense masked computations written from their definitions."""

from __future__ import annotations

import pytest
import torch

from rehyat import AttentionStats
from rehyat.baselines import (
    ATTENTION_VARIANTS,
    full_attention,
    linear_attention,
    local_attention,
    uniform_hybrid_attention,
)

from conftest import dense_oracle, make_inputs, rel_err

GEOMETRY = dict(frame_tokens=3, chunk_frames=2, overlap_frames=1)


def _dense(weights: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bhij,bjhd->bihd", weights, v) / weights.sum(-1).transpose(1, 2)[..., None]


def test_full_is_softmax():
    q, k, v, fq, fk = make_inputs(2, 5, 3, 2, 4, 6)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * 0.5
    assert rel_err(full_attention(q, k, v, fq, fk, scale=0.5, **GEOMETRY), _dense(s.softmax(-1), v)) <= 1e-12


def test_local_is_hybrid_without_linear_part():
    q, k, v, fq, fk = make_inputs(2, 7, 3, 2, 4, 6)
    zero = torch.zeros_like(fq)
    want = dense_oracle(q, k, v, zero, zero, **GEOMETRY)
    assert rel_err(local_attention(q, k, v, fq, fk, **GEOMETRY), want) <= 1e-10


@pytest.mark.parametrize("causal", [True, False])
def test_linear_only(causal):
    q, k, v, fq, fk = make_inputs(1, 5, 3, 2, 4, 6)
    frame = torch.arange(15) // 3
    mask = (frame[None, :] <= frame[:, None]) if causal else torch.ones(15, 15, dtype=torch.bool)
    weights = torch.einsum("bihe,bjhe->bhij", fq, fk) * mask
    assert rel_err(linear_attention(q, k, v, fq, fk, causal=causal, **GEOMETRY), _dense(weights, v)) <= 1e-10


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_uniform_hybrid(stride):
    q, k, v, fq, fk = make_inputs(1, 4, 3, 2, 4, 6)
    softmax_keys = torch.arange(12) % stride == 0
    s = torch.einsum("bihd,bjhd->bhij", q, k) * 0.5
    s = s.masked_fill(~softmax_keys, float("-inf"))
    p = torch.exp(s - s.amax(-1, keepdim=True))
    lin = torch.einsum("bihe,bjhe->bhij", fq, fk) * ~softmax_keys
    got = uniform_hybrid_attention(q, k, v, fq, fk, stride=stride, **GEOMETRY)
    assert rel_err(got, _dense(p + lin, v)) <= 1e-10


def test_variants_share_the_call_shape_and_keep_dtype():
    q, k, v, fq, fk = make_inputs(1, 4, 3, 2, 4, 8, dtype=torch.bfloat16)
    for name, fn in ATTENTION_VARIANTS.items():
        out = fn(q, k, v, fq, fk, causal=True, **GEOMETRY)
        assert out.shape == q.shape and out.dtype == torch.bfloat16, name
        assert torch.isfinite(out).all(), name


def test_linear_guard_and_bad_stride():
    q, k, v, fq, fk = make_inputs(1, 2, 3, 1, 4, 4)
    stats = AttentionStats()
    out = linear_attention(q, k, v, -fq, fk, stats=stats, **GEOMETRY)
    assert torch.isfinite(out).all() and stats.guarded_rows == stats.total_rows == 6
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        uniform_hybrid_attention(q, k, v, fq, fk, stride=0)
    with pytest.raises(ValueError, match="chunk_frames must be >= 1"):
        local_attention(q, k, v, fq, fk, frame_tokens=3, chunk_frames=0, overlap_frames=0)
