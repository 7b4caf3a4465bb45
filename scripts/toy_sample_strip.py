"""A PNG strip of a toy teacher's samples beside the world's own clips, for looking at a teacher.

For each prompt two rows: the world's clip (``render``, seed 0) and the teacher's sample (full attention,
guidance ``--guidance``, ``--steps`` sampler steps, noise seed 0), every ``--every``-th video frame.

    PYTHONPATH=src python scripts/toy_sample_strip.py --model runs/teacher_packed/teacher \\
        --out bench/results/toy_teacher_packed/piece5_samples.png

About a minute per prompt on two CPU cores for the packed world (81 video frames).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rehyat.toy.generate import generate_toy_video, video_uint8
from rehyat.toy.model import toy_space
from rehyat.toy.world import render

PROMPTS = (
    "a red square moving right quickly on a plain background",
    "a blue triangle moving up slowly on a striped background",
)


def main(args: argparse.Namespace) -> None:
    space = toy_space(args.model)
    world, frames = space.world, space.video_frames(space.clip_frames)
    rows = []
    for prompt in args.prompts:
        truth = render(prompt, frames, space.height, space.width, seed=0, world=world)
        sample = generate_toy_video(
            prompt,
            frames,
            teacher=args.model,
            recurrent=False,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=0,
        )
        rows += [
            (f"world: {prompt}", video_uint8(truth, 1)),
            (f"teacher, guidance {args.guidance:g}", video_uint8(sample, 1)),
        ]
    picks = list(range(0, frames, args.every))
    figure, axes = plt.subplots(
        len(rows), len(picks), figsize=(len(picks) * 0.9, len(rows) * 1.05), squeeze=False
    )
    for r, (title, frames) in enumerate(rows):
        for c, f in enumerate(picks):
            axis = axes[r][c]
            axis.imshow(frames[f], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == len(rows) - 1:
                axis.set_xlabel(f"frame {f}", fontsize=6)
        axes[r][0].set_title(title, fontsize=7, loc="left")
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a toy teacher folder")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--every", type=int, default=8, help="every N-th video frame")
    main(parser.parse_args())
