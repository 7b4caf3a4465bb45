"""``rehyat bench device``: the exported recurrent step on a CPU runtime, against full attention there.

Part ``block`` — one Wan2.1-1.3B block (12 heads × 128, width 1536, FFN 8960, random weights) at
320×480 (600 tokens per latent frame), chunk Tc = 3, To = 1, exported to ONNX Runtime:

- ReHyAt: the block's recurrent chunk step (static graphs, state in and out). Per video length it runs
  the video's first chunk, then ``reps`` + 1 full chunks at the end of the video (the first of them is
  the warm-up) and the short last chunk, so every graph the video needs is loaded and run; per-chunk
  latency is the median of the timed full chunks.
- full attention: the original block over the whole video, one graph with a dynamic token count (warmed
  up on one frame, then timed once on the whole video).

Each (form, length) runs in its own subprocess that imports only numpy and onnxruntime, and peak
memory is that process's ``ru_maxrss`` (the runtime, its weights and activations, plus the Python
interpreter and the two packages).

Part ``video`` — a toy ReHyAt model samples videos of 4× its training length (64 frames of 24×24)
with the exported whole-DiT step driving a numpy UniPC sampler (no PyTorch in the loop), scored by
ToyBench against the PyTorch recurrent sampler from the same noise, for fp32 and fp16/int8 weights.

Results: ``device.json`` (the record), ``device.md`` and ``device.png`` under ``bench/results/``.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rehyat.experiments.common import environment, markdown_table, read_json, write_json

CHUNK, OVERLAP = 3, 1
ROWS, COLS = 20, 30  # 320×480 -> latent 40×60 -> 20×30 tokens after 2×2 patches
TEXT_TOKENS = 512
HEADS, HEAD_DIM, FFN_DIM = 12, 128, 8960  # Wan2.1-1.3B
FEATURE_DIM, FEATURE_LAYERS = 256, 2  # ReHyAtConfig()'s φ at head dim 128 (checked when exporting)
DEFAULT_FRAMES = (16, 31, 41)  # latent frames: 61, 121, 161 video frames
TARGET_SPEEDUP, TARGET_FLAT = 8.0, 0.10
TOY_LENGTH_FACTOR = 4

# A subprocess per measurement that imports only numpy and onnxruntime (its peak RSS is the runtime's).
_WORKER = r"""
import json, resource, sys, time
import numpy as np
import onnxruntime as ort

spec = json.loads(sys.argv[1])
folder = spec["folder"]
manifest = json.load(open(folder + "/manifest.json"))
options = ort.SessionOptions()
options.intra_op_num_threads = spec["threads"]
options.inter_op_num_threads = 1
options.enable_cpu_mem_arena = False  # no arena per session: memory goes back between runs (both forms)
sessions = {}

def session(name):
    if name not in sessions:
        path = folder + "/" + manifest["graphs"][name]["file"]
        sessions[name] = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return sessions[name]

rng = np.random.default_rng(0)
def data(shape):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)

def high_water_mib():
    # VmHWM: this process's own peak RSS. ru_maxrss is not usable here: across fork + exec Linux carries
    # over the RSS of the parent (which holds the exported models), so it reads the parent's size.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

result = {"started_rss_mib": high_water_mib()}
frames, rows, cols = spec["frames"], spec["rows"], spec["cols"]
tokens = rows * cols
if spec["mode"] == "step":
    chunk, overlap = spec["chunk"], spec["overlap"]
    starts = list(range(0, frames, chunk))
    full = [s for s in starts if s > 0 and s + chunk <= frames]
    picked = [0] + full[-(spec["reps"] + 1):] + ([starts[-1]] if frames - starts[-1] < chunk else [])
    state, times = [], []
    for start in picked:
        n = min(chunk, frames - start)
        cached = min(overlap, start)
        name = ("step_first_f%d" % n) if start == 0 else ("step_c%d_f%d" % (cached, n))
        specs = manifest["graphs"][name]["inputs"]
        feeds = {}
        for i, s in enumerate(specs):
            if s["name"] == "frame_start":
                feeds[s["name"]] = np.array([start], dtype=np.int64)
            elif i >= 4:
                feeds[s["name"]] = state[i - 4]
            else:
                feeds[s["name"]] = data(s["shape"])
        sess = session(name)
        t0 = time.perf_counter()
        out = sess.run(None, feeds)
        times.append({"start": start, "graph": name, "seconds": time.perf_counter() - t0})
        state = out[1:]
    timed = [t["seconds"] for t in times if t["graph"] == "step_c%d_f%d" % (overlap, chunk)][1:]
    result.update(chunks=times, chunk_seconds=timed)
else:
    rope = np.load(spec["rope"])
    width = manifest["width"]
    def feeds(n):
        return {"hidden": data((1, n * tokens, width)), "timestep_proj": data((1, 6, width)),
                "context": data((1, manifest["text_tokens"], width)),
                "cos": rope["cos"][:, : n * tokens], "sin": rope["sin"][:, : n * tokens]}
    sess = session("full")
    sess.run(None, feeds(1))
    warm = feeds(frames)
    t0 = time.perf_counter()
    sess.run(None, warm)
    result.update(seconds=time.perf_counter() - t0)
result["peak_rss_mib"] = high_water_mib()
result["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, Any]:
    found = {}
    for name in ("onnxruntime", "onnx", "executorch", "numpy"):
        try:
            from importlib.metadata import version

            found[name] = version(name)
        except Exception:
            found[name] = None
    return found


def device_environment(threads: int) -> dict[str, Any]:
    env = environment()
    env.update(
        cpu=cpu_name(),
        cpu_cores=os.cpu_count(),
        threads=threads,
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **_versions(),
    )
    return env


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        reason = "killed (out of memory?)" if done.returncode < 0 else done.stderr.strip().splitlines()[-1:]
        return {"error": f"exit {done.returncode}: {reason}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wan_block(seed: int = 0):
    import torch
    from diffusers import WanTransformer3DModel

    from rehyat.models.wan_configs import WAN21_T2V_1_3B

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**WAN21_T2V_1_3B, "num_layers": 1}).eval()


def export_block_graphs(work: Path, frames: list[int]) -> tuple[Path, Path]:
    """The ReHyAt step graphs every length needs and the dynamic full-attention graph, under ``work``."""
    import torch

    from rehyat import ReHyAtConfig, convert_wan
    from rehyat.export import StepSignature, chunk_schedule, export_block_step, export_full_block
    from rehyat.models.wan import rotary_at_frames

    original = _wan_block()
    config = ReHyAtConfig(chunk_frames=CHUNK, overlap_frames=OVERLAP)
    if config.feature_map(HEADS, HEAD_DIM).feature_dim != FEATURE_DIM:
        raise RuntimeError("ReHyAtConfig()'s φ changed: update FEATURE_DIM, which the FLOP bound uses")
    converted = convert_wan(copy.deepcopy(original), config)
    signatures: set[StepSignature] = set()
    for count in frames:
        signatures.update(signature for _, signature in chunk_schedule(count, CHUNK, OVERLAP))
    step_dir = export_block_step(
        converted,
        work / "rehyat_step",
        signatures=sorted(signatures, key=lambda s: (s.cached, s.frames)),
        rows=ROWS,
        cols=COLS,
        text_tokens=TEXT_TOKENS,
    )
    full_dir = export_full_block(original, work / "full_block", rows=ROWS, cols=COLS, text_tokens=TEXT_TOKENS)
    cos, sin = rotary_at_frames(original.rope, torch.arange(max(frames)), ROWS, COLS)
    np.savez(full_dir / "rope.npz", cos=cos.numpy(), sin=sin.numpy())
    return step_dir, full_dir


def measure_blocks(
    work: Path, frames: list[int], threads: int, reps: int, rounds: int
) -> list[dict[str, Any]]:
    """The step at every length in ``rounds`` interleaved rounds (on a shared machine the lengths then see
    the same load on average), then the full-attention block once per length."""
    step_dir, full_dir = export_block_graphs(work, frames)
    steps: dict[int, list[dict[str, Any]]] = {count: [] for count in frames}
    for _ in range(rounds):
        for count in frames:
            spec = {"frames": count, "rows": ROWS, "cols": COLS, "threads": threads, "mode": "step"}
            spec.update(folder=str(step_dir), chunk=CHUNK, overlap=OVERLAP, reps=reps)
            steps[count].append(_measure(spec))
            print(f"[bench device] rehyat step, {count} latent frames: {steps[count][-1]}", file=sys.stderr)
    rows = []
    for count in frames:
        common = {"frames": count, "rows": ROWS, "cols": COLS, "threads": threads}
        runs = steps[count]
        step = {
            "rounds": runs,
            "chunk_seconds": [s for run in runs for s in run.get("chunk_seconds", [])],
            "peak_rss_mib": max(
                (run.get("peak_rss_mib", float("nan")) for run in runs), default=float("nan")
            ),
        }
        full = _measure(
            {**common, "mode": "full", "folder": str(full_dir), "rope": str(full_dir / "rope.npz")}
        )
        print(f"[bench device] full block, {count} latent frames: {full}", file=sys.stderr)
        rows.append(
            {
                "latent_frames": count,
                "video_frames": 4 * (count - 1) + 1,
                "tokens": count * ROWS * COLS,
                "rehyat": step,
                "full": full,
            }
        )
    return rows


def summarize_blocks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-length numbers, the FLOP bounds on the speed-up (``rehyat.flops.block_flops``) and the targets
    (whole-video speed-up at 121 frames, like for like; flat latency and memory)."""
    from rehyat.flops import block_flops

    table = []
    for row in rows:
        flops = block_flops(
            row["latent_frames"],
            ROWS * COLS,
            HEADS,
            HEAD_DIM,
            ffn_dim=FFN_DIM,
            text_tokens=TEXT_TOKENS,
            chunk_frames=CHUNK,
            overlap_frames=OVERLAP,
            feature_dim=FEATURE_DIM,
            feature_layers=FEATURE_LAYERS,
        )
        step, full = row["rehyat"], row["full"]
        chunk_s = float(np.median(step["chunk_seconds"])) if step.get("chunk_seconds") else float("nan")
        chunks = -(-row["latent_frames"] // CHUNK)
        full_s = full.get("seconds", float("nan"))
        table.append(
            {
                "video_frames": row["video_frames"],
                "latent_frames": row["latent_frames"],
                "tokens": row["tokens"],
                "chunks": chunks,
                "rehyat_chunk_s": chunk_s,
                "rehyat_chunk_min_s": min(step.get("chunk_seconds") or [float("nan")]),
                "rehyat_video_s": chunk_s * chunks,
                "rehyat_peak_mib": step.get("peak_rss_mib", float("nan")),
                "full_s": full_s,
                "full_peak_mib": full.get("peak_rss_mib", float("nan")),
                "speedup_per_chunk": full_s / chunk_s,
                "speedup_whole_video": full_s / (chunk_s * chunks),
                "full_gflop": flops["full_block"] / 1e9,
                "rehyat_gflop": flops["rehyat_block"] / 1e9,
                "flop_ratio": flops["block_ratio"],
                "attention_free_ratio": flops["attention_free_ratio"],
            }
        )
    latencies = [r["rehyat_chunk_s"] for r in table]
    memories = [r["rehyat_peak_mib"] for r in table]
    mean_latency, mean_memory = float(np.mean(latencies)), float(np.mean(memories))
    at_121 = next((r for r in table if r["video_frames"] == 121), None)
    full_memory = [r["full_peak_mib"] for r in table]
    targets = {
        "speedup_at_121_frames": None if at_121 is None else at_121["speedup_whole_video"],
        "flop_bound_at_121_frames": None if at_121 is None else at_121["flop_ratio"],
        "attention_free_bound_at_121_frames": None if at_121 is None else at_121["attention_free_ratio"],
        "speedup_target": TARGET_SPEEDUP,
        "latency_spread": max(abs(x / mean_latency - 1) for x in latencies),
        "memory_spread": max(abs(x / mean_memory - 1) for x in memories),
        "flat_target": TARGET_FLAT,
        "full_memory_grows": all(b > a for a, b in itertools.pairwise(full_memory)),
    }
    targets["speedup_met"] = (
        targets["speedup_at_121_frames"] is not None and targets["speedup_at_121_frames"] >= TARGET_SPEEDUP
    )
    targets["latency_flat_met"] = targets["latency_spread"] <= TARGET_FLAT
    targets["memory_flat_met"] = targets["memory_spread"] <= TARGET_FLAT
    return {"table": table, "targets": targets}


def _toy_model(student: str | None):
    """(name, model): the given ReHyAt checkpoint on the bundled teacher, else the bundled student where
    the package ships one, else the teacher converted with untrained φ."""
    import torch

    from rehyat import ReHyAtConfig, convert_wan
    from rehyat.toy import model as toy_model

    teacher = toy_model.bundled_teacher()
    cpu = torch.device("cpu")
    if student is None:
        bundled = getattr(toy_model, "BUNDLED_STUDENT", None)
        if bundled is not None and (Path(bundled) / "rehyat_config.json").is_file():
            model = toy_model.load_toy_model(teacher, Path(bundled), cpu)
            return "the shipped toy student (rehyat/toy/assets/student)", model
    if student is not None:
        return f"student {student}", toy_model.load_toy_model(teacher, Path(student), cpu)
    model = convert_wan(toy_model.load_toy_model(teacher, None, cpu), ReHyAtConfig())
    return "teacher converted with untrained φ (no student found)", model.eval()


def toy_long_video(
    work: Path, *, student: str | None, prompts: int, steps: int, weights: list[str], guidance: float = 4.0
) -> dict[str, Any]:
    """Sample 4×-length toy videos on the runtime (numpy UniPC, exported step) and in PyTorch (the
    recurrent sampler), from the same noise; ToyBench both."""
    import torch

    from rehyat.export import ExportedStep, export_dit_step, sample_latents
    from rehyat.toy.evaluate import sample_videos, toy_prompts
    from rehyat.toy.model import CLIP, FLOW_SHIFT, bundled_teacher, load_text_encoder, prompt_embeddings
    from rehyat.toy.toybench import evaluate_videos, psnr

    name, model = _toy_model(student)
    frames = TOY_LENGTH_FACTOR * CLIP["num_frames"]
    chosen = toy_prompts(prompts, 3)
    embeds = prompt_embeddings(load_text_encoder(bundled_teacher()), chosen)
    start = time.perf_counter()
    reference = sample_videos(
        model, embeds, frames=frames, steps=steps, guidance_scale=guidance, first_seed=1000, recurrent=True
    )
    torch_seconds = time.perf_counter() - start
    scores = {"pytorch_recurrent": _scores(evaluate_videos(reference, chosen)) | {"seconds": torch_seconds}}
    shape = (1, 3, frames, CLIP["height"], CLIP["width"])
    for kind in weights:
        folder = export_dit_step(
            model,
            work / f"toy_dit_{kind}",
            num_frames=frames,
            height=CLIP["height"],
            width=CLIP["width"],
            text_tokens=embeds.shape[1],
            batch=2,
            weights=kind,
        )
        runner = ExportedStep(folder, threads=2)
        videos, start = [], time.perf_counter()
        for i in range(len(chosen)):
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(1000 + i)).numpy()
            context = embeds[i : i + 1].numpy()
            latents = sample_latents(
                runner.forward,
                noise,
                context,
                np.zeros_like(context),
                steps=steps,
                guidance_scale=guidance,
                shift=FLOW_SHIFT,
            )
            videos.append(latents[0])
        seconds = time.perf_counter() - start
        result = _scores(evaluate_videos([torch.from_numpy(v) for v in videos], chosen))
        result["psnr_vs_pytorch_db"] = float(
            np.mean([psnr(v, r) for v, r in zip(videos, reference, strict=True)])
        )
        result["max_abs_diff_vs_pytorch"] = float(
            max(np.abs(v - r.numpy()).max() for v, r in zip(videos, reference, strict=True))
        )
        result["file_mib"] = sum(p.stat().st_size for p in folder.glob("*.onnx")) / 2**20
        result["seconds"] = seconds
        scores[f"onnxruntime_{kind}"] = result
        print(f"[bench device] toy video {kind}: {result}", file=sys.stderr)
    base = scores["pytorch_recurrent"]["adherence"]
    for value in scores.values():
        value["adherence_delta"] = value["adherence"] - base
    return {
        "model": name,
        "frames": frames,
        "training_frames": CLIP["num_frames"],
        "size": [CLIP["height"], CLIP["width"]],
        "prompts": prompts,
        "steps": steps,
        "guidance_scale": guidance,
        "sampler": "UniPC (numpy) / UniPC (diffusers)",
        "scores": scores,
        "target": "ONNX Runtime fp32 within 1 point of the PyTorch recurrent adherence",
        "target_met": abs(scores.get("onnxruntime_fp32", {}).get("adherence_delta", float("inf"))) <= 1.0,
    }


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "adherence",
        "temporal_consistency",
        "motion_smoothness",
        "colour",
        "shape",
        "direction",
        "speed",
    )
    return {k: metrics[k] for k in keep if k in metrics}


def render(payload: dict[str, Any], out: Path) -> None:
    env = payload["environment"]
    lines = [
        "# On device: the exported recurrent step vs full attention (CPU runtime)",
        "",
        f"CPU: {env.get('cpu')} ({env.get('cpu_cores')} cores, {env.get('threads')} runtime threads; load "
        f"average at the start {env.get('load_average')}) · onnxruntime {env.get('onnxruntime')} · "
        f"torch {env.get('torch')} · python {env.get('python')} · {env.get('date')}",
        "",
        f"Last run: `{env.get('command')}` (each part names its own below)",
        "",
    ]
    if "blocks" in payload:
        table, targets = payload["blocks"]["table"], payload["blocks"]["targets"]
        lines += [
            "## One Wan2.1-1.3B block at 320×480 (600 tokens per latent frame), Tc = 3, To = 1, ONNX Runtime fp32",
            "",
            "ReHyAt: the exported recurrent chunk step (3 latent frames = 1,800 tokens, state in/out), median "
            "over the timed full chunks; a whole video is its chunks one after another. Full: the original "
            "block, full softmax attention over the whole video. Peak: the measuring process's max RSS. "
            "GFLOP: the whole video through one block (`rehyat.flops.block_flops`: projections, cross-attention "
            'and FFN, which both forms share, plus self-attention); "FLOP ratio" is the speed-up a '
            'runtime equally efficient on both would show, "attention-free" the bound on any replacement '
            "of attention (the full block against its token-wise work alone).",
            "",
            markdown_table(
                [
                    "video frames",
                    "latent frames",
                    "tokens",
                    "ReHyAt s/chunk",
                    "ReHyAt s/video",
                    "ReHyAt peak MiB",
                    "full s/video",
                    "full peak MiB",
                    "full / ReHyAt video",
                    "full / chunk",
                    "GFLOP full / ReHyAt",
                    "FLOP ratio",
                    "attention-free bound",
                ],
                [
                    [
                        r["video_frames"],
                        r["latent_frames"],
                        r["tokens"],
                        r["rehyat_chunk_s"],
                        r["rehyat_video_s"],
                        r["rehyat_peak_mib"],
                        r["full_s"],
                        r["full_peak_mib"],
                        r["speedup_whole_video"],
                        r["speedup_per_chunk"],
                        f"{r['full_gflop']:,.0f} / {r['rehyat_gflop']:,.0f}",
                        r["flop_ratio"],
                        r["attention_free_ratio"],
                    ]
                    for r in table
                ],
            ),
            "",
            _command(payload["blocks"]),
            f"- Whole-video speed-up at 121 frames: {targets['speedup_at_121_frames']:.2f}× (target ≥ "
            f"{targets['speedup_target']:.0f}×: {'met' if targets['speedup_met'] else 'missed'}), against a FLOP "
            f"ratio of {targets['flop_bound_at_121_frames']:.2f}×. No attention can reach the target on this "
            "block at this size: with self-attention free, the full block's token-wise work alone bounds the "
            f'speed-up at {targets["attention_free_bound_at_121_frames"]:.2f}×. ("full / chunk" compares '
            "one chunk with a whole video: not a speed-up.)",
            f"- ReHyAt per-chunk latency spread over lengths: ±{100 * targets['latency_spread']:.1f}% (target "
            f"±{100 * targets['flat_target']:.0f}%: {'met' if targets['latency_flat_met'] else 'missed'}); "
            f"peak memory spread ±{100 * targets['memory_spread']:.1f}% "
            f"({'met' if targets['memory_flat_met'] else 'missed'}); full-attention memory grows: "
            f"{targets['full_memory_grows']}.",
            "",
        ]
    if "video" in payload:
        video = payload["video"]
        lines += [
            f"## Long toy video on the runtime: {video['frames']} frames ({video['frames'] // video['training_frames']}× "
            f"the training length), {video['prompts']} prompts, {video['steps']} UniPC steps, CFG {video['guidance_scale']}",
            "",
            f"Model: {video['model']}. Runtime rows: the exported whole-DiT step (ONNX Runtime) in a numpy "
            "UniPC loop; PSNR and max |diff| are against the PyTorch recurrent video from the same noise.",
            "",
            markdown_table(
                [
                    "sampler",
                    "adherence",
                    "Δ adherence",
                    "consistency",
                    "smoothness",
                    "PSNR vs PyTorch dB",
                    "max abs diff",
                    "graphs MiB",
                    "s",
                ],
                [
                    [
                        key,
                        s["adherence"],
                        s["adherence_delta"],
                        s.get("temporal_consistency"),
                        s.get("motion_smoothness"),
                        s.get("psnr_vs_pytorch_db"),
                        s.get("max_abs_diff_vs_pytorch"),
                        s.get("file_mib"),
                        s.get("seconds"),
                    ]
                    for key, s in video["scores"].items()
                ],
            ),
            "",
            _command(video),
            f"- Target: {video['target']}: {'met' if video['target_met'] else 'missed'}.",
            "",
        ]
    (out / "device.md").write_text("\n".join(lines))
    if "blocks" in payload:
        _plot(payload["blocks"]["table"], out / "device.png")


def _command(part: dict[str, Any]) -> str:
    """The command line and machine load of the run that measured one part of the record."""
    env = part.get("environment")
    if env is None:
        return ""
    return (
        f"Measured by `{env.get('command')}` ({env.get('date')}; load average {env.get('load_average')}).\n"
    )


def _plot(table: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {path} not written", file=sys.stderr)
        return
    frames = [r["video_frames"] for r in table]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(frames, [r["rehyat_chunk_s"] for r in table], "o-", label="ReHyAt step, per chunk")
    left.plot(
        frames, [r["rehyat_video_s"] for r in table], "s--", label="ReHyAt, whole video (chunks × step)"
    )
    left.plot(
        frames, [r["full_s"] for r in table], "o-", color="tab:red", label="full attention, whole video"
    )
    left.set_yscale("log")
    left.set_xlabel("video frames (320×480)")
    left.set_ylabel("seconds")
    left.set_title("latency, one Wan2.1-1.3B block")
    right.plot(frames, [r["rehyat_peak_mib"] for r in table], "o-", label="ReHyAt step")
    right.plot(frames, [r["full_peak_mib"] for r in table], "o-", color="tab:red", label="full attention")
    right.set_xlabel("video frames (320×480)")
    right.set_ylabel("peak RSS (MiB)")
    right.set_title("peak memory of the runtime process")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class DeviceBenchSettings:
    """``rehyat bench device --set KEY=VALUE``: the exported recurrent step against the full-attention
    block (Wan2.1-1.3B) on the CPU runtime, and a long toy video."""

    out: str = "bench/results"
    """Where device.{json,md,png} go."""
    work: str | None = None
    """Keep the exported graphs here (default: a temporary folder)."""
    frames: list[int] | None = None
    """Latent frames (default 16 31 41 = 61/121/161 frames)."""
    parts: list[Literal["block", "video"]] | None = None
    """What to run (default both)."""
    threads: int = 2
    """Runtime threads."""
    reps: int = 2
    """Timed full chunks per length and round."""
    rounds: int = 3
    """Interleaved rounds over the lengths (step)."""
    student: str | None = None
    """Toy ReHyAt checkpoint for the video part (default: bundled, else untrained)."""
    toy_prompts: int = 6
    toy_steps: int = 20
    toy_weights: list[Literal["fp32", "fp16", "int8"]] | None = None
    """Weight types of the video part (default all three)."""
    render_only: bool = False
    """Rewrite device.md/.png from device.json."""


def run(settings: DeviceBenchSettings | None = None) -> int:
    s = settings or DeviceBenchSettings()
    frames, parts, threads, reps, rounds = s.frames, s.parts, s.threads, s.reps, s.rounds
    out_dir, work = Path(s.out), s.work
    if s.render_only:
        payload = read_json(out_dir / "device.json")
        if "blocks" in payload:  # the analysis may have changed since the measurement: redo it from the rows
            payload["blocks"].update(summarize_blocks(payload["blocks"]["rows"]))
            write_json(payload, out_dir / "device.json")
        render(payload, out_dir)
        return 0
    parts = parts or ["block", "video"]
    unknown = sorted(set(parts) - {"block", "video"})
    if unknown:
        raise ValueError(f"parts must be 'block' and/or 'video', got {unknown}")
    frames = list(frames or DEFAULT_FRAMES)
    payload: dict[str, Any] = {
        "environment": device_environment(threads),
        "chunk_frames": CHUNK,
        "overlap_frames": OVERLAP,
    }
    previous = out_dir / "device.json"
    if previous.is_file():  # a run of one part keeps the other part's record
        old = read_json(previous)
        payload.update({k: old[k] for k in ("blocks", "video") if k in old})
    with tempfile.TemporaryDirectory(prefix="rehyat_device_") as scratch:
        folder = Path(work) if work else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        if "block" in parts:
            rows = measure_blocks(folder, frames, threads, reps, rounds)
            payload["blocks"] = {
                "rows": rows,
                **summarize_blocks(rows),
                "environment": payload["environment"],
            }
        if "video" in parts:
            payload["video"] = toy_long_video(
                folder,
                student=s.student,
                prompts=s.toy_prompts,
                steps=s.toy_steps,
                weights=s.toy_weights or ["fp32", "fp16", "int8"],
            )
            payload["video"]["environment"] = payload["environment"]
    write_json(payload, out_dir / "device.json")
    render(payload, out_dir)
    print((out_dir / "device.md").read_text())
    return 0
