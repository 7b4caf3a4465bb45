"""``rehyat bench model --family ...`` on a CPU at --size tiny: the whole benchmark of every family runs
(original, parallel and recurrent rows, parity), writes its results beside Wan's, and the parity it
measures holds (one chunk equals the original, recurrent equals parallel)."""

from __future__ import annotations

import json

import pytest

from rehyat.cli import main
from rehyat.experiments.bench_model import stem


@pytest.mark.parametrize("family", ["wan", "skyreels-v2", "ltx-video", "hunyuan-video", "cogvideox"])
def test_bench_model_runs_each_family_on_a_cpu(family, tmp_path):
    args = ["bench", "model", "--family", family, "--size", "tiny", "--device", "cpu", "--frames", "2"]
    assert main([*args, "--quick", "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / f"{stem(family)}.json").read_text())
    assert payload["family"] == family and payload["dtype"] == "fp32"
    rows = {r["row"]: r for r in payload["results"]}
    assert sorted(rows) == ["original", "parallel", "recurrent"] and all(r["ms"] > 0 for r in rows.values())
    video = {"ltx-video": 9}.get(family, 5)  # 2 latent frames: 8 or 4 video frames after the first
    assert rows["recurrent"]["video_frames"] == video and rows["recurrent"]["tokens"] == 2 * 16
    parity = payload["parity"]
    assert parity[0]["recurrent_vs_parallel"] < 1e-4 and parity[1]["one_chunk_vs_original"] < 1e-5
    text = (tmp_path / f"{stem(family)}.md").read_text()
    assert "(tiny config) DiT forward" in text and "| 2 |" in text
    assert main(["bench", "model", "--family", family, "--render-only", "--out", str(tmp_path)]) == 0


def test_bench_model_needs_a_device_it_can_use(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert main(["bench", "model", "--family", "ltx-video", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
