"""Exponential moving average of a model's parameters (fp32 shadows; sharded alike under FSDP2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor


class EMA:
    """``shadow ← decay · shadow + (1 − decay) · param`` after every optimizer step, keyed by parameter name.

    Under FSDP2 the parameters are DTensors and so are the shadows: each rank averages its own shard.
    ``state_dict`` gathers full tensors (a collective: call it on every rank).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names, params = zip(*model.named_parameters(), strict=True)
        # One multi-tensor lerp (as torch.optim.swa_utils' EMA does), not a launch per parameter: a small
        # model's step is bound by the host.
        torch._foreach_lerp_(
            [self.shadow[name] for name in names], [p.detach().float() for p in params], 1.0 - self.decay
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Full (unsharded) fp32 shadows on the CPU."""
        return {
            name: (t.full_tensor() if isinstance(t, DTensor) else t).cpu() for name, t in self.shadow.items()
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = sorted(self.shadow.keys() - state.keys())
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[:3]}")
        for name, shadow in self.shadow.items():
            if isinstance(shadow, DTensor):
                full = state[name].to(shadow.device_mesh.device_type)
                shadow.copy_(distribute_tensor(full, shadow.device_mesh, shadow.placements))
            else:
                shadow.copy_(state[name])
