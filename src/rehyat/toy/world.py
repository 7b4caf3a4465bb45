"""A procedural toy video world: one coloured shape moving at constant velocity over a grey background.

It is the project's embedded default: no real video model can be downloaded, so a small teacher
is trained on these clips and ToyBench reads the prompted attributes back from generated frames.

Design choices, all resolution-independent:

- Objects are fully saturated hues 60° apart; backgrounds are achromatic (grey levels only), so the object
  is exactly the chromatic part of a frame and its colour is a hue read-back.
- The scene is a torus: the object wraps around the frame edges. Motion is then constant velocity forever
  (bounce would reverse the prompted direction), so a video of any length, e.g. 4× the training length,
  keeps its prompt true. Speeds are fractions of the frame extent per frame, below half a frame, so a
  wrap-aware tracker recovers the motion unambiguously.
- Edges are anti-aliased from a signed distance (coverage = clamp(0.5 − d, 0, 1)), so sub-pixel motion at
  small sizes is smooth rather than jumping by whole pixels.
- The start position and the object's size are random per video (from ``seed``) and not in the prompt:
  a model must keep the size it chose for the whole clip, so size drift measures what a chunk remembers
  of the chunks before it. Everything else follows from the prompt, so ``render`` is deterministic given
  (prompt, frame size, seed).
- Speeds are whole pixels per frame at the training size (1 and 2 px at 24 px; 2 px is one 2×2 patch).

Default size: 16 frames of 32×32 px, i.e. 16 latent frames of 16×16 = 256 tokens for a pixel-space Wan
transformer with patch (1, 2, 2); 16×16 px gives 64 tokens per frame.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# Pure hues (HSV S = V = 1), 60° apart: a read-back tolerates ±30° of hue error.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "blue": (0.0, 0.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
# Bounding-box fill ratios 1, π/4 and 1/2 keep the shapes apart for a mask-based read-back.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit steps in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Fraction of the frame extent (width for horizontal, height for vertical motion) travelled per frame.
SPEEDS: dict[str, float] = {"slow": 1 / 24, "fast": 1 / 12}
# The adverb each speed takes in a prompt.
SPEED_WORDS: dict[str, str] = {"slow": "slowly", "fast": "quickly"}
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered", "gradient")
# Object extent (circle diameter, square side, triangle base and height) as a fraction of min(H, W):
# drawn uniformly from this range per video.
SIZE_RANGE: tuple[float, float] = (0.3, 0.45)

DEFAULT_FRAMES = 16
DEFAULT_HEIGHT = 32
DEFAULT_WIDTH = 32

_PROMPT_RE = re.compile(r"a (\w+) (\w+) moving (\w+) (\w+) on a (\w+) background")


@dataclass(frozen=True)
class ToyPrompt:
    """One point of the world's attribute grid; ``text`` renders it and :meth:`parse` reads it back."""

    colour: str
    shape: str
    direction: str
    speed: str
    background: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("colour", self.colour, tuple(COLOURS)),
            ("shape", self.shape, SHAPES),
            ("direction", self.direction, tuple(DIRECTIONS)),
            ("speed", self.speed, tuple(SPEEDS)),
            ("background", self.background, BACKGROUNDS),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")

    @property
    def text(self) -> str:
        """The prompt sentence, e.g. 'a red circle moving left slowly on a striped background'."""
        return (
            f"a {self.colour} {self.shape} moving {self.direction} {SPEED_WORDS[self.speed]} "
            f"on a {self.background} background"
        )

    @classmethod
    def parse(cls, text: str) -> ToyPrompt:
        """Inverse of :attr:`text` (case and surrounding whitespace ignored); ValueError otherwise."""
        match = _PROMPT_RE.fullmatch(" ".join(text.lower().split()))
        if match is None:
            raise ValueError(
                f"cannot parse toy prompt {text!r}; expected e.g. "
                "'a red circle moving left slowly on a striped background'"
            )
        colour, shape, direction, adverb, background = match.groups()
        speeds = {word: speed for speed, word in SPEED_WORDS.items()}
        if adverb not in speeds:
            raise ValueError(f"unknown speed word {adverb!r}; expected one of {', '.join(speeds)}")
        return cls(colour, shape, direction, speeds[adverb], background)


def all_prompts() -> list[ToyPrompt]:
    """Every prompt of the world (6 colours × 3 shapes × 4 directions × 2 speeds × 4 backgrounds = 576)."""
    return [
        ToyPrompt(c, s, d, v, b)
        for c in COLOURS
        for s in SHAPES
        for d in DIRECTIONS
        for v in SPEEDS
        for b in BACKGROUNDS
    ]


def sample_prompt(rng: random.Random) -> ToyPrompt:
    """A uniformly random prompt, each attribute drawn independently from ``rng``."""
    return ToyPrompt(
        rng.choice(list(COLOURS)),
        rng.choice(SHAPES),
        rng.choice(list(DIRECTIONS)),
        rng.choice(list(SPEEDS)),
        rng.choice(BACKGROUNDS),
    )


def velocity(prompt: ToyPrompt, height: int, width: int) -> tuple[float, float]:
    """The object's (dx, dy) in pixels per frame."""
    step_x, step_y = DIRECTIONS[prompt.direction]
    speed = SPEEDS[prompt.speed]
    return step_x * speed * width, step_y * speed * height


def object_size(unit: float, height: int, width: int) -> float:
    """The object's extent in pixels for a uniform draw ``unit`` in [0, 1) (see ``SIZE_RANGE``)."""
    low, high = SIZE_RANGE
    return (low + (high - low) * unit) * min(height, width)


def background_image(background: str, height: int, width: int) -> np.ndarray:
    """The static grey background [H, W] float32 in [0, 1]: uniform, vertical stripes, checkers or a ramp."""
    yy, xx = np.meshgrid((np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width, indexing="ij")
    dark, light = 0.3, 0.55
    if background == "plain":
        image = np.full((height, width), 0.4)
    elif background == "striped":
        image = np.where(np.floor(xx * 8) % 2 == 0, dark, light)
    elif background == "checkered":
        image = np.where((np.floor(xx * 4) + np.floor(yy * 4)) % 2 == 0, dark, light)
    elif background == "gradient":
        image = 0.15 + 0.5 * yy
    else:
        raise ValueError(f"unknown background {background!r}; expected one of {', '.join(BACKGROUNDS)}")
    return image.astype(np.float32)


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) of (dx, dy) from a shape of extent ``size`` at 0."""
    half = size / 2
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - half
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - half
    # Upward-pointing triangle, apex at (0, −half), base from (−half, half) to (half, half): inside iff
    # dy ≤ half and |dx| ≤ (dy + half) / 2; the slanted edges' normals have length √5 / 2.
    slant = (np.abs(dx) - (dy + half) / 2) * (2 / math.sqrt(5))
    return np.maximum(dy - half, slant)


def render(
    prompt: ToyPrompt | str,
    num_frames: int = DEFAULT_FRAMES,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    seed: int = 0,
) -> Tensor:
    """Render a clip [3, F, H, W] float32 in [-1, 1]; the start position and size depend on ``seed``.

    Computed in single-threaded numpy: for clips this small it is faster than torch's thread pool
    (about 1 ms for 64 frames of 32×32) and unaffected by a busy machine.
    """
    if isinstance(prompt, str):
        prompt = ToyPrompt.parse(prompt)
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(
            f"need num_frames ≥ 1 and a frame of at least 8×8 px, got {num_frames}×{height}×{width}"
        )
    # Drawn in this order so a seed keeps the start position it had before sizes were random.
    unit_x, unit_y, unit_size = np.random.default_rng(seed).random(3)
    start_x, start_y = unit_x * width, unit_y * height
    size = object_size(unit_size, height, width)
    vx, vy = velocity(prompt, height, width)
    t = np.arange(num_frames)
    centre_x = ((start_x + vx * t) % width)[:, None, None]
    centre_y = ((start_y + vy * t) % height)[:, None, None]
    # Torus offsets in [−extent/2, extent/2): the object wraps around the frame edges.
    dx = (np.arange(width) + 0.5 - centre_x + width / 2) % width - width / 2  # [F, 1, W]
    dy = (np.arange(height)[:, None] + 0.5 - centre_y + height / 2) % height - height / 2  # [F, H, 1]
    alpha = np.clip(0.5 - signed_distance(prompt.shape, dx, dy, size), 0.0, 1.0).astype(np.float32)
    colour = np.asarray(COLOURS[prompt.colour], dtype=np.float32)[:, None, None, None]
    background = background_image(prompt.background, height, width)
    frames = background * (1 - alpha) + colour * alpha  # [3, F, H, W]
    return torch.from_numpy(np.ascontiguousarray(frames * 2 - 1, dtype=np.float32))
