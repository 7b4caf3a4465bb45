"""The FLOP counter reproduces the table of docs/method.md §9; the CLI prints it as JSON."""

from __future__ import annotations

import json

import pytest

from rehyat.cli import main
from rehyat.flops import attention_flops, block_flops

# The table of docs/method.md §9: frames, tokens per frame, full, softmax, linear, feature maps, total
# (GFLOP), ratio, softmax-only ratio
REFERENCE_FLOP_TABLE = [
    (21, 1560, 6594, 1211, 52, 155, 1417, 4.65, 5.44),
    (41, 1560, 25134, 2377, 101, 302, 2780, 9.04, 10.57),
    (61, 1560, 55637, 3574, 150, 449, 4173, 13.3, 15.6),
    (31, 600, 2126, 263, 29, 88, 380, 5.59, 8.08),
]


@pytest.mark.parametrize("row", REFERENCE_FLOP_TABLE)
def test_reproduces_the_method_table(row):
    frames, tokens, *gflops, ratio, softmax_ratio = row
    f = attention_flops(frames, tokens, 12, 128, chunk_frames=3, overlap_frames=1, feature_dim=256)
    got = [f.full, f.softmax, f.linear, f.feature_maps, f.rehyat_total]
    for value, want in zip(got, gflops, strict=True):
        assert abs(value / 1e9 - want) <= 1.0  # the table rounds each part to 1 GFLOP
    assert round(f.ratio, len(str(ratio).split(".")[1])) == ratio
    assert round(f.softmax_ratio, len(str(softmax_ratio).split(".")[1])) == softmax_ratio


def test_cli_json(capsys):
    argv = "flops --frames 21 --height 30 --width 52 --heads 12 --head-dim 128 --chunk-frames 3 "
    argv += "--overlap-frames 1 --feature-dim 256 --json"
    assert main(argv.split()) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"full", "softmax", "linear", "feature_maps", "rehyat_total", "ratio"} <= out.keys()
    assert round(out["ratio"], 2) == 4.65 and out["rehyat_total"] == pytest.approx(1417.2e9, rel=1e-3)


def test_cli_rejects_bad_numbers(capsys):
    assert main(["flops", "--frames", "0", "--height", "2", "--width", "2"]) == 2
    assert "frames must be >= 1" in capsys.readouterr().err


def test_block_flops_by_hand():
    # dim 4, FFN 8, 2 frames × 3 tokens, 5 text tokens: projections 2·6·(4·16 + 2·16 + 2·4·8) = 1920;
    # cross-attention: text k, v 2·5·2·16 = 320, scores and PV 4·6·5·4 = 480
    f = block_flops(2, 3, 1, 4, ffn_dim=8, text_tokens=5, chunk_frames=1, overlap_frames=0, feature_dim=4)
    attention = attention_flops(2, 3, 1, 4, chunk_frames=1, overlap_frames=0, feature_dim=4)
    assert f["tokenwise"] == 2720
    assert f["full_block"] == 2720 + attention.full and f["rehyat_block"] == 2720 + attention.rehyat_total
    assert f["attention_free_ratio"] == pytest.approx(f["full_block"] / 2720)


def test_block_flops_bound_the_block_speedup():
    """One Wan2.1-1.3B block at 121 frames of 320×480: ReHyAt's attention is 5.6× cheaper, the block
    1.9×, and no attention at all would make it more than 2.3× faster."""
    f = block_flops(
        31, 600, 12, 128, ffn_dim=8960, text_tokens=512, chunk_frames=3, overlap_frames=1, feature_dim=256
    )
    assert round(f["attention_ratio"], 2) == 5.59
    assert round(f["block_ratio"], 2) == 1.88 and round(f["attention_free_ratio"], 2) == 2.32
    with pytest.raises(ValueError, match="ffn_dim"):
        block_flops(2, 3, 1, 4, ffn_dim=0, text_tokens=5, chunk_frames=1, overlap_frames=0, feature_dim=4)


def test_anchor_and_global_keys_count_the_reference_masks():
    """The softmax part with an anchor and global keys counts the reference's softmax-key pairs."""
    from rehyat.attention.hybrid.naive import chunk_masks

    frames, tokens, chunk, overlap, anchor, globals_ = 8, 3, 2, 1, 3, 5
    softmax_keys, _ = chunk_masks(frames, tokens, chunk, overlap, True, anchor_frames=anchor)
    pairs = int(softmax_keys.sum()) + frames * tokens * globals_
    got = attention_flops(
        frames,
        tokens,
        2,
        4,
        chunk_frames=chunk,
        overlap_frames=overlap,
        feature_dim=8,
        anchor_frames=anchor,
        global_tokens=globals_,
    )
    assert got.softmax == 4.0 * pairs * 4 * 2
    assert got.full == 4.0 * frames * tokens * (frames * tokens + globals_) * 4 * 2
