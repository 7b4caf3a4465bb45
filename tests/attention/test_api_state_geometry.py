"""A streaming state records the geometry it was made with and rejects a step that differs. Each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

from rehyat import hybrid_attention_step

from conftest import make_inputs

STEP = dict(frame_tokens=3, overlap_frames=1, backend="torch")


def _first_state(**overrides):
    q, k, v, fq, fk = make_inputs(1, 2, 3, 2, 4, 6, seed=8)
    kwargs = {**STEP, **overrides}
    return hybrid_attention_step(q, k, v, fq, fk, None, **kwargs)[1], (q, k, v, fq, fk)


def test_state_records_its_geometry():
    state, (q, *_) = _first_state(overlap_frames=1)
    assert (state.frame_tokens, state.overlap_frames) == (3, 1)
    assert (state.batch_size, state.heads, state.head_dim, state.feature_dim) == (1, 2, 4, 6)
    assert state.dtype == torch.float64 and state.device == q.device


def test_state_rejects_another_overlap():
    """A state made with overlap_frames=1 used to accept a step with overlap_frames=3."""
    state, inputs = _first_state(overlap_frames=1)
    with pytest.raises(ValueError, match="overlap_frames = 1 but this step has overlap_frames = 3"):
        hybrid_attention_step(*inputs, state, **{**STEP, "overlap_frames": 3})


def test_state_without_cached_frames_rejects_another_frame_size():
    """With overlap 0 nothing is cached, so the cache's size could not tell a frame-size change."""
    state, inputs = _first_state(overlap_frames=0)
    with pytest.raises(ValueError, match="frame_tokens = 3 but this chunk has frame_tokens = 2"):
        hybrid_attention_step(*[x[:, :4] for x in inputs], state, frame_tokens=2, overlap_frames=0)


@pytest.mark.parametrize(
    "shape,message",
    [
        ((2, 2, 2, 4, 6), "batch size 1 but this chunk has 2"),
        ((1, 2, 3, 4, 6), "heads 2 but this chunk has 3"),
        ((1, 2, 2, 8, 6), "head dim 4 but this chunk has 8"),
        ((1, 2, 2, 4, 8), "feature dim 6 but this chunk has 8"),
    ],
)
def test_state_names_the_dimension_that_differs(shape, message):
    state, _ = _first_state(overlap_frames=1)
    batch, frames, heads, dim, feat = shape
    inputs = make_inputs(batch, frames, 3, heads, dim, feat, seed=1)
    with pytest.raises(ValueError, match=message):
        hybrid_attention_step(*inputs, state, **STEP)


def test_state_rejects_another_dtype():
    state, inputs = _first_state()
    with pytest.raises(ValueError, match=r"state holds torch\.float64"):
        hybrid_attention_step(*[x.float() for x in inputs], state, **STEP)
