"""Joint text–video attention (HunyuanVideo, CogVideoX): what the two families share (docs/method.md §6.1).

These models have no cross-attention: the text tokens join the video tokens in one attention. ReHyAt
makes the text keys *global* — every chunk's softmax window includes them, with one row max over both,
and they never enter the linear sums or the state — and gives every chunk its *own copy of the text*
through the whole network: a text query of chunk t has exactly chunk t's key sets, so the text rows of
the next layer depend on frames up to the end of chunk t only, and the network stays chunk-causal.

- **Recurrent form.** One chunk call of diffusers' own forward with the chunk's latent and the whole
  prompt (the hooks of :mod:`rehyat.models.hooks`) is exactly "a fresh text copy per chunk"; the state is
  the video-only state of docs/method.md §4.
- **Parallel form.** :func:`folded_forward_hook` (on the transformer, installed by conversion) folds the
  chunks of a call into the batch: [B, ...] becomes n·B entries of ``chunk_frames`` frames (chunk-major),
  each with its own copy of the text, timestep and positions at its absolute frames, and calls diffusers'
  forward once. A converted processor reads entry t's linear sums and overlap frames from the entries
  before it (the exclusive prefix over frames) and attends with :func:`rehyat.hybrid_attention_step` from
  that state. A shorter last chunk is a second call, started from the state after the full chunks.
  ``chunk_frames`` ≥ the video's frames is one entry attending to everything: the original model.
- **Rows.** The op attends the video queries, the text keys its global keys (docs/method.md §2.1); the L
  text queries of a chunk, which have the same key sets, are the step op's rows too
  (:func:`rehyat.attention.hybrid.recurrent.attend_rows`: the formula of §3 over [text ‖ window] with the
  chunk's linear state, on the kernels where the step runs there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rehyat.attention import HybridAttentionState, hybrid_attention_step
from rehyat.attention.hybrid.common import accumulation_dtype
from rehyat.attention.hybrid.recurrent import attend_rows
from rehyat.models.adapter import (
    PHI_K,
    PHI_Q,
    FamilyAdapter,
    Grid,
    ReHyAtAttnProcessor,
    ReHyAtRuntime,
    rehyat_runtime,
    temporal_unrotation,
)
from rehyat.models.config import ReHyAtConfig

FOLDED_FORWARD_HOOK = "rehyat_folded_forward"


@dataclass
class JointPlan:
    """What the current forward call of a converted joint-attention model holds (one per model).

    starts: the absolute first post-patch frame of each chunk entry of the call (chunk-major entries,
        ``len(starts)`` per batch element), or None outside a converted call; frames: the post-patch
        frames of the whole video; keep_state: whether the processors keep the state after the call's
        last entry (a shorter last chunk follows); temporal_channels: the leading channels of a head that
        the family's RoPE rotates by the frame (HunyuanVideo's ``rope_axes_dim[0]``); start: the latest
        chunk call's first frame as a 0-d int64 tensor on the model's device (a compiled chunk forward
        reads its position from it without specialising on the number).
    """

    starts: list[int] | None = None
    start: Tensor | None = None
    frames: int = 0
    keep_state: bool = False
    temporal_channels: int = 0


def rotate(x: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
    """diffusers' ``apply_rotary_emb`` (``use_real``, pairs interleaved) on x [E, N, H, D], with (cos, sin)
    [N, D] for every entry or [E, N, D] per entry (chunk entries at their own absolute frames)."""
    cos, sin = rotary_emb
    cos, sin = (t.unsqueeze(-2) if t.dim() == 3 else t[None, :, None, :] for t in (cos, sin))
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rotated = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return (x.float() * cos.to(x.device) + x_rotated.float() * sin.to(x.device)).to(x.dtype)


def unrotate_leading(x: Tensor, rotary_emb, channels: int) -> Tensor:
    """x [E, N, H, D] rotated by ``rotary_emb`` with the rotation of its leading ``channels`` channels of a
    head (the frame angles of CogVideoX's and HunyuanVideo's RoPE) undone."""
    cos, sin = rotary_emb
    temporal = torch.arange(cos.shape[-1], device=cos.device) < channels
    return rotate(x, temporal_unrotation(temporal, cos, sin))


def frame_sums(fk: Tensor, v: Tensor, frame_tokens: int) -> tuple[Tensor, Tensor]:
    """Each frame's linear sums φk(K)ᵀV [B, T, H, D', D] and Σ φk(K) [B, T, H, D'] (accumulation dtype)."""
    acc = accumulation_dtype(v.dtype)
    fk, v = fk.to(acc).unflatten(1, (-1, frame_tokens)), v.to(acc).unflatten(1, (-1, frame_tokens))
    return torch.einsum("btshf,btshd->bthfd", fk, v), fk.sum(dim=2)


@dataclass
class VideoKeys:
    """The video keys of a call in absolute frame order, per batch element: k, v [B, T·S, H, D], the frame
    sums and their exclusive prefixes (``prefix_kv[:, f]`` = the sums of frames before f)."""

    k: Tensor
    v: Tensor
    fk: Tensor
    frame_tokens: int
    overlap_frames: int
    sums: tuple[Tensor, Tensor] = field(init=False)
    prefix: tuple[Tensor, Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.sums = frame_sums(self.fk, self.v, self.frame_tokens)
        self.prefix = tuple(
            torch.cat([torch.zeros_like(x[:, :1]), x.cumsum(dim=1)], dim=1) for x in self.sums
        )

    def state_before(self, firsts: list[int], cached: int) -> HybridAttentionState:
        """The streaming state before each of the frames ``firsts`` (all with ``cached`` overlap frames,
        i.e. ``min(overlap_frames, first)``), stacked chunk-major: batch len(firsts)·B."""
        tokens = self.frame_tokens

        def stack(pick) -> Tensor:
            return torch.stack([pick(first) for first in firsts]).flatten(0, 1)

        rows = lambda x: stack(lambda f: x[:, (f - cached) * tokens : f * tokens])  # noqa: E731
        k = rows(self.k)
        initial = HybridAttentionState.initial(
            k, rows(self.v), rows(self.fk), frame_tokens=tokens, overlap_frames=self.overlap_frames
        )
        return dataclasses.replace(
            initial,
            kv=stack(lambda f: self.prefix[0][:, f - cached]),
            z=stack(lambda f: self.prefix[1][:, f - cached]),
            k=k,
            v=rows(self.v),
            pending_kv=stack(lambda f: self.sums[0][:, f - cached : f]),
            pending_z=stack(lambda f: self.sums[1][:, f - cached : f]),
            frames_seen=firsts[0],
        )


class ReHyAtJointAttnProcessor(ReHyAtAttnProcessor):
    """ReHyAt processor for a joint text–video attention layer (see the module docstring).

    A subclass supplies :meth:`project_joint` (video and text q, k, v [E, ·, H, D] exactly as the family
    computes them), :meth:`text_mask` and :meth:`joint_output` (the family's output projections and return
    value), and :meth:`feature_input` (what φ reads of the video q, k). φ reads the text q, which no RoPE
    rotates, as it is.
    """

    @staticmethod
    def project_joint(
        attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor, rotary_emb
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(video q, k, v, text q, k, v) [E, N or L, H, D] (shared with stage 1's capture)."""
        raise NotImplementedError

    @staticmethod
    def text_mask(attention_mask: Tensor | None, video_tokens: int, text_tokens: int) -> Tensor | None:
        """The text keys attended, [E, L] bool (None: all)."""
        return None

    def joint_output(self, attn: nn.Module, video: Tensor, text: Tensor):
        """The layer's return value from the attention outputs [E, N, H·D] and [E, L, H·D]."""
        raise NotImplementedError

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        image_rotary_emb=None,
    ):
        runtime: ReHyAtRuntime = self.runtime
        plan: JointPlan = runtime.joint
        if encoder_hidden_states is None:
            raise ValueError(
                "a joint text-video attention layer needs its text tokens (encoder_hidden_states)"
            )
        if runtime.grid is None or plan.starts is None:
            raise ValueError("no chunk plan: call the converted transformer, not its blocks")
        frame_tokens = runtime.grid[1] * runtime.grid[2]
        qv, kv, vv, qt, kt, vt = self.project_joint(
            attn, hidden_states, encoder_hidden_states, image_rotary_emb
        )
        if qv.shape[1] != runtime.grid[0] * frame_tokens:
            raise ValueError(
                f"attention got {qv.shape[1]} video tokens but the chunk grid {runtime.grid} has "
                f"{runtime.grid[0] * frame_tokens}"
            )
        mask = self.text_mask(attention_mask, qv.shape[1], qt.shape[1])
        config = runtime.config
        phi_q, phi_k = getattr(attn, PHI_Q), getattr(attn, PHI_K)
        fqv = phi_q(self.feature_input(config, qv, image_rotary_emb))
        fkv = phi_k(self.feature_input(config, kv, image_rotary_emb))
        fqt = phi_q(qt)
        scale = qv.shape[-1] ** -0.5
        text = (qt, fqt, kt, vt, mask)
        if runtime.streaming:
            state = self.state
            if state is None:
                state = HybridAttentionState.initial(
                    kv, vv, fkv, frame_tokens=frame_tokens, overlap_frames=config.overlap_frames
                )
            video, text_out, self.state = self._attend(qv, kv, vv, fqv, fkv, text, state, frame_tokens, scale)
        else:
            video, text_out = self._folded(qv, kv, vv, fqv, fkv, text, frame_tokens, scale)
        return self.joint_output(attn, video.flatten(2, 3).type_as(qv), text_out.flatten(2, 3).type_as(qt))

    def _attend(
        self, qv, kv, vv, fqv, fkv, text, state: HybridAttentionState, frame_tokens: int, scale: float
    ):
        """One step from ``state`` of chunk entries: (video rows, text rows, the next state)."""
        qt, fqt, kt, vt, mask = text
        video, next_state = hybrid_attention_step(
            qv,
            kv,
            vv,
            fqv,
            fkv,
            state,
            frame_tokens=frame_tokens,
            overlap_frames=self.runtime.config.overlap_frames,
            global_k=kt,
            global_v=vt,
            global_mask=mask,
            stats=self.stats,
            backend=self.runtime.backend,
        )
        text_out = attend_rows(
            qt,
            fqt,
            kv,
            vv,
            state,
            scale=scale,
            global_k=kt,
            global_v=vt,
            global_mask=mask,
            stats=self.stats,
            backend=self.runtime.backend,
        )
        return video, text_out, next_state

    def _folded(self, qv, kv, vv, fqv, fkv, text, frame_tokens: int, scale: float):
        """The parallel form over chunk entries (chunk-major, ``len(plan.starts)`` per batch element)."""
        plan: JointPlan = self.runtime.joint
        chunks, chunk_frames = len(plan.starts), self.runtime.grid[0]
        batch = qv.shape[0] // chunks
        overlap = self.runtime.config.overlap_frames

        def video_order(x: Tensor) -> Tensor:  # [n·B, Tc·S, ...] -> [B, n·Tc·S, ...]
            return x.unflatten(0, (chunks, batch)).transpose(0, 1).flatten(1, 2)

        keys = VideoKeys(video_order(kv), video_order(vv), video_order(fkv), frame_tokens, overlap)
        # Entries whose overlap cache holds fewer than To frames (the first ones) step alone; the rest as one.
        groups, t = [], 0
        while t < chunks:
            cached = min(overlap, t * chunk_frames)
            stop = t + 1 if cached < overlap else chunks
            groups.append((t, stop, cached))
            t = stop
        video, text_out = [], []
        for start, stop, cached in groups:
            rows = slice(start * batch, stop * batch)
            state = keys.state_before([i * chunk_frames for i in range(start, stop)], cached)
            part = tuple(x[rows] if x is not None else None for x in text)
            v_out, t_out, _ = self._attend(
                qv[rows], kv[rows], vv[rows], fqv[rows], fkv[rows], part, state, frame_tokens, scale
            )
            video.append(v_out)
            text_out.append(t_out)
        total = chunks * chunk_frames
        self.state = keys.state_before([total], min(overlap, total)) if plan.keep_state else None
        return torch.cat(video), torch.cat(text_out)


def folded_forward_hook(runtime: ReHyAtRuntime):
    """The transformer hook of the parallel form over chunk entries (a ``diffusers.hooks.ModelHook``,
    made here so that importing this module does not import diffusers)."""
    from diffusers.hooks import ModelHook
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    class FoldedForwardHook(ModelHook):
        """On a converted joint-attention transformer: a call outside a recurrent sweep runs as the parallel
        form over chunk entries (the module docstring); inside a sweep (each call one chunk) it passes."""

        def new_forward(self, module: nn.Module, *args, **kwargs):
            if runtime.streaming:
                return self.fn_ref.original_forward(*args, **kwargs)
            family: JointAdapter = runtime.family
            plan: JointPlan = runtime.joint
            call = family.bind(module, args, kwargs)
            return_dict = call.pop("return_dict", True)
            grid = family.grid(module, call)
            if getattr(module, "gradient_checkpointing", False) and torch.is_grad_enabled():
                raise ValueError(
                    "gradient checkpointing recomputes the blocks after the call, without its chunk entries: "
                    "not served for a converted joint-attention model yet (disable_gradient_checkpointing())"
                )
            if family.batch_size(call) == 0:
                output = family.empty_output(module, call)
                return Transformer2DModelOutput(sample=output) if return_dict else (output,)
            frames = grid[0]
            chunk_frames = min(runtime.config.chunk_frames, frames)
            chunks = frames // chunk_frames
            axis = family.frame_axis(module, grid)[0]
            processors = [family.attention(module, i).processor for i in range(len(family.blocks(module)))]
            try:
                entries = family.fold_call(module, call, chunks, chunk_frames, grid)
                plan.starts = [t * chunk_frames for t in range(chunks)]
                plan.frames, plan.keep_state = frames, chunks * chunk_frames < frames
                with runtime.mode(grid=(chunk_frames, grid[1], grid[2])):
                    folded = self.fn_ref.original_forward(**entries, return_dict=False)[0]
                parts = list(folded.unflatten(0, (chunks, -1)).unbind(0))
                if plan.keep_state:  # the shorter last chunk, from the state after the full ones
                    start = chunks * chunk_frames
                    last = family.chunk_call(module, call, start, frames, grid)
                    with runtime.mode(grid=(frames - start, grid[1], grid[2]), streaming=True):
                        parts.append(self.fn_ref.original_forward(**last, return_dict=False)[0])
                output = torch.cat(parts, dim=axis) if len(parts) > 1 else parts[0]
            finally:
                plan.starts, plan.keep_state = None, False
                for processor in processors:
                    processor.state = None
            return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    return FoldedForwardHook()


@dataclass(frozen=True)
class JointAdapter(FamilyAdapter):
    """A family with joint text–video attention: every block converted, causal ReHyAt only; the parallel
    form runs over chunk entries (:func:`folded_forward_hook`); chunk calls record their absolute frames in
    the model's :class:`JointPlan` (the RoPE and position hooks read them).

    Attributes:
        batch_arguments: the forward arguments whose first axis is the batch (folded with the chunks).
    """

    batch_arguments: tuple[str, ...] = ()

    def compile_reason(self, transformer: nn.Module) -> str | None:
        """Why :func:`~rehyat.models.hooks.compile_recurrent` would recompile chunk after chunk on
        ``transformer`` (its chunk calls compute positions from Python ints inside the forward), or None."""
        return "its chunk calls compute RoPE tables at Python-int frames inside the forward"

    def check_conversion(self, transformer: nn.Module, config: ReHyAtConfig, blocks: list[int]) -> None:
        total = len(self.blocks(transformer))
        if blocks != list(range(total)):
            raise ValueError(
                f"{self.class_names[0]} converts with every block (blocks='all'): each chunk carries its own "
                f"copy of the text through the whole network, and a full-softmax block would not (got "
                f"{len(blocks)} of {total} blocks)"
            )
        if config.attention != "hybrid" or not config.causal:
            raise ValueError(
                f"{self.class_names[0]}'s joint text-video attention converts to causal ReHyAt only (got "
                f"attention={config.attention!r}, causal={config.causal})"
            )
        if config.anchor_frames:
            raise ValueError(
                f"anchor_frames={config.anchor_frames}: {self.class_names[0]}'s chunk entries do not carry an "
                "anchor yet (convert with anchor_frames=0)"
            )
        if config.first_chunk_frames:
            raise ValueError(
                f"first_chunk_frames={config.first_chunk_frames}: {self.class_names[0]}'s chunk entries are "
                "uniform chunks (convert with first_chunk_frames=0)"
            )

    def check_attention(self, attn: nn.Module, index: int) -> None:
        if getattr(attn, "is_cross_attention", False):
            raise ValueError(f"{self.attention_path(index)} is a cross-attention layer")

    def install(self, transformer: nn.Module, runtime: ReHyAtRuntime) -> None:
        from diffusers.hooks import HookRegistry

        runtime.joint = JointPlan()
        registry = HookRegistry.check_if_exists_or_initialize(transformer)
        registry.register_hook(folded_forward_hook(runtime), FOLDED_FORWARD_HOOK)

    def feature_input(self, transformer: nn.Module) -> Callable[[ReHyAtConfig, Tensor, object], Tensor]:
        """What φ reads of ``transformer``'s video q or k, as its converted processors read it (their
        ``feature_input``), for the stage-1 students."""
        return self.processor.feature_input

    @staticmethod
    def plan(transformer: nn.Module) -> JointPlan:
        return rehyat_runtime(transformer).joint

    def batch_size(self, call: dict) -> int:
        return call["hidden_states"].shape[0]

    def chunk_call(self, transformer: nn.Module, call: dict, start: int, stop: int, grid: Grid) -> dict:
        chunk = super().chunk_call(transformer, call, start, stop, grid)
        plan = self.plan(transformer)
        plan.starts, plan.frames = [start], grid[0]
        plan.start = torch.full((), start, dtype=torch.int64, device=call["hidden_states"].device)
        return chunk

    def fold_argument(self, name: str, values: list, batch: int):
        """The argument ``name`` of the folded call from its values in the chunks' calls."""
        first = values[0]
        if (
            name in self.batch_arguments
            and isinstance(first, Tensor)
            and first.dim() > 0
            and first.shape[0] == batch
        ):
            return torch.cat(values)
        return first

    def fold_call(
        self, transformer: nn.Module, call: dict, chunks: int, chunk_frames: int, grid: Grid
    ) -> dict:
        """The arguments of one call over ``chunks`` entries of ``chunk_frames`` frames (chunk-major)."""
        calls = [
            self.chunk_call(transformer, call, t * chunk_frames, (t + 1) * chunk_frames, grid)
            for t in range(chunks)
        ]
        batch = self.batch_size(call)
        return {name: self.fold_argument(name, [c[name] for c in calls], batch) for name in calls[0]}
