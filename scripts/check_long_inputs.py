"""Long inputs on the GPU: the Triton kernels at 501 and 1001 Wan frames (int64 offsets).

At 501 latent frames of Wan2.1-1.3B (1560 tokens a frame, 12 heads × 128, D' = 256) φq holds 2.4e9
elements, and int32 offsets wrapped: "CUDA error: an illegal memory access". Per frame count, in bf16
with B = 1, each case in its own process (a crash there cannot take the others with it):

- phi: PolynomialFeatureMap (degree 2, 2 layers) on the kernels, forward and backward; φ and dx of
  the last 4 frames (and of 4 frames around the row where φ passes 2^31 elements) against the
  PyTorch path on those frames.
- op: ``hybrid_attention(..., backend="triton")`` (Tc = 3, To = 1), forward and backward; the last
  chunk's y, dq, dφq and the dk, dv of its own frames (no other chunk sees them) against docs/method.md §3 in
  float32 on that chunk (its softmax window plus the linear state of all earlier frames), and dφk of
  the frames no chunk takes linearly, which must be exactly 0.
- recurrent: ``recurrent_hybrid_attention(..., backend="triton")`` against the parallel op's output.

``--baseline-src A --this-src B`` also times the op and the recurrent form at ``--ab-frames`` frames
on two source trees (``src`` folders; B defaults to this checkout's), alternated ``--ab-repeats``
times in separate processes: for a speed comparison, let them differ in the kernels alone.
Writes OUT/long_inputs.json and OUT/long_inputs.md; ``--merge`` keeps an earlier run's rows that this
run does not redo, ``--render`` only rewrites the table from a JSON, ``--smoke`` tries all of it on
the CPU at a tiny shape.

    python scripts/check_long_inputs.py --frames 501 1001 --out bench/results
    python scripts/check_long_inputs.py --cases phi --merge bench/results/long_inputs.json --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(heads=12, head_dim=128, frame_tokens=1560, feature_dim=256, chunk_frames=3, overlap_frames=1)
#: --smoke: a tiny shape on the CPU (Triton's interpreter), to try this script without a GPU.
SMOKE_SHAPE = dict(heads=2, head_dim=16, frame_tokens=32, feature_dim=32, chunk_frames=3, overlap_frames=1)
DEVICE, DTYPE = "cuda", "bfloat16"  # --smoke: cpu, float32 (the interpreter's bf16 dots are wrong)
#: Tolerances against float32 references of the same bf16 inputs (bf16 outputs, fp32 accumulation); a
#: wrong offset gives errors of order 1.
TOLERANCES = {
    "y": 0.02,
    "dq": 0.25,
    "dk": 0.25,
    "dv": 0.05,
    "dfq": 0.05,
    "phi": 0.02,
    "dx": 0.1,
    "recurrent": 0.02,
}


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    start = time.perf_counter()
    result = fn()
    _sync()
    return result, time.perf_counter() - start


def _inputs(frames: int, seed: int):
    """q, k, v ~ N(0, 1) and positive features U(0, 0.01): the linear and softmax parts both matter."""
    import torch

    torch.manual_seed(seed)
    n, h, d, e = frames * SHAPE["frame_tokens"], SHAPE["heads"], SHAPE["head_dim"], SHAPE["feature_dim"]
    q, k, v = (torch.randn(1, n, h, d, device=DEVICE, dtype=getattr(torch, DTYPE)) for _ in range(3))
    fq, fk = (torch.rand(1, n, h, e, device=DEVICE, dtype=getattr(torch, DTYPE)).mul_(0.01) for _ in range(2))
    return q, k, v, fq, fk


def _op_kwargs() -> dict:
    return {k: SHAPE[k] for k in ("frame_tokens", "chunk_frames", "overlap_frames")}


def case_phi(frames: int) -> dict:
    import torch

    from rehyat import PolynomialFeatureMap

    torch.manual_seed(0)
    s, n = SHAPE["frame_tokens"], frames * SHAPE["frame_tokens"]
    phi = PolynomialFeatureMap(SHAPE["heads"], SHAPE["head_dim"], degree=2, num_layers=2).to(DEVICE)
    x = torch.randn(1, n, SHAPE["heads"], SHAPE["head_dim"], device=DEVICE, dtype=getattr(torch, DTYPE))
    x.requires_grad_(True)
    y, t_fwd = _timed(lambda: phi(x, backend="triton"))
    grad = torch.randn_like(y)
    _, t_bwd = _timed(lambda: y.backward(grad))
    result = {"numel_phi": y.numel(), "fwd_s": t_fwd, "bwd_s": t_bwd}
    result["finite"] = bool(
        y.isfinite().all()
        and x.grad.isfinite().all()
        and all(p.grad.isfinite().all() for p in phi.parameters())
    )
    # φ and dx are per token: the PyTorch path on a few frames is the reference for those frames.
    boundary = (2**31 // (SHAPE["heads"] * SHAPE["feature_dim"])) // s  # the frame where φ passes 2^31
    starts = {"last": frames - 4, "at 2^31": boundary - 2} if boundary + 2 <= frames else {"last": frames - 4}
    for where, start in starts.items():
        rows = slice(start * s, (start + 4) * s)
        xs = x.detach()[:, rows].clone().requires_grad_(True)
        ys = phi(xs, backend="torch")
        ys.backward(grad[:, rows])
        result[f"phi ({where})"] = _rel(y.detach()[:, rows], ys.detach())
        result[f"dx ({where})"] = _rel(x.grad[:, rows], xs.grad)
    return result


def _last_chunk_reference(q, k, v, fq, fk, grad, frames: int):
    """docs/method.md §3 in float32 for the last chunk: y and its gradients w.r.t. the chunk's q, φq and the
    keys and values of its softmax window; (y, dq, dfq, dk_window, dv_window, first window frame)."""
    import torch

    from rehyat import DENOMINATOR_EPS

    s, tc, to = SHAPE["frame_tokens"], SHAPE["chunk_frames"], SHAPE["overlap_frames"]
    c0 = (frames - 1) // tc * tc
    w0 = max(c0 - to, 0)
    kv = torch.zeros(SHAPE["heads"], SHAPE["feature_dim"], SHAPE["head_dim"], device=DEVICE)
    z = torch.zeros(SHAPE["heads"], SHAPE["feature_dim"], device=DEVICE)
    step = 64 * s
    for lo in range(0, w0 * s, step):  # Σ φk vᵀ over the linear frames [0, w0), in pieces
        hi = min(lo + step, w0 * s)
        f, vv = fk[0, lo:hi].float(), v[0, lo:hi].float()
        kv += torch.einsum("nhe,nhd->hed", f, vv)
        z += f.sum(0)
    rows, window = slice(c0 * s, frames * s), slice(w0 * s, frames * s)
    qs, fqs = (t[0, rows].float().requires_grad_(True) for t in (q, fq))
    ks, vs = (t[0, window].float().requires_grad_(True) for t in (k, v))
    scores = torch.einsum("nhd,mhd->hnm", qs, ks) / SHAPE["head_dim"] ** 0.5
    p = torch.exp(scores - scores.amax(-1, keepdim=True))
    num = torch.einsum("hnm,mhd->nhd", p, vs) + torch.einsum("nhe,hed->nhd", fqs, kv)
    n_soft = p.sum(-1).transpose(0, 1)
    den = torch.maximum(n_soft + torch.einsum("nhe,he->nh", fqs, z), DENOMINATOR_EPS * n_soft)
    y = num / den[..., None]
    y.backward(grad[0, rows].float())
    return y.detach(), qs.grad, fqs.grad, ks.grad, vs.grad, w0


def case_op(frames: int) -> dict:
    import torch

    from rehyat import hybrid_attention

    s = SHAPE["frame_tokens"]
    inputs = [t.requires_grad_(True) for t in _inputs(frames, seed=1)]
    y, t_fwd = _timed(lambda: hybrid_attention(*inputs, **_op_kwargs(), backend="triton"))
    grad = torch.randn_like(y)
    _, t_bwd = _timed(lambda: y.backward(grad))
    q, k, v, fq, fk = inputs
    result = {"numel_fq": fq.numel(), "fwd_s": t_fwd, "bwd_s": t_bwd}
    result["finite"] = bool(y.isfinite().all() and all(t.grad.isfinite().all() for t in inputs))
    ref_y, ref_dq, ref_dfq, ref_dk, ref_dv, w0 = _last_chunk_reference(
        *(t.detach() for t in inputs), grad, frames
    )
    c0 = (frames - 1) // SHAPE["chunk_frames"] * SHAPE["chunk_frames"]
    rows, own = slice(c0 * s, frames * s), slice((c0 - w0) * s, None)  # own: the chunk's frames in its window
    result["y"] = _rel(y.detach()[0, rows], ref_y)
    result["dq"] = _rel(q.grad[0, rows], ref_dq)
    result["dfq"] = _rel(fq.grad[0, rows], ref_dfq)
    result["dk"] = _rel(k.grad[0, rows], ref_dk[own])
    result["dv"] = _rel(v.grad[0, rows], ref_dv[own])
    result["dfk zero past the linear frames"] = bool((fk.grad[0, w0 * s :] == 0).all())
    return result


def case_recurrent(frames: int) -> dict:
    import torch

    from rehyat import hybrid_attention, recurrent_hybrid_attention

    inputs = _inputs(frames, seed=2)
    with torch.no_grad():
        parallel, t_par = _timed(lambda: hybrid_attention(*inputs, **_op_kwargs(), backend="triton"))
        out, t_rec = _timed(lambda: recurrent_hybrid_attention(*inputs, **_op_kwargs(), backend="triton"))
    return {
        "fwd_s": t_rec,
        "parallel_fwd_s": t_par,
        "finite": bool(out.isfinite().all()),
        "recurrent": _rel(out, parallel),
    }


def case_ab(frames: int) -> dict:
    """Median times of the op (forward; forward + backward) and the recurrent form (forward)."""
    import torch

    from rehyat import hybrid_attention, recurrent_hybrid_attention

    inputs = [t.requires_grad_(True) for t in _inputs(frames, seed=3)]
    grad = torch.randn_like(inputs[0])

    def fwd_bwd():
        hybrid_attention(*inputs, **_op_kwargs(), backend="triton").backward(grad)

    def fwd():
        with torch.no_grad():
            hybrid_attention(*inputs, **_op_kwargs(), backend="triton")

    def recurrent():
        with torch.no_grad():
            recurrent_hybrid_attention(*inputs, **_op_kwargs(), backend="triton")

    result = {}
    for name, fn in (("op_fwd_ms", fwd), ("op_fwd_bwd_ms", fwd_bwd), ("recurrent_fwd_ms", recurrent)):
        fn()  # compile, warm up
        times = sorted(1e3 * _timed(fn)[1] for _ in range(7))
        result[name] = times[len(times) // 2]
    return result


CASES = {"phi": case_phi, "op": case_op, "recurrent": case_recurrent, "ab": case_ab}


def _run_case(case: str, frames: int, src: str, timeout: float) -> dict:
    """One case in a fresh process (with ``src`` first on the path); its JSON or why it failed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--case", case, "--frames", str(frames)] + (
        ["--smoke"] if DEVICE == "cpu" else []
    )
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"ok": False, "wall_s": wall, "error": (proc.stderr or proc.stdout)[-1500:]}
    result = json.loads(lines[-1]) | {"wall_s": wall}
    errors = {key: result[key] for key in TOLERANCES if key in result} | {
        key: value for key, value in result.items() if key.startswith(("phi (", "dx ("))
    }
    passed = [value <= TOLERANCES[key.split(" (")[0]] for key, value in errors.items()]
    flags = [value for key, value in result.items() if isinstance(value, bool)]
    result["ok"] = all(passed) and all(flags)
    return result


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _environment() -> dict:
    import torch
    import triton

    return {
        "gpu": torch.cuda.get_device_name()
        if DEVICE == "cuda"
        else f"none (--smoke: {platform.processor()})",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _markdown(report: dict) -> str:
    lines = ["# Long inputs on the kernels: offsets past 2^31 elements", ""]
    for index, run in enumerate(report["runs"], 1):
        env = run["environment"]
        lines += [
            f"Run {index}: `{run['command']}`  ",
            f"GPU: {env['gpu']} · torch {env['torch']} · triton {env['triton']} · python {env['python']} · "
            f"{env['date']}",
            "",
        ]
    lines += [
        "B=1, H={heads}, D={head_dim}, {frame_tokens} tokens/frame, D'={feature_dim}, Tc={chunk_frames}, "
        "To={overlap_frames}, {dtype}. Each case in its own process. Errors are".format(**report["shape"]),
        "relative (‖a − b‖/‖b‖) against float32 references of the same bf16 inputs: φ and dx of 4 frames",
        "against the PyTorch φ; the op's last chunk (y, dq, dφq, and dk, dv of the chunk's own frames)",
        "against docs/method.md §3 on that chunk; the recurrent output against the parallel op's. Times",
        "include the kernels' compilation and φ's autotuning (first calls in each process).",
        "",
        *(f"Note: {note}" for note in report.get("notes", [])),
        *([""] if report.get("notes") else []),
        "| frames | case | run | ok | elements | fwd s | bwd s | errors | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["cases"]:
        r = row["result"]
        numel = r.get("numel_phi") or r.get("numel_fq")
        errors = ", ".join(
            f"{k} {v:.2e}" for k, v in r.items() if k in TOLERANCES or k.startswith(("phi (", "dx ("))
        )
        if not r.get("ok"):
            failure = [line for line in str(r.get("error", "a check failed")).splitlines() if line.strip()]
            errors += " — " + failure[-1].strip().replace("|", "/")[:200]
        cells = [
            row["frames"],
            row["case"],
            row["run"],
            "yes" if r.get("ok") else "NO",
            f"{numel:.3g}" if numel else "—",
            *(f"{r[key]:.3f}" if key in r else "—" for key in ("fwd_s", "bwd_s")),
            errors,
            f"{r.get('wall_s', 0):.0f}",
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    if report.get("ab"):
        ab = report["ab"]
        lines += [
            "",
            f"## Speed against the int32-offset kernels (run {ab['run']}, {ab['frames']} frames, ms)",
            "",
            f"Both trees are `{ab['baseline_src']}` (commit before the int64 offsets) with, for the second,",
            f"the kernel files of this change (`{ab['this_src']}`); separate processes, alternated",
            f"{len(ab['baseline'])} times; each entry the median of 7 timed calls after a warm-up call.",
            "",
            "| quantity | int32 offsets (before) | int64 offsets (this change) | ratio of medians |",
            "|---|---|---|---|",
        ]
        for key in ("op_fwd_ms", "op_fwd_bwd_ms", "recurrent_fwd_ms"):
            before = [r[key] for r in ab["baseline"] if key in r]
            after = [r[key] for r in ab["this"] if key in r]
            if before and after:
                ratio = _median(after) / _median(before)
                lines.append(
                    f"| {key[:-3]} | {', '.join(f'{t:.2f}' for t in before)} | "
                    f"{', '.join(f'{t:.2f}' for t in after)} | {ratio:.3f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[501, 1001])
    parser.add_argument(
        "--cases", nargs="*", default=["phi", "op", "recurrent"], choices=["phi", "op", "recurrent"]
    )
    parser.add_argument("--out", default="bench/results", help="folder for long_inputs.json/.md")
    parser.add_argument(
        "--merge", help="an earlier run's long_inputs.json: keep its rows this run does not redo"
    )
    parser.add_argument("--baseline-src", help="another tree's src: time the op on it and on --this-src")
    parser.add_argument("--this-src", help="the tree timed against --baseline-src (default: this checkout's)")
    parser.add_argument("--ab-frames", type=int, default=81)
    parser.add_argument("--ab-repeats", type=int, default=2, help="alternations of the two trees")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the timing comparison past this")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape on the CPU (Triton's interpreter)")
    parser.add_argument("--render", help="only write OUT/long_inputs.md from this long_inputs.json (no GPU)")
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.smoke:
        global DEVICE, DTYPE
        DEVICE, DTYPE = "cpu", "float32"
        SHAPE.update(SMOKE_SHAPE)
        os.environ["TRITON_INTERPRET"] = "1"
    if args.case:
        print(json.dumps(CASES[args.case](args.frames[0])))
        return 0
    if args.render:
        (Path(args.out) / "long_inputs.md").write_text(_markdown(json.loads(Path(args.render).read_text())))
        return 0
    began = time.perf_counter()
    src = str(Path(__file__).resolve().parents[1] / "src")
    sys.path.insert(0, src)
    report = json.loads(Path(args.merge).read_text()) if args.merge else {"runs": [], "cases": []}
    run = len(report["runs"]) + 1
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    report["runs"].append({"command": command, "environment": _environment()})
    report["shape"] = SHAPE | {"dtype": DTYPE, "batch": 1}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        order = {case: index for index, case in enumerate(("phi", "op", "recurrent"))}
        report["cases"].sort(key=lambda row: (row["frames"], order[row["case"]]))
        (out / "long_inputs.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "long_inputs.md").write_text(_markdown(report))

    for frames in args.frames:
        for case in args.cases:
            result = _run_case(case, frames, src, timeout=300)
            report["cases"] = [r for r in report["cases"] if (r["frames"], r["case"]) != (frames, case)]
            report["cases"].append({"frames": frames, "case": case, "run": run, "result": result})
            print(frames, case, json.dumps(result)[:400], flush=True)
            save()
    if args.baseline_src and time.perf_counter() - began < args.budget_s:
        this = args.this_src or src
        report["ab"] = {
            "run": run,
            "frames": args.ab_frames,
            "baseline_src": args.baseline_src,
            "this_src": this,
        }
        report["ab"] |= {"baseline": [], "this": []}
        for _ in range(args.ab_repeats):
            for name, tree in (("baseline", args.baseline_src), ("this", this)):
                result = _run_case("ab", args.ab_frames, str(Path(tree).resolve()), timeout=240)
                report["ab"][name].append(result)
                print("ab", name, json.dumps(result)[:400], flush=True)
                save()
    return 0 if all(row["result"].get("ok") for row in report["cases"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
