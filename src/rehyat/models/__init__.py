"""ReHyAt for video DiTs in diffusers: one converter over per-family adapters (Wan2.1/Wan2.2, SkyReels-V2,
LTX-Video), checkpoints and the recurrent forward.

``recurrent_forward`` (:mod:`rehyat.models.hooks`, diffusers' hooks) is imported when first asked for, so
importing this package does not import diffusers."""

from typing import TYPE_CHECKING

from rehyat.models.adapter import (
    FamilyAdapter,
    ReHyAtAttnProcessor,
    ReHyAtRuntime,
    converted_blocks,
    feature_maps,
    rehyat_runtime,
)
from rehyat.models.checkpoint import load_rehyat, read_rehyat_config, save_rehyat
from rehyat.models.config import ReHyAtConfig
from rehyat.models.families import FAMILIES, convert, family_of, supported_classes
from rehyat.models.wan import ReHyAtWanAttnProcessor, convert_wan, rotary_for_frames

if TYPE_CHECKING:
    from rehyat.models.hooks import recurrent_forward

__all__ = [
    "FAMILIES",
    "FamilyAdapter",
    "ReHyAtAttnProcessor",
    "ReHyAtConfig",
    "ReHyAtRuntime",
    "ReHyAtWanAttnProcessor",
    "convert",
    "convert_wan",
    "converted_blocks",
    "family_of",
    "feature_maps",
    "load_rehyat",
    "read_rehyat_config",
    "recurrent_forward",
    "rehyat_runtime",
    "rotary_for_frames",
    "save_rehyat",
    "supported_classes",
]


def __getattr__(name: str):
    if name == "recurrent_forward":
        from rehyat.models.hooks import recurrent_forward

        return recurrent_forward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
