"""``rehyat bench op|attention|distill|model|comm|device|stage1|toy``: the experiment harness's benchmarks.

Each benchmark is a settings dataclass in its module of :mod:`rehyat.experiments` (``OpBenchSettings``,
``AttentionBenchSettings``, ...), set with the one syntax, ``--config FILE`` and ``--set key=value``; the
flags that scripts and the README use (``--out``, ``--render-only``, ``--quick``, ``--frames``,
``--device``, ``--family``, ``--size``) are kept as aliases of their fields. ``stage1`` and ``toy`` take
their stage sizes (``RecipeSettings``, ``QualitySettings``) through ``--set`` and their run's folders and
choices as flags. The measuring code is imported only when the target runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from rehyat.cli._common import add_config_arguments, call_with_args, check_output_path
from rehyat.settings import load_config

#: Output arguments of the targets, checked before any run: (flag or field, its attribute, a folder).
_OUTPUTS = (("--out", "out", True), ("--work", "work", True), ("--json", "json_out", False))

#: Flags kept beside ``--set`` for the fields of the same name: flag → argparse keywords.
_ALIASES: dict[str, dict[str, Any]] = {
    "--out": {"help": "output folder (= --set out=DIR)"},
    "--render-only": {
        "action": "store_true",
        "help": "re-render from the results JSON (= --set render_only=true)",
    },
    "--quick": {"action": "store_true", "help": "a smaller, faster run (= --set quick=true)"},
    "--frames": {"type": int, "nargs": "+", "help": "latent frame counts (= --set frames=[...])"},
    "--device": {"help": "cuda or cpu (= --set device=...)"},
    "--family": {"help": "wan, skyreels-v2, ltx-video, hunyuan-video or cogvideox (= --set family=...)"},
    "--size": {"help": "published or tiny (= --set size=...)"},
}

#: The flags each target took before its settings moved to ``--set`` (they became fields of the same
#: name, ``--json`` became ``json_out``): still parsed, hidden, so a script that passes one is told the
#: key to set instead of argparse's "unrecognized arguments".
REPLACED_FLAGS: dict[str, tuple[str, ...]] = {
    "op": ("--frame-tokens", "--threads", "--json"),
    "attention": ("--skip-parity", "--parity-only"),
    "distill": ("--rep-ms",),
    "model": ("--rows", "--skip-parity"),
    "comm": ("--ranks", "--chunk-frames", "--overlap-frames", "--skip-measure"),
    "device": (
        "--work",
        "--parts",
        "--threads",
        "--reps",
        "--rounds",
        "--student",
        "--toy-prompts",
        "--toy-steps",
        "--toy-weights",
    ),
}
_REPLACED_KEYS = {"--json": "json_out"}
_REPLACED_SWITCHES = frozenset({"--skip-parity", "--parity-only", "--skip-measure"})
_REPLACED_LISTS = frozenset({"--rows", "--ranks", "--parts", "--toy-weights"})


class _Replaced(argparse.Action):
    """A flag of :data:`REPLACED_FLAGS`: takes whatever values follow it and records the first such flag,
    which the handler refuses (:func:`replaced_message`) before anything runs."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, self.dest, None) is None:
            setattr(namespace, self.dest, option_string)


def replaced_message(flag: str) -> str:
    """The one-line error for a flag of :data:`REPLACED_FLAGS`, naming the ``--set`` key that replaced it."""
    key = replaced_key(flag)
    value = "true" if flag in _REPLACED_SWITCHES else "[...]" if flag in _REPLACED_LISTS else "VALUE"
    return f"{flag} was replaced by --set {key}={value}"


def replaced_key(flag: str) -> str:
    """The ``--set`` key that replaced a flag of :data:`REPLACED_FLAGS`."""
    return _REPLACED_KEYS.get(flag, _field(flag))


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _alias_overrides(args: argparse.Namespace, flags: tuple[str, ...]) -> list[str]:
    """The aliases given on the command line as ``field=value`` overrides (read by the field's type)."""
    overrides = []
    for flag in flags:
        value = getattr(args, f"alias_{_field(flag)}")
        if value is None or value is False:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        overrides.append(f"{_field(flag)}={text}")
    return overrides


def _render_only_errors(run, settings: Any, target: str) -> int:
    """Run; with ``render_only`` only an earlier run's JSON is read, so a part of it missing or of another
    type is its fault (a ValueError naming the folder)."""
    if not getattr(settings, "render_only", False):
        return run()
    try:
        return run()
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise ValueError(
            f"--render-only: the results JSON in {settings.out} is not one of rehyat bench {target} "
            f"({type(error).__name__}: {error})"
        ) from error


def _settings_runner(module: str, settings_name: str, flags: tuple[str, ...]):
    def handler(args: argparse.Namespace) -> int:
        if getattr(args, "replaced_flag", None) is not None:
            raise ValueError(replaced_message(args.replaced_flag))
        experiment = importlib.import_module(f"rehyat.experiments.{module}")
        overrides = [*_alias_overrides(args, flags), *args.overrides]
        settings = load_config(getattr(experiment, settings_name), args.config, overrides)
        for _, name, folder in _OUTPUTS:
            if getattr(settings, name, None) is not None:
                check_output_path(getattr(settings, name), name, folder=folder)
        return _render_only_errors(lambda: experiment.run(settings), settings, args.target)

    return handler


def _runner(module: str):
    def handler(args: argparse.Namespace) -> int:
        for flag, name, folder in _OUTPUTS:
            if getattr(args, name, None) is not None:
                check_output_path(getattr(args, name), flag, folder=folder)
        run = importlib.import_module(f"rehyat.experiments.{module}").run
        return _render_only_errors(lambda: call_with_args(run, args), args, args.target)

    return handler


def _add_target(
    targets, name: str, module: str, settings: str, help: str, flags: tuple[str, ...] = ()
) -> None:
    parser = targets.add_parser(name, help=help, description=f"{help}. Fields: {settings}.")
    add_config_arguments(parser, settings)
    for flag in flags:
        keywords = _ALIASES[flag]
        if keywords.get("action") != "store_true":
            keywords = {"metavar": _field(flag).upper(), **keywords}
        parser.add_argument(flag, dest=f"alias_{_field(flag)}", default=None, **keywords)
    for flag in REPLACED_FLAGS.get(name, ()):
        parser.add_argument(flag, dest="replaced_flag", nargs="*", action=_Replaced, help=argparse.SUPPRESS)
    parser.set_defaults(handler=_settings_runner(module, settings, flags))


def register(commands) -> None:
    bench = commands.add_parser(
        "bench", help="benchmarks (op, comm, device: CPU; the others: GPU, results under bench/results/)"
    )
    targets = bench.add_subparsers(dest="target", required=True)

    _add_target(
        targets,
        "op",
        "bench_op",
        "OpBenchSettings",
        "CPU: full softmax vs parallel vs recurrent ReHyAt as frames grow",
        ("--frames",),
    )

    _add_target(
        targets,
        "attention",
        "bench_attention",
        "AttentionBenchSettings",
        "one self-attention layer: SDPA backends vs ReHyAt (GPU)",
        ("--out", "--render-only", "--quick", "--frames"),
    )
    _add_target(
        targets,
        "distill",
        "bench_distill",
        "DistillBenchSettings",
        "stage-1 student step speed and memory at Wan2.1-1.3B shapes",
        ("--out", "--render-only", "--frames"),
    )
    _add_target(
        targets,
        "model",
        "bench_model",
        "ModelBenchSettings",
        "whole DiT forward (Wan2.1-1.3B, SkyReels-V2-1.3B, LTX-Video 2B): original vs ReHyAt (GPU)",
        ("--out", "--render-only", "--family", "--size", "--device", "--frames", "--quick"),
    )
    _add_target(
        targets,
        "comm",
        "bench_comm",
        "CommBenchSettings",
        "chunk parallelism vs ring attention: bytes per layer per rank (CPU, gloo)",
        ("--out", "--render-only", "--frames"),
    )
    _add_target(
        targets,
        "device",
        "bench_device",
        "DeviceBenchSettings",
        "CPU runtime: exported recurrent step vs full-attention block (Wan2.1-1.3B), and a long toy video",
        ("--out", "--render-only", "--frames"),
    )

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
