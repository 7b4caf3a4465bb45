"""Stage 2: Wan's flow-matching objective, a full single-process run through the CLI, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import tiny_base, tiny_config, tiny_dataset, tiny_overrides

from rehyat.cli import main
from rehyat.training.data import write_latent_dataset
from rehyat.training.finetune import (
    build_model,
    finetune,
    flow_matching_loss,
    load_base_transformer,
    noise_generator,
    shifted_sigmas,
)
from rehyat.training.metrics import read_metrics


def test_shifted_sigmas():
    u = torch.linspace(0, 1, 11)
    assert torch.allclose(shifted_sigmas(u, 1.0), u)
    shifted = shifted_sigmas(u, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > u[1:-1]).all()  # towards noise
    assert torch.isclose(shifted_sigmas(torch.tensor(0.5), 3.0), torch.tensor(0.75))


def test_flow_matching_loss_builds_rectified_flow_inputs_and_velocity_target():
    latents, prompts = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 5, 8)
    seen = {}

    def model(noisy, timestep, context, return_dict):
        seen.update(noisy=noisy, timestep=timestep, context=context)
        return (torch.zeros_like(noisy),)

    loss = flow_matching_loss(model, latents, prompts, noise_generator(0, 1, 0), shift=3.0)
    gen = noise_generator(0, 1, 0)
    sigma = shifted_sigmas(torch.rand(2, generator=gen), 3.0)
    noise = torch.randn(latents.shape, generator=gen)
    s = sigma.view(2, 1, 1, 1, 1)
    assert torch.allclose(seen["noisy"], (1 - s) * latents + s * noise)
    assert torch.allclose(seen["timestep"], sigma * 1000) and seen["context"] is prompts
    assert torch.isclose(loss, (noise - latents).square().mean())  # a zero prediction misses all of v


def test_cli_run_trains_logs_and_saves_a_loadable_model(tmp_path):
    from rehyat.models import ReHyAtConfig, load_rehyat
    from rehyat.training.finetune import ModelSection

    base, data, out = tiny_base(tmp_path / "wan"), tiny_dataset(tmp_path / "data"), tmp_path / "run"
    (tmp_path / "run.toml").write_text("seed = 7\nsteps = 3\n[optim]\nlr = 5e-3\n")
    args = tiny_overrides(out, data, base, grad_accumulation=2, ema_decay=0.5, **{"data.micro_batch_size": 2})
    assert (
        main(["finetune", "--config", str(tmp_path / "run.toml"), "--set", *args]) == 0
    )  # overrides beat the file

    config = json.loads((out / "config.json").read_text())
    assert (
        config["seed"] == 7
        and config["steps"] == 4
        and config["optim"]["lr"] == 1e-3
        and config["grad_accumulation"] == 2
    )
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["samples_per_s"] > 0 and r["grad_norm"] > 0 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]

    start = build_model(ModelSection(path=str(base), rehyat=ReHyAtConfig(chunk_frames=2)), seed=0)
    for folder in ("final", "final-ema"):
        trained = load_rehyat(load_base_transformer(ModelSection(path=str(base))), out / folder)
        moved = [
            name for name, p in trained.state_dict().items() if not torch.equal(p, start.state_dict()[name])
        ]
        assert any("rehyat_phi" in n for n in moved) and any("ffn" in n for n in moved)  # φ and the DiT


def test_errors(tmp_path):
    data = tiny_dataset(tmp_path / "data")
    with pytest.raises(ValueError, match=r"model folder .* does not exist"):
        finetune(tiny_config(tmp_path / "run", data, tmp_path / "missing"))
    (tmp_path / "not_wan").mkdir()
    with pytest.raises(ValueError, match="neither a diffusers Wan folder"):
        finetune(tiny_config(tmp_path / "run", data, tmp_path / "not_wan"))
    gen = torch.Generator().manual_seed(0)
    narrow = write_latent_dataset(
        tmp_path / "narrow", [(torch.randn(16, 4, 8, 8), torch.randn(6, 16, generator=gen))]
    )
    with pytest.raises(ValueError, match="16-dim prompt embeddings; the model takes 16 and 32"):
        finetune(tiny_config(tmp_path / "run", narrow))


def test_plain_model_training_saves_a_diffusers_folder(tmp_path):
    """convert=false trains the softmax model itself (how the toy teacher is trained) with the same loop."""
    from diffusers import WanTransformer3DModel

    base, data, out = tiny_base(tmp_path / "wan"), tiny_dataset(tmp_path / "data"), tmp_path / "run"
    config = tiny_config(out, data, base, **{"model.convert": "false", "model.rehyat": "null", "steps": 2})
    finetune(config)
    trained = WanTransformer3DModel.from_pretrained(out / "final")
    start = load_base_transformer(config.model)
    assert not any("rehyat" in name for name in trained.state_dict())
    assert any(not torch.equal(p, start.state_dict()[n]) for n, p in trained.state_dict().items())
    with pytest.raises(ValueError, match=r"model\.convert=false trains the plain model"):
        build_model(tiny_config(out, data, base, **{"model.convert": "false"}).model, seed=0)


def test_prompt_dropout_zeroes_whole_prompts():
    from rehyat.training.finetune import drop_prompts

    prompts = torch.ones(1000, 3, 4)
    dropped = drop_prompts(prompts, 0.25, torch.Generator().manual_seed(0))
    per_sample = dropped.flatten(1)
    assert set(per_sample.sum(1).tolist()) == {0.0, 12.0}  # a prompt is kept or zeroed whole
    assert 0.2 < (per_sample.sum(1) == 0).float().mean() < 0.3
    assert torch.equal(drop_prompts(prompts, 0.0, torch.Generator()), prompts)


def test_teacher_weight_blends_the_teacher_prediction_into_the_target():
    latents, prompts = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 5, 8)

    def model(noisy, timestep, context, return_dict):
        return (noisy * 0.5 + timestep.view(-1, 1, 1, 1, 1) / 1000,)

    def loss(**teacher):
        return flow_matching_loss(model, latents, prompts, noise_generator(0, 1, 0), 3.0, **teacher)

    plain = loss()
    assert plain > 0 and torch.equal(loss(teacher=model, teacher_weight=0.0), plain)
    assert loss(teacher=model, teacher_weight=1.0) == 0  # the model is its own teacher
    # Halfway: the residual halves, so the MSE is a quarter.
    assert torch.isclose(loss(teacher=model, teacher_weight=0.5), plain / 4)


def test_output_distillation_starts_at_zero_when_the_student_equals_the_teacher(tmp_path):
    """With one chunk covering every frame the converted model is the original, so λ = 1 starts at 0."""
    data = tiny_dataset(tmp_path / "data")
    whole = {"model.rehyat": '{"chunk_frames": 4}', "steps": 2, "save": "false", "log_every": 1}
    distilled = finetune(tiny_config(tmp_path / "a", data, None, teacher_weight=1.0, **whole))
    plain = finetune(tiny_config(tmp_path / "b", data, None, **whole))
    first = [read_metrics(run.output_dir)[0]["loss"] for run in (distilled, plain)]
    assert first[0] < 1e-10 < 0.1 < first[1]
    assert read_metrics(distilled.output_dir)[1]["loss"] > first[0]  # it trains and moves off the teacher
    with pytest.raises(ValueError, match=r"teacher_weight must be in \[0, 1\]"):
        finetune(tiny_config(tmp_path / "c", data, None, teacher_weight=1.5))


def test_teacher_is_the_frozen_fp32_original(tmp_path):
    """Under bf16 the teacher stays fp32 (autocast handles it), so diffusers' fp32 modules stay fp32."""
    from rehyat.training.finetune import build_teacher

    data, base = tiny_dataset(tmp_path / "data"), tiny_base(tmp_path / "wan")
    config = tiny_config(tmp_path / "run", data, base, teacher_weight=0.5, mixed_precision="bf16")
    teacher = build_teacher(config, torch.device("cpu"))
    original = load_base_transformer(config.model)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    for (name, got), want in zip(teacher.state_dict().items(), original.state_dict().values(), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want), name


def test_learning_rate_warms_up_holds_and_decays_linearly_to_zero_at_the_last_step():
    from rehyat.training.finetune import FinetuneConfig, OptimSection
    from rehyat.training.finetune.trainer import learning_rate

    cfg = FinetuneConfig(steps=100, optim=OptimSection(lr=1.0, warmup_steps=10, decay_start=60))
    lrs = [learning_rate(cfg, step) for step in range(cfg.steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0  # warmup
    assert lrs[10:61] == [1.0] * 51  # stable until decay_start
    assert lrs[61:] == pytest.approx([(100 - s) / 40 for s in range(61, 100)])  # toward 0 at step 100
    assert lrs[99] == pytest.approx(1 / 40)
    constant = FinetuneConfig(steps=100, optim=OptimSection(lr=1.0, warmup_steps=10))
    assert learning_rate(constant, 99) == 1.0
    with pytest.raises(ValueError, match=r"optim\.decay_start must be >= 10"):
        OptimSection(warmup_steps=10, decay_start=5)
