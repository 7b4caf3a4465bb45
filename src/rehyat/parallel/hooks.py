"""The diffusers hooks of chunk parallelism (:class:`rehyat.parallel.ChunkParallel` registers them with the
transformer's ``HookRegistry`` and removes them again; see :mod:`rehyat.parallel.wan`):

- :class:`ChunkParallelCallHook`, on the transformer: before every call, the agreement check of
  :meth:`~rehyat.parallel.ChunkParallel.prepare` (collective), which fixes the call's frame layout. The
  hook holds the state of the call: the layout, the post-patch grid of this rank's input and, while the
  pipeline form streams a chunk, that chunk's first global frame;
- :class:`GlobalFramesRotaryHook`, on ``transformer.rope``: diffusers numbers frames from 0 within its
  input, so the hook returns the RoPE tables of the rank's (or the streamed chunk's) global frames.

Imported when chunk parallelism is enabled, so ``import rehyat.parallel`` does not import diffusers.
"""

from __future__ import annotations

from typing import Protocol

from diffusers.hooks import ModelHook
from torch import Tensor, nn

from rehyat.models import rotary_for_frames
from rehyat.parallel.layout import FrameLayout


class Preparing(Protocol):
    """What owns the hooks (:class:`rehyat.parallel.ChunkParallel`): the check every call starts with."""

    def prepare(self, hidden: Tensor, timestep: Tensor | None, context: Tensor | None) -> FrameLayout: ...


Grid = tuple[int, int, int]


class ChunkParallelCallHook(ModelHook):
    """On the transformer: the owner's ``prepare(hidden_states, timestep, encoder_hidden_states)`` before
    every call (it sets :attr:`layout` and :attr:`grid`), except while :attr:`stream_start` is set: then a call is one
    chunk of the pipeline form, checked as a whole before, and only its grid is read.

    Attributes:
        owner: the :class:`~rehyat.parallel.ChunkParallel` that registered the hook.
        layout: the :class:`FrameLayout` of the latest call (None before the first).
        grid: the post-patch (frames, height, width) of this rank's input in the latest call.
        stream_start: first global frame of the chunk the pipeline form is streaming (None otherwise).
    """

    def __init__(self, owner: Preparing) -> None:
        super().__init__()
        self.owner = owner
        self.layout: FrameLayout | None = None
        self.grid: Grid | None = None
        self.stream_start: int | None = None

    def pre_forward(self, module: nn.Module, *args, **kwargs) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if self.stream_start is not None:
            p_t, p_h, p_w = module.config.patch_size
            _, _, frames, height, width = hidden.shape
            self.grid = (frames // p_t, height // p_h, width // p_w)
        else:
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
            context = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
            self.owner.prepare(hidden, timestep, context)
        return args, kwargs


class GlobalFramesRotaryHook(ModelHook):
    """On ``transformer.rope``: after diffusers' forward, the (cos, sin) tables of global frames
    ``[start, start + frames)`` of the call's grid, ``start`` being rank ``rank``'s first frame in the
    call's layout or the streamed chunk's; diffusers' own tables before the first call."""

    def __init__(self, call: ChunkParallelCallHook, rank: int) -> None:
        super().__init__()
        self.call = call
        self.rank = rank

    def post_forward(self, module: nn.Module, output: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        call = self.call
        if call.layout is None or call.grid is None:
            return output
        start = call.layout.ranges[self.rank][0] if call.stream_start is None else call.stream_start
        frames, height, width = call.grid
        cos, sin = rotary_for_frames(module, start, start + frames, height, width)
        return cos.to(output[0]), sin.to(output[1])
