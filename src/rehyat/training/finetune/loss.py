"""The stage-2 loss: Wan's rectified flow (docs/method.md §7). x_t = (1 − σ)·x0 + σ·ε, the model predicts
v = ε − x0 at timestep σ·1000, with σ drawn by Wan's shifted sampling σ = shift·u / (1 + (shift − 1)·u),
u ~ U(0, 1); optionally blended with a teacher's velocity. Noise comes from a generator seeded per slot of
the global batch, so resumed runs and other rank × accumulation splits draw the same noise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rehyat.models.adapter import FamilyAdapter
from rehyat.training import distributed


def shifted_sigmas(u: Tensor, shift: float) -> Tensor:
    """Wan's timestep shift: σ = shift·u / (1 + (shift − 1)·u), which moves mass towards high noise."""
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(
    model: nn.Module,
    latents: Tensor,
    prompt_embeds: Tensor,
    generator: torch.Generator,
    shift: float,
    teacher: nn.Module | None = None,
    teacher_weight: float = 0.0,
    family: FamilyAdapter | None = None,
) -> Tensor:
    """MSE between the model's velocity and v = ε − x0 at x_t = (1 − σ)·x0 + σ·ε, σ shifted-uniform.

    ``latents`` [B, C, F, H, W]; ``family`` the models' adapter, which says how the forward is called on
    them (None: Wan's call, ``model(x_t, t, prompt_embeds)``).

    With a ``teacher`` the target is (1 − λ)·(ε − x0) + λ·teacher(x_t), λ = ``teacher_weight``: the same
    gradient as (1 − λ)·flow matching + λ·MSE to the teacher's prediction (output distillation).
    """
    batch = latents.shape[0]
    u = torch.rand(batch, generator=generator, dtype=torch.float32)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    sigma = shifted_sigmas(u, shift).to(latents.device)
    noise = noise.to(latents.device)
    s = sigma.view(batch, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    prediction = predict_velocity(model, noisy, sigma * 1000, prompt_embeds, family)
    target = (noise - latents).float()
    if teacher is not None and teacher_weight > 0:
        with torch.no_grad():
            taught = predict_velocity(teacher, noisy, sigma * 1000, prompt_embeds, family).float()
        target = torch.lerp(target, taught, teacher_weight)
    return F.mse_loss(prediction.float(), target)


def predict_velocity(
    model: nn.Module, latents: Tensor, timestep: Tensor, prompt_embeds: Tensor, family: FamilyAdapter | None
) -> Tensor:
    """The velocity [B, C, F, H, W] ``model`` (a transformer, or its DDP/FSDP wrapper, called as such)
    predicts, called the way ``family``'s pipeline calls it (None: Wan's positional call)."""
    if family is None:
        return model(latents, timestep, prompt_embeds, return_dict=False)[0]
    transformer = distributed.unwrap(model)
    inputs = family.denoiser_inputs(transformer, latents, timestep, prompt_embeds)
    return family.denoiser_output(transformer, model(**inputs, return_dict=False)[0], latents)


def drop_prompts(prompt_embeds: Tensor, probability: float, generator: torch.Generator) -> Tensor:
    """Zero each sample's prompt embedding with ``probability`` (the empty prompt of CFG's unconditional branch)."""
    keep = torch.rand(prompt_embeds.shape[0], generator=generator) >= probability
    return prompt_embeds * keep.to(prompt_embeds.device, prompt_embeds.dtype).view(-1, 1, 1)


def noise_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The generator of micro-batch ``slot`` (micro-step · world + rank) of a step.

    Noise depends on the slot in the global batch only: a resumed run draws the same noise, and so does
    a run with another split of the same global batch into ranks and accumulation steps.
    """
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 65_537 + slot) % 2**63)
