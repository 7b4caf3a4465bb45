"""The toy teacher pipeline on CPU: init, dataset, a few stage-2 steps, a loadable Wan folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rehyat.toy.model import CLIP, TOY_TEACHER_CONFIG, load_text_encoder, write_prompt_file
from rehyat.toy.teacher import assemble_teacher, teacher_finetune_config, train_teacher
from rehyat.toy.world import ToyPrompt
from rehyat.training.checkpoint import latest_checkpoint, load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-step teacher run (its folder: init/, dataset/, train/, teacher/)."""
    out = tmp_path_factory.mktemp("teacher_run")
    config = teacher_finetune_config(out, steps=2, batch=2, lr=1e-3, seed=0)
    config.progress = False
    train_teacher(out, config, clips=4, seed=0)
    return out


def test_train_teacher_makes_a_wan_folder(run, tmp_path):
    from diffusers import WanTransformer3DModel

    teacher = run / "teacher"
    model = WanTransformer3DModel.from_pretrained(teacher / "transformer")
    init = WanTransformer3DModel.from_pretrained(run / "init" / "transformer")
    assert model.config.in_channels == 3 and model.config.num_layers == TOY_TEACHER_CONFIG["num_layers"]
    assert any(not torch.equal(p, init.state_dict()[n]) for n, p in model.state_dict().items())
    assert (teacher / "scheduler" / "scheduler_config.json").is_file()

    encoder = load_text_encoder(teacher)
    prompt = ToyPrompt("red", "circle", "left", "slow", "plain")
    path = write_prompt_file(encoder, [prompt], tmp_path / "prompts.safetensors")
    embeds = load_file(path)["prompt_embeds"]
    assert embeds.shape == (1, 16, TOY_TEACHER_CONFIG["text_dim"])
    with torch.no_grad():
        video = torch.zeros(1, 3, CLIP["num_frames"], CLIP["height"], CLIP["width"])
        out = model(video, torch.tensor([500.0]), embeds, return_dict=False)[0]
    assert out.shape == video.shape


WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def test_the_teacher_is_the_newest_checkpoints_ema(run, tmp_path):
    """assemble_teacher takes the newest checkpoint's EMA: the end of a finished run, the last state of
    a run cut off before its end, and never a final-ema left by an earlier run."""
    shutil.copytree(run, tmp_path, dirs_exist_ok=True)
    checkpoints = tmp_path / "train" / "checkpoints"
    finished = load_file(tmp_path / "teacher" / WEIGHTS)
    final_ema = load_file(tmp_path / "train" / "final-ema" / "diffusion_pytorch_model.safetensors")
    assert finished.keys() == final_ema.keys() and all(
        torch.equal(finished[k], final_ema[k]) for k in finished
    )

    # A stale final-ema (here the initial weights) does not win over the checkpoints.
    shutil.rmtree(tmp_path / "train" / "final-ema")
    shutil.copytree(tmp_path / "init" / "transformer", tmp_path / "train" / "final-ema")
    again = load_file(assemble_teacher(tmp_path) / WEIGHTS)
    assert all(torch.equal(finished[k], again[k]) for k in finished)

    # Cut off after step 1 of 2: the teacher is step 1's EMA, not the finished one.
    (checkpoints / "latest").write_text("step-00000001\n")
    step1 = load_checkpoint(checkpoints / "step-00000001").extra["ema"]
    cut_off = load_file(assemble_teacher(tmp_path) / WEIGHTS)
    assert all(torch.equal(cut_off[k], step1[k].to(cut_off[k].dtype)) for k in step1)
    assert any(not torch.equal(cut_off[k], finished[k]) for k in step1)
    assert (tmp_path / "teacher" / "text_encoder" / "config.json").is_file()

    shutil.rmtree(checkpoints)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        assemble_teacher(tmp_path)


def test_a_bad_init_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="not a teacher folder"):
        config = teacher_finetune_config(tmp_path, steps=1, batch=1, lr=1e-3, seed=0)
        train_teacher(tmp_path, config, clips=2, seed=0, init_from=tmp_path / "missing")
    assert not (tmp_path / "init").exists()


def test_torchrun_trains_the_teacher_on_two_ranks(tmp_path):
    """Under torchrun (gloo on the CPU) both ranks train one DDP job and a teacher comes out."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launch, "-m", "rehyat.cli", "toy", "teacher", "--out", str(tmp_path), "--clips", "4"]
    done = subprocess.run(
        [*command, "--steps", "2", "--batch", "1", "--set", "progress=false"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert load_file(tmp_path / "teacher" / WEIGHTS).keys() == load_file(tmp_path / "init" / WEIGHTS).keys()
    latest = latest_checkpoint(tmp_path / "train" / "checkpoints")
    assert load_checkpoint(latest).metadata["world_size"] == 2  # both ranks trained, as one DDP job


def test_clips_rendered_in_worker_processes_equal_the_serial_ones(monkeypatch, tmp_path):
    """The spawn pool (one single-threaded worker per core, latents back as numpy arrays by value)
    yields the same pairs, in order, as rendering in this process."""
    import rehyat.toy.teacher as teacher
    from rehyat.toy.model import PACKED, init_teacher_folder

    if (os.cpu_count() or 1) < 2:
        pytest.skip("the pool needs two cores")
    init_teacher_folder(tmp_path / "init", 0, PACKED)
    encoder = load_text_encoder(tmp_path / "init")
    serial = list(teacher.toy_clips(encoder, 6, 3, PACKED))
    monkeypatch.setattr(teacher, "_PARALLEL_FROM", 2)
    pooled = list(teacher.toy_clips(encoder, 6, 3, PACKED))
    assert len(pooled) == len(serial) == 6
    for (latent, embedding), (want, want_embedding) in zip(pooled, serial, strict=True):
        assert isinstance(latent, torch.Tensor) and latent.dtype == want.dtype == torch.float32
        assert torch.equal(latent, want) and torch.equal(embedding, want_embedding)
