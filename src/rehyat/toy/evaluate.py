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


def sample_video(
    model: nn.Module,
    embeds: Tensor,
    *,
    frames: int,
    steps: int,
    guidance_scale: float = 1.0,
    flow_shift: float = FLOW_SHIFT,
    seed: int,
    recurrent: bool,
) -> Tensor:
    """One video [3, F, H, W] in [-1, 1]; the noise depends only on ``seed``, so every model gets the same."""
    from rehyat.generation.sampler import (
        generate_latents,
        make_scheduler,
        parallel_forward,
        recurrent_forward,
    )

    device = next(model.parameters()).device
    shape = (1, 3, frames, CLIP["height"], CLIP["width"])
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    video = generate_latents(
        model,
        embeds.to(device),
        torch.zeros_like(embeds).to(device),
        scheduler=make_scheduler("unipc", flow_shift),
        latent_shape=shape,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        latents=noise,
        progress=False,
        forward=recurrent_forward if recurrent else parallel_forward,
    )
    return video[0].float().cpu()


def sample_videos(
    model: nn.Module,
    embeds: Tensor,
    *,
    frames: int,
    steps: int,
    guidance_scale: float,
    first_seed: int,
    recurrent: bool,
) -> list[Tensor]:
    """One video per prompt embedding in ``embeds`` [P, L, D]; prompt i gets the noise of seed first_seed + i."""
    return [
        sample_video(
            model,
            embeds[i : i + 1],
            frames=frames,
            steps=steps,
            guidance_scale=guidance_scale,
            seed=first_seed + i,
            recurrent=recurrent,
        )
        for i in range(len(embeds))
    ]


def _main(args: argparse.Namespace) -> int:
    if args.recurrent and args.rehyat is None:
        raise ValueError("--recurrent needs --rehyat: the teacher itself runs full attention (parallel only)")
    device = torch.device(args.device)
    model = load_toy_model(Path(args.model), None if args.rehyat is None else Path(args.rehyat), device)
    prompts = toy_prompts(args.prompts, args.seed)
    embeds = prompt_embeddings(load_text_encoder(args.model), prompts)
    videos = [
        sample_video(
            model,
            embeds[i : i + 1],
            frames=args.frames,
            steps=args.steps,
            guidance_scale=args.guidance,
            flow_shift=args.shift,
            seed=1000 + i,
            recurrent=args.recurrent,
        )
        for i in range(len(prompts))
    ]
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
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=_main)
