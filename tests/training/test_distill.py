"""Stage 1 end to end on a tiny teacher: capture, students, report, ranking, checkpoint; and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_teacher import VIDEO, make_teacher_folder

from rehyat import ReHyAtConfig
from rehyat.baselines import full_attention
from rehyat.training.capture import AttentionRecorder
from rehyat.training.distill import DistillConfig, run_distillation
from rehyat.training.metrics import read_metrics
from rehyat.training.students import BlockStudent

from conftest import rel_err


def test_recorder_captures_the_teachers_attention_exactly(tmp_path):
    from diffusers import WanTransformer3DModel

    folder, _ = make_teacher_folder(tmp_path)
    model = WanTransformer3DModel.from_pretrained(folder / "transformer")
    hidden = torch.randn(1, 16, 5, 8, 8)
    args = (hidden, torch.tensor([500.0]), torch.randn(1, 6, 32))
    with torch.no_grad():
        reference = model(*args, return_dict=False)[0]
        recorder = AttentionRecorder(model, [1])
        with recorder.installed():
            recorder.active = True
            out = model(*args, return_dict=False)[0]
    assert torch.equal(out, reference)  # recording does not change the teacher
    (capture,) = recorder.take()[1]
    assert capture.q.shape == (1, 5 * 16, 2, 12) and capture.frame_tokens == 16
    assert rel_err(full_attention(capture.q, capture.k, capture.v), capture.y) <= 1e-6
    with pytest.raises(ValueError, match="out of range"):
        AttentionRecorder(model, [2])


def test_distillation_run(tmp_path):
    folder, prompts = make_teacher_folder(tmp_path)
    config = DistillConfig(
        model=str(folder),
        prompts=str(prompts),
        out=str(tmp_path / "run"),
        dtype="fp32",
        device="cpu",
        num_inference_steps=4,
        capture_steps=[0, 2],
        inner_steps=3,
        lr=3e-3,
        heldout=1,
        **VIDEO,
    )
    report = run_distillation(config)
    out = tmp_path / "run"
    assert sorted(report["ranking"]) == [0, 1]
    for block in ("0", "1"):
        result = json.loads((out / "report.json").read_text())["blocks"][block]
        assert set(result["heldout"]) == {"rehyat", "untrained", "linear", "local"}
        assert result["captures_heldout"] == 2 * 2  # 2 capture steps × (cond, uncond)
        # Training on 2 runs × 2 steps × 2 branches × 3 inner steps beats the untrained feature maps.
        assert result["heldout"]["rehyat"]["l1"] < result["heldout"]["untrained"]["l1"]
        assert 0.0 <= result["heldout"]["rehyat"]["guarded_fraction"] <= 1.0
    assert "| block | rank |" in (out / "report.md").read_text()
    ranking = json.loads((out / "ranking.json").read_text())["block_ranking"]
    assert ReHyAtConfig(blocks=1, block_ranking=ranking).resolve_blocks(2) == [ranking[0]]
    assert json.loads((out / "config.json").read_text())["inner_steps"] == 3
    assert (out / "rehyat" / "rehyat.safetensors").is_file()
    records = read_metrics(out / "logs" / "rank-0")
    assert len(records) == 2 * 2 * 2 * 2 * 3  # blocks × runs × capture steps × CFG branches × inner steps
    assert {r["block"] for r in records} == {0, 1} and all(r["loss/rehyat"] > 0 for r in records)


def test_student_variants_and_errors():
    student = BlockStudent("local", ReHyAtConfig(), 2, 4)
    assert not student.trainable and student.feature_map_state() == {}
    with pytest.raises(ValueError, match="nothing to train"):
        student.train_step(None)
    with pytest.raises(ValueError, match="variant must be one of"):
        BlockStudent("sparse", ReHyAtConfig(), 2, 4)


def test_a_student_of_a_family_whose_phi_input_needs_the_model_asks_for_it():
    from rehyat.models.families import HUNYUAN_VIDEO

    with pytest.raises(ValueError, match="BlockStudent on hunyuan-video needs feature_input="):
        BlockStudent("rehyat", ReHyAtConfig(chunk_frames=1), 2, 8, family=HUNYUAN_VIDEO)


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(model=""), "model is required"),
        (dict(model="/no/such/folder"), "does not exist"),
        (dict(prompts="/no/such.txt"), "prompts file /no/such.txt does not exist"),
        (dict(capture_steps=[9]), "capture_steps must be"),
        (dict(variants=["linear"]), "variants must include 'rehyat'"),
        (dict(heldout=3), "leaves no training run"),
    ],
)
def test_bad_configs(tmp_path, changes, message):
    folder, prompts = make_teacher_folder(tmp_path)
    base = dict(
        model=str(folder),
        prompts=str(prompts),
        out=str(tmp_path / "run"),
        dtype="fp32",
        device="cpu",
        num_inference_steps=4,
        capture_steps=[0],
        **VIDEO,
    )
    with pytest.raises(ValueError, match=message):
        run_distillation(DistillConfig(**{**base, **changes}))


def test_empty_prompt_file(tmp_path):
    folder, _ = make_teacher_folder(tmp_path)
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    config = DistillConfig(
        model=str(folder),
        prompts=str(empty),
        out=str(tmp_path / "run"),
        device="cpu",
        num_inference_steps=2,
        capture_steps=[0],
    )
    with pytest.raises(ValueError, match="holds no prompts"):
        run_distillation(config)


def test_cli_reports_bad_config(tmp_path, capsys):
    from rehyat.cli import main

    assert main(["distill", "--set", "model=/no/such/folder", "prompts=p.txt"]) == 2
    assert "model folder /no/such/folder does not exist" in capsys.readouterr().err
    assert main(["distill", "--set", "chunk=3"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_two_processes_split_the_blocks(tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes one block; rank 0 merges both into one report."""
    folder, prompts = make_teacher_folder(tmp_path)
    out = tmp_path / "run"
    overrides = [
        f"model={folder}",
        f"prompts={prompts}",
        f"out={out}",
        "dtype=fp32",
        "num_inference_steps=3",
        "capture_steps=[1]",
        "num_frames=25",
        "height=64",
        "width=64",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "-m",
        "rehyat.cli",
        "distill",
        "--set",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["block"] for r in read_metrics(out / "logs" / "rank-0")} == {0}
    assert {r["block"] for r in read_metrics(out / "logs" / "rank-1")} == {1}
    assert sorted(json.loads((out / "ranking.json").read_text())["block_ranking"]) == [0, 1]


def test_text_prompts_go_through_the_folders_text_encoder(tmp_path):
    """A .txt prompt file is encoded by the Wan folder's own tokenizer and UMT5 encoder (tiny, offline)."""
    from generation.tiny_pipeline import tiny_pipeline

    folder = tmp_path / "wan"
    tiny_pipeline(with_text_encoder=True).save_pretrained(folder)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square moving\n")
    config = DistillConfig(
        model=str(folder),
        prompts=str(prompts),
        out=str(tmp_path / "run"),
        dtype="fp32",
        device="cpu",
        num_inference_steps=2,
        capture_steps=[1],
        heldout=1,
        variants=["rehyat", "local"],
        **VIDEO,
    )
    report = run_distillation(config)
    assert sorted(report["ranking"]) == [0, 1]
    assert report["blocks"][0]["captures_heldout"] == 2  # the second prompt, both CFG branches


def _small_run(tmp_path, folder, prompts) -> DistillConfig:
    return DistillConfig(
        model=str(folder),
        prompts=str(prompts),
        out=str(tmp_path / "run"),
        dtype="fp32",
        device="cpu",
        num_inference_steps=2,
        capture_steps=[0],
        variants=["rehyat", "local"],
        **VIDEO,
    )


def test_nan_prompt_embeddings_are_refused_before_anything_is_trained_or_written(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, prompts = make_teacher_folder(tmp_path)
    tensors = load_file(prompts)
    tensors["prompt_embeds"][1, 2, 3] = float("nan")
    save_file(tensors, prompts)
    with pytest.raises(
        ValueError, match=r"prompts\.safetensors: prompt_embeds of prompt\(s\) \[1\] hold non-finite"
    ):
        run_distillation(_small_run(tmp_path, folder, prompts))
    assert not any(
        (tmp_path / "run" / name).exists()
        for name in ("ranking.json", "rehyat", "blocks/block-000.safetensors")
    )


def test_a_block_whose_attention_turns_non_finite_stops_the_run_naming_the_block(tmp_path):
    from safetensors.torch import load_file, save_file

    from rehyat.training.checkpoint import NonFiniteError

    folder, prompts = make_teacher_folder(tmp_path)
    weights_file = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    weights["blocks.1.attn1.to_v.weight"][0, 0] = float("nan")  # block 1's v, and so its output, is NaN
    save_file(weights, weights_file)
    with pytest.raises(
        NonFiniteError, match=r"block 1, denoising step 0 .*rehyat student.*the captured v, y"
    ):
        run_distillation(_small_run(tmp_path, folder, prompts))
    out = tmp_path / "run"
    assert not any((out / name).exists() for name in ("ranking.json", "report.json", "rehyat"))
    assert not list((out / "blocks").glob("*.safetensors"))  # no φ at all, let alone a NaN one


def test_outputs_replace_symbolic_links_instead_of_writing_through_them(tmp_path):
    folder, prompts = make_teacher_folder(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    out = tmp_path / "run"
    (out / "blocks").mkdir(parents=True)
    names = (
        "report.json",
        "ranking.json",
        "report.md",
        "blocks/block-000.json",
        "blocks/block-000.safetensors",
    )
    for name in names:
        (out / name).symlink_to(outside)
    run_distillation(_small_run(tmp_path, folder, prompts))
    assert outside.read_text() == "precious\n"
    assert not any((out / name).is_symlink() for name in names)
    assert json.loads((out / "ranking.json").read_text())["block_ranking"]
