"""Record a teacher video transformer's self-attention inputs and outputs (stage-1 distillation data).

:class:`AttentionRecorder` wraps the self-attention processor of chosen blocks of an unconverted model of
any family :func:`rehyat.models.convert` converts (found through the family's adapter). While
``active``, each self-attention call also records, per block: q and k exactly as attention sees them
(after the QK RMSNorm and the family's RoPE, applied as the family's ReHyAt processor applies it), v,
and the teacher's per-head softmax output before the output projection (the input of ``to_out[0]``).
The teacher's own processor still computes the attention, so the recorded output is the teacher's, bit
for bit.

In a joint text–video attention layer (HunyuanVideo, CogVideoX; docs/method.md §6.1) the capture holds the
video tokens' q, k, v and the teacher's output rows of the video queries, and beside them the text keys,
values and mask: the global keys that every chunk's softmax window of the converted layer includes. q, k, v
and the text are recomputed from the layer's inputs by the family's ReHyAt processor (``project_joint``,
which computes them as the teacher does); the output rows are the teacher's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rehyat.models.families import family_of
from rehyat.models.joint import JointAdapter


@dataclass
class AttentionCapture:
    """One self-attention call of one block: q, k, v, y as [B, N, H, D], frame-major tokens, and the
    rotary (cos, sin) that q and k got, in the family's layout (Wan: [1, N, 1, D]; LTX-Video: [B, N, H·D];
    for φ inputs other than q and k themselves). A joint text–video layer's capture also holds the text
    keys and values [B, L, H, D] and their mask [B, L] (True = attended; None: all), the op's
    ``global_k``, ``global_v``, ``global_mask``; q, k, v, y are then the video tokens' only."""

    q: Tensor
    k: Tensor
    v: Tensor
    y: Tensor
    frame_tokens: int
    rotary: tuple[Tensor, Tensor] | None = None
    global_k: Tensor | None = None
    global_v: Tensor | None = None
    global_mask: Tensor | None = None

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> AttentionCapture:
        """Moved to ``device``, q/k/v/y and the text keys cast to ``dtype``; the rotary keeps its own
        dtype, the text mask stays bool."""
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        rotary = None if self.rotary is None else tuple(t.to(device=device) for t in self.rotary)
        mask = None if self.global_mask is None else self.global_mask.to(device=device)
        return AttentionCapture(
            move(self.q),
            move(self.k),
            move(self.v),
            move(self.y),
            self.frame_tokens,
            rotary,
            move(self.global_k),
            move(self.global_v),
            mask,
        )

    def detach(self) -> AttentionCapture:
        """Every tensor detached from the graph."""
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        rotary = None if self.rotary is None else tuple(t.detach() for t in self.rotary)
        tensors = (self.q, self.k, self.v, self.y)
        text = (self.global_k, self.global_v, self.global_mask)
        return AttentionCapture(*map(detach, tensors), self.frame_tokens, rotary, *map(detach, text))

    def global_keys(self) -> dict[str, Tensor | None]:
        """The op's global-key arguments of a joint layer's capture ({} for a self-attention layer's)."""
        if self.global_k is None:
            return {}
        return dict(global_k=self.global_k, global_v=self.global_v, global_mask=self.global_mask)

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


class _JointRecordingProcessor(_RecordingProcessor):
    """A joint text–video attention layer's recording processor (the module docstring): diffusers calls it
    with ``image_rotary_emb`` and the text as ``encoder_hidden_states``."""

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb: tuple[Tensor, Tensor] | None = None,
    ):
        if not self.recorder.active:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        seen: list[Tensor] = []
        to_out = getattr(attn, "to_out", None)
        hook = None
        if to_out is not None:
            hook = to_out[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        finally:
            if hook is not None:
                hook.remove()
        processor = self.recorder.family.processor
        q, k, v, _, text_k, text_v = processor.project_joint(
            attn, hidden_states, encoder_hidden_states, image_rotary_emb
        )
        video_tokens = q.shape[1]
        # The teacher's rows of the video queries: the input of the output projection (CogVideoX projects
        # [text ‖ video], HunyuanVideo's dual-stream blocks the video rows alone), or the layer's video
        # output where it has none (HunyuanVideo's single-stream blocks).
        rows = seen[0][:, -video_tokens:] if seen else out[0]
        mask = processor.text_mask(attention_mask, video_tokens, text_k.shape[1])
        capture = AttentionCapture(
            q=q,
            k=k,
            v=v,
            y=rows.unflatten(2, (attn.heads, -1)),
            frame_tokens=self.recorder.frame_tokens,
            rotary=image_rotary_emb,
            global_k=text_k,
            global_v=text_v,
            global_mask=mask,
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
        self.joint = isinstance(self.family, JointAdapter)
        #: What φ reads of the captured q and k (the family processor's ``feature_input``), for the students.
        self.feature_input = (
            self.family.feature_input(transformer) if self.joint else self.family.processor.feature_input
        )
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
        self.captures[block].append(moved.detach())

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
                recording = _JointRecordingProcessor if self.joint else _RecordingProcessor
                attention[b].set_processor(recording(processor, b, self))
            yield self
        finally:
            hook.remove()
            for b, processor in originals.items():
                attention[b].set_processor(processor)
