"""Booleans are booleans: ``causal`` (and φ's ``bias``) reject anything but True/False. Each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

from rehyat import PolynomialFeatureMap, hybrid_attention, recurrent_hybrid_attention
from rehyat.baselines import full_attention, linear_attention, local_attention, uniform_hybrid_attention

from conftest import dense_oracle, make_inputs, rel_err

GEOMETRY = dict(frame_tokens=3, chunk_frames=2, overlap_frames=1)
CAUSAL_OPS = {
    "hybrid_attention": hybrid_attention,
    "recurrent_hybrid_attention": recurrent_hybrid_attention,
    "full_attention": full_attention,
    "local_attention": local_attention,
    "linear_attention": linear_attention,
    "uniform_hybrid_attention": uniform_hybrid_attention,
}


@pytest.mark.parametrize("name", list(CAUSAL_OPS))
@pytest.mark.parametrize("value", ["no", "False", None, 0, 1, 1.0, torch.tensor(True)])
def test_causal_must_be_a_bool(name, value):
    """``causal="no"`` used to give the causal result and ``None``/``0`` the bidirectional one."""
    with pytest.raises(ValueError, match="causal must be a bool"):
        CAUSAL_OPS[name](*make_inputs(1, 4, 3, 2, 4, 6), causal=value, **GEOMETRY)


@pytest.mark.parametrize("causal", [True, False])
def test_real_booleans_still_pick_the_variant(causal):
    inputs = make_inputs(1, 5, 3, 2, 4, 6)
    want = dense_oracle(*inputs, causal=causal, **GEOMETRY)
    assert rel_err(hybrid_attention(*inputs, causal=causal, **GEOMETRY), want) <= 1e-10


def test_recurrent_form_takes_causal_true_only():
    inputs = make_inputs(1, 5, 3, 2, 4, 6)
    got = recurrent_hybrid_attention(*inputs, causal=True, **GEOMETRY)
    assert rel_err(got, hybrid_attention(*inputs, **GEOMETRY)) <= 1e-10
    with pytest.raises(ValueError, match="causal only"):
        recurrent_hybrid_attention(*inputs, causal=False, **GEOMETRY)


def test_feature_map_bias_must_be_a_bool():
    with pytest.raises(ValueError, match="bias must be a bool"):
        PolynomialFeatureMap(2, 4, bias="no")
