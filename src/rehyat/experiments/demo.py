"""``rehyat demo``: the whole ReHyAt recipe on the bundled toy teacher, end to end, on a CPU or a GPU.

1. Stage 1 (``rehyat distill``): the teacher's sampler runs on a few prompts; every block's φq, φk
   are distilled from its attention (with the untrained-φ, linear-only and local-only comparisons).
2. Stage 2 (``rehyat finetune``): the converted model (all blocks, causal, Tc=3, To=1) is fine-tuned
   briefly with flow matching on rendered toy clips.
3. Evaluation: the teacher (parallel) and the students (recurrent forward) generate videos for random
   prompts from identical noise; ToyBench scores them; the fine-tuned student then generates a video
   4× the training length recurrently, and time and peak memory are measured as the length grows.

Writes ``OUT/report.json``, ``OUT/report.md``, PNG plots and GIFs. The toy teacher is pixel-space:
what Wan calls the latent grid is the pixel grid, so the Wan tools get the equivalent video size
(4·(F − 1) + 1 frames, 8× the pixels), as :func:`wan_video_size` computes.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rehyat.toy.evaluate import toy_prompts
from rehyat.toy.model import CLIP, bundled_teacher, load_text_encoder, load_toy_model, prompt_embeddings
from rehyat.toy.recipe import (
    QUICK,
    RecipeSettings,
    distill_student,
    finetune_dataset,
    finetune_student,
    sample_with,
)
from rehyat.toy.toybench import evaluate_videos


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3], upscaled 4× so a GIF is visible."""
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return frames.repeat(4, axis=1).repeat(4, axis=2)


class _PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms from /proc (Linux) by a thread.

    ``ru_maxrss`` cannot be used here: it keeps the peak of the whole process, and importing the
    libraries and loading the model peak higher than generating a small video does.
    """

    def __enter__(self) -> _PeakRSS:
        import threading

        self._page = resource.getpagesize()
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def _measure_generation(
    teacher: str, rehyat_folder: str | None, frames: int, settings: dict, device: str
) -> dict:
    """Subprocess body: time and peak memory (above the loaded model) of generating one video."""
    torch.set_num_threads(2)
    model = load_toy_model(
        Path(teacher), None if rehyat_folder is None else Path(rehyat_folder), torch.device(device)
    )
    embeds = prompt_embeddings(load_text_encoder(teacher), toy_prompts(1, 99)).to(device)
    # One branch (no guidance): the cost per denoising call is what grows with the length.
    config = RecipeSettings(**{**settings, "guidance_scale": 1.0})
    recurrent = rehyat_folder is not None
    sample_with(model, embeds, config, frames=min(frames, 4), first_seed=0, recurrent=recurrent)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    tic = time.perf_counter()
    with _PeakRSS() as rss:
        sample_with(model, embeds, config, frames=frames, first_seed=0, recurrent=recurrent)
    seconds = time.perf_counter() - tic
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else rss.mib
    return {"frames": frames, "seconds": seconds, "peak_mib": peak}


def run_demo(out: Path, device: str = "cpu", settings: RecipeSettings | None = None) -> dict:
    from rich.console import Console

    from rehyat.generation.video import write_video

    settings = settings or RecipeSettings()
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    teacher = bundled_teacher()
    encoder = load_text_encoder(teacher)
    timings: dict[str, float] = {}

    console.rule("stage 1: attention distillation")
    tic = time.perf_counter()
    distill = distill_student(teacher, out / "distill", settings, device)
    timings["stage1_s"] = time.perf_counter() - tic

    console.rule("stage 2: flow-matching fine-tune")
    tic = time.perf_counter()
    student = finetune_student(
        teacher,
        out / "distill" / "rehyat",
        out / "finetune",
        finetune_dataset(out, settings),
        settings,
        device,
    )
    timings["stage2_s"] = time.perf_counter() - tic

    console.rule("evaluation")
    tic = time.perf_counter()
    torch_device = torch.device(device)
    models = {
        "teacher": (load_toy_model(teacher, None, torch_device), False),
        "rehyat_stage1": (load_toy_model(teacher, out / "distill" / "rehyat", torch_device), True),
        "rehyat": (load_toy_model(teacher, student, torch_device), True),
    }
    prompts = toy_prompts(settings.eval_prompts, settings.seed + 3)
    embeds = prompt_embeddings(encoder, prompts)
    videos = {
        name: sample_with(m, embeds, settings, frames=CLIP["num_frames"], first_seed=1000, recurrent=rec)
        for name, (m, rec) in models.items()
    }
    metrics = {
        name: evaluate_videos(v, prompts, reference=None if name == "teacher" else videos["teacher"])
        for name, v in videos.items()
    }
    for name, v in videos.items():
        write_video(np.concatenate([_to_uint8(x) for x in v[:3]], axis=2), out / f"{name}.gif", fps=8)

    long_frames = settings.long_factor * CLIP["num_frames"]
    long_embeds = embeds[: settings.long_videos]
    long_videos = sample_with(
        models["rehyat"][0], long_embeds, settings, frames=long_frames, first_seed=2000, recurrent=True
    )
    long_metrics = evaluate_videos(long_videos, prompts[: settings.long_videos])
    write_video(_to_uint8(long_videos[0]), out / "rehyat_long.gif", fps=8)
    timings["evaluation_s"] = time.perf_counter() - tic

    console.rule("time and memory as the video grows")
    scaling = _scaling(teacher, student, settings, device)
    report = _report(settings, distill, metrics, long_metrics, long_frames, scaling, timings)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_markdown(report, out)
    console.print(f"[bold]report:[/bold] {out / 'report.md'}")
    return report


def _scaling(teacher: Path, student: Path, settings: RecipeSettings, device: str) -> dict[str, list[dict]]:
    """Each generation in a fresh process, so that its peak memory is its own."""
    context = multiprocessing.get_context("spawn")
    rows: dict[str, list[dict]] = {"teacher (parallel, softmax)": [], "rehyat (recurrent)": []}
    with context.Pool(1, maxtasksperchild=1) as pool:
        for frames in settings.memory_frames:
            for name, folder in (("teacher (parallel, softmax)", None), ("rehyat (recurrent)", str(student))):
                args = (str(teacher), folder, frames, asdict(settings), device)
                rows[name].append(pool.apply(_measure_generation, args))
    return rows


def _report(settings, distill, metrics, long_metrics, long_frames, scaling, timings) -> dict:
    drop = ("per_clip",)
    recurrent_long = next(
        r for r in scaling["rehyat (recurrent)"] if r["frames"] == max(settings.memory_frames)
    )
    return {
        "settings": asdict(settings),
        "models": {name: {k: v for k, v in m.items() if k not in drop} for name, m in metrics.items()},
        "distillation": {
            "ranking": distill["ranking"],
            "heldout": {str(b): r["heldout"] for b, r in distill["blocks"].items()},
        },
        "long_video": {
            "frames": long_frames,
            "training_frames": CLIP["num_frames"],
            "toybench": {k: v for k, v in long_metrics.items() if k not in drop},
            "peak_memory_mib": recurrent_long["peak_mib"],
            "seconds": recurrent_long["seconds"],
            "memory_frames": recurrent_long["frames"],
        },
        "scaling": scaling,
        "timings": timings,
    }


def _write_markdown(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rehyat.experiments.common import markdown_table

    keys = ["adherence", "temporal_consistency", "motion_smoothness", "psnr", "ssim"]
    models = report["models"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(models)
    for i, (name, m) in enumerate(models.items()):
        ax.bar(np.arange(3) + i * width, [m[k] for k in keys[:3]], width, label=name)
    ax.set_xticks(np.arange(3) + 0.4 - width / 2, keys[:3])
    ax.set_ylabel("points (higher is better)")
    ax.set_title("ToyBench")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "toybench.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in report["scaling"].items():
        frames = [r["frames"] for r in rows]
        axes[0].plot(frames, [r["seconds"] for r in rows], "o-", label=name)
        axes[1].plot(frames, [r["peak_mib"] for r in rows], "o-", label=name)
    for ax, label in zip(
        axes, ("seconds per video", "peak memory (MiB above the loaded model)"), strict=True
    ):
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)

    rows = [[name] + [m.get(k) for k in keys] for name, m in models.items()]
    long = report["long_video"]
    distill_rows = [
        [block] + [h[v]["rel_error"] for v in ("rehyat", "untrained", "linear", "local")]
        for block, h in report["distillation"]["heldout"].items()
    ]
    scaling_rows = [
        [name, r["frames"], r["seconds"], r["peak_mib"]] for name, rs in report["scaling"].items() for r in rs
    ]
    text = "\n\n".join(
        [
            "# rehyat demo: the recipe on the toy world",
            "ToyBench on random prompts (students from the teacher's noise; PSNR/SSIM against the teacher).",
            markdown_table(["model", *keys], rows),
            "![ToyBench](toybench.png)",
            "## Stage 1: held-out relative error of the attention output per block",
            markdown_table(["block", "rehyat", "untrained φ", "linear-only", "local-only"], distill_rows),
            f"## Long video: {long['frames']} frames ({long['frames'] // long['training_frames']}× training length), recurrent",
            markdown_table(
                ["metric", "value"],
                [
                    [k, long["toybench"][k]]
                    for k in ("adherence", "temporal_consistency", "motion_smoothness")
                ],
            ),
            "## Time and memory as the video grows",
            f"One video per row, {report['settings']['sample_steps']} sampler steps without guidance, each in a "
            "fresh process (peak memory above the loaded model).",
            markdown_table(["model", "frames", "seconds", "peak MiB"], scaling_rows),
            "![scaling](scaling.png)",
            "Videos: teacher.gif, rehyat_stage1.gif, rehyat.gif (3 prompts side by side), rehyat_long.gif.",
            "Stage timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items()),
        ]
    )
    (out / "report.md").write_text(text + "\n")


def run(*, device, out, quick) -> int:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA GPU is available")
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    run_demo(Path(out), device, QUICK if quick else RecipeSettings())
    return 0
