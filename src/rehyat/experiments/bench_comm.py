"""``rehyat bench comm``: bytes per layer per rank of ReHyAt chunk parallelism vs ring attention.

Analytic at Wan2.1-1.3B's geometry (480×832: 1560 tokens per latent frame, 12 heads × 128, D' = 256,
bf16 K and V, fp32 linear sums; Tc = 3, To = 1, frames split in balanced runs of whole chunks):

- ReHyAt, per converted layer and rank (forward): halo K, V of To frames to the next rank, a partial
  sum where the next rank's first window starts inside this rank's range, and this rank's share of the
  all-gather of the fixed-size totals (world − 1 copies, as a ring all-gather sends);
- ring attention on the original model: each rank passes K, V shards around the ring for N − 1 steps,
  (N − 1)/N of the whole K and V per rank and layer.

Measured on CPU with gloo: N processes run the tiny Wan (2 heads × 12, 16 tokens per frame, D' = 24,
fp32) chunk-parallel at the same frame and rank counts, and a ring pass of the same model's K, V
shards; a :class:`~rehyat.parallel.CommCounter` counts the bytes each rank's sends carry. The counted
bytes must equal the analytic formula evaluated at the tiny geometry, which is what makes the Wan
numbers (the same formula) a measurement rather than a guess.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rehyat.experiments.common import (
    environment,
    environment_markdown,
    markdown_table,
    plot_loglog,
    write_json,
)

WAN_GEOMETRY = dict(frame_tokens=1560, heads=12, head_dim=128, feature_dim=256, element_bytes=2)
TINY_GEOMETRY = dict(frame_tokens=16, heads=2, head_dim=12, feature_dim=24, element_bytes=4)


def _layout(frames: int, ranks: int, chunk: int, overlap: int):
    from rehyat.parallel import FrameLayout, balanced_frame_ranges

    try:
        ranges = balanced_frame_ranges(frames, ranks, chunk)
    except ValueError:
        return None  # fewer chunks than ranks
    return FrameLayout.checked(ranges, chunk, overlap, True)


def rehyat_bytes(layout, geometry: dict) -> list[dict[str, int]]:
    """Per rank: {halo, partial, total} bytes sent per layer (forward), batch 1."""
    return [layout.bytes_sent(rank, batch=1, **geometry) for rank in range(layout.world)]


def ring_bytes(frames: int, ranks: int, geometry: dict) -> list[int]:
    """Per rank: bytes ring attention sends per layer, tokens split as evenly as possible: rank r
    forwards every shard but its successor's (N − 1 steps)."""
    tokens = frames * geometry["frame_tokens"]
    shards = [tokens // ranks + (r < tokens % ranks) for r in range(ranks)]
    per_token = 2 * geometry["heads"] * geometry["head_dim"] * geometry["element_bytes"]
    return [(tokens - shards[(r + 1) % ranks]) * per_token for r in range(ranks)]


def _measure(
    rank: int, world: int, store: str, frames_list: list[int], chunk: int, overlap: int, out: str
) -> None:
    """One rank: the tiny Wan chunk-parallel (no grad) and a ring pass of its K, V, counted."""
    import copy

    import torch
    import torch.distributed as dist
    from diffusers import WanTransformer3DModel

    from rehyat import ReHyAtConfig, convert_wan
    from rehyat.models.wan_configs import tiny_wan_config
    from rehyat.parallel import CommCounter, chunk_parallel, shard_frames
    from rehyat.parallel.comm import Incoming, Outgoing, point_to_point

    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=300)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timeout
    )
    torch.manual_seed(0)
    base = WanTransformer3DModel(**tiny_wan_config(rope_max_seq_len=max(frames_list))).eval()
    model = convert_wan(copy.deepcopy(base), ReHyAtConfig(chunk_frames=chunk, overlap_frames=overlap))
    layers = len(model.blocks)
    heads, head_dim = TINY_GEOMETRY["heads"], TINY_GEOMETRY["head_dim"]
    rows = []
    for frames in frames_list:
        layout = _layout(frames, world, chunk, overlap)
        row = {"frames": frames, "ranks": world, "rank": rank}
        if layout is not None:
            gen = torch.Generator().manual_seed(frames)
            latent = torch.randn(1, 16, frames, 8, 8, generator=gen)
            context = torch.randn(1, 6, 32, generator=gen)
            with torch.no_grad(), chunk_parallel(model, None, layout.ranges), CommCounter() as counter:
                model(shard_frames(latent, layout.ranges, rank), torch.tensor([500.0]), context)
            found = counter.by_label("forward")
            row["rehyat"] = {
                "halo": (found.get("halo_k", 0) + found.get("halo_v", 0)) // layers,
                "partial": found.get("partial", 0) // layers,
                "total": found.get("total", 0) // layers,
            }
        # Ring attention: N − 1 steps, each rank passes the K, V shard it holds to the next rank.
        tokens = frames * TINY_GEOMETRY["frame_tokens"]
        shards = [tokens // world + (r < tokens % world) for r in range(world)]
        held = torch.randn(1, shards[rank], heads, 2 * head_dim)
        with CommCounter() as counter:
            for step in range(world - 1):
                source = (rank - step - 1) % world  # the shard arriving now started there
                (held,) = point_to_point(
                    None,
                    [(Outgoing((rank + 1) % world, 7, "ring_kv"), held)],
                    [
                        Incoming(
                            (rank - 1) % world,
                            7,
                            "ring_kv",
                            (1, shards[source], heads, 2 * head_dim),
                            held.dtype,
                        )
                    ],
                    held.device,
                    "forward",
                )
        row["ring"] = counter.total()
        rows.append(row)
    Path(out, f"rank-{rank}.json").write_text(json.dumps(rows))
    dist.destroy_process_group()


def measure(frames_list: list[int], ranks_list: list[int], chunk: int, overlap: int) -> list[dict]:
    import torch.multiprocessing as mp

    rows = []
    for world in ranks_list:
        with tempfile.TemporaryDirectory() as folder:
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            mp.spawn(
                _measure, args=(world, f"{folder}/store", frames_list, chunk, overlap, folder), nprocs=world
            )
            for rank in range(world):
                rows += json.loads(Path(folder, f"rank-{rank}.json").read_text())
    return rows


def build(frames_list, ranks_list, chunk: int, overlap: int, measured: list[dict] | None) -> dict:
    results = []
    for frames in frames_list:
        for ranks in ranks_list:
            layout = _layout(frames, ranks, chunk, overlap)
            entry = {"frames": frames, "ranks": ranks, "ranges": None if layout is None else layout.ranges}
            for name, geometry in (("wan", WAN_GEOMETRY), ("tiny", TINY_GEOMETRY)):
                ring = ring_bytes(frames, ranks, geometry)
                entry[name] = {"ring_per_rank": ring, "rehyat_per_rank": None}
                if layout is not None:
                    entry[name]["rehyat_per_rank"] = rehyat_bytes(layout, geometry)
            if measured is not None:
                mine = sorted(
                    (r for r in measured if r["frames"] == frames and r["ranks"] == ranks),
                    key=lambda r: r["rank"],
                )
                entry["tiny"]["measured_rehyat_per_rank"] = [r.get("rehyat") for r in mine]
                entry["tiny"]["measured_ring_per_rank"] = [r["ring"] for r in mine]
                entry["tiny"]["measured_matches_analytic"] = entry["tiny"]["measured_ring_per_rank"] == entry[
                    "tiny"
                ]["ring_per_rank"] and entry["tiny"]["measured_rehyat_per_rank"] == (
                    entry["tiny"]["rehyat_per_rank"] or [None] * ranks
                )
            results.append(entry)
    return {
        "environment": environment(),
        "settings": {"chunk_frames": chunk, "overlap_frames": overlap, "causal": True, "batch": 1},
        "wan_geometry": WAN_GEOMETRY,
        "tiny_geometry": TINY_GEOMETRY,
        "results": results,
    }


def _mib(value: float) -> float:
    return value / 2**20


def render(payload: dict, out_dir: Path) -> None:
    settings = payload["settings"]
    rows = []
    series: dict[str, tuple[list, list]] = {}
    for entry in payload["results"]:
        wan = entry["wan"]
        ring = max(wan["ring_per_rank"])
        per_rank = wan["rehyat_per_rank"]
        worst = None if per_rank is None else max(sum(r.values()) for r in per_rank)
        parts = None if per_rank is None else max(per_rank, key=lambda r: sum(r.values()))
        tiny = entry["tiny"]
        check = tiny.get("measured_matches_analytic")
        rows.append(
            [
                entry["frames"],
                entry["ranks"],
                "n/a (fewer chunks than ranks)" if per_rank is None else f"{_mib(worst):,.1f}",
                "—"
                if parts is None
                else f"{_mib(parts['halo']):.2f} / {_mib(parts['partial']):.2f} / {_mib(parts['total']):.2f}",
                f"{_mib(ring):,.1f}",
                "—" if worst is None else f"{ring / worst:,.1f}×",
                "—" if per_rank is None else max(sum(r.values()) for r in tiny["rehyat_per_rank"]),
                max(tiny["ring_per_rank"]),
                {True: "yes", False: "NO", None: "not run"}[check],
            ]
        )
        for label, value in (
            (f"ReHyAt, {entry['ranks']} ranks", worst),
            (f"ring, {entry['ranks']} ranks", ring),
        ):
            xs, ys = series.setdefault(label, ([], []))
            xs.append(entry["frames"])
            ys.append(float("nan") if value is None else _mib(value))
    text = [
        "# Chunk parallelism: bytes per layer per rank, ReHyAt vs ring attention",
        "",
        environment_markdown(payload["environment"]),
        "",
        f"One self-attention layer's forward, the busiest rank. Wan2.1-1.3B at 480×832 (1560 tokens per latent frame, "
        f"12 heads × 128, D' = 256), batch 1, bf16 K/V, fp32 linear sums; ReHyAt Tc = {settings['chunk_frames']}, "
        f"To = {settings['overlap_frames']}, causal, frames split in balanced runs of whole chunks. ReHyAt = halo "
        "K, V + partial sums + the rank's share of the all-gather of totals ((N − 1) copies of "
        "12·256·129·4 B = 1.51 MiB); ring = (N − 1)/N of the whole K, V. The backward sends the same amounts "
        "back along the same edges. Blocks left with full softmax attention cost the ring column.",
        "",
        "Measured: the tiny Wan (2 heads × 12, 16 tokens/frame, D' = 24, fp32) run chunk-parallel on CPU "
        "with gloo at the same frame and rank counts, bytes counted at every send; 'counted = formula' "
        "compares every rank's counted bytes with the formula at the tiny geometry (ring: a real ring pass).",
        "",
        markdown_table(
            [
                "latent frames",
                "ranks",
                "ReHyAt MiB",
                "halo / partial / totals MiB",
                "ring MiB",
                "ring ÷ ReHyAt",
                "tiny ReHyAt B",
                "tiny ring B",
                "counted = formula",
            ],
            rows,
        ),
        "",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "chunk_parallel_comm.md").write_text("\n".join(text))
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    counts = sorted({label.split(", ")[1] for label in series}, key=lambda c: int(c.split()[0]))
    colors = {count: palette[i % len(palette)] for i, count in enumerate(counts)}
    plot_loglog(
        series,
        out_dir / "chunk_parallel_comm.png",
        xlabel="latent frames (480×832, 1560 tokens each)",
        ylabel="MiB sent per layer per rank (forward, busiest rank)",
        title="Wan2.1-1.3B: ReHyAt chunk parallelism vs ring attention",
        styles={label: ("o-" if label.startswith("ReHyAt") else "s--") for label in series},
        colors={label: colors[label.split(", ")[1]] for label in series},
    )


@dataclass
class CommBenchSettings:
    """``rehyat bench comm --set KEY=VALUE``: chunk parallelism vs ring attention, bytes per layer per rank
    (CPU, gloo)."""

    frames: list[int] = field(default_factory=lambda: [21, 81, 161])
    """Latent frame counts."""
    ranks: list[int] = field(default_factory=lambda: [2, 4, 8])
    """Rank counts."""
    chunk_frames: int = 3
    """Tc."""
    overlap_frames: int = 1
    """To."""
    out: str = "bench/results"
    """Folder for chunk_parallel_comm.json/.md/.png."""
    skip_measure: bool = False
    """Analytic only (no gloo processes)."""
    render_only: bool = False
    """Re-render the markdown/PNG from the JSON."""


def run(settings: CommBenchSettings) -> int:
    frames, ranks = settings.frames, settings.ranks
    chunk_frames, overlap_frames = settings.chunk_frames, settings.overlap_frames
    out_dir = Path(settings.out)
    path = out_dir / "chunk_parallel_comm.json"
    if settings.render_only:
        render(json.loads(path.read_text()), out_dir)
        return 0
    if any(f < 1 for f in frames) or any(r < 2 for r in ranks):
        raise ValueError(f"frames must be >= 1 and ranks >= 2, got {frames} and {ranks}")
    measured = None if settings.skip_measure else measure(frames, ranks, chunk_frames, overlap_frames)
    payload = build(frames, ranks, chunk_frames, overlap_frames, measured)
    write_json(payload, path)
    render(payload, out_dir)
    print((out_dir / "chunk_parallel_comm.md").read_text())
    return 0 if all(e["tiny"].get("measured_matches_analytic", True) for e in payload["results"]) else 1
