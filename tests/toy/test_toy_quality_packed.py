"""`rehyat bench toy --teacher`: the recipe and the table on a packed-world teacher's own space."""

from __future__ import annotations

import json

import pytest
import torch

from rehyat.cli import main
from rehyat.toy.model import PACKED, PACKED_TEACHER_CONFIG, init_teacher_folder


@pytest.fixture(scope="module")
def packed_teacher(tmp_path_factory):
    """A randomly initialised packed-world teacher, its transformer shrunk to 2 blocks of 2 heads × 24
    (fast on CPU; the space, text encoder and scheduler are the real ones)."""
    from diffusers import WanTransformer3DModel

    folder = init_teacher_folder(tmp_path_factory.mktemp("teacher"), 0, PACKED)
    torch.manual_seed(0)
    tiny = {**PACKED_TEACHER_CONFIG, "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 24}
    WanTransformer3DModel(**{**tiny, "ffn_dim": 64}).save_pretrained(folder / "transformer")
    return folder


def test_quick_table_on_the_packed_world(tmp_path, packed_teacher):
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["bench", "toy", "--quick", "--device", "cpu", "--teacher", str(packed_teacher)]
    args += ["--out", str(out), "--work", str(work), "--set", "eval_prompts=3"]
    assert main([*args, "--only", "rehyat"]) == 0
    report = json.loads((out / "toybench.json").read_text())
    assert report["teacher"]["world"] == "packed" and report["teacher"]["folder"] == str(packed_teacher)
    # 21 latent frames (81 video frames); long videos long_factor (2 when quick) × 21 latent frames.
    assert (report["frames"], report["video_frames"]) == (21, 81)
    assert (report["long_frames"], report["long_video_frames"]) == (42, 165)
    models = report["models"]
    short, long = models["rehyat"]["short"], models["rehyat"]["long"]
    assert (short["frames"], short["height"], short["width"]) == (81, 32, 32)
    assert long["frames"] == 165
    assert set(short["per_clip"]) == {
        "direction_accuracy",
        "speed_accuracy",
        "motion_smoothness",
        "size_drift",
        "shape_drift",
        "first_jump",
        "adherence",
        "temporal_consistency",
        "psnr",
        "ssim",
    }
    # Stage 1 captured the teacher on packed clips: the Wan video size whose latent grid is 21 × 16 × 16.
    distill = json.loads((work / "rehyat" / "distill" / "config.json").read_text())
    assert (distill["num_frames"], distill["height"], distill["width"]) == (81, 128, 128)
    index = json.loads((work / "finetune_data" / "index.json").read_text())
    assert list(index["latent_shape"]) == [24, 21, 16, 16]

    # Every column carries an interval against the teacher, every target is stated.
    intervals = report["intervals"]["rehyat"]["short"]
    assert set(intervals) == set(short["per_clip"])
    targets = {t["target"] for t in report["targets"]}
    for text in (
        "ReHyAt direction within 5 points of the teacher's (teacher − ReHyAt)",
        "ReHyAt motion smoothness at least 80% of the teacher's (ReHyAt − 0.8 × teacher)",
        "ReHyAt size drift at most 1.5× the teacher's (ReHyAt − 1.5 × teacher)",
        "ReHyAt first-frame jump no larger than the teacher's (ReHyAt − teacher)",
        "ReHyAt: long videos keep motion smoothness at least 70% of short ones' (long − 0.7 × short)",
    ):
        assert text in targets
    text = (out / "toybench.md").read_text()
    assert "# ToyBench quality table, packed world" in text and "21 latent frames (81 video frames)" in text
    assert "| model | sampled | direction | speed | motion smoothness | size drift | shape drift |" in text
    assert "issue" not in text.lower()

    # The work folder and an earlier table belong to their teacher: the bundled one reuses neither.
    plain = ["bench", "toy", "--quick", "--device", "cpu", "--set", "eval_prompts=3", "--report-only"]
    assert main([*plain, "--out", str(tmp_path / "o2"), "--work", str(work)]) == 2
    reuse = ["--reuse", str(out / "toybench.json"), "--work", str(tmp_path / "w2")]
    assert main([*plain, "--out", str(tmp_path / "o3"), *reuse]) == 2
