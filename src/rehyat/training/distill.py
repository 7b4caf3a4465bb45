"""Stage 1 — attention distillation (docs/method.md §7), ``rehyat distill``.

The frozen teacher runs its real sampler (its family's diffusers pipeline — ``WanPipeline``,
``SkyReelsV2Pipeline``, ``LTXPipeline``, ``HunyuanVideoPipeline`` or ``CogVideoXPipeline``: its
scheduler, CFG, both branches) on the given prompts with fresh seeds. At the chosen denoising steps an
:class:`~rehyat.training.capture.AttentionRecorder` records every distilled block's q, k, v and softmax
output (a joint text–video block's video rows, with the text keys the converted block's windows include;
docs/method.md §6.1), and each block's students train on them right away ("capture and train on the fly"): nothing
is written to disk and memory stays at one step's captures of this process's blocks, which is what
makes Wan2.1 at 480×832×81 (≈100 MB per tensor per block in bf16) practical. The last ``heldout``
sampler runs are kept (on CPU) for evaluation instead of training.

Blocks are independent, so with several processes (``torchrun`` or ``accelerate launch``) each process
takes every world-size-th block; every process runs the teacher. The main process then merges the
per-block results into ``report.json`` / ``report.md`` (final train and held-out L1 and relative error
and the guarded-row fraction per block and variant), ``ranking.json`` (blocks by held-out L1 of the
ReHyAt student, lowest first — what ``ReHyAtConfig(blocks=k, block_ranking=...)`` consumes) and a
ReHyAt checkpoint of the teacher converted with the distilled feature maps (``rehyat/``).
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from safetensors.torch import load_file

from rehyat.models.adapter import vae_compression
from rehyat.models.checkpoint import read_json_object
from rehyat.models.config import ReHyAtConfig
from rehyat.models.families import family_of
from rehyat.models.folders import load_transformer, model_folder
from rehyat.models.joint import JointAdapter
from rehyat.settings import write_config
from rehyat.training.capture import AttentionCapture, AttentionRecorder
from rehyat.training.checkpoint import NonFiniteError, first_nonfinite
from rehyat.training.distributed import DistEnv, init_distributed
from rehyat.training.metrics import MetricsLogger
from rehyat.training.students import VARIANTS, BlockStudent
from rehyat.utils import (
    atomic_write_tensors,
    atomic_write_text,
    check_bool,
    check_int,
    check_number,
    dtype_from_name,
    real_folder,
    replacing_folder,
)


@dataclass
class DistillConfig:
    """Everything a stage-1 run needs; written to ``<out>/config.json``."""

    model: str = ""  # local diffusers folder of a convertible family (transformer/, scheduler/, and text_encoder/, tokenizer/ for text prompts)
    prompts: str = ""  # a .txt file (one prompt a line) or .safetensors with prompt_embeds [P, L, D]
    out: str = "runs/distill"
    rehyat: ReHyAtConfig = field(default_factory=ReHyAtConfig)
    blocks: list[int] | None = None  # None: every block (a full ranking needs every block)
    variants: list[str] | None = (
        None  # None: every variant the family serves (joint text-video: rehyat, untrained)
    )
    num_frames: int = 81
    height: int = 480
    width: int = 832
    num_inference_steps: int = 50
    guidance_scale: float = 5.0  # the pipeline's CFG scale; HunyuanVideo's embedded guidance
    capture_steps: list[int] = field(default_factory=lambda: [0, 10, 20, 30, 40])
    seeds_per_prompt: int = 1
    heldout: int = 1  # the last `heldout` sampler runs are held out for evaluation
    inner_steps: int = 1  # optimiser steps per captured call
    mass_weight: float = 0.0  # λ of the out-of-window mass error beside L1 (rehyat.training.mass); 0: L1 only
    mass_rows: int = 256  # query rows per capture the mass error is taken on
    lr: float = 1e-3
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    device: str = "auto"
    seed: int = 0
    negative_prompt: str = ""
    select_on_heldout: bool = True  # keep a block's starting φ where training made it worse on held-out runs

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first option out of range (files are checked when a run starts)."""
        for name in ("model", "prompts", "out", "device", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.rehyat, ReHyAtConfig):
            raise ValueError(f"rehyat must be a ReHyAtConfig, got {self.rehyat!r}")
        check_bool("select_on_heldout", self.select_on_heldout)
        if self.blocks is not None:
            if not isinstance(self.blocks, (list, tuple)):
                raise ValueError(f"blocks must be a list of block indices or null, got {self.blocks!r}")
            for i, block in enumerate(self.blocks):
                check_int(f"blocks[{i}]", block, minimum=0)
                if self.blocks.index(block) != i:
                    raise ValueError(f"blocks lists block {block} twice: {self.blocks}")
        variants = list(self.variants) if isinstance(self.variants, (list, tuple)) else [self.variants]
        if self.variants is not None and (
            "rehyat" not in variants
            or not set(variants) <= set(VARIANTS)
            or len(set(variants)) < len(variants)
        ):
            raise ValueError(
                f"variants must include 'rehyat' and come from {VARIANTS}, each once (or be null: every "
                f"variant the family serves), got {self.variants}"
            )
        check_int("num_frames", self.num_frames, minimum=1)
        if (self.num_frames - 1) % 4:
            raise ValueError(
                f"num_frames must be 4k + 1 (the Wan VAE's frame stride is 4: 5, 25, 81, ...), got "
                f"{self.num_frames}; the sampler would round it and run another length than recorded"
            )
        for name in ("height", "width"):
            check_int(name, getattr(self, name), minimum=16)
            if getattr(self, name) % 16:
                raise ValueError(
                    f"{name} must be a multiple of 16 (Wan's pixel stride), got {getattr(self, name)}"
                )
        check_int("num_inference_steps", self.num_inference_steps, minimum=1)
        self.mass_weight = check_number("mass_weight", self.mass_weight, minimum=0.0)
        check_int("mass_rows", self.mass_rows, minimum=1)
        if self.mass_weight and self.rehyat.attention != "hybrid":
            raise ValueError(
                f"mass_weight={self.mass_weight} matches ReHyAt's linear share: it needs rehyat.attention="
                f"'hybrid', got {self.rehyat.attention!r}"
            )
        self.guidance_scale = check_number("guidance_scale", self.guidance_scale, minimum=0.0)
        if not isinstance(self.capture_steps, (list, tuple)) or not self.capture_steps:
            raise ValueError(f"capture_steps must be non-empty, got {self.capture_steps!r}")
        for i, step in enumerate(self.capture_steps):
            check_int(f"capture_steps[{i}]", step)
        bad_steps = [s for s in self.capture_steps if not 0 <= s < self.num_inference_steps]
        if bad_steps:
            raise ValueError(
                f"capture_steps must be denoising steps in [0, {self.num_inference_steps}), got {bad_steps}"
            )
        for name in ("seeds_per_prompt", "inner_steps"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("heldout", self.heldout, minimum=0)
        self.lr = check_number("lr", self.lr, minimum=0.0)
        dtype_from_name(self.dtype)
        check_int("seed", self.seed, minimum=0, maximum=2**32 - 1)


def _read_prompts(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"prompt file {path} is not UTF-8 text ({error.reason})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check(config: DistillConfig) -> None:
    config.validate()  # again: fields may have changed since the config was built
    if not config.model:
        raise ValueError("model is required: a local diffusers folder of a convertible family")
    model_folder(config.model)  # a local folder or "toy": never looked up on a model hub
    if not config.prompts:
        raise ValueError("prompts is required: a .txt file or a .safetensors file of prompt embeddings")
    if Path(config.prompts).is_dir():
        raise ValueError(f"prompts file {config.prompts} is a folder, not a file")
    if not Path(config.prompts).is_file():
        raise ValueError(f"prompts file {config.prompts} does not exist")
    if not config.prompts.endswith(".safetensors") and not _read_prompts(Path(config.prompts)):
        raise ValueError(f"prompt file {config.prompts} holds no prompts")
    if not config.out:
        raise ValueError("out is empty: give the run folder (it would write into the current folder)")
    real_folder(config.out)  # a file there is refused before the teacher loads


def load_teacher_pipeline(folder: str | Path, dtype: torch.dtype, device: torch.device, need_text: bool):
    """The teacher's family pipeline (``WanPipeline``, ``SkyReelsV2Pipeline``, ``LTXPipeline``,
    ``HunyuanVideoPipeline``, ``CogVideoXPipeline``) from a local folder: transformer and scheduler, and the
    text encoder(s) when needed (HunyuanVideo's second, CLIP, as its ``text_encoder_2/config.json`` names
    it). No VAE: the sampler stops at latents."""
    import diffusers
    import transformers

    from rehyat.models.families import family_of

    folder = model_folder(folder)
    for sub in ("transformer", "scheduler"):
        if not (folder / sub).is_dir():
            raise ValueError(
                f"model folder {folder} has no {sub}/ subfolder (expected a diffusers pipeline folder)"
            )
    transformer = load_transformer(folder / "transformer", torch_dtype=dtype).to(device)
    family = family_of(transformer)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise ValueError(f"model folder {folder} has no scheduler/scheduler_config.json")
    scheduler_class = getattr(diffusers, str(read_json_object(scheduler_file).get("_class_name")), None)
    if not isinstance(scheduler_class, type) or not issubclass(scheduler_class, diffusers.SchedulerMixin):
        raise ValueError(f"{scheduler_file} names no diffusers scheduler class (_class_name)")
    scheduler = scheduler_class.from_pretrained(folder / "scheduler", local_files_only=True)
    pipeline_class = getattr(diffusers, family.pipeline_class)
    suffixes = ["", "_2"] if "text_encoder_2" in inspect.signature(pipeline_class).parameters else [""]
    text: dict[str, Any] = {
        f"{kind}{suffix}": None for kind in ("tokenizer", "text_encoder") for suffix in suffixes
    }
    if need_text:
        for suffix in suffixes:
            encoder, tokenizer = folder / f"text_encoder{suffix}", folder / f"tokenizer{suffix}"
            if not encoder.is_dir() or not tokenizer.is_dir():
                raise ValueError(
                    f"text prompts need {encoder} and {tokenizer}; or pass prompt embeddings as .safetensors"
                )
            encoder_class = family.text_encoder_class if not suffix else _architecture(encoder)
            text[f"tokenizer{suffix}"] = transformers.AutoTokenizer.from_pretrained(
                tokenizer, local_files_only=True
            )
            text[f"text_encoder{suffix}"] = (
                getattr(transformers, encoder_class)
                .from_pretrained(encoder, torch_dtype=dtype, local_files_only=True)
                .to(device)
            )
    pipe = pipeline_class(**text, vae=None, scheduler=scheduler, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    transformer.requires_grad_(False).eval()
    return pipe


def _architecture(encoder: Path) -> str:
    """The transformers class a text encoder folder's ``config.json`` names (its ``architectures``)."""
    import transformers

    names = read_json_object(encoder / "config.json").get("architectures")
    if not isinstance(names, list) or not names or not hasattr(transformers, str(names[0])):
        raise ValueError(f"{encoder / 'config.json'} names no transformers class in 'architectures'")
    return names[0]


def load_prompt_embeddings(
    pipe, path: str | Path, negative_prompt: str, device: torch.device
) -> dict[str, torch.Tensor]:
    """The pipeline's precomputed prompt arguments for the prompts of a .txt or .safetensors file, each
    [P, ...] with row p for prompt p (the family's ``pipeline_prompt_arguments``): prompt_embeds and
    negative_prompt_embeds [P, L, D]; their attention masks [P, L] where the pipeline takes them, from an
    ``encode_prompt`` that returns them (LTX-Video's, HunyuanVideo's; embeddings from a file attend every
    token); HunyuanVideo's pooled CLIP projections [P, D'] (``encode_prompt``'s, or the file's
    ``pooled_prompt_embeds``)."""
    path = Path(path)
    family = family_of(pipe.transformer)
    masks, extra = (None, None), {}
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        if "prompt_embeds" not in tensors:
            raise ValueError(f"{path} has no 'prompt_embeds' tensor (found {sorted(tensors)})")
        positive = tensors["prompt_embeds"]
        negative = tensors.get("negative_prompt_embeds", torch.zeros_like(positive[:1]))
        if positive.dim() != 3 or negative.dim() != 3 or negative.shape[1:] != positive.shape[1:]:
            raise ValueError(f"{path}: prompt embeddings must be [P, L, D] with matching L, D")
        negative = negative.expand(positive.shape[0], -1, -1)
        pooled = tensors.get("pooled_prompt_embeds")
        if (
            pooled is not None
            and "pooled_prompt_embeds" in inspect.signature(family.pipeline_prompt_arguments).parameters
        ):
            if pooled.dim() != 2 or pooled.shape[0] != positive.shape[0]:
                raise ValueError(f"{path}: pooled_prompt_embeds must be [P, D'] with P = {positive.shape[0]}")
            extra["pooled_prompt_embeds"] = pooled
    else:
        prompts = _read_prompts(path)
        if "negative_prompt" in inspect.signature(pipe.encode_prompt).parameters:
            encoded = pipe.encode_prompt(prompts, [negative_prompt] * len(prompts), device=device)
        else:  # HunyuanVideoPipeline: no negative prompt (it samples with its embedded guidance)
            encoded = pipe.encode_prompt(prompts, device=device)
        if len(encoded) == 4:  # (embeds, mask, negative embeds, negative mask)
            positive, positive_mask, negative, negative_mask = encoded
            masks = (positive_mask, negative_mask)
        elif len(encoded) == 3:  # HunyuanVideo: (embeds, pooled CLIP projections, mask)
            positive, pooled, positive_mask = encoded
            negative, masks, extra = None, (positive_mask, None), {"pooled_prompt_embeds": pooled}
        else:
            positive, negative = encoded
    named = (("prompt_embeds", positive), ("negative_prompt_embeds", negative), *extra.items())
    for name, embeds in named:
        bad = (
            [] if embeds is None else (~torch.isfinite(embeds)).flatten(1).any(1).nonzero().flatten().tolist()
        )
        if bad:
            raise NonFiniteError(
                f"{path}: {name} of prompt(s) {bad} hold non-finite values (NaN or inf); the teacher "
                "would sample NaN and every student would train on it"
            )
    arguments = family.pipeline_prompt_arguments(positive, negative, *masks, **extra)
    return {name: value.to(device) for name, value in arguments.items() if value is not None}


def _evaluate_all(
    students: dict[int, dict[str, BlockStudent]],
    captures: dict[int, list[AttentionCapture]],
    device: torch.device,
) -> dict[int, dict[str, dict[str, float]]]:
    return {
        block: {
            name: s.evaluate([c.to(device) for c in captures[block]]).as_dict()
            for name, s in by_variant.items()
        }
        for block, by_variant in students.items()
    }


class _Setup(NamedTuple):
    """What a run needs, checked and loaded before anything is written."""

    env: DistEnv
    device: torch.device
    pipe: Any
    blocks: list[int]
    mine: list[int]
    variants: list[str]
    prompts: dict[str, torch.Tensor]  # the pipeline's prompt arguments, [P, ...] each
    runs: list[tuple[int, int]]


def run_distillation(config: DistillConfig) -> dict:
    """Run stage 1 as configured; return the merged report (on the main process; {} elsewhere).

    Everything is checked (config, files, blocks against the model) before anything is written, and the
    run writes into a staging folder that replaces ``config.out`` whole when it finishes, so a run that
    fails leaves the previous run's folder as it was."""
    setup = _setup(config)
    with _run_folder(config, setup.env) as out:
        return _distill(config, setup, out)


def _setup(config: DistillConfig) -> _Setup:
    _check(config)
    env = init_distributed()
    device = env.device if config.device == "auto" else torch.device(config.device)
    dtype = dtype_from_name(config.dtype)
    pipe = load_teacher_pipeline(
        config.model, dtype, device, need_text=not config.prompts.endswith(".safetensors")
    )
    transformer = pipe.transformer
    _check_video(config, pipe)
    family = family_of(transformer)
    num_blocks = len(family.blocks(transformer))
    blocks = list(range(num_blocks)) if config.blocks is None else sorted(config.blocks)
    if any(not 0 <= b < num_blocks for b in blocks):
        raise ValueError(f"blocks {blocks} out of range for a model with {num_blocks} blocks")
    # The checkpoint _merge writes converts these blocks with this config: refused now, not after the run.
    family.check_conversion(transformer, _student_config(config, blocks), blocks)
    variants = _variants(config, family)
    mine = blocks[env.rank :: env.world]
    prompts = load_prompt_embeddings(pipe, config.prompts, config.negative_prompt, device)
    runs = [(p, s) for s in range(config.seeds_per_prompt) for p in range(prompts["prompt_embeds"].shape[0])]
    if config.heldout >= len(runs):
        raise ValueError(
            f"heldout={config.heldout} leaves no training run out of {len(runs)} (prompts × seeds)"
        )
    return _Setup(env, device, pipe, blocks, mine, variants, prompts, runs)


def _variants(config: DistillConfig, family) -> list[str]:
    """The variants to train: ``config.variants``, or every one the family serves. A joint text-video
    family's captures carry text keys, which only ReHyAt takes (the linear and local baselines do not)."""
    served = ["rehyat", "untrained"] if isinstance(family, JointAdapter) else list(VARIANTS)
    if config.variants is None:
        return served
    refused = [v for v in config.variants if v not in served]
    if refused:
        raise ValueError(
            f"variants {refused}: {family.class_names[0]}'s joint text-video attention is distilled with "
            f"its text keys, which the linear and local baselines do not take; use {served} (or null)"
        )
    return list(config.variants)


def _student_config(config: DistillConfig, blocks: list[int]) -> ReHyAtConfig:
    """The ReHyAt config of the checkpoint a run writes: ``config.rehyat`` on the distilled blocks."""
    return ReHyAtConfig.from_dict({**config.rehyat.to_dict(), "blocks": blocks, "block_ranking": None})


def _check_video(config: DistillConfig, pipe) -> None:
    """ValueError unless the video's size fits the teacher's VAE (LTX-Video: 8k + 1 frames, multiples of
    32 pixels; the config already checked Wan's 4k + 1 and 16)."""
    transformer = pipe.transformer
    temporal, spatial = vae_compression(pipe)
    spatial *= family_of(transformer).patch_size(transformer)[1]
    if (config.num_frames - 1) % temporal:
        raise ValueError(
            f"num_frames must be {temporal}k + 1 for {type(transformer).__name__} (its VAE's frame "
            f"stride is {temporal}), got {config.num_frames}"
        )
    for name in ("height", "width"):
        if getattr(config, name) % spatial:
            raise ValueError(
                f"{name} must be a multiple of {spatial} for {type(transformer).__name__}, got "
                f"{getattr(config, name)}"
            )


def _distill(config: DistillConfig, setup: _Setup, out: Path) -> dict:
    """The run itself, writing into ``out`` (the staging folder of the run folder)."""
    from tqdm.auto import tqdm

    env, device, pipe, blocks, mine, variants, prompts, runs = setup
    transformer = pipe.transformer
    family = family_of(transformer)
    train_runs, heldout_runs = runs[: len(runs) - config.heldout], runs[len(runs) - config.heldout :]
    (out / "blocks").mkdir(parents=True, exist_ok=True)
    if env.is_main:
        write_config(config, out / "config.json")

    attn = family.attention(transformer, 0)
    heads, head_dim = attn.heads, attn.inner_dim // attn.heads
    recorder = AttentionRecorder(transformer, mine, store_device=device)
    torch.manual_seed(config.seed)
    students = {
        b: {
            v: BlockStudent(
                v,
                config.rehyat,
                heads,
                head_dim,
                lr=config.lr,
                device=device,
                family=family,
                feature_input=recorder.feature_input,
                mass_weight=config.mass_weight if v == "rehyat" else 0.0,
                mass_rows=config.mass_rows,
                seed=config.seed * 1_000_003 + b,
            )
            for v in variants
        }
        for b in mine
    }
    log = MetricsLogger(out / "logs" / f"rank-{env.rank}")
    capture_steps = set(config.capture_steps)
    heldout: dict[int, list[AttentionCapture]] = {b: [] for b in mine}
    last_train: dict[int, list[AttentionCapture]] = {b: [] for b in mine}
    step_count = 0

    def sample(prompt: int, seed: int, on_step) -> None:
        """One teacher sampler run; ``on_step(step)`` runs after each denoising step."""

        def callback(_pipe, step: int, _t, kwargs: dict) -> dict:
            on_step(step)
            recorder.active = (step + 1) in capture_steps
            return kwargs

        recorder.active = 0 in capture_steps
        pipe(
            **{name: value[prompt : prompt + 1] for name, value in prompts.items()},
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            generator=torch.Generator(device="cpu").manual_seed(config.seed * 100_003 + 7919 * seed + prompt),
            output_type="latent",
            callback_on_step_end=callback,
        )
        recorder.active = False

    def keep_heldout(step: int) -> None:
        if step in capture_steps:
            for block, items in recorder.take().items():
                heldout[block] += [c.to("cpu") for c in items]

    def train_on_captures(step: int, run: tuple[int, int]) -> None:
        nonlocal step_count
        if step not in capture_steps:
            return
        captured = recorder.take()
        tic, first = time.perf_counter(), step_count
        with torch.enable_grad():
            for block, items in captured.items():
                last_train[block] = [c.to("cpu") for c in items]
                for capture in items:
                    for _ in range(config.inner_steps):
                        try:
                            losses = {
                                n: s.train_step(capture) for n, s in students[block].items() if s.trainable
                            }
                        except NonFiniteError as error:
                            raise _non_finite_capture(block, step, run, capture, error) from error
                        step_count += 1
                        log.log(
                            step_count,
                            block=block,
                            denoising_step=step,
                            **{f"loss/{n}": v for n, v in losses.items()},
                        )
        progress.set_postfix(
            block_steps_per_s=f"{(step_count - first) / max(time.perf_counter() - tic, 1e-9):.2f}"
        )

    with recorder.installed():
        progress = tqdm(train_runs, desc=f"distill (rank {env.rank})", disable=env.local_rank != 0)
        for prompt, seed in progress:
            sample(prompt, seed, partial(train_on_captures, run=(prompt, seed)))
        for prompt, seed in heldout_runs:
            sample(prompt, seed, keep_heldout)
    log.close()

    # Model selection on the held-out runs: a block whose trained φ does worse there than the φ it
    # started from keeps the starting φ, so stage 1 never hands stage 2 a block worse than untrained.
    selection = {
        block: students[block]["rehyat"].keep_better_than_initial([c.to(device) for c in heldout[block]])
        for block in mine
        if config.heldout and config.select_on_heldout and "rehyat" in students[block]
    }
    train_eval = _evaluate_all(students, last_train, device)
    heldout_eval = _evaluate_all(students, heldout, device) if config.heldout else train_eval
    for block in mine:  # every block checked before any is written
        _check_finite_results(block, train_eval[block], heldout_eval[block], students[block]["rehyat"])
    for block in mine:
        result = {
            "block": block,
            "train": train_eval[block],
            "heldout": heldout_eval[block],
            "train_steps": step_count,
            "captures_heldout": len(heldout[block]),
            "selection": selection.get(block, {}),
        }
        atomic_write_text(out / "blocks" / f"block-{block:03d}.json", json.dumps(result, indent=2))
        atomic_write_tensors(
            out / "blocks" / f"block-{block:03d}.safetensors", students[block]["rehyat"].feature_map_state()
        )
    if env.world > 1:
        torch.distributed.barrier()
    if not env.is_main:
        return {}
    return _merge(config, out, transformer, blocks, variants)


@contextmanager
def _run_folder(config: DistillConfig, env) -> Iterator[Path]:
    """The folder a run writes into: on the main process a staging folder beside ``config.out`` that
    replaces it whole when the run finishes (:func:`rehyat.utils.replacing_folder`; a failed run leaves
    the previous one as it was, a second run into the folder is refused), shared with the other
    processes. The previous run's entries that this one does not write are kept, its ``config.json`` as
    ``config.<UTC time>.json`` when it differs."""
    if not env.is_main:
        yield Path(_shared(None))
        return
    out = Path(config.out)
    with replacing_folder(out, carry_over=True, wait=False) as staging:
        _shared(str(staging))
        yield staging
        _keep_previous_config(real_folder(out) / "config.json", staging)


def _shared(value: str | None) -> str | None:
    """The main process's ``value`` on every process."""
    if not torch.distributed.is_initialized():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _keep_previous_config(previous: Path, staging: Path) -> None:
    """Copy the previous run's ``config.json`` into ``staging`` as ``config.<UTC time>.json`` when it
    differs from the new one (the old folder stays untouched until the swap)."""
    if not previous.is_file() or previous.is_symlink():
        return
    if previous.read_bytes() == (staging / "config.json").read_bytes():
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept, number = staging / f"config.{stamp}.json", 1
    while kept.exists() or (previous.parent / kept.name).exists():
        kept, number = staging / f"config.{stamp}-{number}.json", number + 1
    shutil.copyfile(previous, kept)


def _non_finite_capture(
    block: int, step: int, run: tuple[int, int], capture: AttentionCapture, error: NonFiniteError
) -> NonFiniteError:
    """The error of a student step that went non-finite, saying where and whether the teacher's capture did."""
    bad = [name for name in ("q", "k", "v", "y") if not torch.isfinite(getattr(capture, name)).all()]
    cause = (
        f"the captured {', '.join(bad)} of the teacher hold non-finite values"
        if bad
        else "the captured attention is finite, so the student diverged (try a lower lr)"
    )
    return NonFiniteError(
        f"block {block}, denoising step {step} of sampler run (prompt {run[0]}, seed {run[1]}): {error}; "
        f"{cause}. Stopped before the optimizer step: no φ or ranking is written"
    )


def _check_finite_results(
    block: int, train: dict[str, dict], heldout: dict[str, dict], student: BlockStudent
) -> None:
    """Raise :class:`NonFiniteError` naming the block when an error metric or its φ is NaN or inf."""
    for split, evaluation in (("train", train), ("held-out", heldout)):
        for variant, metrics in evaluation.items():
            if not (math.isfinite(metrics["l1"]) and math.isfinite(metrics["rel_error"])):
                raise NonFiniteError(
                    f"block {block}: the {variant} variant's {split} L1 is {metrics['l1']}: the teacher's "
                    f"attention captured for this block holds non-finite values; no φ or ranking is written"
                )
    bad = first_nonfinite(student.feature_map_state())
    if bad is not None:
        raise NonFiniteError(f"block {block}: φ weight {bad} is not finite; no φ or ranking is written")


def _merge(config: DistillConfig, out: Path, transformer, blocks: list[int], variants: list[str]) -> dict:
    """Combine per-block results into the report, the ranking and a ReHyAt checkpoint."""
    from rehyat.models import convert, save_rehyat

    results = {b: json.loads((out / "blocks" / f"block-{b:03d}.json").read_text()) for b in blocks}
    for block, result in results.items():
        if not math.isfinite(result["heldout"]["rehyat"]["l1"]):
            raise NonFiniteError(f"block {block}: its held-out L1 is not finite; no ranking is written")
    ranking = sorted(blocks, key=lambda b: results[b]["heldout"]["rehyat"]["l1"])
    report = {"config": json.loads((out / "config.json").read_text()), "blocks": results, "ranking": ranking}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(
        out / "ranking.json",
        json.dumps({"block_ranking": ranking, "metric": "heldout L1 of ReHyAt"}, indent=2),
    )
    atomic_write_text(out / "report.md", _markdown(results, ranking, variants))

    student_model = convert(transformer, _student_config(config, blocks))
    family = family_of(student_model)
    for b in blocks:
        attn = family.attention(student_model, b)
        attn.load_state_dict(
            {
                **attn.state_dict(),
                **load_file(out / "blocks" / f"block-{b:03d}.safetensors"),
            }
        )
    save_rehyat(student_model, out / "rehyat")
    return report


def _markdown(results: dict[int, dict], ranking: list[int], variants: list[str]) -> str:
    lines = [
        "# Stage-1 distillation report",
        "",
        "Held-out L1 / relative error per block and variant (train values in the JSON). "
        "`guarded` = fraction of query rows where the denominator guard fired (ReHyAt student); `mass` = its "
        "out-of-window mass error, mean |log(1 + nL/nS) − log(1 + the teacher's)| on sampled rows "
        "(0: the linear part carries the share of attention the teacher puts outside the window).",
        "",
        "| block | rank | " + " | ".join(f"{v} L1 | {v} rel" for v in variants) + " | guarded | mass |",
        "|---|---|" + "---|---|" * len(variants) + "---|---|",
    ]
    for block, result in sorted(results.items()):
        cells = [
            f"{result['heldout'][v]['l1']:.4g} | {result['heldout'][v]['rel_error']:.3f}" for v in variants
        ]
        guarded = result["heldout"]["rehyat"]["guarded_fraction"]
        mass = result["heldout"]["rehyat"].get("mass_error")
        mass_cell = "–" if mass is None else f"{mass:.3f}"
        lines.append(
            f"| {block} | {ranking.index(block) + 1} | "
            + " | ".join(cells)
            + f" | {guarded:.2%} | {mass_cell} |"
        )
    lines += ["", f"Ranking (lowest held-out ReHyAt L1 first): {ranking}", ""]
    return "\n".join(lines)
