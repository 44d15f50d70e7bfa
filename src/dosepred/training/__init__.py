"""Training: crop dataset over a cache, the trainer (AMP, checkpoints, resume, fine-tune, DDP), config.

Names resolve on first use, so reading a :class:`TrainConfig` (``dosepred train --help``) does not
import torch."""

from __future__ import annotations

import importlib
from typing import Any

from .config import TrainConfig

_LAZY = {"Trainer": ".trainer", "train": ".trainer"}
__all__ = ["TrainConfig", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dosepred.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value
