"""``rehyat bench op``: the op on a CPU (or any device torch runs on) as the video grows.

Full softmax attention (torch SDPA), the parallel ReHyAt form and the recurrent form run on the same
inputs at growing frame counts; each run happens in a fresh subprocess so that its peak resident memory
is its own. The recurrent run streams: it creates each chunk's inputs when it needs them and drops each
chunk's output, which is how a long video is generated in bounded memory. Outputs are compared through
per-chunk fingerprints (sum and sum of squares).
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DemoShape:
    frame_tokens: int = 256
    heads: int = 4
    head_dim: int = 32
    chunk_frames: int = 3
    overlap_frames: int = 1
    feature_degree: int = 2


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _frame_inputs(shape: DemoShape, frames: range, phi):
    """q, k, v, fq, fk for the given frames; frame f's tokens come from a generator seeded with f."""
    import torch

    parts = []
    for frame in frames:
        gen = torch.Generator().manual_seed(frame)
        parts.append(torch.randn(3, 1, shape.frame_tokens, shape.heads, shape.head_dim, generator=gen))
    q, k, v = torch.cat(parts, dim=2).unbind(0)
    with torch.no_grad():
        return q, k, v, phi(q), phi(k)


def _fingerprint(out, shape: DemoShape) -> list[list[float]]:
    chunk_tokens = shape.chunk_frames * shape.frame_tokens
    return [
        [float(c.double().sum()), float(c.double().square().sum())] for c in out.split(chunk_tokens, dim=1)
    ]


def _attend(method: str, frames: int, shape: DemoShape, phi) -> tuple[float, list[list[float]]]:
    """Run one method over ``frames`` frames; return (seconds in the op, output fingerprint)."""
    import torch

    from rehyat import hybrid_attention, hybrid_attention_step

    kwargs = dict(frame_tokens=shape.frame_tokens, overlap_frames=shape.overlap_frames)
    elapsed, fingerprint = 0.0, []
    with torch.no_grad():
        if method == "recurrent":
            state = None
            for start in range(0, frames, shape.chunk_frames):
                chunk = _frame_inputs(shape, range(start, min(start + shape.chunk_frames, frames)), phi)
                tic = time.perf_counter()
                out, state = hybrid_attention_step(*chunk, state, **kwargs)
                elapsed += time.perf_counter() - tic
                fingerprint += _fingerprint(out, shape)
            return elapsed, fingerprint
        q, k, v, fq, fk = _frame_inputs(shape, range(frames), phi)
        tic = time.perf_counter()
        if method == "full":
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ).transpose(1, 2)
        else:
            out = hybrid_attention(q, k, v, fq, fk, chunk_frames=shape.chunk_frames, **kwargs)
        return time.perf_counter() - tic, _fingerprint(out, shape)


def measure(method: str, frames: int, shape: DemoShape, threads: int) -> dict:
    """Time and peak memory of one method (``"full"``, ``"parallel"`` or ``"recurrent"``) at one length:
    the body of one fresh subprocess (run it in one, so the peak is its own). Returns ``{"ms", "peak_mb",
    "fingerprint"}``, the fingerprint being each chunk's output sum and sum of squares.

    A warm-up run over two chunks comes first, so that the baseline already holds the interpreter,
    torch's kernels and the allocator's steady per-chunk working set; ``peak_mb`` is what the real
    run needs beyond that.
    """
    import torch

    from rehyat import PolynomialFeatureMap

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    phi = PolynomialFeatureMap(shape.heads, shape.head_dim, shape.feature_degree)
    _attend(method, min(frames, 2 * shape.chunk_frames), shape, phi)
    baseline = _peak_rss_mb()
    elapsed, fingerprint = _attend(method, frames, shape, phi)
    return {"ms": elapsed * 1e3, "peak_mb": _peak_rss_mb() - baseline, "fingerprint": fingerprint}


def fingerprint_rel_diff(a: list[list[float]], b: list[list[float]]) -> float:
    """The largest relative difference between two runs' fingerprints (see :func:`measure`), chunk by chunk."""
    worst = 0.0
    for (sa, qa), (sb, qb) in zip(a, b, strict=True):
        worst = max(worst, abs(qa - qb) / max(abs(qb), 1e-30), abs(sa - sb) / max(abs(qb) ** 0.5, 1e-30))
    return worst


def run_demo(frame_counts: list[int], shape: DemoShape, threads: int) -> list[dict]:
    from rich.progress import track

    context = multiprocessing.get_context("spawn")
    jobs = [(frames, method) for frames in frame_counts for method in ("full", "parallel", "recurrent")]
    results: dict[tuple[int, str], dict] = {}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for frames, method in track(jobs, description="running"):
            results[frames, method] = pool.apply(measure, (method, frames, shape, threads))
    rows = []
    for frames in frame_counts:
        row = {"frames": frames, "tokens": frames * shape.frame_tokens}
        for method in ("full", "parallel", "recurrent"):
            row[f"{method}_ms"] = results[frames, method]["ms"]
            row[f"{method}_peak_mb"] = results[frames, method]["peak_mb"]
        row["recurrent_vs_parallel_rel_diff"] = fingerprint_rel_diff(
            results[frames, "recurrent"]["fingerprint"], results[frames, "parallel"]["fingerprint"]
        )
        rows.append(row)
    return rows


def _print_table(rows: list[dict], shape: DemoShape) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"ReHyAt op on CPU: {shape.frame_tokens} tokens/frame, {shape.heads} heads × {shape.head_dim}, "
        f"Tc={shape.chunk_frames}, To={shape.overlap_frames} (peak MB = resident memory above idle)"
    )
    for column in (
        "frames",
        "tokens",
        "full ms",
        "parallel ms",
        "recurrent ms",
        "full MB",
        "parallel MB",
        "recurrent MB",
        "rec vs par",
    ):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["frames"]),
            str(r["tokens"]),
            *(f"{r[f'{m}_ms']:.0f}" for m in ("full", "parallel", "recurrent")),
            *(f"{r[f'{m}_peak_mb']:.0f}" for m in ("full", "parallel", "recurrent")),
            f"{r['recurrent_vs_parallel_rel_diff']:.1e}",
        )
    Console(width=max(Console().width, 130)).print(table)


@dataclass
class OpBenchSettings:
    """``rehyat bench op --set KEY=VALUE``: full softmax vs parallel vs recurrent ReHyAt on a CPU."""

    frames: list[int] = field(default_factory=lambda: [6, 12, 24, 48, 96])
    """Latent frame counts."""
    frame_tokens: int = 256
    """Tokens per latent frame."""
    threads: int = 2
    """torch CPU threads per run."""
    json_out: str | None = None
    """Also write the rows to this JSON file."""


def run(settings: OpBenchSettings) -> int:
    frame_tokens, frames, json_out, threads = (
        settings.frame_tokens,
        settings.frames,
        settings.json_out,
        settings.threads,
    )
    if any(f < 1 for f in frames):
        raise ValueError(f"--frames must all be >= 1, got {frames}")
    shape = DemoShape(frame_tokens=frame_tokens)
    rows = run_demo(sorted(frames), shape, threads)
    _print_table(rows, shape)
    if json_out:
        Path(json_out).write_text(json.dumps({"shape": asdict(shape), "rows": rows}, indent=2))
    return 0
