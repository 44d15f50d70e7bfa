"""Read and write DICOM RT: CT image series, RTSTRUCT and RTDOSE <-> :class:`Patient`.

Conventions
-----------
- Array order is ``(slice, row, column)``: axis 0 runs along the slice normal
  ``n = row_dir x col_dir`` (ascending), axis 1 along the image rows (``ImageOrientationPatient``
  second triple), axis 2 along the columns (first triple). ``spacing`` is
  ``(slice spacing from the positions, PixelSpacing[0] (row spacing), PixelSpacing[1] (column
  spacing))`` in mm.
- ``meta["origin"]`` is the ImagePositionPatient of the first slice and ``meta["orientation"]`` the
  ImageOrientationPatient (patient LPS coordinates, mm); export writes the same geometry back.
  Patients from other sources (OpenKBP, synthetic) are written as if their axis 0 were the slices,
  with an axial head-first-supine orientation centred in x/y.
- CT is HU (RescaleSlope/Intercept applied, rounded to int16). Dose is Gy, resampled trilinearly
  onto the CT grid; CT voxels outside the dose grid get 0 Gy (with a warning when the body is not
  covered).
- RTSTRUCT contours are rasterised on each CT slice by pixel-centre inclusion with even-odd (XOR)
  filling, so holes and several contours per slice work. Export draws the contours on the 0.5
  iso-line of each mask (marching squares, vertices at half-voxel positions); re-importing them
  reproduces the masks exactly because no edge passes through a voxel centre.
- ROI names go through :mod:`dosepred.io.roi_names` (user map, then aliases). The body/external
  contour becomes the possible-dose mask (else CT > -500 HU; ``meta["possible_dose_mask"]`` says
  which); on export the possible-dose mask is written back as an EXTERNAL ROI named ``External``.

This module converts; it does not evaluate, train or decide which ROIs a protocol needs.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..patient import Patient, RoiSet
from . import roi_names as _names

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # conventional SOP class of RTReferencedStudySequence
BODY_HU = -500.0  # possible-dose mask from CT when there is no body contour
EXTERNAL_NAME = "External"

# Tolerances in mm: positions within POS_TOL are the same; slice gaps may deviate by SPACING_REL.
POS_TOL = 1e-3
SPACING_REL = 0.01


class DicomImportError(ValueError):
    """A DICOM file or series cannot be converted; the message names the file or series."""


class DicomWarning(UserWarning):
    pass


def _warn(msg: str) -> None:
    warnings.warn(msg, DicomWarning, stacklevel=3)


# ========================================================================================= geometry

@dataclass(frozen=True)
class Geometry:
    """Voxel grid in patient coordinates: index ``(k, r, c)`` -> ``origin + k*dz*n + r*dr*cy + c*dc*rx``
    with ``rx`` the row direction (first IOP triple), ``cy`` the column direction, ``n = rx x cy``."""

    origin: np.ndarray  # (3,) mm, ImagePositionPatient of slice 0
    row_dir: np.ndarray  # (3,) direction of increasing column index
    col_dir: np.ndarray  # (3,) direction of increasing row index
    spacing: tuple[float, float, float]  # (dz, dr, dc)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def orientation(self) -> list[float]:
        return [float(v) for v in (*self.row_dir, *self.col_dir)]

    def axes(self) -> np.ndarray:
        """3x3 matrix whose columns are the mm steps of index axes (k, r, c)."""
        dz, dr, dc = self.spacing
        return np.stack([self.normal * dz, self.col_dir * dr, self.row_dir * dc], axis=1)

    def to_patient(self, idx: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(idx, dtype=np.float64) @ self.axes().T

    def to_index(self, pts: np.ndarray) -> np.ndarray:
        return (np.asarray(pts, dtype=np.float64) - self.origin) @ np.linalg.inv(self.axes()).T

    def slice_position(self, k: int) -> np.ndarray:
        return self.origin + k * self.spacing[0] * self.normal

    @classmethod
    def of_patient(cls, p: Patient) -> Geometry:
        """Geometry from ``meta`` (DICOM origin/orientation, or a NIfTI affine), else axial HFS centred
        in x/y with the first slice at z = 0."""
        m = p.meta
        if "origin" in m and "orientation" in m:
            o = np.asarray(m["orientation"], dtype=np.float64)
            return cls(np.asarray(m["origin"], dtype=np.float64), o[:3], o[3:], p.spacing)
        if "affine" in m:
            g = _geometry_from_affine(np.asarray(m["affine"], dtype=np.float64), p.spacing)
            if g is not None:
                return g
        _, nr, nc = p.shape
        _, dr, dc = p.spacing
        origin = np.array([-(nc - 1) * dc / 2.0, -(nr - 1) * dr / 2.0, 0.0])
        return cls(origin, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), p.spacing)


def _geometry_from_affine(aff: np.ndarray, spacing: Sequence[float]) -> Geometry | None:
    """NIfTI (RAS) affine of a (k, r, c) array -> Geometry, when axis 0 runs along +row x col."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
    cols = lps[:3, :3] / np.asarray(spacing, dtype=np.float64)
    cols = np.round(cols, 6) + 0.0  # NIfTI stores float32: drop its noise (and -0.0)
    n, cy, rx = cols[:, 0], cols[:, 1], cols[:, 2]
    if not np.allclose(np.cross(rx, cy), n, atol=1e-4):
        return None
    origin = np.array([float(str(np.float32(v))) for v in lps[:3, 3]])
    return Geometry(origin, rx, cy, tuple(float(s) for s in spacing))  # type: ignore[arg-type]


def affine_of(g: Geometry) -> np.ndarray:
    """NIfTI RAS affine of the (k, r, c) array of a Geometry."""
    a = np.eye(4)
    a[:3, :3] = g.axes()
    a[:3, 3] = g.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


# =========================================================================================== import

@dataclass
class _Series:
    uid: str
    files: list[tuple[Path, Any]]  # (path, header dataset)

    @property
    def first(self) -> Any:
        return self.files[0][1]

    @property
    def for_uid(self) -> str:
        return str(getattr(self.first, "FrameOfReferenceUID", ""))

    def describe(self) -> str:
        folders = sorted({str(p.parent) for p, _ in self.files})
        return f"CT series {self.uid} ({len(self.files)} files in {', '.join(folders)})"


@dataclass
class _Source:
    """One patient's files: a CT series, its RTSTRUCT and RTDOSE (if any)."""

    series: _Series
    rtstruct: tuple[Path, Any] | None = None
    rtdoses: list[tuple[Path, Any]] = field(default_factory=list)
    canon: dict[str, _names.Canonical] = field(default_factory=dict)  # canonical -> info
    roi_sources: dict[str, list[int]] = field(default_factory=dict)  # canonical -> ROINumbers
    original_names: dict[str, list[str]] = field(default_factory=dict)
    id: str = ""


def _scan(src: Path) -> tuple[dict[str, _Series], list[tuple[Path, Any]], list[tuple[Path, Any]]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not src.exists():
        raise FileNotFoundError(f"DICOM folder {src} does not exist")
    paths = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    series: dict[str, _Series] = {}
    structs: list[tuple[Path, Any]] = []
    doses: list[tuple[Path, Any]] = []
    for p in paths:
        if p.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        mod = str(getattr(ds, "Modality", ""))
        if mod == "CT":
            uid = str(getattr(ds, "SeriesInstanceUID", ""))
            if not uid:
                raise DicomImportError(f"CT file {p} has no SeriesInstanceUID")
            series.setdefault(uid, _Series(uid, [])).files.append((p, ds))
        elif mod == "RTSTRUCT":
            structs.append((p, ds))
        elif mod == "RTDOSE":
            doses.append((p, ds))
    if not series:
        raise DicomImportError(f"no CT image series found under {src} (looked at {len(paths)} files)")
    return series, structs, doses


def _struct_refs(ds: Any) -> tuple[set[str], set[str]]:
    """(referenced FrameOfReference UIDs, referenced CT series UIDs) of an RTSTRUCT."""
    fors: set[str] = set()
    sers: set[str] = set()
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        if getattr(fr, "FrameOfReferenceUID", None):
            fors.add(str(fr.FrameOfReferenceUID))
        for st in getattr(fr, "RTReferencedStudySequence", []) or []:
            for se in getattr(st, "RTReferencedSeriesSequence", []) or []:
                if getattr(se, "SeriesInstanceUID", None):
                    sers.add(str(se.SeriesInstanceUID))
    for roi in getattr(ds, "StructureSetROISequence", []) or []:
        if getattr(roi, "ReferencedFrameOfReferenceUID", None):
            fors.add(str(roi.ReferencedFrameOfReferenceUID))
    return fors, sers


def _pair(series: dict[str, _Series], structs: list[tuple[Path, Any]],
          doses: list[tuple[Path, Any]], src: Path) -> list[_Source]:
    sources = {uid: _Source(s) for uid, s in series.items()}
    known = "; ".join(f"{s.describe()} FrameOfReference {s.for_uid}" for s in series.values())
    for path, ds in structs:
        fors, sers = _struct_refs(ds)
        hit = [uid for uid in sers if uid in series]
        if hit:
            uid = hit[0]
            if fors and series[uid].for_uid and series[uid].for_uid not in fors:
                raise DicomImportError(
                    f"RTSTRUCT {path} references {series[uid].describe()} but FrameOfReference "
                    f"{', '.join(sorted(fors))}, while that CT's FrameOfReference is {series[uid].for_uid}: "
                    "the contours belong to another CT")
        else:
            cands = [uid for uid, s in series.items() if s.for_uid in fors]
            if not cands:
                raise DicomImportError(
                    f"RTSTRUCT {path} references FrameOfReference {', '.join(sorted(fors)) or '(none)'}"
                    f"{' and CT series ' + ', '.join(sorted(sers)) if sers else ''}, which no CT series "
                    f"under {src} has ({known})")
            uid = cands[0]
            if len(cands) > 1:
                _warn(f"RTSTRUCT {path} matches several CT series by FrameOfReference; using {uid}")
        s = sources[uid]
        if s.rtstruct is not None:
            _warn(f"{series[uid].describe()} has several RTSTRUCTs; using {s.rtstruct[0]}, ignoring {path}")
            continue
        s.rtstruct = (path, ds)
    for path, ds in doses:
        f = str(getattr(ds, "FrameOfReferenceUID", ""))
        cands = [uid for uid, s in series.items() if s.for_uid == f]
        if not cands:
            raise DicomImportError(f"RTDOSE {path} has FrameOfReference {f or '(none)'}, which no CT series "
                                   f"under {src} has ({known})")
        for uid in cands:
            sources[uid].rtdoses.append((path, ds))
    out = list(sources.values())
    out.sort(key=lambda s: (str(getattr(s.series.first, "PatientID", "")), str(s.series.files[0][0])))
    return out


def _safe_id(text: str) -> str:
    s = re.sub(r"[^\w.-]+", "_", text.strip()).strip("._")
    return s or "patient"


def _assign_ids(sources: list[_Source]) -> None:
    base = []
    for s in sources:
        pid = str(getattr(s.series.first, "PatientID", "") or "")
        base.append(_safe_id(pid) if pid else _safe_id(s.series.files[0][0].parent.name))
    for i, s in enumerate(sources):
        same = [j for j, b in enumerate(base) if b == base[i]]
        s.id = base[i] if len(same) == 1 else f"{base[i]}_{same.index(i) + 1}"


def _roi_info(ds: Any) -> list[tuple[int, str, str, float | None]]:
    """(ROINumber, ROIName, RTROIInterpretedType, prescription from our observation label)."""
    types: dict[int, str] = {}
    rx: dict[int, float] = {}
    for ob in getattr(ds, "RTROIObservationsSequence", []) or []:
        n = int(ob.ReferencedROINumber)
        types[n] = str(getattr(ob, "RTROIInterpretedType", "") or "")
        m = re.search(r"prescription\s+([\d.]+)\s*Gy", str(getattr(ob, "ROIObservationDescription", "")))
        if m:
            rx[n] = float(m.group(1))
    return [(int(r.ROINumber), str(r.ROIName), types.get(int(r.ROINumber), ""), rx.get(int(r.ROINumber)))
            for r in getattr(ds, "StructureSetROISequence", []) or []]


def _plan_rois(s: _Source, roi_map: _names.RoiMap) -> None:
    if s.rtstruct is None:
        return
    path, ds = s.rtstruct
    for number, name, itype, rx in _roi_info(ds):
        c = roi_map.resolve(name, itype)
        if c is None:
            continue
        if itype.upper() == "EXTERNAL" and not c.matched:
            c = _names.Canonical(_names.BODY, "other")
        if rx is not None and c.kind in ("other", "target") and c.prescription is None:
            c = _names.Canonical(c.name, "target", rx, c.matched)
        if c.name in s.canon and c.name != _names.BODY:
            _warn(f"RTSTRUCT {path}: ROIs {s.original_names[c.name] + [name]} all map to {c.name}; "
                  "their union is used")
        s.canon.setdefault(c.name, c)
        s.roi_sources.setdefault(c.name, []).append(number)
        s.original_names.setdefault(c.name, []).append(name)


def _ct_volume(series: _Series) -> tuple[np.ndarray, Geometry]:
    import pydicom

    desc = series.describe()
    first = series.first
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        for p, ds in series.files:
            if key not in ds:
                raise DicomImportError(f"{desc}: {p} lacks {key}")
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    ps = [float(v) for v in first.PixelSpacing]
    rows, cols = int(first.Rows), int(first.Columns)
    for p, ds in series.files[1:]:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise DicomImportError(f"{desc}: {p} has ImageOrientationPatient "
                                   f"{list(ds.ImageOrientationPatient)}, other slices {iop.tolist()}")
        if not np.allclose([float(v) for v in ds.PixelSpacing], ps, rtol=1e-4):
            raise DicomImportError(f"{desc}: inconsistent PixelSpacing, {p} has {list(ds.PixelSpacing)}, "
                                   f"{series.files[0][0]} has {ps}")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomImportError(f"{desc}: {p} is {ds.Rows}x{ds.Columns}, other slices {rows}x{cols}")
    rx, cy = iop[:3], iop[3:]
    n = np.cross(rx, cy)
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in series.files])
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
                raise DicomImportError(
                    f"{desc}: {int(round(ratio)) - 1} slice(s) missing between {files[i][0].name} "
                    f"(position {s[i]:.2f} mm) and {files[i + 1][0].name} ({s[i + 1]:.2f} mm): gap "
                    f"{d[i]:.2f} mm, slice spacing {dz:.2f} mm")
            raise DicomImportError(f"{desc}: inconsistent slice spacing: {d.min():.3f} to {d.max():.3f} mm "
                                   f"(first irregular gap after {files[i][0].name})")
        inplane = (pos - pos[0]) - np.outer(s - s[0], n)
        if np.abs(inplane).max() > max(0.01, 0.01 * min(ps)):
            raise DicomImportError(f"{desc}: slice origins are not stacked along the slice normal "
                                   "(gantry tilt or mixed series); cannot build a regular grid")
    else:
        dz = float(getattr(first, "SliceThickness", 0) or 0)
        if not dz > 0:
            raise DicomImportError(f"{desc}: a single slice without SliceThickness has no slice spacing")
    ct = np.empty((len(files), rows, cols), dtype=np.int16)
    for k, (p, _) in enumerate(files):
        ds = pydicom.dcmread(p)
        try:
            arr = ds.pixel_array.astype(np.float64)
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for bad pixel data
            raise DicomImportError(f"{desc}: cannot decode pixel data of {p}: {e}") from None
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        icpt = float(getattr(ds, "RescaleIntercept", 0) or 0)
        ct[k] = np.clip(np.rint(arr * slope + icpt), -32768, 32767).astype(np.int16)
    series.files = files
    return ct, Geometry(pos[0], rx, cy, (dz, ps[0], ps[1]))


def _polygon_mask(poly_rc: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixel-centre inclusion of one closed polygon given as (row, col) float vertices."""
    from matplotlib.path import Path as MPath

    m = np.zeros((rows, cols), dtype=bool)
    r0 = max(int(np.floor(poly_rc[:, 0].min())), 0)
    r1 = min(int(np.ceil(poly_rc[:, 0].max())), rows - 1)
    c0 = max(int(np.floor(poly_rc[:, 1].min())), 0)
    c1 = min(int(np.ceil(poly_rc[:, 1].max())), cols - 1)
    if r1 < r0 or c1 < c0:
        return m
    rr, cc = np.mgrid[r0:r1 + 1, c0:c1 + 1]
    inside = MPath(poly_rc[:, ::-1]).contains_points(np.column_stack([cc.ravel(), rr.ravel()]))
    m[r0:r1 + 1, c0:c1 + 1] = inside.reshape(rr.shape)
    return m


def _rasterise(ds: Any, path: Path, numbers: Sequence[int], name: str, geom: Geometry,
               shape: tuple[int, int, int]) -> np.ndarray:
    nz, nr, nc = shape
    mask = np.zeros(shape, dtype=bool)
    by_number = {int(r.ReferencedROINumber): r for r in getattr(ds, "ROIContourSequence", []) or []}
    skipped = 0
    for number in numbers:
        roi = by_number.get(number)
        if roi is None:
            continue
        for c in getattr(roi, "ContourSequence", []) or []:
            gtype = str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR"))
            if gtype == "POINT":
                continue
            pts = np.asarray([float(v) for v in c.ContourData], dtype=np.float64).reshape(-1, 3)
            if len(pts) < 3:
                continue
            idx = geom.to_index(pts)
            k = float(np.mean(idx[:, 0]))
            kk = int(round(k))
            if np.ptp(idx[:, 0]) > 0.1 or abs(k - kk) > 0.25 or not 0 <= kk < nz:
                skipped += 1
                continue
            mask[kk] ^= _polygon_mask(idx[:, 1:], nr, nc)
    if skipped:
        _warn(f"RTSTRUCT {path}: {skipped} contour(s) of ROI {name} are not on a CT slice (off-plane or "
              "outside the CT); ignored")
    return mask


def _dose_on_grid(ds_path: Path, geom: Geometry, shape: tuple[int, int, int],
                  body: np.ndarray) -> np.ndarray | None:
    import pydicom
    from scipy.ndimage import map_coordinates

    ds = pydicom.dcmread(ds_path)
    units = str(getattr(ds, "DoseUnits", "GY")).upper()
    if units != "GY":
        _warn(f"RTDOSE {ds_path}: DoseUnits is {units}, not GY; dose ignored")
        return None
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if key not in ds:
            raise DicomImportError(f"RTDOSE {ds_path} lacks {key}")
    arr = ds.pixel_array.astype(np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    arr *= float(getattr(ds, "DoseGridScaling", 1) or 1)
    nf = arr.shape[0]
    if "GridFrameOffsetVector" in ds and ds.GridFrameOffsetVector is not None:
        off = np.atleast_1d(np.asarray([float(v) for v in np.atleast_1d(ds.GridFrameOffsetVector)]))
    else:
        off = np.zeros(1)
    if len(off) != nf:
        raise DicomImportError(f"RTDOSE {ds_path}: GridFrameOffsetVector has {len(off)} values for "
                               f"{nf} frames")
    off = off - off[0]  # relative (first 0) and absolute forms both start at ImagePositionPatient
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    drx, dcy = iop[:3], iop[3:]
    dn = np.cross(drx, dcy)
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    order = np.argsort(off, kind="stable")
    arr, off = arr[order], off[order]  # frames ascending along the dose normal
    frame_tol = 1e-3 * (float(np.min(np.diff(off))) if nf > 1 else max(geom.spacing[0], 1.0))
    nz, nr, nc = shape
    out = np.zeros(shape, dtype=np.float32)
    outside_body = 0
    rr, cc = np.mgrid[0:nr, 0:nc]
    for k in range(nz):
        idx = np.column_stack([np.full(rr.size, k), rr.ravel(), cc.ravel()])
        d = geom.to_patient(idx) - ipp
        fr = d @ dcy / dr
        fc = d @ drx / dc
        fs = d @ dn
        in_f = (fs >= off[0] - frame_tol) & (fs <= off[-1] + frame_tol)
        ff = np.interp(fs, off, np.arange(nf, dtype=np.float64)) if nf > 1 else np.zeros_like(fs)
        coords = []
        inside = in_f
        for v, n in ((ff, nf), (fr, arr.shape[1]), (fc, arr.shape[2])):
            v = np.where(np.abs(v - np.rint(v)) < 1e-4, np.rint(v), v)  # exact on coincident grids
            inside = inside & (v >= 0) & (v <= n - 1)
            coords.append(np.clip(v, 0, n - 1))
        vals = map_coordinates(arr, coords, order=1, mode="nearest")
        vals[~inside] = 0.0
        out[k] = np.maximum(vals, 0).reshape(nr, nc)
        outside_body += int((~inside.reshape(nr, nc) & body[k]).sum())
    if outside_body:
        frac = 100.0 * outside_body / max(int(body.sum()), 1)
        _warn(f"RTDOSE {ds_path}: the dose grid does not cover the body: {outside_body} voxels ({frac:.1f}%) "
              "of the possible-dose mask lie outside it and get 0 Gy")
    return out


def _pick_dose(s: _Source) -> Path | None:
    if not s.rtdoses:
        return None
    plan = [(p, ds) for p, ds in s.rtdoses if str(getattr(ds, "DoseSummationType", "")).upper() == "PLAN"]
    pool = sorted(plan or s.rtdoses, key=lambda t: str(t[0]))
    if len(pool) > 1:
        _warn(f"{s.series.describe()}: {len(pool)} RTDOSE files match "
              f"({', '.join(str(p) for p, _ in pool)}); using {pool[0][0]}")
    elif not plan:
        _warn(f"RTDOSE {pool[0][0]}: DoseSummationType is {getattr(pool[0][1], 'DoseSummationType', '?')}, "
              "not PLAN; used as the patient's dose")
    return pool[0][0]


def _build_patient(s: _Source, roi_set: RoiSet) -> Patient:
    ct, geom = _ct_volume(s.series)
    first = s.series.first
    masks: dict[str, np.ndarray] = {}
    body = None
    meta: dict[str, Any] = {
        "format": "dicom", "source": str(s.series.files[0][0].parent.resolve()),
        "axis_order": "slice,row,column",
        "patient_id": str(getattr(first, "PatientID", "")),
        "study_uid": str(getattr(first, "StudyInstanceUID", "")),
        "series_uid": s.series.uid, "frame_of_reference_uid": s.series.for_uid,
        "study_date": str(getattr(first, "StudyDate", "") or ""),
        "origin": [float(v) for v in geom.origin], "orientation": geom.orientation,
    }
    if s.rtstruct is not None:
        path, ds = s.rtstruct
        meta["rtstruct_uid"] = str(getattr(ds, "SOPInstanceUID", ""))
        meta["rtstruct_file"] = str(path.resolve())
        meta["roi_names"] = {k: v for k, v in s.original_names.items()}
        for name, numbers in s.roi_sources.items():
            m = _rasterise(ds, path, numbers, name, geom, ct.shape)  # type: ignore[arg-type]
            if name == _names.BODY:
                body = m
                continue
            if not m.any():
                _warn(f"RTSTRUCT {path}: ROI {name} ({', '.join(s.original_names[name])}) has no voxel on "
                      "the CT grid; recorded as missing")
                continue
            masks[name] = m
    if body is not None and body.any():
        meta["possible_dose_mask"] = f"body contour {', '.join(s.original_names[_names.BODY])}"
    else:
        body = ct > BODY_HU
        meta["possible_dose_mask"] = f"CT > {BODY_HU:g} HU (no body/external contour)"
    dose = None
    dpath = _pick_dose(s)
    if dpath is not None:
        dose = _dose_on_grid(dpath, geom, ct.shape, body)  # type: ignore[arg-type]
        if dose is not None:
            import pydicom

            meta["rtdose_file"] = str(dpath.resolve())
            meta["rtdose_uid"] = str(pydicom.dcmread(dpath, stop_before_pixels=True).SOPInstanceUID)
    return Patient.from_masks(s.id, ct, masks, roi_set, geom.spacing, body, dose, meta)


def iter_dicom_folder(src: str | os.PathLike, roi_map: _names.RoiMap | dict | str | os.PathLike | None = None
                      ) -> tuple[RoiSet, list[str], Iterator[Patient]]:
    """Scan ``src`` and return ``(roi_set, patient ids, iterator of Patients)``; the patients are
    built one at a time (a CT volume in memory at once). See :func:`read_dicom_folder`."""
    rmap = roi_map if isinstance(roi_map, _names.RoiMap) else (
        _names.RoiMap.from_obj(roi_map) if isinstance(roi_map, dict) else _names.RoiMap.load(roi_map))
    src = Path(src)
    series, structs, doses = _scan(src)
    sources = _pair(series, structs, doses, src)
    _assign_ids(sources)
    for s in sources:
        _plan_rois(s, rmap)
        if s.rtstruct is None:
            _warn(f"{s.series.describe()}: no RTSTRUCT; patient {s.id} has no ROIs")
    roi_set = _names.union_roi_set(s.canon for s in sources)

    def gen() -> Iterator[Patient]:
        for s in sources:
            yield _build_patient(s, roi_set)

    return roi_set, [s.id for s in sources], gen()


def read_dicom_folder(src: str | os.PathLike, roi_map: _names.RoiMap | dict | str | os.PathLike | None = None
                      ) -> list[Patient]:
    """Read every CT series under ``src`` (recursively) with its RTSTRUCT and RTDOSE as Patients.

    Files are grouped by CT series; an RTSTRUCT joins the series it references (or the one with
    its FrameOfReference), an RTDOSE the series with its FrameOfReference, so one folder per patient
    and mixed folders both work. All patients share one RoiSet (see
    :func:`dosepred.io.roi_names.union_roi_set`); ``roi_map`` is a :class:`RoiMap`, a dict or a JSON
    path. Problems raise :class:`DicomImportError` or warn (:class:`DicomWarning`) naming the file.
    """
    _, _, it = iter_dicom_folder(src, roi_map)
    return list(it)


# =========================================================================================== export

def _ds(v: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``v``."""
    v = float(v)
    if v == 0:
        return "0"
    for prec in range(12, 3, -1):
        s = f"{v:.{prec}g}"
        if len(s) <= 16:
            return s
    return f"{v:.3e}"


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["dosepred"] + [str(p) for p in parts])


@dataclass(frozen=True)
class _Uids:
    study: str
    frame: str
    ct_series: str
    rs_series: str
    rs: str

    def ct(self, k: int) -> str:
        return _uid(self.ct_series, "slice", k)


def _uids(p: Patient) -> _Uids:
    """Study/FrameOfReference from ``meta`` (so a predicted RTDOSE lines up with the clinical CT),
    else derived from the patient; the exported series are derived deterministically from the
    patient so that ``export-dicom`` and ``predict --format dicom`` agree."""
    key = (p.id, p.meta.get("source", ""), p.shape, p.spacing)
    study = p.meta.get("study_uid") or _uid(*key, "study")
    frame = p.meta.get("frame_of_reference_uid") or _uid(*key, "frame")
    return _Uids(study, frame, _uid(*key, "ct"), _uid(*key, "rs-series"), _uid(*key, "rs"))


def _new_file(path: Path, sop_class: str, sop_uid: str, p: Patient, modality: str, u: _Uids) -> Any:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = sop_class
    fm.MediaStorageSOPInstanceUID = sop_uid
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=fm, preamble=b"\0" * 128)
    now = _dt.datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = str(p.meta.get("patient_id") or p.id)
    ds.PatientName = str(p.meta.get("patient_id") or p.id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = u.study
    ds.StudyID = "1"
    ds.StudyDate = str(p.meta.get("study_date") or now.strftime("%Y%m%d"))
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "dosepred"
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.FrameOfReferenceUID = u.frame
    ds.PositionReferenceIndicator = ""
    return ds


def _save(ds: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _image_plane(ds: Any, g: Geometry, shape: tuple[int, int, int]) -> None:
    ds.ImageOrientationPatient = [_ds(v) for v in g.orientation]
    ds.PixelSpacing = [_ds(g.spacing[1]), _ds(g.spacing[2])]
    ds.SliceThickness = _ds(g.spacing[0])
    ds.Rows, ds.Columns = int(shape[1]), int(shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PatientPosition = "HFS"


def _write_ct(p: Patient, folder: Path, g: Geometry, u: _Uids) -> list[str]:
    from pydicom.uid import CTImageStorage

    ct = p.ct.astype(np.int32)
    icpt = -1024 if ct.max(initial=0) + 1024 <= 32767 else 0
    stored = (ct - icpt).astype(np.int16)
    uids = []
    for k in range(p.shape[0]):
        sop = u.ct(k)
        path = folder / f"CT.{k + 1:04d}.dcm"
        ds = _new_file(path, CTImageStorage, sop, p, "CT", u)
        ds.SeriesInstanceUID = u.ct_series
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _image_plane(ds, g, p.shape)
        pos = g.slice_position(k)
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.SliceLocation = _ds(float(pos @ g.normal))
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = str(icpt)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        _save(ds, path)
        uids.append(sop)
    return uids


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours (list of (N, 2) float arrays of (row, col) vertices, no repeated last point)
    of a 2-D boolean mask on its 0.5 iso-line. Filling them even-odd at pixel centres gives the
    mask back exactly."""
    import contourpy

    m = np.pad(np.asarray(mask2d, dtype=np.float64), 1)
    gen = contourpy.contour_generator(z=m, name="serial", line_type=contourpy.LineType.Separate)
    out = []
    for line in gen.lines(0.5):
        line = np.asarray(line, dtype=np.float64)
        if len(line) > 1 and np.allclose(line[0], line[-1]):
            line = line[:-1]
        if len(line) >= 3:
            out.append(line[:, ::-1] - 1.0)  # (x=col, y=row) of the padded grid -> (row, col)
    return out


_COLORS = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 160, 0), (160, 0, 255), (0, 200, 200),
           (255, 0, 160), (128, 128, 0), (0, 128, 128), (200, 100, 50)]


def _write_rtstruct(p: Patient, folder: Path, g: Geometry, u: _Uids, ct_uids: list[str]) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import CTImageStorage

    path = folder / "RS.dcm"
    ds = _new_file(path, RTSTRUCT_STORAGE, u.rs, p, "RTSTRUCT", u)
    ds.SeriesInstanceUID = u.rs_series
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "dosepred"
    ds.StructureSetName = "dosepred"
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime

    def img_ref(k: int) -> Dataset:
        r = Dataset()
        r.ReferencedSOPClassUID = CTImageStorage
        r.ReferencedSOPInstanceUID = ct_uids[k]
        return r

    se = Dataset()
    se.SeriesInstanceUID = u.ct_series
    se.ContourImageSequence = Seq([img_ref(k) for k in range(len(ct_uids))])
    st = Dataset()
    st.ReferencedSOPClassUID = STUDY_COMPONENT
    st.ReferencedSOPInstanceUID = u.study
    st.RTReferencedSeriesSequence = Seq([se])
    fr = Dataset()
    fr.FrameOfReferenceUID = u.frame
    fr.RTReferencedStudySequence = Seq([st])
    ds.ReferencedFrameOfReferenceSequence = Seq([fr])

    rois: list[tuple[int, str, str, float | None, np.ndarray]] = []
    for k, r in enumerate(p.roi_set):
        if r.name in p.missing_rois:
            continue
        itype = {"target": "PTV", "oar": "ORGAN"}.get(r.kind, "")
        rois.append((k + 1, r.name, itype, r.prescription, p.mask(r.name)))
    if EXTERNAL_NAME not in p.roi_set:
        rois.append((len(p.roi_set) + 1, EXTERNAL_NAME, "EXTERNAL", None, np.asarray(p.possible_dose_mask)))
    ssr, rcs, obs = [], [], []
    for i, (number, name, itype, rx, mask) in enumerate(rois):
        a = Dataset()
        a.ROINumber = number
        a.ReferencedFrameOfReferenceUID = u.frame
        a.ROIName = name
        a.ROIGenerationAlgorithm = "AUTOMATIC"
        ssr.append(a)
        b = Dataset()
        b.ReferencedROINumber = number
        b.ROIDisplayColor = list(_COLORS[i % len(_COLORS)])
        contours = []
        for k in range(p.shape[0]):
            if not mask[k].any():
                continue
            for poly in mask_contours(mask[k]):
                idx = np.column_stack([np.full(len(poly), k, dtype=np.float64), poly])
                xyz = g.to_patient(idx)
                c = Dataset()
                c.ContourImageSequence = Seq([img_ref(k)])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                c.ContourData = [_ds(v) for v in xyz.ravel()]
                contours.append(c)
        if contours:
            b.ContourSequence = Seq(contours)
        rcs.append(b)
        o = Dataset()
        o.ObservationNumber = number
        o.ReferencedROINumber = number
        o.RTROIInterpretedType = itype
        o.ROIInterpreter = ""
        if rx is not None:
            o.ROIObservationDescription = f"prescription {rx:g} Gy"
        obs.append(o)
    ds.StructureSetROISequence = Seq(ssr)
    ds.ROIContourSequence = Seq(rcs)
    ds.RTROIObservationsSequence = Seq(obs)
    _save(ds, path)
    return path


def _write_dose_file(p: Patient, dose: np.ndarray, path: Path, g: Geometry, u: _Uids,
                     rs_uid: str | None) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    dose = np.asarray(dose, dtype=np.float64)
    if dose.shape != p.shape:
        raise ValueError(f"patient {p.id}: dose shape {dose.shape} != CT shape {p.shape}")
    if not np.all(np.isfinite(dose)) or (dose.size and dose.min() < 0):
        raise ValueError(f"patient {p.id}: dose must be finite and >= 0 Gy")
    dmax = float(dose.max(initial=0.0))
    # The scaling is stored as a 16-character decimal string: quantise with the value read back.
    scaling = float(_ds(dmax / 4.0e9)) if dmax > 0 else 1.0
    stored = np.clip(np.rint(dose / scaling), 0, 2**32 - 1).astype("<u4")
    sop = generate_uid()
    ds = _new_file(path, RTDOSE_STORAGE, sop, p, "RTDOSE", u)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    _image_plane(ds, g, p.shape)
    ds.ImagePositionPatient = [_ds(v) for v in g.origin]
    ds.NumberOfFrames = p.shape[0]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [_ds(k * g.spacing[0]) for k in range(p.shape[0])]
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = _ds(scaling)
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if rs_uid:
        r = Dataset()
        r.ReferencedSOPClassUID = RTSTRUCT_STORAGE
        r.ReferencedSOPInstanceUID = rs_uid
        ds.ReferencedStructureSetSequence = Seq([r])
    ds.PixelData = stored.tobytes()
    _save(ds, path)
    return path


def write_rtdose(patient: Patient, dose: np.ndarray, out_dir_or_path: str | os.PathLike) -> Path:
    """Write ``dose`` (Gy, on the patient's grid) as an RTDOSE on the patient's geometry and
    FrameOfReference. A path ending in ``.dcm`` is the file; otherwise ``<dir>/RD.<id>.dcm``."""
    out = Path(out_dir_or_path)
    if out.suffix.lower() != ".dcm":
        out = out / f"RD.{patient.id}.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)
    u = _uids(patient)
    return _write_dose_file(patient, dose, out, Geometry.of_patient(patient), u, u.rs)


def write_dicom(patient: Patient, out_dir: str | os.PathLike, dose: np.ndarray | None = None) -> Path:
    """Write ``out_dir/<id>/``: the CT series (``CT.0001.dcm`` ...), ``RS.dcm`` and, when a dose is
    given or the patient has one, ``RD.dcm``. Returns the patient folder."""
    folder = Path(out_dir) / patient.id
    folder.mkdir(parents=True, exist_ok=True)
    g = Geometry.of_patient(patient)
    u = _uids(patient)
    ct_uids = _write_ct(patient, folder, g, u)
    _write_rtstruct(patient, folder, g, u, ct_uids)
    d = dose if dose is not None else patient.dose
    if d is not None:
        _write_dose_file(patient, d, folder / "RD.dcm", g, u, u.rs)
    return folder
