"""Stage-1 students: one block's attention variant trained to reproduce the teacher's attention output.

A :class:`BlockStudent` holds the trainable feature maps of one block for one attention variant
(``"rehyat"``, ``"linear"``; ``"local"`` has none and ``"untrained"`` keeps its initial φ) and takes
L1 steps on :class:`~rehyat.training.capture.AttentionCapture` batches (docs/method.md §7:
loss = mean |y − ŷ|, plus ``mass_weight`` × the out-of-window mass error of :mod:`rehyat.training.mass`
for a ReHyAt student). Feature-map master weights and their optimiser are fp32; φ runs in the capture's
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
from rehyat.training.mass import EVALUATION_ROWS, linear_mass, mass_error, sample_rows

VARIANTS = ("rehyat", "untrained", "linear", "local")
_TRAINABLE = ("rehyat", "linear")


@dataclass
class Evaluation:
    l1: float
    rel_error: float
    guarded_fraction: float
    mass_error: float | None = None  # a ReHyAt student's (rehyat.training.mass), on sampled rows

    def as_dict(self) -> dict[str, float]:
        found = {"l1": self.l1, "rel_error": self.rel_error, "guarded_fraction": self.guarded_fraction}
        return found if self.mass_error is None else {**found, "mass_error": self.mass_error}

    def objective(self, mass_weight: float) -> float:
        """What training minimises: L1 plus ``mass_weight`` × the mass error (when measured)."""
        return self.l1 + (
            mass_weight * self.mass_error if mass_weight and self.mass_error is not None else 0.0
        )


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
        mass_weight: float = 0.0,
        mass_rows: int = 256,
        seed: int = 0,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.config = variant, config
        self.mass_weight, self.mass_rows = mass_weight, mass_rows
        if mass_weight and config.attention != "hybrid":
            raise ValueError(
                f"mass_weight={mass_weight} matches ReHyAt's linear share (attention='hybrid'), got "
                f"attention={config.attention!r}"
            )
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
        self.generator = torch.Generator(device="cpu").manual_seed(seed)  # the mass rows of each step

    @property
    def measures_mass(self) -> bool:
        """Whether this student has a linear share to match: ReHyAt (trained or not), hybrid attention."""
        return self.variant in ("rehyat", "untrained") and self.config.attention == "hybrid"

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    def features(self, capture: AttentionCapture) -> tuple[Tensor, Tensor]:
        """φ(q), φ(k) of a capture (the student must have feature maps)."""
        fq = self.phi_q(self.feature_input(self.config, capture.q, capture.rotary))
        fk = self.phi_k(self.feature_input(self.config, capture.k, capture.rotary))
        return fq, fk

    def shares(
        self, capture: AttentionCapture, generator: torch.Generator, rows: int
    ) -> tuple[Tensor, Tensor] | None:
        """(student, teacher) out-of-window shares (rehyat.training.mass.linear_mass) of ``rows`` rows
        drawn with ``generator``; None when no row has linear keys (a clip within one window)."""
        geometry = self.config.geometry(capture.frame_tokens)
        picked = sample_rows(geometry, capture.frames, rows, generator, capture.q.device)
        if picked.numel() == 0:
            return None
        fq, fk = self.features(capture)
        keys = dict(global_k=capture.global_k, global_mask=capture.global_mask)
        return linear_mass(capture.q, capture.k, fq, fk, geometry, picked, **keys)

    def mass(self, capture: AttentionCapture, generator: torch.Generator, rows: int) -> Tensor | None:
        """The mass error (rehyat.training.mass) on ``rows`` rows drawn with ``generator``; None when no
        row has linear keys."""
        shares = self.shares(capture, generator, rows)
        return None if shares is None else mass_error(*shares)

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
        fq, fk = self.features(capture)
        if self.variant == "linear":
            return linear_attention(q, k, v, fq, fk, stats=stats, **call_keywords(geometry))
        # "rehyat" and "untrained": the op the converted model will run (ReHyAt or a baseline hybrid; a
        # joint layer's ReHyAt with the text as global keys).
        if text:
            return attend(q, k, v, fq, fk, geometry, stats=stats, **text)
        return configured_attention(self.config, q, k, v, fq, fk, geometry, stats=stats)

    def train_step(self, capture: AttentionCapture) -> float:
        """One AdamW step on mean |y − ŷ| (+ ``mass_weight`` × the mass error on rows drawn from the
        student's generator); returns the loss before the step.

        A non-finite loss or gradient raises :class:`NonFiniteError` before the step: φ stays as it was."""
        if not self.trainable:
            raise ValueError(f"variant {self.variant!r} has nothing to train")
        loss = (self.predict(capture).float() - capture.y.float()).abs().mean()
        if self.mass_weight and self.measures_mass:
            mass = self.mass(capture, self.generator, self.mass_rows)
            if mass is not None:
                loss = loss + self.mass_weight * mass
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        grads = [
            p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        if not math.isfinite(value) or not all(torch.isfinite(g).all() for g in grads):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteError(
                f"the {self.variant} student's loss is {value}"
                + ("" if not math.isfinite(value) else " but its gradient is not finite")
            )
        self.optimizer.step()
        return value

    @torch.no_grad()
    def evaluate(self, captures: list[AttentionCapture]) -> Evaluation:
        """Mean L1, relative error ‖y − ŷ‖/‖y‖ and guarded-row fraction over ``captures``; for a ReHyAt
        student also the mean mass error on :data:`~rehyat.training.mass.EVALUATION_ROWS` rows per capture,
        the same rows for every student and call."""
        if not captures:
            raise ValueError("evaluate needs at least one capture")
        stats = AttentionStats()
        l1 = err2 = ref2 = 0.0
        count = 0
        masses = []
        generator = torch.Generator(device="cpu").manual_seed(0)
        for capture in captures:
            y = capture.y.float()
            diff = self.predict(capture, stats).float() - y
            l1 += diff.abs().sum().item()
            count += diff.numel()
            err2 += diff.square().sum().item()
            ref2 += y.square().sum().item()
            mass = self.mass(capture, generator, EVALUATION_ROWS) if self.measures_mass else None
            if mass is not None:
                masses.append(mass.item())
        mass = sum(masses) / len(masses) if masses else None
        return Evaluation(l1 / count, (err2 / max(ref2, 1e-30)) ** 0.5, stats.guarded_fraction, mass)

    def load_feature_map_state(self, state: dict[str, Tensor]) -> None:
        """Load φ weights named as :meth:`feature_map_state` returns them."""
        for prefix, phi in (("rehyat_phi_q.", self.phi_q), ("rehyat_phi_k.", self.phi_k)):
            phi.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})

    @torch.no_grad()
    def keep_better_than_initial(self, captures: list[AttentionCapture]) -> dict[str, object]:
        """Model selection on held-out ``captures``: keep the trained φ unless the φ it started from
        (``initial_state``) scores lower there on what training minimises (L1, plus the weighted mass
        error when ``mass_weight`` is set), in which case restore that one. Returns what was kept and both
        errors, so a report can show the trained φ's error either way."""
        trained_state = {k: v.clone() for k, v in self.feature_map_state().items()}
        trained = self.evaluate(captures)
        self.load_feature_map_state(self.initial_state)
        initial = self.evaluate(captures)
        weight = self.mass_weight
        kept = "initial" if initial.objective(weight) < trained.objective(weight) else "trained"
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
