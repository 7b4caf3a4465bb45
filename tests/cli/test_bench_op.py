"""`rehyat bench op` (the CPU op comparison) runs end to end and reports consistent rows."""

from __future__ import annotations

import json

from rehyat.cli import main


def test_demo_writes_rows(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert (
        main(
            [
                "bench",
                "op",
                "--frames",
                "4",
                "7",
                "--set",
                "frame_tokens=16",
                "threads=1",
                f"json_out={out}",
            ]
        )
        == 0
    )
    assert "recurrent ms" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["frames"] for r in rows] == [4, 7]
    for row in rows:
        assert row["recurrent_vs_parallel_rel_diff"] <= 1e-4
        assert all(row[f"{m}_ms"] > 0 for m in ("full", "parallel", "recurrent"))


def test_demo_rejects_bad_frames(capsys):
    assert main(["bench", "op", "--frames", "0"]) == 2
    assert "--frames must all be >= 1" in capsys.readouterr().err
