"""ToyBench: model-free metrics for generated toy-world videos [3, F, H, W] in [-1, 1].

The world's backgrounds are grey and its objects are pure hues, so the object is the chromatic part of a
frame: z = rgb − mean(rgb) is coverage × (the object's hue vector) over any grey. Projecting z on the
clip's dominant hue direction (a matched filter) and dividing by its 99.5th percentile gives a per-pixel
coverage map that survives desaturation, and zero-mean noise stays zero-mean (plain max − min chroma turns
noise into a positive bias). Pixels further than one object extent from the frame's centroid, per axis,
are then dropped, in two passes: first the world's largest extent (0.45 of the frame), then the clip's
own, estimated as that of a triangle (the sparsest shape) with the clip's median area of solid (> 0.5)
coverage and kept within the world's size range. A frame shows the object if some pixel has
coverage > 0.25. A clip whose coverage map is not spatially coherent (its correlation with itself
shifted by one pixel is under 0.05) is noise and shows no object: independent pixels correlate by
|r| < 0.03, an object by more than 0.8, and still by more than 0.08 under noise of σ = 1 (4 dB PSNR).
Per clip:

- colour: hue of the coverage-weighted mean object RGB (hue = atan2(√3(G − B), 2R − G − B)), nearest of
  the six world hues.
- shape: the world shape whose template, rendered with the measured area at the measured centroid, has
  the highest soft IoU (Σ min / Σ max) with the coverage map, averaged over frames. Size-invariant and
  sub-pixel, so it also holds at 16×16 px, where the smallest circle (4.8 px) has a nearly square mask.
- direction and speed: from the mean per-frame displacement of the object's centroid. Centroids are
  circular means per axis and displacements are taken modulo the frame extent, so tracking is exact
  across wrap-around for any video length (per-frame motion stays under half a frame). A mean speed
  under a quarter of the world's slow speed reads as "no motion" (wrong direction and speed). Speeds are
  the world's (``world``: the one-frame world's by default, :data:`rehyat.toy.world.PACKED_WORLD` for the packed one).
- background: the time-averaged grey of pixels the object does not cover, nearest world background.
- temporal consistency = 100 · presence · max(0, 1 − size_drift − colour_drift − shape_drift), where
  presence is the fraction of frames with an object, size_drift = mean |A_t − Ā| / Ā of the object's
  area, colour_drift = mean ‖c_t − c̄‖₂ of its mean RGB in [0, 1] and shape_drift = 1 − mean soft IoU of
  each frame's coverage with the clip's median coverage, every frame first moved (a Fourier shift on the
  torus, so sub-pixel) to put its centroid at the centre and smoothed by a Gaussian of σ = 0.75 px
  (drift: lower is better). Area and colour alone pass an object that fragments or dissolves into a
  texture of its own hue and area; its shape does not hold still. Rendered clips: shape drift at most
  0.015 (the smoothing absorbs what anti-aliasing changes in an object moving by fractions of a pixel);
  an object dissolving into stripes, or losing random patches, 0.26–0.29.
- first-frame jump: how far frame 0's object lies from where the track of the frames after it puts it,
  ‖c_0 − (c_s − s·v̄)‖ (s = frames per latent frame, v̄ the mean velocity) as a fraction of the frame:
  a first frame drawn elsewhere than the motion then starts from (a causal model's first frame sees
  only itself). 1 when frames 0 and s do not both show the object.
- motion smoothness = 100 · max(0, 1 − velocity_deviation), velocity_deviation = mean ‖D_t − D̄‖ /
  max(‖D̄‖, s · slow speed): how far each displacement D_t = c_{t+s} − c_t over one latent frame (s =
  the world's frames per latent frame: 1 in the one-frame world, 4 in the packed one) strays from constant
  velocity (jitter, jumps, freezes, accelerations), relative to the motion itself. Over one latent frame
  a wobble repeating every latent frame (what truncating the packed world's latent to 24 channels leaves,
  ``rehyat.toy.latent``) cancels, and a jump weighs as much as frame to frame, while sub-pixel tracking
  noise weighs a quarter. Measured on 48 third-world clips packed to 24 channels and back: 99.9 over
  latent frames, 77.6 frame to frame (the clips themselves: 100 and 97.4). A clip that shows no motion
  (or no object) has velocity deviation 1, smoothness 0: every world object moves, so a frozen one is
  not smooth motion.
- prompt adherence = 100 · mean of the colour, shape and direction hits (the three prompted attributes);
  speed and background hits are reported beside it.

PSNR (data range 2, capped at 100 dB) and SSIM compare a student's video with the teacher's from identical
noise and prompt. SSIM is the standard Gaussian-window SSIM of Wang et al. (2004): 11×11 window, σ = 1.5,
K1 = 0.01, K2 = 0.03, data range 2, per frame and channel over the valid region (no padding), then
averaged — the definition of the authors' MATLAB code and of scikit-image with ``gaussian_weights=True,
use_sample_covariance=False``; tests pin it to torchmetrics' SSIM map cropped to that region (torchmetrics'
own mean also averages the reflect-padded border). It is written here in numpy rather than imported:
torchmetrics adds ~10 s of import time (it pulls in transformers and scipy.signal) to the 2-core CPU
demo, and scikit-image several heavier packages.

All computation is single-threaded numpy, which for clips this small is fast and unaffected by a busy
machine; inputs may be torch tensors on any device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor

from rehyat.toy.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    ONE_FRAME_WORLD,
    SIZE_RANGE,
    ToyPrompt,
    World,
    background_image,
    signed_distance,
)

# Pixels above this fraction of the peak chroma set the clip's hue direction.
HUE_LEVEL = 0.5
# A frame shows the object if some pixel's coverage exceeds this (a half-dimmed object still counts).
PRESENCE_LEVEL = 0.25
# Coverage above which a pixel counts as solidly inside the object (to size it against noise).
SOLID_LEVEL = 0.5
# Coverage below which a pixel carries no weight (centroid, area, colour, shape).
WEIGHT_LEVEL = 0.1
# The clip's peak chroma is this quantile of its pixels' (objects cover several percent of a frame).
PEAK_QUANTILE = 0.995
# Below this peak ‖rgb − mean(rgb)‖ a clip has no object at all (a pure hue has √(2/3) ≈ 0.82).
MIN_PEAK_CHROMA = 0.15
# Below this correlation of the coverage map with itself shifted by one pixel a clip's chroma is noise
# (independent pixels: |r| < 0.03 measured on noise of any level), not an object (above 0.8 clean, above
# 0.08 under noise of σ = 1, 4 dB PSNR).
MIN_COHERENCE = 0.05
# Area of each shape per unit extent², for templates of the measured area.
SHAPE_AREA: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
PSNR_CAP = 100.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# Smoothing (px) of the centred coverage before the shape-drift IoU: sub-pixel anti-aliasing is not drift.
SHAPE_SIGMA = 0.75

_HUES = {name: math.atan2(math.sqrt(3) * (g - b), 2 * r - g - b) for name, (r, g, b) in COLOURS.items()}


@dataclass(frozen=True)
class Readout:
    """What ToyBench reads from one clip; an attribute is None when the clip shows none (e.g. no object).

    A clip without an object has presence 0 and drifts and velocity deviation 1 (nothing was kept); one
    whose object does not move has velocity deviation 1 (every world object moves)."""

    colour: str | None
    shape: str | None
    direction: str | None
    speed: str | None
    background: str | None
    presence: float  # fraction of frames with an object
    size_drift: float
    colour_drift: float
    velocity_deviation: float
    velocity: tuple[float, float]  # mean (dx, dy) per frame, as fractions of the frame width and height
    shape_drift: float = 1.0
    first_jump: float = 1.0


def _as_numpy(video: Tensor | np.ndarray) -> np.ndarray:
    array = (
        video.detach().float().cpu().numpy() if isinstance(video, Tensor) else np.asarray(video, np.float32)
    )
    if array.ndim != 4 or array.shape[0] != 3:
        raise ValueError(f"expected a video [3, F, H, W], got shape {list(array.shape)}")
    return array


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue angle in radians of RGB rows [..., 3]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)


def _circular_mean(weights: np.ndarray, axis: int) -> np.ndarray:
    """Weighted circular mean position (pixels) along ``axis`` of [F, H, W] weights; NaN for empty frames."""
    extent = weights.shape[axis]
    angle = 2 * np.pi * (np.arange(extent) + 0.5) / extent
    shape = [1, 1, 1]
    shape[axis] = extent
    s = (weights * np.sin(angle).reshape(shape)).sum((1, 2))
    c = (weights * np.cos(angle).reshape(shape)).sum((1, 2))
    with np.errstate(invalid="ignore"):
        position = np.arctan2(s, c) % (2 * np.pi) * extent / (2 * np.pi) - 0.5
    return np.where(weights.sum((1, 2)) > 0, position, np.nan)


def _wrap(delta: np.ndarray, extent: int) -> np.ndarray:
    return (delta + extent / 2) % extent - extent / 2


def _shape_match(weights: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> dict[str, float]:
    """Mean soft IoU of [F, H, W] object coverage with each world shape of equal area at its centroid."""
    height, width = weights.shape[1:]
    area = weights.sum((1, 2))[:, None, None]
    px, py = np.arange(width) + 0.5, np.arange(height)[:, None] + 0.5
    scores = {}
    for shape, unit_area in SHAPE_AREA.items():
        size = np.sqrt(area / unit_area)
        # A triangle's centroid lies size / 6 below the centre of its box (apex up).
        centre_y = cy[:, None, None] + (0.5 - size / 6 if shape == "triangle" else 0.5)
        dx = _wrap(px - (cx[:, None, None] + 0.5), width)
        dy = _wrap(py - centre_y, height)
        template = np.clip(0.5 - signed_distance(shape, dx, dy, size), 0, 1)
        iou = np.minimum(weights, template).sum((1, 2)) / np.maximum(weights, template).sum((1, 2))
        scores[shape] = float(iou.mean())
    return scores


def _near_centroid(weights: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[F, H, W] coverage kept within ``reach`` px of each frame's centroid (per axis, wrap-aware), and
    the centroids (x, y) of what is kept."""
    height, width = weights.shape[1:]
    cx, cy = _circular_mean(weights, 2), _circular_mean(weights, 1)
    near_x = np.abs(_wrap(np.arange(width) - np.nan_to_num(cx)[:, None], width)) <= reach  # [F, W]
    near_y = np.abs(_wrap(np.arange(height) - np.nan_to_num(cy)[:, None], height)) <= reach  # [F, H]
    weights = weights * near_y[:, :, None] * near_x[:, None, :]
    return weights, _circular_mean(weights, 2), _circular_mean(weights, 1)


def _object_weights(rgb: np.ndarray) -> np.ndarray | None:
    """Per-pixel object coverage [F, H, W] in [0, 1] (zero below ``WEIGHT_LEVEL``); None if no object.

    The chromatic part z = rgb − mean(rgb) of a pure hue over grey is coverage × (hue vector); projecting
    z on the clip's dominant hue direction (a matched filter) gives the coverage, while zero-mean noise
    projects to zero-mean values instead of the positive bias of max − min.
    """
    z = rgb - rgb.mean(0, keepdims=True)  # [3, F, H, W]
    strength = np.linalg.norm(z, axis=0)
    peak = float(np.quantile(strength, PEAK_QUANTILE))
    if peak < MIN_PEAK_CHROMA:
        return None
    hue_direction = z[:, strength > HUE_LEVEL * peak].sum(1)
    projection = np.einsum("c,cfhw->fhw", hue_direction / np.linalg.norm(hue_direction), z)
    coverage = np.clip(projection / float(np.quantile(projection, PEAK_QUANTILE)), 0, 1)
    weights = np.where(coverage > WEIGHT_LEVEL, coverage, 0.0)
    return weights if _coherence(weights) >= MIN_COHERENCE else None


def _coherence(weights: np.ndarray) -> float:
    """Mean correlation of [F, H, W] coverage with itself shifted by one pixel along x and along y
    (wrap-around): near 1 for a solid object, near 0 for independent pixels (noise)."""
    centred = weights - weights.mean()
    energy = float((centred * centred).sum())
    if energy == 0:
        return 0.0
    shifted = (np.roll(centred, 1, axis) for axis in (1, 2))
    return float(sum((centred * other).sum() for other in shifted)) / (2 * energy)


def read_back(video: Tensor | np.ndarray, world: World = ONE_FRAME_WORLD) -> Readout:
    """Read the object's attributes, drift and motion back from one clip [3, F, H, W] in [-1, 1]."""
    rgb = np.clip((_as_numpy(video).astype(np.float64) + 1) / 2, 0, 1)  # [3, F, H, W]
    height, width = rgb.shape[2:]
    weights = _object_weights(rgb)
    no_object = Readout(
        None, None, None, None, _read_background(rgb, np.zeros(rgb.shape[1:])), 0.0, 1.0, 1.0, 1.0, (0.0, 0.0)
    )
    if weights is None:
        return no_object
    # Keep only pixels within one object extent of the frame's centroid, so stray chromatic pixels
    # elsewhere bend neither the shape nor the track: first the world's largest extent, then the clip's
    # own, that of a triangle (the sparsest shape) as large as the clip's median area of solid coverage.
    extents = [bound * min(height, width) for bound in SIZE_RANGE]
    weights, cx, cy = _near_centroid(weights, extents[1])
    solid_area = float(np.median((weights > SOLID_LEVEL).sum((1, 2))))
    extent = math.sqrt(solid_area / SHAPE_AREA["triangle"])
    weights, cx, cy = _near_centroid(weights, min(extents[1], max(extents[0], extent)))
    present = (weights > PRESENCE_LEVEL).any((1, 2))
    if not present.any():
        return no_object
    area = weights.sum((1, 2))

    # Colour: per-frame mean object RGB, weighted by coverage.
    frame_rgb = np.einsum("cfhw,fhw->fc", rgb, weights) / np.maximum(area, 1e-12)[:, None]
    mean_rgb = frame_rgb[present].mean(0)
    hue = float(_hue(mean_rgb))
    colour = min(_HUES, key=lambda name: abs(math.remainder(hue - _HUES[name], 2 * math.pi)))
    colour_drift = float(np.linalg.norm(frame_rgb[present] - mean_rgb, axis=1).mean())
    size_drift = float(np.abs(area[present] / area[present].mean() - 1).mean())

    match = _shape_match(weights[present], cx[present], cy[present])
    shape = max(match, key=match.__getitem__)
    shape_drift = _shape_drift(weights[present], cx[present], cy[present])

    # Motion: wrap-aware displacements between consecutive frames that both show the object.
    pairs = present[1:] & present[:-1]
    steps = np.stack([_wrap(np.diff(cx), width), _wrap(np.diff(cy), height)], 1)[pairs]  # [P, 2] px
    direction = speed = None
    velocity = (0.0, 0.0)
    deviation = 1.0  # no motion read: as far from the prompted constant motion as a clip gets
    first_jump = 1.0
    if len(steps) >= 1:
        mean_step = steps.mean(0)
        velocity = (float(mean_step[0] / width), float(mean_step[1] / height))
        rate = math.hypot(*velocity)
        slow, fast = world.slow, world.fast
        if rate >= slow / 4:
            direction = max(
                DIRECTIONS, key=lambda d: DIRECTIONS[d][0] * velocity[0] + DIRECTIONS[d][1] * velocity[1]
            )
            speed = "fast" if rate >= math.sqrt(slow * fast) else "slow"
            deviation = _velocity_deviation(cx, cy, present, (height, width), world)
        first_jump = _first_jump(cx, cy, present, mean_step, (height, width), world)
    return Readout(
        colour,
        shape,
        direction,
        speed,
        _read_background(rgb, weights),
        float(present.mean()),
        size_drift,
        colour_drift,
        deviation,
        velocity,
        shape_drift,
        first_jump,
    )


def _shape_drift(weights: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> float:
    """1 − mean soft IoU of each frame's coverage [F, H, W] with the clip's median coverage, each frame
    moved (Fourier shift: sub-pixel, wrapping as the world does) to put its centroid at the centre and
    smoothed by a Gaussian of ``SHAPE_SIGMA`` px (in the same Fourier product)."""
    height, width = weights.shape[1:]
    fy, fx = np.fft.fftfreq(height)[None, :, None], np.fft.fftfreq(width)[None, None, :]
    shift_x, shift_y = (width / 2 - cx)[:, None, None], (height / 2 - cy)[:, None, None]
    ramp = np.exp(-2j * np.pi * (fx * shift_x + fy * shift_y))
    blur = np.exp(-2 * (np.pi * SHAPE_SIGMA) ** 2 * (fx * fx + fy * fy))
    centred = np.clip(np.fft.ifft2(np.fft.fft2(weights) * ramp * blur).real, 0, 1)
    median = np.median(centred, 0)
    union = np.maximum(centred, median).sum((1, 2))
    iou = np.minimum(centred, median).sum((1, 2)) / np.maximum(union, 1e-12)
    return float(1 - iou.mean())


def _first_jump(
    cx: np.ndarray,
    cy: np.ndarray,
    present: np.ndarray,
    mean_step: np.ndarray,
    frame: tuple[int, int],
    world: World,
) -> float:
    """Distance of frame 0's centroid from the track's (c_s − s·v̄, s frames per latent frame), as a
    fraction of the frame's smaller side; 1 when frames 0 and s do not both show the object."""
    height, width = frame
    span = max(1, min(world.frames_per_latent, len(cx) - 1))
    if not (present[0] and present[span]):
        return 1.0
    gap_x = _wrap(cx[span] - span * mean_step[0] - cx[0], width)
    gap_y = _wrap(cy[span] - span * mean_step[1] - cy[0], height)
    return float(math.hypot(gap_x, gap_y) / min(height, width))


def _velocity_deviation(
    cx: np.ndarray, cy: np.ndarray, present: np.ndarray, frame: tuple[int, int], world: World
) -> float:
    """How far the object's motion strays from constant velocity, relative to the motion itself:
    mean ‖D_t − D̄‖ / max(‖D̄‖, s · slow speed) over its displacements D_t = c_{t+s} − c_t across
    s = ``world.frames_per_latent`` frames (one latent frame; wrap-aware; both frames showing the object).

    Over one latent frame, a wobble that repeats every latent frame (a truncated packer's) cancels, while
    a jump shows in s of the displacements at s times the motion of one frame: the same share as frame
    to frame. 1.0 when no two frames s apart show the object."""
    height, width = frame
    span = max(1, min(world.frames_per_latent, len(cx) - 1))
    both = present[span:] & present[:-span]
    if not both.any():
        return 1.0
    spans = np.stack([_wrap(cx[span:] - cx[:-span], width), _wrap(cy[span:] - cy[:-span], height)], 1)[both]
    mean_span = spans.mean(0)
    reference = max(float(np.linalg.norm(mean_span)), span * world.slow * min(height, width))
    return float(np.linalg.norm(spans - mean_span, axis=1).mean() / reference)


def _read_background(rgb: np.ndarray, weights: np.ndarray) -> str | None:
    """Nearest world background to the time-averaged grey of the pixels the object leaves uncovered."""
    free = weights == 0  # [F, H, W]
    seen = free.sum(0)
    if not seen.any():
        return None
    grey = (rgb.mean(0) * free).sum(0) / np.maximum(seen, 1)
    height, width = grey.shape
    errors = {
        name: float(((grey - background_image(name, height, width)) ** 2)[seen > 0].mean())
        for name in BACKGROUNDS
    }
    return min(errors, key=errors.__getitem__)


def psnr(video: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> float:
    """PSNR in dB of two videos in [-1, 1] (data range 2), over all frames; capped at 100 dB."""
    a, b = _as_numpy(video).astype(np.float64), _as_numpy(reference).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {list(a.shape)} vs {list(b.shape)}")
    mse = float(((a - b) ** 2).mean())
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(4.0 / mse))


def _gaussian_filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes."""
    x = sliding_window_view(x, len(kernel), axis=-1) @ kernel
    return sliding_window_view(x, len(kernel), axis=-2) @ kernel


def ssim(video: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> float:
    """Mean Gaussian-window SSIM (11×11, σ = 1.5, data range 2) over frames, channels and valid pixels."""
    a, b = _as_numpy(video).astype(np.float64), _as_numpy(reference).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {list(a.shape)} vs {list(b.shape)}")
    if min(a.shape[2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW} px, got {list(a.shape[2:])}"
        )
    offsets = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    kernel /= kernel.sum()
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    mu_a, mu_b = _gaussian_filter(a, kernel), _gaussian_filter(b, kernel)
    var_a = np.maximum(_gaussian_filter(a * a, kernel) - mu_a**2, 0)  # ≥ 0 up to rounding
    var_b = np.maximum(_gaussian_filter(b * b, kernel) - mu_b**2, 0)
    cov = _gaussian_filter(a * b, kernel) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _consistency(readout: Readout) -> float:
    """Temporal consistency of one clip in points: presence × (1 − size, colour and shape drift), floored
    at 0."""
    drift = readout.size_drift + readout.colour_drift + readout.shape_drift
    return 100 * readout.presence * max(0.0, 1 - drift)


def _smoothness(readout: Readout) -> float:
    """Motion smoothness of one clip in points: 100 · (1 − velocity deviation), floored at 0."""
    return 100 * max(0.0, 1 - readout.velocity_deviation)


def evaluate_videos(
    videos: Tensor | Sequence[Tensor],
    prompts: Sequence[ToyPrompt | str],
    reference: Tensor | Sequence[Tensor] | None = None,
    *,
    world: World = ONE_FRAME_WORLD,
) -> dict[str, Any]:
    """ToyBench over clips [B, 3, F, H, W] (or a list of [3, F, H, W]) generated for ``prompts``.

    Returns JSON-ready floats: accuracies and scores in points (0–100, higher is better), raw drifts and
    velocity deviation (lower is better), and with ``reference`` (e.g. the teacher's videos from the same
    noise and prompts) mean PSNR (dB) and SSIM; ``per_clip`` holds each clip's readout and hits and, under
    the names of the means they make, its scores (adherence, the five ``*_accuracy`` as 0 or 100,
    temporal consistency, motion smoothness, size drift, and PSNR and SSIM with ``reference``), for
    paired comparisons between models (``rehyat.experiments.toy_quality.difference_interval``).
    ``world``: the toy world the prompts are of (its speeds and frames per latent frame).
    """
    if len(videos) != len(prompts) or len(videos) == 0:
        raise ValueError(
            f"need one prompt per video and at least one video, got {len(videos)} and {len(prompts)}"
        )
    if reference is not None and len(reference) != len(videos):
        raise ValueError(f"need one reference per video, got {len(reference)} for {len(videos)}")
    per_clip = []
    for index, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
        target = ToyPrompt.parse(prompt) if isinstance(prompt, str) else prompt
        readout = read_back(video, world)
        hits = {
            name: getattr(readout, name) == getattr(target, name)
            for name in ("colour", "shape", "direction", "speed", "background")
        }
        clip: dict[str, Any] = {
            "prompt": target.text,
            "readout": asdict(readout),
            "hits": hits,
            "adherence": 100 * float(np.mean([hits["colour"], hits["shape"], hits["direction"]])),
            **{f"{name}_accuracy": 100.0 * hit for name, hit in hits.items()},
            "temporal_consistency": _consistency(readout),
            "motion_smoothness": _smoothness(readout),
            "size_drift": readout.size_drift,
            "shape_drift": readout.shape_drift,
            "first_jump": readout.first_jump,
        }
        if reference is not None:
            clip["psnr"] = psnr(video, reference[index])
            clip["ssim"] = ssim(video, reference[index])
        per_clip.append(clip)

    def mean(values: Sequence[float]) -> float:
        return float(np.mean(values))

    readouts = [clip["readout"] for clip in per_clip]
    accuracy = {name: 100 * mean([clip["hits"][name] for clip in per_clip]) for name in per_clip[0]["hits"]}
    frames, height, width = _as_numpy(videos[0]).shape[1:]
    result: dict[str, Any] = {
        "clips": len(per_clip),
        "frames": int(frames),
        "height": int(height),
        "width": int(width),
        "adherence": mean([accuracy["colour"], accuracy["shape"], accuracy["direction"]]),
        **{f"{name}_accuracy": value for name, value in accuracy.items()},
        "temporal_consistency": mean([clip["temporal_consistency"] for clip in per_clip]),
        "object_presence": 100 * mean([r["presence"] for r in readouts]),
        "size_drift": mean([r["size_drift"] for r in readouts]),
        "colour_drift": mean([r["colour_drift"] for r in readouts]),
        "shape_drift": mean([r["shape_drift"] for r in readouts]),
        "first_jump": mean([r["first_jump"] for r in readouts]),
        "motion_smoothness": mean([clip["motion_smoothness"] for clip in per_clip]),
        "velocity_deviation": mean([r["velocity_deviation"] for r in readouts]),
    }
    if reference is not None:
        result["psnr"] = mean([clip["psnr"] for clip in per_clip])
        result["ssim"] = mean([clip["ssim"] for clip in per_clip])
    result["per_clip"] = per_clip
    return result
