"""The embedded toy world: procedural videos, a tiny text encoder and the ToyBench metrics."""

from rehyat.toy.text import MAX_LENGTH, VOCABULARY, ToyTextEncoder, tokenize
from rehyat.toy.toybench import Readout, evaluate_videos, psnr, read_back, ssim
from rehyat.toy.world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SPEEDS,
    ToyPrompt,
    all_prompts,
    render,
    sample_prompt,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DIRECTIONS",
    "MAX_LENGTH",
    "SHAPES",
    "SPEEDS",
    "VOCABULARY",
    "Readout",
    "ToyPrompt",
    "ToyTextEncoder",
    "all_prompts",
    "evaluate_videos",
    "psnr",
    "read_back",
    "render",
    "sample_prompt",
    "ssim",
    "tokenize",
]
