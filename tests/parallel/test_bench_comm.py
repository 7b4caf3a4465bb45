"""``rehyat bench comm`` without processes (``--set skip_measure=true``): the analytic table at Wan's geometry."""

from __future__ import annotations

import json

from rehyat.cli import main as cli
from rehyat.experiments.bench_comm import WAN_GEOMETRY, ring_bytes


def test_comm_benchmark_analytic_table(tmp_path):
    assert (
        cli(
            [
                "bench",
                "comm",
                "--frames",
                "21",
                "81",
                "--set",
                "ranks=[2,8]",
                "skip_measure=true",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    payload = json.loads((tmp_path / "chunk_parallel_comm.json").read_text())
    rows = {(e["frames"], e["ranks"]): e["wan"] for e in payload["results"]}
    assert rows[21, 8]["rehyat_per_rank"] is None  # 7 chunks for 8 ranks
    full_kv = 81 * 1560 * 12 * 128 * 2 * 2
    assert rows[81, 2]["ring_per_rank"] == [full_kv // 2] * 2
    busiest = max(sum(r.values()) for r in rows[81, 2]["rehyat_per_rank"])
    assert busiest == 2 * 1560 * 12 * 128 * 2 + 2 * (12 * 256 * 129 * 4)  # halo + partial + total
    assert ring_bytes(81, 2, WAN_GEOMETRY) == rows[81, 2]["ring_per_rank"]
    table = (tmp_path / "chunk_parallel_comm.md").read_text()
    assert "n/a (fewer chunks than ranks)" in table and "30.4×" in table
