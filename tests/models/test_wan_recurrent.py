"""recurrent_forward: equal to the parallel converted model, chunk-sized activations, clear errors."""

from __future__ import annotations

import pytest
import torch
from tiny_wan import FRAMES, converted, run, tiny_inputs, tiny_wan

from rehyat import recurrent_forward
from rehyat.models import rotary_for_frames
from rehyat.models.hooks import apply_recurrent, remove_recurrent

from conftest import rel_err


@pytest.fixture(scope="module")
def model():
    return tiny_wan(num_layers=3)


@pytest.mark.parametrize(
    "chunk,overlap",
    [(3, 1), (2, 0), (2, 3), (3, 3), (1, 1), (4, 2), (FRAMES, 1), (FRAMES + 2, 0)],
    ids=lambda v: str(v),
)
def test_recurrent_equals_parallel(model, chunk, overlap):
    net = converted(model, chunk_frames=chunk, overlap_frames=overlap)
    hidden, timestep, context = tiny_inputs(batch=2)
    parallel = run(net, hidden, timestep, context)
    with torch.no_grad():
        recurrent = recurrent_forward(net, hidden, timestep, context)
    assert recurrent.shape == parallel.shape and recurrent.dtype == parallel.dtype
    assert rel_err(recurrent, parallel) <= 1e-4
    assert all(block.attn1.processor.state is None for block in net.blocks)  # states dropped afterwards
    assert rel_err(run(net, hidden, timestep, context), parallel) == 0  # parallel mode restored


def test_recurrent_random_feature_maps_and_long_video(model):
    net = converted(model, chunk_frames=3, overlap_frames=1, feature_init="random")
    hidden, timestep, context = tiny_inputs(frames=13)
    with torch.no_grad():
        assert (
            rel_err(recurrent_forward(net, hidden, timestep, context), run(net, hidden, timestep, context))
            <= 1e-4
        )


def test_image_to_video_recurrent():
    net = converted(tiny_wan(image_dim=8, added_kv_proj_dim=24), chunk_frames=3)
    hidden, timestep, _ = tiny_inputs()
    context, image = torch.randn(1, 512, 32), torch.randn(1, 3, 8)
    parallel = run(net, hidden, timestep, context, encoder_hidden_states_image=image)
    with torch.no_grad():
        recurrent = recurrent_forward(net, hidden, timestep, context, encoder_hidden_states_image=image)
    assert rel_err(recurrent, parallel) <= 1e-4


def test_per_token_timesteps(model):
    """Wan2.2-TI2V's timestep [B, N] (one per token) is cut with the tokens of each chunk."""
    net = converted(model, chunk_frames=3, overlap_frames=1)
    hidden, _, context = tiny_inputs(batch=2)
    timestep = torch.linspace(900.0, 100.0, 2 * 16 * FRAMES).reshape(2, 16 * FRAMES)
    with torch.no_grad():
        recurrent = recurrent_forward(net, hidden, timestep, context)
    assert rel_err(recurrent, run(net, hidden, timestep, context)) <= 1e-4


def test_blocks_only_ever_see_one_chunk(model):
    """Activations are chunk-sized whatever the video length: every block input holds <= Tc frames."""
    net = converted(model, chunk_frames=2, overlap_frames=1)
    sizes = []
    for block in net.blocks:
        block.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[1]))
    for frames in (5, 21):
        sizes.clear()
        hidden, timestep, context = tiny_inputs(frames=frames)
        with torch.no_grad():
            recurrent_forward(net, hidden, timestep, context)
        assert max(sizes) == 2 * 16
        assert len(sizes) == 3 * -(-frames // 2)


@pytest.mark.parametrize("chunks_per_call", [1, 3])
def test_feed_forward_runs_chunk_by_chunk_only_while_streaming(model, chunks_per_call):
    """Inside a sweep each block's FFN (the widest activation) sees one chunk (3 frames of 16 tokens) at a
    time, however many chunks a call holds; outside it, the whole input."""
    net = converted(model, chunk_frames=3, overlap_frames=1)
    sizes = []
    handles = [  # on the FFN's first projection: the per-chunk calls run inside the FFN's forward
        block.ffn.net[0].register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[1]))
        for block in net.blocks
    ]
    hidden, timestep, context = tiny_inputs(frames=7)
    with torch.no_grad():
        recurrent_forward(net, hidden, timestep, context, chunks_per_call=chunks_per_call)
    assert sorted(sizes) == sorted([3 * 16, 3 * 16, 16] * len(net.blocks))
    assert all("forward" not in vars(block.ffn) for block in net.blocks)  # the patch is gone afterwards
    sizes.clear()
    run(net, hidden, timestep, context)
    assert set(sizes) == {7 * 16}
    for handle in handles:
        handle.remove()


def test_streaming_restores_feed_forwards_after_an_error(model, monkeypatch):
    """An FFN forward set on the instance (a hook) survives, and is restored even when a step fails."""
    import rehyat.models.adapter as adapter

    net = converted(model, chunk_frames=3, overlap_frames=1)
    plain = net.blocks[0].ffn.forward

    def hooked(*args, **kwargs):
        return plain(*args, **kwargs)

    net.blocks[0].ffn.forward = hooked  # an instance attribute, as offloading hooks set

    def failing(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(adapter, "attend_step", failing)
    hidden, timestep, context = tiny_inputs(frames=7)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        recurrent_forward(net, hidden, timestep, context)
    assert vars(net.blocks[0].ffn)["forward"] is hooked
    assert all("forward" not in vars(block.ffn) for block in net.blocks[1:])
    del net.blocks[0].ffn.forward


def test_rotary_slices_use_absolute_frames(model):
    hidden = torch.zeros(1, 16, 9, 8, 8)
    cos, sin = model.rope(hidden)
    part_cos, part_sin = rotary_for_frames(model.rope, 3, 7, 4, 4)
    assert torch.equal(part_cos, cos[:, 3 * 16 : 7 * 16]) and torch.equal(part_sin, sin[:, 3 * 16 : 7 * 16])
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        rotary_for_frames(model.rope, 60, 65, 4, 4)


def test_recurrent_errors(model):
    hidden, timestep, context = tiny_inputs()
    with pytest.raises(ValueError, match="converted with convert_wan"):
        recurrent_forward(model, hidden, timestep, context)
    with pytest.raises(ValueError, match=r"blocks \[1\] still run full softmax"):
        recurrent_forward(converted(model, blocks=[0, 2]), hidden, timestep, context)
    with pytest.raises(ValueError, match="causal"):
        recurrent_forward(converted(model, causal=False), hidden, timestep, context)
    net = converted(model)
    with pytest.raises(ValueError, match="per-token timesteps"):
        recurrent_forward(net, hidden, timestep[:, None].expand(1, 16 * FRAMES - 1), context)
    with pytest.raises(ValueError, match=r"\[B, C, F, H, W\]"):
        recurrent_forward(net, hidden[0], timestep, context)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="chunks_per_call"):
            recurrent_forward(net, hidden, timestep, context, chunks_per_call=bad)
    apply_recurrent(net, chunks_per_call=2)  # applied already: another count is refused, not ignored
    with torch.no_grad(), pytest.raises(ValueError, match="applied with 2: remove_recurrent first"):
        recurrent_forward(net, hidden, timestep, context, chunks_per_call=3)
    with torch.no_grad():
        assert recurrent_forward(net, hidden, timestep, context).shape == hidden.shape
        assert recurrent_forward(net, hidden, timestep, context, chunks_per_call=2).shape == hidden.shape
    remove_recurrent(net)


def test_an_empty_batch_gives_an_empty_result(model):
    """B = 0 returns an empty video of the right shape, as the recurrent op does (was a reshape error;
    diffusers' own parallel forward cannot take B = 0 either, for the same -1 reshape)."""
    net = converted(model, chunk_frames=3, overlap_frames=1)
    hidden, timestep, context = tiny_inputs(batch=1, frames=FRAMES)
    with torch.no_grad():
        out = recurrent_forward(net, hidden[:0], timestep[:0], context[:0])
    assert out.shape == (0, *hidden.shape[1:])


def test_no_frames_raise_like_the_parallel_form(model):
    """0 latent frames (after patching) is the same ValueError on both forms (the parallel one failed
    inside diffusers, the recurrent one returned None)."""
    net = converted(model, chunk_frames=3, overlap_frames=1)
    hidden, timestep, context = tiny_inputs(frames=0)
    with pytest.raises(ValueError, match="no latent frames"):
        run(net, hidden, timestep, context)
    with pytest.raises(ValueError, match="no latent frames"), torch.no_grad():
        recurrent_forward(net, hidden, timestep, context)
