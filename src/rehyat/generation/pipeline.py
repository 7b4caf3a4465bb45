"""Loading a local diffusers video pipeline with its transformer converted to ReHyAt: ``WanPipeline``
(Wan2.1/2.2), ``SkyReelsV2Pipeline``, ``LTXPipeline``, ``HunyuanVideoPipeline`` or ``CogVideoXPipeline``,
each family's own pipeline.

The folder is what the pipeline's ``save_pretrained`` writes (model_index.json with transformer, vae,
text_encoder, tokenizer and scheduler subfolders, and HunyuanVideo's text_encoder_2 and tokenizer_2);
nothing is downloaded. A folder that is not one
(no or malformed ``model_index.json``, a missing or damaged component) and a device torch cannot use
raise a ``ValueError`` that names the file or the device, before anything is loaded wherever the
folder's layout shows the problem.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from rehyat.models import FAMILIES, ReHyAtConfig, convert, load_rehyat
from rehyat.models.checkpoint import read_json_object
from rehyat.utils import check_number

#: Pipeline components, each with the file its subfolder must hold (a diffusers model's or scheduler's
#: config; a tokenizer folder only has to exist, its files depend on the tokenizer).
_COMPONENT_FILES = {
    "transformer": "config.json",
    "vae": "config.json",
    "scheduler": "scheduler_config.json",
    "text_encoder": "config.json",
    "tokenizer": None,
    "text_encoder_2": "config.json",  # checked where the index lists them (HunyuanVideo's CLIP)
    "tokenizer_2": None,
}
_TEXT_COMPONENTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
#: (video frames per latent frame, pixel multiple of height and width) of each pipeline: its VAE's
#: temporal compression, and its spatial compression times the transformer's patch. The fallback of
#: :func:`pipeline_geometry` for a folder whose configs lack the fields (a Wan2.2-TI2V-5B VAE, stride 16,
#: takes multiples of 32, not this table's 16).
PIPELINE_GEOMETRY = {
    "WanPipeline": (4, 16),
    "SkyReelsV2Pipeline": (4, 16),
    "LTXPipeline": (8, 32),
    "HunyuanVideoPipeline": (4, 16),
    "CogVideoXPipeline": (4, 16),
}
#: The transformer's spatial patch of each pipeline's published models, for a folder without a
#: ``transformer/`` (one for build-dataset): its multiple is then the VAE's stride times this.
DEFAULT_SPATIAL_PATCH = {"LTXPipeline": 1}  # the others: 2
#: The pipelines ``rehyat generate`` drives: each convertible family's text-to-video pipeline.
PIPELINES = tuple(dict.fromkeys(family.pipeline_class for family in FAMILIES))
#: Pipelines whose scheduler is not a flow-matching one (CogVideoX's v-prediction DDIM/DPM): ``scheduler``
#: and ``flow_shift`` cannot replace it.
_NOT_FLOW = ("CogVideoXPipeline",)


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` if generation can run there: ``cpu``, an existing ``cuda[:i]``, or
    ``mps`` where torch has it. ValueError naming the device otherwise (``"cudax"``, ``"cuda:7"`` on a
    machine with one GPU, ``"cuda"`` without CUDA)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device torch knows (cpu, cuda, cuda:0, …)") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be cpu, cuda[:index] or mps, got {device!r}")
    return parsed


def check_pipeline_folder(model: str | os.PathLike, *, text_encoder: bool = False) -> Path:
    """``model`` as a Path if it looks like a saved pipeline folder of a convertible family: a
    ``model_index.json`` holding a JSON object for one of :data:`PIPELINES` and, for transformer, vae and scheduler (and text_encoder and tokenizer
    when ``text_encoder`` is true, or when the index lists them), a subfolder with its config file.
    Reads only the index; ValueError naming the file or folder otherwise."""
    folder = Path(model)
    index_path = folder / "model_index.json"
    if not folder.is_dir():
        raise ValueError(f"model folder {folder} does not exist")
    if not index_path.is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    index = read_json_object(index_path)
    if index.get("_class_name") not in PIPELINES:
        raise ValueError(
            f"{index_path} is for {index.get('_class_name')!r}, not a {', '.join(PIPELINES[:-1])} "
            f"or {PIPELINES[-1]}"
        )
    for name, config_file in _COMPONENT_FILES.items():
        if name.endswith("_2") and name not in index:
            continue  # a pipeline with one text encoder
        entry = index.get(name)
        listed = isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)
        absent = entry is None or entry == [None, None]
        if not listed and not (absent and name in _TEXT_COMPONENTS):
            raise ValueError(
                f"{index_path}: {name} must be a [library, class] pair such as "
                f'["diffusers", "AutoencoderKLWan"], got {entry!r}'
            )
        if absent:
            if text_encoder:
                raise ValueError(f"{index_path} has no {name}: a text prompt needs one")
            continue
        sub = folder / name
        if not sub.is_dir():
            raise ValueError(f"{folder} lists {name} in model_index.json but has no {name}/ folder")
        if config_file is not None and not (sub / config_file).is_file():
            raise ValueError(f"{sub} has no {config_file}")
    return folder


def pipeline_geometry(folder: str | os.PathLike) -> tuple[int, int]:
    """(video frames per latent frame, pixel multiple) of the checked pipeline folder: a video has
    k·frames + 1 frames and its height and width are multiples of the pixel multiple.

    Read from the folder's configs, before anything is loaded: the VAE's strides (Wan's
    ``scale_factor_temporal``/``scale_factor_spatial``; LTX's ``temporal_compression_ratio``/
    ``spatial_compression_ratio``, or its ``patch_size_t``/``patch_size`` × 2^(scaling stages) as diffusers
    computes them when those are null; HunyuanVideo's the same names; CogVideoX's
    ``temporal_compression_ratio`` and 2^(``len(block_out_channels)`` − 1), as its pipeline computes it)
    and the transformer's spatial ``patch_size`` (a folder without ``transformer/``: the published one,
    :data:`DEFAULT_SPATIAL_PATCH`). A config without the fields falls back to the family's row of
    :data:`PIPELINE_GEOMETRY`; a field that is not a positive int is a ValueError naming the file."""
    folder = Path(folder)
    pipeline = read_json_object(folder / "model_index.json")["_class_name"]
    temporal, multiple = PIPELINE_GEOMETRY[pipeline]
    vae_path, transformer_path = folder / "vae" / "config.json", folder / "transformer" / "config.json"
    vae_temporal, vae_spatial = _vae_strides(vae_path, read_json_object(vae_path))
    patch = DEFAULT_SPATIAL_PATCH.get(pipeline, 2)  # a folder without a transformer (build-dataset)
    if transformer_path.is_file():
        patch = _spatial_patch(transformer_path, read_json_object(transformer_path))
    if vae_temporal is not None:
        temporal = vae_temporal
    if vae_spatial is not None and patch is not None:
        multiple = vae_spatial * patch
    return temporal, multiple


def _positive_ints(path: Path, name: str, value) -> list[int]:
    """``value`` (an int or a list of ints, config field ``name`` of ``path``) as a list; ValueError
    naming the file unless each is a positive int."""
    values = value if isinstance(value, list) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{path}: {name} must be a positive int (or a list of them), got {value!r}")
    return values


def _vae_strides(path: Path, config: dict) -> tuple[int | None, int | None]:
    """(temporal, spatial) stride of a VAE config (None where it does not say)."""
    strides = []
    for wan_name, ltx_name, ltx_patch in (
        ("scale_factor_temporal", "temporal_compression_ratio", "patch_size_t"),
        ("scale_factor_spatial", "spatial_compression_ratio", "patch_size"),
    ):
        name = next((n for n in (wan_name, ltx_name) if config.get(n) is not None), None)
        stride = None
        if name is not None:
            stride = _positive_ints(path, name, config[name])[0]
        elif config.get("spatio_temporal_scaling") is not None and config.get(ltx_patch) is not None:
            stages = config["spatio_temporal_scaling"]
            if not isinstance(stages, list) or not all(isinstance(s, bool) for s in stages):
                raise ValueError(
                    f"{path}: spatio_temporal_scaling must be a list of booleans, got {stages!r}"
                )
            stride = _positive_ints(path, ltx_patch, config[ltx_patch])[0] * 2 ** sum(stages)
        strides.append(stride)
    if strides[1] is None and config.get("_class_name") == "AutoencoderKLCogVideoX":
        stages = config.get("block_out_channels")
        if not isinstance(stages, list) or not stages:
            raise ValueError(f"{path}: block_out_channels must be a non-empty list, got {stages!r}")
        strides[1] = 2 ** (len(stages) - 1)  # CogVideoXPipeline's vae_scale_factor_spatial
    return strides[0], strides[1]


def _spatial_patch(path: Path, config: dict) -> int | None:
    """The transformer's spatial patch (Wan's [t, h, w]: the lcm of h and w; LTX's one int), None if unsaid."""
    if config.get("patch_size") is None:
        return None
    patch = _positive_ints(path, "patch_size", config["patch_size"])
    return math.lcm(*patch[-2:]) if len(patch) > 1 else patch[0]


def load_pipeline(
    model: str | os.PathLike,
    rehyat: str | os.PathLike | None = None,
    *,
    config: ReHyAtConfig | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    flow_shift: float | None = None,
    scheduler: str | None = None,
):
    """The family's pipeline (``WanPipeline``, ``SkyReelsV2Pipeline``, ``LTXPipeline``,
    ``HunyuanVideoPipeline``, ``CogVideoXPipeline``, as the folder's index names it) from a local folder
    with its transformer converted to ReHyAt.

    ``rehyat``: a checkpoint folder from :func:`rehyat.save_rehyat`; otherwise the transformer is
    converted with ``config`` (default ``ReHyAtConfig()``). The VAE stays float32, as diffusers
    recommends for Wan. ``scheduler`` ("unipc"/"euler") and ``flow_shift`` replace the folder's
    scheduler when given (not CogVideoX's: it samples with v-prediction, not flow matching). The folder's layout (:func:`check_pipeline_folder`) and ``device``
    (:func:`check_device`) are checked before anything is loaded; a component that diffusers then cannot
    read (a damaged config or weights file) is a ValueError naming the folder too.
    """
    import diffusers

    from rehyat.generation.sampler import make_scheduler

    device = check_device(device)
    folder = check_pipeline_folder(model)
    if scheduler not in (None, "unipc", "euler"):
        raise ValueError(f"scheduler must be 'unipc', 'euler' or None, got {scheduler!r}")
    if flow_shift is not None:
        check_number("flow_shift", flow_shift, minimum=0.0, exclusive_minimum=True)
    index = read_json_object(folder / "model_index.json")
    if index["_class_name"] in _NOT_FLOW and (scheduler is not None or flow_shift is not None):
        raise ValueError(
            f"{index['_class_name']} samples with its v-prediction scheduler, which a flow-matching "
            "scheduler or flow shift cannot replace: leave the scheduler and shift unset"
        )
    pipeline_class, vae_class = (
        getattr(diffusers, index["_class_name"]),
        getattr(diffusers, index["vae"][1], None),
    )
    if vae_class is None:
        raise ValueError(f"{folder / 'model_index.json'}: vae {index['vae']} is no diffusers class")
    what = "Wan pipeline" if index["_class_name"] == "WanPipeline" else index["_class_name"]
    try:
        vae = vae_class.from_pretrained(
            folder, subfolder="vae", torch_dtype=torch.float32, local_files_only=True
        )
        pipe = pipeline_class.from_pretrained(folder, vae=vae, torch_dtype=dtype, local_files_only=True)
    except OSError as error:  # how diffusers and transformers report missing or unreadable files
        message = " ".join(str(error).split())  # one line, however diffusers wrapped it
        raise ValueError(f"cannot load the {what} in {folder}: {message}") from error
    if rehyat is not None:
        load_rehyat(pipe.transformer, rehyat)
    else:
        convert(pipe.transformer, config)
    if scheduler is not None or flow_shift is not None:
        shift = flow_shift if flow_shift is not None else pipe.scheduler.config.get("flow_shift", 3.0)
        pipe.scheduler = make_scheduler(scheduler or "unipc", shift)
    return pipe.to(device)
