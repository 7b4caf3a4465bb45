"""The exchanges of chunk parallelism: point-to-point sends and an all-gather, both differentiable, and
every byte they send counted by an active :class:`CommCounter`.

One :func:`exchange` call is one autograd node: its forward posts all of a layer's sends and receives
(``batch_isend_irecv``) and all-gathers a fixed-size payload; its backward sends the gradients of what
was received back to the senders, receives the gradients of what was sent, and returns each rank the
sum over ranks of the gradients of its gathered payload (point to point: what a reduce-scatter does).
Keeping a layer's communication in one node keeps every rank's backward in the same collective order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

_ACTIVE: list[CommCounter] = []


@dataclass
class CommRecord:
    """One message: ``op`` "send" (point to point, to ``peer``) or "all_gather" (``bytes`` is what this
    rank sends: its payload once to each of the world − 1 others, as a ring all-gather does)."""

    op: str
    label: str
    phase: str
    peer: int | None
    bytes: int


@dataclass
class CommCounter:
    """Records every message the chunk-parallel exchanges of this process send while it is active::

    with CommCounter() as counter:
        out = transformer(local_latent, t, context, return_dict=False)[0]
    counter.total("forward")  # bytes this rank sent
    """

    records: list[CommRecord] = field(default_factory=list)

    def __enter__(self) -> CommCounter:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.remove(self)

    def total(self, phase: str | None = None, label: str | None = None) -> int:
        return sum(
            r.bytes
            for r in self.records
            if (phase is None or r.phase == phase) and (label is None or r.label == label)
        )

    def by_label(self, phase: str | None = None) -> dict[str, int]:
        sums: dict[str, int] = defaultdict(int)
        for r in self.records:
            if phase is None or r.phase == phase:
                sums[r.label] += r.bytes
        return dict(sums)


def record_message(op: str, label: str, phase: str, peer: int | None, nbytes: int) -> None:
    """Record one message (a :class:`CommRecord`) in every active :class:`CommCounter`; for sends made
    outside :func:`exchange`, such as the pipeline form's state handoff."""
    for counter in _ACTIVE:
        counter.records.append(CommRecord(op, label, phase, peer, nbytes))


@dataclass(frozen=True)
class Outgoing:
    """A tensor this rank sends ``dst`` (a rank of the group) under ``tag``; ``label`` names it in counts."""

    dst: int
    tag: int
    label: str


@dataclass(frozen=True)
class Incoming:
    """A tensor this rank receives from ``src`` under ``tag``, of known shape and dtype."""

    src: int
    tag: int
    label: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def _global(group: dist.ProcessGroup | None, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def point_to_point(
    group: dist.ProcessGroup | None,
    sends: list[tuple[Outgoing, Tensor]],
    receives: list[Incoming],
    device: torch.device,
    phase: str,
) -> list[Tensor]:
    """Post every send and receive at once and wait for all; return the received tensors in order.

    Both sides list their messages to one peer in the same (tag) order, so matching does not depend on
    tags (NCCL ignores them)."""
    ops, received = [], []
    for message in receives:
        buffer = torch.empty(message.shape, dtype=message.dtype, device=device)
        received.append(buffer)
        if buffer.numel():
            ops.append(dist.P2POp(dist.irecv, buffer, _global(group, message.src), group, message.tag))
    for message, tensor in sends:
        tensor = tensor.contiguous()
        if tensor.numel():
            ops.append(dist.P2POp(dist.isend, tensor, _global(group, message.dst), group, message.tag))
            record_message("send", message.label, phase, message.dst, tensor.numel() * tensor.element_size())
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return received


def all_gather(group: dist.ProcessGroup | None, payload: Tensor, label: str, phase: str) -> Tensor:
    """[world, *payload.shape]: every rank's payload (all the same shape), in rank order."""
    world = dist.get_world_size(group)
    payload = payload.contiguous()
    parts = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(parts, payload, group=group)
    record_message("all_gather", label, phase, None, (world - 1) * payload.numel() * payload.element_size())
    return torch.stack(parts)


_GATHER_GRAD_TAG = 1000


@dataclass(frozen=True)
class _Plan:
    group: dist.ProcessGroup | None
    outgoing: tuple[Outgoing, ...]
    incoming: tuple[Incoming, ...]
    gather_label: str


class _Exchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, device: torch.device, payload: Tensor | None, *sent: Tensor):
        ctx.plan, ctx.device = plan, device
        ctx.sent_meta = [(tuple(t.shape), t.dtype) for t in sent]
        ctx.payload_meta = None if payload is None else (tuple(payload.shape), payload.dtype)
        pairs = list(zip(plan.outgoing, sent, strict=True))
        received = point_to_point(plan.group, pairs, list(plan.incoming), device, "forward")
        if payload is not None:
            received.append(all_gather(plan.group, payload, plan.gather_label, "forward"))
        return tuple(received)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        plan, device = ctx.plan, ctx.device
        metas = [(m.shape, m.dtype) for m in plan.incoming]
        if ctx.payload_meta is not None:
            rank, world = dist.get_rank(plan.group), dist.get_world_size(plan.group)
            metas.append(((world, *ctx.payload_meta[0]), ctx.payload_meta[1]))
        grads = [
            torch.zeros(shape, dtype=dtype, device=device) if g is None else g
            for g, (shape, dtype) in zip(grads, metas, strict=True)
        ]
        # What was received goes back to its sender; what was sent comes back from its receiver.
        sends = [(Outgoing(m.src, m.tag, m.label), g) for m, g in zip(plan.incoming, grads, strict=False)]
        receives = [
            Incoming(m.dst, m.tag, m.label, shape, dtype)
            for m, (shape, dtype) in zip(plan.outgoing, ctx.sent_meta, strict=True)
        ]
        if ctx.payload_meta is not None:
            gathered_grad, (shape, dtype) = grads[-1], ctx.payload_meta
            others = [q for q in range(world) if q != rank]
            sends += [(Outgoing(q, _GATHER_GRAD_TAG, plan.gather_label), gathered_grad[q]) for q in others]
            receives += [Incoming(q, _GATHER_GRAD_TAG, plan.gather_label, shape, dtype) for q in others]
        received = point_to_point(plan.group, sends, receives, device, "backward")
        sent_grads = received[: len(plan.outgoing)]
        payload_grad = None
        if ctx.payload_meta is not None:
            # Each rank's payload gradient: the sum over ranks of their gradient for it, in rank order.
            from_others = dict(zip(others, received[len(plan.outgoing) :], strict=True))
            parts = [gathered_grad[q] if q == rank else from_others[q] for q in range(world)]
            payload_grad = torch.stack(parts).sum(dim=0)
        return (None, None, payload_grad, *sent_grads)


def exchange(
    group: dist.ProcessGroup | None,
    sends: list[tuple[Outgoing, Tensor]],
    receives: list[Incoming],
    device: torch.device,
    payload: Tensor | None = None,
    gather_label: str = "total",
) -> tuple[list[Tensor], Tensor | None]:
    """Send and receive point to point and (with ``payload``) all-gather it, as one differentiable step.

    Returns the received tensors (in ``receives`` order) and the gathered payloads [world, ...] (None
    without a payload). Every rank of ``group`` must call it in the same order (a rank with nothing to
    send or receive still takes part in the all-gather and in the backward).
    """
    if not sends and not receives and payload is None:
        return [], None
    plan = _Plan(group, tuple(m for m, _ in sends), tuple(receives), gather_label)
    out = list(_Exchange.apply(plan, device, payload, *(t for _, t in sends)))
    if payload is None:
        return out, None
    return out[:-1], out[-1]
