"""ToyBench a toy model: sample videos for random prompts from fixed noise and score them.

Shared by ``rehyat demo``, the quality table (``rehyat bench toy``) and ``rehyat toy eval``, which
scores one teacher folder (optionally with a ReHyAt checkpoint on top) from the command line.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from torch import Tensor, nn

from rehyat.toy.teacher import CLIP, FLOW_SHIFT, load_text_encoder, prompt_embeddings
from rehyat.toy.toybench import evaluate_videos
from rehyat.toy.world import ToyPrompt, sample_prompt


def toy_prompts(count: int, seed: int) -> list[ToyPrompt]:
    """``count`` random prompts of the toy world, reproducible from ``seed``."""
    rng = random.Random(seed)
    return [sample_prompt(rng) for _ in range(count)]


def load_toy_model(teacher: Path, rehyat_folder: Path | None, device: torch.device) -> nn.Module:
    """The teacher folder's transformer, converted and loaded from a ReHyAt checkpoint if one is given."""
    from diffusers import WanTransformer3DModel

    from rehyat.models import load_rehyat

    model = WanTransformer3DModel.from_pretrained(Path(teacher) / "transformer")
    if rehyat_folder is not None:
        model = load_rehyat(model, rehyat_folder)
    return model.to(device).eval()


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
) -> list[Tensor]:
    """One video [3, F, H, W] per prompt embedding in ``embeds`` [P, L, D], ``batch_size`` at a time.

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
    shape = (1, 3, frames, CLIP["height"], CLIP["width"])
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
        )
        videos.extend(latents.float().cpu().unbind(0))
    return videos


def _main(args: argparse.Namespace) -> int:
    if args.recurrent and args.rehyat is None:
        raise ValueError("--recurrent needs --rehyat: the teacher itself runs full attention (parallel only)")
    device = torch.device(args.device)
    model = load_toy_model(Path(args.model), None if args.rehyat is None else Path(args.rehyat), device)
    prompts = toy_prompts(args.prompts, args.seed)
    embeds = prompt_embeddings(load_text_encoder(args.model), prompts)
    videos = sample_videos(
        model,
        embeds,
        frames=args.frames,
        steps=args.steps,
        guidance_scale=args.guidance,
        flow_shift=args.shift,
        first_seed=1000,
        recurrent=args.recurrent,
        batch_size=args.batch,
    )
    metrics = {k: v for k, v in evaluate_videos(videos, prompts).items() if k != "per_clip"}
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "toy_command", "handler")}
    print(json.dumps({**settings, **metrics}))
    return 0


def register(toy_commands) -> None:
    parser = toy_commands.add_parser("eval", help="ToyBench one toy model on random prompts (prints JSON)")
    parser.add_argument("--model", required=True, help="a toy teacher folder (transformer/, text_encoder/)")
    parser.add_argument("--rehyat", help="a ReHyAt checkpoint folder to load on top of the teacher")
    parser.add_argument("--recurrent", action="store_true", help="sample with the recurrent forward")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--frames", type=int, default=CLIP["num_frames"])
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (UniPC)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=4.0,
        help="classifier-free guidance scale (the bench and demo use 4)",
    )
    parser.add_argument("--shift", type=float, default=FLOW_SHIFT, help="the sampler's flow shift")
    parser.add_argument("--seed", type=int, default=3, help="prompt seed")
    parser.add_argument("--batch", type=int, default=8, help="videos sampled at once (same noise per prompt)")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=_main)
