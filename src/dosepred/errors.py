"""The one base of the errors a user can cause, and the generic one for bad input.

Every error a user can cause is a :class:`DosepredError` (bad input data, a malformed file, an
option out of range, a protocol, a config or a model that does not fit) or an ``OSError`` (a path
that is not there, ``FileNotFoundError`` naming it, or that cannot be read or written); the command
line prints either as one line, ``error: <message>``, and exits with code 2. A path that is there but
does not hold what is expected (a folder without patient folders) is the stage's
:class:`DosepredError`, not a ``FileNotFoundError``. Anything else that escapes a command is a bug in
dosepred: the command line shows a short traceback and asks to report it (exit code 1).

Each stage has its own subclass (``CacheError``, ``DicomImportError``, ``ProtocolError``, ...) and
bad input with no better home is an :class:`InputError`. They all derive from ``ValueError`` too, so
code that catches ``ValueError`` keeps working. A consistency check of dosepred's own (a state that
no input can cause) raises ``ValueError`` / ``AssertionError`` and is therefore shown as a bug.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class DosepredError(Exception):
    """Something a user can cause: bad input data, a file, an option or a model that cannot be used.
    The message names the patient, file, field and rule; the command line prints it as one line
    (``error: <message>``) and exits with code 2, without a traceback."""


class InputError(DosepredError, ValueError):
    """Bad input (data, option, protocol, configuration, model choice) that no more specific error
    class of its stage describes; the message says what is wrong and where."""


class UnknownNameError(DosepredError, KeyError):
    """A name or id that is not where it was looked up (an ROI not in the ROI set, a patient not in a
    cache). A ``KeyError``, as a lookup's error is; the message is its first argument (``str()`` of a
    ``KeyError`` quotes it)."""


def name_some(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` of ``names`` for a one-line message, and how many more there are:
    ``"pt_2, pt_3, pt_4, pt_5, pt_7 and 131 more"``. An error about 136 patients stays one line that
    says what is wrong and how many it concerns."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class Terminated(KeyboardInterrupt):
    """A request to stop from outside (SIGTERM: ``kill``, ``timeout``, a batch system's time limit, a
    container stopping; SIGHUP: the terminal closed), raised like Ctrl-C's :class:`KeyboardInterrupt` so
    that it unwinds the same way: unfinished outputs are removed, a training run keeps its last finished
    epoch. Without it Python ends at once and leaves the temporary siblings (``.OUT.tmp-XXXX``) behind."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum, self.name = signum, name


def stop_on_signals() -> None:
    """Raise :class:`Terminated` on SIGTERM and SIGHUP (where the platform has them and they are not
    ignored: ``nohup`` stays in force). For the command line's entry point."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise Terminated(signum, signal.Signals(signum).name)

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, stop)


#: The signals that stop a command (:func:`stop_on_signals` and Ctrl-C's SIGINT)
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _stop_signals() -> list:
    import signal

    return [s for s in (getattr(signal, n, None) for n in STOP_SIGNALS) if s is not None]


def leave_stops(*args: object) -> None:
    """In a worker process a command starts (a DataLoader's ``worker_init_fn``, a process pool's
    ``initializer``; ``args`` ignored): ignore Ctrl-C, SIGTERM and SIGHUP, then unblock them
    (:func:`starting_workers`). They reach every process of the job (a terminal's Ctrl-C, a batch
    system's or container's stop): a worker with the command's handlers, or torch's, printed tracebacks
    of its own over the command's one line. The command stops and ends its workers."""
    import signal

    sigs = _stop_signals()
    for sig in sigs:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)


@contextmanager
def starting_workers() -> Iterator[None]:
    """Block Ctrl-C, SIGTERM and SIGHUP while the block starts worker processes: one started meanwhile
    keeps them pending until :func:`leave_stops` ignores them (a stop in between killed it, or raised in
    it); the command gets its own when the block ends."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def interruption(e: BaseException) -> tuple[str, int]:
    """What stopped a command that :func:`interrupted` says was stopped: its name for the error line
    (``"Ctrl-C"``, ``"SIGTERM"``) and the exit code (130 for Ctrl-C, 128 + the signal's number)."""
    x = in_chain(e, Terminated)
    return (x.name, 128 + x.signum) if isinstance(x, Terminated) else ("Ctrl-C", 130)


def in_chain(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` among ``e`` and the exceptions it was raised from or while
    handling (``__cause__``, ``__context__``; each once): a library's clean-up may raise its own error
    over the one that matters (torch.save's zip writer, 'unexpected pos', over a Ctrl-C or a full
    disk's ``OSError``)."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        if isinstance(x, kind):
            return x
        seen.add(id(x))
        x = x.__cause__ or x.__context__
    return None


def interrupted(e: BaseException) -> bool:
    """Whether ``e`` is, or was raised while handling, a Ctrl-C (:class:`KeyboardInterrupt`): a
    library's clean-up may replace the interrupt with its own error (``torch.save`` interrupted
    mid-write raises ``RuntimeError: ... unexpected pos`` from its zip writer's exit), which is the
    user's Ctrl-C, not a bug."""
    return in_chain(e, KeyboardInterrupt) is not None


#: Warnings the console leaves unsaid (a library's deprecations), nor recorded by :func:`recording_warnings`.
QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)


@contextmanager
def recording_warnings(said: list[str]) -> Iterator[None]:
    """Show warnings as before, and append to ``said`` the message of each shown in the block (from any
    thread: evaluation reads ahead in one), notes (``prefix`` "note") and :data:`QUIET_WARNINGS` aside."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def record(message: Any, category: type[Warning], *args: Any, **kw: Any) -> None:
            if not issubclass(category, QUIET_WARNINGS) and getattr(category, "prefix", "warning") != "note":
                said.append(str(message))
            show(message, category, *args, **kw)

        warnings.showwarning = record
        yield
