"""Renamed to :mod:`rehyat.attention.kernels.memory_layout` (the kernels' memory-layout helpers).

This path keeps importing its names, each with a DeprecationWarning."""

from rehyat.attention.kernels import memory_layout
from rehyat.utils import renamed_module

__getattr__ = renamed_module(__name__, memory_layout)
