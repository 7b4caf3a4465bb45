"""``rehyat flops``: FLOPs of one self-attention layer, full softmax vs ReHyAt."""

from __future__ import annotations

import argparse
import json

from rehyat.flops import attention_flops


def _main(args: argparse.Namespace) -> int:
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
        anchor_frames=args.anchor_frames,
        global_tokens=args.global_tokens,
        first_chunk_frames=args.first_chunk_frames,
    ).as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(
                f"{key:>14}: {value / 1e9:,.1f} GFLOP" if "ratio" not in key else f"{key:>14}: {value:.2f}x"
            )
    return 0


def register(commands) -> None:
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
    flops.add_argument("--anchor-frames", type=int, default=0, help="anchor frames in every window")
    flops.add_argument("--global-tokens", type=int, default=0, help="global keys (e.g. text) in every window")
    flops.add_argument(
        "--first-chunk-frames", type=int, default=0, help="frames of the first chunk (0: chunk-frames)"
    )
    flops.add_argument("--json", action="store_true", help="print a JSON object")
    flops.set_defaults(handler=_main)
