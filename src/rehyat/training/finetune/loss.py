"""The stage-2 loss: Wan's rectified flow (docs/method.md §7). x_t = (1 − σ)·x0 + σ·ε, the model predicts
v = ε − x0 at timestep σ·1000, with σ drawn by Wan's shifted sampling σ = shift·u / (1 + (shift − 1)·u),
u ~ U(0, 1); optionally blended with a teacher's velocity. CogVideoX, which samples with a v-prediction DDPM
scheduler, trains on that objective instead (:func:`v_prediction_loss`). Noise comes from a generator
seeded per slot of the global batch, so resumed runs and other rank × accumulation splits draw the same
noise."""

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
    conditioning: dict[str, Tensor] | None = None,
) -> Tensor:
    """MSE between the model's velocity and v = ε − x0 at x_t = (1 − σ)·x0 + σ·ε, σ shifted-uniform.

    ``latents`` [B, C, F, H, W]; ``family`` the models' adapter, which says how the forward is called on
    them (None: Wan's call, ``model(x_t, t, prompt_embeds)``), with the samples' other inputs
    ``conditioning`` by name (HunyuanVideo's pooled CLIP projections).

    With a ``teacher`` the target is (1 − λ)·(ε − x0) + λ·teacher(x_t), λ = ``teacher_weight``: the same
    gradient as (1 − λ)·flow matching + λ·MSE to the teacher's prediction (output distillation).
    """
    u, noise = _draw(latents, generator)
    sigma = shifted_sigmas(u, shift).to(latents.device)
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    call = (prompt_embeds, family, conditioning)
    return _regression(model, teacher, teacher_weight, noisy, sigma * 1000, noise - latents, call)


def v_prediction_loss(
    model: nn.Module,
    latents: Tensor,
    prompt_embeds: Tensor,
    generator: torch.Generator,
    alphas_cumprod: Tensor,
    teacher: nn.Module | None = None,
    teacher_weight: float = 0.0,
    family: FamilyAdapter | None = None,
    conditioning: dict[str, Tensor] | None = None,
) -> Tensor:
    """The objective of a model that samples with a v-prediction DDPM scheduler (CogVideoX): at a
    timestep t drawn uniformly from the T of ``alphas_cumprod`` ᾱ [T] (the scheduler's), x_t =
    √ᾱ_t·x0 + √(1 − ᾱ_t)·ε, and the model's output regresses v = √ᾱ_t·ε − √(1 − ᾱ_t)·x0 under MSE (diffusers'
    CogVideoX training, whose x0 error weighted by 1/(1 − ᾱ_t) is this one). The same draws, arguments and
    ``teacher`` blend as :func:`flow_matching_loss`."""
    u, noise = _draw(latents, generator)
    steps = alphas_cumprod.shape[0]
    timestep = (u * steps).long().clamp(max=steps - 1).to(latents.device)
    alpha = alphas_cumprod.to(latents.device, torch.float32)[timestep].view(-1, 1, 1, 1, 1)
    signal, sigma = alpha.sqrt(), (1 - alpha).sqrt()
    noisy = signal * latents + sigma * noise
    call = (prompt_embeds, family, conditioning)
    return _regression(
        model, teacher, teacher_weight, noisy, timestep, signal * noise - sigma * latents, call
    )


def _draw(latents: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """u ~ U(0, 1) per sample [B] and ε shaped like ``latents``, drawn on the generator's device and
    moved to the latents' (where the two differ)."""
    u = torch.rand(latents.shape[0], generator=generator, dtype=torch.float32, device=generator.device)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32, device=generator.device)
    return u.to(latents.device), noise.to(latents.device)


def _regression(
    model: nn.Module,
    teacher: nn.Module | None,
    teacher_weight: float,
    noisy: Tensor,
    timestep: Tensor,
    target: Tensor,
    call: tuple[Tensor, FamilyAdapter | None, dict[str, Tensor] | None],
) -> Tensor:
    """MSE of the model's output at (``noisy``, ``timestep``) to ``target``, blended with the teacher's."""
    prediction = predict_velocity(model, noisy, timestep, *call)
    target = target.float()
    if teacher is not None and teacher_weight > 0:
        with torch.no_grad():
            taught = predict_velocity(teacher, noisy, timestep, *call).float()
        target = torch.lerp(target, taught, teacher_weight)
    return F.mse_loss(prediction.float(), target)


def predict_velocity(
    model: nn.Module,
    latents: Tensor,
    timestep: Tensor,
    prompt_embeds: Tensor,
    family: FamilyAdapter | None,
    conditioning: dict[str, Tensor] | None = None,
) -> Tensor:
    """The velocity [B, C, F, H, W] ``model`` (a transformer, or its DDP/FSDP wrapper, called as such)
    predicts, called the way ``family``'s pipeline calls it (None: Wan's positional call), with the
    samples' ``conditioning`` tensors by name."""
    if family is None:
        return model(latents, timestep, prompt_embeds, return_dict=False)[0]
    transformer = distributed.unwrap(model)
    inputs = family.denoiser_inputs(transformer, latents, timestep, prompt_embeds, **(conditioning or {}))
    return family.denoiser_output(transformer, model(**inputs, return_dict=False)[0], latents)


def drop_prompts(prompt_embeds: Tensor, probability: float, generator: torch.Generator) -> Tensor:
    """Zero each sample's prompt embedding with ``probability`` (the empty prompt of CFG's unconditional branch)."""
    keep = torch.rand(prompt_embeds.shape[0], generator=generator, device=generator.device) >= probability
    return prompt_embeds * keep.to(prompt_embeds.device, prompt_embeds.dtype).view(-1, 1, 1)


def noise_generator(seed: int, step: int, slot: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of micro-batch ``slot`` (micro-step · world + rank) of a step, on ``device``.

    Noise depends on the slot in the global batch only: a resumed run draws the same noise, and so does
    a run with another split of the same global batch into ranks and accumulation steps. The trainer
    draws on the training device: a batch's noise drawn on the host and copied over would cost more host
    time than a small model's whole step on a GPU. The streams differ between devices (CPU and CUDA draw
    other numbers from one seed, and CUDA's depend on the card's SM count), so only runs on the same
    device model draw the same noise.
    """
    seed = ((seed * 1_000_003 + step) * 65_537 + slot) % 2**63
    return torch.Generator(device=device).manual_seed(seed)
