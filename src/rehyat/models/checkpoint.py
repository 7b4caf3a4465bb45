"""ReHyAt checkpoints: ``rehyat_config.json`` + ``rehyat.safetensors`` next to an untouched base model.

Only what conversion added (the φ weights) is stored, unless the base weights were fine-tuned: then
they go to ``transformer/`` in diffusers layout (``config.json`` + ``diffusion_pytorch_model.safetensors``,
loadable by ``WanTransformer3DModel.from_pretrained``). No pickle: JSON and safetensors only.

**Saving replaces the folder as a whole** (:func:`rehyat.utils.replacing_folder`): :func:`save_rehyat`
writes the complete checkpoint into a hidden folder beside the target (``.<name>.new.<random>``, every
file fsynced) and swaps it in: the old folder is renamed aside (``.<name>.old.<random>``), the new one
renamed into place, the files of the old folder that the save does not write (notes, samples, an earlier
``transformer/``) are moved over, and the old folder is removed. A save that fails or is interrupted
before the swap leaves the old checkpoint exactly as it was (a failure while moving the new folder in
puts the old one back). Only a process killed between the two renames leaves no folder at the path;
loading it then names the two hidden folders, both complete, so that one of them can be renamed back.
Two saves to one folder take turns (an advisory lock on ``.<name>.lock`` beside it, removed when done).

**A load sees exactly one save.** Each save gets a random ``save_id``, written into the JSON and into the
metadata of every safetensors file. :func:`load_rehyat` reads the JSON and the weights, and when their ids
differ (a save swapped the folder between the two reads) or a file vanished under a swap, it waits for the
writer and reads again; it never returns one save's config with another's φ. The id costs no extra read:
it sits in the safetensors header. Files without an id (checkpoints written before it existed, or a file
replaced by hand) are not compared and load as they always did.

**Loading validates everything before it changes the model**: the JSON (valid UTF-8 JSON, an object,
every key present with the right type, ``model`` with exactly the dimension keys, a valid
:class:`ReHyAtConfig`), the model's dimensions, the safetensors files (present, readable, not truncated),
the tensors' names and shapes, and that every φ tensor is floating point and finite. Each problem is a
:class:`ReHyAtCheckpointError` (a ``ValueError``) naming the file and what is wrong. Base weights get the
name, shape and file checks but no finiteness pass (that would read all of them once more).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from rehyat.models.adapter import PHI_K, PHI_Q, converted_blocks, rehyat_runtime
from rehyat.models.config import ReHyAtConfig
from rehyat.models.families import convert, family_of
from rehyat.utils import (
    atomic_write_json,
    atomic_write_tensors,
    atomic_write_text,
    folder_identity,
    real_folder,
    replacing_folder,
    wait_for_writer,
)


class ReHyAtCheckpointError(ValueError):
    """A ReHyAt checkpoint folder is missing, damaged, half-written or does not match the model."""


class _MixedSaves(ReHyAtCheckpointError):
    """The files read belong to different saves: the folder was replaced while it was read."""


CONFIG_NAME = "rehyat_config.json"
WEIGHTS_NAME = "rehyat.safetensors"
BASE_FOLDER = "transformer"
BASE_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
FORMAT = "rehyat"
FORMAT_VERSION = 1
#: The model dimensions a checkpoint records and checks (``"model"`` in its JSON).
MODEL_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size")
#: The key of the save's id, in the JSON and in each safetensors file's metadata.
SAVE_ID = "save_id"
#: How often a load reads a folder that keeps being replaced before it gives up.
READ_ATTEMPTS = 20


def _is_rehyat_key(name: str) -> bool:
    return f".{PHI_Q}." in name or f".{PHI_K}." in name


def _model_dims(transformer: nn.Module) -> dict[str, object]:
    config, family = transformer.config, family_of(transformer)
    return {  # the keys of MODEL_KEYS
        "num_layers": len(family.blocks(transformer)),
        "num_attention_heads": config.num_attention_heads,
        "attention_head_dim": config.attention_head_dim,
        "patch_size": list(family.patch_size(transformer)),
    }


def _expected_shapes(transformer: nn.Module, config: ReHyAtConfig, blocks: list[int]) -> dict[str, tuple]:
    """Names and shapes of the φ tensors that conversion with ``config`` creates (built on meta)."""
    shapes, family = {}, family_of(transformer)
    for index in blocks if config.attention != "local" else ():
        attn = family.attention(transformer, index)
        with torch.device("meta"):
            phi = config.feature_map(attn.heads, attn.inner_dim // attn.heads)
        for prefix in (PHI_Q, PHI_K):
            for name, tensor in phi.state_dict().items():
                shapes[f"{family.attention_path(index, transformer)}.{prefix}.{name}"] = tuple(tensor.shape)
    return shapes


def _check_tensors(what: str, tensors: dict[str, Tensor], expected: dict[str, tuple]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ReHyAtCheckpointError(
            f"{what} does not match the model: missing {missing[:5]}{' …' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ReHyAtCheckpointError(
                f"{what}: {name} has shape {tuple(tensors[name].shape)}, the model needs {shape}"
            )


def _check_phi_values(path: Path, tensors: dict[str, Tensor]) -> None:
    """φ must be floating point (an integer φ would be cast silently) and finite (NaN φ gives NaN video)."""
    for name, tensor in sorted(tensors.items()):
        if not tensor.is_floating_point():
            raise ReHyAtCheckpointError(
                f"{path}: {name} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                "φ weights must be floating point"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ReHyAtCheckpointError(f"{path}: {name} has non-finite values (NaN or ±inf)")


def _load_tensors(path: Path, save_id: str | None) -> dict[str, Tensor]:
    """The tensors of one safetensors file of the checkpoint, which must come from the save ``save_id``
    (:class:`_MixedSaves` otherwise; a file or JSON without an id, from an older version or written by
    hand, is not compared)."""
    if not path.is_file():
        raise ReHyAtCheckpointError(f"{path} is missing: the checkpoint is incomplete")
    try:
        with safe_open(path, framework="pt") as handle:
            found = (handle.metadata() or {}).get(SAVE_ID)
            if found is not None and save_id is not None and found != save_id:
                raise _MixedSaves(
                    f"{path} is from save {found} but {CONFIG_NAME} from save {save_id}: the folder mixes "
                    "two checkpoints (files copied in from another, or saves that never stop replacing it)"
                )
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise ReHyAtCheckpointError(f"{path} is damaged or truncated ({error})") from error


def save_rehyat(
    transformer: nn.Module, path: str | os.PathLike, *, include_base_weights: bool = False
) -> Path:
    """Save a converted transformer's ReHyAt state to the folder ``path`` (created if needed).

    ``include_base_weights=True`` also saves the base weights (after fine-tuning) under ``transformer/``
    in diffusers layout. An existing checkpoint at ``path`` is replaced atomically as a whole (see the
    module docstring): until the new folder is complete, the old one stays as it was, and a second save
    to the same folder waits for this one. Files of the old
    folder that this save does not write are kept. ``path`` may be a symbolic link to a folder (its
    target is replaced). Returns the folder.
    """
    runtime = rehyat_runtime(transformer)
    if runtime is None:
        raise ValueError("save_rehyat needs a transformer converted with convert_wan or convert")
    try:
        folder = real_folder(path)
    except ValueError as error:
        raise ValueError(f"{error}: save_rehyat writes a checkpoint folder") from error
    state = transformer.state_dict()
    save_id = uuid.uuid4().hex
    tagged = {"format": "pt", SAVE_ID: save_id}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": type(transformer).__name__,
        "config": runtime.config.to_dict(),
        "converted_blocks": runtime.blocks,
        "model": _model_dims(transformer),
        "base_weights": include_base_weights,
        SAVE_ID: save_id,
    }
    with replacing_folder(folder, carry_over=True) as staging:
        if include_base_weights:
            base = staging / BASE_FOLDER
            base_state = {k: v for k, v in state.items() if not _is_rehyat_key(k)}
            atomic_write_tensors(base / BASE_WEIGHTS_NAME, base_state, tagged)
            atomic_write_text(base / "config.json", transformer.to_json_string())
        phi = {k: v for k, v in state.items() if _is_rehyat_key(k)}
        atomic_write_tensors(staging / WEIGHTS_NAME, phi, tagged)
        atomic_write_json(staging / CONFIG_NAME, metadata)  # last: a folder with it is complete
    return Path(path)


def read_rehyat_config(path: str | os.PathLike) -> ReHyAtConfig:
    """The :class:`ReHyAtConfig` stored in a ReHyAt checkpoint folder (its JSON validated as
    :func:`load_rehyat` validates it; :class:`ReHyAtCheckpointError` naming the file otherwise)."""
    return _read_metadata(Path(path))[1]


def read_json_object(path: Path, error: type[ValueError] = ValueError) -> dict:
    """The JSON object in the file ``path``; ``error`` naming the file if it cannot be read (gone, say,
    when a save swapped its folder after the caller saw it), is not UTF-8 JSON (a truncated file) or
    holds something else than an object."""
    try:
        raw = path.read_bytes()
    except OSError as problem:
        raise error(f"{path} cannot be read ({problem.strerror or problem})") from problem
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path} is not valid JSON, the file is damaged ({problem})") from problem
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _leftovers(folder: Path) -> str:
    """A hint naming the hidden folders a save killed in the middle of its swap left beside ``folder``."""
    found = sorted(folder.parent.glob(f".{folder.name}.old.*")) + sorted(
        p for p in folder.parent.glob(f".{folder.name}.new.*") if (p / CONFIG_NAME).is_file()
    )
    if not found:
        return ""
    return (
        f"; a save_rehyat killed while swapping folders left {', '.join(map(str, found))} "
        "(.old.: the previous checkpoint, .new.: the new one, both complete): rename one to "
        f"{folder.name}"
    )


def _read_metadata(folder: Path) -> tuple[dict, ReHyAtConfig]:
    """The checkpoint's JSON, checked key by key, and its config."""
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ReHyAtCheckpointError(f"ReHyAt checkpoint folder {folder} does not exist{_leftovers(folder)}")
    if not path.is_file():
        raise ReHyAtCheckpointError(f"{folder} is not a ReHyAt checkpoint: {CONFIG_NAME} is missing")
    metadata = read_json_object(path, ReHyAtCheckpointError)
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ReHyAtCheckpointError(
            f"{path} is not a ReHyAt checkpoint of format version {FORMAT_VERSION} "
            f"(format={metadata.get('format')!r}, version={metadata.get('format_version')!r})"
        )
    missing = [
        k
        for k in ("architecture", "config", "converted_blocks", "model", "base_weights")
        if k not in metadata
    ]
    if missing:
        raise ReHyAtCheckpointError(f"{path} lacks the keys {missing}: the file is damaged")

    def bad(key: str, wanted: str) -> ReHyAtCheckpointError:
        value = metadata[key]
        return ReHyAtCheckpointError(f"{path}: {key} must be {wanted}, got {type(value).__name__} {value!r}")

    if not isinstance(metadata["architecture"], str):
        raise bad("architecture", "a class name")
    if not isinstance(metadata["config"], dict):
        raise bad("config", "a JSON object")
    blocks = metadata["converted_blocks"]
    if not isinstance(blocks, list) or not all(type(i) is int for i in blocks):
        raise bad("converted_blocks", "a list of block indices")
    if not isinstance(metadata["base_weights"], bool):
        raise bad("base_weights", "true or false")
    if not isinstance(metadata.get(SAVE_ID, ""), str):
        raise bad(SAVE_ID, "a string")
    model = metadata["model"]
    if not isinstance(model, dict):
        raise bad("model", "a JSON object of model dimensions")
    lacking = [k for k in MODEL_KEYS if k not in model]
    if lacking:
        raise ReHyAtCheckpointError(f"{path}: model lacks the dimensions {lacking}")
    unknown = sorted(set(model) - set(MODEL_KEYS))
    if unknown:
        raise ReHyAtCheckpointError(f"{path}: model has unknown dimensions {unknown}")
    try:
        config = ReHyAtConfig.from_dict(metadata["config"])
    except (ValueError, TypeError) as error:
        raise ReHyAtCheckpointError(f"{path}: config is not a valid ReHyAtConfig: {error}") from error
    return metadata, config


def load_rehyat(transformer: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a ReHyAt checkpoint into ``transformer``, converting it first if it is not converted yet.

    Raises :class:`ReHyAtCheckpointError` (a ``ValueError``) — before anything in the model changes — if
    a file of the checkpoint is missing, damaged, truncated or malformed, if a φ tensor is not floating
    point or not finite, if the checkpoint was made for another architecture (block count, heads, head
    dim, patch size), another ReHyAt config than the one the model is already converted with, or holds
    tensors of other names or shapes. Every message names the file. Returns ``transformer``.

    A save that replaces the folder while it is read is waited for, and the folder read again: the
    model gets one save's config and tensors, never a mix (see the module docstring).
    """
    folder = Path(path)
    for attempt in range(READ_ATTEMPTS):
        seen = folder_identity(folder)
        try:
            config, tensors = _read_checkpoint(transformer, folder)
            break
        except ReHyAtCheckpointError as error:
            # A save that swapped the folder while it was read: read the new one once the save is done.
            waited = wait_for_writer(folder.resolve())
            replaced = waited or folder_identity(folder) != seen or isinstance(error, _MixedSaves)
            if not replaced or attempt == READ_ATTEMPTS - 1:
                raise
    runtime = rehyat_runtime(transformer)
    if runtime is None:
        convert(transformer, config)
    transformer.load_state_dict(tensors, strict=False)  # names and shapes were checked above
    return transformer


def _read_checkpoint(transformer: nn.Module, folder: Path) -> tuple[ReHyAtConfig, dict[str, Tensor]]:
    """The checkpoint's config and tensors, every file checked against ``transformer`` and against the
    save that wrote the JSON; nothing in ``transformer`` changes."""
    metadata, config = _read_metadata(folder)
    config_path = folder / CONFIG_NAME
    if metadata["architecture"] != type(transformer).__name__:
        raise ReHyAtCheckpointError(
            f"{config_path}: checkpoint is for {metadata['architecture']}, the model is "
            f"{type(transformer).__name__}"
        )
    dims = _model_dims(transformer)
    for key in MODEL_KEYS:
        if dims[key] != metadata["model"][key]:
            raise ReHyAtCheckpointError(
                f"{config_path}: checkpoint was made for a model with {key}={metadata['model'][key]}, "
                f"this model has {dims[key]}"
            )
    try:
        blocks = config.resolve_blocks(len(family_of(transformer).blocks(transformer)))
    except ValueError as error:
        raise ReHyAtCheckpointError(f"{config_path}: {error}") from error
    if metadata["converted_blocks"] != blocks:
        raise ReHyAtCheckpointError(
            f"{config_path}: checkpoint lists blocks {metadata['converted_blocks']} but its config gives {blocks}"
        )
    runtime = rehyat_runtime(transformer)
    if runtime is not None and (runtime.config != config or converted_blocks(transformer) != blocks):
        raise ReHyAtCheckpointError(
            f"the model is already converted with {runtime.config} on blocks {converted_blocks(transformer)}; "
            f"the checkpoint {folder} has {config} on blocks {blocks}"
        )

    save_id = metadata.get(SAVE_ID)
    weights_path = folder / WEIGHTS_NAME
    tensors = _load_tensors(weights_path, save_id)
    _check_tensors(str(weights_path), tensors, _expected_shapes(transformer, config, blocks))
    _check_phi_values(weights_path, tensors)
    if metadata["base_weights"]:
        base_path = folder / BASE_FOLDER / BASE_WEIGHTS_NAME
        base = _load_tensors(base_path, save_id)
        expected = {k: tuple(v.shape) for k, v in transformer.state_dict().items() if not _is_rehyat_key(k)}
        _check_tensors(str(base_path), base, expected)
        tensors.update(base)
    return config, tensors
