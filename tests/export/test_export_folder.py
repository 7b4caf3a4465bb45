"""Export folders are replaced whole and opened only whole: a failed re-export leaves the old export as
it was, every graph the manifest names lies inside the folder and has the bytes the manifest hashed, and
two exports into one folder do not write at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from rehyat import ReHyAtConfig, convert_wan
from rehyat.export import ExportedStep, export_dit_step, exporter
from rehyat.models.wan_configs import tiny_wan_config
from rehyat.utils import FolderBusyError, folder_lock

pytest.importorskip("onnxruntime")

SIZE, TEXT, FRAMES = 8, 6, 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = WanTransformer3DModel(**tiny_wan_config(num_layers=1)).eval()
    return convert_wan(net, ReHyAtConfig(chunk_frames=2, overlap_frames=1, feature_init="random")).eval()


def _export(model, folder: Path, **options) -> Path:
    return export_dit_step(
        model, folder, num_frames=FRAMES, height=SIZE, width=SIZE, text_tokens=TEXT, **options
    )


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def pristine(model, tmp_path_factory):
    return _export(model, tmp_path_factory.mktemp("pristine") / "export")


@pytest.fixture
def export(pristine, tmp_path):
    """An fp32 export in ``tmp_path/export`` (a copy: each test may damage its own)."""
    return Path(shutil.copytree(pristine, tmp_path / "export"))


def _forward(folder: Path) -> np.ndarray:
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, FRAMES, SIZE, SIZE, generator=gen).numpy()
    context = torch.randn(1, TEXT, 32, generator=gen).numpy()
    return ExportedStep(folder).forward(latents, np.array([500.0], dtype=np.float32), context)


def test_a_failed_re_export_leaves_the_old_export_whole(model, export, monkeypatch):
    """An int8 re-export fails after writing its graphs, before its manifest: the fp32 export stays as
    it was, with no int8 graph beside its fp32 ones."""
    before = _contents(export)

    def fails(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(exporter, "atomic_write_json", fails)
    with pytest.raises(KeyboardInterrupt):
        _export(model, export, weights="int8")
    monkeypatch.undo()
    assert _contents(export) == before
    assert sorted(p.name for p in export.parent.iterdir()) == ["export"]  # nothing left beside it


def test_a_re_export_replaces_every_graph(model, export):
    """A re-export that writes fewer graphs leaves none of the old ones behind."""
    (export / "step_stale.onnx").write_bytes(b"old graph")
    _export(model, export, weights="int8")
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["weights"] == "int8"
    assert sorted(p.name for p in export.iterdir()) == sorted(
        ["manifest.json", *(g["file"] for g in manifest["graphs"].values())]
    )


def test_the_manifest_records_each_graphs_hash_and_the_runner_checks_it(export):
    import hashlib

    manifest = json.loads((export / "manifest.json").read_text())
    for entry in manifest["graphs"].values():
        assert entry["sha256"] == hashlib.sha256((export / entry["file"]).read_bytes()).hexdigest()
    assert np.isfinite(_forward(export)).all()
    graph = export / next(iter(manifest["graphs"].values()))["file"]
    graph.write_bytes(graph.read_bytes() + b"\0")  # another export's graph under this manifest
    with pytest.raises(ValueError, match=rf"{graph}.*sha256"):
        ExportedStep(export)


@pytest.mark.parametrize("escape", ["../elsewhere.onnx", "ABSOLUTE", "sub/../../elsewhere.onnx"])
def test_a_graph_outside_the_folder_is_refused(export, escape):
    manifest_path = export / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = next(iter(manifest["graphs"].values()))
    outside = export.parent / "elsewhere.onnx"
    outside.write_bytes((export / entry["file"]).read_bytes())
    entry["file"] = str(outside) if escape == "ABSOLUTE" else escape
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{manifest_path}.*outside"):
        ExportedStep(export)


def test_a_graph_that_is_a_link_out_of_the_folder_is_refused(export):
    manifest = json.loads((export / "manifest.json").read_text())
    graph = export / next(iter(manifest["graphs"].values()))["file"]
    outside = export.parent / "elsewhere.onnx"
    graph.rename(outside)
    graph.symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        ExportedStep(export)


def test_a_graph_changed_after_opening_is_not_run(export):
    """The folder is replaced after the runner opened it: a graph loaded later is checked against the
    manifest the runner read, and refused rather than run under it."""
    runner = ExportedStep(export)
    manifest = json.loads((export / "manifest.json").read_text())
    name = sorted(manifest["graphs"])[-1]
    graph = export / manifest["graphs"][name]["file"]
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        runner._backend._session(name)


def test_an_export_into_a_folder_being_written_is_refused(model, tmp_path):
    with folder_lock(tmp_path / "export"), pytest.raises(FolderBusyError, match="another process"):
        _export(model, tmp_path / "export")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_export_never_replaces_a_folder_of_other_files(model, tmp_path):
    """The swap replaces the whole folder, so a folder that is not an export (and not empty) is refused
    before anything is written."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match=r"mine.*not an export folder"):
        _export(model, tmp_path / "mine")
    assert _contents(tmp_path / "mine") == {"notes.txt": b"keep"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
