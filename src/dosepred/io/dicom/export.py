"""What every file DICOM export writes shares: the array layout (:func:`export_layout`), the UIDs
derived from the patient, the image plane, the file header with the patient's identity, and the
atomic save. The CT series and RTSTRUCT writers are in :mod:`.write`, the RTDOSE writer in
:mod:`.write_dose`."""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ...fsutil import atomic_path
from ...geometry import Geometry, GeometryError, reorient
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


#: Axis order in which :func:`patient_digest` reads a patient, whatever its array layout.
DIGEST_AXES = "LPS"


def _grid_steps(values: Any, per_unit: int) -> list[int]:
    """``values`` in whole steps of ``1 / per_unit`` (a power of two: the binary fractions grids are
    made of, such as 0.125 mm, never fall on a rounding boundary, so float noise cannot flip them)."""
    return [int(v) for v in np.rint(np.asarray(values, dtype=np.float64) * per_unit).ravel()]


def patient_digest(p: Patient) -> str:
    """SHA-256 (hex) of what a patient is, not where its files lie: its id, its grid (shape, spacing,
    origin, direction; spacing and origin to 1/1024 mm, direction cosines to 2^-20) and every ROI with
    at least one voxel (its name and its voxels), all read in the array axis order
    :data:`DIGEST_AXES`, so the same patient in another layout (axes permuted or reversed) has the same
    digest. ROIs are taken by name, so the bit order of the ROI set, ROIs of the set the patient has
    no voxel of and the codes' dtype do not count. The CT (quantised by ``data pack --ct-step``), the
    dose, the possible-dose mask and ``meta`` do not count either. About 10 ms for a 128^3 patient."""
    g = p.geometry
    assert g is not None
    perm, flips = g.permutation_to(DIGEST_AXES)
    cg = g.reoriented(perm, flips, p.shape)
    codes = np.ascontiguousarray(reorient(p.roi_codes, perm, flips)).reshape(-1)
    h = hashlib.sha256()
    grid = (p.id, [p.shape[j] for j in perm], _grid_steps(cg.spacing, 1024), _grid_steps(cg.origin, 1024),
            _grid_steps(cg.direction, 1 << 20))
    h.update(repr(grid).encode())
    where = np.flatnonzero(codes)  # the voxels of any ROI, in C order of the canonical layout
    values = codes[where]
    h.update(where.astype("<i8").tobytes())
    present = int(np.bitwise_or.reduce(values)) if values.size else 0
    for name in sorted(p.roi_set.names):
        k = p.roi_set.index(name)
        if present >> k & 1:
            bits = (values >> values.dtype.type(k)) & values.dtype.type(1)
            h.update(b"\0roi\0" + name.encode() + b"\0" + np.packbits(bits.astype(bool)).tobytes())
    return h.hexdigest()


def export_uids(p: Patient) -> ExportUids:
    """Study/FrameOfReference from ``meta`` (so a predicted RTDOSE lines up with the clinical CT),
    else derived from the patient; the exported series are derived from the patient too. Derived
    means from :func:`patient_digest`: the patient's id, grid and ROI voxels in one canonical axis
    order, never the path it was read from, so that ``export-dicom`` and ``predict --format dicom``
    agree for the same patient read from its folder, a copy of it, its cache (packed or not) or its
    NIfTI export, in any array layout; two patients with different ROIs get different UIDs."""
    key = patient_digest(p)
    study = p.meta.get("study_uid") or _uid(key, "study")
    frame = p.meta.get("frame_of_reference_uid") or _uid(key, "frame")
    return ExportUids(study, frame, _uid(key, "ct"), _uid(key, "rs-series"), _uid(key, "rs"))


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


#: The longest value DICOM's LO (PatientID, ROIName) and each PN component group (PatientName) hold.
MAX_LO = 64


def check_names(p: Patient, rois: bool = True) -> None:
    """Refuse, before anything is written, a patient id or name and (``rois``) an ROI name that a DICOM
    file cannot hold as it is: more than :data:`MAX_LO` characters (LO, PN; pydicom wrote it with a
    warning naming neither, and other software cuts it, making two long names one), or a backslash,
    DICOM's value delimiter (an ROI "Ring 1\\2" came back as "['Ring 1', '2']")."""
    m = p.meta
    fields = [("PatientID", str(m.get("patient_id") or p.id)),
              ("PatientName", str(m.get("patient_name") or m.get("patient_id") or p.id))]
    if rois:
        fields += [("ROI name (ROIName)", n) for n in p.present_rois]
    for what, v in fields:
        longest = max(len(g) for g in v.split("=")) if what == "PatientName" else len(v)
        why = ("it holds a backslash, DICOM's value delimiter" if "\\" in v else
               f"it has {longest} characters, more than the {MAX_LO} DICOM allows" if longest > MAX_LO
               else None)
        if why:
            fix = ("rename the ROI" if what.startswith("ROI") else
                   "rename the patient (its folder or cache entry)")
            raise InputError(f"patient {p.id}: {what} {v!r} cannot be written in DICOM: {why}; {fix}")


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


#: Value representations whose text SpecificCharacterSet encodes (names, descriptions, labels).
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "PN", "UC", "UT"})


def _latin_1(v: Any) -> bool:
    try:
        str(v).encode("latin-1")
        return True
    except UnicodeEncodeError:
        return False


def character_set(ds: Any) -> str:
    """``ISO_IR 100`` (Latin-1) when every name and text of ``ds`` fits Latin-1, else ``ISO_IR 192``
    (UTF-8): written as Latin-1, "山田" or "Łódź" became "?" (pydicom's replacement characters)."""
    for el in ds.iterall():
        if el.VR in _CHARSET_VRS and el.value is not None:
            v = el.value
            vals = v if isinstance(v, Sequence) and not isinstance(v, str) else [v]
            if not all(_latin_1(v) for v in vals):
                return "ISO_IR 192"
    return "ISO_IR 100"


def save_file(ds: Any, path: Path) -> None:
    ds.SpecificCharacterSet = character_set(ds)
    with atomic_path(path, only_writes=True) as tmp:
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
