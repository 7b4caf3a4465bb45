"""A tiny WanPipeline built from configs only (no download): tiny DiT, tiny Wan VAE, tiny UMT5 and an
offline word-level tokenizer, so that a saved folder looks like a user's local Wan checkpoint."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from rehyat.models.wan_configs import tiny_wan_config

# 25 video frames of 64×64 -> 7 latent frames of 8×8 -> 16 tokens per latent frame
VIDEO = dict(num_frames=25, height=64, width=64)
WORDS = ["<pad>", "</s>", "<unk>", "a", "cat", "dog", "on", "the", "moon", "blurry"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_pipeline(with_text_encoder: bool = True, num_layers: int = 2) -> WanPipeline:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**tiny_wan_config(num_layers=num_layers)).eval()
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    text_encoder = tokenizer = None
    if with_text_encoder:
        torch.manual_seed(0)
        config = UMT5Config(
            vocab_size=len(WORDS),
            d_model=32,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
        )
        text_encoder, tokenizer = UMT5EncoderModel(config).eval(), tiny_tokenizer()
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )


def prompt_embeds(batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 6, 32, generator=gen), torch.randn(batch, 6, 32, generator=gen)


def tiny_family_pipeline(family: str):
    """A tiny pipeline of another family, built as ``tiny_pipeline`` builds Wan's: ``SkyReelsV2Pipeline``
    (Wan's VAE and UMT5) or ``LTXPipeline`` (a tiny LTX VAE with 8× spatial and temporal compression,
    a tiny T5, 4×4 tokens per latent frame at 32×32 pixels)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        SkyReelsV2Pipeline,
    )
    from transformers import T5Config, T5EncoderModel

    from rehyat.models.architectures import architecture

    if family == "skyreels-v2":
        wan = tiny_pipeline()
        torch.manual_seed(0)
        transformer = architecture("tiny-skyreels-v2").build()
        return SkyReelsV2Pipeline(
            tokenizer=wan.tokenizer,
            text_encoder=wan.text_encoder,
            vae=wan.vae,
            scheduler=wan.scheduler,
            transformer=transformer,
        )
    torch.manual_seed(0)
    scaled, blocks = (True, True, True, False), (8, 8, 8, 8)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=blocks,
        decoder_block_out_channels=blocks,
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=scaled,
        decoder_spatio_temporal_scaling=scaled,
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    torch.manual_seed(0)
    transformer = architecture("tiny-ltx-video").build()
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(WORDS),
        d_model=16,
        d_kv=8,
        d_ff=16,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=T5EncoderModel(config).eval(),
        tokenizer=tiny_tokenizer(),
        transformer=transformer,
    )
