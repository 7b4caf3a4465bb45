"""``rehyat bench distill``: stage-1 training speed and memory for one block at Wan2.1-1.3B shapes.

One student step (φq, φk forward, the attention variant, L1 against the teacher output, backward,
AdamW) on a capture shaped like Wan2.1-T2V-1.3B self-attention at 480×832 (1560 tokens per latent
frame, 12 heads × 128, bf16): q and k are RMS-normalised like Wan's QK norm, y is the teacher's softmax
output of the same q, k, v (torch SDPA). Reports median ms per step, steps/s and peak memory above the
capture, for the ReHyAt student (L1 alone, and with the out-of-window mass error at λ = 1 on 256 rows,
``DistillConfig.mass_weight``) and the linear-only baseline, at each latent frame count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from rehyat.experiments.common import (
    environment,
    environment_markdown,
    is_oom,
    markdown_table,
    peak_memory_mib,
    plot_loglog,
    read_json,
    time_ms,
    write_json,
)
from rehyat.models.config import ReHyAtConfig
from rehyat.training.capture import AttentionCapture
from rehyat.training.students import BlockStudent

HEADS, HEAD_DIM, FRAME_TOKENS = 12, 128, 1560
#: Row name → (student variant, mass_weight).
VARIANTS = {"rehyat": ("rehyat", 0.0), "rehyat + mass": ("rehyat", 1.0), "linear": ("linear", 0.0)}


def _capture(frames: int, device: str) -> AttentionCapture:
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, frames * FRAME_TOKENS, HEADS, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=device, generator=gen, dtype=torch.bfloat16) for _ in range(3))
    q, k = (torch.nn.functional.rms_norm(t, (HEAD_DIM,)) for t in (q, k))
    with torch.no_grad():
        y = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v))
        ).transpose(1, 2)
    return AttentionCapture(q, k, v, y.contiguous(), FRAME_TOKENS)


def run_benchmark(frames: list[int], rep_ms: float) -> list[dict]:
    rows = []
    for count in frames:
        capture = _capture(count, "cuda")
        for variant, (kind, mass_weight) in VARIANTS.items():
            student = BlockStudent(
                kind, ReHyAtConfig(), HEADS, HEAD_DIM, device="cuda", mass_weight=mass_weight
            )
            row = {
                "frames": count,
                "variant": variant,
                "ms": math.nan,
                "steps_per_s": math.nan,
                "peak_mib": math.nan,
                "status": "ok",
            }
            try:
                step = partial(student.train_step, capture)
                row["ms"] = time_ms(step, rep_ms=rep_ms, max_reps=20)
                row["steps_per_s"] = 1e3 / row["ms"]
                row["peak_mib"] = peak_memory_mib(step)
            except RuntimeError as error:
                if not is_oom(error):
                    raise
                row["status"] = "out of memory"
                torch.cuda.empty_cache()
            rows.append(row)
            print(row, flush=True)
        torch.cuda.empty_cache()
    return rows


def render(payload: dict, out_dir: Path) -> None:
    rows = payload["rows"]
    table = markdown_table(
        ["latent frames", "variant", "ms / step", "steps/s", "peak MiB above capture", "status"],
        [[r["frames"], r["variant"], r["ms"], r["steps_per_s"], r["peak_mib"], r["status"]] for r in rows],
    )
    capture_mib = {r["frames"]: 4 * r["frames"] * FRAME_TOKENS * HEADS * HEAD_DIM * 2 / 2**20 for r in rows}
    (out_dir / "distill.md").write_text(
        "# Stage-1 distillation step, one block, Wan2.1-1.3B shapes\n\n"
        + environment_markdown(payload["environment"])
        + "\n\nOne student step = φq, φk forward, attention, L1 vs the teacher output (`rehyat + mass`: plus "
        "the out-of-window mass error on 256 rows), backward, AdamW; "
        "bf16 capture, Tc=3, To=1, D'=256. Capture sizes (q, k, v, y): "
        + ", ".join(f"{f} frames {m:,.0f} MiB" for f, m in capture_mib.items())
        + ".\n\n"
        + table
        + "\n"
    )
    series = {
        v: ([r["frames"] for r in rows if r["variant"] == v], [r["ms"] for r in rows if r["variant"] == v])
        for v in VARIANTS
        if any(r["variant"] == v for r in rows)
    }
    plot_loglog(
        series,
        out_dir / "distill.png",
        xlabel="latent frames",
        ylabel="ms per student step",
        title="Stage-1 student step, one Wan2.1-1.3B block (bf16)",
    )


@dataclass
class DistillBenchSettings:
    """``rehyat bench distill --set KEY=VALUE``: a stage-1 student step at Wan2.1-1.3B shapes (GPU)."""

    frames: list[int] = field(default_factory=lambda: [21, 41])
    """Latent frames (21 = 81 video frames)."""
    rep_ms: float = 2000.0
    """Time budget per measurement."""
    out: str = "bench/results"
    """Output folder."""
    render_only: bool = False
    """Re-render the markdown/PNG from the JSON."""


def run(settings: DistillBenchSettings) -> int:
    frames, rep_ms = settings.frames, settings.rep_ms
    out_dir = Path(settings.out)
    if settings.render_only:
        render(read_json(out_dir / "distill.json"), out_dir)
        return 0
    if not torch.cuda.is_available():
        raise ValueError("rehyat bench distill needs a CUDA GPU (use --render-only to re-render results)")
    payload = {"environment": environment(), "rows": run_benchmark(frames, rep_ms)}
    write_json(payload, out_dir / "distill.json")
    render(payload, out_dir)
    return 0
