"""CPU smoke test of ``rehyat bench attention``'s plumbing: arguments, JSON → markdown + PNG rendering."""

from __future__ import annotations

import importlib.util
import json

import pytest

from rehyat.cli import build_parser
from rehyat.experiments import bench_attention as attention
from rehyat.experiments.common import environment, write_json


def _payload() -> dict:
    results = []
    for frames in (21, 41):
        scale = frames / 21
        for row, ms in (
            ("sdpa_cudnn", 10.0 * scale**2),
            ("sdpa_flash", 18.0 * scale**2),
            ("rehyat_layer", 4.0 * scale),
        ):
            entry = {"ms": ms, "tflops": 100.0, "peak_mib": 50.0}
            results.append({"frames": frames, "row": row, "fwd": entry, "fwd_bwd": dict(entry, ms=3 * ms)})
        results.append({"frames": frames, "row": "rehyat_torch", "fwd": {"error": "OOM"}})
    return {
        "environment": environment(),
        "shape": attention.SHAPE,
        "parity": {"out": 1e-3},
        "results": results,
    }


def test_cli_target_and_render_only(tmp_path):
    args = build_parser().parse_args(["bench", "attention", "--render-only", "--out", str(tmp_path)])
    write_json(_payload(), tmp_path / "attention.json")
    assert args.handler(args) == 0
    table = (tmp_path / "attention.md").read_text()
    assert "| 21 | rehyat_layer | 4 | 0.19 | 100 | 50 | 2.5 |" in table  # speedup vs the fastest SDPA
    assert "| 41 | rehyat_torch | OOM |" in table
    assert (tmp_path / "attention.png").exists() == (importlib.util.find_spec("matplotlib") is not None)


def test_parity_only_merges_into_a_runs_results(tmp_path, monkeypatch):
    """``--set parity_only=true`` replaces the parity of an existing attention.json, keeps its timings, records
    its own environment and re-renders; without a run's JSON it says what is missing."""
    run = _payload()  # before CUDA is faked below
    monkeypatch.setattr(attention.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(attention, "run_parity", lambda: {"triton_bf16.out": 2e-3})
    monkeypatch.setattr(attention, "feature_map_parity", lambda: {"phi_triton_bf16.phi": 1e-4})
    monkeypatch.setattr(attention, "environment", lambda: {"gpu": "Test GPU", "date": "2026-11-26"})
    args = build_parser().parse_args(
        ["bench", "attention", "--set", "parity_only=true", "--out", str(tmp_path)]
    )
    with pytest.raises(ValueError, match=r"attention\.json does not exist"):
        args.handler(args)
    write_json(run, tmp_path / "attention.json")
    assert args.handler(args) == 0
    merged = json.loads((tmp_path / "attention.json").read_text())
    assert merged["parity"] == {"triton_bf16.out": 2e-3, "phi_triton_bf16.phi": 1e-4}
    assert merged["results"] == run["results"] and merged["parity_environment"]["gpu"] == "Test GPU"
    table = (tmp_path / "attention.md").read_text()
    assert "Measured in a separate run (`--set parity_only=true`): Test GPU, 2026-11-26." in table
    assert "| triton_bf16.out | 0.002 |" in table


def test_recurrent_target_reads_the_side_by_side_pairs(tmp_path, monkeypatch):
    """The recurrent/parallel ratio comes from alternating timings where a run has them (rows
    measured minutes apart drift), from the rows otherwise; ``paired_times`` alternates and takes medians."""
    calls = []

    def fake_time(fn, rep_ms):
        calls.append(fn())
        return {"op": 10.0, "rec": 12.0}[calls[-1]] + len(calls) % 3

    monkeypatch.setattr(attention, "time_ms", fake_time)
    pair = attention.paired_times(lambda: "op", lambda: "rec", rep_ms=50.0)
    assert calls == ["op", "rec"] * 5
    assert pair["parallel_ms"] == 11.0 and pair["recurrent_ms"] == 13.0 and pair["ratio"] == 13.0 / 11.0

    payload = _payload()
    for frames, rec in ((21, 5.6), (41, 11.0)):
        entry = {"ms": rec, "tflops": 1.0, "peak_mib": 1.0}
        payload["results"] += [
            {"frames": frames, "row": "recurrent", "fwd": entry},
            {"frames": frames, "row": "rehyat_op", "fwd": dict(entry, ms=4.0 * frames / 21)},
        ]
    attention.render(payload, tmp_path)
    assert "21: 1.40×, 41: 1.41× (target ≤ 1.3×) — missed" in (tmp_path / "attention.md").read_text()
    payload["recurrent_pairs"] = [{"frames": 21, "ratio": 1.2}, {"frames": 41, "ratio": 1.25}]
    attention.render(payload, tmp_path)
    assert (
        "side by side at 21, 41 frames): 21: 1.20×, 41: 1.25× (target ≤ 1.3×) — met"
        in (tmp_path / "attention.md").read_text()
    )
