"""Run metrics: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard when installed.

Generic for every training stage: ``MetricsLogger(out_dir).log(step, loss=..., lr=...)``. A resumed
run passes ``resume_step`` so that records a killed run wrote after its last checkpoint are dropped and
the file holds one clean curve.

The file is never written through a symbolic link: a new run replaces a link at ``metrics.jsonl`` with
a fresh file (the link's target is left alone), a resumed run refuses one, and appends go through a
descriptor opened with ``O_NOFOLLOW`` where the platform has it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rehyat.utils import atomic_write_text

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricsLogger:
    """Append ``{"step": ..., "time": ..., **values}`` records to ``out_dir/metrics.jsonl``."""

    FILE = "metrics.jsonl"

    def __init__(
        self, out_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        self.path = Path(out_dir) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_symlink():
            raise ValueError(
                f"{self.path} is a symbolic link; metrics are only written to a regular file in the output "
                "folder, so remove the link to resume"
            )
        if resume_step is not None and self.path.exists():
            with os.fdopen(os.open(self.path, os.O_RDONLY | _NOFOLLOW)) as file:
                kept = [line for line in file.read().splitlines() if _step_of(line) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            atomic_write_text(self.path, "")  # replaces a link, never follows it
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW
        self._file = os.fdopen(os.open(self.path, flags, 0o644), "a")
        self._tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))

    def log(self, step: int, **values: Any) -> None:
        record = {"step": step, "time": round(time.time(), 3)} | {k: _scalar(v) for k, v in values.items()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf  # a torn last line from a killed run is dropped


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``out_dir/metrics.jsonl`` in order."""
    path = Path(out_dir) / MetricsLogger.FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
