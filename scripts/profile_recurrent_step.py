"""Where the streaming step's time goes, against the parallel op (GPU; Wan2.1-1.3B layer shape, bf16).

Usage: ``PYTHONPATH=src python3 scripts/profile_recurrent_step.py [FRAMES]`` (default 81 latent frames).
Prints the mean ms of 10 calls of each form and a torch.profiler table of 5 more.
"""

from __future__ import annotations

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from rehyat import hybrid_attention
from rehyat.experiments.bench_attention import SHAPE, layer_inputs, stream_steps


def main(frames: int) -> None:
    q, k, v, (phi_q, phi_k) = layer_inputs(frames, torch.bfloat16, "cuda")
    with torch.no_grad():
        fq, fk = phi_q(q), phi_k(k)
    tokens = SHAPE["frame_tokens"]
    out = torch.empty_like(q)

    @torch.no_grad()
    def recurrent() -> None:
        stream_steps(q, k, v, fq, fk, out)

    @torch.no_grad()
    def parallel() -> None:
        hybrid_attention(
            q, k, v, fq, fk, frame_tokens=tokens, chunk_frames=SHAPE["chunk_frames"],
            overlap_frames=SHAPE["overlap_frames"], backend="triton",
        )  # fmt: skip

    for name, run in (("parallel", parallel), ("recurrent", recurrent)):
        for _ in range(3):
            run()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(10):
            run()
        end.record()
        torch.cuda.synchronize()
        print(f"{name}: {begin.elapsed_time(end) / 10:.2f} ms per call ({frames} frames)")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                run()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 81)
