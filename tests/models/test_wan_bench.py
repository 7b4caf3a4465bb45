"""`rehyat bench model` without a GPU: target checks and rendering from a recorded payload."""

from __future__ import annotations

import json

import pytest
import torch

from rehyat.cli import main
from rehyat.experiments.bench_model import check_targets


def _payload() -> dict:
    rows = []
    for frames, (orig_ms, par_ms, rec_ms, orig_mib, rec_mib) in {
        21: (1000.0, 400.0, 450.0, 3000.0, 500.0),
        81: (14000.0, 2000.0, 1900.0, 9000.0, 510.0),
    }.items():
        common = {"latent_frames": frames, "video_frames": 4 * frames - 3, "tokens": frames * 1560}
        rows += [
            {"row": "original", "ms": orig_ms, "peak_mib": orig_mib, **common},
            {"row": "parallel", "ms": par_ms, "peak_mib": 2 * rec_mib, **common},
            {"row": "recurrent", "ms": rec_ms, "peak_mib": rec_mib, **common},
        ]
    env = {"gpu": "test", "command": "rehyat bench model"}
    parity = [
        {"dtype": "float32", "backend": "torch", "recurrent_vs_parallel": 1e-4, "parallel_vs_original": 0.9},
        {"dtype": "float32", "backend": "torch", "one_chunk_vs_original": 1e-7},
    ]
    return {"environment": env, "results": rows, "parity": parity, "note": "a note"}


def test_targets_are_checked():
    checks = {name: (value, met) for name, value, met in check_targets(_payload()["results"])}
    assert checks["parallel ≥ 2× faster than original at 21 frames"] == ("2.50×", True)
    assert checks["parallel ≥ 6× faster than original at 81 frames"] == ("7.00×", True)
    assert checks["recurrent peak memory at 81 frames ≤ 1/10 of original"][1] is True
    assert checks["recurrent peak memory flat (±5%) from 21 to 81 frames"] == ("2.0%", True)
    missing = check_targets([r for r in _payload()["results"] if r["row"] != "original"])
    assert [met for _, _, met in missing][:3] == [None, None, None]


def test_render_only_writes_markdown(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(_payload()))
    assert main(["bench", "model", "--render-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "model.md").read_text()
    assert "| 81 | 321 | 126360 | recurrent |" in text and "a note" in text
    assert "| float32 | torch | — | — | 1e-07 |" in text


def test_needs_a_gpu_without_render_only(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert main(["bench", "model", "--out", str(tmp_path)]) == 2
