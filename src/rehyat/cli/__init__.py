"""The ``rehyat`` command line: every argparse parser of the project lives in this package.

Each module registers its subcommands; handlers import the library (or the experiment harness, for
``bench`` and ``demo``) only when they run, so ``rehyat --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from rehyat.cli import bench, demo, export, flops, generate, toy, train

_COMMANDS = (demo, flops, generate, train, toy, bench, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rehyat", description="ReHyAt: recurrent hybrid attention for video DiTs"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for module in _COMMANDS:
        module.register(commands)
    return parser


def _one_line(error: BaseException) -> str:
    """The error's message on one line: a parser's multi-line message (YAML's caret, say) as well."""
    return " ".join(str(error).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ValueError as error:
        print(f"rehyat {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        FileExistsError,
    ) as error:
        # a path the system refused, wherever a command met it: the message names the path
        print(f"rehyat {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] == "rehyat":
            raise
        print(
            f"rehyat {args.command}: error: needs the package {error.name!r}, which is not installed; "
            "pip install 'rehyat[all]' brings every optional dependency",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
