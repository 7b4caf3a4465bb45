"""The recurrent path's peak memory does not grow with the number of frames (subprocess peak RSS)."""

from __future__ import annotations

import multiprocessing

from rehyat.experiments.bench_op import DemoShape, fingerprint_rel_diff, measure

SHAPE = DemoShape(frame_tokens=128)


def _measure(method: str, frames: int) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (method, frames, SHAPE, 1))


def test_recurrent_peak_memory_is_flat_in_frames():
    short, long = _measure("recurrent", 8), _measure("recurrent", 128)
    parallel = _measure("parallel", 128)
    # Same output as the parallel form, chunk by chunk (fingerprints: per-chunk sum and sum of squares).
    assert fingerprint_rel_diff(long["fingerprint"], parallel["fingerprint"]) <= 1e-4
    # 16x the frames: the streaming run stays within a few MB, while the parallel run at 128 frames
    # (the inputs alone are ~60 MB there) needs far more — so this test can tell the two apart.
    growth = long["peak_mb"] - short["peak_mb"]
    assert growth < 15.0, (short, long)
    assert parallel["peak_mb"] > long["peak_mb"] + 100.0
