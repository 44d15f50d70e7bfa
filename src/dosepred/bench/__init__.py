"""Benchmarks behind `dosepred bench` (each a ``run(...) -> dict`` plus a CLI command).

Benchmarks that need real patients default to the OpenKBP validation patient shipped with the
repository (:func:`example_patients`); pass ``--data`` for more (e.g. the whole validation split).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def example_patients() -> Path:
    """``examples/openkbp/validation-pats`` of the source checkout (OpenKBP validation pt_201)."""
    return Path(__file__).resolve().parents[3] / "examples" / "openkbp" / "validation-pats"


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA), so a timer reads what it ran; nothing on the CPU."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def check_at_least(**options: tuple[int | None, int]) -> None:
    """Each option ``name=(value, lowest)`` (``--name`` on the command line; a None value is its
    default, not checked) must be at least ``lowest``: an :class:`~dosepred.errors.InputError` naming
    the option, the rule and the value otherwise (``--repeats must be >= 1, got 0``)."""
    for name, (value, lowest) in options.items():
        if value is not None and value < lowest:
            raise InputError(f"--{name.replace('_', '-')} must be >= {lowest}, got {value}")
