"""Input checks of ``dosepred.io`` that no other test executed (a coverage run of the suite), each fired
through the CLI by the file a user could give: DICOM (missing, empty, non-numeric and non-finite fields,
undecodable pixel data, multi-frame CT slices, a one-slice CT, ROI numbering, frames of reference, and
the warnings on which RTDOSE/RTPLAN is used), NIfTI (affines, unreadable files, NaN doses, rois.json),
OpenKBP CSVs (non-integer flat indices, unreadable voxel sizes, an oblique grid exported), damaged cache
files and ``dataset.json`` geometry (evaluate, inspect), ``data pack``/``unpack``, ROI maps and the
warning of a predicted RTDOSE that covers part of the possible-dose mask.

Errors: exit code 2, one ``error:`` line naming the file and the field or rule, no traceback, nothing
written to ``--out``. Warnings: shown, and the result checked against hand-made expectations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_layouts import write_rtplan
from dosepred import synth
from dosepred.io import cache, dicom
from dosepred.io.cache import Cache
from dosepred.patient import Patient
from test_bad_dicom import _boost, _poison, edit, edit_all_ct, flat, re_search, template  # noqa: F401
from test_bad_inputs import cli, fails, ok, tiny_openkbp_patient, tree
from test_dicom import N, make_patient


def _newuid(ds: pydicom.Dataset) -> None:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()


def _copy_as(src: Path, dst: Path, fn=None) -> None:
    ds = pydicom.dcmread(src)
    _newuid(ds)
    if fn is not None:
        fn(ds)
    ds.save_as(dst)


def _fails_clean(r, pattern: str, out: Path) -> None:
    """Exit 2, one error line matching ``pattern`` (whitespace-flattened), no traceback, no ``out``."""
    text = fails(r)
    assert re_search(pattern, flat(text)), text
    assert sum(line.startswith("error:") for line in text.splitlines()) == 1, text
    assert not out.exists() or tree(out) == {}, tree(out)


# ------------------------------------------------------------------------------- DICOM: errors

def _rd(fn):
    return lambda f: edit(f / "RD.dcm", fn)


def _ct_multiframe(f: Path) -> None:
    def fn(ds):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2
    edit(f / "CT.0005.dcm", fn)


def _one_slice(f: Path) -> None:
    """One CT slice without SliceThickness and the RTSTRUCT listing only that image."""
    keep = f / "CT.0016.dcm"
    for c in f.glob("CT.*.dcm"):
        if c != keep:
            c.unlink()
    uid = pydicom.dcmread(keep).SOPInstanceUID

    def one(ds):
        st = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        se = st.RTReferencedSeriesSequence[0]
        se.ContourImageSequence = Sequence([x for x in se.ContourImageSequence
                                            if x.ReferencedSOPInstanceUID == uid])
    edit(f / "RS.dcm", one)
    edit(keep, lambda ds: delattr(ds, "SliceThickness") if "SliceThickness" in ds else None)


def _rd_elsewhere_unreferenced(ds) -> None:
    for k in ("ReferencedRTPlanSequence", "ReferencedStructureSetSequence"):
        if k in ds:
            delattr(ds, k)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()


def _rs_same_item_twice(ds) -> None:
    ds.ROIContourSequence[1].ReferencedROINumber = ds.ROIContourSequence[0].ReferencedROINumber


DICOM_ERRORS = [  # (id, mutate, message); the file and the field are named
    ("rd-no-position", _rd(lambda ds: delattr(ds, "ImagePositionPatient")),
     r"patient pt_a: RTDOSE \S*RD\.dcm lacks ImagePositionPatient"),
    ("rd-empty-position", _rd(lambda ds: setattr(ds, "ImagePositionPatient", "")),
     r"RTDOSE \S*RD\.dcm: ImagePositionPatient is empty"),
    ("ct-empty-spacing", lambda f: edit_all_ct(f, lambda ds: setattr(ds, "PixelSpacing", "")),
     r"\S*CT\.0001\.dcm: PixelSpacing is empty"),
    ("rd-position-text", lambda f: _poison(f / "RD.dcm", lambda ds, v: setattr(ds, "ImagePositionPatient",
                                                                                 [v, "0", "0"])),
     r"RD\.dcm: ImagePositionPatient holds non-numbers: \['abc\.def', '0', '0'\]"),
    ("rd-scaling-nan", lambda f: _poison(f / "RD.dcm", lambda ds, v: setattr(ds, "DoseGridScaling", v),
                                         b"nan    "),
     r"RD\.dcm: DoseGridScaling holds NaN/inf: \[nan\]"),
    ("rd-position-inf", lambda f: _poison(f / "RD.dcm", lambda ds, v: setattr(ds, "ImagePositionPatient",
                                                                                [v, "0", "0"]), b"inf    "),
     r"RD\.dcm: ImagePositionPatient holds NaN/inf: \[inf, 0\.0, 0\.0\]"),
    ("ct-multiframe", _ct_multiframe,
     r"CT\.0005\.dcm: pixel data is \(2, 32, 32\), Rows/Columns say \(32, 32\)"),
    ("ct-pixels-short",
     lambda f: edit(f / "CT.0005.dcm", lambda ds: setattr(ds, "PixelData", ds.PixelData[:100])),
     r"cannot decode pixel data of \S*CT\.0005\.dcm: .*less than expected \(100 vs 2048 bytes\)"),
    ("rd-pixels-short", _rd(lambda ds: setattr(ds, "PixelData", ds.PixelData[:100])),
     r"RTDOSE \S*RD\.dcm: cannot decode pixel data: .*less than expected \(100 vs"),
    ("ct-one-slice", _one_slice,
     r"patient pt_a: CT series \S+ \(1 files in \S+\): a single slice without SliceThickness has no slice "
     r"spacing"),
    ("rs-no-roinumber",
     lambda f: edit(f / "RS.dcm", lambda ds: delattr(ds.StructureSetROISequence[1], "ROINumber")),
     r"RS\.dcm: StructureSetROISequence item 2 \(PTV70\) lacks ROINumber"),
    ("rs-contours-twice", lambda f: edit(f / "RS.dcm", _rs_same_item_twice),
     r"RS\.dcm: ROIContourSequence holds two items for ROINumber 1"),
    ("rd-frame-of-no-ct", _rd(_rd_elsewhere_unreferenced),
     r"RTDOSE \S*RD\.dcm has FrameOfReference [\d.]+, which no CT series under \S+ has"),
]


@pytest.mark.parametrize("name,mutate,message", DICOM_ERRORS, ids=[c[0] for c in DICOM_ERRORS])
def test_bad_dicom_check_fires(template, tmp_path, name, mutate, message):  # noqa: F811
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    mutate(src)
    out = tmp_path / "out" / "cache"
    _fails_clean(cli("data", "import-dicom", src, "--out", out, "--no-progress"), message, tmp_path / "out")


# ----------------------------------------------------------------------------- DICOM: warnings

def _two_multi_plan(f: Path) -> None:
    edit(f / "RD.dcm", lambda ds: setattr(ds, "DoseSummationType", "MULTI_PLAN"))
    _copy_as(f / "RD.dcm", f / "RD2.dcm")


def _boost_plan_with_two_doses(f: Path) -> None:
    _boost(f, "PRIOR")
    _copy_as(f / "RD1.dcm", f / "RD1b.dcm")


def _three_phases_one_without_dose(f: Path) -> None:
    """RP1, RP2 (PRIOR: RP1) and RP3 (PRIOR: RP2), 50 + 20 + 10 Gy; RTDOSEs for RP1 and RP2 only."""
    _boost(f, "PRIOR")
    rp2 = pydicom.dcmread(f / "RP2.dcm")
    rp3 = write_rtplan(f, f / "RS.dcm", {"PTV70": 10.0}, fractions=5, name="RP3.dcm")

    def ref(ds):
        r = Dataset()
        r.ReferencedSOPClassUID = rp2.SOPClassUID
        r.ReferencedSOPInstanceUID = rp2.SOPInstanceUID
        r.RTPlanRelationship = "PRIOR"
        ds.ReferencedRTPlanSequence = Sequence([r])
    edit(rp3, ref)


def _offplane_contour(f: Path) -> None:
    """One PTV70 contour moved 1.1 mm off its slice (slices are 2.5 mm apart)."""
    def fn(ds):
        rc = next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == 2)
        c = rc.ContourSequence[0]
        pts = [float(v) for v in c.ContourData]
        pts[2::3] = [z + 1.1 for z in pts[2::3]]
        c.ContourData = [f"{v:.4f}" for v in pts]
    edit(f / "RS.dcm", fn)


def _second_ct_series_same_frame(f: Path) -> None:
    """A copy of the CT as another series of the same FrameOfReference; the RTSTRUCT names no series."""
    (f / "b").mkdir()
    ser = pydicom.uid.generate_uid()
    for c in sorted(f.glob("CT.*.dcm")):
        _copy_as(c, f / "b" / c.name, lambda ds: setattr(ds, "SeriesInstanceUID", ser))
    edit(f / "RS.dcm",
         lambda ds: delattr(ds.ReferencedFrameOfReferenceSequence[0], "RTReferencedStudySequence"))


def _plan_elsewhere(f: Path) -> None:
    def fn(ds):
        if "ReferencedStructureSetSequence" in ds:
            del ds.ReferencedStructureSetSequence
        ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    edit(f / "RP.dcm", fn)


SERIES = r"CT series \S+ \(32 files in \S+\): "
DOSE = "dose"  # the imported dose is the exported one (the template's RTDOSE)
DICOM_WARNINGS = [  # (id, mutate, warning, expected: DOSE or None (no dose), the PTV70 prescription)
    ("rd-effective", _rd(lambda ds: setattr(ds, "DoseType", "EFFECTIVE")),
     r"RTDOSE \S*RD\.dcm: DoseType is EFFECTIVE \(a biologically weighted dose.*its values are used as Gy",
     DOSE, 70.0),
    ("two-multi-plan", _two_multi_plan,
     SERIES + r"2 MULTI_PLAN RTDOSE files match \(\S*RD\.dcm, \S*RD2\.dcm\); "
     r"using \S*RD\.dcm", DOSE, 70.0),
    ("two-plan-doses", lambda f: _copy_as(f / "RD.dcm", f / "RD2.dcm"),
     SERIES + r"2 RTDOSE files match \(\S*RD\.dcm, \S*RD2\.dcm\); using \S*RD\.dcm", DOSE, 70.0),
    ("rd-record", _rd(lambda ds: setattr(ds, "DoseSummationType", "RECORD")),
     r"RTDOSE \S*RD\.dcm: DoseSummationType is RECORD, not PLAN; used as the patient's dose", DOSE, 70.0),
    ("two-plans-no-reference", lambda f: _copy_as(f / "RP.dcm", f / "RP2.dcm"),
     SERIES + r"2 RTPLANs and no RTDOSE saying which is the patient's \(\S*RP\.dcm, \S*RP2\.dcm\); "
     r"prescriptions from names only", DOSE, 70.0),
    ("plan-with-two-doses", _boost_plan_with_two_doses,
     r"RTPLAN \S*RP1\.dcm has 2 RTDOSE files \(\S*RD1\.dcm, \S*RD1b\.dcm\); using \S*RD1\.dcm", DOSE, 70.0),
    ("phase-without-dose", _three_phases_one_without_dose,
     SERIES + r"the RTPLANs add up \(RTPlanRelationship PRIOR/CONCURRENT\) but RTPLAN \S*RP3\.dcm has no "
     r"RTDOSE in the folder: .* so no dose is used", None, 80.0),
    ("plan-of-no-ct", _plan_elsewhere,
     r"RTPLAN \S*RP\.dcm references no RTSTRUCT under \S+ and its FrameOfReference [\d.]+ matches 0 CT "
     r"series; ignored", DOSE, 70.0),
]


@pytest.mark.parametrize("name,mutate,warning,dose,rx", DICOM_WARNINGS, ids=[c[0] for c in DICOM_WARNINGS])
def test_dicom_warning_fires_and_the_import_is_right(template, tmp_path, name, mutate, warning, dose, rx):  # noqa: F811
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    mutate(src)
    out = tmp_path / "cache"
    text = flat(ok(cli("data", "import-dicom", src, "--out", out, "--no-progress")))
    assert re_search("warning: " + warning, text), text
    p = Cache.open(out).load("pt_a")
    want = make_patient()
    if dose is None:
        assert p.dose is None
    else:  # the exported dose, to its 16-bit quantisation
        np.testing.assert_allclose(p.dose, want.dose, atol=2e-3 * float(want.dose.max()))
    assert p.roi_set["PTV70"].prescription == rx


def test_contour_off_every_slice_is_ignored_with_a_warning(template, tmp_path):  # noqa: F811
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    ds = pydicom.dcmread(src / "RS.dcm")
    z = float(next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == 2).ContourSequence[0]
              .ContourData[2])
    k = int(round(z / 2.5))  # the slice it was on: axis 0 from z = 0 mm, 2.5 mm apart
    _offplane_contour(src)
    out = tmp_path / "cache"
    text = flat(ok(cli("data", "import-dicom", src, "--out", out, "--no-progress")))
    assert re_search(r"warning: RTSTRUCT \S*RS\.dcm: 1 contour\(s\) of ROI PTV70 are not on a CT slice "
                     r"\(off-plane or outside the CT\); ignored", text), text
    got = Cache.open(out).load("pt_a").mask("PTV70")
    want = make_patient().mask("PTV70")
    assert want[k].any() and not got[k].any()  # that slice's contour is left out
    others = [i for i in range(N) if i != k]
    assert np.mean(got[others] == want[others]) > 0.99  # the other slices as drawn


def test_an_rtstruct_matching_two_ct_series_by_frame_warns_and_uses_one(template, tmp_path):  # noqa: F811
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _second_ct_series_same_frame(src)
    out = tmp_path / "cache"
    text = flat(ok(cli("data", "import-dicom", src, "--out", out, "--no-progress")))
    assert re_search(r"warning: RTSTRUCT \S*RS\.dcm matches several CT series by FrameOfReference; using "
                     r"[\d.]+", text), text
    c = Cache.open(out)
    assert sorted(c.ids) == ["pt_a_1", "pt_a_2"]
    with_rois = [pid for pid in c.ids if "PTV70" not in c.patient_entry(pid).missing_rois]
    assert len(with_rois) == 1  # one series has the contours, the other none
    assert c.load(with_rois[0]).mask("PTV70").sum() == make_patient().mask("PTV70").sum()


def test_a_predicted_rtdose_short_of_the_mask_warns_and_counts_0_gy(template, tmp_path):  # noqa: F811
    """The prediction is the reference's own RTDOSE less its last 3 frames: a warning naming the
    uncovered voxels, which count as 0 Gy (the dose score is their mean reference dose)."""
    pred = tmp_path / "pred"
    pred.mkdir()
    k = 3

    def cut(ds):
        n = int(ds.NumberOfFrames)
        per = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
        off = [float(v) for v in ds.GridFrameOffsetVector]
        assert off == sorted(off)
        ds.NumberOfFrames = n - k
        ds.GridFrameOffsetVector = off[: n - k]
        ds.PixelData = ds.PixelData[: per * (n - k)]
    _copy_as(template["dicom"] / "RD.dcm", pred / "RD.dcm", cut)
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    mask = ref.possible_dose_mask.astype(bool)
    lost = np.zeros_like(mask)
    lost[-k:] = True  # RD frames ascend along axis 0 (the CT's slices, feet to head)
    n_lost = int((mask & lost).sum())
    assert n_lost > 0
    r = cli("evaluate", "--reference", template["dicom"], "--prediction", pred, "--no-progress",
            "--json", tmp_path / "e.json")
    text = flat(ok(r))
    assert re_search(rf"warning: patient pt_a: the predicted RTDOSE \S*RD\.dcm does not cover "
                     rf"{n_lost} voxels \([\d.]+%\) of the possible-dose mask; they count as 0 Gy",
                     text), text
    got = json.loads((tmp_path / "e.json").read_text())["dose_score"]
    want = float(np.abs(ref.dose[mask & lost]).sum()) / int(mask.sum())
    assert got == pytest.approx(want, rel=1e-3, abs=1e-4)


# --------------------------------------------------------------------------------------- NIfTI

def _nii_rewrite(path: Path, affine=None, data=None, qform: bool = True) -> None:
    img = nib.load(path)
    hdr = img.header.copy()
    aff = img.affine if affine is None else affine
    if not qform:
        hdr.set_qform(None, code=0)
    hdr.set_sform(aff, code=1)
    arr = np.asarray(img.dataobj) if data is None else data
    nib.save(nib.Nifti1Image(arr, None, hdr), path)


def _nan_translation(f: Path) -> None:
    aff = nib.load(f / "ct.nii.gz").affine.copy()
    aff[0, 3] = np.nan
    _nii_rewrite(f / "ct.nii.gz", aff, qform=False)


def _nan_dose(f: Path) -> None:
    d = np.asarray(nib.load(f / "dose.nii.gz").dataobj, dtype=np.float32).copy()
    d[3, 3, 3] = np.nan
    _nii_rewrite(f / "dose.nii.gz", data=d)


NIFTI_ERRORS = [  # (id, template, mutate, message)
    ("affine-nan", "nifti", _nan_translation, r"\S*pt_a/ct\.nii\.gz: the affine is not a finite 4x4 matrix"),
    ("ct-garbage", "nifti", lambda f: (f / "ct.nii.gz").write_bytes(b"garbage"),
     r"cannot read CT \S*pt_a/ct\.nii\.gz: .*not a gzip file"),
    ("dose-nan", "nifti", _nan_dose, r"dose \S*pt_a/dose\.nii\.gz contains NaN/inf"),
    ("rois-json-invalid", "nifti", lambda f: (f / "rois.json").write_text("{oops"),
     r"\S*pt_a/rois\.json is not valid JSON: Expecting property name"),
    ("rois-json-list", "nifti", lambda f: (f / "rois.json").write_text("[1, 2]"),
     r"\S*pt_a/rois\.json: expected a JSON object"),
    ("codes-without-rois-json", "codes", lambda f: (f / "rois.json").unlink(),
     r"\S*pt_a/roi_codes\.nii\.gz needs \S*pt_a/rois\.json listing the ROI names in bit order"),
]


@pytest.mark.parametrize("name,kind,mutate,message", NIFTI_ERRORS, ids=[c[0] for c in NIFTI_ERRORS])
def test_bad_nifti_check_fires(template, tmp_path, name, kind, mutate, message):  # noqa: F811
    src = tmp_path / "in" / "pt_a"
    shutil.copytree(template[kind], src)
    mutate(src)
    out = tmp_path / "out" / "cache"
    _fails_clean(cli("data", "import-nifti", tmp_path / "in", "--out", out, "--no-progress"), message,
                 tmp_path / "out")


def test_a_nifti_file_given_as_the_folder_is_named(template, tmp_path):  # noqa: F811
    out = tmp_path / "out" / "cache"
    _fails_clean(cli("data", "import-nifti", template["nifti"] / "ct.nii.gz", "--out", out, "--no-progress"),
                 r"NIfTI folder \S*ct\.nii\.gz is a file, not a folder \(give a patient folder",
                 tmp_path / "out")


def _zero_axis(f: Path) -> None:
    aff = nib.load(f).affine.copy()
    aff[:3, 2] = 0
    _nii_rewrite(f, aff, qform=False)  # nibabel cannot store a degenerate qform


def _inf_voxel(f: Path) -> None:
    d = np.asarray(nib.load(f).dataobj, dtype=np.float32).copy()
    d[3, 3, 3] = np.inf
    _nii_rewrite(f, data=d)


@pytest.mark.parametrize("mutate,message", [
    (_zero_axis, r"\S*pred/pt_a\.nii\.gz: invalid affine: affine has a zero or non-finite axis"),
    (_inf_voxel, r"dose \S*pred/pt_a\.nii\.gz contains NaN/inf"),
    (lambda f: f.write_bytes(b"\x1f\x8bjunk"), r"cannot read dose \S*pred/pt_a\.nii\.gz: "),
], ids=["zero-axis", "inf", "junk"])
def test_bad_nifti_prediction_check_fires(template, tmp_path, mutate, message):  # noqa: F811
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(template["nifti"] / "dose.nii.gz", pred / "pt_a.nii.gz")
    mutate(pred / "pt_a.nii.gz")
    out = tmp_path / "out"
    _fails_clean(cli("evaluate", "--reference", template["nifti"], "--prediction", pred, "--no-progress",
                     "--json", out / "e.json"), message, out)


# -------------------------------------------------------------------------------------- OpenKBP

@pytest.mark.parametrize("fname, content, needle", [
    ("dose.csv", ",data\n11.5,70\n12,60\n13,3\n", "dose.csv row 2: flat index is not an integer"),
    ("dose.csv", ",data\n11,70\n,60\n13,3\n", "dose.csv row 3: flat index is not an integer"),
    ("PTV70.csv", ",data\n11.5,\n12,\n", "PTV70.csv row 2: flat index is not an integer"),
    ("voxel_dimensions.csv", "abc\ndef\n",
     "voxel_dimensions.csv: expected three voxel sizes in mm (could not convert string 'abc'"),
], ids=["fraction", "missing", "roi-fraction", "spacing-text"])
def test_bad_openkbp_csv_check_fires(tmp_path, fname, content, needle):
    src = tmp_path / "src"
    tiny_openkbp_patient(src / "pt_1", shift=1)
    (src / "pt_1" / fname).write_text(content)
    fails(cli("data", "import-openkbp", src, "--out", tmp_path / "out" / "cache"), "patient pt_1:", needle)
    assert not (tmp_path / "out").exists()


def test_an_oblique_patient_is_not_exported_as_openkbp(tmp_path):
    from dosepred.geometry import Geometry

    p = make_patient()
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    oblique = Geometry.from_dicom(p.geometry.origin, (1, 0, 0, 0, c, s), p.spacing)
    q = Patient(p.id, p.ct, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose, (), {}, oblique)
    cache.write_cache([q], tmp_path / "c")
    out = tmp_path / "out" / "okbp"
    _fails_clean(cli("data", "export-openkbp", tmp_path / "c", "--out", out),
                 r"patient pt_a: an oblique grid \(.*\) cannot be written in OpenKBP layout without "
                 r"resampling",
                 tmp_path / "out")


# --------------------------------------------------------------------------- damaged cache files

@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict:
    """One synthetic patient: a reference cache, a prediction cache (0.9 of its dose), a version-1 copy,
    a copy without dose."""
    root = tmp_path_factory.mktemp("io-checks-caches")
    (p,) = synth.make_cohort(1, seed=3, size=24)
    cache.write_cache([p], root / "ref")
    cache.write_cache([p.with_dose((p.dose * 0.9).astype(np.float32))], root / "pred")
    cache.write_cache([p], root / "v1", version=1)
    cache.write_cache([p.with_dose(None)], root / "nodose")
    return {"root": root, "id": p.id}


def _members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _damaged(caches: dict, which: str, dst: Path, **changes) -> Path:
    """A copy of cache ``which`` whose patient file has ``changes`` (None: the member removed)."""
    shutil.copytree(caches["root"] / which, dst)
    f = dst / f"{caches['id']}.npz"
    m = _members(f)
    for k, v in changes.items():
        if v is None:
            m.pop(k)
        else:
            m[k] = v(m[k]) if callable(v) else v
    if "boxes" in m:
        cache.write_members(f, m)
    else:
        np.savez(f, **m)
    return dst


def _grid_off_zero(b):
    b = b.copy()
    b[0, 0, 0] = 1
    return b


CACHE_DAMAGE = [  # (id, which cache, changes, message)
    ("codes-signed", "ref", dict(roi_codes=lambda c: c.astype(np.int16)),
     r"ROI codes must be unsigned integers, got int16 \(in \S*/synth_000\.npz\)"),
    ("grid-not-at-0", "ref", dict(boxes=_grid_off_zero),
     r"the member 'boxes': the grid \[\[1, 24\], \[0, 24\], \[0, 24\]\] must start at 0 and be non-empty"),
    ("mask-short", "ref", dict(possible_dose_mask=lambda m: m[:-3]),
     r"the possible-dose mask holds 429 bytes, but the data box \(\d+, \d+, \d+\) needs 432; damaged"),
    ("roi-index-short", "ref", dict(roi_index=lambda i: i[:-1]),
     r"\d+ ROI voxel indices but \d+ ROI codes; damaged file"),
    ("roi-index-outside", "ref", dict(roi_index=lambda i: i + np.uint32(10**6)),
     r"ROI voxel indices lie outside the data box \(\d+, \d+, \d+\); damaged file"),
    ("ref-no-mask", "ref", dict(possible_dose_mask=None),
     r"synth_000\.npz lacks the arrays possible_dose_mask"),
    ("pred-no-mask", "pred", dict(possible_dose_mask=None),
     r"synth_000\.npz lacks the arrays possible_dose_mask"),
    ("v1-no-codes", "v1", dict(roi_codes=None), r"synth_000\.npz lacks the arrays roi_codes"),
]


@pytest.mark.parametrize("name,which,changes,message", CACHE_DAMAGE, ids=[c[0] for c in CACHE_DAMAGE])
def test_damaged_cache_file_check_fires(caches, tmp_path, name, which, changes, message):
    bad = _damaged(caches, which, tmp_path / "bad", **changes)
    ref, pred = (bad, caches["root"] / "pred") if which != "pred" else (caches["root"] / "ref", bad)
    out = tmp_path / "out"
    _fails_clean(cli("evaluate", "--reference", ref, "--prediction", pred, "--no-progress",
                     "--json", out / "e.json"), r"patient synth_000: .*" + message, out)


def test_a_cache_file_without_its_ct_fill_names_it_when_read_whole(caches, tmp_path):
    bad = _damaged(caches, "ref", tmp_path / "bad", ct_fill=None)
    out = tmp_path / "out" / "nii"
    _fails_clean(cli("data", "export-nifti", bad, "--out", out),
                 r"patient synth_000: \S*bad/synth_000\.npz lacks the arrays ct_fill", tmp_path / "out")


def test_an_empty_prediction_cache_file_is_named(caches, tmp_path):
    shutil.copytree(caches["root"] / "pred", tmp_path / "pred")
    (tmp_path / "pred" / "synth_000.npz").write_bytes(b"")
    _fails_clean(cli("evaluate", "--reference", caches["root"] / "ref", "--prediction", tmp_path / "pred",
                     "--no-progress"),
                 r"patient synth_000: cannot read \S*pred/synth_000\.npz: not an \.npz \(zip\) file: it is "
                 r"empty",
                 tmp_path / "out")


def test_a_reference_cache_without_dose_is_named(caches, tmp_path):
    _fails_clean(cli("evaluate", "--reference", caches["root"] / "nodose", "--prediction",
                     caches["root"] / "pred", "--no-progress"),
                 r"patient synth_000: the reference has no dose to compare with", tmp_path / "out")


@pytest.mark.parametrize("which", ["ref", "pred"])
def test_a_cache_geometry_with_a_zero_spacing_is_named(caches, tmp_path, which):
    bad = tmp_path / "bad"
    shutil.copytree(caches["root"] / which, bad)
    info = json.loads((bad / "dataset.json").read_text())
    info["patients"][0]["geometry"]["spacing"] = [0, 1, 1]
    (bad / "dataset.json").write_text(json.dumps(info))
    ref, pred = (bad, caches["root"] / "pred") if which == "ref" else (caches["root"] / "ref", bad)
    _fails_clean(cli("evaluate", "--reference", ref, "--prediction", pred, "--no-progress"),
                 r"\S*bad/dataset\.json: patient synth_000: invalid geometry: spacing must be three positive "
                 r"finite mm values, got \(0, 1, 1\)", tmp_path / "out")


# ------------------------------------------------------------------------------ pack, ROI maps

def test_unpacking_a_folder_that_is_no_packed_cache_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    _fails_clean(cli("data", "unpack", tmp_path / "empty", "--out", tmp_path / "out" / "c"),
                 r"\S*empty is not a packed cache \(a folder written by `dosepred data pack`\): \S*empty/"
                 r"dataset\.json is missing", tmp_path / "out")


def test_packing_two_patient_files_of_one_stem_is_refused(tmp_path):
    src = tmp_path / "two"
    cache.write_cache(synth.make_cohort(2, seed=3, size=12), src)
    info = json.loads((src / "dataset.json").read_text())
    first, second = (e["file"] for e in info["patients"])
    (src / "sub").mkdir()
    shutil.move(src / second, src / "sub" / first)  # sub/synth_000.npz beside synth_000.npz
    info["patients"][1]["file"] = f"sub/{first}"
    (src / "dataset.json").write_text(json.dumps(info))
    _fails_clean(cli("data", "pack", src, "--out", tmp_path / "out" / "p"),
                 r"\S*two: two patient files share a name stem; they cannot be packed side by side",
                 tmp_path / "out")


@pytest.mark.parametrize("content,message", [
    ("[1]", r"ROI map \S*map\.json: expected a JSON object \(name -> canonical name\)"),
    ("{x", r"ROI map \S*map\.json is not valid JSON: Expecting property name"),
    (None, r"ROI map \S*map\.json does not exist"),
], ids=["list", "invalid", "absent"])
def test_bad_roi_map_check_fires(template, tmp_path, content, message):  # noqa: F811
    if content is not None:
        (tmp_path / "map.json").write_text(content)
    _fails_clean(cli("data", "import-dicom", template["dicom"], "--out", tmp_path / "out" / "c",
                     "--no-progress", "--roi-map", tmp_path / "map.json"), message, tmp_path / "out")



@pytest.mark.parametrize("which", ["ref", "pred"])
def test_a_cache_file_that_lost_its_boxes_is_named_not_read_as_version_1(caches, tmp_path, which):
    """A version-2/3 patient file without its 'boxes' member was read as a version-1 file: its packed
    voxel lists taken for full grids, ending in a message about array lengths that named no file
    (reference) or 'predicted dose has shape (24, 24, 24), but the reference grid is (24, 24, 24)'
    (prediction)."""
    bad = _damaged(caches, which, tmp_path / "bad", boxes=None)
    ref, pred = (bad, caches["root"] / "pred") if which == "ref" else (caches["root"] / "ref", bad)
    msg = r"patient synth_000: \S*bad/synth_000\.npz lacks the arrays boxes"
    _fails_clean(cli("evaluate", "--reference", ref, "--prediction", pred, "--no-progress"), msg,
                 tmp_path / "o")
    _fails_clean(cli("data", "export-nifti", bad, "--out", tmp_path / "out" / "n"), msg, tmp_path / "out")
