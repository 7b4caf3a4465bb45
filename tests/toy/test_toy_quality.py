"""`rehyat bench toy`: students trained with the same budget, the table, the targets, resuming."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from rehyat import hybrid_attention, recurrent_hybrid_attention
from rehyat.cli import main
from rehyat.experiments.toy_quality import (
    LONG_VIDEO_STUDENTS,
    QUICK,
    STUDENTS,
    check_targets,
    difference_interval,
    rehyat_fields,
    run_quality,
)
from rehyat.settings import replace_config
from rehyat.toy.model import PACKED, PIXEL


def _toy_args(out, work) -> list[str]:
    return ["bench", "toy", "--quick", "--device", "cpu", "--out", str(out), "--work", str(work)]


def test_quick_quality_table_for_four_students(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["bench", "toy", "--quick", "--device", "cpu", "--out", str(out), "--work", str(work)]
    args += ["--set", "finetune_ema=0.9"]  # stage 2 hands back its EMA weights
    assert main([*args, "--only", "rehyat", "half_blocks", "local", "teacher_finetuned"]) == 0
    report = json.loads((out / "toybench.json").read_text())
    models = report["models"]
    assert set(models) == {"teacher", "rehyat", "half_blocks", "local", "teacher_finetuned"}
    assert report["settings"]["finetune_ema"] == 0.9
    assert (work / "rehyat" / "finetune" / "final-ema" / "rehyat_config.json").is_file()
    # The control: the plain teacher through the same stage 2, saved and sampled as a softmax model.
    assert (work / "teacher_finetuned" / "finetune" / "final-ema" / "config.json").is_file()
    assert (
        models["teacher_finetuned"]["sampled"] == "parallel" and models["teacher_finetuned"]["stage1"] == {}
    )
    assert models["rehyat"]["sampled"] == "recurrent" and models["local"]["sampled"] == "parallel"
    assert "long" in models["rehyat"] and "psnr" in models["local"]["short"]
    assert len(models["half_blocks"]["stage1"]["blocks"]) == 2  # the best half of the toy's 4 blocks
    stage1 = models["rehyat"]["stage1"]
    assert set(stage1["heldout_rel_error"]) == set(stage1["heldout_guarded_fraction"]) == {"0", "1", "2", "3"}
    assert models["local"]["stage1"] == {}  # no φ: nothing to distill
    for name in ("toybench.md", "toybench.png"):
        assert (out / name).is_file()
    local_config = json.loads((work / "local" / "stage1" / "rehyat_config.json").read_text())
    assert local_config["config"]["attention"] == "local"

    # Gathering again trains nothing and keeps the results; a missing student is left out. The teacher's
    # videos are sampled once per work folder (other processes of a run can copy them in).
    cache = work / "teacher" / "short.safetensors"
    assert cache.is_file()
    sampled = cache.stat().st_mtime_ns
    (out / "toybench.json").unlink()
    assert main([*args, "--report-only"]) == 0
    assert cache.stat().st_mtime_ns == sampled
    again = json.loads((out / "toybench.json").read_text())["models"]
    assert set(again) == set(models) and again["rehyat"]["short"] == models["rehyat"]["short"]

    # Results made under other settings are never mixed in.
    with pytest.raises(ValueError, match="holds results made with other settings"):
        run_quality(out, work, "cpu", dataclasses.replace(QUICK, eval_prompts=3))

    # A new work folder seeded from this table: its students are taken as they are and named as such.
    earlier, again_out = out / "toybench.json", tmp_path / "again"
    reuse = _toy_args(again_out, tmp_path / "w2")
    reuse += ["--set", "finetune_ema=0.9", "--reuse", str(earlier)]
    assert main([*reuse, "--report-only", "--only", "rehyat", "local"]) == 0
    seeded = json.loads((again_out / "toybench.json").read_text())
    assert (
        seeded["models"]["rehyat"]["short"] == models["rehyat"]["short"]
        and "half_blocks" not in seeded["models"]
    )
    assert seeded["reused"]["students"] == ["rehyat", "local"] and seeded["reused"]["from"] == str(earlier)
    date = json.loads(earlier.read_text())["environment"]["date"]
    assert seeded["reused"]["made"]["rehyat"] == {"gpu": "no GPU", "date": date}  # where it was trained
    assert (
        f"not trained in this run: ReHyAt Tc=3 To=1 causal, local-only (no GPU, {date})."
        in (again_out / "toybench.md").read_text()
    )
    with pytest.raises(ValueError, match=r"made with other settings \(they differ in \['eval_prompts'\]\)"):
        run_quality(
            again_out,
            tmp_path / "w3",
            "cpu",
            dataclasses.replace(QUICK, eval_prompts=3, finetune_ema=0.9),
            reuse=earlier,
        )


def test_half_blocks_needs_the_all_blocks_student(tmp_path, capsys):
    args = _toy_args(tmp_path, tmp_path / "w")
    assert main([*args, "--only", "half_blocks"]) == 2
    assert "half_blocks reuses the 'rehyat' student's stage 1" in capsys.readouterr().err


def test_unknown_student_is_named(capsys):
    assert main(["bench", "toy", "--quick", "--device", "cpu", "--only", "rehyat", "nope"]) == 2
    assert "unknown students ['nope']" in capsys.readouterr().err


def test_targets_read_the_table_rows():
    def row(adherence, consistency=50.0, long=None):
        entry = {"short": {"adherence": adherence, "temporal_consistency": consistency}}
        if long is not None:  # short and long are compared prompt by prompt
            entry["short"]["per_clip"] = {"adherence": [adherence] * 2}
            entry["long"] = {"adherence": long, "per_clip": {"adherence": [long] * 2}}
        return entry

    results = {
        "teacher": row(70),
        "rehyat": row(69, 80, long=60),
        "local": row(60),
        "linear": row(72),
        "rehyat_to0": row(65, 81),
    }
    targets = {t["target"].split(" (")[0]: (t["measured"], t["met"]) for t in check_targets(results)}
    assert targets["ReHyAt adherence within 2 points of the teacher's"] == (1, True)
    assert targets["ReHyAt adherence above local-only"] == (9, True)
    assert targets["ReHyAt adherence above linear-only"] == (-3, False)
    assert targets["To=1 above To=0 on temporal consistency"] == (-1, False)
    assert targets["ReHyAt: long videos keep adherence within 5 points of short ones"] == (9, False)
    assert {s.name for s in STUDENTS} >= {"rehyat", "rehyat_to0", "local", "linear"}
    assert not any("non-negative" in t for t in targets)  # its rows appear only when it was run
    results["rehyat_nonneg"] = row(71, long=70)
    targets = {t["target"].split(" (")[0]: (t["measured"], t["met"]) for t in check_targets(results)}
    assert targets["ReHyAt non-negative φ adherence within 2 points of the teacher's"] == (-1, True)
    assert targets["ReHyAt non-negative φ adherence above local-only"] == (11, True)
    assert targets["ReHyAt non-negative φ: long videos keep adherence within 5 points of short ones"] == (
        1,
        True,
    )


def test_target_intervals_say_when_a_verdict_is_within_noise():
    def row(adherence, consistency):
        return {
            "short": {
                "adherence": float(np.mean(adherence)),
                "temporal_consistency": float(np.mean(consistency)),
                "per_clip": {"adherence": adherence, "temporal_consistency": consistency},
            }
        }

    clips = 40
    results = {
        "teacher": row([100.0] * clips, [90.0] * clips),
        # One miss in 40 clips: 2.5 points behind the teacher, but one clip either way is noise.
        "rehyat": row([100.0] * (clips - 1) + [0.0], [80.0] * clips),
        "local": row([0.0] * clips, [80.0] * clips),
        "rehyat_to0": row([0.0] * clips, [80.0 + (i % 2) for i in range(clips)]),
    }
    targets = {t["target"].split(" (")[0]: t for t in check_targets(results)}
    teacher = targets["ReHyAt adherence within 2 points of the teacher's"]
    assert teacher["measured"] == 2.5 and teacher["met"] is False and teacher["decided"] is False
    low, high = teacher["interval"]
    assert 0 <= low < 2 < 2.5 < high
    local = targets["ReHyAt adherence above local-only"]
    assert local["met"] is True and local["decided"] is True and local["interval"][0] > 90
    to1 = targets["To=1 above To=0 on temporal consistency"]
    assert to1["measured"] == -0.5 and to1["met"] is False and to1["interval"][1] < 0 and to1["decided"]
    linear = targets["ReHyAt adherence above linear-only"]  # no linear-only row
    assert linear["measured"] is None and linear["interval"] is None and linear["decided"] is None


def test_difference_interval_pairs_the_same_prompts():
    rng = np.random.default_rng(1)
    hard = rng.normal(50, 20, 64)  # each prompt's own difficulty, shared by both models
    paired = difference_interval(list(hard + 3), list(hard), paired=True)
    unpaired = difference_interval(list(hard + 3), list(hard), paired=False)
    assert paired == pytest.approx((3, 3))  # a constant difference has no spread once paired
    assert unpaired[0] < 0 < 3 < unpaired[1]
    with pytest.raises(ValueError, match="paired samples need equal lengths, got 2 and 3"):
        difference_interval([1.0, 2.0], [1.0, 2.0, 3.0], paired=True)


def test_settings_overrides_keep_the_field_types():
    """``--set`` on the quality settings goes through the one config mechanism (rehyat.settings)."""
    changed = replace_config(QUICK, ["distill_lr=1e-4", "capture_steps=[0, 1]", "finetune_ema=0.99"])
    assert changed.distill_lr == 1e-4 and changed.capture_steps == (0, 1) and changed.finetune_ema == 0.99
    assert replace_config(changed, ["finetune_ema=null"]).finetune_ema is None
    assert replace_config(QUICK, ["finetune_lr=1"]).finetune_lr == 1.0
    with pytest.raises(ValueError, match="unknown config key"):
        replace_config(QUICK, ["nope=1"])
    with pytest.raises(ValueError, match="eval_prompts must be int"):
        replace_config(QUICK, ["eval_prompts=many"])
    with pytest.raises(ValueError, match="finetune_steps must be int"):
        replace_config(QUICK, ["finetune_steps=true"])
    with pytest.raises(ValueError, match=r"capture_steps\[0\] must be int"):
        replace_config(QUICK, ['capture_steps=["a"]'])
    with pytest.raises(ValueError, match="finetune_ema must be < 1"):
        replace_config(QUICK, ["finetune_ema=1.5"])
    with pytest.raises(ValueError, match="finetune_ema"):
        replace_config(QUICK, ["finetune_ema=true"])
    assert replace_config(QUICK, ["progress=true"]).progress is True
    with pytest.raises(ValueError, match="key=value"):
        replace_config(QUICK, ["distill_lr"])


@pytest.mark.parametrize("space", [PIXEL, PACKED], ids=lambda space: space.name)
def test_causal_softmax_control_is_exact_block_causal_softmax(space):
    """The causal-softmax reference row's geometry: on a clip of the teacher's space (16 or 21 latent
    frames), every chunk's window holds all past frames, so its attention is softmax under a block-causal
    mask and the linear part (any φ) adds nothing."""
    student = next(s for s in STUDENTS if s.name == "causal_softmax")
    fields = rehyat_fields(student, space)
    assert fields == {"overlap_frames": space.clip_frames - 1}
    frames, tokens, heads, dim = space.clip_frames, 2, 2, 8
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, frames * tokens, heads, dim, generator=gen, dtype=torch.float64) for _ in "qkv")
    fq, fk = (torch.rand(1, frames * tokens, heads, 4, generator=gen, dtype=torch.float64) for _ in "qk")
    got = hybrid_attention(q, k, v, fq, fk, frame_tokens=tokens, chunk_frames=3, backend="torch", **fields)
    chunk_of = torch.arange(frames * tokens) // (3 * tokens)
    visible = chunk_of[None, :] <= chunk_of[:, None]  # keys in the query's chunk or before
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / dim**0.5
    want = torch.einsum("bhij,bjhd->bihd", scores.masked_fill(~visible, float("-inf")).softmax(-1), v)
    assert torch.allclose(got, want, atol=1e-12)
    # It samples recurrently: the streaming form caches every past frame of a clip and retires none, so
    # φ never enters on a clip (longer videos would retire frames into untrained φ: no long videos).
    streamed = recurrent_hybrid_attention(
        q, k, v, fq, fk, frame_tokens=tokens, chunk_frames=3, backend="torch", **fields
    )
    assert torch.allclose(streamed, want, atol=1e-12)
    assert student.name not in LONG_VIDEO_STUDENTS


def test_reused_rows_keep_the_run_that_trained_them():
    """A table that itself reused rows passes their origin on: each row is named with its own run."""
    from rehyat.experiments.toy_quality import reused_rows, row_provenance

    h200 = {"gpu": "H200", "date": "d1"}
    table = {
        "environment": {"gpu": "H100", "date": "d2"},
        "models": {"teacher": {}, "rehyat": {}, "local": {}, "rehyat_to2": {}},
        "reused": {"from": "old.json", "date": "d1", "gpu": "H200", "students": ["rehyat"]},
    }
    made = row_provenance(table)
    assert made["rehyat"] == h200 and made["rehyat_to2"] == made["local"] == {"gpu": "H100", "date": "d2"}
    table["reused"] = {
        "students": ["rehyat", "local"],
        "made": {"rehyat": h200, "local": {"gpu": "A", "date": "d0"}},
    }
    assert row_provenance(table)["local"] == {"gpu": "A", "date": "d0"}
    assert row_provenance({"environment": {}, "models": {"x": {}}})["x"]["gpu"] == "unknown device"
    labels = {name: {"label": name.upper()} for name in table["models"]}
    reused = {"students": ["rehyat", "local", "rehyat_to2"], "made": made}
    assert reused_rows(reused, labels) == "REHYAT (H200, d1); LOCAL, REHYAT_TO2 (H100, d2)"


def test_reuse_takes_a_missing_setting_as_its_default(tmp_path):
    """A table made before a setting existed ran as its default does: it can be reused under it."""
    from rehyat.experiments.toy_quality import QualitySettings, reuse_results

    settings = json.loads(json.dumps(dataclasses.asdict(QualitySettings())))
    del settings["eval_seed"]
    earlier = tmp_path / "toybench.json"
    earlier.write_text(json.dumps({"settings": settings, "models": {"rehyat": {"label": "x"}}}))
    taken = reuse_results(earlier, tmp_path / "w", QualitySettings())
    assert taken["students"] == ["rehyat"] and (tmp_path / "w" / "rehyat" / "result.json").is_file()
    with pytest.raises(ValueError, match=r"they differ in \['eval_seed'\]"):
        reuse_results(earlier, tmp_path / "w2", dataclasses.replace(QualitySettings(), eval_seed=1))


def test_long_videos_are_compared_with_the_short_videos_of_their_prompts():
    """Long videos take the first prompts; the target pairs each with that prompt's short video."""
    short = [100.0] * 4 + [0.0] * 4  # the long videos' four prompts all score 100 when short
    entry = {
        "short": {"adherence": float(np.mean(short)), "per_clip": {"adherence": short}},
        "long": {"adherence": 75.0, "per_clip": {"adherence": [100.0, 100.0, 100.0, 0.0]}},
    }
    targets = {t["target"].split(" (")[0]: t for t in check_targets({"teacher": entry, "rehyat": entry})}
    long = targets["ReHyAt: long videos keep adherence within 5 points of short ones"]
    assert long["measured"] == 25.0  # 100 − 75 on the same four prompts, not 50 − 75 over all eight
    assert long["met"] is False and long["interval"][1] <= 75
    # Without the per-clip scores the pairing is unknown: no verdict rather than one on other prompts.
    del entry["short"]["per_clip"]
    long = next(t for t in check_targets({"teacher": entry, "rehyat": entry}) if "long videos" in t["target"])
    assert long["measured"] is None and long["met"] is None


def test_decided_at_the_threshold_and_finite_scores():
    ones = [1.0] * 10
    results = {
        "teacher": {"short": {"adherence": 3.0, "per_clip": {"adherence": [3.0] * 10}}},
        "rehyat": {"short": {"adherence": 1.0, "per_clip": {"adherence": ones}}},
    }
    gap = check_targets(results)[0]  # teacher − ReHyAt = 2 exactly, every clip: met, and settled
    assert gap["measured"] == 2 and gap["interval"] == pytest.approx((2, 2))
    assert gap["met"] is True and gap["decided"] is True
    with pytest.raises(ValueError, match="per-clip scores must be finite"):
        difference_interval([1.0, float("nan")], [1.0, 2.0], paired=True)


def test_render_only_recomputes_the_targets_and_keeps_the_notes(tmp_path):
    from rehyat.experiments.common import NOTES_MARKER

    clips = [100.0, 0.0, 100.0, 100.0]
    scores = {"adherence": 75.0, "temporal_consistency": 80.0, "motion_smoothness": 5.0}
    row = {"short": {**scores, "per_clip": {"adherence": clips}}}
    report = {
        "environment": {"gpu": "H100", "date": "d"},
        "settings": dataclasses.asdict(QUICK),
        "frames": 16,
        "long_frames": 32,
        "models": {"teacher": {"label": "teacher (softmax)", **row}, "rehyat": {"label": "ReHyAt", **row}},
        "targets": [],
    }
    (tmp_path / "toybench.json").write_text(json.dumps(report))
    (tmp_path / "toybench.md").write_text(f"old table\n{NOTES_MARKER}\n\n## Written by hand\n")
    assert main(["bench", "toy", "--render-only", "--out", str(tmp_path)]) == 0
    rendered = json.loads((tmp_path / "toybench.json").read_text())
    assert rendered["targets"][0]["measured"] == 0 and rendered["targets"][0]["interval"] == [0.0, 0.0]
    text = (tmp_path / "toybench.md").read_text()
    assert "old table" not in text and text.endswith(f"{NOTES_MARKER}\n\n## Written by hand\n")
    assert "| ReHyAt adherence within 2 points" in text
    assert main(["bench", "toy", "--render-only", "--out", str(tmp_path / "none")]) == 2
    assert main(["bench", "toy", "--render-only", "--out", str(tmp_path), "--set", "seed=1"]) == 2


def test_teacher_cache_refuses_other_videos(tmp_path):
    from rehyat.experiments.toy_quality import cached_videos

    path = tmp_path / "teacher" / "short.safetensors"
    videos = cached_videos(path, lambda: [torch.zeros(3, 4, 8, 8)] * 2, 2, 4)
    assert len(videos) == 2 and path.is_file()
    again = cached_videos(path, lambda: pytest.fail("sampled again"), 2, 4)
    assert torch.equal(torch.stack(again), torch.stack(videos))
    with pytest.raises(ValueError, match="holds 2 videos of 4 frames, this run needs 3 of 4"):
        cached_videos(path, lambda: [], 3, 4)


def test_reuse_takes_an_old_tables_seed_for_its_prompts(tmp_path):
    """Before eval_seed, the evaluation prompts came from the training seed; batching changes nothing."""
    from rehyat.experiments.toy_quality import QualitySettings, reuse_results

    settings = json.loads(json.dumps(dataclasses.asdict(QualitySettings(seed=1, sample_batch=4))))
    del settings["eval_seed"]
    earlier = tmp_path / "toybench.json"
    earlier.write_text(json.dumps({"settings": settings, "models": {"rehyat": {"label": "x"}}}))
    assert reuse_results(earlier, tmp_path / "w", QualitySettings(seed=1, eval_seed=1))["students"] == [
        "rehyat"
    ]
    with pytest.raises(ValueError, match=r"they differ in \['eval_seed'\]"):
        reuse_results(earlier, tmp_path / "w2", QualitySettings(seed=1))


def test_the_recipe_passes_stage_2_mass_weight_to_converted_students_only(monkeypatch, tmp_path):
    """``finetune_mass_weight`` reaches FinetuneConfig.mass_weight for a ReHyAt student; the softmax teacher's
    control run (no checkpoint, nothing converted) trains without it."""
    from rehyat.toy import recipe

    seen = []
    monkeypatch.setattr(recipe, "finetune", lambda cfg: seen.append(cfg))
    settings = recipe.RecipeSettings(finetune_mass_weight=1.5, progress=False)
    recipe.finetune_student(
        tmp_path / "t", tmp_path / "ckpt", tmp_path / "a", tmp_path / "d", settings, "cpu"
    )
    recipe.finetune_student(tmp_path / "t", None, tmp_path / "b", tmp_path / "d", settings, "cpu")
    assert [cfg.mass_weight for cfg in seen] == [1.5, 0.0]
    assert (
        next(s for s in STUDENTS if s.name == "rehyat_ns_tc1_to3_mass2").settings["finetune_mass_weight"] == 1
    )
    with pytest.raises(ValueError, match="finetune_mass_weight"):
        recipe.RecipeSettings(finetune_mass_weight=-1)
