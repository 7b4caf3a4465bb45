"""Record a teacher video transformer's self-attention inputs and outputs (stage-1 distillation data).

:class:`AttentionRecorder` wraps the self-attention processor of chosen blocks of an unconverted model of
any family :func:`rehyat.models.convert` converts (found through the family's adapter). While
``active``, each self-attention call also records, per block: q and k exactly as attention sees them
(after the QK RMSNorm and the family's RoPE, applied as the family's ReHyAt processor applies it), v,
and the teacher's per-head softmax output before the output projection (the input of ``to_out[0]``).
The teacher's own processor still computes the attention, so the recorded output is the teacher's, bit
for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.models.families import family_of


@dataclass
class AttentionCapture:
    """One self-attention call of one block: q, k, v, y as [B, N, H, D], frame-major tokens, and the
    rotary (cos, sin) that q and k got, in the family's layout (Wan: [1, N, 1, D]; LTX-Video: [B, N, H·D];
    for φ inputs other than q and k themselves)."""

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
        rotate = self.recorder.family.processor.rotate
        q, k = (rotate(seen[name], heads, rotary_emb) for name in ("q", "k"))
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
        self.family = family_of(transformer)
        num_blocks = len(self.family.blocks(transformer))
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
        _, height, width = self.family.grid(module, self.family.bind(module, args, kwargs))
        self.frame_tokens = height * width

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
        attention = {b: self.family.attention(self.transformer, b) for b in self.blocks}
        originals = {b: attn.processor for b, attn in attention.items()}
        hook = self.transformer.register_forward_pre_hook(self._capture_grid, with_kwargs=True)
        try:
            for b, processor in originals.items():
                if isinstance(processor, _RecordingProcessor):
                    raise ValueError(f"{self.family.attention_path(b)} is already being recorded")
                attention[b].set_processor(_RecordingProcessor(processor, b, self))
            yield self
        finally:
            hook.remove()
            for b, processor in originals.items():
                attention[b].set_processor(processor)
