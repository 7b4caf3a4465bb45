"""The hybrid op's fused Triton kernels: :mod:`.windowed_attention` (the windowed softmax part fused with
the linear part, forward and backward), :mod:`.state_sums` (per-frame and per-chunk state sums) and
:mod:`.launch` (the parallel form and the streaming step on them). Imported only when the Triton backend
runs; block sizes and the backend choice are shared with φ's kernel in :mod:`rehyat.attention.kernels`."""
