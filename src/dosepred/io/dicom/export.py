"""What every file DICOM export writes shares: the array layout (:func:`export_layout`), the UIDs
derived from the patient, the image plane, the file header with the patient's identity, and the
atomic save. The CT series and RTSTRUCT writers are in :mod:`.write`, the RTDOSE writer in
:mod:`.write_dose`."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ...fsutil import atomic_path
from ...geometry import Geometry, GeometryError
from ...patient import Patient
from ._common import decimal_string

#: Axes of the export layout for grids that are not already DICOM slices (axial head-first supine).
EXPORT_AXES = "SPL"


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
        raise InputError(f"patient {p.id}: its grid axes are not perpendicular ({g!r}); DICOM images "
                         "cannot hold a sheared grid (resample the patient first)")
    ready = _dicom_ready(g)
    if keep_layout:
        if not ready:
            raise InputError(f"patient {p.id}: its layout ({g.describe()}) cannot be kept in DICOM: axis 0 "
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


def _uid(*parts: Any) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["dosepred"] + [str(p) for p in parts])


@dataclass(frozen=True)
class ExportUids:
    study: str
    frame: str
    ct_series: str
    rs_series: str
    rs: str

    def ct(self, k: int) -> str:
        return _uid(self.ct_series, "slice", k)


def export_uids(p: Patient) -> ExportUids:
    """Study/FrameOfReference from ``meta`` (so a predicted RTDOSE lines up with the clinical CT),
    else derived from the patient; the exported series are derived deterministically from the
    patient (as given, before any reorientation) so that ``export-dicom`` and ``predict --format
    dicom`` agree."""
    key = (p.id, p.meta.get("source", ""), p.shape, p.spacing)
    study = p.meta.get("study_uid") or _uid(*key, "study")
    frame = p.meta.get("frame_of_reference_uid") or _uid(*key, "frame")
    return ExportUids(study, frame, _uid(*key, "ct"), _uid(*key, "rs-series"), _uid(*key, "rs"))


@dataclass(frozen=True)
class ImagePlane:
    """What the image-plane tags say: origin (slice 0), normal, orientation strings, spacing."""

    geometry: Geometry
    origin: np.ndarray
    iop: list[str]

    @classmethod
    def of(cls, p: Patient) -> ImagePlane:
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
                return cls(g, np.asarray(m["origin"], dtype=np.float64),
                           [decimal_string(v) for v in m["orientation"]])
        d = g.direction
        return cls(g, g.origin, [decimal_string(v) for v in (*d[:, 2], *d[:, 1])])

    def slice_position(self, k: int) -> np.ndarray:
        return self.origin + k * self.geometry.spacing[0] * self.geometry.direction[:, 0]


def new_file(path: Path, sop_class: str, sop_uid: str, p: Patient, modality: str, u: ExportUids) -> Any:
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


def save_file(ds: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def set_image_plane(ds: Any, plane: ImagePlane, shape: Sequence[int], p: Patient) -> None:
    g = plane.geometry
    ds.ImageOrientationPatient = list(plane.iop)
    ds.PixelSpacing = [decimal_string(g.spacing[1]), decimal_string(g.spacing[2])]
    ds.SliceThickness = decimal_string(g.spacing[0])
    ds.Rows, ds.Columns = int(shape[1]), int(shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PatientPosition = str(p.meta.get("patient_position") or "HFS")


def export_roi_numbers(p: Patient) -> dict[str, list[int]]:
    """ROINumbers of the RTSTRUCT :func:`write_dicom` writes: bit k -> k + 1."""
    return {r.name: [k + 1] for k, r in enumerate(p.roi_set) if r.name not in p.missing_rois}
