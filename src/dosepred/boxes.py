"""Bounding boxes of voxels: the one place the cache, evaluation and training crops compute them.

A box is a tuple of slices, one per axis, ``[start, stop)`` in voxel indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, overload

import numpy as np

Box = tuple[slice, ...]


@overload
def mask_box(mask: np.ndarray, margin: int | Sequence[int] = 0,
             empty: Literal["zero", "full"] = "zero") -> Box: ...


@overload
def mask_box(mask: np.ndarray, margin: int | Sequence[int], empty: Literal["none"]) -> Box | None: ...


@overload
def mask_box(mask: np.ndarray, *, empty: Literal["none"]) -> Box | None: ...


def mask_box(mask: np.ndarray, margin: int | Sequence[int] = 0, empty: str = "zero") -> Box | None:
    """The box of the True voxels of ``mask``, grown by ``margin`` voxels per axis and clipped to the
    array (:func:`grow`). With no True voxel: an empty box at 0 (``empty="zero"``), the whole array
    (``"full"``) or None (``"none"``)."""
    if empty not in ("zero", "full", "none"):
        raise ValueError(f"empty must be 'zero', 'full' or 'none', got {empty!r}")
    out = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        if not hit.size:  # then no axis has a hit
            if empty == "none":
                return None
            return tuple(slice(0, 0 if empty == "zero" else n) for n in mask.shape)
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return grow(tuple(out), margin, mask.shape)


def grow(box: Box, margin: int | Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` grown by ``margin`` voxels per axis (one value, or one per axis), clipped to an array
    of ``shape``."""
    m = [margin] * len(box) if isinstance(margin, (int, np.integer)) else list(margin)
    return tuple(slice(max(0, s.start - int(k)), min(int(n), s.stop + int(k)))
                 for s, k, n in zip(box, m, shape, strict=True))


def coords_box(coords: Iterable[tuple[np.ndarray, ...]]) -> Box | None:
    """The box of voxel coordinates (tuples of per-axis index arrays, as ``np.nonzero`` gives);
    None when there is none."""
    lo: list[int] = []
    hi: list[int] = []
    for c in coords:
        if c[0].size == 0:
            continue
        mins, maxs = [int(x.min()) for x in c], [int(x.max()) for x in c]
        lo = mins if not lo else [min(u, v) for u, v in zip(lo, mins, strict=True)]
        hi = maxs if not hi else [max(u, v) for u, v in zip(hi, maxs, strict=True)]
    return tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True)) if lo else None


def union(a: Box | None, b: Box | None) -> Box | None:
    """The smallest box holding both (None is the empty box)."""
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def box_shape(box: Box) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def local_index(coords: tuple[np.ndarray, ...], box: Box) -> np.ndarray:
    """C-order flat indices inside ``box`` of voxel coordinates (per-axis index arrays) that lie in it."""
    return np.ravel_multi_index(tuple(c - s.start for c, s in zip(coords, box, strict=True)), box_shape(box))


def embed(a: np.ndarray, box: Box, outer: Box) -> np.ndarray:
    """``a`` (the values on ``box``) on the larger ``outer`` box, zero elsewhere (``a`` itself when the
    boxes are equal)."""
    if box == outer:
        return a
    out = np.zeros(box_shape(outer), dtype=a.dtype)
    out[tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer, strict=True))] = a
    return out
