"""The whole-model recurrent forward of a fully converted, causal Wan DiT (SPEC §4, §8).

The latent video is cut into chunks of ``chunk_frames`` post-patch frames; each chunk goes through patch
embedding, every block (each ``attn1`` carrying its own :class:`~rehyat.HybridAttentionState` from chunk
to chunk), the output head and unpatchify, and is written into the output. RoPE uses absolute frame
offsets. Activations therefore exist for one chunk at a time: with the states (fixed size) and the
latent input/output (small), peak memory does not grow with the number of frames. Inside a chunk each
block's feed-forward runs one frame at a time (it is token-wise, so this changes nothing but its
4×-wide hidden activation, the largest tensor of a chunk). Because every
token-wise layer is the same per chunk and causal ReHyAt of a chunk depends only on past frames, the
result equals the parallel forward of the same converted model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from rehyat.models.wan import ReHyAtRuntime, converted_blocks, rehyat_runtime


def rotary_for_frames(
    rope: nn.Module, start: int, stop: int, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Wan's 3D RoPE (cos, sin) for post-patch frames [start, stop) of a height × width token grid.

    Same tables and layout as ``WanRotaryPosEmbed.forward`` ([1, n·H·W, 1, D]), at absolute frame
    positions instead of frames counted from 0.
    """
    limit = rope.freqs_cos.shape[0]
    if stop > limit or height > limit or width > limit:
        raise ValueError(
            f"RoPE table has {limit} positions (rope_max_seq_len) but the grid needs frames up to {stop}, "
            f"{height} rows and {width} columns"
        )
    frames = stop - start
    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    tables = []
    for freqs in (rope.freqs_cos, rope.freqs_sin):
        f, h, w = freqs.split(split, dim=1)
        grid = (frames, height, width)
        parts = [
            f[start:stop].view(frames, 1, 1, -1).expand(*grid, -1),
            h[:height].view(1, height, 1, -1).expand(*grid, -1),
            w[:width].view(1, 1, width, -1).expand(*grid, -1),
        ]
        tables.append(torch.cat(parts, dim=-1).reshape(1, frames * height * width, 1, -1))
    return tables[0], tables[1]


def _check_recurrent(transformer: nn.Module) -> ReHyAtRuntime:
    runtime = rehyat_runtime(transformer)
    if runtime is None:
        raise ValueError("recurrent_forward needs a transformer converted with convert_wan")
    unconverted = sorted(set(range(len(transformer.blocks))) - set(converted_blocks(transformer)))
    if unconverted:
        raise ValueError(
            f"recurrent_forward needs every block converted, but blocks {unconverted} still run full softmax "
            "attention over the whole video (convert with ReHyAtConfig(blocks='all'))"
        )
    if runtime.config.attention != "hybrid":
        raise ValueError(
            f"recurrent_forward runs ReHyAt attention; attention={runtime.config.attention!r} is a baseline "
            "for parallel ablations only"
        )
    if not runtime.config.causal:
        raise ValueError(
            "recurrent_forward needs the causal variant: with causal=False the linear part reads future frames"
        )
    return runtime


def _frame_by_frame(forward, frame_tokens: int):
    """A token-wise ``forward`` applied to one frame's tokens at a time ([B, N, C] -> [B, N, C'])."""

    def run(hidden_states: Tensor, *args, **kwargs) -> Tensor:
        parts = hidden_states.split(frame_tokens, dim=1)
        return torch.cat([forward(part, *args, **kwargs) for part in parts], dim=1)

    return run


@contextmanager
def _streaming(transformer: nn.Module, runtime: ReHyAtRuntime, grid: tuple[int, int, int]) -> Iterator[None]:
    """Put every processor in streaming mode with fresh states and every feed-forward frame by frame;
    restore parallel mode afterwards."""
    processors = [block.attn1.processor for block in transformer.blocks]
    for processor in processors:
        processor.state = None
    # A forward already set on an FFN instance (e.g. an offloading hook) is put back afterwards.
    own_forwards = [vars(block.ffn).get("forward") for block in transformer.blocks]
    try:
        for block in transformer.blocks:
            block.ffn.forward = _frame_by_frame(block.ffn.forward, grid[1] * grid[2])
        runtime.streaming, runtime.grid = True, grid
        yield
    finally:
        runtime.streaming, runtime.grid = False, None
        for processor in processors:
            processor.state = None
        for block, forward in zip(transformer.blocks, own_forwards, strict=True):
            if forward is None:
                vars(block.ffn).pop("forward", None)  # the class's forward shows through again
            else:
                block.ffn.forward = forward


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

    Needs every block converted with ``causal=True`` and one timestep per batch element (Wan2.1;
    Wan2.2-TI2V's per-token timesteps are not supported). Each call starts from fresh states, so a call
    is one denoising step of one CFG branch. Run it under ``torch.no_grad()``/``torch.inference_mode()``
    for constant memory: with autograd on, the graph keeps every chunk's activations.
    """
    runtime = _check_recurrent(transformer)
    if hidden_states.dim() != 5:
        raise ValueError(f"hidden_states must be [B, C, F, H, W], got shape {tuple(hidden_states.shape)}")
    if timestep.dim() != 1:
        raise ValueError(
            f"timestep must have one value per batch element (shape [B]), got shape {tuple(timestep.shape)}; "
            "per-token timesteps (Wan2.2-TI2V) are not supported by the recurrent forward"
        )
    batch, _, _, height, width = hidden_states.shape
    p_t, p_h, p_w = transformer.config.patch_size
    grid = (hidden_states.shape[2] // p_t, height // p_h, width // p_w)
    frames, rows, cols = grid

    temb, timestep_proj, context, context_image = transformer.condition_embedder(
        timestep, encoder_hidden_states, encoder_hidden_states_image
    )
    timestep_proj = timestep_proj.unflatten(1, (6, -1))
    if context_image is not None:
        context = torch.cat([context_image, context], dim=1)
    shift, scale = (transformer.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)

    output = None
    chunk_frames = runtime.config.chunk_frames
    with _streaming(transformer, runtime, grid):
        for start in range(0, frames, chunk_frames):
            stop = min(start + chunk_frames, frames)
            cos, sin = rotary_for_frames(transformer.rope, start, stop, rows, cols)
            rotary = (cos.to(hidden_states.device), sin.to(hidden_states.device))
            x = transformer.patch_embedding(hidden_states[:, :, start * p_t : stop * p_t])
            x = x.flatten(2).transpose(1, 2).contiguous()
            for block in transformer.blocks:
                x = block(x, context, timestep_proj, rotary)
            x = (transformer.norm_out(x.float()) * (1 + scale.to(x.device)) + shift.to(x.device)).type_as(x)
            x = transformer.proj_out(x)
            channels = transformer.proj_out.out_features // (p_t * p_h * p_w)  # explicit: B may be 0
            x = x.reshape(batch, stop - start, rows, cols, p_t, p_h, p_w, channels)
            x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
            x = x.flatten(6, 7).flatten(4, 5).flatten(2, 3)
            if output is None:
                output = x.new_empty(batch, x.shape[1], frames * p_t, rows * p_h, cols * p_w)
            output[:, :, start * p_t : stop * p_t] = x
    return output
