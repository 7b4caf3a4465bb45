"""``python -m rehyat.cli`` under worker processes: a ``spawn`` worker imports the main module again
(as ``__mp_main__``), which must not run the command."""

from __future__ import annotations

import runpy

import rehyat.cli


def test_the_main_module_runs_the_command_only_as_main(monkeypatch):
    calls = []
    monkeypatch.setattr(rehyat.cli, "main", lambda: calls.append(1) or 0)
    runpy.run_module("rehyat.cli.__main__", run_name="__mp_main__")
    assert calls == []
