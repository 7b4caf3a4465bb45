"""The toy teacher: a small pixel-space ``WanTransformer3DModel`` trained on the toy world.

:func:`train_teacher` (``rehyat toy teacher --out DIR``) makes a complete local Wan folder the rest of the library treats like
a user's Wan2.1 checkpoint — ``transformer/`` (diffusers layout, full bidirectional softmax attention),
``scheduler/`` (UniPC with flow sigmas, as Wan uses) and ``text_encoder/`` (the toy text encoder,
safetensors + config) — by: writing the random initial weights, rendering a dataset of toy clips with
their prompt embeddings, and training it with the project's stage-2 trainer (``finetune`` with
``model.convert=false``: the same flow-matching loss, optimiser and checkpointing). The bundled teacher
under ``rehyat/toy/assets/teacher`` was made by that command; its ``TRAINING.md`` gives the exact call.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rehyat.settings import load_config
from rehyat.toy.model import (
    FLOW_SHIFT,
    PIXEL,
    SPACE_FILE,
    ToySpace,
    init_teacher_folder,
    load_text_encoder,
    prompt_embeddings,
    toy_space,
)
from rehyat.toy.text import ToyTextEncoder
from rehyat.toy.world import ToyPrompt, sample_prompt
from rehyat.training import distributed
from rehyat.training.checkpoint import latest_checkpoint, load_checkpoint
from rehyat.training.finetune import (
    DataSection,
    FinetuneConfig,
    ModelSection,
    OptimSection,
    finetune,
    save_final_weights,
)

#: Clips rendered in worker processes from this many on (a packed clip takes about 10 ms to render).
_PARALLEL_FROM = 256


def _single_thread() -> None:
    """Worker initialiser: one torch thread per worker process (the pool already uses every core)."""
    torch.set_num_threads(1)


def _render_clip(job: tuple[ToySpace, ToyPrompt, int]) -> np.ndarray:
    """One clip's latent as a numpy array: it crosses the process boundary by value through the pool's
    pipe, where a tensor would go through shared-memory file descriptors that a container's small
    ``/dev/shm`` cannot hold for thousands of clips."""
    space, prompt, seed = job
    return space.clip(prompt, space.clip_frames, seed).numpy()


def toy_clips(
    encoder: ToyTextEncoder, count: int, seed: int, space: ToySpace = PIXEL
) -> Iterator[tuple[Tensor, Tensor]]:
    """``count`` (latent [C, T, h, w] of ``space``, prompt embedding [L, D]) training pairs: random
    prompts (``random.Random(seed)``) and clip ``i`` rendered from seed ``seed · 1_000_003 + i``.

    Each distinct prompt is encoded once (the world has 576): encoding costs ~100× rendering a clip.
    Many clips render in one worker process per CPU core, in order."""
    rng = random.Random(seed)
    jobs = [(space, sample_prompt(rng), seed * 1_000_003 + index) for index in range(count)]
    embeddings: dict[str, Tensor] = {}
    workers = min(os.cpu_count() or 1, 32)
    if count < _PARALLEL_FROM or workers == 1:
        latents = map(_render_clip, jobs)
        pool = None
    else:  # spawn: the caller may hold CUDA or a process group, which a fork must not copy
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_single_thread)
        latents = pool.map(_render_clip, jobs, chunksize=16)
    try:
        for (_, prompt, _), latent in zip(jobs, latents, strict=True):
            if prompt.text not in embeddings:
                embeddings[prompt.text] = prompt_embeddings(encoder, [prompt])[0]
            yield torch.from_numpy(latent), embeddings[prompt.text]
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def teacher_finetune_config(out: Path, *, steps: int, batch: int, lr: float, seed: int) -> FinetuneConfig:
    """The stage-2 trainer's settings for training the toy teacher in ``out`` (plain softmax model:
    ``model.convert=False``), as the bundled teacher was trained."""
    return FinetuneConfig(
        output_dir=str(out / "train"),
        model=ModelSection(path=str(out / "init"), convert=False, gradient_checkpointing=False),
        data=DataSection(path=str(out / "dataset"), micro_batch_size=batch, preload=True),
        optim=OptimSection(lr=lr, warmup_steps=200, weight_decay=0.0),
        steps=steps,
        flow_shift=FLOW_SHIFT,
        prompt_dropout=0.1,
        ema_decay=0.999,
        seed=seed,
        checkpoint_every=max(steps // 4, 1),
        log_every=10,
    )


def train_teacher(
    out: Path,
    config: FinetuneConfig,
    *,
    clips: int,
    seed: int,
    init_from: Path | None = None,
    space: ToySpace = PIXEL,
) -> Path:
    """Init (random weights for ``space``, or a copy of the teacher folder ``init_from`` to train
    further, whose space it keeps), render ``clips`` clips, train with the stage-2 loop and ``config`` (see :func:`teacher_finetune_config`), and
    assemble ``out/teacher`` (EMA weights).

    Under ``torchrun`` every process trains (DDP, ``data.micro_batch_size`` clips per process and step);
    the first alone writes the init folder, the dataset and the teacher, and the others wait for it."""
    init = out / "init"
    if init_from is not None:  # checked by every rank, so none waits at the barrier for a failed one
        if Path(init_from).resolve() == init.resolve():
            raise ValueError(f"--init {init_from} is this run's own init folder; copy it elsewhere first")
        if not (Path(init_from) / "transformer" / "config.json").is_file():
            raise ValueError(f"--init {init_from} is not a teacher folder (no transformer/config.json)")
    env = distributed.init_distributed()
    if env.is_main:
        _prepare_run(out, init_from, clips, seed, space)
    distributed.barrier()
    finetune(config)
    teacher = assemble_teacher(out) if env.is_main else out / "teacher"
    distributed.barrier()
    return teacher


def _prepare_run(out: Path, init_from: Path | None, clips: int, seed: int, space: ToySpace) -> None:
    """``out/init`` (random weights or a copy of ``init_from``) and ``out/dataset`` (rendered once)."""
    from rehyat.training.data import write_latent_dataset

    init = out / "init"
    if init.exists():
        shutil.rmtree(init)
    if init_from is None:
        init_teacher_folder(init, seed, space)
    else:
        space = toy_space(init_from)
        for part in ("transformer", "scheduler", "text_encoder"):
            shutil.copytree(Path(init_from) / part, init / part)
        if (Path(init_from) / SPACE_FILE).exists():
            shutil.copy2(Path(init_from) / SPACE_FILE, init / SPACE_FILE)
    dataset = out / "dataset"
    if not (dataset / "index.json").exists():
        tic = time.perf_counter()
        pairs = toy_clips(load_text_encoder(init), clips, seed, space)
        write_latent_dataset(dataset, _progress(pairs, clips, tic), shard_size=512)
        print(f"dataset: {clips} {space.name} clips in {time.perf_counter() - tic:.0f} s", flush=True)


def _progress(pairs: Iterator, total: int, tic: float, every: int = 4096) -> Iterator:
    """``pairs`` unchanged, printing when the first arrives (the worker processes' start-up) and how many
    are done every ``every`` (a long render shows its pace)."""
    for index, pair in enumerate(pairs, 1):
        yield pair
        if index == 1 and total >= every:
            print(f"dataset: first clip after {time.perf_counter() - tic:.0f} s", flush=True)
        if index % every == 0 and index < total:
            print(f"dataset: {index}/{total} clips after {time.perf_counter() - tic:.0f} s", flush=True)


def assemble_teacher(out: Path) -> Path:
    """``out/teacher``: the run's init folder with the EMA transformer of its newest checkpoint.

    Training writes a checkpoint at its last step too, so this is the end of a finished run and the
    newest state of one cut off by a time limit (never a ``final-ema`` left by an earlier, shorter run)."""
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
