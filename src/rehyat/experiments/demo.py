"""``rehyat demo``: ReHyAt on the bundled toy world, what works first, then the recipe live.

1. The shipped student (``rehyat/toy/assets/student``: the bundled teacher converted to ReHyAt and trained
   with the full recipe on a GPU, see its ``TRAINING.md``) and the teacher generate videos from identical
   noise for random prompts; ToyBench scores both; the student then generates videos 4× the training
   length recurrently (constant memory). GIFs and a PNG strip put teacher and student side by side.
2. The live recipe, a budget run on this machine: stage 1 (φ distilled from the teacher's attention, with
   untrained φ as the comparison) and a short stage 2 (flow matching), then ToyBench of that student.
3. Time and peak memory of generating one video as its length grows to 16× the training clip: the
   teacher (full attention, parallel) against the shipped student (recurrent), in interleaved repeats
   with medians and the machine's load recorded, and where and why the student overtakes the teacher
   (:mod:`rehyat.experiments.toy_scaling`).

Writes ``OUT/report.json``, ``OUT/report.md``, PNG plots and labelled GIFs, and the targets the demo is
held to; a ``--quick`` smoke run's report says it is one.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rehyat.experiments.toy_scaling import STUDENT, crossover_text, load_text, measure_scaling
from rehyat.models import read_rehyat_config
from rehyat.toy.evaluate import toy_prompts
from rehyat.toy.generate import video_uint8
from rehyat.toy.model import (
    CLIP,
    bundled_student,
    bundled_teacher,
    load_text_encoder,
    load_toy_model,
    prompt_embeddings,
)
from rehyat.toy.recipe import (
    QUICK,
    RecipeSettings,
    distill_student,
    finetune_dataset,
    finetune_student,
    sample_with,
)
from rehyat.toy.toybench import evaluate_videos
from rehyat.utils import check_int


@dataclass
class DemoSettings(RecipeSettings):
    """The demo's sizes: the recipe's stage sizes (a budget run), plus how many prompts each part scores."""

    eval_prompts: int = 24  # teacher and shipped student, identical noise
    long_videos: int = 4  # shipped student, 4× the training length
    live_prompts: int = 8  # the live student, the first of the same prompts
    distill_variants: tuple[str, ...] = ("rehyat", "untrained")
    # 20 stage-2 steps left the live student's consistency at 51–64 over seeds, 30 at 66–74
    # (bench/results/demo/budget_sweep.md).
    finetune_steps: int = 30
    # UniPC. The shipped student's motion wants more steps than the teacher's (its smoothness on 16 of
    # these prompts: 16 at 8 steps, 23 at 9, 35 at 12, 40 at 20); 9 keeps the demo under 10 minutes.
    sample_steps: int = 9
    # The recurrent form is bound by per-call overhead on a CPU: 24 videos at once sample about 20%
    # faster than 8, while the teacher's full attention is not faster in larger batches; and 4 chunks per
    # model call instead of 1 (the same videos; activations of 4 frames, still flat in the length) cut the
    # student's time at 64 frames by about a third (1.24 -> 0.85 s for one step on 2 cores).
    student_batch: int = 24
    chunks_per_call: int = 4
    # The time/memory-vs-length part: its growth, not its quality, is measured, so one sampler step (one
    # denoising call) per video. It reaches 8× the training length: at toy size the recurrent form's
    # per-call loop has a fixed cost that only the teacher's growing attention cost overtakes (between 16
    # and 32 frames at 4 chunks per call on a quiet 2-core CPU: 0.21 vs 0.15 s, 0.42 vs 0.53 s; about 64
    # at 1); interleaved repeats and medians keep a busy machine from deciding it. 256 frames would add
    # about 3 minutes (the teacher's 23 s per call, six calls) for a point past the crossover already shown.
    memory_frames: tuple[int, ...] = (16, 32, 64, 128)
    scaling_steps: int = 1
    scaling_repeats: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("live_prompts", self.live_prompts, 1, self.eval_prompts)
        check_int("long_videos", self.long_videos, 1, self.eval_prompts)
        check_int("scaling_steps", self.scaling_steps, 1)
        check_int("scaling_repeats", self.scaling_repeats, 1)
        check_int("student_batch", self.student_batch, 1)


QUICK_DEMO = DemoSettings(
    **{
        **asdict(QUICK),
        "eval_prompts": 2,
        "long_videos": 1,
        "live_prompts": 1,
        "distill_variants": ("rehyat", "untrained"),
        "sample_steps": 2,
        "memory_frames": (2, 4),
        "scaling_steps": 1,
        "scaling_repeats": 1,
    }
)

#: What the demo is held to (checked on its own run; see the report's "targets").
TARGETS = {
    "shipped adherence ≥ teacher − 5": lambda r: (
        r["models"]["rehyat"]["adherence"] >= r["models"]["teacher"]["adherence"] - 5
    ),
    # Consistency targets are relative: the metric counts shape drift, which the teacher has too.
    "shipped temporal consistency ≥ teacher − 10": lambda r: (
        r["models"]["rehyat"]["temporal_consistency"] >= r["models"]["teacher"]["temporal_consistency"] - 10
    ),
    "long videos: adherence ≥ short − 10": lambda r: (
        r["long_video"]["toybench"]["adherence"] >= r["models"]["rehyat"]["adherence"] - 10
    ),
    "long videos: temporal consistency ≥ short − 10": lambda r: (
        r["long_video"]["toybench"]["temporal_consistency"]
        >= r["models"]["rehyat"]["temporal_consistency"] - 10
    ),
    "live student finite": lambda r: r["live"]["finite"],
    "live temporal consistency ≥ teacher − 30": lambda r: (
        r["models"]["live"]["temporal_consistency"] >= r["models"]["teacher"]["temporal_consistency"] - 30
    ),
    "stage 1 never worse than untrained φ": lambda r: all(
        h["rehyat"]["rel_error"] <= h["untrained"]["rel_error"] for h in r["distillation"]["heldout"].values()
    ),
    "whole demo ≤ 10 minutes": lambda r: r["timings"]["total_s"] <= 600,
}


def _text_band(texts: list[str], width: int) -> np.ndarray:
    """A white band uint8 [h, len(texts)·width + gaps, 3]: each text wrapped into its ``width``-px column
    (4 px apart, as the videos are), in black."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = measure.textbbox((0, 0), "Ag", font=font)[3] + 2
    wrapped = []
    for text in texts:
        lines: list[str] = []
        for word in text.split():
            trial = f"{lines[-1]} {word}" if lines else word
            if lines and measure.textlength(trial, font=font) <= width - 4:
                lines[-1] = trial
            else:
                lines.append(word)
        wrapped.append(lines)
    image = Image.new(
        "RGB", (len(texts) * (width + 4) - 4, line_height * max(map(len, wrapped)) + 4), "white"
    )
    draw = ImageDraw.Draw(image)
    for column, lines in enumerate(wrapped):
        for i, line in enumerate(lines):
            draw.text((column * (width + 4) + 2, 2 + i * line_height), line, fill="black", font=font)
    return np.asarray(image)


def _side_by_side(
    rows: list[list[torch.Tensor]], columns: list[str], captions: list[str] | None = None
) -> np.ndarray:
    """Videos [3, F, H, W] in a grid (rows of columns) as one uint8 video [F, H', W', 3], 4 px apart,
    labelled: ``columns`` above the columns (what generated them), each row's ``captions`` entry (its
    prompt) above the row."""
    lines = []
    for r, row in enumerate(rows):
        frames = [video_uint8(v) for v in row]
        gap = np.full_like(frames[0][:, :, :4], 255)
        line = np.concatenate([x for f in frames for x in (f, gap)][:-1], axis=2)
        if captions is not None:
            band = _text_band([captions[r]], line.shape[2])
            line = np.concatenate([np.broadcast_to(band, (line.shape[0], *band.shape)), line], axis=1)
        lines.append(line)
    header = _text_band(columns, frames[0].shape[2])
    gap = np.full_like(lines[0][:, :4], 255)
    grid = np.concatenate([x for line in lines for x in (line, gap)][:-1], axis=1)
    return np.concatenate([np.broadcast_to(header, (grid.shape[0], *header.shape)), grid], axis=1)


def _strip(
    videos: dict[str, list[torch.Tensor]], prompts, path: Path, count: int = 4, every: int = 3
) -> None:
    """A PNG: for ``count`` prompts, a row of frames (every ``every``-th) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(videos)
    frames = range(0, videos[names[0]][0].shape[1], every)
    fig, axes = plt.subplots(
        count * len(names),
        len(frames),
        figsize=(1.1 * len(frames) + 1.5, 1.2 * count * len(names)),
        squeeze=False,
    )
    for p in range(count):
        for m, name in enumerate(names):
            row = p * len(names) + m
            video = video_uint8(videos[name][p])
            for c, f in enumerate(frames):
                ax = axes[row][c]
                ax.imshow(video[f])
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    label = f"{textwrap.fill(prompts[p].text, 22)}\n\n{name}" if m == 0 else name
                    ax.set_ylabel(label, fontsize=6, rotation=0, ha="right", va="center")
                if row == 0:
                    ax.set_title(f"frame {f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(
    out: Path, device: str = "cpu", settings: DemoSettings | None = None, *, smoke: bool = False
) -> dict:
    """The demo into ``out``; ``smoke``: a smoke run (``--quick``), which its report says."""
    from rich.console import Console

    from rehyat.generation.video import write_video

    start = time.perf_counter()
    load_start = os.getloadavg()
    settings = settings or DemoSettings()
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    teacher, student = bundled_teacher(), bundled_student()
    torch_device = torch.device(device)
    encoder = load_text_encoder(teacher)
    timings: dict[str, float] = {}
    prompts = toy_prompts(settings.eval_prompts, settings.seed + 3)
    embeds = prompt_embeddings(encoder, prompts)

    console.rule("1. the shipped student beside the teacher (identical noise)")
    tic = time.perf_counter()
    videos = {
        "teacher": sample_with(
            load_toy_model(teacher, None, torch_device),
            embeds,
            settings,
            frames=CLIP["num_frames"],
            first_seed=1000,
            recurrent=False,
        ),
    }
    shipped = load_toy_model(teacher, student, torch_device)
    videos["rehyat"] = sample_with(
        shipped,
        embeds,
        replace(settings, sample_batch=settings.student_batch),
        frames=CLIP["num_frames"],
        first_seed=1000,
        recurrent=True,
    )
    metrics = {
        "teacher": evaluate_videos(videos["teacher"], prompts),
        "rehyat": evaluate_videos(videos["rehyat"], prompts, reference=videos["teacher"]),
    }
    shown = min(4, settings.eval_prompts)
    write_video(
        _side_by_side(
            [[videos["teacher"][i], videos["rehyat"][i]] for i in range(shown)],
            ["teacher (softmax)", "ReHyAt (shipped, recurrent)"],
            [p.text for p in prompts[:shown]],
        ),
        out / "teacher_vs_rehyat.gif",
        fps=8,
    )
    _strip({k: videos[k] for k in ("teacher", "rehyat")}, prompts, out / "teacher_vs_rehyat.png", shown)
    long_frames = settings.long_factor * CLIP["num_frames"]
    long_videos = sample_with(
        shipped, embeds[: settings.long_videos], settings, frames=long_frames, first_seed=2000, recurrent=True
    )
    long_metrics = evaluate_videos(long_videos, prompts[: settings.long_videos])
    write_video(
        _side_by_side(
            [long_videos], [f"{p.text} ({long_frames} frames)" for p in prompts[: settings.long_videos]]
        ),
        out / "rehyat_long.gif",
        fps=8,
    )
    timings["shipped_s"] = time.perf_counter() - tic

    console.rule("2. the live recipe (a budget run on this machine)")
    tic = time.perf_counter()
    distill = distill_student(teacher, out / "distill", settings, device)
    timings["stage1_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    live = finetune_student(
        teacher,
        out / "distill" / "rehyat",
        out / "finetune",
        finetune_dataset(out, settings),
        settings,
        device,
    )
    timings["stage2_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    live_model = load_toy_model(teacher, live, torch_device)
    finite = all(torch.isfinite(p).all().item() for p in live_model.parameters())
    videos["live"] = sample_with(
        live_model,
        embeds[: settings.live_prompts],
        settings,
        frames=CLIP["num_frames"],
        first_seed=1000,
        recurrent=True,
    )
    finite = finite and all(torch.isfinite(v).all().item() for v in videos["live"])
    metrics["live"] = evaluate_videos(
        videos["live"], prompts[: settings.live_prompts], reference=videos["teacher"][: settings.live_prompts]
    )
    live_shown = min(shown, settings.live_prompts)
    write_video(
        _side_by_side(
            [[videos[k][i] for k in ("teacher", "rehyat", "live")] for i in range(live_shown)],
            ["teacher (softmax)", "ReHyAt (shipped)", "live budget student"],
            [p.text for p in prompts[:live_shown]],
        ),
        out / "live.gif",
        fps=8,
    )
    timings["live_eval_s"] = time.perf_counter() - tic

    console.rule("3. time and memory as the video grows")
    tic = time.perf_counter()
    scaling = measure_scaling(
        teacher,
        student,
        settings.memory_frames,
        repeats=settings.scaling_repeats,
        steps=settings.scaling_steps,
        device=device,
        chunks_per_call=settings.chunks_per_call,
    )
    timings["scaling_s"] = time.perf_counter() - tic
    timings["total_s"] = time.perf_counter() - start
    machine = {
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }
    report = _report(settings, distill, metrics, long_metrics, long_frames, scaling, timings, finite)
    report["machine"] = machine
    report["live"]["rehyat"] = read_rehyat_config(live).to_dict()
    report["smoke"] = smoke
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_markdown(report, out)
    console.print(f"[bold]report:[/bold] {out / 'report.md'}")
    return report


def _chunking(config: dict) -> str:
    """The shipped student's softmax window in words."""
    tc, to = config["chunk_frames"], config["overlap_frames"]
    if tc == 1:
        return (
            f"exact softmax over a causal sliding window of {to + 1} latent frames (Tc=1, To={to}), linear "
            "attention over everything older, one fixed-size state per layer"
        )
    return f"exact softmax inside {tc}-frame chunks and {to} frame(s) before them, linear attention beyond"


def _live_chunking(live: dict, shipped: dict) -> str:
    """The live student's attention beside the shipped student's, in words."""
    if (live["chunk_frames"], live["overlap_frames"]) == (shipped["chunk_frames"], shipped["overlap_frames"]):
        return f"Its attention is the shipped student's: {_chunking(live)}."
    return (
        f"Its attention is the recipe's default, {_chunking(live)}, not the shipped student's ({_chunking(shipped)}): "
        "the library's default stays the paper's chunking until the sliding window is compared on Wan "
        "(README, `toybench_sliding_window`)."
    )


def _report(settings, distill, metrics, long_metrics, long_frames, scaling, timings, finite) -> dict:
    drop = ("per_clip",)
    recurrent_long = next(r for r in scaling["rows"][STUDENT] if r["frames"] == max(settings.memory_frames))
    report = {
        "settings": asdict(settings),
        "shipped": read_rehyat_config(bundled_student()).to_dict(),
        "models": {name: {k: v for k, v in m.items() if k not in drop} for name, m in metrics.items()},
        "live": {"finite": finite, "prompts": settings.live_prompts},
        "distillation": {
            "ranking": distill["ranking"],
            "heldout": {str(b): r["heldout"] for b, r in distill["blocks"].items()},
            "selection": {str(b): r.get("selection", {}) for b, r in distill["blocks"].items()},
        },
        "long_video": {
            "frames": long_frames,
            "training_frames": CLIP["num_frames"],
            "videos": settings.long_videos,
            "toybench": {k: v for k, v in long_metrics.items() if k not in drop},
            "peak_memory_mib": recurrent_long["peak_mib"],
            "seconds": recurrent_long["seconds"],
            "memory_frames": recurrent_long["frames"],
        },
        "scaling": scaling,
        "timings": timings,
    }
    report["targets"] = {name: bool(check(report)) for name, check in TARGETS.items()}
    return report


def _write_markdown(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rehyat.experiments.common import markdown_table

    keys = ["adherence", "temporal_consistency", "motion_smoothness", "psnr", "ssim"]
    models = report["models"]
    labels = {
        "teacher": "teacher (softmax, parallel)",
        "rehyat": "shipped ReHyAt student (recurrent)",
        "live": "live budget student (recurrent)",
    }
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(models)
    for i, (name, m) in enumerate(models.items()):
        ax.bar(np.arange(3) + i * width, [m[k] for k in keys[:3]], width, label=labels.get(name, name))
    ax.set_xticks(np.arange(3) + 0.4 - width / 2, keys[:3])
    ax.set_ylabel("points (higher is better)")
    ax.set_title("ToyBench")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "toybench.png", dpi=110)
    plt.close(fig)

    scaling = report["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, rows in scaling["rows"].items():
        frames = [r["frames"] for r in rows]
        seconds = np.array([r["seconds"] for r in rows])
        spread = [seconds - [r["seconds_min"] for r in rows], [r["seconds_max"] for r in rows] - seconds]
        axes[0].errorbar(frames, seconds, yerr=spread, fmt="o-", capsize=3, label=name)
        axes[1].plot(frames, [r["ms_per_frame"] for r in rows], "o-", label=name)
        axes[2].plot(frames, [r["peak_mib"] for r in rows], "o-", label=name)
    for ax, label in zip(
        axes,
        (
            f"seconds per video (median of {scaling['repeats']}, range)",
            "ms per frame and sampler step",
            "peak memory (MiB above the loaded model)",
        ),
        strict=True,
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)

    settings = report["settings"]
    rows = [[labels.get(name, name)] + [m.get(k) for k in keys] for name, m in models.items()]
    long = report["long_video"]
    distill_rows = []
    for block, held in report["distillation"]["heldout"].items():
        selection = report["distillation"]["selection"].get(block, {})
        trained = selection.get("trained", held["rehyat"])["rel_error"]
        distill_rows.append(
            [block, trained, held["untrained"]["rel_error"], selection.get("kept", "trained")]
        )
    scaling_rows = [
        [
            name,
            r["frames"],
            r["seconds"],
            f"{r['seconds_min']:.3g}–{r['seconds_max']:.3g}",
            r["ms_per_frame"],
            r["peak_mib"],
        ]
        for name, rs in scaling["rows"].items()
        for r in rs
    ]
    shipped, live = report["shipped"], report["live"]["rehyat"]
    smoke = report["smoke"]
    machine = report["machine"]
    target_rows = [[name, "met" if met else "**not met**"] for name, met in report["targets"].items()]
    text = "\n\n".join(
        [
            "# rehyat demo: ReHyAt on the toy world",
            *(
                [
                    "**Smoke run (`rehyat demo --quick`):** tiny settings (a couple of prompts, 2 sampler "
                    "steps, a few training steps) that check every stage runs. Its scores, timings and "
                    "targets below say nothing about ReHyAt's quality or speed; `rehyat demo` without "
                    "`--quick` is the real run."
                ]
                if smoke
                else []
            ),
            "## 1. The shipped student beside the teacher",
            f"{settings['eval_prompts']} random prompts, {CLIP['num_frames']} frames, the same noise for every "
            f"model, UniPC {settings['sample_steps']} steps, guidance {settings['guidance_scale']:g}. The "
            "shipped student (`load_toy_model(teacher, 'bundled')`, trained with the full recipe on a GPU: "
            "`rehyat/toy/assets/student/TRAINING.md`) runs the recurrent form: a fixed-size state per "
            "layer, one chunk at a time. PSNR/SSIM against the teacher's video from the same noise; the "
            f"live student is scored on the first {report['live']['prompts']} prompts.",
            markdown_table(["model", *keys], rows),
            f"What to look for: the student keeps what the prompt names (adherence "
            f"{models['rehyat']['adherence']:.0f} against the teacher's {models['teacher']['adherence']:.0f}; "
            f"direction {models['rehyat']['direction_accuracy']:.0f} against "
            f"{models['teacher']['direction_accuracy']:.0f}: the toy world's motion is time-symmetric, so the "
            "bidirectional teacher often plays it backwards, while the causal student generates forward in "
            f"time), the object itself (temporal consistency {models['rehyat']['temporal_consistency']:.0f}) "
            f"and part of the teacher's motion (smoothness {models['rehyat']['motion_smoothness']:.0f} against "
            f"{models['teacher']['motion_smoothness']:.0f}). Its attention: {_chunking(report['shipped'])}. "
            "The paper's 3-frame chunks (Tc=3, To=1) and the other chunkings are rows of "
            "`bench/results/toybench.md`, motion columns first.",
            "![ToyBench](toybench.png)",
            "Teacher (left) and shipped student (right) from the same noise: `teacher_vs_rehyat.gif`, and "
            "every third frame in `teacher_vs_rehyat.png`:",
            "![teacher vs student](teacher_vs_rehyat.png)",
            f"## Long videos: {long['frames']} frames ({long['frames'] // long['training_frames']}× the "
            f"training length), recurrent, {long['videos']} prompts (`rehyat_long.gif`)",
            markdown_table(
                ["metric", "long", "short (same student)"],
                [
                    [k, long["toybench"][k], models["rehyat"][k]]
                    for k in ("adherence", "temporal_consistency", "motion_smoothness")
                ],
            ),
            "## 2. The live recipe — a budget run on this machine",
            f"Stage 1: {settings['distill_prompts']} prompts, {settings['distill_inner_steps']} AdamW steps "
            f"per capture at lr {settings['distill_lr']:g}; stage 2: {settings['finetune_steps']} steps × "
            f"{settings['finetune_batch']} clips at lr {settings['finetune_lr']:g} — about 1/500 of the shipped "
            "student's budget, to show the pipeline run, not its quality (`live.gif`: teacher, shipped, live). "
            + _live_chunking(live, shipped),
            "Stage 1, held-out relative error of each block's attention output. A block whose trained φ ends "
            "worse than the φ it started from keeps that one (`kept`), so stage 2 never starts from a block "
            "worse than untrained φ.",
            markdown_table(["block", "trained φ", "untrained φ", "kept"], distill_rows),
            "## 3. Time and memory as the video grows",
            f"One video per measurement, {settings['scaling_steps']} sampler step(s) without guidance, each "
            "in a fresh process (peak memory above the loaded model). " + load_text(scaling),
            markdown_table(
                ["model", "frames", "seconds (median)", "range", "ms / frame / step", "peak MiB"],
                scaling_rows,
            ),
            "![scaling](scaling.png)",
            crossover_text(
                scaling,
                shipped["chunk_frames"],
                shipped["overlap_frames"],
                (CLIP["height"] // 2) * (CLIP["width"] // 2),
            ),
            "## Targets (smoke run: not meaningful)" if smoke else "## Targets (this run)",
            markdown_table(["target", "verdict"], target_rows),
            "Timings (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items())
            + f". Machine: {machine['cpu_count']} cores, {machine['threads']} torch threads, load average "
            "(1, 5, 15 min) "
            + " at the start, ".join(
                ", ".join(f"{v:.1f}" for v in machine[key])
                for key in ("load_average_start", "load_average_end")
            )
            + " at the end.",
        ]
    )
    (out / "report.md").write_text(text + "\n")


def run(*, device, out, quick) -> int:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA GPU is available")
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    run_demo(Path(out), device, QUICK_DEMO if quick else DemoSettings(), smoke=quick)
    return 0
