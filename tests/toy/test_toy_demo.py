"""`rehyat demo --quick`: the shipped student beside the teacher, the live recipe, and a complete report."""

from __future__ import annotations

import json

import imageio.v3 as iio

from rehyat.cli import main
from rehyat.experiments.demo import TARGETS


def test_quick_demo_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "rehyat", "live"}
    for name, metrics in report["models"].items():
        assert 0 <= metrics["adherence"] <= 100, name
        assert 0 <= metrics["temporal_consistency"] <= 100, name
    assert "psnr" in report["models"]["rehyat"] and "psnr" not in report["models"]["teacher"]
    long = report["long_video"]
    assert (
        long["frames"] == 2 * long["training_frames"] and long["peak_memory_mib"] >= 0 and long["seconds"] > 0
    )
    assert set(long["toybench"]) >= {"adherence", "temporal_consistency", "motion_smoothness"}
    assert report["live"]["finite"] is True
    for block, heldout in report["distillation"]["heldout"].items():
        assert set(heldout) == {"rehyat", "untrained"}, block
        assert report["distillation"]["selection"][block]["kept"] in ("trained", "initial")
        # The kept φ is never worse than the φ it started from (the selection's promise).
        selection = report["distillation"]["selection"][block]
        assert heldout["rehyat"]["l1"] <= selection["initial"]["l1"] + 1e-12
    assert set(report["targets"]) == set(TARGETS) and all(
        isinstance(v, bool) for v in report["targets"].values()
    )
    assert report["timings"]["total_s"] > 0
    # Time and memory: every length for both models, medians of interleaved repeats, the load recorded.
    rows = report["scaling"]["rows"]
    assert [r["frames"] for rows_ in rows.values() for r in rows_] == [2, 4, 2, 4]
    assert report["scaling"]["load_average"] and len(report["machine"]["load_average_start"]) == 3
    # A smoke run says so; the live student's chunking is named beside the shipped one's.
    assert report["smoke"] is True
    text = (out / "report.md").read_text()
    assert (
        "**Smoke run (`rehyat demo --quick`):**" in text and "## Targets (smoke run: not meaningful)" in text
    )
    assert report["live"]["rehyat"]["chunk_frames"] == 3 and "not the shipped student's" in text
    # The GIFs carry their labels: a band of text above the videos (96 px a 24-px frame).
    assert iio.imread(out / "teacher_vs_rehyat.gif").shape[1] > 2 * 96 + 4
    for name in (
        "report.md",
        "toybench.png",
        "scaling.png",
        "teacher_vs_rehyat.gif",
        "teacher_vs_rehyat.png",
        "live.gif",
        "rehyat_long.gif",
    ):
        assert (out / name).is_file(), name
