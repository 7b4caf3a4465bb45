"""``ReHyAtConfig``: how a DiT is converted to ReHyAt attention (a JSON-serialisable dataclass)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from rehyat.attention import Geometry, PolynomialFeatureMap
from rehyat.utils import check_int

_ACTIVATIONS = ("relu", "gelu", "silu")
_ATTENTIONS = ("hybrid", "local", "linear", "uniform_hybrid")
_INITS = ("taylor", "random")
_FEATURE_ROTARIES = ("full", "spatial")


def _index_tuple(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of block indices, got {value!r}")
    for index in value:
        check_int(f"{name} entry", index, 0)
    if len(set(value)) != len(value):
        raise ValueError(f"{name} has repeated block indices: {list(value)}")
    return tuple(value)


@dataclass(frozen=True)
class ReHyAtConfig:
    """Which self-attention blocks become ReHyAt and with what chunking and feature maps.

    Attributes:
        chunk_frames: Tc, latent frames per chunk (after patching).
        overlap_frames: To, frames before a chunk that it also attends to with softmax.
        causal: linear part over past frames only (needed by the recurrent forward) or bidirectional.
        blocks: ``"all"``, a list of block indices, or an int k = the k blocks ranked best in
            ``block_ranking`` (block indices ordered by stage-1 distillation error, lowest first).
        block_ranking: ranking used when ``blocks`` is an int; ignored otherwise.
        attention: ``"hybrid"`` (ReHyAt), or a baseline of :mod:`rehyat.baselines` in the same blocks
            for ablations: ``"local"`` (chunk softmax only, no φ), ``"linear"`` (φ on all keys up to the
            query's frame with ``causal``, else all keys), ``"uniform_hybrid"`` (Attention Surgery:
            softmax on every ``uniform_stride``-th token). Only ``"hybrid"`` has a recurrent forward.
        feature_kernel_scale: κ of the "taylor" initialisation (φq·φk starts as κ × a Taylor
            expansion of exp(s)); small κ starts the converted model close to local attention.
        feature_nonnegative: even powers 2p only, φq·φk ≥ 0 (see :class:`~rehyat.PolynomialFeatureMap`);
            the default. False is the paper's signed φ (:meth:`paper`).
        feature_degree, feature_layers, feature_activation, feature_bias, feature_init: the
            :class:`~rehyat.PolynomialFeatureMap` of every converted block (φq and φk alike).
        feature_rotary: what φq, φk read. ``"full"`` (the paper's, docs/method.md §5): q and k as the
            softmax part sees them, after the whole 3D RoPE. ``"spatial"`` (the default): the same q and k with the temporal part of
            the RoPE undone, so φ sees where a token is in its frame but not which frame it is in: a
            video longer than the training clips then gives φ no rotation it has not seen (the
            softmax part, which depends only on relative positions, keeps the full RoPE).
        anchor_frames: A, the first latent frames kept in every chunk's softmax window as an anchor
            and left out of the linear state (docs/method.md §2.1); 0 (the default) is plain ReHyAt.
            Only ``attention="hybrid"`` has it.
        first_chunk_frames: F0, the latent frames of the video's first chunk when it differs from
            ``chunk_frames`` (causal, ``attention="hybrid"`` only): chunks [0, F0), then ``chunk_frames``
            at a time, so the first frames are attended jointly (docs/method.md §2.1); 0 (the default):
            every chunk ``chunk_frames``.
    """

    chunk_frames: int = 3
    overlap_frames: int = 1
    causal: bool = True
    blocks: str | int | tuple[int, ...] = "all"
    block_ranking: tuple[int, ...] | None = None
    feature_degree: int = 2
    feature_layers: int = 2
    feature_activation: str = "relu"
    feature_bias: bool = True
    feature_init: str = "taylor"
    feature_kernel_scale: float = 1e-3
    feature_nonnegative: bool = True
    feature_rotary: str = "spatial"
    attention: str = "hybrid"
    uniform_stride: int = 2
    anchor_frames: int = 0
    first_chunk_frames: int = 0

    def __post_init__(self) -> None:
        check_int("chunk_frames", self.chunk_frames, 1)
        check_int("overlap_frames", self.overlap_frames, 0)
        check_int("feature_degree", self.feature_degree, 1)
        check_int("feature_layers", self.feature_layers, 1)
        check_int("uniform_stride", self.uniform_stride, 1)
        check_int("anchor_frames", self.anchor_frames, 0)
        check_int("first_chunk_frames", self.first_chunk_frames, 0)
        if self.attention not in _ATTENTIONS:
            raise ValueError(f"attention must be one of {_ATTENTIONS}, got {self.attention!r}")
        if self.anchor_frames and self.attention != "hybrid":
            raise ValueError(
                f"anchor_frames={self.anchor_frames} needs attention='hybrid' (the baselines have no anchor), "
                f"got attention={self.attention!r}"
            )
        for name in ("causal", "feature_bias", "feature_nonnegative"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.first_chunk_frames and (self.attention != "hybrid" or not self.causal):
            raise ValueError(
                f"first_chunk_frames={self.first_chunk_frames} needs attention='hybrid' and causal=True, got "
                f"attention={self.attention!r}, causal={self.causal}"
            )
        if self.feature_activation not in _ACTIVATIONS:
            raise ValueError(
                f"feature_activation must be one of {_ACTIVATIONS}, got {self.feature_activation!r}"
            )
        if (
            isinstance(self.feature_kernel_scale, bool)
            or not isinstance(self.feature_kernel_scale, (int, float))
            or not self.feature_kernel_scale > 0
        ):
            raise ValueError(
                f"feature_kernel_scale must be a positive number, got {self.feature_kernel_scale!r}"
            )
        if self.feature_rotary not in _FEATURE_ROTARIES:
            raise ValueError(
                f"feature_rotary must be one of {_FEATURE_ROTARIES}, got {self.feature_rotary!r}"
            )
        if self.feature_init not in _INITS:
            raise ValueError(f"feature_init must be one of {_INITS}, got {self.feature_init!r}")
        if isinstance(self.blocks, str):
            if self.blocks != "all":
                raise ValueError(f"blocks must be 'all', an int or a list of indices, got {self.blocks!r}")
        elif isinstance(self.blocks, int) and not isinstance(self.blocks, bool):
            check_int("blocks", self.blocks, 1)
            if self.block_ranking is None:
                raise ValueError(
                    f"blocks={self.blocks} means 'the {self.blocks} lowest-error blocks' and needs "
                    "block_ranking (block indices ordered by distillation error)"
                )
        else:
            indices = _index_tuple("blocks", self.blocks)
            if not indices:
                raise ValueError("blocks must name at least one block")
            object.__setattr__(self, "blocks", indices)
        if self.block_ranking is not None:
            object.__setattr__(self, "block_ranking", _index_tuple("block_ranking", self.block_ranking))

    @classmethod
    def paper(cls, **overrides: Any) -> ReHyAtConfig:
        """The paper's configuration (docs/method.md §5): signed φ = [ψ₁, ψ₂²] on the fully rotated q and k.

        The library's default differs in two measured ways (``bench/results/toybench.md``,
        ``bench/results/stage1_robustness.md``): a non-negative φ, which cannot cancel the softmax
        normaliser, and φ reading q, k without the temporal RoPE, which keeps long videos."""
        return cls(**{"feature_nonnegative": False, "feature_rotary": "full", **overrides})

    def resolve_blocks(self, num_blocks: int) -> list[int]:
        """The sorted block indices to convert in a model of ``num_blocks`` blocks (validated)."""
        if self.blocks == "all":
            return list(range(num_blocks))
        if isinstance(self.blocks, int):
            ranking = self.block_ranking or ()
            if sorted(ranking) != list(range(num_blocks)):
                raise ValueError(
                    f"block_ranking must be a permutation of the model's {num_blocks} block indices, "
                    f"got {list(ranking)}"
                )
            if self.blocks > num_blocks:
                raise ValueError(f"blocks={self.blocks} but the model has only {num_blocks} blocks")
            return sorted(ranking[: self.blocks])
        out_of_range = [i for i in self.blocks if i >= num_blocks]
        if out_of_range:
            raise ValueError(
                f"block indices {out_of_range} are out of range for a model with {num_blocks} blocks"
            )
        return sorted(self.blocks)

    def geometry(self, frame_tokens: int, scale: float | None = None) -> Geometry:
        """The chunk geometry of this config on a layer of ``frame_tokens`` tokens per latent frame:
        ``chunk_frames``, ``overlap_frames``, ``causal``, ``anchor_frames`` and ``first_chunk_frames`` under
        the same names, as
        one :class:`~rehyat.attention.Geometry` that the processors pass on to the op's kernels
        (``scale``: the softmax scale, None for 1/sqrt(head_dim) as the teacher's SDPA uses)."""
        return Geometry(
            frame_tokens,
            self.chunk_frames,
            self.overlap_frames,
            self.causal,
            scale,
            self.anchor_frames,
            self.first_chunk_frames,
        )

    def feature_map(self, num_heads: int, head_dim: int) -> PolynomialFeatureMap:
        """A fresh φ (one of φq, φk) of this config for a layer of ``num_heads`` × ``head_dim``: the one
        factory of feature maps, so every caller gets every ``feature_*`` field."""
        return PolynomialFeatureMap(
            num_heads,
            head_dim,
            self.feature_degree,
            self.feature_layers,
            activation=self.feature_activation,
            bias=self.feature_bias,
            init=self.feature_init,
            nonnegative=self.feature_nonnegative,
            kernel_scale=self.feature_kernel_scale,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("blocks", "block_ranking"):
            if isinstance(data[name], tuple):
                data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReHyAtConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ReHyAtConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ReHyAtConfig:
        return cls.from_dict(json.loads(text))
