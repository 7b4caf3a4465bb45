"""The README stays true: its Python example runs and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs():
    """The op example (the first Python block) runs as written; the Wan example needs a real checkpoint."""
    example = re.findall(r"```python\n(.*?)```", README, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    torch.testing.assert_close(namespace["y_stream"], namespace["y"], rtol=1e-4, atol=1e-5)


def test_ci_runs_the_readme_test_command():
    marker = README.index("<!-- test-command -->")
    command = re.search(r"```bash\n(.*?)\n```", README[marker:], flags=re.S).group(1)
    assert command.startswith("pip install torch==2.13.0 ") and "pytest" in command
    assert "<!-- test-command -->" in (ROOT / ".ci" / "run").read_text()
