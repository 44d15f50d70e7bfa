"""Kept for the readers that import it: the atomic folder write lives in :mod:`dosepred.fsutil`."""

from ..fsutil import atomic_dir

__all__ = ["atomic_dir"]
