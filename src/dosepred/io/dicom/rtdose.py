"""Reading RTDOSE files: the dose and its grid (checked scaling, units, orientation and frame
offsets), a dose moved onto the CT grid, and the matching of predicted RTDOSE files to reference
patients (for ``evaluate``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...constants import MAX_DOSE_GY
from ...geometry import Geometry
from ...resample import dose_on_grid
from ._common import (
    PARTIAL_DOSES,
    POS_TOL,
    SPACING_REL,
    DicomImportError,
    field_numbers,
    image_orientation,
    pixel_error,
    pixel_spacing,
    referenced_uids,
    round_mm,
    warn,
)
from .scan import files_under


def rtdose_grid(ds: Any, path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """An RTDOSE dataset's dose (Gy, float32, ``(frame, row, column)``) and its grid: axis 0 along
    the GridFrameOffsetVector (frames sorted ascending along the image normal), axes 1, 2 as for CT
    images. Checks DoseGridScaling, the orientation, the spacing and the frame offsets."""
    where = f"RTDOSE {path}"
    units = str(getattr(ds, "DoseUnits", "GY") or "GY").upper()
    if units != "GY":
        why = ("a relative dose has no Gy values" if units == "RELATIVE" else "DICOM's DoseUnits are GY or "
               "RELATIVE; read as Gy, a dose in cGy would be 100 x too high")
        fix = "" if units == "RELATIVE" else (": export the dose in Gy, or, for a dose in cGy, set DoseUnits "
                                              "to GY and divide DoseGridScaling by 100")
        raise DicomImportError(f"{where}: DoseUnits is {units}, not GY ({why}){fix}")
    dtype = str(getattr(ds, "DoseType", "") or "").upper()
    if dtype == "ERROR":  # PS3.3 C.8.8.3: the dose's uncertainty, not a dose
        raise DicomImportError(f"{where}: DoseType is ERROR: the grid holds a dose's uncertainty, not a dose")
    if dtype == "EFFECTIVE":
        warn(f"{where}: DoseType is EFFECTIVE (a biologically weighted dose, e.g. a proton plan's RBE dose); "
             "its values are used as Gy")
    if "PixelData" not in ds:  # PS3.3 A.18.3: the dose image is optional, an RTDOSE may hold DVHs alone
        raise DicomImportError(f"{where} holds no dose grid (no PixelData"
                               f"{': DVHs only' if 'DVHSequence' in ds else ''})")
    if "DoseGridScaling" not in ds or ds.DoseGridScaling in (None, ""):
        raise DicomImportError(f"{where} lacks DoseGridScaling (the Gy per stored value); without it the "
                               "stored integers are no doses")
    scaling = float(field_numbers(ds, "DoseGridScaling", where, 1)[0])
    if not scaling > 0:
        raise DicomImportError(f"{where}: DoseGridScaling must be > 0, got {scaling}")
    iop = image_orientation(ds, where)
    ipp = field_numbers(ds, "ImagePositionPatient", where, 3)
    ps = pixel_spacing(ds, where)
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for bad pixel data
        raise DicomImportError(f"{where}: cannot decode pixel data: {pixel_error(ds, e)}") from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    nf = arr.shape[0]
    if "GridFrameOffsetVector" in ds and ds.GridFrameOffsetVector not in (None, ""):
        off = field_numbers(ds, "GridFrameOffsetVector", where)
    elif nf == 1:
        off = np.zeros(1)
    else:
        raise DicomImportError(f"{where} has {nf} frames but no GridFrameOffsetVector")
    if len(off) != nf:
        raise DicomImportError(f"{where}: GridFrameOffsetVector has {len(off)} values for {nf} frames")
    # PS3.3 C.8.8.3.2: the offsets are relative to ImagePositionPatient along the slice normal when the
    # first is 0, or patient z coordinates when the first is ImagePositionPatient's z and the planes are
    # axial (the standard names 1,0,0,0,1,0; z coordinates place the planes of any orientation whose
    # normal is +-z, e.g. feet-first -1,0,0,0,1,0, where the offset along the normal is -(z - z0));
    # any other first value, or z coordinates of planes that are not axial, place them nowhere known
    normal = np.cross(iop[:3], iop[3:])
    axial = abs(normal[2]) > 1 - 1e-4
    if abs(off[0]) > POS_TOL and not (abs(off[0] - ipp[2]) <= POS_TOL and axial):
        raise DicomImportError(
            f"{where}: GridFrameOffsetVector starts at {off[0]:g}: offsets relative to ImagePositionPatient "
            f"start at 0, and absolute z offsets (starting at ImagePositionPatient's z, {ipp[2]:g}) are "
            "defined only for axial planes (PS3.3 C.8.8.3.2), here ImageOrientationPatient "
            f"{[round(float(v), 6) for v in iop]}: where the dose planes lie cannot be told")
    # relative (first 0) and absolute forms both start at ImagePositionPatient; z coordinates become
    # offsets along the normal
    off = (off - off[0]) * (float(np.sign(normal[2])) if abs(off[0]) > POS_TOL else 1.0)
    order = np.argsort(off, kind="stable")
    arr, off = arr[order], off[order]
    if nf > 1:
        step = np.diff(off)
        dz = float((off[-1] - off[0]) / (nf - 1))
        if not dz > POS_TOL or np.abs(step - dz).max() > max(POS_TOL, SPACING_REL * dz):
            raise DicomImportError(f"{where}: GridFrameOffsetVector is not a regular, strictly monotonic "
                                   f"list of offsets (steps {step.min():.4g} to {step.max():.4g} mm)")
        dz = round_mm(dz)
    else:
        dz = float(getattr(ds, "SliceThickness", 0) or 0) or 1.0
    origin = ipp + off[0] * np.cross(iop[:3], iop[3:])
    g = Geometry.from_dicom(origin, iop, (dz, float(ps[0]), float(ps[1])))
    dose = (arr.astype(np.float64) * scaling).astype(np.float32)
    if dose.size and not np.all(np.isfinite(dose)):
        raise DicomImportError(f"{where}: dose values overflow (DoseGridScaling {scaling})")
    if dose.size and float(dose.min()) < 0:  # PixelRepresentation 1 (signed): a dose difference, not a dose
        raise DicomImportError(f"{where}: the dose holds negative values (min {float(dose.min()):.4g} Gy, "
                               f"{int((dose < 0).sum())} voxels; PixelRepresentation "
                               f"{getattr(ds, 'PixelRepresentation', '?')}): a dose is >= 0 Gy in every "
                               "voxel (a dose difference?)")
    if dose.size and float(dose.max()) > MAX_DOSE_GY:
        raise DicomImportError(f"{where}: maximum dose {float(dose.max()):.4g} Gy (stored values x "
                               f"DoseGridScaling {scaling}) is not a radiotherapy dose")
    return dose, g


def read_rtdose(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an RTDOSE file: ``(dose Gy float32, its Geometry)`` (see :func:`rtdose_grid`). A part of a
    plan's dose (DoseSummationType FRACTION, BEAM, ...: :data:`PARTIAL_DOSES`) is an error."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DicomImportError(f"RTDOSE {path} is not a readable DICOM file: {e}") from None
    if str(getattr(ds, "Modality", "")) != "RTDOSE":
        raise DicomImportError(f"{path}: Modality is {getattr(ds, 'Modality', '(none)')}, not RTDOSE")
    kind = str(getattr(ds, "DoseSummationType", "") or "").upper()
    if kind in PARTIAL_DOSES:  # as on import (never the patient's dose): not a whole plan's dose either
        raise DicomImportError(f"RTDOSE {path}: DoseSummationType is {kind} ({PARTIAL_DOSES[kind]}), not a "
                               "plan's dose: taken for one, it would be wrong by the missing fractions or "
                               "beams; export the plan's dose (DoseSummationType PLAN)")
    return rtdose_grid(ds, path)


def read_dose_onto(path: Path, geom: Geometry, shape: tuple[int, int, int], body: np.ndarray) -> np.ndarray:
    import pydicom

    dose, g = rtdose_grid(pydicom.dcmread(path), path)
    out, inside = dose_on_grid(dose, g, geom, shape)
    outside_body = int((body & ~inside).sum())
    if outside_body:
        frac = 100.0 * outside_body / max(int(body.sum()), 1)
        warn(f"RTDOSE {path}: the dose grid does not cover the body: {outside_body} voxels ({frac:.1f}%) "
             "of the possible-dose mask lie outside it and get 0 Gy")
    return out


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
                              tuple(referenced_uids(ds, "ReferencedStructureSetSequence")),
                              tuple(referenced_uids(ds, "ReferencedRTPlanSequence"))))
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
