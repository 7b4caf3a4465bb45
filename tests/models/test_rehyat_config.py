"""ReHyAtConfig: validation, block resolution, JSON round trip."""

from __future__ import annotations

import json

import pytest

from rehyat import ReHyAtConfig


def test_defaults_match_the_paper_main_setting():
    config = ReHyAtConfig()
    assert (config.chunk_frames, config.overlap_frames, config.causal) == (3, 1, True)
    assert (config.feature_degree, config.feature_layers) == (2, 2)
    assert config.resolve_blocks(4) == [0, 1, 2, 3]


def test_json_round_trip():
    config = ReHyAtConfig(chunk_frames=5, overlap_frames=0, blocks=[3, 1], feature_init="random")
    data = json.loads(config.to_json())
    assert data["blocks"] == [3, 1]
    assert ReHyAtConfig.from_json(config.to_json()) == config
    assert ReHyAtConfig.from_dict(
        ReHyAtConfig(blocks=2, block_ranking=[2, 0, 1]).to_dict()
    ).block_ranking == (
        2,
        0,
        1,
    )


def test_blocks_by_ranking_takes_lowest_error_blocks():
    config = ReHyAtConfig(blocks=2, block_ranking=[3, 0, 2, 1])
    assert config.resolve_blocks(4) == [0, 3]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(overlap_frames=-1), "overlap_frames"),
        (dict(chunk_frames=0), "chunk_frames"),
        (dict(chunk_frames=2.5), "chunk_frames"),
        (dict(causal="yes"), "causal"),
        (dict(blocks="some"), "blocks"),
        (dict(blocks=[]), "at least one"),
        (dict(blocks=[0, 0]), "repeated"),
        (dict(blocks=[-1]), "blocks entry"),
        (dict(blocks=0), "blocks"),
        (dict(blocks=2), "block_ranking"),
        (dict(feature_activation="tanh"), "feature_activation"),
        (dict(feature_init="zeros"), "feature_init"),
        (dict(feature_degree=0), "feature_degree"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReHyAtConfig(**kwargs)


def test_block_resolution_errors():
    with pytest.raises(ValueError, match=r"out of range.*3 blocks"):
        ReHyAtConfig(blocks=[0, 3]).resolve_blocks(3)
    with pytest.raises(ValueError, match="only 3 blocks"):
        ReHyAtConfig(blocks=4, block_ranking=[0, 1, 2]).resolve_blocks(3)
    with pytest.raises(ValueError, match="permutation"):
        ReHyAtConfig(blocks=1, block_ranking=[0, 1]).resolve_blocks(3)
    with pytest.raises(ValueError, match="unknown ReHyAtConfig fields"):
        ReHyAtConfig.from_dict({"chunk_frame": 3})


def test_the_config_gives_the_op_one_geometry():
    """ReHyAtConfig.geometry: the chunk geometry under the op's names, and the op's Geometry entries
    (attend, attend_step) give what the keyword calls give."""
    import torch

    from rehyat import hybrid_attention, hybrid_attention_step
    from rehyat.attention import Geometry
    from rehyat.attention.hybrid import attend, attend_step

    config = ReHyAtConfig(chunk_frames=2, overlap_frames=1, causal=False)
    assert config.geometry(6) == Geometry(6, 2, 1, causal=False, scale=None, anchor_frames=0)
    assert ReHyAtConfig(anchor_frames=1).geometry(4, scale=0.5) == Geometry(4, 3, 1, True, 0.5, 1)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5 * 3, 2, 8, generator=gen, dtype=torch.float64) for _ in "qkv")
    fq, fk = (torch.rand(1, 5 * 3, 2, 4, generator=gen, dtype=torch.float64) for _ in "qk")
    for causal in (True, False):
        geometry = ReHyAtConfig(chunk_frames=2, overlap_frames=1, causal=causal).geometry(3)
        want = hybrid_attention(
            q, k, v, fq, fk, frame_tokens=3, chunk_frames=2, overlap_frames=1, causal=causal
        )
        assert torch.equal(attend(q, k, v, fq, fk, geometry), want)
    rows = slice(0, 2 * 3)
    want, _ = hybrid_attention_step(
        q[:, rows], k[:, rows], v[:, rows], fq[:, rows], fk[:, rows], None, frame_tokens=3, overlap_frames=1
    )
    got, state = attend_step(
        q[:, rows],
        k[:, rows],
        v[:, rows],
        fq[:, rows],
        fk[:, rows],
        None,
        ReHyAtConfig(chunk_frames=2).geometry(3),
    )
    assert torch.equal(got, want) and state.overlap_frames == 1
    with pytest.raises(ValueError, match="causal only"):
        attend_step(q, k, v, fq, fk, None, config.geometry(3))
    with pytest.raises(ValueError, match="must be a Geometry"):
        attend(q, k, v, fq, fk, {"frame_tokens": 3})
    with pytest.raises(ValueError, match="must be a Geometry"):
        attend_step(q, k, v, fq, fk, None, {"frame_tokens": 3, "overlap_frames": 1})
