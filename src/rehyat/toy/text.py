"""A tiny text encoder for the toy world: closed word vocabulary → ``encoder_hidden_states`` [B, L, D].

It stands in for Wan's UMT5 encoder. The vocabulary is exactly the words of the world's prompt template
(see :mod:`rehyat.toy.world`) plus a padding token. A word outside it raises ValueError rather than
mapping to an "unknown" token: the world is closed, every valid prompt is in the vocabulary, and an
embedding never seen in training would only produce a silently meaningless video.

As WanPipeline does for UMT5 outputs, padding positions of the output are zero, so the empty prompt ""
(the usual negative / unconditional prompt for classifier-free guidance) encodes to all zeros.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rehyat.toy.world import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SPEED_WORDS

PAD = "<pad>"
PAD_ID = 0
# Fixed order, so token ids never change: pad, template words, then the attribute words.
VOCABULARY: tuple[str, ...] = (
    PAD,
    "a",
    "moving",
    "on",
    "background",
    *COLOURS,
    *SHAPES,
    *DIRECTIONS,
    *SPEED_WORDS.values(),
    *BACKGROUNDS,
)
WORD_IDS: dict[str, int] = {word: i for i, word in enumerate(VOCABULARY)}
# The template has 10 words; the margin leaves room for longer prompts without changing shapes.
MAX_LENGTH = 16


def tokenize(texts: str | Sequence[str], max_length: int = MAX_LENGTH) -> Tensor:
    """Token ids [B, max_length] (right-padded with ``PAD_ID``); lower-cases and strips punctuation.

    Raises ValueError for a word outside :data:`VOCABULARY` or a prompt longer than ``max_length`` words.
    """
    if isinstance(texts, str):
        texts = [texts]
    ids = torch.full((len(texts), max_length), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        words = [w for w in (w.strip(string.punctuation) for w in text.lower().split()) if w]
        if len(words) > max_length:
            raise ValueError(
                f"prompt {text!r} has {len(words)} words; the encoder takes at most {max_length}"
            )
        for col, word in enumerate(words):
            if word not in WORD_IDS:  # punctuation stripping already turned '<pad>' into 'pad'
                raise ValueError(
                    f"word {word!r} of prompt {text!r} is not in the toy vocabulary: {', '.join(VOCABULARY[1:])}"
                )
            ids[row, col] = WORD_IDS[word]
    return ids


class _EncoderLayer(nn.Module):
    """Pre-norm transformer layer (self-attention over non-pad tokens, then a GELU MLP)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        # Attend to real tokens only; an all-pad row (the empty prompt) attends to everything instead of
        # producing NaN — its output is zeroed by the encoder anyway.
        mask = (keep | ~keep.any(dim=1, keepdim=True))[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.norm2(x))


class ToyTextEncoder(nn.Module):
    """Word + position embeddings, ``num_layers`` small transformer layers and a final LayerNorm.

    ``forward`` takes prompt strings or token ids [B, L] and returns [B, L, text_dim] with zeros at padding
    positions. Initialisation is a pure function of ``seed``. ``config`` holds the constructor arguments,
    so ``ToyTextEncoder(**encoder.config)`` plus ``load_state_dict`` (e.g. from safetensors) restores it.
    """

    def __init__(
        self,
        text_dim: int = 64,
        max_length: int = MAX_LENGTH,
        num_layers: int = 1,
        num_heads: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if text_dim % num_heads:
            raise ValueError(f"text_dim {text_dim} is not divisible by num_heads {num_heads}")
        self.config = {
            "text_dim": text_dim,
            "max_length": max_length,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "seed": seed,
        }
        self.max_length = max_length
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.token_embedding = nn.Embedding(len(VOCABULARY), text_dim)
            self.position_embedding = nn.Parameter(torch.randn(max_length, text_dim) / math.sqrt(text_dim))
            self.layers = nn.ModuleList(_EncoderLayer(text_dim, num_heads) for _ in range(num_layers))
            self.norm = nn.LayerNorm(text_dim)

    def forward(self, prompts: str | Sequence[str] | Tensor) -> Tensor:
        ids = prompts if isinstance(prompts, Tensor) else tokenize(prompts, self.max_length)
        if ids.ndim != 2 or ids.shape[1] != self.max_length:
            raise ValueError(f"token ids must be [B, {self.max_length}], got {list(ids.shape)}")
        ids = ids.to(self.position_embedding.device)
        keep = ids != PAD_ID
        x = self.token_embedding(ids) + self.position_embedding
        for layer in self.layers:
            x = layer(x, keep)
        return self.norm(x) * keep[..., None]
