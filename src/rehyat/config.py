"""Renamed to :mod:`rehyat.settings` (the one configuration mechanism).

This path keeps importing its names, each with a DeprecationWarning."""

from rehyat import settings
from rehyat.utils import renamed_module

__getattr__ = renamed_module(__name__, settings)
