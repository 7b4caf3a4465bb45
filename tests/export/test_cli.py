"""``rehyat export`` and ``rehyat bench device`` (its summary, targets and rendering)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from rehyat.cli import main
from rehyat.experiments import bench_device
from rehyat.export import ExportedStep
from rehyat.models.wan_configs import tiny_wan_config

pytest.importorskip("onnxruntime")


def test_export_command_writes_graphs_that_run(tmp_path, capsys):
    torch.manual_seed(0)
    WanTransformer3DModel(**tiny_wan_config(num_layers=1)).save_pretrained(tmp_path / "model" / "transformer")
    out = tmp_path / "graphs"
    argv = [
        "export",
        str(out),
        "--model",
        str(tmp_path / "model"),
        "--frames",
        "4",
        "--height",
        "8",
        "--width",
        "8",
    ]
    assert main([*argv, "--text-tokens", "6", "--untrained"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["runtime"] == "onnxruntime"
    assert printed["graphs"] == ["step_c1_f1", "step_first_f3"]
    runner = ExportedStep(out)
    output = runner.forward(np.zeros((1, 16, 4, 8, 8)), np.array([500.0]), np.zeros((1, 6, 32)))
    assert output.shape == (1, 16, 4, 8, 8) and np.isfinite(output).all()
    assert main(argv) == 2  # neither a checkpoint nor --untrained
    assert "--untrained" in capsys.readouterr().err


def _rows(latencies, memories, full_seconds, full_memory):
    return [
        {
            "latent_frames": frames,
            "video_frames": 4 * (frames - 1) + 1,
            "tokens": frames * 600,
            "rehyat": {"chunk_seconds": [latency, latency * 1.01], "peak_rss_mib": memory},
            "full": {"seconds": seconds, "peak_rss_mib": full_mem},
        }
        for frames, latency, memory, seconds, full_mem in zip(
            (16, 31, 41), latencies, memories, full_seconds, full_memory, strict=True
        )
    ]


def test_bench_device_summary_and_targets():
    summary = bench_device.summarize_blocks(
        _rows([2.0, 2.1, 2.05], [900, 910, 905], [10, 400, 700], [1e3, 3e3, 5e3])
    )
    table, targets = summary["table"], summary["targets"]
    assert [r["chunks"] for r in table] == [6, 11, 14]
    # like for like: the whole video (11 chunks) against the full block's whole video
    assert targets["speedup_at_121_frames"] == pytest.approx(400 / (2.1 * 1.005 * 11))
    assert table[1]["speedup_per_chunk"] == pytest.approx(400 / (2.1 * 1.005))
    assert targets["flop_bound_at_121_frames"] == pytest.approx(1.88, abs=0.01)
    assert targets["attention_free_bound_at_121_frames"] == pytest.approx(2.32, abs=0.01)
    assert targets["speedup_met"] and targets["latency_flat_met"] and targets["memory_flat_met"]
    assert targets["full_memory_grows"]
    slow = bench_device.summarize_blocks(
        _rows([2.0, 3.0, 2.0], [900, 900, 900], [10, 120, 70], [1e3, 3e3, 2e3])
    )
    assert not slow["targets"]["speedup_met"] and not slow["targets"]["latency_flat_met"]
    assert not slow["targets"]["full_memory_grows"]


def test_bench_device_render_only(tmp_path):
    rows = _rows([2.0, 2.1, 2.05], [900, 910, 905], [10, 40, 70], [1e3, 3e3, 5e3])
    payload = {
        "environment": bench_device.device_environment(2),
        "blocks": {"rows": rows, **bench_device.summarize_blocks(rows)},
        "video": {
            "frames": 64,
            "training_frames": 16,
            "prompts": 2,
            "steps": 20,
            "guidance_scale": 4.0,
            "model": "test",
            "scores": {"pytorch_recurrent": {"adherence": 50.0, "adherence_delta": 0.0}},
            "target": "within 1 point",
            "target_met": True,
        },
    }
    (tmp_path / "device.json").write_text(json.dumps(payload))
    assert main(["bench", "device", "--render-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "device.md").read_text()
    assert "| 121 | 31 | 18600 |" in text.replace(",", "")
    assert "Long toy video" in text and payload["environment"]["cpu"] in text
