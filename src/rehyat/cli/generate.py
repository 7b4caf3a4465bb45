"""``rehyat generate``: text-to-video from a local Wan2.1 diffusers folder with the recurrent forward.

The folder is what ``WanPipeline.save_pretrained`` writes (nothing is downloaded). The transformer gets a ReHyAt
checkpoint (``--rehyat``) or, without one, a fresh conversion whose feature maps are untrained (useful
for smoke runs and timing only).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from rehyat.utils import DTYPES, dtype_from_name


def _main(args: argparse.Namespace) -> int:
    from rehyat.generation.pipeline import load_pipeline
    from rehyat.generation.sampler import generate_video
    from rehyat.generation.video import write_video
    from rehyat.models import ReHyAtConfig

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype_from_name(args.dtype or ("bf16" if device.startswith("cuda") else "fp32"))
    config = None
    if args.rehyat is None:
        config = ReHyAtConfig(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames)
        print(
            "rehyat generate: no --rehyat checkpoint, feature maps are untrained (taylor init)",
            file=sys.stderr,
        )
    pipe = load_pipeline(
        args.model,
        args.rehyat,
        config=config,
        dtype=dtype,
        device=device,
        flow_shift=args.shift,
        scheduler=args.scheduler,
    )
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    tic = time.perf_counter()
    frames = generate_video(
        pipe,
        args.prompt,
        negative_prompt=args.negative_prompt,
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator(device=device).manual_seed(args.seed),
    )
    path = write_video(frames[0], args.output, fps=args.fps)
    print(
        f"wrote {path} ({frames.shape[1]} frames, {frames.shape[3]}×{frames.shape[2]}) in {time.perf_counter() - tic:.1f} s"
    )
    return 0


def register(commands) -> None:
    parser = commands.add_parser("generate", help="text-to-video with the recurrent ReHyAt forward")
    parser.add_argument("--model", required=True, help="local Wan2.1 diffusers folder (model_index.json)")
    parser.add_argument("--rehyat", help="ReHyAt checkpoint folder (rehyat_config.json + rehyat.safetensors)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--frames", type=int, default=81, help="video frames, 4k+1 (81 = 5 s at 16 fps)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale (<= 1 turns CFG off)")
    parser.add_argument("--scheduler", choices=["unipc", "euler"], help="replace the folder's scheduler")
    parser.add_argument("--shift", type=float, help="flow shift (Wan2.1: 3.0 at 480p, 5.0 at 720p)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-frames", type=int, default=3, help="Tc when converting without --rehyat")
    parser.add_argument("--overlap-frames", type=int, default=1, help="To when converting without --rehyat")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="transformer dtype (default bf16 on GPU)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--vae-tiling", action="store_true", help="decode with the VAE's spatial tiling")
    parser.add_argument("--output", default="video.mp4", help=".mp4 or .gif")
    parser.add_argument("--fps", type=int, default=16)
    parser.set_defaults(handler=_main)
