"""Chunk parallelism for a converted Wan transformer: each rank runs the transformer on its own frames.

:func:`enable_chunk_parallel` installs, on a model converted with :func:`rehyat.convert_wan`, through
diffusers' ``HookRegistry`` (the hooks of :mod:`rehyat.parallel.hooks`, which hold the call's state):

- a hook on the transformer that checks, before every call, that all ranks agree on the geometry (one
  small all-gather of Python objects) and fixes the frame ranges of that call;
- a hook on ``transformer.rope`` that replaces the RoPE of frames ``0..F_r`` by that of the rank's
  global frames (diffusers computes it from the input's shape, i.e. from frame 0);
- the ReHyAt processors' attention (``ReHyAtRuntime.attention``) by
  :func:`~rehyat.parallel.chunk_parallel_attention`: a halo and a state exchange per layer;
- for blocks left with full softmax attention, a processor that gathers every rank's K and V (the
  bytes ring attention would move) and attends over the whole video.

Token-wise layers (patch embedding, norms, FFN, cross-attention, output head) need nothing: each rank
feeds its latent frames ``[B, C, F_r, H, W]`` and gets its frames of the output back. Disabling removes
the hooks and puts the processors back: the model is as it was.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rehyat.attention import Geometry
from rehyat.models.adapter import ReHyAtRuntime, converted_blocks, rehyat_runtime
from rehyat.models.config import ReHyAtConfig
from rehyat.models.wan import ReHyAtWanAttnProcessor
from rehyat.parallel.attention import chunk_parallel_attention
from rehyat.parallel.comm import Incoming, Outgoing, exchange
from rehyat.parallel.layout import FrameLayout, FrameRange

if TYPE_CHECKING:
    from rehyat.parallel.hooks import ChunkParallelCallHook

#: The names of the hooks in the transformer's and its rope's ``HookRegistry``.
CALL_HOOK, ROTARY_HOOK = "rehyat_chunk_parallel", "rehyat_chunk_parallel_rotary"
TAG_GATHER_K, TAG_GATHER_V, TAG_GATHER = 11, 12, 13


def _agree(
    group: dist.ProcessGroup | None, what: str, problems: list[str], signature: dict, local: object = None
) -> list:
    """All-gather every rank's problems, signature and ``local`` value; raise the same ValueError on
    every rank if any rank has a problem or the signatures differ. Returns the ``local`` values in rank
    order."""
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (problems, signature, local), group=group)
    where: dict[str, list[int]] = {}
    for r, (found, _, _) in enumerate(gathered):
        for problem in found:
            where.setdefault(problem, []).append(r)
    lines = [f"rank{'s' * (len(r) > 1)} {', '.join(map(str, r))}: {p}" for p, r in where.items()]
    signatures = [s for _, s, _ in gathered]
    for key in sorted(set().union(*signatures)) if not lines else ():  # a problem comes first
        values = [s.get(key) for s in signatures]
        if any(v != values[0] for v in values):
            lines.append(
                f"ranks disagree on {key}: " + ", ".join(f"rank {r} {v!r}" for r, v in enumerate(values))
            )
    _refuse(what, lines)
    return [item for _, _, item in gathered]


def _config_signature(config: ReHyAtConfig) -> dict:
    return {f"config.{key}": value for key, value in asdict(config).items()}


def _refuse(what: str, lines: list[str]) -> None:
    if lines:
        raise ValueError(f"chunk parallelism: {what} refused on every rank:\n  " + "\n  ".join(lines))


def _ranks_rows(group: dist.ProcessGroup | None, tensor: Tensor, sizes: Sequence[int], dim: int, label: str):
    """Every rank's ``tensor`` (``sizes[r]`` along ``dim`` on rank r, the rest alike), concatenated in
    rank order along ``dim``; differentiable (the gradients go back to their rank)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if world == 1:
        return tensor
    others = [r for r in range(world) if r != rank]
    sends = [(Outgoing(r, TAG_GATHER, label), tensor) for r in others]
    shape = list(tensor.shape)
    receives = []
    for r in others:
        shape[dim] = sizes[r]
        receives.append(Incoming(r, TAG_GATHER, label, tuple(shape), tensor.dtype))
    received, _ = exchange(group, sends, receives, tensor.device)
    parts = dict(zip(others, received, strict=True))
    parts[rank] = tensor
    return torch.cat([parts[r] for r in range(world)], dim=dim)


def shard_frames(
    latent: Tensor, frame_ranges: Sequence[FrameRange], rank: int, patch_frames: int = 1
) -> Tensor:
    """Rank ``rank``'s frames of a latent video [B, C, F, H, W] (ranges in post-patch frames)."""
    start, stop = frame_ranges[rank]
    return latent[:, :, start * patch_frames : stop * patch_frames]


def gather_frames(
    local: Tensor,
    frame_ranges: Sequence[FrameRange],
    group: dist.ProcessGroup | None = None,
    patch_frames: int = 1,
) -> Tensor:
    """The whole latent video [B, C, F, H, W] on every rank from each rank's frames (differentiable)."""
    sizes = [(stop - start) * patch_frames for start, stop in frame_ranges]
    return _ranks_rows(group, local, sizes, 2, "frames")


class _SoftmaxProcessor:
    """Processor of a block left with full softmax attention: ReHyAt's projections (the same as
    diffusers' ``WanAttnProcessor`` for self-attention) with the attention over every rank's K, V."""

    def __init__(self, runtime: ReHyAtRuntime, original, call: ChunkParallelCallHook) -> None:
        self.runtime, self.call = runtime, call
        self.inner = ReHyAtWanAttnProcessor(runtime)
        self.original = original

    def __call__(self, *args, **kwargs) -> Tensor:
        with self.runtime.mode(grid=self.call.grid):  # this rank's grid in the call being run
            return self.inner(*args, **kwargs)


class ChunkParallel:
    """Chunk parallelism on one converted transformer (made by :func:`enable_chunk_parallel`).

    Attributes:
        group, rank, world: the process group and this process's place in it.
        frame_ranges: the configured ranges, or None (taken from each call's local frame counts).
        layout: the :class:`FrameLayout` of the latest forward (None before the first).
        stream_start: first global frame of the chunk the pipeline form is streaming (None in the
            parallel form).
    """

    def __init__(self, transformer: nn.Module, group, frame_ranges, runtime: ReHyAtRuntime) -> None:
        from rehyat.models.hooks import register_hooks  # diffusers' hooks: imported once it is enabled
        from rehyat.parallel.hooks import ChunkParallelCallHook, GlobalFramesRotaryHook

        self.transformer, self.group, self.runtime = transformer, group, runtime
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.frame_ranges = None if frame_ranges is None else tuple((int(a), int(b)) for a, b in frame_ranges)
        self._call = ChunkParallelCallHook(self)
        self._softmax_runtime = ReHyAtRuntime(config=runtime.config, blocks=[], attention=self._softmax)
        #: Original processors of the blocks left with softmax attention, by block index.
        self._processors: dict[int, object] = {}
        self._mode = ExitStack()
        try:  # all or nothing: a failure part-way leaves the transformer as it was
            converted = set(converted_blocks(transformer))
            for index, block in enumerate(transformer.blocks):
                if index not in converted:
                    self._processors[index] = block.attn1.processor
                    block.attn1.set_processor(
                        _SoftmaxProcessor(self._softmax_runtime, block.attn1.processor, self._call)
                    )
            # The converted blocks attend across ranks until disable() leaves this mode.
            self._mode.enter_context(runtime.mode(attention=self._attention))
            register_hooks(
                transformer,
                [
                    (transformer, self._call, CALL_HOOK),
                    (transformer.rope, GlobalFramesRotaryHook(self._call, self.rank), ROTARY_HOOK),
                ],
            )
        except BaseException:
            self.disable()
            raise

    @property
    def layout(self) -> FrameLayout | None:
        return self._call.layout

    @property
    def stream_start(self) -> int | None:
        return self._call.stream_start

    @stream_start.setter
    def stream_start(self, start: int | None) -> None:
        self._call.stream_start = start

    @property
    def softmax_blocks(self) -> list[int]:
        """The blocks left with full softmax attention (their K, V are gathered from every rank)."""
        return sorted(self._processors)

    @property
    def frame_offset(self) -> int:
        """This rank's first global frame in the latest forward."""
        if self.layout is None:
            raise ValueError("no forward yet: the frame offset is fixed by each call")
        return self.layout.ranges[self.rank][0]

    def prepare(self, hidden: Tensor, timestep: Tensor | None, context: Tensor | None) -> FrameLayout:
        """The check every forward starts with (collective): all ranks agree on the config, grid, batch,
        dtype, timestep and context shape, and their frame counts fit the ranges. Raises the same
        ValueError on every rank otherwise; returns (and records) the call's layout."""
        module = self.transformer
        problems: list[str] = []
        signature: dict = {}
        frames = None
        p_t, p_h, p_w = module.config.patch_size
        if not isinstance(hidden, Tensor) or hidden.dim() != 5:
            problems.append("hidden_states must be this rank's frames of the latent, [B, C, F_r, H, W]")
        else:
            batch, channels, latent_frames, height, width = hidden.shape
            frames = latent_frames // p_t
            if latent_frames % p_t:
                problems.append(f"{latent_frames} latent frames are not a multiple of the patch's {p_t}")
            signature.update(
                batch=batch,
                channels=channels,
                grid=(height // p_h, width // p_w),
                dtype=str(hidden.dtype),
            )
        if isinstance(timestep, Tensor):
            if timestep.dim() != 1:
                problems.append(
                    f"timestep must be one value per batch element, got shape {tuple(timestep.shape)} "
                    "(per-token timesteps are not split across ranks)"
                )
            signature["timestep"] = [float(t) for t in timestep.detach().flatten().cpu()]
        if isinstance(context, Tensor):
            signature["context"] = tuple(context.shape)
        signature.update(_config_signature(self.runtime.config))
        signature["rope_positions"] = module.rope.freqs_cos.shape[0]
        counts = _agree(self.group, "forward", problems, signature, frames)
        config = self.runtime.config
        if self.frame_ranges is None:
            ranges = tuple(itertools.pairwise([0, *itertools.accumulate(counts)]))
        else:
            ranges = self.frame_ranges
            _refuse(
                "forward",
                [
                    f"rank {r} got {count} frames for its range [{a}, {b})"
                    for r, (count, (a, b)) in enumerate(zip(counts, ranges, strict=True))
                    if count != b - a
                ],
            )
        try:
            layout = FrameLayout.checked(ranges, config.chunk_frames, config.overlap_frames, config.causal)
        except ValueError as error:
            _refuse("forward", [str(error)])
        self._call.layout = layout
        limit, (height, width) = signature["rope_positions"], signature["grid"]
        if max(layout.total_frames, height, width) > limit:
            _refuse(
                "forward",
                [
                    f"the RoPE table has {limit} positions (rope_max_seq_len) but the video has "
                    f"{layout.total_frames} frames of {height}×{width}"
                ],
            )
        self._call.grid = (frames, *signature["grid"])
        return layout

    def _attention(self, config: ReHyAtConfig, q, k, v, fq, fk, geometry: Geometry, *, backend, stats=None):
        return chunk_parallel_attention(
            q,
            k,
            v,
            fq,
            fk,
            layout=self.layout,
            frame_tokens=geometry.frame_tokens,
            group=self.group,
            stats=stats,
        )

    def _softmax(self, config: ReHyAtConfig, q, k, v, fq, fk, geometry: Geometry, *, backend, stats=None):
        sizes = [(b - a) * geometry.frame_tokens for a, b in self.layout.ranges]
        keys = _ranks_rows(self.group, k, sizes, 1, "kv")
        values = _ranks_rows(self.group, v, sizes, 1, "kv")
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
        return out.transpose(1, 2)

    def disable(self) -> None:
        """Remove the hooks and put back the original processors and attention."""
        from rehyat.models.hooks import remove_hooks

        transformer = self.transformer
        remove_hooks(transformer, (CALL_HOOK, ROTARY_HOOK), (transformer, transformer.rope))
        for index, processor in self._processors.items():
            transformer.blocks[index].attn1.set_processor(processor)
        self._mode.close()


def enable_chunk_parallel(
    transformer: nn.Module,
    group: dist.ProcessGroup | None = None,
    frame_ranges: Sequence[FrameRange] | None = None,
) -> ChunkParallel:
    """Run a converted ``WanTransformer3DModel`` on a video split by frames across ``group``'s ranks.

    Afterwards each rank calls ``transformer(local_latent, timestep, context)`` with its frames
    ``[B, C, F_r, H, W]`` (same timestep and context on every rank) and gets its frames of the output;
    gradients flow through the exchanges, so training works the same way.

    Args:
        transformer: converted with :func:`rehyat.convert_wan` (``attention="hybrid"``, causal or not).
            Blocks left with softmax attention gather every rank's K and V.
        group: the process group (default: the world); every rank of it must call this, collectively.
        frame_ranges: ``(start, stop)`` per rank in post-patch latent frames, contiguous from 0, each
            starting on a chunk boundary (uneven sizes are fine; see :func:`balanced_frame_ranges`).
            None: each call takes the ranges from the ranks' local frame counts, in rank order.

    Raises ValueError, on every rank, when a rank's arguments are wrong or the ranks disagree (config,
    ranges, converted blocks); every forward checks its inputs the same way.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("chunk parallelism needs an initialised torch.distributed process group")
    problems: list[str] = []
    runtime = rehyat_runtime(transformer)
    signature: dict = {}
    if runtime is None:
        problems.append("the transformer is not converted (call rehyat.convert_wan first)")
    else:
        config = runtime.config
        signature.update(
            _config_signature(config), converted=converted_blocks(transformer), blocks=len(transformer.blocks)
        )
        if config.attention != "hybrid":
            problems.append(f"attention={config.attention!r}: chunk parallelism runs ReHyAt ('hybrid') only")
        if config.anchor_frames:
            problems.append(
                f"anchor_frames={config.anchor_frames}: chunk parallelism does not send the anchor frames "
                "to the other ranks yet (convert with anchor_frames=0)"
            )
        if config.first_chunk_frames:
            problems.append(
                f"first_chunk_frames={config.first_chunk_frames}: chunk parallelism splits the video into "
                "uniform chunks (convert with first_chunk_frames=0)"
            )
        if chunk_parallel_of(transformer) is not None:
            problems.append("chunk parallelism is already enabled on this transformer")
        if getattr(transformer, "_parallel_config", None) is not None:
            problems.append("diffusers' own parallelism (enable_parallelism) is enabled on this transformer")
        if frame_ranges is not None:
            try:
                ranges = tuple((int(a), int(b)) for a, b in frame_ranges)
                FrameLayout.checked(ranges, config.chunk_frames, config.overlap_frames, config.causal)
                if len(ranges) != dist.get_world_size(group):
                    problems.append(f"{len(ranges)} frame ranges for {dist.get_world_size(group)} ranks")
                signature["ranges"] = ranges
            except (TypeError, ValueError) as error:
                problems.append(str(error))
    _agree(group, "enable_chunk_parallel", problems, signature)
    return ChunkParallel(transformer, group, frame_ranges, runtime)


def chunk_parallel_of(transformer: nn.Module) -> ChunkParallel | None:
    """The active :class:`ChunkParallel` of a transformer, or None."""
    registry = getattr(transformer, "_diffusers_hook", None)  # diffusers' HookRegistry, if it has one
    hook = None if registry is None else registry.get_hook(CALL_HOOK)
    return None if hook is None else hook.owner


def disable_chunk_parallel(transformer: nn.Module) -> None:
    """Undo :func:`enable_chunk_parallel` (a no-op when it is not enabled)."""
    found = chunk_parallel_of(transformer)
    if found is not None:
        found.disable()


@contextmanager
def chunk_parallel(
    transformer: nn.Module,
    group: dist.ProcessGroup | None = None,
    frame_ranges: Sequence[FrameRange] | None = None,
) -> Iterator[ChunkParallel]:
    """:func:`enable_chunk_parallel` for the duration of a ``with`` block."""
    handle = enable_chunk_parallel(transformer, group, frame_ranges)
    try:
        yield handle
    finally:
        handle.disable()
