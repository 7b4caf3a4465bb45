"""The toy text encoder: closed vocabulary, tokenizer shapes and errors, deterministic seeded init."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from rehyat.toy import MAX_LENGTH, VOCABULARY, ToyTextEncoder, all_prompts, tokenize
from rehyat.toy.text import PAD_ID

TEXT = "a red circle moving left slowly on a striped background"


def test_vocabulary_covers_every_prompt_word():
    words = {w for p in all_prompts() for w in p.text.split()}
    assert words == set(VOCABULARY[1:])
    assert len(VOCABULARY) == len(set(VOCABULARY))


def test_tokenize_shapes_padding_and_normalisation():
    ids = tokenize([TEXT, "", "A Red circle."])
    assert ids.shape == (3, MAX_LENGTH) and ids.dtype == torch.long
    assert (ids[0, :10] != PAD_ID).all() and (ids[0, 10:] == PAD_ID).all()
    assert (ids[1] == PAD_ID).all()
    assert torch.equal(ids[2, :3], ids[0, :3])
    assert tokenize(TEXT).shape == (1, MAX_LENGTH)


def test_tokenize_errors():
    with pytest.raises(ValueError, match="'purple'"):
        tokenize("a purple circle")
    with pytest.raises(ValueError, match="'pad'"):
        tokenize("a <pad>")
    with pytest.raises(ValueError, match="at most 4"):
        tokenize(TEXT, max_length=4)


@pytest.mark.parametrize("num_layers", [0, 1, 2])
def test_encoder_shapes_and_zero_padding(num_layers):
    encoder = ToyTextEncoder(text_dim=32, num_layers=num_layers, num_heads=4)
    out = encoder([TEXT, ""])
    assert out.shape == (2, MAX_LENGTH, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out[0, 10:] == 0).all() and (out[1] == 0).all()
    assert out[0, :10].abs().sum(-1).min() > 0
    assert torch.equal(out, encoder(tokenize([TEXT, ""])))


def test_encoder_distinguishes_prompts_and_words_interact():
    encoder = ToyTextEncoder(text_dim=32)
    a, b = encoder([TEXT, TEXT.replace("red", "blue")])
    assert not torch.allclose(a[1], b[1])
    assert not torch.allclose(a[5], b[5])  # the transformer layer spreads the colour to later tokens


def test_encoder_init_is_a_function_of_the_seed_and_saves(tmp_path):
    torch.manual_seed(123)
    a = ToyTextEncoder(seed=7)
    torch.manual_seed(456)
    b = ToyTextEncoder(seed=7)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.token_embedding.weight, ToyTextEncoder(seed=8).token_embedding.weight)
    save_file(a.state_dict(), tmp_path / "text.safetensors")
    c = ToyTextEncoder(**a.config)
    c.load_state_dict(load_file(tmp_path / "text.safetensors"))
    assert torch.equal(c(TEXT), a(TEXT))


def test_encoder_errors():
    with pytest.raises(ValueError, match="divisible"):
        ToyTextEncoder(text_dim=30, num_heads=4)
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        ToyTextEncoder()(torch.zeros(2, 8, dtype=torch.long))
