"""Resume: a run killed mid-way (SIGKILL, in a subprocess; see killed_finetune.py) continues onto the
uninterrupted loss curve; damaged or mismatched checkpoints stop a run with a clear error before anything
is written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from finetune_helpers import damage_data_behind_header, tiny_config, tiny_dataset, tiny_overrides
from safetensors.torch import load_file

from rehyat.training.checkpoint import CheckpointError, latest_checkpoint
from rehyat.training.finetune import finetune
from rehyat.training.metrics import read_metrics

RUN = {"steps": 6, "ema_decay": 0.8, "grad_accumulation": 2}
KILLED_FINETUNE = Path(__file__).with_name("killed_finetune.py")


@pytest.fixture
def single_thread():
    """The killed subprocess runs with one thread; so do the in-process runs, for bitwise-equal sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_run_resumes_onto_the_uninterrupted_curve(tmp_path, single_thread):
    data = tiny_dataset(tmp_path / "data")
    finetune(tiny_config(tmp_path / "reference", data, **RUN))
    reference = read_metrics(tmp_path / "reference")

    run = tmp_path / "run"
    killed = subprocess.run(
        [
            sys.executable,
            str(KILLED_FINETUNE),
            "5",  # SIGKILL once step 5 is logged: after the step-4 checkpoint, before the step-6 one
            "finetune",
            "--set",
            *tiny_overrides(run, data, **RUN),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert latest_checkpoint(run / "checkpoints").name == "step-00000004"
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]  # step 5 is lost with the process

    finetune(tiny_config(run, data, **RUN))
    resumed = read_metrics(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]
    assert [r["grad_norm"] for r in resumed] == [r["grad_norm"] for r in reference]
    for folder in ("final", "final-ema"):
        for name in ("rehyat.safetensors", "transformer/diffusion_pytorch_model.safetensors"):
            ours, theirs = load_file(run / folder / name), load_file(tmp_path / "reference" / folder / name)
            assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_damaged_or_mismatched_checkpoint_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    finetune(tiny_config(run, data, steps=2))
    before = _snapshot(run)

    with pytest.raises(CheckpointError, match="does not match the model"):
        finetune(
            tiny_config(run, data, steps=4, **{"model.rehyat": '{"chunk_frames": 2, "feature_layers": 1}'})
        )
    with pytest.raises(CheckpointError, match="was made with ReHyAt config"):
        finetune(tiny_config(run, data, steps=4, **{"model.rehyat": '{"chunk_frames": 3}'}))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        finetune(tiny_config(run, data, steps=4, resume="false"))
    weights = latest_checkpoint(run / "checkpoints") / "model.safetensors"
    weights.write_bytes(before[weights][:-100])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        finetune(tiny_config(run, data, steps=4))
    weights.write_bytes(before[weights])
    assert _snapshot(run) == before


def test_staging_left_by_a_killed_save_is_removed_on_start(tmp_path):
    data, run = tiny_dataset(tmp_path / "data"), tmp_path / "run"
    finetune(tiny_config(run, data, steps=2))
    checkpoints = run / "checkpoints"
    (checkpoints / ".step-00000004.k1ll3d").mkdir()  # save_checkpoint's staging folder
    (checkpoints / ".step-00000004.k1ll3d" / "model.safetensors").write_bytes(b"half")
    (checkpoints / ".latest.x7.tmp").write_text("step-00000004\n")  # atomic_write's temp file
    (run / ".config.json.q9.tmp").write_text("{")
    finetune(tiny_config(run, data, steps=3))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-00000002", "step-00000003"]
    assert not list(run.glob(".*"))


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one_when_asked(tmp_path, single_thread):
    data, run = tiny_dataset(tmp_path / "data"), tmp_path / "run"
    every = {"checkpoint_every": 1, "keep_checkpoints": 3}
    finetune(tiny_config(tmp_path / "reference", data, steps=4, **every))
    finetune(tiny_config(run, data, steps=3, **every))
    checkpoints = run / "checkpoints"
    damage_data_behind_header(checkpoints / "step-00000003" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"holds non-finite values.*Set resume_fallback=true"):
        finetune(tiny_config(run, data, steps=4, **every))

    with pytest.warns(
        RuntimeWarning, match=r"resuming from step-00000002 .*set aside \['damaged-step-00000003'\]"
    ):
        finetune(tiny_config(run, data, steps=4, resume_fallback="true", **every))
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["damaged-step-00000003", "latest", "step-00000002", "step-00000003", "step-00000004"]
    resumed, reference = read_metrics(run), read_metrics(tmp_path / "reference")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]  # steps 3 and 4 trained again

    (checkpoints / "latest").unlink()  # folders without a pointer: never a silent fresh start
    with pytest.raises(CheckpointError, match=r"holds checkpoint folders .* but no latest pointer"):
        finetune(tiny_config(run, data, steps=5, **every))


def test_resuming_with_another_config_is_refused_unless_allowed_and_both_configs_are_kept(tmp_path):
    import json

    from rehyat.cli import main

    data, run = tiny_dataset(tmp_path / "data"), tmp_path / "run"
    finetune(tiny_config(run, data, steps=2))
    before = _snapshot(run)
    changed = {"seed": 1, "optim.lr": 2e-3}
    with pytest.raises(
        ValueError, match=r"optim\.lr 0\.001 -> 0\.002, seed 0 -> 1\..*allow_config_change=true"
    ):
        finetune(tiny_config(run, data, steps=3, **changed))
    with pytest.raises(ValueError, match=r"data\.micro_batch_size 1 -> 2"):
        finetune(tiny_config(run, data, steps=3, **{"data.micro_batch_size": 2}))
    assert _snapshot(run) == before

    assert (
        main(["finetune", "--set", *tiny_overrides(run, data, steps=3, **changed), "--allow-config-change"])
        == 0
    )
    config = json.loads((run / "config.json").read_text())
    (previous,) = run.glob("config.*.json")
    old = json.loads(previous.read_text())
    assert (config["seed"], config["optim"]["lr"], old["seed"], old["optim"]["lr"]) == (1, 2e-3, 0, 1e-3)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    finetune(tiny_config(run, data, steps=4, **changed))  # more steps of the same run is no change


def test_a_resumed_run_may_start_its_cooldown_and_decays_from_there(tmp_path):
    data, run = tiny_dataset(tmp_path / "data"), tmp_path / "run"
    finetune(tiny_config(run, data, steps=2))  # constant rate, decay_start null in its config
    finetune(tiny_config(run, data, steps=4, **{"optim.decay_start": 2}))  # no allow_config_change
    lrs = [r["lr"] for r in read_metrics(run)]
    assert lrs[:2] == [lrs[0]] * 2 and lrs[2:] == pytest.approx([lrs[0], lrs[0] / 2])
