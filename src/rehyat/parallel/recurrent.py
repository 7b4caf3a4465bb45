"""Renamed to :mod:`rehyat.parallel.pipeline_form` (the pipeline form of chunk parallelism).

This path keeps importing its names, each with a DeprecationWarning."""

from rehyat.parallel import pipeline_form
from rehyat.utils import renamed_module

__getattr__ = renamed_module(__name__, pipeline_form)
