"""Moving arrays between voxel grids in patient coordinates (see :mod:`dosepred.geometry`).

Resampling uses ``scipy.ndimage.affine_transform`` (a kept, well-tested library; the map from a
target index to a source index is one affine, so no coordinate volume is materialised): linear for
CT and dose, and for ROI masks linear interpolation of the mask thresholded at one half, with a
fallback that keeps a structure that would otherwise vanish (its voxels of highest interpolated
value), so small organs survive downsampling. Where two grids differ only by a permutation or flip
of axes, :meth:`dosepred.patient.Patient.reoriented` moves arrays without interpolation instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import roi as _roi
from .geometry import Geometry
from .patient import Patient


def index_map(src: Geometry, dst: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``src_index = A @ dst_index + b`` (both grids' continuous indices)."""
    inv = np.linalg.inv(src.matrix)
    return inv @ dst.matrix, inv @ (dst.origin - src.origin)


def resample(arr: np.ndarray, src: Geometry, dst: Geometry, shape: Sequence[int], order: int = 1,
             cval: float = 0.0, dtype: type | np.dtype | None = None) -> np.ndarray:
    """``arr`` (on grid ``src``) sampled at the voxel centres of grid ``dst`` of ``shape``.

    ``order`` 1 is trilinear, 0 nearest; points outside ``arr`` get ``cval``. Entries of the index
    map within 1e-6 of an integer are snapped to it, so grids whose voxel centres coincide (a crop, a
    DICOM grid written as decimal strings) copy values exactly and keep their edge voxels."""
    from scipy.ndimage import affine_transform

    a, b = index_map(src, dst)
    a = np.where(np.abs(a - np.rint(a)) < 1e-9, np.rint(a), a)
    b = np.where(np.abs(b - np.rint(b)) < 1e-6, np.rint(b), b)
    work = arr.astype(np.float32) if arr.dtype.kind in "biu" and order > 0 else arr
    out = affine_transform(work, a, offset=b, output_shape=tuple(int(s) for s in shape), order=order,
                           mode="constant", cval=cval, prefilter=False)
    if dtype is not None:
        if np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(dtype)
    return out


def resample_mask(mask: np.ndarray, src: Geometry, dst: Geometry, shape: Sequence[int]) -> np.ndarray:
    """A boolean mask on ``dst``: the fraction of each target voxel inside the mask (a box average
    over the target voxel's footprint when downsampling, then linear interpolation) thresholded at
    0.5; a non-empty structure that would vanish keeps its voxel(s) of highest fraction (when it
    overlaps ``dst`` at all)."""
    from scipy.ndimage import affine_transform, uniform_filter

    frac = mask.astype(np.float32)
    a, b = index_map(src, dst)
    footprint = np.abs(a).sum(axis=1)  # source voxels spanned by one target voxel, per source axis
    size = [max(1, int(round(f))) for f in footprint]
    if max(size) > 1:
        # scipy centres an even-sized box half a voxel before its index: sample half a voxel later
        frac = uniform_filter(frac, size=size, mode="constant")
        b = b + np.array([0.5 if s % 2 == 0 else 0.0 for s in size])
    frac = affine_transform(frac, a, offset=b, output_shape=tuple(int(s) for s in shape), order=1,
                            mode="constant", cval=0.0, prefilter=False)
    out = frac >= 0.5
    if not out.any() and mask.any():
        top = float(frac.max())
        if top > 0:
            out = frac >= top * (1 - 1e-6)
    return out


def grid_with_spacing(g: Geometry, shape: Sequence[int], spacing: Sequence[float]
                      ) -> tuple[Geometry, tuple[int, int, int]]:
    """A grid with the same axes and field of view as ``(g, shape)`` but another ``spacing``: the new
    grid covers the old extent (voxel edges), centred on the old grid's centre."""
    sp = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape, dtype=np.float64) * np.asarray(g.spacing)
    n = np.maximum(1, np.ceil(extent / sp - 1e-6)).astype(int)
    centre = g.centre(shape)
    new = Geometry.centred(n, sp, g.direction)
    new = Geometry(new.origin + centre, g.direction, tuple(float(s) for s in sp))  # type: ignore[arg-type]
    return new, tuple(int(v) for v in n)  # type: ignore[return-value]


def resample_patient(p: Patient, dst: Geometry, shape: Sequence[int], ct_fill: int = -1024) -> Patient:
    """``p`` on another grid: CT and dose linear, possible-dose mask and every ROI by
    :func:`resample_mask`. ROIs lost entirely (outside ``dst``) are recorded missing."""
    assert p.geometry is not None
    src = p.geometry
    shape = tuple(int(s) for s in shape)
    ct = resample(p.ct, src, dst, shape, 1, cval=ct_fill, dtype=np.int16)
    dose = None if p.dose is None else np.maximum(resample(p.dose, src, dst, shape, 1), 0).astype(np.float32)
    pdm = None if p.possible_dose_mask is None else resample_mask(p.possible_dose_mask, src, dst, shape)
    masks = {}
    for name in p.present_rois:
        m = resample_mask(p.mask(name), src, dst, shape)
        if m.any():
            masks[name] = m
    codes = _roi.encode([masks.get(n, np.zeros(shape, bool)) for n in p.roi_set.names], shape=shape)
    if codes.dtype != p.roi_set.dtype:
        codes = codes.astype(p.roi_set.dtype)
    missing = tuple(n for n in p.roi_set.names if n not in masks)
    return Patient(p.id, ct, codes, p.roi_set, dst.spacing, pdm, dose, missing, dict(p.meta), dst)
