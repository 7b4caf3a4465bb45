"""One stage-1 run of the toy quality bench's recipe with overrides, printing held-out errors (CPU).

Usage: ``PYTHONPATH=src python3 scripts/stage1_sweep.py NAME [KEY=VALUE ...]`` where KEY is a
:class:`~rehyat.experiments.toy_quality.QualitySettings` field or ``rehyat.FIELD`` of
:class:`~rehyat.models.ReHyAtConfig`, VALUE a Python literal; e.g. ``causal_floor distill_lr=3e-4
rehyat.overlap_frames=15`` (exact block-causal softmax: the error causality alone costs). Writes the
distillation run to ``runs/stage1_sweep/NAME`` and prints one line: the name, the overrides, the
held-out relative error per block and the seconds taken.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from rehyat.experiments.toy_quality import QualitySettings
from rehyat.models import ReHyAtConfig
from rehyat.toy.model import bundled_teacher
from rehyat.toy.recipe import distill_student


def main(name: str, pairs: list[str]) -> None:
    settings, rehyat = {}, {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        target = rehyat if key.startswith("rehyat.") else settings
        target[key.removeprefix("rehyat.")] = ast.literal_eval(value)
    tic = time.perf_counter()
    report = distill_student(
        bundled_teacher(),
        Path("runs/stage1_sweep") / name,
        replace(QualitySettings(), **settings),
        "cpu",
        ReHyAtConfig(**rehyat),
    )
    errors = {b: round(r["heldout"]["rehyat"]["rel_error"], 3) for b, r in report["blocks"].items()}
    print(name, pairs, json.dumps(errors), f"{time.perf_counter() - tic:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
