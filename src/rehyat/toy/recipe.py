"""The toy recipe: stage 1 (distill φ) and stage 2 (flow-matching fine-tune) on a toy teacher, and
sampling for evaluation, sized by one :class:`RecipeSettings`.

``rehyat demo`` and the quality table (``rehyat bench toy``) run it; a user can too:
``distill_student(bundled_teacher(), out, RecipeSettings(), "cpu")`` then :func:`finetune_student`.
Every step reads the teacher folder's space (:func:`~rehyat.toy.model.toy_space`: the pixel clips of
the bundled teacher, or packed latents): the Wan tools get the video size whose latent grid the space's
latent is (4·(F − 1) + 1 frames, 8× the latent pixels), as :func:`wan_video_size` computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rehyat.models import ReHyAtConfig
from rehyat.toy.evaluate import sample_videos, toy_prompts
from rehyat.toy.model import (
    FLOW_SHIFT,
    PIXEL,
    ToySpace,
    bundled_teacher,
    load_text_encoder,
    toy_space,
    write_prompt_file,
)
from rehyat.toy.teacher import toy_clips
from rehyat.training.data import write_latent_dataset
from rehyat.training.distill import DistillConfig, run_distillation
from rehyat.training.finetune import DataSection, FinetuneConfig, ModelSection, OptimSection, finetune
from rehyat.utils import check_bool, check_int, check_number


@dataclass
class RecipeSettings:
    """Sizes of each stage of the toy recipe; the defaults fit in about ten minutes on two CPU cores."""

    distill_prompts: int = 5
    distill_heldout: int = 1
    distill_steps: int = 10  # sampler steps while capturing
    capture_steps: tuple[int, ...] = (0, 3, 6, 9)
    distill_inner_steps: int = 6
    distill_lr: float = 3e-4
    distill_variants: tuple[str, ...] = ("rehyat", "untrained", "linear", "local")  # stage-1 comparisons
    distill_mass_weight: float = 0.0  # λ of stage 1's out-of-window mass error (rehyat.training.mass)
    finetune_clips: int = 64
    finetune_steps: int = 20
    finetune_batch: int = 2
    finetune_lr: float = 1e-4
    finetune_ema: float | None = None  # EMA decay of stage 2; set, the EMA weights are the result
    finetune_teacher_weight: float = 0.0  # λ of stage 2's teacher output distillation (0: docs/method.md §7)
    finetune_prompt_dropout: float = 0.1  # keeps the empty-prompt branch that guidance needs
    finetune_mass_weight: float = 0.0  # λ of stage 2's out-of-window mass term (FinetuneConfig.mass_weight)
    eval_prompts: int = 6
    sample_steps: int = 12
    sample_batch: int = 8  # videos denoised at once (each keeps its own seed's noise)
    chunks_per_call: int = 1  # recurrent sampling: chunks per model call (the same videos, fewer calls)
    guidance_scale: float = 4.0  # when sampling for evaluation (the bundled teacher needs it)
    distill_guidance_scale: float = 1.0  # while capturing: one branch, half the cost
    long_factor: int = 4
    long_videos: int = 1
    memory_frames: tuple[int, ...] = (16, 32, 64)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in (
            "distill_prompts",
            "distill_steps",
            "distill_inner_steps",
            "finetune_clips",
            "finetune_steps",
            "finetune_batch",
            "eval_prompts",
            "sample_steps",
            "sample_batch",
            "chunks_per_call",
            "long_factor",
        ):
            check_int(name, getattr(self, name), 1)
        check_int("distill_heldout", self.distill_heldout, 0, self.distill_prompts - 1)
        check_int("long_videos", self.long_videos, 0)
        check_int("seed", self.seed, 0)
        for name in ("distill_lr", "finetune_lr"):
            check_number(name, getattr(self, name), minimum=0, exclusive_minimum=True)
        if self.finetune_ema is not None:
            check_number(
                "finetune_ema",
                self.finetune_ema,
                minimum=0,
                maximum=1,
                exclusive_minimum=True,
                exclusive_maximum=True,
            )
        check_number("finetune_teacher_weight", self.finetune_teacher_weight, minimum=0, maximum=1)
        check_number("finetune_prompt_dropout", self.finetune_prompt_dropout, minimum=0, maximum=1)
        check_number("guidance_scale", self.guidance_scale, minimum=0)
        check_number("distill_guidance_scale", self.distill_guidance_scale, minimum=0)
        check_number("distill_mass_weight", self.distill_mass_weight, minimum=0)
        check_number("finetune_mass_weight", self.finetune_mass_weight, minimum=0)
        check_bool("progress", self.progress)


QUICK = RecipeSettings(
    distill_prompts=2,
    distill_heldout=1,
    distill_steps=2,
    capture_steps=(1,),
    distill_inner_steps=1,
    finetune_clips=4,
    finetune_steps=2,
    finetune_batch=2,
    eval_prompts=2,
    sample_steps=2,
    long_factor=2,
    long_videos=1,
    memory_frames=(16,),
)


def wan_video_size(frames: int, height: int, width: int) -> dict[str, int]:
    """The Wan pipeline's video size whose latent grid is (frames, height, width) (VAE stride 4, 8, 8)."""
    return {"num_frames": 4 * (frames - 1) + 1, "height": 8 * height, "width": 8 * width}


def sample_with(
    model,
    embeds: torch.Tensor,
    settings: RecipeSettings,
    *,
    frames: int,
    first_seed: int,
    recurrent: bool,
    space: ToySpace = PIXEL,
) -> list[torch.Tensor]:
    """One video per prompt embedding with the settings' sampler steps and guidance (prompt i: seed
    first_seed + i): ``frames`` latent frames of ``space`` (the model's), decoded to video frames."""
    return sample_videos(
        model,
        embeds,
        frames=frames,
        steps=settings.sample_steps,
        guidance_scale=settings.guidance_scale,
        first_seed=first_seed,
        recurrent=recurrent,
        batch_size=settings.sample_batch,
        space=space,
        chunks_per_call=settings.chunks_per_call,
    )


def distill_student(
    teacher: Path, out: Path, settings: RecipeSettings, device: str, rehyat: ReHyAtConfig | None = None
) -> dict:
    """Stage 1 on the toy teacher: φ of every block distilled for ``rehyat`` (default: Tc=3, To=1,
    causal) on clips of the teacher's space; the checkpoint lands in ``out/rehyat``. Returns the
    distillation report."""
    space = toy_space(teacher)
    out.mkdir(parents=True, exist_ok=True)
    prompts = toy_prompts(settings.distill_prompts, settings.seed + 1)
    prompt_file = write_prompt_file(load_text_encoder(teacher), prompts, out / "prompts.safetensors")
    return run_distillation(
        DistillConfig(
            model=str(teacher),
            prompts=str(prompt_file),
            out=str(out),
            rehyat=rehyat or ReHyAtConfig(),
            variants=list(settings.distill_variants),
            heldout=settings.distill_heldout,
            num_inference_steps=settings.distill_steps,
            capture_steps=list(settings.capture_steps),
            guidance_scale=settings.distill_guidance_scale,
            inner_steps=settings.distill_inner_steps,
            lr=settings.distill_lr,
            mass_weight=settings.distill_mass_weight,
            dtype="fp32",
            device=device,
            seed=settings.seed,
            **wan_video_size(*space.latent_shape(space.clip_frames)[1:]),
        )
    )


def finetune_dataset(out: Path, settings: RecipeSettings, teacher: Path | None = None) -> Path:
    """Rendered clips of the space of ``teacher`` (default: the bundled teacher) with their prompt
    embeddings by its text encoder, for stage 2 (written once, then reused)."""
    folder = out / "finetune_data"
    if (folder / "index.json").exists():
        return folder
    teacher = bundled_teacher() if teacher is None else teacher
    clips = toy_clips(
        load_text_encoder(teacher), settings.finetune_clips, settings.seed + 2, toy_space(teacher)
    )
    return write_latent_dataset(folder, clips)


def finetune_student(
    teacher: Path, checkpoint: Path | None, out: Path, dataset: Path, settings: RecipeSettings, device: str
) -> Path:
    """Stage 2: flow-matching fine-tune of the teacher converted from ``checkpoint`` (a ReHyAt checkpoint
    with the fine-tuned base weights lands in ``out/final``), or of the plain teacher with ``checkpoint=None``
    (a diffusers transformer folder). With ``settings.finetune_ema`` the EMA weights are returned."""
    finetune(
        FinetuneConfig(
            output_dir=str(out),
            model=ModelSection(
                path=str(teacher),
                convert=checkpoint is not None,
                rehyat_checkpoint=None if checkpoint is None else str(checkpoint),
                gradient_checkpointing=False,
            ),
            data=DataSection(path=str(dataset), micro_batch_size=settings.finetune_batch),
            optim=OptimSection(lr=settings.finetune_lr),
            steps=settings.finetune_steps,
            flow_shift=FLOW_SHIFT,
            prompt_dropout=settings.finetune_prompt_dropout,
            teacher_weight=settings.finetune_teacher_weight,
            mass_weight=settings.finetune_mass_weight if checkpoint is not None else 0.0,
            mixed_precision="bf16" if device == "cuda" else "no",
            checkpoint_every=min(settings.finetune_steps, 250),  # a run cut off resumes
            resume=(out / "checkpoints").exists(),
            seed=settings.seed,
            progress=settings.progress,
            ema_decay=settings.finetune_ema,
        )
    )
    return out / ("final" if settings.finetune_ema is None else "final-ema")
