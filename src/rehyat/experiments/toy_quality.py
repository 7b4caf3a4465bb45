"""``rehyat bench toy``: the toy quality table — ReHyAt and its ablations on the toy world.

Every student starts from the teacher (``--teacher``: a toy teacher folder, by default the bundled
one) and gets the same budget: stage 1 (φ of every converted block distilled from the teacher's
attention, for the variant's own op and geometry) and then stage 2 (the same flow-matching fine-tune:
clips, steps, batch, lr). The teacher folder's space (:func:`rehyat.toy.model.toy_space`) sets the clips
both stages see, the latent frames sampled (chunk sizes Tc and To count latent frames too) and the world
ToyBench reads the videos in. Then the teacher and every student sample the same random prompts from the
same noise with the same guidance and are scored by ToyBench, motion first (direction, speed, motion
smoothness, size and shape drift, first-frame jump; then adherence, temporal consistency, PSNR/SSIM
against the teacher), each with a paired-bootstrap interval against the teacher; the causal all-blocks
students sample with the recurrent forward, the others with the parallel one. The ReHyAt students also
generate videos ``long_factor``× the training length, recurrently.

Rows: teacher; ReHyAt Tc=3/To=1 causal, all blocks; ReHyAt To=0 and To=2; bidirectional; half the
blocks (the best half by stage-1 held-out error; stage 1 is shared with the all-blocks student because
blocks are distilled independently); ReHyAt with the non-negative φ variant, and both φ variants
reading q and k with the spatial RoPE only (``feature_rotary="spatial"``); local-only (no φ: stage 2
only); linear-only; uniform hybrid R=2; and two controls: the unconverted teacher through the same
stage 2, which separates what stage 2 itself does to the model from what the conversion costs, and
exact block-causal softmax (To = every past frame, no φ) through the same stage 2, the level a causal
student is expected to reach at this budget (a reference, not a bound). ``--set KEY=VALUE`` overrides a setting.
Writes ``OUT/toybench.json``, ``OUT/toybench.md`` and ``OUT/toybench.png``; work files (checkpoints,
per-model results, so an interrupted run resumes where it stopped) go to ``--work``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rehyat.experiments.common import read_json, write_markdown_keeping_notes
from rehyat.settings import replace_config
from rehyat.toy.evaluate import toy_prompts
from rehyat.toy.model import (
    ToySpace,
    bundled_teacher,
    load_text_encoder,
    load_toy_model,
    prompt_embeddings,
    toy_space,
)
from rehyat.toy.recipe import QUICK as RECIPE_QUICK
from rehyat.toy.recipe import RecipeSettings, distill_student, finetune_dataset, finetune_student, sample_with
from rehyat.toy.toybench import evaluate_videos
from rehyat.toy.world import world_name


@dataclass(frozen=True)
class Student:
    name: str
    label: str
    rehyat: dict[str, Any] = field(default_factory=dict)  # ReHyAtConfig fields beyond ReHyAtConfig.paper()
    distill: bool = True
    half_blocks: bool = False
    convert: bool = True  # False: the plain teacher through the same stage 2 (a control)
    settings: dict[str, Any] = field(default_factory=dict)  # QualitySettings fields for this student only


#: An overlap reaching every past frame of a training clip (To = its latent frames − 1 in the teacher's space).
EVERY_PAST_FRAME = "every_past_frame"

STUDENTS = (
    Student("teacher_finetuned", "softmax teacher + stage 2 (control)", distill=False, convert=False),
    Student("rehyat", "ReHyAt Tc=3 To=1 causal"),
    Student("rehyat_nonneg", "ReHyAt, non-negative φ", {"feature_nonnegative": True}),
    # φ without the temporal RoPE: at 4× the training length φ then meets no frame angle it has not seen.
    Student("rehyat_spatial", "ReHyAt, φ with spatial RoPE only", {"feature_rotary": "spatial"}),
    Student(
        "rehyat_nonneg_spatial",
        "ReHyAt, non-negative φ with spatial RoPE only",
        {"feature_nonnegative": True, "feature_rotary": "spatial"},
    ),
    Student("rehyat_to0", "ReHyAt To=0", {"overlap_frames": 0}),
    # The library default (non-negative φ on spatial-RoPE inputs) with two ideas against the lost motion:
    # output distillation from the teacher in stage 2, and an overlap that shows velocity (To=2).
    Student(
        "rehyat_ns_distill",
        "ReHyAt default φ + output distillation (λ=1)",
        {"feature_nonnegative": True, "feature_rotary": "spatial"},
        settings={"finetune_teacher_weight": 1.0},
    ),
    Student(
        "rehyat_ns_to2",
        "ReHyAt default φ, To=2",
        {"feature_nonnegative": True, "feature_rotary": "spatial", "overlap_frames": 2},
    ),
    Student(
        "rehyat_ns_to2_distill",
        "ReHyAt default φ, To=2 + output distillation (λ=1)",
        {"feature_nonnegative": True, "feature_rotary": "spatial", "overlap_frames": 2},
        settings={"finetune_teacher_weight": 1.0},
    ),
    Student(
        "rehyat_ns_tc5_to2",
        "ReHyAt default φ, Tc=5 To=2",
        {"feature_nonnegative": True, "feature_rotary": "spatial", "chunk_frames": 5, "overlap_frames": 2},
    ),
    # One-frame chunks: a causal sliding window of To + 1 frames, the same for every frame (no chunk
    # boundary where an object could jump); To=3 costs the softmax FLOPs of Tc=3 To=1.
    Student(
        "rehyat_ns_tc1_to2",
        "ReHyAt default φ, Tc=1 To=2 (sliding window)",
        {"feature_nonnegative": True, "feature_rotary": "spatial", "chunk_frames": 1, "overlap_frames": 2},
    ),
    Student(
        "rehyat_ns_tc1_to3",
        "ReHyAt default φ, Tc=1 To=3 (sliding window)",
        {"feature_nonnegative": True, "feature_rotary": "spatial", "chunk_frames": 1, "overlap_frames": 3},
    ),
    # The start of a video in the sliding window, where frame 0 sees only itself: the first frame kept in
    # every window (an anchor, as streaming models keep a sink), or a first chunk of 3 frames attended
    # jointly (docs/method.md §2.1, §2.2).
    Student(
        "rehyat_ns_tc1_to3_anchor1",
        "ReHyAt default φ, Tc=1 To=3 + anchor frame",
        {
            "feature_nonnegative": True,
            "feature_rotary": "spatial",
            "chunk_frames": 1,
            "overlap_frames": 3,
            "anchor_frames": 1,
        },
    ),
    Student(
        "rehyat_ns_tc1_to3_first3",
        "ReHyAt default φ, Tc=1 To=3, first chunk of 3",
        {
            "feature_nonnegative": True,
            "feature_rotary": "spatial",
            "chunk_frames": 1,
            "overlap_frames": 3,
            "first_chunk_frames": 3,
        },
    ),
    # Stage 1 that also matches the share of attention the teacher puts outside the window (the linear
    # part's mass; L1 on outputs alone leaves it near 0: docs/method.md §7.1).
    Student(
        "rehyat_ns_mass",
        "ReHyAt default φ + stage-1 mass matching (λ=1)",
        {"feature_nonnegative": True, "feature_rotary": "spatial"},
        settings={"distill_mass_weight": 1.0},
    ),
    Student(
        "rehyat_ns_tc1_to3_mass",
        "ReHyAt default φ, Tc=1 To=3 + stage-1 mass matching (λ=1)",
        {"feature_nonnegative": True, "feature_rotary": "spatial", "chunk_frames": 1, "overlap_frames": 3},
        settings={"distill_mass_weight": 1.0},
    ),
    # Stage 2 alone halves the linear part's share again; its mass term holds it at the share the
    # student's own softmax scores put outside the window (docs/method.md §7.1).
    Student(
        "rehyat_ns_tc1_to3_mass2",
        "ReHyAt default φ, Tc=1 To=3 + mass matching in stages 1 and 2 (λ=1)",
        {"feature_nonnegative": True, "feature_rotary": "spatial", "chunk_frames": 1, "overlap_frames": 3},
        settings={"distill_mass_weight": 1.0, "finetune_mass_weight": 1.0},
    ),
    # The toy's latent frame is one pixel frame (Wan's holds four), so one overlap frame shows where an
    # object is but not where it moves; two show its velocity across the chunk boundary.
    Student("rehyat_to2", "ReHyAt To=2", {"overlap_frames": 2}),
    Student("bidirectional", "ReHyAt bidirectional", {"causal": False}),
    Student("half_blocks", "ReHyAt, half the blocks", half_blocks=True),
    Student("local", "local-only", {"attention": "local"}, distill=False),
    Student("linear", "linear-only", {"attention": "linear"}),
    Student("uniform_hybrid", "uniform hybrid R=2", {"attention": "uniform_hybrid", "uniform_stride": 2}),
    # The reference for causal students: the window reaches back over every past frame of a clip, so
    # the linear part is empty and each chunk attends with exact softmax to itself and all before it.
    Student(
        "causal_softmax",
        "exact causal softmax (reference for causal students)",
        {"overlap_frames": EVERY_PAST_FRAME},
        distill=False,
    ),
)
METRICS = ("adherence", "colour_accuracy", "shape_accuracy", "direction_accuracy")
QUALITY = ("temporal_consistency", "motion_smoothness", "psnr", "ssim")


@dataclass
class QualitySettings(RecipeSettings):
    """The demo's stage sizes, larger: one student takes about three minutes on an H100/H200.

    Stage 2 runs 2,000 steps: at 400 every causal student was still improving by several points
    (``bench/results/toybench_budget``, measured on the first toy world). With 512 prompts (128 long
    videos) a paired difference between two models is good to about ±2.4 points (95%, measured); 48
    prompts would leave about ±8.
    """

    distill_prompts: int = 12
    distill_heldout: int = 2
    distill_variants: tuple[str, ...] = ("rehyat",)
    distill_lr: float = 1e-4  # 3e-4 let single blocks of signed-φ students blow up on held-out inputs
    finetune_clips: int = 2048
    finetune_steps: int = 2000
    finetune_batch: int = 16
    finetune_ema: float | None = 0.99
    eval_prompts: int = 512
    sample_steps: int = 20
    sample_batch: int = 128
    long_videos: int = 128
    progress: bool = False
    # ``seed`` seeds training (stage-1 prompts, clips, initialisation, batches); ``eval_seed`` the
    # evaluation prompts and noise, so students trained from other seeds are scored on the same videos.
    eval_seed: int = 0


#: Students that also generate videos ``long_factor``× the training length (recurrently).
LONG_VIDEO_STUDENTS = (
    "rehyat",
    "rehyat_nonneg",
    "rehyat_spatial",
    "rehyat_nonneg_spatial",
    "rehyat_ns_distill",
    "rehyat_ns_to2",
    "rehyat_ns_to2_distill",
    "rehyat_ns_tc5_to2",
    "rehyat_ns_tc1_to2",
    "rehyat_ns_tc1_to3",
    "rehyat_ns_tc1_to3_anchor1",
    "rehyat_ns_tc1_to3_first3",
    "rehyat_ns_mass",
    "rehyat_ns_tc1_to3_mass",
    "rehyat_ns_tc1_to3_mass2",
)
#: The ReHyAt students the targets are checked for (each where it was run), with their names there.
TARGET_STUDENTS = {
    "rehyat": "ReHyAt",
    "rehyat_nonneg": "ReHyAt non-negative φ",
    "rehyat_spatial": "ReHyAt spatial-RoPE φ",
    "rehyat_nonneg_spatial": "ReHyAt non-negative spatial-RoPE φ",
    "rehyat_ns_distill": "ReHyAt default φ + output distillation",
    "rehyat_ns_to2": "ReHyAt default φ, To=2",
    "rehyat_ns_to2_distill": "ReHyAt default φ, To=2 + output distillation",
    "rehyat_ns_tc5_to2": "ReHyAt default φ, Tc=5 To=2",
    "rehyat_ns_tc1_to2": "ReHyAt default φ, Tc=1 To=2",
    "rehyat_ns_tc1_to3": "ReHyAt default φ, Tc=1 To=3",
    "rehyat_ns_tc1_to3_anchor1": "ReHyAt default φ, Tc=1 To=3 + anchor frame",
    "rehyat_ns_tc1_to3_first3": "ReHyAt default φ, Tc=1 To=3, first chunk of 3",
    "rehyat_ns_mass": "ReHyAt default φ + stage-1 mass matching",
    "rehyat_ns_tc1_to3_mass": "ReHyAt default φ, Tc=1 To=3 + stage-1 mass matching",
    "rehyat_ns_tc1_to3_mass2": "ReHyAt default φ, Tc=1 To=3 + stage-1 and stage-2 mass matching",
}

QUICK = QualitySettings(**{**asdict(RECIPE_QUICK), "distill_variants": ("rehyat",), "progress": False})


def rehyat_fields(student: Student, space: ToySpace) -> dict[str, Any]:
    """The student's ReHyAtConfig fields with :data:`EVERY_PAST_FRAME` resolved for ``space``."""
    every = space.clip_frames - 1
    return {k: every if v == EVERY_PAST_FRAME else v for k, v in student.rehyat.items()}


def _student_config(student: Student, ranking: list[int] | None, space: ToySpace):
    from rehyat.models import ReHyAtConfig

    fields = rehyat_fields(student, space)
    if student.half_blocks:
        if ranking is None:
            raise ValueError("the half-blocks student needs the all-blocks student's stage-1 ranking")
        blocks = len(ranking) // 2
        return ReHyAtConfig.paper(blocks=blocks, block_ranking=ranking, **fields)
    return ReHyAtConfig.paper(**fields)


def _stage1_checkpoint(student: Student, teacher: Path, work: Path, settings: QualitySettings, device: str):
    """The student's checkpoint before stage 2 and its stage-1 report ({} where nothing is distilled);
    None for a control that is not converted."""
    if not student.convert:
        return None, {}
    folder = work / student.name / "stage1"
    summary = work / student.name / "stage1.json"
    if (folder / "rehyat_config.json").exists() and summary.exists():
        return folder, json.loads(summary.read_text())
    folder, report = _make_stage1(student, teacher, work, folder, settings, device)
    summary.write_text(json.dumps(report, indent=2) + "\n")
    return folder, report


def _make_stage1(
    student: Student, teacher: Path, work: Path, folder: Path, settings: QualitySettings, device: str
):
    from rehyat.models import convert_wan, feature_maps, save_rehyat

    if folder.exists():  # left half-made by an interrupted run
        shutil.rmtree(folder)
    if student.half_blocks:  # the all-blocks student's φ for the best half of the blocks
        source = work / "rehyat"
        if not (source / "distill" / "ranking.json").exists():
            raise ValueError(f"half_blocks reuses the 'rehyat' student's stage 1, which {source} lacks")
        ranking = json.loads((source / "distill" / "ranking.json").read_text())["block_ranking"]
        full = load_toy_model(teacher, source / "stage1", torch.device("cpu"))
        model = convert_wan(
            load_toy_model(teacher, None, torch.device("cpu")),
            _student_config(student, ranking, toy_space(teacher)),
        )
        trained = feature_maps(full)
        for block, (phi_q, phi_k) in feature_maps(model).items():
            phi_q.load_state_dict(trained[block][0].state_dict())
            phi_k.load_state_dict(trained[block][1].state_dict())
        save_rehyat(model, folder)
        return folder, {"ranking": ranking, "blocks": sorted(feature_maps(model))}
    config = _student_config(student, None, toy_space(teacher))
    if not student.distill:
        save_rehyat(convert_wan(load_toy_model(teacher, None, torch.device("cpu")), config), folder)
        return folder, {}
    report = distill_student(teacher, work / student.name / "distill", settings, device, config)
    (work / student.name / "distill" / "rehyat").rename(folder)
    return folder, _heldout(report)


def _heldout(report: dict) -> dict:
    """Stage 1 in brief, per block: held-out relative error of the attention output, the fraction of
    rows whose denominator hit the guard, and the out-of-window mass error (rehyat.training.mass)."""
    blocks = report["blocks"].items()
    return {
        "heldout_rel_error": {str(b): r["heldout"]["rehyat"]["rel_error"] for b, r in blocks},
        "heldout_guarded_fraction": {str(b): r["heldout"]["rehyat"]["guarded_fraction"] for b, r in blocks},
        "heldout_mass_error": {str(b): r["heldout"]["rehyat"].get("mass_error") for b, r in blocks},
    }


def _load_student(student: Student, teacher: Path, final: Path, device: torch.device):
    if student.convert:
        return load_toy_model(teacher, final, device)
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(final).to(device).eval()


def _recurrent(student: Student) -> bool:
    if not student.convert:
        return False
    config = {"overlap_frames": 1, "causal": True, "attention": "hybrid", **student.rehyat}
    return config["causal"] and config["attention"] == "hybrid" and not student.half_blocks


#: The table's columns, motion first, with their headings and decimals.
COLUMNS = {
    "direction_accuracy": ("direction", 1),
    "speed_accuracy": ("speed", 1),
    "motion_smoothness": ("motion smoothness", 1),
    "size_drift": ("size drift", 3),
    "shape_drift": ("shape drift", 3),
    "first_jump": ("first-frame jump", 3),
    "adherence": ("adherence", 1),
    "temporal_consistency": ("temporal consistency", 1),
    "psnr": ("PSNR (dB)", 1),
    "ssim": ("SSIM", 3),
}
#: Per-clip scores kept in each result (in prompt order), so every column and target carries an interval.
PER_CLIP = tuple(COLUMNS)
#: Columns compared with the teacher's video from the same noise: their interval is of the mean itself.
AGAINST_TEACHER = ("psnr", "ssim")


def _scores(videos, prompts, reference=None, *, world) -> dict[str, Any]:
    """ToyBench means of ``videos`` (of ``world``), plus ``per_clip``: the :data:`PER_CLIP` scores of
    every clip (PSNR and SSIM with ``reference`` only)."""
    result = evaluate_videos(videos, prompts, reference=reference, world=world)
    clips = result.pop("per_clip")
    result["per_clip"] = {key: [clip[key] for clip in clips] for key in PER_CLIP if key in clips[0]}
    return result


def difference_interval(
    first: list[float], second: list[float], *, paired: bool, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap interval of mean(first) − mean(second) (10,000 resamples, fixed seed).

    ``paired``: the two lists score the same prompts from the same noise (two models), so prompts are
    resampled together, which removes the prompts' own difficulty from the spread.
    """
    from scipy.stats import bootstrap

    if paired and len(first) != len(second):
        raise ValueError(f"paired samples need equal lengths, got {len(first)} and {len(second)}")
    if not (np.isfinite(first).all() and np.isfinite(second).all()):
        raise ValueError("per-clip scores must be finite numbers (a NaN or inf would void the interval)")
    result = bootstrap(
        (np.asarray(first, float), np.asarray(second, float)),
        lambda a, b, axis: a.mean(axis) - b.mean(axis),
        paired=paired,
        vectorized=True,
        n_resamples=10_000,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(0),  # `rng` from SciPy 1.15 on; this works in every version
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def run_quality(
    out: Path,
    work: Path,
    device: str,
    settings: QualitySettings,
    only: list[str] | None = None,
    report_only: bool = False,
    reuse: Path | None = None,
    teacher: Path | None = None,
) -> dict:
    """Train and score the students (or, with ``report_only``, gather those already in ``work``) and
    write the table. ``reuse``: an earlier table's toybench.json made with the same settings and teacher,
    whose students are taken as they are (only the others are trained); the table says which.
    ``teacher``: the toy teacher folder every student starts from (default: the bundled one); its space
    sets the clips, the latent frames sampled (long videos: ``long_factor`` × a clip's) and the world."""
    from rich.console import Console

    console = Console()
    teacher = bundled_teacher() if teacher is None else Path(teacher)
    space = toy_space(teacher)
    encoder = load_text_encoder(teacher)
    torch_device = torch.device(device)
    prompts = toy_prompts(settings.eval_prompts, settings.eval_seed + 3)
    embeds = prompt_embeddings(encoder, prompts)
    long_prompts, long_embeds = prompts[: settings.long_videos], embeds[: settings.long_videos]
    frames = space.clip_frames
    long_frames = settings.long_factor * frames
    identity = _teacher_identity(teacher)
    _claim_work_folder(work, settings)
    _claim_teacher(work, identity)
    reused = reuse_results(reuse, work, settings, identity) if reuse is not None else None

    def scores(videos, prompts, reference=None) -> dict[str, Any]:
        return _scores(videos, prompts, reference, world=space.world)

    console.rule("teacher")

    def teacher_videos(name: str, embeds: torch.Tensor, frames: int, first_seed: int) -> list[torch.Tensor]:
        def sample() -> list[torch.Tensor]:
            model = load_toy_model(teacher, None, torch_device)
            return sample_with(
                model, embeds, settings, frames=frames, first_seed=first_seed, recurrent=False, space=space
            )

        path = work / "teacher" / f"{name}.safetensors"
        return cached_videos(path, sample, len(embeds), space.video_frames(frames))

    reference = teacher_videos("short", embeds, frames, 1000)
    teacher_scores = _cached_scores(work / "teacher" / "short.json", lambda: scores(reference, prompts))
    results: dict[str, Any] = {"teacher": {"label": "teacher (softmax)", "short": teacher_scores}}
    if device == "cuda":  # full attention at 4× length: quadratic, too slow for a CPU run
        long = teacher_videos("long", long_embeds, long_frames, 2000)
        results["teacher"]["long"] = _cached_scores(
            work / "teacher" / "long.json", lambda: scores(long, long_prompts)
        )

    dataset = None
    for student in STUDENTS:
        if only and student.name not in only:
            continue
        done = work / student.name / "result.json"
        if done.exists():
            results[student.name] = json.loads(done.read_text())
            continue
        if report_only:
            continue
        console.rule(student.label)
        dataset = dataset or finetune_dataset(work, settings, teacher)
        tic = time.perf_counter()
        own = replace(settings, **student.settings)
        checkpoint, stage1 = _stage1_checkpoint(student, teacher, work, own, device)
        stage1_s = time.perf_counter() - tic
        final = finetune_student(teacher, checkpoint, work / student.name / "finetune", dataset, own, device)
        stage2_s = time.perf_counter() - tic - stage1_s
        model = _load_student(student, teacher, final, torch_device)
        recurrent = _recurrent(student)
        videos = sample_with(
            model, embeds, settings, frames=frames, first_seed=1000, recurrent=recurrent, space=space
        )
        result = {
            "label": student.label,
            "rehyat": rehyat_fields(student, space),
            "settings": student.settings,
            "sampled": "recurrent" if recurrent else "parallel",
            "short": scores(videos, prompts, reference),
            "stage1": stage1,
            "seconds": {"stage1": stage1_s, "stage2": stage2_s},
        }
        if student.name in LONG_VIDEO_STUDENTS:
            long = sample_with(
                model,
                long_embeds,
                settings,
                frames=long_frames,
                first_seed=2000,
                recurrent=True,
                space=space,
            )
            result["long"] = scores(long, long_prompts)
        done.write_text(json.dumps(result, indent=2) + "\n")
        results[student.name] = result

    from rehyat.experiments.common import environment

    report = {
        "environment": environment(),
        "device": device,
        "settings": asdict(settings),
        "teacher": {"folder": str(teacher), **identity},
        "frames": frames,
        "long_frames": long_frames,
        "video_frames": space.video_frames(frames),
        "long_video_frames": space.video_frames(long_frames),
        "models": results,
        "targets": check_targets(results),
        "intervals": _intervals(results),
    }
    if reused is not None:
        reused["students"] = [name for name in reused["students"] if name in results]
        report["reused"] = reused
    out.mkdir(parents=True, exist_ok=True)
    (out / "toybench.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_markdown(report, out)
    console.print(f"[bold]table:[/bold] {out / 'toybench.md'}")
    return report


def _teacher_identity(teacher: Path) -> dict[str, str]:
    """What a table's numbers depend on in a teacher folder: its world and the sha256 of its transformer
    (config and weights), so the same teacher in another folder or on another machine is the same."""
    import hashlib

    digest = hashlib.sha256()
    folder = Path(teacher) / "transformer"
    for file in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return {"world": toy_space(teacher).name, "sha256": digest.hexdigest()}


def _claim_teacher(work: Path, identity: dict[str, str]) -> None:
    """Results in ``work`` are reused only for the teacher that made them (recorded on first use)."""
    record = work / "teacher.json"
    if record.exists() and json.loads(record.read_text()) != identity:
        raise ValueError(
            f"{work} holds results made from another teacher ({record}); pass another --work or delete it"
        )
    record.write_text(json.dumps(identity, indent=2) + "\n")


def _cached_scores(path: Path, score) -> dict[str, Any]:
    """The scores saved at ``path`` (JSON), or ``score()``'s, saved there first (the teacher's are the
    same for every process of a run)."""
    if path.is_file():
        return json.loads(path.read_text())
    result = score()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result) + "\n")
    partial.replace(path)
    return result


def cached_videos(path: Path, sample, count: int, frames: int) -> list[torch.Tensor]:
    """The ``count`` videos of ``frames`` frames saved at ``path`` (safetensors), or ``sample()``'s,
    saved there atomically first.

    The teacher's videos depend only on the settings, which the work folder is claimed for, so processes
    that train students side by side can share one sampling of the teacher (copy the file into their
    work folders) instead of each repeating it. A file of other videos is an error, not resampled.
    """
    from safetensors.torch import load_file

    from rehyat.utils import atomic_write_tensors

    if path.is_file():
        videos = load_file(path)["videos"]
        if videos.shape[0] != count or videos.shape[2] != frames:
            raise ValueError(
                f"{path} holds {videos.shape[0]} videos of {videos.shape[2]} frames, this run needs "
                f"{count} of {frames}: it comes from another run; delete it"
            )
        return list(videos.unbind(0))
    videos = sample()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_tensors(path, {"videos": torch.stack(videos)})
    return videos


def reuse_results(
    path: Path, work: Path, settings: QualitySettings, identity: dict[str, str] | None = None
) -> dict[str, Any]:
    """Put the students of an earlier table (its toybench.json) into ``work`` as finished results,
    unless ``work`` already has them; the table must come from the same settings and the same teacher
    (``identity``, :func:`_teacher_identity`; default and for tables that name none: the bundled one)."""
    if not path.is_file():
        raise ValueError(f"--reuse {path}: no such file (an earlier run's toybench.json)")
    earlier = read_json(path)
    bundled = None
    if identity is None or "teacher" not in earlier:
        bundled = _teacher_identity(bundled_teacher())
    made_from = {k: v for k, v in earlier.get("teacher", bundled).items() if k != "folder"}
    made_from["world"] = world_name(made_from["world"])  # a table of before the worlds' names
    if made_from != (identity or bundled):
        raise ValueError(
            f"--reuse {path}: made from another teacher ({made_from['world']} world, transformer "
            f"sha256 {made_from['sha256'][:12]}…)"
        )
    current = json.loads(json.dumps(asdict(settings)))
    # A setting the earlier table lacks did not exist yet: it ran as that setting's default does,
    # except that the evaluation prompts came from the training seed before eval_seed existed.
    earlier_settings = earlier.get("settings", {})
    made = {**json.loads(json.dumps(asdict(QualitySettings()))), **earlier_settings}
    if "eval_seed" not in earlier_settings:
        made["eval_seed"] = earlier_settings.get("seed", 0)
    differ = sorted(
        k for k in current.keys() | made.keys() if k not in _NO_EFFECT and current.get(k) != made.get(k)
    )
    if differ:
        raise ValueError(f"--reuse {path}: made with other settings (they differ in {differ})")
    names = {s.name for s in STUDENTS}
    taken = []
    for name, result in earlier["models"].items():
        done = work / name / "result.json"
        if name in names and not done.exists():
            done.parent.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(result, indent=2) + "\n")
            taken.append(name)
    return {"from": str(path), "students": taken, "made": row_provenance(earlier)}


def row_provenance(table: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """Where each row of a toybench.json was trained ({"gpu", "date"} per student): the table's own run,
    or for rows it reused itself, the run they came from."""

    def device(environment: dict[str, Any]) -> str:
        return environment["gpu"] or "no GPU" if "gpu" in environment else "unknown device"

    environment = table.get("environment", {})
    made = {name: {"gpu": device(environment), "date": environment.get("date")} for name in table["models"]}
    reused = table.get("reused", {})
    for name in reused.get("students", []):
        made[name] = reused.get("made", {}).get(name) or {"gpu": device(reused), "date": reused.get("date")}
    return made


def reused_rows(reused: dict[str, Any], models: dict[str, Any]) -> str:
    """The reused rows by the run that trained them: "A, B (GPU, date); C (GPU, date)"."""
    groups: dict[tuple, list[str]] = {}
    for name in reused["students"]:
        made = reused.get("made", {}).get(name) or {"gpu": reused.get("gpu"), "date": reused.get("date")}
        groups.setdefault((made["gpu"], made["date"]), []).append(models[name]["label"])
    return "; ".join(f"{', '.join(labels)} ({gpu}, {date})" for (gpu, date), labels in groups.items())


def _claim_work_folder(work: Path, settings: QualitySettings) -> None:
    """Results in ``work`` are reused only under the settings that made them (recorded on first use)."""
    work.mkdir(parents=True, exist_ok=True)
    record = work / "settings.json"
    current = json.loads(json.dumps(asdict(settings)))
    if record.exists() and json.loads(record.read_text()) != current:
        raise ValueError(
            f"{work} holds results made with other settings ({record}); pass another --work or delete it"
        )
    record.write_text(json.dumps(current, indent=2) + "\n")


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The table's targets for each ReHyAt student that was run, each as measured (None where a row is
    missing), with a 95% bootstrap interval of the measured difference where both rows kept per-clip
    scores. Per student: adherence within 2 points of the teacher's, direction and speed within 5;
    motion smoothness at least 80% of the teacher's and above local-only and linear-only; size drift at
    most 1.5× the teacher's; first-frame jump no larger than the teacher's; adherence above local-only
    and linear-only; on long videos, adherence within 5 points of its short videos' and smoothness at
    least 70% of theirs. And To=1 above To=0 on temporal consistency.

    ``met`` judges the measured value, as the targets are stated; ``decided`` says whether the
    interval lies wholly on one side of the threshold, i.e. whether the verdict is more than sampling noise.
    Two models are compared on the same prompts and noise (paired); short and long videos on the long
    videos' prompts (the first ``long_videos`` of the short ones), paired by prompt. A target relative to
    another row (80% of the teacher's) compares with that row's per-clip scores scaled.
    """

    def part(name: str, which: str = "short") -> dict[str, Any]:
        return results.get(name, {}).get(which, {})

    rows = []

    def check(
        text: str,
        first: dict,
        second: dict,
        key: str,
        threshold: float,
        above: bool,
        paired: bool | str = True,
        scale: float = 1.0,
        inclusive: bool = False,
    ) -> None:
        """first − scale · second against ``threshold``: met when above it (``above``; at it too with
        ``inclusive``) or at most it."""
        value = interval = decided = None
        if key in first and key in second:
            value = first[key] - scale * second[key]
        clips = first.get("per_clip", {}).get(key), second.get("per_clip", {}).get(key)
        if None not in clips:
            clips = (clips[0], [scale * c for c in clips[1]])
        if paired == "prefix":  # the first clips of the longer list, paired with the shorter one's
            if value is None or None in clips:
                value = None  # the means alone would compare other prompts
            else:
                count = min(map(len, clips))
                clips = (clips[0][:count], clips[1][:count])
                value = float(np.mean(clips[0]) - np.mean(clips[1]))
        if value is not None and None not in clips and min(map(len, clips)) >= 2:  # bootstrap needs two
            interval = difference_interval(*clips, paired=bool(paired))
            low, high = interval
            if above and inclusive:
                decided = low >= threshold or high < threshold
            else:
                decided = low > threshold or high <= threshold
        if value is None:
            met = None
        elif above:
            met = bool(value >= threshold if inclusive else value > threshold)
        else:
            met = bool(value <= threshold)
        rows.append(
            {
                "target": text,
                "metric": key,
                "measured": value,
                "interval": interval,
                "met": met,
                "decided": decided,
            }
        )

    teacher = part("teacher")
    for name, label in TARGET_STUDENTS.items():
        if name != "rehyat" and name not in results:
            continue
        student = part(name)
        for key, what, points in (
            ("adherence", "adherence", 2),
            ("direction_accuracy", "direction", 5),
            ("speed_accuracy", "speed", 5),
        ):
            check(
                f"{label} {what} within {points} points of the teacher's (teacher − {label})",
                teacher,
                student,
                key,
                points,
                above=False,
            )
        check(
            f"{label} motion smoothness at least 80% of the teacher's ({label} − 0.8 × teacher)",
            student,
            teacher,
            "motion_smoothness",
            0,
            above=True,
            scale=0.8,
            inclusive=True,
        )
        for key, what, scale in (
            ("size_drift", "size drift at most 1.5× the teacher's", 1.5),
            ("first_jump", "first-frame jump no larger than the teacher's", 1.0),
        ):
            scaled = "teacher" if scale == 1 else f"{scale:g} × teacher"
            check(f"{label} {what} ({label} − {scaled})", student, teacher, key, 0, above=False, scale=scale)
        for key, what in (("motion_smoothness", "motion smoothness"), ("adherence", "adherence")):
            for base in ("local", "linear"):
                check(
                    f"{label} {what} above {base}-only (difference)",
                    student,
                    part(base),
                    key,
                    0,
                    above=True,
                )
    check(
        "To=1 above To=0 on temporal consistency (difference)",
        part("rehyat"),
        part("rehyat_to0"),
        "temporal_consistency",
        0,
        above=True,
    )
    for name, label in TARGET_STUDENTS.items():
        if name != "rehyat" and not part(name, "long"):
            continue
        check(
            f"{label}: long videos keep adherence within 5 points of short ones (short − long)",
            part(name),
            part(name, "long"),
            "adherence",
            5,
            above=False,
            paired="prefix",  # the long videos' prompts are the first short ones' (with other noise)
        )
        check(
            f"{label}: long videos keep motion smoothness at least 70% of short ones' (long − 0.7 × short)",
            part(name, "long"),
            part(name),
            "motion_smoothness",
            0,
            above=True,
            paired="prefix",
            scale=0.7,
            inclusive=True,
        )
    return rows


def _write_markdown(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rehyat.experiments.common import environment_markdown, markdown_table

    models = report["models"]
    intervals = report.get("intervals") or _intervals(models)
    headings = [heading for heading, _ in COLUMNS.values()]
    rows = [
        [m["label"], m.get("sampled", "parallel"), *_cells(m, intervals.get(name, {}), "short")]
        for name, m in models.items()
    ]
    long_rows = [
        [m["label"], *_cells(m, intervals.get(name, {}), "long")] for name, m in models.items() if "long" in m
    ]

    def decimals(target: dict[str, Any]) -> int:
        return COLUMNS.get(target.get("metric"), ("", 1))[1]

    target_rows = [
        [
            t["target"],
            "—" if t["measured"] is None else f"{t['measured']:.{decimals(t)}f}",
            "—"
            if t.get("interval") is None
            else "[{:.{d}f}, {:.{d}f}]".format(*t["interval"], d=decimals(t)),
            {True: "yes", False: "no", None: "—"}[t["met"]]
            + (" (within noise)" if t.get("decided") is False else ""),
        ]
        for t in report["targets"]
    ]
    names = list(models)
    fig, ax = plt.subplots(figsize=(10, 4))
    bars = ("adherence", "temporal_consistency", "motion_smoothness")
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(
            np.arange(len(bars)) + i * width,
            [models[name]["short"][k] for k in bars],
            width,
            label=models[name]["label"],
        )
    ax.set_xticks(np.arange(len(bars)) + 0.4 - width / 2, bars)
    ax.set_ylabel("points (higher is better)")
    ax.set_title(f"ToyBench, {report['settings']['eval_prompts']} random prompts")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "toybench.png", dpi=110)
    plt.close(fig)

    settings = report["settings"]
    stage2_extras = "".join(
        [
            f", EMA {settings['finetune_ema']:g}" if settings.get("finetune_ema") else "",
            f", output distillation λ {settings['finetune_teacher_weight']:g}"
            if settings.get("finetune_teacher_weight")
            else "",
        ]
    )
    teacher = report.get("teacher", {})
    world = world_name(teacher.get("world", "one-frame"))
    if not teacher or Path(teacher["folder"]).resolve() == bundled_teacher().resolve():
        made_from = f"the bundled teacher ({world} world)"
    else:
        made_from = f"the teacher `{teacher['folder']}` ({world} world)"
    frames, long_frames = report["frames"], report["long_frames"]
    video_frames = report.get("video_frames", frames)
    length = f"{frames} frames"
    if video_frames != frames:
        length = f"{frames} latent frames ({video_frames} video frames)"
        long_length = f"{long_frames} latent frames, {report['long_video_frames']} video frames"
    else:
        long_length = f"{long_frames} frames"
    text = "\n\n".join(
        [
            f"# ToyBench quality table, {world} world",
            environment_markdown(report["environment"]),
            f"Every student: {made_from}, stage 1 ({settings['distill_prompts']} prompts, "
            f"{len(settings['capture_steps'])} captured sampler steps × {settings['distill_inner_steps']} "
            f"AdamW steps, lr {settings['distill_lr']:g}), then stage 2 ({settings['finetune_steps']} steps × "
            f"{settings['finetune_batch']} clips, lr {settings['finetune_lr']:g}{stage2_extras}). Sampling: "
            f"{settings['eval_prompts']} random prompts, {length}, UniPC "
            f"{settings['sample_steps']} steps, guidance {settings['guidance_scale']:g}, the same noise for every "
            "model. Direction, speed and adherence (the mean of colour, shape and direction) are read back "
            "(points); size and shape drift and the first-frame jump are lower-is-better; PSNR/SSIM against "
            "the teacher's video from the same noise. Each cell: the mean, then the 95% paired-bootstrap "
            "interval of the model's mean minus the teacher's over the same prompts and noise (signed; PSNR and "
            "SSIM: the interval of the mean itself).",
            markdown_table(["model", "sampled", *headings], rows),
            *(
                [
                    f"Rows taken from an earlier table (`--reuse {report['reused']['from']}`), not trained in "
                    "this run: " + reused_rows(report["reused"], models) + "."
                ]
                if report.get("reused", {}).get("students")
                else []
            ),
            "![ToyBench](toybench.png)",
            f"## Long videos ({long_length}, {long_frames // frames}× the training length)",
            f"The first {settings['long_videos']} prompts; intervals against the teacher's long videos where "
            "it made them (on a GPU).",
            markdown_table(["model", *headings[:-2]], long_rows),
            "## Targets",
            f"Each interval is a 95% paired-bootstrap interval over the {settings['eval_prompts']} prompts, the "
            "same prompts and noise for both models; long videos are compared with the short videos of their "
            f'own prompts (the first {settings["long_videos"]}). "Within noise": the interval reaches across '
            "the threshold, so the verdict is not settled at this number of prompts.",
            markdown_table(["target", "measured", "95% interval", "met"], target_rows),
        ]
    )
    write_markdown_keeping_notes(out / "toybench.md", text)


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of mean(values) (10,000 resamples, fixed seed)."""
    from scipy.stats import bootstrap

    if not np.isfinite(values).all():
        raise ValueError("per-clip scores must be finite numbers (a NaN or inf would void the interval)")
    result = bootstrap(
        (np.asarray(values, float),),
        lambda a, axis: a.mean(axis),
        vectorized=True,
        n_resamples=10_000,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _intervals(models: dict[str, Any]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Each model's 95% intervals per column, short and long videos: of its mean minus the teacher's
    (paired by prompt) or, for PSNR and SSIM, of its mean; only where per-clip scores allow it."""
    teacher = models.get("teacher", {})
    intervals: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, model in models.items():
        for part in ("short", "long"):
            clips = model.get(part, {}).get("per_clip", {})
            reference = teacher.get(part, {}).get("per_clip", {})
            for key in COLUMNS:
                values = clips.get(key)
                if values is None or len(values) < 2:
                    continue
                if key in AGAINST_TEACHER:
                    interval = mean_interval(values)
                elif name != "teacher" and len(reference.get(key, ())) == len(values):
                    interval = difference_interval(values, reference[key], paired=True)
                else:
                    continue
                intervals.setdefault(name, {}).setdefault(part, {})[key] = list(interval)
    return intervals


def _cells(model: dict[str, Any], intervals: dict[str, Any], part: str) -> list[str]:
    """The table's cells of one model: each column's mean with its interval (:func:`_intervals`)."""
    cells = []
    for key, (_, decimals) in COLUMNS.items():
        if part == "long" and key in AGAINST_TEACHER:
            continue  # long videos have no teacher video of their noise to compare with
        value = model.get(part, {}).get(key)
        if value is None:
            cells.append("—")
            continue
        cell = f"{value:.{decimals}f}"
        interval = intervals.get(part, {}).get(key)
        if interval is not None:
            sign = "" if key in AGAINST_TEACHER else "+"
            cell += " [{:{s}.{d}f}, {:{s}.{d}f}]".format(*interval, s=sign, d=decimals)
        cells.append(cell)
    return cells


def render_table(out: Path) -> dict[str, Any]:
    """Rewrite ``out/toybench.{json,md,png}`` from ``out/toybench.json``, the targets recomputed from
    its per-clip scores (e.g. after the targets' statistics changed); nothing is sampled or trained."""
    path = out / "toybench.json"
    if not path.is_file():
        raise ValueError(f"--render-only: {path} does not exist (a toybench.json of an earlier run)")
    report = read_json(path)
    report["targets"] = check_targets(report["models"])
    report["intervals"] = _intervals(report["models"])
    path.write_text(json.dumps(report, indent=2) + "\n")
    _write_markdown(report, out)
    return report


#: Settings that change no result (batching changes a video only by float rounding).
_NO_EFFECT = ("sample_batch", "progress")


def run(
    *,
    device: str,
    only: list[str] | None,
    out: str,
    quick: bool,
    render_only: bool,
    report_only: bool,
    reuse: str | None,
    overrides: list[str],
    work: str,
    teacher: str | None = None,
) -> int:
    """``rehyat bench toy``: train and score the students (or rewrite a table with ``render_only``)."""
    if render_only:
        extra = [
            flag
            for flag, given in (
                ("--teacher", teacher),
                ("--only", only),
                ("--set", overrides),
                ("--reuse", reuse),
                ("--report-only", report_only),
                ("--quick", quick),
            )
            if given
        ]
        if extra:
            raise ValueError(f"--render-only rewrites the table in --out from its JSON; it takes no {extra}")
        render_table(Path(out))
        return 0
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA GPU is available")
    if device == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    unknown = sorted(set(only or ()) - {s.name for s in STUDENTS})
    if unknown:
        raise ValueError(f"--only: unknown students {unknown}; choose from {[s.name for s in STUDENTS]}")
    selected = only or [s.name for s in STUDENTS]
    ranking = Path(work) / "rehyat" / "distill" / "ranking.json"
    if "half_blocks" in selected and "rehyat" not in selected and not ranking.exists() and not report_only:
        raise ValueError(
            f"half_blocks reuses the 'rehyat' student's stage 1, which {ranking.parent.parent} lacks: "
            "run them together (--only rehyat half_blocks)"
        )
    settings = replace_config(QUICK if quick else QualitySettings(), overrides or [])
    reuse = Path(reuse) if reuse else None
    from rehyat.models.folders import model_folder

    folder = None if teacher is None else model_folder(teacher, "--teacher")
    run_quality(Path(out), Path(work), device, settings, only, report_only, reuse, folder)
    return 0
