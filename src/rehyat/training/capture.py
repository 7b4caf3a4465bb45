"""Record a teacher Wan transformer's self-attention inputs and outputs (stage-1 distillation data).

:class:`AttentionRecorder` wraps the ``attn1`` processor of chosen blocks of an unconverted
``WanTransformer3DModel``. While ``active``, each self-attention call also records, per block:
q and k exactly as attention sees them (after the QK RMSNorm and 3D RoPE), v, and the teacher's
per-head softmax output before the output projection (the input of ``to_out[0]``). The teacher's own
processor still computes the attention, so the recorded output is the teacher's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.models.wan import apply_rotary


@dataclass
class AttentionCapture:
    """One self-attention call of one block: q, k, v, y as [B, N, H, D], frame-major tokens, and the
    rotary (cos, sin) [1, N, 1, D] that q and k got (for φ inputs other than q and k themselves)."""

    q: Tensor
    k: Tensor
    v: Tensor
    y: Tensor
    frame_tokens: int
    rotary: tuple[Tensor, Tensor] | None = None

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> AttentionCapture:
        """Moved to ``device``, q/k/v/y cast to ``dtype``; the rotary keeps its own dtype."""
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        rotary = None if self.rotary is None else tuple(t.to(device=device) for t in self.rotary)
        return AttentionCapture(
            move(self.q), move(self.k), move(self.v), move(self.y), self.frame_tokens, rotary
        )

    @property
    def frames(self) -> int:
        return self.q.shape[1] // self.frame_tokens


class _RecordingProcessor:
    """Runs the wrapped processor; when the recorder is active, records q, k, v and y on the way."""

    def __init__(self, inner: object, block: int, recorder: AttentionRecorder) -> None:
        self.inner = inner
        self.block = block
        self.recorder = recorder

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        if not self.recorder.active:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if getattr(attn, "fused_projections", False):
            raise ValueError("capture needs unfused q/k/v projections: call unfuse_qkv_projections() first")
        seen: dict[str, Tensor] = {}
        hooks = [
            attn.norm_q.register_forward_hook(lambda _m, _i, out: seen.__setitem__("q", out)),
            attn.norm_k.register_forward_hook(lambda _m, _i, out: seen.__setitem__("k", out)),
            attn.to_v.register_forward_hook(lambda _m, _i, out: seen.__setitem__("v", out)),
            attn.to_out[0].register_forward_pre_hook(lambda _m, args: seen.__setitem__("y", args[0])),
        ]
        try:
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        finally:
            for hook in hooks:
                hook.remove()
        heads = attn.heads
        q, k = (seen[name].unflatten(2, (heads, -1)) for name in ("q", "k"))
        if rotary_emb is not None:
            q, k = apply_rotary(q, *rotary_emb), apply_rotary(k, *rotary_emb)
        capture = AttentionCapture(
            q=q,
            k=k,
            v=seen["v"].unflatten(2, (heads, -1)),
            y=seen["y"].unflatten(2, (heads, -1)),
            frame_tokens=self.recorder.frame_tokens,
            rotary=rotary_emb,
        )
        self.recorder.record(self.block, capture)
        return out


class AttentionRecorder:
    """Records self-attention captures of ``blocks`` of a teacher transformer while :attr:`active`.

    Captures are detached, moved to ``store_device``/``store_dtype`` and appended to
    :attr:`captures` (block → list), which the caller consumes and clears.
    """

    def __init__(
        self,
        transformer: nn.Module,
        blocks: list[int],
        *,
        store_device: str | torch.device = "cpu",
        store_dtype: torch.dtype | None = None,
    ) -> None:
        num_blocks = len(transformer.blocks)
        bad = [b for b in blocks if not 0 <= b < num_blocks]
        if bad:
            raise ValueError(f"blocks {bad} are out of range for a model with {num_blocks} blocks")
        self.transformer = transformer
        self.blocks = list(blocks)
        self.store_device, self.store_dtype = store_device, store_dtype
        self.active = False
        self.frame_tokens = 0
        self.captures: dict[int, list[AttentionCapture]] = {b: [] for b in self.blocks}

    def _capture_grid(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        _, p_h, p_w = module.config.patch_size
        self.frame_tokens = (hidden_states.shape[-2] // p_h) * (hidden_states.shape[-1] // p_w)

    def record(self, block: int, capture: AttentionCapture) -> None:
        with torch.no_grad():
            moved = capture.to(self.store_device, self.store_dtype)
        rotary = None if moved.rotary is None else tuple(t.detach() for t in moved.rotary)
        self.captures[block].append(
            AttentionCapture(
                *(t.detach() for t in (moved.q, moved.k, moved.v, moved.y)), moved.frame_tokens, rotary
            )
        )

    def take(self) -> dict[int, list[AttentionCapture]]:
        """Return the captures recorded so far and start empty."""
        taken, self.captures = self.captures, {b: [] for b in self.blocks}
        return taken

    @contextmanager
    def installed(self) -> Iterator[AttentionRecorder]:
        """Wrap the blocks' processors (and restore them on exit)."""
        originals = {b: self.transformer.blocks[b].attn1.processor for b in self.blocks}
        hook = self.transformer.register_forward_pre_hook(self._capture_grid, with_kwargs=True)
        try:
            for b, processor in originals.items():
                if isinstance(processor, _RecordingProcessor):
                    raise ValueError(f"blocks[{b}].attn1 is already being recorded")
                self.transformer.blocks[b].attn1.set_processor(_RecordingProcessor(processor, b, self))
            yield self
        finally:
            hook.remove()
            for b, processor in originals.items():
                self.transformer.blocks[b].attn1.set_processor(processor)
