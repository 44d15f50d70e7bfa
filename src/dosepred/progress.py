"""Progress display for long work: rich progress bars, off when disabled or not a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_enabled: bool | None = None


def set_enabled(flag: bool | None) -> None:
    """Force progress on/off (None: automatic, on when stderr is a TTY and DOSEPRED_NO_PROGRESS unset)."""
    global _enabled
    _enabled = flag


def enabled() -> bool:
    if _enabled is not None:
        return _enabled
    if os.environ.get("DOSEPRED_NO_PROGRESS"):
        return False
    return sys.stderr.isatty()


def track(it: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    if not enabled():
        yield from it
        return
    from rich.progress import track as _track

    yield from _track(it, description=description, total=total, transient=True)
