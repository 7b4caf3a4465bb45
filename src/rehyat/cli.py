"""The ``rehyat`` command line. Each subcommand lives next to the code it drives and registers itself
here through a ``register(subparsers)`` function that sets ``handler`` on its parser."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Modules whose register() adds a top-level subcommand, and modules adding a `rehyat bench` target.
COMMAND_MODULES = [
    "rehyat.toy.demo",
    "rehyat.generation.cli",
    "rehyat.training.distill",
    "rehyat.training.finetune",
    "rehyat.toy.teacher",
]
BENCH_MODULES: list[str] = [
    "rehyat.bench.op",
    "rehyat.bench.attention",
    "rehyat.bench.distill",
    "rehyat.bench.model",
    "rehyat.toy.quality",
]


def _flops(args: argparse.Namespace) -> int:
    from rehyat.flops import attention_flops

    result = attention_flops(
        args.frames,
        args.height * args.width,
        args.heads,
        args.head_dim,
        chunk_frames=args.chunk_frames,
        overlap_frames=args.overlap_frames,
        feature_dim=args.feature_dim,
        feature_layers=args.feature_layers,
        batch=args.batch,
    ).as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(
                f"{key:>14}: {value / 1e9:,.1f} GFLOP" if "ratio" not in key else f"{key:>14}: {value:.2f}x"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rehyat", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    flops = commands.add_parser("flops", help="FLOPs of one self-attention layer, full vs ReHyAt")
    flops.add_argument("--frames", type=int, required=True, help="latent frames T")
    flops.add_argument("--height", type=int, required=True, help="token rows per frame (after patching)")
    flops.add_argument("--width", type=int, required=True, help="token columns per frame (after patching)")
    flops.add_argument("--heads", type=int, default=12)
    flops.add_argument("--head-dim", type=int, default=128)
    flops.add_argument("--chunk-frames", type=int, default=3)
    flops.add_argument("--overlap-frames", type=int, default=1)
    flops.add_argument("--feature-dim", type=int, default=256)
    flops.add_argument("--feature-layers", type=int, default=2)
    flops.add_argument("--batch", type=int, default=1)
    flops.add_argument("--json", action="store_true", help="print a JSON object")
    flops.set_defaults(handler=_flops)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    bench = commands.add_parser(
        "bench", help="benchmarks (op: CPU; the others: GPU, results under bench/results/)"
    )
    targets = bench.add_subparsers(dest="target", required=True)
    for name in BENCH_MODULES:
        importlib.import_module(name).register(targets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as error:
        print(f"rehyat {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
