"""Learned feature maps φ for the linear part (docs/method.md §5): per-head polynomial MLPs.

Per head, ``x ∈ R^D`` goes through ``num_layers`` linear layers (D → P·D → … → P·D, activation between)
whose output splits into P parts ψ_1..ψ_P of size D; ``φ(x) = [ψ_1(x)^1, ψ_2(x)^2, …, ψ_P(x)^P]`` with
D' = P·D. Heads have separate weights, applied as one batched matmul over heads (no loop over heads).

Choices the paper leaves open (documented here, compared by distillation error in the training tools):
- activation: ReLU by default; GELU and SiLU available. All three satisfy act(x) − act(−x) = x, which
  the ``"taylor"`` initialisation uses to pass x through the hidden layers exactly.
- bias: on, initialised to zero; ``num_weights`` counts weights without biases (1,179,648 per map at
  12 heads × 128, P = 2, two layers), ``num_biases`` counts biases separately.
- init ``"taylor"`` (default): ψ_p(x) = a_p · x with a_p = (κ · scale^p / p!)^(1/2p), so that
  φ(q)·φ(k) = κ · Σ_p Σ_m (scale · q_m k_m)^p / p! — a per-coordinate Taylor expansion of exp(q·k·scale)
  without its constant term (degree-1 part: the softmax logit), times ``kernel_scale`` κ. The linear
  part is not rescaled by exp(−row max) (docs/method.md §3), so far keys should weigh about exp(s − c) ≪ 1:
  a converted model starts best with κ ≪ 1 (near local attention; ``ReHyAtConfig`` uses 1e-3), since
  κ = 1 lets the signed degree-1 sums over thousands of keys swamp or cancel the softmax normaliser. Hidden layers carry
  x through as [act(x), act(−x)]; this needs P ≥ 2 when there are two or more layers.
  ``"random"``: PyTorch's default (Kaiming-uniform) initialisation.
- ``nonnegative=True``: part p gets the even power 2p (P = 2: φ = [ψ_1², ψ_2⁴]; the "taylor" init then
  gives the even terms κ · Σ_p Σ_m (scale · q_m k_m)^2p / (2p)!), so φq·φk ≥ 0 and the linear part can
  never cancel the softmax normaliser (den ≥ nS ≥ 1). The paper's signed
  degree-1 part can, which on held-out inputs shows up as a few rows with a tiny denominator; the toy
  quality table compares both. The fused φ kernel computes these even powers too (forward and backward).

Backends: ``backend="auto"`` (default) runs φ as one fused Triton kernel per direction
(:mod:`rehyat.attention.kernels.feature_map_kernel`: no hidden activation in HBM) on CUDA when Triton is
installed and the map is supported (1 or 2 layers, degree ≤ 4, head dim a power of two in [16, 128],
float16/bfloat16/float32), else the PyTorch path (:func:`rehyat.attention.hybrid.custom_ops.torch_feature_map`),
which stays the reference. ``"torch"`` forces PyTorch; ``"triton"`` forces the kernels and raises if they
cannot run (on CPU they need ``TRITON_INTERPRET=1``). Under autocast a float32 input runs in the autocast
dtype, as the einsums would. Both run as the ``rehyat::feature_map`` custom op in inference and under
``torch.compile`` (:mod:`rehyat.attention.hybrid.custom_ops`).
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch
from torch import Tensor, nn

from rehyat.attention.hybrid.common import check_bool
from rehyat.attention.hybrid.custom_ops import FEATURE_ACTIVATIONS, feature_map

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_KERNEL_MAX_DEGREE = 4
_KERNEL_MAX_HEAD_DIM = 128


def kernel_unsupported_reason(phi: PolynomialFeatureMap, x: Tensor) -> str | None:
    """Why the fused φ kernel cannot take this map and input, or None if it can."""
    from rehyat.attention.kernels import interpreting

    d = phi.head_dim
    if phi.num_layers > 2:
        return f"num_layers {phi.num_layers} (the φ kernel takes 1 or 2 layers)"
    if phi.degree > _KERNEL_MAX_DEGREE:
        return f"degree {phi.degree} (the φ kernel takes degree <= {_KERNEL_MAX_DEGREE})"
    if d < 16 or d > _KERNEL_MAX_HEAD_DIM or d & (d - 1):
        # [D, D] weight tiles and P fp32 accumulators of [block, D] per program: 256 does not fit.
        return f"head dim {d} (the φ kernel takes a power of two in [16, {_KERNEL_MAX_HEAD_DIM}])"
    if x.dtype not in _KERNEL_DTYPES:
        return f"dtype {x.dtype} (the φ kernel takes float16, bfloat16, float32)"
    if x.device.type != "cuda" and not interpreting():
        return f"device {x.device} (the φ kernel needs CUDA, or TRITON_INTERPRET=1 on CPU)"
    return None


def check_fp16_range(x: Tensor, features: Tensor) -> Tensor:
    """``features`` unless they are float16 and a token with finite input got non-finite features: the
    powers ψ_p^p outgrow the float16 range (65504) long before the input does (|x| ≈ 500–800 for the
    "taylor" init at D = 128), and inf features make the attention output inf or NaN. Costs one
    reduction and a device sync per float16 call; other dtypes are not checked (fp32 range)."""
    if features.dtype != torch.float16:
        return features
    overflow = ~torch.isfinite(features).all(dim=-1) & torch.isfinite(x).all(dim=-1)
    if overflow.any():
        largest = x[overflow].abs().max().item()
        raise ValueError(
            f"PolynomialFeatureMap: the features overflow float16 (|φ(x)| > 65504) for "
            f"{int(overflow.sum())} token-head row(s) with finite input (their largest |x| is {largest:g}). "
            "Run φ and the attention in bfloat16 or float32 (the op accumulates in fp32 either way), or "
            "keep q and k smaller (e.g. the QK RMSNorm before φ)."
        )
    return features


class PolynomialFeatureMap(nn.Module):
    """φ: [B, N, H, D] -> [B, N, H, degree·D] in the input's dtype, separate weights per head.

    In float16 a token whose finite input gives non-finite features (the powers outgrow 65504) is a
    ``ValueError`` on both backends; non-finite inputs pass through unchecked."""

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        degree: int = 2,
        num_layers: int = 2,
        *,
        activation: Literal["relu", "gelu", "silu"] = "relu",
        bias: bool = True,
        init: Literal["taylor", "random"] = "taylor",
        scale: float | None = None,
        kernel_scale: float = 1.0,
        nonnegative: bool = False,
        backend: Literal["auto", "torch", "triton"] = "auto",
    ) -> None:
        super().__init__()
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be one of ('auto', 'torch', 'triton'), got {backend!r}")
        #: "auto" | "torch" | "triton" (not part of the state dict); ``forward(backend=...)`` overrides it.
        self.backend = backend
        for name, value in (
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("degree", degree),
            ("num_layers", num_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if activation not in FEATURE_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(FEATURE_ACTIVATIONS)}, got {activation!r}")
        if init not in ("taylor", "random"):
            raise ValueError(f"init must be 'taylor' or 'random', got {init!r}")
        if init == "taylor" and num_layers > 1 and degree < 2:
            raise ValueError(
                "init='taylor' with num_layers > 1 needs degree >= 2 (the identity path needs 2·D hidden width)"
            )
        check_bool("bias", bias)
        check_bool("nonnegative", nonnegative)
        self.num_heads, self.head_dim, self.degree, self.num_layers = num_heads, head_dim, degree, num_layers
        self.nonnegative = nonnegative
        #: Power of each part ψ_p: p, or with ``nonnegative`` 2p (φq·φk ≥ 0). Distinct powers keep the
        #: parts distinct: equal powers would start (Taylor init) and stay identical under training.
        self.exponents = tuple(2 * p if nonnegative else p for p in range(1, degree + 1))
        self.activation = activation
        if not (isinstance(kernel_scale, (int, float)) and math.isfinite(kernel_scale) and kernel_scale > 0):
            raise ValueError(f"kernel_scale must be a positive number, got {kernel_scale!r}")
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.kernel_scale = float(kernel_scale)
        width = degree * head_dim
        dims = [head_dim] + [width] * num_layers
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_heads, d_in, d_out)) for d_in, d_out in itertools.pairwise(dims)
        )
        self.biases = (
            nn.ParameterList(nn.Parameter(torch.zeros(num_heads, d_out)) for d_out in dims[1:])
            if bias
            else None
        )
        self.init = init
        self.reset_parameters()

    @property
    def feature_dim(self) -> int:
        return self.degree * self.head_dim

    @property
    def num_weights(self) -> int:
        return sum(w.numel() for w in self.weights)

    @property
    def num_biases(self) -> int:
        return 0 if self.biases is None else sum(b.numel() for b in self.biases)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.biases is not None:
            for b in self.biases:
                b.zero_()
        if self.init == "random":
            for w in self.weights:
                bound = 1.0 / math.sqrt(w.shape[1])
                w.uniform_(-bound, bound)
            return
        d = self.head_dim
        gains = [
            (self.kernel_scale * self.scale**e / math.factorial(e)) ** (1.0 / (2 * e)) for e in self.exponents
        ]
        last = len(self.weights) - 1
        for index, w in enumerate(self.weights):
            w.zero_()
            eye = torch.eye(d, dtype=w.dtype, device=w.device)
            if index == last:
                # Input of the last layer is x (one layer) or [act(x), act(-x)]; output ψ_p = a_p·x.
                for p, gain in enumerate(gains):
                    w[:, :d, p * d : (p + 1) * d] = gain * eye
                    if last > 0:
                        w[:, d : 2 * d, p * d : (p + 1) * d] = -gain * eye
            elif index == 0:
                w[:, :, :d] = eye
                w[:, :, d : 2 * d] = -eye
            else:
                # [act(x), act(-x)] -> pre-activations [x, -x], so the next activation repeats the pair.
                w[:, :d, :d] = eye
                w[:, d : 2 * d, :d] = -eye
                w[:, :d, d : 2 * d] = -eye
                w[:, d : 2 * d, d : 2 * d] = eye

    def resolve_backend(self, x: Tensor, backend: str | None = None) -> Literal["torch", "triton"]:
        """The implementation ``forward`` uses for x: "triton" or "torch" (raises if "triton" can't run)."""
        from rehyat.attention.kernels import choose_backend

        backend = self.backend if backend is None else backend
        return choose_backend(backend, x.device, lambda: kernel_unsupported_reason(self, x))

    def forward(self, x: Tensor, *, backend: Literal["auto", "torch", "triton"] | None = None) -> Tensor:
        if x.dim() != 4 or x.shape[2] != self.num_heads or x.shape[3] != self.head_dim:
            raise ValueError(
                f"expected input [B, N, {self.num_heads}, {self.head_dim}], got {tuple(x.shape)}"
            )
        if self.resolve_backend(x, backend) == "triton":
            features = self._forward_triton(x)
        else:
            features = self._run(x, "torch")
        # A host sync in float16 only: under torch.compile a graph break there, none in bf16/fp32.
        return check_fp16_range(x, features)

    def _forward_triton(self, x: Tensor) -> Tensor:
        return self._run(x, "triton")

    def _run(self, x: Tensor, backend: Literal["torch", "triton"]) -> Tensor:
        """φ(x) through :func:`rehyat.attention.hybrid.custom_ops.feature_map` (the ``rehyat::feature_map`` op
        in inference and under ``torch.compile``)."""
        return feature_map(
            x,
            list(self.weights),
            [] if self.biases is None else list(self.biases),
            degree=self.degree,
            activation=self.activation,
            nonnegative=self.nonnegative,
            backend=backend,
        )

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, degree={self.degree}, "
            f"num_layers={self.num_layers}, activation={self.activation}, init={self.init}, "
            f"kernel_scale={self.kernel_scale:g}, nonnegative={self.nonnegative}"
        )
