"""The ``dosepred`` command line: a thin typer shell over the API, one module per command group;
each command is one call into a public function (mostly :mod:`dosepred.workflows`) and a rendering
(:mod:`dosepred.console`). Heavy imports stay inside the commands so ``--help`` is instant."""

from . import bench, data, evaluate, model  # noqa: F401  (they register the commands)
from .common import app, main

__all__ = ["app", "main"]
