"""CPU smoke test of ``rehyat bench attention``'s plumbing: arguments, JSON → markdown + PNG rendering."""

from __future__ import annotations

import argparse
import importlib.util

from rehyat.bench import attention
from rehyat.bench.common import environment, write_json


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
    parser = argparse.ArgumentParser()
    attention.register(parser.add_subparsers())
    args = parser.parse_args(["attention", "--render-only", "--out", str(tmp_path)])
    write_json(_payload(), tmp_path / "attention.json")
    assert args.handler(args) == 0
    table = (tmp_path / "attention.md").read_text()
    assert "| 21 | rehyat_layer | 4 | 0.19 | 100 | 50 | 2.5 |" in table  # speedup vs the fastest SDPA
    assert "| 41 | rehyat_torch | OOM |" in table
    assert (tmp_path / "attention.png").exists() == (importlib.util.find_spec("matplotlib") is not None)
