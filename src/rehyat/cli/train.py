"""``rehyat distill`` (stage 1), ``rehyat finetune`` (stage 2) and ``rehyat build-dataset``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rehyat.cli._common import add_config_arguments, config_from_args


def _distill(args: argparse.Namespace) -> int:
    from rehyat.training.distill import DistillConfig, run_distillation
    from rehyat.training.distributed import shutdown

    config = config_from_args(DistillConfig, args)
    try:
        report = run_distillation(config)
    finally:
        shutdown()
    if report:
        print(f"wrote {config.out}/report.md, ranking.json and rehyat/ (ranking: {report['ranking']})")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from rehyat.training import distributed
    from rehyat.training.finetune import FinetuneConfig, finetune

    if args.allow_config_change:
        args.overrides = [*args.overrides, "allow_config_change=true"]
    config = config_from_args(FinetuneConfig, args)
    try:
        finetune(config)
    finally:
        distributed.shutdown()
    return 0


def _read_manifest(manifest: Path) -> list[dict]:
    """The rows of a build-dataset manifest; a ValueError naming the file (and line) if anything in it
    is wrong, before any model is loaded."""
    if manifest.is_dir():
        raise ValueError(f"manifest {manifest} is a folder, not a JSON-lines file")
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} does not exist")
    try:
        lines = manifest.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"manifest {manifest} is not UTF-8 text ({error.reason})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{manifest} line {number} is not valid JSON ({error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{manifest} line {number} must be a JSON object, got {type(row).__name__}")
        if not all(isinstance(row.get(key), str) for key in ("video", "prompt")):
            raise ValueError(f"{manifest} line {number} must hold 'video' and 'prompt' strings, got {row}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{manifest} holds no rows: JSON lines with 'video' and 'prompt' keys")
    return rows


def _build_dataset(args: argparse.Namespace) -> int:
    from rehyat.training.data import build_dataset_from_folder

    manifest = Path(args.manifest)
    rows = _read_manifest(manifest)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = build_dataset_from_folder(
        args.model,
        args.out,
        [manifest.parent / row["video"] for row in rows],
        [row["prompt"] for row in rows],
        num_frames=args.frames,
        height=args.height,
        width=args.width,
        shard_size=args.shard_size,
        device=device,
    )
    print(f"wrote {len(rows)} samples to {out}")
    return 0


def register(commands) -> None:
    distill = commands.add_parser(
        "distill", help="stage 1: distill φq, φk of each block from the teacher's attention"
    )
    add_config_arguments(distill, "DistillConfig")
    distill.set_defaults(handler=_distill)

    finetune = commands.add_parser(
        "finetune",
        help="stage 2: fine-tune a converted video DiT of any family (torchrun for several processes)",
    )
    add_config_arguments(finetune, "FinetuneConfig")
    finetune.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume although lr, seed, batch or other options that shape the run changed "
        "(= --set allow_config_change=true; the old config.json is kept as config.<time>.json)",
    )
    finetune.set_defaults(handler=_finetune)

    build = commands.add_parser(
        "build-dataset",
        help="encode videos + prompts with a local pipeline folder (Wan2.1/2.2, SkyReels-V2, LTX-Video, "
        "HunyuanVideo, CogVideoX) into a finetune dataset",
    )
    build.add_argument(
        "--model",
        required=True,
        help="local diffusers pipeline folder of any family (its model_index.json names the pipeline; "
        "vae and text encoders are read)",
    )
    build.add_argument(
        "--manifest", required=True, help='JSON lines {"video": path relative to the file, "prompt": text}'
    )
    build.add_argument("--out", required=True, help="new dataset folder")
    build.add_argument(
        "--frames", type=int, default=81, help="tk + 1 for the VAE's temporal compression t (LTX-Video: 8)"
    )
    build.add_argument("--height", type=int, default=480)
    build.add_argument("--width", type=int, default=832)
    build.add_argument("--shard-size", type=int, default=64)
    build.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    build.set_defaults(handler=_build_dataset)
