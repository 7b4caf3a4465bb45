"""Renamed to :mod:`rehyat.attention.kernels.tuning` (the Triton kernels' block sizes).

This path keeps importing its names, each with a DeprecationWarning."""

from rehyat.attention.kernels import tuning
from rehyat.utils import renamed_module

__getattr__ = renamed_module(__name__, tuning)
