"""Progress of long work, in two forms.

- **Bars** (rich) when standard output is a terminal, unless turned off (``--no-progress``,
  :func:`set_enabled`, or the environment variable ``DOSEPRED_NO_PROGRESS``).
- **Plain lines** otherwise, so progress reaches log files (``nohup``, CI, cluster jobs): one line
  when a stage ends and, while it runs, one line about every :func:`interval` seconds (step, rate,
  loss where known, time left), never one per step. ``DOSEPRED_PROGRESS_INTERVAL`` sets the
  interval in seconds (default 20; ``off`` prints no plain lines at all).

Library functions take ``progress: bool``; False means neither form. :func:`mode` picks the form.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

#: Seconds between plain progress lines unless ``DOSEPRED_PROGRESS_INTERVAL`` says otherwise.
DEFAULT_INTERVAL = 20.0

_enabled: bool | None = None


def set_enabled(flag: bool | None) -> None:
    """Force progress bars on/off (None: automatic, on when stdout is a TTY and
    DOSEPRED_NO_PROGRESS is unset). With bars off, long work prints plain lines instead."""
    global _enabled
    _enabled = flag


def enabled() -> bool:
    """Whether progress bars are shown."""
    if _enabled is not None:
        return _enabled
    if os.environ.get("DOSEPRED_NO_PROGRESS"):
        return False
    return sys.stdout.isatty()


def interval() -> float | None:
    """Seconds between plain progress lines (None: plain lines are off)."""
    v = os.environ.get("DOSEPRED_PROGRESS_INTERVAL", "").strip().lower()
    if not v:
        return DEFAULT_INTERVAL
    if v in ("off", "none", "no"):
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        return DEFAULT_INTERVAL


def mode(requested: bool | None = None) -> str:
    """``"bars"``, ``"lines"`` or ``"off"`` for work whose caller asked for ``requested`` progress
    (None or True: show it in the form that suits the output; False: none)."""
    if requested is False:
        return "off"
    if enabled():
        return "bars"
    return "lines" if interval() is not None else "off"


def _duration(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


class Ticker:
    """Plain progress lines for one stage: at most one line per ``every`` seconds while it runs
    (done/total, %, elapsed, time left, an optional ``info`` such as the loss) and one when it ends.

    ``update`` is cheap (a clock read) so it can be called every step.
    """

    def __init__(self, what: str, total: int | None = None, every: float | None = None,
                 done: int = 0, out: TextIO | Callable[[str], None] | None = None) -> None:
        self.what = what or "working"
        self.total = total
        self.every = interval() if every is None else every
        self.n = done
        self._start_n = done
        self.t0 = self.last = time.monotonic()
        self._out = out
        self.lines = 0

    def _emit(self, line: str) -> None:
        if callable(self._out):
            self._out(line)
        else:
            print(line, file=self._out or sys.stdout, flush=True)
        self.lines += 1

    def status(self, info: str = "") -> str:
        el = time.monotonic() - self.t0
        parts = [f"{self.n}/{self.total}" if self.total else f"{self.n}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f} %)"
        done_here = self.n - self._start_n
        parts.append(f"{_duration(el)} elapsed")
        if self.total and done_here > 0 and self.n < self.total:
            parts.append(f"~{_duration(el / done_here * (self.total - self.n))} left")
        if info:
            parts.append(info)
        return f"{self.what}: " + ", ".join(parts)

    def update(self, n: int = 1, info: str = "") -> None:
        self.n += n
        if self.every is None:
            return
        now = time.monotonic()
        if now - self.last >= self.every and (not self.total or self.n < self.total):
            self.last = now
            self._emit(self.status(info))

    def close(self, info: str = "") -> None:
        """The stage's closing line (done/total and the time it took)."""
        if self.every is None:
            return
        el = time.monotonic() - self.t0
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        self._emit(f"{self.what}: {count} done in {_duration(el)}" + (f", {info}" if info else ""))


def track(it: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    """Iterate with progress: a transient bar on a terminal, plain lines otherwise (see module doc)."""
    m = mode()
    if m == "off":
        yield from it
        return
    if total is None:
        try:
            total = len(it)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if m == "bars":
        from rich.progress import track as _track

        yield from _track(it, description=description, total=total, transient=True)
        return
    tick = Ticker(description, total)
    for x in it:
        yield x
        tick.update()
    tick.close()


class _Bar:
    """A rich bar with the :class:`Ticker` interface (``update``/``close``)."""

    def __init__(self, what: str, total: int | None, done: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
        self._task = self._p.add_task(what, total=total, completed=done, info="")
        self._p.start()

    def update(self, n: int = 1, info: str = "") -> None:
        self._p.update(self._task, advance=n, info=info)

    def close(self, info: str = "") -> None:
        self._p.stop()


def steps(what: str, total: int | None, done: int = 0, requested: bool | None = None) -> Ticker | _Bar | None:
    """Progress of a loop of ``total`` steps (``done`` already done, e.g. when resuming) in the form
    :func:`mode` picks: call ``update(n, info)`` per step and ``close(info)`` at the end; None
    when progress is off."""
    m = mode(requested)
    if m == "bars":
        return _Bar(what, total, done)
    if m == "lines":
        return Ticker(what, total, done=done)
    return None
