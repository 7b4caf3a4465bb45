"""Stage-2 data: a folder of (video latent, prompt embedding) pairs in safetensors shards.

Layout::

    index.json              {"format": "rehyat-latents", "version": 1, "latent_shape": [C, T, H, W],
                             "prompt_shape": [L, D], "samples": N,
                             "conditioning": {"pooled_prompt_embeds": [P], ...},   (optional)
                             "shards": [{"file": "shard-00000.safetensors", "samples": n}, ...]}
    shard-00000.safetensors "latents" [n, C, T, H, W], "prompt_embeds" [n, L, D] (and each
                            conditioning tensor, [n, ...])

Latents are [C, T, H, W] (LTX-Video's unpacked, CogVideoX's channels first: the family's adapter lays
them out for its transformer), the family's VAE posterior mean normalised as its pipeline un-normalises
it before decoding (Wan, SkyReels-V2: (z − latents_mean) / latents_std; LTX-Video: its
``_normalize_latents``; HunyuanVideo, CogVideoX: z · scaling_factor). Prompt embeddings are the family's
text encoder output as its pipeline's ``encode_prompt`` pads it (Wan's UMT5, zero-padded to L tokens),
with the other inputs its forward takes per prompt as named conditioning tensors (LTX-Video:
``prompt_attention_mask`` [L]; HunyuanVideo: ``pooled_prompt_embeds`` [P], its CLIP projection, and
``prompt_attention_mask`` [L]), passed to the family's ``denoiser_inputs`` by name.
All samples share one shape, so batches are plain stacks. Shards are written first and ``index.json``
last, so a folder with an index is complete. Shards are read from the folder only: a name that
resolves outside it (``../x``, an absolute path, a link to a file elsewhere) or a shard listed twice is
refused. :class:`SampleOrder` maps a training step to the samples
each rank reads, as a pure function of (seed, step): a resumed run needs no data-loader state.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from rehyat.models.adapter import FamilyAdapter
from rehyat.models.wan import WAN
from rehyat.utils import atomic_write_text, check_int

INDEX = "index.json"
FORMAT = "rehyat-latents"
VERSION = 1
KEYS = ("latents", "prompt_embeds")


class LatentDataset:
    """Random access to a latent dataset folder; validates the index and every shard header on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"dataset folder {self.path} does not exist")
        index_path = self.path / INDEX
        if not index_path.is_file():
            hint = "it is empty" if not any(self.path.iterdir()) else f"it has no {INDEX}"
            raise ValueError(
                f"{self.path} is not a latent dataset ({hint}); build one with `rehyat build-dataset`"
            )
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{index_path} is not valid JSON ({error})") from error
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise ValueError(f"{index_path} is not a {FORMAT} index of version {VERSION}")
        self.latent_shape = tuple(index["latent_shape"])
        self.prompt_shape = tuple(index["prompt_shape"])
        conditioning = index.get("conditioning", {})
        if not isinstance(conditioning, dict) or not all(
            isinstance(shape, list) and name not in KEYS for name, shape in conditioning.items()
        ):
            raise ValueError(f"{index_path}: conditioning must map tensor names to per-sample shapes")
        #: The per-sample conditioning tensors beside the prompt embedding: name → shape (no batch axis).
        self.conditioning_shapes = {name: tuple(shape) for name, shape in conditioning.items()}
        if not index["shards"] or index["samples"] < 1:
            raise ValueError(f"dataset {self.path} holds no samples")
        self._handles: list[Any] = []
        self._starts: list[int] = []
        total = 0
        seen: set[Path] = set()
        for number, shard in enumerate(index["shards"]):
            if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
                raise ValueError(f"{index_path}: shards[{number}] must be {{'file': name, 'samples': n}}")
            samples = check_int(f"{index_path}: shards[{number}].samples", shard.get("samples"), minimum=1)
            file = self._shard_path(shard["file"])
            if file in seen:
                raise ValueError(f"{index_path} lists shard {shard['file']} twice")
            seen.add(file)
            self._starts.append(total)
            self._handles.append(self._open_shard(file, samples))
            total += samples
        if total != index["samples"]:
            raise ValueError(f"{index_path} lists {index['samples']} samples but its shards hold {total}")
        self._len = total

    def _shard_path(self, name: str) -> Path:
        """The shard file ``name`` of the index, resolved; a ValueError unless it lies inside the folder."""
        folder = self.path.resolve()
        file = (folder / name).resolve()
        if Path(name).is_absolute() or not file.is_relative_to(folder):
            raise ValueError(
                f"dataset {self.path}: shard {name!r} lies outside the dataset folder; shards are read "
                "from the folder only"
            )
        return file

    def _open_shard(self, file: Path, samples: int) -> Any:
        if not file.is_file():
            raise ValueError(f"dataset shard {file} is missing")
        try:
            handle = safe_open(str(file), framework="pt")
        except (SafetensorError, OSError) as error:
            raise ValueError(f"dataset shard {file} is damaged or truncated ({error})") from error
        expected = {"latents": (samples, *self.latent_shape), "prompt_embeds": (samples, *self.prompt_shape)}
        expected.update({name: (samples, *shape) for name, shape in self.conditioning_shapes.items()})
        for key, shape in expected.items():
            if key not in handle.keys():  # noqa: SIM118 - safe_open handles have no __contains__
                raise ValueError(f"dataset shard {file} has no tensor {key!r}")
            found = tuple(handle.get_slice(key).get_shape())
            if found != shape:
                raise ValueError(f"dataset shard {file}: {key} has shape {found}, the index says {shape}")
        return handle

    def __len__(self) -> int:
        return self._len

    def specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """(per-sample shape, dtype) of every tensor of a sample, latents and prompt embeddings first."""
        shapes = {"latents": self.latent_shape, "prompt_embeds": self.prompt_shape} | self.conditioning_shapes
        first = self._handles[0]
        return {key: (tuple(shape), first.get_slice(key)[0:1].dtype) for key, shape in shapes.items()}

    def _read(self, index: int, keys: Iterable[str]) -> tuple[Tensor, ...]:
        """The tensors ``keys`` of sample ``index``."""
        if not 0 <= index < self._len:
            raise IndexError(f"sample {index} is out of range for {self._len} samples")
        shard = max(i for i, start in enumerate(self._starts) if start <= index)
        row = index - self._starts[shard]
        handle = self._handles[shard]
        return tuple(handle.get_slice(key)[row : row + 1][0] for key in keys)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """(latent [C, T, H, W], prompt embedding [L, D]) of sample ``index``."""
        return self._read(index, KEYS)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Stacked (latents [B, C, T, H, W], prompt embeddings [B, L, D]) of the given samples."""
        latents, prompts = zip(*(self[i] for i in indices), strict=True)
        return torch.stack(latents), torch.stack(prompts)

    def conditioning(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The given samples' conditioning tensors, stacked ([B, ...] by name; {} for a dataset without)."""
        names = list(self.conditioning_shapes)
        if not names:
            return {}
        columns = zip(*(self._read(index, names) for index in indices), strict=True)
        return {name: torch.stack(column) for name, column in zip(names, columns, strict=True)}


class PreloadedDataset:
    """A :class:`LatentDataset` read whole into one device's memory: each batch is an index on that device,
    not a read and a copy of every sample. For a dataset that fits beside the model (the toy worlds'),
    where reading the step's samples would take longer than training on them (:func:`preload_refusal`
    says whether it fits)."""

    def __init__(self, dataset: LatentDataset, device: torch.device | str) -> None:
        self.path, self.source = dataset.path, dataset
        self.latent_shape, self.prompt_shape = dataset.latent_shape, dataset.prompt_shape
        self.conditioning_shapes = dataset.conditioning_shapes
        self.device = torch.device(device)
        self.tensors = {
            key: torch.empty((len(dataset), *shape), dtype=dtype, device=self.device)
            for key, (shape, dtype) in dataset.specs().items()
        }
        for start, handle in zip(dataset._starts, dataset._handles, strict=True):
            for key, tensor in self.tensors.items():
                rows = handle.get_slice(key).get_shape()[0]
                for row in range(
                    0, rows, _PRELOAD_ROWS
                ):  # a few rows at a time: no whole shard in host memory
                    end = min(row + _PRELOAD_ROWS, rows)
                    tensor[start + row : start + end].copy_(handle.get_slice(key)[row:end])

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.tensors["latents"][index], self.tensors["prompt_embeds"][index]

    def _rows(self, indices: Sequence[int]) -> Tensor:
        """``indices`` on the device, copied without waiting for the work queued there."""
        rows = torch.tensor(indices, pin_memory=self.device.type == "cuda")
        return rows.to(self.device, non_blocking=True)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(latents [B, C, T, H, W], prompt embeddings [B, L, D]) of the given samples, on the device."""
        rows = self._rows(indices)
        return self.tensors["latents"][rows], self.tensors["prompt_embeds"][rows]

    def conditioning(self, indices: Sequence[int]) -> dict[str, Tensor]:
        if not self.conditioning_shapes:
            return {}
        rows = self._rows(indices)
        return {name: self.tensors[name][rows] for name in self.conditioning_shapes}


#: Samples a preload copies at a time.
_PRELOAD_ROWS = 64


def preload_refusal(dataset: LatentDataset, device: torch.device, free: int | None = None) -> str | None:
    """Why ``dataset`` should not be preloaded on ``device``, or None: more than half the memory free there
    (``free``; default: what CUDA reports, with what torch's allocator caches unused), the rest being the
    training step's. On the CPU: None."""
    if free is None:
        if device.type != "cuda":
            return None
        free = torch.cuda.mem_get_info(device)[0]
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    need = sum(len(dataset) * math.prod(shape) * dtype.itemsize for shape, dtype in dataset.specs().values())
    if need <= free / 2:
        return None
    return (
        f"data.preload: dataset {dataset.path} takes {need / 2**30:.1f} GiB, more than half of the "
        f"{free / 2**30:.1f} GiB free on {device}; set data.preload=false"
    )


class SampleOrder:
    """Which samples each rank reads at each step: an endless stream of seeded per-epoch permutations.

    Step ``s`` consumes stream positions ``[s·G, (s+1)·G)`` with G = micro_batch · accumulation · world;
    micro-batch ``m`` of rank ``r`` takes the ``micro_batch`` positions at ``s·G + (m·world + r)·micro_batch``.
    Ranks therefore read disjoint samples within an epoch, and the order depends only on (seed, step).
    """

    def __init__(self, num_samples: int, seed: int, micro_batch: int, accumulation: int, world: int) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.micro_batch, self.accumulation, self.world = micro_batch, accumulation, world

    @lru_cache(maxsize=2)  # noqa: B019 - one order per run, two epochs live at an epoch boundary
    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def indices(self, step: int, micro: int, rank: int) -> list[int]:
        global_batch = self.micro_batch * self.accumulation * self.world
        start = step * global_batch + (micro * self.world + rank) * self.micro_batch
        return [
            self._permutation(p // self.num_samples)[p % self.num_samples]
            for p in range(start, start + self.micro_batch)
        ]


def write_latent_dataset(
    out_dir: str | os.PathLike,
    samples: Iterable[tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Tensor]]],
    shard_size: int = 64,
) -> Path:
    """Write (latent [C, T, H, W], prompt embedding [L, D]) pairs as a dataset folder; returns it. A sample
    may add a dict of conditioning tensors (the module docstring), the same names and shapes in every one.

    Samples are streamed into shards of ``shard_size``; the index is written last. Refuses a folder
    that already holds a dataset, so an existing one is never overwritten.
    """
    out = Path(out_dir)
    if (out / INDEX).exists():
        raise ValueError(f"{out} already holds a dataset ({INDEX} exists); choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    conditioning_shapes: dict[str, tuple[int, ...]] = {}
    pending: list[dict[str, Tensor]] = []

    def flush() -> None:
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {key: torch.stack([s[key] for s in pending]).contiguous() for key in pending[0]}
        save_file(tensors, str(out / name))
        shards.append({"file": name, "samples": len(pending)})
        pending.clear()

    for number, (latent, prompt, *rest) in enumerate(samples):
        if latent.dim() != 4 or prompt.dim() != 2:
            raise ValueError(
                f"sample {number}: expected latent [C, T, H, W] and prompt embedding [L, D], "
                f"got {tuple(latent.shape)} and {tuple(prompt.shape)}"
            )
        conditioning = dict(rest[0]) if rest else {}
        if set(conditioning) & set(KEYS):
            raise ValueError(f"sample {number}: conditioning tensors cannot be named {list(KEYS)}")
        shape = (tuple(latent.shape), tuple(prompt.shape))
        extra = {key: tuple(value.shape) for key, value in conditioning.items()}
        if shapes is None:
            shapes, conditioning_shapes = shape, extra
        elif shape != shapes or extra != conditioning_shapes:
            raise ValueError(
                f"sample {number} has latent {shape[0]}, prompt {shape[1]} and conditioning {extra}, but "
                f"sample 0 has {shapes[0]}, {shapes[1]} and {conditioning_shapes}: all samples of a dataset "
                "share one shape"
            )
        tensors = {"latents": latent, "prompt_embeds": prompt, **conditioning}
        pending.append({key: value.detach().cpu() for key, value in tensors.items()})
        if len(pending) == shard_size:
            flush()
    if pending:
        flush()
    if shapes is None:
        raise ValueError("no samples to write")
    index = {
        "format": FORMAT,
        "version": VERSION,
        "latent_shape": list(shapes[0]),
        "prompt_shape": list(shapes[1]),
        **(
            {"conditioning": {k: list(v) for k, v in conditioning_shapes.items()}}
            if conditioning_shapes
            else {}
        ),
        "samples": sum(s["samples"] for s in shards),
        "shards": shards,
    }
    atomic_write_text(out / INDEX, json.dumps(index, indent=2) + "\n")
    return out


# --- building a dataset from videos -----------------------------------------------------------------


def read_video(path: str | os.PathLike) -> Tensor:
    """Frames of a video file as uint8 [F, H, W, 3] (imageio; mp4 needs imageio-ffmpeg)."""
    import imageio.v3 as iio

    if not Path(path).is_file():
        raise ValueError(f"video {path} does not exist")
    frames = iio.imread(path, index=None)
    return torch.from_numpy(frames[..., :3].copy())


def prepare_video(
    frames: Tensor, num_frames: int, height: int, width: int, frames_per_latent: int = 4
) -> Tensor:
    """uint8 [F, H, W, 3] → float [1, 3, num_frames, height, width] in [−1, 1]: the first frames,
    resized to cover height × width (aspect kept) and centre-cropped. ``num_frames`` is
    ``frames_per_latent``·k + 1, the VAE's temporal compression (Wan's 4, LTX-Video's 8)."""
    if (num_frames - 1) % frames_per_latent or num_frames < 1:
        raise ValueError(
            f"num_frames must be {frames_per_latent}k + 1 for this VAE (the first frame alone, then "
            f"{frames_per_latent} per latent frame), got {num_frames}"
        )
    if frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] < num_frames:
        raise ValueError(
            f"expected at least {num_frames} RGB frames [F, H, W, 3], got shape {tuple(frames.shape)}"
        )
    video = frames[:num_frames].permute(0, 3, 1, 2).float()  # [F, 3, H, W]
    scale = max(height / video.shape[2], width / video.shape[3])
    size = (max(height, round(video.shape[2] * scale)), max(width, round(video.shape[3] * scale)))
    video = torch.nn.functional.interpolate(video, size=size, mode="bilinear", antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    video = video[:, :, top : top + height, left : left + width]
    return (video / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).unsqueeze(0)


@torch.no_grad()
def encode_video(vae: torch.nn.Module, video: Tensor, family: FamilyAdapter | None = None) -> Tensor:
    """The VAE latent [C, T, H, W] of a prepared video (z the posterior mean), normalised as the
    ``family``'s pipeline un-normalises it before decoding (:meth:`FamilyAdapter.normalize_latents`;
    default Wan's, (z − latents_mean) / latents_std)."""
    param = next(vae.parameters())
    z = vae.encode(video.to(param)).latent_dist.mode().float()
    return (family or WAN).normalize_latents(vae, z)[0].cpu()


def encode_prompt(
    pipeline: Any, prompt: str, max_sequence_length: int | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """One prompt through the pipeline's own ``encode_prompt``, padded to ``max_sequence_length`` tokens
    (default: what the pipeline's ``__call__`` pads to): its embedding [L, D] and the other outputs the
    family's transformer takes, by their conditioning names (LTX-Video's T5 mask
    ``prompt_attention_mask`` [L]; HunyuanVideo's Llama mask and pooled CLIP projection
    ``pooled_prompt_embeds`` [P]). Masks are stored as float. Runs in the caller's grad mode, as the
    pipeline's own call would."""
    if max_sequence_length is None:
        max_sequence_length = inspect.signature(pipeline.__call__).parameters["max_sequence_length"].default
    options = {"max_sequence_length": max_sequence_length}
    if "do_classifier_free_guidance" in inspect.signature(pipeline.encode_prompt).parameters:
        options["do_classifier_free_guidance"] = False  # HunyuanVideo's has no negative prompt
    encoded = pipeline.encode_prompt(prompt, **options)
    conditioning = {}
    if len(encoded) == 4:  # LTX-Video: (embeds, mask, negative embeds, negative mask)
        conditioning = {"prompt_attention_mask": encoded[1]}
    elif len(encoded) == 3:  # HunyuanVideo: (embeds, pooled CLIP projection, mask)
        conditioning = {"pooled_prompt_embeds": encoded[1], "prompt_attention_mask": encoded[2]}
    return encoded[0][0].float().cpu(), {name: t[0].float().cpu() for name, t in conditioning.items()}


def pipeline_family(model_folder: str | os.PathLike) -> FamilyAdapter:
    """The family whose text-to-video pipeline the folder's ``model_index.json`` names (``_class_name``);
    a ValueError naming the file for a folder without one or another pipeline."""
    from rehyat.models.checkpoint import read_json_object

    index_path = Path(model_folder) / "model_index.json"
    if not index_path.is_file():
        raise ValueError(
            f"{model_folder} is not a local diffusers pipeline folder (model_index.json is missing)"
        )
    name = read_json_object(index_path).get("_class_name")
    return _family_of_pipeline(name, f"{index_path} is for {name!r}")


def _family_of_pipeline(name: object, what: str) -> FamilyAdapter:
    """The family whose text-to-video pipeline class is called ``name``; a ValueError starting with
    ``what`` that lists the pipelines otherwise."""
    from rehyat.generation.pipeline import PIPELINES
    from rehyat.models import FAMILIES

    for family in FAMILIES:
        if family.pipeline_class == name:
            return family
    raise ValueError(f"{what}; build-dataset reads a {', '.join(PIPELINES[:-1])} or {PIPELINES[-1]} folder")


def check_video_size(model_folder: str | os.PathLike, num_frames: int, height: int, width: int) -> None:
    """A one-line ValueError naming the folder unless its VAE and transformer take videos of ``num_frames``
    frames of height × width (:func:`rehyat.generation.pipeline.pipeline_geometry`: t·k + 1 frames for
    the VAE's temporal compression t, whose latent frames are a multiple of the transformer's temporal
    patch (CogVideoX 1.5's 2); sides a multiple of its spatial compression × the patch)."""
    from rehyat.generation.pipeline import pipeline_geometry

    temporal, multiple = pipeline_geometry(model_folder)
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(
            f"{model_folder}: its VAE takes {temporal}k + 1 frames (the first alone, then {temporal} per "
            f"latent frame), got {num_frames}"
        )
    if height < 1 or width < 1 or height % multiple or width % multiple:
        raise ValueError(
            f"{model_folder}: height and width must be positive multiples of {multiple} (the VAE's spatial "
            f"compression × the transformer's patch), got {height}×{width}"
        )
    transformer_config = Path(model_folder) / "transformer" / "config.json"
    if transformer_config.is_file():
        from rehyat.models.checkpoint import read_json_object

        patch_t = read_json_object(transformer_config).get("patch_size_t")
        latent_frames = (num_frames - 1) // temporal + 1
        if isinstance(patch_t, int) and patch_t > 1 and latent_frames % patch_t:
            raise ValueError(
                f"{transformer_config}: the transformer patches {patch_t} latent frames per token, but "
                f"{num_frames} frames give {latent_frames} latent frames; take a multiple of {patch_t}"
            )


def load_encoders(model_folder: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """The VAE (fp32) and the transformer-less family pipeline (for ``encode_prompt``) of a local
    diffusers folder of any family (:func:`pipeline_family`), each as diffusers' own classes."""
    import diffusers

    folder = Path(model_folder)
    family = pipeline_family(folder)
    pipeline_class = getattr(diffusers, family.pipeline_class)
    vae_class = inspect.signature(pipeline_class).parameters["vae"].annotation
    vae_class = getattr(diffusers, vae_class) if isinstance(vae_class, str) else vae_class
    try:
        vae = vae_class.from_pretrained(
            folder, subfolder="vae", torch_dtype=torch.float32, local_files_only=True
        ).to(device)
        pipe = pipeline_class.from_pretrained(folder, transformer=None, vae=vae, local_files_only=True).to(
            device
        )
    except OSError as error:  # how diffusers reports missing or unreadable files
        message = " ".join(str(error).split())
        raise ValueError(f"cannot load the VAE and text encoder in {folder}: {message}") from error
    return vae, pipe


def build_latent_dataset(
    out_dir: str | os.PathLike,
    videos: Sequence[str | os.PathLike | Tensor],
    vae: torch.nn.Module,
    *,
    prompts: Sequence[str] | None = None,
    pipeline: Any = None,
    prompt_embeds: Sequence[Tensor] | None = None,
    conditioning: Sequence[Mapping[str, Tensor]] | None = None,
    family: FamilyAdapter | None = None,
    num_frames: int = 81,
    height: int = 480,
    width: int = 832,
    max_sequence_length: int | None = None,
    shard_size: int = 64,
) -> Path:
    """Encode videos (files or uint8 [F, H, W, 3] tensors) with the family's VAE (:func:`encode_video`)
    and pair them with prompt embeddings: given precomputed ([L, D] each, with ``conditioning``, one
    mapping per video of the other tensors the family's transformer takes, as :func:`encode_prompt` names
    them: HunyuanVideo needs ``pooled_prompt_embeds``), or ``prompts`` encoded by ``pipeline.encode_prompt``
    with that conditioning (:func:`encode_prompt`, padded to ``max_sequence_length``, default the
    pipeline's inference length). ``family``: default the pipeline's (by its class), or Wan's without one.
    Writes a dataset folder."""
    if (prompt_embeds is None) == (prompts is None):
        raise ValueError("pass exactly one of prompts (with pipeline) and prompt_embeds")
    if len(prompt_embeds if prompt_embeds is not None else prompts) != len(videos):
        raise ValueError("need one prompt per video")
    if conditioning is not None:
        if prompt_embeds is None:
            raise ValueError("conditioning goes with prompt_embeds; prompts are encoded with their own")
        if len(conditioning) != len(videos):
            raise ValueError(
                f"need one conditioning mapping per video: {len(conditioning)} for {len(videos)}"
            )
        for index, mapping in enumerate(conditioning):
            for name, value in mapping.items():
                if not isinstance(value, Tensor):
                    raise ValueError(
                        f"conditioning[{index}][{name!r}] must be a tensor, not {type(value).__name__}"
                    )
    if prompts is not None and pipeline is None:
        raise ValueError("encoding prompts needs the pipeline (load_encoders)")
    if family is None:
        family = (
            WAN
            if pipeline is None
            else _family_of_pipeline(type(pipeline).__name__, f"pipeline {type(pipeline).__name__}")
        )

    def embed(index: int) -> tuple[Tensor, dict[str, Tensor]]:
        if prompt_embeds is not None:
            return prompt_embeds[index], dict(conditioning[index]) if conditioning is not None else {}
        return encode_prompt(pipeline, prompts[index], max_sequence_length)

    def samples() -> Iterable[tuple[Tensor, Tensor, dict[str, Tensor]]]:
        for index, video in enumerate(videos):
            frames = video if isinstance(video, Tensor) else read_video(video)
            prepared = prepare_video(frames, num_frames, height, width, family.temporal_compression)
            yield encode_video(vae, prepared, family), *embed(index)

    return write_latent_dataset(out_dir, samples(), shard_size)


def build_dataset_from_folder(
    model_folder: str | os.PathLike,
    out_dir: str | os.PathLike,
    videos: Sequence[str | os.PathLike | Tensor],
    prompts: Sequence[str],
    *,
    num_frames: int,
    height: int,
    width: int,
    shard_size: int = 64,
    device: str = "cpu",
) -> Path:
    """``rehyat build-dataset``: the videos and prompts encoded with a local pipeline folder of any family
    (:func:`load_encoders`) into a dataset folder that stage 2 trains that family on. The folder's
    family and the video size its VAE and transformer take are checked before anything is loaded."""
    family = pipeline_family(model_folder)
    check_video_size(model_folder, num_frames, height, width)
    vae, pipe = load_encoders(model_folder, device)
    return build_latent_dataset(
        out_dir,
        videos,
        vae,
        prompts=prompts,
        pipeline=pipe,
        family=family,
        num_frames=num_frames,
        height=height,
        width=width,
        shard_size=shard_size,
    )
