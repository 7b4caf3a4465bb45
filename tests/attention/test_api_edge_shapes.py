"""Edge shapes: empty batch or heads give empty results; D = 0, D' = 0 and a wrong state are clear errors. Each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

from rehyat import HybridAttentionState, hybrid_attention, hybrid_attention_step, recurrent_hybrid_attention
from rehyat.baselines import linear_attention, local_attention

from conftest import make_inputs

GEOMETRY = dict(frame_tokens=3, chunk_frames=2, overlap_frames=1)
STEP = dict(frame_tokens=3, overlap_frames=1, backend="torch")


@pytest.mark.parametrize("batch,heads", [(0, 2), (2, 0)])
def test_empty_batch_or_heads_give_empty_results_on_every_form(batch, heads):
    """B = 0 (or H = 0) crashed the recurrent op and the step with a reshape error."""
    inputs = make_inputs(batch, 4, 3, heads, 4, 6)
    parallel = hybrid_attention(*inputs, **GEOMETRY)
    recurrent = recurrent_hybrid_attention(*inputs, **GEOMETRY)
    out, state = hybrid_attention_step(*[x[:, :6] for x in inputs], None, **STEP)
    assert parallel.shape == recurrent.shape == inputs[0].shape
    assert out.shape == (batch, 6, heads, 4) and state.kv.shape == (batch, heads, 6, 4)
    out, state = hybrid_attention_step(*[x[:, 6:] for x in inputs], state, **STEP)
    assert state.frames_seen == 4 and out.shape == (batch, 6, heads, 4)


def test_empty_batch_keeps_autograd_connected():
    inputs = make_inputs(0, 4, 3, 2, 4, 6, requires_grad=True)
    grads = torch.autograd.grad(recurrent_hybrid_attention(*inputs, **GEOMETRY).sum(), inputs)
    assert all(g.shape == x.shape for g, x in zip(grads, inputs, strict=True))


@pytest.mark.parametrize("op", [hybrid_attention, recurrent_hybrid_attention, local_attention])
def test_zero_head_dim_is_a_clear_error(op):
    """D = 0 gave a ZeroDivisionError (from the default scale 1/sqrt(D))."""
    with pytest.raises(ValueError, match=r"head dim D \(q.shape\[-1\]\) must be >= 1"):
        op(*make_inputs(1, 4, 3, 2, 0, 6), **GEOMETRY)


@pytest.mark.parametrize("op", [hybrid_attention, recurrent_hybrid_attention, linear_attention])
def test_zero_feature_dim_is_a_clear_error(op):
    """D' = 0 silently computed local-only attention (or crashed the recurrent op)."""
    with pytest.raises(ValueError, match=r"feature dim D' \(fq.shape\[-1\]\) must be >= 1.*local_attention"):
        op(*make_inputs(1, 4, 3, 2, 4, 0), **GEOMETRY)


@pytest.mark.parametrize("state", [{}, [], "state", 0])
def test_step_state_must_be_a_state_or_none(state):
    """``state={}`` gave an AttributeError."""
    with pytest.raises(ValueError, match="state must be a HybridAttentionState or None"):
        hybrid_attention_step(*make_inputs(1, 2, 3, 2, 4, 6), state, **STEP)


def test_initial_state_is_still_available():
    _, k, v, _, fk = make_inputs(1, 2, 3, 2, 4, 6)
    state = HybridAttentionState.initial(k, v, fk, frame_tokens=3, overlap_frames=1)
    assert state.frames_seen == 0 and state.cached_frames == 0 and state.kv.abs().sum() == 0
