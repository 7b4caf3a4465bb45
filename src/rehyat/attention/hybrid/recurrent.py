"""The chunk-wise recurrent (RNN) form of causal ReHyAt attention (docs/method.md §4).

A :class:`HybridAttentionState` carries the past in a fixed size: the linear-attention sums
``Skv = Σ φk(k) vᵀ`` and ``z = Σ φk(k)`` (fp32, or fp64 for fp64 inputs) plus, for the last
``overlap_frames`` frames seen, their K and V (the next chunk's softmax keys) and their per-frame sums
φk(K)ᵀV, Σ φk(K) (added to Skv, z when they leave the window). Keeping a frame's sums instead of its
φk(K) costs D'·D per head instead of S·D' — at Wan's 1560 tokens per frame about 6× less. :func:`hybrid_attention_step` consumes one chunk of frames and
returns its output and the next state, so a caller can stream a video of any length holding only one
chunk and the state. :func:`recurrent_hybrid_attention` drives it over a whole sequence.

With an anchor (``anchor_frames`` = A > 0, docs/method.md §2.1) the state also keeps the K, V of the
video's first A frames, softmax keys of every later chunk and never added to the sums: still a fixed size.
Global keys (``global_k``, ``global_v``) are given to every step and never enter the state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rehyat.attention.hybrid.common import (
    AttentionStats,
    accumulation_dtype,
    check_bool,
    check_out_overlap,
    check_output_buffer,
    needs_grad,
    validate_globals,
    validate_inputs,
)
from rehyat.attention.hybrid.custom_ops import frame_sums, retire_frames_op, step_attention
from rehyat.attention.hybrid.geometry import Geometry
from rehyat.attention.kernels import Backend, resolve_backend

FeatureMap = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class HybridAttentionState:
    """Streaming state of one attention layer (per batch element and head, for one CFG branch).

    kv: [B, H, D', D] and z: [B, H, D'] in the accumulation dtype; k, v: [B, M, H, D] hold the last
    ``cached_frames`` frames seen (M = cached_frames · frame_tokens) and pending_kv [B, F, H, D', D],
    pending_z [B, F, H, D'] those F frames' own sums, not yet in kv, z; ``frames_seen`` counts every
    frame consumed so far. With ``anchor_frames`` = A > 0, anchor_k, anchor_v [B, A'·S, H, D] hold the
    first A' = min(A, frames_seen) frames of the video (None without an anchor) and ``anchor_cached``
    counts those among the cached frames. The step reads neither ``frames_seen`` nor the absolute frame
    (the recurrent mode renumbers ``frames_seen`` per chunk).

    The state records the geometry it was made with — ``frame_tokens``, ``overlap_frames`` and
    ``anchor_frames`` as fields,
    batch size, heads, head dim, feature dim, dtype and device through its tensors (properties below) —
    and a step with any other geometry is a ``ValueError`` (start a new stream with ``state=None``). The
    recurrent form is causal only, so there is no causal flag to record.
    """

    kv: Tensor
    z: Tensor
    k: Tensor
    v: Tensor
    pending_kv: Tensor
    pending_z: Tensor
    frame_tokens: int
    overlap_frames: int
    frames_seen: int = 0
    anchor_frames: int = 0
    anchor_k: Tensor | None = None
    anchor_v: Tensor | None = None
    anchor_cached: int = 0

    @property
    def cached_frames(self) -> int:
        return self.pending_kv.shape[1]

    @property
    def batch_size(self) -> int:
        return self.kv.shape[0]

    @property
    def heads(self) -> int:
        return self.kv.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.kv.shape[2]

    @property
    def head_dim(self) -> int:
        return self.kv.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        """The inputs' dtype (the sums kv, z are in its accumulation dtype)."""
        return self.k.dtype

    @property
    def device(self) -> torch.device:
        return self.k.device

    @classmethod
    def initial(
        cls,
        k: Tensor,
        v: Tensor,
        fk: Tensor,
        *,
        frame_tokens: int,
        overlap_frames: int,
        anchor_frames: int = 0,
    ) -> HybridAttentionState:
        """The empty state (zero sums, no cached frames) for chunks shaped like ``k``, ``v``, ``fk``."""
        batch, _, heads, _ = k.shape
        acc = accumulation_dtype(k.dtype)
        kv = k.new_zeros(batch, heads, fk.shape[-1], v.shape[-1], dtype=acc)
        z = k.new_zeros(batch, heads, fk.shape[-1], dtype=acc)
        no_frames = dict(
            k=k[:, :0], v=v[:, :0], pending_kv=kv.unsqueeze(1)[:, :0], pending_z=z.unsqueeze(1)[:, :0]
        )
        anchor = (
            dict(anchor_frames=anchor_frames, anchor_k=k[:, :0], anchor_v=v[:, :0]) if anchor_frames else {}
        )
        return cls(
            kv=kv, z=z, **no_frames, frame_tokens=frame_tokens, overlap_frames=overlap_frames, **anchor
        )

    def check_compatible(
        self, k: Tensor, v: Tensor, fk: Tensor, frame_tokens: int, overlap_frames: int, anchor_frames: int = 0
    ) -> None:
        """Raise ``ValueError`` unless a chunk k, v, fk [B, n, H, D] / [B, n, H, D'] stepped with this
        ``frame_tokens`` and ``overlap_frames`` has the geometry the state was made with."""
        restart = "; a stream keeps one geometry (start a new one with state=None)"
        if frame_tokens != self.frame_tokens:
            raise ValueError(
                f"state was made with frame_tokens = {self.frame_tokens} but this chunk has "
                f"frame_tokens = {frame_tokens}{restart}"
            )
        if overlap_frames != self.overlap_frames:
            raise ValueError(
                f"state was made with overlap_frames = {self.overlap_frames} but this step has "
                f"overlap_frames = {overlap_frames}{restart}"
            )
        if anchor_frames != self.anchor_frames:
            raise ValueError(
                f"state was made with anchor_frames = {self.anchor_frames} but this step has "
                f"anchor_frames = {anchor_frames}{restart}"
            )
        chunk = {
            "batch size": k.shape[0],
            "heads": k.shape[2],
            "feature dim": fk.shape[-1],
            "head dim": v.shape[-1],
        }
        differ = [
            f"{name} {have} but this chunk has {chunk[name]}"
            for name, have in zip(chunk, self.kv.shape, strict=True)
            if have != chunk[name]
        ]
        if differ:
            raise ValueError(
                f"state has kv shape {tuple(self.kv.shape)} = [B, H, D', D] but this chunk needs "
                f"{tuple(chunk.values())}: the state has {', '.join(differ)}"
            )
        if self.k.dtype != k.dtype or self.k.device != k.device:
            raise ValueError(
                f"state holds {self.k.dtype} on {self.k.device} but the chunk is {k.dtype} on {k.device}"
            )


def hybrid_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | FeatureMap,
    fk: Tensor | FeatureMap,
    state: HybridAttentionState | None,
    *,
    frame_tokens: int,
    overlap_frames: int,
    scale: float | None = None,
    anchor_frames: int = 0,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
    stats: AttentionStats | None = None,
    backend: Backend = "auto",
    out: Tensor | None = None,
) -> tuple[Tensor, HybridAttentionState]:
    """Attend one chunk of whole frames ([B, n·S, H, D] each) given the past; return (output, next state).

    The chunk's softmax keys are the cached overlap frames followed by the chunk; its linear keys are
    the state's sums. Afterwards exactly the frames that leave the next chunk's softmax window are
    added to the sums (docs/method.md §4), so driving this with chunks of ``chunk_frames`` frames reproduces
    the parallel causal form for any overlap (with ``first_chunk_frames`` = F0, the first step takes the
    first F0 frames). ``state=None`` starts a new sequence. ``backend`` as in
    ``hybrid_attention``: "triton" runs the chunk's attention and the state update on the kernels.

    ``fq``/``fk`` may be the feature maps themselves instead of φq(q)/φk(k): then each is computed
    inside, only while needed (φq for the attention, φk after it for the state update), which lowers
    the peak memory of a streaming forward by one chunk's features (φk(k) is checked once computed).

    ``out`` (inference only): a tensor shaped and typed like q, e.g. this chunk's rows of a whole
    video's output, that receives the output (the kernels write it in place), returned as the output.
    It may not share memory with q, k, v, fq, fk or the state's cached frames (``ValueError``): k and v
    are read again after the output is written, for the next state.

    ``anchor_frames``, ``global_k``, ``global_v``, ``global_mask`` as in ``hybrid_attention``
    (docs/method.md §2.1): the state keeps the anchor frames (it records A), the global keys are this
    step's (give the same ones to every step of a stream). On the kernels both are cached keys of the
    step; masked global keys with gradients to track run in PyTorch (``backend="auto"``) or are a
    ``ValueError`` (``backend="triton"``).
    """
    geometry = Geometry(frame_tokens, None, overlap_frames, True, scale, anchor_frames)
    global_keys = dict(global_k=global_k, global_v=global_v, global_mask=global_mask)
    return attend_step(q, k, v, fq, fk, state, geometry, stats=stats, backend=backend, out=out, **global_keys)


def attend_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | FeatureMap,
    fk: Tensor | FeatureMap,
    state: HybridAttentionState | None,
    geometry: Geometry,
    *,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
    stats: AttentionStats | None = None,
    backend: Backend = "auto",
    out: Tensor | None = None,
) -> tuple[Tensor, HybridAttentionState]:
    """:func:`hybrid_attention_step` with its geometry given as one :class:`Geometry` (e.g.
    ``ReHyAtConfig.geometry(frame_tokens)``) instead of keywords. The step is causal (``causal=False``
    is a ``ValueError``) and its chunk is whatever frames it is given (``chunk_frames`` is not read)."""
    if not isinstance(geometry, Geometry):
        raise ValueError(f"geometry must be a Geometry, got {type(geometry).__name__}")
    if not geometry.causal:
        raise ValueError(
            "the recurrent form is causal only (docs/method.md §4): a step takes a causal Geometry"
        )
    geometry = replace(geometry, chunk_frames=None)
    frame_tokens, overlap_frames, anchor = (
        geometry.frame_tokens,
        geometry.overlap_frames,
        geometry.anchor_frames,
    )
    if state is not None and not isinstance(state, HybridAttentionState):
        raise ValueError(
            f"state must be a HybridAttentionState or None (a new stream), got {type(state).__name__}"
        )
    for name, given in (("fq", fq), ("fk", fk)):
        if not isinstance(given, Tensor) and not callable(given):
            raise ValueError(f"{name} must be a tensor or a feature map, got {type(given).__name__}")
    phi_q, phi_k = (None if isinstance(f, Tensor) else f for f in (fq, fk))
    if phi_q is not None:
        fq = phi_q(q)
    validate_inputs(q, k, v, fq, fq if phi_k is not None else fk, frame_tokens)
    global_keys = validate_globals(q, global_k, global_v, global_mask)
    if state is None:
        state = HybridAttentionState.initial(
            k, v, fq, frame_tokens=frame_tokens, overlap_frames=overlap_frames, anchor_frames=anchor
        )
    else:
        state.check_compatible(k, v, fq, frame_tokens, overlap_frames, anchor)
    if out is not None:
        if needs_grad(q, k, v, fq, state.k, state.v, state.kv):
            raise ValueError(
                "out= is for inference (run it under torch.no_grad()), but this step's inputs, state or "
                "feature maps require grad"
            )
        check_output_buffer(out, q)
        given = {"q": q, "k": k, "v": v, "fq": fq, "fk": fk if isinstance(fk, Tensor) else None}
        given.update(global_k=global_k, global_v=global_v)
        cached = {"the state's cached k": state.k, "the state's cached v": state.v}
        check_out_overlap(out, {**given, **cached})
    cached, key_mask = _softmax_prefix(state, global_keys)
    backend = _step_backend(backend, key_mask, q, k, v, fq, *cached, state.kv, state.z)
    out = step_attention(
        q,
        k,
        v,
        *cached,
        fq,
        state.kv,
        state.z,
        geometry,
        backend=backend,
        stats=stats,
        out=out,
        key_mask=key_mask,
    )

    # Frames of the window [cached ‖ chunk] that the next chunk's window (its last `overlap_frames`
    # frames) drops. The kept ones are copied (a slice would keep the whole chunk alive), and φq(q) is
    # released before φk(k) exists.
    frames = q.shape[1] // frame_tokens  # in this chunk
    # This chunk's frames that are anchor frames (docs/method.md §2.1): kept in the state, never summed.
    # Anchor frames are a prefix of the video: the chunk has some only while the state holds fewer than A.
    held = 0 if state.anchor_k is None else state.anchor_k.shape[1] // frame_tokens
    anchored = min(anchor - held, frames)
    window_frames = state.cached_frames + frames
    leaving = max(window_frames - overlap_frames, 0)
    kept_tokens = (window_frames - leaving) * frame_tokens
    kept_k, kept_v = _last_rows(state.k, k, kept_tokens), _last_rows(state.v, v, kept_tokens)
    del fq
    if phi_k is not None:
        fk = phi_k(k)
        _check_late_features(fk, q, state.kv.shape[2])

    state_tensors = (state.kv, state.z, state.pending_kv, state.pending_z)
    if backend == "triton" and not anchored and not needs_grad(fk, v, *state_tensors):
        # Inference: the chunk's frame sums and the retire in two launches (no per-frame tensors).
        kv, z, pending_kv, pending_z = retire_frames_op(
            fk, v, frame_tokens, state.kv, state.z, state.pending_kv, state.pending_z, leaving
        )
    else:
        # Each frame's own sums φk(K)ᵀV, Σ φk(K): [B, F, H, D', D], [B, F, H, D'], cached frames first.
        chunk_kv, chunk_z = frame_sums(fk, v, frame_tokens, backend=backend)
        if anchored:
            chunk_kv, chunk_z = (
                torch.cat([x[:, :anchored] * 0, x[:, anchored:]], dim=1) for x in (chunk_kv, chunk_z)
            )
        # The leaving frames of [pending ‖ chunk] join the sums; the kept ones stay pending.
        kv, pending_kv = retire(state.kv, state.pending_kv, chunk_kv, leaving)
        z, pending_z = retire(state.z, state.pending_z, chunk_z, leaving)

    next_state = HybridAttentionState(
        kv=kv,
        z=z,
        k=kept_k,
        v=kept_v,
        pending_kv=pending_kv,
        pending_z=pending_z,
        frame_tokens=frame_tokens,
        overlap_frames=overlap_frames,
        frames_seen=state.frames_seen + frames,
        anchor_frames=state.anchor_frames,
        anchor_k=_append_rows(state.anchor_k, k, anchored * frame_tokens),
        anchor_v=_append_rows(state.anchor_v, v, anchored * frame_tokens),
        # The anchor frames of [cached ‖ chunk] are its first ones; those among the kept frames:
        anchor_cached=max(state.anchor_cached + anchored - leaving, 0),
    )
    return out, next_state


def attend_rows(
    q: Tensor,
    fq: Tensor,
    k: Tensor,
    v: Tensor,
    state: HybridAttentionState,
    *,
    scale: float | None = None,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
    stats: AttentionStats | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Query rows of no frame — a joint layer's text queries q [B, L, H, D] with features fq [B, L, H, D'] —
    that have the key sets of the chunk k, v [B, n, H, D] stepped from ``state`` (docs/method.md §6.1):
    softmax over that step's window (global keys, anchor frames before the window, cached frames, the
    chunk), linear through the state's sums. The state is not advanced. Runs the step's op: on the kernels
    as :func:`attend_step` does (masked global keys with gradients to track in PyTorch)."""
    if not isinstance(state, HybridAttentionState):
        raise ValueError(f"state must be a HybridAttentionState, got {type(state).__name__}")
    for name, x, last in (("q", q, state.head_dim), ("fq", fq, state.feature_dim), ("k", k, state.head_dim)):
        if (
            not isinstance(x, Tensor)
            or x.dim() != 4
            or x.shape[0] != state.batch_size
            or x.shape[2] != state.heads
        ):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be [B, ·, H, ·] with the state's B, H, got {shape}")
        if x.shape[3] != last or x.dtype != state.dtype or x.device != state.device:
            raise ValueError(
                f"{name} is {tuple(x.shape)} {x.dtype} on {x.device}; the state takes last dim {last}, "
                f"{state.dtype} on {state.device}"
            )
    if fq.shape[1] != q.shape[1] or v.shape != k.shape:
        raise ValueError(
            f"fq {tuple(fq.shape)} must have q's rows {q.shape[1]} and v {tuple(v.shape)} k's shape"
        )
    global_keys = validate_globals(q, global_k, global_v, global_mask)
    cached, key_mask = _softmax_prefix(state, global_keys)
    backend = _step_backend(backend, key_mask, q, k, v, fq, *cached, state.kv, state.z)
    geometry = Geometry(1, None, 0, True, scale)  # the rows are the one chunk; its window is every key
    return step_attention(
        q, k, v, *cached, fq, state.kv, state.z, geometry, backend=backend, stats=stats, key_mask=key_mask
    )


def _step_backend(backend: Backend, key_mask: Tensor | None, q: Tensor, k, v, fq: Tensor, *rest) -> str:
    """The step op's concrete backend: the kernels take global keys and anchor frames as cached keys
    (masked ones left out), but their backward has no key mask."""
    masked_grad = key_mask is not None and needs_grad(q, k, v, fq, *rest)
    reason = "a step with masked global keys that needs gradients (the kernels' backward takes no key mask)"
    return resolve_backend(backend, q, fq, reason if masked_grad else None)


def _softmax_prefix(
    state: HybridAttentionState, global_keys: tuple[Tensor, Tensor, Tensor | None] | None
) -> tuple[tuple[Tensor, Tensor], Tensor | None]:
    """The softmax keys before the chunk's own (the step's "cached" keys): the global keys, the anchor
    frames before the window (those in it are cached frames already), then the cached frames; and the
    key mask over them when the global keys have one (None: every key attended)."""
    keys, values = [], []
    if global_keys is not None:
        keys.append(global_keys[0])
        values.append(global_keys[1])
    before = 0  # tokens of the anchor frames that are not cached frames
    if state.anchor_k is not None:
        before = state.anchor_k.shape[1] - state.anchor_cached * state.frame_tokens
    if before:
        keys.append(state.anchor_k[:, :before])
        values.append(state.anchor_v[:, :before])
    if not keys:
        return (state.k, state.v), None
    cached = (torch.cat([*keys, state.k], dim=1), torch.cat([*values, state.v], dim=1))
    key_mask = None
    if global_keys is not None and global_keys[2] is not None:
        mask = global_keys[2]
        key_mask = mask.new_ones(mask.shape[0], cached[0].shape[1] - mask.shape[1])
        key_mask = torch.cat([mask, key_mask], dim=1)
    return cached, key_mask


def _append_rows(rows: Tensor | None, new: Tensor, count: int) -> Tensor | None:
    """``rows`` followed by the first ``count`` rows (dim 1) of ``new``, in their own storage."""
    if not count:
        return rows
    return torch.cat([rows, new[:, :count]], dim=1)


def retire(total: Tensor, pending: Tensor, new: Tensor, leaving: int) -> tuple[Tensor, Tensor]:
    """Add the first ``leaving`` frames (dim 1) of [pending ‖ new] to ``total``; return it and the rest,
    without concatenating the two."""
    from_pending = min(leaving, pending.shape[1])
    for part, count in ((pending, from_pending), (new, leaving - from_pending)):
        if count:
            total = total + part[:, :count].sum(dim=1)
    kept = pending.shape[1] + new.shape[1] - leaving
    return total, _last_rows(pending, new, kept)


def _last_rows(cached: Tensor, new: Tensor, count: int) -> Tensor:
    """The last ``count`` rows (dim 1) of [cached ‖ new] in their own storage, concatenating only
    when they reach into ``cached`` (then ``new`` is short: fewer rows than ``count``)."""
    if count <= new.shape[1]:
        return new[:, new.shape[1] - count :].clone()
    return torch.cat([cached[:, cached.shape[1] - (count - new.shape[1]) :], new], dim=1)


def _check_late_features(fk: Tensor, q: Tensor, feature_dim: int) -> None:
    """Checks of φk(k) from a feature map, which exists only after the chunk's attention."""
    if not isinstance(fk, Tensor) or fk.dim() != 4 or fk.shape[:3] != q.shape[:3]:
        shape = tuple(fk.shape) if isinstance(fk, Tensor) else type(fk).__name__
        raise ValueError(f"the fk feature map returned {shape}; expected [B, N, H, D'] with q's [B, N, H]")
    if fk.dtype != q.dtype or fk.device != q.device:
        raise ValueError(
            f"the fk feature map returned {fk.dtype} on {fk.device}; q is {q.dtype} on {q.device}"
        )
    if fk.shape[-1] != feature_dim:
        raise ValueError(f"fq and fk feature dims differ: fq has {feature_dim}, fk has {fk.shape[-1]}")


def recurrent_hybrid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    *,
    frame_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool = True,
    scale: float | None = None,
    anchor_frames: int = 0,
    first_chunk_frames: int = 0,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
    stats: AttentionStats | None = None,
    backend: Backend = "auto",
    initial_state: HybridAttentionState | None = None,
    output_final_state: bool = False,
) -> Tensor | tuple[Tensor, HybridAttentionState]:
    """Causal ReHyAt attention computed chunk by chunk with :func:`hybrid_attention_step`.

    Same arguments and result as ``hybrid_attention(..., causal=True)``; working memory is one chunk
    plus the fixed-size state (the inputs and the output themselves are whole here). ``causal`` is
    accepted so that the call shape is the parallel op's, and must be True: the bidirectional variant
    reads future frames and has no recurrent form.

    ``initial_state``: the state after earlier frames of the same video (None: they are the first), so
    that a long video can be attended in pieces; each piece but the last should be a whole number of
    chunks, so that the chunks go on where they stopped. ``output_final_state=True`` returns
    ``(output, state after the last frame)``, the next piece's ``initial_state``.

    ``anchor_frames``, ``first_chunk_frames``, ``global_k``, ``global_v``, ``global_mask``: as in
    ``hybrid_attention``; the state keeps the anchor frames' K, V (a fixed size), the first step of a
    video takes its first chunk (so a video's first piece must hold F0 + j·Tc frames), the global keys
    join every step's softmax window.
    """
    geometry = Geometry(
        frame_tokens, chunk_frames, overlap_frames, causal, scale, anchor_frames, first_chunk_frames
    )
    if not geometry.causal:
        raise ValueError(
            "the recurrent form is causal only (docs/method.md §4): use hybrid_attention(..., causal=False) "
            "for the bidirectional variant"
        )
    seen = None if initial_state is None else getattr(initial_state, "frames_seen", None)
    if first_chunk_frames and isinstance(seen, int) and seen < first_chunk_frames:
        raise ValueError(
            f"initial_state has seen {seen} frames, fewer than first_chunk_frames={first_chunk_frames}: the "
            f"first piece of a video must hold the first chunk (F0 + j·Tc frames)"
        )
    check_bool("output_final_state", output_final_state)
    global_keys = dict(global_k=global_k, global_v=global_v, global_mask=global_mask)
    output, state = attend_recurrent(
        q, k, v, fq, fk, initial_state, geometry, stats=stats, backend=backend, **global_keys
    )
    return (output, state) if output_final_state else output


def attend_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor | FeatureMap,
    fk: Tensor | FeatureMap,
    state: HybridAttentionState | None,
    geometry: Geometry,
    *,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    global_mask: Tensor | None = None,
    stats: AttentionStats | None = None,
    backend: Backend = "auto",
) -> tuple[Tensor, HybridAttentionState]:
    """:func:`recurrent_hybrid_attention` given one causal :class:`Geometry`, from ``state`` (None: the
    video's first frames) to (output, state after the last frame): the frames are attended in chunks of
    ``geometry.chunk_frames``, one :func:`attend_step` each. ``fq``/``fk`` may be the feature maps, as in
    :func:`hybrid_attention_step`: then each chunk's features exist only while that chunk is attended."""
    if not isinstance(geometry, Geometry):
        raise ValueError(f"geometry must be a Geometry, got {type(geometry).__name__}")
    if not geometry.causal:
        raise ValueError("the recurrent form is causal only (docs/method.md §4): it takes a causal Geometry")
    maps = [f for f in (fq, fk) if not isinstance(f, Tensor)]
    if maps:  # each step checks its chunk once φ has made its features
        for name, given in (("fq", fq), ("fk", fk)):
            if not isinstance(given, Tensor) and not callable(given):
                raise ValueError(f"{name} must be a tensor or a feature map, got {type(given).__name__}")
        frames = validate_inputs(q, k, v, q, q, geometry.frame_tokens)
    else:
        frames = validate_inputs(q, k, v, fq, fk, geometry.frame_tokens)
    step_tokens = geometry.chunk_tokens(frames)
    starts = list(range(0, q.shape[1], step_tokens))
    first = geometry.first_chunk_frames
    if first and state is None:  # the video's first chunk: F0 frames (a state: the video goes on)
        first_tokens = min(first, frames) * geometry.frame_tokens
        starts = [0, *range(first_tokens, q.shape[1], geometry.chunk_frames * geometry.frame_tokens)]
    ends = [*starts[1:], q.shape[1]]
    stream = replace(geometry, chunk_frames=None, first_chunk_frames=0)  # each step: one chunk
    global_keys = dict(global_k=global_k, global_v=global_v, global_mask=global_mask)
    # Without gradients each chunk's output goes straight into its rows of one buffer (no concatenation);
    # under torch.compile (whose out= checks compare addresses) the compiler plans the concatenation.
    tensors = [x for x in (q, k, v, fq, fk) if isinstance(x, Tensor)]
    grad = needs_grad(*tensors) or (bool(maps) and torch.is_grad_enabled())  # φ's weights may need grad
    inference = not grad and not torch.compiler.is_compiling()
    output = torch.empty(q.shape, dtype=q.dtype, device=q.device) if inference else None  # contiguous
    outputs = []
    for start, end in zip(starts, ends, strict=True):
        piece = slice(start, end)
        chunk = (x[:, piece] if isinstance(x, Tensor) else x for x in (q, k, v, fq, fk))
        rows = None if output is None else output[:, piece]
        out, state = attend_step(*chunk, state, stream, stats=stats, backend=backend, out=rows, **global_keys)
        outputs.append(out)
    return (output if output is not None else torch.cat(outputs, dim=1)), state
