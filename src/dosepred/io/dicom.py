"""Read and write DICOM RT: CT image series, RTSTRUCT, RTPLAN (prescriptions) and RTDOSE <-> :class:`Patient`.

Coordinates
-----------
Everything is placed by :class:`dosepred.geometry.Geometry` (DICOM patient coordinates, LPS mm).

- **Import**: the array is ``(slice, row, column)``; axis 0 runs along the slice normal
  ``n = row_dir x col_dir`` (slices sorted ascending along it), axis 1 along the column direction
  (second ImageOrientationPatient triple: the direction in which the row index grows), axis 2 along
  the row direction (first triple). ``Patient.geometry`` is
  ``Geometry.from_dicom(ImagePositionPatient of the first slice, ImageOrientationPatient, (slice gap,
  PixelSpacing[0], PixelSpacing[1]))``. ``meta["origin"]``/``meta["orientation"]`` keep the numbers
  as the files hold them (provenance; export writes them back verbatim while the geometry still
  matches them, so DICOM -> cache -> DICOM gives the same ImagePositionPatient/Orientation strings).
- **Export layout** (:func:`export_layout`): DICOM images are planes stacked along their normal,
  so a grid is written as it is when its axis 0 equals ``axis 2 x axis 1`` (what any DICOM series
  reads as) and it either came from DICOM or its axis 0 runs head-feet. Any other grid, e.g. an
  OpenKBP patient ("PLI": axis 2 runs head-feet), is first reoriented, by permutation and flips only
  (no interpolation), to the axial head-first-supine layout **"SPL"**: ImageOrientationPatient
  ``(1,0,0, 0,1,0)``, slices ascending towards the head, rows towards posterior, columns towards the
  patient's left. Sheared grids (non-perpendicular axes) cannot be written as DICOM images.
- CT is HU (RescaleSlope/Intercept applied, rounded to int16).
- **RTDOSE in**: read on its own grid (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
  GridFrameOffsetVector) and resampled trilinearly in patient coordinates onto the CT grid with
  :func:`dosepred.resample.resample` (exact where the grids coincide); CT voxels outside the dose
  grid get 0 Gy (with a warning when the body is not covered).
- **RTDOSE out** (:func:`write_rtdose`): the written layout's axes, cropped to the box of the
  possible-dose mask and the non-zero dose (plus one voxel), at ``dose_spacing`` or by default at
  ``max(CT spacing, 2.5 mm)`` per axis (a 512x512 CT at 0.98 mm gets a 2.5 mm dose grid: a few MB,
  not 100 MB). ``write_dicom`` writes the patient's own dose on the full CT grid (lossless export).
  Stored as 32-bit integers with the coarsest decimal DoseGridScaling (1e-3 ... 1e-6 Gy) that
  reproduces every float32 value exactly, else ``Dmax / 4e9``.

ROIs and prescriptions
----------------------
- RTSTRUCT contours are rasterised on each CT slice by pixel-centre inclusion with even-odd (XOR)
  filling, so holes and several contours per slice work. Export draws the contours on the 0.5
  iso-line of each mask (marching squares, vertices at half-voxel positions); re-importing them
  reproduces the masks exactly because no edge passes through a voxel centre.
- Kinds come from what the files say: ROI names go through :mod:`dosepred.io.roi_names` (user map,
  then aliases); an unrecognised name takes its kind from RTROIInterpretedType (PTV/CTV/GTV ->
  target, ORGAN/AVOIDANCE -> oar, EXTERNAL -> the body); prescriptions come from the user map, else
  the RTPLAN's DoseReferenceSequence (TargetPrescriptionDose of a TARGET dose reference with a
  ReferencedROINumber; one SITE-level prescription goes to the only target without one), else the
  name ("PTV70"). A plan that disagrees with the name wins, with a warning.
- The body/external contour becomes the possible-dose mask (else CT > -500 HU;
  ``meta["possible_dose_mask"]`` says which); on export the possible-dose mask is written back as an
  EXTERNAL ROI named ``External``.

Matching and validation (see docs/formats.md)
---------------------------------------------
An RTSTRUCT joins the CT series it references (else the one with its FrameOfReference); an RTPLAN
the RTSTRUCT it references; an RTDOSE the RTPLAN or RTSTRUCT it references, and only when it
references none present, the one CT series with its FrameOfReference. Rejected with a
:class:`DicomImportError` naming the file and field: frames of reference that disagree across
CT/RTSTRUCT/RTPLAN/RTDOSE, degenerate ImageOrientationPatient, missing or irregular slices, an
RTSTRUCT referencing CT images that are absent, ContourData that is not a list of (x, y, z) triples
or disagrees with NumberOfContourPoints, an RTDOSE without DoseGridScaling or with a
GridFrameOffsetVector that does not match its frames. Contours of fewer than 3 points enclose no
area: they are ignored with a warning naming the ROI and the count (the mask is the same as if they
were rasterised).

This module converts; it does not evaluate, train or decide which ROIs a protocol needs.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..boxes import mask_box
from ..constants import BODY_HU  # possible-dose mask from CT when there is no body contour
from ..fsutil import atomic_dir, atomic_path
from ..geometry import Geometry, GeometryError
from ..patient import Patient, RoiSet
from . import roi_names as _names

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # conventional SOP class of RTReferencedStudySequence
EXTERNAL_NAME = "External"
#: Axes of the export layout for grids that are not already DICOM slices (axial head-first supine).
EXPORT_AXES = "SPL"
#: Default finest dose-grid spacing (mm) of :func:`write_rtdose`.
DOSE_SPACING = 2.5

# Tolerances in mm: positions within POS_TOL are the same; slice gaps may deviate by SPACING_REL.
POS_TOL = 1e-3
SPACING_REL = 0.01


class DicomImportError(ValueError):
    """A DICOM file or series cannot be converted; the message names the file or series."""


class DicomWarning(UserWarning):
    pass


def _warn(msg: str) -> None:
    warnings.warn(msg, DicomWarning, stacklevel=3)


# ========================================================================================= fields

def _numbers(ds: Any, key: str, where: str, n: int | None = None) -> np.ndarray:
    """Field ``key`` of ``ds`` as finite floats (``n`` of them when given), or an error naming
    ``where`` (the file) and the field."""
    if key not in ds:
        raise DicomImportError(f"{where} lacks {key}")
    val = ds[key].value
    if val is None or val == "":
        raise DicomImportError(f"{where}: {key} is empty")
    items = list(val) if hasattr(val, "__len__") and not isinstance(val, (str, bytes)) else [val]
    try:
        arr = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        raise DicomImportError(f"{where}: {key} holds non-numbers: {items!r}") from None
    if n is not None and arr.size != n:
        raise DicomImportError(f"{where}: {key} must hold {n} numbers, got {arr.size}: {arr.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise DicomImportError(f"{where}: {key} holds NaN/inf: {arr.tolist()}")
    return arr


def _orientation(ds: Any, where: str) -> np.ndarray:
    """A checked ImageOrientationPatient: two perpendicular unit vectors."""
    iop = _numbers(ds, "ImageOrientationPatient", where, 6)
    try:
        Geometry.from_dicom(np.zeros(3), iop, (1.0, 1.0, 1.0))
    except GeometryError as e:
        raise DicomImportError(f"{where}: degenerate ImageOrientationPatient {iop.tolist()}: {e}") from None
    return iop


def _pixel_spacing(ds: Any, where: str) -> np.ndarray:
    ps = _numbers(ds, "PixelSpacing", where, 2)
    if not np.all(ps > 0):
        raise DicomImportError(f"{where}: PixelSpacing must be positive, got {ps.tolist()}")
    return ps


def _round_mm(v: float) -> float:
    """A length computed from decimal strings, without its float noise (12 significant digits)."""
    return float(_ds(v))


# ========================================================================================= layout

def _dicom_ready(g: Geometry, tol: float = 1e-5) -> bool:
    """True when the grid's axes are perpendicular and axis 0 = axis 2 x axis 1: a stack of DICOM
    images (rows along axis 2, columns along axis 1) whose normal is axis 0."""
    d = g.direction
    return bool(np.allclose(d.T @ d, np.eye(3), atol=tol)
                and np.allclose(np.cross(d[:, 2], d[:, 1]), d[:, 0], atol=tol))


def export_layout(p: Patient, keep_layout: bool | None = None) -> Patient:
    """The patient in the array layout DICOM export writes (see the module docstring).

    ``keep_layout`` None (default): keep a DICOM-ready grid that came from DICOM or whose axis 0 runs
    head-feet, else reorient to :data:`EXPORT_AXES`; True: keep the layout (an error when it is not
    DICOM-ready); False: always reorient. Reorientation permutes and flips axes only."""
    g = p.geometry
    assert g is not None
    d = g.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-5):
        raise ValueError(f"patient {p.id}: its grid axes are not perpendicular ({g!r}); DICOM images "
                         "cannot hold a sheared grid (resample the patient first)")
    ready = _dicom_ready(g)
    if keep_layout:
        if not ready:
            raise ValueError(f"patient {p.id}: its layout ({g.describe()}) cannot be kept in DICOM: axis 0 "
                             "must be the normal (axis 2 x axis 1) of the images")
        return p
    if keep_layout is None and ready and (p.meta.get("format") == "dicom" or g.axis_along("SI") == 0):
        return p
    q = p.reoriented(EXPORT_AXES)
    assert q.geometry is not None
    if not _dicom_ready(q.geometry):  # an oblique grid that is a mirror image of SPL: reverse slices
        letters = q.geometry.axis_letters()
        q = q.reoriented({"S": "I", "I": "S"}.get(letters[0], letters[0]) + letters[1:])
    return q


# =========================================================================================== import

@dataclass
class _Series:
    uid: str
    files: list[tuple[Path, Any]]  # (path, header dataset)
    # files under the scanned folder that are no readable DICOM (junk, empty, truncated): named when
    # the series turns out incomplete, since one of them may be the missing slice
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def unreadable_near(self, image_like: bool = False) -> list[tuple[Path, str]]:
        """The unreadable files beside this series' files (``image_like``: only those named as DICOM
        images are, ``*.dcm``, ``*.ima`` or without a suffix)."""
        folders = {p.parent for p, _ in self.files}
        return [(p, why) for p, why in self.unreadable if p.parent in folders
                and (not image_like or p.suffix.lower() in ("", ".dcm", ".ima", ".dicom"))]

    def unreadable_note(self) -> str:
        """``"; N file(s) ... are not readable DICOM: a (why), ..."`` for the unreadable files beside this
        series' files (empty when there are none)."""
        near = self.unreadable_near()
        if not near:
            return ""
        listed = ", ".join(f"{p} ({why})" for p, why in near[:5]) + (" ..." if len(near) > 5 else "")
        return f"; beside it, {len(near)} file(s) are not readable DICOM: {listed}"

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
    """One patient's files: a CT series, its RTSTRUCT, RTPLANs and RTDOSEs (if any)."""

    series: _Series
    rtstruct: tuple[Path, Any] | None = None
    rtplans: list[tuple[Path, Any]] = field(default_factory=list)
    rtdoses: list[tuple[Path, Any, str]] = field(default_factory=list)  # (path, header, how matched)
    dose: tuple[Path, Any, str] | None = None
    plan: tuple[Path, Any] | None = None
    # a sequential boost / concurrent plans that add up: every phase's plan and dose (their sum is the
    # patient's dose and their prescriptions add); empty for one plan
    plans_summed: list[tuple[Path, Any]] = field(default_factory=list)
    doses_summed: list[tuple[Path, Any, str]] = field(default_factory=list)
    canon: dict[str, _names.Canonical] = field(default_factory=dict)  # canonical -> info
    roi_sources: dict[str, list[int]] = field(default_factory=dict)  # canonical -> ROINumbers
    original_names: dict[str, list[str]] = field(default_factory=dict)
    prescriptions: dict[str, str] = field(default_factory=dict)  # canonical -> where the Rx came from
    id: str = ""


def files_under(src: str | os.PathLike) -> Iterator[Path]:
    """Every file under folder ``src``, recursively and following symbolic links to folders (an
    export whose ``CT/`` and ``RS/`` are links is one folder), each real folder once (no loop on a link
    to a parent); in sorted order per folder."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(src, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.is_file():
                yield p


def _scan(src: Path) -> tuple[dict[str, _Series], list[tuple[Path, Any]], list[tuple[Path, Any]],
                              list[tuple[Path, Any]]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not src.exists():
        raise FileNotFoundError(f"DICOM folder {src} does not exist")
    paths = [src] if src.is_file() else sorted(files_under(src))
    series: dict[str, _Series] = {}
    structs: list[tuple[Path, Any]] = []
    doses: list[tuple[Path, Any]] = []
    plans: list[tuple[Path, Any]] = []
    unreadable: list[tuple[Path, str]] = []
    for p in paths:
        if p.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as e:
            why = ("empty, 0 bytes" if _size(p) == 0 else "not a DICOM file"
                   if isinstance(e, InvalidDicomError) else f"unreadable: {type(e).__name__}")
            unreadable.append((p, why))
            continue
        mod = str(getattr(ds, "Modality", ""))
        if mod == "CT" and "LOCALIZER" in [str(v).upper() for v in _multi(getattr(ds, "ImageType", None))]:
            _warn(f"{p}: a localizer (scout, ImageType LOCALIZER), not a slice of a planning CT; ignored")
            continue
        if mod == "CT":
            uid = str(getattr(ds, "SeriesInstanceUID", ""))
            if not uid:
                raise DicomImportError(f"CT file {p} has no SeriesInstanceUID (a truncated or damaged file? "
                                       f"{_size(p)} bytes)")
            series.setdefault(uid, _Series(uid, [])).files.append((p, ds))
        elif mod == "RTSTRUCT":
            structs.append((p, ds))
        elif mod == "RTDOSE":
            doses.append((p, ds))
        elif mod == "RTPLAN":
            plans.append((p, ds))
    # one image that no structure set references (a stray slice of another series, a file given
    # instead of its folder) is no planning CT: not a one-slice patient (a referenced one stays, and
    # the structure set's missing images are named)
    referenced = {u for _, ds in structs for u in _struct_refs(ds)[1]}
    for uid in [u for u, s in series.items() if len(s.files) == 1 and u not in referenced]:
        _warn(f"{series.pop(uid).files[0][0]}: the only image of CT series {uid}, which no RTSTRUCT "
              "references: one slice is no planning CT; ignored")
    if not series:
        hint = ": a file: give the folder that holds the CT series" if src.is_file() else ""
        raise DicomImportError(f"no CT image series found under {src} (looked at {len(paths)} files){hint}")
    for s in series.values():
        s.unreadable = unreadable
    return series, structs, doses, plans


def _multi(v: Any) -> list[Any]:
    """A DICOM value as a list (a multi-valued element, one value, or none)."""
    if v is None:
        return []
    if isinstance(v, (str, bytes)):
        return [v]
    try:
        return list(v)
    except TypeError:
        return [v]


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1


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


def _struct_images(ds: Any, series_uid: str) -> set[str]:
    """SOPInstanceUIDs of the images of CT series ``series_uid`` that an RTSTRUCT lists."""
    out: set[str] = set()
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        for st in getattr(fr, "RTReferencedStudySequence", []) or []:
            for se in getattr(st, "RTReferencedSeriesSequence", []) or []:
                if str(getattr(se, "SeriesInstanceUID", "")) == series_uid:
                    for im in getattr(se, "ContourImageSequence", []) or []:
                        if getattr(im, "ReferencedSOPInstanceUID", None):
                            out.add(str(im.ReferencedSOPInstanceUID))
    return out


def _refs(ds: Any, seq: str) -> list[str]:
    return [str(r.ReferencedSOPInstanceUID) for r in getattr(ds, seq, []) or []
            if getattr(r, "ReferencedSOPInstanceUID", None)]


def _pair(series: dict[str, _Series], structs: list[tuple[Path, Any]], doses: list[tuple[Path, Any]],
          plans: list[tuple[Path, Any]], src: Path) -> list[_Source]:
    sources = {uid: _Source(s) for uid, s in series.items()}
    known = "; ".join(f"{s.describe()} FrameOfReference {s.for_uid}" for s in series.values())
    struct_owner: dict[str, str] = {}  # RTSTRUCT SOPInstanceUID -> CT series UID
    # of several RTSTRUCTs on one series, the one a plan or dose of the folder references comes first
    used = {u for _, ds in [*plans, *doses] for u in _refs(ds, "ReferencedStructureSetSequence")}
    structs = sorted(structs, key=lambda t: str(getattr(t[1], "SOPInstanceUID", "")) not in used)
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
            why = ("the one the RTPLAN/RTDOSE references" if str(getattr(s.rtstruct[1], "SOPInstanceUID", ""))
                   in used else "the first by path")
            _warn(f"{series[uid].describe()} has several RTSTRUCTs; using {s.rtstruct[0]} ({why}), "
                  f"ignoring {path}")
            continue
        s.rtstruct = (path, ds)
        struct_owner[str(getattr(ds, "SOPInstanceUID", ""))] = uid
        listed = _struct_images(ds, uid)
        have = {str(getattr(h, "SOPInstanceUID", "")) for _, h in series[uid].files}
        absent = sorted(listed - have)
        if absent:
            raise DicomImportError(
                f"RTSTRUCT {path} references {len(listed)} images of {series[uid].describe()}, but "
                f"{len(absent)} of them are not under {src} (e.g. SOPInstanceUID {absent[0]}): the CT "
                f"series is incomplete{series[uid].unreadable_note()}")

    plan_owner: dict[str, str] = {}  # RTPLAN SOPInstanceUID -> CT series UID
    for path, ds in plans:
        f = str(getattr(ds, "FrameOfReferenceUID", ""))
        owner = next((struct_owner[u] for u in _refs(ds, "ReferencedStructureSetSequence")
                      if u in struct_owner), None)
        if owner is None:
            cands = [uid for uid, s in series.items() if s.for_uid == f]
            if len(cands) != 1:
                _warn(f"RTPLAN {path} references no RTSTRUCT under {src} and its FrameOfReference "
                      f"{f or '(none)'} matches {len(cands)} CT series; ignored")
                continue
            owner = cands[0]
        if f and series[owner].for_uid and f != series[owner].for_uid:
            raise DicomImportError(f"RTPLAN {path} has FrameOfReference {f}, but the RTSTRUCT it references "
                                   f"lies on {series[owner].describe()} with FrameOfReference "
                                   f"{series[owner].for_uid}")
        sources[owner].rtplans.append((path, ds))
        plan_owner[str(getattr(ds, "SOPInstanceUID", ""))] = owner

    for path, ds in doses:
        f = str(getattr(ds, "FrameOfReferenceUID", ""))
        ref_plans = _refs(ds, "ReferencedRTPlanSequence")
        ref_structs = _refs(ds, "ReferencedStructureSetSequence")
        owner = next((plan_owner[u] for u in ref_plans if u in plan_owner), None)
        how = "referenced RTPLAN"
        if owner is None:
            owner = next((struct_owner[u] for u in ref_structs if u in struct_owner), None)
            how = "referenced RTSTRUCT"
        if owner is None:
            cands = [uid for uid, s in series.items() if s.for_uid == f]
            if not cands:
                raise DicomImportError(f"RTDOSE {path} has FrameOfReference {f or '(none)'}, which no CT "
                                       f"series under {src} has ({known})")
            if len(cands) > 1:
                _warn(f"RTDOSE {path} references no RTPLAN/RTSTRUCT under {src} and its FrameOfReference "
                      f"{f} is shared by {len(cands)} CT series; not used (it cannot be told whose it is)")
                continue
            owner, how = cands[0], "FrameOfReference"
        elif f != series[owner].for_uid:
            raise DicomImportError(f"RTDOSE {path} has FrameOfReference {f or '(none)'}, but the "
                                   f"{how} lies on {series[owner].describe()} with FrameOfReference "
                                   f"{series[owner].for_uid}")
        sources[owner].rtdoses.append((path, ds, how))
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


def plan_prescriptions(ds: Any, where: str = "RTPLAN") -> tuple[dict[int, float], list[float]]:
    """Target prescriptions (Gy) of an RTPLAN: ``({ReferencedROINumber: dose}, [site-level doses])``
    from the TARGET items of DoseReferenceSequence (TargetPrescriptionDose, the total dose)."""
    by_roi: dict[int, float] = {}
    sites: list[float] = []
    for k, dr in enumerate(getattr(ds, "DoseReferenceSequence", []) or []):
        if str(getattr(dr, "DoseReferenceType", "")).upper() != "TARGET":
            continue
        if "TargetPrescriptionDose" not in dr or dr.TargetPrescriptionDose in (None, ""):
            continue
        item = f"{where} DoseReferenceSequence item {k + 1}"
        rx = float(_numbers(dr, "TargetPrescriptionDose", item, 1)[0])
        if not 0 < rx <= 200:
            raise DicomImportError(f"{where}: DoseReferenceSequence item {k + 1}: TargetPrescriptionDose "
                                   f"{rx:g} Gy is not a prescription (expected 0 < dose <= 200 Gy)")
        if getattr(dr, "ReferencedROINumber", None) not in (None, ""):
            n = int(dr.ReferencedROINumber)
            by_roi[n] = max(by_roi.get(n, 0.0), rx)
        else:
            sites.append(rx)
    return by_roi, sites


def _fractions(ds: Any) -> int | None:
    for fg in getattr(ds, "FractionGroupSequence", []) or []:
        n = getattr(fg, "NumberOfFractionsPlanned", None)
        if n not in (None, ""):
            return int(n)
    return None


#: DoseSummationTypes of a part of a plan's dose (PS3.3 C.8.8.3): used as the plan dose they would
#: make every comparison wrong by the missing fractions or beams, so they are never the patient's dose
_PARTIAL_DOSES = {"FRACTION": "one fraction's dose", "BEAM": "one beam's dose",
                  "CONTROL_POINT": "one control point's dose", "FRACTION_SESSION": "one session's dose",
                  "BEAM_SESSION": "one beam's dose in one session",
                  "BRACHY_SESSION": "one brachytherapy session's dose"}


#: RTPlanRelationship values (PS3.3 C.8.8.9) saying two plans are delivered one after the other or in
#: parallel as parts of one treatment: their doses add up (a sequential boost, concurrent plans)
_ADDITIVE = {"PRIOR", "CONCURRENT"}
#: ... and saying one plan replaces another (a re-plan): the one no other plan names as predecessor is used
_REPLACING = {"PREDECESSOR"}


def _uid_of(ds: Any) -> str:
    return str(getattr(ds, "SOPInstanceUID", ""))


def _plan_relations(plans: list[tuple[Path, Any]]) -> dict[frozenset[str], set[str]]:
    """RTPlanRelationship values between the plans of one CT (either direction), keyed by the pair of
    plan UIDs; a plan referenced but absent is keyed with its UID too."""
    out: dict[frozenset[str], set[str]] = {}
    for _, ds in plans:
        for r in getattr(ds, "ReferencedRTPlanSequence", []) or []:
            other = str(getattr(r, "ReferencedSOPInstanceUID", "") or "")
            rel = str(getattr(r, "RTPlanRelationship", "") or "").upper()
            if other and other != _uid_of(ds):
                out.setdefault(frozenset((_uid_of(ds), other)), set()).add(rel)
    return out


def _additive_group(s: _Source) -> list[tuple[Path, Any]]:
    """The plans of ``s`` that the RTPLANs say add up (PRIOR / CONCURRENT, linked transitively); empty
    when none do."""
    rel = _plan_relations(s.rtplans)
    uids = [_uid_of(ds) for _, ds in s.rtplans]
    linked = {u: {u} for u in uids}
    for pair, kinds in rel.items():
        if kinds & _ADDITIVE and pair <= set(uids):
            a, b = tuple(pair)
            merged = linked[a] | linked[b]
            for u in merged:
                linked[u] = merged
    group = max(linked.values(), key=len, default=set())
    return [pl for pl in s.rtplans if _uid_of(pl[1]) in group] if len(group) > 1 else []


def _sequential(plans: list[tuple[Path, Any]]) -> bool:
    """Whether the RTPLANs say ``plans`` are delivered one after the other: RTPlanRelationship PRIOR
    links them all and none names another CONCURRENT. Only then do their fractions add up (concurrent
    plans may share their sessions; a MULTI_PLAN sum alone does not say)."""
    uids = {_uid_of(ds) for _, ds in plans}
    linked = {u: {u} for u in uids}
    for pair, kinds in _plan_relations(plans).items():
        if not pair <= uids:
            continue
        if "CONCURRENT" in kinds:
            return False
        if "PRIOR" in kinds:
            a, b = tuple(pair)
            merged = linked[a] | linked[b]
            for u in merged:
                linked[u] = merged
    return len(plans) > 0 and all(len(g) == len(uids) for g in linked.values())


def _dose_kind(d: tuple[Path, Any, str]) -> str:
    return str(getattr(d[1], "DoseSummationType", "") or "").upper()


def _pick_dose(s: _Source) -> None:
    """Choose the source's RTDOSE and RTPLAN: a PLAN sum (referenced, then first by path), or the sum
    of the plan doses of a sequential boost whose RTPLANs say they add up; several plans with their own
    doses and nothing saying how they relate are an error (see docs/formats.md)."""
    plan_uids = {_uid_of(ds): (p, ds) for p, ds in s.rtplans}
    if s.rtdoses:
        kind = _dose_kind
        plan = [d for d in s.rtdoses if kind(d) == "PLAN"]
        multi = [d for d in s.rtdoses if kind(d) == "MULTI_PLAN"]
        partial = [d for d in s.rtdoses if kind(d) in _PARTIAL_DOSES]
        if partial and not plan and not multi:
            named = ", ".join(f"{d[0]} ({kind(d)}: {_PARTIAL_DOSES[kind(d)]})" for d in partial)
            _warn(f"{s.series.describe()}: RTDOSE {named}: part of a plan's dose, not the plan's, so not "
                  "used as the patient's dose (export the plan sum, DoseSummationType PLAN)")
        # the plans (of this CT) whose own dose is here: one entry per plan
        per_plan: dict[str, list[tuple[Path, Any, str]]] = {}
        for d in sorted(plan, key=lambda t: str(t[0])):
            u = next((u for u in _refs(d[1], "ReferencedRTPlanSequence") if u in plan_uids), "")
            per_plan.setdefault(u, []).append(d)
        phased = {u: ds for u, ds in per_plan.items() if u}
        if multi:  # a sum of plans exported as such: the patient's total dose
            pool = sorted(multi, key=lambda t: str(t[0]))
            if len(pool) > 1:
                _warn(f"{s.series.describe()}: {len(pool)} MULTI_PLAN RTDOSE files match "
                      f"({', '.join(str(p) for p, _, _ in pool)}); using {pool[0][0]}")
            s.dose = pool[0]
            refs = _refs(pool[0][1], "ReferencedRTPlanSequence")
            summed = [plan_uids[u] for u in refs if u in plan_uids]
            absent = [u for u in refs if u not in plan_uids]
            if absent or (not refs and s.rtplans):  # the plans here are not all the sum's: their
                # prescriptions and fractions would be a part's (a boost's 20 Gy for a 70 Gy sum)
                why = (f"sums {len(refs)} RTPLANs, {len(absent)} of them not in the folder "
                       f"({', '.join(absent)})" if absent else "does not say which RTPLANs it sums")
                _warn(f"RTDOSE {pool[0][0]} (MULTI_PLAN) {why}: the folder's RTPLANs do not give the sum's "
                      "prescriptions and fractions, so none is used; prescriptions from the ROI names")
                return
            if len(summed) > 1:
                s.plans_summed = summed
            elif summed:
                s.plan = summed[0]
            if s.plans_summed:
                s.plan = s.plans_summed[0]
            return
        if len(phased) > 1:
            _several_plan_doses(s, phased)
            return
        group = _additive_group(s)
        if phased and group and next(iter(phased)) in {_uid_of(ds) for _, ds in group}:
            u = next(iter(phased))
            others = ", ".join(str(p) for p, ds in group if _uid_of(ds) != u)
            _warn(f"RTDOSE {phased[u][0][0]} is the dose of RTPLAN {plan_uids[u][0]}, which adds up with "
                  f"RTPLAN {others} (RTPlanRelationship PRIOR/CONCURRENT), whose dose is not in the folder: "
                  "one phase, not the patient's total dose, so not used (export every phase's RTDOSE, or "
                  "their sum as one RTDOSE)")
            s.plans_summed = group
            s.plan = group[0]
            return
        if phased:  # one plan's dose, the plan adding up with one not in the folder: one phase as well
            u = next(iter(phased))
            away = sorted({o for pair, kinds in _plan_relations(s.rtplans).items() if u in pair
                           and kinds & _ADDITIVE for o in pair - {u} if o not in plan_uids})
            if away:
                _warn(f"RTDOSE {phased[u][0][0]} is the dose of RTPLAN {plan_uids[u][0]}, which adds up with "
                      f"RTPLAN {', '.join(away)} (RTPlanRelationship PRIOR/CONCURRENT), not in the folder: "
                      "one phase, not the patient's total dose, so neither its dose nor its prescriptions "
                      "are used (export every phase's RTPLAN and RTDOSE, or their sum as one RTDOSE)")
                return
        pool = sorted(plan or [d for d in s.rtdoses if kind(d) not in _PARTIAL_DOSES],
                      key=lambda t: (t[2] == "FrameOfReference", str(t[0])))
        if len(pool) > 1:
            _warn(f"{s.series.describe()}: {len(pool)} RTDOSE files match "
                  f"({', '.join(str(p) for p, _, _ in pool)}); using {pool[0][0]}")
        elif pool and not plan:
            _warn(f"RTDOSE {pool[0][0]}: DoseSummationType is {kind(pool[0]) or '?'}, not PLAN; used as the "
                  "patient's dose")
        if pool:
            s.dose = pool[0]
    if s.rtplans:
        wanted = _refs(s.dose[1], "ReferencedRTPlanSequence") if s.dose else []
        ref = [plan_uids[u] for u in wanted if u in plan_uids]
        group = _additive_group(s)
        if ref:
            s.plan = ref[0]
        elif wanted:  # the dose is another plan's: the folder's plan(s) would lend it a wrong Rx
            _warn(f"RTDOSE {s.dose[0]} references RTPLAN {', '.join(wanted)}, which is not among the "
                  f"patient's ({', '.join(str(p) for p, _ in s.rtplans)}); prescriptions from names only")
        elif len(s.rtplans) == 1:
            s.plan = s.rtplans[0]
        elif group and s.dose is None:  # phases without doses: their prescriptions add up
            s.plans_summed, s.plan = group, group[0]
        else:
            _warn(f"{s.series.describe()}: {len(s.rtplans)} RTPLANs and no RTDOSE saying which is the "
                  f"patient's ({', '.join(str(p) for p, _ in s.rtplans)}); prescriptions from names only")


def _several_plan_doses(s: _Source, phased: dict[str, list[tuple[Path, Any, str]]]) -> None:
    """Several RTPLANs of one CT, each with its own PLAN dose: their sum when the RTPLANs say they add
    up (PRIOR / CONCURRENT), the newest when they say one replaced the other (PREDECESSOR); otherwise
    a :class:`DicomImportError` (taking one phase of a sequential boost as the patient's dose and
    prescription would make every comparison wrong by the other phases)."""
    plans = {_uid_of(ds): (p, ds) for p, ds in s.rtplans}
    listing = "; ".join(f"RTPLAN {plans[u][0]} with RTDOSE {', '.join(str(d[0]) for d in ds)}"
                        for u, ds in phased.items())
    for u, ds in phased.items():
        if len(ds) > 1:
            _warn(f"RTPLAN {plans[u][0]} has {len(ds)} RTDOSE files ({', '.join(str(d[0]) for d in ds)}); "
                  f"using {ds[0][0]}")
    group = _additive_group(s)
    in_group = {_uid_of(ds) for _, ds in group}
    if set(phased) <= in_group:
        s.plans_summed = group
        s.plan = group[0]
        lacking = [str(p) for p, ds in group if _uid_of(ds) not in phased]
        if lacking:
            _warn(f"{s.series.describe()}: the RTPLANs add up (RTPlanRelationship PRIOR/CONCURRENT) but "
                  f"RTPLAN {', '.join(lacking)} has no RTDOSE in the folder: the others' sum is not the "
                  "patient's total dose, so no dose is used (export every phase's RTDOSE, or their sum)")
            return
        s.doses_summed = [phased[_uid_of(ds)][0] for _, ds in group]
        s.dose = s.doses_summed[0]
        return
    superseded = {str(getattr(r, "ReferencedSOPInstanceUID", "")) for _, ds in s.rtplans
                  for r in getattr(ds, "ReferencedRTPlanSequence", []) or []
                  if str(getattr(r, "RTPlanRelationship", "") or "").upper() in _REPLACING}
    current = [u for u in phased if u not in superseded]
    if len(current) == 1:  # every other plan is named a predecessor: a re-plan
        u = current[0]
        _warn(f"{s.series.describe()}: RTPLAN {plans[u][0]} replaces "
              f"{', '.join(str(plans[v][0]) for v in phased if v != u)} (RTPlanRelationship PREDECESSOR); "
              f"using its RTDOSE {phased[u][0][0]}")
        s.plan, s.dose = plans[u], phased[u][0]
        return
    raise DicomImportError(
        f"{s.series.describe()}: {len(phased)} RTPLANs each with their own dose ({listing}), and nothing "
        "says how they relate: the phases of a sequential boost add up, a re-plan or an alternative "
        "replaces the other, and taking one of them as the patient's plan would be wrong by the other. "
        "Export their sum as one RTDOSE (DoseSummationType MULTI_PLAN referencing every plan), or mark the "
        "relationship in the later RTPLAN (ReferencedRTPlanSequence RTPlanRelationship PRIOR or CONCURRENT: "
        "summed; PREDECESSOR: replaced), or leave only the plan to use in the folder")


def _check_roi_numbers(ds: Any, path: Path, for_uid: str) -> None:
    """The ROI bookkeeping of an RTSTRUCT that rasterising relies on: every StructureSetROISequence,
    ROIContourSequence and RTROIObservationsSequence item carries its (Referenced)ROINumber, the
    ROINumbers and the contour items' ReferencedROINumbers are unique, and every ROI with contours
    lies in the CT's FrameOfReference ``for_uid`` (its contour points are in that frame's mm)."""
    seen: dict[int, str] = {}
    for k, r in enumerate(getattr(ds, "StructureSetROISequence", []) or []):
        where = f"RTSTRUCT {path}: StructureSetROISequence item {k + 1}"
        if getattr(r, "ROINumber", None) in (None, ""):
            raise DicomImportError(f"{where} ({getattr(r, 'ROIName', '?')}) lacks ROINumber")
        n, name = int(r.ROINumber), str(getattr(r, "ROIName", "") or "").strip()
        if not name:
            raise DicomImportError(f"{where} (ROINumber {n}) has no ROIName: its contours could not be "
                                   "named; name the structure (or delete it) in the planning system")
        if n in seen:
            raise DicomImportError(f"{where}: ROIs {seen[n]!r} and {name!r} share ROINumber {n}; their "
                                   "contours cannot be told apart")
        seen[n] = name
    items: set[int] = set()
    contoured: set[int] = set()
    for k, rc in enumerate(getattr(ds, "ROIContourSequence", []) or []):
        if getattr(rc, "ReferencedROINumber", None) in (None, ""):
            raise DicomImportError(f"RTSTRUCT {path}: ROIContourSequence item {k + 1} lacks "
                                   "ReferencedROINumber")
        n = int(rc.ReferencedROINumber)
        if n in items:
            raise DicomImportError(f"RTSTRUCT {path}: ROIContourSequence holds two items for ROINumber {n}")
        items.add(n)
        if getattr(rc, "ContourSequence", None):  # an empty placeholder ROI draws nothing
            contoured.add(n)
    for k, ob in enumerate(getattr(ds, "RTROIObservationsSequence", []) or []):
        if getattr(ob, "ReferencedROINumber", None) in (None, ""):
            raise DicomImportError(f"RTSTRUCT {path}: RTROIObservationsSequence item {k + 1} lacks "
                                   "ReferencedROINumber")
    if for_uid:
        for r in getattr(ds, "StructureSetROISequence", []) or []:
            f = str(getattr(r, "ReferencedFrameOfReferenceUID", "") or "")
            if f and f != for_uid and int(r.ROINumber) in contoured:
                raise DicomImportError(
                    f"RTSTRUCT {path}: ROI {r.ROIName} (ROINumber {int(r.ROINumber)}) has "
                    f"ReferencedFrameOfReferenceUID {f}, but the CT it is drawn on has FrameOfReference "
                    f"{for_uid}: its contours are in another frame's coordinates")


def _phase_prescriptions(s: _Source, info: list[tuple[int, str, str, float | None]]
                         ) -> list[tuple[Path, dict[int, float]]]:
    """Per RTPLAN of the patient (every phase of a sum, else its one plan): its file and its target
    prescriptions by ROINumber (:func:`plan_prescriptions`; a plan's single SITE-level prescription
    goes to the only target of the RTSTRUCT that has none from its name or label)."""
    open_targets = [n for n, name, t, rx in info if t.upper() in _names.TARGET_TYPES and rx is None
                    and _names.target_from_name(name) is None]
    out = []
    for pl in s.plans_summed or ([s.plan] if s.plan is not None else []):
        rx_k, sites_k = plan_prescriptions(pl[1], f"RTPLAN {pl[0]}")
        if len(sites_k) == 1 and not rx_k and len(open_targets) == 1:
            rx_k = {open_targets[0]: sites_k[0]}
        out.append((pl[0], rx_k))
    return out


def _summed_prescriptions(s: _Source, phases: list[tuple[Path, dict[int, float]]],
                          names: dict[int, str]) -> tuple[dict[int, float], str]:
    """The patient's prescriptions by ROINumber from its plans: one plan's own, or the phases' sum
    when every phase prescribes the same targets; and "" or, when a target is prescribed by only some
    of the summed phases (a sequential boost whose first phase names the elective PTV and whose second
    names the boost PTV), the warning saying so: the sum is then ambiguous (the boost target also
    received the first phase's dose, or not) and no prescription is taken from the plans."""
    if len(phases) <= 1:
        return (dict(phases[0][1]) if phases else {}), ""
    named = sorted({n for _, rx in phases for n in rx})
    partial = [n for n in named if any(n not in rx for _, rx in phases)]
    if not partial:
        return {n: sum(rx[n] for _, rx in phases) for n in named}, ""
    by = "; ".join(f"{names.get(n, f'ROINumber {n}')} by "
                   f"{' and '.join(str(f) for f, rx in phases if n in rx)} only" for n in partial)
    return {}, (f"patient {s.id}: RTPLANs {' + '.join(str(f) for f, _ in phases)} add up (RTPlanRelationship "
                f"PRIOR/CONCURRENT or a MULTI_PLAN sum) but do not all prescribe the same targets ({by}): "
                "each target's summed prescription cannot be told (it may have received the other phases' "
                "dose too), so no prescription is taken from the RTPLANs; prescriptions from the ROI names")


def _plan_rois(s: _Source, roi_map: _names.RoiMap) -> None:
    if s.rtstruct is None:
        return
    path, ds = s.rtstruct
    _check_roi_numbers(ds, path, s.series.for_uid)
    info = _roi_info(ds)
    phases = _phase_prescriptions(s, info)
    plan_rx, ambiguous = _summed_prescriptions(s, phases, {n: name for n, name, _, _ in info})
    # the targets the plans prescribe: without the plans' prescription (an ambiguous sum), each needs
    # one from its name, our label or the ROI map, else nothing would tell the model its dose
    prescribed = {n for _, rx in phases for n in rx} if len(phases) > 1 and not plan_rx else set()
    unprescribed: list[str] = []
    for number, name, itype, rx in info:
        c = roi_map.resolve(name, itype)
        if c is None:
            continue
        if itype.upper() == "EXTERNAL" and not c.matched:
            c = _names.Canonical(_names.BODY, "other")
        user_rx = c.name in roi_map.prescriptions
        if number in plan_rx and not user_rx and not c.is_body:
            prx = plan_rx[number]
            if c.prescription is not None and abs(c.prescription - prx) > 1e-6:
                plans = " + ".join(str(pl[0]) for pl in s.plans_summed) if s.plans_summed else \
                    str(s.plan[0] if s.plan else "")
                _warn(f"ROI {name} of RTSTRUCT {path}: the name says {c.prescription:g} Gy, RTPLAN "
                      f"{plans} prescribes {prx:g} Gy; using the plan's")
            c = _names.Canonical(c.name, "target", prx, c.matched)
            s.prescriptions[c.name] = (
                f"RTPLAN {' + '.join(str(pl[0]) for pl in s.plans_summed)} DoseReferenceSequence (sum)"
                if s.plans_summed else f"RTPLAN {s.plan[0] if s.plan else ''} DoseReferenceSequence")
        elif rx is not None and c.kind in ("other", "target") and c.prescription is None:
            c = _names.Canonical(c.name, "target", rx, c.matched)
        if number in prescribed and c.prescription is None and not c.is_body:
            unprescribed.append(name)
        if c.name in s.canon and c.name != _names.BODY:
            _warn(f"RTSTRUCT {path}: ROIs {s.original_names[c.name] + [name]} all map to {c.name}; "
                  "their union is used")
        s.canon.setdefault(c.name, c)
        s.roi_sources.setdefault(c.name, []).append(number)
        s.original_names.setdefault(c.name, []).append(name)
    if unprescribed:
        one = len(unprescribed) == 1
        files = " + ".join(str(f) for f, _ in phases)
        raise DicomImportError(
            f"patient {s.id}: RTSTRUCT {path}: target{'' if one else 's'} {', '.join(unprescribed)} "
            f"{'has' if one else 'have'} no prescription: RTPLANs {files} add up but do not all prescribe "
            "the same targets, so the summed prescription is not known, and "
            f"{'its name carries' if one else 'their names carry'} no dose. Name "
            f"{'it' if one else 'each'} with its total dose in an ROI map (--roi-map MAP.json holding e.g. "
            f'{{"{unprescribed[0]}": "PTV70"}}) or in the RTSTRUCT (PTV70)')
    if ambiguous:
        _warn(ambiguous)


def _ct_volume(series: _Series) -> tuple[np.ndarray, Geometry, list[float], list[float]]:
    """CT (HU) and its geometry; also the first slice's ImagePositionPatient and the
    ImageOrientationPatient as written (for provenance)."""
    import pydicom

    desc = series.describe()
    first_path, first = series.files[0]
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
        for p, ds in series.files:
            if key not in ds:
                raise DicomImportError(f"{desc}: {p} lacks {key}")
    iop = _orientation(first, f"{desc}: {first_path}")
    ps = _pixel_spacing(first, f"{desc}: {first_path}")
    rows, cols = int(first.Rows), int(first.Columns)
    for p, ds in series.files[1:]:
        if not np.allclose(_numbers(ds, "ImageOrientationPatient", str(p), 6), iop, atol=1e-4):
            raise DicomImportError(f"{desc}: {p} has ImageOrientationPatient "
                                   f"{list(ds.ImageOrientationPatient)}, other slices {iop.tolist()}")
        if not np.allclose(_numbers(ds, "PixelSpacing", str(p), 2), ps, rtol=1e-4):
            raise DicomImportError(f"{desc}: inconsistent PixelSpacing, {p} has {list(ds.PixelSpacing)}, "
                                   f"{series.files[0][0]} has {ps.tolist()}")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise DicomImportError(f"{desc}: {p} is {ds.Rows}x{ds.Columns}, other slices {rows}x{cols}")
    rx, cy = iop[:3], iop[3:]
    n = np.cross(rx, cy)
    pos = np.array([_numbers(ds, "ImagePositionPatient", str(p), 3) for p, ds in series.files])
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
                    f"{d[i]:.2f} mm, slice spacing {dz:.2f} mm{series.unreadable_note()}")
            raise DicomImportError(f"{desc}: inconsistent slice spacing: {d.min():.3f} to {d.max():.3f} mm "
                                   f"(first irregular gap after {files[i][0].name})")
        inplane = (pos - pos[0]) - np.outer(s - s[0], n)
        if np.abs(inplane).max() > max(0.01, 0.01 * float(ps.min())):
            raise DicomImportError(f"{desc}: slice origins are not stacked along the slice normal "
                                   "(gantry tilt or mixed series); cannot build a regular grid")
        dz = _round_mm((s[-1] - s[0]) / (len(files) - 1))
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
        if arr.shape != (rows, cols):
            raise DicomImportError(f"{desc}: {p}: pixel data is {arr.shape}, Rows/Columns say {(rows, cols)}")
        slope = _rescale(ds, "RescaleSlope", 1.0, desc, p)
        icpt = _rescale(ds, "RescaleIntercept", 0.0, desc, p)
        ct[k] = np.clip(np.rint(arr * slope + icpt), -32768, 32767).astype(np.int16)
    series.files = files
    junk = series.unreadable_near(image_like=True)
    if junk:  # a damaged first or last slice leaves no gap to find: say what may be missing
        listed = ", ".join(f"{q} ({why})" for q, why in junk[:5]) + (" ..." if len(junk) > 5 else "")
        _warn(f"{desc}: {len(junk)} file(s) beside it are not readable DICOM ({listed}); if one was a slice "
              "of this CT, the CT lacks it")
    geom = Geometry.from_dicom(pos[0], iop, (dz, float(ps[0]), float(ps[1])))
    return ct, geom, [float(v) for v in pos[0]], [float(v) for v in iop]


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
    tiny = 0
    for number in numbers:
        roi = by_number.get(number)
        if roi is None:
            continue
        for j, c in enumerate(getattr(roi, "ContourSequence", []) or []):
            gtype = str(getattr(c, "ContourGeometricType", "CLOSED_PLANAR"))
            if gtype == "POINT":
                continue
            where = f"RTSTRUCT {path}: ROI {name} (ROINumber {number}) contour {j + 1}"
            if "ContourData" not in c or c.ContourData in (None, ""):
                raise DicomImportError(f"{where} has no ContourData")
            vals = _numbers(c, "ContourData", where)
            if vals.size % 3:
                raise DicomImportError(f"{where}: ContourData holds {vals.size} numbers, not a list of "
                                       "(x, y, z) triples (a multiple of 3)")
            npts = getattr(c, "NumberOfContourPoints", None)
            if npts not in (None, "") and int(npts) != vals.size // 3:
                raise DicomImportError(f"{where}: NumberOfContourPoints is {int(npts)} but ContourData holds "
                                       f"{vals.size // 3} points")
            pts = vals.reshape(-1, 3)
            if len(pts) < 3:
                tiny += 1
                continue
            idx = geom.to_index(pts)
            k = float(np.mean(idx[:, 0]))
            kk = int(round(k))
            if np.ptp(idx[:, 0]) > 0.1 or abs(k - kk) > 0.25 or not 0 <= kk < nz:
                skipped += 1
                continue
            mask[kk] ^= _polygon_mask(idx[:, 1:], nr, nc)
    if tiny:
        _warn(f"RTSTRUCT {path}: {tiny} contour(s) of ROI {name} have fewer than 3 points (ContourData); "
              "they enclose no area and are ignored")
    if skipped:
        _warn(f"RTSTRUCT {path}: {skipped} contour(s) of ROI {name} are not on a CT slice (off-plane or "
              "outside the CT); ignored")
    return mask


# ----------------------------------------------------------------------------------------- RTDOSE

def rtdose_grid(ds: Any, path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """An RTDOSE dataset's dose (Gy, float32, ``(frame, row, column)``) and its grid: axis 0 along
    the GridFrameOffsetVector (frames sorted ascending along the image normal), axes 1, 2 as for CT
    images. Checks DoseGridScaling, the orientation, the spacing and the frame offsets."""
    where = f"RTDOSE {path}"
    units = str(getattr(ds, "DoseUnits", "GY") or "GY").upper()
    if units != "GY":
        raise DicomImportError(f"{where}: DoseUnits is {units}, not GY (a relative dose has no Gy values)")
    if "DoseGridScaling" not in ds or ds.DoseGridScaling in (None, ""):
        raise DicomImportError(f"{where} lacks DoseGridScaling (the Gy per stored value); without it the "
                               "stored integers are no doses")
    scaling = float(_numbers(ds, "DoseGridScaling", where, 1)[0])
    if not scaling > 0:
        raise DicomImportError(f"{where}: DoseGridScaling must be > 0, got {scaling}")
    iop = _orientation(ds, where)
    ipp = _numbers(ds, "ImagePositionPatient", where, 3)
    ps = _pixel_spacing(ds, where)
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        raise DicomImportError(f"{where}: cannot decode pixel data: {e}") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    nf = arr.shape[0]
    if "GridFrameOffsetVector" in ds and ds.GridFrameOffsetVector not in (None, ""):
        off = _numbers(ds, "GridFrameOffsetVector", where)
    elif nf == 1:
        off = np.zeros(1)
    else:
        raise DicomImportError(f"{where} has {nf} frames but no GridFrameOffsetVector")
    if len(off) != nf:
        raise DicomImportError(f"{where}: GridFrameOffsetVector has {len(off)} values for {nf} frames")
    off = off - off[0]  # relative (first 0) and absolute forms both start at ImagePositionPatient
    order = np.argsort(off, kind="stable")
    arr, off = arr[order], off[order]
    if nf > 1:
        step = np.diff(off)
        dz = float((off[-1] - off[0]) / (nf - 1))
        if not dz > POS_TOL or np.abs(step - dz).max() > max(POS_TOL, SPACING_REL * dz):
            raise DicomImportError(f"{where}: GridFrameOffsetVector is not a regular, strictly monotonic "
                                   f"list of offsets (steps {step.min():.4g} to {step.max():.4g} mm)")
        dz = _round_mm(dz)
    else:
        dz = float(getattr(ds, "SliceThickness", 0) or 0) or 1.0
    origin = ipp + off[0] * np.cross(iop[:3], iop[3:])
    g = Geometry.from_dicom(origin, iop, (dz, float(ps[0]), float(ps[1])))
    dose = (arr.astype(np.float64) * scaling).astype(np.float32)
    if dose.size and not np.all(np.isfinite(dose)):
        raise DicomImportError(f"{where}: dose values overflow (DoseGridScaling {scaling})")
    if dose.size and float(dose.max()) > 1000:
        raise DicomImportError(f"{where}: maximum dose {float(dose.max()):.4g} Gy (stored values x "
                               f"DoseGridScaling {scaling}) is not a radiotherapy dose")
    return dose, g


def read_rtdose(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an RTDOSE file: ``(dose Gy float32, its Geometry)`` (see :func:`rtdose_grid`)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DicomImportError(f"RTDOSE {path} is not a readable DICOM file: {e}") from None
    if str(getattr(ds, "Modality", "")) != "RTDOSE":
        raise DicomImportError(f"{path}: Modality is {getattr(ds, 'Modality', '(none)')}, not RTDOSE")
    return rtdose_grid(ds, path)


def dose_on_grid(dose: np.ndarray, src: Geometry, dst: Geometry, shape: Sequence[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``dose`` (on ``src``) on the voxel centres of ``dst``: trilinear in patient coordinates
    (:func:`dosepred.resample.resample`), 0 Gy outside ``src``. Returns ``(dose, inside)`` with
    ``inside`` the voxels of ``dst`` that ``src`` covers, up to 1e-3 voxel beyond its outer voxel
    centres (grids written as decimal strings coincide only to that precision)."""
    from ..resample import resample

    pad_origin = src.to_patient([-1.0, -1.0, -1.0])
    padded = Geometry(pad_origin, src.direction, src.spacing)
    d = resample(np.pad(np.asarray(dose, dtype=np.float32), 1, mode="edge"), padded, dst, shape, order=1)
    cover = resample(np.pad(np.ones(dose.shape, dtype=np.float32), 1), padded, dst, shape, order=1)
    inside = cover > 0.999
    d[~inside] = 0
    return np.maximum(d, 0).astype(np.float32), inside


def _dose_for(path: Path, geom: Geometry, shape: tuple[int, int, int], body: np.ndarray) -> np.ndarray:
    import pydicom

    dose, g = rtdose_grid(pydicom.dcmread(path), path)
    out, inside = dose_on_grid(dose, g, geom, shape)
    outside_body = int((body & ~inside).sum())
    if outside_body:
        frac = 100.0 * outside_body / max(int(body.sum()), 1)
        _warn(f"RTDOSE {path}: the dose grid does not cover the body: {outside_body} voxels ({frac:.1f}%) "
              "of the possible-dose mask lie outside it and get 0 Gy")
    return out


# ---------------------------------------------------------------------------------------- patients

def _build_patient(s: _Source, roi_set: RoiSet) -> Patient:
    ct, geom, origin_raw, iop_raw = _ct_volume(s.series)
    first = s.series.first
    masks: dict[str, np.ndarray] = {}
    body = None
    meta: dict[str, Any] = {
        "format": "dicom", "source": str(s.series.files[0][0].parent.resolve()),
        "patient_id": str(getattr(first, "PatientID", "")),
        "patient_name": str(getattr(first, "PatientName", "") or ""),
        "patient_birth_date": str(getattr(first, "PatientBirthDate", "") or ""),
        "patient_sex": str(getattr(first, "PatientSex", "") or ""),
        "patient_position": str(getattr(first, "PatientPosition", "") or ""),
        "study_uid": str(getattr(first, "StudyInstanceUID", "")),
        "series_uid": s.series.uid, "frame_of_reference_uid": s.series.for_uid,
        "study_date": str(getattr(first, "StudyDate", "") or ""),
        "origin": origin_raw, "orientation": iop_raw,
    }
    if s.rtstruct is not None:
        path, ds = s.rtstruct
        meta["rtstruct_uid"] = str(getattr(ds, "SOPInstanceUID", ""))
        meta["rtstruct_file"] = str(path.resolve())
        meta["roi_names"] = {k: v for k, v in s.original_names.items()}
        meta["roi_numbers"] = {k: list(v) for k, v in s.roi_sources.items() if k != _names.BODY}
        if s.prescriptions:
            meta["prescriptions_from"] = dict(s.prescriptions)
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
    if s.plan is not None:
        meta["rtplan_uid"] = str(getattr(s.plan[1], "SOPInstanceUID", ""))
        meta["rtplan_file"] = str(s.plan[0].resolve())
        nfx = _fractions(s.plan[1])
        if s.plans_summed:  # a sequential boost: every phase's plan, fractions added
            meta["rtplan_uids"] = [_uid_of(ds) for _, ds in s.plans_summed]
            meta["rtplan_files"] = [str(p.resolve()) for p, _ in s.plans_summed]
            counts = [_fractions(ds) for _, ds in s.plans_summed]
            meta["rtplan_fractions"] = counts
            # the number of fractions is their sum only when the phases follow one another (PRIOR):
            # concurrent plans may be delivered in the same sessions, a MULTI_PLAN sum does not say
            nfx = None if any(c is None for c in counts) or not _sequential(s.plans_summed) else \
                sum(c for c in counts if c is not None)
        if nfx is not None:
            meta["fractions"] = nfx
    if body is not None and body.any():
        meta["possible_dose_mask"] = f"body contour {', '.join(s.original_names[_names.BODY])}"
    else:
        body = ct > BODY_HU
        meta["possible_dose_mask"] = f"CT > {BODY_HU:g} HU (no body/external contour)"
    dose = None
    if s.dose is not None:
        dpath, dds, how = s.dose
        dose = _dose_for(dpath, geom, ct.shape, body)  # type: ignore[arg-type]
        meta["rtdose_file"] = str(dpath.resolve())
        meta["rtdose_uid"] = str(getattr(dds, "SOPInstanceUID", ""))
        meta["rtdose_matched_by"] = how
        for ppath, _, _ in s.doses_summed[1:]:  # the other phases of a sequential boost
            dose = dose + _dose_for(ppath, geom, ct.shape, body)  # type: ignore[arg-type]
        if s.doses_summed:
            meta["rtdose_files"] = [str(d[0].resolve()) for d in s.doses_summed]
            meta["rtdose_uids"] = [_uid_of(d[1]) for d in s.doses_summed]
            meta["dose"] = "sum of the plans' RTDOSEs (RTPlanRelationship PRIOR/CONCURRENT)"
    return Patient.from_masks(s.id, ct, masks, roi_set, geom.spacing, body, dose, meta, geometry=geom)


@dataclass
class DicomFolder:
    """A scanned DICOM folder: its patients' ids and RoiSet, each patient built on demand."""

    src: Path
    roi_set: RoiSet
    sources: list[_Source]

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.sources]

    def patients(self, ids: Sequence[str] | None = None) -> Iterator[Patient]:
        want = None if ids is None else set(ids)
        for s in self.sources:
            if want is None or s.id in want:
                yield _build_patient(s, self.roi_set)

    def headers(self) -> dict[str, dict[str, str]]:
        """Per patient id, the UIDs that identify it (for matching predicted RTDOSE files)."""
        out = {}
        for s in self.sources:
            first = s.series.first
            rs = str(getattr(s.rtstruct[1], "SOPInstanceUID", "")) if s.rtstruct else ""
            out[s.id] = {"patient_id": str(getattr(first, "PatientID", "")),
                         "frame_of_reference_uid": s.series.for_uid, "rtstruct_uid": rs,
                         "rtplan_uid": str(getattr(s.plan[1], "SOPInstanceUID", "")) if s.plan else ""}
        return out


def scan_dicom_folder(src: str | os.PathLike,
                      roi_map: _names.RoiMap | dict | str | os.PathLike | None = None) -> DicomFolder:
    """Scan ``src`` (headers only): pair the files, resolve ROI names, kinds and prescriptions."""
    rmap = roi_map if isinstance(roi_map, _names.RoiMap) else (
        _names.RoiMap.from_obj(roi_map) if isinstance(roi_map, dict) else _names.RoiMap.load(roi_map))
    src = Path(src)
    series, structs, doses, plans = _scan(src)
    sources = _pair(series, structs, doses, plans, src)
    _assign_ids(sources)
    for s in sources:
        _pick_dose(s)
        _plan_rois(s, rmap)
        if s.rtstruct is None:
            _warn(f"{s.series.describe()}: no RTSTRUCT; patient {s.id} has no ROIs"
                  f"{s.series.unreadable_note()}")
    unused = rmap.unused()
    if unused:  # a misspelt key maps nothing: say so here, not as a missing ROI later
        import difflib

        seen = sorted({name for s in sources if s.rtstruct is not None
                       for _, name, _, _ in _roi_info(s.rtstruct[1])})
        hints = [f"{k!r}" + (f" (did you mean {near[0]!r}?)"
                             if (near := difflib.get_close_matches(k, seen, 1, 0.6)) else "") for k in unused]
        _warn(f"ROI map {rmap.source or '(given)'}: {len(unused)} name(s) matched no ROI of any structure "
              f"set in {src}: {', '.join(hints)}")
    roi_set = _names.union_roi_set(s.canon for s in sources)
    return DicomFolder(src, roi_set, sources)


def iter_dicom_folder(src: str | os.PathLike, roi_map: _names.RoiMap | dict | str | os.PathLike | None = None
                      ) -> tuple[RoiSet, list[str], Iterator[Patient]]:
    """Scan ``src`` and return ``(roi_set, patient ids, iterator of Patients)``; the patients are
    built one at a time (a CT volume in memory at once). See :func:`read_dicom_folder`."""
    f = scan_dicom_folder(src, roi_map)
    return f.roi_set, f.ids, f.patients()


def read_dicom_folder(src: str | os.PathLike, roi_map: _names.RoiMap | dict | str | os.PathLike | None = None
                      ) -> list[Patient]:
    """Read every CT series under ``src`` (recursively) with its RTSTRUCT, RTPLAN and RTDOSE as
    Patients (matching rules in the module docstring), one folder per patient or mixed. All patients
    share one RoiSet (see :func:`dosepred.io.roi_names.union_roi_set`); ``roi_map`` is a
    :class:`RoiMap`, a dict or a JSON path. Problems raise :class:`DicomImportError` or warn
    (:class:`DicomWarning`) naming the file.
    """
    _, _, it = iter_dicom_folder(src, roi_map)
    return list(it)


def is_dicom_folder(src: str | os.PathLike, limit: int = 200) -> bool:
    """True when ``src`` is a DICOM file or a folder holding one (files with the DICM preamble,
    looked for among the first ``limit`` files)."""
    src = Path(src)
    files = [src] if src.is_file() else files_under(src) if src.is_dir() else []
    for k, p in enumerate(files):
        if k >= limit:
            break
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
    return False


# ----------------------------------------------------------------------------- predicted RTDOSEs

@dataclass(frozen=True)
class RtDoseInfo:
    """Header facts of an RTDOSE file used to match it to a reference patient."""

    path: Path
    patient_id: str
    frame_of_reference_uid: str
    rtstruct_uids: tuple[str, ...]
    rtplan_uids: tuple[str, ...]


def scan_rtdoses(folder: str | os.PathLike) -> list[RtDoseInfo]:
    """The RTDOSE files under ``folder`` (recursively), headers only."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for p in sorted(q for q in files_under(folder) if not q.name.startswith(".")):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError):
            continue
        if str(getattr(ds, "Modality", "")) != "RTDOSE":
            continue
        out.append(RtDoseInfo(p, str(getattr(ds, "PatientID", "") or ""),
                              str(getattr(ds, "FrameOfReferenceUID", "") or ""),
                              tuple(_refs(ds, "ReferencedStructureSetSequence")),
                              tuple(_refs(ds, "ReferencedRTPlanSequence"))))
    return out


def match_rtdose(pid: str, meta: dict[str, Any], doses: Sequence[RtDoseInfo]) -> Path | None:
    """The RTDOSE of reference patient ``pid`` (with its ``meta``): by the RTSTRUCT/RTPLAN it
    references, else by FrameOfReference, else by PatientID (``meta["patient_id"]`` or ``pid``).
    Several candidates at the deciding step are an error naming them."""
    steps = []
    if meta.get("rtstruct_uid"):
        steps.append(("referenced RTSTRUCT", [d for d in doses if meta["rtstruct_uid"] in d.rtstruct_uids]))
    if meta.get("rtplan_uid"):
        steps.append(("referenced RTPLAN", [d for d in doses if meta["rtplan_uid"] in d.rtplan_uids]))
    if meta.get("frame_of_reference_uid"):
        steps.append(("FrameOfReference",
                      [d for d in doses if d.frame_of_reference_uid == meta["frame_of_reference_uid"]]))
    ids = {str(meta.get("patient_id") or ""), pid} - {""}
    steps.append(("PatientID", [d for d in doses if d.patient_id in ids]))
    own = meta.get("rtstruct_uid")
    if own:  # past the reference steps, a dose that references another structure set is not this one's
        steps = steps[:1] + [(how, [d for d in hits if not d.rtstruct_uids or own in d.rtstruct_uids])
                             for how, hits in steps[1:]]
    own_for = str(meta.get("frame_of_reference_uid") or "")
    for how, hits in steps:
        if len(hits) == 1:
            hit = hits[0]
            if own_for and hit.frame_of_reference_uid and hit.frame_of_reference_uid != own_for:
                raise DicomImportError(
                    f"patient {pid}: RTDOSE {hit.path} (matched by {how}) has FrameOfReferenceUID "
                    f"{hit.frame_of_reference_uid}, but the reference lies in FrameOfReference {own_for}: "
                    "its coordinates are another frame's (a dose on another CT?)")
            return hit.path
        if len(hits) > 1:
            raise DicomImportError(f"patient {pid}: {len(hits)} RTDOSE files match by {how} "
                                   f"({', '.join(str(d.path) for d in hits)}); keep one per patient")
    return None


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
    patient (as given, before any reorientation) so that ``export-dicom`` and ``predict --format
    dicom`` agree."""
    key = (p.id, p.meta.get("source", ""), p.shape, p.spacing)
    study = p.meta.get("study_uid") or _uid(*key, "study")
    frame = p.meta.get("frame_of_reference_uid") or _uid(*key, "frame")
    return _Uids(study, frame, _uid(*key, "ct"), _uid(*key, "rs-series"), _uid(*key, "rs"))


@dataclass(frozen=True)
class _Plane:
    """What the image-plane tags say: origin (slice 0), normal, orientation strings, spacing."""

    geometry: Geometry
    origin: np.ndarray
    iop: list[str]

    @classmethod
    def of(cls, p: Patient) -> _Plane:
        """The plane of an exported (DICOM-ready) patient; the numbers a DICOM source held are used
        verbatim while the geometry still matches them."""
        g = p.geometry
        assert g is not None
        m = p.meta
        if "origin" in m and "orientation" in m:
            try:
                raw = Geometry.from_dicom(m["origin"], m["orientation"], g.spacing)
            except (GeometryError, ValueError, TypeError):
                raw = None
            if raw is not None and raw.same_as(g, tol_mm=1e-4, tol_dir=1e-6):
                return cls(g, np.asarray(m["origin"], dtype=np.float64), [_ds(v) for v in m["orientation"]])
        d = g.direction
        return cls(g, g.origin, [_ds(v) for v in (*d[:, 2], *d[:, 1])])

    def slice_position(self, k: int) -> np.ndarray:
        return self.origin + k * self.geometry.spacing[0] * self.geometry.direction[:, 0]


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
    m = p.meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = str(m.get("patient_id") or p.id)
    ds.PatientName = str(m.get("patient_name") or m.get("patient_id") or p.id)
    ds.PatientBirthDate = str(m.get("patient_birth_date") or "")
    ds.PatientSex = str(m.get("patient_sex") or "")
    ds.StudyInstanceUID = u.study
    ds.StudyID = "1"
    ds.StudyDate = str(m.get("study_date") or now.strftime("%Y%m%d"))
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "dosepred"
    ds.OperatorsName = ""
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.FrameOfReferenceUID = u.frame
    ds.PositionReferenceIndicator = ""
    return ds


def _save(ds: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def _image_plane(ds: Any, plane: _Plane, shape: Sequence[int], p: Patient) -> None:
    g = plane.geometry
    ds.ImageOrientationPatient = list(plane.iop)
    ds.PixelSpacing = [_ds(g.spacing[1]), _ds(g.spacing[2])]
    ds.SliceThickness = _ds(g.spacing[0])
    ds.Rows, ds.Columns = int(shape[1]), int(shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PatientPosition = str(p.meta.get("patient_position") or "HFS")


def _write_ct(p: Patient, folder: Path, plane: _Plane, u: _Uids) -> list[str]:
    from pydicom.uid import CTImageStorage

    ct = p.ct.astype(np.int32)
    icpt = -1024 if ct.max(initial=0) + 1024 <= 32767 else 0
    stored = (ct - icpt).astype(np.int16)
    normal = plane.geometry.direction[:, 0]
    uids = []
    for k in range(p.shape[0]):
        sop = u.ct(k)
        path = folder / f"CT.{k + 1:04d}.dcm"
        ds = _new_file(path, CTImageStorage, sop, p, "CT", u)
        ds.SeriesInstanceUID = u.ct_series
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Laterality = ""
        ds.KVP = ""
        ds.AcquisitionNumber = ""
        _image_plane(ds, plane, p.shape, p)
        pos = plane.slice_position(k)
        ds.ImagePositionPatient = [_ds(v) for v in pos]
        ds.SliceLocation = _ds(float(pos @ normal))
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


def _write_rtstruct(p: Patient, folder: Path, plane: _Plane, u: _Uids, ct_uids: list[str]) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import CTImageStorage

    g = plane.geometry
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
        for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
            for poly in mask_contours(mask[k]):
                idx = np.column_stack([np.full(len(poly), k, dtype=np.float64), poly])
                xyz = g.to_patient(idx)
                c = Dataset()
                c.ContourImageSequence = Seq([img_ref(int(k))])
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


def dose_scaling(dose: np.ndarray) -> float:
    """DoseGridScaling for 32-bit storage: the coarsest of 1e-3 ... 1e-6 Gy that gives every float32
    value back exactly (doses written with a few decimals, e.g. OpenKBP's), else ``Dmax / 4e9``."""
    d = np.asarray(dose, dtype=np.float32)
    dmax = float(d.max(initial=0.0))
    if dmax <= 0:
        return 1.0
    nz = d[d != 0]
    for s in (1e-3, 1e-4, 1e-5, 1e-6):
        if dmax / s >= 2**32 - 1:
            break
        ok = True
        for part in (nz[:4096], nz):  # a sample first: most float doses fail on it at once
            q = np.rint(part.astype(np.float64) / s)
            if not np.array_equal((q * float(_ds(s))).astype(np.float32), part):
                ok = False
                break
        if ok:
            return float(_ds(s))
    return float(_ds(dmax / 4.0e9))


DVH_BIN_GY = 0.1


def _dvh_sequence(p: Patient, dose: np.ndarray, numbers: dict[str, list[int]]) -> list[Any]:
    """RT DVH items (cumulative, Gy, cm3, 0.1 Gy bins) of each present ROI with known ROINumbers in
    the referenced RTSTRUCT, from ``dose`` on the patient's grid."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq

    items = []
    vv = p.voxel_volume_cc
    for name in p.present_rois:
        nums = numbers.get(name)
        if not nums:
            continue
        d = np.asarray(dose, dtype=np.float64)[p.mask(name)]
        if d.size == 0:
            continue
        nb = int(np.floor(float(d.max()) / DVH_BIN_GY)) + 1
        hist = np.bincount(np.minimum((d / DVH_BIN_GY).astype(np.int64), nb - 1), minlength=nb)
        cum = hist[::-1].cumsum()[::-1] * vv  # volume receiving at least each bin's lower edge
        item = Dataset()
        refs = []
        for n in nums:
            r = Dataset()
            r.ReferencedROINumber = int(n)
            r.DVHROIContributionType = "INCLUDED"
            refs.append(r)
        item.DVHReferencedROISequence = Seq(refs)
        item.DVHType = "CUMULATIVE"
        item.DoseUnits = "GY"
        item.DoseType = "PHYSICAL"
        item.DVHDoseScaling = "1"
        item.DVHVolumeUnits = "CM3"
        item.DVHNumberOfBins = nb
        item.DVHData = [v for c in cum for v in (_ds(DVH_BIN_GY), _ds(float(c)))]
        item.DVHMinimumDose = _ds(float(d.min()))
        item.DVHMaximumDose = _ds(float(d.max()))
        item.DVHMeanDose = _ds(float(d.mean()))
        items.append(item)
    return items


def _write_dose_file(p: Patient, dose: np.ndarray, g: Geometry, path: Path, u: _Uids, plane_iop: list[str],
                     rs_uid: str | None, plan_uid: str | None = None, description: str = "",
                     dvhs: list[Any] | None = None) -> Path:
    """An RTDOSE of ``dose`` (Gy) on grid ``g`` (DICOM-ready axes, frames along axis 0)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    dose = np.asarray(dose, dtype=np.float32)
    if not np.all(np.isfinite(dose)) or (dose.size and dose.min() < 0):
        raise ValueError(f"patient {p.id}: dose must be finite and >= 0 Gy")
    scaling = dose_scaling(dose)
    stored = np.clip(np.rint(dose.astype(np.float64) / scaling), 0, 2**32 - 1).astype("<u4")
    sop = generate_uid()
    ds = _new_file(path, RTDOSE_STORAGE, sop, p, "RTDOSE", u)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    if description:
        ds.SeriesDescription = description[:64]
    _image_plane(ds, _Plane(g, g.origin, plane_iop), dose.shape, p)
    ds.ImagePositionPatient = [_ds(v) for v in g.origin]
    ds.NumberOfFrames = dose.shape[0]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [_ds(k * g.spacing[0]) for k in range(dose.shape[0])]
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = _ds(scaling)
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if plan_uid:
        r = Dataset()
        r.ReferencedSOPClassUID = RTPLAN_STORAGE
        r.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = Seq([r])
    if rs_uid and dvhs:  # the RT DVH module: the structure set and the DVHs of its ROIs
        r = Dataset()
        r.ReferencedSOPClassUID = RTSTRUCT_STORAGE
        r.ReferencedSOPInstanceUID = rs_uid
        ds.ReferencedStructureSetSequence = Seq([r])
        ds.DVHSequence = Seq(dvhs)
    ds.PixelData = stored.tobytes()
    _save(ds, path)
    return path


def dose_grid(p: Patient, dose: np.ndarray, dose_spacing: float | Sequence[float] | None = None,
              crop: bool = True) -> tuple[np.ndarray, Geometry]:
    """``dose`` (on ``p``'s grid) on the RTDOSE grid: ``p``'s axes, cropped (``crop``) to the box of
    the possible-dose mask and the non-zero dose plus one voxel, at ``dose_spacing`` mm (one value for
    every axis, or one per array axis) or by default ``max(spacing, DOSE_SPACING)`` per axis. Where the
    spacing is the patient's the values are copied, else resampled trilinearly (:mod:`dosepred.resample`)."""
    from ..resample import extend_dose, resample

    g = p.geometry
    assert g is not None
    dose = np.asarray(dose, dtype=np.float32)
    if dose.shape != p.shape:
        raise ValueError(f"patient {p.id}: dose shape {dose.shape} != CT shape {p.shape}")
    if dose_spacing is None:
        target = tuple(max(s, DOSE_SPACING) for s in g.spacing)
    else:
        sp = np.atleast_1d(np.asarray(dose_spacing, dtype=np.float64))
        if sp.size == 1:
            sp = np.repeat(sp, 3)
        if sp.size != 3 or not np.all(np.isfinite(sp) & (sp > 0)):
            raise ValueError(f"dose spacing must be one or three positive mm values, got {dose_spacing!r}")
        target = tuple(float(v) for v in sp)
    body = np.asarray(p.possible_dose_mask, dtype=bool)
    same = bool(np.allclose(target, g.spacing, rtol=1e-9, atol=0))
    # the box of the dose and the possible-dose mask plus one voxel (on a coarser grid: plus one coarse
    # voxel, so the grid's outer centres lie beyond the body); the whole grid when both are empty
    margin = [1] * 3 if same else [int(math.ceil(t / s - 1e-9)) + 1 for t, s in zip(target, g.spacing,
                                                                                  strict=True)]
    box = (mask_box((dose > 0) | body, margin, empty="full") if crop
           else tuple(slice(0, n) for n in p.shape))
    sub = Geometry(g.to_patient([s.start for s in box]), g.direction, g.spacing)
    cropped = dose[box]
    if same:
        return np.ascontiguousarray(cropped), sub
    new, shape = spanning_grid(sub, cropped.shape, target)
    inside = body[box]
    if inside.any() and not inside.all():
        # a prediction is 0 Gy outside the body: coarse voxels straddling its edge would mix in those
        # zeros and the body's edge voxels read back a fraction of their dose. The zeros within one
        # coarse voxel of the body take the mean of their filled neighbours first (a dose outside
        # the body that is not 0 is kept)
        cropped = extend_dose(cropped, inside, max(margin))
    # the new grid's last centres may lie beyond the source's (by less than one step): they take the
    # source's edge values ("nearest"), never 0 Gy
    out = resample(cropped, sub, new, shape, order=1, mode="nearest")
    return np.maximum(out, 0).astype(np.float32), new


def spanning_grid(g: Geometry, shape: Sequence[int], spacing: Sequence[float]
                  ) -> tuple[Geometry, tuple[int, int, int]]:
    """A grid along ``g``'s axes at ``spacing`` whose first voxel centre is that of ``(g, shape)``
    and whose last lies at or (by less than one step) beyond the source's last: a dose written on it
    covers every voxel centre of the source, its outermost included."""
    span = (np.asarray(shape, dtype=np.float64) - 1) * np.asarray(g.spacing, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    n = np.ceil(span / sp - 1e-6).astype(int) + 1
    return (Geometry(g.origin, g.direction, tuple(float(v) for v in sp)),  # type: ignore[arg-type]
            tuple(int(v) for v in n))  # type: ignore[return-value]


def write_rtdose(patient: Patient, dose: np.ndarray, out: str | os.PathLike, *,
                 dose_spacing: float | Sequence[float] | None = None, model_name: str | None = None) -> Path:
    """Write ``dose`` (Gy, on the patient's grid) as an RTDOSE in the patient's FrameOfReference, on a
    grid of the layout :func:`write_dicom` writes, cropped to the body and at ``dose_spacing`` mm (by
    default ``max(CT spacing, 2.5 mm)`` per axis; see :func:`dose_grid`). A path ending in ``.dcm`` is
    the file; otherwise ``<dir>/RD.<id>.dcm``.

    For a patient read from DICOM the file keeps its identity (PatientName, PatientID,
    PatientBirthDate, PatientSex), StudyInstanceUID and FrameOfReferenceUID, references the source
    RTSTRUCT (and RTPLAN), and its SeriesDescription names the prediction and ``model_name``."""
    path = Path(out)
    if path.suffix.lower() != ".dcm":
        path = path / f"RD.{patient.id}.dcm"
    d = np.asarray(dose, dtype=np.float32)
    if d.shape != patient.shape:
        raise ValueError(f"patient {patient.id}: dose shape {d.shape} != CT shape {patient.shape}")
    u = _uids(patient)
    q = export_layout(patient.with_dose(d))
    assert q.dose is not None
    plane = _Plane.of(q)
    arr, g = dose_grid(q, q.dose, dose_spacing)
    g = Geometry(g.origin, plane.geometry.direction, g.spacing)  # the plane's exact direction
    if patient.meta.get("rtstruct_uid"):  # the source's structure set and its ROI numbers
        rs_uid = str(patient.meta["rtstruct_uid"])
        numbers = {k: [int(n) for n in v] for k, v in (patient.meta.get("roi_numbers") or {}).items()}
    else:  # the structure set write_dicom writes for this patient
        rs_uid, numbers = u.rs, _export_roi_numbers(q)
    plan_uid = patient.meta.get("rtplan_uid")
    desc = f"dosepred predicted dose (model {model_name or 'unnamed'})"
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_dose_file(q, arr, g, path, u, plane.iop, rs_uid, plan_uid, desc,
                            _dvh_sequence(q, q.dose, numbers))


def _export_roi_numbers(p: Patient) -> dict[str, list[int]]:
    """ROINumbers of the RTSTRUCT :func:`write_dicom` writes: bit k -> k + 1."""
    return {r.name: [k + 1] for k, r in enumerate(p.roi_set) if r.name not in p.missing_rois}


def write_dicom(patient: Patient, out_dir: str | os.PathLike, dose: np.ndarray | None = None, *,
                keep_layout: bool | None = None) -> Path:
    """Write ``out_dir/<id>/``: the CT series (``CT.0001.dcm`` ...), ``RS.dcm`` and, when a dose is
    given or the patient has one, ``RD.dcm`` (on the full CT grid: a lossless export). The layout is
    :func:`export_layout`'s (``keep_layout``). The folder is written to a temporary sibling and
    renamed into place, replacing an earlier export of the patient whole. Returns the folder."""

    u = _uids(patient)
    d = dose if dose is not None else patient.dose
    src = patient if d is None else patient.with_dose(np.asarray(d, dtype=np.float32))
    q = export_layout(src, keep_layout)
    plane = _Plane.of(q)
    final = Path(out_dir) / patient.id
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as folder:
        ct_uids = _write_ct(q, folder, plane, u)
        _write_rtstruct(q, folder, plane, u, ct_uids)
        if q.dose is not None:
            g = Geometry(plane.origin, plane.geometry.direction, plane.geometry.spacing)
            dvhs = _dvh_sequence(q, q.dose, _export_roi_numbers(q))
            _write_dose_file(q, q.dose, g, folder / "RD.dcm", u, plane.iop, u.rs,
                             description="dosepred export", dvhs=dvhs)
    return final
