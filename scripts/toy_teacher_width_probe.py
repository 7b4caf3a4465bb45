"""Does the packed world's teacher learn faster per step when wider? A CPU probe on short clips.

Renders 2,048 packed clips of 3 latent frames (9 video frames; the same packing as the 21-frame
training clips), then trains one model per ``--model NAME:HEADS:FFN`` (heads of 48 channels; the
shipped packed teacher is 4:768) from the same seed on the same data for ``--steps`` steps of
``--batch`` clips, fp32, one CPU thread each, and writes each run's ``metrics.jsonl`` under ``--root``
and a table of the loss averaged over windows of 50 steps to stdout:

    python scripts/toy_teacher_width_probe.py --root /tmp/width --model narrow:4:768 --model wide:8:1536
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME:HEADS:FFN")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from diffusers import WanTransformer3DModel

    from rehyat.toy.model import PACKED, PACKED_TEACHER_CONFIG, init_teacher_folder, prompt_embeddings
    from rehyat.toy.teacher import load_text_encoder
    from rehyat.toy.world import sample_prompt
    from rehyat.training.data import write_latent_dataset
    from rehyat.training.finetune import DataSection, FinetuneConfig, ModelSection, OptimSection, finetune

    torch.set_num_threads(1)
    data = args.root / "data"
    if not (data / "index.json").exists():
        init_teacher_folder(args.root / "base", 0, PACKED)
        encoder, rng = load_text_encoder(args.root / "base"), random.Random(0)

        def pairs():
            for index in range(2048):
                prompt = sample_prompt(rng)
                yield PACKED.clip(prompt, 3, 1000 + index), prompt_embeddings(encoder, [prompt])[0]

        write_latent_dataset(data, pairs(), shard_size=512)
    for spec in args.model:
        name, heads, ffn = spec.split(":")
        init, out = args.root / f"init_{name}", args.root / f"run_{name}"
        for folder in (init, out):
            if folder.exists():
                shutil.rmtree(folder)
        shutil.copytree(args.root / "base", init, ignore=shutil.ignore_patterns("transformer"))
        torch.manual_seed(0)
        config = {**PACKED_TEACHER_CONFIG, "num_attention_heads": int(heads), "ffn_dim": int(ffn)}
        WanTransformer3DModel(**config).save_pretrained(init / "transformer")
        cfg = FinetuneConfig(
            output_dir=str(out),
            model=ModelSection(path=str(init), convert=False, gradient_checkpointing=False),
            data=DataSection(path=str(data), micro_batch_size=args.batch, preload=True),
            optim=OptimSection(lr=3e-4, warmup_steps=50, weight_decay=0.0),
            steps=args.steps,
            flow_shift=3.0,
            prompt_dropout=0.1,
            ema_decay=0.999,
            seed=0,
            checkpoint_every=10**6,
            log_every=10,
            save=False,
            progress=False,
            mixed_precision="no",
        )
        finetune(cfg)
    print("| model | " + " | ".join(f"steps {s - 49}–{s}" for s in range(50, args.steps + 1, 50)) + " |")
    for spec in args.model:
        name = spec.split(":")[0]
        records = [json.loads(line) for line in (args.root / f"run_{name}" / "metrics.jsonl").open()]
        means = [
            statistics.mean(r["loss"] for r in records if s - 50 < r["step"] <= s)
            for s in range(50, args.steps + 1, 50)
        ]
        print(f"| {spec} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
