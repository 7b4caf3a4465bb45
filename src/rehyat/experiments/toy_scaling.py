"""Time and peak memory of generating one toy video as it grows: the teacher (full attention, parallel)
against a ReHyAt student (recurrent) — ``rehyat demo``'s part 3, made to survive a shared machine.

- Each measurement runs in a fresh process, so its peak memory is its own; the processes fork from a
  server that has already imported torch, diffusers and the library, so a measurement pays no imports.
- Repeats are interleaved: every repeat measures every length, teacher and student back to back,
  alternating which goes first, so a change in the machine's load falls on both models alike. The table
  holds medians (and the range); the load average (``os.getloadavg``) is recorded before, between and
  after the repeats.
- :func:`crossover` says from which length the student is faster and what each costs per frame.
"""

from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing
import os
import resource
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from rehyat.toy.evaluate import sample_videos, toy_prompts
from rehyat.toy.model import load_text_encoder, load_toy_model, prompt_embeddings, toy_space
from rehyat.utils import check_int

TEACHER, STUDENT = "teacher (parallel, softmax)", "rehyat (recurrent)"
#: Imported once by the fork server, before any measurement forks from it.
_PRELOAD = [
    "rehyat.experiments.toy_scaling",
    "diffusers.models.transformers.transformer_wan",
    "rehyat.models",
]


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms from /proc (Linux) by a thread.

    ``ru_maxrss`` cannot be used here: it keeps the peak of the whole process, and importing the
    libraries and loading the model peak higher than generating a small video does.
    """

    def __enter__(self) -> PeakRSS:
        self._page = resource.getpagesize()
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def release_free_memory() -> None:
    """Give the heap's free memory back to the system (glibc's ``malloc_trim``; nothing where the C
    library has none), so that resident memory measured next counts what a call holds, not what an
    earlier call freed but the allocator kept."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _measure(
    teacher: str, rehyat: str | None, frames: int, steps: int, device: str, threads: int, chunks_per_call: int
) -> dict:
    """Worker body: time and peak memory (above the loaded model) of generating one video of ``frames``
    latent frames in ``steps`` sampler steps without guidance (one branch: the cost per denoising call
    is what grows with the length); the student (``rehyat`` given) runs recurrently, ``chunks_per_call``
    chunks per model call.

    A warm-up generates the same video first, so the timed call pays no first-call costs of its shapes;
    then the memory it freed is returned (:func:`release_free_memory`; on CUDA the peak statistics are
    reset), so the peak is that of the measured call alone."""
    torch.set_num_threads(threads)
    model = load_toy_model(Path(teacher), None if rehyat is None else Path(rehyat), torch.device(device))
    embeds = prompt_embeddings(load_text_encoder(teacher), toy_prompts(1, 99)).to(device)
    settings = {
        "steps": steps,
        "guidance_scale": 1.0,
        "first_seed": 0,
        "recurrent": rehyat is not None,
        "space": toy_space(teacher),
        "chunks_per_call": chunks_per_call,
    }
    sample_videos(model, embeds, frames=frames, **settings)  # warm-up at the measured length
    release_free_memory()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    cpu = time.process_time()
    tic = time.perf_counter()
    with PeakRSS() as rss:
        sample_videos(model, embeds, frames=frames, **settings)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - tic
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device == "cuda" else rss.mib
    return {"frames": frames, "seconds": seconds, "cpu_s": time.process_time() - cpu, "peak_mib": peak}


def _context():
    """Fork server with the libraries preloaded where the platform has one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def measure_scaling(
    teacher: str | Path,
    student: str | Path,
    frames: Sequence[int],
    *,
    repeats: int = 3,
    steps: int = 1,
    device: str = "cpu",
    threads: int = 2,
    chunks_per_call: int = 1,
) -> dict:
    """Generation time and peak memory of the teacher (parallel) and ``student`` (a ReHyAt checkpoint
    on ``teacher``, recurrent) at each length in ``frames`` (latent frames), ``repeats`` interleaved
    rounds: per round and length the two models back to back, the first of them alternating by round.
    The student runs ``chunks_per_call`` chunks per model call (:func:`rehyat.models.hooks.apply_recurrent`).

    Returns ``rows`` (per model, per length: the median seconds, their range, the median peak MiB and
    ms per frame per step), ``raw`` (every measurement, in the order run), the load averages and
    :func:`crossover` of the rows."""
    check_int("repeats", repeats, 1)
    check_int("steps", steps, 1)
    check_int("threads", threads, 1)
    check_int("chunks_per_call", chunks_per_call, 1)
    if not frames:
        raise ValueError("frames must name at least one length")
    for length in frames:
        check_int("frames", length, 1)
    folders = {TEACHER: None, STUDENT: str(student)}
    raw: list[dict] = []
    load = [os.getloadavg()]
    with _context().Pool(1, maxtasksperchild=1) as pool:  # a fresh process per measurement
        for repeat in range(repeats):
            for length in frames:
                order = (TEACHER, STUDENT) if repeat % 2 == 0 else (STUDENT, TEACHER)
                for name in order:
                    args = (str(teacher), folders[name], length, steps, device, threads, chunks_per_call)
                    raw.append({"model": name, "repeat": repeat, **pool.apply(_measure, args)})
            load.append(os.getloadavg())
    rows = {
        name: [_summary([r for r in raw if r["model"] == name and r["frames"] == f], steps) for f in frames]
        for name in folders
    }
    return {
        "rows": rows,
        "raw": raw,
        "repeats": repeats,
        "steps": steps,
        "threads": threads,
        "chunks_per_call": chunks_per_call,
        "device": device,
        "cpu_count": os.cpu_count(),
        "load_average": [list(values) for values in load],
        "crossover": crossover(rows),
    }


def _summary(runs: list[dict], steps: int) -> dict:
    seconds = [r["seconds"] for r in runs]
    median = statistics.median(seconds)
    frames = runs[0]["frames"]
    return {
        "frames": frames,
        "seconds": median,
        "seconds_min": min(seconds),
        "seconds_max": max(seconds),
        "peak_mib": statistics.median(r["peak_mib"] for r in runs),
        "ms_per_frame": 1000 * median / (frames * steps),
        "runs": len(runs),
    }


def crossover(rows: dict[str, list[dict]]) -> dict:
    """Where the student's median time drops below the teacher's, for good: ``first_faster`` (the
    shortest measured length from which the student is faster at every longer one; None if it never is)
    and ``estimate`` (the ratio's crossing of 1, interpolated on log-log axes between that length and
    the one before; None when it is faster from the first length on or never). ``ratio``: student /
    teacher per length."""
    teacher = {r["frames"]: r["seconds"] for r in rows[TEACHER]}
    student = {r["frames"]: r["seconds"] for r in rows[STUDENT]}
    lengths = sorted(teacher)
    ratio = {f: student[f] / teacher[f] for f in lengths}
    first = next((i for i in range(len(lengths)) if all(ratio[f] < 1 for f in lengths[i:])), None)
    estimate = None
    if first is not None and first > 0:
        (f0, f1), (r0, r1) = (
            lengths[first - 1 : first + 1],
            (ratio[lengths[first - 1]], ratio[lengths[first]]),
        )
        x0, x1, y0, y1 = math.log(f0), math.log(f1), math.log(r0), math.log(r1)
        estimate = math.exp(x0 + (0 - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(f1)
    return {
        "first_faster": None if first is None else lengths[first],
        "estimate": estimate,
        "ratio": {str(f): q for f, q in ratio.items()},
    }


def _frames_list(lengths: list[int]) -> str:
    """``[8]`` → "8", ``[8, 16]`` → "8 and 16", ``[4, 8, 16]`` → "4, 8 and 16"."""
    words = [str(f) for f in lengths]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def crossover_text(result: dict, chunk_frames: int, overlap_frames: int, frame_tokens: int) -> str:
    """The crossover in words, from :func:`measure_scaling`'s result for a student of chunks of
    ``chunk_frames`` latent frames of ``frame_tokens`` tokens and ``overlap_frames`` frames before them.
    It states only what the run measured (its own numbers), and nothing measured elsewhere."""
    rows, cross = result["rows"], result["crossover"]
    teacher, student = rows[TEACHER], rows[STUDENT]
    lengths = [r["frames"] for r in teacher]
    window = chunk_frames + overlap_frames
    faster = [f for f in lengths if cross["ratio"][str(f)] < 1]
    if cross["first_faster"] is None and not faster:
        where = (
            f"The student is not faster than the teacher at any measured length (up to {lengths[-1]} frames)."
        )
    elif cross["first_faster"] is None:
        where = (
            f"The student was faster than the teacher at {_frames_list(faster)} frames but not at "
            f"{lengths[-1]}, the longest measured: no crossover holds over these lengths."
        )
    elif cross["estimate"] is None:
        where = f"The student is faster than the teacher from the shortest measured length ({lengths[0]} frames) on."
    else:
        before = lengths[lengths.index(cross["first_faster"]) - 1]
        where = (
            f"The crossover lies between {before} and {cross['first_faster']} frames (about "
            f"{cross['estimate']:.0f} by log-log interpolation): from there on the recurrent student is "
            f"faster, {1 / cross['ratio'][str(lengths[-1])]:.1f}× at {lengths[-1]} frames."
        )
    per_frame = [r["ms_per_frame"] for r in student]
    per_call = result.get("chunks_per_call", 1)
    calls = (
        f"once per chunk of {chunk_frames} latent frame(s) ({chunk_frames * frame_tokens} tokens)"
        if per_call == 1
        else f"once per {per_call} chunks of {chunk_frames} latent frame(s) "
        f"({per_call * chunk_frames * frame_tokens} tokens)"
    )
    text = (
        f"{where} The recurrent form calls the model {calls}, and its time per frame was "
        f"{statistics.median(per_frame):.0f} ms (median over the lengths; "
        f"{min(per_frame):.0f}–{max(per_frame):.0f}"
        + ("", ": about the same at every length, a cost per chunk that did not grow with the video")[
            max(per_frame) <= 1.5 * min(per_frame)
        ]
        + ")"
    )
    shortest = lengths[0]
    if shortest > window and student[0]["ms_per_frame"] > teacher[0]["ms_per_frame"]:
        text += (
            f". At {shortest} frames the student took {student[0]['ms_per_frame']:.0f} ms per frame "
            f"against the teacher's {teacher[0]['ms_per_frame']:.0f}, though it attends to {window} frames "
            f"with softmax where the teacher attends to all {shortest}"
        )
    cheapest = min(teacher[:-1] or teacher, key=lambda r: r["ms_per_frame"])
    first, last = cheapest["ms_per_frame"], teacher[-1]["ms_per_frame"]
    if last > first:
        text += (
            f". The teacher's full attention cost more per frame the longer the video ({first:.0f} ms at "
            f"{cheapest['frames']} frames, {last:.0f} ms at {lengths[-1]})"
        )
        if cross["first_faster"] is None:
            text += (
                f", but at {lengths[-1]} frames, the longest measured, that was still no more than the "
                f"student's {student[-1]['ms_per_frame']:.0f} ms"
                + (": the student was not faster at any measured length." if not faster else ".")
            )
        elif cross["estimate"] is None:
            text += "; the student was faster at every measured length."
        else:
            text += ": it overtook the student's cost per frame at the crossover."
    else:
        text += (
            f". Over these lengths the teacher's cost per frame did not grow ({first:.0f} ms at "
            f"{cheapest['frames']} frames, {last:.0f} ms at {lengths[-1]})."
        )
    memory = {name: (rows[name][0]["peak_mib"], rows[name][-1]["peak_mib"]) for name in (TEACHER, STUDENT)}
    return text + (
        f" Peak memory from {lengths[0]} to {lengths[-1]} frames: teacher {memory[TEACHER][0]:.0f} → "
        f"{memory[TEACHER][1]:.0f} MiB, student {memory[STUDENT][0]:.0f} → {memory[STUDENT][1]:.0f} MiB."
    )


def load_text(result: dict) -> str:
    """How loaded the machine was while measuring, in words."""
    one_minute = [values[0] for values in result["load_average"]]
    cores = result["cpu_count"]
    text = (
        f"Medians of {result['repeats']} interleaved repeats (each repeat: every length, teacher and "
        f"student back to back, alternating which runs first), {result['threads']} threads. Load average "
        f"(1 min, `os.getloadavg`, which counts this measurement's own threads too) "
        f"{min(one_minute):.1f}–{max(one_minute):.1f} on {cores} cores."
    )
    # A quiet machine reads about the measurement's own threads (2.0-2.1 with 2 threads on 2 cores): only
    # half a core more than the cores counts as other work.
    if max(one_minute) > cores + 0.5:
        text += (
            " **The machine was busier than its cores:** other work shared them, so every time above is "
            "inflated, the student's most (its many small per-chunk operations each wait for every thread)."
        )
    return text
