"""The toy teacher: a small pixel-space ``WanTransformer3DModel`` trained on the toy world.

``rehyat toy teacher --out DIR`` makes a complete local Wan folder the rest of the library treats like
a user's Wan2.1 checkpoint — ``transformer/`` (diffusers layout, full bidirectional softmax attention),
``scheduler/`` (UniPC with flow sigmas, as Wan uses) and ``text_encoder/`` (the toy text encoder,
safetensors + config) — by: writing the random initial weights, rendering a dataset of toy clips with
their prompt embeddings, and training it with the project's stage-2 trainer (``finetune`` with
``model.convert=false``: the same flow-matching loss, optimiser and checkpointing). The bundled teacher
under ``rehyat/toy/assets/teacher`` was made by that command; its ``TRAINING.md`` gives the exact call.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from rehyat.toy.text import ToyTextEncoder
from rehyat.toy.world import ToyPrompt, render, sample_prompt

#: Pixel-space Wan: 3 channels in and out, 2×2 patches, 4 blocks of 4 heads × 32 (RoPE splits 32 into
#: 12 + 10 + 10), text width = the toy text encoder's.
TOY_TEACHER_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": 64,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
#: Training clips: 16 frames of 24×24 px -> 16 latent frames of 12×12 = 144 tokens (patch 2×2). Smaller
#: frames make ToyBench's shape read-back fragile to soft samples; larger ones slow the CPU demo.
CLIP = {"num_frames": 16, "height": 24, "width": 24}
FLOW_SHIFT = 3.0
BUNDLED = Path(__file__).parent / "assets" / "teacher"


def bundled_teacher() -> Path:
    """The folder of the teacher shipped with the package."""
    if not (BUNDLED / "transformer" / "config.json").is_file():
        raise ValueError(f"the bundled toy teacher is missing from {BUNDLED}")
    return BUNDLED


def save_text_encoder(encoder: ToyTextEncoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(encoder.config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, folder / "model.safetensors")


def load_text_encoder(teacher: str | Path) -> ToyTextEncoder:
    """The toy text encoder of a teacher folder (``text_encoder/config.json`` + ``model.safetensors``)."""
    folder = Path(teacher) / "text_encoder"
    if not (folder / "config.json").is_file():
        raise ValueError(f"{teacher} has no toy text encoder (text_encoder/config.json)")
    encoder = ToyTextEncoder(**json.loads((folder / "config.json").read_text()))
    encoder.load_state_dict(load_file(folder / "model.safetensors"))
    return encoder.eval()


@torch.no_grad()
def prompt_embeddings(encoder: ToyTextEncoder, prompts: list[ToyPrompt] | list[str]) -> Tensor:
    """[P, L, text_dim] embeddings of toy prompts (objects or their text)."""
    texts = [p.text if isinstance(p, ToyPrompt) else p for p in prompts]
    return encoder(texts)


def write_prompt_file(encoder: ToyTextEncoder, prompts: list[ToyPrompt], path: Path) -> Path:
    """Prompt embeddings as the ``.safetensors`` prompt file ``rehyat distill`` reads (zero negative)."""
    positive = prompt_embeddings(encoder, prompts)
    save_file({"prompt_embeds": positive, "negative_prompt_embeds": torch.zeros_like(positive[:1])}, path)
    (path.with_suffix(".txt")).write_text("".join(p.text + "\n" for p in prompts))
    return path


def init_teacher_folder(folder: Path, seed: int = 0) -> Path:
    """A Wan folder with the toy teacher's random initial weights, its scheduler and text encoder."""
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(seed)
    WanTransformer3DModel(**TOY_TEACHER_CONFIG).save_pretrained(folder / "transformer")
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT
    ).save_pretrained(folder / "scheduler")
    save_text_encoder(
        ToyTextEncoder(text_dim=TOY_TEACHER_CONFIG["text_dim"], seed=seed), folder / "text_encoder"
    )
    return folder


def toy_clips(
    encoder: ToyTextEncoder, count: int, seed: int, clip: dict[str, int]
) -> Iterator[tuple[Tensor, Tensor]]:
    """``count`` (video [3, F, H, W], prompt embedding [L, D]) pairs with random prompts and start points.

    Each distinct prompt is encoded once (the world has 576): encoding costs ~100× rendering a clip."""
    rng = random.Random(seed)
    embeddings: dict[str, Tensor] = {}
    for index in range(count):
        prompt = sample_prompt(rng)
        video = render(
            prompt, clip["num_frames"], clip["height"], clip["width"], seed=seed * 1_000_003 + index
        )
        if prompt.text not in embeddings:
            embeddings[prompt.text] = prompt_embeddings(encoder, [prompt])[0]
        yield video, embeddings[prompt.text]


def train_teacher(
    out: Path,
    *,
    clips: int,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    extra: list[str] | tuple[str, ...] = (),
    init_from: Path | None = None,
) -> Path:
    """Init (random, or a copy of the teacher folder ``init_from`` to train further), render the
    dataset, train with the stage-2 loop, and assemble ``out/teacher`` (EMA weights).

    Under ``torchrun`` every process trains (DDP, ``batch`` clips per process and step); the first
    alone writes the init folder, the dataset and the teacher, and the others wait for it."""
    from rehyat.training import distributed
    from rehyat.training.config import load_config
    from rehyat.training.finetune import FinetuneConfig, finetune

    init = out / "init"
    if init_from is not None:  # checked by every rank, so none waits at the barrier for a failed one
        if Path(init_from).resolve() == init.resolve():
            raise ValueError(f"--init {init_from} is this run's own init folder; copy it elsewhere first")
        if not (Path(init_from) / "transformer" / "config.json").is_file():
            raise ValueError(f"--init {init_from} is not a teacher folder (no transformer/config.json)")
    env = distributed.init_distributed()
    if env.is_main:
        _prepare_run(out, init_from, clips, seed)
    distributed.barrier()
    overrides = [
        f"output_dir={out / 'train'}",
        f"model.path={init}",
        "model.convert=false",
        "model.gradient_checkpointing=false",
        f"data.path={out / 'dataset'}",
        f"data.micro_batch_size={batch}",
        f"steps={steps}",
        f"optim.lr={lr}",
        "optim.warmup_steps=200",
        "optim.weight_decay=0.0",
        f"flow_shift={FLOW_SHIFT}",
        "prompt_dropout=0.1",
        "ema_decay=0.999",
        f"seed={seed}",
        f"checkpoint_every={max(steps // 4, 1)}",
        "log_every=10",
        *extra,
    ]
    finetune(load_config(FinetuneConfig, None, overrides))
    teacher = assemble_teacher(out) if env.is_main else out / "teacher"
    distributed.barrier()
    return teacher


def _prepare_run(out: Path, init_from: Path | None, clips: int, seed: int) -> None:
    """``out/init`` (random weights or a copy of ``init_from``) and ``out/dataset`` (rendered once)."""
    from rehyat.training.data import write_latent_dataset

    init = out / "init"
    if init_from is None:
        init_teacher_folder(init, seed)
    else:
        if init.exists():
            shutil.rmtree(init)
        for part in ("transformer", "scheduler", "text_encoder"):
            shutil.copytree(Path(init_from) / part, init / part)
    dataset = out / "dataset"
    if not (dataset / "index.json").exists():
        write_latent_dataset(dataset, toy_clips(load_text_encoder(init), clips, seed, CLIP), shard_size=512)


def assemble_teacher(out: Path) -> Path:
    """``out/teacher``: the run's init folder with the EMA transformer of its newest checkpoint.

    Training writes a checkpoint at its last step too, so this is the end of a finished run and the
    newest state of one cut off by a time limit (never a ``final-ema`` left by an earlier, shorter run)."""
    from rehyat.training.checkpoint import latest_checkpoint, load_checkpoint
    from rehyat.training.config import load_config
    from rehyat.training.finetune import FinetuneConfig, save_final_weights

    latest = latest_checkpoint(out / "train" / "checkpoints")
    if latest is None:
        raise ValueError(f"{out / 'train'} holds no checkpoint to make a teacher of")
    cfg = load_config(FinetuneConfig, out / "train" / "config.json")
    checkpoint = load_checkpoint(latest)
    if "ema" not in checkpoint.extra:
        raise ValueError(f"checkpoint {latest} has no EMA weights (trained with ema_decay=None)")
    teacher = out / "teacher"
    if teacher.exists():
        shutil.rmtree(teacher)
    shutil.copytree(out / "init", teacher, ignore=shutil.ignore_patterns("transformer"))
    save_final_weights(
        cfg.model, cfg.seed, checkpoint.model | checkpoint.extra["ema"], teacher / "transformer"
    )
    return teacher


def _main(args: argparse.Namespace) -> int:
    if args.assemble_only:
        print(f"toy teacher written to {assemble_teacher(Path(args.out))}")
        return 0
    from rehyat.training import distributed

    try:
        teacher = train_teacher(
            Path(args.out),
            clips=args.clips,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            seed=args.seed,
            extra=args.overrides,
            init_from=None if args.init is None else Path(args.init),
        )
    finally:
        distributed.shutdown()
    print(f"toy teacher written to {teacher}")
    return 0


def register(commands) -> None:
    toy = commands.add_parser("toy", help="the embedded toy world")
    targets = toy.add_subparsers(dest="toy_command", required=True)
    from rehyat.toy import evaluate

    evaluate.register(targets)
    parser = targets.add_parser(
        "teacher", help="train the toy teacher (a pixel-space Wan) with the stage-2 loop"
    )
    parser.add_argument("--out", required=True, help="output folder (the teacher lands in OUT/teacher)")
    parser.add_argument("--clips", type=int, default=8192, help="training clips to render")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32, help="clips per step")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", help="a teacher folder to train further (default: random weights)")
    parser.add_argument(
        "--assemble-only",
        action="store_true",
        help="only make OUT/teacher from OUT's training run (its newest checkpoint if it was cut off)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more finetune config overrides")
    parser.set_defaults(handler=_main)
