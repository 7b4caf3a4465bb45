"""``rehyat bench model``: one whole DiT forward — original vs ReHyAt — for each convertible family.

``--family`` picks the model (``wan``, ``skyreels-v2``, ``ltx-video``, ``hunyuan-video``, ``cogvideox``;
:mod:`rehyat.models.architectures`): Wan2.1-T2V-1.3B at 480×832 (60×104 latent → 30×52 = 1560 tokens per
latent frame, 512 text tokens), SkyReels-V2-T2V-1.3B (Wan2.1-1.3B's layout) at 544×960 (34×60 = 2040
tokens), LTX-Video 2B (diffusers' defaults of ``LTXVideoTransformer3DModel``) at 512×704 (16×22 = 352
tokens per latent frame of 8 video frames, 128 text tokens), HunyuanVideo 13B (diffusers' defaults: 20
dual- and 40 single-stream blocks) at 720×1280 (45×80 = 3600 tokens, 256 text tokens of which a quarter
are the prompt and the rest padding, masked as the pipeline masks it; the pooled CLIP projection and the
guidance embedding's 6.0 · 1000 beside them) or CogVideoX-5B at 480×720 (30×45 = 1350 tokens, 226 text
tokens, the pipeline's RoPE tables). ``height`` and ``width`` change the pixel size. Random weights in bf16
(norms, time embedder and modulation tables kept in fp32 and RoPE tables in float64 where the family keeps
them, as ``from_pretrained(torch_dtype=bfloat16)`` leaves them); batch 1 (one CFG branch); each family
called as its pipeline calls it. ``--size tiny`` runs the family's tiny config instead, and ``--device cpu``
times with the wall clock (no memory column): a smoke run of the whole benchmark without a GPU. The two
joint text–video families attend their text through the op's global keys (docs/method.md §6.1), the
streaming step's cached keys on the Triton kernels. Rows, each one forward under
``torch.inference_mode``:

- ``original``: the unconverted model, diffusers' own attention processor (torch SDPA).
- ``parallel``: every block converted (Tc=3, To=1, causal; φ with P=2, two layers), parallel form.
- ``recurrent``: the same converted model in the recurrent mode (:func:`rehyat.models.hooks.recurrent_mode`).

Median ms over CUDA-event-timed calls; peak MiB = ``torch.cuda.max_memory_allocated`` during the call
minus what was allocated before it (weights, φ, latents, text embeddings), i.e. activation memory. Wan
writes ``model.json/.md/.png``, another family ``model_<family>.*``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
from rehyat.utils import check_int

ROWS = ("original", "parallel", "recurrent")
SHAPE = dict(height=480, width=832, latent_height=60, latent_width=104, text_tokens=512)
REHYAT = dict(chunk_frames=3, overlap_frames=1)
FAMILIES = ("wan", "skyreels-v2", "ltx-video", "hunyuan-video", "cogvideox")
#: The families with joint text–video attention: their text keys are the op's global keys, which only the
#: PyTorch backend takes.
JOINT = ("hunyuan-video", "cogvideox")
SIZES = ("published", "tiny")
_TINY = {
    "wan": "tiny",
    "skyreels-v2": "tiny-skyreels-v2",
    "ltx-video": "tiny-ltx-video",
    "hunyuan-video": "tiny-hunyuan-video",
    "cogvideox": "tiny-cogvideox",
}


def bench_architecture(family: str, size: str, height: int | None = None, width: int | None = None):
    """The family's architecture at ``size``, at ``height`` × ``width`` pixels where given."""
    import dataclasses

    from rehyat.models.architectures import JOINT_ARCHITECTURES, PUBLISHED, architecture

    if family not in FAMILIES:
        raise ValueError(f"--family must be one of {list(FAMILIES)}, got {family!r}")
    if size not in SIZES:
        raise ValueError(f"--size must be one of {list(SIZES)}, got {size!r}")
    name = PUBLISHED[family] if size == "published" else _TINY[family]
    arch = JOINT_ARCHITECTURES[name] if name in JOINT_ARCHITECTURES else architecture(name)
    arch = dataclasses.replace(arch, height=height or arch.height, width=width or arch.width)
    step = arch.spatial_compression * _patch(arch)
    if arch.height % step or arch.width % step:
        raise ValueError(
            f"height and width must be multiples of {step} for {family} (VAE × patch), "
            f"got {arch.height}×{arch.width}"
        )
    return arch


def _patch(arch) -> int:
    """Latent pixels per token along a side: the config's ``patch_size``, else the class's default."""
    import inspect

    import diffusers

    patch = arch.config.get("patch_size")
    if patch is None:
        init = inspect.signature(getattr(diffusers, arch.class_name).__init__)
        patch = init.parameters["patch_size"].default
    return patch[-1] if isinstance(patch, (tuple, list)) else patch


def _blocks(arch) -> int:
    """Transformer blocks (HunyuanVideo: dual- and single-stream), all converted."""
    return arch.config["num_layers"] + arch.config.get("num_single_layers", 0)


def build_model(
    device: str = "cuda", dtype: torch.dtype = torch.bfloat16, config: dict | None = None, arch=None
):
    """Wan2.1-T2V-1.3B (or the Wan ``config``, or the :class:`~rehyat.models.architectures.Architecture`
    ``arch`` of any family) with random weights on ``device``; parameters outside the model's
    ``_keep_in_fp32_modules`` cast to ``dtype``, buffers (RoPE tables) untouched."""
    import diffusers

    from rehyat.models.wan_configs import WAN21_T2V_1_3B

    torch.manual_seed(0)
    cls = getattr(diffusers, "WanTransformer3DModel" if arch is None else arch.class_name)
    kwargs = (WAN21_T2V_1_3B if config is None else config) if arch is None else arch.config
    with torch.device(device):
        model = cls(**kwargs).eval()
    keep = set(model._keep_in_fp32_modules or ())
    for name, module in model.named_modules():
        if keep.isdisjoint(name.split(".")):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return model


def _shape(arch) -> dict:
    """The video of the benchmark: the family's default pixel size, as latent and tokens per frame."""
    latent_height, latent_width = (n // arch.spatial_compression for n in (arch.height, arch.width))
    patch = _patch(arch)
    return dict(
        height=arch.height,
        width=arch.width,
        latent_height=latent_height,
        latent_width=latent_width,
        frame_tokens=(latent_height // patch) * (latent_width // patch),
        text_tokens=arch.text_tokens,
        temporal_compression=arch.temporal_compression,
    )


def forward_inputs(model, arch, frames: int, device: str, dtype: torch.dtype) -> dict:
    """One forward call's arguments at ``frames`` latent frames, as the family's pipeline makes them."""
    from rehyat.models import family_of

    shape = _shape(arch)
    gen = torch.Generator(device).manual_seed(frames)
    latents = torch.randn(
        1,
        arch.latent_channels,
        frames,
        shape["latent_height"],
        shape["latent_width"],
        generator=gen,
        device=device,
        dtype=dtype,
    )
    context = torch.randn(1, arch.text_tokens, arch.text_dim, generator=gen, device=device, dtype=dtype)
    timestep = torch.tensor([999.0], device=device)
    if arch.family == "hunyuan-video":
        return _hunyuan_video_inputs(model, latents, timestep, context, gen)
    return family_of(model).denoiser_inputs(model, latents, timestep, context)


def _hunyuan_video_inputs(model, latents, timestep, context, gen: torch.Generator) -> dict:
    """The arguments HunyuanVideoPipeline passes: the prompt padded to its text length with its mask (a
    prompt of a quarter of the tokens, the rest padding), the pooled CLIP projection, and the guidance
    embedding's input (guidance 6.0 · 1000), in the transformer's dtype."""
    batch, tokens = context.shape[:2]
    mask = torch.zeros(batch, tokens, device=context.device, dtype=context.dtype)
    mask[:, : -(-tokens // 4)] = 1
    pooled = torch.randn(
        batch,
        model.config.pooled_projection_dim,
        generator=gen,
        device=context.device,
        dtype=context.dtype,
    )
    guidance = torch.tensor([6.0] * batch, device=context.device, dtype=context.dtype) * 1000.0
    return dict(
        hidden_states=latents,
        timestep=timestep,
        encoder_hidden_states=context,
        encoder_attention_mask=mask,
        pooled_projections=pooled,
        guidance=guidance,
    )


def _wall_ms(fn: Callable[[], object], rep_ms: float, max_reps: int) -> float:
    """Median wall time in ms (one warm-up call): the CPU's clock, where no CUDA events are."""
    fn()
    times = []
    while len(times) < min(3, max_reps) or (sum(times) < rep_ms and len(times) < max_reps):
        tic = time.perf_counter()
        fn()
        times.append((time.perf_counter() - tic) * 1e3)
    return statistics.median(times)


def _measure(fn: Callable[[], object], rep_ms: float, max_reps: int, cuda: bool) -> dict[str, float | str]:
    try:
        with torch.inference_mode():
            if cuda:
                result: dict[str, float | str] = {
                    "ms": time_ms(fn, rep_ms=rep_ms, max_reps=max_reps, min_reps=min(3, max_reps)),
                    "peak_mib": peak_memory_mib(fn),
                }
            else:
                result = {"ms": _wall_ms(fn, rep_ms, max_reps)}
    except RuntimeError as error:  # out of memory or a kernel that refuses: record it and go on
        result = {"error": _error_text(error)}
    if cuda:
        torch.cuda.empty_cache()
    return result


def _error_text(error: RuntimeError) -> str:
    return "OOM" if is_oom(error) else f"{type(error).__name__}: {str(error)[:160]}"


def _forward(model, inputs: dict, recurrent: bool, chunks_per_call: int = 1) -> torch.Tensor:
    from rehyat.models.hooks import recurrent_mode

    mode = recurrent_mode(model, chunks_per_call=chunks_per_call) if recurrent else contextlib.nullcontext()
    with mode:
        return model(**inputs, return_dict=False)[0]


def run_benchmark(
    frames: list[int],
    rows: list[str],
    rep_ms: float,
    max_reps: int,
    *,
    arch=None,
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    on_record: Callable[[dict], object] | None = None,
    chunks_per_call: int = 1,
) -> list[dict]:
    """Measure each row at each frame count; the original first, then the model is converted in place.
    ``on_record`` is called with each measurement as it is made (the CLI saves the results so far);
    ``chunks_per_call``: the recurrent row's (:func:`rehyat.models.hooks.apply_recurrent`)."""
    from rehyat import ReHyAtConfig, convert
    from rehyat.models import rehyat_runtime
    from rehyat.models.architectures import PUBLISHED, architecture

    arch = arch or architecture(PUBLISHED["wan"])
    model = build_model(device, dtype, arch=arch)
    shape = _shape(arch)
    results = []
    for row in ROWS:
        if row not in rows:
            continue
        if row != "original" and rehyat_runtime(model) is None:
            convert(model, ReHyAtConfig(**REHYAT))
        for count in frames:
            inputs = forward_inputs(model, arch, count, device, dtype)

            def call(inputs=inputs, recurrent=row == "recurrent"):
                return _forward(model, inputs, recurrent, chunks_per_call)

            record = {
                "row": row,
                "latent_frames": count,
                "video_frames": shape["temporal_compression"] * (count - 1) + 1,
                "tokens": count * shape["frame_tokens"],
                **_measure(call, rep_ms, max_reps, cuda=device != "cpu"),
            }
            print(record, flush=True)
            results.append(record)
            if on_record is not None:
                on_record(record)
            del inputs
    return results


def run_parity(frames: int = 7, *, arch=None, device: str = "cuda") -> list[dict]:
    """Recurrent vs parallel forward of the converted model at the family's size, float32 and bf16
    weights, each attention backend (on a CPU: float32, the PyTorch backend); plus Tc ≥ T (one chunk)
    vs the original, which must agree to rounding.

    Random weights and untrained φ make the network ill-conditioned (denominators near the guard), so
    rounding differences grow through the blocks; two valid parallel backends differ by as much in bf16.
    A dtype that runs
    out of memory or fails gives a row with its ``error`` and the next dtype runs.
    """
    from rehyat.models.architectures import PUBLISHED, architecture

    arch = arch or architecture(PUBLISHED["wan"])
    cuda = device != "cpu"
    rows: list[dict] = []
    for dtype in (torch.float32, torch.bfloat16) if cuda else (torch.float32,):
        name = str(dtype).removeprefix("torch.")
        try:
            _parity_rows(arch, frames, device, dtype, rows)
        except RuntimeError as error:
            rows.append({"dtype": name, "backend": "torch", "error": _error_text(error)})
        # The converted model is held by reference cycles (its hooks and runtime): collect it before the
        # next is built (a 13B family does not fit twice).
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _parity_rows(arch, frames: int, device: str, dtype: torch.dtype, rows: list[dict]) -> None:
    """:func:`run_parity` in ``dtype``: its rows appended to ``rows`` as they are measured."""
    import dataclasses

    from rehyat import ReHyAtConfig, convert
    from rehyat.models import rehyat_runtime

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    cuda = device != "cpu"
    model = build_model(device, dtype, arch=arch)
    inputs = forward_inputs(model, arch, frames, device, dtype)
    name = str(dtype).removeprefix("torch.")
    with torch.inference_mode():
        original = _forward(model, inputs, False)
        runtime = rehyat_runtime(convert(model, ReHyAtConfig(**REHYAT)))
        for backend in ("torch", "triton") if cuda else ("torch",):
            with runtime.mode(backend=backend):
                parallel = _forward(model, inputs, False)
                recurrent = _forward(model, inputs, True)
            rows.append(
                {
                    "dtype": name,
                    "backend": backend,
                    "recurrent_vs_parallel": rel(recurrent, parallel),
                    "parallel_vs_original": rel(parallel, original),
                }
            )
            del parallel, recurrent
        runtime.config = dataclasses.replace(runtime.config, chunk_frames=frames)
        with runtime.mode(backend="torch"):
            one_chunk = rel(_forward(model, inputs, False), original)
        rows.append({"dtype": name, "backend": "torch", "one_chunk_vs_original": one_chunk})


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


_TITLES = {
    "wan": "Wan2.1-1.3B",
    "skyreels-v2": "SkyReels-V2-1.3B",
    "ltx-video": "LTX-Video 2B",
    "hunyuan-video": "HunyuanVideo 13B",
    "cogvideox": "CogVideoX-5B",
}


def stem(family: str) -> str:
    """The results' file name stem: ``model`` for Wan (the first family), ``model_<family>`` otherwise."""
    return "model" if family == "wan" else f"model_{family.replace('-', '_')}"


def render(payload: dict, out_dir: Path) -> None:
    """Write <stem>.md, <stem>_ms.png and <stem>_memory.png from the JSON payload."""
    results = payload["results"]
    family = payload.get("family", "wan")
    size = payload.get("size", "published")
    title = _TITLES[family] + ("" if size == "published" else f" ({size} config)")
    shape = {"frame_tokens": 1560, "temporal_compression": 4, **payload.get("shape", SHAPE)}
    dtype = payload.get("dtype", "bf16")
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
    blocks = payload.get("blocks", 30)
    sections = [
        f"# Model benchmark: one {title} DiT forward (random weights), original vs ReHyAt",
        environment_markdown(payload["environment"]),
        f"{shape['height']}×{shape['width']} → latent {shape['latent_height']}×{shape['latent_width']} → "
        f"{shape['frame_tokens']} tokens per latent frame ({shape['temporal_compression']} video frames "
        f"each), {shape['text_tokens']} text tokens, batch 1, {dtype}; ReHyAt on all {blocks} blocks, "
        f"Tc={REHYAT['chunk_frames']}, To={REHYAT['overlap_frames']}, causal; the recurrent row runs "
        f"{payload.get('chunks_per_call', 1)} chunk(s) per forward call. Median ms "
        "(CUDA events; on a CPU the wall clock, and no memory column); peak MiB = max_memory_allocated "
        "during the forward minus what was allocated before it (weights, latents, text embeddings): "
        "activation memory. Speedup and memory ratio vs the original at the same frame count.",
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
    if family in JOINT:
        sections.insert(
            3,
            "Joint text–video attention (docs/method.md §6.1): every chunk carries its own copy of the text "
            "through the network and attends to the text keys as global keys of its softmax window (the "
            "streaming step's cached keys on the Triton kernels, a padded prompt's masked keys left out).",
        )
    if payload.get("parity"):
        keys = ("recurrent_vs_parallel", "parallel_vs_original", "one_chunk_vs_original")
        sections.append(
            "## Parity at 7 latent frames (rel. error of the DiT output)\n\n"
            "Random weights and untrained φ: the network is ill-conditioned, so rounding differences grow "
            f"through the {blocks} blocks (compare the two backends' parallel outputs); one chunk (Tc ≥ T) "
            "must match the original to rounding. Exactness in float32 is covered by the CPU tests.\n\n"
            + markdown_table(
                ["dtype", "backend", *keys, "error"],
                [
                    [r["dtype"], r["backend"], *(r.get(k, math.nan) for k in keys), r.get("error")]
                    for r in payload["parity"]
                ],
            )
        )
    if payload.get("note"):
        sections.append(payload["note"])
    out_dir.mkdir(parents=True, exist_ok=True)
    name = stem(family)
    (out_dir / f"{name}.md").write_text("\n\n".join(sections) + "\n")
    for key, suffix, label in (
        ("ms", "ms", "ms per forward"),
        ("peak_mib", "memory", "peak activation MiB"),
    ):
        plot_loglog(
            {row: (frames, [_value(by_key, row, f, key) for f in frames]) for row in ROWS},
            out_dir / f"{name}_{suffix}.png",
            xlabel=f"latent frames (×{shape['frame_tokens']} tokens)",
            ylabel=label,
            title=f"{title} DiT forward, {dtype}: {label}",
        )


def _note(results: list[dict]) -> str:
    """What the original needs at the longest length measured, next to the recurrent form."""
    by_key = {(r["row"], r["latent_frames"]): r for r in results}
    longest = max((r["latent_frames"] for r in results), default=None)
    if longest is None:
        return ""
    original, recurrent = by_key.get(("original", longest), {}), by_key.get(("recurrent", longest), {})
    video = next(r["video_frames"] for r in results if r["latent_frames"] == longest)
    if "peak_mib" in original and "peak_mib" in recurrent:
        return (
            f"At {longest} latent frames ({video} video frames) the original "
            f"needs {original['peak_mib'] / 1024:.1f} GiB of activations and {original['ms'] / 1e3:.2f} s per "
            f"forward; the recurrent form {recurrent['peak_mib'] / 1024:.2f} GiB and {recurrent['ms'] / 1e3:.2f} s."
        )
    if original.get("error") == "OOM":
        return f"At {longest} latent frames ({video} video frames) the original runs out of GPU memory."
    return ""


@dataclass
class ModelBenchSettings:
    """``rehyat bench model --set KEY=VALUE``: a whole DiT forward, original vs ReHyAt."""

    family: Literal["wan", "skyreels-v2", "ltx-video", "hunyuan-video", "cogvideox"] = "wan"
    """Which model."""
    size: Literal["published", "tiny"] = "published"
    """The family's published size (random weights) or its tiny config (a smoke run)."""
    height: int | None = None
    """Pixel height of the video (default the family's pipeline default)."""
    width: int | None = None
    """Pixel width of the video (default the family's pipeline default)."""
    device: Literal["cuda", "cpu"] | None = None
    """Default cuda; cpu times with the wall clock."""
    frames: list[int] | None = None
    """Latent frame counts (default 21 41 81; ``quick``: 7 21)."""
    rows: list[Literal["original", "parallel", "recurrent"]] = field(
        default_factory=lambda: ["original", "parallel", "recurrent"]
    )
    """Which forms to run."""
    quick: bool = False
    """7 and 21 frames, fewer timed calls."""
    reps: int | None = None
    """Timed calls per row at most (default 10; ``quick``: 3); 1 for a model whose forward takes seconds."""
    skip_parity: bool = False
    """Skip the recurrent-vs-parallel check."""
    chunks_per_call: int = 1
    """Chunks per forward call of the recurrent row (:func:`rehyat.models.hooks.apply_recurrent`): more is
    fewer calls at more activation memory."""
    out: str = "bench/results"
    """Folder for model.json/.md/.png (model_<family>.* beside Wan)."""
    render_only: bool = False
    """Re-render model*.md/.png from its JSON (no GPU)."""


def run(settings: ModelBenchSettings) -> int:
    family, size, device, frames, rows = (
        settings.family,
        settings.size,
        settings.device,
        settings.frames,
        settings.rows,
    )
    quick = settings.quick
    out_dir = Path(settings.out)
    arch = bench_architecture(family, size, settings.height, settings.width)
    if settings.render_only:
        render(read_json(out_dir / f"{stem(family)}.json"), out_dir)
        return 0
    device = device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        raise ValueError(
            "the model benchmark needs a CUDA GPU (--device cpu for a smoke run at --size tiny; "
            "--render-only to re-render results)"
        )
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available on this machine")
    frames = frames or ([7, 21] if quick else [21, 41, 81])
    if any(f < 1 for f in frames):
        raise ValueError(f"--frames must all be >= 1, got {frames}")
    if settings.reps is not None and settings.reps < 1:
        raise ValueError(f"reps must be >= 1, got {settings.reps}")
    check_int("chunks_per_call", settings.chunks_per_call, minimum=1)
    if settings.chunks_per_call > 1 and family in JOINT and "recurrent" in rows:
        raise ValueError(
            f"chunks_per_call={settings.chunks_per_call}: {family} (joint text–video attention) runs one chunk "
            "per call in the recurrent row; use chunks_per_call=1"
        )
    rep_ms, max_reps = (200.0, 3) if quick else (1000.0, 10)
    max_reps = settings.reps or max_reps
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    payload = {
        "environment": environment(),
        "family": family,
        "size": size,
        "dtype": "bf16" if device == "cuda" else "fp32",
        "blocks": _blocks(arch),
        "shape": _shape(arch),
        "rehyat": REHYAT,
        "chunks_per_call": settings.chunks_per_call,
        "parity": None,
        "results": [],
    }
    results_json = out_dir / f"{stem(family)}.json"
    if not settings.skip_parity:
        payload["parity"] = run_parity(arch=arch, device=device)
        print("parity", payload["parity"], flush=True)
        write_json(payload, results_json)  # what is measured so far, should the run be cut off

    def save(record: dict) -> None:
        payload["results"].append(record)
        write_json(payload, results_json)

    run_benchmark(
        sorted(frames),
        rows,
        rep_ms,
        max_reps,
        arch=arch,
        device=device,
        dtype=dtype,
        on_record=save,
        chunks_per_call=settings.chunks_per_call,
    )
    payload["note"] = _note(payload["results"])
    write_json(payload, results_json)
    render(payload, out_dir)
    print((out_dir / f"{stem(family)}.md").read_text())
    return 0
