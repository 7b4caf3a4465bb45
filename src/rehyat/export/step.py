"""Pure-tensor, fixed-shape modules of the recurrent chunk step, for export to a static graph.

A converted Wan DiT runs a video chunk by chunk (:func:`rehyat.recurrent_forward`); each converted
block carries a :class:`~rehyat.HybridAttentionState` from one chunk to the next. A static graph cannot
take a Python state object or a shape that changes, so the modules here take the state as plain tensors
and return the next state as plain tensors: per converted block

=========== ============================ ====================================================
name        shape                        what
=========== ============================ ====================================================
kv          [B, H, D', D]                Σ φk(k) vᵀ over the frames that left the window (fp32)
z           [B, H, D']                   Σ φk(k) over the same frames (fp32)
k, v        [B, m·S, H, D]               K, V of the last m cached frames (the overlap)
pending_kv  [B, m, H, D', D]             those m frames' own φk(K)ᵀV, not yet in kv
pending_z   [B, m, H, D']                those m frames' own Σ φk(K), not yet in z
=========== ============================ ====================================================

(the library keeps the cached frames' φk(K) as these per-frame sums: D'·D per head and frame instead of
S·D'). Nothing here re-implements the attention: each module sets the block's processor state from its
tensor inputs, calls the block itself (its processor calls :func:`rehyat.hybrid_attention_step` with
``backend="torch"``) and reads the next state back, so the traced graph is the library's own step.

The only shapes that vary along a video are the number of cached frames m (``min(To, frames seen)``)
and a short last chunk, and the first chunk has no state at all, so a video needs a few graphs, one per
:class:`StepSignature` (first or not, cached frames, chunk frames): :func:`chunk_schedule` lists them.
A graph takes only non-empty state tensors: none for the first chunk, kv and z alone when m = 0
(To = 0), all six otherwise; it returns kv, z and, when To > 0, the four cached-frame tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.attention import HybridAttentionState
from rehyat.models import wan
from rehyat.models.adapter import converted_blocks, rehyat_runtime
from rehyat.models.wan import ReHyAtWanAttnProcessor, rotary_at_frames

#: Names of one block's state tensors, in the order the step takes and returns them.
STATE_FIELDS = ("kv", "z", "k", "v", "pending_kv", "pending_z")


@dataclass(frozen=True)
class StepSignature:
    """The static shape of one step graph: ``cached`` overlap frames in the state, ``frames`` in the
    chunk; ``first``: the video's first chunk (no state input)."""

    cached: int
    frames: int
    first: bool = False

    @property
    def name(self) -> str:
        return f"step_first_f{self.frames}" if self.first else f"step_c{self.cached}_f{self.frames}"

    def state_inputs(self) -> tuple[str, ...]:
        """The state fields this graph takes per block (empty tensors are left out)."""
        if self.first:
            return ()
        return STATE_FIELDS if self.cached else STATE_FIELDS[:2]


def state_outputs(overlap_frames: int) -> tuple[str, ...]:
    """The state fields a step returns per block: the cached-frame tensors only when To > 0."""
    return STATE_FIELDS if overlap_frames else STATE_FIELDS[:2]


def chunk_schedule(
    num_frames: int, chunk_frames: int, overlap_frames: int
) -> list[tuple[int, StepSignature]]:
    """(first frame, signature) of every chunk of a video of ``num_frames`` post-patch frames
    (docs/method.md §2: chunks start at frame 0, the last may be shorter; chunk t caches min(To, t·Tc)
    frames)."""
    for name, value, least in (("num_frames", num_frames, 1), ("chunk_frames", chunk_frames, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if isinstance(overlap_frames, bool) or not isinstance(overlap_frames, int) or overlap_frames < 0:
        raise ValueError(f"overlap_frames must be an int >= 0, got {overlap_frames!r}")
    return [
        (start, StepSignature(min(overlap_frames, start), min(chunk_frames, num_frames - start), start == 0))
        for start in range(0, num_frames, chunk_frames)
    ]


def state_shapes(
    batch: int, heads: int, head_dim: int, feature_dim: int, frame_tokens: int, cached: int
) -> dict[str, tuple[int, ...]]:
    """Shapes of one block's state tensors (:data:`STATE_FIELDS`) with ``cached`` overlap frames."""
    return {
        "kv": (batch, heads, feature_dim, head_dim),
        "z": (batch, heads, feature_dim),
        "k": (batch, cached * frame_tokens, heads, head_dim),
        "v": (batch, cached * frame_tokens, heads, head_dim),
        "pending_kv": (batch, cached, heads, feature_dim, head_dim),
        "pending_z": (batch, cached, heads, feature_dim),
    }


def _check_streamable(transformer: nn.Module) -> list[int]:
    runtime = rehyat_runtime(transformer)
    if runtime is None:
        raise ValueError("exporting the recurrent step needs a transformer converted with convert_wan")
    blocks = converted_blocks(transformer)
    if blocks != list(range(len(transformer.blocks))):
        missing = sorted(set(range(len(transformer.blocks))) - set(blocks))
        raise ValueError(
            f"the recurrent step needs every block converted, but blocks {missing} run full softmax "
            "attention over the whole video (convert with ReHyAtConfig(blocks='all'))"
        )
    config = runtime.config
    if config.attention != "hybrid" or not config.causal:
        raise ValueError(
            "the recurrent step needs causal ReHyAt attention (attention='hybrid', causal=True), got "
            f"attention={config.attention!r}, causal={config.causal}"
        )
    if config.anchor_frames:
        raise ValueError(
            f"the exported recurrent step has no anchor state: anchor_frames={config.anchor_frames} "
            "is not supported (convert with anchor_frames=0 to export)"
        )
    if config.first_chunk_frames:
        raise ValueError(
            f"the exported recurrent step has one chunk shape per chunk size: first_chunk_frames="
            f"{config.first_chunk_frames} is not supported (convert with first_chunk_frames=0 to export)"
        )
    return blocks


@contextmanager
def _stepping(transformer: nn.Module, grid: tuple[int, int, int]) -> Iterator[list[ReHyAtWanAttnProcessor]]:
    """Streaming mode on the PyTorch path with no statistics (a traced graph has no Python counters);
    everything is put back afterwards."""
    runtime = rehyat_runtime(transformer)
    processors = [block.attn1.processor for block in transformer.blocks]
    saved = [p.stats for p in processors]
    try:
        with runtime.mode(streaming=True, grid=grid, backend="torch"):
            for processor in processors:
                processor.stats, processor.state = None, None
            yield processors
    finally:
        for processor, stats in zip(processors, saved, strict=True):
            processor.stats, processor.state = stats, None


def _state_from(
    tensors: tuple[Tensor, ...], signature: StepSignature, frame_tokens: int, overlap: int
) -> HybridAttentionState | None:
    """The library's state from a graph's state inputs (the empty cached-frame tensors made here)."""
    if signature.first:
        return None
    fields = dict(zip(signature.state_inputs(), tensors, strict=True))
    if not signature.cached:
        kv, z = fields["kv"], fields["z"]
        batch, heads, feature_dim, head_dim = kv.shape
        fields.update(
            k=kv.new_zeros(batch, 0, heads, head_dim),
            v=kv.new_zeros(batch, 0, heads, head_dim),
            pending_kv=kv.new_zeros(batch, 0, heads, feature_dim, head_dim),
            pending_z=z.new_zeros(batch, 0, heads, feature_dim),
        )
    return HybridAttentionState(**fields, frame_tokens=frame_tokens, overlap_frames=overlap)


def _state_tensors(state: HybridAttentionState, overlap: int) -> tuple[Tensor, ...]:
    return tuple(getattr(state, name) for name in state_outputs(overlap))


def _patch_embed(conv: nn.Conv3d, latents: Tensor, frames: int, rows: int, cols: int) -> Tensor:
    """Wan's patch embedding (a Conv3d whose stride is its kernel) as one matmul over the patches,
    [B, C, n·p_t, rows·p_h, cols·p_w] -> [B, n·rows·cols, width], in at most 6 dims: runtimes without
    3D convolutions (ExecuTorch's portable kernels) take it, and XNNPACK runs it as a linear layer."""
    p_t, p_h, p_w = conv.kernel_size
    batch, channels = latents.shape[:2]
    x = latents.reshape(batch * channels * frames, p_t, rows, p_h, cols, p_w).permute(0, 2, 4, 1, 3, 5)
    x = x.reshape(batch, channels, frames * rows * cols, p_t * p_h * p_w).transpose(1, 2)
    x = x.reshape(batch, frames * rows * cols, channels * p_t * p_h * p_w)
    return nn.functional.linear(x, conv.weight.flatten(1), conv.bias)


def _unaliased(outputs, inputs) -> list[Tensor]:
    """``outputs`` with any tensor that is one of ``inputs`` copied (a step that retires no frame
    passes kv, z through; a graph output may not be its input)."""
    return [t.clone() if any(t is s for s in inputs) else t for t in outputs]


class DiTStep(nn.Module):
    """One chunk through a whole converted Wan DiT, with every block's state in and out as tensors.

    ``forward(latents, timestep, context, frame_start, *state) -> (output, *next_state)``:
    latents [B, C, n·p_t, H·p_h, W·p_w] (the chunk of the latent video), timestep [B], context
    [B, L, text_dim] (text embeddings before Wan's text embedder), frame_start [1] int64 (the chunk's
    first post-patch frame, for RoPE), then the state fields of block 0, block 1, …
    (:meth:`StepSignature.state_inputs`: none for the first chunk, which starts from zeros). Returns the
    model output for the chunk (shaped like ``latents``) and every block's next state
    (:func:`state_outputs`), which has min(To, cached + n) cached frames. Equal to the matching slice of :func:`rehyat.recurrent_forward`.
    """

    def __init__(self, transformer: nn.Module, signature: StepSignature, height: int, width: int) -> None:
        super().__init__()
        _check_streamable(transformer)
        self.transformer = transformer
        self.signature = signature
        _, p_h, p_w = transformer.config.patch_size
        if height % p_h or width % p_w:
            raise ValueError(f"latent size {height}×{width} is not divisible by the patch {p_h}×{p_w}")
        self.rows, self.cols = height // p_h, width // p_w
        self.overlap = rehyat_runtime(transformer).config.overlap_frames

    @property
    def frame_tokens(self) -> int:
        return self.rows * self.cols

    def forward(
        self, latents: Tensor, timestep: Tensor, context: Tensor, frame_start: Tensor, *state: Tensor
    ) -> tuple[Tensor, ...]:
        model = self.transformer
        n, rows, cols = self.signature.frames, self.rows, self.cols
        p_t, p_h, p_w = model.config.patch_size
        batch = latents.shape[0]
        per_block = len(self.signature.state_inputs())
        temb, timestep_proj, context, _ = model.condition_embedder(timestep, context, None)
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        shift, scale = (model.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        frames = frame_start.reshape(1) + torch.arange(n, device=frame_start.device)
        rotary = rotary_at_frames(model.rope, frames, rows, cols)
        x = _patch_embed(model.patch_embedding, latents, n, rows, cols)
        next_state: list[Tensor] = []
        with _stepping(model, (n, rows, cols)) as processors:
            for index, (block, processor) in enumerate(zip(model.blocks, processors, strict=True)):
                mine = state[index * per_block : (index + 1) * per_block]
                processor.state = _state_from(mine, self.signature, self.frame_tokens, self.overlap)
                x = block(x, context, timestep_proj, rotary)
                next_state.extend(_state_tensors(processor.state, self.overlap))
        next_state = _unaliased(next_state, state)
        x = (model.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = model.proj_out(x)
        # Unpatchify as recurrent_forward does, in at most 6 dims (XNNPACK's limit): channels first, then
        # (B·C·n, rows, cols, p_t, p_h, p_w) -> (B·C·n, p_t, rows, p_h, cols, p_w).
        channels = x.shape[-1] // (p_t * p_h * p_w)
        x = x.reshape(batch, -1, channels).transpose(1, 2)
        x = x.reshape(batch * channels * n, rows, cols, p_t, p_h, p_w).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(batch, channels, n * p_t, rows * p_h, cols * p_w)
        return (x, *next_state)


class BlockStep(nn.Module):
    """One chunk through one converted Wan block, its state in and out as tensors.

    ``forward(hidden, timestep_proj, context, frame_start, *state) -> (hidden_out, *next_state)``:
    hidden [B, n·S, C] (the chunk's tokens), timestep_proj [B, 6, C] (the block's modulation input, from
    the condition embedder), context [B, L, C] (embedded text), frame_start [1] int64, then the block's
    state fields (:meth:`StepSignature.state_inputs`); returns the output and :func:`state_outputs`.
    """

    def __init__(
        self, transformer: nn.Module, index: int, signature: StepSignature, height: int, width: int
    ) -> None:
        super().__init__()
        _check_streamable(transformer)
        self.transformer = transformer  # for the shared runtime and RoPE tables; only one block runs
        self.index = index
        self.signature = signature
        self.rows, self.cols = height, width
        self.overlap = rehyat_runtime(transformer).config.overlap_frames

    def forward(
        self, hidden: Tensor, timestep_proj: Tensor, context: Tensor, frame_start: Tensor, *state: Tensor
    ) -> tuple[Tensor, ...]:
        model = self.transformer
        n = self.signature.frames
        frames = frame_start.reshape(1) + torch.arange(n, device=frame_start.device)
        rotary = rotary_at_frames(model.rope, frames, self.rows, self.cols)
        with _stepping(model, (n, self.rows, self.cols)) as processors:
            processor = processors[self.index]
            processor.state = _state_from(state, self.signature, self.rows * self.cols, self.overlap)
            out = model.blocks[self.index](hidden, context, timestep_proj, rotary)
            return (out, *_unaliased(_state_tensors(processor.state, self.overlap), state))


class HeadwiseSoftmaxProcessor:
    """Wan's full softmax self-attention written head by head (plain matmul + softmax per head), so an
    exported graph holds one head's N×N scores at a time instead of all heads' (which would not fit in
    memory at a few thousand tokens per frame). The baseline the recurrent step is benchmarked against."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = wan.apply_rotary(query, *rotary_emb), wan.apply_rotary(key, *rotary_emb)
        scale = query.shape[-1] ** -0.5
        heads = []
        for h in range(attn.heads):
            scores = torch.matmul(query[:, :, h], key[:, :, h].transpose(1, 2)) * scale
            heads.append(torch.matmul(torch.softmax(scores, dim=-1), value[:, :, h]))
        out = torch.stack(heads, dim=2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class FullBlock(nn.Module):
    """One unconverted Wan block over a whole video (full softmax attention, head by head):
    ``forward(hidden [B, T·S, C], timestep_proj [B, 6, C], context [B, L, C], cos, sin) -> hidden_out``
    with the video's RoPE tables cos, sin [1, T·S, 1, D] (:func:`rehyat.models.wan.rotary_at_frames`) as inputs, so one graph with
    a dynamic token count serves every video length."""

    def __init__(self, transformer: nn.Module, index: int) -> None:
        super().__init__()
        self.block = transformer.blocks[index]
        self.block.attn1.set_processor(HeadwiseSoftmaxProcessor())

    def forward(
        self, hidden: Tensor, timestep_proj: Tensor, context: Tensor, cos: Tensor, sin: Tensor
    ) -> Tensor:
        return self.block(hidden, context, timestep_proj, (cos, sin))
