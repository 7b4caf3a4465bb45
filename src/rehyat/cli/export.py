"""``rehyat export``: a converted model's recurrent chunk step as static graphs for a mobile runtime, and
the parser of ``rehyat bench device`` (registered by :mod:`rehyat.cli.bench`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNTIMES = ("onnxruntime", "executorch")
WEIGHTS = ("fp32", "fp16", "int8")


def _check_args(args: argparse.Namespace) -> None:
    """The arguments that need no model, before anything is loaded: a ValueError naming the flag."""
    from rehyat.cli._common import check_output_path
    from rehyat.utils import check_int

    check_output_path(args.out, "the output folder")
    check_int("--frames", args.frames, 1)
    check_int("--batch", args.batch, 1)
    for flag, value in (
        ("--height", args.height),
        ("--width", args.width),
        ("--text-tokens", args.text_tokens),
    ):
        if value is not None:
            check_int(flag, value, 1)
    if args.rehyat is None and not args.untrained:
        raise ValueError(
            "give --rehyat CHECKPOINT (a ReHyAt checkpoint folder), or --untrained to convert with fresh φ"
        )


def _load_model(args: argparse.Namespace):
    import torch

    from rehyat import ReHyAtConfig, convert_wan, load_rehyat
    from rehyat.models.folders import load_transformer, rehyat_folder

    model = load_transformer(args.model, "--model", torch_dtype=torch.float32)
    if args.rehyat is None:
        return convert_wan(model, ReHyAtConfig()).eval()
    return load_rehyat(model, rehyat_folder(args.rehyat)).eval()


def _export(args: argparse.Namespace) -> int:
    from rehyat.export import chunk_schedule, export_block_step, export_dit_step

    _check_args(args)
    model = _load_model(args)
    toy = args.model == "toy"
    height = args.height or (24 if toy else None)
    width = args.width or (24 if toy else None)
    text_tokens = args.text_tokens or (16 if toy else 512)
    if height is None or width is None:
        raise ValueError("give --height and --width (the latent size, before patching)")
    p_t, p_h, p_w = model.config.patch_size
    for flag, size, patch in (("--height", height, p_h), ("--width", width, p_w)):
        if size % patch:
            raise ValueError(f"{flag} must be a positive multiple of {patch} (the patch size), got {size}")
    options = dict(batch=args.batch, runtime=args.runtime, weights=args.weights, text_tokens=text_tokens)
    if args.block is None:
        folder = export_dit_step(
            model, args.out, num_frames=args.frames, height=height, width=width, **options
        )
    else:
        if not 0 <= args.block < len(model.blocks):
            raise ValueError(f"--block must be in [0, {len(model.blocks)}), got {args.block}")
        config = model._rehyat_runtime.config
        schedule = chunk_schedule(args.frames // p_t, config.chunk_frames, config.overlap_frames)
        signatures = sorted({s for _, s in schedule}, key=lambda s: (not s.first, s.cached, -s.frames))
        folder = export_block_step(
            model,
            args.out,
            block=args.block,
            signatures=signatures,
            rows=height // p_h,
            cols=width // p_w,
            **options,
        )
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    print(
        json.dumps(
            {"folder": str(folder), "runtime": manifest["runtime"], "graphs": sorted(manifest["graphs"])}
        )
    )
    return 0


def register(commands) -> None:
    parser = commands.add_parser(
        "export",
        help="export a converted model's recurrent chunk step (state in and out) to ONNX Runtime or ExecuTorch",
        description="Writes static graphs of the recurrent chunk step, one per chunk shape the video needs, "
        "and manifest.json; run them with rehyat.export.ExportedStep.",
    )
    parser.add_argument("out", help="folder for the graphs and manifest.json")
    parser.add_argument(
        "--model",
        default="toy",
        help="a diffusers Wan folder (or its transformer/), or 'toy' (the bundled toy teacher)",
    )
    parser.add_argument(
        "--rehyat", help="a ReHyAt checkpoint folder to load on the model ('bundled': the toy student)"
    )
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="no checkpoint: convert with the default ReHyAtConfig (fresh φ)",
    )
    parser.add_argument(
        "--frames", type=int, required=True, help="latent frames of the video the graphs are for"
    )
    parser.add_argument("--height", type=int, help="latent height before patching (toy default 24)")
    parser.add_argument("--width", type=int, help="latent width before patching (toy default 24)")
    parser.add_argument("--text-tokens", type=int, help="text length (toy default 16, else 512)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (2: both CFG branches in one call)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    parser.add_argument(
        "--weights", choices=WEIGHTS, default="fp32", help="weight storage of the linear layers"
    )
    parser.add_argument(
        "--block", type=int, help="export only this block's step (inputs: tokens, modulation, text)"
    )
    parser.set_defaults(handler=_export)
