"""Video generation and denoising in the recurrent form (docs/method.md §8) through ``WanPipeline``.

The denoising loop is ``WanPipeline.__call__`` itself, unmodified; the transformer runs in the recurrent
mode of :mod:`rehyat.models.hooks`: every call (one denoising step of one CFG branch) sweeps the chunks
in order, all at the same noise level, from fresh states, so the conditional and unconditional branches
each have their own. The latent video itself is held whole (it is small); activations exist for one
chunk at a time. The schedule is a diffusers flow-matching scheduler with Wan's shift — the
pipeline's own (UniPC with ``flow_shift`` for Wan2.1) unless another is passed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from torch import Tensor, nn

from rehyat.models.hooks import recurrent_forward, recurrent_mode
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
    patch: int = 2,
) -> tuple[int, int, int, int, int]:
    """Latent shape of a video; Wan's VAE needs ``num_frames = 4k + 1``, and its transformer sizes that
    are multiples of ``spatial`` × ``patch`` (LTX-Video: ``temporal=8, spatial=32, patch=1``)."""
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        check_int(name, value)
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"num_frames must be {temporal}·k + 1 (1, 5, …, 81, …), got {num_frames}")
    if height % (patch * spatial) or width % (patch * spatial) or height < 1 or width < 1:
        raise ValueError(
            f"height and width must be positive multiples of {patch * spatial}, got {height}×{width}"
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
    chunks_per_call: int | None = None,
) -> Tensor:
    """Denoise from noise to clean latents [B, C, F, H, W] with a bare ``WanTransformer3DModel``.

    The loop is ``WanPipeline.__call__`` itself (float32 latents, model-dtype inputs, CFG when
    ``guidance_scale > 1``), run on a pipeline made of ``transformer`` and a copy of ``scheduler`` only
    (``output_type="latent"``: no text encoder, no VAE), so with the same generator it reproduces the
    pipeline's latents. ``forward``: :func:`rehyat.recurrent_forward` (default: the recurrent mode's
    hooks are on for the call, ``chunks_per_call`` chunks per transformer call) or
    :func:`parallel_forward` (the model as it is, e.g. an unconverted teacher).
    """
    from diffusers import WanPipeline

    check_sampling(num_inference_steps, guidance_scale)
    if forward not in (recurrent_forward, parallel_forward):
        raise ValueError("forward must be rehyat.recurrent_forward or rehyat.generation.parallel_forward")
    guided = guidance_scale > 1.0
    if guided and negative_prompt_embeds is None:
        raise ValueError("guidance_scale > 1 needs negative_prompt_embeds (encode an empty prompt for none)")
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=transformer,
        scheduler=copy.deepcopy(scheduler),
    )
    pipe.set_progress_bar_config(disable=not progress, desc="denoising")
    _, _, frames, height, width = latent_shape
    device = transformer.device
    if chunks_per_call is not None:
        check_int("chunks_per_call", chunks_per_call, minimum=1)
    recurrent = forward is recurrent_forward
    mode = (
        recurrent_mode(transformer, chunks_per_call=chunks_per_call)
        if recurrent
        else contextlib.nullcontext()
    )
    with mode:
        return pipe(
            prompt_embeds=prompt_embeds.to(device),
            negative_prompt_embeds=negative_prompt_embeds.to(device) if guided else None,
            num_frames=(frames - 1) * pipe.vae_scale_factor_temporal + 1,
            height=height * pipe.vae_scale_factor_spatial,
            width=width * pipe.vae_scale_factor_spatial,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            latents=latents,
            output_type="latent",
            return_dict=False,
        )[0]


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
    max_sequence_length: int | None = None,
    progress: bool = True,
    chunks_per_call: int | None = None,
) -> np.ndarray:
    """Text-to-video with a family's own pipeline (``WanPipeline``, ``SkyReelsV2Pipeline``,
    ``LTXPipeline``, ``HunyuanVideoPipeline``, ``CogVideoXPipeline``) whose transformer is converted (all
    blocks, causal).

    Every argument is checked first; then the pipeline's own ``__call__`` runs (text encoding, its
    scheduler, the VAE, post-processing) with the transformer in the recurrent mode
    (:func:`rehyat.models.hooks.recurrent_mode`, ``chunks_per_call`` chunks per transformer call; None:
    as applied already, else 1).
    ``max_sequence_length``: the text tokens (None: the
    pipeline's default, Wan's 512, LTX-Video's 128, HunyuanVideo's 256, CogVideoX's 226).
    ``guidance_scale`` is HunyuanVideoPipeline's embedded guidance (its model is guidance-distilled; it
    samples without a negative prompt), the other pipelines' CFG scale. Precomputed ``prompt_embeds``
    do not serve HunyuanVideo, whose pipeline also needs pooled CLIP projections: give it text.
    Returns uint8 frames [B, F, H, W, 3].
    """
    from rehyat.models import family_of
    from rehyat.models.adapter import vae_compression

    check_sampling(num_inference_steps, guidance_scale)
    if chunks_per_call is not None:
        check_int("chunks_per_call", chunks_per_call, minimum=1)
    family = family_of(pipe.transformer)
    temporal, spatial = vae_compression(pipe)
    latent_shape(
        1,
        family.latent_channels(pipe.transformer),
        num_frames,
        height,
        width,
        temporal=temporal,
        spatial=spatial,
        patch=family.patch_size(pipe.transformer)[1],
    )
    if prompt_embeds is None:  # text prompts: the pipeline encodes them (and makes their masks)
        prompts = dict(prompt_embeds=None, negative_prompt_embeds=negative_prompt_embeds)
    else:
        prompts = family.pipeline_prompt_arguments(prompt_embeds, negative_prompt_embeds)
    text = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
    progress_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(**{**progress_config, "disable": not progress})
    try:
        with recurrent_mode(pipe.transformer, chunks_per_call=chunks_per_call):
            video = pipe(
                prompt=prompt,
                negative_prompt=negative_prompt,
                **prompts,
                num_frames=num_frames,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                **text,
                output_type="np",
                return_dict=False,
            )[0]
    finally:
        pipe._progress_bar_config = progress_config
    return (np.clip(video, 0.0, 1.0) * 255.0).round().astype(np.uint8)
