"""Writing generated frames to MP4 (imageio-ffmpeg, H.264) or GIF."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from rehyat.utils import check_number

VIDEO_SUFFIXES = (".mp4", ".gif")


def check_video_path(path: str | os.PathLike, *, create_parent: bool = False) -> Path:
    """``path`` as a Path if a video can be written there: it ends in .mp4 or .gif, is not a folder, and
    its parent is a writable folder (or, with ``create_parent``, may still be created). Touches nothing;
    ValueError naming the path otherwise. Lets a caller refuse a bad output before generating."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"output must end in .mp4 or .gif, got {path.name!r}")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder")
    parent = path.parent
    while create_parent and not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the nearest existing folder is the one that must be writable
    if not parent.exists():
        raise ValueError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise ValueError(f"output folder {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {parent} is not writable")
    return path


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: int = 16) -> Path:
    """Write uint8 frames [F, H, W, 3] to ``path`` (missing parent folders are created); the suffix picks
    the format (.mp4 or .gif)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    check_number("fps", fps, minimum=1)
    path = check_video_path(path, create_parent=True)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mp4":
        # macro_block_size=1: keep the size (Wan sizes are even, as yuv420p needs)
        imageio.mimwrite(path, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1)
    else:  # .gif, as check_video_path allows no other
        imageio.mimwrite(path, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    return path
