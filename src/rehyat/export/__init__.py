"""Export a converted model's recurrent chunk step to a mobile runtime, and run it there.

- :func:`export_dit_step` / :func:`export_block_step`: the whole DiT's (or one block's) chunk step as
  static graphs with every block's state as explicit inputs and outputs, for ONNX Runtime or ExecuTorch
  (XNNPACK), in fp32 or with fp16/int8 weights; :func:`export_full_block` exports an original block
  with full softmax attention over a whole video (the baseline of ``rehyat bench device``).
- :class:`ExportedStep`: an export folder opened on its runtime (numpy in and out; ``forward`` runs a
  whole latent video chunk by chunk, as :func:`rehyat.recurrent_forward` does in PyTorch).
- :func:`sample_latents`: a numpy flow-matching sampler (Euler or UniPC) with the exported step in the loop.

The runner and the sampler compute with numpy and the runtime only (no PyTorch model or op in the
loop); the exporters need the runtime's package (``pip install 'rehyat[export]'``, or executorch).
"""

from rehyat.export.exporter import (
    RUNTIMES,
    WEIGHTS,
    export_block_step,
    export_dit_step,
    export_full_block,
)
from rehyat.export.runner import ChunkResult, ExportedStep, read_manifest
from rehyat.export.sampler import euler_schedule, sample_latents, unipc_schedule
from rehyat.export.step import STATE_FIELDS, StepSignature, chunk_schedule

__all__ = [
    "RUNTIMES",
    "STATE_FIELDS",
    "WEIGHTS",
    "ChunkResult",
    "ExportedStep",
    "StepSignature",
    "chunk_schedule",
    "euler_schedule",
    "export_block_step",
    "export_dit_step",
    "export_full_block",
    "read_manifest",
    "sample_latents",
    "unipc_schedule",
]
