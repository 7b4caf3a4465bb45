"""``rehyat demo``: the whole recipe on the bundled toy teacher."""

from __future__ import annotations

import argparse


def _main(args: argparse.Namespace) -> int:
    from rehyat.cli._common import call_with_args, check_output_path
    from rehyat.experiments.demo import run

    check_output_path(args.out, "--out")
    return call_with_args(run, args)


def register(commands) -> None:
    parser = commands.add_parser(
        "demo", help="the whole recipe on the bundled toy teacher (distill, fine-tune, long video)"
    )
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke run of every stage)")
    parser.set_defaults(handler=_main)
