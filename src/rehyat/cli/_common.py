"""Argument helpers shared by every command: the one config syntax and calling library entry points."""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rehyat.settings import load_config

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, what: str, files: bool = True) -> None:
    """``--config FILE`` (where ``files``) and ``--set section.key=value ...`` (repeatable): the one
    override syntax of every command."""
    if files:
        parser.add_argument("--config", help=f"a TOML/YAML/JSON file with {what} fields")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what} fields, e.g. --set optim.lr=1e-5 steps=200 (dotted keys for sections; "
        "a str field takes the value as typed, others read it as JSON; repeatable)",
    )


def config_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """``cls`` from its defaults ← ``base`` ← ``--config`` ← ``--set``."""
    return load_config(cls, getattr(args, "config", None), args.overrides, base=base)


def call_with_args(function: Callable[..., Any], args: argparse.Namespace) -> Any:
    """Call ``function`` with the parsed arguments named like its keyword parameters."""
    names = inspect.signature(function).parameters
    return function(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def check_output_path(path: str | os.PathLike, what: str, *, folder: bool = True) -> Path:
    """``path`` as an output (a folder, or with ``folder=False`` a file) a command may create or replace:
    not empty, not of the other kind, and not under a file. Checked before any work, since the write
    would fail only at its end."""
    if str(path) == "":
        raise ValueError(f"{what} is empty ('')")
    path = Path(path)
    if path.exists():
        if folder != path.is_dir():
            kind = ("a file, not a folder", "a folder, not a file")[path.is_dir()]
            raise ValueError(f"{what} {path} is {kind}")
        return path
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path} is under {parent}, which is a file, not a folder")
            break
    return path
