"""ReHyAt's ops registered with PyTorch (``torch.library.custom_op``), so ``torch.compile`` sees each as one node.

Registered, in the ``rehyat`` namespace:

- ``rehyat::hybrid_attention`` — the parallel form (docs/method.md §2–§3), PyTorch or Triton by its
  ``backend``;
- ``rehyat::step_attention`` — one chunk of the streaming form: softmax over [cached frames ‖ chunk],
  linear through the state (kv, z); ``rehyat::step_attention_out`` writes it into a given buffer;
- ``rehyat::frame_sums`` and ``rehyat::retire_frames`` — the streaming state update on the kernels
  (per-frame sums Σ φk vᵀ, Σ φk; the inference update in two launches);
- ``rehyat::feature_map`` — φ (:class:`~rehyat.PolynomialFeatureMap`'s forward);
- ``rehyat::*_backward`` — their gradients.

Each op has a fake (meta) implementation (output shapes from input shapes, no compute) and its autograd
registered with ``register_autograd`` + ``setup_context``, and passes ``torch.library.opcheck``. The
``backend`` argument is always concrete ("torch" or "triton"): the callers resolve "auto" first
(:func:`rehyat.attention.kernels.resolve_backend`), and every op runs the implementation that
:data:`IMPLEMENTATIONS` names for it, the one registry of backends. An op's schema takes the fields of
:class:`~rehyat.attention.hybrid.geometry.Geometry` one by one, in its field order; the implementation
rebuilds the ``Geometry``.

Backward: the ``*_backward`` ops recompute the forward of the same implementation under autograd and
differentiate it (the eager implementations are the gradient's definition: PyTorch's autograd through
docs/method.md §3, or the kernels' own backward), for the inputs that need a gradient only. Only the inputs
are saved, as in FlashAttention; the price is one extra forward in the backward. The kernels expose their
backward only inside ``torch.autograd.Function`` classes whose context cannot cross an op boundary.

When the ops run: under ``torch.compile`` always, and in eager mode whenever no gradient is needed
(inference). Eager calls that need gradients keep the direct path (plain autograd, or the kernels'
autograd functions), which needs no recompute. The state bookkeeping of the streaming form (per-frame
sums, retiring frames) stays plain PyTorch around the step op: small, and traced by the compiler.

``stats`` (guarded-row counts) come back from an op as an int64 tensor [total, guarded] that the caller
adds to its :class:`AttentionStats` — a host sync, so under ``torch.compile`` counting stats is a graph
break; without stats there is none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from rehyat.attention.hybrid.chunk import chunked_attention
from rehyat.attention.hybrid.common import AttentionStats, accumulation_dtype, combine, needs_grad
from rehyat.attention.hybrid.geometry import Geometry

# The dispatcher turns autograd off inside an op's implementation (it runs "below autograd"); the
# backward ops turn it back on to differentiate the eager forward they recompute.
_AUTOGRAD_KEYS = (
    torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradFunctionality)
    | torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradOther)
    | torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradNestedTensor)
)


@contextmanager
def _autograd_inside_op():
    """Autograd recording inside a custom op's implementation (grad mode on, autograd keys not excluded)."""
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set() - _AUTOGRAD_KEYS
    with torch._C._ForceDispatchKeyGuard(include, exclude), torch.enable_grad():
        yield


#: Set inside :func:`plain_pytorch`: every call takes the plain-PyTorch path.
_plain_pytorch = False


@contextmanager
def plain_pytorch() -> Iterator[None]:
    """Within this context no call goes through the registered ops: for exporters, which trace a model
    into a graph that must hold plain ATen ops (``torch.export`` counts as compiling, and ONNX Runtime
    and ExecuTorch cannot run the library's ops). Not thread-safe: a process-wide switch."""
    global _plain_pytorch
    previous, _plain_pytorch = _plain_pytorch, True
    try:
        yield
    finally:
        _plain_pytorch = previous


def use_ops(*tensors: Tensor) -> bool:
    """Whether a call goes through the registered ops: under ``torch.compile``, or when no gradient is
    needed, unless inside :func:`plain_pytorch`. Eager calls that need gradients take the direct path
    (no recompute in the backward)."""
    if _plain_pytorch:
        return False
    return torch.compiler.is_compiling() or not needs_grad(*tensors)


def _counts(stats: AttentionStats | None, like: Tensor) -> Tensor:
    """[total rows, guarded rows] as int64 on ``like``'s device, or an empty tensor without stats."""
    if stats is None:
        return like.new_empty(0, dtype=torch.int64)
    return torch.tensor([stats.total_rows, stats.guarded_rows], dtype=torch.int64, device=like.device)


def _fake_counts(count_guarded: bool, like: Tensor) -> Tensor:
    return like.new_empty(2 if count_guarded else 0, dtype=torch.int64)


def add_counts(stats: AttentionStats | None, counts: Tensor) -> None:
    """Add an op's [total, guarded] counts to ``stats`` (a host sync; nothing without stats)."""
    if stats is not None and counts.numel():
        total, guarded = counts.tolist()
        stats.total_rows += total
        stats.guarded_rows += guarded


def _recompute_grads(
    forward: Callable[..., Tensor | tuple[Tensor, ...]],
    inputs: Sequence[Tensor],
    needs: Sequence[bool],
    grad: Tensor | Sequence[Tensor],
) -> list[Tensor]:
    """Gradients of ``forward(*inputs)`` (a tensor, or a tuple matched by ``grad``) for the inputs flagged
    in ``needs`` (contiguous, in their own storage, zeros where an input does not reach the output); an
    empty tensor for the others."""
    grads_out = (grad,) if isinstance(grad, Tensor) else tuple(grad)
    with _autograd_inside_op():
        leaves = [x.detach().requires_grad_(bool(need)) for x, need in zip(inputs, needs, strict=True)]
        outputs = forward(*leaves)
        outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
        wanted = [x for x in leaves if x.requires_grad]
        found = torch.autograd.grad(outputs, wanted, grads_out, allow_unused=True) if wanted else ()
    grads = iter(found)
    result = []
    for x, need in zip(inputs, needs, strict=True):
        if not need:
            result.append(x.new_empty(0))
            continue
        g = next(grads)
        if g is None:
            g = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
        elif g._base is not None or not g.is_contiguous() or any(_same_storage(g, o) for o in grads_out):
            # An op's outputs may not alias each other or its inputs (e.g. the gradients of the cached
            # and the chunk's keys are two views of the concatenated keys' gradient).
            g = g.clone(memory_format=torch.contiguous_format)
        result.append(g)
    return result


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _fake_grads(inputs: Sequence[Tensor], needs: Sequence[bool]) -> list[Tensor]:
    return [x.new_empty(x.shape if need else (0,)) for x, need in zip(inputs, needs, strict=True)]


def _needs(ctx, count: int) -> list[bool]:
    return [bool(n) for n in ctx.needs_input_grad[:count]]


def _or_none(grads: Sequence[Tensor], needs: Sequence[bool]) -> list[Tensor | None]:
    return [g if need else None for g, need in zip(grads, needs, strict=True)]


def _register_autograd(op, backward_op, *, tensors: int, arguments: int) -> None:
    """Autograd of an attention op whose inputs are ``tensors`` tensors, ``arguments`` arguments that its
    ``backward_op`` takes too (after the tensors, before ``needs``), and ``count_guarded`` last."""

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs[:tensors])
        ctx.arguments = inputs[tensors : tensors + arguments]

    def backward(ctx, grad: Tensor, _counts_grad):
        needs = _needs(ctx, tensors)
        if not any(needs):
            return (None,) * (tensors + arguments + 1)
        grads = backward_op(grad, *ctx.saved_tensors, *ctx.arguments, needs)
        return (*_or_none(grads, needs), *(None,) * (arguments + 1))

    op.register_autograd(backward, setup_context=setup_context)


# --- the parallel form -----------------------------------------------------------------------------


def _parallel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    geometry: Geometry,
    backend: str,
    stats: AttentionStats | None,
    global_keys: tuple[Tensor, Tensor, Tensor | None] | None = None,
) -> Tensor:
    if global_keys is None:
        return IMPLEMENTATIONS[backend].parallel(q, k, v, fq, fk, geometry, stats)
    global_k, global_v, global_mask = global_keys
    return IMPLEMENTATIONS[backend].parallel(
        q, k, v, fq, fk, geometry, stats, global_k=global_k, global_v=global_v, global_mask=global_mask
    )


@torch.library.custom_op("rehyat::hybrid_attention", mutates_args=())
def hybrid_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    frame_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool,
    scale: float,
    backend: str,
    count_guarded: bool,
) -> tuple[Tensor, Tensor]:
    """(y [B, N, H, D] contiguous, counts) of the parallel form; inputs validated by the caller."""
    stats = AttentionStats() if count_guarded else None
    geometry = Geometry(frame_tokens, chunk_frames, overlap_frames, causal, scale)
    with torch.no_grad():
        out = _parallel(q, k, v, fq, fk, geometry, backend, stats)
    return out.contiguous(), _counts(stats, q)


@hybrid_attention_op.register_fake
def _(q, k, v, fq, fk, frame_tokens, chunk_frames, overlap_frames, causal, scale, backend, count_guarded):
    return q.new_empty(q.shape), _fake_counts(count_guarded, q)


@torch.library.custom_op("rehyat::hybrid_attention_backward", mutates_args=())
def hybrid_attention_backward_op(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    frame_tokens: int,
    chunk_frames: int,
    overlap_frames: int,
    causal: bool,
    scale: float,
    backend: str,
    needs: list[bool],
) -> list[Tensor]:
    """[dq, dk, dv, dfq, dfk]: each contiguous where ``needs`` says so, else an empty tensor."""

    geometry = Geometry(frame_tokens, chunk_frames, overlap_frames, causal, scale)

    def forward(*inputs: Tensor) -> Tensor:
        return _parallel(*inputs, geometry, backend, None)

    return _recompute_grads(forward, (q, k, v, fq, fk), needs, grad)


@hybrid_attention_backward_op.register_fake
def _(grad, q, k, v, fq, fk, frame_tokens, chunk_frames, overlap_frames, causal, scale, backend, needs):
    return _fake_grads((q, k, v, fq, fk), needs)


_register_autograd(hybrid_attention_op, hybrid_attention_backward_op, tensors=5, arguments=6)


def parallel_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fq: Tensor,
    fk: Tensor,
    geometry: Geometry,
    *,
    backend: str,
    stats: AttentionStats | None,
    global_keys: tuple[Tensor, Tensor, Tensor | None] | None = None,
) -> Tensor:
    """The parallel form on a concrete ``backend``, through ``rehyat::hybrid_attention`` when
    :func:`use_ops` says so (inputs validated by the caller). A call with an anchor or global keys
    (docs/method.md §2.1; PyTorch only) runs the PyTorch form directly, which the compiler traces."""
    extras = global_keys is not None or geometry.anchor_frames or geometry.first_chunk_frames
    if extras or not use_ops(q, k, v, fq, fk):
        return _parallel(q, k, v, fq, fk, geometry, backend, stats, global_keys)
    fields = (geometry.frame_tokens, geometry.chunk_frames, geometry.overlap_frames, geometry.causal)
    scale = geometry.softmax_scale(q.shape[-1])
    out, counts = hybrid_attention_op(q, k, v, fq, fk, *fields, scale, backend, stats is not None)
    add_counts(stats, counts)
    return out


# --- one chunk of the streaming form --------------------------------------------------------------

#: Score entries the PyTorch step holds in one temporary (2**28 fp32 = 1 GiB): a chunk whose
#: [B, H, rows, keys] scores are larger is attended in blocks of query rows (each row's result is the
#: same), so a large model's chunk, or a batch of chunk entries, never materialises all its scores.
SCORE_BLOCK_ELEMENTS = 2**28


def torch_step_attention(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    scale: float,
    stats: AttentionStats | None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """The step's attention in PyTorch: softmax over ``keys`` (where ``key_mask`` [B, keys] is True, if
    given), linear through the state (kv, z). What ``rehyat::step_attention`` runs on the PyTorch backend;
    in blocks of query rows of at most :data:`SCORE_BLOCK_ELEMENTS` scores."""
    rows = max(1, SCORE_BLOCK_ELEMENTS // max(q.shape[0] * q.shape[2] * keys.shape[1], 1))
    if rows >= q.shape[1]:
        return _torch_step_rows(q, keys, values, fq, kv, z, scale, stats, key_mask)
    keys, values = keys.to(kv.dtype), values.to(kv.dtype)  # once, not per block
    blocks = range(0, q.shape[1], rows)
    return torch.cat(
        [
            _torch_step_rows(
                q[:, i : i + rows], keys, values, fq[:, i : i + rows], kv, z, scale, stats, key_mask
            )
            for i in blocks
        ],
        dim=1,
    )


def _torch_step_rows(q, keys, values, fq, kv, z, scale: float, stats, key_mask) -> Tensor:
    """:func:`torch_step_attention` for the query rows ``q``, ``fq`` at once."""
    acc = kv.dtype
    scores = torch.einsum("bihd,bjhd->bhij", q.to(acc), keys.to(acc)) * scale
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = torch.exp(scores - torch.amax(scores, dim=-1, keepdim=True))
    n_softmax = probs.sum(dim=-1).transpose(1, 2)  # [B, n, H]
    a_softmax = torch.einsum("bhij,bjhd->bihd", probs, values.to(acc))
    fq_acc = fq.to(acc)
    a_linear = torch.einsum("bihe,bhed->bihd", fq_acc, kv)
    n_linear = torch.einsum("bihe,bhe->bih", fq_acc, z)
    return combine(a_softmax, n_softmax, a_linear, n_linear, stats).to(q.dtype)


def _torch_step(
    q, k, v, cached_k, cached_v, fq, kv, z, geometry: Geometry, stats, out=None, key_mask=None
) -> Tensor:
    """The PyTorch backend's step (the tensors as in ``rehyat::step_attention``)."""
    keys, values = torch.cat([cached_k, k], dim=1), torch.cat([cached_v, v], dim=1)
    if key_mask is not None:  # the chunk's own keys are all attended
        key_mask = torch.cat([key_mask, key_mask.new_ones(key_mask.shape[0], k.shape[1])], dim=1)
    scale = geometry.softmax_scale(q.shape[-1])
    result = torch_step_attention(q, keys, values, fq, kv, z, scale, stats, key_mask)
    return result if out is None else out.copy_(result)


def _torch_frame_sums(fk: Tensor, v: Tensor, frame_tokens: int) -> tuple[Tensor, Tensor]:
    """Per-frame Σ φk vᵀ [B, F, H, D', D] and Σ φk [B, F, H, D'] in the accumulation dtype."""
    acc = accumulation_dtype(v.dtype)
    shape = (fk.shape[0], fk.shape[1] // frame_tokens, frame_tokens, *fk.shape[2:])  # no -1: B may be 0
    fk_frames = fk.to(acc).reshape(shape)
    v_frames = v.to(acc).reshape(*shape[:-1], v.shape[-1])
    return torch.einsum("bfshe,bfshd->bfhed", fk_frames, v_frames), fk_frames.sum(dim=2)


def _step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cached_k: Tensor,
    cached_v: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    key_mask: Tensor | None,
    frame_tokens: int,
    scale: float,
    backend: str,
    stats: AttentionStats | None,
    out: Tensor | None = None,
) -> Tensor:
    """The step's attention needs only ``frame_tokens`` and the scale of its geometry: its window is
    every key it is given, the cached keys and then the chunk's own (one chunk, ``chunk_frames=None``)."""
    geometry = Geometry(frame_tokens, None, 0, True, scale)
    step = IMPLEMENTATIONS[backend].step
    return step(q, k, v, cached_k, cached_v, fq, kv, z, geometry, stats, out, key_mask)


@torch.library.custom_op("rehyat::step_attention", mutates_args=())
def step_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cached_k: Tensor,
    cached_v: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    key_mask: Tensor | None,
    frame_tokens: int,
    scale: float,
    backend: str,
    count_guarded: bool,
) -> tuple[Tensor, Tensor]:
    """(y [B, n, H, D] contiguous, counts): q, k, v, fq [B, n, H, ·] of the chunk, cached_k/v [B, M, H, D]
    the cached keys (softmax keys before the chunk's), kv [B, H, D', D], z [B, H, D'] the state,
    key_mask [B, M] bool over the cached keys (True = attend) or None (all)."""
    stats = AttentionStats() if count_guarded else None
    with torch.no_grad():
        out = _step(q, k, v, cached_k, cached_v, fq, kv, z, key_mask, frame_tokens, scale, backend, stats)
    return out.contiguous(), _counts(stats, q)


@step_attention_op.register_fake
def _(q, k, v, cached_k, cached_v, fq, kv, z, key_mask, frame_tokens, scale, backend, count_guarded):
    return q.new_empty(q.shape), _fake_counts(count_guarded, q)


@torch.library.custom_op("rehyat::step_attention_out", mutates_args=("out",))
def step_attention_out_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cached_k: Tensor,
    cached_v: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    out: Tensor,
    key_mask: Tensor | None,
    frame_tokens: int,
    scale: float,
    backend: str,
    count_guarded: bool,
) -> Tensor:
    """``rehyat::step_attention`` written into ``out`` (inference; the kernels write it in place);
    returns the counts."""
    stats = AttentionStats() if count_guarded else None
    with torch.no_grad():
        _step(q, k, v, cached_k, cached_v, fq, kv, z, key_mask, frame_tokens, scale, backend, stats, out=out)
    return _counts(stats, q)


@step_attention_out_op.register_fake
def _(q, k, v, cached_k, cached_v, fq, kv, z, out, key_mask, frame_tokens, scale, backend, count_guarded):
    return _fake_counts(count_guarded, q)


@torch.library.custom_op("rehyat::step_attention_backward", mutates_args=())
def step_attention_backward_op(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cached_k: Tensor,
    cached_v: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    key_mask: Tensor | None,
    frame_tokens: int,
    scale: float,
    backend: str,
    needs: list[bool],
) -> list[Tensor]:
    """Gradients of the 8 float tensor inputs of ``rehyat::step_attention`` (empty where not needed)."""

    def forward(*inputs: Tensor) -> Tensor:
        return _step(*inputs, key_mask, frame_tokens, scale, backend, None)

    return _recompute_grads(forward, (q, k, v, cached_k, cached_v, fq, kv, z), needs, grad)


@step_attention_backward_op.register_fake
def _(grad, q, k, v, cached_k, cached_v, fq, kv, z, key_mask, frame_tokens, scale, backend, needs):
    return _fake_grads((q, k, v, cached_k, cached_v, fq, kv, z), needs)


# key_mask (a bool tensor, no gradient) travels with the arguments.
_register_autograd(step_attention_op, step_attention_backward_op, tensors=8, arguments=4)


def step_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cached_k: Tensor,
    cached_v: Tensor,
    fq: Tensor,
    kv: Tensor,
    z: Tensor,
    geometry: Geometry,
    *,
    backend: str,
    stats: AttentionStats | None,
    out: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """One chunk's attention on a concrete ``backend`` (see ``rehyat::step_attention``), through the ops
    when :func:`use_ops` says so; ``out`` (inference, checked by the caller) receives the result.
    ``key_mask`` [B, M] over the cached keys (True = attend; masked global keys, docs/method.md §2.1;
    the chunk's own are all attended); the kernels take it without gradients only."""
    tensors = (q, k, v, cached_k, cached_v, fq, kv, z)
    arguments = (geometry.frame_tokens, geometry.softmax_scale(q.shape[-1]), backend)
    if not use_ops(*tensors):
        return _step(*tensors, key_mask, *arguments, stats, out=out)
    if out is not None:
        add_counts(stats, step_attention_out_op(*tensors, out, key_mask, *arguments, stats is not None))
        return out
    result, counts = step_attention_op(*tensors, key_mask, *arguments, stats is not None)
    add_counts(stats, counts)
    return result


# --- the streaming state update on the kernels ----------------------------------------------------
# (On the PyTorch backend the update is a few plain tensor ops, which the compiler traces.)


@torch.library.custom_op("rehyat::frame_sums", mutates_args=())
def frame_sums_op(fk: Tensor, v: Tensor, frame_tokens: int) -> tuple[Tensor, Tensor]:
    """Per-frame Σ φk vᵀ [B, F, H, D', D] and Σ φk [B, F, H, D'] (fp32) on the kernels."""
    with torch.no_grad():
        kv, z = IMPLEMENTATIONS["triton"].frame_sums(fk, v, frame_tokens)
    return kv.contiguous(), z.contiguous()


@frame_sums_op.register_fake
def _(fk, v, frame_tokens):
    batch, tokens, heads, feat = fk.shape
    frames = tokens // frame_tokens
    return (
        fk.new_empty(batch, frames, heads, feat, v.shape[-1], dtype=torch.float32),
        fk.new_empty(batch, frames, heads, feat, dtype=torch.float32),
    )


@torch.library.custom_op("rehyat::frame_sums_backward", mutates_args=())
def frame_sums_backward_op(
    grad_kv: Tensor, grad_z: Tensor, fk: Tensor, v: Tensor, frame_tokens: int, needs: list[bool]
) -> list[Tensor]:
    """[dfk, dv] of ``rehyat::frame_sums`` (empty where ``needs`` says no)."""

    def forward(fk: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return IMPLEMENTATIONS["triton"].frame_sums(fk, v, frame_tokens)

    return _recompute_grads(forward, (fk, v), needs, (grad_kv, grad_z))


@frame_sums_backward_op.register_fake
def _(grad_kv, grad_z, fk, v, frame_tokens, needs):
    return _fake_grads((fk, v), needs)


def _setup_frame_sums(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:2])
    ctx.frame_tokens = inputs[2]


def _backward_frame_sums(ctx, grad_kv: Tensor, grad_z: Tensor):
    needs = _needs(ctx, 2)
    if not any(needs):
        return None, None, None
    grads = frame_sums_backward_op(grad_kv, grad_z, *ctx.saved_tensors, ctx.frame_tokens, needs)
    return (*_or_none(grads, needs), None)


frame_sums_op.register_autograd(_backward_frame_sums, setup_context=_setup_frame_sums)


@torch.library.custom_op("rehyat::retire_frames", mutates_args=())
def retire_frames_op(
    fk: Tensor,
    v: Tensor,
    frame_tokens: int,
    kv: Tensor,
    z: Tensor,
    pending_kv: Tensor,
    pending_z: Tensor,
    leaving: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The streaming state update on the kernels, inference only: (kv, z, pending_kv, pending_z) once the
    first ``leaving`` frames of [pending ‖ chunk] joined the sums (``kernels.launch.retire_frames``)."""
    with torch.no_grad():
        return _kernels().retire_frames(fk, v, frame_tokens, kv, z, pending_kv, pending_z, leaving)


@retire_frames_op.register_fake
def _(fk, v, frame_tokens, kv, z, pending_kv, pending_z, leaving):
    kept = pending_kv.shape[1] + fk.shape[1] // frame_tokens - leaving
    return (
        kv.new_empty(kv.shape),
        z.new_empty(z.shape),
        kv.new_empty(kv.shape[0], kept, *kv.shape[1:]),
        z.new_empty(z.shape[0], kept, *z.shape[1:]),
    )


def frame_sums(fk: Tensor, v: Tensor, frame_tokens: int, *, backend: str) -> tuple[Tensor, Tensor]:
    """Per-frame Σ φk vᵀ, Σ φk on a concrete ``backend``: on the kernels through ``rehyat::frame_sums``
    when :func:`use_ops` says so; in PyTorch a few plain tensor ops, which the compiler traces."""
    if backend == "triton" and use_ops(fk, v):
        return frame_sums_op(fk, v, frame_tokens)
    return IMPLEMENTATIONS[backend].frame_sums(fk, v, frame_tokens)


# --- φ ---------------------------------------------------------------------------------------------

FEATURE_ACTIVATIONS = {
    "relu": torch.nn.functional.relu,
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
}


def torch_feature_map(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    degree: int,
    activation: str,
    nonnegative: bool,
) -> Tensor:
    """φ(x) in PyTorch, the reference of the kernel: layers ``weights`` [H, d_in, d_out] (cast to x's
    dtype) with ``biases`` [H, d_out] (empty: none) and the activation between them, then the parts
    ψ_p raised to p (``nonnegative``: 2p). Returns x's dtype (not the unchecked fp16 range)."""
    act = FEATURE_ACTIVATIONS[activation]
    h = x
    for index, w in enumerate(weights):
        if index:
            h = act(h)
        h = torch.einsum("bnhi,hio->bnho", h, w.to(h.dtype))
        if biases:
            h = h + biases[index].to(h.dtype)
    parts = h.split(x.shape[-1], dim=-1)
    exponents = (2 * p if nonnegative else p for p in range(1, degree + 1))
    features = torch.cat(
        [part if e == 1 else part**e for e, part in zip(exponents, parts, strict=True)], dim=-1
    )
    # Autocast runs pow in fp32 on CUDA: return the dtype the attention op gets q and k in.
    return features.to(x.dtype)


def _triton_feature_map(x: Tensor, weights, biases, degree, activation, nonnegative) -> Tensor:
    """The Triton backend's φ (the arguments as in :func:`torch_feature_map`)."""
    from rehyat.attention.kernels.feature_map_kernel import polynomial_feature_map

    features = polynomial_feature_map(x, list(weights), list(biases) or None, degree, activation, nonnegative)
    return features.to(x.dtype)


def _feature_map(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    degree: int,
    activation: str,
    nonnegative: bool,
    backend: str,
) -> Tensor:
    return IMPLEMENTATIONS[backend].feature_map(x, weights, biases, degree, activation, nonnegative)


@torch.library.custom_op("rehyat::feature_map", mutates_args=())
def feature_map_op(
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    degree: int,
    activation: str,
    nonnegative: bool,
    backend: str,
) -> Tensor:
    """φ(x) [B, N, H, degree·D] in x's dtype (contiguous): per-head layers ``weights`` [H, d_in, d_out]
    and ``biases`` [H, d_out] (an empty list: no biases)."""
    with torch.no_grad():
        features = _feature_map(x, weights, biases, degree, activation, nonnegative, backend)
    return features.contiguous()


@feature_map_op.register_fake
def _(x, weights, biases, degree, activation, nonnegative, backend):
    return x.new_empty(*x.shape[:-1], degree * x.shape[-1])


@torch.library.custom_op("rehyat::feature_map_backward", mutates_args=())
def feature_map_backward_op(
    grad: Tensor,
    x: Tensor,
    weights: list[Tensor],
    biases: list[Tensor],
    degree: int,
    activation: str,
    nonnegative: bool,
    backend: str,
    needs: list[bool],
) -> list[Tensor]:
    """[dx, dw_1, …, dw_L, db_1, …, db_L] (empty where ``needs`` says no)."""
    layers = len(weights)

    def forward(x: Tensor, *params: Tensor) -> Tensor:
        return _feature_map(x, params[:layers], params[layers:], degree, activation, nonnegative, backend)

    return _recompute_grads(forward, (x, *weights, *biases), needs, grad)


@feature_map_backward_op.register_fake
def _(grad, x, weights, biases, degree, activation, nonnegative, backend, needs):
    return _fake_grads((x, *weights, *biases), needs)


def _setup_feature_map(ctx, inputs, output) -> None:
    x, weights, biases, *arguments = inputs
    ctx.save_for_backward(x, *weights, *biases)
    ctx.layers, ctx.arguments = (len(weights), len(biases)), arguments


def _backward_feature_map(ctx, grad: Tensor):
    x, *params = ctx.saved_tensors
    layers, bias_layers = ctx.layers
    # needs_input_grad mirrors the inputs: a flag for x, a list of flags for each list of tensors.
    want_x, want_w, want_b = ctx.needs_input_grad[:3]
    needs = [bool(want_x), *(bool(n) for n in want_w), *(bool(n) for n in want_b)]
    if not any(needs):
        return None, [None] * layers, [None] * bias_layers, None, None, None, None
    weights, biases = params[:layers], params[layers:]
    grads = _or_none(
        feature_map_backward_op(grad, x, list(weights), list(biases), *ctx.arguments, needs), needs
    )
    return grads[0], grads[1 : 1 + layers], grads[1 + layers :], None, None, None, None


feature_map_op.register_autograd(_backward_feature_map, setup_context=_setup_feature_map)


def feature_map(
    x: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    *,
    degree: int,
    activation: str,
    nonnegative: bool,
    backend: str,
) -> Tensor:
    """φ(x) on a concrete ``backend``, through ``rehyat::feature_map`` when :func:`use_ops` says so.

    Under autocast a float32 input runs in the autocast dtype (the weights follow the input's dtype);
    the result has x's dtype either way."""
    inputs = x
    if x.dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        inputs = x.to(torch.get_autocast_dtype(x.device.type))
    arguments = (degree, activation, nonnegative, backend)
    with torch.autocast(x.device.type, enabled=False):
        if use_ops(x, *weights, *biases):
            features = feature_map_op(inputs, list(weights), list(biases), *arguments)
        else:
            features = _feature_map(inputs, weights, biases, *arguments)
    return features.to(x.dtype)


# --- the backends -----------------------------------------------------------------------------------


def _kernels():
    """The Triton launchers, imported on first use (``import rehyat`` works without Triton) and looked
    up at each call."""
    from rehyat.attention.hybrid.kernels import launch

    return launch


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of each part of the op (the PyTorch ones are the reference)."""

    #: (q, k, v, fq, fk, geometry, stats) -> y, the parallel form
    parallel: Callable[..., Tensor]
    #: (q, k, v, cached_k, cached_v, fq, kv, z, geometry, stats, out) -> y, one chunk of the streaming form
    step: Callable[..., Tensor]
    #: (fk, v, frame_tokens) -> per-frame (Σ φk vᵀ, Σ φk)
    frame_sums: Callable[..., tuple[Tensor, Tensor]]
    #: (x, weights, biases, degree, activation, nonnegative) -> φ(x)
    feature_map: Callable[..., Tensor]


#: The one registry of backends: every op and the dispatch in the public functions run what it names.
IMPLEMENTATIONS: dict[str, Implementation] = {
    "torch": Implementation(
        parallel=chunked_attention,
        step=_torch_step,
        frame_sums=_torch_frame_sums,
        feature_map=torch_feature_map,
    ),
    "triton": Implementation(
        parallel=lambda *args: _kernels().kernel_attention(*args),
        step=lambda *args: _kernels().triton_step_attention(*args),
        frame_sums=lambda *args: _kernels().frame_sums(*args),
        feature_map=_triton_feature_map,
    ),
}
