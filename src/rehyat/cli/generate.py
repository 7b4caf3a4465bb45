"""``rehyat generate``: text-to-video from a local diffusers folder with the recurrent forward, through the
family's own pipeline: ``WanPipeline`` (Wan2.1/2.2), ``SkyReelsV2Pipeline``, ``LTXPipeline``,
``HunyuanVideoPipeline`` or ``CogVideoXPipeline``.

The folder is what the pipeline's ``save_pretrained`` writes (nothing is downloaded). The transformer gets a ReHyAt
checkpoint (``--rehyat``) or, without one, a fresh conversion whose feature maps are untrained (useful
for smoke runs and timing only). Every argument — sizes, frame count, steps, guidance, fps, output path,
device, the model folder's layout and the checkpoint's JSON — is checked before anything is loaded, so
a mistake costs no denoising; each is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from rehyat.utils import DTYPES, check_int, check_number, dtype_from_name

_DEFAULT_CHUNK_FRAMES, _DEFAULT_OVERLAP_FRAMES = 3, 1


def _check_args(args: argparse.Namespace):
    """Every argument, before anything is loaded or generated: a ValueError naming the flag (rc 2).

    Returns the device and the ReHyAt config to convert with (None with ``--rehyat``, whose JSON is read
    and checked here too)."""
    from rehyat.generation.pipeline import check_device, check_pipeline_folder, pipeline_geometry
    from rehyat.generation.video import check_video_path
    from rehyat.models import FAMILIES, ReHyAtConfig, read_rehyat_config
    from rehyat.models.checkpoint import read_json_object
    from rehyat.models.folders import TOY_TEACHER, rehyat_folder
    from rehyat.models.joint import JointAdapter

    check_int("--steps", args.steps, 1)
    check_number("--guidance", args.guidance, minimum=0.0)
    check_int("--fps", args.fps, 1)
    check_int("--seed", args.seed, -(2**63), 2**64 - 1)
    if args.shift is not None:
        check_number("--shift", args.shift, minimum=0.0, exclusive_minimum=True)
    check_int("--frames", args.frames, 1)
    for flag, size in (("--height", args.height), ("--width", args.width)):
        check_int(flag, size, 1)
    try:
        check_video_path(args.output)
    except ValueError as error:
        raise ValueError(f"--output: {error}") from error
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = check_device(device)
    except ValueError as error:
        raise ValueError(f"--device: {error}") from error
    if args.model == TOY_TEACHER:
        raise ValueError(
            "--model toy is the toy teacher, a pixel-space model with no VAE or UMT5 text encoder, not a "
            "Wan pipeline; sample it with rehyat toy generate (one video) or rehyat toy eval (ToyBench)"
        )
    if args.chunks_per_call < 1:
        raise ValueError(f"--chunks-per-call must be >= 1, got {args.chunks_per_call}")
    check_pipeline_folder(args.model, text_encoder=True)
    pipeline = read_json_object(Path(args.model) / "model_index.json").get("_class_name")
    family = next((f for f in FAMILIES if f.pipeline_class == pipeline), None)
    if args.chunks_per_call > 1 and isinstance(family, JointAdapter):
        raise ValueError(
            f"--chunks-per-call {args.chunks_per_call}: {pipeline}'s joint text–video attention runs one chunk "
            "per call; use 1"
        )
    temporal, multiple = pipeline_geometry(args.model)
    if (args.frames - 1) % temporal:
        raise ValueError(f"--frames must be {temporal}k + 1 (1, {temporal + 1}, …), got {args.frames}")
    for flag, size in (("--height", args.height), ("--width", args.width)):
        if size % multiple:
            raise ValueError(
                f"{flag} must be a positive multiple of {multiple} (the VAE's stride × the patch), got {size}"
            )
    if args.rehyat is not None:
        args.rehyat = str(rehyat_folder(args.rehyat))  # 'bundled': the toy student
        if args.chunk_frames is not None or args.overlap_frames is not None:
            raise ValueError(
                "--chunk-frames and --overlap-frames are for converting without --rehyat; "
                "the checkpoint's config sets them"
            )
        read_rehyat_config(args.rehyat)  # its JSON, checked before the pipeline loads
        return device, None
    chunk = _DEFAULT_CHUNK_FRAMES if args.chunk_frames is None else args.chunk_frames
    overlap = _DEFAULT_OVERLAP_FRAMES if args.overlap_frames is None else args.overlap_frames
    try:
        return device, ReHyAtConfig(chunk_frames=chunk, overlap_frames=overlap)
    except ValueError as error:
        raise ValueError(f"--chunk-frames/--overlap-frames: {error}") from error


def _main(args: argparse.Namespace) -> int:
    device, config = _check_args(args)
    dtype = dtype_from_name(args.dtype or ("bf16" if device.type == "cuda" else "fp32"))

    from rehyat.generation.pipeline import load_pipeline
    from rehyat.generation.sampler import generate_video
    from rehyat.generation.video import write_video

    if config is not None:
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
        chunks_per_call=args.chunks_per_call,
    )
    path = write_video(frames[0], args.output, fps=args.fps)
    print(
        f"wrote {path} ({frames.shape[1]} frames, {frames.shape[3]}×{frames.shape[2]}) in {time.perf_counter() - tic:.1f} s"
    )
    return 0


def register(commands) -> None:
    parser = commands.add_parser("generate", help="text-to-video with the recurrent ReHyAt forward")
    parser.add_argument(
        "--model",
        required=True,
        help="local diffusers folder (model_index.json) of a WanPipeline, SkyReelsV2Pipeline, LTXPipeline, "
        "HunyuanVideoPipeline or CogVideoXPipeline",
    )
    parser.add_argument("--rehyat", help="ReHyAt checkpoint folder (rehyat_config.json + rehyat.safetensors)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument(
        "--frames", type=int, default=81, help="video frames, 4k+1 (81 = 5 s at 16 fps; LTX-Video 8k+1)"
    )
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument(
        "--guidance",
        type=float,
        default=5.0,
        help="CFG scale (<= 1 turns CFG off); HunyuanVideo: its embedded guidance, no negative prompt",
    )
    parser.add_argument(
        "--scheduler",
        choices=["unipc", "euler"],
        help="replace the folder's scheduler (a flow-matching one: not for CogVideoX)",
    )
    parser.add_argument("--shift", type=float, help="flow shift (Wan2.1: 3.0 at 480p, 5.0 at 720p)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--chunk-frames",
        type=int,
        help=f"Tc when converting without --rehyat (default {_DEFAULT_CHUNK_FRAMES})",
    )
    parser.add_argument(
        "--overlap-frames",
        type=int,
        help=f"To when converting without --rehyat (default {_DEFAULT_OVERLAP_FRAMES})",
    )
    parser.add_argument(
        "--chunks-per-call",
        type=int,
        default=1,
        help="chunks per transformer call in the recurrent sweep: fewer calls (faster) for more activation "
        "memory, the same video",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="transformer dtype (default bf16 on GPU)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--vae-tiling", action="store_true", help="decode with the VAE's spatial tiling")
    parser.add_argument("--output", default="video.mp4", help=".mp4 or .gif")
    parser.add_argument("--fps", type=int, default=16)
    parser.set_defaults(handler=_main)
