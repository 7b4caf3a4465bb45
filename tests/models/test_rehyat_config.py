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
