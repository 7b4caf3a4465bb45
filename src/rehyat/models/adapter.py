"""One converter for the video DiTs in diffusers: the per-family adapter, and what is generic on it.

A :class:`FamilyAdapter` tells ReHyAt, for one family of diffusers video transformers, what differs
between families (docs/method.md §6):

- where the self-attention processors are (``<blocks_attr>[i].<attention_attr>``) and the token-wise
  feed-forwards (``<blocks_attr>[i].<ffn_attr>``);
- which :class:`ReHyAtAttnProcessor` subclass computes q, k and v exactly as the family does (its
  projections, QK norm and RoPE, applied where the family applies it) and undoes the temporal part of
  that RoPE for φ (``feature_rotary="spatial"``);
- how tokens map to frames: the post-patch latent grid (T, H, W) of a forward call, read from its
  arguments (tokens are frame-major, S = H·W per frame), the patch size, and the VAE's temporal
  compression (video frames per latent frame);
- how one forward call is cut into the calls of chunks of frames for the recurrent mode
  (:mod:`rehyat.models.hooks`): the arguments of frames [start, stop), with RoPE at the chunk's absolute
  positions, and the axis along which the chunks' outputs are put together.

Everything else — the runtime that carries the grid to the processors, the attention itself (parallel
and streaming), conversion (:func:`convert_with`) and the queries on a converted model — is written once
here, against this interface. :mod:`rehyat.models.families` lists the families and dispatches to them.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rehyat.attention import AttentionStats, Geometry, HybridAttentionState, PolynomialFeatureMap
from rehyat.attention.hybrid import attend, attend_recurrent, attend_step
from rehyat.attention.kernels import BACKENDS, Backend
from rehyat.baselines import ATTENTION_VARIANTS, call_keywords, uniform_hybrid_attention
from rehyat.models.config import ReHyAtConfig

PHI_Q = "rehyat_phi_q"
PHI_K = "rehyat_phi_k"
RUNTIME_ATTR = "_rehyat_runtime"

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class FamilyAdapter:
    """How ReHyAt reaches into one family of diffusers video transformers (see the module docstring).

    Subclasses implement :meth:`grid`, :meth:`frame_axis` and :meth:`empty_output`, and extend
    :meth:`chunk_call` where a chunk needs more than its slice of the latent and of the timesteps.

    Attributes:
        name: the family's short name (``"wan"``, ``"ltx-video"``, ...).
        class_names: the diffusers classes it converts (a subclass of one of them converts too).
        processor: the :class:`ReHyAtAttnProcessor` subclass that reproduces the family's attention.
        temporal_compression: video frames per latent frame of the family's VAE (Wan 4, LTX-Video 8).
        blocks_attr, attention_attr, ffn_attr: ``transformer.<blocks_attr>[i].<attention_attr>`` is block
            i's self-attention, ``.<ffn_attr>`` its token-wise feed-forward.
        rope_attr: the transformer's RoPE module whose tables the recurrent mode takes at the chunk's
            absolute frames (Wan-style 3D RoPE tables), or None when :meth:`chunk_call` passes the
            positions itself.
        per_frame_timesteps: whether ``timestep`` [B, T] (one per latent frame, diffusion forcing) is
            accepted beside [B] and [B, N] (one per token).
        pipeline_class, text_encoder_class: the family's diffusers text-to-video pipeline and the
            transformers class of its text encoder (stage 1 samples with them, ``rehyat generate`` loads
            them).
    """

    name: str
    class_names: tuple[str, ...]
    processor: type[ReHyAtAttnProcessor]
    temporal_compression: int
    blocks_attr: str = "blocks"
    attention_attr: str = "attn1"
    ffn_attr: str = "ffn"
    rope_attr: str | None = None
    per_frame_timesteps: bool = False
    pipeline_class: str = "WanPipeline"
    text_encoder_class: str = "UMT5EncoderModel"

    # Where things are.
    def matches(self, transformer: nn.Module) -> bool:
        """Whether ``transformer`` is (a subclass of) one of :attr:`class_names`."""
        return any(cls.__name__ in self.class_names for cls in type(transformer).__mro__)

    def blocks(self, transformer: nn.Module) -> nn.ModuleList:
        return getattr(transformer, self.blocks_attr)

    def attention(self, transformer: nn.Module, index: int) -> nn.Module:
        """Block ``index``'s self-attention module."""
        return getattr(self.blocks(transformer)[index], self.attention_attr)

    def attention_path(self, index: int, transformer: nn.Module | None = None) -> str:
        """Block ``index``'s self-attention in ``state_dict()`` names (``transformer`` where the family's
        blocks lie in more than one list)."""
        return f"{self.blocks_attr}.{index}.{self.attention_attr}"

    def feed_forwards(self, transformer: nn.Module) -> list[nn.Module]:
        return [getattr(block, self.ffn_attr) for block in self.blocks(transformer)]

    def rope(self, transformer: nn.Module) -> nn.Module | None:
        return None if self.rope_attr is None else getattr(transformer, self.rope_attr)

    def check_model(self, transformer: nn.Module) -> None:
        """ValueError if this model of the family cannot be converted (a feature ReHyAt does not serve)."""
        if getattr(transformer, "config", None) is None or not hasattr(transformer, self.blocks_attr):
            raise ValueError(
                f"expected a diffusers {' or '.join(self.class_names)}, got {type(transformer).__name__}"
            )

    def check_conversion(self, transformer: nn.Module, config: ReHyAtConfig, blocks: list[int]) -> None:
        """ValueError if ``config`` converting ``blocks`` is not served for this family (before any change)."""

    def check_attention(self, attn: nn.Module, index: int) -> None:
        """ValueError unless block ``index``'s attention is one this family's processor replaces (a plain
        self-attention layer: no context of its own)."""
        if getattr(attn, "is_cross_attention", False) or getattr(attn, "add_k_proj", None) is not None:
            raise ValueError(f"{self.attention_path(index)} is not a plain self-attention layer")

    def install(self, transformer: nn.Module, runtime: ReHyAtRuntime) -> None:
        """What the family adds to a converted model beside its processors (the last step of conversion)."""

    # How tokens map to frames.
    def patch_size(self, transformer: nn.Module) -> tuple[int, int, int]:
        """(p_t, p_h, p_w): latent frames, rows and columns per token."""
        return tuple(transformer.config.patch_size)

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames of a video of ``video_frames`` frames (the first frame alone, then
        :attr:`temporal_compression` frames per latent frame)."""
        return (video_frames - 1) // self.temporal_compression + 1

    def bind(self, transformer: nn.Module, args: tuple, kwargs: dict) -> dict:
        """The arguments of one call of ``transformer``'s forward, by name, defaults applied."""
        bound = _forward_signature(type(transformer)).bind(transformer, *args, **kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
        del call[next(iter(call))]  # self
        return call

    def grid(self, transformer: nn.Module, call: dict) -> Grid:
        """The post-patch latent grid (T, H, W) of the call ``call``; ValueError if it has no frames."""
        raise NotImplementedError

    def frame_axis(self, transformer: nn.Module, grid: Grid) -> tuple[int, int]:
        """(axis, entries per post-patch frame) of the latent input and of the output along which the
        frames lie (Wan: axis 2 of [B, C, F, H, W], p_t entries; LTX: axis 1 of [B, N, C], S)."""
        raise NotImplementedError

    def empty_output(self, transformer: nn.Module, call: dict) -> Tensor:
        """The output of a call with an empty batch (diffusers' forward cannot take B = 0)."""
        raise NotImplementedError

    # Training and sampling: one denoiser call on an unpacked latent [B, C, F, H, W].
    def text_dim(self, transformer: nn.Module) -> int:
        """The width D of the prompt embeddings [B, L, D] the model takes."""
        return transformer.config.text_dim

    def latent_channels(self, transformer: nn.Module) -> int:
        """The channels C of the VAE latent [B, C, F, H, W] the model denoises."""
        return transformer.config.in_channels

    def normalize_latents(self, vae: nn.Module, latents: Tensor) -> Tensor:
        """The VAE's latent [B, C, F, H, W] as the model denoises it: normalised as the family's pipeline
        un-normalises it before decoding (Wan's: (z − latents_mean) / latents_std, from the VAE config)."""
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
        return (latents - mean) / std

    def denoiser_inputs(
        self, transformer: nn.Module, latents: Tensor, timestep: Tensor, prompt_embeds: Tensor
    ) -> dict:
        """The forward arguments (by name) that predict the velocity of ``latents`` [B, C, F, H, W] at
        ``timestep`` [B] (σ·1000) for ``prompt_embeds`` [B, L, D], as the family's pipeline calls it."""
        return dict(hidden_states=latents, timestep=timestep, encoder_hidden_states=prompt_embeds)

    def denoiser_output(self, transformer: nn.Module, output: Tensor, latents: Tensor) -> Tensor:
        """The forward's output as a latent shaped like ``latents`` [B, C, F, H, W]."""
        return output

    def pipeline_prompt_arguments(
        self,
        prompt_embeds: Tensor,
        negative_prompt_embeds: Tensor | None,
        prompt_mask: Tensor | None = None,
        negative_prompt_mask: Tensor | None = None,
    ) -> dict:
        """The pipeline's keyword arguments that pass precomputed prompt embeddings [B, L, D] (and, where
        the family's pipeline takes them, their attention masks [B, L]; Wan's takes none)."""
        return dict(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)

    # The recurrent mode.
    def check_sweep(self, transformer: nn.Module, call: dict, grid: Grid) -> None:
        """ValueError, before any work, if the call cannot be run chunk by chunk."""
        cut_timestep(self, call["timestep"], 0, 1, grid)

    def chunk_call(self, transformer: nn.Module, call: dict, start: int, stop: int, grid: Grid) -> dict:
        """The forward arguments that run post-patch frames [start, stop) of the call ``call``."""
        axis, per_frame = self.frame_axis(transformer, grid)
        chunk = dict(call)
        # A copy with the strides of its own shape: ``contiguous()`` keeps a size-1 batch dimension's
        # stride, which is the whole video's, and a compiled chunk forward would guard on it.
        chunk["hidden_states"] = (
            call["hidden_states"]
            .narrow(axis, start * per_frame, (stop - start) * per_frame)
            .clone(memory_format=torch.contiguous_format)
        )
        chunk["timestep"] = cut_timestep(self, call["timestep"], start, stop, grid)
        return chunk


def vae_compression(pipe) -> tuple[int, int]:
    """(video frames, pixels) per latent frame and latent pixel of a family pipeline's VAE (its defaults
    without a VAE): Wan's and SkyReels-V2's pipelines name them ``vae_scale_factor_*``, LTX-Video's
    ``vae_*_compression_ratio``."""
    if hasattr(pipe, "vae_temporal_compression_ratio"):
        return pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
    return pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial


_SIGNATURES: dict[type, inspect.Signature] = {}


def _forward_signature(cls: type) -> inspect.Signature:
    """The signature of the class's own forward (an instance's ``forward`` may be a hook's wrapper),
    kept per class (a plain dict, which a compiled forward traces without a warning)."""
    if cls not in _SIGNATURES:
        _SIGNATURES[cls] = inspect.signature(cls.forward)
    return _SIGNATURES[cls]


def cut_timestep(family: FamilyAdapter, timestep: Tensor, start: int, stop: int, grid: Grid) -> Tensor:
    """The timesteps of frames [start, stop): one per batch element ([B] or [B, 1]) as they are, one per
    token ([B, N], Wan2.2-TI2V, LTX-Video's image conditioning) or, where the family takes it, one per
    latent frame ([B, T], diffusion forcing) cut with the frames."""
    if not isinstance(timestep, Tensor) or timestep.dim() < 2 or timestep.shape[1] == 1:
        return timestep
    frames, tokens = grid[0], grid[1] * grid[2]
    if timestep.dim() == 2 and timestep.shape[1] == frames * tokens:
        return timestep[:, start * tokens : stop * tokens].contiguous()
    if family.per_frame_timesteps and timestep.dim() == 2 and timestep.shape[1] == frames:
        return timestep[:, start:stop].contiguous()
    per_frame = f" or [B, T] with T = {frames} frames" if family.per_frame_timesteps else ""
    raise ValueError(
        f"per-token timesteps must be [B, N] with N = {frames * tokens} tokens{per_frame}, "
        f"got {tuple(timestep.shape)}"
    )


#: The fields of :class:`ReHyAtRuntime` that say how the model runs now; code outside this module sets
#: them only through :meth:`ReHyAtRuntime.mode`.
MODE_FIELDS = ("streaming", "grid", "backend", "attention")


@dataclass
class ReHyAtRuntime:
    """Per-model state shared by the processors: config, the current latent grid, streaming mode, the
    attention ``backend`` ("auto", "torch" or "triton", as in :func:`rehyat.hybrid_attention`), and
    ``attention``: when set, what the parallel mode calls instead of :func:`configured_attention`, with
    the same arguments (:mod:`rehyat.parallel` sets it to exchange halos and states between ranks);
    ``family``: the model's :class:`FamilyAdapter` (set by conversion); ``joint``: the chunk plan of a
    joint text-video family (:class:`rehyat.models.joint.JointPlan`, set by its adapter's ``install``).

    The mode fields (:data:`MODE_FIELDS`: ``streaming``, ``grid``, ``backend``, ``attention``) have one
    writer, :meth:`mode`, scoped to a ``with`` block; ``grid`` is also recorded before every call of the
    transformer (:meth:`capture_grid`)."""

    config: ReHyAtConfig
    blocks: list[int]
    grid: Grid | None = None
    streaming: bool = False
    backend: str = "auto"
    attention: Callable[..., Tensor] | None = None
    family: FamilyAdapter | None = None
    joint: object | None = None

    @contextmanager
    def mode(self, **fields: Any) -> Iterator[ReHyAtRuntime]:
        """Set mode fields for the duration of a ``with`` block and put their previous values back on exit,
        on an error too; nested blocks each restore what they found. ``streaming``: a bool; ``grid``: None
        or the post-patch (frames, height, width) as ints; ``backend``: "auto", "torch" or "triton";
        ``attention``: None or a callable with :func:`configured_attention`'s arguments. Any other name,
        or a value of the wrong kind, is a ValueError before anything is set."""
        unknown = sorted(set(fields) - set(MODE_FIELDS))
        if unknown:
            raise ValueError(f"ReHyAtRuntime.mode sets {', '.join(MODE_FIELDS)}; not {', '.join(unknown)}")
        fields = {name: _mode_value(name, value) for name, value in fields.items()}
        previous = {name: getattr(self, name) for name in fields}
        for name, value in fields.items():
            setattr(self, name, value)
        try:
            yield self
        finally:
            for name, value in previous.items():
                setattr(self, name, value)

    def capture_grid(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: record the post-patch (T, H, W) of the transformer's input."""
        self.grid = self.family.grid(module, self.family.bind(module, args, kwargs))


def _mode_value(name: str, value: Any) -> Any:
    """``value`` checked for mode field ``name`` (a grid as a tuple of ints); ValueError otherwise."""
    if name == "streaming" and isinstance(value, bool):
        return value
    if name == "backend" and value in BACKENDS:
        return value
    if name == "attention" and (value is None or callable(value)):
        return value
    if name == "grid" and value is None:
        return None
    if name == "grid" and isinstance(value, (tuple, list)) and len(value) == 3:
        try:
            grid = tuple(operator.index(n) for n in value if not isinstance(n, bool))
        except TypeError:
            grid = ()
        if len(grid) == 3 and min(grid) >= 0:
            return grid
    kinds = {
        "streaming": "a bool",
        "grid": "None or (frames, height, width) as ints >= 0",
        "backend": f"one of {BACKENDS}",
        "attention": "None or a callable",
    }
    raise ValueError(f"ReHyAtRuntime.mode: {name} must be {kinds[name]}, got {value!r}")


def configured_attention(
    config: ReHyAtConfig,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | None,
    fk: Tensor | None,
    geometry: Geometry,
    *,
    backend: Backend = "auto",
    stats: AttentionStats | None = None,
) -> Tensor:
    """The parallel attention ``config.attention`` names on ``geometry`` (``config.geometry(frame_tokens)``):
    ReHyAt, or a baseline for ablations (the geometry's fields as its keywords; no anchor: the config
    allows one with "hybrid" only). Shared by the processor and the stage-1 students, so both train and
    run the same op."""
    if config.attention == "hybrid":
        return attend(q, k, v, fq, fk, geometry, stats=stats, backend=backend)
    fields = call_keywords(geometry)
    if config.attention == "uniform_hybrid":
        return uniform_hybrid_attention(q, k, v, fq, fk, stride=config.uniform_stride, stats=stats, **fields)
    return ATTENTION_VARIANTS[config.attention](q, k, v, fq, fk, stats=stats, **fields)


class ReHyAtAttnProcessor:
    """Self-attention processor computing ReHyAt instead of softmax attention, for any family.

    A subclass supplies :meth:`project` (q, k, v [B, N, H, D] exactly as the family's own processor
    computes them: projections, QK norm, RoPE) and :meth:`feature_input` (what φ reads of them). The
    attention is :func:`rehyat.hybrid_attention` with the teacher's scale (1/sqrt(head_dim), as SDPA uses),
    with φq, φk read from the attention module. In streaming mode each call is one chunk of whole frames
    (or several, attended chunk by chunk) and :func:`rehyat.hybrid_attention_step` carries ``state`` to
    the next call.
    """

    def __init__(self, runtime: ReHyAtRuntime, stats: AttentionStats | None = None) -> None:
        self.runtime = runtime
        self.stats = stats
        self.state: HybridAttentionState | None = None

    def project(self, attn: nn.Module, hidden_states: Tensor, rotary_emb) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, N, H, D] of ``hidden_states`` [B, N, C]: the family's projections, then
        :meth:`rotate` of the QK-normed q and k."""
        raise NotImplementedError

    @staticmethod
    def rotate(x: Tensor, heads: int, rotary_emb) -> Tensor:
        """Normed q or k [B, N, H·D] → [B, N, H, D] with the family's RoPE applied where it applies it
        (shared with stage 1's capture, which reads q and k at the QK norm's output)."""
        raise NotImplementedError

    @staticmethod
    def feature_input(config: ReHyAtConfig, x: Tensor, rotary_emb) -> Tensor:
        """What φ reads of q or k [B, N, H, D] (``config.feature_rotary``; shared with the stage-1
        students, so φ is trained on what it will be fed)."""
        raise NotImplementedError

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb=None,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the ReHyAt processor serves self-attention only (no context, no mask)")
        grid = self.runtime.grid
        if grid is None:
            raise ValueError("no latent grid captured: call the converted transformer, not its blocks")
        frame_tokens = grid[1] * grid[2]
        query, key, value = self.project(attn, hidden_states, rotary_emb)

        config = self.runtime.config
        geometry = config.geometry(frame_tokens)
        if self.runtime.streaming:
            # The step applies φq, φk (after the inputs' own transform), each only while it is needed
            # (lower peak memory).
            fq, fk = getattr(attn, PHI_Q), getattr(attn, PHI_K)
            if config.feature_rotary != "full":
                phi_q, phi_k = fq, fk
                fq = lambda q: phi_q(self.feature_input(config, q, rotary_emb))  # noqa: E731
                fk = lambda k: phi_k(self.feature_input(config, k, rotary_emb))  # noqa: E731
            if grid[0] > config.chunk_frames:  # a call of several chunks (apply_recurrent's chunks_per_call)
                # φ on the whole call: its inputs' transform reads the call's RoPE tables, not a chunk's.
                out, self.state = attend_recurrent(
                    query,
                    key,
                    value,
                    fq(query),
                    fk(key),
                    self.state,
                    geometry,
                    stats=self.stats,
                    backend=self.runtime.backend,
                )
            else:
                out, self.state = attend_step(
                    query,
                    key,
                    value,
                    fq,
                    fk,
                    self.state,
                    geometry,
                    stats=self.stats,
                    backend=self.runtime.backend,
                )
        else:
            fq = fk = None
            if hasattr(attn, PHI_Q):  # every variant but "local"
                fq = getattr(attn, PHI_Q)(self.feature_input(config, query, rotary_emb))
                fk = getattr(attn, PHI_K)(self.feature_input(config, key, rotary_emb))
            if query.shape[1] != grid[0] * frame_tokens:
                raise ValueError(
                    f"attention got {query.shape[1]} tokens but the captured grid {grid} has "
                    f"{grid[0] * frame_tokens}"
                )
            attention = configured_attention if self.runtime.attention is None else self.runtime.attention
            out = attention(
                config, query, key, value, fq, fk, geometry, backend=self.runtime.backend, stats=self.stats
            )
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def rehyat_runtime(transformer: nn.Module) -> ReHyAtRuntime | None:
    """The runtime of a converted transformer, or None if it is not converted."""
    runtime = getattr(transformer, RUNTIME_ATTR, None)
    return runtime if isinstance(runtime, ReHyAtRuntime) else None


def converted_blocks(transformer: nn.Module) -> list[int]:
    """Indices of the blocks whose self-attention runs a ReHyAt processor ([] if not converted)."""
    runtime = rehyat_runtime(transformer)
    if runtime is None or runtime.family is None:
        return []
    family = runtime.family
    return [
        i
        for i in range(len(family.blocks(transformer)))
        if isinstance(family.attention(transformer, i).processor, ReHyAtAttnProcessor)
    ]


def feature_maps(transformer: nn.Module) -> dict[int, tuple[PolynomialFeatureMap, PolynomialFeatureMap]]:
    """(φq, φk) of every converted block, by block index."""
    runtime = rehyat_runtime(transformer)
    maps = {}
    for i in converted_blocks(transformer):
        attn = runtime.family.attention(transformer, i)
        if hasattr(attn, PHI_Q):
            maps[i] = (getattr(attn, PHI_Q), getattr(attn, PHI_K))
    return maps


def convert_with(family: FamilyAdapter, transformer: nn.Module, config: ReHyAtConfig | None) -> nn.Module:
    """Convert the self-attention of the chosen blocks of a ``family`` model to ReHyAt, in place.

    Each converted self-attention gets the family's processor and fresh feature maps (``config``'s
    degree, layers, activation, bias, init) on the module's device and dtype. Cross-attention, the FFN,
    norms and unconverted blocks are not touched. Nothing changes when a check fails. Returns
    ``transformer``.
    """
    family.check_model(transformer)
    config = ReHyAtConfig() if config is None else config
    if not isinstance(config, ReHyAtConfig):
        raise ValueError(f"config must be a ReHyAtConfig, got {type(config).__name__}")
    if rehyat_runtime(transformer) is not None:
        raise ValueError("this transformer is already converted to ReHyAt")
    blocks = config.resolve_blocks(len(family.blocks(transformer)))
    family.check_conversion(transformer, config, blocks)
    for index in blocks:
        family.check_attention(family.attention(transformer, index), index)
    runtime = ReHyAtRuntime(config=config, blocks=blocks, family=family)
    for index in blocks:
        attn = family.attention(transformer, index)
        head_dim = attn.inner_dim // attn.heads
        reference = attn.to_q.weight
        for name in (PHI_Q, PHI_K) if config.attention != "local" else ():
            phi = config.feature_map(attn.heads, head_dim)
            attn.add_module(name, phi.to(device=reference.device, dtype=reference.dtype))
        attn.set_processor(family.processor(runtime))
    transformer.register_forward_pre_hook(runtime.capture_grid, with_kwargs=True)
    setattr(transformer, RUNTIME_ATTR, runtime)
    family.install(transformer, runtime)
    return transformer


def no_frames_error(frames: int, patch_frames: int) -> ValueError:
    """The error of a call with no post-patch frames (both forms raise it before diffusers would fail)."""
    return ValueError(
        f"hidden_states has no latent frames to run: {frames} frame(s) with a temporal patch of {patch_frames}"
    )


def temporal_unrotation(temporal: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """(cos, sin) that rotate the channels where ``temporal`` is true back by their angle and leave the
    others as they are: the inverse of a RoPE's temporal part (``feature_rotary="spatial"``)."""
    return torch.where(temporal, cos, torch.ones_like(cos)), torch.where(
        temporal, -sin, torch.zeros_like(sin)
    )
