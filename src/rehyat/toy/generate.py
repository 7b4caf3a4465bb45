"""One toy video from a prompt (``rehyat toy generate``), and toy videos as uint8 frames for GIF/MP4.

:func:`generate_toy_video` samples a toy teacher folder (default: the bundled teacher), with a ReHyAt
checkpoint on top (default without a teacher: the shipped student) in its recurrent or parallel form,
for one prompt of the world's template, from the noise of one seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rehyat.toy.model import (
    FLOW_SHIFT,
    bundled_teacher,
    check_student,
    is_bundled_teacher,
    load_text_encoder,
    load_toy_model,
    prompt_embeddings,
    toy_space,
)
from rehyat.toy.world import ToyPrompt
from rehyat.utils import check_int, check_number


def video_uint8(video: Tensor, scale: int = 4) -> np.ndarray:
    """A video [3, F, H, W] in [-1, 1] as uint8 frames [F, H·scale, W·scale, 3] (nearest-neighbour
    upscaling, so a 24-px toy frame is visible in a GIF)."""
    check_int("scale", scale, 1)
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def generate_toy_video(
    prompt: str | ToyPrompt,
    frames: int | None = None,
    *,
    teacher: str | Path | None = None,
    rehyat: str | Path | None = None,
    recurrent: bool = True,
    steps: int = 20,
    guidance_scale: float = 4.0,
    flow_shift: float = FLOW_SHIFT,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Tensor:
    """A video [3, F, H, W] in [-1, 1] of ``frames`` video frames (default: a training clip's) for
    ``prompt`` (the world's template, e.g. 'a red circle moving left slowly on a striped background').

    ``teacher``: a toy teacher folder (default: the bundled one); ``rehyat``: a ReHyAt checkpoint folder
    on top of it (``"bundled"``: the shipped student, of the bundled teacher only), or None: the shipped
    student if ``teacher`` is None too, else the teacher itself (full attention, parallel only; pass
    ``teacher=bundled_teacher()`` for the bundled teacher alone). ``recurrent`` picks the student's
    form: chunk by chunk with a fixed-size state, or all frames at once. Every argument is checked
    before the model loads (ValueError)."""
    if isinstance(prompt, str):
        prompt = ToyPrompt.parse(prompt)
    if teacher is None:
        teacher, rehyat = bundled_teacher(), "bundled" if rehyat is None else rehyat
    teacher = Path(teacher)
    check_student(teacher, rehyat)
    if recurrent and rehyat is None and not is_bundled_teacher(teacher):
        raise ValueError(
            f"the teacher {teacher} has no bundled student: pass rehyat=DIR (a ReHyAt checkpoint of it), "
            "or recurrent=False for the teacher alone (full attention)"
        )
    if recurrent and rehyat is None:
        raise ValueError(
            "the teacher runs full attention, in parallel only: recurrent needs a ReHyAt student"
        )
    space = toy_space(teacher)
    frames = space.video_frames(space.clip_frames) if frames is None else frames
    check_int("frames", frames, 1)
    latent = space.latent_frames(frames)
    check_int("steps", steps, 1)
    check_number("guidance_scale", guidance_scale, minimum=0)
    check_number("flow_shift", flow_shift, minimum=0, exclusive_minimum=True)
    check_int("seed", seed, 0, 2**63 - 1)

    from rehyat.toy.evaluate import sample_videos

    model = load_toy_model(teacher, rehyat, torch.device(device))
    embeds = prompt_embeddings(load_text_encoder(teacher), [prompt])
    (video,) = sample_videos(
        model,
        embeds,
        frames=latent,
        steps=steps,
        guidance_scale=guidance_scale,
        flow_shift=flow_shift,
        first_seed=seed,
        recurrent=recurrent,
        space=space,
    )
    return video
