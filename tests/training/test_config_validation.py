"""Every numeric option of FinetuneConfig and DistillConfig is range-checked when the config is built,
from the command line (``--set``) and from Python alike, with a ValueError naming the key."""

from __future__ import annotations

import pytest

from rehyat.settings import load_config
from rehyat.training.distill import DistillConfig
from rehyat.training.finetune import DataSection, FinetuneConfig, OptimSection


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.grad_clip=-1", r"optim\.grad_clip must be > 0 or null .*got -1\.0"),
        ("optim.grad_clip=0", r"optim\.grad_clip must be > 0 or null"),
        ("optim.grad_clip=NaN", r"optim\.grad_clip must be finite"),
        ("optim.lr=Infinity", r"optim\.lr must be finite"),
        ("optim.lr=-1e-5", r"optim\.lr must be >= 0"),
        ("optim.betas=[0.9, 0.99, 0.5]", r"optim\.betas must be two numbers"),
        ("optim.betas=[0.9, 1.0]", r"optim\.betas\[1\] must be < 1"),
        ("optim.eps=0", r"optim\.eps must be > 0"),
        ("optim.weight_decay=-0.1", r"optim\.weight_decay must be >= 0"),
        ("optim.warmup_steps=-1", r"optim\.warmup_steps must be >= 0"),
        ("optim.decay_start=-1", r"optim\.decay_start must be >= 0"),
        # Each option's error once: int (strict, then loose), then null.
        (
            "optim.decay_start=1.5",
            r"optim\.decay_start: '1\.5' matches none of int \| None \(optim\.decay_start must be int, got 1\.5; "
            r"optim\.decay_start must be null, got 1\.5\)$",
        ),
        ("optim.decay_start=1000", r"optim\.decay_start \(1000\) must be below steps \(1000\)"),
        ("flow_shift=-1", r"flow_shift must be > 0"),
        ("flow_shift=NaN", r"flow_shift must be finite"),
        ("checkpoint_every=0", r"checkpoint_every must be >= 1"),
        ("log_every=0", r"log_every must be >= 1"),
        ("keep_checkpoints=0", r"keep_checkpoints must be >= 1"),
        ("steps=0", r"steps must be >= 1"),
        ("grad_accumulation=0", r"grad_accumulation must be >= 1"),
        ("data.micro_batch_size=0", r"data\.micro_batch_size must be >= 1"),
        ("prompt_dropout=1", r"prompt_dropout must be in \[0, 1\)"),
        ("teacher_weight=1.5", r"teacher_weight must be in \[0, 1\]"),
        ("ema_decay=1", r"ema_decay must be < 1"),
        ("ema_decay=0", r"ema_decay must be > 0"),
        ("seed=-1", r"seed must be >= 0"),
    ],
)
def test_finetune_options_out_of_range_are_refused_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(FinetuneConfig, None, [override])


def test_finetune_options_are_checked_for_python_callers_too():
    with pytest.raises(ValueError, match=r"optim\.grad_clip must be > 0 or null"):
        OptimSection(grad_clip=-1.0)
    with pytest.raises(ValueError, match=r"data\.micro_batch_size must be an int"):
        DataSection(micro_batch_size=1.5)
    with pytest.raises(ValueError, match=r"log_every must be >= 1"):
        FinetuneConfig(log_every=0)
    with pytest.raises(ValueError, match=r"mixed_precision must be one of"):
        FinetuneConfig(mixed_precision="fp16")
    with pytest.raises(ValueError, match=r"resume must be a bool"):
        FinetuneConfig(resume="yes")
    config = FinetuneConfig(optim=OptimSection(grad_clip=None, lr=1))  # null turns clipping off
    assert config.optim.grad_clip is None and config.optim.lr == 1.0
    config.checkpoint_every = 0  # changed after construction: finetune() checks again
    with pytest.raises(ValueError, match=r"checkpoint_every must be >= 1"):
        config.validate()


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(num_frames=24), r"num_frames must be 4k \+ 1 .*got 24"),
        (dict(num_frames=0), r"num_frames must be >= 1"),
        (dict(height=100), r"height must be a multiple of 16"),
        (dict(width=0), r"width must be >= 16"),
        (dict(num_inference_steps=0), r"num_inference_steps must be >= 1"),
        (dict(guidance_scale=float("inf")), r"guidance_scale must be finite"),
        (dict(guidance_scale=-1.0), r"guidance_scale must be >= 0"),
        (dict(lr=float("nan")), r"lr must be finite"),
        (dict(inner_steps=0), r"inner_steps must be >= 1"),
        (dict(seeds_per_prompt=0), r"seeds_per_prompt must be >= 1"),
        (dict(heldout=-1), r"heldout must be >= 0"),
        (dict(capture_steps=[]), r"capture_steps must be non-empty"),
        (dict(capture_steps=[0, 50]), r"capture_steps must be .* in \[0, 50\)"),
        (dict(blocks=[-1]), r"blocks\[0\] must be >= 0"),
        (dict(blocks=[1, 1]), r"blocks lists block 1 twice"),
        (dict(variants=["rehyat", "sparse"]), r"variants must include 'rehyat'"),
        (dict(dtype="fp8"), r"dtype must be one of"),
        (dict(seed=-3), r"seed must be >= 0"),
    ],
)
def test_distill_options_out_of_range_are_refused_naming_the_key(changes, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**changes)


def test_distill_frame_count_is_refused_from_the_command_line_too():
    with pytest.raises(ValueError, match=r"num_frames must be 4k \+ 1"):
        load_config(DistillConfig, None, ["num_frames=24"])
    assert load_config(DistillConfig, None, ["num_frames=25"]).num_frames == 25
