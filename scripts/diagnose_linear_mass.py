"""How much attention mass the linear part carries along a video, against what softmax would give.

One parallel forward of a converted toy model (CPU) on a rendered clip at noise level σ, recorded with
``AttentionRecorder`` (q and k as each block's attention sees them); for every block and query frame that
has linear keys it prints the median over the frame's rows and heads of
- the student's nL / nS (φq·Σφk over the linear keys, relative to the softmax window's normaliser), and
- the teacher's: Σ exp(s − c) over the same keys with the same q, k (``rehyat.training.mass``), i.e. what
  full softmax would put outside the window.
Usage: ``PYTHONPATH=src python3 scripts/diagnose_linear_mass.py REHYAT_CKPT [FRAMES] [SIGMA]``, e.g. the
shipped student (``src/rehyat/toy/assets/student``) or a stage-1 checkpoint of ``rehyat distill`` or
``rehyat bench toy`` (``WORK/NAME/stage1``); 64 frames, σ 0.3.
"""

from __future__ import annotations

import random
import sys

import torch

from rehyat.models import feature_maps, rehyat_runtime
from rehyat.toy.model import CLIP, bundled_teacher, load_text_encoder, load_toy_model, prompt_embeddings
from rehyat.toy.world import render, sample_prompt
from rehyat.training.capture import AttentionRecorder
from rehyat.training.mass import linear_mass, rows_with_linear_keys


def main(checkpoint: str, frames: int, sigma: float) -> None:
    teacher = bundled_teacher()
    model = load_toy_model(teacher, checkpoint, torch.device("cpu"))
    config = rehyat_runtime(model).config
    maps = feature_maps(model)
    prompt = sample_prompt(random.Random(5))
    clip = render(prompt, frames, CLIP["height"], CLIP["width"], seed=3)[None]
    noise = torch.randn(clip.shape, generator=torch.Generator().manual_seed(0))
    recorder = AttentionRecorder(model, sorted(maps))
    with recorder.installed(), torch.no_grad():
        recorder.active = True
        model(
            (1 - sigma) * clip + sigma * noise,
            torch.tensor([sigma * 1000]),
            prompt_embeddings(load_text_encoder(teacher), [prompt]),
            return_dict=False,
        )
    print(f"{checkpoint}: {frames} frames, σ={sigma}, '{prompt.text}'; per query frame, median nL/nS")
    for block, (capture,) in recorder.take().items():
        geometry = config.geometry(capture.frame_tokens)
        phi_q, phi_k = maps[block]
        with torch.no_grad():
            fq = phi_q(recorder.feature_input(config, capture.q, capture.rotary))
            fk = phi_k(recorder.feature_input(config, capture.k, capture.rotary))
            rows = rows_with_linear_keys(geometry, capture.frames, "cpu")
            student, true = linear_mass(capture.q, capture.k, fq, fk, geometry, rows)
        first = int(rows[0]) // capture.frame_tokens if rows.numel() else capture.frames
        for name, ratio in (("student", student), ("true", true)):
            frame_rows = ratio.transpose(0, 2).reshape(
                -1, capture.frame_tokens * ratio.shape[1] * ratio.shape[0]
            )
            medians = " ".join(f"{m:.2f}" for m in frame_rows.median(dim=1).values)
            print(f"block {block} (from frame {first}) {name}: {medians}")


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else 64,
        float(sys.argv[3]) if len(sys.argv) > 3 else 0.3,
    )
