"""Video generation with the recurrent ReHyAt forward: pipeline loading, sampler, video writing.

Names are imported on first use so that ``rehyat`` subcommands do not pay diffusers' import time.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check_device": "rehyat.generation.pipeline",
    "check_pipeline_folder": "rehyat.generation.pipeline",
    "check_sampling": "rehyat.generation.sampler",
    "check_video_path": "rehyat.generation.video",
    "decode_latents": "rehyat.generation.sampler",
    "generate_latents": "rehyat.generation.sampler",
    "generate_video": "rehyat.generation.sampler",
    "latent_shape": "rehyat.generation.sampler",
    "make_scheduler": "rehyat.generation.sampler",
    "parallel_forward": "rehyat.generation.sampler",
    "write_video": "rehyat.generation.video",
    "load_pipeline": "rehyat.generation.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rehyat.generation' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
