"""Malformed DICOM and NIfTI input through the CLI: each case exits with code 2 (or 0 with an explicit
warning where the input is usable), names the file and the field or rule broken, prints no traceback
and leaves no output behind."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dicom_layouts import write_rtplan
from dosepred.cli import app
from dosepred.io import dicom, nifti
from test_dicom import make_patient


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-template")
    p = make_patient()
    d = dicom.write_dicom(p, root / "dcm")
    write_rtplan(d, d / "RS.dcm", {"PTV70": 70.0})
    n = nifti.write_patient(p, root / "nii")
    c = nifti.write_patient(p, root / "nii-codes", "codes")
    return {"dicom": d, "nifti": n, "codes": c}


def edit(path: Path, fn: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def edit_all_ct(folder: Path, fn: Callable[[pydicom.Dataset], None]) -> None:
    for f in sorted(folder.glob("CT.*.dcm")):
        edit(f, fn)


def run(args: list[str]):
    return CliRunner().invoke(app, args)


def flat(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------------------- DICOM

def _no_scaling(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: delattr(ds, "DoseGridScaling"))


def _zero_scaling(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: setattr(ds, "DoseGridScaling", "0"))


def _huge_dose(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: setattr(ds, "DoseGridScaling", "1"))


def _overflowing_dose(f: Path) -> None:  # stored values x 1e38 exceed float32's 3.4e38
    edit(f / "RD.dcm", lambda ds: setattr(ds, "DoseGridScaling", "1e38"))


def _short_offsets(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: setattr(ds, "GridFrameOffsetVector", list(ds.GridFrameOffsetVector)[:-1]))


def _irregular_offsets(f: Path) -> None:
    def fn(ds):
        off = [float(v) for v in ds.GridFrameOffsetVector]
        off[5] += 1.0
        ds.GridFrameOffsetVector = off
    edit(f / "RD.dcm", fn)


def _rd_degenerate_iop(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]))


def _relative_units(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: setattr(ds, "DoseUnits", "RELATIVE"))


def _cgy_units(f: Path) -> None:  # no DICOM value (GY, RELATIVE): the refusal called it a relative dose
    edit(f / "RD.dcm", lambda ds: setattr(ds, "DoseUnits", "CGY"))


def _rd_other_frame(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: setattr(ds, "FrameOfReferenceUID", pydicom.uid.generate_uid()))


def _ct_degenerate_iop(f: Path) -> None:
    edit_all_ct(f, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]))


def _ct_iop_not_unit(f: Path) -> None:
    edit_all_ct(f, lambda ds: setattr(ds, "ImageOrientationPatient", [2, 0, 0, 0, 1, 0]))


def _ct_iop_five(f: Path) -> None:
    edit_all_ct(f, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1]))


def _ct_pixel_spacing_zero(f: Path) -> None:
    edit_all_ct(f, lambda ds: setattr(ds, "PixelSpacing", [0, 2]))


def _ct_no_ipp(f: Path) -> None:
    edit(f / "CT.0007.dcm", lambda ds: delattr(ds, "ImagePositionPatient"))


def _ct_slice_turned(f: Path) -> None:
    edit(f / "CT.0003.dcm", lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 1, 0, 0]))


def _ct_slice_other_size(f: Path) -> None:
    edit(f / "CT.0003.dcm", lambda ds: setattr(ds, "Rows", int(ds.Rows) - 1))


def _ct_slice_duplicate(f: Path) -> None:
    pos = list(pydicom.dcmread(f / "CT.0003.dcm").ImagePositionPatient)
    edit(f / "CT.0004.dcm", lambda ds: setattr(ds, "ImagePositionPatient", pos))


def _ct_slice_shifted(f: Path) -> None:
    def fn(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + 5.0, y, z]  # in-plane: the slice is not on the stack
    edit(f / "CT.0004.dcm", fn)


def _rd_no_offsets(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: delattr(ds, "GridFrameOffsetVector"))


def _contour(ds, roi: str = "PTV70"):
    num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi)
    rc = next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == num)
    return rc.ContourSequence[0]


def _ragged(f: Path) -> None:
    def fn(ds):
        c = _contour(ds)
        c.ContourData = list(c.ContourData) + ["1.5"]
    edit(f / "RS.dcm", fn)


def _npoints(f: Path) -> None:
    def fn(ds):
        c = _contour(ds)
        c.NumberOfContourPoints = int(c.NumberOfContourPoints) + 4
    edit(f / "RS.dcm", fn)


def _no_contour_data(f: Path) -> None:
    edit(f / "RS.dcm", lambda ds: delattr(_contour(ds), "ContourData"))


def _absent_images(f: Path) -> None:
    for g in sorted(f.glob("CT.*.dcm"))[1:]:
        g.unlink()


def _rs_other_frame(f: Path) -> None:
    def fn(ds):
        other = pydicom.uid.generate_uid()
        ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other
        for r in ds.StructureSetROISequence:
            r.ReferencedFrameOfReferenceUID = other
    edit(f / "RS.dcm", fn)


def _rp_other_frame(f: Path) -> None:
    edit(f / "RP.dcm", lambda ds: setattr(ds, "FrameOfReferenceUID", pydicom.uid.generate_uid()))


def _rp_cgy(f: Path) -> None:
    edit(f / "RP.dcm", lambda ds: setattr(ds.DoseReferenceSequence[0], "TargetPrescriptionDose", "7000"))


def _rp_negative(f: Path) -> None:
    edit(f / "RP.dcm", lambda ds: setattr(ds.DoseReferenceSequence[0], "TargetPrescriptionDose", "-60"))


def _poison(path: Path, setter: Callable[[pydicom.Dataset, str], None], bad: bytes = b"abc.def") -> None:
    """Set an integer (IS) field to ``bad``: written as a sentinel number, then its bytes replaced (pydicom
    would not write a non-number into an IS itself)."""
    ds = pydicom.dcmread(path)
    setter(ds, "7777777")
    ds.save_as(path)
    data = path.read_bytes()
    assert data.count(b"7777777") == 1
    path.write_bytes(data.replace(b"7777777", bad))


def _rs_roinumber_text(f: Path) -> None:
    _poison(f / "RS.dcm", lambda ds, v: setattr(ds.StructureSetROISequence[1], "ROINumber", v))


def _rs_roinumber_overflow(f: Path) -> None:  # an IS pydicom itself cannot convert (int() overflows)
    _poison(f / "RS.dcm", lambda ds, v: setattr(ds.StructureSetROISequence[1], "ROINumber", v), b"1e400  ")


def _rs_contour_ref_text(f: Path) -> None:
    _poison(f / "RS.dcm", lambda ds, v: setattr(ds.ROIContourSequence[1], "ReferencedROINumber", v))


def _rs_observation_ref_text(f: Path) -> None:
    _poison(f / "RS.dcm", lambda ds, v: setattr(ds.RTROIObservationsSequence[1], "ReferencedROINumber", v))


def _rs_npoints_text(f: Path) -> None:
    _poison(f / "RS.dcm", lambda ds, v: setattr(_contour(ds), "NumberOfContourPoints", v))


def _rp_roi_ref_text(f: Path) -> None:
    _poison(f / "RP.dcm", lambda ds, v: setattr(ds.DoseReferenceSequence[0], "ReferencedROINumber", v))


def _rs_no_roi_sequence(f: Path) -> None:  # contours without the ROIs that name them
    edit(f / "RS.dcm", lambda ds: delattr(ds, "StructureSetROISequence"))


def _negative_dose(f: Path) -> None:  # a signed RTDOSE (a dose difference) with negative voxels
    def fn(ds):
        arr = (ds.pixel_array // 2).astype(np.int32)  # uint32 values up to 2^32 fit int32 halved
        ds.DoseGridScaling = f"{2 * float(ds.DoseGridScaling):.10g}"
        arr[0, 0, :4] = -1000
        ds.PixelRepresentation = 1
        ds.BitsAllocated = ds.BitsStored = 32
        ds.HighBit = 31
        ds.PixelData = arr.astype("<i4").tobytes()
    edit(f / "RD.dcm", fn)


def _ct_junk(f: Path) -> None:
    (f / "CT.0005.dcm").write_bytes(b"not a DICOM file, saved over a slice")


def _ct_empty(f: Path) -> None:
    (f / "CT.0005.dcm").write_bytes(b"")


def _ct_truncated(f: Path) -> None:
    data = (f / "CT.0005.dcm").read_bytes()
    (f / "CT.0005.dcm").write_bytes(data[:600])


def _cut_at_item(path: Path, where: float) -> None:
    """``path`` cut where a copy interrupted between two sequence items leaves it: at the item start
    nearest before ``where`` (a fraction of its size)."""
    data = path.read_bytes()
    path.write_bytes(data[:data.rfind(b"\xfe\xff\x00\xe0", 0, int(len(data) * where))])


def _rs_truncated(f: Path) -> None:
    _cut_at_item(f / "RS.dcm", 2 / 3)


def _rp_truncated(f: Path) -> None:
    _cut_at_item(f / "RP.dcm", 1.0)


DICOM_ERRORS = [
    ("rtdose-no-scaling", _no_scaling, r"RD\.dcm lacks DoseGridScaling"),
    ("rtdose-zero-scaling", _zero_scaling, r"RD\.dcm: DoseGridScaling must be > 0"),
    ("rtdose-huge", _huge_dose, r"RD\.dcm: maximum dose .* Gy .* is not a radiotherapy dose"),
    ("rtdose-overflow", _overflowing_dose, r"RD\.dcm: dose values overflow \(DoseGridScaling 1e\+38\)"),
    ("rtdose-offsets-short", _short_offsets, r"RD\.dcm: GridFrameOffsetVector has 31 values for 32 frames"),
    ("rtdose-offsets-irregular", _irregular_offsets, r"RD\.dcm: GridFrameOffsetVector is not a regular"),
    ("rtdose-degenerate-iop", _rd_degenerate_iop, r"RD\.dcm: degenerate ImageOrientationPatient"),
    ("rtdose-relative", _relative_units, r"RD\.dcm: DoseUnits is RELATIVE, not GY \(a relative dose"),
    ("rtdose-cgy", _cgy_units, r"RD\.dcm: DoseUnits is CGY, not GY \(DICOM's DoseUnits are GY or RELATIVE; "
                               r"read as Gy, a dose in cGy would be 100 x too high\): export the dose "
                               r"in Gy, or, for a dose in cGy, set DoseUnits to GY and divide"),
    ("rtdose-other-frame", _rd_other_frame,
     r"RTDOSE .*RD\.dcm has FrameOfReference .*, but the referenced RT(PLAN|STRUCT) lies on CT series"),
    ("ct-degenerate-iop", _ct_degenerate_iop, r"CT\.0001\.dcm: degenerate ImageOrientationPatient"),
    ("ct-iop-not-unit", _ct_iop_not_unit, r"CT\.0001\.dcm: degenerate ImageOrientationPatient .*not a unit"),
    ("ct-iop-five-numbers", _ct_iop_five, r"CT\.0001\.dcm: ImageOrientationPatient must hold 6 numbers"),
    ("ct-pixel-spacing-zero", _ct_pixel_spacing_zero, r"CT\.0001\.dcm: PixelSpacing must be positive"),
    ("ct-no-position", _ct_no_ipp, r"CT\.0007\.dcm lacks ImagePositionPatient"),
    ("ct-slice-turned", _ct_slice_turned,
     r"CT\.0003\.dcm has ImageOrientationPatient \[0\.0, 1\.0, 0\.0, 1\.0, 0\.0, 0\.0\], other slices "
     r"\[1\.0, 0\.0, 0\.0, 0\.0, 1\.0, 0\.0\]"),
    ("ct-slice-other-size", _ct_slice_other_size, r"CT\.0003\.dcm is \d+x\d+, other slices \d+x\d+"),
    ("ct-slice-duplicate", _ct_slice_duplicate,
     r"CT\.000[34]\.dcm and \S*CT\.000[34]\.dcm are at the same slice position .* \(duplicate slices\?\)"),
    ("ct-slice-shifted", _ct_slice_shifted, r"slice origins are not stacked along the slice normal"),
    ("rtdose-no-offsets", _rd_no_offsets, r"RD\.dcm has \d+ frames but no GridFrameOffsetVector"),
    ("contour-ragged", _ragged, r"RS\.dcm: ROI PTV70 \(ROINumber 2\) contour 1: ContourData holds \d+ "
     r"numbers, not a list of \(x, y, z\) triples"),
    ("contour-npoints", _npoints,
     r"RS\.dcm: ROI PTV70 .* NumberOfContourPoints is \d+ but ContourData holds"),
    ("contour-no-data", _no_contour_data, r"RS\.dcm: ROI PTV70 .* has no ContourData"),
    ("referenced-images-absent", _absent_images,
     r"RS\.dcm references 32 images of CT series .*, but 31 of them are not under"),
    ("rtstruct-other-frame", _rs_other_frame,
     r"RS\.dcm references CT series .* the contours belong to another CT"),
    ("rtplan-other-frame", _rp_other_frame, r"RTPLAN .*RP\.dcm has FrameOfReference .*, but the RTSTRUCT"),
    ("rtplan-rx-cgy", _rp_cgy,
     r"RP\.dcm: DoseReferenceSequence item 1: TargetPrescriptionDose 7000 Gy is not a prescription"),
    ("ct-slice-junk", _ct_junk, r"the CT series is incomplete; beside it, 1 file\(s\) are not readable "
     r"DICOM: \S*CT\.0005\.dcm \(not a DICOM file\)"),
    ("ct-slice-empty", _ct_empty, r"the CT series is incomplete; beside it, 1 file\(s\) are not readable "
     r"DICOM: \S*CT\.0005\.dcm \(empty, 0 bytes\)"),
    ("ct-slice-truncated", _ct_truncated, r"CT file \S*CT\.0005\.dcm has no SeriesInstanceUID \(a "
     r"truncated or damaged file\? 600 bytes\)"),
    ("rtstruct-truncated", _rs_truncated,  # was read as a structure set of its first ROIs' contours
     r"RTSTRUCT file \S*RS\.dcm is truncated \(\d+ bytes\): its element \(3006,0039\) ROIContourSequence "
     r"declares \d+ bytes, the file holds \d+ of them, so what follows is missing \(a file still being "
     r"copied"),
    ("rtplan-truncated", _rp_truncated,
     r"RTPLAN file \S*RP\.dcm is truncated \(\d+ bytes\): its element \(300[0-9A-F],[0-9A-F]{4}\) \w+ "
     r"declares"),
    ("rtplan-rx-negative", _rp_negative,
     r"RP\.dcm: DoseReferenceSequence item 1: TargetPrescriptionDose -60"),
    ("rtstruct-roinumber-text", _rs_roinumber_text,
     r"patient pt_a: RTSTRUCT \S*RS\.dcm: StructureSetROISequence item 2: ROINumber is 'abc\.def', not a "
     r"whole number"),
    ("rtstruct-roinumber-overflow", _rs_roinumber_overflow,
     r"StructureSetROISequence item 2: ROINumber is '1e400', not a whole number"),
    ("rtstruct-contour-ref-text", _rs_contour_ref_text,
     r"RS\.dcm: ROIContourSequence item 2: ReferencedROINumber is 'abc\.def', not a whole number"),
    ("rtstruct-observation-ref-text", _rs_observation_ref_text,
     r"RS\.dcm: RTROIObservationsSequence item 2: ReferencedROINumber is 'abc\.def', not a whole number"),
    ("rtstruct-npoints-text", _rs_npoints_text,
     r"RS\.dcm: ROI PTV70 \(ROINumber \d+\) contour 1: NumberOfContourPoints is 'abc\.def', not a whole "
     r"number"),
    ("rtplan-roi-ref-text", _rp_roi_ref_text,
     r"RP\.dcm DoseReferenceSequence item 1: ReferencedROINumber is 'abc\.def', not a whole number"),
    ("rtstruct-no-roi-sequence", _rs_no_roi_sequence,
     r"RS\.dcm has contours \(ROIContourSequence, ReferencedROINumber 1, 2, 3, 4\) but no "
     r"StructureSetROISequence: its ROIs have no names"),
    ("rtdose-negative", _negative_dose,
     r"patient pt_a: RTDOSE \S*RD\.dcm: the dose holds negative values \(min -?\d[\d.e+-]* Gy, 4 voxels; "
     r"PixelRepresentation 1\): a dose is >= 0 Gy"),
]


@pytest.mark.parametrize("name,mutate,message", DICOM_ERRORS, ids=[c[0] for c in DICOM_ERRORS])
def test_bad_dicom_is_rejected(template, tmp_path, name, mutate, message):
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    mutate(src)
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert "Traceback" not in res.output and not isinstance(res.exception, (AssertionError, TypeError))
    assert re_search(message, text), text
    assert not (out / "dataset.json").exists()  # no cache written (an empty --out: see issue 14)


def test_contour_of_two_points_is_ignored_with_a_warning(template, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)

    def fn(ds):
        c = _contour(ds, "LeftParotid")
        c.ContourData = list(c.ContourData)[:6]
        c.NumberOfContourPoints = 2
    edit(src / "RS.dcm", fn)
    res = run(["data", "import-dicom", str(src), "--out", str(tmp_path / "c"), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert re_search(r"warning: RTSTRUCT .*RS\.dcm: 1 contour\(s\) of ROI LeftParotid have fewer than 3 "
                     r"points \(ContourData\)", text)


def test_contours_of_an_roi_without_a_name_are_named_in_a_warning(template, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)

    def fn(ds):
        extra = pydicom.Dataset()
        extra.ReferencedROINumber = 99
        extra.ContourSequence = pydicom.Sequence([_contour(ds, "LeftParotid")])
        ds.ROIContourSequence.append(extra)
    edit(src / "RS.dcm", fn)
    res = run(["data", "import-dicom", str(src), "--out", str(tmp_path / "c"), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert re_search(r"warning: RTSTRUCT \S*RS\.dcm: the contours of ReferencedROINumber 99 "
                     r"\(ROIContourSequence\) belong to no ROI of StructureSetROISequence: they have no name "
                     r"and are ignored", text), text


def test_contours_beyond_the_field_of_view_are_named_in_a_warning(template, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)

    moved: list[int] = []

    def fn(ds):  # every PTV70 contour moved 40 mm to the patient's right, past the CT's first column
        num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "PTV70")
        rc = next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == num)
        for c in rc.ContourSequence:
            pts = [float(v) for v in c.ContourData]
            c.ContourData = [v - 40.0 if i % 3 == 0 else v for i, v in enumerate(pts)]
        moved.append(len(rc.ContourSequence))
    edit(src / "RS.dcm", fn)
    (n,) = moved
    res = run(["data", "import-dicom", str(src), "--out", str(tmp_path / "c"), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert re_search(rf"warning: RTSTRUCT \S*RS\.dcm: {n} contour\(s\) of ROI PTV70 reach beyond the CT's "
                     r"field of view", text), text


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_rtdose_shared_frame_without_references_is_not_guessed(template, tmp_path):
    """Two CT series in one FrameOfReference and an RTDOSE that references neither's plan or
    structure set: not given to the first match, a warning names it."""
    a = tmp_path / "in" / "a"
    shutil.copytree(template["dicom"], a)
    (a / "RP.dcm").unlink()
    b = tmp_path / "in" / "b"
    shutil.copytree(a, b)
    (b / "RD.dcm").unlink()
    series, rs_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    edit_all_ct(b, lambda ds: setattr(ds, "SeriesInstanceUID", series))

    def rs(ds):
        ds.SOPInstanceUID = rs_uid
        ds.file_meta.MediaStorageSOPInstanceUID = rs_uid
        ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
            .RTReferencedSeriesSequence[0].SeriesInstanceUID = series
    edit(b / "RS.dcm", rs)
    for f in b.glob("CT.*.dcm"):  # other SOP instances
        edit(f, lambda ds: setattr(ds, "SOPInstanceUID", pydicom.uid.generate_uid()))
    edit(b / "RS.dcm", lambda ds: delattr(
        ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0],
        "ContourImageSequence"))
    edit(a / "RD.dcm", lambda ds: delattr(ds, "ReferencedStructureSetSequence"))
    res = run(["data", "import-dicom", str(tmp_path / "in"), "--out", str(tmp_path / "c"), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert re_search(r"warning: RTDOSE .*RD\.dcm references no RTPLAN/RTSTRUCT .* shared by 2 CT series; not "
                     r"used", text), text
    assert "dose no" in text and "dose yes" not in text


# -------------------------------------------------------------------------------------- NIfTI

def _nii_edit(path: Path, affine: np.ndarray | None = None, data: np.ndarray | None = None) -> None:
    img = nib.load(path)
    arr = np.asarray(img.dataobj) if data is None else data
    aff = img.affine if affine is None else affine
    new = nib.Nifti1Image(arr, aff)
    new.set_sform(aff, code=1)
    new.set_qform(aff, code=1)
    nib.save(new, path)


def _shift_dose(f: Path) -> None:
    aff = nib.load(f / "ct.nii.gz").affine.copy()
    aff[0, 3] += 40.0
    _nii_edit(f / "dose.nii.gz", aff)


def _shear_dose(f: Path) -> None:
    aff = nib.load(f / "ct.nii.gz").affine.copy()
    c0, c1 = aff[:3, 0].copy(), aff[:3, 1].copy()
    th = np.arccos(0.88)  # column 1 tilted towards column 0, same length: voxel volume x 0.88
    aff[:3, 1] = np.cos(th) * c1 + np.sin(th) * c0 / np.linalg.norm(c0) * np.linalg.norm(c1)
    _nii_edit(f / "dose.nii.gz", aff)


def _shear_all(f: Path) -> None:
    """Every file of the patient on one sheared grid (a gantry-tilted CT stored as a volume): the files
    agree with each other, but no voxel is the box its spacing says."""
    aff = nib.load(f / "ct.nii.gz").affine.copy()
    c0, c1 = aff[:3, 0].copy(), aff[:3, 1].copy()
    th = np.arccos(0.88)
    aff[:3, 1] = np.cos(th) * c1 + np.sin(th) * c0 / np.linalg.norm(c0) * np.linalg.norm(c1)
    for g in [f / "ct.nii.gz", f / "dose.nii.gz", f / "possible_dose_mask.nii.gz", *(f / "rois").glob("*")]:
        _nii_edit(g, aff)
    info = json.loads((f / "rois.json").read_text())
    info.pop("geometry", None)
    (f / "rois.json").write_text(json.dumps(info))


def _mask_permuted(f: Path) -> None:
    aff = nib.load(f / "ct.nii.gz").affine.copy()
    _nii_edit(f / "possible_dose_mask.nii.gz", aff[:, [1, 0, 2, 3]])


def _label_elsewhere(f: Path) -> None:
    aff = nib.load(f / "ct.nii.gz").affine.copy()
    aff[2, 3] -= 7.5
    _nii_edit(f / "rois" / "PTV70.nii.gz", aff)


def _unknown_label(f: Path) -> None:
    shutil.copy(f / "rois" / "Ring.nii.gz", f / "rois" / "Couch_top.nii.gz")


def _ct_zero_axis(f: Path) -> None:
    aff = nib.load(f / "ct.nii.gz").affine.copy()
    aff[:3, 2] = 0
    img = nib.load(f / "ct.nii.gz")
    hdr = img.header.copy()
    hdr.set_qform(None, code=0)  # nibabel cannot store a degenerate qform; the sform holds it
    hdr.set_sform(aff, code=1)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, hdr), f / "ct.nii.gz")


def _codes_extra_bit(f: Path) -> None:
    img = nib.load(f / "roi_codes.nii.gz")
    codes = np.asarray(img.dataobj).copy()
    codes[3, 3, 3] |= 1 << 3  # bit 3: the sidecar lists 3 ROIs (bits 0-2)
    _nii_edit(f / "roi_codes.nii.gz", data=codes)


def _codes_negative(f: Path) -> None:
    codes = np.asarray(nib.load(f / "roi_codes.nii.gz").dataobj).astype(np.int16)
    codes[3, 3, 3] = -1  # all 16 bits set, read as signed
    _nii_edit(f / "roi_codes.nii.gz", data=codes)


def _sidecar_geometry_degenerate(f: Path) -> None:
    info = json.loads((f / "rois.json").read_text())
    info["geometry"]["direction"] = [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    (f / "rois.json").write_text(json.dumps(info))


def _dose_4d(f: Path) -> None:
    dose = np.asarray(nib.load(f / "dose.nii.gz").dataobj)
    _nii_edit(f / "dose.nii.gz", data=np.stack([dose, dose], axis=-1))


NIFTI_ERRORS = [
    ("dose-shifted-40mm", "nifti", _shift_dose,
     r"dose\.nii\.gz is not on the grid of .*ct\.nii\.gz \(origin 40 mm apart\)"),
    ("dose-sheared-12pct", "nifti", _shear_dose,
     r"dose\.nii\.gz is not on the grid of .*ct\.nii\.gz \(voxel volume .* \(-12\.0 %\)"),
    ("ct-sheared", "nifti", _shear_all,
     r"ct\.nii\.gz: the affine is not a grid dosepred can measure on: its array axes 0 and 1 are 61\.6 "
     r"degrees apart, not 90: a sheared grid \(e\.g\. a CT with gantry tilt\), whose voxels hold .* mm3, "
     r"not the .* mm3 of their spacing \(\+13\.6 %\)"),
    ("mask-axes-permuted", "nifti", _mask_permuted,
     r"possible_dose_mask\.nii\.gz is not on the grid of .*ct\.nii\.gz"),
    ("label-elsewhere", "nifti", _label_elsewhere,
     r"rois/PTV70\.nii\.gz is not on the grid of .*ct\.nii\.gz"),
    ("label-unknown", "nifti", _unknown_label,
     r"label file .*rois/Couch_top\.nii\.gz names ROI 'Couch_top', which is neither listed in .*rois\.json"),
    ("ct-zero-axis", "nifti", _ct_zero_axis, r"ct\.nii\.gz: invalid affine"),
    ("codes-extra-bit", "codes", _codes_extra_bit,
     r"roi_codes\.nii\.gz sets bit\(s\) \[3\], but .*rois\.json lists only 3 ROIs"),
    ("codes-negative", "codes", _codes_negative, r"pt_a: \S*roi_codes\.nii\.gz must hold unsigned integers"),
    ("sidecar-geometry-degenerate", "nifti", _sidecar_geometry_degenerate,
     r"rois\.json: invalid geometry: degenerate orientation: array axes are \(nearly\) parallel"),
    ("dose-4d", "nifti", _dose_4d, r"dose \S*dose\.nii\.gz must be 3-D, got shape \(\d+, \d+, \d+, 2\)"),
]


@pytest.mark.parametrize("name,kind,mutate,message", NIFTI_ERRORS, ids=[c[0] for c in NIFTI_ERRORS])
def test_bad_nifti_is_rejected(template, tmp_path, name, kind, mutate, message):
    src = tmp_path / "in" / "pt_a"
    shutil.copytree(template[kind], src)
    mutate(src)
    out = tmp_path / "cache"
    res = run(["data", "import-nifti", str(tmp_path / "in"), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert "Traceback" not in res.output
    assert re_search(message, text), text
    assert not (out / "dataset.json").exists()  # no cache written (an empty --out: see issue 14)


# ---------------------------------------------------------------------------- evaluate RTDOSE

def _proto(tmp_path: Path) -> Path:
    f = tmp_path / "proto.json"
    f.write_text(json.dumps({"name": "t", "criteria": [
        {"roi": "PTV70", "metric": "D95%", "limit": 66.5, "direction": ">="}]}))
    return f


def test_evaluate_two_rtdoses_for_one_patient(template, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(template["dicom"], ref / "pt_a")
    (p,) = dicom.read_dicom_folder(ref)
    dicom.write_rtdose(p, p.dose, tmp_path / "pred" / "x.dcm")
    dicom.write_rtdose(p, p.dose * 0.5, tmp_path / "pred" / "y.dcm")
    res = run(["evaluate", "--reference", str(ref), "--prediction", str(tmp_path / "pred"),
               "--protocol", str(_proto(tmp_path)), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert re_search(r"patient pt_a: 2 RTDOSE files match by referenced RTSTRUCT \(.*x\.dcm, .*y\.dcm\)",
                     text)
    assert "Traceback" not in res.output


def test_evaluate_rtdose_without_scaling(template, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(template["dicom"], ref / "pt_a")
    (p,) = dicom.read_dicom_folder(ref)
    f = dicom.write_rtdose(p, p.dose, tmp_path / "pred" / "x.dcm")
    edit(f, lambda ds: delattr(ds, "DoseGridScaling"))
    res = run(["evaluate", "--reference", str(ref), "--prediction", str(tmp_path / "pred"),
               "--protocol", str(_proto(tmp_path)), "--no-progress", "--json", str(tmp_path / "e.json")])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert re_search(r"RTDOSE .*x\.dcm lacks DoseGridScaling", text)
    assert "Traceback" not in res.output and not (tmp_path / "e.json").exists()


def _dvh_only(src: Path, name: str) -> Path:
    """A copy of ``src``'s RTDOSE as an RTDOSE of DVHs only (no dose image: PS3.3 A.18.3 makes it
    optional), of the same plan, as file ``name``."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(src / "RD.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for key in ("PixelData", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored",
                "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                "FrameIncrementPointer", "GridFrameOffsetVector", "DoseGridScaling", "ImagePositionPatient",
                "ImageOrientationPatient", "PixelSpacing"):
        if key in ds:
            delattr(ds, key)
    dvh = Dataset()
    dvh.DVHType, dvh.DoseUnits, dvh.DoseType, dvh.DVHDoseScaling = "CUMULATIVE", "GY", "PHYSICAL", 1
    dvh.DVHVolumeUnits, dvh.DVHNumberOfBins, dvh.DVHData = "CM3", 1, [70, 10]
    ds.DVHSequence = Sequence([dvh])
    ds.save_as(src / name)
    return src / name


def test_an_rtdose_of_dvhs_only_is_no_dose_grid(template, tmp_path):
    """An RTDOSE holding DVHs and no dose image (valid DICOM) beside the plan's dose grid, its file
    sorted first: the import was refused ('lacks DoseGridScaling ... the stored integers are no doses');
    it is now left out with a warning and the grid is the dose (as pydicom reads it). Alone it leaves
    the patient without dose; read_rtdose (evaluate) says it holds no dose grid."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    rd = pydicom.dcmread(src / "RD.dcm")
    want = rd.pixel_array * float(rd.DoseGridScaling)
    dvh = _dvh_only(src, "DVH.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"RTDOSE .*DVH\.dcm: no dose grid .*not used"):
        (p,) = dicom.read_dicom_folder(src)
    np.testing.assert_allclose(p.dose[p.possible_dose_mask], want[p.possible_dose_mask], atol=1e-5)
    (src / "RD.dcm").unlink()
    with pytest.warns(dicom.DicomWarning, match=r"RTDOSE .*DVH\.dcm: no dose grid .*not used"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.dose is None
    with pytest.raises(dicom.DicomImportError, match=r"DVH\.dcm holds no dose grid \(no PixelData: DVHs"):
        dicom.read_rtdose(dvh)


# --------------------------------------------------------------------------- sequential boost

def _boost(src: Path, relation: str | None, phase2_dose: bool = True, rx1: dict[str, float] | None = None,
           rx2: dict[str, float] | None = None) -> None:
    """A sequential boost on one CT: phase 1 (RP1: PTV70 50 Gy in 25 fractions, RD1 = 50/70 of the
    exported dose) then phase 2 (RP2: PTV70 20 Gy in 10 fractions, RD2 = 20/70 of it), RP2 naming RP1
    with ``relation`` (RTPlanRelationship; None: no reference, as many exports). ``rx1`` / ``rx2``:
    the phases' prescriptions instead (ROI name -> Gy)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    rd_path = src / "RD.dcm"
    scaling = float(pydicom.dcmread(rd_path).DoseGridScaling)
    rp1 = pydicom.dcmread(write_rtplan(src, src / "RS.dcm", rx1 or {"PTV70": 50.0}, fractions=25,
                                       name="RP1.dcm"))
    rp2_path = write_rtplan(src, src / "RS.dcm", rx2 or {"PTV70": 20.0}, fractions=10, name="RP2.dcm")
    (src / "RP.dcm").unlink(missing_ok=True)
    if relation is not None:
        def ref(ds):
            r = Dataset()
            r.ReferencedSOPClassUID = rp1.SOPClassUID
            r.ReferencedSOPInstanceUID = rp1.SOPInstanceUID
            r.RTPlanRelationship = relation
            ds.ReferencedRTPlanSequence = Sequence([r])
        edit(rp2_path, ref)
    rp2 = pydicom.dcmread(rp2_path)
    for name, plan, part in (("RD1.dcm", rp1, 50 / 70), ("RD2.dcm", rp2, 20 / 70)):
        if name == "RD2.dcm" and not phase2_dose:
            continue
        d = pydicom.dcmread(rd_path)
        d.SOPInstanceUID = d.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        d.DoseGridScaling = f"{scaling * part:.10g}"
        r = Dataset()
        r.ReferencedSOPClassUID = plan.SOPClassUID
        r.ReferencedSOPInstanceUID = plan.SOPInstanceUID
        d.ReferencedRTPlanSequence = Sequence([r])
        d.save_as(src / name)
    rd_path.unlink()


@pytest.mark.parametrize("relation", ["PRIOR", "CONCURRENT"])
def test_sequential_boost_that_says_it_adds_up_is_summed(template, tmp_path, relation):
    """Two RTPLANs with their RTDOSEs on one CT whose later plan names the earlier PRIOR (or
    CONCURRENT): the patient's dose is their sum, its prescription 50 + 20 = 70 Gy, 35 fractions (one
    phase alone was taken before: 50/70 of the dose, Rx 50 Gy)."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    _boost(src, relation)
    (p,) = dicom.read_dicom_folder(src)
    np.testing.assert_allclose(p.dose, ref.dose, atol=1e-3)
    assert p.roi_set["PTV70"].prescription == 70.0 and p.meta["rtplan_fractions"] == [25, 10]
    # phases one after the other (PRIOR): 25 + 10 fractions; concurrent plans may share their sessions,
    # so their count is not the sum (it was taken as 35 for both)
    assert p.meta.get("fractions") == (35 if relation == "PRIOR" else None)
    assert len(p.meta["rtdose_files"]) == 2 and len(p.meta["rtplan_files"]) == 2
    # evaluated as their sum: the reference's own dose scores 0
    res = run(["evaluate", "--reference", str(src), "--prediction", str(template["dicom"]), "--no-progress",
               "--json", str(tmp_path / "e.json"), "--protocol", str(_proto(tmp_path))])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["dose_score"] < 1e-3


def test_sequential_boost_without_a_relationship_is_refused(template, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _boost(src, None)
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert "Traceback" not in res.output
    assert re_search(r"CT series .*: 2 RTPLANs each with their own dose \(RTPLAN .*RP1\.dcm with RTDOSE "
                     r".*RD1\.dcm; RTPLAN .*RP2\.dcm with RTDOSE .*RD2\.dcm\), and nothing says how they "
                     r"relate", text), text
    assert "MULTI_PLAN" in text and "RTPlanRelationship PRIOR or CONCURRENT" in text
    assert not (out / "dataset.json").exists()


def test_a_boost_phase_without_the_others_dose_is_not_the_patients_dose(template, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _boost(src, "PRIOR", phase2_dose=False)
    with pytest.warns(dicom.DicomWarning, match=r"RD1\.dcm is the dose of RTPLAN .*RP1\.dcm, which adds up "
                                                r"with RTPLAN .*RP2\.dcm .* not used"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.dose is None and p.roi_set["PTV70"].prescription == 70.0


def test_a_plan_without_dose_that_nothing_relates_to_the_used_one_is_named(template, tmp_path):
    """RP1 with its RTDOSE beside RP2 (no dose, no RTPlanRelationship): RP1's dose (50/70 of the plan)
    and its 50 Gy are used, consistent with each other, so no check notices if RP2 is the boost; RP2
    was left out without a word. A re-plan's predecessor (related) is not named."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _boost(src, None, phase2_dose=False)
    with pytest.warns(dicom.DicomWarning, match=r"RTPLAN .*RP2\.dcm has no plan dose in the folder and "
                                                r"nothing says how it relates to RTPLAN .*RP1\.dcm "
                                                r"\(RTPlanRelationship\), whose RTDOSE .*RD1\.dcm"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.roi_set["PTV70"].prescription == 50.0 and p.dose is not None
    src2 = tmp_path / "in2"
    shutil.copytree(template["dicom"], src2)
    _boost(src2, "PREDECESSOR")
    (src2 / "RD1.dcm").unlink()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        (p,) = dicom.read_dicom_folder(src2)
    assert p.roi_set["PTV70"].prescription == 20.0
    assert not [w for w in seen if "nothing says how it relates" in str(w.message)]


def test_a_boost_phase_beside_a_dose_that_references_no_plan_names_that_dose(template, tmp_path):
    """RD2 (the boost's dose) references no RTPLAN: which phase it is cannot be told, so RD1 alone is one
    phase and not used; the warning names RD2 and why (it said RP2's dose 'is not in the folder')."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _boost(src, "PRIOR")
    edit(src / "RD2.dcm", lambda ds: delattr(ds, "ReferencedRTPlanSequence"))
    with pytest.warns(dicom.DicomWarning, match=r"RD1\.dcm is the dose of RTPLAN .*RP1\.dcm, .*whose dose "
                                                r"cannot be told: RTDOSE .*RD2\.dcm references no RTPLAN"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.dose is None


def test_boost_phases_doses_that_reference_no_plan_are_not_the_patients_dose(template, tmp_path):
    """RP1 and RP2 say they add up (PRIOR), and their PLAN doses reference no RTPLAN: the first by path,
    RD1 (phase 1, 51.2 Gy max of the 71.7 Gy sum), was the patient's dose, with the name's 70 Gy (the
    prescription check only warns at 0.64 x). Which dose is which phase cannot be told: none is used, a
    warning names both; the prescriptions add up (50 + 20 Gy), as for phases without doses."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _boost(src, "PRIOR")
    for name in ("RD1.dcm", "RD2.dcm"):
        edit(src / name, lambda ds: delattr(ds, "ReferencedRTPlanSequence"))
    with pytest.warns(dicom.DicomWarning, match=r"RTDOSE .*RD1\.dcm, .*RD2\.dcm: 2 plan doses referencing no "
                                                r"RTPLAN of the folder, .*which dose is which phase cannot"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.dose is None and p.roi_set["PTV70"].prescription == 70.0


@pytest.mark.parametrize("fractions", ["0", "-5", "2.5"])
def test_a_plan_without_a_positive_number_of_fractions_records_none(template, tmp_path, fractions):
    """NumberOfFractionsPlanned 0, -5 or 2.5 was recorded as the patient's fractions without a word."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    rp = next(src.glob("RP*.dcm"))

    def bad(ds):
        ds.FractionGroupSequence[0].NumberOfFractionsPlanned = fractions
    edit(rp, bad)
    with pytest.warns(dicom.DicomWarning, match=rf"RTPLAN .*{rp.name}: NumberOfFractionsPlanned "
                                                rf"'{fractions}' is not a positive whole number"):
        (p,) = dicom.read_dicom_folder(src)
    assert "fractions" not in p.meta and p.dose is not None


def test_a_plan_of_several_fraction_groups_records_no_number_of_fractions(template, tmp_path):
    """An RTPLAN of two fraction groups (25 + 5 fractions) was recorded as 25 fractions, its first
    group's; whether the groups share sessions is not told, so none is recorded, with a warning."""
    from pydicom.dataset import Dataset

    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    rp = next(src.glob("RP*.dcm"))

    def two_groups(ds):
        ds.FractionGroupSequence[0].NumberOfFractionsPlanned = 25
        g = Dataset()
        g.FractionGroupNumber = 2
        g.NumberOfFractionsPlanned = 5
        ds.FractionGroupSequence.append(g)
    edit(rp, two_groups)
    with pytest.warns(dicom.DicomWarning, match=rf"RTPLAN .*{rp.name}: 2 fraction groups "
                                                r"\(FractionGroupSequence\) of 25 \+ 5 fractions"):
        (p,) = dicom.read_dicom_folder(src)
    assert "fractions" not in p.meta and p.dose is not None and p.roi_set["PTV70"].prescription == 70.0


def test_a_boost_phase_whose_prior_plan_is_not_in_the_folder_is_not_the_patients_dose(template, tmp_path):
    """Only the boost (RP2, 20 Gy in 10 fractions, naming RP1 PRIOR) and its RTDOSE are in the folder:
    its dose is one phase, not the patient's, whether or not the earlier plan was exported; no dose
    and no prescription from it (a warning naming the absent plan). Before, the boost's dose and its
    20 Gy were taken as the patient's."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _boost(src, "PRIOR")
    rp1 = pydicom.dcmread(src / "RP1.dcm").SOPInstanceUID
    (src / "RP1.dcm").unlink()
    (src / "RD1.dcm").unlink()
    with pytest.warns(dicom.DicomWarning, match=rf"RD2\.dcm is the dose of RTPLAN .*RP2\.dcm, which adds up "
                                                rf"with RTPLAN {rp1} .*not in the folder.* neither its dose"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.dose is None and p.roi_set["PTV70"].prescription == 70.0 and "fractions" not in p.meta


def test_a_replan_uses_the_plan_that_replaces_the_other(template, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    _boost(src, "PREDECESSOR")
    with pytest.warns(dicom.DicomWarning, match=r"RTPLAN .*RP2\.dcm replaces .*RP1\.dcm"):
        (p,) = dicom.read_dicom_folder(src)
    np.testing.assert_allclose(p.dose, ref.dose * 20 / 70, atol=1e-3)
    assert p.roi_set["PTV70"].prescription == 20.0 and p.meta["fractions"] == 10


def test_a_replan_whose_replaced_rtplan_is_not_exported_uses_the_new_plans_dose(template, tmp_path):
    """A re-plan exported with both doses but only the new RTPLAN, which names the old one its
    PREDECESSOR: the folder says which dose replaced the other, so the new plan's dose is the patient's
    (the old one's left out with a warning). The check for PLAN doses of absent RTPLANs refused it as if
    nothing said how they relate; without the relationship it still does."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    _boost(src, "PREDECESSOR")
    (src / "RP1.dcm").unlink()
    with pytest.warns(dicom.DicomWarning, match=r"RD1\.dcm is the dose of RTPLAN .*not in the folder.*"
                                                r"RP2\.dcm replaces .*PREDECESSOR"):
        (p,) = dicom.read_dicom_folder(src)
    np.testing.assert_allclose(p.dose, ref.dose * 20 / 70, atol=1e-3)
    assert p.roi_set["PTV70"].prescription == 20.0 and p.meta["fractions"] == 10
    src2 = tmp_path / "in2"
    shutil.copytree(template["dicom"], src2)
    _boost(src2, None)
    (src2 / "RP1.dcm").unlink()
    with pytest.raises(dicom.DicomImportError, match="2 PLAN RTDOSE files of 2 different RTPLANs"):
        dicom.read_dicom_folder(src2)


def test_a_multi_plan_sum_beside_the_phases_is_the_patients_dose(template, tmp_path):
    """The remedy the refusal names: the phases' sum exported as one MULTI_PLAN RTDOSE referencing both
    plans is the patient's dose (before, a PLAN dose of one phase was taken over it), the prescriptions
    of both plans add up."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    shutil.copy(src / "RD.dcm", tmp_path / "sum.dcm")
    _boost(src, None)

    def multi(ds):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.DoseSummationType = "MULTI_PLAN"
        refs = []
        for name in ("RP1.dcm", "RP2.dcm"):
            r = Dataset()
            r.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
            r.ReferencedSOPInstanceUID = pydicom.dcmread(src / name).SOPInstanceUID
            refs.append(r)
        ds.ReferencedRTPlanSequence = Sequence(refs)
    edit(tmp_path / "sum.dcm", multi)
    shutil.copy(tmp_path / "sum.dcm", src / "RD_sum.dcm")
    (p,) = dicom.read_dicom_folder(src)
    assert p.meta["rtdose_file"].endswith("RD_sum.dcm")
    np.testing.assert_allclose(p.dose, ref.dose, atol=1e-4)
    # the RTPLANs do not say the plans follow one another: no total of fractions (it was 25 + 10)
    assert p.roi_set["PTV70"].prescription == 70.0 and "fractions" not in p.meta
    assert p.meta["rtplan_fractions"] == [25, 10]


def test_a_multi_plan_sum_without_all_its_plans_takes_no_plan_s_prescription(template, tmp_path):
    """A MULTI_PLAN sum (50 + 20 Gy) beside only the boost's RTPLAN (20 Gy, 10 fractions): the sum is the
    dose, but the boost's prescription and fractions are not the sum's, so they are not used (a warning
    naming the absent plan; prescriptions from the names). Before, the sum was given the boost's 20 Gy
    and 10 fractions."""
    src = tmp_path / "in"
    test_a_multi_plan_sum_beside_the_phases_is_the_patients_dose(template, tmp_path)
    rp1 = pydicom.dcmread(src / "RP1.dcm").SOPInstanceUID
    (src / "RP1.dcm").unlink()
    (src / "RD1.dcm").unlink()
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    with pytest.warns(dicom.DicomWarning, match=rf"RD_sum\.dcm \(MULTI_PLAN\) sums 2 RTPLANs, 1 of them not "
                                                rf"in the folder \({rp1}\).*prescriptions from the ROI"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.meta["rtdose_file"].endswith("RD_sum.dcm")
    np.testing.assert_allclose(p.dose, ref.dose, atol=1e-4)
    assert p.roi_set["PTV70"].prescription == 70.0 and "fractions" not in p.meta


@pytest.mark.parametrize("listed", ["RP1.dcm", "RP2.dcm"])
def test_a_multi_plan_sum_referencing_one_of_its_plans_takes_no_plan_s_prescription(template, tmp_path,
                                                                                   listed):
    """A MULTI_PLAN sum (50 + 20 Gy, both RTPLANs in the folder) whose ReferencedRTPlanSequence lists only
    one of them: a MULTI_PLAN dose sums two or more plans, so that plan is a part. Its prescription was
    the sum's (PTV70 at 50 Gy or 20 Gy for a dose of 70 Gy, and its 25 or 10 fractions); now none is
    taken from the RTPLANs (a warning), the name gives 70 Gy."""
    from pydicom.sequence import Sequence

    src = tmp_path / "in"
    test_a_multi_plan_sum_beside_the_phases_is_the_patients_dose(template, tmp_path)
    keep = pydicom.dcmread(src / listed).SOPInstanceUID

    def one(ds):
        ds.ReferencedRTPlanSequence = Sequence([r for r in ds.ReferencedRTPlanSequence
                                                if r.ReferencedSOPInstanceUID == keep])
    edit(src / "RD_sum.dcm", one)
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    with pytest.warns(dicom.DicomWarning, match=rf"RD_sum\.dcm \(MULTI_PLAN\) references one RTPLAN "
                                                rf"\(.*{listed}\), not every plan it sums"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.meta["rtdose_file"].endswith("RD_sum.dcm")
    np.testing.assert_allclose(p.dose, ref.dose, atol=1e-4)
    assert p.roi_set["PTV70"].prescription == 70.0 and "fractions" not in p.meta


def _two_target_boost(template: dict[str, Path], src: Path, high: str, low: str) -> None:
    """A sequential boost whose phases prescribe different targets, as planning systems export it: the
    template's PTV70 renamed ``high`` and its ring ``low`` (both RTROIInterpretedType PTV, no
    "prescription" label); phase 1 (RP1, 25 fractions) prescribes 50 Gy to ``low`` only, phase 2 (RP2,
    PRIOR, 10 fractions) 20 Gy to ``high`` only. ``high`` received both phases' dose: 70 Gy."""
    from dicom_layouts import rename_rois

    shutil.copytree(template["dicom"], src)
    rename_rois(src / "RS.dcm", {"PTV70": high, "Ring": low}, {high: "PTV", low: "PTV"})
    _boost(src, "PRIOR", rx1={low: 50.0}, rx2={high: 20.0})


def test_a_boost_whose_phases_prescribe_different_targets_unnamed_is_refused(template, tmp_path):
    """Phase 1 prescribes only the elective PTV (50 Gy), phase 2 only the boost PTV (+20 Gy), whose names
    carry no dose (PTV_High, PTV_Low): the summed prescriptions cannot be told (the boost PTV got phase
    1's dose too), so one error names the patient, the files, the targets and the remedy; an ROI map
    naming them with their total doses imports them. Before, PTV_High was imported silently at 20 Gy
    (the sum taken only over the phases naming it)."""
    src = tmp_path / "in"
    _two_target_boost(template, src, "PTV_High", "PTV_Low")
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert "Traceback" not in res.output and text.count("error:") == 1
    assert re_search(r"error: patient pt_a: RTSTRUCT \S*RS\.dcm: targets PTV_High, PTV_Low have no "
                     r"prescription: RTPLANs \S*RP1\.dcm \+ \S*RP2\.dcm add up but do not all prescribe "
                     r"the same targets", text), text
    assert '--roi-map MAP.json holding e.g. {"PTV_High": "PTV70"}' in text, text
    assert not (out / "dataset.json").exists()
    roi_map = tmp_path / "map.json"
    roi_map.write_text(json.dumps({"PTV_High": "PTV70", "PTV_Low": "PTV50"}))
    with pytest.warns(dicom.DicomWarning, match=r"RP1\.dcm \+ \S*RP2\.dcm add up .* do not all prescribe "
                                                r"the same targets \(PTV_High by \S*RP2\.dcm only; PTV_Low "
                                                r"by \S*RP1\.dcm only\).*prescriptions from the ROI names"):
        (p,) = dicom.read_dicom_folder(src, roi_map)
    assert p.roi_set["PTV70"].prescription == 70.0 and p.roi_set["PTV50"].prescription == 50.0
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    np.testing.assert_allclose(p.dose, ref.dose, atol=1e-3)


def test_a_boost_whose_phases_prescribe_different_targets_takes_the_names_doses(template, tmp_path):
    """The same boost with targets named PTV70 and PTV50: their prescriptions come from the names, with
    a warning naming the files and the targets. Before, PTV70 was given 20 Gy (phase 2's alone) over
    its name's 70."""
    src = tmp_path / "in"
    _two_target_boost(template, src, "PTV70", "PTV50")
    with pytest.warns(dicom.DicomWarning) as got:
        (p,) = dicom.read_dicom_folder(src)
    text = " ".join(str(w.message) for w in got)
    assert re_search(r"patient pt_a: RTPLANs \S*RP1\.dcm \+ \S*RP2\.dcm add up .*\(PTV70 by \S*RP2\.dcm "
                     r"only; PTV50 by \S*RP1\.dcm only\).*prescriptions from the ROI names", text), text
    assert "using the plan's" not in text
    assert p.roi_set["PTV70"].prescription == 70.0 and p.roi_set["PTV50"].prescription == 50.0
    assert p.meta["fractions"] == 35


def test_a_boost_whose_phases_prescribe_the_same_targets_adds_them(template, tmp_path):
    """Both phases prescribe both targets (50 + 20 Gy to PTV_High, 50 + 6 Gy to PTV_Low): the sums, from
    the plans, no warning about them."""
    import warnings

    from dicom_layouts import rename_rois

    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    rename_rois(src / "RS.dcm", {"PTV70": "PTV_High", "Ring": "PTV_Low"},
                {"PTV_High": "PTV", "PTV_Low": "PTV"})
    _boost(src, "PRIOR", rx1={"PTV_High": 50.0, "PTV_Low": 50.0}, rx2={"PTV_High": 20.0, "PTV_Low": 6.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicom.DicomWarning)
        (p,) = dicom.read_dicom_folder(src)
    assert p.roi_set["PTV_High"].prescription == 70.0 and p.roi_set["PTV_Low"].prescription == 56.0


def test_a_junk_first_slice_without_a_structure_set_is_named(template, tmp_path):
    """Without an RTSTRUCT listing the images, a damaged first slice leaves no gap to detect: the CT is
    read without it, with a warning naming the file."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    for f in ("RS.dcm", "RD.dcm", "RP.dcm"):
        (src / f).unlink()
    (src / "CT.0001.dcm").write_bytes(b"junk")
    res = run(["data", "import-dicom", str(src), "--out", str(tmp_path / "c"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert re_search(r"warning: CT series .*: 1 file\(s\) beside it are not readable DICOM "
                     r"\(\S*CT\.0001\.dcm \(not a DICOM file\)\); if one was a slice of this CT, the CT "
                     r"lacks it", flat(res.output))


def test_a_patient_folder_whose_subfolders_are_symbolic_links_is_read(template, tmp_path):
    """pt/CT -> elsewhere/ct, pt/RS -> elsewhere/rs (as export scripts and PACS mounts lay out files),
    plus a link back to the patient folder (a loop): read as one patient, the loop once."""
    real = tmp_path / "elsewhere"
    (real / "ct").mkdir(parents=True)
    (real / "rs").mkdir()
    for f in template["dicom"].iterdir():
        shutil.copy(f, real / ("ct" if f.name.startswith("CT") else "rs") / f.name)
    pt = tmp_path / "in" / "pt_a"
    pt.mkdir(parents=True)
    (pt / "CT").symlink_to(real / "ct", target_is_directory=True)
    (pt / "RS").symlink_to(real / "rs", target_is_directory=True)
    (pt / "loop").symlink_to(pt, target_is_directory=True)
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    res = run(["data", "import-dicom", str(tmp_path / "in"), "--out", str(tmp_path / "c"), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = run(["data", "inspect", str(tmp_path / "in")])
    assert res.exit_code == 0 and "pt_a" in res.output, res.output
    (p,) = dicom.read_dicom_folder(tmp_path / "in")
    np.testing.assert_array_equal(p.ct, ref.ct)
    np.testing.assert_array_equal(p.roi_codes, ref.roi_codes)
    assert p.dose is not None


def test_a_localizer_beside_the_planning_ct_is_ignored_with_a_warning(template, tmp_path):
    """A scanner export holds the scout (topogram) too: a CT image of its own series with ImageType
    LOCALIZER. It is no slice of a planning CT: ignored with a warning naming the file. Before, it
    became a second, one-slice patient without ROIs, the real patient was renamed pt_a_1, and
    `predict` refused the folder because of the scout."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    ds = pydicom.dcmread(src / "CT.0016.dcm")
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SeriesDescription = "Topogram 0.6 T20s"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(src / "SCOUT.dcm")
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert "Traceback" not in res.output
    assert re_search(r"warning: \S*SCOUT\.dcm: a localizer \(scout, ImageType LOCALIZER\), not a slice of a "
                     r"planning CT; ignored", text), text
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    (p,) = dicom.read_dicom_folder(src)
    assert p.id == ref.id and p.shape == ref.shape
    np.testing.assert_array_equal(p.ct, ref.ct)
    info = json.loads((out / "dataset.json").read_text())
    assert [q["id"] for q in info["patients"]] == [ref.id]


def test_a_lone_ct_image_is_no_patient(template, tmp_path):
    """A stray slice of another CT series (another patient's, copied in by mistake) beside a patient,
    or one slice file given instead of its folder: one image referenced by no RTSTRUCT is no planning
    CT. It was imported as a one-slice patient without ROIs (exit 0); now it is ignored with a warning
    naming the file, and a file given alone is an error saying to give the folder."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    stray = pydicom.dcmread(src / "CT.0005.dcm")
    stray.PatientID = "someone_else"
    stray.SeriesInstanceUID = pydicom.uid.generate_uid()
    stray.SOPInstanceUID = stray.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    stray.save_as(src / "CT.stray.dcm")
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert re_search(r"warning: \S*CT\.stray\.dcm: the only image of CT series \S+, which no RTSTRUCT "
                     r"references: one slice is no planning CT; ignored", text), text
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    info = json.loads((out / "dataset.json").read_text())
    assert [q["id"] for q in info["patients"]] == [ref.id]
    res = run(["data", "import-dicom", str(src / "CT.0005.dcm"), "--out", str(tmp_path / "c2"),
               "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert "Traceback" not in res.output
    assert re_search(r"error: no CT image series found under \S*CT\.0005\.dcm .*a file: give the folder "
                     r"that holds the CT series", text), text
    assert not (tmp_path / "c2" / "dataset.json").exists()


@pytest.mark.parametrize("how", ["MULTI_PLAN", "PRIOR"])
def test_a_third_plan_beside_a_sum_that_nothing_relates_to_it_is_named(template, tmp_path, how):
    """A sum of two plans (a MULTI_PLAN RTDOSE of both, or their PLAN doses with RTPlanRelationship
    PRIOR) beside a third RTPLAN without dose or relationship: the sum is used and the third plan was
    left out without a word; a warning now names it (as beside one plan's dose)."""
    src = tmp_path / "in"
    if how == "MULTI_PLAN":
        test_a_multi_plan_sum_beside_the_phases_is_the_patients_dose(template, tmp_path)
    else:
        shutil.copytree(template["dicom"], src)
        _boost(src, "PRIOR")
    write_rtplan(src, src / "RS.dcm", {"PTV70": 10.0}, fractions=5, name="RP3.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"RTPLAN .*RP3\.dcm has no plan dose in the folder and "
                                                r"nothing says how it relates to RTPLAN "
                                                r".*RP1\.dcm \+ .*RP2\.dcm"):
        (p,) = dicom.read_dicom_folder(src)
    assert p.roi_set["PTV70"].prescription == 70.0


def test_an_rtdose_in_cgy_reads_as_its_refusal_says(template, tmp_path):
    """An RTDOSE in cGy (DoseUnits CGY) was refused with no way out; the likely edit, DoseUnits GY alone,
    reads 100 x the dose (refused as no radiotherapy dose). Done as the refusal now says, the dose is read
    as the Gy of the export before it was put in cGy."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    rd = src / "RD.dcm"
    gy = pydicom.dcmread(rd)
    want = gy.pixel_array.astype(np.float64) * float(gy.DoseGridScaling)  # Gy, by pydicom alone

    def to_cgy(ds):
        ds.DoseUnits, ds.DoseGridScaling = "CGY", float(ds.DoseGridScaling) * 100
    edit(rd, to_cgy)
    res = run(["data", "import-dicom", str(src), "--out", str(tmp_path / "c1"), "--no-progress"])
    assert res.exit_code == 2 and "set DoseUnits to GY and divide DoseGridScaling by 100" in flat(res.output)

    def as_told(ds):
        ds.DoseUnits, ds.DoseGridScaling = "GY", float(ds.DoseGridScaling) / 100
    edit(rd, as_told)
    got = pydicom.dcmread(rd)
    assert np.allclose(got.pixel_array * float(got.DoseGridScaling), want)
    (p,) = dicom.read_dicom_folder(src)
    assert abs(float(p.dose.max()) - want.max()) < 0.01 * want.max()

