"""The whole-model recurrent forward of a fully converted, causal Wan DiT (docs/method.md §4, §8).

:func:`recurrent_forward` is diffusers' own ``WanTransformer3DModel.forward`` run chunk by chunk through
the hooks of :mod:`rehyat.models.hooks` (a sweep over chunks of ``chunk_frames`` post-patch frames, each
``attn1`` carrying its state from chunk to chunk, RoPE at absolute frames, feed-forwards frame by frame):
activations exist for one chunk at a time, so peak memory does not grow with the number of frames, and
the result equals the parallel forward of the same converted model.
"""

from __future__ import annotations

from torch import Tensor, nn


def recurrent_forward(
    transformer: nn.Module,
    hidden_states: Tensor,
    timestep: Tensor,
    encoder_hidden_states: Tensor,
    encoder_hidden_states_image: Tensor | None = None,
) -> Tensor:
    """Chunk-by-chunk forward of a converted ``WanTransformer3DModel``; same arguments and result as
    ``transformer(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image,
    return_dict=False)[0]``.

    Needs every block converted with ``causal=True``. ``timestep`` is one value per batch element, or one
    per token ([B, N], Wan2.2-TI2V). Each call starts from fresh states, so a call is one denoising step
    of one CFG branch. Run it under ``torch.no_grad()``/``torch.inference_mode()`` for constant memory:
    with autograd on, the graph keeps every chunk's activations. The same as calling the transformer
    inside :func:`rehyat.models.hooks.recurrent_mode`.
    """
    from rehyat.models.hooks import recurrent_mode  # diffusers only where a Wan model runs

    with recurrent_mode(transformer):
        return transformer(
            hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image, return_dict=False
        )[0]
