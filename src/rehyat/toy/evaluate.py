"""ToyBench a toy model: sample videos for random prompts from fixed noise and score them.

Shared by ``rehyat demo``, the quality table (``rehyat bench toy``) and ``rehyat toy eval``
(:func:`evaluate_model`: one teacher folder, optionally with a ReHyAt checkpoint on top).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor, nn

from rehyat.toy.model import (
    FLOW_SHIFT,
    PIXEL,
    ToySpace,
    load_text_encoder,
    load_toy_model,
    prompt_embeddings,
    toy_space,
)
from rehyat.toy.toybench import evaluate_videos
from rehyat.toy.world import ToyPrompt, sample_prompt


def toy_prompts(count: int, seed: int) -> list[ToyPrompt]:
    """``count`` random prompts of the toy world, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [sample_prompt(rng) for _ in range(count)]


def sample_videos(
    model: nn.Module,
    embeds: Tensor,
    *,
    frames: int,
    steps: int,
    guidance_scale: float,
    flow_shift: float = FLOW_SHIFT,
    first_seed: int,
    recurrent: bool,
    batch_size: int = 1,
    space: ToySpace = PIXEL,
    chunks_per_call: int = 1,
) -> list[Tensor]:
    """One video [3, F, H, W] per prompt embedding in ``embeds`` [P, L, D], ``batch_size`` at a time:
    ``frames`` latent frames of ``space`` (the model's), decoded to video frames. ``recurrent``: the
    recurrent form, ``chunks_per_call`` chunks per model call (:func:`rehyat.models.hooks.apply_recurrent`).

    Prompt i gets the noise of seed ``first_seed + i`` whatever the batch size, so batching changes a
    video only by float rounding (the denoising loop and the scheduler act per batch element).
    """
    from rehyat.generation.sampler import (
        generate_latents,
        make_scheduler,
        parallel_forward,
        recurrent_forward,
    )

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    shape = (1, *space.latent_shape(frames))
    scheduler = make_scheduler("unipc", flow_shift)
    videos: list[Tensor] = []
    for start in range(0, len(embeds), batch_size):
        batch = embeds[start : start + batch_size].to(device)
        noise = torch.cat(
            [
                torch.randn(shape, generator=torch.Generator().manual_seed(first_seed + start + i))
                for i in range(len(batch))
            ]
        )
        latents = generate_latents(
            model,
            batch,
            torch.zeros_like(batch),
            scheduler=scheduler,
            latent_shape=noise.shape,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            latents=noise,
            progress=False,
            forward=recurrent_forward if recurrent else parallel_forward,
            chunks_per_call=chunks_per_call,
        )
        videos.extend(space.decode(latents.float().cpu()).unbind(0))
    return videos


def evaluate_model(
    model_folder: str | Path,
    rehyat: str | Path | None = None,
    *,
    prompts: int = 24,
    frames: int | None = None,
    steps: int = 20,
    guidance_scale: float = 4.0,
    flow_shift: float = FLOW_SHIFT,
    seed: int = 3,
    recurrent: bool = False,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict:
    """ToyBench a toy teacher folder (with a ReHyAt checkpoint on top if given) on ``prompts`` random
    prompts (seed ``seed``), videos of ``frames`` latent frames (default: a training clip's) from the noise
    of seeds 1000, 1001, ...; the metrics without per-clip scores, plus direction and speed accuracy per
    prompted speed (``direction_slow``, ``speed_fast``, ...) and shape accuracy per shape (``shape_circle``,
    ...): a teacher that fails one speed or one shape shows it there, not in the mean."""
    if recurrent and rehyat is None:
        raise ValueError("recurrent sampling needs a ReHyAt checkpoint: the teacher runs full attention")
    model = load_toy_model(Path(model_folder), None if rehyat is None else Path(rehyat), torch.device(device))
    space = toy_space(model_folder)
    chosen = toy_prompts(prompts, seed)
    embeds = prompt_embeddings(load_text_encoder(model_folder), chosen)
    videos = sample_videos(
        model,
        embeds,
        frames=space.clip_frames if frames is None else frames,
        steps=steps,
        guidance_scale=guidance_scale,
        flow_shift=flow_shift,
        first_seed=1000,
        recurrent=recurrent,
        batch_size=batch_size,
        space=space,
    )
    scores = evaluate_videos(videos, chosen, world=space.world)
    hits: dict[str, list[float]] = {}
    for prompt, clip in zip(chosen, scores.pop("per_clip"), strict=True):
        for name in ("direction", "speed"):
            hits.setdefault(f"{name}_{prompt.speed}", []).append(clip["hits"][name])
        hits.setdefault(f"shape_{prompt.shape}", []).append(clip["hits"]["shape"])
    return {**scores, **{key: 100 * sum(v) / len(v) for key, v in sorted(hits.items())}}
