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
