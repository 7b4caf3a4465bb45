"""Stage 2, ``rehyat finetune``: flow-matching fine-tuning of the whole converted DiT (docs/method.md §7) —
any family :func:`rehyat.models.convert` converts (Wan2.1/2.2, SkyReels-V2, LTX-Video, HunyuanVideo,
CogVideoX; the family's adapter says how its forward is called on a latent [B, C, F, H, W], e.g.
LTX-Video's packed tokens, HunyuanVideo's pooled CLIP projections from the dataset's conditioning).
CogVideoX, whose pipeline samples with a v-prediction DDPM scheduler, trains on that scheduler's
objective instead (:func:`v_prediction_loss`). The joint text-video models train without gradient
checkpointing (``model.gradient_checkpointing=false``; it is refused for them).

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

The modules, torchtitan-style: :mod:`~rehyat.training.finetune.run_config` (the config),
:mod:`~rehyat.training.finetune.loss` (flow matching), :mod:`~rehyat.training.finetune.model` (building the
models), :mod:`~rehyat.training.finetune.checkpointing` (resume, ``config.json``, checkpoints, final
weights), :mod:`~rehyat.training.finetune.nonfinite` (the non-finite policy) and
:mod:`~rehyat.training.finetune.trainer` (the loop, :func:`finetune`). Their public names are re-exported
here.

CLI: ``rehyat finetune [--config run.toml] [--set key=value ...]``, e.g.
``rehyat finetune --config run.toml --set optim.lr=2e-5 steps=500 model.rehyat.chunk_frames=3``;
``rehyat build-dataset --model PIPELINE_FOLDER --manifest videos.jsonl --out DATASET`` makes the dataset
(a local pipeline folder of any family).
"""

from rehyat.training.finetune.checkpointing import RESUMABLE_CHANGES
from rehyat.training.finetune.loss import (
    drop_prompts,
    flow_matching_loss,
    noise_generator,
    predict_velocity,
    shifted_sigmas,
    v_prediction_loss,
)
from rehyat.training.finetune.model import (
    ARCHITECTURES,
    build_model,
    build_teacher,
    load_base_transformer,
    noise_schedule,
    save_final_weights,
)
from rehyat.training.finetune.run_config import (
    DataSection,
    FinetuneConfig,
    ModelSection,
    OptimSection,
    ProfileSection,
)
from rehyat.training.finetune.trainer import FinetuneResult, finetune

__all__ = [
    "ARCHITECTURES",
    "RESUMABLE_CHANGES",
    "DataSection",
    "FinetuneConfig",
    "FinetuneResult",
    "ModelSection",
    "OptimSection",
    "ProfileSection",
    "build_model",
    "build_teacher",
    "drop_prompts",
    "finetune",
    "flow_matching_loss",
    "load_base_transformer",
    "noise_generator",
    "noise_schedule",
    "predict_velocity",
    "save_final_weights",
    "shifted_sigmas",
    "v_prediction_loss",
]
