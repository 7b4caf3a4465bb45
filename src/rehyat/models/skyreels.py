"""ReHyAt for SkyReels-V2 in diffusers (``SkyReelsV2Transformer3DModel``): Wan's architecture, so Wan's
processor, RoPE tables and chunking, with diffusion forcing's per-frame timesteps cut with the frames."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rehyat.models.wan import ReHyAtWanAttnProcessor, WanAdapter


@dataclass(frozen=True)
class SkyReelsV2Adapter(WanAdapter):
    """SkyReels-V2: the blocks, attention layers and 3D RoPE of Wan. Its block-causal mode
    (``num_frame_per_block`` > 1, an attention mask over frame blocks) is not converted: ReHyAt brings
    its own chunking."""

    def check_model(self, transformer: nn.Module) -> None:
        super().check_model(transformer)
        per_block = getattr(transformer.config, "num_frame_per_block", 1)
        if per_block > 1:
            raise ValueError(
                f"SkyReels-V2 with num_frame_per_block={per_block} masks attention by blocks of frames; "
                "ReHyAt converts the bidirectional model (num_frame_per_block=1) and chunks frames itself"
            )


SKYREELS_V2 = SkyReelsV2Adapter(
    name="skyreels-v2",
    class_names=("SkyReelsV2Transformer3DModel",),
    processor=ReHyAtWanAttnProcessor,
    temporal_compression=4,
    rope_attr="rope",
    per_frame_timesteps=True,
    pipeline_class="SkyReelsV2Pipeline",
)
