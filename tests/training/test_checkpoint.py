"""Checkpoints: exact resume, atomic writes, clear errors for damaged or mismatched checkpoints."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import damage_data_behind_header

from rehyat.training import checkpoint as ckpt
from rehyat.training.checkpoint import (
    CheckpointError,
    NonFiniteError,
    check_model_state,
    latest_checkpoint,
    load_checkpoint,
    restore_optimizer,
    restore_rng,
    save_checkpoint,
)


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    return model, optimizer


def _train(model, optimizer, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4)  # data drawn from the global generator, which the checkpoint restores
        loss = (model(x) - x[:, :2].sin()).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    model, optimizer = _setup()
    uninterrupted = _train(model, optimizer, 10)

    model, optimizer = _setup()
    first = _train(model, optimizer, 4)
    save_checkpoint(tmp_path, 4, model.state_dict(), optimizer, metadata={"run": "test"})
    del model, optimizer  # the "killed" process

    model, optimizer = _setup(seed=123)  # a new process starts from different weights and rng
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    check_model_state(loaded, model.state_dict())
    model.load_state_dict(loaded.model)
    restore_optimizer(optimizer, loaded)
    restore_rng(loaded)
    assert loaded.step == 4 and loaded.metadata == {"run": "test"}
    assert first + _train(model, optimizer, 6) == uninterrupted


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, optimizer = _setup()
    _train(model, optimizer, 1)
    save_checkpoint(tmp_path, 1, model.state_dict(), optimizer)
    real_save = ckpt.save_file

    def dying_save(tensors, filename):
        if filename.name == "optimizer.safetensors":
            raise KeyboardInterrupt  # killed half-way through the second checkpoint
        real_save(tensors, filename)

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model.state_dict(), optimizer)
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    assert load_checkpoint(latest_checkpoint(tmp_path)).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001"]


def test_keeps_only_the_newest(tmp_path):
    model, optimizer = _setup()
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, model.state_dict(), optimizer, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(tmp_path).name == "step-00000004"


def test_damaged_and_mismatched_checkpoints_raise(tmp_path):
    model, optimizer = _setup()
    _train(model, optimizer, 1)
    path = save_checkpoint(tmp_path, 1, model.state_dict(), optimizer)
    other = torch.nn.Linear(4, 3)
    with pytest.raises(CheckpointError, match="does not match the model"):
        check_model_state(load_checkpoint(path), other.state_dict())
    wrong_shape = {k: torch.zeros(1) for k in model.state_dict()}
    with pytest.raises(CheckpointError, match="has shape"):
        check_model_state(load_checkpoint(path), wrong_shape)

    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is damaged or truncated"):
        load_checkpoint(path)
    (path / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"state\.json is missing"):
        load_checkpoint(path)
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_non_finite_tensors_are_never_saved_and_never_loaded(tmp_path):
    model, optimizer = _setup()
    _train(model, optimizer, 1)
    save_checkpoint(tmp_path, 1, model.state_dict(), optimizer, keep=1)
    broken = {k: v.clone() for k, v in model.state_dict().items()}
    broken["2.bias"][0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"step 2: model tensor 2\.bias holds non-finite values"):
        save_checkpoint(tmp_path, 2, broken, optimizer, keep=1)
    with pytest.raises(NonFiniteError, match=r"extra 'ema' tensor 2\.bias"):
        save_checkpoint(tmp_path, 2, model.state_dict(), optimizer, keep=1, extra={"ema": broken})
    optimizer.state[optimizer.param_groups[0]["params"][0]]["exp_avg_sq"][0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"optimizer tensor 0\.exp_avg_sq"):
        save_checkpoint(tmp_path, 2, model.state_dict(), optimizer, keep=1)
    # Nothing was written and keep=1 rotated nothing out: the finite checkpoint is still the latest.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000001"]
    assert load_checkpoint(latest_checkpoint(tmp_path)).step == 1

    damage_data_behind_header(tmp_path / "step-00000001" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"step-00000001: model\.safetensors holds non-finite values"):
        load_checkpoint(tmp_path / "step-00000001")


def test_latest_may_only_name_a_checkpoint_of_its_own_folder(tmp_path):
    model, optimizer = _setup()
    other = save_checkpoint(tmp_path / "other", 3, model.state_dict(), optimizer)
    run = tmp_path / "run" / "checkpoints"
    save_checkpoint(run, 1, model.state_dict(), optimizer)
    (run / "step-00000009").symlink_to(other)
    pointers = [str(other), "../../other/step-00000003", "step-00000001/../../../other/step-00000003"]
    for pointer in [*pointers, "step-00000009", ""]:
        (run / "latest").write_text(pointer + "\n")
        with pytest.raises(CheckpointError, match=r"is not the name of a checkpoint folder in"):
            latest_checkpoint(run)
    (run / "latest").write_text("step-00000001\n")
    assert latest_checkpoint(run) == run / "step-00000001"
