"""Reading an RTSTRUCT: its ROIs (number, name, interpreted type, our prescription label), the checks
of its ROI bookkeeping, and the rasterising of contours onto the CT grid (pixel-centre inclusion,
even-odd filling). Naming the ROIs and their prescriptions is :mod:`.rtplan`'s."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...geometry import Geometry
from ..roi_names import nfc
from ._common import DicomImportError, field_int, field_numbers, raw_field, warn


def roi_name(value: Any) -> str:
    """An ROIName as written (in NFC): one holding a backslash, DICOM's value delimiter that some
    planning systems let in all the same, is read by pydicom as several values ("Ring 1\\2": "Ring 1",
    "2"), and was named "['Ring 1', '2']"."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = "\\".join(str(v) for v in value)
    return nfc(str(value if value is not None else ""))


def roi_info(ds: Any, path: Path | str = "RTSTRUCT") -> list[tuple[int, str, str, float | None]]:
    """(ROINumber, ROIName, RTROIInterpretedType, prescription from our observation label)."""
    types: dict[int, str] = {}
    rx: dict[int, float] = {}
    for k, ob in enumerate(getattr(ds, "RTROIObservationsSequence", []) or []):
        n = field_int(ob, "ReferencedROINumber", f"RTSTRUCT {path}: RTROIObservationsSequence item {k + 1}")
        types[n] = str(getattr(ob, "RTROIInterpretedType", "") or "")
        m = re.search(r"prescription\s+([\d.]+)\s*Gy", str(getattr(ob, "ROIObservationDescription", "")))
        if m:
            rx[n] = float(m.group(1))
    out = []
    for k, r in enumerate(getattr(ds, "StructureSetROISequence", []) or []):
        n = field_int(r, "ROINumber", f"RTSTRUCT {path}: StructureSetROISequence item {k + 1}")
        out.append((n, roi_name(r.ROIName), types.get(n, ""), rx.get(n)))
    return out


def check_roi_numbers(ds: Any, path: Path, for_uid: str) -> None:
    """The ROI bookkeeping of an RTSTRUCT that rasterising relies on: every StructureSetROISequence,
    ROIContourSequence and RTROIObservationsSequence item carries its (Referenced)ROINumber, the
    ROINumbers and the contour items' ReferencedROINumbers are unique, and every ROI with contours
    lies in the CT's FrameOfReference ``for_uid`` (its contour points are in that frame's mm)."""
    seen: dict[int, str] = {}
    for k, r in enumerate(getattr(ds, "StructureSetROISequence", []) or []):
        where = f"RTSTRUCT {path}: StructureSetROISequence item {k + 1}"
        if raw_field(r, "ROINumber") in (None, ""):
            raise DicomImportError(f"{where} ({getattr(r, 'ROIName', '?')}) lacks ROINumber")
        n, name = field_int(r, "ROINumber", where), roi_name(getattr(r, "ROIName", "")).strip()
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
        if raw_field(rc, "ReferencedROINumber") in (None, ""):
            raise DicomImportError(f"RTSTRUCT {path}: ROIContourSequence item {k + 1} lacks "
                                   "ReferencedROINumber")
        n = field_int(rc, "ReferencedROINumber", f"RTSTRUCT {path}: ROIContourSequence item {k + 1}")
        if n in items:
            raise DicomImportError(f"RTSTRUCT {path}: ROIContourSequence holds two items for ROINumber {n}")
        items.add(n)
        if getattr(rc, "ContourSequence", None):  # an empty placeholder ROI draws nothing
            contoured.add(n)
    for k, ob in enumerate(getattr(ds, "RTROIObservationsSequence", []) or []):
        if raw_field(ob, "ReferencedROINumber") in (None, ""):
            raise DicomImportError(f"RTSTRUCT {path}: RTROIObservationsSequence item {k + 1} lacks "
                                   "ReferencedROINumber")
        field_int(ob, "ReferencedROINumber", f"RTSTRUCT {path}: RTROIObservationsSequence item {k + 1}")
    orphans = sorted(contoured - set(seen))
    if orphans and not seen:
        raise DicomImportError(f"RTSTRUCT {path} has contours (ROIContourSequence, ReferencedROINumber "
                               f"{', '.join(map(str, orphans))}) but no StructureSetROISequence: its ROIs "
                               "have no names, so none can be read")
    if orphans:
        warn(f"RTSTRUCT {path}: the contours of ReferencedROINumber {', '.join(map(str, orphans))} "
             "(ROIContourSequence) belong to no ROI of StructureSetROISequence: they have no name and are "
             "ignored")
    if for_uid:
        for r in getattr(ds, "StructureSetROISequence", []) or []:
            f = str(getattr(r, "ReferencedFrameOfReferenceUID", "") or "")
            if f and f != for_uid and int(r.ROINumber) in contoured:
                raise DicomImportError(
                    f"RTSTRUCT {path}: ROI {r.ROIName} (ROINumber {int(r.ROINumber)}) has "
                    f"ReferencedFrameOfReferenceUID {f}, but the CT it is drawn on has FrameOfReference "
                    f"{for_uid}: its contours are in another frame's coordinates")


#: Pixel centres are tested a hair away from themselves, 1e-6 of a pixel along a fixed patient direction
#: (:func:`tie_break`; this is the fallback in (row, column)): a centre on the polygon's boundary (contours
#: drawn through voxel centres, as mask-to-contour tools write them) then belongs to the polygon when the
#: polygon lies on that side of it, the same whichever way the contour is wound (matplotlib decides a
#: point on the boundary by the winding) and whichever way the CT's axes run. The rule is half-open, so a
#: square through pixel centres keeps its true area in pixels. Vertices within :data:`_SNAP` of a pixel
#: centre's row or column are put on it first (contour files round their coordinates).
_TIE_BREAK = np.array([1.0, 2.0 ** 0.5]) * 1e-6
_SNAP = 1e-3
#: the fixed patient direction (LPS) of the tie-break, generic so that it lies in no image plane's normal
_TIE_LPS = np.array([1.0, 2.0 ** 0.5, 3.0 ** 0.5])


def tie_break(geom: Geometry) -> np.ndarray:
    """The (row, column) offset of :data:`_TIE_BREAK`'s rule for the CT ``geom``: 1e-6 pixel along
    :data:`_TIE_LPS` projected into the image plane (the same patient direction for every layout)."""
    d = geom.to_index(_TIE_LPS) - geom.to_index(np.zeros(3))
    rc = d[1:]
    n = float(np.hypot(rc[0], rc[1]))
    return rc / n * 1e-6 if n > 0 else _TIE_BREAK


def _polygon_mask(poly_rc: np.ndarray, rows: int, cols: int, tie: np.ndarray = _TIE_BREAK) -> np.ndarray:
    """Pixel-centre inclusion of one closed polygon given as (row, col) float vertices; a centre on the
    boundary counts by ``tie`` (:func:`tie_break`: the same for either winding)."""
    from matplotlib.path import Path as MPath

    m = np.zeros((rows, cols), dtype=bool)
    near = np.round(poly_rc)
    poly_rc = np.where(np.abs(poly_rc - near) < _SNAP, near, poly_rc)
    r0 = max(int(np.floor(poly_rc[:, 0].min())), 0)
    r1 = min(int(np.ceil(poly_rc[:, 0].max())), rows - 1)
    c0 = max(int(np.floor(poly_rc[:, 1].min())), 0)
    c1 = min(int(np.ceil(poly_rc[:, 1].max())), cols - 1)
    if r1 < r0 or c1 < c0:
        return m
    rr, cc = np.mgrid[r0:r1 + 1, c0:c1 + 1]
    pts = np.column_stack([rr.ravel(), cc.ravel()]) + tie
    inside = MPath(poly_rc[:, ::-1]).contains_points(pts[:, ::-1])
    m[r0:r1 + 1, c0:c1 + 1] = inside.reshape(rr.shape)
    return m


def _cropped(m: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """A slice mask as (first row, first column, the mask within its bounding box); None when empty."""
    rr, cc = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if not len(rr):
        return None
    return int(rr[0]), int(cc[0]), m[rr[0]:rr[-1] + 1, cc[0]:cc[-1] + 1]


def _partly_overlap(a: tuple[int, int, np.ndarray], b: tuple[int, int, np.ndarray]) -> bool:
    """Whether two cropped slice masks share voxels while neither holds the other (nested contours, a
    hole, and disjoint ones are what even-odd filling is for)."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[0] + a[2].shape[0], b[0] + b[2].shape[0]), min(a[1] + a[2].shape[1], b[1] + b[2].shape[1])
    if r1 <= r0 or c1 <= c0:
        return False
    in_a = a[2][r0 - a[0]:r1 - a[0], c0 - a[1]:c1 - a[1]]
    both = int((in_a & b[2][r0 - b[0]:r1 - b[0], c0 - b[1]:c1 - b[1]]).sum())
    return 0 < both < min(int(a[2].sum()), int(b[2].sum()))


def rasterise(ds: Any, path: Path, numbers: Sequence[int], name: str, geom: Geometry,
              shape: tuple[int, int, int]) -> np.ndarray:
    nz, nr, nc = shape
    mask = np.zeros(shape, dtype=bool)
    tie = tie_break(geom)
    by_number = {field_int(r, "ReferencedROINumber", f"RTSTRUCT {path}: ROIContourSequence item {k + 1}"): r
                 for k, r in enumerate(getattr(ds, "ROIContourSequence", []) or [])}
    skipped = 0
    tiny = 0
    opened = 0
    repeated = 0
    clipped = 0
    crossed: set[int] = set()  # slices where two contours overlap without one holding the other
    on: set[int] = set()  # the CT slices that hold a contour of the ROI
    for number in numbers:
        roi = by_number.get(number)
        if roi is None:
            continue
        drawn: dict[int, list[tuple[int, int, np.ndarray]]] = {}
        vertices: dict[int, list[np.ndarray]] = {}  # per slice, each contour's points (to 1e-3 mm)
        own = np.zeros(shape, dtype=bool)  # this ROI's contours, even-odd; ROIs of one name are united
        for j, c in enumerate(getattr(roi, "ContourSequence", []) or []):
            gtype = str(getattr(c, "ContourGeometricType", "") or "CLOSED_PLANAR").strip().upper()
            if gtype == "POINT":
                continue
            if gtype.startswith("OPEN"):  # PS3.3 C.8.8.6.1: a line (last vertex not joined), no area
                opened += 1
                continue
            where = f"RTSTRUCT {path}: ROI {name} (ROINumber {number}) contour {j + 1}"
            if "ContourData" not in c or not c.get_item("ContourData").value:  # not converted (field_numbers)
                raise DicomImportError(f"{where} has no ContourData")
            vals = field_numbers(c, "ContourData", where)
            if vals.size % 3:
                raise DicomImportError(f"{where}: ContourData holds {vals.size} numbers, not a list of "
                                       "(x, y, z) triples (a multiple of 3)")
            npts = raw_field(c, "NumberOfContourPoints")
            n_pts = None if npts in (None, "") else field_int(c, "NumberOfContourPoints", where)
            if n_pts is not None and n_pts != vals.size // 3:
                raise DicomImportError(f"{where}: NumberOfContourPoints is {n_pts} but ContourData holds "
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
            same = np.unique(np.round(pts, 3), axis=0)
            if any(np.array_equal(same, v) for v in vertices.setdefault(kk, [])):
                repeated += 1  # a copy of a contour: even-odd, it would cancel the one it repeats
                continue
            vertices[kk].append(same)
            on.add(kk)
            rc = idx[:, 1:]
            # a contour along the outer pixel edges lies there up to the rounding of its decimal strings
            edge = 0.5 + _SNAP
            if (rc.min(axis=0) < -edge).any() or (rc.max(axis=0) > np.array([nr, nc]) - 1 + edge).any():
                clipped += 1  # the part beyond the CT's field of view cannot be drawn on its grid
            m = _polygon_mask(rc, nr, nc, tie)
            here = _cropped(m)
            if here is not None:
                if any(_partly_overlap(here, other) for other in drawn.setdefault(kk, [])):
                    crossed.add(kk)
                drawn[kk].append(here)
            own[kk] ^= m
        mask |= own
    if tiny:
        warn(f"RTSTRUCT {path}: {tiny} contour(s) of ROI {name} have fewer than 3 points (ContourData); "
             "they enclose no area and are ignored")
    if opened:
        warn(f"RTSTRUCT {path}: {opened} contour(s) of ROI {name} are open (ContourGeometricType OPEN_PLANAR "
             "or OPEN_NONPLANAR): lines that enclose no area; ignored")
    if repeated:
        warn(f"RTSTRUCT {path}: {repeated} contour(s) of ROI {name} repeat another contour of the same "
             "slice point for point; each is used once (filled even-odd, a copy would cancel the contour it "
             "repeats)")
    if crossed:
        warn(f"RTSTRUCT {path}: ROI {name} has contours that partly overlap (neither inside the other) on "
             f"{len(crossed)} CT slice(s) (first at slice index {min(crossed)}); combined even-odd (XOR, "
             "PS3.3 C.8.8.6.3), their overlap is left out of the ROI")
    if clipped:
        warn(f"RTSTRUCT {path}: {clipped} contour(s) of ROI {name} reach beyond the CT's field of view (the "
             "image rows and columns); the part outside it is not in the ROI, so its volume and dose "
             "metrics are those of the part on the CT")
    gaps = np.diff(sorted(on))
    if len(on) >= 3 and gaps.min() > 1:  # drawn every k-th slice, never interpolated between
        k = int(np.median(gaps))
        warn(f"RTSTRUCT {path}: ROI {name} has contours on {len(on)} CT slices, no two of them adjacent "
             f"(about every {k}th slice): the slices between them are not in the ROI, so its volume is about "
             f"1/{k} of the drawn extent's (dicompyler-core counts each contour as thick as the gap to the "
             "next); interpolate the contours onto every slice in the planning system")
    if skipped:
        warn(f"RTSTRUCT {path}: {skipped} contour(s) of ROI {name} are not on a CT slice (off-plane or "
             "outside the CT); ignored")
    return mask
