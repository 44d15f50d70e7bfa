"""What every command shares: the typer apps, the one error path (a user's mistake, a
:class:`dosepred.errors.DosepredError` or an ``OSError``, is one clear line on stderr and exit code 2,
never a traceback; anything else is a bug in dosepred: a short traceback and a line asking to report
it, exit code 1), warnings as ``warning: ...``, the common options."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__, progress
from ..errors import DosepredError, interrupted, interruption
from ..fsutil import output_file, write_json
from ..io import formats


def _typer(help: str, **kw: object) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None,
                       context_settings={"help_option_names": ["-h", "--help"]}, **kw)  # type: ignore[arg-type]


app = _typer("dosepred: 3D dose prediction for head-and-neck radiotherapy with clinical DVH metric losses.",
             pretty_exceptions_enable=False, add_completion=False)
data_app = _typer("Import, export, synthesise and inspect datasets.")
bench_app = _typer("Benchmarks (print a table, --json FILE writes the numbers).")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")


def _usage_name(self) -> str:  # type: ignore[no-untyped-def]
    """Arguments as ``SRC`` in usage lines (typer writes ``{src}``)."""
    name = (self.metavar or self.name or "").upper()
    return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")


if hasattr(typer.core.TyperArgument, "_usage_display_name"):  # the typer versions that need it
    typer.core.TyperArgument._usage_display_name = _usage_name


def _version(value: bool) -> None:
    if value:
        print(f"dosepred {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """dosepred: 3D dose prediction for head-and-neck radiotherapy with clinical DVH metric losses."""


def _say(kind: str, msg: str, colour: str) -> None:
    msg = str(msg)
    for prefix in ("error: ", "warning: ", "note: "):  # never "error: warning: ..."
        while msg.startswith(prefix):
            msg = msg[len(prefix):]
    # ANSI colour only on a terminal and without NO_COLOR (https://no-color.org)
    tty = bool(getattr(sys.stderr, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")
    head = f"\x1b[1;{colour}m{kind}:\x1b[0m" if tty else f"{kind}:"
    print(f"{head} {msg}", file=sys.stderr, flush=True)


def _err(msg: str) -> None:
    if str(msg).startswith("warning: "):
        warn(msg)
    else:
        _say("error", msg, "31")


def error(msg: str) -> None:
    """``error: msg`` on stderr (red on a terminal)."""
    _err(msg)


def warn(msg: str) -> None:
    _say("warning", msg, "33")


def note(msg: str) -> None:
    _say("note", msg, "36")


_QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)


@contextlib.contextmanager
def show_warnings() -> Iterator[list[str]]:
    """Print each warning raised inside the block once, as it comes, as ``warning: ...`` (the one
    place the commands show warnings; a failure later still leaves them on screen), or as ``note: ...``
    for a category whose ``prefix`` is ``"note"`` (information, e.g. :class:`dosepred.predict.RoiNote`).
    Deprecation and resource warnings of libraries stay quiet. Yields the list of messages shown."""
    import warnings

    shown: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
        m = str(message)
        if issubclass(category, _QUIET_WARNINGS) or m in shown:
            return
        shown.append(m)
        (note if getattr(category, "prefix", "warning") == "note" else warn)(m)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield shown


def _os_message(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    if e.filename is None:
        return str(e) or what
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {what}"


#: How many of the innermost stack frames an internal error shows (where it happened, not how the
#: command got there)
TRACEBACK_FRAMES = 3

#: Exceptions typer raises to end a command on purpose (``--version``, a usage error, Ctrl-C at a
#: prompt): they pass through the error path untouched. Its usage errors' base (click's
#: ``ClickException``, which newer typers vendor) is found from a public subclass.
_CLI_EXITS: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, *(
    c for c in typer.BadParameter.__mro__ if c.__name__ in ("ClickException", "TyperException")))


def user_error_message(e: BaseException) -> str:
    """The one line of a user's mistake: the message (a ``KeyError``'s first argument, which
    ``str()`` would quote)."""
    return str(e.args[0] if isinstance(e, KeyError) and e.args else e)


#: What the out-of-memory line suggests
OUT_OF_MEMORY_HINT = ("the command needs more memory than this machine (or GPU) has free; close other jobs, "
                      "or lower what it holds at once (train: --batch, --patch; predict: --device cpu)")


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is running out of memory (``MemoryError``, torch's CUDA/MPS out-of-memory errors,
    found by name so that torch need not be imported): a limit of the machine, not a bug."""
    return isinstance(e, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(e).__mro__) \
        or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower()[:200])


def internal_error(e: BaseException) -> None:
    """A bug in dosepred: the last :data:`TRACEBACK_FRAMES` frames of the traceback on stderr, then
    ``error: internal error (<type>: <message>); this is a bug in dosepred, please report it ...``."""
    import traceback

    tb = traceback.format_exception(type(e), e, e.__traceback__, limit=-TRACEBACK_FRAMES, chain=False)
    print("".join(tb), end="", file=sys.stderr, flush=True)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    what = type(e).__name__ + (f": {first}" if first else "")
    _err(f"internal error ({what}); this is a bug in dosepred, please report it with the command line "
         "that caused it")


def report_error(e: Exception) -> int:
    """Print what went wrong and return the exit code: a user's mistake (:class:`~dosepred.errors.
    DosepredError`, ``OSError``: a read-only --out, a missing file, a full disk) is one line and 2;
    running out of memory is the machine's limit, not a bug: one line saying what lowers the need, 2;
    anything else is a bug: :func:`internal_error` and 1."""
    if isinstance(e, OSError):
        _err(_os_message(e))
        return 2
    if isinstance(e, DosepredError):
        _err(user_error_message(e))
        return 2
    if out_of_memory(e):
        _err(f"out of memory ({type(e).__name__}): {OUT_OF_MEMORY_HINT}")
        return 2
    internal_error(e)
    return 1


def friendly(fn):
    """Every command: ``--no-progress`` applied, warnings shown as they come, and the one error path:
    a user's mistake (:class:`~dosepred.errors.DosepredError`, ``OSError``) is one clear message and
    exit code 2 (docs/formats.md): ``error: <path or what>: <what went wrong>``, never a traceback;
    Ctrl-C is one line and exit code 130; anything else is a bug: a short traceback, a line asking to
    report it, and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "no_progress" in kwargs:
            progress.set_enabled(False if kwargs.pop("no_progress") else None)
        try:
            with show_warnings():
                return fn(*args, **kwargs)
        except _CLI_EXITS:
            raise
        except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - reported by its kind
            # Ctrl-C (typer would exit 130 without a word), also when a library's clean-up replaced it
            # with its own error; else a user's mistake or a bug
            if interrupted(e):
                how, code = interruption(e)
                _err(f"interrupted ({how}); outputs not finished are left as they were")
                raise typer.Exit(code) from None
            raise typer.Exit(report_error(e)) from None

    return wrapper


Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty output "
                                         "whole (never done without it).")]


#: what a source may be, from the table of formats (for help texts)
SOURCES = formats.described()
_TAKERS = formats.roi_map_takers()

RoiMapOption = Annotated[Path | None, typer.Option(
    "--roi-map", help=f"A {' or '.join(f.label for f in _TAKERS)} source's ROI name map (JSON, as `data "
    f"import-{_TAKERS[0].name} --roi-map`: clinical ROI name -> canonical name, optional "
    "kinds/prescriptions); an error for another kind of source.")]


def prediction_help() -> str:
    """What ``predict --format`` writes and ``evaluate --prediction`` reads, from the table of formats."""
    return formats.listed([f"{f.name} ({f.dose_output})" for f in formats.prediction_formats()])


NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bars: plain progress lines "
                                            "instead (as when output is not a terminal; "
                                            "DOSEPRED_PROGRESS_INTERVAL=off silences them).")]


#: The width of the console when output is not a terminal (a pipe, a file) and COLUMNS is unset: wide
#: enough that no table is cut or wrapped (rich would otherwise assume 80 columns)
PIPE_WIDTH = 10_000


def console():
    """The commands' rich console: the terminal's width on a terminal (or ``COLUMNS``), else
    :data:`PIPE_WIDTH`, so piped tables keep every column whole. No markup and no emoji codes: the
    tables and lines hold patient ids and ROI names, which may hold square brackets ("pt [b]7" was
    printed as "pt 7", a name holding "[/x]" was a traceback) or colons ("Stem :brain:" was printed
    with an emoji)."""
    from rich.console import Console

    if bool(getattr(sys.stdout, "isatty", lambda: False)()) or os.environ.get("COLUMNS"):
        return Console(highlight=False, markup=False, emoji=False)
    return Console(highlight=False, markup=False, emoji=False, width=PIPE_WIDTH)


def show(items: list) -> None:  # type: ignore[type-arg]
    """Print the tables and lines of a :mod:`dosepred.console` rendering. Piped, a table's title is
    printed as its own line first (rich wraps a title to its table's width: a long path would break)."""
    import copy

    from rich.table import Table

    con = console()
    for x in items:
        if con.width == PIPE_WIDTH and isinstance(x, Table) and x.title:
            con.print(x.title, soft_wrap=True)
            x = copy.copy(x)
            x.title = None
        con.print(x)


def write_json_out(json_out: Path | None, overwrite: bool, res: dict) -> None:  # type: ignore[type-arg]
    """A benchmark's ``--json`` file, written like every output (fsutil, the --overwrite rule)."""
    if json_out is not None:
        with output_file(json_out, overwrite, what="--json") as tmp:
            write_json(tmp, res)


def empty_argument(argv: list[str]) -> str | None:
    """The error for the first empty value on a command line (``--data ""``, ``--data=``, an empty
    argument), else None. No option of dosepred takes an empty value, and a path read from ``""``
    would silently be the current folder."""
    for i, a in enumerate(argv):
        if a == "":
            before = argv[i - 1] if i else ""
            if before.startswith("-") and "=" not in before:
                return f"{before} is given an empty value (\"\"); give a value or leave the option out"
            where = f" (after {before})" if before else ""
            return f"argument {i + 1}{where} is empty (\"\"); give a value"
        if a.startswith("--") and a.endswith("=") and len(a) > 3:
            return f"{a[:-1]} is given an empty value ({a}); give a value or leave the option out"
    return None


def main() -> None:
    bad = empty_argument(sys.argv[1:])
    if bad:
        _err(bad)
        sys.exit(2)
    try:
        app()
    except (KeyboardInterrupt, Exception) as e:  # noqa: BLE001 - outside a command (an option's callback,
        # typer itself): the same path
        if interrupted(e):
            how, code = interruption(e)
            _err(f"interrupted ({how})")
            sys.exit(code)
        sys.exit(report_error(e))
