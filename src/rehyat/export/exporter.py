"""Export the recurrent chunk step (or one block of it) to a static graph for a mobile runtime.

Two runtimes, one folder layout (a ``manifest.json`` naming the graphs, their inputs and outputs):

- ``"onnxruntime"``: one ``.onnx`` file per :class:`~rehyat.export.step.StepSignature`, written by
  ``torch.onnx.export`` (the TorchScript exporter: static shapes, a few seconds per graph), run by ONNX
  Runtime (CPU execution provider here; its mobile builds take the same files).
- ``"executorch"``: one ``model.pte`` whose methods are the signatures, from ``torch.export`` lowered to
  the XNNPACK backend (what ExecuTorch runs on Android and iOS CPUs). Needs the ``executorch`` package.

``weights``: ``"fp32"``; ``"fp16"`` or ``"int8"`` store every linear layer's weight in that type in the
graph (int8: symmetric, one scale per output channel) and dequantise it to fp32 at run time, so the
file is 2× / ≈4× smaller and the arithmetic stays fp32; their quality cost is the weights' rounding
(measured on ToyBench by ``rehyat bench device``). Feature maps, embeddings' convolution and norms stay fp32.

**A folder is exported whole** (:func:`rehyat.utils.replacing_folder`): the graphs and the manifest (with
each graph's sha256) are written into a hidden folder beside the target, fsynced and swapped in, so a
failed or killed export leaves the previous export exactly as it was and a finished one leaves none of
its graphs behind. A second export into a folder being written is refused (``FolderBusyError``). The
target must be new, empty or an export folder: the swap replaces everything in it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rehyat.attention.hybrid.custom_ops import plain_pytorch
from rehyat.export.runner import FORMAT, FORMAT_VERSION, MANIFEST, file_sha256
from rehyat.export.step import (
    BlockStep,
    DiTStep,
    FullBlock,
    StepSignature,
    chunk_schedule,
    state_outputs,
    state_shapes,
)
from rehyat.models.adapter import PHI_Q, rehyat_runtime
from rehyat.models.wan import rotary_at_frames
from rehyat.utils import atomic_write_json, real_folder, replacing_folder

RUNTIMES = ("onnxruntime", "executorch")
WEIGHTS = ("fp32", "fp16", "int8")
ONNX_OPSET = 18
PTE_FILE = "model.pte"


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with its weight stored in fp16 or int8 (per-output-channel symmetric scale) and
    dequantised to fp32 in the forward; the bias stays fp32."""

    def __init__(self, linear: nn.Linear, weights: str) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if weights == "fp16":
            self.register_buffer("weight_q", weight.half())
            self.register_buffer("scale", torch.ones(weight.shape[0], 1))
        else:
            scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            self.register_buffer("weight_q", torch.round(weight / scale).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float())

    def dequantized(self) -> Tensor:
        return self.weight_q.float() * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.dequantized(), self.bias)


def quantize_weights(model: nn.Module, weights: str) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` a :class:`QuantizedLinear` (``weights`` "fp16" or
    "int8"); ``"fp32"`` returns ``model`` itself."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if weights == "fp32":
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, QuantizedLinear(child, weights))
    return model


def _register_onnx_symbolics() -> None:
    """``aten::rms_norm`` (Wan's QK norm) has no TorchScript-exporter symbolic below opset 23: written
    out as x / sqrt(mean(x²) + eps) · weight."""
    from torch.onnx import symbolic_helper

    def rms_norm(g, x, normalized_shape, weight, eps):
        dims = symbolic_helper._maybe_get_const(normalized_shape, "is")
        axes = list(range(-len(dims), 0)) if isinstance(dims, (list, tuple)) else [-1]
        eps = symbolic_helper._maybe_get_const(eps, "f")
        eps = torch.finfo(torch.float32).eps if eps is None or symbolic_helper._is_value(eps) else eps
        square = g.op("Mul", x, x)
        mean = g.op("ReduceMean", square, g.op("Constant", value_t=torch.tensor(axes)), keepdims_i=1)
        denom = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(float(eps)))))
        y = g.op("Div", x, denom)
        return y if symbolic_helper._is_none(weight) else g.op("Mul", y, weight)

    torch.onnx.register_custom_op_symbolic("aten::rms_norm", rms_norm, ONNX_OPSET)


def _check_executorch() -> None:
    try:
        import executorch.exir  # noqa: F401
    except ImportError as error:
        raise ModuleNotFoundError(
            "runtime='executorch' needs the executorch package (pip install executorch)", name="executorch"
        ) from error


def _edge_decompositions() -> dict:
    """Core ATen decompositions plus ``aten.empty_permuted`` (from ``empty_like`` of a permuted view,
    e.g. in the RoPE; not a core op, so ExecuTorch rejects it) as a plain ``empty`` of the same shape:
    every such buffer is fully overwritten, so its memory layout does not matter."""
    from torch.export import default_decompositions

    def empty_permuted(size, physical_layout, *, dtype=None, layout=None, device=None, pin_memory=None):
        return torch.empty(size, dtype=dtype, device=device)

    table = default_decompositions()
    table[torch.ops.aten.empty_permuted.default] = empty_permuted
    return table


@contextmanager
def _traceable(module: nn.Module) -> Iterator[None]:
    """Trace the step on its plain-PyTorch path: the library's inference calls go through its registered
    custom ops (opaque to the ONNX exporter and to ExecuTorch), its autograd path through plain ATen ops
    with the same math. Grad mode and parameters that require grad select the latter (restored after)."""
    params = [p for p in module.parameters() if p.is_floating_point()]
    saved = [p.requires_grad for p in params]
    # Under torch.export the library takes its ops whatever the grad mode (it counts as compiling):
    # plain_pytorch() keeps them out of the trace.
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad(), plain_pytorch():
            yield
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)


def _io_spec(names: list[str], tensors: tuple[Tensor, ...]) -> list[dict[str, Any]]:
    return [
        {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in zip(names, tensors, strict=True)
    ]


def _write_graphs(
    folder: Path,
    runtime: str,
    graphs: dict[str, tuple[nn.Module, tuple[Tensor, ...], list[str], list[str]]],
    fold: bool = True,
) -> dict[str, dict[str, Any]]:
    """Export each ``name -> (module, example inputs, input names, output names)``; return the
    manifest entries (file, inputs, outputs with shapes)."""
    entries: dict[str, dict[str, Any]] = {}
    programs = {}
    for name, (module, args, input_names, output_names) in graphs.items():
        module.eval()
        with _traceable(module):
            outputs = module(*args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        entry = {"inputs": _io_spec(input_names, args), "outputs": _io_spec(output_names, outputs)}
        if runtime == "onnxruntime":
            _register_onnx_symbolics()
            path = folder / f"{name}.onnx"
            with _traceable(module), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on Python values baked in as constants
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=ONNX_OPSET,
                    input_names=input_names,
                    output_names=output_names,
                    # fp16/int8: keep the dequantisation in the graph (folding it stores fp32 weights)
                    do_constant_folding=fold,
                )
            entry["file"] = path.name
        else:
            with _traceable(module):
                programs[name] = torch.export.export(module, args, strict=False).run_decompositions(
                    _edge_decompositions()
                )
            entry["file"] = PTE_FILE
        entries[name] = entry
    if programs:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        lowered = to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()])
        (folder / PTE_FILE).write_bytes(lowered.to_executorch().buffer)
    return entries


def _state_names(prefix: str, fields: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{field}" for field in fields]


def _state_geometry(transformer: nn.Module) -> dict[str, int]:
    attn = transformer.blocks[0].attn1
    return {
        "heads": attn.heads,
        "head_dim": attn.inner_dim // attn.heads,
        "feature_dim": getattr(attn, PHI_Q).feature_dim,
    }


def _zero_state(
    geometry: dict[str, int], batch: int, frame_tokens: int, signature: StepSignature
) -> tuple[Tensor, ...]:
    shapes = state_shapes(batch, frame_tokens=frame_tokens, cached=signature.cached, **geometry)
    return tuple(torch.zeros(shapes[name]) for name in signature.state_inputs())


def _prepare(folder: str | Path, runtime: str, weights: str) -> Path:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if runtime == "executorch":
        _check_executorch()
    folder = real_folder(folder)
    if folder.is_dir() and not (folder / MANIFEST).is_file() and any(folder.iterdir()):
        raise ValueError(
            f"{folder} is not an export folder ({MANIFEST} is missing) and not empty: an export replaces "
            "its whole folder, so give a new or empty folder"
        )
    return folder


def _write_export(folder: Path, write: Callable[[Path], dict[str, Any]]) -> None:
    """Write an export through ``write(staging) -> manifest`` into a staging folder beside ``folder``,
    record each graph's sha256 in the manifest, write it last, and swap the folder in whole."""
    with replacing_folder(folder, wait=False) as staging:
        manifest = write(staging)
        for entry in manifest["graphs"].values():
            entry["sha256"] = file_sha256(staging / entry["file"])
        atomic_write_json(staging / MANIFEST, manifest)


def _manifest(kind: str, runtime: str, weights: str, graphs: dict, **fields: Any) -> dict[str, Any]:
    import rehyat

    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "runtime": runtime,
        "weights": weights,
        **fields,
        "graphs": graphs,
        "torch": torch.__version__,
        "rehyat": rehyat.__version__,
    }


def _write_steps(
    folder: Path,
    kind: str,
    runtime: str,
    weights: str,
    graphs: dict,
    signatures: list[StepSignature],
    config: Any,
    **fields: Any,
) -> Path:
    """Export the step graphs and the manifest (each graph's signature, the chunking, the conversion
    config and ``fields``) into ``folder`` as a whole; return ``folder``."""
    fields.update(
        chunk_frames=config.chunk_frames, overlap_frames=config.overlap_frames, rehyat_config=config.to_dict()
    )

    def write(staging: Path) -> dict[str, Any]:
        entries = _write_graphs(staging, runtime, graphs, fold=weights == "fp32")
        for signature in signatures:
            entries[signature.name].update(
                cached=signature.cached, frames=signature.frames, first=signature.first
            )
        return _manifest(kind, runtime, weights, entries, **fields)

    _write_export(folder, write)
    return folder


def _float32(transformer: nn.Module) -> nn.Module:
    if any(p.dtype != torch.float32 for p in transformer.parameters()):
        raise ValueError("export the float32 model (weights='fp16'/'int8' quantise its weights at export)")
    if any(p.device.type != "cpu" for p in transformer.parameters()):
        raise ValueError("export needs the model on the CPU (model.cpu())")
    return transformer


def export_dit_step(
    transformer: nn.Module,
    folder: str | Path,
    *,
    num_frames: int,
    height: int,
    width: int,
    text_tokens: int,
    batch: int = 1,
    runtime: str = "onnxruntime",
    weights: str = "fp32",
) -> Path:
    """Export the whole converted DiT's recurrent chunk step to ``folder``; return ``folder``.

    ``num_frames`` × ``height`` × ``width`` is the latent video (before patching) the graphs are made
    for: one graph per distinct (cached frames, chunk frames) of its chunks (:func:`chunk_schedule`),
    so a video of any length whose chunks have those shapes runs on them (with Tc = 3, To = 1: a first
    chunk, full chunks and the short last chunk that ``num_frames`` leaves). ``batch`` and
    ``text_tokens`` (the text length) are fixed too (batch 2 runs both CFG branches in one call).
    Load the folder with :class:`rehyat.export.ExportedStep`.
    """
    folder = _prepare(folder, runtime, weights)
    config = rehyat_runtime(transformer).config if rehyat_runtime(transformer) else None
    if config is None:
        raise ValueError("exporting the recurrent step needs a transformer converted with convert_wan")
    model = quantize_weights(_float32(transformer), weights).eval()
    p_t, p_h, p_w = model.config.patch_size
    if num_frames % p_t or height % p_h or width % p_w:
        raise ValueError(
            f"latent video {num_frames}×{height}×{width} does not divide into patches {p_t, p_h, p_w}"
        )
    rows, cols = height // p_h, width // p_w
    geometry = _state_geometry(model)
    schedule = chunk_schedule(num_frames // p_t, config.chunk_frames, config.overlap_frames)
    signatures = sorted(
        {signature for _, signature in schedule}, key=lambda s: (not s.first, s.cached, -s.frames)
    )
    blocks = len(model.blocks)
    per_block = state_outputs(config.overlap_frames)
    outputs = ["output", *[n + ".next" for b in range(blocks) for n in _state_names(f"b{b}", per_block)]]
    gen = torch.Generator().manual_seed(0)
    graphs = {}
    for signature in signatures:
        state = sum((_zero_state(geometry, batch, rows * cols, signature) for _ in range(blocks)), ())
        args = (
            torch.randn(
                batch, model.config.in_channels, signature.frames * p_t, height, width, generator=gen
            ),
            torch.full((batch,), 500.0),
            torch.randn(batch, text_tokens, model.config.text_dim, generator=gen),
            torch.tensor([0 if signature.first else signature.frames], dtype=torch.int64),
            *state,
        )
        state_in = [n for b in range(blocks) for n in _state_names(f"b{b}", signature.state_inputs())]
        inputs = ["latents", "timestep", "context", "frame_start", *state_in]
        step = DiTStep(model, signature, height, width)
        graphs[signature.name] = (step, args, inputs, outputs)
    return _write_steps(
        folder,
        "dit",
        runtime,
        weights,
        graphs,
        signatures,
        config,
        batch=batch,
        text_tokens=text_tokens,
        text_dim=model.config.text_dim,
        in_channels=model.config.in_channels,
        out_channels=model.config.out_channels,
        patch_size=list(model.config.patch_size),
        latent_size=[height, width],
        grid=[rows, cols],
        blocks=blocks,
        state=geometry,
    )


def export_block_step(
    transformer: nn.Module,
    folder: str | Path,
    *,
    block: int = 0,
    signatures: list[StepSignature],
    rows: int,
    cols: int,
    text_tokens: int,
    batch: int = 1,
    runtime: str = "onnxruntime",
    weights: str = "fp32",
) -> Path:
    """Export the chunk step of one converted block (``blocks[block]``) for each of ``signatures`` on a
    ``rows`` × ``cols`` post-patch token grid: inputs hidden [B, n·S, C], timestep_proj [B, 6, C],
    context [B, L, C] (embedded text), frame_start [1] and the block's state."""
    folder = _prepare(folder, runtime, weights)
    config = rehyat_runtime(transformer).config
    model = quantize_weights(_float32(transformer), weights).eval()
    width, geometry = (
        model.config.num_attention_heads * model.config.attention_head_dim,
        _state_geometry(model),
    )
    gen = torch.Generator().manual_seed(0)
    graphs = {}
    for signature in signatures:
        tokens = signature.frames * rows * cols
        state = _zero_state(geometry, batch, rows * cols, signature)
        args = (
            torch.randn(batch, tokens, width, generator=gen),
            torch.randn(batch, 6, width, generator=gen) * 0.1,
            torch.randn(batch, text_tokens, width, generator=gen),
            torch.tensor([0 if signature.first else signature.frames], dtype=torch.int64),
            *state,
        )
        inputs = [
            "hidden",
            "timestep_proj",
            "context",
            "frame_start",
            *_state_names("b", signature.state_inputs()),
        ]
        outputs = ["output", *[n + ".next" for n in _state_names("b", state_outputs(config.overlap_frames))]]
        graphs[signature.name] = (BlockStep(model, block, signature, rows, cols), args, inputs, outputs)
    return _write_steps(
        folder,
        "block",
        runtime,
        weights,
        graphs,
        signatures,
        config,
        batch=batch,
        text_tokens=text_tokens,
        grid=[rows, cols],
        width=width,
        state=geometry,
    )


def export_full_block(
    transformer: nn.Module,
    folder: str | Path,
    *,
    block: int = 0,
    rows: int,
    cols: int,
    text_tokens: int,
    batch: int = 1,
    runtime: str = "onnxruntime",
    weights: str = "fp32",
) -> Path:
    """Export one *unconverted* Wan block over a whole video (full softmax attention, one head at a time;
    see :class:`~rehyat.export.step.FullBlock`), the baseline of the recurrent step. The token count is
    dynamic (ONNX Runtime only): one graph, ``full``, takes a video of any number of frames of
    ``rows`` × ``cols`` tokens with its RoPE tables (:func:`~rehyat.models.wan.rotary_at_frames`) as inputs."""
    folder = _prepare(folder, runtime, weights)
    if runtime != "onnxruntime":
        raise ValueError(
            "export_full_block writes a dynamic-length graph, which only the ONNX Runtime export has"
        )
    if rehyat_runtime(transformer) is not None:
        raise ValueError("export_full_block takes the original (unconverted) transformer")
    model = quantize_weights(_float32(transformer), weights)
    model = copy.deepcopy(model) if model is transformer else model
    width = model.config.num_attention_heads * model.config.attention_head_dim
    gen = torch.Generator().manual_seed(0)
    frames = 2  # the example; the graph's token axis is dynamic
    cos, sin = rotary_at_frames(model.rope, torch.arange(frames), rows, cols)
    args = (
        torch.randn(batch, frames * rows * cols, width, generator=gen),
        torch.randn(batch, 6, width, generator=gen) * 0.1,
        torch.randn(batch, text_tokens, width, generator=gen),
        cos,
        sin,
    )
    names = ["hidden", "timestep_proj", "context", "cos", "sin"]
    module = FullBlock(model, block).eval()
    _register_onnx_symbolics()
    tokens = {"hidden": {1: "tokens"}, "cos": {1: "tokens"}, "sin": {1: "tokens"}, "output": {1: "tokens"}}

    def write(staging: Path) -> dict[str, Any]:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(staging / "full.onnx"),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=names,
                output_names=["output"],
                dynamic_axes=tokens,
            )
        inputs = _io_spec(names, args)
        for spec in inputs:
            if spec["name"] in tokens:
                spec["shape"][1] = None
        entry = {
            "file": "full.onnx",
            "inputs": inputs,
            "outputs": [{"name": "output", "shape": [batch, None, width], "dtype": "float32"}],
        }
        return _manifest(
            "full_block",
            runtime,
            weights,
            {"full": entry},
            batch=batch,
            text_tokens=text_tokens,
            grid=[rows, cols],
            width=width,
        )

    _write_export(folder, write)
    return folder
