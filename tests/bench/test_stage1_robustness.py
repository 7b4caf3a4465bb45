"""``rehyat bench stage1``'s table: counts per φ variant and learning rate, notes kept on a re-render."""

from __future__ import annotations

import json

from rehyat.cli import main
from rehyat.experiments.common import NOTES_MARKER, environment, write_json
from rehyat.experiments.stage1_robustness import VARIANTS
from rehyat.toy.recipe import RecipeSettings


def _row(variant: str, lr: float, seed: int, trained: list[float], reverted: list[bool]) -> dict:
    blocks = {
        str(b): {"trained": t, "untrained": 0.3, "reverted": r}
        for b, (t, r) in enumerate(zip(trained, reverted, strict=True))
    }
    return {"variant": variant, "lr": lr, "seed": seed, "blocks": blocks, "seconds": 1.0}


def test_render_counts_blocks_worse_than_untrained_and_keeps_notes(tmp_path):
    names = list(VARIANTS)
    signed, nonneg = names[0], names[-1]
    payload = {
        "environment": environment(),
        "settings": json.loads(json.dumps(RecipeSettings().__dict__, default=list)),
        "seeds": [0, 1],
        "rows": [
            _row(signed, 1e-3, 0, [0.2, 4.0], [False, True]),
            _row(signed, 1e-3, 1, [0.5, 0.1], [True, False]),
            _row(nonneg, 1e-3, 0, [0.2, 0.25], [False, False]),
            _row(nonneg, 1e-3, 1, [0.1, 0.2], [False, False]),
        ],
    }
    write_json(payload, tmp_path / "stage1_robustness.json")
    (tmp_path / "stage1_robustness.md").write_text(f"old\n{NOTES_MARKER}\n\n## By hand\n")
    assert main(["bench", "stage1", "--render-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "stage1_robustness.md").read_text()
    assert f"| {signed} | 0.001 | 2 | 2/4 | 1/4 | 2/4 |" in text  # 4.0 and 0.5 are worse; 4.0 blew up
    assert f"| {nonneg} | 0.001 | 2 | 0/4 | 0/4 | 0/4 |" in text
    assert "old" not in text.split(NOTES_MARKER)[0] and text.endswith("## By hand\n")
