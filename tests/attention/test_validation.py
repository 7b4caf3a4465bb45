"""Bad input gets a ValueError naming what is wrong; the denominator guard fires and is counted."""

from __future__ import annotations

import pytest
import torch

from rehyat import AttentionStats, hybrid_attention, hybrid_attention_step, recurrent_hybrid_attention
from rehyat.attention import DENOMINATOR_EPS

from conftest import dense_oracle, make_inputs

OPS = [
    lambda *x, **kw: hybrid_attention(*x, **kw),
    lambda *x, **kw: recurrent_hybrid_attention(*x, **kw),
]


def _inputs():
    return list(make_inputs(1, 4, 3, 2, 4, 6, dtype=torch.float32))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda x: x.__setitem__(slice(None), [t[:, :-1] for t in x]),
            "must be a positive multiple of frame_tokens",
        ),
        (lambda x: x.__setitem__(1, x[1][:, :, :1]), "k has shape"),
        (lambda x: x.__setitem__(2, x[2][..., :2]), "v has shape"),
        (lambda x: x.__setitem__(3, x[3][:, :, :1]), "fq has shape"),
        (lambda x: x.__setitem__(4, x[4][..., :3]), "fq and fk feature dims differ"),
        (lambda x: x.__setitem__(1, x[1].double()), "k has dtype"),
        (lambda x: x.__setitem__(3, x[3].half()), "fq has dtype"),
        (lambda x: x.__setitem__(2, x[2][0]), "v must have 4 dims"),
        (lambda x: x.__setitem__(0, x[0].int()), "q must be a floating-point"),
        (lambda x: x.__setitem__(4, x[4].to("meta")), "fk is on meta"),
    ],
)
def test_bad_tensors_raise(op, change, message):
    xs = _inputs()
    change(xs)
    with pytest.raises(ValueError, match=message):
        op(*xs, frame_tokens=3, chunk_frames=2, overlap_frames=1)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(frame_tokens=3, chunk_frames=0, overlap_frames=1), "chunk_frames must be >= 1"),
        (dict(frame_tokens=3, chunk_frames=2, overlap_frames=-1), "overlap_frames must be >= 0"),
        (dict(frame_tokens=0, chunk_frames=2, overlap_frames=1), "frame_tokens must be >= 1"),
        (dict(frame_tokens=5, chunk_frames=2, overlap_frames=1), "multiple of frame_tokens = 5"),
        (dict(frame_tokens=3, chunk_frames=2.0, overlap_frames=1), "chunk_frames must be an int"),
        (dict(frame_tokens=3, chunk_frames=2, overlap_frames=1, scale=-1.0), "scale must be a positive"),
    ],
)
def test_bad_geometry_raises(op, kwargs, message):
    with pytest.raises(ValueError, match=message):
        op(*_inputs(), **kwargs)


def test_step_validates_too():
    xs = _inputs()
    with pytest.raises(ValueError, match="overlap_frames must be >= 0"):
        hybrid_attention_step(*xs, None, frame_tokens=3, overlap_frames=-2)


@pytest.mark.parametrize("causal", [True, False])
def test_denominator_guard_fires_and_is_counted(causal):
    """Strongly negative linear weights make nS + nL < eps·nS: those rows divide by eps·nS instead."""
    q, k, v, fq, fk = make_inputs(1, 6, 2, 2, 4, 4, seed=3)
    fq_signed = fq.clone()
    fq_signed[:, 8:, 0] *= -50.0  # head 0, frames 4..5: its linear part is large and negative
    kwargs = dict(frame_tokens=2, chunk_frames=2, overlap_frames=0, causal=causal)
    stats = AttentionStats()
    out = hybrid_attention(q, k, v, fq_signed, fk, stats=stats, **kwargs)
    assert torch.isfinite(out).all()
    assert stats.total_rows == 12 * 2
    assert stats.guarded_rows >= 4  # at least the 4 query rows of head 0 in the last chunk
    assert 0 < stats.guarded_fraction < 1
    # The guarded value is exactly (aS + aL) / (eps · nS), as the oracle computes it.
    torch.testing.assert_close(out, dense_oracle(q, k, v, fq_signed, fk, **kwargs), rtol=1e-10, atol=0)
    clean = AttentionStats()
    hybrid_attention(q, k, v, fq, fk, stats=clean, **kwargs)
    assert clean.guarded_rows == 0 and clean.total_rows == 24
    if causal:
        rec_stats = AttentionStats()
        recurrent_hybrid_attention(
            q, k, v, fq_signed, fk, stats=rec_stats, frame_tokens=2, chunk_frames=2, overlap_frames=0
        )
        assert (rec_stats.total_rows, rec_stats.guarded_rows) == (stats.total_rows, stats.guarded_rows)
    assert DENOMINATOR_EPS > 0


def test_stats_ignore_padding_rows():
    q, k, v, fq, fk = make_inputs(1, 7, 2, 1, 4, 4)  # 7 frames, Tc = 3: the last chunk is padded
    stats = AttentionStats()
    hybrid_attention(q, k, v, fq, fk, frame_tokens=2, chunk_frames=3, overlap_frames=1, stats=stats)
    assert stats.total_rows == 14
