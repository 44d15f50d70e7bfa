"""Write one patient as DICOM in the layouts clinical systems produce (test helper, importable).

Each layout is the same anatomy in the same patient coordinates, stored with other array axes:

=================  =======  ==========================  =====================================
layout             axes     ImageOrientationPatient     note
=================  =======  ==========================  =====================================
axial              SPL      1,0,0, 0,1,0                head-first supine, slices to the head
transposed         ILP      0,1,0, 1,0,0                in-plane transposed (slices to the feet)
rows_flipped       IAL      1,0,0, 0,-1,0               image rows run anterior
columns_flipped    IPR      -1,0,0, 0,1,0               image columns run to the right
prone              SAR      -1,0,0, 0,-1,0              rows and columns flipped
feet_first         IPR      -1,0,0, 0,1,0               PatientPosition FFS
slices_reversed    SPL      1,0,0, 0,1,0                CT.0001 / InstanceNumber 1 is the top
sagittal           LPI      0,0,-1, 0,1,0               slices along left-right
=================  =======  ==========================  =====================================

A DICOM series' array axis 0 is always ``row x column`` (the reader sorts slices along the normal),
so flipping rows or columns also reverses the slice order. ``in_layout`` gives the Patient as the
layout stores it (:meth:`Patient.reoriented`: permutation and flips only); ``write_layout`` writes
it with :func:`dosepred.io.dicom.write_dicom` keeping that layout.
"""

from __future__ import annotations

from pathlib import Path

from dosepred.patient import Patient

#: name -> (axis letters, PatientPosition, InstanceNumber from the top)
LAYOUTS: dict[str, tuple[str, str, bool]] = {
    "axial": ("SPL", "HFS", False),
    "transposed": ("ILP", "HFS", False),
    "rows_flipped": ("IAL", "HFS", False),
    "columns_flipped": ("IPR", "HFS", False),
    "prone": ("SAR", "HFP", False),
    "feet_first": ("IPR", "FFS", False),
    "slices_reversed": ("SPL", "HFS", True),
    "sagittal": ("LPI", "HFS", False),
}


def in_layout(p: Patient, layout: str) -> Patient:
    """``p`` with the array axes of ``layout`` (same voxels, same patient coordinates)."""
    letters, position, _ = LAYOUTS[layout]
    q = p.reoriented(letters)
    if q is p:
        q = p.with_dose(p.dose)
    q.meta["patient_position"] = position
    return q


def write_layout(p: Patient, out_dir: str | Path, layout: str) -> Path:
    """Write ``p`` as a DICOM CT + RTSTRUCT (+ RTDOSE) folder ``out_dir/<id>`` in ``layout``."""
    import pydicom

    from dosepred.io import dicom

    folder = dicom.write_dicom(in_layout(p, layout), out_dir, keep_layout=True)
    if LAYOUTS[layout][2]:  # number the slices from the other end
        files = sorted(folder.glob("CT.*.dcm"))
        n = len(files)
        tmp = []
        for f in files:
            ds = pydicom.dcmread(f)
            ds.InstanceNumber = n + 1 - int(ds.InstanceNumber)
            t = f.with_name(f"tmp.{ds.InstanceNumber:04d}.dcm")
            ds.save_as(t)
            f.unlink()
            tmp.append(t)
        for t in tmp:
            t.rename(t.with_name("CT." + t.name.split(".", 1)[1]))
    return folder


__all__ = ["LAYOUTS", "in_layout", "write_layout"]


def write_rtplan(folder: str | Path, rs_path: str | Path, rx: dict[str, float], fractions: int = 30,
                 name: str = "RP.dcm", by_roi: bool = True) -> Path:
    """A minimal RTPLAN beside an RTSTRUCT: one TARGET dose reference per ``rx`` item (ROI name ->
    TargetPrescriptionDose Gy; with ``by_roi=False`` a SITE reference without ROI), referencing the
    RTSTRUCT, in its FrameOfReference, with one fraction group of ``fractions``."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rs = pydicom.dcmread(rs_path)
    numbers = {str(r.ROIName): int(r.ROINumber) for r in rs.StructureSetROISequence}
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    path = Path(folder) / name
    ds = FileDataset(str(path), {}, file_meta=fm, preamble=b"\0" * 128)
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "RTPLAN"
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, key, getattr(rs, key))
    ds.SeriesInstanceUID = generate_uid()
    ds.RTPlanLabel = "plan"
    ref = Dataset()
    ref.ReferencedSOPClassUID = rs.SOPClassUID
    ref.ReferencedSOPInstanceUID = rs.SOPInstanceUID
    ds.ReferencedStructureSetSequence = Sequence([ref])
    items = []
    for k, (roi, dose) in enumerate(rx.items()):
        d = Dataset()
        d.DoseReferenceNumber = k + 1
        d.DoseReferenceType = "TARGET"
        if by_roi:
            d.DoseReferenceStructureType = "VOLUME"
            d.ReferencedROINumber = numbers[roi]
        else:
            d.DoseReferenceStructureType = "SITE"
        d.TargetPrescriptionDose = f"{dose:g}"
        items.append(d)
    ds.DoseReferenceSequence = Sequence(items)
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = fractions
    ds.FractionGroupSequence = Sequence([fg])
    ds.save_as(path, enforce_file_format=True)
    return path


__all__ += ["write_rtplan"]


def rename_rois(rs_path: str | Path, names: dict[str, str], types: dict[str, str] | None = None) -> None:
    """Rename ROIs of an RTSTRUCT in place (``names``: old -> new), set their RTROIInterpretedType
    (``types``: new name -> type) and drop every ROIObservationDescription (our export's
    "prescription 70 Gy" label), as a planning system's export would hold them."""
    import pydicom

    ds = pydicom.dcmread(rs_path)
    num = {}
    for r in ds.StructureSetROISequence:
        num[int(r.ROINumber)] = names.get(str(r.ROIName), str(r.ROIName))
        r.ROIName = num[int(r.ROINumber)]
    for o in ds.RTROIObservationsSequence:
        if "ROIObservationDescription" in o:
            del o.ROIObservationDescription
        if types and num[int(o.ReferencedROINumber)] in types:
            o.RTROIInterpretedType = types[num[int(o.ReferencedROINumber)]]
    ds.save_as(rs_path)


__all__ += ["rename_rois"]
