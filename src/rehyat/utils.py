"""Small infrastructure shared by every layer: atomic file and folder writes, dtype names, argument checks.

Pure helpers only (torch, safetensors, the standard library): any module of the library may import
this one, and it imports nothing else of rehyat.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

#: The dtype names configs and command lines accept.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def renamed_module(old: str, new: ModuleType) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``old``, the path a module had before it was renamed ``new``: each
    name is ``new``'s, read with a DeprecationWarning that names the new path; ``__all__`` is ``new``'s
    (its public names if it has none), so ``from old import *`` works too."""

    def __getattr__(name: str) -> Any:
        if name == "__all__":
            return getattr(new, "__all__", [key for key in vars(new) if not key.startswith("_")])
        if name.startswith("__") or not hasattr(new, name):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old} was renamed {new.__name__}: import {name} from there", DeprecationWarning, stacklevel=2
        )
        return getattr(new, name)

    return __getattr__


def dtype_from_name(name: str) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` → the torch dtype (ValueError naming the choices otherwise)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (bools refused) within [minimum, maximum]; ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a real bool (not 0, 1, None or a string); ValueError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return value


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """``value`` as a finite float within its bounds; ValueError naming ``name`` otherwise (NaN and ±inf
    are refused everywhere: no option of this library means anything with them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ValueError(f"{name} must be {'>' if exclusive_minimum else '>='} {minimum}, got {value}")
    if maximum is not None and (value >= maximum if exclusive_maximum else value > maximum):
        raise ValueError(f"{name} must be {'<' if exclusive_maximum else '<='} {maximum}, got {value}")
    return value


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file through ``write(temp_path)`` into a temp file beside ``path``, fsync it, then rename it
    over ``path``: readers see the old file or the new one, never a partial one, and a failed write
    leaves no temp file behind. A symbolic link at ``path`` is replaced, never followed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temp = Path(name)
    try:
        write(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda temp: temp.write_text(text))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON (NaN and inf refused: JSON has no such values)."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def atomic_write_tensors(
    path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """``tensors`` as one safetensors file (moved to CPU and made contiguous first)."""
    from safetensors.torch import save_file

    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda temp: save_file(cpu, str(temp), metadata=metadata or {"format": "pt"}))


class FolderBusyError(ValueError):
    """Another process is writing the folder (it holds the folder's write lock)."""


def lock_file(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``'s writers: ``.<name>.lock`` beside it, present only while one writes."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """Hold the advisory write lock of ``folder`` (``flock`` on :func:`lock_file`), so that two writers
    of one folder take turns. ``wait=False`` raises :class:`FolderBusyError` instead of waiting.

    The holder removes the lock file before it lets go, so a finished write leaves nothing beside the
    folder; a waiter that then holds the lock of a removed file starts over on the current one."""
    path = lock_file(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise FolderBusyError(
                f"{Path(folder)} is being written by another process (it holds {path}); "
                "wait for it to finish or write elsewhere"
            ) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)  # the previous holder removed this file as it finished: lock the current one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def wait_for_writer(folder: str | os.PathLike, timeout: float = 60.0) -> bool:
    """Wait until no process holds ``folder``'s write lock (at most ``timeout`` seconds); True if one
    did. Needs only read access: readers of a folder never take the write lock."""
    try:
        fd = os.open(lock_file(folder), os.O_RDONLY)
    except OSError:
        return False
    try:
        waited, deadline = False, time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return waited
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return True
                waited = True
                time.sleep(0.005)
    finally:
        os.close(fd)


def folder_identity(folder: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of the folder at ``folder`` now, or None: a swap (:func:`replacing_folder`)
    changes it, so a reader can tell whether the folder was replaced while it read."""
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def hidden_sibling(folder: Path, tag: str) -> Path:
    """``.<name>.<tag>.<random>`` beside ``folder``."""
    return folder.parent / f".{folder.name}.{tag}.{uuid.uuid4().hex[:12]}"


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (and ``root``), so a swapped-in folder is on disk."""
    for here, _, files in os.walk(root):
        for name in files:
            path = os.path.join(here, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        _fsync_dir(Path(here))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(staging: Path, folder: Path, carry_over: bool) -> None:
    """Put the complete folder ``staging`` at ``folder``: rename the old one aside and the new one in
    (the old one comes back if that fails), move over the old entries that the new folder does not have
    (``carry_over``), remove the old folder."""
    if not folder.exists():
        os.rename(staging, folder)
        _fsync_dir(folder.parent)
        return
    aside = hidden_sibling(folder, "old")
    os.rename(folder, aside)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(aside, folder)
        raise
    _fsync_dir(folder.parent)
    if carry_over:
        for entry in sorted(aside.iterdir()):
            if not (folder / entry.name).exists() and not (folder / entry.name).is_symlink():
                os.rename(entry, folder / entry.name)
    shutil.rmtree(aside, ignore_errors=True)


def real_folder(path: str | os.PathLike) -> Path:
    """The folder a write to ``path`` replaces: a symbolic link's target, and ``.``/``..`` resolved (a
    folder needs a name and a parent to be swapped); ``ValueError`` for an empty path or a file."""
    if str(path) == "":
        raise ValueError("the output folder is empty ('')")
    folder = Path(path)
    if folder.is_symlink() or folder.name in ("", ".", ".."):
        folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    return folder


@contextmanager
def replacing_folder(
    path: str | os.PathLike, *, carry_over: bool = False, wait: bool = True
) -> Iterator[Path]:
    """Replace the folder ``path`` as a whole: yields an empty staging folder beside it to fill; when the
    block ends normally, every file under it is fsynced and it is swapped in (old folder renamed aside,
    new one renamed in, old one removed). An exception in the block removes the staging folder and
    leaves the old folder exactly as it was.

    The write lock (:func:`folder_lock`, ``wait=False``: refuse when busy) is held throughout, so two
    writers of one folder take turns. ``carry_over`` keeps the old folder's entries that the new one
    does not have. Readers see the old folder or the new one; between the two renames (microseconds)
    there is none, and a reader that finds :func:`folder_identity` changed or a writer waiting should
    read again. A process killed between them leaves both folders beside the path, hidden
    (``.<name>.old.*``, ``.<name>.new.*``)."""
    folder = real_folder(path)
    with folder_lock(folder, wait=wait):
        staging = hidden_sibling(folder, "new")
        staging.mkdir()  # not mkdtemp: the folder keeps the permissions the umask gives
        try:
            yield staging
            _fsync_tree(staging)
            _swap_in(staging, folder, carry_over)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
