"""Module attributes imported on first use (PEP 562), for the package's ``__init__`` modules: their
public names are listed in a table ``name -> relative module`` and imported only when asked for, so
importing the package stays light (no torch, no numpy-heavy rooms)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, table: Mapping[str, str], namespace: dict[str, Any]
                    ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the module ``package`` whose ``globals()`` is ``namespace``: a
    name of ``table`` is imported from its module (relative to ``package``) on first access and kept
    in ``namespace``; any other name is an AttributeError."""

    def getattr_(name: str) -> Any:
        mod = table.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(mod, package), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(table))

    return getattr_, dir_
