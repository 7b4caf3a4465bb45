"""Baseline attention variants inside a converted Wan model (``ReHyAtConfig.attention``), for ablations."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import converted, run, tiny_inputs, tiny_wan

from rehyat import ReHyAtConfig, load_rehyat, recurrent_forward, save_rehyat

from conftest import rel_err


@pytest.mark.parametrize(
    "config",
    [
        dict(attention="local", chunk_frames=100),  # one chunk: local softmax is full softmax
        dict(attention="uniform_hybrid", uniform_stride=1),  # every token gets softmax: no linear keys
    ],
)
def test_variants_reduce_to_the_original_where_they_must(config):
    model = tiny_wan()
    inputs = tiny_inputs()
    assert rel_err(run(converted(model, **config), *inputs), run(model, *inputs)) <= 1e-5


@pytest.mark.parametrize("attention", ["local", "linear", "uniform_hybrid"])
def test_variants_train_save_load_and_refuse_recurrence(attention, tmp_path):
    model = converted(tiny_wan(), attention=attention, chunk_frames=2)
    has_phi = attention != "local"
    assert any("rehyat_phi" in n for n, _ in model.named_parameters()) == has_phi
    hidden, timestep, context = tiny_inputs()
    model(hidden, timestep, context, return_dict=False)[0].square().mean().backward()
    if has_phi:
        assert model.blocks[0].attn1.rehyat_phi_q.weights[0].grad.abs().sum() > 0
    save_rehyat(model, tmp_path / "ckpt")
    loaded = load_rehyat(tiny_wan(), tmp_path / "ckpt")
    assert torch.equal(run(loaded, hidden, timestep, context), run(model, hidden, timestep, context))
    with pytest.raises(ValueError, match="baseline"):
        recurrent_forward(model, hidden, timestep, context)


def test_bad_variant():
    with pytest.raises(ValueError, match="attention must be one of"):
        ReHyAtConfig(attention="sparse")
    with pytest.raises(ValueError, match="uniform_stride must be >= 1"):
        ReHyAtConfig(attention="uniform_hybrid", uniform_stride=0)
