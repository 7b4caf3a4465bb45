"""Fault injection for the resume tests: ``python killed_finetune.py N finetune --set ...`` runs the
``rehyat`` command line and SIGKILLs its own process right after the metrics of step N are written,
as a killed job would die (no cleanup, no ``finally``). Step N must be logged (``log_every`` divides it)."""

from __future__ import annotations

import os
import signal
import sys

from rehyat.cli import main
from rehyat.training.metrics import MetricsLogger


def run_killed_after(step: int, argv: list[str]) -> int:
    """``rehyat argv`` with :meth:`MetricsLogger.log` wrapped to kill the process once ``step`` is logged."""
    log = MetricsLogger.log

    def log_then_die(self: MetricsLogger, logged: int, **values: object) -> None:
        log(self, logged, **values)
        if logged == step:
            os.kill(os.getpid(), signal.SIGKILL)

    MetricsLogger.log = log_then_die
    return main(argv)


if __name__ == "__main__":
    sys.exit(run_killed_after(int(sys.argv[1]), sys.argv[2:]))
