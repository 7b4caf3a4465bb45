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
    (Wan's VAE and UMT5), ``LTXPipeline`` (a tiny LTX VAE with 8× spatial and temporal compression,
    a tiny T5, 4×4 tokens per latent frame at 32×32 pixels), ``HunyuanVideoPipeline`` or
    ``CogVideoXPipeline`` (:func:`tiny_joint_pipeline`)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        SkyReelsV2Pipeline,
    )

    from rehyat.models.architectures import architecture

    if family in ("hunyuan-video", "cogvideox"):
        return tiny_joint_pipeline(family)
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
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=tiny_t5(),
        tokenizer=tiny_tokenizer(),
        transformer=transformer,
    )


def tiny_t5():
    """A one-layer T5 encoder of width 16 on the offline tokenizer's words (seeded)."""
    from transformers import T5Config, T5EncoderModel

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
    return T5EncoderModel(config).eval()


def tiny_joint_pipeline(family: str):
    """``HunyuanVideoPipeline`` (a tiny HunyuanVideo VAE, a 2-layer Llama, as its pipeline reads the third
    hidden state from the end, and a CLIP text model, each with the offline tokenizer; the pipeline's
    prompt template puts the prompt's words after its 95 cropped tokens) or ``CogVideoXPipeline`` (a tiny
    CogVideoX VAE, a tiny T5, its v-prediction DDIM scheduler): 4×4 tokens per latent frame at 64×64."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        AutoencoderKLHunyuanVideo,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from rehyat.models.architectures import architecture

    torch.manual_seed(0)
    transformer = architecture(f"tiny-{family}").build()
    torch.manual_seed(0)
    blocks = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, temporal_compression_ratio=4)
    if family == "cogvideox":
        vae = AutoencoderKLCogVideoX(
            latent_channels=4,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            norm_num_groups=2,
            **blocks,
        )
        return CogVideoXPipeline(
            tokenizer=tiny_tokenizer(),
            text_encoder=tiny_t5(),
            vae=vae,
            transformer=transformer,
            scheduler=CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing"),
        )
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        mid_block_add_attention=False,
        **blocks,
    )
    small = dict(vocab_size=len(WORDS), num_attention_heads=2, pad_token_id=0)
    llama = LlamaConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_key_value_heads=2, **small
    )
    clip = CLIPTextConfig(
        hidden_size=8, intermediate_size=8, num_hidden_layers=1, bos_token_id=2, eos_token_id=1, **small
    )
    return HunyuanVideoPipeline(
        text_encoder=LlamaModel(llama).eval(),
        tokenizer=tiny_tokenizer(),
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=CLIPTextModel(clip).eval(),
        tokenizer_2=tiny_tokenizer(),
    )
