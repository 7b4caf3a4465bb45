"""Argument helpers shared by every command: the one config syntax and calling library entry points."""

from __future__ import annotations

import argparse
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rehyat.config import load_config

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
        "values read as JSON where they parse; repeatable)",
    )


def config_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None) -> T:
    """``cls`` from its defaults ← ``base`` ← ``--config`` ← ``--set``."""
    return load_config(cls, getattr(args, "config", None), args.overrides, base=base)


def call_with_args(function: Callable[..., Any], args: argparse.Namespace) -> Any:
    """Call ``function`` with the parsed arguments named like its keyword parameters."""
    names = inspect.signature(function).parameters
    return function(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def check_output_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a folder a command may create or replace: not empty, not a file, and not under one
    (checked before any work, since the write would fail only at its end)."""
    if str(path) == "":
        raise ValueError(f"{what} is empty ('')")
    folder = Path(path)
    for existing in (folder, *folder.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is a file" if existing == folder else f"is under {existing}, which is a file"
                raise ValueError(f"{what} {folder} {where}, not a folder")
            break
    return folder
