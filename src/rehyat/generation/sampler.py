"""Denoising with the recurrent forward (SPEC §8) and video generation from a ``WanPipeline``.

Every denoising step sweeps the chunks in order, all at the same noise level, with fresh streaming
states; the conditional and unconditional CFG branches are separate :func:`rehyat.recurrent_forward`
calls, so each has its own states. The latent video itself is held whole (it is small); activations
exist for one chunk at a time. The schedule is a diffusers flow-matching scheduler with Wan's shift —
the pipeline's own (UniPC with ``flow_shift`` for Wan2.1) unless another is passed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn
from tqdm.auto import tqdm

from rehyat.models.recurrent import recurrent_forward
from rehyat.utils import check_int, check_number


def parallel_forward(
    transformer: nn.Module, hidden_states: Tensor, timestep: Tensor, context: Tensor
) -> Tensor:
    """The model's own (parallel) forward, with :func:`rehyat.recurrent_forward`'s signature."""
    return transformer(hidden_states, timestep, context, return_dict=False)[0]


def make_scheduler(kind: str = "unipc", flow_shift: float = 3.0):
    """A flow-matching scheduler as Wan uses it (shift 3.0 for 480p, 5.0 for 720p in Wan2.1)."""
    check_number("flow_shift", flow_shift, minimum=0.0, exclusive_minimum=True)
    if kind == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
        )
    if kind == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    raise ValueError(f"scheduler kind must be 'unipc' or 'euler', got {kind!r}")


def latent_shape(
    batch: int,
    channels: int,
    num_frames: int,
    height: int,
    width: int,
    *,
    temporal: int = 4,
    spatial: int = 8,
) -> tuple[int, int, int, int, int]:
    """Latent shape of a video; Wan's VAE needs ``num_frames = 4k + 1`` and sizes divisible by ``spatial``."""
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        check_int(name, value)
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"num_frames must be {temporal}·k + 1 (1, 5, …, 81, …), got {num_frames}")
    if height % (2 * spatial) or width % (2 * spatial) or height < 1 or width < 1:
        raise ValueError(
            f"height and width must be positive multiples of {2 * spatial}, got {height}×{width}"
        )
    return batch, channels, (num_frames - 1) // temporal + 1, height // spatial, width // spatial


def check_sampling(num_inference_steps: int, guidance_scale: float) -> None:
    """ValueError unless ``num_inference_steps`` is an int >= 1 and ``guidance_scale`` a finite number >= 0
    (a NaN scale compared false with 1 and turned CFG off without a word)."""
    check_int("num_inference_steps", num_inference_steps, 1)
    check_number("guidance_scale", guidance_scale, minimum=0.0)


@torch.inference_mode()
def generate_latents(
    transformer: nn.Module,
    prompt_embeds: Tensor,
    negative_prompt_embeds: Tensor | None = None,
    *,
    scheduler,
    latent_shape: tuple[int, int, int, int, int],
    num_inference_steps: int = 50,
    guidance_scale: float = 5.0,
    generator: torch.Generator | None = None,
    latents: Tensor | None = None,
    progress: bool = True,
    forward: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor] = recurrent_forward,
) -> Tensor:
    """Denoise from noise to clean latents with the recurrent forward at every step.

    Mirrors ``WanPipeline.__call__`` (float32 latents, model-dtype inputs, CFG when
    ``guidance_scale > 1``) so that with the same generator it reproduces the pipeline's latents.
    ``scheduler`` is copied, not advanced. ``forward`` may be :func:`parallel_forward` instead, e.g. to
    sample from an unconverted teacher with the very same loop.
    """
    check_sampling(num_inference_steps, guidance_scale)
    guided = guidance_scale > 1.0
    if guided and negative_prompt_embeds is None:
        raise ValueError("guidance_scale > 1 needs negative_prompt_embeds (encode an empty prompt for none)")
    device, dtype = transformer.device, transformer.dtype
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps, device=device)
    scheduler.set_begin_index(0)
    if latents is None:
        latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=torch.float32)
    latents = latents.to(device=device, dtype=torch.float32)
    prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
    if guided:
        negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
    for t in tqdm(scheduler.timesteps, desc="denoising (recurrent)", disable=not progress):
        model_input = latents.to(dtype)
        timestep = t.expand(latents.shape[0])
        noise_pred = forward(transformer, model_input, timestep, prompt_embeds)
        if guided:
            noise_uncond = forward(transformer, model_input, timestep, negative_prompt_embeds)
            noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
    return latents


@torch.inference_mode()
def decode_latents(pipe, latents: Tensor) -> np.ndarray:
    """Wan VAE decode as ``WanPipeline`` does it; returns uint8 frames [B, F, H, W, 3]."""
    vae = pipe.vae
    latents = latents.to(device=vae.device, dtype=vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents)
    std = torch.tensor(vae.config.latents_std).view(shape).to(latents)
    video = vae.decode(latents * std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def generate_video(
    pipe,
    prompt: str | list[str] | None = None,
    *,
    negative_prompt: str | list[str] | None = None,
    prompt_embeds: Tensor | None = None,
    negative_prompt_embeds: Tensor | None = None,
    num_frames: int = 81,
    height: int = 480,
    width: int = 832,
    num_inference_steps: int = 50,
    guidance_scale: float = 5.0,
    generator: torch.Generator | None = None,
    max_sequence_length: int = 512,
    progress: bool = True,
) -> np.ndarray:
    """Text-to-video with a ``WanPipeline`` whose transformer is converted (all blocks, causal).

    The pipeline supplies the text encoder (or pass ``prompt_embeds``), scheduler, VAE and video
    post-processing; the denoising loop is :func:`generate_latents`. Returns uint8 frames [B, F, H, W, 3].
    Every argument is checked before the prompt is encoded.
    """
    check_sampling(num_inference_steps, guidance_scale)
    shape = latent_shape(
        1,
        pipe.transformer.config.in_channels,
        num_frames,
        height,
        width,
        temporal=pipe.vae_scale_factor_temporal,
        spatial=pipe.vae_scale_factor_spatial,
    )
    with torch.inference_mode():
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=guidance_scale > 1.0,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            max_sequence_length=max_sequence_length,
            device=pipe.transformer.device,
        )
    latents = generate_latents(
        pipe.transformer,
        prompt_embeds,
        negative_prompt_embeds,
        scheduler=pipe.scheduler,
        latent_shape=(prompt_embeds.shape[0], *shape[1:]),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generator,
        progress=progress,
    )
    return decode_latents(pipe, latents)
