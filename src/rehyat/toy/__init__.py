"""The embedded toy world (issue 6): procedural videos, a tiny text encoder and ToyBench metrics."""

from rehyat.toy.text import MAX_LENGTH, VOCABULARY, ToyTextEncoder, tokenize
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
    "ToyPrompt",
    "ToyTextEncoder",
    "all_prompts",
    "render",
    "sample_prompt",
    "tokenize",
]
