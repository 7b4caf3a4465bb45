"""Writing generated frames to MP4 (imageio-ffmpeg, H.264) or GIF."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: int = 16) -> Path:
    """Write uint8 frames [F, H, W, 3] to ``path``; the suffix picks the format (.mp4 or .gif)."""
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        # macro_block_size=1: keep the size (Wan sizes are even, as yuv420p needs)
        imageio.mimwrite(path, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    elif suffix == ".gif":
        imageio.mimwrite(path, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    else:
        raise ValueError(f"output must end in .mp4 or .gif, got {path.name!r}")
    return path
