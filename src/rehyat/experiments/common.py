"""Helpers shared by the ``rehyat bench`` targets: environment record, CUDA timing and peak memory,
and writing results as JSON + a markdown table + a PNG plot.

A target measures on the GPU and writes JSON (the record); the markdown and the plot are rendered from
that JSON, so they can be re-rendered on a machine without a GPU (``--render-only``) — matplotlib is
needed only for the PNG.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def _command_line() -> str:
    """The command as typed: ``rehyat bench …`` (also via ``python -m rehyat.cli``)."""
    program = Path(sys.argv[0])
    if program.name == "rehyat" or (program.name == "__main__.py" and program.parent.name == "cli"):
        return shlex.join(["rehyat", *sys.argv[1:]])
    return shlex.join(sys.argv)


def environment() -> dict[str, Any]:
    """What produced a result: GPU, library versions, the command line, the time."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda
        else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "command": _command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def time_ms(
    fn: Callable[[], object], *, rep_ms: float = 200.0, max_reps: int = 50, min_reps: int = 3
) -> float:
    """Median wall time of ``fn`` on the current CUDA stream, in ms (CUDA events, warm-up excluded).

    One warm-up call (compilation, autotuning, allocator), one call to estimate the cost, then as many
    timed calls as fit in ``rep_ms`` (at least ``min_reps``, at most ``max_reps``).
    """
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    reps = int(min(max(rep_ms / max(start.elapsed_time(end), 1e-3), min_reps), max_reps))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before it, in MiB."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "—"
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return "—" if value is None else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def environment_markdown(env: dict[str, Any]) -> str:
    return (
        f"GPU: {env.get('gpu')} ({env.get('gpu_memory_gib')} GiB) · torch {env.get('torch')} (CUDA "
        f"{env.get('cuda')}) · triton {env.get('triton')} · python {env.get('python')} · {env.get('date')}\n\n"
        f"Command: `{env.get('command')}`"
    )


def plot_loglog(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    styles: dict[str, str] | None = None,
    colors: dict[str, str] | None = None,
) -> bool:
    """Log-log line plot of ``{label: (xs, ys)}`` to ``path``, legend outside on the right; False (and
    nothing written) without matplotlib. Points that are NaN (not run, out of memory) are left out.
    ``styles``/``colors`` map labels to matplotlib format strings / colors (default: distinct colors)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {path} not written", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(10, 5.5))
    palette = plt.get_cmap("tab20").colors
    for index, (label, (xs, ys)) in enumerate(series.items()):
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if y == y and y > 0]
        if points:
            color = (colors or {}).get(label, palette[index % len(palette)])
            ax.plot(*zip(*points, strict=True), (styles or {}).get(label, "o-"), label=label, color=color)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


#: Written notes below this line of a results markdown file survive the table being written again.
NOTES_MARKER = "<!-- notes: kept when the table is written again -->"


def write_markdown_keeping_notes(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, keeping whatever followed :data:`NOTES_MARKER` in the file before."""
    notes = path.read_text().partition(NOTES_MARKER)[2] if path.is_file() else ""
    path.write_text(text + "\n" + (f"\n{NOTES_MARKER}{notes}" if notes else ""))


def write_json(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of an earlier run's results; a ValueError naming the file if it is missing,
    damaged or not an object."""
    from rehyat.models.checkpoint import read_json_object

    if not Path(path).is_file():
        raise ValueError(f"{path} does not exist (the results of an earlier run)")
    return read_json_object(Path(path))
