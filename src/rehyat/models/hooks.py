"""The recurrent mode of a converted video DiT through diffusers' own hooks (docs/method.md §4, §8).

:func:`apply_recurrent` registers ``diffusers.hooks.ModelHook`` s with the model's ``HookRegistry`` (the
mechanism of diffusers' first-block cache, pyramid attention broadcast and context parallelism); the
model's forward (``WanTransformer3DModel.forward``, ``LTXVideoTransformer3DModel.forward``, ...) itself is
not copied or changed. What differs between families (how a call is cut into chunks, where RoPE positions
come from) is asked of the model's :class:`~rehyat.models.adapter.FamilyAdapter`:

- on the transformer, :class:`ChunkedForwardHook` (``new_forward``) cuts the latent video into chunks
  of ``chunk_frames`` post-patch frames and calls diffusers' own forward once per chunk, in order,
  with every converted ``attn1`` processor in streaming mode: each carries its
  :class:`~rehyat.HybridAttentionState` from one chunk to the next. The chunks' outputs are written
  into one output, returned as diffusers would (tuple or ``Transformer2DModelOutput``). Per-token
  timesteps (Wan2.2-TI2V, ``timestep`` [B, N]) are cut with the tokens;
- on ``transformer.rope`` (Wan, SkyReels-V2), :class:`AbsoluteFramesRotaryHook`: diffusers' RoPE numbers
  frames from 0 within its input, so inside a sweep the hook returns the tables of the chunk's absolute
  frames (LTX-Video's chunk calls pass the absolute positions as ``video_coords`` instead);
- on each block's ``ffn``, :class:`ChunkwiseFeedForwardHook`: inside a sweep the feed-forward (token-wise)
  runs one chunk's tokens at a time, which bounds its 4×-wide hidden activation, the largest tensor of a
  call, to one chunk's whatever ``chunks_per_call`` is.

Everything inside diffusers' forward (patch embedding, condition embedding, blocks, output head,
unpatchify) therefore sees one chunk at a time: activations are chunk-sized whatever the video length,
and only the latent input and the output (small) are whole. Each transformer call is one sweep that
starts from fresh states and drops them at its end, so every denoising step starts fresh and each CFG
branch (``WanPipeline`` runs cond and uncond as separate calls) has its own states, with no state kept
across calls (diffusers' ``cache_context``/``StateManager`` is not needed). An unmodified
``WanPipeline.__call__`` thus generates recurrently::

    apply_recurrent(pipe.transformer)   # or: with recurrent_mode(pipe.transformer): ...
    video = pipe(prompt, ...).frames
    remove_recurrent(pipe.transformer)

and :func:`recurrent_forward` is one call of a Wan model in that mode.

:func:`compile_recurrent` compiles the forward of one chunk (``torch.compile``, optionally CUDA graphs) while
the sweep stays in Python: a chunk's forward sees only what is the same for every chunk of its shape (its
grid, its position as a tensor, its state numbered from 0), so there is one graph per chunk shape
(first, cache filling, steady, last) whatever the video's length.

The result equals the parallel forward of the same converted model (causal ReHyAt of a chunk depends
only on past frames, every other layer is token-wise), to float rounding. The condition embedding (time
and text) is recomputed per chunk: the same numbers, at well under 0.1% of a chunk's compute at Wan's
sizes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import Tensor, nn

from rehyat.attention import HybridAttentionState
from rehyat.models.adapter import ReHyAtRuntime, converted_blocks, rehyat_runtime
from rehyat.models.wan import rotary_at_frames
from rehyat.utils import check_int

CHUNKED_FORWARD_HOOK = "rehyat_chunked_forward"
ROTARY_HOOK = "rehyat_absolute_frames_rotary"
CHUNKWISE_FFN_HOOK = "rehyat_chunkwise_ffn"
_HOOKS = (CHUNKED_FORWARD_HOOK, ROTARY_HOOK, CHUNKWISE_FFN_HOOK)


def check_recurrent(transformer: nn.Module) -> ReHyAtRuntime:
    """The runtime of a transformer that can run recurrently; ValueError saying why not otherwise."""
    runtime = rehyat_runtime(transformer)
    if runtime is None:
        raise ValueError("the recurrent mode needs a transformer converted with convert_wan or convert")
    blocks = runtime.family.blocks(transformer)
    unconverted = sorted(set(range(len(blocks))) - set(converted_blocks(transformer)))
    if unconverted:
        raise ValueError(
            f"the recurrent mode needs every block converted, but blocks {unconverted} still run full softmax "
            "attention over the whole video (convert with ReHyAtConfig(blocks='all'))"
        )
    if runtime.config.attention != "hybrid":
        raise ValueError(
            f"the recurrent mode runs ReHyAt attention; attention={runtime.config.attention!r} is a baseline "
            "for parallel ablations only"
        )
    if not runtime.config.causal:
        raise ValueError(
            "the recurrent mode needs the causal variant: with causal=False the linear part reads future frames"
        )
    return runtime


class AbsoluteFramesRotaryHook(ModelHook):
    """On ``transformer.rope``: while ``start`` (the chunk's first absolute post-patch frame, a 0-d int64
    tensor) is set, inside a sweep, the RoPE tables of the chunk's absolute frames; otherwise diffusers'
    own forward. A tensor, not an int, so a compiled chunk forward does not specialise on the position."""

    def __init__(self) -> None:
        super().__init__()
        self.start: Tensor | None = None

    def new_forward(self, module: nn.Module, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        if self.start is None:
            return self.fn_ref.original_forward(hidden_states)
        p_t, p_h, p_w = module.patch_size
        frames = self.start + torch.arange(hidden_states.shape[2] // p_t, device=self.start.device)
        return rotary_at_frames(module, frames, hidden_states.shape[3] // p_h, hidden_states.shape[4] // p_w)


class ChunkwiseFeedForwardHook(ModelHook):
    """On a block's ``ffn``: inside a sweep (``runtime.streaming``), the token-wise feed-forward applied to
    one chunk's tokens (``chunk_frames`` frames) at a time; otherwise diffusers' own forward. One frame at
    a time would bound memory no better in order (a chunk is a few frames) and cost a call per frame."""

    def __init__(self, runtime: ReHyAtRuntime) -> None:
        super().__init__()
        self.runtime = runtime

    def new_forward(self, module: nn.Module, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        grid = self.runtime.grid
        if not self.runtime.streaming or grid is None:
            return self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        parts = hidden_states.split(self.runtime.config.chunk_frames * grid[1] * grid[2], dim=1)
        return torch.cat([self.fn_ref.original_forward(part, *args, **kwargs) for part in parts], dim=1)


class ChunkedForwardHook(ModelHook):
    """On the transformer: one call = one sweep over the chunks through diffusers' own forward (see the
    module docstring)."""

    def __init__(
        self, runtime: ReHyAtRuntime, rotary: AbsoluteFramesRotaryHook | None, chunks_per_call: int = 1
    ) -> None:
        super().__init__()
        self.runtime = runtime
        self.rotary = rotary
        self.chunks_per_call = chunks_per_call
        # What runs one chunk: diffusers' forward, or its compiled form (compile_recurrent).
        self.chunk_forward: Callable | None = None
        self.graphed = False

    def new_forward(self, module: nn.Module, *args, **kwargs):
        family = self.runtime.family
        call = family.bind(module, args, kwargs)
        return_dict = call.pop("return_dict", True)
        grid = family.grid(module, call)  # ValueError for inputs without frames or of the wrong shape
        family.check_sweep(module, call, grid)
        if call["hidden_states"].shape[0] == 0:  # diffusers' forward cannot take B = 0: nothing to run
            output = family.empty_output(module, call)
            return Transformer2DModelOutput(sample=output) if return_dict else (output,)
        frames, rows, cols = grid
        axis, per_frame = family.frame_axis(module, grid)
        config = self.runtime.config
        call_frames = config.chunk_frames * self.chunks_per_call
        starts = list(range(0, frames, call_frames))
        if config.first_chunk_frames:  # the first call is the video's first chunk
            starts = [0, *range(config.first_chunk_frames, frames, call_frames)]
        forward = self.fn_ref.original_forward if self.chunk_forward is None else self.chunk_forward
        rope = family.rope(module)
        processors = [family.attention(module, i).processor for i in range(len(family.blocks(module)))]
        output = None
        try:
            for processor in processors:
                processor.state = None
            for start, stop in zip(starts, [*starts[1:], frames], strict=True):
                if self.rotary is not None:
                    self.rotary.start = torch.full((), start, dtype=torch.int64, device=rope.freqs_cos.device)
                chunk = family.chunk_call(module, call, start, stop, grid)
                # The chunk's step sees its state numbered from 0: frames_seen is an int the compiler
                # would specialise on, and the chunk's computation does not read it.
                _renumber(processors, 0)
                if self.graphed:
                    torch.compiler.cudagraph_mark_step_begin()
                # What the chunk's forward sees depends on the chunk only (not on the video's length or
                # the chunk's place in it): its grid, its position as a tensor, contiguous inputs.
                with self.runtime.mode(streaming=True, grid=(stop - start, rows, cols)):
                    x = forward(**chunk, return_dict=False)[0]
                if output is None:
                    shape = list(x.shape)
                    shape[axis] = frames * per_frame
                    output = x.new_empty(shape)
                output.narrow(axis, start * per_frame, (stop - start) * per_frame).copy_(x)
                # A CUDA graph's next replay overwrites this one's outputs, the states among them.
                _renumber(processors, stop, copy=self.graphed)
        finally:
            if self.rotary is not None:
                self.rotary.start = None
            for processor in processors:
                processor.state = None
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)


def is_recurrent(transformer: nn.Module) -> bool:
    """Whether :func:`apply_recurrent` hooks are on ``transformer``."""
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry is not None and registry.get_hook(CHUNKED_FORWARD_HOOK) is not None


def apply_recurrent(transformer: nn.Module, *, chunks_per_call: int = 1) -> nn.Module:
    """Make every call of a converted transformer (all blocks, causal) run recurrently, chunk by chunk,
    through diffusers' hooks — e.g. inside an unmodified ``WanPipeline.__call__`` or ``LTXPipeline.__call__``.
    Undo with :func:`remove_recurrent`. Run it under ``torch.no_grad()`` for constant memory (the
    pipeline does): with autograd on, the graph keeps every chunk's activations. Returns ``transformer``.

    ``chunks_per_call`` = k runs diffusers' forward on k chunks at a time (the attention still attends
    them one by one, from the state): the same result, k× the activation memory (still independent of
    the video's length), and 1/k of the forward calls, whose per-call cost (kernel launches, small
    matrix products) is what makes the one-chunk sweep slower than the parallel form. Not for the
    joint-attention families (HunyuanVideo, CogVideoX), whose calls are one chunk."""
    runtime = check_recurrent(transformer)
    check_int("chunks_per_call", chunks_per_call, minimum=1)
    if chunks_per_call > 1 and runtime.joint is not None:
        raise ValueError(
            f"chunks_per_call={chunks_per_call}: the joint-attention families (HunyuanVideo, CogVideoX) run "
            "one chunk per call; use chunks_per_call=1"
        )
    if is_recurrent(transformer):
        raise ValueError("the recurrent mode is already applied to this transformer")
    family = runtime.family
    rope = family.rope(transformer)
    rotary = None if rope is None else AbsoluteFramesRotaryHook()
    register_hooks(
        transformer,
        [
            *([(rope, rotary, ROTARY_HOOK)] if rope is not None else []),
            *(
                (ffn, ChunkwiseFeedForwardHook(runtime), CHUNKWISE_FFN_HOOK)
                for ffn in family.feed_forwards(transformer)
            ),
            (transformer, ChunkedForwardHook(runtime, rotary, chunks_per_call), CHUNKED_FORWARD_HOOK),
        ],
    )
    return transformer


def compile_recurrent(
    transformer: nn.Module, *, chunks_per_call: int | None = None, **compile_kwargs
) -> nn.Module:
    """Run each chunk of the recurrent mode through ``torch.compile`` of diffusers' forward.

    The sweep over chunks stays in Python and each chunk is one call of the compiled forward, its position
    a tensor (the RoPE frames) and its states passed through the processors, so the compiler makes one
    graph per chunk shape — the first chunk, the chunks while the overlap cache fills, the steady chunk, a
    shorter last chunk — however many chunks the video has. ``compile_kwargs`` go to ``torch.compile``,
    with ``dynamic=False`` (static chunk shapes) and ``fullgraph=True`` unless given: a graph break inside
    the blocks would resume once per block, and the resumed code guards on each block's own FFN hook, so
    the graphs would grow with the depth until Dynamo's recompile limit leaves the other blocks to eager.
    Counting guarded rows (a processor's ``stats``) is a host sync, hence ``fullgraph=False`` then.
    ``mode="reduce-overhead"`` (CUDA only)
    replays each chunk shape as a CUDA graph; the states are then copied out of the graph's memory after
    every chunk, since the next replay overwrites it. Applies :func:`apply_recurrent` first if needed;
    :func:`remove_recurrent` undoes both (``chunks_per_call`` goes to it; None: 1, or what an earlier
    :func:`apply_recurrent` set). Returns ``transformer``. Not for CogVideoX's 2B layout, whose chunk
    calls add position embeddings at Python-int frames inside the forward and would recompile per chunk
    position (its adapter's ``compile_reason``; :func:`recurrent_mode` runs it eagerly).
    """
    runtime = rehyat_runtime(transformer)
    reason = None if runtime is None or runtime.joint is None else runtime.family.compile_reason(transformer)
    if reason is not None:
        raise ValueError(
            f"compile_recurrent does not serve {type(transformer).__name__} yet ({reason}: each chunk "
            "position would recompile); run it with recurrent_mode or apply_recurrent uncompiled"
        )
    if not is_recurrent(transformer):
        apply_recurrent(transformer, chunks_per_call=chunks_per_call or 1)
    hook = _check_chunks_per_call(transformer, chunks_per_call)
    compile_kwargs.setdefault("dynamic", False)
    family = rehyat_runtime(transformer).family
    counting = any(
        getattr(family.attention(transformer, i).processor, "stats", None) is not None
        for i in range(len(family.blocks(transformer)))
    )
    compile_kwargs.setdefault("fullgraph", not counting)
    hook.chunk_forward = torch.compile(hook.fn_ref.original_forward, **compile_kwargs)
    hook.graphed = compile_kwargs.get("mode") in ("reduce-overhead", "max-autotune")
    return transformer


def _check_chunks_per_call(transformer: nn.Module, chunks_per_call: int | None) -> ChunkedForwardHook:
    """The applied sweep's hook; a ValueError if ``chunks_per_call`` (None: any) is not what it was applied with."""
    hook = HookRegistry.check_if_exists_or_initialize(transformer).get_hook(CHUNKED_FORWARD_HOOK)
    if chunks_per_call is not None and chunks_per_call != hook.chunks_per_call:
        raise ValueError(
            f"chunks_per_call={chunks_per_call}, but the recurrent mode was applied with "
            f"{hook.chunks_per_call}: remove_recurrent first"
        )
    return hook


def remove_recurrent(transformer: nn.Module) -> nn.Module:
    """Remove :func:`apply_recurrent`'s hooks: calls run the parallel form again. Returns ``transformer``."""
    family = rehyat_runtime(transformer).family
    rope = family.rope(transformer)
    remove_hooks(
        transformer,
        _HOOKS,
        (transformer, *([rope] if rope is not None else []), *family.feed_forwards(transformer)),
    )
    return transformer


@contextmanager
def recurrent_mode(transformer: nn.Module, *, chunks_per_call: int | None = None) -> Iterator[nn.Module]:
    """:func:`apply_recurrent` for the duration of a ``with`` block (``chunks_per_call`` None: 1). Already
    applied, nothing is done, unless ``chunks_per_call`` asks for another count than it was applied with:
    a ValueError."""
    if is_recurrent(transformer):
        _check_chunks_per_call(transformer, chunks_per_call)
        yield transformer
        return
    apply_recurrent(transformer, chunks_per_call=1 if chunks_per_call is None else chunks_per_call)
    try:
        yield transformer
    finally:
        remove_recurrent(transformer)


def recurrent_forward(
    transformer: nn.Module,
    hidden_states: Tensor,
    timestep: Tensor,
    encoder_hidden_states: Tensor,
    encoder_hidden_states_image: Tensor | None = None,
    *,
    chunks_per_call: int | None = None,
) -> Tensor:
    """The whole-model recurrent forward of a fully converted, causal Wan DiT (docs/method.md §4, §8):
    diffusers' own ``WanTransformer3DModel.forward`` run chunk by chunk inside :func:`recurrent_mode`;
    same arguments and result as ``transformer(hidden_states, timestep, encoder_hidden_states,
    encoder_hidden_states_image, return_dict=False)[0]``.

    Activations exist for one chunk at a time, so peak memory does not grow with the number of frames,
    and the result equals the parallel forward of the same converted model. Needs every block converted
    with ``causal=True``. ``timestep`` is one value per batch element, or one per token ([B, N],
    Wan2.2-TI2V). Each call starts from fresh states, so a call is one denoising step of one CFG branch.
    Run it under ``torch.no_grad()``/``torch.inference_mode()`` for constant memory: with autograd on,
    the graph keeps every chunk's activations. ``chunks_per_call``: as in :func:`apply_recurrent`.
    """
    with recurrent_mode(transformer, chunks_per_call=chunks_per_call):
        return transformer(
            hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict=False
        )[0]


def register_hooks(transformer: nn.Module, hooks: Iterable[tuple[nn.Module, ModelHook, str]]) -> None:
    """Register each ``(module, hook, name)``, ``module`` being ``transformer`` or one of its submodules,
    with that module's ``HookRegistry``, in order; undo with :func:`remove_hooks`."""
    for module, hook, name in hooks:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
    _invalidate_registry_caches(HookRegistry.check_if_exists_or_initialize(transformer))


def remove_hooks(transformer: nn.Module, names: Iterable[str], modules: Iterable[nn.Module]) -> None:
    """Remove the hooks called ``names`` from ``transformer`` and its submodules, and leave ``modules``
    (those that carried them) as they were: no ``forward`` left set on the instance."""
    names = set(names)
    check_last_in(transformer, names)
    for _, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if isinstance(registry, HookRegistry):
            for name in reversed(list(registry.hooks)):  # last in, first out (see check_last_in)
                if name in names:
                    registry.remove_hook(name, recurse=False)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for module in modules:
        _drop_plain_forward(module)
    _invalidate_registry_caches(registry)


def check_last_in(transformer: nn.Module, names: Iterable[str]) -> None:
    """ValueError unless every hook called one of ``names`` is the last on its module but for others of
    ``names``: diffusers hooks come off last-in, first-out; one taken from under a later hook would leave
    that hook's replaced forward skipped (e.g. the recurrent mode silently running the parallel form)."""
    names = set(names)
    for path, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        order = list(registry.hooks) if isinstance(registry, HookRegistry) else []
        for position, name in enumerate(order):
            later = [other for other in order[position + 1 :] if other not in names]
            if name in names and later:
                where = path or type(transformer).__name__
                raise ValueError(
                    f"cannot remove hook {name!r} from {where}: {later} were registered after it; remove "
                    "those first (hooks come off in the reverse order they were applied)"
                )


def _drop_plain_forward(module: nn.Module) -> None:
    """Removing the last hook leaves ``module.forward`` set on the instance to the class's own forward;
    drop that attribute, so the module is as it was (a forward set by anyone else stays)."""
    own = vars(module).get("forward")
    if getattr(own, "__self__", None) is module and getattr(own, "__func__", None) is type(module).forward:
        del module.forward


def _invalidate_registry_caches(registry: HookRegistry) -> None:
    """diffusers caches each registry's child registries; adding or removing hooks below stales it."""
    invalidate = getattr(registry, "invalidate_child_registries_cache", None)
    if invalidate is not None:
        invalidate()


def _renumber(processors: list, frames_seen: int, copy: bool = False) -> None:
    """Set ``frames_seen`` of the processors' states (those not None); ``copy``: also copy their tensors
    into memory of their own."""
    for processor in processors:
        state: HybridAttentionState | None = processor.state
        if state is None:
            continue
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        copies = {name: t.clone() for name, t in fields.items() if isinstance(t, Tensor)} if copy else {}
        processor.state = dataclasses.replace(state, frames_seen=frames_seen, **copies)
