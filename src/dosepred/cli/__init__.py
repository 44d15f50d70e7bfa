"""The ``dosepred`` command line: a thin typer shell over the API, one module per command group;
each command is one call into a public function (mostly :mod:`dosepred.workflows`) and a rendering
(:mod:`dosepred.console`). Heavy imports stay inside the commands so ``--help`` is instant.

Which module holds which command (``tests/test_cli_commands.py`` checks this list against the
registered commands):

- ``data.py``: ``data import-<format>``, ``data export-<format>`` (one per row of
  :mod:`dosepred.io.formats` that imports / exports), ``data inspect``, ``data synth``,
  ``data split``, ``data subset``, ``data pack``, ``data unpack``
- ``model.py``: ``train``, ``predict``, ``export-model``, ``ensemble``, ``demo``
- ``evaluate.py``: ``baseline``, ``evaluate``, ``calibrate``, ``qa``
- ``bench.py``: ``bench evaluate``, ``bench predict``, ``bench bitmask``, ``bench networks``,
  ``bench losses``, ``bench qa-power``
- ``common.py``: no command: the apps (``dosepred``, ``data``, ``bench``), ``--version``, the one
  error path, warnings, the shared options

The command modules (and typer) are imported when :func:`main` runs or ``app`` is first asked for, so
a Ctrl-C while they load ends with ``error: interrupted`` like one during a command, never with a
traceback."""

from __future__ import annotations

import sys
from typing import Any

from ..errors import interruption, stop_on_signals

__all__ = ["app", "main"]


def _load() -> Any:
    # imported here, not at the top, so that main() catches a Ctrl-C while the commands and typer load
    from . import bench, data, evaluate, model  # noqa: F401  # startup: they register the commands
    from .common import app  # startup: as above

    return app


def main() -> None:
    """The ``dosepred`` entry point."""
    stop_on_signals()  # SIGTERM/SIGHUP unwind like Ctrl-C: no temporary output is left behind
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        # a path that is not valid UTF-8 (a folder named in Latin-1) is printed, not a crash on a
        # terminal whose stream is strict: stdout gives its original bytes, stderr escapes them
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=errors)
    try:
        _load()
        from .common import main as run  # startup: loaded by _load() above
    except KeyboardInterrupt as e:
        how, code = interruption(e)
        print(f"error: interrupted ({how}) while starting; nothing was done", file=sys.stderr, flush=True)
        sys.exit(code)
    run()


def __getattr__(name: str) -> Any:
    if name == "app":
        return _load()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
