"""The recurrent pipeline form of chunk parallelism (inference): each rank streams its own chunks
through the whole model with :func:`rehyat.hybrid_attention_step`, starting from the per-layer
:class:`~rehyat.HybridAttentionState` the previous rank ended with, and hands its own final states to
the next rank (point to point, once per layer per forward: Skv, z, and the K, V and sums of the last
To frames). Ranks run one after the other on one video, so this form divides memory, not time; it
overlaps when several videos, denoising steps or CFG branches are in flight.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rehyat.attention import HybridAttentionState
from rehyat.parallel.comm import record_message
from rehyat.parallel.wan import ChunkParallel, chunk_parallel_of

_TENSORS = ("kv", "z", "k", "v", "pending_kv", "pending_z")


def _send_states(states: list[HybridAttentionState], dst: int, group) -> None:
    payload = [
        (
            {name: getattr(s, name).detach().cpu() for name in _TENSORS},
            s.frame_tokens,
            s.overlap_frames,
            s.frames_seen,
        )
        for s in states
    ]
    nbytes = sum(t.numel() * t.element_size() for tensors, *_ in payload for t in tensors.values())
    record_message("send", "state", "forward", dst, nbytes)
    dist.send_object_list(
        [payload], dst=dist.get_global_rank(group, dst) if group is not None else dst, group=group
    )


def _receive_states(src: int, group, device: torch.device) -> list[HybridAttentionState]:
    box: list = [None]
    dist.recv_object_list(
        box, src=dist.get_global_rank(group, src) if group is not None else src, group=group
    )
    return [
        HybridAttentionState(
            **{name: t.to(device) for name, t in tensors.items()},
            frame_tokens=frame_tokens,
            overlap_frames=overlap_frames,
            frames_seen=frames_seen,
        )
        for tensors, frame_tokens, overlap_frames, frames_seen in box[0]
    ]


@contextmanager
def _streaming_chunks(handle: ChunkParallel, transformer: nn.Module, states):
    processors = [block.attn1.processor for block in transformer.blocks]
    try:
        for processor, state in zip(processors, states, strict=True):
            processor.state = state
        with handle.runtime.mode(streaming=True):
            yield processors
    finally:
        handle.stream_start = None
        for processor in processors:
            processor.state = None


def chunk_parallel_recurrent_forward(
    transformer: nn.Module,
    hidden_states: Tensor,
    timestep: Tensor,
    encoder_hidden_states: Tensor,
    encoder_hidden_states_image: Tensor | None = None,
) -> Tensor:
    """This rank's frames of :func:`rehyat.recurrent_forward` over the whole video, with
    :func:`~rehyat.parallel.enable_chunk_parallel` enabled: rank r waits for rank r − 1's states,
    streams its chunks (each one transformer call on that chunk's frames, RoPE at global positions),
    then sends its states to rank r + 1.

    Needs every block converted with ``causal=True`` (as :func:`rehyat.recurrent_forward`) and no
    gradients (run under ``torch.no_grad()``): the state handoff is not differentiable. Every rank of
    the group calls it (it starts with the same agreement check as the parallel forward).
    """
    handle = chunk_parallel_of(transformer)
    if handle is None:
        raise ValueError(
            "enable_chunk_parallel first: the pipeline form runs on a chunk-parallel transformer"
        )
    if handle.softmax_blocks or not handle.runtime.config.causal:
        raise ValueError(
            "the pipeline form streams chunks in order: it needs every block converted (blocks left "
            f"softmax: {handle.softmax_blocks}) and the causal variant (causal="
            f"{handle.runtime.config.causal})"
        )
    if torch.is_grad_enabled():
        raise ValueError(
            "the pipeline form is for inference: run it under torch.no_grad() (for training use the "
            "parallel form, transformer(local_latent, ...), whose exchanges are differentiable)"
        )
    # The agreement check of a parallel forward (collective): the layout and this rank's frames.
    layout = handle.prepare(hidden_states, timestep, encoder_hidden_states)
    start = layout.ranges[handle.rank][0]
    p_t = transformer.config.patch_size[0]
    states = [None] * len(transformer.blocks)
    if handle.rank > 0:
        states = _receive_states(handle.rank - 1, handle.group, hidden_states.device)
    outputs = []
    with _streaming_chunks(handle, transformer, states) as processors:
        for chunk in layout.chunks(handle.rank):
            handle.stream_start = chunk.start
            frames = slice((chunk.start - start) * p_t, (chunk.stop - start) * p_t)
            outputs.append(
                transformer(
                    hidden_states[:, :, frames],
                    timestep,
                    encoder_hidden_states,
                    encoder_hidden_states_image,
                    return_dict=False,
                )[0]
            )
        if handle.rank + 1 < handle.world:
            _send_states([p.state for p in processors], handle.rank + 1, handle.group)
    return torch.cat(outputs, dim=2)
