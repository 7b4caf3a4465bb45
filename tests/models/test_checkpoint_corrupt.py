"""Corrupt, partial and half-overwritten ReHyAt checkpoint folders: every one is a ValueError that names
the file and the problem, raised before the model changes; an interrupted overwrite keeps the old
checkpoint whole."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from tiny_wan import run, tiny_inputs, tiny_wan

from rehyat import ReHyAtConfig, convert_wan, load_rehyat, save_rehyat
from rehyat.models import converted_blocks, read_rehyat_config
from rehyat.models.checkpoint import ReHyAtCheckpointError

CONFIG = dict(chunk_frames=2, overlap_frames=1, feature_init="random")


@pytest.fixture
def saved(tmp_path):
    tiny_wan().save_pretrained(tmp_path / "base")
    net = convert_wan(WanTransformer3DModel.from_pretrained(tmp_path / "base").eval(), ReHyAtConfig(**CONFIG))
    return save_rehyat(net, tmp_path / "rehyat"), net


def _fresh(folder: Path) -> WanTransformer3DModel:
    return WanTransformer3DModel.from_pretrained(folder.parent / "base").eval()


def _rejected(folder: Path, path: Path, problem: str) -> None:
    """load_rehyat fails with a message naming ``path`` and ``problem``, and leaves the model as it was."""
    model = _fresh(folder)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ReHyAtCheckpointError, match=rf"{re.escape(str(path))}.*{problem}"):
        load_rehyat(model, folder)
    assert converted_blocks(model) == [] and model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_checkpoint_error_is_a_value_error():
    assert issubclass(ReHyAtCheckpointError, ValueError)


def test_truncated_missing_or_garbage_weights_name_the_file(saved):
    folder, _ = saved
    weights = folder / "rehyat.safetensors"
    data = weights.read_bytes()
    for damaged in (data[: len(data) // 2], data[:4], b"", b"not a safetensors file at all"):
        weights.write_bytes(damaged)
        _rejected(folder, weights, "damaged or truncated")
    weights.unlink()
    _rejected(folder, weights, "missing")


def test_truncated_base_weights_name_the_file(tmp_path):
    net = convert_wan(tiny_wan(), ReHyAtConfig(**CONFIG))
    folder = save_rehyat(net, tmp_path / "ckpt", include_base_weights=True)
    base = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    base.write_bytes(base.read_bytes()[:100])
    with pytest.raises(ReHyAtCheckpointError, match=rf"{re.escape(str(base))}.*damaged or truncated"):
        load_rehyat(tiny_wan(), folder)
    base.unlink()
    with pytest.raises(ReHyAtCheckpointError, match=rf"{re.escape(str(base))}.*missing"):
        load_rehyat(tiny_wan(), folder)


@pytest.mark.parametrize(
    "text,problem",
    [
        ('{"format": "rehyat", "format_', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2, 3]", "JSON object"),
        ("null", "JSON object"),
    ],
)
def test_malformed_config_json_names_the_file(saved, text, problem):
    folder, _ = saved
    path = folder / "rehyat_config.json"
    path.write_text(text)
    with pytest.raises(ReHyAtCheckpointError, match=rf"{re.escape(str(path))}.*{problem}"):
        read_rehyat_config(folder)
    _rejected(folder, path, problem)


def test_config_json_that_is_not_utf8_names_the_file(saved):
    folder, _ = saved
    path = folder / "rehyat_config.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    _rejected(folder, path, "not valid JSON")


@pytest.mark.parametrize("key", ["config", "converted_blocks", "model", "base_weights", "architecture"])
def test_missing_config_key_names_the_file_and_key(saved, key):
    folder, _ = saved
    path = folder / "rehyat_config.json"
    meta = json.loads(path.read_text())
    del meta[key]
    path.write_text(json.dumps(meta))
    with pytest.raises(ReHyAtCheckpointError, match=rf"{re.escape(str(path))}.*{key}"):
        read_rehyat_config(folder)
    _rejected(folder, path, key)


@pytest.mark.parametrize(
    "edit,problem",
    [
        (lambda meta: {"model": {}}, "model lacks"),  # skipped the dimension check
        (lambda meta: {"model": {"num_layers": 2}}, "model lacks"),
        (lambda meta: {"model": [2, 2, 12]}, "model must be"),
        (lambda meta: {"model": {**meta["model"], "heads": 2}}, "unknown"),
        (lambda meta: {"config": "fast"}, "config must be"),
        (lambda meta: {"config": {"chunk_frames": 0}}, "chunk_frames must be >= 1"),
        (lambda meta: {"config": {"chunk": 2}}, "unknown ReHyAtConfig fields"),
        (lambda meta: {"converted_blocks": "all"}, "converted_blocks must be"),
        (lambda meta: {"converted_blocks": [0, "1"]}, "converted_blocks must be"),
        (lambda meta: {"base_weights": "no"}, "base_weights must be"),
        (lambda meta: {"architecture": None}, "architecture must be"),
    ],
)
def test_malformed_config_fields_name_the_file(saved, edit, problem):
    folder, _ = saved
    path = folder / "rehyat_config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, **edit(meta)}))
    _rejected(folder, path, problem)


def test_empty_model_section_no_longer_skips_the_dimension_check(saved):
    """ "model": {} loaded into a model with another patch size (the φ shapes do not show it)."""
    folder, _ = saved
    path = folder / "rehyat_config.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "model": {}}))
    other = tiny_wan(patch_size=(1, 1, 1))
    with pytest.raises(ReHyAtCheckpointError, match=rf"{re.escape(str(path))}.*model lacks"):
        load_rehyat(other, folder)
    assert converted_blocks(other) == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_phi_is_rejected(saved, bad):
    folder, _ = saved
    weights = folder / "rehyat.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[1]
    tensors[name].view(-1)[3] = bad
    save_file(tensors, weights)
    _rejected(folder, weights, rf"{re.escape(name)} has non-finite values")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_phi_is_rejected(saved, dtype):
    folder, _ = saved
    weights = folder / "rehyat.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].round().to(dtype)
    save_file(tensors, weights)
    _rejected(folder, weights, rf"{re.escape(name)} has dtype {str(dtype).removeprefix('torch.')}")


def test_half_precision_phi_still_loads(saved):
    """Floating φ of another dtype is fine: load_state_dict casts it to the model's dtype."""
    folder, net = saved
    weights = folder / "rehyat.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights)
    loaded = load_rehyat(_fresh(folder), folder)
    assert converted_blocks(loaded) == converted_blocks(net)


def _bump_phi(net: WanTransformer3DModel) -> None:
    with torch.no_grad():
        next(iter(net.blocks[0].attn1.rehyat_phi_q.parameters())).add_(1.0)


def test_an_overwrite_interrupted_before_the_config_keeps_the_old_checkpoint(saved, monkeypatch):
    """The process dies as rehyat_config.json is moved into place, after the new φ was written: the
    folder must still load the old checkpoint whole (it loaded new φ under the old JSON)."""
    folder, net = saved
    inputs = tiny_inputs()
    before = run(load_rehyat(_fresh(folder), folder), *inputs)
    _bump_phi(net)
    real_replace = os.replace

    def dies_at_the_config(src, dst, *args, **kwargs):
        if Path(dst).name == "rehyat_config.json":
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dies_at_the_config)
    with pytest.raises(KeyboardInterrupt):
        save_rehyat(net, folder)
    monkeypatch.undo()
    assert torch.equal(run(load_rehyat(_fresh(folder), folder), *inputs), before)
    assert sorted(p.name for p in folder.iterdir()) == ["rehyat.safetensors", "rehyat_config.json"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["base", "rehyat"]  # nothing left behind

    save_rehyat(net, folder)  # and the next save goes through
    assert torch.equal(run(load_rehyat(_fresh(folder), folder), *inputs), run(net, *inputs))


def test_a_failed_swap_puts_the_old_checkpoint_back(saved, monkeypatch):
    """The new folder cannot be moved in after the old one was moved aside: the old one comes back."""
    folder, net = saved
    inputs = tiny_inputs()
    before = run(load_rehyat(_fresh(folder), folder), *inputs)
    _bump_phi(net)
    real_rename = os.rename

    def fails_moving_in(src, dst):
        if Path(dst) == folder and ".new." in Path(src).name:
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", fails_moving_in)
    with pytest.raises(OSError, match="disk full"):
        save_rehyat(net, folder)
    monkeypatch.undo()
    assert torch.equal(run(load_rehyat(_fresh(folder), folder), *inputs), before)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["base", "rehyat"]


def test_a_folder_left_aside_by_a_killed_swap_is_named(saved):
    """Killed between moving the old folder aside and the new one in: loading says where both are."""
    folder, _ = saved
    aside = folder.parent / ".rehyat.old.abc123"
    folder.rename(aside)
    with pytest.raises(ReHyAtCheckpointError, match=re.escape(str(aside))):
        load_rehyat(_fresh(folder), folder)


def test_overwrite_keeps_files_it_does_not_write(saved):
    folder, net = saved
    (folder / "notes.txt").write_text("kept")
    (folder / "samples").mkdir()
    (folder / "samples" / "a.gif").write_bytes(b"GIF89a")
    _bump_phi(net)
    save_rehyat(net, folder)
    assert (folder / "notes.txt").read_text() == "kept"
    assert (folder / "samples" / "a.gif").read_bytes() == b"GIF89a"
    inputs = tiny_inputs()
    assert torch.equal(run(load_rehyat(_fresh(folder), folder), *inputs), run(net, *inputs))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["base", "rehyat"]


def test_save_into_a_file_is_rejected(saved, tmp_path):
    _, net = saved
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        save_rehyat(net, tmp_path / "file")


def test_a_checkpoint_written_before_the_checks_still_loads(saved):
    """The JSON layout is unchanged: a folder as the previous save_rehyat wrote it (json.dumps with
    indent 2, no trailing newline, no extra keys) loads and runs as before."""
    folder, net = saved
    path = folder / "rehyat_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2))
    inputs = tiny_inputs()
    assert torch.equal(run(load_rehyat(_fresh(folder), folder), *inputs), run(net, *inputs))


def test_overwrite_through_a_symlink_or_dot_replaces_the_real_folder(saved, monkeypatch):
    folder, net = saved
    link = folder.parent / "link"
    link.symlink_to(folder, target_is_directory=True)
    _bump_phi(net)
    assert save_rehyat(net, link) == link
    assert link.is_symlink() and link.resolve() == folder.resolve()
    inputs = tiny_inputs()
    assert torch.equal(run(load_rehyat(_fresh(folder), link), *inputs), run(net, *inputs))
    monkeypatch.chdir(folder)
    _bump_phi(net)
    save_rehyat(net, ".")
    assert torch.equal(run(load_rehyat(_fresh(folder), folder), *inputs), run(net, *inputs))
    assert sorted(p.name for p in folder.parent.iterdir()) == ["base", "link", "rehyat"]
