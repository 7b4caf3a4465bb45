"""Stage 2, ``rehyat finetune``: flow-matching fine-tuning of the whole converted DiT (docs/method.md §7) —
any family :func:`rehyat.models.convert` converts (Wan2.1/2.2, SkyReels-V2, LTX-Video; the family's
adapter says how its forward is called on a latent [B, C, F, H, W], e.g. LTX-Video's packed tokens).

The loss is Wan's rectified flow: x_t = (1 − σ)·x0 + σ·ε, the model predicts v = ε − x0 at timestep
σ·1000, with σ drawn by Wan's shifted sampling σ = shift·u / (1 + (shift − 1)·u), u ~ U(0, 1). Every
parameter trains (φ included) with AdamW, bf16 autocast, optional gradient checkpointing, gradient
accumulation and EMA. One process or many (``torchrun``; DDP or FSDP2, see
:mod:`rehyat.training.distributed`).

Runs are exactly reproducible and resumable: the samples of a step come from :class:`SampleOrder`
and its noise from a generator seeded with (seed, step, slot in the global batch), so a run resumed
from a checkpoint continues the same loss curve, and 2 ranks × 1 micro-step train on what 1 rank × 2
micro-steps do. Outputs in ``output_dir``: ``config.json`` (the resolved
config; a different one found there is kept as ``config.<UTC time>.json``), ``metrics.jsonl``,
``checkpoints/step-*``, and at the end ``final/`` (and ``final-ema/``) as ReHyAt checkpoints with base
weights (:func:`rehyat.save_rehyat`). A resume refuses a config that changes what the run learns unless
``allow_config_change``; ``resume_fallback`` resumes past an unreadable latest checkpoint. A non-finite
loss or gradient norm stops the run (:class:`~rehyat.training.checkpoint.NonFiniteError`) or, up to
``max_nonfinite_steps``, skips the step; see docs/failure_behaviour.md, "Training".

CLI: ``rehyat finetune [--config run.toml] [--set key=value ...]``, e.g.
``rehyat finetune --config run.toml --set optim.lr=2e-5 steps=500 model.rehyat.chunk_frames=3``;
``rehyat build-dataset --model WAN_FOLDER --manifest videos.jsonl --out DATASET`` makes the dataset.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rehyat.config import config_to_dict, write_config
from rehyat.models import ReHyAtConfig, convert, family_of, load_rehyat, rehyat_runtime, save_rehyat
from rehyat.models.adapter import FamilyAdapter
from rehyat.models.architectures import ARCHITECTURES as _ARCHITECTURES
from rehyat.training import distributed
from rehyat.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    NonFiniteError,
    check_model_state,
    checkpoint_folders,
    clean_staging,
    find_resumable,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_aside,
)
from rehyat.training.data import LatentDataset, SampleOrder
from rehyat.training.ema import EMA
from rehyat.training.metrics import MetricsLogger
from rehyat.utils import check_bool, check_int, check_number

ARCHITECTURES = tuple(_ARCHITECTURES)


@dataclass
class ModelSection:
    path: str | None = None
    """A diffusers folder (with ``transformer/``) or a transformer folder of any convertible family;
    ``toy``: the bundled toy teacher."""
    architecture: str | None = None
    """Instead of ``path``: random weights of one of :data:`rehyat.models.architectures.ARCHITECTURES`
    (``tiny``, ``tiny-skyreels-v2``, ``tiny-ltx-video``, ``wan2.1-t2v-1.3b``, ``ltx-video-2b``, ...;
    smoke tests, benchmarks)."""
    rehyat_checkpoint: str | None = None
    """A ReHyAt checkpoint (e.g. stage 1's) to start from, ``bundled`` for the toy student; else the model
    is converted fresh."""
    rehyat: ReHyAtConfig | None = None
    """How to convert freshly (``model.rehyat.chunk_frames=3`` sets one field, the rest default);
    None with no ``rehyat_checkpoint`` converts with ``ReHyAtConfig()``."""
    convert: bool = True
    """False trains the plain softmax model (e.g. pretraining the toy teacher) with this same loop."""
    gradient_checkpointing: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("path", "architecture", "rehyat_checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"model.{name} must be a string or null, got {value!r}")
        if self.rehyat is not None and not isinstance(self.rehyat, ReHyAtConfig):
            raise ValueError(f"model.rehyat must be a ReHyAtConfig or null, got {self.rehyat!r}")
        check_bool("model.convert", self.convert)
        check_bool("model.gradient_checkpointing", self.gradient_checkpointing)


@dataclass
class DataSection:
    path: str = ""
    """A latent dataset folder (:mod:`rehyat.training.data`)."""
    micro_batch_size: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.path, str):
            raise ValueError(f"data.path must be a string, got {self.path!r}")
        check_int("data.micro_batch_size", self.micro_batch_size, minimum=1)


@dataclass
class OptimSection:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (> 0); null (None) turns clipping off."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.lr = check_number("optim.lr", self.lr, minimum=0.0)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two numbers [beta1, beta2], got {self.betas!r}")
        self.betas = [
            check_number(f"optim.betas[{i}]", beta, minimum=0.0, maximum=1.0, exclusive_maximum=True)
            for i, beta in enumerate(self.betas)
        ]
        self.weight_decay = check_number("optim.weight_decay", self.weight_decay, minimum=0.0)
        self.eps = check_number("optim.eps", self.eps, minimum=0.0, exclusive_minimum=True)
        check_int("optim.warmup_steps", self.warmup_steps, minimum=0)
        if self.grad_clip is not None:
            self.grad_clip = check_number("optim.grad_clip", self.grad_clip)
            if self.grad_clip <= 0:
                raise ValueError(f"optim.grad_clip must be > 0 or null (no clipping), got {self.grad_clip}")


@dataclass
class FinetuneConfig:
    output_dir: str = "runs/finetune"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    steps: int = 1000
    grad_accumulation: int = 1
    flow_shift: float = 5.0
    prompt_dropout: float = 0.0
    """Probability of training a sample on the empty (all-zero) prompt, which classifier-free guidance needs."""
    teacher_weight: float = 0.0
    """λ in [0, 1]: weight of the original model's velocity in the regression target. 0 is plain flow
    matching (docs/method.md §7); 1 is output distillation from the model in ``model.path`` (or the random
    ``model.architecture``) — never the fine-tuned base weights a ReHyAt checkpoint may carry — which
    each rank holds as a frozen, unsharded fp32 copy run under the same autocast as the student."""
    mixed_precision: Literal["no", "bf16"] = "bf16"
    strategy: Literal["ddp", "fsdp"] = "ddp"
    ema_decay: float | None = None
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    resume: bool = True
    """Continue from ``output_dir/checkpoints`` when it holds a checkpoint."""
    resume_fallback: bool = False
    """When the checkpoint ``latest`` points at cannot be read (truncated, damaged, non-finite, missing),
    resume from the newest one that can instead of stopping; the unreadable newer ones are renamed
    ``damaged-step-<N>`` and kept. Checkpoints that do not match the run still stop it."""
    allow_config_change: bool = False
    """Resume although options that shape the run (lr, seed, batch, data, model, ...) differ from the
    checkpoint's; ``config.json`` then holds the new config and the previous one is kept as
    ``config.<UTC time>.json``. Without it such a resume is refused. (CLI: ``--allow-config-change``.)"""
    save: bool = True
    """Write checkpoints and the final model (off for throughput measurements)."""
    progress: bool = True
    max_nonfinite_steps: int = 0
    """How many steps with a non-finite loss or gradient norm a run may skip (no optimizer or EMA update,
    counted in ``metrics.jsonl``) before it stops with :class:`NonFiniteError`; 0 stops at the first."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first option out of range (every section included).

        Runs when the config is built, and again in :func:`finetune` for fields changed since."""
        sections = (("model", ModelSection), ("data", DataSection), ("optim", OptimSection))
        for name, section in sections:
            value = getattr(self, name)
            if not isinstance(value, section):
                raise ValueError(f"{name} must be a {section.__name__}, got {value!r}")
            value.validate()
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"output_dir must be a non-empty string, got {self.output_dir!r}")
        for name in ("steps", "grad_accumulation", "checkpoint_every", "keep_checkpoints", "log_every"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("seed", self.seed, minimum=0, maximum=2**32 - 1)
        check_int("max_nonfinite_steps", self.max_nonfinite_steps, minimum=0)
        self.flow_shift = check_number("flow_shift", self.flow_shift, minimum=0.0, exclusive_minimum=True)
        self.prompt_dropout = check_number("prompt_dropout", self.prompt_dropout)
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        self.teacher_weight = check_number("teacher_weight", self.teacher_weight)
        if not 0.0 <= self.teacher_weight <= 1.0:
            raise ValueError(f"teacher_weight must be in [0, 1], got {self.teacher_weight}")
        if self.ema_decay is not None:
            self.ema_decay = check_number(
                "ema_decay",
                self.ema_decay,
                minimum=0.0,
                maximum=1.0,
                exclusive_minimum=True,
                exclusive_maximum=True,
            )
        for name, choices in (("mixed_precision", ("no", "bf16")), ("strategy", ("ddp", "fsdp"))):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name in ("resume", "resume_fallback", "allow_config_change", "save", "progress"):
            check_bool(name, getattr(self, name))


@dataclass
class FinetuneResult:
    output_dir: Path
    model: nn.Module
    """This rank's trained model (a DDP replica or an FSDP shard owner)."""
    samples_seen: list[int]
    """Dataset indices this rank trained on, in order (from the start step of this process)."""


# --- flow matching -------------------------------------------------------------------------------


def shifted_sigmas(u: Tensor, shift: float) -> Tensor:
    """Wan's timestep shift: σ = shift·u / (1 + (shift − 1)·u), which moves mass towards high noise."""
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(
    model: nn.Module,
    latents: Tensor,
    prompt_embeds: Tensor,
    generator: torch.Generator,
    shift: float,
    teacher: nn.Module | None = None,
    teacher_weight: float = 0.0,
    family: FamilyAdapter | None = None,
) -> Tensor:
    """MSE between the model's velocity and v = ε − x0 at x_t = (1 − σ)·x0 + σ·ε, σ shifted-uniform.

    ``latents`` [B, C, F, H, W]; ``family`` the models' adapter, which says how the forward is called on
    them (None: Wan's call, ``model(x_t, t, prompt_embeds)``).

    With a ``teacher`` the target is (1 − λ)·(ε − x0) + λ·teacher(x_t), λ = ``teacher_weight``: the same
    gradient as (1 − λ)·flow matching + λ·MSE to the teacher's prediction (output distillation).
    """
    batch = latents.shape[0]
    u = torch.rand(batch, generator=generator, dtype=torch.float32)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    sigma = shifted_sigmas(u, shift).to(latents.device)
    noise = noise.to(latents.device)
    s = sigma.view(batch, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    prediction = predict_velocity(model, noisy, sigma * 1000, prompt_embeds, family)
    target = (noise - latents).float()
    if teacher is not None and teacher_weight > 0:
        with torch.no_grad():
            taught = predict_velocity(teacher, noisy, sigma * 1000, prompt_embeds, family).float()
        target = torch.lerp(target, taught, teacher_weight)
    return F.mse_loss(prediction.float(), target)


def predict_velocity(
    model: nn.Module, latents: Tensor, timestep: Tensor, prompt_embeds: Tensor, family: FamilyAdapter | None
) -> Tensor:
    """The velocity [B, C, F, H, W] ``model`` (a transformer, or its DDP/FSDP wrapper, called as such)
    predicts, called the way ``family``'s pipeline calls it (None: Wan's positional call)."""
    if family is None:
        return model(latents, timestep, prompt_embeds, return_dict=False)[0]
    transformer = distributed.unwrap(model)
    inputs = family.denoiser_inputs(transformer, latents, timestep, prompt_embeds)
    return family.denoiser_output(transformer, model(**inputs, return_dict=False)[0], latents)


def drop_prompts(prompt_embeds: Tensor, probability: float, generator: torch.Generator) -> Tensor:
    """Zero each sample's prompt embedding with ``probability`` (the empty prompt of CFG's unconditional branch)."""
    keep = torch.rand(prompt_embeds.shape[0], generator=generator) >= probability
    return prompt_embeds * keep.to(prompt_embeds.device, prompt_embeds.dtype).view(-1, 1, 1)


def noise_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The generator of micro-batch ``slot`` (micro-step · world + rank) of a step.

    Noise depends on the slot in the global batch only: a resumed run draws the same noise, and so does
    a run with another split of the same global batch into ranks and accumulation steps.
    """
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 65_537 + slot) % 2**63)


# --- model -----------------------------------------------------------------------------------------


def load_base_transformer(section: ModelSection) -> nn.Module:
    """The base transformer in fp32: from a local folder (any convertible family, by its config's
    class), or random for ``architecture``."""
    from rehyat.models.architectures import architecture
    from rehyat.models.folders import load_transformer

    if (section.path is None) == (section.architecture is None):
        raise ValueError("set exactly one of model.path (a local Wan folder) and model.architecture")
    if section.architecture is not None:
        if section.architecture not in ARCHITECTURES:
            raise ValueError(
                f"model.architecture must be one of {ARCHITECTURES}, got {section.architecture!r}"
            )
        return architecture(section.architecture).build().train()
    return load_transformer(section.path, torch_dtype=torch.float32)


def build_model(section: ModelSection, seed: int) -> nn.Module:
    """Base transformer converted to ReHyAt, from a ReHyAt checkpoint or freshly with ``section.rehyat``
    (or left as it is with ``convert=False``)."""
    from rehyat.models.folders import rehyat_folder

    torch.manual_seed(seed)  # random architectures and fresh φ are identical on every rank
    model = load_base_transformer(section)
    if not section.convert:
        if section.rehyat is not None or section.rehyat_checkpoint is not None:
            raise ValueError("model.convert=false trains the plain model: leave model.rehyat* unset")
        return model
    if section.rehyat_checkpoint is not None:
        if section.rehyat is not None:
            raise ValueError("set model.rehyat_checkpoint or model.rehyat, not both")
        return load_rehyat(model, rehyat_folder(section.rehyat_checkpoint))
    return convert(model, section.rehyat or ReHyAtConfig())


def build_teacher(cfg: FinetuneConfig, device: torch.device) -> nn.Module:
    """The original, unconverted model for ``teacher_weight``, frozen. It stays in fp32 (autocast runs
    it in bf16 where the student runs in bf16): casting it would also cast the modules diffusers keeps
    in fp32 (RoPE, time embedding, norms), and the teacher would no longer be the student's start."""
    torch.manual_seed(cfg.seed)  # a random architecture gets the same weights as the student's base
    return load_base_transformer(cfg.model).requires_grad_(False).eval().to(device)


def _check_data_fits(dataset: LatentDataset, model: nn.Module) -> None:
    family = family_of(model)
    takes = family.latent_channels(model), family.text_dim(model)
    channels, text_dim = dataset.latent_shape[0], dataset.prompt_shape[1]
    if (channels, text_dim) != takes:
        raise ValueError(
            f"dataset {dataset.path} has {channels}-channel latents and {text_dim}-dim prompt embeddings; "
            f"the model takes {takes[0]} and {takes[1]}"
        )


def save_final_weights(section: ModelSection, seed: int, state: dict[str, Tensor], folder: Path) -> None:
    """Save full weights through a fresh CPU model: a ReHyAt checkpoint with base weights, or a plain
    diffusers transformer folder (``save_pretrained``) when the model is not converted."""
    model = build_model(section, seed)
    model.load_state_dict(state)
    if section.convert:
        save_rehyat(model, folder, include_base_weights=True)
    else:
        model.save_pretrained(folder)


def _rehyat_config(model: nn.Module) -> dict[str, Any] | None:
    runtime = rehyat_runtime(distributed.unwrap(model))
    return None if runtime is None else runtime.config.to_dict()


# --- training --------------------------------------------------------------------------------------


def _learning_rate(cfg: FinetuneConfig, step: int) -> float:
    return cfg.optim.lr * min(1.0, (step + 1) / max(cfg.optim.warmup_steps, 1))


def _resume(
    checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA | None
) -> tuple[int, dict[str, Any]]:
    """Load a training checkpoint into model, optimizer and EMA; return its step and metadata. Validates
    first."""
    path = checkpoint.path
    check_model_state(checkpoint, distributed.unwrap(model).state_dict())
    ours = _rehyat_config(model)
    if checkpoint.metadata.get("rehyat") != ours:
        raise CheckpointError(
            f"checkpoint {path} was made with ReHyAt config {checkpoint.metadata.get('rehyat')}, "
            f"this run converts with {ours}"
        )
    if checkpoint.optimizer is None:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state")
    if (ema is None) != ("ema" not in checkpoint.extra):
        raise CheckpointError(
            f"checkpoint {path} {'has' if ema is None else 'lacks'} EMA weights but ema_decay is "
            f"{'unset' if ema is None else 'set'}"
        )
    distributed.load_full_state(model, optimizer, checkpoint.model, checkpoint.optimizer)
    if ema is not None:
        ema.load_state_dict(checkpoint.extra["ema"])
    return checkpoint.step, checkpoint.metadata


#: Options a resumed run may change freely: they shape where and how long it runs, not what it learns.
RESUMABLE_CHANGES = frozenset(
    {
        "output_dir",
        "steps",
        "resume",
        "resume_fallback",
        "allow_config_change",
        "save",
        "progress",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "max_nonfinite_steps",
        "strategy",
    }
)


def _config_changes(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key old -> new`` for each option outside :data:`RESUMABLE_CHANGES` that differs (keys that only
    one side has, from another version of this library, are not compared)."""
    changes = []
    for key in sorted(saved.keys() & current.keys()):
        old, new = saved[key], current[key]
        if prefix + key in RESUMABLE_CHANGES or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _config_changes(old, new, f"{prefix}{key}.")
        else:
            changes.append(f"{prefix}{key} {old} -> {new}")
    return changes


def _record_config(cfg: FinetuneConfig, path: Path) -> None:
    """Write ``config.json``; a different one already there is kept as ``config.<UTC time>.json``."""
    if path.is_file() and not path.is_symlink():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != config_to_dict(cfg):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            kept, number = path.with_name(f"config.{stamp}.json"), 1
            while kept.exists():
                kept, number = path.with_name(f"config.{stamp}-{number}.json"), number + 1
            os.replace(path, kept)
    write_config(cfg, path)


def _resume_run(
    cfg: FinetuneConfig,
    env: distributed.DistEnv,
    checkpoints: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
) -> tuple[int, int] | None:
    """Resume from ``checkpoints`` as ``cfg.resume`` and ``cfg.resume_fallback`` say: (step, non-finite
    steps so far) of the checkpoint loaded, or None for a fresh start."""
    if not cfg.resume:
        if (checkpoints / "latest").exists() or checkpoint_folders(checkpoints):
            raise ValueError(
                f"{checkpoints} already holds checkpoints: set resume=true or another output_dir"
            )
        return None
    try:
        found = find_resumable(checkpoints, cfg.resume_fallback)
    except CheckpointError as error:
        if cfg.resume_fallback:
            raise
        raise CheckpointError(
            f"{error}. Set resume_fallback=true to resume from the newest checkpoint that can be read"
        ) from error
    if found is None:
        return None
    step, metadata = _resume(found.checkpoint, model, optimizer, ema)
    changes = _config_changes(metadata.get("config", {}), config_to_dict(cfg))
    if changes and not cfg.allow_config_change:
        raise ValueError(
            f"{found.checkpoint.path} was trained with another config: {', '.join(changes)}. Resuming would "
            "quietly turn it into another run: set allow_config_change=true (--allow-config-change) to "
            "resume with the new values anyway (config.json is replaced, the old one kept as "
            "config.<time>.json), or choose another output_dir"
        )
    if found.fallback_reason is not None:
        distributed.barrier()  # every rank has read the folder before it changes
        if env.is_main:
            renamed = set_aside(checkpoints, found)
            warnings.warn(
                f"{found.fallback_reason}: resuming from {found.checkpoint.path.name} (resume_fallback)"
                + (f"; set aside {[p.name for p in renamed]}" if renamed else ""),
                RuntimeWarning,
                stacklevel=3,
            )
    return step, metadata.get("nonfinite_steps", 0)


def _non_finite_step(
    cfg: FinetuneConfig,
    env: distributed.DistEnv,
    step: int,
    loss: float,
    grad_norm: float,
    count: int,
    micro_losses: list[tuple[list[int], Tensor]],
    checkpoints: Path,
) -> None:
    """Warn about a skipped step, or raise :class:`NonFiniteError` once ``count`` passes the limit."""
    culprits = [i for indices, value in micro_losses if not torch.isfinite(value) for i in indices]
    where = f"; samples {culprits} of rank {env.rank} gave a non-finite loss" if culprits else ""
    what = f"step {step}: the loss is {loss} and the gradient norm {grad_norm}{where}"
    if count <= cfg.max_nonfinite_steps:
        if env.is_main:
            warnings.warn(
                f"{what}: skipped (no optimizer update); {count} of max_nonfinite_steps="
                f"{cfg.max_nonfinite_steps} non-finite steps",
                RuntimeWarning,
                stacklevel=3,
            )
        return
    latest = latest_checkpoint(checkpoints) if cfg.save else None
    raise NonFiniteError(
        f"{what}. Stopped at {count} non-finite step{'s' if count > 1 else ''}, more than "
        f"max_nonfinite_steps={cfg.max_nonfinite_steps}, before the optimizer step: nothing non-finite "
        f"was saved, and the last checkpoint is {latest.name if latest else 'none'}"
    )


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
    _check_data_fits(dataset, model)
    if cfg.model.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model = distributed.wrap_model(model.to(env.device).train(), cfg.strategy, env)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        weight_decay=cfg.optim.weight_decay,
        eps=cfg.optim.eps,
    )
    ema = EMA(distributed.unwrap(model), cfg.ema_decay) if cfg.ema_decay is not None else None
    teacher = build_teacher(cfg, env.device) if cfg.teacher_weight > 0 else None
    rehyat_config = _rehyat_config(model)

    if env.is_main:  # what a killed save or config write left behind
        clean_staging(checkpoints)
        clean_staging(out, (".config.json.*.tmp", ".metrics.jsonl.*.tmp"))
    resumed = _resume_run(cfg, env, checkpoints, model, optimizer, ema)
    start, nonfinite = resumed or (0, 0)
    logger = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _record_config(cfg, out / "config.json")
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
    try:
        for step in range(start, cfg.steps):
            tic = time.perf_counter()
            lr = _learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr

            loss_sum = torch.zeros((), device=env.device)
            micro_losses = []
            for micro in range(cfg.grad_accumulation):
                indices = order.indices(step, micro, env.rank)
                samples_seen += indices
                latents, prompt_embeds = (t.to(env.device) for t in dataset.batch(indices))
                generator = noise_generator(cfg.seed, step, micro * env.world + env.rank)
                if cfg.prompt_dropout > 0:
                    prompt_embeds = drop_prompts(prompt_embeds, cfg.prompt_dropout, generator)
                with distributed.gradient_sync(model, enabled=micro == cfg.grad_accumulation - 1):
                    with autocast:
                        loss = flow_matching_loss(
                            model,
                            latents,
                            prompt_embeds,
                            generator,
                            cfg.flow_shift,
                            teacher,
                            cfg.teacher_weight,
                            family,
                        )
                    (loss / cfg.grad_accumulation).backward()
                loss_sum += loss.detach()
                micro_losses.append((indices, loss.detach()))

            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.optim.grad_clip or math.inf
            )  # None: no clip
            # Both are the same on every rank (mean loss, norm of the synchronised gradients), so every
            # rank takes the same decision.
            loss_value = distributed.mean_over_ranks(loss_sum / cfg.grad_accumulation)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
            if finite:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if finite and ema is not None:
                ema.update(distributed.unwrap(model))
            nonfinite += not finite

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
                    **skipped,
                    **memory,
                )
            if not finite:
                _non_finite_step(cfg, env, done, loss_value, grad_norm, nonfinite, micro_losses, checkpoints)

            if cfg.save and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                model_state, optim_state = distributed.full_state(model, optimizer)
                extra = {"ema": ema.state_dict()} if ema is not None else {}  # collective under FSDP
                refused = None
                if env.is_main:
                    metadata = {
                        "world_size": env.world,
                        "rehyat": rehyat_config,
                        "config": config_to_dict(cfg),
                        "nonfinite_steps": nonfinite,
                    }
                    try:
                        save_checkpoint(
                            checkpoints, done, model_state, optim_state, metadata, cfg.keep_checkpoints, extra
                        )
                    except NonFiniteError as error:  # finite loss and gradients, yet the update overflowed
                        refused = error
                if distributed.any_rank(refused is not None):
                    raise refused or NonFiniteError(f"step {done}: rank 0 refused to save non-finite weights")
                distributed.barrier()
    finally:
        progress.close()
        if logger is not None:
            logger.close()

    if env.is_main and cfg.save:
        final = load_checkpoint(latest_checkpoint(checkpoints))
        save_final_weights(cfg.model, cfg.seed, final.model, out / "final")
        if ema is not None:
            save_final_weights(cfg.model, cfg.seed, final.model | final.extra["ema"], out / "final-ema")
    distributed.barrier()
    return FinetuneResult(output_dir=out, model=model, samples_seen=samples_seen)
