"""The video DiT families ReHyAt converts, and :func:`convert`, the one converter that dispatches to them.

Each family is a :class:`~rehyat.models.adapter.FamilyAdapter`; a model is matched by its diffusers class
(or a subclass of it), so nothing here imports diffusers.
"""

from __future__ import annotations

from torch import nn

from rehyat.models.adapter import FamilyAdapter, convert_with
from rehyat.models.cogvideox import COGVIDEOX
from rehyat.models.config import ReHyAtConfig
from rehyat.models.hunyuan_video import HUNYUAN_VIDEO
from rehyat.models.ltx import LTX_VIDEO
from rehyat.models.skyreels import SKYREELS_V2
from rehyat.models.wan import WAN

#: Every family :func:`convert` knows, in the order the error message lists them.
FAMILIES: tuple[FamilyAdapter, ...] = (WAN, SKYREELS_V2, LTX_VIDEO, HUNYUAN_VIDEO, COGVIDEOX)


def supported_classes() -> list[str]:
    """The diffusers classes :func:`convert` accepts."""
    return [name for family in FAMILIES for name in family.class_names]


def family_of(transformer: nn.Module) -> FamilyAdapter:
    """The adapter of ``transformer``'s family; a one-line ValueError listing the supported classes."""
    for family in FAMILIES:
        if family.matches(transformer):
            return family
    raise ValueError(
        f"cannot convert {type(transformer).__name__}: ReHyAt converts {', '.join(supported_classes())}"
    )


def convert(transformer: nn.Module, config: ReHyAtConfig | None = None) -> nn.Module:
    """Convert the self-attention of the chosen blocks of a supported diffusers video transformer to
    ReHyAt, in place (docs/method.md §6); returns ``transformer``.

    Dispatches on the model's class to its family's adapter (Wan2.1/Wan2.2, SkyReels-V2, LTX-Video,
    HunyuanVideo, CogVideoX; the last two with joint text-video attention, docs/method.md §6.1):
    each converted self-attention gets that family's ReHyAt processor and fresh feature maps, and a
    forward pre-hook records every call's latent grid. Cross-attention, feed-forwards, norms and
    unconverted blocks are untouched; nothing changes when a check fails. The converted model saves
    and loads with :func:`rehyat.save_rehyat` / :func:`rehyat.load_rehyat` and runs recurrently inside
    :func:`rehyat.models.hooks.recurrent_mode`.
    """
    return convert_with(family_of(transformer), transformer, config)
