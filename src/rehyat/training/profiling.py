"""A ``torch.profiler`` window over some training steps, on the main rank, as torchtitan's profiling
section does: what bounds a step (the host's launches, the kernels, the wait for data) read off the
run itself rather than guessed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from rehyat.utils import atomic_write, atomic_write_text


class StepProfiler:
    """Profiles steps ``[start, start + steps)`` (0-based step indices; ``start=None``: off) and, when the
    window closes, writes ``folder/steps-<first>-<last>.json`` (a Chrome / Perfetto trace) and ``.txt``
    (the ops by self host time and, on a GPU, by device time). Call :meth:`step` before each step and
    :meth:`close` after the loop (a run that ends inside the window writes what it profiled)."""

    def __init__(
        self, folder: Path, start: int | None, steps: int, device: torch.device, enabled: bool
    ) -> None:
        self.folder, self.start, self.steps = Path(folder), start, steps
        self.enabled = enabled and start is not None
        self.cuda = device.type == "cuda"
        self._profile: profile | None = None
        self._first = self._last = -1

    def step(self, step: int) -> None:
        if not self.enabled:
            return
        if self._profile is not None and step >= self.start + self.steps:
            self.close()
        elif self._profile is None and self.start <= step < self.start + self.steps and self._first < 0:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self._profile = profile(activities=activities)
            self._profile.__enter__()
            self._first = step
        if self._profile is not None:
            self._last = step

    def close(self) -> None:
        if self._profile is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        self._profile.__exit__(None, None, None)
        stem = self.folder / f"steps-{self._first}-{self._last}"
        profiled = self._profile
        atomic_write(stem.with_suffix(".json"), lambda temp: profiled.export_chrome_trace(str(temp)))
        averages = self._profile.key_averages()
        tables = [f"steps {self._first}–{self._last}, ops by self host time\n"]
        tables.append(averages.table(sort_by="self_cpu_time_total", row_limit=30))
        if self.cuda:
            tables.append("\nops by device time\n")
            tables.append(averages.table(sort_by="self_device_time_total", row_limit=30))
        atomic_write_text(stem.with_suffix(".txt"), "".join(tables))
        self._profile = None
