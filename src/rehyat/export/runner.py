"""Running an exported step on its runtime, with numpy arrays in and out — no PyTorch model involved.

:class:`ExportedStep` opens an export folder (``manifest.json`` + graphs) on ONNX Runtime or ExecuTorch
and drives a whole latent video through it chunk by chunk, carrying every block's state (numpy arrays)
from one chunk to the next: the analogue of :func:`rehyat.recurrent_forward` outside PyTorch. Nothing
here calls PyTorch: ExecuTorch's Python bindings take and return ``torch.Tensor`` containers, so that
backend only wraps the numpy arrays (no copy) and unwraps the results.

**An export is opened whole or not at all** (:func:`read_manifest`): every graph the manifest names must
lie inside the folder (no absolute path, ``..`` or link out of it) and have the sha256 the manifest
records, so graphs of another export (a re-export killed midway by an older version, files copied in)
are refused rather than run under this manifest. A graph's bytes are checked again when its session is
made from them, so a folder replaced after it was opened is refused too.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rehyat.models.checkpoint import read_json_object

MANIFEST = "manifest.json"
FORMAT = "rehyat-export"
#: 2: each graph entry records the sha256 of its file.
FORMAT_VERSION = 2
_DTYPES = {"float32": np.float32, "int64": np.int64, "float16": np.float16}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def graph_path(folder: Path, manifest: dict[str, Any], name: str) -> Path:
    """The file of graph ``name``, which must lie inside ``folder`` (ValueError naming the manifest)."""
    file = manifest["graphs"][name].get("file")
    where = f"{folder / MANIFEST}: graph {name!r}"
    if not isinstance(file, str) or not file or Path(file).is_absolute():
        raise ValueError(f"{where} has file {file!r}, a path outside the folder or none")
    path = folder / file
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{where} has file {file!r}, which resolves outside the folder ({path.resolve()})")
    if not path.is_file():
        raise ValueError(f"{where}: its file {path} is missing")
    return path


def graph_bytes(folder: Path, manifest: dict[str, Any], name: str) -> bytes:
    """The bytes of graph ``name``, checked against the sha256 its manifest entry records."""
    path = graph_path(folder, manifest, name)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["graphs"][name]["sha256"]:
        raise ValueError(
            f"{path} does not have the sha256 that {folder / MANIFEST} records: it belongs to another "
            "export (the folder was changed or replaced after this manifest was written); export again"
        )
    return data


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the export folder ``folder``, with every graph checked: inside the folder and of
    the recorded sha256 (ValueError naming the file otherwise)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} is not an export folder (no {MANIFEST})")
    manifest = read_json_object(path)
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} v{FORMAT_VERSION} manifest (format={manifest.get('format')!r}, "
            f"version={manifest.get('version')!r}); exports older than v{FORMAT_VERSION} record no graph "
            "hashes: export again"
        )
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise ValueError(f"{path}: graphs must be a non-empty JSON object")
    hashes: dict[Path, str] = {}
    for name, entry in graphs.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ValueError(f"{path}: graph {name!r} must be an object with a file and its sha256")
        file = graph_path(folder, manifest, name)
        hashes.setdefault(file, file_sha256(file))
        if hashes[file] != entry["sha256"]:
            raise ValueError(
                f"{file} does not have the sha256 that {path} records for graph {name!r}: it belongs to "
                "another export (the folder was changed after this manifest was written); export again"
            )
    return manifest


class _OnnxRuntime:
    def __init__(self, folder: Path, manifest: dict[str, Any], threads: int | None) -> None:
        import onnxruntime

        self._onnxruntime = onnxruntime
        self._folder, self._manifest, self._threads = folder, manifest, threads
        self._sessions: dict[str, Any] = {}

    def _session(self, name: str):
        if name not in self._sessions:
            options = self._onnxruntime.SessionOptions()
            # No memory arena: a session's activations go back between calls, so several chunk graphs
            # held side by side cost their weights, not one activation arena each.
            options.enable_cpu_mem_arena = False
            if self._threads:
                options.intra_op_num_threads = self._threads
                options.inter_op_num_threads = 1
            data = graph_bytes(self._folder, self._manifest, name)  # the bytes the manifest hashed
            self._sessions[name] = self._onnxruntime.InferenceSession(
                data, options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[name]

    def run(self, name: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        session = self._session(name)
        names = [spec["name"] for spec in self._manifest["graphs"][name]["inputs"]]
        return session.run(None, dict(zip(names, inputs, strict=True)))


class _ExecuTorch:
    def __init__(self, folder: Path, manifest: dict[str, Any], threads: int | None) -> None:
        import torch
        from executorch.runtime import Runtime

        # XNNPACK sizes its own thread pool (one thread per core); ``threads`` does not apply here.
        self._torch = torch
        name = next(iter(manifest["graphs"]))  # every method lives in one program file
        self._program = Runtime.get().load_program(str(graph_path(folder, manifest, name)))
        self._methods: dict[str, Any] = {}

    def run(self, name: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if name not in self._methods:
            self._methods[name] = self._program.load_method(name)
        tensors = [self._torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
        return [out.numpy() for out in self._methods[name].execute(tensors)]


_BACKENDS = {"onnxruntime": _OnnxRuntime, "executorch": _ExecuTorch}


@dataclass(frozen=True)
class ChunkResult:
    """One chunk of a video through the runtime: its first post-patch frame, the graph that ran it,
    its output and every block's state after it (:data:`~rehyat.export.step.STATE_FIELDS` per block)."""

    start: int
    graph: str
    output: np.ndarray
    state: list[np.ndarray]


class ExportedStep:
    """An export folder opened on its runtime. ``threads``: the runtime's intra-op threads (default:
    the runtime's own choice)."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        self.manifest = read_manifest(self.folder)
        runtime = self.manifest.get("runtime")
        if runtime not in _BACKENDS:
            raise ValueError(f"{path} names an unknown runtime {runtime!r}")
        self.runtime = runtime
        self._backend = _BACKENDS[runtime](self.folder, self.manifest, threads)

    @property
    def graphs(self) -> dict[str, dict[str, Any]]:
        return self.manifest["graphs"]

    def run(self, graph: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run one graph on ``inputs`` in the order of its manifest entry (shapes and dtypes checked)."""
        if graph not in self.graphs:
            raise ValueError(f"no graph {graph!r} in {self.folder} (it has {sorted(self.graphs)})")
        specs = self.graphs[graph]["inputs"]
        if len(inputs) != len(specs):
            raise ValueError(f"graph {graph} takes {len(specs)} inputs, got {len(inputs)}")
        ready = []
        for spec, array in zip(specs, inputs, strict=True):
            array = np.asarray(array, dtype=_DTYPES[spec["dtype"]])
            expected = spec["shape"]
            if array.ndim != len(expected) or any(
                e is not None and e != a for e, a in zip(expected, array.shape, strict=True)
            ):
                raise ValueError(
                    f"graph {graph} input {spec['name']} must be {spec['shape']}, got {list(array.shape)}"
                )
            ready.append(array)
        return self._backend.run(graph, ready)

    def graph_for(self, start: int, frames: int) -> str:
        """The graph of a chunk of ``frames`` frames starting at post-patch frame ``start``."""
        first, cached = start == 0, min(self.manifest["overlap_frames"], start)
        for name, entry in self.graphs.items():
            if (entry.get("first"), entry.get("cached"), entry.get("frames")) == (first, cached, frames):
                return name
        what = "a first chunk" if first else f"a chunk after {cached} cached frame(s)"
        raise ValueError(
            f"this export has no graph for {what} of {frames} frame(s) (it has {sorted(self.graphs)}): "
            "export it for this video length"
        )

    def chunks(self, latents: np.ndarray, timestep: np.ndarray, context: np.ndarray) -> Iterator[ChunkResult]:
        """Drive a latent video [B, C, F, H, W] through a DiT export chunk by chunk (fresh states),
        yielding each chunk's output and next state."""
        m = self.manifest
        if m["kind"] != "dit":
            raise ValueError(f"{self.folder} holds a {m['kind']} export; whole videos need a 'dit' export")
        latents = np.asarray(latents, dtype=np.float32)
        expected = (m["batch"], m["in_channels"], *m["latent_size"])
        if latents.ndim != 5 or (latents.shape[0], latents.shape[1], *latents.shape[3:]) != expected:
            raise ValueError(
                f"latents must be [B, C, F, H, W] with (B, C, H, W) = {expected}, got {latents.shape}"
            )
        p_t = m["patch_size"][0]
        frames = latents.shape[2] // p_t
        chunk = m["chunk_frames"]
        state: list[np.ndarray] = []
        for start in range(0, frames, chunk):
            n = min(chunk, frames - start)
            graph = self.graph_for(start, n)
            piece = latents[:, :, start * p_t : (start + n) * p_t]
            results = self.run(graph, [piece, timestep, context, np.array([start], dtype=np.int64), *state])
            state = list(results[1:])
            yield ChunkResult(start=start, graph=graph, output=results[0], state=state)

    def forward(self, latents: np.ndarray, timestep: np.ndarray, context: np.ndarray) -> np.ndarray:
        """The model output for a whole latent video: :func:`rehyat.recurrent_forward` on the runtime."""
        return np.concatenate([c.output for c in self.chunks(latents, timestep, context)], axis=2)
