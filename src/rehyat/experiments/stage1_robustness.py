"""``rehyat bench stage1``: how robust stage 1 is — φ variants × learning rates × seeds on the toy teacher.

Each run is the toy recipe's stage 1 (:func:`rehyat.toy.recipe.distill_student`, the demo's sizes unless
``--set`` says otherwise) for one φ variant, learning rate and seed, scored on held-out sampler runs
against untrained φ. A block is *worse than untrained* when its trained φ ends with a higher held-out
relative error than the same φ before training, and *blown up* when that error exceeds 1 (the output is
further from the teacher's than zero is). Writes ``stage1_robustness.{json,md,png}``.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from rehyat.experiments.common import (
    environment,
    environment_markdown,
    markdown_table,
    read_json,
    write_json,
    write_markdown_keeping_notes,
)
from rehyat.models import ReHyAtConfig
from rehyat.settings import replace_config
from rehyat.toy.recipe import RecipeSettings

#: The φ variants compared: name → ReHyAtConfig fields over the paper's configuration.
VARIANTS: dict[str, dict[str, Any]] = {
    "paper (signed φ, full RoPE)": {},
    "signed φ, spatial RoPE": {"feature_rotary": "spatial"},
    "non-negative φ, full RoPE": {"feature_nonnegative": True},
    "non-negative φ, spatial RoPE (default)": {"feature_nonnegative": True, "feature_rotary": "spatial"},
}


def _one(job: tuple[str, float, int, RecipeSettings, str, str]) -> dict[str, Any]:
    import torch

    from rehyat.toy.model import bundled_teacher
    from rehyat.toy.recipe import distill_student

    variant, lr, seed, settings, work, device = job
    torch.set_num_threads(1)
    settings = replace_config(settings, [f"distill_lr={lr}", f"seed={seed}", "progress=false"])
    folder = Path(work) / f"{list(VARIANTS).index(variant)}-lr{lr:g}-seed{seed}"
    tic = time.perf_counter()
    report = distill_student(
        bundled_teacher(), folder, settings, device, ReHyAtConfig.paper(**VARIANTS[variant])
    )
    blocks = {
        int(block): {
            "trained": result["selection"]["trained"]["rel_error"],
            "untrained": result["heldout"]["untrained"]["rel_error"],
            "reverted": result["selection"]["kept"] == "initial",
        }
        for block, result in report["blocks"].items()
    }
    return {
        "variant": variant,
        "lr": lr,
        "seed": seed,
        "blocks": blocks,
        "seconds": time.perf_counter() - tic,
    }


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for variant in VARIANTS:
        for lr in sorted({r["lr"] for r in rows}):
            runs = [r for r in rows if r["variant"] == variant and r["lr"] == lr]
            if not runs:
                continue
            blocks = [b for r in runs for b in r["blocks"].values()]
            out.append(
                {
                    "variant": variant,
                    "lr": lr,
                    "runs": len(runs),
                    "blocks": len(blocks),
                    "worse_than_untrained": sum(b["trained"] > b["untrained"] for b in blocks),
                    "blown_up": sum(b["trained"] > 1 for b in blocks),
                    "reverted": sum(b["reverted"] for b in blocks),
                    "mean_error": statistics.fmean(b["trained"] for b in blocks),
                    "max_error": max(b["trained"] for b in blocks),
                    "mean_untrained_error": statistics.fmean(b["untrained"] for b in blocks),
                }
            )
    return out


def render(payload: dict[str, Any], out: Path) -> None:
    summary = _summary(payload["rows"])
    table = markdown_table(
        [
            "φ variant",
            "lr",
            "runs",
            "blocks worse than untrained",
            "blown up (error > 1)",
            "reverted to untrained",
            "mean held-out error",
            "max",
            "untrained φ",
        ],
        [
            [
                s["variant"],
                f"{s['lr']:g}",
                s["runs"],
                f"{s['worse_than_untrained']}/{s['blocks']}",
                f"{s['blown_up']}/{s['blocks']}",
                f"{s['reverted']}/{s['blocks']}",
                s["mean_error"],
                s["max_error"],
                s["mean_untrained_error"],
            ]
            for s in summary
        ],
    )
    settings = payload["settings"]
    text = [
        "# Stage-1 robustness: φ variants × learning rates × seeds (toy teacher)",
        "",
        environment_markdown(payload["environment"]),
        "",
        f"Each run: the toy recipe's stage 1 with {settings['distill_prompts']} prompts "
        f"({settings['distill_heldout']} held out), captures at sampler steps {settings['capture_steps']} of "
        f"{settings['distill_steps']}, {settings['distill_inner_steps']} AdamW steps per capture; seeds "
        f"{payload['seeds']}. Errors are held-out relative L1 errors of the block's attention output "
        "(lower is better); 'worse than untrained' counts blocks whose trained φ ends above the same φ "
        "before training (the selection keeps the untrained one there: 'reverted'), 'blown up' blocks "
        "with an error above 1.",
        "",
        table,
        "",
        "![stage-1 robustness](stage1_robustness.png)",
        "",
    ]
    write_markdown_keeping_notes(out / "stage1_robustness.md", "\n".join(text))
    _plot(summary, out / "stage1_robustness.png")


def _plot(summary: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    lrs = sorted({s["lr"] for s in summary})
    for variant in VARIANTS:
        rows = {s["lr"]: s for s in summary if s["variant"] == variant}
        xs = [lr for lr in lrs if lr in rows]
        axes[0].plot(xs, [rows[lr]["mean_error"] for lr in xs], "o-", label=variant)
        axes[1].plot(
            xs, [rows[lr]["worse_than_untrained"] / rows[lr]["blocks"] for lr in xs], "o-", label=variant
        )
    for ax, label in zip(
        axes, ("mean held-out relative error", "fraction of blocks worse than untrained φ"), strict=True
    ):
        ax.set_xscale("log")
        ax.set_xlabel("stage-1 learning rate")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("Stage 1 on the toy teacher: φ variants × learning rates (mean over seeds and blocks)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    *,
    out: str,
    work: str,
    device: str,
    seeds: list[int],
    lrs: list[float],
    processes: int,
    overrides: list[str],
    render_only: bool,
) -> int:
    """Run the sweep (``processes`` stage-1 runs at a time) and write the results to ``out``."""
    out_dir = Path(out)
    if render_only:
        render(read_json(out_dir / "stage1_robustness.json"), out_dir)
        return 0
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda but no CUDA GPU is available")
    if processes < 1:
        raise ValueError(f"--processes must be >= 1, got {processes}")
    settings = replace_config(RecipeSettings(distill_variants=("rehyat", "untrained")), overrides)
    jobs = [(v, lr, seed, settings, work, device) for v in VARIANTS for lr in lrs for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        rows = pool.map(_one, jobs, chunksize=1)
    from rehyat.settings import config_to_dict

    payload = {
        "environment": environment(),
        "settings": config_to_dict(settings),
        "seeds": seeds,
        "rows": rows,
    }
    write_json(payload, out_dir / "stage1_robustness.json")
    render(payload, out_dir)
    print((out_dir / "stage1_robustness.md").read_text())
    return 0
