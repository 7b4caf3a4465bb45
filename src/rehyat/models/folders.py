"""Model arguments of every command: the bundled toy models' names, and local folders, never a hub id.

``toy`` names the toy teacher shipped with the package and ``bundled`` its ReHyAt student; any other
value is a local path (write ``./toy`` for a folder of that name). A path that does not exist, or holds
no model, is a ValueError naming it at once: nothing is looked up on a model hub, where diffusers would
otherwise retry a download for half a minute on a machine without internet.
"""

from __future__ import annotations

import os
from pathlib import Path

TOY_TEACHER, TOY_STUDENT = "toy", "bundled"


def model_folder(value: str | os.PathLike, what: str = "model folder") -> Path:
    """``value`` as an existing local folder; ``toy`` is the bundled toy teacher."""
    if str(value) == TOY_TEACHER:
        from rehyat.toy.model import bundled_teacher

        return bundled_teacher()
    folder = Path(value)
    if not folder.exists():
        raise ValueError(
            f"{what} {folder} does not exist (a local folder: nothing is looked up on a model hub)"
        )
    if not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file, not a folder")
    return folder


def rehyat_folder(value: str | os.PathLike) -> Path:
    """A ReHyAt checkpoint argument as a path; ``bundled`` is the shipped toy student. The checkpoint's
    reader checks the folder itself."""
    if str(value) == TOY_STUDENT:
        from rehyat.toy.model import bundled_student

        return bundled_student()
    return Path(value)


def transformer_folder(value: str | os.PathLike, what: str = "model folder") -> Path:
    """The folder of a Wan transformer's ``config.json``: ``value``'s ``transformer/`` (a diffusers Wan
    folder) or ``value`` itself (a transformer folder)."""
    folder = model_folder(value, what)
    for candidate in (folder / "transformer", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(
        f"{what} {folder} is neither a diffusers Wan folder (transformer/config.json) nor a transformer "
        "folder (config.json)"
    )


def load_transformer(value: str | os.PathLike, what: str = "model folder", **kwargs):
    """``WanTransformer3DModel.from_pretrained`` of :func:`transformer_folder`, from local files only; a
    file that diffusers cannot read (a damaged config or weights) is a ValueError naming the folder."""
    from diffusers import WanTransformer3DModel

    folder = transformer_folder(value, what)
    try:
        return WanTransformer3DModel.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"cannot load the Wan transformer in {folder}: {message}") from error
