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
#: Where the package keeps the bundled toy teacher and student (``rehyat.toy`` builds on this module,
#: so the paths live here, below it).
BUNDLED_TEACHER = Path(__file__).parents[1] / "toy" / "assets" / "teacher"
BUNDLED_STUDENT = Path(__file__).parents[1] / "toy" / "assets" / "student"


def bundled_teacher() -> Path:
    """The folder of the toy teacher shipped with the package."""
    if not (BUNDLED_TEACHER / "transformer" / "config.json").is_file():
        raise ValueError(f"the bundled toy teacher is missing from {BUNDLED_TEACHER}")
    return BUNDLED_TEACHER


def bundled_student() -> Path:
    """The folder of the ReHyAt student shipped with the package: a ReHyAt checkpoint (φ and the
    fine-tuned base weights) of the bundled teacher, trained with the full recipe (its ``TRAINING.md``)."""
    if not (BUNDLED_STUDENT / "rehyat_config.json").is_file():
        raise ValueError(f"the bundled toy student is missing from {BUNDLED_STUDENT}")
    return BUNDLED_STUDENT


def model_folder(value: str | os.PathLike, what: str = "model folder") -> Path:
    """``value`` as an existing local folder; ``toy`` is the bundled toy teacher."""
    if str(value) == TOY_TEACHER:
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
        return bundled_student()
    return Path(value)


def transformer_folder(value: str | os.PathLike, what: str = "model folder") -> Path:
    """The folder of a video transformer's ``config.json``: ``value``'s ``transformer/`` (a diffusers
    pipeline folder, e.g. Wan's) or ``value`` itself (a transformer folder)."""
    folder = model_folder(value, what)
    for candidate in (folder / "transformer", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise ValueError(
        f"{what} {folder} is neither a diffusers Wan folder (transformer/config.json) nor a transformer "
        "folder (config.json)"
    )


def load_transformer(value: str | os.PathLike, what: str = "model folder", **kwargs):
    """``from_pretrained`` of :func:`transformer_folder`, from local files only, as the diffusers class
    its ``config.json`` names (one of the classes :func:`rehyat.models.convert` converts; Wan's where it
    names none); a file that diffusers cannot read (a damaged config or weights) is a ValueError naming
    the folder."""
    import json

    import diffusers

    from rehyat.models.families import supported_classes

    folder = transformer_folder(value, what)
    try:
        name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None  # diffusers says what is wrong with the file below
    if name is not None and name not in supported_classes():
        raise ValueError(f"{what} {folder} holds a {name}; ReHyAt converts {', '.join(supported_classes())}")
    cls = getattr(diffusers, name or "WanTransformer3DModel")
    try:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"cannot load the {cls.__name__} in {folder}: {message}") from error
