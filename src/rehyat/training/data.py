"""Stage-2 data: a folder of (video latent, prompt embedding) pairs in safetensors shards.

Layout::

    index.json              {"format": "rehyat-latents", "version": 1, "latent_shape": [C, T, H, W],
                             "prompt_shape": [L, D], "samples": N,
                             "shards": [{"file": "shard-00000.safetensors", "samples": n}, ...]}
    shard-00000.safetensors "latents" [n, C, T, H, W], "prompt_embeds" [n, L, D]

Latents are the Wan VAE's, normalised as WanPipeline does ((z − latents_mean) / latents_std); prompt
embeddings are the UMT5 encoder's last hidden state, zero-padded to L tokens as WanPipeline pads them.
All samples share one shape, so batches are plain stacks. Shards are written first and ``index.json``
last, so a folder with an index is complete. :class:`SampleOrder` maps a training step to the samples
each rank reads, as a pure function of (seed, step): a resumed run needs no data-loader state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from rehyat.training.checkpoint import _atomic_write_text

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
        if not index["shards"] or index["samples"] < 1:
            raise ValueError(f"dataset {self.path} holds no samples")
        self._handles: list[Any] = []
        self._starts: list[int] = []
        total = 0
        for shard in index["shards"]:
            self._starts.append(total)
            self._handles.append(self._open_shard(shard["file"], shard["samples"]))
            total += shard["samples"]
        if total != index["samples"]:
            raise ValueError(f"{index_path} lists {index['samples']} samples but its shards hold {total}")
        self._len = total

    def _open_shard(self, name: str, samples: int) -> Any:
        file = self.path / name
        if not file.is_file():
            raise ValueError(f"dataset shard {file} is missing")
        try:
            handle = safe_open(str(file), framework="pt")
        except (SafetensorError, OSError) as error:
            raise ValueError(f"dataset shard {file} is damaged or truncated ({error})") from error
        expected = {"latents": (samples, *self.latent_shape), "prompt_embeds": (samples, *self.prompt_shape)}
        for key, shape in expected.items():
            if key not in handle.keys():  # noqa: SIM118 - safe_open handles have no __contains__
                raise ValueError(f"dataset shard {file} has no tensor {key!r}")
            found = tuple(handle.get_slice(key).get_shape())
            if found != shape:
                raise ValueError(f"dataset shard {file}: {key} has shape {found}, the index says {shape}")
        return handle

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """(latent [C, T, H, W], prompt embedding [L, D]) of sample ``index``."""
        if not 0 <= index < self._len:
            raise IndexError(f"sample {index} is out of range for {self._len} samples")
        shard = max(i for i, start in enumerate(self._starts) if start <= index)
        row = index - self._starts[shard]
        handle = self._handles[shard]
        return tuple(handle.get_slice(key)[row : row + 1][0] for key in KEYS)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Stacked (latents [B, C, T, H, W], prompt embeddings [B, L, D]) of the given samples."""
        latents, prompts = zip(*(self[i] for i in indices), strict=True)
        return torch.stack(latents), torch.stack(prompts)


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
    out_dir: str | os.PathLike, samples: Iterable[tuple[Tensor, Tensor]], shard_size: int = 64
) -> Path:
    """Write (latent [C, T, H, W], prompt embedding [L, D]) pairs as a dataset folder; returns it.

    Samples are streamed into shards of ``shard_size``; the index is written last. Refuses a folder
    that already holds a dataset, so an existing one is never overwritten.
    """
    out = Path(out_dir)
    if (out / INDEX).exists():
        raise ValueError(f"{out} already holds a dataset ({INDEX} exists); choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    pending: list[tuple[Tensor, Tensor]] = []

    def flush() -> None:
        name = f"shard-{len(shards):05d}.safetensors"
        tensors = {key: torch.stack([s[i] for s in pending]).contiguous() for i, key in enumerate(KEYS)}
        save_file(tensors, str(out / name))
        shards.append({"file": name, "samples": len(pending)})
        pending.clear()

    for number, (latent, prompt) in enumerate(samples):
        if latent.dim() != 4 or prompt.dim() != 2:
            raise ValueError(
                f"sample {number}: expected latent [C, T, H, W] and prompt embedding [L, D], "
                f"got {tuple(latent.shape)} and {tuple(prompt.shape)}"
            )
        shape = (tuple(latent.shape), tuple(prompt.shape))
        if shapes is None:
            shapes = shape
        elif shape != shapes:
            raise ValueError(
                f"sample {number} has latent {shape[0]} and prompt {shape[1]}, but sample 0 has "
                f"{shapes[0]} and {shapes[1]}: all samples of a dataset share one shape"
            )
        pending.append((latent.detach().cpu(), prompt.detach().cpu()))
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
        "samples": sum(s["samples"] for s in shards),
        "shards": shards,
    }
    _atomic_write_text(out / INDEX, json.dumps(index, indent=2) + "\n")
    return out
