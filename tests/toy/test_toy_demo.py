"""`rehyat demo --quick`: every stage of the recipe on the bundled teacher, and a complete report."""

from __future__ import annotations

import json

from rehyat.cli import main


def test_quick_demo_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "rehyat_stage1", "rehyat"}
    for name, metrics in report["models"].items():
        assert 0 <= metrics["adherence"] <= 100, name
    assert "psnr" in report["models"]["rehyat"] and "psnr" not in report["models"]["teacher"]
    long = report["long_video"]
    assert (
        long["frames"] == 2 * long["training_frames"] and long["peak_memory_mib"] >= 0 and long["seconds"] > 0
    )
    assert set(report["distillation"]["heldout"]["0"]) == {"rehyat", "untrained", "linear", "local"}
    for name in ("report.md", "toybench.png", "scaling.png", "teacher.gif", "rehyat.gif", "rehyat_long.gif"):
        assert (out / name).is_file(), name
