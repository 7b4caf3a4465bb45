"""``rehyat bench op|attention|distill|model|comm|toy``: the experiment harness's benchmarks.

Each target's parser lives here; the measuring code is in :mod:`rehyat.experiments`, imported only
when the target runs.
"""

from __future__ import annotations

import argparse
import importlib

from rehyat.cli._common import add_config_arguments, call_with_args, check_output_path
from rehyat.cli.export import add_bench_device

#: Output arguments of the targets, checked before any run: (flag, its attribute, a folder).
_OUTPUTS = (("--out", "out", True), ("--work", "work", True), ("--json", "json_out", False))


def _runner(module: str):
    def handler(args: argparse.Namespace) -> int:
        for flag, name, folder in _OUTPUTS:
            if getattr(args, name, None) is not None:
                check_output_path(getattr(args, name), flag, folder=folder)
        run = importlib.import_module(f"rehyat.experiments.{module}").run
        if not getattr(args, "render_only", False):
            return call_with_args(run, args)
        try:  # only an earlier run's JSON is read: a part of it missing or of another type is its fault
            return call_with_args(run, args)
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise ValueError(
                f"--render-only: the results JSON in {args.out} is not one of rehyat bench {args.target} "
                f"({type(error).__name__}: {error})"
            ) from error

    return handler


def register(commands) -> None:
    bench = commands.add_parser(
        "bench", help="benchmarks (op: CPU; the others: GPU, results under bench/results/)"
    )
    targets = bench.add_subparsers(dest="target", required=True)

    parser = targets.add_parser("op", help="CPU: full softmax vs parallel vs recurrent ReHyAt as frames grow")
    parser.add_argument(
        "--frames", type=int, nargs="+", default=[6, 12, 24, 48, 96], help="latent frame counts"
    )
    parser.add_argument("--frame-tokens", type=int, default=256, help="tokens per latent frame")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    parser.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    parser.set_defaults(handler=_runner("bench_op"))

    parser = targets.add_parser("attention", help="one self-attention layer: SDPA backends vs ReHyAt (GPU)")
    parser.add_argument("--frames", type=int, nargs="+", help="latent frame counts (default 21 41 81 161)")
    parser.add_argument("--out", default="bench/results", help="folder for attention.json/.md/.png")
    parser.add_argument("--quick", action="store_true", help="21 and 41 frames, fewer timed calls")
    parser.add_argument("--skip-parity", action="store_true", help="skip the parity check at Wan frame size")
    parser.add_argument(
        "--parity-only",
        action="store_true",
        help="run only the parity check and merge it into OUT/attention.json (a run's results; GPU)",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="re-render attention.md/.png from attention.json (no GPU)"
    )
    parser.set_defaults(handler=_runner("bench_attention"))

    parser = targets.add_parser("distill", help="stage-1 student step speed and memory at Wan2.1-1.3B shapes")
    parser.add_argument(
        "--frames", type=int, nargs="+", default=[21, 41], help="latent frames (21 = 81 video frames)"
    )
    parser.add_argument("--rep-ms", type=float, default=2000.0, help="time budget per measurement")
    parser.add_argument("--out", default="bench/results", help="output folder")
    parser.add_argument("--render-only", action="store_true", help="re-render markdown/PNG from the JSON")
    parser.set_defaults(handler=_runner("bench_distill"))

    parser = targets.add_parser(
        "model",
        help="whole DiT forward (Wan2.1-1.3B, SkyReels-V2-1.3B, LTX-Video 2B): original vs ReHyAt (GPU)",
    )
    parser.add_argument(
        "--family",
        choices=("wan", "skyreels-v2", "ltx-video"),
        default="wan",
        help="which model (default wan)",
    )
    parser.add_argument(
        "--size",
        choices=("published", "tiny"),
        default="published",
        help="the family's published size (random weights) or its tiny config (a smoke run)",
    )
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), help="default cuda; cpu times with the wall clock"
    )
    parser.add_argument("--frames", type=int, nargs="+", help="latent frame counts (default 21 41 81)")
    parser.add_argument(
        "--rows",
        nargs="+",
        choices=("original", "parallel", "recurrent"),
        default=["original", "parallel", "recurrent"],
        help="which forms to run",
    )
    parser.add_argument("--quick", action="store_true", help="7 and 21 frames, fewer timed calls")
    parser.add_argument("--skip-parity", action="store_true", help="skip the recurrent-vs-parallel check")
    parser.add_argument(
        "--out", default="bench/results", help="folder for model.json/.md/.png (model_<family>.* beside Wan)"
    )
    parser.add_argument(
        "--render-only", action="store_true", help="re-render model*.md/.png from its JSON (no GPU)"
    )
    parser.set_defaults(handler=_runner("bench_model"))

    parser = targets.add_parser(
        "comm", help="chunk parallelism vs ring attention: bytes per layer per rank (CPU, gloo)"
    )
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 81, 161], help="latent frame counts")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8], help="rank counts")
    parser.add_argument("--chunk-frames", type=int, default=3, help="Tc")
    parser.add_argument("--overlap-frames", type=int, default=1, help="To")
    parser.add_argument("--out", default="bench/results", help="folder for chunk_parallel_comm.json/.md/.png")
    parser.add_argument("--skip-measure", action="store_true", help="analytic only (no gloo processes)")
    parser.add_argument("--render-only", action="store_true", help="re-render the markdown/PNG from the JSON")
    parser.set_defaults(handler=_runner("bench_comm"))

    parser = targets.add_parser(
        "stage1", help="stage-1 robustness on the toy teacher: φ variants × learning rates × seeds"
    )
    parser.add_argument("--out", default="bench/results", help="where stage1_robustness.{json,md,png} go")
    parser.add_argument("--work", default="runs/stage1_robustness", help="the runs' folders")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--processes", type=int, default=2, help="stage-1 runs at a time")
    add_config_arguments(parser, "RecipeSettings (stage-1 sizes)", files=False)
    parser.add_argument("--render-only", action="store_true", help="rewrite the table from its JSON")
    parser.set_defaults(handler=_runner("stage1_robustness"))

    parser = targets.add_parser(
        "toy", help="ToyBench quality table: ReHyAt and its ablations on the toy world"
    )
    parser.add_argument("--out", default="bench/results", help="where toybench.{json,md,png} go")
    parser.add_argument(
        "--work", default="runs/toybench", help="checkpoints and per-model results (resumable)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--only", nargs="+", help="students to run (default: all)")
    parser.add_argument(
        "--teacher",
        help="toy teacher folder every student starts from; its space (toy_world.json) sets the clips "
        "and the world (default: the bundled teacher)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (a smoke run)")
    add_config_arguments(parser, "QualitySettings", files=False)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: score the teacher, gather the students in --work",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite the table in --out from its toybench.json (targets recomputed); no GPU needed",
    )
    parser.add_argument(
        "--reuse",
        metavar="TOYBENCH_JSON",
        help="take the students of an earlier table made with the same settings; train only the rest",
    )
    parser.set_defaults(handler=_runner("toy_quality"))

    add_bench_device(targets, _runner("bench_device"))
