"""Loading a local Wan2.1 diffusers pipeline with its transformer converted to ReHyAt.

The folder is what ``WanPipeline.save_pretrained`` writes (model_index.json with transformer, vae,
text_encoder, tokenizer and scheduler subfolders); nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rehyat.models import ReHyAtConfig, convert_wan, load_rehyat


def load_pipeline(
    model: str | os.PathLike,
    rehyat: str | os.PathLike | None = None,
    *,
    config: ReHyAtConfig | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    flow_shift: float | None = None,
    scheduler: str | None = None,
):
    """A ``WanPipeline`` from a local folder with its transformer converted to ReHyAt.

    ``rehyat``: a checkpoint folder from :func:`rehyat.save_rehyat`; otherwise the transformer is
    converted with ``config`` (default ``ReHyAtConfig()``). The VAE stays float32, as diffusers
    recommends for Wan. ``scheduler`` ("unipc"/"euler") and ``flow_shift`` replace the folder's
    scheduler when given.
    """
    from diffusers import AutoencoderKLWan, WanPipeline

    from rehyat.generation.sampler import make_scheduler

    folder = Path(model)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    vae = AutoencoderKLWan.from_pretrained(
        folder, subfolder="vae", torch_dtype=torch.float32, local_files_only=True
    )
    pipe = WanPipeline.from_pretrained(folder, vae=vae, torch_dtype=dtype, local_files_only=True)
    if rehyat is not None:
        load_rehyat(pipe.transformer, rehyat)
    else:
        convert_wan(pipe.transformer, config)
    if scheduler is not None or flow_shift is not None:
        shift = flow_shift if flow_shift is not None else pipe.scheduler.config.get("flow_shift", 3.0)
        pipe.scheduler = make_scheduler(scheduler or "unipc", shift)
    return pipe.to(device)
