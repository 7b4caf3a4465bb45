"""Whole-DiT time of the recurrent form eager, compiled and CUDA-graphed, beside the parallel form.

Wan2.1-1.3B architecture with random weights (bf16 on a GPU, as ``rehyat bench model`` builds it), every
block converted (causal ReHyAt), batch 1, 480×832. Rows, one forward each under ``torch.no_grad``:

- ``parallel eager`` / ``parallel compiled``: the converted model, and ``torch.compile`` of it;
- ``recurrent eager``: :func:`rehyat.models.hooks.apply_recurrent` (chunk by chunk through diffusers'
  forward);
- ``recurrent compiled`` / ``recurrent graphed``: :func:`rehyat.models.hooks.compile_recurrent`, one
  graph per chunk shape; graphed adds ``mode="reduce-overhead"`` (CUDA graphs, CUDA only).

Each recurrent row runs once per ``--chunks-per-call`` value k (diffusers' forward on k chunks at a time:
1/k of the calls, k× the activation memory).

Each row records median ms, the first call's seconds (compilation), peak activation MiB (CUDA), the
graphs Dynamo made (which must not grow with the frame count), its graph breaks (the JSON's
``graph_breaks``; none in the recurrent rows, compiled with ``fullgraph=True``) and the relative error
against the first row's output (parallel eager unless ``--rows`` leaves it out). ``--profile`` adds a ``torch.profiler`` table of every row at the first frame count
(kernel time by op: where the recurrent form's extra time goes). Writes ``OUT.json`` and ``OUT.md``.

GPU run::

    PYTHONPATH=src python scripts/profile_recurrent_compile.py --frames 21 81 --chunks-per-call 1 3 --profile

CPU dry run (tiny Wan, compiler backend "eager")::

    PYTHONPATH=src python scripts/profile_recurrent_compile.py --tiny --frames 6 9 --backend eager \\
        --out /tmp/recurrent_compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from rehyat import ReHyAtConfig, convert_wan
from rehyat.experiments.bench_model import SHAPE, build_model
from rehyat.experiments.common import (
    environment,
    environment_markdown,
    markdown_table,
    peak_memory_mib,
    time_ms,
    write_json,
)
from rehyat.models.hooks import apply_recurrent, compile_recurrent, remove_recurrent
from rehyat.models.wan_configs import tiny_wan_config

ROWS = ("parallel eager", "parallel compiled", "recurrent eager", "recurrent compiled", "recurrent graphed")
TINY = dict(latent_height=8, latent_width=8, text_tokens=6)


def inputs(frames: int, config: dict, shape: dict, device: str, dtype: torch.dtype):
    gen = torch.Generator(device).manual_seed(frames)
    size = (1, config["in_channels"], frames, shape["latent_height"], shape["latent_width"])
    latents = torch.randn(size, generator=gen, device=device, dtype=dtype)
    context = torch.randn(
        1, shape["text_tokens"], config["text_dim"], generator=gen, device=device, dtype=dtype
    )
    return latents, torch.tensor([999.0], device=device), context


def measure(fn: Callable[[], torch.Tensor], cuda: bool, reps: int) -> dict[str, float]:
    """First call (compilation included) in s, then the median ms and, on CUDA, the peak MiB."""
    begin = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
        return {
            "first_call_s": time.perf_counter() - begin,
            "ms": time_ms(fn, max_reps=reps),
            "peak_mib": peak_memory_mib(fn),
        }
    first = time.perf_counter() - begin
    times = []
    for _ in range(max(reps, 1)):
        begin = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - begin))
    return {"first_call_s": first, "ms": statistics.median(times)}


def profile_table(fn: Callable[[], torch.Tensor], cuda: bool) -> str:
    """Two calls under torch.profiler: wall time against the kernels' summed time (below 100 %: the GPU
    waits for the host), then the ops by device time and by host (self CPU) time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        begin = time.perf_counter()
        for _ in range(2):
            fn()
        if cuda:
            torch.cuda.synchronize()
        wall_us = 1e6 * (time.perf_counter() - begin)
    averages = prof.key_averages()
    lines = [f"wall {wall_us / 2e3:.1f} ms per call"]
    if cuda:
        # Device events only: a CPU op's self device time repeats its kernels' time.
        kernels_us = sum(
            event.self_device_time_total
            for event in averages
            if event.device_type == DeviceType.CUDA and not getattr(event, "is_user_annotation", False)
        )
        lines[0] += (
            f"; kernels {kernels_us / 2e3:.1f} ms per call ({100 * kernels_us / wall_us:.0f} % of wall)"
        )
        lines += [
            "",
            "by device time:",
            averages.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60),
        ]
    lines += [
        "",
        "by host time:",
        averages.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=60),
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    cuda = torch.cuda.is_available() and not args.tiny
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    config = tiny_wan_config(num_layers=2) if args.tiny else None
    shape = TINY if args.tiny else SHAPE
    model = convert_wan(
        build_model(device, dtype, config),
        ReHyAtConfig(chunk_frames=args.chunk_frames, overlap_frames=args.overlap_frames),
    )
    model_config = dict(model.config)
    rows = [row for row in args.rows if row != "recurrent graphed" or cuda]
    compile_kwargs = dict(backend=args.backend)
    results, profiles, references = [], {}, {}
    payload = {
        "environment": environment(),
        "model": "tiny Wan (2 blocks)" if args.tiny else "Wan2.1-T2V-1.3B, random weights, bf16",
        "rehyat": {"chunk_frames": args.chunk_frames, "overlap_frames": args.overlap_frames},
        "backend": args.backend,
        "results": results,
        "profiles": profiles,
    }
    out = Path(args.out)
    runs = [
        (row, k) for row in rows for k in (args.chunks_per_call if row.startswith("recurrent") else [None])
    ]
    for row, per_call in runs:
        torch._dynamo.reset()
        counters.clear()
        remove_recurrent(model)
        if row == "parallel compiled":
            target = torch.compile(model, **compile_kwargs)
        elif row == "recurrent eager":
            target = apply_recurrent(model, chunks_per_call=per_call)
        elif row == "recurrent compiled":
            target = compile_recurrent(model, chunks_per_call=per_call, **compile_kwargs)
        elif row == "recurrent graphed":
            target = compile_recurrent(
                model, chunks_per_call=per_call, mode="reduce-overhead", **compile_kwargs
            )
        else:
            target = model
        for frames in args.frames:
            latents, timestep, context = inputs(frames, model_config, shape, device, dtype)

            @torch.no_grad()
            def call(target=target, latents=latents, timestep=timestep, context=context) -> torch.Tensor:
                return target(latents, timestep, context, return_dict=False)[0]

            record = {"row": row, "chunks_per_call": per_call, "latent_frames": frames}
            try:
                record.update(measure(call, cuda, args.reps))
                output = call().float()
                reference = references.setdefault(frames, output)
                record["rel_err"] = ((output - reference).norm() / reference.norm()).item()
                if args.profile and frames == args.frames[0]:
                    profiles[f"{row}, {per_call or 1} chunk(s) per call, {frames} latent frames"] = (
                        profile_table(call, cuda)
                    )
            except (RuntimeError, AssertionError) as error:  # OOM, a compiler failure: recorded, next row
                record["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            record["graphs"] = counters["stats"]["unique_graphs"]
            record["graph_breaks"] = sum(counters["graph_break"].values())
            torch.cuda.empty_cache()
            print(record, flush=True)
            results.append(record)
            # Written after every row, so a run stopped by a time limit keeps what it measured.
            write_json(payload, out.with_suffix(".json"))
            out.with_suffix(".md").write_text(render(payload))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


HEADER = [
    "row",
    "chunks/call",
    "latent frames",
    "ms",
    "× parallel",
    "peak MiB",
    "graphs",
    "first call s",
    "rel err",
]


def render(payload: dict) -> str:
    results = payload["results"]
    by_key = {(r["row"], r["latent_frames"]): r for r in results}
    table = []
    for r in results:
        per_call = r.get("chunks_per_call")
        if "error" in r:
            table.append(
                [r["row"], per_call, r["latent_frames"], r["error"], None, None, r["graphs"], None, None]
            )
            continue
        mode = r["row"].split()[1]
        parallel = by_key.get(
            ("parallel " + ("eager" if mode == "eager" else "compiled"), r["latent_frames"])
        )
        ratio = r["ms"] / parallel["ms"] if parallel and "ms" in parallel else float("nan")
        table.append(
            [r["row"], per_call, r["latent_frames"], r["ms"], ratio, r.get("peak_mib"), r["graphs"], r["first_call_s"],
             f"{r.get('rel_err', float('nan')):.1e}"]
        )  # fmt: skip
    targets = []
    for recurrent in results:
        if not recurrent["row"].startswith("recurrent") or "ms" not in recurrent:
            continue
        mode, count = recurrent["row"].split()[1], recurrent["latent_frames"]
        parallel = by_key.get((f"parallel {'eager' if mode == 'eager' else 'compiled'}", count))
        if parallel and "ms" in parallel:
            ratio = recurrent["ms"] / parallel["ms"]
            met = "met" if ratio <= 1.1 else "not met"
            targets.append(
                f"- recurrent {mode}, {recurrent.get('chunks_per_call', 1)} chunk(s) per call, ≤ 1.1× parallel "
                f"at {count} latent frames: {ratio:.2f}× ({met})"
            )
    rehyat = payload["rehyat"]
    text = [
        "# Recurrent form: eager, compiled, CUDA-graphed, beside the parallel form",
        "",
        f"{payload['model']}; Tc={rehyat['chunk_frames']}, To={rehyat['overlap_frames']}; torch.compile "
        f"backend {payload['backend']!r}. ms: median of a whole forward; × parallel: against the parallel "
        "form in the same mode (eager against eager, compiled and graphed against compiled); graphs: Dynamo's "
        "unique graphs after the row's frame counts (must not grow with frames); first call: seconds, "
        "compilation included; rel err: against the first row.",
        "",
        markdown_table(
            HEADER,
            table,
        ),
        "",
        "## Targets",
        "",
        *targets,
        "",
        environment_markdown(payload["environment"]),
    ]
    for name, table_text in payload["profiles"].items():
        text += ["", f"## Profile: {name}", "", "```", table_text, "```"]
    return "\n".join(text) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 81], help="latent frame counts")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS, metavar="ROW")
    parser.add_argument("--chunk-frames", type=int, default=3)
    parser.add_argument("--overlap-frames", type=int, default=1)
    parser.add_argument(
        "--chunks-per-call",
        type=int,
        nargs="+",
        default=[1],
        help="the recurrent rows' chunks per forward call",
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--reps", type=int, default=10, help="timed calls at most")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of every row")
    parser.add_argument("--tiny", action="store_true", help="a tiny Wan on the CPU (a dry run)")
    parser.add_argument("--out", default="bench/results/recurrent_compile", help="OUT.json and OUT.md")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
