"""The stage-2 run's config: :class:`FinetuneConfig` and its sections (model, data, optimizer), each
checked when built and again when the run starts (docs/failure_behaviour.md, "Training")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rehyat.models import ReHyAtConfig
from rehyat.utils import check_bool, check_int, check_number


@dataclass
class ModelSection:
    path: str | None = None
    """A diffusers folder (with ``transformer/``) or a transformer folder of any convertible family;
    ``toy``: the bundled toy teacher. CogVideoX: its pipeline folder (or that folder's ``transformer/``),
    whose ``scheduler/`` gives the v-prediction noise schedule it trains on."""
    architecture: str | None = None
    """Instead of ``path``: random weights of one of :data:`rehyat.models.architectures.ARCHITECTURES`
    (``tiny``, ``tiny-skyreels-v2``, ``tiny-ltx-video``, ``tiny-hunyuan-video``, ``tiny-cogvideox``,
    ``wan2.1-t2v-1.3b``, ``ltx-video-2b``, ...; smoke tests, benchmarks)."""
    rehyat_checkpoint: str | None = None
    """A ReHyAt checkpoint (e.g. stage 1's) to start from, ``bundled`` for the toy student; else the model
    is converted fresh."""
    rehyat: ReHyAtConfig | None = None
    """How to convert freshly (``model.rehyat.chunk_frames=3`` sets one field, the rest default);
    None with no ``rehyat_checkpoint`` converts with ``ReHyAtConfig()``."""
    convert: bool = True
    """False trains the plain softmax model (e.g. pretraining the toy teacher) with this same loop."""
    gradient_checkpointing: bool = True
    """diffusers' gradient checkpointing of the blocks; a converted HunyuanVideo or CogVideoX refuses it (its
    folded chunk entries would not be recomputed): set false for those."""
    compile: bool = False
    """``torch.compile`` each transformer block (diffusers' regional compilation,
    ``compile_repeated_blocks``; the family's blocks for a class that names none): the first step
    compiles, later steps run fused kernels. Weights, checkpoints and results are those of eager training
    up to rounding, so a resumed run may turn it on or off."""

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
        check_bool("model.compile", self.compile)


@dataclass
class DataSection:
    path: str = ""
    """A latent dataset folder (:mod:`rehyat.training.data`)."""
    micro_batch_size: int = 1
    preload: bool = False
    """Read the whole dataset into the training device's memory once and gather each micro-batch there:
    for a dataset that fits beside the model (at most half the device's free memory, else refused), where
    reading each step's samples from disk would bound the step."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.path, str):
            raise ValueError(f"data.path must be a string, got {self.path!r}")
        check_int("data.micro_batch_size", self.micro_batch_size, minimum=1)
        if not isinstance(self.preload, bool):
            raise ValueError(f"data.preload must be true or false, got {self.preload!r}")


@dataclass
class OptimSection:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 0
    decay_start: int | None = None
    """From this step on the learning rate falls linearly toward 0, which it reaches at step ``steps``: a
    warmup-stable-decay schedule, whose constant phase can go on for as long as a run needs (piece after
    resumed piece) and whose short cooldown at the end gains what a cosine schedule would. None: constant
    after the warmup. Must lie in [warmup_steps, steps)."""
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
        if self.decay_start is not None:
            check_int("optim.decay_start", self.decay_start, minimum=self.warmup_steps)
        if self.grad_clip is not None:
            self.grad_clip = check_number("optim.grad_clip", self.grad_clip)
            if self.grad_clip <= 0:
                raise ValueError(f"optim.grad_clip must be > 0 or null (no clipping), got {self.grad_clip}")


@dataclass
class ProfileSection:
    start: int | None = None
    """Profile the steps from this (0-based) step index on with ``torch.profiler`` (main rank): a trace and
    a table of ops in ``output_dir/profile``. None: off."""
    steps: int = 5
    """How many steps the window holds (a run that ends first writes the steps it profiled)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.start is not None:
            check_int("profile.start", self.start, minimum=0)
        check_int("profile.steps", self.steps, minimum=1)


@dataclass
class FinetuneConfig:
    output_dir: str = "runs/finetune"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    profile: ProfileSection = field(default_factory=ProfileSection)
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
    mass_weight: float = 0.0
    """λ ≥ 0 of the out-of-window mass term (docs/method.md §7.1): adds λ × the mean, over converted layers,
    of |log(1 + nL/nS) − log(1 + the student's own softmax share over the linear keys)| on ``mass_rows``
    sampled query rows per layer. Stage 2 alone shrinks the linear part's share of attention; this keeps it
    at what the model's own scores put outside the window. Needs a converted ReHyAt model (not a joint
    text-video family), ``model.compile=false``. The logged ``loss`` includes λ × the term; ``metrics.jsonl``
    also logs the term itself as ``mass_error``."""
    mass_rows: int = 256
    """Query rows per layer and micro-batch the mass term samples (R × N scores each)."""
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

        Runs when the config is built, and again in :func:`~rehyat.training.finetune.finetune` for fields changed since."""
        sections = (
            ("model", ModelSection),
            ("data", DataSection),
            ("optim", OptimSection),
            ("profile", ProfileSection),
        )
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
        if self.optim.decay_start is not None and self.optim.decay_start >= self.steps:
            raise ValueError(
                f"optim.decay_start ({self.optim.decay_start}) must be below steps ({self.steps}): the "
                "learning rate falls toward 0 at steps"
            )
        self.flow_shift = check_number("flow_shift", self.flow_shift, minimum=0.0, exclusive_minimum=True)
        self.prompt_dropout = check_number("prompt_dropout", self.prompt_dropout)
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        self.teacher_weight = check_number("teacher_weight", self.teacher_weight)
        if not 0.0 <= self.teacher_weight <= 1.0:
            raise ValueError(f"teacher_weight must be in [0, 1], got {self.teacher_weight}")
        self.mass_weight = check_number("mass_weight", self.mass_weight, minimum=0.0)
        check_int("mass_rows", self.mass_rows, minimum=1)
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
