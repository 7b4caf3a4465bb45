"""``rehyat toy eval`` and ``rehyat toy teacher``: the embedded toy world."""

from __future__ import annotations

import argparse
import json

from rehyat.cli._common import add_config_arguments, check_output_path
from rehyat.toy.model import FLOW_SHIFT, SPACES


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
    from rehyat.config import replace_config
    from rehyat.models.folders import model_folder
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
            space=SPACES[args.world],
        )
    finally:
        distributed.shutdown()
    print(f"toy teacher written to {teacher}")
    return 0


def register(commands) -> None:
    toy = commands.add_parser("toy", help="the embedded toy world")
    targets = toy.add_subparsers(dest="toy_command", required=True)

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
        choices=sorted(SPACES),
        default="v2",
        help="v2: pixel clips of the second world; v3: the third world packed 4 frames to a latent "
        "frame as Wan's VAE does (ignored with --init, whose world the teacher keeps)",
    )
    parser.add_argument(
        "--assemble-only",
        action="store_true",
        help="only make OUT/teacher from OUT's training run (its newest checkpoint if it was cut off)",
    )
    add_config_arguments(parser, "FinetuneConfig (of the teacher's training)", files=False)
    parser.set_defaults(handler=_teacher)
