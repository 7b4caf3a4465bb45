"""φ in fp16: features beyond the fp16 range are a clear error, not inf. Each test failed before its fix."""

from __future__ import annotations

import copy

import pytest
import torch

from rehyat import PolynomialFeatureMap

from conftest import rel_err


def _phi(**kwargs):
    return PolynomialFeatureMap(2, 16, backend="torch", **kwargs).half()


def test_fp16_feature_overflow_is_a_clear_error():
    """|x| ≳ 800 made the default φ return inf in fp16 (and the attention output inf or NaN)."""
    x = torch.full((1, 3, 2, 16), 1000.0, dtype=torch.float16)
    with pytest.raises(ValueError, match="overflow float16"):
        _phi()(x)


def test_fp16_features_in_range_are_finite_and_close_to_fp32():
    x = (torch.randn(1, 5, 2, 16, generator=torch.Generator().manual_seed(0)) * 100).half()
    phi = _phi()
    got = phi(x)
    want = copy.deepcopy(phi).float()(x.float())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert rel_err(got, want) <= 1e-3


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fp16_overflow_is_caught_on_both_backends(backend, monkeypatch):
    """The fused φ kernel writes float16 as well; its output goes through the same check (the kernel
    itself is stood in for here: its own tests run it)."""
    phi = _phi()
    x = torch.full((1, 3, 2, 16), 1000.0, dtype=torch.float16)
    if backend == "triton":
        in_fp32 = copy.deepcopy(phi).float()
        monkeypatch.setattr(phi, "resolve_backend", lambda *_: "triton")
        monkeypatch.setattr(phi, "_forward_triton", lambda inputs: in_fp32(inputs.float()).half())
    with pytest.raises(ValueError, match="overflow float16"):
        phi(x)


def test_fp16_non_finite_input_is_passed_through_not_reported_as_overflow():
    x = torch.zeros(1, 3, 2, 16, dtype=torch.float16)
    x[0, 1, 0, 3] = float("nan")
    features = _phi()(x)
    assert features[0, 1, 0].isnan().any() and torch.isfinite(features[0, 0]).all()
