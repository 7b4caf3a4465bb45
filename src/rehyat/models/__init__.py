"""ReHyAt for video DiTs in diffusers: Wan2.1 conversion, checkpoints and the recurrent forward."""

from rehyat.models.checkpoint import load_rehyat, read_rehyat_config, save_rehyat
from rehyat.models.config import ReHyAtConfig
from rehyat.models.recurrent import recurrent_forward
from rehyat.models.wan import (
    ReHyAtRuntime,
    ReHyAtWanAttnProcessor,
    convert_wan,
    converted_blocks,
    feature_maps,
    rehyat_runtime,
    rotary_for_frames,
)

__all__ = [
    "ReHyAtConfig",
    "ReHyAtRuntime",
    "ReHyAtWanAttnProcessor",
    "convert_wan",
    "converted_blocks",
    "feature_maps",
    "load_rehyat",
    "read_rehyat_config",
    "recurrent_forward",
    "rehyat_runtime",
    "rotary_for_frames",
    "save_rehyat",
]
