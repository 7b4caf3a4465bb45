"""Stage-1 students: one block's attention variant trained to reproduce the teacher's attention output.

A :class:`BlockStudent` holds the trainable feature maps of one block for one attention variant
(``"rehyat"``, ``"linear"``; ``"local"`` has none and ``"untrained"`` keeps its initial φ) and takes
L1 steps on :class:`~rehyat.training.capture.AttentionCapture` batches (docs/method.md §7:
loss = mean |y − ŷ|). Feature-map master weights and their optimiser are fp32; φ runs in the capture's
dtype (bf16 on a GPU: the weights are cast on the fly and gradients reach the fp32 masters), the
attention accumulates in fp32 as always, and the loss is taken in fp32.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rehyat.attention import AttentionStats
from rehyat.attention.hybrid import attend
from rehyat.baselines import call_keywords, linear_attention, local_attention
from rehyat.models.adapter import FamilyAdapter, configured_attention
from rehyat.models.config import ReHyAtConfig
from rehyat.models.wan import WAN
from rehyat.training.capture import AttentionCapture
from rehyat.training.checkpoint import NonFiniteError

VARIANTS = ("rehyat", "untrained", "linear", "local")
_TRAINABLE = ("rehyat", "linear")


@dataclass
class Evaluation:
    l1: float
    rel_error: float
    guarded_fraction: float

    def as_dict(self) -> dict[str, float]:
        return {"l1": self.l1, "rel_error": self.rel_error, "guarded_fraction": self.guarded_fraction}


class BlockStudent:
    """One block, one variant: φq, φk (if any), an AdamW optimiser, and the variant's attention op.

    ``family``: the teacher's :class:`~rehyat.models.adapter.FamilyAdapter` (default Wan), whose processor
    says what φ reads of the captured q and k (its ``feature_input``: the RoPE layout it undoes);
    ``feature_input`` in its place where that depends on the model (the recorder's, for HunyuanVideo).

    A joint text–video layer's capture carries the text keys: the student's ReHyAt predicts the video rows
    with them as the op's global keys, as the converted processor computes its video rows (docs/method.md
    §6.1); the linear and local baselines take no text keys and refuse such a capture, as does a config
    whose ``attention`` is another baseline."""

    def __init__(
        self,
        variant: str,
        config: ReHyAtConfig,
        heads: int,
        head_dim: int,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        device: torch.device | str = "cpu",
        family: FamilyAdapter = WAN,
        feature_input=None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.config = variant, config
        if feature_input is None and not isinstance(
            inspect.getattr_static(family.processor, "feature_input"), staticmethod
        ):
            raise ValueError(
                f"BlockStudent on {family.name} needs feature_input= (its φ input depends on the model: "
                "pass the family adapter's feature_input(transformer), as rehyat distill does)"
            )
        self.feature_input = family.processor.feature_input if feature_input is None else feature_input
        device = torch.device(device)
        self.phi_q = self.phi_k = None
        self.optimizer = None
        if variant != "local":
            self.phi_q = config.feature_map(heads, head_dim).to(device)
            self.phi_k = config.feature_map(heads, head_dim).to(device)
            self.phi_q.requires_grad_(variant in _TRAINABLE)
            self.phi_k.requires_grad_(variant in _TRAINABLE)
        if variant in _TRAINABLE:
            params = [*self.phi_q.parameters(), *self.phi_k.parameters()]
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.initial_state = {k: v.clone() for k, v in self.feature_map_state().items()}

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    def predict(self, capture: AttentionCapture, stats: AttentionStats | None = None) -> Tensor:
        q, k, v = capture.q, capture.k, capture.v
        geometry = self.config.geometry(capture.frame_tokens)
        text = capture.global_keys()
        if text and (self.variant in ("local", "linear") or self.config.attention != "hybrid"):
            raise ValueError(
                "a joint text-video layer's capture (text keys) is predicted by ReHyAt only (variants 'rehyat', "
                f"'untrained' with attention='hybrid'), got {self.variant!r} with {self.config.attention!r}"
            )
        if self.variant == "local":
            first = geometry.first_chunk_frames  # the same windows as the student's
            return local_attention(q, k, v, stats=stats, first_chunk_frames=first, **call_keywords(geometry))
        fq = self.phi_q(self.feature_input(self.config, q, capture.rotary))
        fk = self.phi_k(self.feature_input(self.config, k, capture.rotary))
        if self.variant == "linear":
            return linear_attention(q, k, v, fq, fk, stats=stats, **call_keywords(geometry))
        # "rehyat" and "untrained": the op the converted model will run (ReHyAt or a baseline hybrid; a
        # joint layer's ReHyAt with the text as global keys).
        if text:
            return attend(q, k, v, fq, fk, geometry, stats=stats, **text)
        return configured_attention(self.config, q, k, v, fq, fk, geometry, stats=stats)

    def train_step(self, capture: AttentionCapture) -> float:
        """One AdamW step on mean |y − ŷ|; returns the loss before the step.

        A non-finite loss or gradient raises :class:`NonFiniteError` before the step: φ stays as it was."""
        if not self.trainable:
            raise ValueError(f"variant {self.variant!r} has nothing to train")
        loss = (self.predict(capture).float() - capture.y.float()).abs().mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        grads = [
            p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        if not math.isfinite(value) or not all(torch.isfinite(g).all() for g in grads):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"the {self.variant} student's L1 loss is {value}"
                + ("" if not math.isfinite(value) else " but its gradient is not finite")
            )
        self.optimizer.step()
        return value

    @torch.no_grad()
    def evaluate(self, captures: list[AttentionCapture]) -> Evaluation:
        """Mean L1, relative error ‖y − ŷ‖/‖y‖ and guarded-row fraction over ``captures``."""
        if not captures:
            raise ValueError("evaluate needs at least one capture")
        stats = AttentionStats()
        l1 = err2 = ref2 = 0.0
        count = 0
        for capture in captures:
            y = capture.y.float()
            diff = self.predict(capture, stats).float() - y
            l1 += diff.abs().sum().item()
            count += diff.numel()
            err2 += diff.square().sum().item()
            ref2 += y.square().sum().item()
        return Evaluation(l1 / count, (err2 / max(ref2, 1e-30)) ** 0.5, stats.guarded_fraction)

    def load_feature_map_state(self, state: dict[str, Tensor]) -> None:
        """Load φ weights named as :meth:`feature_map_state` returns them."""
        for prefix, phi in (("rehyat_phi_q.", self.phi_q), ("rehyat_phi_k.", self.phi_k)):
            phi.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})

    @torch.no_grad()
    def keep_better_than_initial(self, captures: list[AttentionCapture]) -> dict[str, object]:
        """Model selection on held-out ``captures``: keep the trained φ unless the φ it started from
        (``initial_state``) scores a lower L1 there, in which case restore that one. Returns what was
        kept and both errors, so a report can show the trained φ's error either way."""
        trained_state = {k: v.clone() for k, v in self.feature_map_state().items()}
        trained = self.evaluate(captures)
        self.load_feature_map_state(self.initial_state)
        initial = self.evaluate(captures)
        kept = "initial" if initial.l1 < trained.l1 else "trained"
        if kept == "trained":
            self.load_feature_map_state(trained_state)
        return {"kept": kept, "trained": trained.as_dict(), "initial": initial.as_dict()}

    def feature_map_state(self) -> dict[str, Tensor]:
        """φ weights under the names a converted block's attn1 uses (``rehyat_phi_q.*``, ``rehyat_phi_k.*``)."""
        if self.phi_q is None:
            return {}
        state = {f"rehyat_phi_q.{k}": v.detach().cpu() for k, v in self.phi_q.state_dict().items()}
        state.update({f"rehyat_phi_k.{k}": v.detach().cpu() for k, v in self.phi_k.state_dict().items()})
        return state
