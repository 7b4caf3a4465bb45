"""``ReHyAtConfig.anchor_frames`` (docs/method.md §2.1): validated, saved, and run by the processor in both
modes (the recurrent mode equals the parallel one)."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import converted, run, tiny_inputs, tiny_wan

from rehyat import ReHyAtConfig, recurrent_forward

from conftest import rel_err


def test_anchor_frames_is_validated_and_round_trips():
    config = ReHyAtConfig(chunk_frames=1, overlap_frames=3, anchor_frames=1)
    assert ReHyAtConfig.from_json(config.to_json()) == config
    assert ReHyAtConfig.from_dict({"chunk_frames": 2}).anchor_frames == 0  # older configs load
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="anchor_frames"):
            ReHyAtConfig(anchor_frames=bad)
    with pytest.raises(ValueError, match="needs attention='hybrid'"):
        ReHyAtConfig(anchor_frames=1, attention="local")


def test_the_processor_runs_the_anchor_in_both_modes():
    model = tiny_wan(num_layers=2)
    hidden, timestep, context = tiny_inputs(batch=1)
    plain = run(
        converted(model, chunk_frames=1, overlap_frames=1, feature_init="random"), hidden, timestep, context
    )
    net = converted(model, chunk_frames=1, overlap_frames=1, feature_init="random", anchor_frames=1)
    parallel = run(net, hidden, timestep, context)
    assert rel_err(parallel, plain) > 1e-4  # the anchor reaches the op
    with torch.no_grad():
        assert rel_err(recurrent_forward(net, hidden, timestep, context), parallel) <= 1e-4


def test_the_anchor_holds_across_calls_of_several_chunks():
    """With chunks_per_call > 1 the anchor frames arrive inside a call of several chunks and stay in the
    state for the calls after it."""
    net = converted(
        tiny_wan(num_layers=2), chunk_frames=1, overlap_frames=1, feature_init="random", anchor_frames=2
    )
    hidden, timestep, context = tiny_inputs(batch=1)
    parallel = run(net, hidden, timestep, context)
    with torch.no_grad():
        for per_call in (2, 3):
            recurrent = recurrent_forward(net, hidden, timestep, context, chunks_per_call=per_call)
            assert rel_err(recurrent, parallel) <= 1e-4
