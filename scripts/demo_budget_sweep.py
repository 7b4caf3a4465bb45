"""The demo's budget recipe and its long videos, varied on one GPU (fp32, as on a CPU).

- Live recipe: for each seed, stage 1 as the demo runs it, then stage 2 with each setting of
  ``--variants`` (learning rate, steps, output-distillation weight λ); every student is scored by ToyBench
  on the demo's first ``--prompts`` prompts at its sampler settings (per-clip temporal consistency kept, so
  the demo's 4-prompt subset can be read off too). The stage-1-only student is scored as well.
- Long videos: the shipped student at 4× the training length for the demo's prompts and noise, at
  each sampler step count of ``--long-steps``.

Writes ``OUT/budget_sweep.json``, ``.md`` and ``.png``. Usage:
``python scripts/demo_budget_sweep.py --device cuda --out OUT [--seeds 0 1 2]``;
``--render OUT/budget_sweep.json`` writes the table and plot again from a run's JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from rehyat.experiments.demo import DemoSettings
from rehyat.toy.evaluate import toy_prompts
from rehyat.toy.model import (
    CLIP,
    bundled_student,
    bundled_teacher,
    load_text_encoder,
    load_toy_model,
    prompt_embeddings,
)
from rehyat.toy.recipe import distill_student, finetune_dataset, finetune_student, sample_with
from rehyat.toy.toybench import evaluate_videos

VARIANTS = {
    "demo": {},
    "lr3e-4": {"finetune_lr": 3e-4},
    "lr1e-3": {"finetune_lr": 1e-3},
    "distill": {"finetune_teacher_weight": 1.0},
    "distill_lr3e-4": {"finetune_teacher_weight": 1.0, "finetune_lr": 3e-4},
    "distill_lr1e-3": {"finetune_teacher_weight": 1.0, "finetune_lr": 1e-3},
    "half_lr3e-4": {"finetune_teacher_weight": 0.5, "finetune_lr": 3e-4},
    "steps30": {"finetune_steps": 30},
}
KEYS = ("adherence", "temporal_consistency", "motion_smoothness", "shape_accuracy", "size_drift")


def _score(videos, prompts) -> dict:
    metrics = evaluate_videos(videos, prompts)
    summary = {k: metrics[k] for k in KEYS}
    summary["per_clip_consistency"] = [c["temporal_consistency"] for c in metrics["per_clip"]]
    return summary


def _mean(values) -> float:
    return sum(values) / len(values)


def render(results: dict, out: Path) -> None:
    """The sweep's markdown table and plot beside its JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(results["live"])
    variants = [k for k in results["live"][seeds[0]] if isinstance(results["live"][seeds[0]][k], dict)]
    variants = [v for v in variants if "adherence" in results["live"][seeds[0]][v]]
    n = results["settings"]["prompts"]
    lines = [
        "# The demo's budget recipe and long videos, varied",
        "",
        f"{results.get('machine', '')} · command: `{results.get('command', '')}`",
        "",
        f"Live student (stage 1 as the demo runs it, then stage 2 varied), ToyBench on the demo's first {n} "
        f"prompts and noise, UniPC {results['settings']['sample_steps']} steps, per seed: temporal consistency "
        "over all prompts / over the first 8 (what the demo scores) · adherence.",
        "",
        "| stage 2 | " + " | ".join(f"seed {s}" for s in seeds) + " | min consistency (first 8) |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for name in variants:
        cells, firsts = [], []
        for seed in seeds:
            row = results["live"][seed][name]
            first = _mean(row["per_clip_consistency"][:8])
            firsts.append(first)
            cells.append(f"{row['temporal_consistency']:.1f} / {first:.1f} · {row['adherence']:.1f}")
        label = name if name == "stage1_only" else f"{name} {VARIANTS.get(name, {})}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {min(firsts):.1f} |")
    lines += [
        "",
        f"Shipped student, {results['settings'].get('long_frames', 64)}-frame videos (4×), the demo's prompts and "
        "noise: temporal consistency over the first 4 / 8 / all videos, and adherence over all.",
        "",
        "| sampler steps | first 4 | first 8 | all | adherence | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for steps, row in results["long"].items():
        pc = row["per_clip_consistency"]
        lines.append(
            f"| {steps} | {_mean(pc[:4]):.1f} | {_mean(pc[:8]):.1f} | {_mean(pc):.1f} ({len(pc)}) | "
            f"{row['adherence']:.1f} | {row['s']:.0f} |"
        )
    (out / "budget_sweep.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, seed in enumerate(seeds):
        xs = range(len(variants))
        ys = [_mean(results["live"][seed][v]["per_clip_consistency"][:8]) for v in variants]
        ax.scatter([x + 0.1 * (i - 1) for x in xs], ys, label=f"seed {seed}")
    ax.axhline(60, color="grey", linestyle="--", linewidth=1, label="target 60")
    ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right")
    ax.set_ylabel("temporal consistency (first 8)")
    ax.set_title("live budget student by stage-2 setting")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "budget_sweep.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/budget_sweep"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--long-steps", type=int, nargs="*", default=[8, 12, 20])
    parser.add_argument("--long-videos", type=int, default=16)
    parser.add_argument("--render", type=Path, help="only write the table and plot from this JSON")
    args = parser.parse_args()
    if args.render:
        render(json.loads(args.render.read_text()), args.render.parent)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    # The trainer runs bf16 autocast only for device "cuda"; "cuda:0" keeps fp32 as the CPU demo has it.
    train_device = "cuda:0" if args.device == "cuda" else args.device
    teacher = bundled_teacher()
    base = DemoSettings(progress=False)
    prompts = toy_prompts(base.eval_prompts, base.seed + 3)[: args.prompts]
    embeds = prompt_embeddings(load_text_encoder(teacher), prompts)
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    results: dict = {
        "machine": f"{gpu} · torch {torch.__version__}",
        "command": "python scripts/demo_budget_sweep.py " + " ".join(sys.argv[1:]),
        "settings": {"prompts": args.prompts, "sample_steps": base.sample_steps},
        "long": {},
        "live": {},
    }

    def save() -> None:
        (args.out / "budget_sweep.json").write_text(json.dumps(results, indent=1) + "\n")
        render(results, args.out) if results["live"] else None

    shipped = load_toy_model(teacher, bundled_student(), device)
    long_frames = base.long_factor * CLIP["num_frames"]
    for steps in args.long_steps:
        tic = time.perf_counter()
        videos = sample_with(
            shipped,
            embeds[: args.long_videos],
            replace(base, sample_steps=steps),
            frames=long_frames,
            first_seed=2000,
            recurrent=True,
        )
        results["long"][str(steps)] = {
            **_score(videos, prompts[: args.long_videos]),
            "s": time.perf_counter() - tic,
        }
        print("long", steps, {k: results["long"][str(steps)][k] for k in KEYS}, flush=True)
        save()
    short = sample_with(shipped, embeds, base, frames=CLIP["num_frames"], first_seed=1000, recurrent=True)
    results["shipped_short"] = _score(short, prompts)
    save()

    for seed in args.seeds:
        settings = replace(base, seed=seed)
        work = args.work / f"seed{seed}"
        tic = time.perf_counter()
        distill = distill_student(teacher, work / "distill", settings, train_device)
        stage1_s = time.perf_counter() - tic
        heldout = {
            b: {v: r["heldout"][v]["rel_error"] for v in r["heldout"]} for b, r in distill["blocks"].items()
        }
        row = {"stage1_s": stage1_s, "heldout": heldout}
        model = load_toy_model(teacher, work / "distill" / "rehyat", device)
        row["stage1_only"] = _score(
            sample_with(model, embeds, settings, frames=CLIP["num_frames"], first_seed=1000, recurrent=True),
            prompts,
        )
        dataset = finetune_dataset(work, settings)
        for name in args.variants:
            variant = replace(settings, **VARIANTS[name])
            tic = time.perf_counter()
            live = finetune_student(
                teacher,
                work / "distill" / "rehyat",
                work / f"finetune_{name}",
                dataset,
                variant,
                train_device,
            )
            seconds = time.perf_counter() - tic
            model = load_toy_model(teacher, live, device)
            finite = all(torch.isfinite(p).all().item() for p in model.parameters())
            videos = sample_with(
                model, embeds, variant, frames=CLIP["num_frames"], first_seed=1000, recurrent=True
            )
            row[name] = {**_score(videos, prompts), "finite": finite, "stage2_s": seconds}
            print("seed", seed, name, {k: row[name][k] for k in KEYS}, flush=True)
            results["live"][str(seed)] = row
            save()


if __name__ == "__main__":
    main()
