"""How far the fused φ kernel is from cuBLAS on the same matmuls (GPU; Wan2.1-1.3B layer shape, bf16).

Usage: ``PYTHONPATH=src python3 scripts/phi_headroom.py [FRAMES ...]`` (default 21). Per frame count,
do_bench medians of one map's forward on the fused kernel (autotuned; TRITON_PRINT_AUTOTUNING=1 shows
the pick) and on the PyTorch path, and of the map's two matmuls alone as cuBLAS batched GEMMs over
heads (x W1, then act(h) W2, head-major, no bias, activation or powers): a floor for any φ that runs
the same matmuls. One JSON line per frame count, with the achieved TFLOP/s of each.
"""

from __future__ import annotations

import json
import sys

import torch
import triton

from rehyat.experiments.bench_attention import SHAPE, layer_inputs


def _bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=50, rep=400, return_mode="median")


def measure(frames: int) -> dict:
    q, _, _, (phi_q, _) = layer_inputs(frames, torch.bfloat16, "cuda")
    tokens, heads, dim = q.shape[1], q.shape[2], q.shape[3]
    w1, w2 = (w.to(torch.bfloat16).contiguous() for w in phi_q.weights)
    flops = 2 * tokens * heads * (w1.shape[1] * w1.shape[2] + w2.shape[1] * w2.shape[2])
    x_heads = q[0].transpose(0, 1).contiguous()  # [H, N, D], copied outside the timing
    hidden = torch.empty(heads, tokens, w1.shape[2], device="cuda", dtype=torch.bfloat16)
    psi = torch.empty(heads, tokens, w2.shape[2], device="cuda", dtype=torch.bfloat16)

    def gemms() -> None:
        torch.bmm(x_heads, w1, out=hidden)
        torch.bmm(hidden, w2, out=psi)

    row: dict = {"frames": frames, "tokens": tokens, "heads": heads, "head_dim": dim, "gflop": flops / 1e9}

    with torch.no_grad():
        for name, fn in (
            ("phi_kernel_ms", lambda: phi_q(q, backend="triton")),
            ("phi_torch_ms", lambda: phi_q(q, backend="torch")),
            ("two_gemms_ms", gemms),
        ):
            row[name] = _bench(fn)
            row[name.replace("_ms", "_tflops")] = flops / row[name] / 1e9
    row["gpu"] = torch.cuda.get_device_name()
    return row


def main(frame_counts: list[int]) -> None:
    assert SHAPE["head_dim"] == 128
    for frames in frame_counts:
        print(json.dumps(measure(frames)), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [21])
