"""The whole-model recurrent forward of a fully converted, causal Wan DiT (docs/method.md §4, §8).

:func:`recurrent_forward` is diffusers' own ``WanTransformer3DModel.forward`` run chunk by chunk through
the hooks of :mod:`rehyat.models.hooks` (a sweep over chunks of ``chunk_frames`` post-patch frames, each
``attn1`` carrying its state from chunk to chunk, RoPE at absolute frames, feed-forwards frame by frame):
activations exist for one chunk at a time, so peak memory does not grow with the number of frames, and
the result equals the parallel forward of the same converted model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rotary_for_frames(
    rope: nn.Module, start: int, stop: int, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Wan's 3D RoPE (cos, sin) for post-patch frames [start, stop) of a height × width token grid.

    Same tables and layout as ``WanRotaryPosEmbed.forward`` ([1, n·H·W, 1, D]), at absolute frame
    positions instead of frames counted from 0.
    """
    check_rotary_limit(rope, stop, height, width)
    return rotary_at_frames(rope, torch.arange(start, stop, device=rope.freqs_cos.device), height, width)


def check_rotary_limit(rope: nn.Module, frames: int, height: int, width: int) -> None:
    """ValueError unless the RoPE tables cover ``frames`` frames and a height × width grid."""
    limit = rope.freqs_cos.shape[0]
    if frames > limit or height > limit or width > limit:
        raise ValueError(
            f"RoPE table has {limit} positions (rope_max_seq_len) but the grid needs frames up to {frames}, "
            f"{height} rows and {width} columns"
        )


def rotary_at_frames(rope: nn.Module, frames: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """:func:`rotary_for_frames` at the post-patch frame indices ``frames`` [n] (int64, unchecked).

    The positions are a tensor, not Python ints, so a compiled chunk forward is one graph at every
    position of the video (the frame count n stays static).
    """
    count = frames.shape[0]
    grid = (count, height, width)
    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    tables = []
    for freqs in (rope.freqs_cos, rope.freqs_sin):
        f, h, w = freqs.split(split, dim=1)
        parts = [
            f.index_select(0, frames).view(count, 1, 1, -1).expand(*grid, -1),
            h[:height].view(1, height, 1, -1).expand(*grid, -1),
            w[:width].view(1, 1, width, -1).expand(*grid, -1),
        ]
        tables.append(torch.cat(parts, dim=-1).reshape(1, count * height * width, 1, -1))
    return tables[0], tables[1]


def recurrent_forward(
    transformer: nn.Module,
    hidden_states: Tensor,
    timestep: Tensor,
    encoder_hidden_states: Tensor,
    encoder_hidden_states_image: Tensor | None = None,
) -> Tensor:
    """Chunk-by-chunk forward of a converted ``WanTransformer3DModel``; same arguments and result as
    ``transformer(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
    return_dict=False)[0]``.

    Needs every block converted with ``causal=True``. ``timestep`` is one value per batch element, or one
    per token ([B, N], Wan2.2-TI2V). Each call starts from fresh states, so a call is one denoising step
    of one CFG branch. Run it under ``torch.no_grad()``/``torch.inference_mode()`` for constant memory:
    with autograd on, the graph keeps every chunk's activations. The same as calling the transformer
    inside :func:`rehyat.models.hooks.recurrent_mode`.
    """
    from rehyat.models.hooks import recurrent_mode  # diffusers only where a Wan model runs

    with recurrent_mode(transformer):
        return transformer(
            hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict=False
        )[0]
