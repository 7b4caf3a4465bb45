"""How much attention mass the linear part carries along a long video, against what softmax would give.

For every chunk of a recurrent forward of a converted toy model (CPU, PyTorch path) and every block, it
prints the median over query rows and heads of
- the student's nL / nS (φq·Σφk over the past frames, relative to the softmax window's normaliser), and
- the "true" ratio: Σ exp(s − c) over the same past keys with the same q, k, i.e. what the teacher's
  full softmax would put outside the window.
Usage: ``PYTHONPATH=src python3 scripts/diagnose_linear_mass.py REHYAT_CKPT [FRAMES] [SIGMA]``, e.g. a
stage-1 checkpoint of ``rehyat distill`` or ``rehyat bench toy`` (``WORK/rehyat/stage1``); 64 frames, σ 0.3.
It wraps the step's private PyTorch attention function, so it follows that function's signature.
"""

from __future__ import annotations

import random
import sys

import torch

import rehyat.attention.hybrid.custom_ops as custom_ops
from rehyat.models import recurrent_forward
from rehyat.toy.model import CLIP, bundled_teacher, load_text_encoder, load_toy_model, prompt_embeddings
from rehyat.toy.world import render, sample_prompt


def main(checkpoint: str, frames: int, sigma: float) -> None:
    teacher = bundled_teacher()
    model = load_toy_model(teacher, checkpoint, torch.device("cpu"))
    blocks = len(model.blocks)
    step_attention = custom_ops.torch_step_attention
    past_keys: dict[int, list[torch.Tensor]] = {}
    rows: list[tuple[int, float, float]] = []  # (block, student, true) per call, chunk-major

    def spy(q, keys, values, fq, kv, z, scale, stats):
        block, n = len(rows) % blocks, q.shape[1]
        scores = torch.einsum("bihd,bjhd->bhij", q.float(), keys.float()) * scale
        row_max = scores.amax(-1, keepdim=True)
        n_softmax = torch.exp(scores - row_max).sum(-1)
        n_linear = torch.einsum("bihe,bhe->bhi", fq.float(), z)
        seen = torch.cat([*past_keys.get(block, []), keys[:, -n:].float()], dim=1)
        outside = seen[:, : seen.shape[1] - keys.shape[1]]  # every key before the softmax window
        logits = torch.einsum("bihd,bjhd->bhij", q.float(), outside) * scale
        true_linear = torch.exp(logits - row_max).sum(-1)
        past_keys.setdefault(block, []).append(keys[:, -n:].float())
        rows.append(
            (block, float((n_linear / n_softmax).median()), float((true_linear / n_softmax).median()))
        )
        return step_attention(q, keys, values, fq, kv, z, scale, stats)

    prompt = sample_prompt(random.Random(5))
    clip = render(prompt, frames, CLIP["height"], CLIP["width"], seed=3)[None]
    noise = torch.randn(clip.shape, generator=torch.Generator().manual_seed(0))
    custom_ops.torch_step_attention = spy
    try:
        with torch.no_grad():
            recurrent_forward(
                model,
                (1 - sigma) * clip + sigma * noise,
                torch.tensor([sigma * 1000]),
                prompt_embeddings(load_text_encoder(teacher), [prompt]),
            )
    finally:
        custom_ops.torch_step_attention = step_attention
    print(f"{checkpoint}: {frames} frames, σ={sigma}, '{prompt.text}'; per chunk, median nL/nS")
    for block in range(blocks):
        mine = [r for r in rows if r[0] == block]
        print(f"block {block} student: " + " ".join(f"{r[1]:.2f}" for r in mine))
        print(f"block {block} true:    " + " ".join(f"{r[2]:.2f}" for r in mine))


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else 64,
        float(sys.argv[3]) if len(sys.argv) > 3 else 0.3,
    )
