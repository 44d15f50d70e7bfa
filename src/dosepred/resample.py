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
from .boxes import grow, mask_box
from .constants import CT_FILL_HU
from .geometry import Geometry
from .patient import Patient


def index_map(src: Geometry, dst: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``src_index = A @ dst_index + b`` (both grids' continuous indices)."""
    inv = np.linalg.inv(src.matrix)
    return inv @ dst.matrix, inv @ (dst.origin - src.origin)


def _linear_axis(arr: np.ndarray, axis: int, scale: float, shift: float, n_out: int, mode: str,
                 cval: float) -> np.ndarray:
    """Linear interpolation along one axis at source positions ``scale * i + shift``; outside
    ``[0, n - 1]`` the edge value (``"nearest"``) or ``cval`` (``"constant"``, as scipy's mode)."""
    n = arr.shape[axis]
    x = scale * np.arange(n_out, dtype=np.float64) + shift
    xc = np.clip(x, 0, n - 1)
    lo = np.minimum(np.floor(xc).astype(np.intp), max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    view = [1] * arr.ndim
    view[axis] = n_out
    w = (xc - lo).astype(arr.dtype).reshape(view)
    a0 = np.take(arr, lo, axis=axis)
    out = np.take(arr, hi, axis=axis)
    out -= a0
    out *= w
    out += a0
    if mode == "constant":
        outside = (x < 0) | (x > n - 1)
        if outside.any():
            idx = [slice(None)] * arr.ndim
            idx[axis] = np.flatnonzero(outside)
            out[tuple(idx)] = cval
    return out


def zoom_axis(arr: np.ndarray, axis: int, factor: float, n_out: int) -> np.ndarray:
    """Linear resampling of float ``arr`` along ``axis`` to ``n_out`` samples at the voxel centres of a
    grid ``factor`` times finer (``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")``
    along that axis: source position ``(i + 0.5) / factor - 0.5``, edge values beyond the ends)."""
    return _linear_axis(arr, axis, 1.0 / factor, 0.5 / factor - 0.5, n_out, "nearest", 0.0)


def _affine(work: np.ndarray, a: np.ndarray, b: np.ndarray, shape: Sequence[int], order: int, mode: str,
            cval: float) -> np.ndarray:
    from scipy.ndimage import affine_transform

    shape = tuple(int(s) for s in shape)
    diagonal = np.count_nonzero(a - np.diag(np.diag(a))) == 0
    if diagonal and order == 1 and mode in ("constant", "nearest") and work.dtype.kind == "f":
        # trilinear = three 1-D linear passes (exact for points inside; a point outside along any axis
        # gets cval): numpy gathers, several times faster than scipy's per-point loop on large grids.
        # Axes that shrink most go first, so later passes run on the smallest arrays.
        out = work
        for ax in sorted(range(3), key=lambda k: shape[k] / max(work.shape[k], 1)):
            out = _linear_axis(out, ax, float(a[ax, ax]), float(b[ax]), shape[ax], mode, cval)
        return out
    # a diagonal map (grids with the same axes) takes scipy's faster separable path
    mat = np.diag(a).copy() if diagonal else a
    return affine_transform(work, mat, offset=b, output_shape=shape, order=order, mode=mode, cval=cval,
                            prefilter=False)


def resample(arr: np.ndarray, src: Geometry, dst: Geometry, shape: Sequence[int], order: int = 1,
             cval: float = 0.0, dtype: type | np.dtype | None = None, mode: str = "constant") -> np.ndarray:
    """``arr`` (on grid ``src``) sampled at the voxel centres of grid ``dst`` of ``shape``.

    ``order`` 1 is trilinear, 0 nearest; points outside ``arr`` get ``cval`` (``mode="constant"``) or
    the nearest edge value (``mode="nearest"``). Entries of the index map within 1e-6 of an integer
    are snapped to it, so grids whose voxel centres coincide (a crop, a DICOM grid written as decimal
    strings) copy values exactly and keep their edge voxels."""
    a, b = index_map(src, dst)
    a = np.where(np.abs(a - np.rint(a)) < 1e-9, np.rint(a), a)
    b = np.where(np.abs(b - np.rint(b)) < 1e-6, np.rint(b), b)
    work = arr.astype(np.float32) if arr.dtype.kind in "biu" and order > 0 else arr
    out = _affine(work, a, b, shape, order, mode, cval)
    if dtype is not None:
        if np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(dtype)
    return out


def extend_dose(dose: np.ndarray, inside: np.ndarray, steps: int) -> np.ndarray:
    """``dose`` with its zero voxels outside ``inside`` within ``steps`` voxels of it set, one layer
    per step, to the mean of their already-set neighbours (3x3x3); a dose outside ``inside`` that is
    not 0 is kept. A dose that is 0 Gy outside a mask, resampled linearly, would otherwise mix those
    zeros into the mask's edge voxels (the RTDOSE writer, a prediction brought back from the model's
    space)."""
    from scipy.ndimage import uniform_filter

    filled = inside.copy()
    val = np.where(inside, dose, 0).astype(np.float32)
    for _ in range(steps):
        num = uniform_filter(val, 3, mode="constant")
        den = uniform_filter(filled.astype(np.float32), 3, mode="constant")
        grow = (den > 1e-6) & ~filled
        if not grow.any():
            break
        val[grow] = num[grow] / den[grow]
        filled |= grow
    return np.where(inside | (dose != 0), dose, val).astype(np.float32)


def sub_grid(g: Geometry, box: Sequence[slice]) -> Geometry:
    """The geometry of ``arr[box]`` for an array on grid ``g``."""
    return Geometry(g.to_patient([s.start for s in box]), g.direction, g.spacing)


def _dst_box(src: Geometry, src_shape: Sequence[int], dst: Geometry, shape: Sequence[int]
             ) -> tuple[slice, ...] | None:
    """The part of grid ``dst`` whose voxel centres can sample a ``src`` array of ``src_shape`` (its
    corners mapped into ``dst`` indices, rounded outwards); None when it misses ``dst``."""
    corners = np.array([[c0, c1, c2] for c0 in (-1, src_shape[0]) for c1 in (-1, src_shape[1])
                        for c2 in (-1, src_shape[2])], dtype=np.float64)
    idx = dst.to_index(src.to_patient(corners))
    lo = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def resample_mask(mask: np.ndarray, src: Geometry, dst: Geometry, shape: Sequence[int]) -> np.ndarray:
    """A boolean mask on ``dst``: the fraction of each target voxel inside the mask (a box average
    over the target voxel's footprint when downsampling, then linear interpolation) thresholded at
    0.5; a non-empty structure that would vanish keeps its voxel(s) of highest fraction (when it
    overlaps ``dst`` at all).

    Only the mask's bounding box (with a margin of zeros) and the part of ``dst`` it reaches are
    computed: the same values as over the whole volumes, at the cost of the structure's size."""
    from scipy.ndimage import uniform_filter

    shape = tuple(int(s) for s in shape)
    out = np.zeros(shape, dtype=bool)
    box = mask_box(mask, empty="none")
    if box is None:
        return out
    a, _ = index_map(src, dst)
    footprint = np.abs(a).sum(axis=1)  # source voxels spanned by one target voxel, per source axis
    size = [max(1, int(round(f))) for f in footprint]
    box = grow(box, [s // 2 + 2 for s in size], mask.shape)
    sub = mask[box]
    sub_src = sub_grid(src, box)
    dbox = _dst_box(sub_src, sub.shape, dst, shape)
    if dbox is None:
        return out
    sub_dst = sub_grid(dst, dbox)
    a, b = index_map(sub_src, sub_dst)
    frac = sub.astype(np.float32)
    if max(size) > 1:
        # scipy centres an even-sized box half a voxel before its index: sample half a voxel later
        frac = uniform_filter(frac, size=size, mode="constant")
        b = b + np.array([0.5 if s % 2 == 0 else 0.0 for s in size])
    frac = _affine(frac, a, b, [d.stop - d.start for d in dbox], 1, "constant", 0.0)
    part = frac >= 0.5
    if not part.any():
        top = float(frac.max())
        if top > 0:
            part = frac >= top * (1 - 1e-6)
    out[dbox] = part
    return out


def dose_on_grid(dose: np.ndarray, src: Geometry, dst: Geometry, shape: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``dose`` (on ``src``) on the voxel centres of ``dst``: trilinear in patient coordinates
    (:func:`resample`), 0 Gy outside ``src``. Returns ``(dose, inside)`` with
    ``inside`` the voxels of ``dst`` that ``src`` covers, up to 1e-3 voxel beyond its outer voxel
    centres (grids written as decimal strings coincide only to that precision). Used wherever a dose
    is placed by its own geometry (an RTDOSE on the CT grid, a predicted dose file on the reference's:
    :func:`dosepred.io.formats.place_dose`)."""
    pad_origin = src.to_patient([-1.0, -1.0, -1.0])
    padded = Geometry(pad_origin, src.direction, src.spacing)
    d = resample(np.pad(np.asarray(dose, dtype=np.float32), 1, mode="edge"), padded, dst, shape, order=1)
    cover = resample(np.pad(np.ones(dose.shape, dtype=np.float32), 1), padded, dst, shape, order=1)
    inside = cover > 0.999
    d[~inside] = 0
    return np.maximum(d, 0).astype(np.float32), inside


#: Readers and scoring warn when more of a reference dose than this share lies outside its possible-dose
#: mask (read as 0 Gy there: :func:`dose_within_mask`)
WARN_REF_DOSE_OUTSIDE_MASK = 0.05


def dose_within_mask(dose: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """A reference dose as it is read (OpenKBP's convention): 0 Gy outside the possible-dose ``mask``,
    where no prediction has dose (its dtype kept; ``dose`` itself when nothing lies outside). Returns
    ``(dose, share)``, ``share`` the fraction of the dose's sum that lay outside the mask (0 when none
    did). Readers record the share and warn above :data:`WARN_REF_DOSE_OUTSIDE_MASK` (a body contour or
    mask that misses part of the patient?)."""
    outside = float(np.sum(dose, where=~np.asarray(mask, dtype=bool), dtype=np.float64))
    if not outside > 0:
        return dose, 0.0
    share = outside / float(np.sum(dose, dtype=np.float64))
    return np.where(mask, dose, dose.dtype.type(0)).astype(dose.dtype, copy=False), share


def grid_with_spacing(g: Geometry, shape: Sequence[int], spacing: Sequence[float]
                      ) -> tuple[Geometry, tuple[int, int, int]]:
    """A grid with the same axes and field of view as ``(g, shape)`` but another ``spacing``: the new
    grid covers the old extent (voxel edges), centred on the old grid's centre. A helper for tests
    and inspection (the tests build their resampling grids with it); no stage calls it."""
    sp = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape, dtype=np.float64) * np.asarray(g.spacing)
    n = np.maximum(1, np.ceil(extent / sp - 1e-6)).astype(int)
    centre = g.centre(shape)
    new = Geometry.centred(n, sp, g.direction)
    new = Geometry(new.origin + centre, g.direction, tuple(float(s) for s in sp))  # type: ignore[arg-type]
    return new, tuple(int(v) for v in n)  # type: ignore[return-value]


def resample_patient(p: Patient, dst: Geometry, shape: Sequence[int], ct_fill: int = CT_FILL_HU) -> Patient:
    """``p`` on another grid: CT and dose linear, possible-dose mask and every ROI by
    :func:`resample_mask`. ROIs lost entirely (outside ``dst``) are recorded missing."""
    assert p.geometry is not None
    src = p.geometry
    shape = tuple(int(s) for s in shape)
    ct = None if p.ct is None else resample(p.ct, src, dst, shape, 1, cval=ct_fill, dtype=np.int16)
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
