"""A tiny Wan teacher saved as a local diffusers folder (transformer + scheduler), plus prompt embeddings."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
from safetensors.torch import save_file

from rehyat.models.wan_configs import tiny_wan_config

TEXT_DIM = 32
# 25 video frames at 64×64 px -> 7 latent frames of 8×8 -> 16 tokens per frame after 2×2 patches.
VIDEO = dict(num_frames=25, height=64, width=64)


def make_teacher_folder(root: Path, *, prompts: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/teacher`` (a Wan folder) and ``root/prompts.safetensors``; return both paths."""
    torch.manual_seed(seed)
    folder = root / "teacher"
    WanTransformer3DModel(**tiny_wan_config(text_dim=TEXT_DIM)).save_pretrained(folder / "transformer")
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    ).save_pretrained(folder / "scheduler")
    embeds = torch.randn(prompts, 6, TEXT_DIM, generator=torch.Generator().manual_seed(seed + 1))
    prompt_file = root / "prompts.safetensors"
    save_file({"prompt_embeds": embeds, "negative_prompt_embeds": torch.zeros(1, 6, TEXT_DIM)}, prompt_file)
    return folder, prompt_file
