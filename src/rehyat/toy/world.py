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

Versions (:class:`World`): the one-frame world (:data:`ONE_FRAME_WORLD`, the default everywhere) is the one
above, whose videos are the teacher's latents frame for frame. The packed world (:data:`PACKED_WORLD`) has Wan's temporal structure:
its clips are 81 video frames that :mod:`rehyat.toy.latent` packs four to a latent frame (21 latent
frames, as Wan2.1's causal VAE makes of a 5 s clip), so it moves slower per video frame: 1/64 and 1/32 of
the frame (1/2 and 1 px at 32 px; per latent frame 2 and 4 px, one and two latent pixels, close to the
one-frame world's 1.33 and 2.67 px per frame at 32 px). Its object also leaves a fading achromatic trail,
the world's one cue that breaks time symmetry. Both versions share the prompts.

The trail: each frame darkens the grey background wherever the object was in the frames before, by
``trail_depth`` × max_k decay^k · coverage(t − k) (k ≥ 1), under the object drawn on top. It is chosen
over the obvious other cue, a brightness ramp over time, because the one-frame world's teacher fails at the
sign of the motion, not at the order of frames: its 3D RoPE already tells it which frame comes first, and
every frame of a symmetric world is distributed alike whichever way the object moves, so a ramp would
mark time's direction without tying it to the prompt's direction. A trail makes every single frame depend
on the prompted direction (the shadow lies behind the object) and on its speed (a faster object leaves a longer
one), reverses in a clip played backwards (the shadow then leads), and shows an object's velocity in
one frame, so a chunk's overlap frame carries it too. Being achromatic, it leaves ToyBench's
read-back of the (chromatic) object untouched. The trail is history, so the renderer starts the motion
early (a pre-roll until the trail's weight is below 1e-3): frame 0 shows the same trail as every other
frame.
"""

from __future__ import annotations

import math
import random
import re
import warnings
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


@dataclass(frozen=True)
class World:
    """A version of the toy world: speeds, default clip size and the motion trail (see the module doc).

    Speeds are fractions of the frame extent (width for horizontal, height for vertical motion) travelled
    per video frame. ``frames_per_latent``: video frames a model's latent frame holds (ToyBench measures
    smoothness over that many frames). ``trail`` is the trail's decay per frame (0: no trail),
    ``trail_depth`` how far it darkens the background where the object has just been (0 to 1)."""

    name: str
    slow: float
    fast: float
    num_frames: int
    height: int
    width: int
    frames_per_latent: int = 1
    trail: float = 0.0
    trail_depth: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.slow < self.fast < 0.5:
            raise ValueError(f"need 0 < slow < fast < 0.5 frame per frame, got {self.slow} and {self.fast}")
        if self.frames_per_latent < 1:
            raise ValueError(f"need frames_per_latent ≥ 1, got {self.frames_per_latent}")
        if not (0 <= self.trail < 1 and 0 <= self.trail_depth <= 1):
            raise ValueError(
                f"need trail in [0, 1) and trail_depth in [0, 1], got {self.trail}, {self.trail_depth}"
            )

    @property
    def speeds(self) -> dict[str, float]:
        return {"slow": self.slow, "fast": self.fast}


#: The one-frame world: 16 frames, one video frame per latent frame, no trail (the bundled teacher's).
ONE_FRAME_WORLD = World("one-frame", SPEEDS["slow"], SPEEDS["fast"], 16, 32, 32)
#: The packed world: 81 video frames (21 latent frames of four, :mod:`rehyat.toy.latent`) of 32×32 px,
#: speeds of 1/2 and 1 px per video frame at 32 px, a trail decaying by 0.85 per frame (half gone after
#: 4.3 frames, 90 % after 14: 7 and 14 px behind a slow and a fast object, so an object of at most 14 px
#: and its trail fit in the frame) that darkens the background by up to 60 %.
PACKED_WORLD = World("packed", 1 / 64, 1 / 32, 81, 32, 32, frames_per_latent=4, trail=0.85, trail_depth=0.6)
#: Names of the worlds in folders and tables written before they had descriptive names (``toy_world.json``,
#: toybench.json's teacher): read as the world they named.
LEGACY_WORLD_NAMES = {"v2": "one-frame", "v3": "packed"}


def world_name(name: str) -> str:
    """A world's name as saved now, for a saved name (an older one included)."""
    return LEGACY_WORLD_NAMES.get(name, name)


#: The worlds' former module names (``from rehyat.toy.world import V2`` before they were renamed): still
#: importable, as the same objects, with a DeprecationWarning.
_FORMER_NAMES = {"V2": "ONE_FRAME_WORLD", "V3": "PACKED_WORLD"}


def __getattr__(name: str):
    if name in _FORMER_NAMES:
        current = _FORMER_NAMES[name]
        warnings.warn(
            f"rehyat.toy.world.{name} is deprecated: use rehyat.toy.world.{current}",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[current]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Weight below which the trail's history is cut (the renderer's pre-roll).
TRAIL_CUTOFF = 1e-3

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


def velocity(
    prompt: ToyPrompt, height: int, width: int, world: World = ONE_FRAME_WORLD
) -> tuple[float, float]:
    """The object's (dx, dy) in pixels per (video) frame."""
    step_x, step_y = DIRECTIONS[prompt.direction]
    speed = world.speeds[prompt.speed]
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
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    *,
    world: World = ONE_FRAME_WORLD,
    offsets: np.ndarray | None = None,
    scales: np.ndarray | None = None,
) -> Tensor:
    """Render a clip [3, F, H, W] float32 in [-1, 1]; the start position and size depend on ``seed``.

    Sizes left out are ``world``'s (16 frames of 32×32 px for the one-frame world, 81 for the packed one).
    ``offsets`` [F, 2] (px, x and y) and ``scales`` [F] displace and resize the object frame by frame
    (its trail follows): clips the world never shows, for checking that ToyBench sees jumps and size drift.
    Computed in single-threaded numpy: for clips this small it is faster than torch's thread pool
    (about 1 ms for 64 frames of 32×32, 10 ms for 81 frames with a trail) and unaffected by a busy machine.
    """
    if isinstance(prompt, str):
        prompt = ToyPrompt.parse(prompt)
    num_frames = world.num_frames if num_frames is None else num_frames
    height = world.height if height is None else height
    width = world.width if width is None else width
    if num_frames < 1 or height < 8 or width < 8:
        raise ValueError(
            f"need num_frames ≥ 1 and a frame of at least 8×8 px, got {num_frames}×{height}×{width}"
        )
    # Drawn in this order so a seed keeps the start position it had before sizes were random.
    unit_x, unit_y, unit_size = np.random.default_rng(seed).random(3)
    start_x, start_y = unit_x * width, unit_y * height
    vx, vy = velocity(prompt, height, width, world)
    # The trail's history: frames before 0 continue the motion backwards (none without a trail).
    pre_roll = math.ceil(math.log(TRAIL_CUTOFF) / math.log(world.trail)) if world.trail > 0 else 0
    t = np.arange(-pre_roll, num_frames)
    shift = _per_frame(offsets, (num_frames, 2), pre_roll, "offsets", 0.0)
    size = object_size(unit_size, height, width) * _per_frame(scales, (num_frames,), pre_roll, "scales", 1.0)
    centre_x = ((start_x + vx * t + shift[:, 0]) % width)[:, None, None]
    centre_y = ((start_y + vy * t + shift[:, 1]) % height)[:, None, None]
    # Torus offsets in [−extent/2, extent/2): the object wraps around the frame edges.
    dx = (np.arange(width) + 0.5 - centre_x + width / 2) % width - width / 2  # [F, 1, W]
    dy = (np.arange(height)[:, None] + 0.5 - centre_y + height / 2) % height - height / 2  # [F, H, 1]
    distance = signed_distance(prompt.shape, dx, dy, np.reshape(size, (-1, 1, 1)))
    alpha = np.clip(0.5 - distance, 0.0, 1.0).astype(np.float32)
    background = background_image(prompt.background, height, width)
    if world.trail > 0:
        background = background * (1 - world.trail_depth * _trail(alpha, world.trail)[pre_roll:])
    alpha = alpha[pre_roll:]
    colour = np.asarray(COLOURS[prompt.colour], dtype=np.float32)[:, None, None, None]
    frames = background * (1 - alpha) + colour * alpha  # [3, F, H, W]
    return torch.from_numpy(np.ascontiguousarray(frames * 2 - 1, dtype=np.float32))


def _per_frame(values, shape: tuple[int, ...], pre_roll: int, name: str, default: float) -> np.ndarray:
    """``values`` of ``shape`` (``default`` if None), the first frame's repeated over the pre-roll."""
    if values is None:
        return np.full((shape[0] + pre_roll, *shape[1:]), default)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(values.shape)}")
    return np.concatenate([np.repeat(values[:1], pre_roll, 0), values])


def _trail(alpha: np.ndarray, decay: float) -> np.ndarray:
    """[F, H, W] trail of coverage [F, H, W]: trail(t) = max_{k ≥ 1} decay^k · alpha(t − k)."""
    trail = np.zeros_like(alpha)
    for t in range(1, len(alpha)):
        trail[t] = decay * np.maximum(trail[t - 1], alpha[t - 1])
    return trail
