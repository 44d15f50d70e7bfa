"""Which module of :mod:`dosepred.cli` holds which command: the list in the package docstring is the
registered commands, each in the module it names."""

from __future__ import annotations

import re

import dosepred.cli


def _documented() -> list[tuple[str, str]]:
    """(module, command pattern) from the docstring's ``- ``x.py``: ``cmd``, ...`` bullets."""
    doc = dosepred.cli.__doc__ or ""
    out = []
    for bullet in re.split(r"\n- ", doc)[1:]:
        module, _, rest = bullet.partition(":")
        module = module.strip("` ").removesuffix(".py")
        for cmd in re.findall(r"``([a-z][a-z<> -]*)``", rest):
            out.append((module, cmd))
    return out


def _registered() -> list[tuple[str, str]]:
    """(module, full command name) of every command of the ``dosepred`` app."""
    out = []

    def walk(app, prefix: str) -> None:
        for c in app.registered_commands:
            out.append((c.callback.__module__.rsplit(".", 1)[-1], prefix + (c.name or c.callback.__name__)))
        for g in app.registered_groups:
            walk(g.typer_instance, f"{prefix}{g.name} ")

    walk(dosepred.cli.app, "")
    return out


def test_the_docstring_lists_every_command_in_its_module():
    documented = _documented()
    registered = _registered()
    assert registered and documented

    def matches(pattern: str, name: str) -> bool:  # <format>: any format's name
        return re.fullmatch(re.sub(r"<[a-z]+>", "[a-z]+", re.escape(pattern)), name) is not None

    for module, name in registered:
        assert (module, name) in documented or any(m == module and "<" in p and matches(p, name)
                                                   for m, p in documented), (module, name)
    for module, pattern in documented:
        if module == "common":
            continue  # the words about common.py name apps, not commands
        assert any(m == module and matches(pattern, n) for m, n in registered), (module, pattern)
