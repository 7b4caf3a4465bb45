"""metrics.jsonl: one clean curve across resumes, and never written through a symbolic link."""

from __future__ import annotations

import pytest

from rehyat.training.metrics import MetricsLogger, read_metrics


def _linked_run(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / MetricsLogger.FILE).symlink_to(outside)
    return out, outside


def test_a_symlinked_metrics_file_is_replaced_never_followed(tmp_path):
    out, outside = _linked_run(tmp_path)
    logger = MetricsLogger(out, tensorboard=False)
    logger.log(1, loss=0.5)
    logger.close()
    assert outside.read_text() == "precious\n"
    assert not (out / MetricsLogger.FILE).is_symlink()
    assert [r["step"] for r in read_metrics(out)] == [1]


def test_resuming_onto_a_symlinked_metrics_file_is_refused(tmp_path):
    out, outside = _linked_run(tmp_path)
    with pytest.raises(ValueError, match=r"metrics\.jsonl is a symbolic link"):
        MetricsLogger(out, resume_step=3, tensorboard=False)
    assert outside.read_text() == "precious\n"


def test_resume_drops_records_after_the_checkpoint_and_a_torn_line(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        logger.log(step, loss=float(step))
    logger.close()
    with (tmp_path / MetricsLogger.FILE).open("a") as file:
        file.write('{"step": 4, "lo')  # killed mid-write
    logger = MetricsLogger(tmp_path, resume_step=2, tensorboard=False)
    logger.log(3, loss=3.5)
    logger.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.5)]
