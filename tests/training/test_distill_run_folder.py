"""A ``rehyat distill`` run folder is replaced whole: a run that fails, at its checks or midway, leaves
the previous run's folder exactly as it was; a finished run keeps the previous config beside its own;
two runs into one folder do not write at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_teacher import VIDEO, make_teacher_folder

from rehyat.training import distill
from rehyat.training.distill import DistillConfig, run_distillation
from rehyat.utils import FolderBusyError, folder_lock


def _config(root: Path, folder: Path, prompts: Path, **changes) -> DistillConfig:
    options = dict(
        model=str(folder),
        prompts=str(prompts),
        out=str(root / "run"),
        dtype="fp32",
        device="cpu",
        num_inference_steps=2,
        capture_steps=[0],
        variants=["rehyat", "local"],
        **VIDEO,
    )
    return DistillConfig(**{**options, **changes})


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A teacher folder, its prompts and a finished run of it in ``root/run``."""
    root = tmp_path_factory.mktemp("distill")
    folder, prompts = make_teacher_folder(root)
    run_distillation(_config(root, folder, prompts))
    return root, folder, prompts


@pytest.fixture
def previous(finished, tmp_path):
    """A copy of the finished run in a fresh ``tmp_path/run``."""
    import shutil

    root, folder, prompts = finished
    shutil.copytree(root / "run", tmp_path / "run")
    return tmp_path, folder, prompts


def test_blocks_out_of_range_leave_the_previous_run_untouched(previous):
    """blocks=[7] on a 2-block model: refused before anything is written (config.json used to be
    rewritten first, so it no longer matched the report and checkpoint beside it)."""
    root, folder, prompts = previous
    before = _contents(root / "run")
    with pytest.raises(ValueError, match=r"blocks \[7\] out of range for a model with 2 blocks"):
        run_distillation(_config(root, folder, prompts, blocks=[7]))
    assert _contents(root / "run") == before
    assert sorted(p.name for p in root.iterdir()) == ["run"]


def test_an_empty_out_is_refused(tmp_path, monkeypatch):
    folder, prompts = make_teacher_folder(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(ValueError, match="out is empty"):
        run_distillation(_config(tmp_path, folder, prompts, out=""))
    assert list(work.iterdir()) == []


def test_a_run_that_fails_midway_leaves_the_previous_run_untouched(previous, monkeypatch):
    root, folder, prompts = previous
    before = _contents(root / "run")

    def fails(*args, **kwargs):
        raise RuntimeError("killed while merging")

    monkeypatch.setattr(distill, "_merge", fails)
    with pytest.raises(RuntimeError, match="killed while merging"):
        run_distillation(_config(root, folder, prompts, lr=5e-3))
    assert _contents(root / "run") == before
    assert sorted(p.name for p in root.iterdir()) == ["run"]  # no staging folder or lock left


def test_a_finished_run_replaces_the_folder_and_keeps_the_previous_config(previous):
    root, folder, prompts = previous
    out = root / "run"
    old_config = (out / "config.json").read_text()
    (out / "blocks" / "block-005.json").write_text("{}")  # a block of an earlier, larger run
    (out / "notes.md").write_text("mine")
    run_distillation(_config(root, folder, prompts, lr=5e-3, blocks=[1]))
    assert json.loads((out / "config.json").read_text())["lr"] == 5e-3
    kept = list(out.glob("config.*.json"))
    assert len(kept) == 1 and kept[0].read_text() == old_config
    assert sorted(p.name for p in (out / "blocks").iterdir()) == ["block-001.json", "block-001.safetensors"]
    assert json.loads((out / "ranking.json").read_text())["block_ranking"] == [1]
    assert (out / "notes.md").read_text() == "mine"
    assert sorted(p.name for p in root.iterdir()) == ["run"]


def test_a_run_into_a_folder_being_written_is_refused(previous):
    root, folder, prompts = previous
    before = _contents(root / "run")
    with folder_lock(root / "run"), pytest.raises(FolderBusyError, match="another process"):
        run_distillation(_config(root, folder, prompts))
    assert _contents(root / "run") == before
