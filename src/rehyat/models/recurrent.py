"""Renamed to :mod:`rehyat.models.hooks` (``recurrent_forward``, beside the recurrent mode's hooks).

This path keeps importing its names, each with a DeprecationWarning."""

from rehyat.models import hooks
from rehyat.utils import renamed_module

__getattr__ = renamed_module(__name__, hooks)
