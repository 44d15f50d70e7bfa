"""Writing a patient as DICOM (:func:`write_dicom`): the CT series, the RTSTRUCT (contours on the 0.5
iso-line of each mask, the possible-dose mask as an EXTERNAL ROI) and, with a dose, an RTDOSE on the
full CT grid, into one folder written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...fsutil import atomic_dir
from ...geometry import Geometry
from ...patient import Patient
from ._common import RTSTRUCT_STORAGE, decimal_string
from .export import (
    ExportUids,
    ImagePlane,
    check_names,
    export_layout,
    export_roi_numbers,
    export_uids,
    new_file,
    save_file,
    set_image_plane,
)
from .write_dose import dvh_sequence, write_dose_file

STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # conventional SOP class of RTReferencedStudySequence
EXTERNAL_NAME = "External"


def _write_ct(p: Patient, folder: Path, plane: ImagePlane, u: ExportUids) -> list[str]:
    from pydicom.uid import CTImageStorage

    ct = p.require_ct("DICOM export").astype(np.int32)
    icpt = -1024 if ct.max(initial=0) + 1024 <= 32767 else 0
    stored = (ct - icpt).astype(np.int16)
    normal = plane.geometry.direction[:, 0]
    uids = []
    for k in range(p.shape[0]):
        sop = u.ct(k)
        path = folder / f"CT.{k + 1:04d}.dcm"
        ds = new_file(path, CTImageStorage, sop, p, "CT", u)
        ds.SeriesInstanceUID = u.ct_series
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Laterality = ""
        ds.KVP = ""
        ds.AcquisitionNumber = ""
        set_image_plane(ds, plane, p.shape, p)
        pos = plane.slice_position(k)
        ds.ImagePositionPatient = [decimal_string(v) for v in pos]
        ds.SliceLocation = decimal_string(float(pos @ normal))
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = str(icpt)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        save_file(ds, path)
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


#: The longest value an explicit-VR DS element can hold (its length is 16 bits, and even)
MAX_EXPLICIT_LENGTH = 0xFFFE
CONTOUR_DATA = 0x30060050


def _set_contour_data(c: Any, values: list[str]) -> None:
    """``c.ContourData = values`` as the bytes the file holds: assigned as a list, pydicom builds and
    validates one DS object per number, 1.1 million for 60 ROIs on a 512 x 512 x 160 CT (most of the
    9.5 minutes its export took). Read back, the element is the same DS."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    raw = "\\".join(values).encode("ascii")
    if len(raw) % 2:
        raw += b" "  # DICOM values have an even length; a DS is padded with a space
    c[CONTOUR_DATA] = RawDataElement(Tag(CONTOUR_DATA), "DS", len(raw), raw, 0, False, True)

_COLORS = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 160, 0), (160, 0, 255), (0, 200, 200),
           (255, 0, 160), (128, 128, 0), (0, 128, 128), (200, 100, 50)]


def _write_rtstruct(p: Patient, folder: Path, plane: ImagePlane, u: ExportUids, ct_uids: list[str]) -> Path:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import CTImageStorage

    g = plane.geometry
    path = folder / "RS.dcm"
    ds = new_file(path, RTSTRUCT_STORAGE, u.rs, p, "RTSTRUCT", u)
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

    # each ROI's mask is decoded when its contours are drawn: held all at once, 60 ROIs of a 512 x 512 x 160
    # CT were 2.5 GB (the body: None, the possible-dose mask)
    rois: list[tuple[int, str, str, float | None, str | None]] = []
    for k, r in enumerate(p.roi_set):
        if r.name in p.missing_rois:
            continue
        itype = {"target": "PTV", "oar": "ORGAN"}.get(r.kind, "")
        rois.append((k + 1, r.name, itype, r.prescription, r.name))
    if EXTERNAL_NAME not in p.roi_set:
        rois.append((len(p.roi_set) + 1, EXTERNAL_NAME, "EXTERNAL", None, None))
    ssr, rcs, obs = [], [], []
    longest = 0  # the longest ContourData, in bytes as written
    for i, (number, name, itype, rx, roi) in enumerate(rois):
        mask = p.mask(roi) if roi is not None else np.asarray(p.possible_dose_mask)
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
                values = [decimal_string(v) for v in xyz.ravel()]
                longest = max(longest, sum(len(v) + 1 for v in values) - 1)
                _set_contour_data(c, values)
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
    implicit = longest > MAX_EXPLICIT_LENGTH
    if implicit:
        # an explicit-VR DS element says its length in 16 bits: pydicom would store this contour as UN
        # bytes, which other readers take for garbage (dicompyler-core) or refuse; implicit VR (the
        # default transfer syntax) has 32-bit lengths
        from pydicom.uid import ImplicitVRLittleEndian

        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    for b in rcs:  # the contours' raw ContourData is written as it is only in the encoding it is said to have
        for c in getattr(b, "ContourSequence", []):
            c.set_original_encoding(implicit, True, c._character_set)
    save_file(ds, path)
    return path


def write_dicom(patient: Patient, out_dir: str | os.PathLike, dose: np.ndarray | None = None, *,
                keep_layout: bool | None = None) -> Path:
    """Write ``out_dir/<id>/``: the CT series (``CT.0001.dcm`` ...), ``RS.dcm`` and, when a dose is
    given or the patient has one, ``RD.dcm`` (on the full CT grid: a lossless export). The layout is
    :func:`export_layout`'s (``keep_layout``). The folder is written to a temporary sibling and
    renamed into place, replacing an earlier export of the patient whole. Returns the folder."""

    check_names(patient)
    u = export_uids(patient)
    d = dose if dose is not None else patient.dose
    src = patient if d is None else patient.with_dose(np.asarray(d, dtype=np.float32))
    q = export_layout(src, keep_layout)
    plane = ImagePlane.of(q)
    final = Path(out_dir) / patient.id
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as folder:
        ct_uids = _write_ct(q, folder, plane, u)
        _write_rtstruct(q, folder, plane, u, ct_uids)
        if q.dose is not None:
            g = Geometry(plane.origin, plane.geometry.direction, plane.geometry.spacing)
            dvhs = dvh_sequence(q, q.dose, export_roi_numbers(q))
            write_dose_file(q, q.dose, g, folder / "RD.dcm", u, plane.iop, u.rs,
                            description="dosepred export", dvhs=dvhs)
    return final
