"""``rehyat bench attention``: one Wan2.1-1.3B self-attention layer, full attention vs ReHyAt, on a GPU.

Shapes (Wan2.1-1.3B at 480×832): B=1, H=12, D=128, 1560 tokens per latent frame, D'=256, Tc=3, To=1, bf16. Each row
is timed forward (under no_grad) and forward+backward (gradients of every input, φ weights included),
median ms over CUDA-event-timed calls; TFLOP/s from :mod:`rehyat.flops` (forward+backward counts 3.5×
the attention-matmul FLOPs and 3× the linear/φ FLOPs, the usual FlashAttention convention); peak memory
is what the call allocates above its inputs. Rows:

- ``sdpa_cudnn`` / ``sdpa_flash`` / ``sdpa_efficient``: full softmax attention, torch SDPA pinned to one
  backend (inputs already in SDPA's [B, H, N, D] layout); backends that refuse to run are left out.
- ``rehyat_layer``: the whole ReHyAt layer on the kernels — φq(q), φk(k) (the fused φ kernel, backend
  "auto"), then ``hybrid_attention``.
- ``rehyat_op``: ``hybrid_attention(backend="triton")`` given fq, fk (softmax + linear parts).
- ``softmax_part``: the fused kernel with the linear part off. This is also the local-only baseline
  (chunk softmax, no linear part) on the kernels.
- ``linear_states``: the key side of the linear part — per-frame Σφk vᵀ kernel + prefix over frames
  (half the linear FLOPs); the query side φq·KV runs inside the fused kernel's epilogue.
- ``feature_maps``: φq(q) and φk(k) (PolynomialFeatureMap on its fused Triton kernel, backend "auto").
- ``feature_maps_torch``: the same on PyTorch's batched per-head einsums (``backend="torch"``).
- ``rehyat_torch``: the whole layer on the PyTorch reference path (``backend="torch"``, φ included).
- ``recurrent``: the streaming step on the kernels, chunk by chunk, each chunk's output written in place into a
  preallocated output (forward only); its peak memory is the working memory beyond inputs and output.
- ``linear_only``: the linear-only baseline (``rehyat.baselines.linear_attention``, PyTorch, fp32 sums;
  its gradients are those of v, fq, fk — it does not read q or k).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
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

SHAPE = dict(heads=12, head_dim=128, frame_tokens=1560, feature_dim=256, chunk_frames=3, overlap_frames=1)
SDPA_BACKENDS = ("cudnn", "flash", "efficient")


@dataclass(frozen=True)
class Row:
    name: str
    attention_flops: float  # softmax-style matmul FLOPs (fwd)
    matmul_flops: float  # linear part / feature map FLOPs (fwd)
    forward: Callable[[], object]
    backward: Callable[[], object] | None  # forward + backward, or None if not measured


def layer_inputs(frames: int, dtype: torch.dtype, device: str, seed: int = 0):
    from rehyat import PolynomialFeatureMap

    torch.manual_seed(seed)
    n = frames * SHAPE["frame_tokens"]
    q, k, v = (
        torch.randn(1, n, SHAPE["heads"], SHAPE["head_dim"], device=device, dtype=dtype) for _ in range(3)
    )
    maps = [PolynomialFeatureMap(SHAPE["heads"], SHAPE["head_dim"], degree=2).to(device, dtype) for _ in "qk"]
    return q, k, v, maps


def stream_steps(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    fq: torch.Tensor,
    fk: torch.Tensor,
    out: torch.Tensor | None = None,
) -> None:
    """The streaming form at the benchmark shape: ``hybrid_attention_step`` chunk by chunk on the kernels,
    each chunk's output written in place into its rows of ``out`` (if given), as a caller assembling
    the whole output would."""
    from rehyat import hybrid_attention_step

    step_tokens, state = SHAPE["chunk_frames"] * SHAPE["frame_tokens"], None
    for start in range(0, q.shape[1], step_tokens):
        piece = slice(start, start + step_tokens)
        _, state = hybrid_attention_step(
            q[:, piece], k[:, piece], v[:, piece], fq[:, piece], fk[:, piece], state,
            frame_tokens=SHAPE["frame_tokens"], overlap_frames=SHAPE["overlap_frames"], backend="triton",
            out=None if out is None else out[:, piece],
        )  # fmt: skip


def _rows(frames: int, dtype: torch.dtype) -> list[Row]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from rehyat import hybrid_attention
    from rehyat.attention.hybrid.geometry import Geometry
    from rehyat.attention.hybrid.kernels.launch import chunk_states, triton_hybrid_attention
    from rehyat.baselines import linear_attention
    from rehyat.flops import attention_flops

    flops = attention_flops(
        frames,
        SHAPE["frame_tokens"],
        SHAPE["heads"],
        SHAPE["head_dim"],
        chunk_frames=SHAPE["chunk_frames"],
        overlap_frames=SHAPE["overlap_frames"],
        feature_dim=SHAPE["feature_dim"],
    )
    q, k, v, (phi_q, phi_k) = layer_inputs(frames, dtype, "cuda")
    with torch.no_grad():
        fq, fk = phi_q(q), phi_k(k)
    grad_out = torch.randn_like(q)
    geo = dict(
        frame_tokens=SHAPE["frame_tokens"],
        chunk_frames=SHAPE["chunk_frames"],
        overlap_frames=SHAPE["overlap_frames"],
    )
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v, fq, fk)]
    params = list(phi_q.parameters()) + list(phi_k.parameters())

    def fwd_bwd(run: Callable[[], object], wrt: list[torch.Tensor], grad: object) -> Callable:
        return lambda: torch.autograd.grad(run(), wrt, grad)  # one output and gradient, or tuples of both

    def no_grad(run: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return run()

        return call

    rows = []
    qt, kt, vt = (x.transpose(1, 2).contiguous().requires_grad_(True) for x in (q, k, v))
    grad_t = grad_out.transpose(1, 2).contiguous()
    for backend in SDPA_BACKENDS:
        kernel = getattr(
            SDPBackend,
            {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION"}.get(backend, "EFFICIENT_ATTENTION"),
        )

        def sdpa(kernel=kernel) -> torch.Tensor:
            with sdpa_kernel(kernel):
                return F.scaled_dot_product_attention(qt, kt, vt)

        rows.append(
            Row(f"sdpa_{backend}", flops.full, 0.0, no_grad(sdpa), fwd_bwd(sdpa, [qt, kt, vt], grad_t))
        )

    ql, kl, vl, fql, fkl = leaves

    def layer(backend: str) -> Callable[[], torch.Tensor]:
        maps = "torch" if backend == "torch" else "auto"
        return lambda: hybrid_attention(
            ql, kl, vl, phi_q(ql, backend=maps), phi_k(kl, backend=maps), **geo, backend=backend
        )

    def op() -> torch.Tensor:
        return hybrid_attention(ql, kl, vl, fql, fkl, **geo, backend="triton")

    def softmax_part() -> torch.Tensor:
        return triton_hybrid_attention(ql, kl, vl, None, None, **geo)

    def states() -> torch.Tensor:
        geometry = Geometry(SHAPE["frame_tokens"], SHAPE["chunk_frames"], SHAPE["overlap_frames"])
        kv, z = chunk_states(fkl, vl, geometry)
        return kv.sum() + z.sum()

    def feature_maps(backend: str) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        return lambda: (phi_q(ql, backend=backend), phi_k(kl, backend=backend))

    out_buffer = torch.empty_like(q)

    def recurrent() -> None:
        stream_steps(q, k, v, fq, fk, out_buffer)

    def linear_only() -> torch.Tensor:
        return linear_attention(ql, kl, vl, fql, fkl, **geo)

    all_inputs = [ql, kl, vl, *params]
    rows += [
        Row("rehyat_layer", flops.softmax, flops.linear + flops.feature_maps, no_grad(layer("triton")),
            fwd_bwd(layer("triton"), all_inputs, grad_out)),
        Row("rehyat_op", flops.softmax, flops.linear, no_grad(op), fwd_bwd(op, leaves, grad_out)),
        Row("softmax_part", flops.softmax, 0.0, no_grad(softmax_part), fwd_bwd(softmax_part, [ql, kl, vl], grad_out)),
        Row("linear_states", 0.0, flops.linear / 2, no_grad(states),
            lambda: torch.autograd.grad(states(), [fkl, vl])),
        Row("feature_maps", 0.0, flops.feature_maps, no_grad(feature_maps("auto")),
            fwd_bwd(feature_maps("auto"), all_inputs[:2] + params, (fq, fk))),
        Row("feature_maps_torch", 0.0, flops.feature_maps, no_grad(feature_maps("torch")),
            fwd_bwd(feature_maps("torch"), all_inputs[:2] + params, (fq, fk))),
        Row("rehyat_torch", flops.softmax, flops.linear + flops.feature_maps, no_grad(layer("torch")),
            fwd_bwd(layer("torch"), all_inputs, grad_out)),
        Row("recurrent", flops.softmax, flops.linear, no_grad(recurrent), None),
        Row("linear_only", 0.0, flops.linear, no_grad(linear_only), fwd_bwd(linear_only, [vl, fql, fkl], grad_out)),
    ]  # fmt: skip
    return rows


def _measure(fn: Callable[[], object], rep_ms: float) -> dict[str, float | str]:
    try:
        result: dict[str, float | str] = {"ms": time_ms(fn, rep_ms=rep_ms), "peak_mib": peak_memory_mib(fn)}
    except Exception as error:  # OOM or a backend that refuses these inputs: record and go on
        if not is_oom(error) and not isinstance(error, RuntimeError):
            raise
        result = {"error": "OOM" if is_oom(error) else f"{type(error).__name__}: {str(error)[:120]}"}
    torch.cuda.empty_cache()
    return result


def paired_times(
    first: Callable[[], object], second: Callable[[], object], rep_ms: float, rounds: int = 5
) -> dict:
    """Median ms of ``first`` and ``second`` timed in alternation, ``rounds`` times each, so that clock
    and thermal drift reach both alike; their ratio is what the recurrent/parallel target reads."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((first, times[0]), (second, times[1])):
            out.append(time_ms(fn, rep_ms=rep_ms / rounds))
    first_ms, second_ms = (statistics.median(t) for t in times)
    return {"parallel_ms": first_ms, "recurrent_ms": second_ms, "ratio": second_ms / first_ms}


def run_benchmark(frames: list[int], rep_ms: float) -> tuple[list[dict], list[dict]]:
    """Every row at every frame count, and the recurrent form against the parallel op side by side."""
    results, pairs = [], []
    for count in frames:
        rows = _rows(count, torch.bfloat16)
        for row in rows:
            record = {"frames": count, "tokens": count * SHAPE["frame_tokens"], "row": row.name}
            for mode, fn, total in (
                ("fwd", row.forward, row.attention_flops + row.matmul_flops),
                ("fwd_bwd", row.backward, 3.5 * row.attention_flops + 3.0 * row.matmul_flops),
            ):
                if fn is None:
                    continue
                measured = _measure(fn, rep_ms)
                if "ms" in measured:
                    measured["tflops"] = total / (measured["ms"] * 1e-3) / 1e12
                record[mode] = measured
            print(record, flush=True)
            results.append(record)
        by_name = {row.name: row for row in rows}
        measured = {r["row"]: r.get("fwd", {}) for r in results if r["frames"] == count}
        if all("ms" in measured.get(name, {}) for name in ("rehyat_op", "recurrent")):
            try:
                pair = paired_times(by_name["rehyat_op"].forward, by_name["recurrent"].forward, rep_ms)
            except RuntimeError as error:  # OOM or a kernel failure: keep the run's other results
                pair = {"error": f"{type(error).__name__}: {str(error)[:120]}"}
            pairs.append({"frames": count, **pair})
            print(pairs[-1], flush=True)
        del rows, by_name
        torch.cuda.empty_cache()
    return results, pairs


def feature_map_parity(frames: int = 7) -> dict[str, float]:
    """The fused φ kernel (bf16 and fp32) and the torch path (bf16) against the float64 torch path at
    Wan frame size, random weights and biases: φ and the gradients of x, every weight and every bias."""
    from rehyat import PolynomialFeatureMap

    torch.manual_seed(2)
    phi = PolynomialFeatureMap(SHAPE["heads"], SHAPE["head_dim"], degree=2, init="random").cuda().double()
    with torch.no_grad():
        for b in phi.biases:
            b.normal_(0.0, 0.1)
    x = torch.randn(1, frames * SHAPE["frame_tokens"], SHAPE["heads"], SHAPE["head_dim"], device="cuda")
    grad = torch.randn(*x.shape[:3], SHAPE["feature_dim"], device="cuda", dtype=torch.float64)
    names = ["phi", "dx"] + [f"d{name}" for name, _ in phi.named_parameters()]
    master = {name: t.clone() for name, t in phi.state_dict().items()}

    def run(dtype: torch.dtype, backend: str) -> list[torch.Tensor]:
        phi.double().load_state_dict(master)  # the float64 weights, rounded once to this dtype
        phi.to(dtype)
        leaf = x.to(dtype).requires_grad_(True)
        out = phi(leaf, backend=backend)
        return [out.detach(), *torch.autograd.grad(out, [leaf, *phi.parameters()], grad.to(dtype))]

    ref = run(torch.float64, "torch")
    errors = {}
    for label, dtype, backend in (
        ("phi_triton_bf16", torch.bfloat16, "triton"),
        ("phi_triton_fp32", torch.float32, "triton"),
        ("phi_torch_bf16", torch.bfloat16, "torch"),
    ):
        for name, got, want in zip(names, run(dtype, backend), ref, strict=True):
            errors[f"{label}.{name}"] = ((got.double() - want).norm() / want.norm()).item()
    return errors


def run_parity(frames: int = 7) -> dict[str, float]:
    """Kernels (bf16 and fp32) and the torch path (bf16) against the float64 reference at Wan frame
    size: output and the gradients of q, k, v, fq, fk; max over causal and bidirectional."""
    from rehyat import hybrid_attention, recurrent_hybrid_attention

    q, k, v, (phi_q, phi_k) = layer_inputs(frames, torch.float64, "cuda", seed=1)
    with torch.no_grad():
        inputs = [q, k, v, phi_q(q), phi_k(k)]
    geo = dict(
        frame_tokens=SHAPE["frame_tokens"],
        chunk_frames=SHAPE["chunk_frames"],
        overlap_frames=SHAPE["overlap_frames"],
    )
    grad = torch.randn_like(q)

    def run(fn, dtype, **kwargs):
        leaves = [x.detach().to(dtype).requires_grad_(True) for x in inputs]
        out = fn(*leaves, **geo, **kwargs)
        return [out.detach(), *torch.autograd.grad(out, leaves, grad.to(dtype))]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b).norm() / b.norm()).item()

    names = ("out", "dq", "dk", "dv", "dfq", "dfk")
    errors: dict[str, float] = {}
    for causal in (True, False):
        ref = run(hybrid_attention, torch.float64, causal=causal, backend="torch")
        for label, fn, dtype, kwargs in (
            ("triton_bf16", hybrid_attention, torch.bfloat16, dict(causal=causal, backend="triton")),
            ("triton_fp32", hybrid_attention, torch.float32, dict(causal=causal, backend="triton")),
            ("torch_bf16", hybrid_attention, torch.bfloat16, dict(causal=causal, backend="torch")),
            ("recurrent_triton_bf16", recurrent_hybrid_attention, torch.bfloat16, dict(backend="triton")),
        ):
            if label.startswith("recurrent") and not causal:
                continue
            tic = time.perf_counter()
            for name, got, want in zip(names, run(fn, dtype, **kwargs), ref, strict=True):
                key = f"{label}.{name}"
                errors[key] = max(errors.get(key, 0.0), rel(got, want))
            print(f"parity {label} causal={causal}: {time.perf_counter() - tic:.0f} s", flush=True)
        del ref
        torch.cuda.empty_cache()
    return errors


def _targets(
    by_key: dict,
    frames: list[int],
    fastest_sdpa: Callable[[int, str], float],
    pairs: list[dict] | None = None,
) -> str:
    """The layer's speed and scaling targets, each with what this run measured (ratios against the fastest
    SDPA backend); the recurrent one from ``pairs`` (timed side by side) where the run has them, else from
    the rows."""

    def ms(count: int, row: str, mode: str) -> float:
        return by_key.get((count, row), {}).get(mode, {}).get("ms", math.nan)

    def best_tflops(count: int, mode: str) -> float:
        rows = [by_key.get((count, f"sdpa_{b}"), {}).get(mode, {}) for b in SDPA_BACKENDS]
        return max((r.get("tflops", 0.0) for r in rows), default=math.nan)

    lines = []
    for mode, goals in (("fwd", {21: 4.0, 81: 15.0}), ("fwd_bwd", {21: 3.5, 81: 12.0})):
        for count, goal in goals.items():
            got = fastest_sdpa(count, mode) / ms(count, "rehyat_layer", mode)
            verdict = "met" if got >= goal else "missed"
            lines.append(f"- whole layer {mode}, {count} frames: {got:.2f}× (target ≥ {goal}×) — {verdict}")
    for mode in ("fwd", "fwd_bwd"):
        shares = [
            by_key.get((c, "softmax_part"), {}).get(mode, {}).get("tflops", math.nan) / best_tflops(c, mode)
            for c in frames
        ]
        listed = ", ".join(f"{c}: {100 * x:.0f}%" for c, x in zip(frames, shares, strict=True))
        verdict = "met" if min(shares) >= 0.7 else "missed"
        lines.append(f"- softmax part TFLOP/s vs best SDPA, {mode}: {listed} (target ≥ 70%) — {verdict}")
    for mode in ("fwd", "fwd_bwd"):
        per_frame = [ms(c, "rehyat_layer", mode) / c for c in frames]
        spread = max(per_frame) / min(per_frame) - 1
        verdict = "met" if spread <= 0.15 else "missed"
        lines.append(
            f"- linear scaling, whole layer {mode}: ms/frame {min(per_frame):.3f}–{max(per_frame):.3f} "
            f"({100 * spread:.1f}% spread, target ±15%) — {verdict}"
        )
    paired = {p["frames"]: p["ratio"] for p in pairs or [] if "ratio" in p}
    ratios = [paired.get(c, ms(c, "recurrent", "fwd") / ms(c, "rehyat_op", "fwd")) for c in frames]
    peaks = [by_key.get((c, "recurrent"), {}).get("fwd", {}).get("peak_mib", math.nan) for c in frames]
    lines.append(
        "- recurrent / parallel op time, fwd"
        + (f" (timed side by side at {', '.join(map(str, sorted(paired)))} frames)" if paired else "")
        + ": "
        + ", ".join(f"{c}: {r:.2f}×" for c, r in zip(frames, ratios, strict=True))
        + f" (target ≤ 1.3×) — {'met' if max(ratios) <= 1.3 else 'missed'}; recurrent peak working memory "
        + ", ".join(f"{p:.0f}" for p in peaks)
        + " MiB"
    )
    return "\n".join(lines)


def render(payload: dict, out_dir: Path) -> None:
    """Write attention.md and attention.png from the JSON payload."""
    results = payload["results"]
    frames = sorted({r["frames"] for r in results})
    rows = list(dict.fromkeys(r["row"] for r in results))
    by_key = {(r["frames"], r["row"]): r for r in results}

    def fastest_sdpa(count: int, mode: str) -> float:
        times = [
            by_key.get((count, n), {}).get(mode, {}).get("ms", math.inf)
            for n in rows
            if n.startswith("sdpa_")
        ]
        return min(times, default=math.inf)

    sections = [
        "# Attention benchmark: one Wan2.1-1.3B self-attention layer",
        environment_markdown(payload["environment"]),
        "B=1, H=12, D=128, 1560 tokens/frame, D'=256, Tc=3, To=1, bf16. Median ms (CUDA events); "
        "TFLOP/s from rehyat.flops (fwd+bwd = 3.5× attention + 3× linear/φ FLOPs); peak MiB allocated "
        "above the inputs; speedup = fastest SDPA backend's ms / this row's ms (same mode, same frames).",
    ]
    if payload.get("parity"):
        separate = payload.get("parity_environment")
        sections.append(
            "## Parity at Wan frame size (7 frames × 1560 tokens, rel. error vs float64 reference)\n\n"
            + (
                f"Measured in a separate run (`--set parity_only=true`): {separate['gpu']}, {separate['date']}.\n\n"
                if separate
                else ""
            )
            + markdown_table(["quantity", "rel. error"], sorted(payload["parity"].items()))
        )
    sections.append(
        "## Targets (this run)\n\n" + _targets(by_key, frames, fastest_sdpa, payload.get("recurrent_pairs"))
    )
    for mode, title in (("fwd", "Forward"), ("fwd_bwd", "Forward + backward")):
        table = []
        for count in frames:
            best = fastest_sdpa(count, mode)
            for name in rows:
                entry = by_key.get((count, name), {}).get(mode)
                if entry is None:
                    continue
                if "error" in entry:
                    table.append([count, name, entry["error"], None, None, None, None])
                    continue
                table.append(
                    [count, name, entry["ms"], entry["ms"] / count, entry["tflops"], entry["peak_mib"],
                     best / entry["ms"] if math.isfinite(best) else None]
                )  # fmt: skip
        sections.append(
            f"## {title}\n\n"
            + markdown_table(
                ["frames", "row", "ms", "ms/frame", "TFLOP/s", "peak MiB", "speedup vs best SDPA"], table
            )
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention.md").write_text("\n\n".join(sections) + "\n")
    series = {}
    for mode in ("fwd", "fwd_bwd"):
        for name in rows:
            ys = [by_key.get((c, name), {}).get(mode, {}).get("ms", math.nan) for c in frames]
            if any(y == y for y in ys):
                series[f"{name} {mode}"] = (frames, ys)
    styles = {label: ("o-" if label.endswith(" fwd") else "s--") for label in series}
    palette = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9", "k", "y"]
    colors = {label: palette[rows.index(label.split()[0]) % len(palette)] for label in series}
    plot_loglog(
        series,
        out_dir / "attention.png",
        xlabel="latent frames (1560 tokens each)",
        ylabel="median ms",
        title=f"Wan2.1-1.3B self-attention layer — {payload['environment'].get('gpu')} (solid: fwd, dashed: fwd+bwd)",
        styles=styles,
        colors=colors,
    )


@dataclass
class AttentionBenchSettings:
    """``rehyat bench attention --set KEY=VALUE``: one self-attention layer, SDPA backends vs ReHyAt (GPU)."""

    frames: list[int] | None = None
    """Latent frame counts (default 21 41 81 161; ``quick``: 21 41)."""
    out: str = "bench/results"
    """Folder for attention.json/.md/.png."""
    quick: bool = False
    """21 and 41 frames, fewer timed calls."""
    skip_parity: bool = False
    """Skip the parity check at Wan frame size."""
    parity_only: bool = False
    """Run only the parity check and merge it into ``out``/attention.json (a run's results; GPU)."""
    render_only: bool = False
    """Re-render attention.md/.png from attention.json (no GPU)."""


def run(settings: AttentionBenchSettings) -> int:
    frames, quick, parity_only = settings.frames, settings.quick, settings.parity_only
    out_dir = Path(settings.out)
    if settings.render_only:
        render(read_json(out_dir / "attention.json"), out_dir)
        return 0
    if not torch.cuda.is_available():
        raise ValueError("the attention benchmark needs a CUDA GPU (use --render-only to re-render results)")
    if parity_only:  # the parity alone (it compiles fp32 kernels for minutes), merged into a run's JSON
        path = out_dir / "attention.json"
        if not path.is_file():
            raise ValueError(f"parity_only merges into a benchmark's results, but {path} does not exist")
        payload = read_json(path)
        payload["parity"] = run_parity() | feature_map_parity()
        payload["parity_environment"] = environment()
        write_json(payload, path)
        render(payload, out_dir)
        print(payload["parity"], flush=True)
        return 0
    frames = frames or ([21, 41] if quick else [21, 41, 81, 161])
    rep_ms = 50.0 if quick else 300.0
    payload = {"environment": environment(), "shape": SHAPE, "parity": None, "results": []}
    if not settings.skip_parity:
        payload["parity"] = run_parity() | feature_map_parity()
        print(payload["parity"], flush=True)
    payload["results"], payload["recurrent_pairs"] = run_benchmark(frames, rep_ms)
    write_json(payload, out_dir / "attention.json")
    render(payload, out_dir)
    print((out_dir / "attention.md").read_text())
    return 0
