"""ToyBench read-back of toy teachers (full attention, parallel): one JSON line per model and guidance.

The prompts are ``toy_prompts(N, 3)`` and prompt i gets the noise of seed 1000 + i, 20 sampler steps, so
a run on a CPU reads the same videos (to float rounding) as ``scripts/toy_teacher_gpu.sh``'s evaluation on
a GPU. Each line adds direction and speed per prompted speed and shape per shape to ToyBench's numbers.

    PYTHONPATH=src python scripts/toy_teacher_eval.py runs/teacher_packed/teacher --prompts 512 \\
        --guidance 4 --device cpu > eval.jsonl

About 4.7 s per packed-world clip on two CPU cores at guidance 4 (40 min for 512 prompts).
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from rehyat.toy.evaluate import load_toy_model, sample_videos, toy_prompts
from rehyat.toy.model import load_text_encoder, prompt_embeddings, toy_space
from rehyat.toy.toybench import evaluate_videos


def evaluate(model_dir: str, prompts, guidance: float, device: str, batch: int) -> dict:
    space = toy_space(model_dir)
    model = load_toy_model(model_dir, None, torch.device(device))
    embeds = prompt_embeddings(load_text_encoder(model_dir), prompts)
    videos = sample_videos(
        model,
        embeds,
        frames=space.clip_frames,
        steps=20,
        guidance_scale=guidance,
        first_seed=1000,
        recurrent=False,
        batch_size=batch,
        space=space,
    )
    result = evaluate_videos(videos, prompts, world=space.world)
    hits = collections.defaultdict(list)
    for prompt, clip in zip(prompts, result.pop("per_clip"), strict=True):
        for name in ("direction", "speed"):
            hits[f"{name}_{prompt.speed}"].append(clip["hits"][name])
        hits[f"shape_{prompt.shape}"].append(clip["hits"]["shape"])
    result.update({k: 100 * sum(v) / len(v) for k, v in hits.items()})
    return {"model": model_dir, "guidance": guidance, **result}


def main(args: argparse.Namespace) -> None:
    prompts = toy_prompts(args.prompts, 3)
    for model_dir in args.models:
        for guidance in args.guidance:
            print(json.dumps(evaluate(model_dir, prompts, guidance, args.device, args.batch)), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="toy teacher folders")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128, help="clips sampled at once")
    main(parser.parse_args())
