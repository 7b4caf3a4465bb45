"""One rank of the 3-process CPU (gloo) chunk-parallel test: every case on every rank, results to
``<out>/rank-<r>.json`` (the test reads them). Two-rank cases run on a subgroup of ranks 0 and 1.

Cases: the attention op (fp64) against the single-process op, outputs and gradients, with the bytes
each rank sent; the tiny Wan (fp32) parallel forward and backward against the single-process forward;
the recurrent pipeline form; and refusals (each must raise ValueError on every rank).
"""

from __future__ import annotations

import copy
import datetime
import json
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from diffusers import WanTransformer3DModel

from rehyat import ReHyAtConfig, convert_wan
from rehyat.attention.hybrid.chunk import chunked_hybrid_attention
from rehyat.models import rehyat_runtime
from rehyat.models.wan_configs import tiny_wan_config
from rehyat.parallel import (
    CommCounter,
    FrameLayout,
    chunk_parallel,
    chunk_parallel_attention,
    chunk_parallel_of,
    chunk_parallel_recurrent_forward,
    enable_chunk_parallel,
    gather_frames,
    shard_frames,
)

TIMEOUT = datetime.timedelta(seconds=60)
HEADS, HEAD_DIM, FEATURES, TOKENS, BATCH = 2, 4, 3, 2, 2

# (ranges, Tc): 2 and 3 ranks, even and uneven, short last chunk.
OP_RANGES = [
    ([(0, 4), (4, 8)], 2),
    ([(0, 2), (2, 7)], 2),
    ([(0, 6), (6, 7)], 3),
    ([(0, 1), (1, 2), (2, 3)], 1),
    ([(0, 2), (2, 4), (4, 7)], 2),
    ([(0, 4), (4, 6), (6, 7)], 2),
    ([(0, 1), (1, 2), (2, 6)], 1),
]
# (ranges, config, frame_ranges given): the tiny Wan in fp32.
MODEL_CASES = [
    ([(0, 4), (4, 8)], dict(chunk_frames=2, overlap_frames=1), True),
    ([(0, 2), (2, 7)], dict(chunk_frames=2, overlap_frames=2, causal=False), True),
    ([(0, 6), (6, 7)], dict(chunk_frames=3, overlap_frames=0), False),
    ([(0, 2), (2, 4), (4, 6)], dict(chunk_frames=2, overlap_frames=0, causal=False, blocks=[1]), True),
    ([(0, 2), (2, 4), (4, 7)], dict(chunk_frames=2, overlap_frames=1), True),
    ([(0, 1), (1, 2), (2, 7)], dict(chunk_frames=1, overlap_frames=2, feature_rotary="full"), False),
    ([(0, 4), (4, 6), (6, 7)], dict(chunk_frames=2, overlap_frames=2, causal=False), True),
]
PIPELINE_CASES = [
    ([(0, 2), (2, 7)], dict(chunk_frames=2, overlap_frames=1)),
    ([(0, 1), (1, 2), (2, 7)], dict(chunk_frames=1, overlap_frames=2)),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def op_case(rank: int, group, ranges, chunk: int, overlap: int, causal: bool) -> dict:
    frames = ranges[-1][1]
    gen = torch.Generator().manual_seed(frames * 100 + chunk * 10 + overlap)
    shape = (BATCH, frames * TOKENS, HEADS)
    q, k, v, weight = (torch.randn(*shape, HEAD_DIM, generator=gen, dtype=torch.float64) for _ in range(4))
    fq, fk = (torch.rand(*shape, FEATURES, generator=gen, dtype=torch.float64) for _ in range(2))
    whole = [t.clone().requires_grad_() for t in (q, k, v, fq, fk)]
    geometry = dict(frame_tokens=TOKENS, chunk_frames=chunk, overlap_frames=overlap, causal=causal)
    reference = chunked_hybrid_attention(*whole, **geometry)
    (reference * weight).sum().backward()
    start, stop = ranges[rank]
    rows = slice(start * TOKENS, stop * TOKENS)
    mine = [t[:, rows].clone().requires_grad_() for t in (q, k, v, fq, fk)]
    layout = FrameLayout.checked(ranges, chunk, overlap, causal)
    with CommCounter() as counter:
        out = chunk_parallel_attention(*mine, layout=layout, frame_tokens=TOKENS, group=group)
        (out * weight[:, rows]).sum().backward()
    measured = counter.by_label("forward")
    expected = layout.bytes_sent(
        rank,
        batch=BATCH,
        frame_tokens=TOKENS,
        heads=HEADS,
        head_dim=HEAD_DIM,
        feature_dim=FEATURES,
        element_bytes=8,
        state_bytes=8,
    )
    return {
        "case": [ranges, chunk, overlap, causal],
        "out": rel(out, reference[:, rows]),
        "grad": max(rel(a.grad, b.grad[:, rows]) for a, b in zip(mine, whole, strict=True)),
        "measured": {
            "halo": measured.get("halo_k", 0) + measured.get("halo_v", 0),
            "partial": measured.get("partial", 0),
            "total": measured.get("total", 0),
        },
        "expected": expected,
        "backward_bytes": counter.total("backward"),
    }


def tiny_model() -> WanTransformer3DModel:
    torch.manual_seed(0)
    return WanTransformer3DModel(**tiny_wan_config()).eval()


def tiny_inputs(frames: int):
    gen = torch.Generator().manual_seed(frames)
    hidden = torch.randn(1, 16, frames, 8, 8, generator=gen)
    context = torch.randn(1, 6, 32, generator=gen)
    weight = torch.randn(1, 16, frames, 8, 8, generator=gen)
    return hidden, torch.tensor([700.0]), context, weight


def model_case(rank: int, group, base, ranges, config: dict, given: bool) -> dict:
    model = convert_wan(copy.deepcopy(base), ReHyAtConfig(**config))
    hidden, timestep, context, weight = tiny_inputs(ranges[-1][1])
    whole = hidden.clone().requires_grad_()
    reference = model(whole, timestep, context, return_dict=False)[0]
    (reference * weight).sum().backward()
    reference_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    start, stop = ranges[rank]
    mine = shard_frames(hidden, ranges, rank).clone().requires_grad_()
    processors = [type(block.attn1.processor) for block in model.blocks]
    before = hook_state(model)
    with chunk_parallel(model, group, ranges if given else None) as handle:
        hooked = hooks_of(model) == {"": ["rehyat_chunk_parallel"], "rope": ["rehyat_chunk_parallel_rotary"]}
        out = model(mine, timestep, context, return_dict=False)[0]
        (out * shard_frames(weight, ranges, rank)).sum().backward()
        gathered = gather_frames(out.detach(), ranges, group)
        layout = handle.layout
    with torch.no_grad():
        same_after = torch.equal(model(whole, timestep, context, return_dict=False)[0], reference)
    worst_param = 0.0
    for name, param in model.named_parameters():
        summed = param.grad.clone()
        dist.all_reduce(summed, group=group)
        worst_param = max(worst_param, rel(summed, reference_grads[name]))
    return {
        "case": [ranges, config, given],
        "layout": [list(r) for r in layout.ranges],
        "out": rel(out, reference[:, :, start:stop]),
        "gathered": rel(gathered, reference),
        "grad_input": rel(mine.grad, whole.grad[:, :, start:stop]),
        "grad_params": worst_param,
        "restored": processors == [type(block.attn1.processor) for block in model.blocks],
        "hooked": hooked,
        "clean": chunk_parallel_of(model) is None
        and hook_state(model) == before
        and rehyat_runtime(model).attention is None,
        "same_after": same_after,
    }


def hooks_of(model: torch.nn.Module) -> dict[str, list[str]]:
    """The diffusers hooks on the model and its submodules, by module name (those with any)."""
    found = {}
    for name, module in model.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            found[name] = list(registry.hooks)
    return found


def hook_state(model: torch.nn.Module) -> tuple:
    """Every hook on the model (diffusers' and torch's) and every forward set on a module instance."""
    torch_hooks = [
        (name, list(m._forward_pre_hooks.values()), list(m._forward_hooks.values()), vars(m).get("forward"))
        for name, m in model.named_modules()
    ]
    return hooks_of(model), torch_hooks


def pipeline_case(rank: int, group, base, ranges, config: dict) -> dict:
    model = convert_wan(copy.deepcopy(base), ReHyAtConfig(**config))
    hidden, timestep, context, _ = tiny_inputs(ranges[-1][1])
    with torch.no_grad():
        reference = model(hidden, timestep, context, return_dict=False)[0]
        with chunk_parallel(model, group, ranges), CommCounter() as counter:
            out = chunk_parallel_recurrent_forward(
                model, shard_frames(hidden, ranges, rank), timestep, context
            )
    start, stop = ranges[rank]
    return {"case": [ranges, config], "out": rel(out, reference[:, :, start:stop]), "bytes": counter.total()}


def refusal(run) -> str:
    """The ValueError message ``run()`` raises (or a line saying it did not)."""
    try:
        run()
    except ValueError as error:
        return f"ValueError: {error}"
    except Exception as error:  # the test reports which rank got what
        return f"{type(error).__name__}: {error}"
    return "no error"


def failed_enable_leaves_nothing(base, ranges) -> bool:
    """Fault injection: registering the hooks fails after the first one is on (and block 0's processor
    swapped for softmax across ranks); the transformer is then as it was before the call."""
    import rehyat.models.hooks as hooks

    model = convert_wan(copy.deepcopy(base), ReHyAtConfig(chunk_frames=2, overlap_frames=1, blocks=[1]))
    before, processors = hook_state(model), [block.attn1.processor for block in model.blocks]
    register = hooks.register_hooks

    def failing(transformer, pairs):
        register(transformer, list(pairs)[:1])
        raise RuntimeError("injected")

    hooks.register_hooks = failing
    try:
        enable_chunk_parallel(model, None, ranges)
    except RuntimeError:
        pass
    finally:
        hooks.register_hooks = register
    return (
        chunk_parallel_of(model) is None
        and hook_state(model) == before
        and [block.attn1.processor for block in model.blocks] == processors
        and rehyat_runtime(model).attention is None
    )


def refusals(rank: int, base) -> dict:
    model = convert_wan(copy.deepcopy(base), ReHyAtConfig(chunk_frames=2, overlap_frames=1))
    hidden, timestep, context, _ = tiny_inputs(7)
    ranges = [(0, 2), (2, 4), (4, 7)]
    found = {"off_boundary": refusal(lambda: enable_chunk_parallel(model, None, [(0, 3), (3, 5), (5, 7)]))}
    mixed = convert_wan(
        copy.deepcopy(base), ReHyAtConfig(chunk_frames=2 if rank < 2 else 1, overlap_frames=1)
    )
    found["mixed_config"] = refusal(lambda: enable_chunk_parallel(mixed, None, ranges))
    found["not_converted"] = refusal(
        lambda: enable_chunk_parallel(base if rank == 1 else model, None, ranges)
    )
    anchored = convert_wan(
        copy.deepcopy(base), ReHyAtConfig(chunk_frames=2, overlap_frames=1, anchor_frames=1)
    )
    found["anchor"] = refusal(lambda: enable_chunk_parallel(anchored, None, ranges))
    found["partial_failure"] = failed_enable_leaves_nothing(base, ranges)
    with chunk_parallel(model, None, ranges):
        wrong = hidden[:, :, : (3 if rank == 1 else ranges[rank][1] - ranges[rank][0])]
        found["wrong_frames"] = refusal(lambda: model(wrong, timestep, context))
        other = hidden[:, :, :2, : (6 if rank == 2 else 8)]
        found["mixed_grid"] = refusal(lambda: model(other, timestep, context))
        # after refusals the group and the model still work
        model(shard_frames(hidden, ranges, rank), timestep, context)
    with chunk_parallel(model, None, None):
        sizes = [3, 2, 2]  # frames taken from each rank's input: rank 1 would start at frame 3
        found["local_off_boundary"] = refusal(lambda: model(hidden[:, :, : sizes[rank]], timestep, context))
    return found


def main(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=TIMEOUT
    )
    pair = dist.new_group([0, 1], timeout=TIMEOUT)
    results: dict = {"op": [], "model": [], "pipeline": [], "seconds": {}}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        results["seconds"][name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    try:
        for ranges, chunk in OP_RANGES:
            group = pair if len(ranges) == 2 else None
            if rank >= len(ranges):
                continue
            for overlap in (0, 1, 2, 3):
                for causal in (True, False):
                    results["op"].append(op_case(rank, group, ranges, chunk, overlap, causal))
        lap("op")
        base = tiny_model()
        for ranges, config, given in MODEL_CASES:
            if rank < len(ranges):
                group = pair if len(ranges) == 2 else None
                results["model"].append(model_case(rank, group, base, ranges, config, given))
        lap("model")
        for ranges, config in PIPELINE_CASES:
            if rank < len(ranges):
                group = pair if len(ranges) == 2 else None
                results["pipeline"].append(pipeline_case(rank, group, base, ranges, config))
        lap("pipeline")
        results["refusals"] = refusals(rank, base)
        lap("refusals")
    except Exception:
        results["error"] = traceback.format_exc()
    Path(out_dir, f"rank-{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()
