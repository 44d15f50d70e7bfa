"""DICOM geometry in patient coordinates: export layout and anatomy, other layouts re-imported to the
same patient, exact round trips across formats, RTDOSE identity/references/size, prescriptions from
RTPLAN, RTDOSE matched by reference, evaluation of RTDOSE predictions, inspect of any source."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_layouts import LAYOUTS, in_layout, rename_rois, write_layout, write_rtplan
from dosepred.geometry import Geometry
from dosepred.io import cache, dicom, nifti, openkbp
from dosepred.io.roi_names import RoiMap
from dosepred.patient import Patient, Roi, RoiSet
from test_dicom import make_patient


@pytest.fixture
def sample(request) -> Path:
    """The OpenKBP sample train patients (conftest's ``sample_dir``: never skipped for want of data)."""
    return request.getfixturevalue("sample_dir")

# ImageOrientationPatient of each layout, written out by hand from the DICOM definition (row
# direction = where the column index grows, column direction = where the row index grows)
IOP = {"axial": [1, 0, 0, 0, 1, 0], "transposed": [0, 1, 0, 1, 0, 0], "rows_flipped": [1, 0, 0, 0, -1, 0],
       "columns_flipped": [-1, 0, 0, 0, 1, 0], "prone": [-1, 0, 0, 0, -1, 0],
       "feet_first": [-1, 0, 0, 0, 1, 0], "slices_reversed": [1, 0, 0, 0, 1, 0],
       "sagittal": [0, 0, -1, 0, 1, 0]}


def quiet_read(src, roi_map=None) -> list[Patient]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicom.DicomWarning)
        return dicom.read_dicom_folder(src, roi_map)


def centroid_lps(p: Patient, name: str) -> np.ndarray:
    idx = np.argwhere(p.mask(name)).astype(float)
    return p.geometry.to_patient(idx).mean(axis=0)


def contour_centroids(rs_path: Path) -> dict[str, np.ndarray]:
    """Mean of every contour point of each ROI, straight from the RTSTRUCT's ContourData."""
    rs = pydicom.dcmread(rs_path)
    names = {int(r.ROINumber): str(r.ROIName) for r in rs.StructureSetROISequence}
    out = {}
    for rc in rs.ROIContourSequence:
        pts = [np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
               for c in getattr(rc, "ContourSequence", [])]
        if pts:
            out[names[int(rc.ReferencedROINumber)]] = np.concatenate(pts).mean(axis=0)
    return out


# --------------------------------------------------------------------------------- layouts

@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_other_layouts_reimport_to_the_same_patient(tmp_path, layout):
    p = make_patient()  # axial, head-first supine
    folder = write_layout(p, tmp_path, layout)
    ct1 = pydicom.dcmread(folder / "CT.0001.dcm")
    assert [float(v) for v in ct1.ImageOrientationPatient] == IOP[layout]
    assert ct1.PatientPosition == LAYOUTS[layout][1]
    (q,) = quiet_read(folder)
    assert q.geometry.axis_letters() == LAYOUTS[layout][0]
    # same patient in patient coordinates: centroids in LPS, the voxel grid, dose at the same points
    for name in p.roi_set.names:
        np.testing.assert_allclose(centroid_lps(q, name), centroid_lps(p, name), atol=1e-6)
    back = q.reoriented(p.geometry.axis_letters())
    assert back.geometry.same_as(p.geometry)
    np.testing.assert_array_equal(back.ct, p.ct)
    np.testing.assert_array_equal(back.roi_codes, p.roi_codes)
    np.testing.assert_array_equal(back.possible_dose_mask, p.possible_dose_mask)
    rng = np.random.default_rng(0)
    pts = p.geometry.to_patient(rng.integers(0, 32, size=(50, 3)))
    ip = np.rint(p.geometry.to_index(pts)).astype(int)
    iq = np.rint(q.geometry.to_index(pts)).astype(int)
    np.testing.assert_allclose(q.dose[tuple(iq.T)], p.dose[tuple(ip.T)], atol=1e-6)
    # the helper gives the Patient as the layout stores it
    np.testing.assert_array_equal(in_layout(p, layout).roi_codes, q.roi_codes)


def test_slices_reversed_numbering(tmp_path):
    folder = write_layout(make_patient(), tmp_path, "slices_reversed")
    z = [float(pydicom.dcmread(folder / f"CT.{k:04d}.dcm").ImagePositionPatient[2]) for k in (1, 2, 32)]
    assert z[0] > z[1] > z[2]  # CT.0001 is the most superior slice


# ------------------------------------------------------------------------- OpenKBP anatomy

def test_openkbp_export_is_axial_and_anatomically_placed(tmp_path, sample):
    p = openkbp.read_patient(sample / "pt_66")
    assert p.geometry.axis_letters() == "PLI"  # OpenKBP arrays: head-feet is array axis 2
    folder = dicom.write_dicom(p, tmp_path)
    cts = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.glob("CT.*.dcm"))]
    assert len(cts) == 128
    for ds in cts:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert ds.PatientPosition == "HFS"
    row, col = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    normal = np.cross(row, col)
    np.testing.assert_array_equal(normal, [0, 0, 1])  # slice normal along S-I
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in cts])
    inst = [int(ds.InstanceNumber) for ds in cts]
    assert inst == sorted(inst)
    assert np.all(np.diff(pos[:, 2]) > 0)  # slices ascend towards the head
    np.testing.assert_allclose(np.diff(pos[:, 2]), p.spacing[2])
    assert np.ptp(pos[:, :2], axis=0).max() == 0
    c = contour_centroids(folder / "RS.dcm")
    assert c["SpinalCord"][1] > c["Mandible"][1] + 20  # posterior = larger y
    assert c["LeftParotid"][0] > c["RightParotid"][0] + 50  # patient's left = larger x
    assert c["Brainstem"][2] > c["Larynx"][2] + 30  # superior = larger z
    # the CT pixels agree: slice through the parotids shows the mandible anterior of the cord
    rd = pydicom.dcmread(folder / "RD.dcm")
    assert [float(v) for v in rd.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert rd.FrameOfReferenceUID == cts[0].FrameOfReferenceUID


def test_round_trip_openkbp_cache_dicom_nifti_exact(tmp_path, sample):
    """OpenKBP -> cache -> DICOM -> cache -> NIfTI -> cache -> OpenKBP gives the source files back
    byte for byte."""
    src = sample / "pt_196"
    c1 = cache.write_cache([openkbp.read_patient(src)], tmp_path / "c1")
    d = dicom.write_dicom(next(iter(c1)), tmp_path / "dcm")
    (q,) = dicom.read_dicom_folder(d)
    assert q.geometry.axis_letters() == "SPL"
    c2 = cache.write_cache([q], tmp_path / "c2", roi_set=q.roi_set)
    r = next(iter(c2))
    assert r.geometry == q.geometry
    nifti.write_patient(r, tmp_path / "nii")
    (s,) = nifti.read_nifti_folder(tmp_path / "nii")
    assert s.geometry == q.geometry
    c3 = cache.write_cache([s], tmp_path / "c3", roi_set=s.roi_set)
    out = openkbp.write_patient(next(iter(c3)), tmp_path / "okbp")
    cmp = filecmp.dircmp(src, out)
    assert sorted(cmp.left_only + cmp.right_only) == []
    _, mismatch, errors = filecmp.cmpfiles(src, out, sorted(f.name for f in src.iterdir()), shallow=False)
    assert mismatch == [] and errors == []
    # and DICOM -> cache -> DICOM writes the same positions and orientation
    d2 = dicom.write_dicom(r, tmp_path / "dcm2")
    for k in (1, 64, 128):
        a = pydicom.dcmread(d / f"CT.{k:04d}.dcm", stop_before_pixels=True)
        b = pydicom.dcmread(d2 / f"CT.{k:04d}.dcm", stop_before_pixels=True)
        assert list(a.ImagePositionPatient) == list(b.ImagePositionPatient)
        assert list(a.ImageOrientationPatient) == list(b.ImageOrientationPatient)


def test_dicom_cache_dicom_keeps_clinical_ipp_iop(tmp_path):
    """An oblique series with 6-decimal ImageOrientationPatient (as scanners write it) comes back
    with the same numbers after DICOM -> cache -> DICOM."""
    p = make_patient()
    a = np.deg2rad(10)
    iop = [round(np.cos(a), 6), round(np.sin(a), 6), 0, round(-np.sin(a), 6), round(np.cos(a), 6), 0]
    g = Geometry.from_dicom((-30.25, -41.5, 12.75), iop, p.spacing)
    p = Patient(p.id, p.ct, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose, (), {}, g)
    folder = dicom.write_dicom(p, tmp_path / "a", keep_layout=True)
    for f in folder.iterdir():  # rewrite the orientation as a scanner would: 6 decimals
        ds = pydicom.dcmread(f)
        if "ImageOrientationPatient" in ds:
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
            ds.save_as(f)
    (q,) = quiet_read(folder)
    c = cache.write_cache([q], tmp_path / "c", roi_set=q.roi_set)
    folder2 = dicom.write_dicom(next(iter(c)), tmp_path / "b")
    for k in (1, 17, 32):
        x = pydicom.dcmread(folder / f"CT.{k:04d}.dcm", stop_before_pixels=True)
        y = pydicom.dcmread(folder2 / f"CT.{k:04d}.dcm", stop_before_pixels=True)
        # the same numbers (not renormalised: 0.984808 stays 0.984808)
        assert [float(v) for v in x.ImageOrientationPatient] == [float(v) for v in y.ImageOrientationPatient]
        # positions along the file's (6-decimal) normal: within 1e-4 mm of those written along the exact one
        np.testing.assert_allclose([float(v) for v in x.ImagePositionPatient],
                                   [float(v) for v in y.ImagePositionPatient], atol=1e-4)
    x = pydicom.dcmread(folder / "CT.0001.dcm", stop_before_pixels=True)
    y = pydicom.dcmread(folder2 / "CT.0001.dcm", stop_before_pixels=True)
    assert [float(v) for v in x.ImagePositionPatient] == [float(v) for v in y.ImagePositionPatient]


def test_sheared_grid_is_not_written_as_dicom(tmp_path):
    p = make_patient()
    d = np.array([[0, 0.2, 1.0], [0, 0.98, 0], [1.0, 0, 0]])
    d = d / np.linalg.norm(d, axis=0)
    g = Geometry(np.zeros(3), d, p.spacing)
    q = Patient(p.id, p.ct, p.roi_codes, p.roi_set, p.spacing, geometry=g)
    with pytest.raises(ValueError, match="not perpendicular"):
        dicom.write_dicom(q, tmp_path)


# ------------------------------------------------------------------------------ RTDOSE out

def _clinical_folder(tmp_path: Path, rx: dict[str, float] | None = None) -> Path:
    """A DICOM patient as a clinic would send it: identity tags and an RTPLAN."""
    folder = dicom.write_dicom(make_patient(), tmp_path / "clinic")
    (folder / "RD.dcm").unlink()
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "MRN-0042"
        ds.PatientBirthDate = "19600102"
        ds.PatientSex = "F"
        ds.save_as(f)
    write_rtplan(folder, folder / "RS.dcm", rx or {"PTV70": 70.0}, fractions=35)
    return folder


def test_rtdose_of_a_dicom_patient_keeps_identity_and_references(tmp_path):
    folder = _clinical_folder(tmp_path)
    (p,) = quiet_read(folder)
    assert p.meta["fractions"] == 35
    pred = (p.dose if p.dose is not None else np.zeros(p.shape, np.float32))
    pred = (0.9 * p.possible_dose_mask * 60).astype(np.float32)
    path = dicom.write_rtdose(p, pred, tmp_path / "pred" / p.id, model_name="mae-released")
    rd = pydicom.dcmread(path)
    rs = pydicom.dcmread(folder / "RS.dcm")
    rp = pydicom.dcmread(folder / "RP.dcm")
    assert (str(rd.PatientName), rd.PatientID, rd.PatientBirthDate, rd.PatientSex) == (
        "Doe^Jane", "MRN-0042", "19600102", "F")
    assert rd.StudyInstanceUID == rs.StudyInstanceUID
    assert rd.FrameOfReferenceUID == rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert rd.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == rp.SOPInstanceUID
    assert "predict" in rd.SeriesDescription and "mae-released" in rd.SeriesDescription
    # its grid: 2.5 mm in-plane (CT 2 mm), dicompyler-core reads the same geometry
    dose, g = dicom.read_rtdose(path)
    assert g.spacing == (2.5, 2.5, 2.5)
    assert [float(v) for v in rd.PixelSpacing] == [2.5, 2.5]
    from pydicom import dicomio

    dicomio.read_file = getattr(dicomio, "read_file", pydicom.dcmread)  # dicompyler-core 0.5.6, pydicom 3
    from dicompylercore import dicomparser

    dp = dicomparser.DicomParser(str(path))
    info = dp.GetImageData()
    np.testing.assert_allclose(info["position"], g.origin, atol=1e-9)
    np.testing.assert_allclose(info["pixelspacing"], g.spacing[1:])
    assert (info["frames"], info["rows"], info["columns"]) == dose.shape
    lut = dp.GetPatientToPixelLUT()
    np.testing.assert_allclose(lut[0], g.to_patient(np.c_[np.zeros(dose.shape[2]), np.zeros(dose.shape[2]),
                                                            np.arange(dose.shape[2])])[:, 0], atol=1e-6)
    np.testing.assert_allclose(lut[1], g.to_patient(np.c_[np.zeros(dose.shape[1]), np.arange(dose.shape[1]),
                                                            np.zeros(dose.shape[1])])[:, 1], atol=1e-6)
    # its DVHs (RT DVH module) as dicompyler-core reads them: mean dose per ROI of the source RTSTRUCT
    dvhs = dp.GetDVHs()
    numbers = {str(r.ROIName): int(r.ROINumber) for r in rs.StructureSetROISequence}
    for name in ("PTV70", "LeftParotid"):
        assert dvhs[numbers[name]].mean == pytest.approx(float(pred[p.mask(name)].mean()), abs=0.06)
        assert dvhs[numbers[name]].volume == pytest.approx(p.mask(name).sum() * p.voxel_volume_cc, rel=1e-6)
    # the RTDOSE re-imported with the clinic's folder is the prediction (to trilinear accuracy)
    shutil.copy(path, folder / "RD.dcm")
    # resampled from its coarser grid, the prediction spills into the air around this small body: read
    # as 0 Gy there (a warning above 5 % of the dose, which this 32^3 patient's thin body reaches)
    with pytest.warns(dicom.DicomWarning, match=r"planned dose .* lies outside the possible-dose mask"):
        (q,) = dicom.read_dicom_folder(folder)
    assert q.meta["rtdose_matched_by"] == "referenced RTPLAN"
    m = p.possible_dose_mask
    assert np.all(q.dose[~m] == 0)
    inner = m & np.roll(m, 2, 1) & np.roll(m, -2, 1) & np.roll(m, 2, 2) & np.roll(m, -2, 2)
    np.testing.assert_allclose(q.dose[inner], pred[inner], atol=1e-3)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_rtdose_passes_dciodvfy(tmp_path):
    """dciodvfy (Debian dicom3tools) on the RTDOSE. This dciodvfy asserts on any 32-bit OW pixel data
    (a limitation of the tool: it aborts before checking anything), so the header is checked on a
    copy whose pixel data is 16-bit; everything else is the file as written."""
    folder = _clinical_folder(tmp_path)
    (p,) = quiet_read(folder)
    path = dicom.write_rtdose(p, (p.possible_dose_mask * 50.0).astype(np.float32), tmp_path / "pred")
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = np.zeros(int(ds.NumberOfFrames) * ds.Rows * ds.Columns, "<u2").tobytes()
    ds.save_as(tmp_path / "rd16.dcm")
    res = subprocess.run(["dciodvfy", str(tmp_path / "rd16.dcm")], capture_output=True, text=True)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
    assert "RTDose" in res.stdout + res.stderr  # it recognised the IOD and checked it
    assert errors == [], errors
    for f in (folder / "CT.0001.dcm", folder / "RS.dcm"):  # and the CT and RTSTRUCT of write_dicom
        res = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], (f.name, errors)


def test_rtdose_of_a_512_ct_is_a_few_mb(tmp_path):
    n, sp = 512, 0.9765625
    nz = 40
    r = np.hypot(*np.mgrid[0:n, 0:n] - (n - 1) / 2) * sp
    body2d = r < 90
    ct = np.where(body2d, 30, -1000).astype(np.int16)[None].repeat(nz, 0)
    body = np.broadcast_to(body2d, (nz, n, n)).copy()
    dose = (70 * np.exp(-(r / 60) ** 2) * body2d).astype(np.float32)[None].repeat(nz, 0)
    rs = RoiSet((Roi("PTV70", "target", 70.0),))
    g = Geometry.from_dicom((-(n - 1) * sp / 2, -(n - 1) * sp / 2, -60.0), (1, 0, 0, 0, 1, 0), (3.0, sp, sp))
    p = Patient.from_masks("big", ct, {"PTV70": r[None].repeat(nz, 0) < 30}, rs, g.spacing, body, dose,
                           geometry=g)
    path = dicom.write_rtdose(p, dose, tmp_path)
    size = path.stat().st_size
    assert size < 5e6, size  # the CT grid would be 512*512*40*4 B = 42 MB
    d, dg = dicom.read_rtdose(path)
    assert dg.spacing == (3.0, 2.5, 2.5)
    # the coarse grid covers the body and reproduces the dose at its own voxel centres
    idx = np.argwhere(d > 0)
    pts = dg.to_patient(idx)
    inner = np.hypot(pts[:, 0], pts[:, 1]) < 85  # away from the body edge, where the dose steps to 0
    assert inner.sum() > 1000
    src = np.rint(g.to_index(pts[inner])).astype(int)
    want = dose[tuple(src.T)]
    # trilinear at the point vs the nearest CT voxel (<= 0.7 mm away, gradient <= 1 Gy/mm)
    assert np.abs(d[tuple(idx[inner].T)] - want).max() < 0.8
    big = dicom.write_rtdose(p, dose, tmp_path / "fine.dcm", dose_spacing=(3.0, sp, sp))
    assert big.stat().st_size > 3 * size


# --------------------------------------------------------------------------- prescriptions

def test_target_named_ptv_gets_its_prescription_from_the_rtplan(tmp_path):
    folder = dicom.write_dicom(make_patient(), tmp_path)
    rename_rois(folder / "RS.dcm", {"PTV70": "PTV", "Ring": "CTV_boost"}, {"CTV_boost": "CTV"})
    (p,) = quiet_read(folder)
    assert p.roi_set["PTV"].kind == "target" and p.roi_set["PTV"].prescription is None
    assert p.roi_set["CTV_boost"].kind == "target"
    write_rtplan(folder, folder / "RS.dcm", {"PTV": 60.0})
    (p,) = quiet_read(folder)
    assert p.roi_set["PTV"] == Roi("PTV", "target", 60.0)
    assert "RTPLAN" in p.meta["prescriptions_from"]["PTV"]
    assert p.meta["fractions"] == 30


def test_site_prescription_goes_to_the_only_target(tmp_path):
    folder = dicom.write_dicom(make_patient(), tmp_path)
    rename_rois(folder / "RS.dcm", {"PTV70": "PTV"})
    write_rtplan(folder, folder / "RS.dcm", {"PTV": 54.0}, by_roi=False)
    (p,) = quiet_read(folder)
    assert p.roi_set["PTV"].prescription == 54.0


def test_site_prescription_of_a_named_target_is_not_given_to_another(tmp_path):
    """An SIB structure set with PTV70 named for its dose and the elective PTV without one (PTV_elective,
    RTROIInterpretedType PTV), and an RTPLAN whose one SITE-level prescription (no ReferencedROINumber,
    as a planning system's primary reference point) is 70 Gy: that is PTV70's dose, not the elective
    volume's. PTV_elective was imported as a 70 Gy target without a word (and an ROI map naming it PTV56
    lost to it: "the name says 56 Gy, RTPLAN prescribes 70 Gy; using the plan's"). It now keeps no
    prescription, with a warning naming both ROIs; a SITE dose that is no named target's still goes to
    the only target without one."""
    folder = dicom.write_dicom(make_patient(), tmp_path)
    rename_rois(folder / "RS.dcm", {"Ring": "PTV_elective"}, {"PTV_elective": "PTV"})
    write_rtplan(folder, folder / "RS.dcm", {"PTV70": 70.0}, by_roi=False)
    with pytest.warns(dicom.DicomWarning, match=r"SITE-level prescription \(70 Gy.*PTV70.*not given to "
                                                r"PTV_elective"):
        (p,) = dicom.read_dicom_folder(folder)
    assert p.roi_set["PTV70"] == Roi("PTV70", "target", 70.0)
    assert p.roi_set["PTV_elective"] == Roi("PTV_elective", "target", None)
    m = RoiMap.from_obj({"PTV_elective": "PTV56"})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        (p,) = dicom.read_dicom_folder(folder, m)
    assert p.roi_set["PTV56"] == Roi("PTV56", "target", 56.0)
    assert not [w for w in seen if "using the plan's" in str(w.message)]
    write_rtplan(folder, folder / "RS.dcm", {"PTV70": 56.0}, by_roi=False)  # replaces RP.dcm
    (p,) = quiet_read(folder)
    assert p.roi_set["PTV_elective"] == Roi("PTV_elective", "target", 56.0)


def test_site_prescription_of_a_named_target_s_dose_level_is_not_given_to_another(tmp_path):
    """As above with the SITE dose a fractionation's rounding of the named one: PTV70 named for 70 Gy,
    the RTPLAN's one SITE-level prescription 33 x 2.12 = 69.96 Gy (0.06 % apart, one dose level by
    patient.same_level). The exact comparison (1e-3 Gy) gave the elective PTV 69.96 Gy without a word;
    it keeps none, with the warning. A SITE dose of another level (66 Gy, 5.7 % from 70) still goes to
    it."""
    folder = dicom.write_dicom(make_patient(), tmp_path)
    rename_rois(folder / "RS.dcm", {"Ring": "PTV_elective"}, {"PTV_elective": "PTV"})
    write_rtplan(folder, folder / "RS.dcm", {"PTV70": 69.96}, fractions=33, by_roi=False)
    with pytest.warns(dicom.DicomWarning, match=r"SITE-level prescription \(69.96 Gy.*PTV70.*not given to "
                                                r"PTV_elective"):
        (p,) = dicom.read_dicom_folder(folder)
    assert p.roi_set["PTV70"] == Roi("PTV70", "target", 70.0)
    assert p.roi_set["PTV_elective"] == Roi("PTV_elective", "target", None)
    write_rtplan(folder, folder / "RS.dcm", {"PTV70": 66.0}, fractions=33, by_roi=False)
    (p,) = quiet_read(folder)
    assert p.roi_set["PTV_elective"] == Roi("PTV_elective", "target", 66.0)


def test_plan_wins_over_the_name_with_a_warning(tmp_path):
    folder = dicom.write_dicom(make_patient(), tmp_path)
    write_rtplan(folder, folder / "RS.dcm", {"PTV70": 66.0})
    with pytest.warns(dicom.DicomWarning, match=r"the name says 70 Gy, RTPLAN .*RP.dcm prescribes 66 Gy"):
        (p,) = dicom.read_dicom_folder(folder)
    assert p.roi_set["PTV70"].prescription == 66.0


def test_plan_doses_of_two_absent_rtplans_are_refused(tmp_path):
    """A sequential boost exported as CT, RTSTRUCT and one PLAN RTDOSE per phase (50 + 20 Gy), without
    the RTPLANs: each RTDOSE references its own plan, absent. The first by path (phase 1, 50 Gy of the
    70) was taken as the patient's dose with only a 'several RTDOSE files match' warning. Nothing says
    whether they add up (a boost) or one replaces the other (a re-plan): one error naming both files and
    the ways out, as with the RTPLANs present; two doses of one plan stay a warning."""
    p = make_patient()
    folder = dicom.write_dicom(p, tmp_path / "pt")
    rd = pydicom.dcmread(folder / "RD.dcm")
    plans = [pydicom.uid.generate_uid(), pydicom.uid.generate_uid()]
    for name, share, plan in (("RD.phase1.dcm", 50 / 70, plans[0]), ("RD.phase2.dcm", 20 / 70, plans[1])):
        x = pydicom.dcmread(folder / "RD.dcm")
        x.PixelData = np.rint(rd.pixel_array * share).astype(np.uint32).tobytes()
        x.SOPInstanceUID = x.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ref = pydicom.dataset.Dataset()
        ref.ReferencedSOPClassUID = dicom.RTPLAN_STORAGE
        ref.ReferencedSOPInstanceUID = plan
        x.ReferencedRTPlanSequence = [ref]
        x.save_as(folder / name)
    (folder / "RD.dcm").unlink()
    with pytest.raises(dicom.DicomImportError, match=r"2 PLAN RTDOSE files of 2 different RTPLANs.*"
                                                     r"RD\.phase1\.dcm.*RD\.phase2\.dcm.*MULTI_PLAN"):
        quiet_read(tmp_path)
    # the same plan twice (a recalculation beside the first): the first by path, with a warning
    x = pydicom.dcmread(folder / "RD.phase2.dcm")
    x.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID = plans[0]
    x.save_as(folder / "RD.phase2.dcm")
    with pytest.warns(dicom.DicomWarning, match="2 RTDOSE files match"):
        (q,) = dicom.read_dicom_folder(tmp_path)
    np.testing.assert_allclose(q.dose, p.dose * 50 / 70 * p.possible_dose_mask,
                               atol=float(rd.DoseGridScaling) + 1e-5)  # phase 1's, rounded to its scaling


def test_two_plans_sharing_a_frame_of_reference_each_get_their_dose(tmp_path):
    """Two CT series (a re-plan) in one FrameOfReference, each with RTSTRUCT, RTPLAN and RTDOSE: each
    RTDOSE goes to the series its RTPLAN references, not to the first match."""
    a = make_patient("pt_a")
    b = make_patient("pt_a", shift=2).with_dose(a.dose * 0.5)
    fa = dicom.write_dicom(a, tmp_path / "a")
    frame = pydicom.dcmread(fa / "CT.0001.dcm").FrameOfReferenceUID
    b.meta["frame_of_reference_uid"] = frame
    b.meta["source"] = "replan"
    fb = dicom.write_dicom(b, tmp_path / "b")
    mixed = tmp_path / "mixed"
    for tag, f in (("a", fa), ("b", fb)):
        rp = write_rtplan(f, f / "RS.dcm", {"PTV70": 70.0})
        rd = pydicom.dcmread(f / "RD.dcm")
        ref = pydicom.dataset.Dataset()
        ref.ReferencedSOPClassUID = dicom.RTPLAN_STORAGE
        ref.ReferencedSOPInstanceUID = pydicom.dcmread(rp).SOPInstanceUID
        rd.ReferencedRTPlanSequence = [ref]
        del rd.ReferencedStructureSetSequence
        rd.save_as(f / "RD.dcm")
        shutil.copytree(f, mixed / tag)
    pats = quiet_read(mixed)
    assert len(pats) == 2
    by_max = sorted(pats, key=lambda q: float(q.dose.max()))
    np.testing.assert_allclose(by_max[0].dose, a.dose * 0.5, atol=1e-5)
    np.testing.assert_allclose(by_max[1].dose, a.dose, atol=1e-5)
    assert {q.meta["rtdose_matched_by"] for q in pats} == {"referenced RTPLAN"}


# ---------------------------------------------------------------------- evaluate, inspect

def _cli(args: list[str]):
    from typer.testing import CliRunner

    from dosepred.cli import app

    return CliRunner().invoke(app, args)


PROTOCOL = {"name": "t", "criteria": [
    {"roi": "PTV70", "metric": "D95%", "limit": 66.5, "direction": ">="},
    {"roi": "LeftParotid", "metric": "Dmean", "limit": 26, "direction": "<="}]}


def test_evaluate_rtdose_predictions_against_dicom_and_cache_references(tmp_path):
    import json

    proto = tmp_path / "proto.json"
    proto.write_text(json.dumps(PROTOCOL))
    p = make_patient()
    ref = dicom.write_dicom(p, tmp_path / "ref")
    (q,) = quiet_read(ref)
    pred = tmp_path / "pred"
    dicom.write_rtdose(q, q.dose, pred / q.id, dose_spacing=q.spacing, model_name="m")
    res = _cli(["evaluate", "--reference", str(tmp_path / "ref"), "--prediction", str(pred),
                "--json", str(tmp_path / "e.json"), "--no-progress", "--protocol", str(proto)])
    assert res.exit_code == 0, res.output
    js = json.loads((tmp_path / "e.json").read_text())
    assert js["patients"] == ["pt_a"] and js["dose_score"] < 1e-4
    cache.write_cache([q], tmp_path / "c", roi_set=q.roi_set)
    res = _cli(["evaluate", "--reference", str(tmp_path / "c"), "--prediction", str(pred),
                "--json", str(tmp_path / "e2.json"), "--no-progress", "--protocol", str(proto)])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e2.json").read_text())["dose_score"] < 1e-4
    # a coarser prediction grid is resampled onto the reference grid in patient coordinates
    shutil.rmtree(pred)
    dicom.write_rtdose(q, q.dose, pred / q.id, model_name="m")
    res = _cli(["evaluate", "--reference", str(tmp_path / "c"), "--prediction", str(pred),
                "--json", str(tmp_path / "e3.json"), "--no-progress", "--protocol", str(proto)])
    assert res.exit_code == 0, res.output
    assert 0 < json.loads((tmp_path / "e3.json").read_text())["dose_score"] < 1.0


def test_a_dicom_reference_given_as_its_own_prediction_is_refused(tmp_path):
    """--prediction the DICOM reference folder itself (or a link to it, or its parent): each patient's plan
    RTDOSE was matched as its prediction and scored against itself, dose score 0.00, exit 0, without a
    word. A match that is a reference plan dose is refused; a predicted RTDOSE beside it still pairs."""
    import json

    proto = tmp_path / "proto.json"
    proto.write_text(json.dumps(PROTOCOL))
    ref = dicom.write_dicom(make_patient(), tmp_path / "ref")
    (q,) = quiet_read(ref)
    (tmp_path / "link").symlink_to(tmp_path / "ref")
    for pred in (tmp_path / "ref", tmp_path / "link", tmp_path):
        res = _cli(["evaluate", "--reference", str(tmp_path / "ref"), "--prediction", str(pred),
                    "--no-progress", "--protocol", str(proto)])
        text = " ".join(res.output.split())
        assert res.exit_code == 2, text
        assert "error: patient pt_a: the RTDOSE matched as its prediction" in text, text
        assert "is the plan dose of reference patient pt_a" in text, text
    pred = tmp_path / "pred"
    dicom.write_rtdose(q, q.dose * 0.9, pred / q.id, dose_spacing=q.spacing, model_name="m")
    res = _cli(["evaluate", "--reference", str(tmp_path / "ref"), "--prediction", str(pred),
                "--json", str(tmp_path / "e.json"), "--no-progress", "--protocol", str(proto)])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["dose_score"] > 0.1


def test_evaluate_rtdose_predictions_of_openkbp_patients(tmp_path, sample):
    """What `predict --format dicom` writes for an OpenKBP folder is found (PatientID) and placed
    back on the OpenKBP grid exactly."""
    from dosepred.predict import write_prediction

    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copytree(sample / "pt_196", ref / "pt_196")
    p = openkbp.read_patient(ref / "pt_196")
    write_prediction(p, p.dose, tmp_path / "pred", "dicom", model_name="m")
    res = _cli(["evaluate", "--reference", str(ref), "--prediction", str(tmp_path / "pred"),
                "--json", str(tmp_path / "e.json"), "--no-progress"])
    assert res.exit_code == 0, res.output
    import json

    assert json.loads((tmp_path / "e.json").read_text())["dose_score"] < 1e-5


def test_inspect_any_source(tmp_path):
    p = make_patient()
    folder = write_layout(p, tmp_path / "dcm", "feet_first")
    res = _cli(["data", "inspect", str(tmp_path / "dcm")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "dicom" in out and "S->I" in out and "pt_a" in out
    (q,) = quiet_read(folder)
    nifti.write_patient(q, tmp_path / "nii")
    res = _cli(["data", "inspect", str(tmp_path / "nii")])
    assert res.exit_code == 0, res.output
    assert "nifti" in res.output and "pt_a" in res.output
    res = _cli(["data", "inspect", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "does not exist" in res.output


MODEL = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae"


def test_predict_dicom_in_rtdose_out_and_evaluate(tmp_path, sample):
    """`predict --data DICOM --format dicom --dose-spacing 4` writes an RTDOSE in the source's frame of
    reference, referencing its RTSTRUCT, named after the model; `evaluate` reads it back."""
    src = tmp_path / "dcm"
    dicom.write_dicom(openkbp.read_patient(sample / "pt_66"), src)
    res = _cli(["predict", "--model", str(MODEL), "--data", str(src), "--out", str(tmp_path / "pred"),
                "--format", "dicom", "--dose-spacing", "4", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    (path,) = sorted((tmp_path / "pred").rglob("*.dcm"))
    rd = pydicom.dcmread(path)
    rs = pydicom.dcmread(src / "pt_66" / "RS.dcm")
    assert rd.FrameOfReferenceUID == rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert rd.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    assert "openkbp-mae" in rd.SeriesDescription and rd.PatientID == "pt_66"
    assert [float(v) for v in rd.PixelSpacing] == [4.0, 4.0] and path.stat().st_size < 5e6
    res = _cli(["evaluate", "--reference", str(src), "--prediction", str(tmp_path / "pred"),
                "--json", str(tmp_path / "e.json"), "--no-progress"])
    assert res.exit_code == 0, res.output
    import json

    js = json.loads((tmp_path / "e.json").read_text())
    # predicted in the model's space (issue #13: 8.59 Gy before); the OpenKBP path gives ~2.1-2.4 Gy
    assert js["patients"] == ["pt_66"] and 0 < js["dose_score"] < 3.0


def test_evaluate_against_a_nifti_reference(tmp_path):
    import json

    proto = tmp_path / "proto.json"
    proto.write_text(json.dumps(PROTOCOL))
    (q,) = quiet_read(dicom.write_dicom(make_patient(), tmp_path / "dcm"))
    nifti.write_patient(q, tmp_path / "nii")
    dicom.write_rtdose(q, q.dose * 0.95, tmp_path / "pred", dose_spacing=q.spacing)
    res = _cli(["evaluate", "--reference", str(tmp_path / "nii"), "--prediction", str(tmp_path / "pred"),
                "--protocol", str(proto), "--json", str(tmp_path / "e.json"), "--no-progress"])
    assert res.exit_code == 0, res.output
    js = json.loads((tmp_path / "e.json").read_text())
    body = q.possible_dose_mask
    want = float(np.abs(q.dose * 0.05)[body].mean())  # OpenKBP dose score: mean |diff| in the mask
    assert js["dose_score"] == pytest.approx(want, rel=1e-3)
