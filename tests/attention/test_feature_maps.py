"""PolynomialFeatureMap: size, per-head independence, the Taylor initialisation, errors."""

from __future__ import annotations

import math

import pytest
import torch

from rehyat import PolynomialFeatureMap


def test_weight_count_matches_spec():
    phi = PolynomialFeatureMap(12, 128)
    assert phi.num_weights == 1_179_648
    assert phi.num_biases == 12 * 256 * 2
    assert phi.feature_dim == 256
    assert phi(torch.randn(1, 3, 12, 128)).shape == (1, 3, 12, 256)


@pytest.mark.parametrize("degree,layers", [(2, 2), (3, 2), (2, 3), (1, 1), (3, 1)])
def test_equals_a_loop_over_heads(degree, layers):
    phi = PolynomialFeatureMap(3, 4, degree, layers, activation="gelu", init="random").double()
    with torch.no_grad():
        for b in phi.biases:
            b.normal_()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    out = phi(x)
    for h in range(3):
        y = x[:, :, h]
        for i, (w, b) in enumerate(zip(phi.weights, phi.biases, strict=True)):
            y = torch.nn.functional.gelu(y) if i else y
            y = y @ w[h] + b[h]
        parts = y.split(4, dim=-1)
        want = torch.cat([part ** (p + 1) for p, part in enumerate(parts)], dim=-1)
        torch.testing.assert_close(out[:, :, h], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("degree,layers", [(2, 2), (3, 3), (2, 1)])
def test_taylor_init_is_a_diagonal_exp_expansion(activation, degree, layers):
    d, scale = 8, 8**-0.5
    phi = PolynomialFeatureMap(2, d, degree, layers, activation=activation).double()
    phi.reset_parameters()  # initialise again in float64, so the gains are exact to float64
    q, k = torch.randn(2, 1, 4, 2, d, dtype=torch.float64).unbind(0)
    got = torch.einsum("bnhe,bmhe->bhnm", phi(q), phi(k))
    prod = torch.einsum("bnhd,bmhd->bhnmd", q, k) * scale
    want = sum(prod**p / math.factorial(p) for p in range(1, degree + 1)).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    scaled = PolynomialFeatureMap(2, d, degree, layers, activation=activation, kernel_scale=1e-3).double()
    scaled.reset_parameters()
    torch.testing.assert_close(
        torch.einsum("bnhe,bmhe->bhnm", scaled(q), scaled(k)), 1e-3 * want, rtol=1e-10, atol=1e-13
    )
    # The degree-1 part alone is the softmax logit.
    first = torch.einsum("bnhe,bmhe->bhnm", phi(q)[..., :d], phi(k)[..., :d])
    torch.testing.assert_close(first, prod.sum(-1), rtol=1e-10, atol=1e-10)


def test_heads_are_independent_and_trainable():
    phi = PolynomialFeatureMap(2, 4)
    x = torch.randn(1, 6, 2, 4)
    before = phi(x)
    with torch.no_grad():
        phi.weights[0][1].add_(1.0)
    after = phi(x)
    assert torch.equal(before[:, :, 0], after[:, :, 0]) and not torch.equal(before[:, :, 1], after[:, :, 1])
    after.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in phi.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        PolynomialFeatureMap(0, 4)
    with pytest.raises(ValueError, match="kernel_scale must be a positive number"):
        PolynomialFeatureMap(2, 4, kernel_scale=0.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        PolynomialFeatureMap(2, 4, activation="tanh")
    with pytest.raises(ValueError, match="needs degree >= 2"):
        PolynomialFeatureMap(2, 4, degree=1, num_layers=2)
    with pytest.raises(ValueError, match=r"expected input \[B, N, 2, 4\]"):
        PolynomialFeatureMap(2, 4)(torch.randn(1, 3, 2, 5))
    assert PolynomialFeatureMap(2, 4, degree=1, num_layers=2, init="random").feature_dim == 4


def test_output_dtype_follows_the_input_under_autocast():
    """Under CUDA autocast pow runs in fp32; the map must still hand the attention op q's dtype."""
    phi = PolynomialFeatureMap(2, 4)
    x = torch.randn(1, 3, 2, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert phi(x).dtype == torch.bfloat16
    assert phi(x.float()).dtype == torch.float32


@pytest.mark.parametrize("degree,layers", [(2, 2), (3, 2), (1, 1)])
def test_nonnegative_map_uses_even_powers_and_never_cancels(degree, layers):
    d, scale = 8, 8**-0.5
    phi = PolynomialFeatureMap(2, d, degree, layers, nonnegative=True, init="random").double()
    assert phi.exponents == tuple(2 * p for p in range(1, degree + 1))
    q, k = torch.randn(2, 1, 32, 2, d, dtype=torch.float64).unbind(0)
    assert (phi(q) >= 0).all() and (torch.einsum("bnhe,bmhe->bhnm", phi(q), phi(k)) >= 0).all()
    # Taylor init: part p is the degree-2p term of a diagonal exp expansion.
    taylor = PolynomialFeatureMap(2, d, degree, layers, nonnegative=True, kernel_scale=1e-2).double()
    taylor.reset_parameters()
    prod = torch.einsum("bnhd,bmhd->bhnmd", q, k) * scale
    want = 1e-2 * sum(prod**e / math.factorial(e) for e in taylor.exponents).sum(-1)
    got = torch.einsum("bnhe,bmhe->bhnm", taylor(q), taylor(k))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="nonnegative must be a bool"):
        PolynomialFeatureMap(2, d, nonnegative=1)


def test_nonnegative_parts_start_and_train_apart():
    """Distinct even powers: with equal powers the Taylor init would make the parts identical, and
    identical parts get identical gradients forever (half of D' wasted)."""
    torch.manual_seed(0)
    phi = PolynomialFeatureMap(2, 8, nonnegative=True, kernel_scale=1e-2)
    x = torch.randn(1, 16, 2, 8)
    first, second = phi(x).split(8, dim=-1)
    assert not torch.allclose(first, second)
    optimiser = torch.optim.AdamW(phi.parameters(), lr=1e-2)
    phi(x).sin().sum().backward()
    optimiser.step()
    last = phi.weights[-1]
    assert not torch.allclose(last[..., :8], last[..., 8:] * last[..., :8].norm() / last[..., 8:].norm())
    assert "nonnegative=True" in repr(phi)
