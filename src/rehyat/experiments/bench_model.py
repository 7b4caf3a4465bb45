"""``rehyat bench model``: one whole Wan2.1-1.3B DiT forward on a GPU — original vs ReHyAt.

The model is the real Wan2.1-T2V-1.3B architecture (:data:`rehyat.models.wan_configs.WAN21_T2V_1_3B`)
with random weights in bf16 (norms, time embedder and modulation tables kept in fp32 and RoPE tables in
float64, as ``from_pretrained(torch_dtype=bfloat16)`` leaves them); 480×832 video → 60×104 latent →
30×52 = 1560 tokens per latent frame; 512 text tokens; batch 1 (one CFG branch). Latent frame counts
21, 41, 81 are 81, 161, 321 video frames (5, 10, 20 s at 16 fps). Rows, each one forward under
``torch.inference_mode``:

- ``original``: the unconverted model, diffusers' ``WanAttnProcessor`` (torch SDPA).
- ``parallel``: every block converted (Tc=3, To=1, causal; φ with P=2, two layers), parallel form.
- ``recurrent``: the same converted model through :func:`rehyat.recurrent_forward`.

Median ms over CUDA-event-timed calls; peak MiB = ``torch.cuda.max_memory_allocated`` during the call
minus what was allocated before it (weights, φ, latents, text embeddings), i.e. activation memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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

ROWS = ("original", "parallel", "recurrent")
SHAPE = dict(height=480, width=832, latent_height=60, latent_width=104, text_tokens=512)
REHYAT = dict(chunk_frames=3, overlap_frames=1)


def build_model(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, config: dict | None = None):
    """Wan2.1-T2V-1.3B (or the Wan ``config``) with random weights on ``device``; parameters outside the
    model's ``_keep_in_fp32_modules`` cast to ``dtype``, buffers (RoPE tables) untouched."""
    from diffusers import WanTransformer3DModel

    from rehyat.models.wan_configs import WAN21_T2V_1_3B

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**(WAN21_T2V_1_3B if config is None else config)).eval()
    keep = set(model._keep_in_fp32_modules)
    for name, module in model.named_modules():
        if keep.isdisjoint(name.split(".")):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return model


def _inputs(frames: int, device: str, dtype: torch.dtype):
    gen = torch.Generator(device).manual_seed(frames)
    latents = torch.randn(
        1,
        16,
        frames,
        SHAPE["latent_height"],
        SHAPE["latent_width"],
        generator=gen,
        device=device,
        dtype=dtype,
    )
    context = torch.randn(1, SHAPE["text_tokens"], 4096, generator=gen, device=device, dtype=dtype)
    return latents, torch.tensor([999.0], device=device), context


def _measure(fn: Callable[[], object], rep_ms: float, max_reps: int) -> dict[str, float | str]:
    try:
        with torch.inference_mode():
            result: dict[str, float | str] = {
                "ms": time_ms(fn, rep_ms=rep_ms, max_reps=max_reps),
                "peak_mib": peak_memory_mib(fn),
            }
    except RuntimeError as error:  # out of memory or a kernel that refuses: record it and go on
        result = {"error": "OOM" if is_oom(error) else f"{type(error).__name__}: {str(error)[:160]}"}
    torch.cuda.empty_cache()
    return result


def run_benchmark(frames: list[int], rows: list[str], rep_ms: float, max_reps: int) -> list[dict]:
    """Measure each row at each frame count; the original first, then the model is converted in place."""
    from rehyat import ReHyAtConfig, convert_wan, recurrent_forward
    from rehyat.models import rehyat_runtime

    model = build_model()
    results = []
    for row in ROWS:
        if row not in rows:
            continue
        if row != "original" and rehyat_runtime(model) is None:
            convert_wan(model, ReHyAtConfig(**REHYAT))
        for count in frames:
            latents, timestep, context = _inputs(count, "cuda", torch.bfloat16)
            if row == "recurrent":

                def call(latents=latents, timestep=timestep, context=context):
                    return recurrent_forward(model, latents, timestep, context)
            else:

                def call(latents=latents, timestep=timestep, context=context):
                    return model(latents, timestep, context, return_dict=False)[0]

            record = {
                "row": row,
                "latent_frames": count,
                "video_frames": 4 * (count - 1) + 1,
                "tokens": count * (SHAPE["latent_height"] // 2) * (SHAPE["latent_width"] // 2),
                **_measure(call, rep_ms, max_reps),
            }
            print(record, flush=True)
            results.append(record)
            del latents, context
    return results


def run_parity(frames: int = 7) -> list[dict]:
    """Recurrent vs parallel forward of the converted model at Wan size, float32 and bf16 weights, each
    attention backend; plus Tc ≥ T (one chunk) vs the original, which must agree to rounding.

    Random weights and untrained φ make the network ill-conditioned (denominators near the guard), so
    rounding differences grow through 30 blocks; two valid parallel backends differ by as much in bf16.
    """
    import dataclasses

    from rehyat import ReHyAtConfig, convert_wan, recurrent_forward
    from rehyat.models import rehyat_runtime

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = build_model(dtype=dtype)
        latents, timestep, context = _inputs(frames, "cuda", dtype)
        with torch.inference_mode():
            original = model(latents, timestep, context, return_dict=False)[0]
            runtime = rehyat_runtime(convert_wan(model, ReHyAtConfig(**REHYAT)))
            for backend in ("torch", "triton"):
                runtime.backend = backend
                parallel = model(latents, timestep, context, return_dict=False)[0]
                recurrent = recurrent_forward(model, latents, timestep, context)
                rows.append(
                    {
                        "dtype": str(dtype).removeprefix("torch."),
                        "backend": backend,
                        "recurrent_vs_parallel": rel(recurrent, parallel),
                        "parallel_vs_original": rel(parallel, original),
                    }
                )
            runtime.config = dataclasses.replace(runtime.config, chunk_frames=frames)
            runtime.backend = "torch"
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "backend": "torch",
                    "one_chunk_vs_original": rel(
                        model(latents, timestep, context, return_dict=False)[0], original
                    ),
                }
            )
        del model, original, parallel, recurrent
        torch.cuda.empty_cache()
    return rows


def _value(by_key: dict, row: str, frames: int, key: str) -> float:
    return float(by_key.get((row, frames), {}).get(key, math.nan))


def check_targets(results: list[dict]) -> list[tuple[str, str, bool | None]]:
    """The whole model's speed and memory targets, as (target, measured, met); met is None where a number is missing."""
    by_key = {(r["row"], r["latent_frames"]): r for r in results}
    frames = sorted({r["latent_frames"] for r in results})
    checks: list[tuple[str, str, bool | None]] = []

    def check(name: str, value: float, goal: Callable[[float], bool], text: str) -> None:
        checks.append(
            (name, text.format(value) if value == value else "—", goal(value) if value == value else None)
        )

    for count, goal in ((21, 2.0), (81, 6.0)):
        speedup = _value(by_key, "original", count, "ms") / _value(by_key, "parallel", count, "ms")
        check(
            f"parallel ≥ {goal:g}× faster than original at {count} frames",
            speedup,
            lambda s, g=goal: s >= g,
            "{:.2f}×",
        )
    memory_ratio = _value(by_key, "recurrent", 81, "peak_mib") / _value(by_key, "original", 81, "peak_mib")
    check("recurrent peak memory at 81 frames ≤ 1/10 of original", memory_ratio, lambda r: r <= 0.1, "{:.3f}")
    peaks = [_value(by_key, "recurrent", f, "peak_mib") for f in frames if 21 <= f <= 81]
    spread = max(peaks) / min(peaks) - 1 if len(peaks) > 1 and all(p == p for p in peaks) else math.nan
    check("recurrent peak memory flat (±5%) from 21 to 81 frames", spread, lambda s: s <= 0.05, "{:.1%}")
    return checks


def render(payload: dict, out_dir: Path) -> None:
    """Write model.md, model_ms.png and model_memory.png from the JSON payload."""
    results = payload["results"]
    by_key = {(r["row"], r["latent_frames"]): r for r in results}
    frames = sorted({r["latent_frames"] for r in results})
    table = []
    for count in frames:
        original_ms = _value(by_key, "original", count, "ms")
        original_mib = _value(by_key, "original", count, "peak_mib")
        for row in ROWS:
            entry = by_key.get((row, count))
            if entry is None:
                continue
            ms, mib = _value(by_key, row, count, "ms"), _value(by_key, row, count, "peak_mib")
            table.append(
                [
                    count,
                    entry["video_frames"],
                    entry["tokens"],
                    row,
                    entry.get("error", ms),
                    mib,
                    original_ms / ms,
                    mib / original_mib,
                ]
            )
    sections = [
        "# Model benchmark: one Wan2.1-1.3B DiT forward (random weights), original vs ReHyAt",
        environment_markdown(payload["environment"]),
        "480×832 → latent 60×104 → 1560 tokens per latent frame, 512 text tokens, batch 1, bf16; ReHyAt on "
        f"all 30 blocks, Tc={REHYAT['chunk_frames']}, To={REHYAT['overlap_frames']}, causal. Median ms "
        "(CUDA events); peak MiB = max_memory_allocated during the forward minus what was allocated before "
        "it (weights, latents, text embeddings): activation memory. Speedup and memory ratio vs the "
        "original at the same frame count.",
        markdown_table(
            ["latent frames", "video frames", "tokens", "row", "ms", "peak MiB", "speedup", "memory ratio"],
            table,
        ),
        "## Targets (this run)\n\n"
        + markdown_table(
            ["target", "measured", "met"],
            [(n, v, {True: "yes", False: "no", None: "—"}[m]) for n, v, m in check_targets(results)],
        ),
    ]
    if payload.get("parity"):
        keys = ("recurrent_vs_parallel", "parallel_vs_original", "one_chunk_vs_original")
        sections.append(
            "## Parity at 7 latent frames (rel. error of the DiT output)\n\n"
            "Random weights and untrained φ: the network is ill-conditioned, so rounding differences grow "
            "through the 30 blocks (compare the two backends' parallel outputs); one chunk (Tc ≥ T) must "
            "match the original to rounding. Exactness in float32 is covered by the CPU tests.\n\n"
            + markdown_table(
                ["dtype", "backend", *keys],
                [[r["dtype"], r["backend"], *(r.get(k, math.nan) for k in keys)] for r in payload["parity"]],
            )
        )
    if payload.get("note"):
        sections.append(payload["note"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.md").write_text("\n\n".join(sections) + "\n")
    for key, name, label in (
        ("ms", "model_ms.png", "ms per forward"),
        ("peak_mib", "model_memory.png", "peak activation MiB"),
    ):
        plot_loglog(
            {row: (frames, [_value(by_key, row, f, key) for f in frames]) for row in ROWS},
            out_dir / name,
            xlabel="latent frames (×1560 tokens)",
            ylabel=label,
            title=f"Wan2.1-1.3B DiT forward, bf16: {label}",
        )


def _note(results: list[dict]) -> str:
    """What the original needs at the longest length measured, next to the recurrent form."""
    by_key = {(r["row"], r["latent_frames"]): r for r in results}
    longest = max((r["latent_frames"] for r in results), default=None)
    if longest is None:
        return ""
    original, recurrent = by_key.get(("original", longest), {}), by_key.get(("recurrent", longest), {})
    video = 4 * (longest - 1) + 1
    if "peak_mib" in original and "peak_mib" in recurrent:
        return (
            f"At {longest} latent frames ({video} video frames, {video / 16:.0f} s at 16 fps) the original "
            f"needs {original['peak_mib'] / 1024:.1f} GiB of activations and {original['ms'] / 1e3:.2f} s per "
            f"forward; the recurrent form {recurrent['peak_mib'] / 1024:.2f} GiB and {recurrent['ms'] / 1e3:.2f} s."
        )
    if original.get("error") == "OOM":
        return f"At {longest} latent frames ({video} video frames) the original runs out of GPU memory."
    return ""


def run(*, frames, out, quick, render_only, rows, skip_parity) -> int:
    out_dir = Path(out)
    if render_only:
        render(read_json(out_dir / "model.json"), out_dir)
        return 0
    if not torch.cuda.is_available():
        raise ValueError("the model benchmark needs a CUDA GPU (use --render-only to re-render results)")
    frames = frames or ([7, 21] if quick else [21, 41, 81])
    if any(f < 1 for f in frames):
        raise ValueError(f"--frames must all be >= 1, got {frames}")
    payload = {"environment": environment(), "shape": SHAPE, "rehyat": REHYAT, "parity": None, "results": []}
    if not skip_parity:
        payload["parity"] = run_parity()
        print("parity", payload["parity"], flush=True)
    rep_ms, max_reps = (200.0, 3) if quick else (1000.0, 10)
    payload["results"] = run_benchmark(sorted(frames), rows, rep_ms, max_reps)
    payload["note"] = _note(payload["results"])
    write_json(payload, out_dir / "model.json")
    render(payload, out_dir)
    print((out_dir / "model.md").read_text())
    return 0
