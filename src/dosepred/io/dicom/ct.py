"""The CT volume of a paired series: slices sorted along their normal and checked (orientation,
spacing, missing or duplicate slices, tilt), pixels to HU, and the :class:`~dosepred.geometry.Geometry`
of the grid (axes as in the package docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...constants import CT_FILL_HU
from ...geometry import Geometry
from ._common import (
    POS_TOL,
    SPACING_REL,
    DicomImportError,
    field_numbers,
    image_orientation,
    pixel_error,
    pixel_spacing,
    round_mm,
    warn,
)
from .scan import CtSeries


def read_ct(series: CtSeries) -> tuple[np.ndarray, Geometry, list[float], list[float]]:
    """CT (HU) and its geometry; also the first slice's ImagePositionPatient and the
    ImageOrientationPatient as written (for provenance)."""
    import pydicom

    desc = series.describe()
    first_path, first = series.files[0]
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        for p, ds in series.files:
            if key not in ds:
                raise DicomImportError(f"{desc}: {p} lacks {key}")
    iop = image_orientation(first, f"{desc}: {first_path}")
    ps = pixel_spacing(first, f"{desc}: {first_path}")
    rows, cols = int(first.Rows), int(first.Columns)
    for p, ds in series.files[1:]:
        o = field_numbers(ds, "ImageOrientationPatient", str(p), 6)
        if not np.allclose(o, iop, atol=1e-4):
            raise DicomImportError(f"{desc}: {p} has ImageOrientationPatient {o.tolist()}, other slices "
                                   f"{iop.tolist()}")
        sp = field_numbers(ds, "PixelSpacing", str(p), 2)
        if not np.allclose(sp, ps, rtol=1e-4):
            raise DicomImportError(f"{desc}: inconsistent PixelSpacing, {p} has {sp.tolist()}, "
                                   f"{series.files[0][0]} has {ps.tolist()}")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomImportError(f"{desc}: {p} is {ds.Rows}x{ds.Columns}, other slices {rows}x{cols}")
    for key in ("RescaleIntercept", "RescaleSlope"):  # absent on some slices only: those read +1024 HU
        has = [(p, getattr(ds, key, None) is not None and str(getattr(ds, key)).strip() != "")
               for p, ds in series.files]
        lacking = [p for p, h in has if not h]
        if lacking and len(lacking) < len(has):
            other = next(p for p, h in has if h)
            raise DicomImportError(f"{desc}: {lacking[0]} lacks {key}, which {other} has "
                                   f"({len(lacking)} of {len(has)} slices lack it): their pixels cannot be "
                                   "read in the others' HU (a slice of another series or a damaged header?)")
    rx, cy = iop[:3], iop[3:]
    n = np.cross(rx, cy)
    pos = np.array([field_numbers(ds, "ImagePositionPatient", str(p), 3) for p, ds in series.files])
    s = pos @ n
    order = np.argsort(s, kind="stable")
    files = [series.files[i] for i in order]
    pos, s = pos[order], s[order]
    if len(files) > 1:
        d = np.diff(s)
        dup = np.flatnonzero(d < POS_TOL)
        if len(dup):
            i = int(dup[0])
            raise DicomImportError(f"{desc}: {files[i][0]} and {files[i + 1][0]} are at the same slice "
                                   f"position {s[i]:.3f} mm (duplicate slices?)")
        dz = float(np.min(d))
        bad = np.flatnonzero(np.abs(d - dz) > max(POS_TOL, SPACING_REL * dz))
        if len(bad):
            i = int(bad[0])
            ratio = d[i] / dz
            if abs(ratio - round(ratio)) < 0.05:
                # many wide gaps: a series of two slice spacings (2.5 mm, 5 mm below the neck), no lost file
                more = "" if len(bad) == 1 else (
                    f"; {len(bad)} irregular gaps in all (up to {d[bad].max():.2f} mm): if no file is "
                    "missing, the series changes its slice spacing (reconstructed at two spacings?), which "
                    "no regular grid holds")
                raise DicomImportError(
                    f"{desc}: {int(round(ratio)) - 1} slice(s) missing between {files[i][0].name} "
                    f"(position {s[i]:.2f} mm) and {files[i + 1][0].name} ({s[i + 1]:.2f} mm): gap "
                    f"{d[i]:.2f} mm, slice spacing {dz:.2f} mm{more}{series.unreadable_note()}")
            raise DicomImportError(f"{desc}: inconsistent slice spacing: {d.min():.3f} to {d.max():.3f} mm "
                                   f"(first irregular gap after {files[i][0].name})")
        inplane = (pos - pos[0]) - np.outer(s - s[0], n)
        if np.abs(inplane).max() > max(0.01, 0.01 * float(ps.min())):
            raise DicomImportError(f"{desc}: slice origins are not stacked along the slice normal "
                                   "(gantry tilt or mixed series); cannot build a regular grid")
        dz = round_mm((s[-1] - s[0]) / (len(files) - 1))
    else:
        dz = float(getattr(first, "SliceThickness", 0) or 0)
        if not dz > 0:
            raise DicomImportError(f"{desc}: a single slice without SliceThickness has no slice spacing")
    ct = np.empty((len(files), rows, cols), dtype=np.int16)
    clipped: list[tuple[Path, int, float]] = []  # slices with HU outside int16, what they held
    for k, (p, _) in enumerate(files):
        ds = pydicom.dcmread(p)
        try:
            arr = ds.pixel_array.astype(np.float64)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for bad pixel data
            raise DicomImportError(f"{desc}: cannot decode pixel data of {p}: {pixel_error(ds, e)}") from None
        if arr.shape != (rows, cols):
            raise DicomImportError(f"{desc}: {p}: pixel data is {arr.shape}, Rows/Columns say {(rows, cols)}")
        slope = _rescale(ds, "RescaleSlope", 1.0, desc, p)
        icpt = _rescale(ds, "RescaleIntercept", 0.0, desc, p)
        hu = arr * slope + icpt
        pad = _padding(ds, arr, desc, p)
        if pad is not None:
            hu[pad] = CT_FILL_HU
        out = (hu < -32768.5) | (hu > 32767.5)
        if out.any():
            clipped.append((p, int(out.sum()), float(hu[out][np.argmax(np.abs(hu[out]))])))
        ct[k] = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    if clipped:  # undeclared padding (65535 unsigned) or a wrong rescale: not HU a scanner measures
        n = sum(c for _, c, _ in clipped)
        p0, _, v0 = clipped[0]
        warn(f"{desc}: {n} voxel(s) in {len(clipped)} slice(s) read outside -32768..32767 HU (e.g. {v0:.6g} "
             f"HU in {p0}) and were clipped to it: padding the file does not declare (PixelPaddingValue), "
             "or a wrong RescaleSlope/RescaleIntercept? The CT's HU there are not what the scanner measured")
    series.files = files
    junk = series.unreadable_near(image_like=True)
    if junk:  # a damaged first or last slice leaves no gap to find: say what may be missing
        listed = ", ".join(f"{q} ({why})" for q, why in junk[:5]) + (" ..." if len(junk) > 5 else "")
        warn(f"{desc}: {len(junk)} file(s) beside it are not readable DICOM ({listed}); if one was a slice "
             "of this CT, the CT lacks it")
    geom = Geometry.from_dicom(pos[0], iop, (dz, float(ps[0]), float(ps[1])))
    return ct, geom, [float(v) for v in pos[0]], [float(v) for v in iop]


def _padding(ds: Any, arr: np.ndarray, desc: str, path: Path) -> np.ndarray | None:
    """The pixels of a CT slice that are padding, not image (PixelPaddingValue (0028,0120), with
    PixelPaddingRangeLimit (0028,0121) the range between them; stored values, as PS3.3 C.7.5.1.1.2
    defines them), or None. Rescaled as image data, a scanner's padding outside the scan circle
    (GE: 63536 unsigned, or -2000) reads as any HU: 63536 with intercept -1024 as 62512 HU, bone to
    the network and body to the ``CT > BODY_HU`` possible-dose mask; padding reads as ``CT_FILL_HU``."""
    if "PixelPaddingValue" not in ds or ds.PixelPaddingValue in (None, ""):
        return None
    # the pixel container's width, not BitsStored: a 16-bit value (GE's 63536, -2000) on 12-bit pixels
    # is outside their range and pads none, where taken modulo 4096 it was 2096, a bone pixel (1072 HU)
    bits = int(getattr(ds, "BitsAllocated", 0) or 0) or int(getattr(ds, "BitsStored", 16) or 16)
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1

    def stored(key: str) -> int:  # as pixel_array holds it: VR US or SS of one bit pattern
        try:
            v = int(ds[key].value) % (1 << bits)
        except (TypeError, ValueError):
            raise DicomImportError(f"{desc}: {path}: {key} is {ds[key].value!r}, not a whole "
                                   "number") from None
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v

    lo = hi = stored("PixelPaddingValue")
    if "PixelPaddingRangeLimit" in ds and ds.PixelPaddingRangeLimit not in (None, ""):
        lim = stored("PixelPaddingRangeLimit")
        lo, hi = min(lo, lim), max(lo, lim)
    pad = (arr >= lo) & (arr <= hi)
    return pad if pad.any() else None


def _rescale(ds: Any, key: str, default: float, desc: str, path: Path) -> float:
    """RescaleSlope / RescaleIntercept of a CT slice (absent or empty: the default); a slope of 0 or a
    value that is not a finite number is an error, not a silent 1 (every pixel would be the intercept)."""
    raw = getattr(ds, key, None)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        v = float(raw)
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or (key == "RescaleSlope" and v == 0):
        raise DicomImportError(f"{desc}: {path}: {key} is {str(raw)!r}; it must be a finite number"
                               + (", not 0" if key == "RescaleSlope" else ""))
    return v
