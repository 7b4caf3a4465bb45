"""The demo's time-and-memory part: interleaved repeats, medians, the load recorded, and the crossover."""

from __future__ import annotations

import statistics

import pytest

from rehyat.experiments.toy_scaling import (
    STUDENT,
    TEACHER,
    crossover,
    crossover_text,
    load_text,
    measure_scaling,
)
from rehyat.toy.model import bundled_student, bundled_teacher


def test_measurements_are_interleaved_and_summarised_by_medians():
    result = measure_scaling(
        bundled_teacher(), bundled_student(), (2, 3), repeats=2, steps=1, chunks_per_call=2
    )
    assert result["chunks_per_call"] == 2
    # Every repeat measures every length, the two models back to back, the first alternating by repeat.
    order = [(r["repeat"], r["frames"], r["model"]) for r in result["raw"]]
    assert order == [
        (0, 2, TEACHER),
        (0, 2, STUDENT),
        (0, 3, TEACHER),
        (0, 3, STUDENT),
        (1, 2, STUDENT),
        (1, 2, TEACHER),
        (1, 3, STUDENT),
        (1, 3, TEACHER),
    ]
    for name in (TEACHER, STUDENT):
        assert [row["frames"] for row in result["rows"][name]] == [2, 3]
        for row in result["rows"][name]:
            runs = [r for r in result["raw"] if r["model"] == name and r["frames"] == row["frames"]]
            assert row["runs"] == 2 and row["seconds"] == statistics.median(r["seconds"] for r in runs)
            assert row["seconds_min"] <= row["seconds"] <= row["seconds_max"] and row["peak_mib"] >= 0
            assert row["ms_per_frame"] == pytest.approx(1000 * row["seconds"] / row["frames"])
    # The load average before, between and after the repeats, and the machine's size.
    assert len(result["load_average"]) == 3 and all(len(v) == 3 for v in result["load_average"])
    assert result["cpu_count"] >= 1 and "Load average" in load_text(result)
    assert set(result["crossover"]["ratio"]) == {"2", "3"}


def _rows(teacher: list[float], student: list[float], frames=(16, 32, 64, 128)) -> dict:
    def rows(seconds):
        return [
            {"frames": f, "seconds": s, "ms_per_frame": 1000 * s / f, "peak_mib": f / 4}
            for f, s in zip(frames, seconds, strict=True)
        ]

    return {TEACHER: rows(teacher), STUDENT: rows(student)}


def test_the_crossover_is_where_the_student_stays_faster():
    # Quadratic teacher, linear student: equal at 64 frames' neighbourhood, faster from 128 on.
    rows = _rows([0.2, 0.6, 1.9, 7.0], [0.5, 1.0, 2.0, 4.0])
    found = crossover(rows)
    assert found["first_faster"] == 128 and 64 < found["estimate"] < 128
    assert found["ratio"]["16"] == pytest.approx(2.5)
    text = crossover_text({"rows": rows, "crossover": found}, 1, 3, 144)
    assert "between 64 and 128 frames" in text and "1.8× at 128 frames" in text
    assert "31 ms (median over the lengths; 31–31: about the same at every length, a cost per chunk" in text
    assert "At 16 frames the student took 31 ms per frame against the teacher's 12" in text
    assert "cost more per frame the longer the video (12 ms at 16 frames, 55 ms at 128): it overtook" in text
    assert text.endswith("teacher 4 → 32 MiB, student 4 → 32 MiB.")
    per_call = crossover_text({"rows": rows, "crossover": found, "chunks_per_call": 4}, 1, 3, 144)
    assert "calls the model once per 4 chunks of 1 latent frame(s) (576 tokens)" in per_call
    assert "calls the model once per chunk of 1 latent frame(s) (144 tokens)" in text
    # Faster at one length but slower again after it: not a crossover yet.
    assert crossover(_rows([1, 2, 3, 4], [2, 1, 4, 3]))["first_faster"] == 128
    assert crossover(_rows([1, 1, 1, 1], [2, 2, 2, 2]))["first_faster"] is None
    assert crossover(_rows([2, 2, 2, 2], [1, 1, 1, 1])) == {
        "first_faster": 16,
        "estimate": None,
        "ratio": {"16": 0.5, "32": 0.5, "64": 0.5, "128": 0.5},
    }


def _text(teacher: list[float], student: list[float]) -> str:
    rows = _rows(teacher, student)
    return crossover_text({"rows": rows, "crossover": crossover(rows)}, 1, 3, 144)


def test_the_crossover_text_states_only_what_the_run_measured():
    # Never faster: the teacher's cost per frame grows, but no crossover is claimed.
    never = _text([0.2, 0.6, 1.9, 5.0], [1.0, 2.0, 4.0, 8.0])
    assert never.startswith("The student is not faster than the teacher at any measured length (up to 128")
    assert "at 128 frames, the longest measured, that was still no more than the student's 62 ms" in never
    assert "the student was not faster at any measured length." in never
    assert "crossover" not in never and "overt" not in never
    # Faster from the shortest length on: no crossover between lengths either.
    always = _text([2.0, 4.0, 9.0, 20.0], [1.0, 2.0, 4.0, 8.0])
    assert always.startswith("The student is faster than the teacher from the shortest measured length (16")
    assert "the student was faster at every measured length." in always and "crossover" not in always
    # A teacher whose cost per frame does not grow, a student whose does: no claim of a fixed cost.
    flat = _text([1.0, 2.0, 4.0, 8.0], [0.5, 2.0, 8.0, 32.0])
    assert "did not grow (62 ms at 16 frames, 62 ms at 128)." in flat and "cost per chunk" not in flat
    assert flat.startswith("The student was faster than the teacher at 16 frames but not at 128, the longest")
    # Faster at some length but not at the longest: said as measured, never "not faster at any length".
    between = _text([0.2, 0.6, 1.9, 5.0], [1.0, 0.5, 1.5, 8.0])
    assert between.startswith("The student was faster than the teacher at 32 and 64 frames but not at 128")
    assert "still no more than the student's 62 ms." in between and "any measured length" not in between
    # Nothing but the run: no sentence about another model, size or results file.
    crossing = _text([0.2, 0.6, 1.9, 7.0], [0.5, 1.0, 2.0, 4.0])
    for text in (never, always, flat, between, crossing):
        assert "Wan" not in text and "bench/results" not in text and "GPU" not in text


def test_the_peak_is_that_of_the_measured_call(monkeypatch):
    """The warm-up generates the measured length, and the memory it freed is returned before the peak
    is taken (so a short video's peak is not hidden in memory its warm-up left behind)."""
    from rehyat.experiments import toy_scaling

    calls = []
    monkeypatch.setattr(toy_scaling, "sample_videos", lambda model, embeds, frames, **_: calls.append(frames))
    monkeypatch.setattr(toy_scaling, "release_free_memory", lambda: calls.append("release"))
    row = toy_scaling._measure(str(bundled_teacher()), None, 3, 1, "cpu", 1, 1)
    assert calls == [3, "release", 3] and row["frames"] == 3 and row["peak_mib"] >= 0


def test_a_busy_machine_is_said_to_be_busy():
    quiet = {"repeats": 3, "threads": 2, "cpu_count": 2, "load_average": [[1.0, 1, 1], [1.9, 1, 1]]}
    busy = {**quiet, "load_average": [[1.0, 1, 1], [5.0, 1, 1]]}
    own_threads = {**quiet, "load_average": [[2.0, 1, 1], [2.1, 1, 1]]}  # the measurement's own 2 threads
    assert "busier than its cores" not in load_text(quiet)
    assert "busier than its cores" not in load_text(own_threads)
    assert "busier than its cores" in load_text(busy)
