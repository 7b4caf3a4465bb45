"""``rehyat toy generate``, ``rehyat toy eval`` and ``rehyat toy teacher``: the embedded toy world."""

from __future__ import annotations

import argparse
import json

from rehyat.cli._common import add_config_arguments, check_output_path
from rehyat.toy.model import FLOW_SHIFT, SPACES
from rehyat.toy.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    LEGACY_WORLD_NAMES,
    SHAPES,
    SPEED_WORDS,
    world_name,
)


def _generate(args: argparse.Namespace) -> int:
    import time

    from rehyat.generation.pipeline import check_device
    from rehyat.generation.video import check_video_path, write_video
    from rehyat.models.folders import TOY_STUDENT, bundled_student, model_folder, rehyat_folder
    from rehyat.toy.generate import generate_toy_video, video_uint8
    from rehyat.toy.model import is_bundled_teacher
    from rehyat.toy.world import ToyPrompt
    from rehyat.utils import check_int

    # Every argument before the model loads: a mistake costs no denoising (exit code 2).
    prompt = ToyPrompt.parse(args.prompt)
    if args.frames is not None:
        check_int("--frames", args.frames, 1)
    check_int("--steps", args.steps, 1)
    check_int("--seed", args.seed, 0, 2**63 - 1)
    check_int("--fps", args.fps, 1)
    check_int("--scale", args.scale, 1)
    try:
        out = check_video_path(args.out, create_parent=True)
    except ValueError as error:
        raise ValueError(f"--out: {error}") from error
    try:
        device = check_device(args.device)
    except ValueError as error:
        raise ValueError(f"--device: {error}") from error
    teacher = model_folder(args.model, "--model")
    if args.teacher and args.rehyat is not None:
        raise ValueError("--teacher samples the teacher alone; leave out --rehyat")
    bundled = is_bundled_teacher(teacher)
    if not (bundled or args.teacher or args.parallel or args.rehyat is not None):
        raise ValueError(f"--model {args.model} has no bundled student: pass --rehyat DIR or --teacher")
    rehyat = args.rehyat if args.rehyat is not None else (TOY_STUDENT if bundled else None)
    rehyat = None if args.teacher or rehyat is None else rehyat_folder(rehyat)
    if rehyat is None and not args.parallel:
        args.parallel = True  # the teacher has full attention: parallel is its only form
    tic = time.perf_counter()
    video = generate_toy_video(
        prompt,
        args.frames,
        teacher=teacher,
        rehyat=rehyat,
        recurrent=not args.parallel,
        steps=args.steps,
        guidance_scale=args.guidance,
        flow_shift=args.shift,
        seed=args.seed,
        device=device,
    )
    path = write_video(video_uint8(video, args.scale), out, fps=args.fps)
    form = "parallel" if args.parallel else "recurrent"
    if rehyat is None:
        model = "the teacher (full attention, parallel)"
    elif rehyat == bundled_student():
        model = f"the shipped ReHyAt student ({form})"
    else:
        model = f"the ReHyAt student {rehyat} ({form})"
    print(
        f"wrote {path}: {video.shape[1]} frames of {video.shape[3]}×{video.shape[2]} px (×{args.scale}), "
        f"{prompt.text!r}, {model}, seed {args.seed}, {args.steps} steps, in {time.perf_counter() - tic:.1f} s"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rehyat.generation.pipeline import check_device
    from rehyat.models.folders import model_folder, rehyat_folder
    from rehyat.toy.evaluate import evaluate_model
    from rehyat.utils import check_int

    check_int("--prompts", args.prompts, 1)
    try:
        check_device(args.device)
    except ValueError as error:
        raise ValueError(f"--device: {error}") from error
    metrics = evaluate_model(
        model_folder(args.model, "--model"),
        None if args.rehyat is None else rehyat_folder(args.rehyat),
        prompts=args.prompts,
        frames=args.frames,
        steps=args.steps,
        guidance_scale=args.guidance,
        flow_shift=args.shift,
        seed=args.seed,
        recurrent=args.recurrent,
        batch_size=args.batch,
        device=args.device,
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("command", "toy_command", "handler")}
    print(json.dumps({**settings, **metrics}))
    return 0


def _teacher(args: argparse.Namespace) -> int:
    from rehyat.models.folders import model_folder
    from rehyat.settings import replace_config
    from rehyat.toy.teacher import assemble_teacher, teacher_finetune_config, train_teacher
    from rehyat.training import distributed

    out = check_output_path(args.out, "--out")
    if args.assemble_only:
        print(f"toy teacher written to {assemble_teacher(out)}")
        return 0
    config = teacher_finetune_config(out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    config = replace_config(config, args.overrides)
    try:
        teacher = train_teacher(
            out,
            config,
            clips=args.clips,
            seed=args.seed,
            init_from=None if args.init is None else model_folder(args.init, "--init"),
            space=SPACES[world_name(args.world)],
        )
    finally:
        distributed.shutdown()
    print(f"toy teacher written to {teacher}")
    return 0


def register(commands) -> None:
    toy = commands.add_parser("toy", help="the embedded toy world")
    targets = toy.add_subparsers(dest="toy_command", required=True)

    parser = targets.add_parser(
        "generate",
        help="one video from a prompt with the shipped student (or the teacher) to a GIF or MP4",
        description="Sample one toy video for a prompt of the world's template and write it as a GIF or "
        "MP4. By default the shipped ReHyAt student (the bundled teacher converted and trained with the "
        "full recipe) generates it recurrently: chunk by chunk with a fixed-size state, so any length runs "
        "in the same memory.",
    )
    parser.add_argument(
        "--prompt",
        required=True,
        help="'a COLOUR SHAPE moving DIRECTION SPEED on a BACKGROUND background': colour "
        f"{'|'.join(COLOURS)}; shape {'|'.join(SHAPES)}; direction {'|'.join(DIRECTIONS)}; speed "
        f"{'|'.join(SPEED_WORDS.values())}; background {'|'.join(BACKGROUNDS)}",
    )
    parser.add_argument(
        "--frames",
        type=int,
        help="video frames (default: a training clip, 16 for the bundled teacher; the student takes "
        "longer videos, e.g. 64; a packed world needs 4k + 1)",
    )
    parser.add_argument(
        "--out", "--output", default="toy.gif", help="output video, .gif or .mp4 (default toy.gif)"
    )
    parser.add_argument(
        "--model", default="toy", help="a toy teacher folder, or 'toy' (the bundled teacher, the default)"
    )
    parser.add_argument(
        "--rehyat",
        help="a ReHyAt checkpoint folder on top of --model (default with --model toy: 'bundled', the "
        "shipped student; another folder has none: pass --rehyat DIR, or --teacher for the teacher alone)",
    )
    parser.add_argument("--teacher", action="store_true", help="sample the teacher alone (full attention)")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="the student's parallel form (all frames at once) instead of the recurrent one",
    )
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (UniPC)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--shift", type=float, default=FLOW_SHIFT, help="the sampler's flow shift")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--scale", type=int, default=4, help="pixel upscaling of the written frames")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=_generate)

    parser = targets.add_parser("eval", help="ToyBench one toy model on random prompts (prints JSON)")
    parser.add_argument(
        "--model",
        required=True,
        help="a toy teacher folder (transformer/, text_encoder/), or 'toy' (the bundled one)",
    )
    parser.add_argument(
        "--rehyat",
        help="a ReHyAt checkpoint folder to load on top of the teacher ('bundled': the toy student)",
    )
    parser.add_argument("--recurrent", action="store_true", help="sample with the recurrent forward")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument(
        "--frames", type=int, help="latent frames per video (default: the model's training clip)"
    )
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (UniPC)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=4.0,
        help="classifier-free guidance scale (the bench and demo use 4)",
    )
    parser.add_argument("--shift", type=float, default=FLOW_SHIFT, help="the sampler's flow shift")
    parser.add_argument("--seed", type=int, default=3, help="prompt seed")
    parser.add_argument("--batch", type=int, default=8, help="videos sampled at once (same noise per prompt)")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(handler=_eval)

    parser = targets.add_parser(
        "teacher", help="train the toy teacher (a pixel-space Wan) with the stage-2 loop"
    )
    parser.add_argument("--out", required=True, help="output folder (the teacher lands in OUT/teacher)")
    parser.add_argument("--clips", type=int, default=8192, help="training clips to render")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32, help="clips per step")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--init",
        help="a teacher folder to train further, or 'toy' (the bundled one; default: random weights)",
    )
    parser.add_argument(
        "--world",
        choices=sorted(SPACES) + sorted(LEGACY_WORLD_NAMES),
        default="one-frame",
        help="one-frame: pixel clips, one video frame per latent frame; packed: clips packed 4 frames to a "
        "latent frame as Wan's VAE does (ignored with --init, whose world the teacher keeps; v2 and v3 are "
        "their former names)",
    )
    parser.add_argument(
        "--assemble-only",
        action="store_true",
        help="only make OUT/teacher from OUT's training run (its newest checkpoint if it was cut off)",
    )
    add_config_arguments(parser, "FinetuneConfig (of the teacher's training)", files=False)
    parser.set_defaults(handler=_teacher)
