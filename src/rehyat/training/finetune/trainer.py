"""The stage-2 trainer, read top to bottom: build the data, the model (its blocks compiled if asked,
wrapped for DDP or FSDP2), the optimizer, EMA and teacher; resume or start; then each step (its batches
read while the step before trained) runs forward and backward over its micro-batches, makes one
optimizer step (none when the loss or gradient norm is not finite), logs its metrics and saves a
checkpoint when due; at the end the final weights are written."""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rehyat.models import family_of, rehyat_runtime
from rehyat.models.adapter import FamilyAdapter
from rehyat.models.joint import JointAdapter
from rehyat.settings import config_to_dict
from rehyat.training import distributed
from rehyat.training.checkpoint import clean_staging
from rehyat.training.data import LatentDataset, PreloadedDataset, SampleOrder, preload_refusal
from rehyat.training.ema import EMA
from rehyat.training.finetune.checkpointing import (
    record_config,
    resume_run,
    save_final,
    save_training_checkpoint,
)
from rehyat.training.finetune.loss import (
    drop_prompts,
    flow_matching_loss,
    noise_generator,
    v_prediction_loss,
)
from rehyat.training.finetune.model import (
    build_model,
    build_teacher,
    check_data_fits,
    compile_blocks,
    noise_schedule,
    rehyat_config_of,
)
from rehyat.training.finetune.nonfinite import handle_non_finite_step
from rehyat.training.finetune.run_config import FinetuneConfig, OptimSection
from rehyat.training.mass import OwnMassPenalty
from rehyat.training.metrics import MetricsLogger
from rehyat.training.prefetch import MicroBatch, StepBatches
from rehyat.training.profiling import StepProfiler


@dataclass
class FinetuneResult:
    output_dir: Path
    model: nn.Module
    """This rank's trained model (a DDP replica or an FSDP shard owner)."""
    samples_seen: list[int]
    """Dataset indices this rank trained on, in order (from the start step of this process)."""


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """Run stage 2 as ``cfg`` says (in every process of a ``torchrun`` launch)."""
    from tqdm.auto import tqdm

    cfg.validate()
    env = distributed.init_distributed()
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"

    dataset = LatentDataset(cfg.data.path)
    model = build_model(cfg.model, cfg.seed)
    family = family_of(model)
    check_data_fits(dataset, model)
    check_options(cfg, dataset, model)
    schedule = noise_schedule(cfg.model, model)
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.model.compile:
        compile_blocks(model)
    model = distributed.wrap_model(model.to(env.device).train(), cfg.strategy, env)
    optimizer = build_optimizer(model, cfg.optim)
    ema = EMA(distributed.unwrap(model), cfg.ema_decay) if cfg.ema_decay is not None else None
    teacher = build_teacher(cfg, env.device) if cfg.teacher_weight > 0 else None
    rehyat_config = rehyat_config_of(model)
    mass = OwnMassPenalty(cfg.mass_rows) if cfg.mass_weight > 0 else None
    attention_mode = (
        rehyat_runtime(distributed.unwrap(model)).mode(attention=mass) if mass is not None else nullcontext()
    )

    if cfg.data.preload:  # with the model on the device, before anything is written; refused on every rank
        refusal = preload_refusal(dataset, env.device)
        if distributed.any_rank(refusal is not None):
            raise ValueError(refusal or f"data.preload: dataset {dataset.path} does not fit on another rank")
        dataset = PreloadedDataset(dataset, env.device)

    if env.is_main:  # what a killed save or config write left behind
        clean_staging(checkpoints)
        clean_staging(out, (".config.json.*.tmp", ".metrics.jsonl.*.tmp"))
    resumed = resume_run(cfg, env, checkpoints, model, optimizer, ema)
    start, nonfinite = resumed or (0, 0)
    logger = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        record_config(cfg, out / "config.json")
        logger = MetricsLogger(out, resume_step=start if resumed else None)

    order = SampleOrder(len(dataset), cfg.seed, cfg.data.micro_batch_size, cfg.grad_accumulation, env.world)
    autocast = (
        torch.autocast(env.device.type, dtype=torch.bfloat16)
        if cfg.mixed_precision == "bf16"
        else nullcontext()
    )
    samples_per_step = cfg.data.micro_batch_size * cfg.grad_accumulation * env.world
    samples_seen: list[int] = []
    progress = tqdm(
        total=cfg.steps, initial=start, disable=not (env.is_main and cfg.progress), desc="finetune"
    )
    batches = StepBatches(
        dataset,
        order,
        rank=env.rank,
        accumulation=cfg.grad_accumulation,
        device=env.device,
        start=start,
        stop=cfg.steps,
    )
    profiler = StepProfiler(out / "profile", cfg.profile.start, cfg.profile.steps, env.device, env.is_main)
    try:
        with attention_mode:  # stage 2's mass term, if any, records through the processors
            tic = time.perf_counter()  # a step's time includes the wait for its batch
            for step, micro_batches in zip(range(start, cfg.steps), batches, strict=True):
                profiler.step(step)
                lr = learning_rate(cfg, step)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                micro_losses = forward_backward(
                    cfg,
                    env,
                    step,
                    model,
                    micro_batches,
                    autocast,
                    teacher,
                    family,
                    samples_seen,
                    schedule,
                    mass,
                )
                loss_value, grad_norm = clip_and_reduce(cfg, model, micro_losses)
                # Both are the same on every rank (mean loss, norm of the synchronised gradients), so every
                # rank takes the same decision.
                finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
                if finite:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if finite and ema is not None:
                    ema.update(distributed.unwrap(model))
                nonfinite += not finite

                mass_metric = (
                    {} if mass is None else {"mass_error": distributed.mean_over_ranks(mass.step_mean())}
                )
                throughput = samples_per_step / (time.perf_counter() - tic)
                done = step + 1
                progress.update()
                progress.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{throughput:.2f}")
                if logger is not None and (done % cfg.log_every == 0 or done == cfg.steps or not finite):
                    memory = (
                        {"peak_gib": torch.cuda.max_memory_allocated() / 2**30}
                        if env.device.type == "cuda"
                        else {}
                    )
                    skipped = {} if finite else {"skipped": "non-finite"}
                    logger.log(
                        done,
                        loss=loss_value,
                        lr=lr,
                        grad_norm=grad_norm,
                        samples_per_s=throughput,
                        nonfinite_steps=nonfinite,
                        **mass_metric,
                        **skipped,
                        **memory,
                    )
                if not finite:
                    handle_non_finite_step(
                        cfg, env, done, loss_value, grad_norm, nonfinite, micro_losses, checkpoints
                    )

                if cfg.save and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                    metadata = {
                        "world_size": env.world,
                        "rehyat": rehyat_config,
                        "config": config_to_dict(cfg),
                        "nonfinite_steps": nonfinite,
                    }
                    save_training_checkpoint(cfg, env, checkpoints, done, model, optimizer, ema, metadata)
                tic = time.perf_counter()  # logging and checkpoints are not the next step's time
    finally:
        batches.close()
        progress.close()
        if logger is not None:
            logger.close()
        profiler.close()  # last: a failing export cannot keep the rest open

    if env.is_main and cfg.save:
        save_final(cfg, checkpoints, out, ema=ema is not None)
    distributed.barrier()
    return FinetuneResult(output_dir=out, model=model, samples_seen=samples_seen)


def check_options(cfg: FinetuneConfig, dataset: LatentDataset, model: nn.Module) -> None:
    """A ValueError for options the model or data cannot take, before anything is written:
    ``model.gradient_checkpointing`` on a converted joint text-video model, ``prompt_dropout`` with
    conditioning tensors beside the prompt (an all-zero prompt has no such tensors), ``mass_weight`` on a
    model without ReHyAt's linear part in every processor it runs through, or compiled."""
    family = family_of(model)
    runtime = rehyat_runtime(model)
    if cfg.mass_weight > 0:
        why = None
        if runtime is None:
            why = "the model is not converted (model.convert=false)"
        elif runtime.config.attention != "hybrid":
            why = f"its attention is {runtime.config.attention!r}, not 'hybrid'"
        elif isinstance(family, JointAdapter):
            why = f"{type(model).__name__}'s joint text-video processors do not record it"
        elif cfg.model.compile:
            why = "model.compile=true compiles the row sampling into the blocks (set model.compile=false)"
        if why:
            raise ValueError(f"mass_weight={cfg.mass_weight} cannot be served: {why}")
    if cfg.model.gradient_checkpointing and isinstance(family, JointAdapter) and rehyat_runtime(model):
        raise ValueError(
            f"model.gradient_checkpointing=true is not served for {type(model).__name__}: its converted "
            "joint text-video attention runs the chunks folded into the batch, which diffusers' checkpointing "
            "recomputes without them; set model.gradient_checkpointing=false"
        )
    if cfg.prompt_dropout > 0 and dataset.conditioning_shapes:
        raise ValueError(
            f"prompt_dropout={cfg.prompt_dropout} zeroes the prompt embedding, but dataset {dataset.path} "
            f"also conditions on {sorted(dataset.conditioning_shapes)}, which no empty prompt defines; set "
            "prompt_dropout=0"
        )


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    """AdamW over every parameter (φ included) with the ``optim`` section's hyperparameters."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=optim.lr,
        betas=tuple(optim.betas),
        weight_decay=optim.weight_decay,
        eps=optim.eps,
    )


def learning_rate(cfg: FinetuneConfig, step: int) -> float:
    """``optim.lr`` after a linear warmup over ``optim.warmup_steps``; from ``optim.decay_start`` on,
    falling linearly to 0 at step ``steps``."""
    lr = cfg.optim.lr * min(1.0, (step + 1) / max(cfg.optim.warmup_steps, 1))
    start = cfg.optim.decay_start
    if start is not None and step >= start:
        lr *= (cfg.steps - step) / (cfg.steps - start)
    return lr


def forward_backward(
    cfg: FinetuneConfig,
    env: distributed.DistEnv,
    step: int,
    model: nn.Module,
    micro_batches: list[MicroBatch],
    autocast: AbstractContextManager,
    teacher: nn.Module | None,
    family: FamilyAdapter,
    samples_seen: list[int],
    schedule: Tensor | None = None,
    mass: OwnMassPenalty | None = None,
) -> list[tuple[list[int], Tensor]]:
    """Accumulate the gradients of one step's micro-batches (synchronised across ranks on the last);
    return each micro-batch's (dataset indices, loss). Appends the indices to ``samples_seen``. The loss is
    flow matching, or with a ``schedule`` (ᾱ of CogVideoX's scheduler) v-prediction on it, plus
    ``cfg.mass_weight`` × the ``mass`` term when given."""
    micro_losses = []
    for micro, batch in enumerate(micro_batches):
        batch = batch.to(env.device)
        indices, latents, prompt_embeds = batch.indices, batch.latents, batch.prompt_embeds
        samples_seen += indices
        conditioning = batch.conditioning
        objective = dict(
            teacher=teacher, teacher_weight=cfg.teacher_weight, family=family, conditioning=conditioning
        )
        generator = noise_generator(cfg.seed, step, micro * env.world + env.rank, env.device)
        if cfg.prompt_dropout > 0:
            prompt_embeds = drop_prompts(prompt_embeds, cfg.prompt_dropout, generator)
        if mass is not None:  # rows drawn per slot of the global batch, as the noise is, from another stream
            mass.start(generator.initial_seed() ^ 0x6D617373)
        with distributed.gradient_sync(model, enabled=micro == cfg.grad_accumulation - 1):
            with autocast:
                if schedule is None:
                    loss = flow_matching_loss(
                        model, latents, prompt_embeds, generator, cfg.flow_shift, **objective
                    )
                else:
                    loss = v_prediction_loss(model, latents, prompt_embeds, generator, schedule, **objective)
                if mass is not None:
                    loss = loss + cfg.mass_weight * mass.loss()
            (loss / cfg.grad_accumulation).backward()
        micro_losses.append((indices, loss.detach()))
    return micro_losses


def clip_and_reduce(
    cfg: FinetuneConfig, model: nn.Module, micro_losses: list[tuple[list[int], Tensor]]
) -> tuple[float, float]:
    """Clip the global gradient norm to ``optim.grad_clip`` (None: no clip); return the step's loss (the
    mean over micro-batches and ranks) and the gradient norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
    loss_sum = torch.zeros((), device=micro_losses[0][1].device)
    for _, loss in micro_losses:
        loss_sum += loss
    loss_value = distributed.mean_over_ranks(loss_sum / cfg.grad_accumulation)
    return loss_value, float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
