"""Distributed training through torch's own engines: DDP or FSDP2, launched by ``torchrun``.

``torchrun --nproc-per-node N -m rehyat.cli finetune ...`` (or ``accelerate launch``, which sets the
same RANK/WORLD_SIZE/LOCAL_RANK variables) starts N processes; :func:`init_distributed` joins them
(NCCL on GPUs, gloo on CPUs). The same code runs DDP and FSDP on CPUs, which is what CI tests.
Checkpoints go through ``torch.distributed.checkpoint.state_dict``: full (unsharded) model and
optimizer state keyed by parameter name, gathered to rank 0, so a run can resume under another
strategy or world size.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from rehyat.models.families import family_of

Strategy = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the process group the launcher describes (a single process needs none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=device)


def shutdown() -> None:
    """Leave the process group. Ranks that got here normally first wait for each other: a gloo rank that
    destroys its group while a peer is still finishing a collective can abort that peer. A rank that
    leaves on an exception does not wait (its peers may never arrive)."""
    if dist.is_initialized():
        if sys.exc_info()[1] is None:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: Strategy, env: DistEnv) -> nn.Module:
    """DDP replicas, or FSDP2 shards with one unit per transformer block plus the root."""
    if env.world == 1:
        return model
    if strategy == "ddp":
        return DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    for block in family_of(model).blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameter names match the checkpoint (FSDP2 shards in place, DDP wraps)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on accumulation micro-steps."""
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def mean_over_ranks(value: Tensor) -> float:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)  # a sum: gloo has no AVG
        value /= dist.get_world_size()
    return float(value)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (collective; a plain bool with one process)."""
    if not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    value = torch.tensor(int(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Full model and optimizer state keyed by parameter name; on rank 0 only when distributed (collective)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=dist.is_initialized())
    return get_state_dict(unwrap(model), optimizer, options=options)


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Tensor], optim_state: dict
) -> None:
    """Load what :func:`full_state` returned (every rank passes the full state; FSDP keeps its shard)."""
    set_state_dict(
        unwrap(model),
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=StateDictOptions(full_state_dict=True),
    )
