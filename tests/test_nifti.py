"""NIfTI patient folders: exact round trips, affine geometry, clinical label names, CLI."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from dosepred.errors import InputError
from dosepred.io import dicom, nifti
from dosepred.patient import Patient, Roi, RoiSet
from test_dicom import make_patient


def assert_same(p: Patient, q: Patient) -> None:
    assert q.id == p.id
    assert q.shape == p.shape and q.spacing == p.spacing
    np.testing.assert_array_equal(q.ct, p.ct)
    assert q.ct.dtype == np.int16
    np.testing.assert_array_equal(q.dose, p.dose)
    np.testing.assert_array_equal(q.possible_dose_mask, p.possible_dose_mask)
    assert q.roi_set == p.roi_set
    np.testing.assert_array_equal(q.roi_codes, p.roi_codes)
    assert q.missing_rois == p.missing_rois


@pytest.mark.parametrize("fmt", ["labels", "codes"])
def test_round_trip_exact(tmp_path, fmt):
    p = make_patient(spacing=(3.9, 1.17, 1.17))
    # a missing ROI and a non-OpenKBP order must survive too
    rs = RoiSet((Roi("Ring", "other"), Roi("PTV70", "target", 70.0), Roi("LeftParotid", "oar"),
                 Roi("SpinalCord", "oar")))
    p = Patient.from_masks(p.id, p.ct, {n: p.mask(n) for n in ("Ring", "PTV70", "LeftParotid")}, rs,
                           p.spacing, p.possible_dose_mask, p.dose, meta={"study_date": "20240131"})
    folder = nifti.write_patient(p, tmp_path, fmt)
    names = sorted(f.name for f in folder.iterdir())
    if fmt == "codes":
        assert "roi_codes.nii.gz" in names and "rois" not in names
    else:
        assert sorted(f.name for f in (folder / "rois").iterdir()) == [
            "LeftParotid.nii.gz", "PTV70.nii.gz", "Ring.nii.gz"]
    (q,) = nifti.read_nifti_folder(tmp_path)
    assert_same(p, q)
    assert q.meta["study_date"] == "20240131"
    img = nib.load(folder / "ct.nii.gz")
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), (3.9, 1.17, 1.17), rtol=1e-6)
    np.testing.assert_allclose(img.affine, p.geometry.ras_affine, atol=1e-4)
    assert q.geometry == p.geometry


def _scaled_affine(tmp_path, scale: float, unit: str) -> None:
    """A NIfTI patient under ``tmp_path/src`` whose CT affine is scaled by ``scale`` under the header
    unit ``unit``, without rois.json's geometry (the header alone places the voxels)."""
    folder = nifti.write_patient(make_patient(), tmp_path / "src")
    img = nib.load(folder / "ct.nii.gz")
    aff = img.affine.copy()
    aff[:3, :] *= scale
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header.copy())
    out.set_sform(aff, code=1)
    out.set_qform(aff, code=1)
    out.header.set_xyzt_units(unit)
    nib.save(out, folder / "ct.nii.gz")
    info = json.loads((folder / "rois.json").read_text())
    info.pop("geometry")
    (folder / "rois.json").write_text(json.dumps(info))


@pytest.mark.parametrize("unit, per_mm", [("unknown", 1e-3), ("mm", 1e-3), ("unknown", 1e3)])
def test_an_affine_in_metres_or_microns_whose_header_says_mm_is_refused(tmp_path, unit, per_mm):
    """A CT whose affine is in metres (or microns) but whose header says nothing ("unknown", read as mm
    as every tool does) or mm was read with 0.0039 mm (or 3900 mm) voxels: every volume and cc metric
    off by 1e9, without a word. Voxel sizes no CT has are now refused naming the file and the unit."""
    _scaled_affine(tmp_path, per_mm, unit)
    with pytest.raises(nifti.NiftiFormatError, match=rf"ct\.nii\.gz: voxel sizes .* mm \(header unit "
                                                     rf"'{unit}'\) are no CT's \(0\.05-50 mm\)"):
        nifti.read_nifti_folder(tmp_path / "src")


@pytest.mark.parametrize("header, affine_in, fix", [("meter", 1.0, "mm"), ("micron", 1.0, "mm"),
                                                     ("unknown", 1e-3, "meter"), ("mm", 1e3, "micron")])
def test_voxel_sizes_no_ct_has_name_the_unit_that_would_read_them(tmp_path, header, affine_in, fix):
    """The refusal of voxel sizes no CT has told every file to set xyzt_units to 'meter': also a file
    whose header already says 'meter' (an affine in mm under a wrong unit: the remedy is 'mm'), and one
    in microns (3900 mm voxels, where 'meter' would make them 3.9e6 mm). It names the unit in which the
    affine reads as a CT's voxel sizes (by hand: 2.5/2/2 mm voxels times ``affine_in``)."""
    _scaled_affine(tmp_path, affine_in, header)
    with pytest.raises(nifti.NiftiFormatError) as e:
        nifti.read_nifti_folder(tmp_path / "src")
    assert f"(header unit '{header}')" in str(e.value)
    assert f"set_xyzt_units('{fix}')" in str(e.value), str(e.value)
    assert [u for u in ("mm", "meter", "micron") if f"set_xyzt_units('{u}')" in str(e.value)] == [fix]


def test_the_unit_remedy_names_every_file_of_the_patient_and_works(tmp_path):
    """An exporter writing metres under 'mm' does so in every file of the patient. The refusal named
    ct.nii.gz and told it to set xyzt_units to 'meter': done for that file alone, the next read said
    the dose 'is not on the grid of ct.nii.gz ... every file must share the CT's affine', though the
    affines agreed. The remedy names the patient's other files too, and done as said, it reads."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "src")
    files = sorted(folder.rglob("*.nii.gz"))
    for f in files:
        img = nib.load(f)
        aff = img.affine.copy()
        aff[:3, :] *= 1e-3
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header.copy())
        out.set_sform(aff, code=1)
        out.set_qform(aff, code=1)
        out.header.set_xyzt_units("mm")
        nib.save(out, f)
    with pytest.raises(nifti.NiftiFormatError) as e:
        nifti.read_nifti_folder(tmp_path / "src")
    assert "set_xyzt_units('meter')" in str(e.value)
    assert "every file of the patient" in str(e.value), str(e.value)
    for f in files:
        img = nib.load(f)
        img.header.set_xyzt_units("meter")
        nib.save(img, f)
    (q,) = nifti.read_nifti_folder(tmp_path / "src")
    assert np.allclose(q.spacing, p.spacing)


@pytest.mark.parametrize("unit, per_mm", [("meter", 1e-3), ("micron", 1e3)])
def test_an_affine_in_metres_or_microns_is_read_in_millimetres(tmp_path, unit, per_mm):
    """The NIfTI standard gives the affine in the header's spatial unit (xyzt_units), which nibabel
    leaves as it is: a file in metres was read with 0.0025 mm voxels (every volume and cc metric off by
    1e9, without a word). Read in millimetres now, as ITK does; a predicted dose's grid alike."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "src")
    nifti.write_dose(p, p.dose, tmp_path / "pred" / f"{p.id}.nii.gz")
    files = sorted(folder.rglob("*.nii.gz")) + [tmp_path / "pred" / f"{p.id}.nii.gz"]
    for f in files:
        img = nib.load(f)
        aff = img.affine.copy()
        aff[:3, :] *= per_mm
        out = nib.Nifti1Image(np.asanyarray(img.dataobj), aff, img.header.copy())
        out.set_sform(aff, code=1)
        out.set_qform(aff, code=1)
        out.header.set_xyzt_units(unit)
        nib.save(out, f)
    info = json.loads((folder / "rois.json").read_text())
    info.pop("geometry")  # the header alone places the voxels
    (folder / "rois.json").write_text(json.dumps(info))
    (q,) = nifti.read_nifti_folder(tmp_path / "src")
    np.testing.assert_allclose(q.spacing, p.spacing, rtol=1e-5)
    np.testing.assert_allclose(q.geometry.origin, p.geometry.origin, atol=1e-3)
    assert q.voxel_volume_cc == pytest.approx(float(np.prod(p.spacing)) / 1000, rel=1e-5)
    g = nifti.file_geometry(tmp_path / "pred" / f"{p.id}.nii.gz")
    np.testing.assert_allclose(g.spacing, p.spacing, rtol=1e-5)


@pytest.mark.parametrize("name, value, message", [
    ("ct.nii.gz", np.nan, "ct.nii.gz holds 1 NaN/inf voxel(s); a CT is a finite number of HU in every voxel"),
    ("dose.nii.gz", -0.5, "dose.nii.gz holds negative doses (1 voxel(s), min -0.5 Gy); a dose must be "
                          ">= 0 Gy"),
])
def test_a_nan_ct_or_negative_dose_voxel_names_its_file(tmp_path, name, value, message):
    """A float CT with a NaN voxel or a dose with a negative one was refused as "patient pt_a: CT contains
    NaN/inf" / "dose must be >= 0 Gy", naming neither the file nor how many voxels: now both."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "src")
    img = nib.load(folder / name)
    arr = np.asanyarray(img.dataobj).astype(np.float32)
    arr[16, 16, 16] = value
    out = nib.Nifti1Image(arr, img.affine, img.header.copy())
    out.header.set_data_dtype(np.float32)
    nib.save(out, folder / name)
    with pytest.raises(nifti.NiftiFormatError) as e:
        nifti.read_nifti_folder(tmp_path / "src")
    assert str(e.value) == f"patient {p.id}: {folder}/{message}"


def test_affine_of_dicom_patient(tmp_path):
    """A patient read from DICOM: the NIfTI affine maps voxel (k, r, c) to the DICOM position (RAS)."""
    p = make_patient()
    (q,) = dicom.read_dicom_folder(dicom.write_dicom(p, tmp_path / "dcm"))
    folder = nifti.write_patient(q, tmp_path / "nii")
    aff = nib.load(folder / "ct.nii.gz").affine
    g = q.geometry
    for idx in ([0, 0, 0], [3, 5, 7], [31, 2, 30]):
        lps = g.to_patient(np.array(idx, dtype=float))
        ras = aff @ np.array([*idx, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
    (r,) = nifti.read_nifti_folder(tmp_path / "nii")
    assert_same(q, r)
    assert r.geometry == q.geometry  # exact: the sidecar's full-precision geometry agrees with the header


def test_dose_files(tmp_path):
    p = make_patient()
    path = nifti.write_dose(p, p.dose * 0.5, tmp_path / "pred")
    assert path == tmp_path / "pred" / "pt_a.nii.gz"
    d = nifti.read_dose(path)
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, (p.dose * 0.5).astype(np.float32))
    assert nifti.write_dose(p, p.dose, tmp_path / "x.nii.gz") == tmp_path / "x.nii.gz"
    # an uncompressed .nii is written uncompressed (it was gzip data under a .nii name before)
    assert nifti.write_dose(p, p.dose, tmp_path / "u.nii") == tmp_path / "u.nii"
    assert (tmp_path / "u.nii").read_bytes()[:2] != b"\x1f\x8b"
    np.testing.assert_array_equal(nifti.read_dose(tmp_path / "u.nii"), p.dose.astype(np.float32))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["pred", "u.nii", "x.nii.gz"]  # no temporary
    with pytest.raises(ValueError, match="dose shape"):
        nifti.write_dose(p, p.dose[1:], tmp_path / "y.nii.gz")
    with pytest.raises(FileNotFoundError):
        nifti.read_dose(tmp_path / "missing.nii.gz")


def test_dose_in_cgy_is_refused(tmp_path):
    """A dose written in cGy (integers, 7167 for 71.67 Gy) was read as 7167 Gy, into a cache and into
    evaluation, without a word; refused like an RTDOSE over 1000 Gy, as a patient's dose and as a
    predicted dose file."""
    p = make_patient()
    cgy = np.rint(p.dose * 100).astype(np.int16)
    assert 7000 < cgy.max() < 7200
    nifti.write_patient(p, tmp_path / "nii", dose=cgy)
    with pytest.raises(nifti.NiftiFormatError, match=r"dose\.nii\.gz: maximum dose 7167 Gy is not a "
                       r"radiotherapy dose \(a dose in cGy\?"):
        nifti.read_nifti_folder(tmp_path / "nii")
    path = nifti.write_dose(p, cgy, tmp_path / "pred")
    with pytest.raises(nifti.NiftiFormatError, match="is not a radiotherapy dose"):
        nifti.read_dose(path)


def test_clinical_label_files_without_json(tmp_path):
    p = make_patient()
    folder = tmp_path / "case1"
    (folder / "rois").mkdir(parents=True)
    aff = np.diag([*p.spacing, 1.0])
    nib.save(nib.Nifti1Image(p.ct, aff), folder / "ct.nii.gz")
    rois = folder / "rois"
    nib.save(nib.Nifti1Image(p.mask("LeftParotid").astype(np.uint8) * 3, aff), rois / "Parotid_L.nii.gz")
    nib.save(nib.Nifti1Image(p.mask("PTV70").astype(np.uint8), aff), folder / "rois" / "PTV_7000.nii.gz")
    nib.save(nib.Nifti1Image(p.possible_dose_mask.astype(np.uint8), aff), folder / "rois" / "BODY.nii.gz")
    (q,) = nifti.read_nifti_folder(tmp_path)
    assert q.id == "case1" and q.dose is None
    assert q.roi_set.names == ("LeftParotid", "PTV70")
    assert q.roi_set["PTV70"].prescription == 70.0
    np.testing.assert_array_equal(q.mask("LeftParotid"), p.mask("LeftParotid"))
    np.testing.assert_array_equal(q.possible_dose_mask, p.possible_dose_mask)


def test_numbered_ptv_label_files_carry_no_prescription(tmp_path):
    """plastimatch / Slicer label files of a plan whose targets are numbered (PTV1, PTV2: many clinics'
    and RTOG protocols' high- and low-dose targets) entered the cache as targets of 1 and 2 Gy, with no
    error when no dose came with them. The number is no dose: they carry none (rois.json gives it)."""
    p = make_patient()
    folder = tmp_path / "case1"
    (folder / "rois").mkdir(parents=True)
    aff = np.diag([*p.spacing, 1.0])
    nib.save(nib.Nifti1Image(p.ct, aff), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(p.mask("PTV70").astype(np.uint8), aff), folder / "rois" / "PTV1.nii.gz")
    nib.save(nib.Nifti1Image(p.mask("Ring").astype(np.uint8), aff), folder / "rois" / "PTV_2.nii.gz")
    (q,) = nifti.read_nifti_folder(tmp_path)
    assert [(r.name, r.prescription) for r in q.roi_set.rois] == [("PTV1", None), ("PTV_2", None)]
    np.testing.assert_array_equal(q.mask("PTV1"), p.mask("PTV70"))
    # the sidecar names their prescriptions
    (folder / "rois.json").write_text(json.dumps({"rois": [
        {"name": "PTV1", "kind": "target", "prescription": 70.0},
        {"name": "PTV_2", "kind": "target", "prescription": 56.0}]}))
    (q,) = nifti.read_nifti_folder(tmp_path)
    assert [(r.name, r.kind, r.prescription) for r in q.roi_set.rois] == [
        ("PTV1", "target", 70.0), ("PTV_2", "target", 56.0)]


def test_several_body_label_files_are_united(tmp_path):
    """Label files BODY and External (each half of the body here), without possible_dose_mask.nii.gz:
    the possible-dose mask is their union, as for two DICOM ROIs that both name the body; only the
    first by name was used (half the body)."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "nii")
    body = np.asarray(p.possible_dose_mask)
    lo, hi = body.copy(), body.copy()
    lo[16:], hi[:16] = False, False
    (folder / nifti.MASK_FILE).unlink()
    (folder / nifti.ROIS_JSON).unlink()
    aff = nifti.patient_affine(p)
    for name, m in (("BODY", lo), ("External", hi)):
        nib.save(nib.Nifti1Image(m.astype(np.uint8), aff), folder / "rois" / f"{name}.nii.gz")
    (q,) = nifti.read_nifti_folder(tmp_path / "nii")
    assert np.array_equal(q.possible_dose_mask, body)


def test_shape_mismatch_names_file(tmp_path):
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), folder / "dose.nii.gz")
    with pytest.raises(nifti.NiftiFormatError, match=r"pt_a: .*dose.nii.gz has shape \(4, 4, 4\)"):
        nifti.read_nifti_folder(tmp_path)


def test_two_patients_union(tmp_path):
    a = make_patient("pt_a")
    b = Patient.from_masks("pt_b", a.ct, {"SpinalCord": a.mask("LeftParotid")},
                           RoiSet((Roi("SpinalCord", "oar"),)), a.spacing)
    nifti.write_patient(a, tmp_path)
    nifti.write_patient(b, tmp_path, "codes")
    pats = {p.id: p for p in nifti.read_nifti_folder(tmp_path)}
    assert pats["pt_a"].roi_set.names == ("SpinalCord", "LeftParotid", "PTV70", "Ring")
    assert pats["pt_b"].missing_rois == ("LeftParotid", "PTV70", "Ring")
    np.testing.assert_array_equal(pats["pt_b"].mask("SpinalCord"), a.mask("LeftParotid"))


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io.cache import Cache, write_cache

    p = make_patient()
    write_cache([p], tmp_path / "c")
    runner = CliRunner()
    res = runner.invoke(app, ["data", "export-nifti", str(tmp_path / "c"), "--out", str(tmp_path / "n"),
                              "--roi-format", "codes", "--no-progress"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "n" / "pt_a" / "rois.json").read_text())
    assert info["roi_format"] == "codes" and [r["name"] for r in info["rois"]] == list(p.roi_set.names)
    res = runner.invoke(app, ["data", "import-nifti", str(tmp_path / "n"), "--out", str(tmp_path / "c2"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert_same(p, next(iter(Cache.open(tmp_path / "c2"))))
    res = runner.invoke(app, ["data", "export-nifti", str(tmp_path / "c"), "--out", str(tmp_path / "n"),
                              "--roi-format", "onehot"])
    assert res.exit_code == 2 and "labels or codes" in res.output


def test_any_orientation_from_the_affine_and_on_to_dicom(tmp_path):
    """A NIfTI written by another tool with a permuted, flipped and slightly rotated affine: the
    geometry is the affine's (RAS -> LPS), voxels land at the same patient points after DICOM export
    and re-import."""
    from dosepred.geometry import Geometry

    p = make_patient()
    a = np.deg2rad(3.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    cols = rot @ np.array([[0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]])  # RAS directions of the array axes
    aff = np.eye(4)
    aff[:3, :3] = cols * np.array(p.spacing)
    aff[:3, 3] = (12.5, -40.0, 7.25)
    folder = tmp_path / "case"
    (folder / "rois").mkdir(parents=True)
    nib.save(nib.Nifti1Image(p.ct, aff), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(p.mask("PTV70").astype(np.uint8), aff), folder / "rois" / "PTV_70.nii.gz")
    (q,) = nifti.read_nifti_folder(tmp_path)
    want = Geometry.from_ras_affine(nib.load(folder / "ct.nii.gz").affine)
    assert q.geometry.same_as(want, tol_mm=1e-4, tol_dir=1e-6)
    # a voxel's patient point, by hand: RAS = affine @ index, LPS = (-R, -A, S)
    idx = np.array([3.0, 20.0, 9.0])
    ras = aff[:3, :3] @ idx + aff[:3, 3]
    np.testing.assert_allclose(q.geometry.to_patient(idx), ras * [-1, -1, 1], atol=1e-3)
    # to DICOM and back: the PTV centroid stays where it is in patient coordinates
    (r,) = dicom.read_dicom_folder(dicom.write_dicom(q, tmp_path / "dcm"))

    def centroid(x):
        return x.geometry.to_patient(np.argwhere(x.mask("PTV70")).astype(float)).mean(axis=0)

    np.testing.assert_allclose(centroid(r), centroid(q), atol=1e-6)
    assert r.geometry.axis_letters()[0] in "SI"  # written as axial slices


def test_a_folder_without_patient_folders_is_a_format_error(tmp_path):
    """A folder holding no NIfTI patient folders is there, so not a FileNotFoundError: the format's
    own error naming the folder and what it lacks; a folder that is not there is one."""
    (tmp_path / "other").mkdir()
    with pytest.raises(nifti.NiftiFormatError, match=r"other holds no NIfTI patient folders "
                                                     r"\(sub-folders with ct\.nii\.gz or ct\.nii\)"):
        nifti.patient_folders(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nifti.patient_folders(tmp_path / "nope")


def test_a_reference_dose_in_the_air_is_read_as_0_gy_there(tmp_path):
    """A dose file with dose outside the possible-dose mask (computed in air): read as 0 Gy there, as
    OpenKBP's reference doses are and every prediction is; the share is recorded, a warning above 5 %."""
    p = make_patient()
    body = np.asarray(p.possible_dose_mask)
    air = (p.dose + np.float32(2.0)).astype(np.float32)
    folder = nifti.write_patient(p.with_dose(air), tmp_path / "nii")
    share = 100.0 * float(air[~body].sum(dtype=np.float64)) / float(air.sum(dtype=np.float64))  # by hand
    assert share > 5
    with pytest.warns(UserWarning, match=rf"patient pt_a: {share:.1f} % of the dose in \S*dose\.nii\.gz lies "
                                         r"outside the possible-dose mask; read as 0 Gy there"):
        (q,) = nifti.read_nifti_folder(folder)
    assert np.all(q.dose[~body] == 0)
    np.testing.assert_allclose(q.dose[body], air[body], atol=1e-4)
    assert abs(q.meta["dose_outside_mask_pct"] - share) < 0.01


# ------------------------------------------------------------------ files as other tools write them

def _recompress(path, gz: bool):
    """``path`` saved again as ``.nii.gz`` or ``.nii`` (the other one removed); the new path."""
    img = nib.load(path)
    new = path.with_name(path.name.split(".nii")[0] + (".nii.gz" if gz else ".nii"))
    nib.save(img, new)
    if new != path:
        path.unlink()
    return new


@pytest.mark.parametrize("fmt", ["labels", "codes"])
def test_uncompressed_files_are_read(tmp_path, fmt):
    """dcm2niix and plastimatch write .nii by default: dose.nii, possible_dose_mask.nii, roi_codes.nii
    and ct.nii were ignored (the patient had no dose and a mask of the whole grid), silently."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "src", fmt)
    for name in ("ct", "dose", "possible_dose_mask", "roi_codes"):
        if (folder / f"{name}.nii.gz").exists():
            _recompress(folder / f"{name}.nii.gz", gz=False)
    (q,) = nifti.read_nifti_folder(tmp_path / "src")
    assert_same(p, q)
    assert q.possible_dose_mask.sum() < q.possible_dose_mask.size  # the body, not the whole grid


@pytest.mark.parametrize("fmt", ["labels", "codes"])
def test_hidden_files_of_a_macos_copy_are_not_rois(tmp_path, fmt):
    """A folder copied from a Mac onto a share holds an AppleDouble ``._NAME`` beside each file (no
    image: a 4-byte magic and Finder data); ``rois/._LeftParotid.nii.gz`` was read as a label file and
    the import refused ('cannot read ROI ...: not a gzip file')."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "src", fmt)
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64)
    (folder / "rois").mkdir(exist_ok=True)
    for name in ("._ct.nii.gz", "rois/._LeftParotid.nii.gz", "rois/._PTV70.nii", ".DS_Store",
                 "rois/.DS_Store"):
        (folder / name).write_bytes(apple_double)
    (q,) = nifti.read_nifti_folder(tmp_path / "src")
    assert_same(p, q)


def test_compressed_and_uncompressed_twins_are_an_error(tmp_path):
    folder = nifti.write_patient(make_patient(), tmp_path)
    nib.save(nib.load(folder / "dose.nii.gz"), folder / "dose.nii")
    with pytest.raises(nifti.NiftiFormatError, match=r"both dose.nii.gz and dose.nii"):
        nifti.read_patient(folder)


def test_label_files_naming_one_roi_warn(tmp_path):
    """Parotid_L.nii.gz beside LeftParotid.nii.gz: their union, as for DICOM, but not without a word."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path)
    (folder / "rois.json").unlink()
    other = np.roll(p.mask("LeftParotid"), 5, axis=2).astype(np.uint8)
    nib.save(nib.Nifti1Image(other, p.geometry.ras_affine), folder / "rois" / "Parotid_L.nii.gz")
    with pytest.warns(UserWarning, match=r"LeftParotid.nii.gz, Parotid_L.nii.gz .* ROI 'LeftParotid'"):
        q = nifti.read_patient(folder)
    np.testing.assert_array_equal(q.mask("LeftParotid"), p.mask("LeftParotid") | other.astype(bool))


@pytest.mark.parametrize("values", [(0.3, 0.7, 1.0), (1, 2, 3)])
def test_label_file_that_is_no_binary_mask_is_refused(tmp_path, values):
    """A mask resampled with linear interpolation (fractions) or a label map saved as one file: every
    non-zero voxel counted as inside (the PTV grew by its partial voxels; organs merged)."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path)
    m = p.mask("PTV70").astype(np.float32)
    idx = np.argwhere(m)
    for k, v in enumerate(values):
        m[tuple(idx[k])] = v
    nib.save(nib.Nifti1Image(m, p.geometry.ras_affine), folder / "rois" / "PTV70.nii.gz")
    with pytest.raises(nifti.NiftiFormatError, match=r"PTV70.nii.gz is no binary mask: .* 3 different"):
        nifti.read_patient(folder)


@pytest.mark.parametrize("dtype,value", [(np.uint8, 255), (np.float32, np.float32(1.0000001)),
                                         (np.int64, 7), (np.float64, 1.0)])
def test_label_file_of_one_value_reads(tmp_path, dtype, value):
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path)
    m = p.mask("PTV70").astype(dtype) * value
    if dtype == np.float32:  # 1.0 beside 1.0000001: float noise, one label
        m[tuple(np.argwhere(p.mask("PTV70"))[0])] = 1.0
    nib.save(nib.Nifti1Image(m, p.geometry.ras_affine, dtype=m.dtype), folder / "rois" / "PTV70.nii.gz")
    np.testing.assert_array_equal(nifti.read_patient(folder).mask("PTV70"), p.mask("PTV70"))


def test_qform_and_sform_that_disagree_warn(tmp_path):
    """nibabel (and dosepred) place the voxels by the sform, ITK before 5.1 by the qform."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path)
    for f in [folder / "ct.nii.gz", folder / "dose.nii.gz", folder / "possible_dose_mask.nii.gz",
              *sorted((folder / "rois").iterdir())]:
        img = nib.load(f)
        s = img.get_sform()
        s[0, 3] += 10.0
        img.set_sform(s, code=2)
        nib.save(img, f)
    with pytest.warns(UserWarning, match=r"sform \(code 2\) and qform \(code 1\) place .* up to 10 mm"):
        q = nifti.read_patient(folder)
    np.testing.assert_allclose(q.geometry.origin, p.geometry.origin + [-10.0, 0, 0], atol=1e-3)  # RAS x+10


def test_sidecar_prescription_that_is_no_number(tmp_path):
    folder = nifti.write_patient(make_patient(), tmp_path)
    info = json.loads((folder / "rois.json").read_text())
    for r in info["rois"]:
        if r["name"] == "PTV70":
            r["prescription"] = "70"
    (folder / "rois.json").write_text(json.dumps(info))
    with pytest.raises(nifti.NiftiFormatError, match=r"rois.json: 'rois' must be .*prescription"):
        nifti.read_patient(folder)
    for bad in ("70", True, float("inf")):
        with pytest.raises(InputError, match="prescription must be"):
            RoiSet((Roi("PTV70", "target", bad),))


def test_a_label_map_saved_as_roi_codes_is_refused(tmp_path):
    """A label map (ROI k -> value k+1) written where bit codes belong: read as bits, value 3 would be
    ROIs 0 and 1 both. Refused, naming the file and the remedy; bit codes whose values happen to be
    1..5 (three ROIs, the first overlapping the other two a little) still read."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path, "codes")
    img = nib.load(folder / "roi_codes.nii.gz")
    codes = np.asarray(img.dataobj)
    n = len(json.loads((folder / "rois.json").read_text())["rois"])
    labels = np.zeros(codes.shape, np.uint16)
    for k in reversed(range(n)):  # the first ROI wins where they overlap, as a label map keeps one
        labels[(codes >> k) & 1 > 0] = k + 1
    assert len(np.unique(labels[labels > 0])) >= 3
    nib.save(nib.Nifti1Image(labels, img.affine, dtype=np.uint16), folder / "roi_codes.nii.gz")
    with pytest.raises(nifti.NiftiFormatError, match=r"roi_codes.nii.gz looks like a label map \(the values "
                                                     r"1-\d+, one per ROI\).*rois/<name>.nii.gz"):
        nifti.read_patient(folder)
    # legitimate bit codes of three ROIs with values 1..5: ROI 0 overlaps ROIs 1 and 2 on a few voxels
    few = np.zeros(codes.shape, np.uint16)
    flat = few.reshape(-1)
    flat[:100], flat[100:200], flat[200:300] = 1, 2, 4
    flat[300:305], flat[305:310] = 3, 5
    nib.save(nib.Nifti1Image(few, img.affine, dtype=np.uint16), folder / "roi_codes.nii.gz")
    q = nifti.read_patient(folder)
    first = json.loads((folder / "rois.json").read_text())["rois"][0]["name"]
    assert q.mask(first).sum() == 110


def test_bit_codes_of_nested_targets_with_more_values_than_rois_read(tmp_path):
    """dosepred's own export of a small ROI set: PTV70 mostly inside PTV56 (one voxel of margin
    sticking out) and a cord. Its codes take the values 1..5 with about a quarter of the ROI voxels
    in both targets, but three ROIs cannot make a label map of five values: it reads back."""
    base = make_patient()
    n = base.ct.shape[0]
    z, y, x = np.mgrid[0:n, 0:n, 0:n].astype(float)
    c = (n - 1) / 2
    masks = {"PTV56": (z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 < 9 ** 2,
             "PTV70": (z - c) ** 2 + (y - c) ** 2 + (x - c - 4) ** 2 < 6 ** 2,
             "SpinalCord": (np.hypot(y - c - 10, x - c) < 2) & (np.abs(z - c) < 12)}
    rs = RoiSet((Roi("PTV56", "target", 56.0), Roi("PTV70", "target", 70.0), Roi("SpinalCord", "oar")))
    p = Patient.from_masks("nested", base.ct, masks, rs, base.spacing, base.possible_dose_mask, base.dose,
                           geometry=base.geometry)
    nz = p.roi_codes[p.roi_codes > 0]
    assert np.unique(nz).tolist() == [1, 2, 3, 4, 5]
    assert np.mean((nz & (nz - 1)) > 0) >= nifti.LABEL_MAP_SHARE  # the share alone would refuse it
    q = nifti.read_patient(nifti.write_patient(p, tmp_path, "codes"))
    for name, m in masks.items():
        assert q.mask(name).sum() == m.sum(), name


def test_a_label_map_of_small_organs_is_refused_by_its_empty_rois(tmp_path):
    """[PTV70, Ring, LeftParotid] labelled 1, 2, 3 with the parotid small: read as bits its label
    would be PTV70 and Ring both (a few % of the voxels), but LeftParotid's bit (2) is never set though
    rois.json lists it: refused, naming it."""
    p = make_patient()
    rs = RoiSet((Roi("PTV70", "target", 70.0), Roi("Ring", "other"), Roi("LeftParotid", "oar")))
    masks = {n: p.mask(n) for n in rs.names}
    assert all(m.any() for m in masks.values())
    q = Patient.from_masks(p.id, p.ct, masks, rs, p.spacing, p.possible_dose_mask, p.dose)
    folder = nifti.write_patient(q, tmp_path, "codes")
    img = nib.load(folder / "roi_codes.nii.gz")
    codes = np.asarray(img.dataobj)
    labels = np.zeros(codes.shape, np.uint8)
    for k in reversed(range(3)):
        labels[(codes >> k) & 1 > 0] = k + 1
    share = np.mean(labels[labels > 0] == 3)
    assert share < 0.25  # the share alone would not tell
    nib.save(nib.Nifti1Image(labels, img.affine, dtype=np.uint8), folder / "roi_codes.nii.gz")
    with pytest.raises(nifti.NiftiFormatError, match=r"label map \(the values 1-3, one per ROI\).*"
                                                     r"LeftParotid would be empty though rois.json lists it"):
        nifti.read_patient(folder)


def test_a_body_label_file_that_is_an_outline_is_filled_with_a_warning(tmp_path):
    """TotalSegmentator's skin.nii.gz (a shell two voxels thick, here of the patient's body), the only
    body file and no possible_dose_mask.nii.gz: it was the possible-dose mask as it is, the whole inside
    of the patient outside every prediction and score. Now its axial slices are filled (the body, voxel
    for voxel) with a warning naming the file; a solid body file is taken as it is, without one."""
    import warnings

    from scipy import ndimage

    p = make_patient()
    body = np.asarray(p.possible_dose_mask)
    shell = body & ~ndimage.binary_erosion(body, iterations=2)
    assert shell.sum() < 0.6 * body.sum()
    aff = nifti.patient_affine(p)
    for name, m, warned in (("skin", shell, True), ("BODY", body, False)):
        folder = nifti.write_patient(p, tmp_path / name / "nii")
        (folder / nifti.MASK_FILE).unlink()
        (folder / nifti.ROIS_JSON).unlink()
        nib.save(nib.Nifti1Image(m.astype(np.uint8), aff), folder / "rois" / f"{name}.nii.gz")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            (q,) = nifti.read_nifti_folder(tmp_path / name / "nii")
        outline = [str(w.message) for w in seen if "holds an outline" in str(w.message)]
        assert np.array_equal(q.possible_dose_mask, body)
        assert (len(outline) == 1 and f"{name}.nii.gz" in outline[0]) is warned, outline


def test_codes_of_more_than_32_rois_round_trip(tmp_path):
    """A patient of 40 ROIs (a clinic's structure set; `data synth --extra-rois` up to 54) has 64-bit
    ROI codes: `export-nifti --roi-format codes` ended in an internal error (nibabel refuses uint64
    without an explicit dtype); the codes now round-trip bit for bit, ROI 39 included."""
    p = make_patient(spacing=(3.0, 1.5, 1.5))
    names = [f"R{k:02d}" for k in range(40)]
    rs = RoiSet(tuple(Roi(n, "other") for n in names))
    masks = {}
    for k, n in enumerate(names):
        m = np.zeros(p.shape, bool)
        m.reshape(-1)[[k, k + 1, 100 + 7 * k]] = True  # overlapping voxels: several bits per code
        masks[n] = m
    q = Patient.from_masks(p.id, p.ct, masks, rs, p.spacing, p.possible_dose_mask, p.dose)
    assert q.roi_codes.dtype == np.uint64
    nifti.write_patient(q, tmp_path, "codes")
    (r,) = nifti.read_nifti_folder(tmp_path)
    assert r.roi_set == rs and not r.missing_rois
    for n in names:
        np.testing.assert_array_equal(r.mask(n), masks[n])


@pytest.mark.parametrize("fmt", ["labels", "codes"])
def test_an_roi_without_a_voxel_is_recorded_missing(tmp_path, fmt):
    """An empty label file (segmentation tools write one for an organ they did not find) or a listed
    ROI whose bit no voxel sets read as an ROI with no voxel that was not missing: `data inspect` said
    3/3 ROIs, training counted no patient without it, and prediction gave no word for the patient
    without it. It is now recorded missing (as the DICOM reader does), with a warning naming it."""
    p = make_patient(spacing=(3.0, 1.5, 1.5))
    folder = nifti.write_patient(p, tmp_path, fmt)
    k = p.roi_set.index("LeftParotid")
    if fmt == "labels":
        f = folder / "rois" / "LeftParotid.nii.gz"
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), f)
        (folder / "rois.json").unlink()  # as another tool writes the folder
    else:
        f = folder / "roi_codes.nii.gz"
        img = nib.load(f)
        codes = np.asanyarray(img.dataobj)
        codes = codes & ~codes.dtype.type(1 << k)
        nib.save(nib.Nifti1Image(codes, img.affine, img.header), f)
    with pytest.warns(UserWarning, match="no voxel") as rec:
        (q,) = nifti.read_nifti_folder(tmp_path)
    assert any("recorded as not contoured (missing: LeftParotid)" in str(w.message) for w in rec)
    assert q.missing_rois == ("LeftParotid",)
    assert "LeftParotid" not in q.present_rois and "PTV70" in q.present_rois
    np.testing.assert_array_equal(q.mask("PTV70"), p.mask("PTV70"))


@pytest.mark.parametrize("name", ["Ring 1/2", "PTV.nii", "Ring 1\\2"])
def test_an_roi_name_that_is_no_label_file_name_is_refused_by_name(tmp_path, name):
    """An ROI named with a slash (DICOM names such as "Ring 1/2" are kept as they are) made
    `export-nifti` fail with "No such file or directory" on a temporary path; one holding ".nii" was
    written and its import refused as another ROI ('PTV'). Both are now one error naming the patient,
    the ROI and the remedy, before anything is written; `--roi-format codes` keeps any name."""
    p = make_patient(spacing=(3.0, 1.5, 1.5))
    ring = p.mask("Ring")
    rs = RoiSet((Roi("LeftParotid", "oar"), Roi("PTV70", "target", 70.0), Roi(name, "other")))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                dict(p.meta), p.geometry)
    with pytest.raises(InputError, match=rf"patient pt_a: ROI {re.escape(repr(name))}.*--roi-format codes"):
        nifti.write_patient(p, tmp_path / "out", "labels")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    nifti.write_patient(p, tmp_path / "codes", "codes")
    (q,) = nifti.read_nifti_folder(tmp_path / "codes")
    assert q.roi_set == rs
    np.testing.assert_array_equal(q.mask(name), ring)


def test_two_roi_names_differing_only_in_case_are_refused_as_label_files(tmp_path):
    """ROIs "Cord" and "CORD" (a clinic's manual and automatic contours) are files rois/Cord.nii.gz and
    rois/CORD.nii.gz, one file on a case-insensitive disk (macOS's, Windows' default): the second was
    written over the first and read back as it, without a word. Now an error naming both and the
    remedy, before anything is written; --roi-format codes keeps both."""
    p = make_patient(spacing=(3.0, 1.5, 1.5))
    rs = RoiSet((Roi("Cord", "oar"), Roi("PTV70", "target", 70.0), Roi("CORD", "oar")))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                dict(p.meta), p.geometry)
    assert {"Cord", "CORD"} <= set(p.present_rois) and p.mask("Cord").sum() != p.mask("CORD").sum()
    with pytest.raises(InputError, match=r"patient pt_a: ROIs 'Cord' and 'CORD' differ only in case.*"
                                         r"--roi-format codes"):
        nifti.write_patient(p, tmp_path / "out", "labels")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    nifti.write_patient(p, tmp_path / "codes", "codes")
    (q,) = nifti.read_nifti_folder(tmp_path / "codes")
    np.testing.assert_array_equal(q.mask("CORD"), p.mask("CORD"))


def test_two_folders_whose_rois_json_give_one_id_are_refused(tmp_path):
    """A patient folder copied to start another (pt_2 from pt_1) keeps rois.json's "id": "pt_1", and
    the id is rois.json's: both read as pt_1, `predict` wrote "2 predicted doses" as one file (one
    written over the other) and `evaluate` scored that one file against both references, without a
    word. Now an error naming the id, both folders and the remedy."""
    from dosepred.io.source import open_source

    src = tmp_path / "src"
    nifti.write_patient(make_patient(pid="pt_1", spacing=(3.0, 1.5, 1.5)), src)
    (src / "pt_1").rename(src / "pt_2")  # rois.json still says pt_1
    nifti.write_patient(make_patient(pid="pt_1", spacing=(3.0, 1.5, 1.5), shift=1.0), src)
    assert json.loads((src / "pt_2" / "rois.json").read_text())["id"] == "pt_1"
    for read in (nifti.read_nifti_folder, open_source):
        with pytest.raises(nifti.NiftiFormatError, match=r"pt_1.*pt_1.*pt_2.*rois\.json"):
            read(src)


def test_two_folders_whose_ids_differ_only_in_case_are_refused(tmp_path):
    """rois.json ids "HN1" and "hn1" name files HN1.nii.gz / hn1.nii.gz (predict), HN1.npz / hn1.npz
    (import): one file on a case-insensitive disk (macOS, Windows), the second written over the first,
    evaluate then scoring one patient's prediction against both. DICOM imports make such ids unique
    (2c510d5); two NIfTI folders so are an error naming both ids and folders."""
    src = tmp_path / "src"
    nifti.write_patient(make_patient(pid="HN1", spacing=(3.0, 1.5, 1.5)), src)
    nifti.write_patient(make_patient(pid="hn1x", spacing=(3.0, 1.5, 1.5), shift=1.0), src)
    info = json.loads((src / "hn1x" / "rois.json").read_text())
    (src / "hn1x" / "rois.json").write_text(json.dumps({**info, "id": "hn1"}))
    with pytest.raises(nifti.NiftiFormatError, match=r"patient ids 'HN1' and 'hn1'.*case-insensitive.*"
                                                     r"HN1, .*hn1x"):
        nifti.read_nifti_folder(src)


def test_a_rois_json_id_that_cannot_name_files_is_refused_naming_the_file(tmp_path):
    """rois.json's "id" "../escaped" made `predict` write ../escaped.nii.gz outside its output folder
    (left empty) and `data import-nifti` write the patient's file outside the cache; now an error naming
    the rois.json and the id, before anything is read or written."""
    from dosepred.io.source import open_source

    src = tmp_path / "src"
    nifti.write_patient(make_patient(pid="pt_1", spacing=(3.0, 1.5, 1.5)), src)
    f = src / "pt_1" / "rois.json"
    f.write_text(f.read_text().replace('"id": "pt_1"', '"id": "../escaped"'))
    for read in (nifti.read_nifti_folder, open_source):
        with pytest.raises(nifti.NiftiFormatError, match=r"rois\.json.*'\.\./escaped'.*slash"):
            read(src)


def test_a_folder_name_too_long_for_the_patients_files_is_refused_before_anything_is_written(tmp_path):
    """A patient folder named in 252 bytes (a legal name, up to 255) is the patient's id, and its cache
    file <id>.npz (256 bytes) cannot be: `data import-nifti` wrote the other patients, then failed
    naming two temporary files ('OUT.tmp-1a2b/.ppp.tmp-3c4d -> OUT.tmp-1a2b/ppp.npz: File name too
    long'). Now one line naming the folder and the rule, before anything is written; 248 bytes (the
    longest name whose <id>.nii.gz fits) is imported."""
    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io.cache import Cache

    src = tmp_path / "src"
    for n, name in enumerate(("a", "é" * 124)):  # 248 bytes in UTF-8
        nifti.write_patient(make_patient(pid=name, shift=2.0 * n), src)
        f = src / name / "rois.json"
        f.write_text(json.dumps({k: v for k, v in json.loads(f.read_text()).items() if k != "id"}))
    res = CliRunner().invoke(app, ["data", "import-nifti", str(src), "--out", str(tmp_path / "c"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    assert sorted(Cache.open(tmp_path / "c").ids) == ["a", "é" * 124]
    (src / ("é" * 124)).rename(src / ("é" * 126))  # 252 bytes
    res = CliRunner().invoke(app, ["data", "import-nifti", str(src), "--out", str(tmp_path / "c2"),
                                   "--no-progress"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert re.search(r"error: \S*/é{126}: the folder's name, the id, cannot name the patient's files "
                     r"\(<id>\.nii\.gz, <id>\.npz, <id>/\): it is 252 bytes long, and the files named after "
                     r"it \(é{12}\.\.\.\.nii\.gz\) would have names longer than the 255 bytes", text), text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "src"]


def test_label_file_names_written_decomposed_are_the_names_rois_json_lists(tmp_path):
    """A label file named on macOS holds its name decomposed (NFD: "Parótida" as "o" + a combining
    accent), rois.json as typed (NFC): the file was refused as an ROI rois.json does not list, though
    the names print alike; without rois.json, two patients' "Parótida izq" (one NFC, one NFD) were two
    ROIs, each patient missing the other. Names are now compared in NFC."""
    import shutil
    import unicodedata

    nfc = "Lésion bord"  # no alias (the aliases read "Parótida izq" as LeftParotid)
    nfd = unicodedata.normalize("NFD", nfc)
    p = make_patient(spacing=(3.0, 1.5, 1.5))
    rs = RoiSet(tuple(Roi(nfc if r.name == "Ring" else r.name, r.kind, r.prescription) for r in p.roi_set))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                dict(p.meta), p.geometry)
    folder = nifti.write_patient(p, tmp_path / "a", "labels")
    (folder / "rois" / f"{nfc}.nii.gz").rename(folder / "rois" / f"{nfd}.nii.gz")
    (q,) = nifti.read_nifti_folder(tmp_path / "a")
    assert q.roi_set == rs
    np.testing.assert_array_equal(q.mask(nfc), p.mask(nfc))
    # without rois.json: one patient's file NFC, the other's NFD -> one ROI
    both = tmp_path / "b"
    shutil.copytree(folder, both / "pt_1")
    shutil.copytree(folder, both / "pt_2")
    for k in ("pt_1", "pt_2"):
        (both / k / "rois.json").unlink()
    (both / "pt_1" / "rois" / f"{nfd}.nii.gz").rename(both / "pt_1" / "rois" / f"{nfc}.nii.gz")
    a, b = nifti.read_nifti_folder(both)
    assert a.roi_set.names.count(nfc) == 1 and len(a.roi_set) == 3, a.roi_set.names
    assert nfc in a.present_rois and nfc in b.present_rois


@pytest.mark.parametrize("layout", ["labels", "codes"])
def test_roi_names_rois_json_lists_decomposed_are_the_nfc_names(tmp_path, layout):
    """rois.json listing "Parótida izq" decomposed (NFD: written from macOS file names, or from a
    patient read before names were compared in NFC) beside a patient whose rois.json lists it composed
    (NFC): the two were two ROIs printed alike, each patient missing the other's. Now one ROI."""
    import unicodedata

    nfc = "Parótida izq"
    p = make_patient(spacing=(3.0, 1.5, 1.5))
    for pid, form in (("pt_1", "NFC"), ("pt_2", "NFD")):
        name = unicodedata.normalize(form, nfc)
        rs = RoiSet(tuple(Roi(name if r.name == "Ring" else r.name, r.kind, r.prescription)
                          for r in p.roi_set))
        q = Patient(pid, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                    dict(p.meta), p.geometry)
        folder = nifti.write_patient(q, tmp_path, layout)
        listed = [d["name"] for d in json.loads((folder / "rois.json").read_text())["rois"]]
        assert unicodedata.normalize(form, nfc) in listed  # as written: NFC in one, NFD in the other
    a, b = nifti.read_nifti_folder(tmp_path)
    assert [ascii(n) for n in a.roi_set.names].count(ascii(nfc)) == 1 and len(a.roi_set) == 3
    assert a.roi_set == b.roi_set
    for pt in (a, b):
        assert nfc in pt.present_rois and not pt.missing_rois
        np.testing.assert_array_equal(pt.mask(nfc), p.mask("Ring"))


def test_ct_values_beyond_int16_are_warned_of(tmp_path):
    """A CT kept as the scanner stored it, unsigned with scl_inter -1024 (a converted GE CT
    whose padding outside the scan circle is 63536: 62512 HU), was clipped to 32767 HU without a word:
    bone to the network, and, without a mask file, body to the CT > -500 HU possible-dose mask. The
    DICOM reader warns of such voxels (and reads declared padding as air); now the NIfTI reader
    warns too, naming the file, the count and a value."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "a")
    img = nib.load(folder / "ct.nii.gz")
    raw = np.asarray(img.dataobj).astype(np.int32) + 1024
    raw[:, :3, :3] = 63536
    new = nib.Nifti1Image(raw.astype(np.uint16), img.affine, img.header)
    new.header.set_data_dtype(np.uint16)
    new.header.set_slope_inter(1.0, -1024.0)
    nib.save(new, folder / "ct.nii.gz")
    n = 9 * p.shape[0]
    want_msg = (rf"patient pt_a: {folder / 'ct.nii.gz'}: {n} voxel\(s\) read outside -32768\.\.32767 HU "
                r"\(e\.g\. 62512 HU\) and were clipped")
    with pytest.warns(UserWarning, match=want_msg):
        (q,) = nifti.read_nifti_folder(tmp_path / "a")
    assert np.all(q.ct[:, :3, :3] == 32767)
    want = p.ct.copy()
    want[:, :3, :3] = 32767
    np.testing.assert_array_equal(q.ct, want)  # the other voxels as written: no false alarm there


def test_a_rois_json_roi_with_an_unknown_key_is_refused_naming_the_file(tmp_path):
    """A hand-written rois.json whose target says "rx": 70 (not "prescription") was read as a target
    without a prescription, without a word."""
    from dosepred.io.source import load_patients

    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "src")
    info = json.loads((folder / "rois.json").read_text())
    info["rois"][0]["rx"] = 70
    (folder / "rois.json").write_text(json.dumps(info))
    with pytest.raises(nifti.NiftiFormatError, match=rf"{re.escape(str(folder / 'rois.json'))}: ROI "
                                                     r".*unknown key\(s\) 'rx'"):
        list(load_patients(tmp_path / "src"))
    # beside a patient listing other ROIs (the ROI set is their union): the same
    other = Patient.from_masks("pt_other", p.ct, {p.roi_set.names[0]: p.mask(p.roi_set.names[0])},
                               RoiSet(p.roi_set.rois[:1]), p.spacing, dose=p.dose, geometry=p.geometry)
    nifti.write_patient(other, tmp_path / "src")
    with pytest.raises(nifti.NiftiFormatError, match=rf"{re.escape(str(folder / 'rois.json'))}: ROI "
                                                     r".*unknown key\(s\) 'rx'"):
        list(load_patients(tmp_path / "src"))


def test_a_rois_json_roi_without_a_kind_named_for_a_target_is_that_target(tmp_path):
    """A hand-written rois.json listing the clinic's label files by name only ({"name": "PTV_7000"}):
    each was an organ at risk (from_dicts' default), so the 70 Gy PTV entered the patient as an OAR
    without a prescription, without a word, though the same label file without rois.json is a 70 Gy
    target (the aliases). A listed ROI without "kind" now takes the kind and prescription its name
    gives; one named otherwise stays an OAR, and a kind or prescription given wins."""
    p = make_patient()
    folder = tmp_path / "case1"
    (folder / "rois").mkdir(parents=True)
    aff = np.diag([*p.spacing, 1.0])
    nib.save(nib.Nifti1Image(p.ct, aff), folder / "ct.nii.gz")
    for name, roi in (("PTV_7000", "PTV70"), ("Parotid_L", "LeftParotid"), ("PTV 63Gy", "Ring"),
                      ("PTV1", "PTV70"), ("PTV_56", "Ring")):
        nib.save(nib.Nifti1Image(p.mask(roi).astype(np.uint8), aff), folder / "rois" / f"{name}.nii.gz")
    (folder / "rois.json").write_text(json.dumps({"rois": [
        {"name": "PTV_7000"}, {"name": "Parotid_L"}, {"name": "PTV 63Gy", "prescription": 60},
        {"name": "PTV1"}, {"name": "PTV_56", "kind": "oar"}]}))
    (q,) = nifti.read_nifti_folder(tmp_path)
    assert [(r.name, r.kind, r.prescription) for r in q.roi_set.rois] == [
        ("PTV_7000", "target", 70.0), ("Parotid_L", "oar", None), ("PTV 63Gy", "target", 60.0),
        ("PTV1", "oar", None), ("PTV_56", "oar", None)]
    np.testing.assert_array_equal(q.mask("PTV_7000"), p.mask("PTV70"))


def test_a_rois_json_roi_without_a_kind_named_for_the_body_is_the_body(tmp_path):
    """A hand-written rois.json listing every label file by name ({"name": "External"} beside the
    organs): External was an organ at risk (from_dicts' default) and the patient had no body, so the
    possible-dose mask was the whole grid (air and couch included) without a word, though the same
    label file without rois.json is the body. A body name listed without a kind is now the body (the
    possible-dose mask, no ROI); with a kind given it stays the ROI it says ('Skin' kept as an organ)."""
    p = make_patient()
    body = np.asarray(p.possible_dose_mask)
    assert 0 < body.sum() < body.size
    folder = tmp_path / "case1"
    (folder / "rois").mkdir(parents=True)
    aff = np.diag([*p.spacing, 1.0])
    nib.save(nib.Nifti1Image(p.ct, aff), folder / "ct.nii.gz")
    for name, m in (("PTV_7000", p.mask("PTV70")), ("Parotid_L", p.mask("LeftParotid")), ("External", body),
                    ("Skin", p.mask("Ring"))):
        nib.save(nib.Nifti1Image(m.astype(np.uint8), aff), folder / "rois" / f"{name}.nii.gz")
    (folder / "rois.json").write_text(json.dumps({"rois": [
        {"name": "PTV_7000"}, {"name": "Parotid_L"}, {"name": "External"}, {"name": "Skin", "kind": "oar"}]}))
    (q,) = nifti.read_nifti_folder(tmp_path)
    assert [(r.name, r.kind) for r in q.roi_set.rois] == [("PTV_7000", "target"), ("Parotid_L", "oar"),
                                                          ("Skin", "oar")]
    np.testing.assert_array_equal(q.possible_dose_mask, body)
    np.testing.assert_array_equal(q.mask("Skin"), p.mask("Ring"))


def test_a_codes_folder_listing_the_body_reads_it_as_the_body(tmp_path):
    """roi_codes.nii.gz with rois.json listing {"name": "External"} by name alone (a hand-made bit-mask
    folder): External was an organ at risk and the patient had no body, so the possible-dose mask was
    the whole grid. The listed body is now the possible-dose mask, as in a folder of label files; the
    other ROIs keep their bits."""
    p = make_patient()
    body = np.asarray(p.possible_dose_mask)
    assert 0 < body.sum() < body.size
    folder = tmp_path / "case1"
    folder.mkdir()
    aff = np.diag([*p.spacing, 1.0])
    nib.save(nib.Nifti1Image(p.ct, aff), folder / "ct.nii.gz")
    codes = (p.mask("PTV70").astype(np.uint8) | body.astype(np.uint8) << 1
             | p.mask("LeftParotid").astype(np.uint8) << 2)
    nib.save(nib.Nifti1Image(codes, aff), folder / "roi_codes.nii.gz")
    (folder / "rois.json").write_text(json.dumps({"rois": [
        {"name": "PTV70", "kind": "target", "prescription": 70}, {"name": "External"},
        {"name": "LeftParotid", "kind": "oar"}]}))
    (q,) = nifti.read_nifti_folder(tmp_path)
    assert [r.name for r in q.roi_set.rois] == ["PTV70", "LeftParotid"] and q.missing_rois == ()
    np.testing.assert_array_equal(q.possible_dose_mask, body)
    np.testing.assert_array_equal(q.mask("PTV70"), p.mask("PTV70"))
    np.testing.assert_array_equal(q.mask("LeftParotid"), p.mask("LeftParotid"))


@pytest.mark.parametrize("roi_format", ["labels", "codes"])
def test_without_a_mask_or_body_the_body_is_the_ct_above_minus_500(tmp_path, roi_format):
    """A NIfTI patient without possible_dose_mask.nii.gz or a body ROI (organs segmented, no body) had
    the whole grid as its possible-dose mask: the released models predicted 0 Gy in PTV70 (D95) with
    118 Gy hot spots for such a validation patient, and evaluation scored the air around it. The body
    is now CT > -500 HU, as for a DICOM patient without a body contour, and the meta says so."""
    p = make_patient()
    folder = nifti.write_patient(p, tmp_path / "nii", roi_format=roi_format)
    (folder / nifti.MASK_FILE).unlink()
    (q,) = nifti.read_nifti_folder(tmp_path / "nii")
    from scipy import ndimage

    ax = p.geometry.axis_along("SI")  # axial slices, their holes filled (airways are body)
    slices = np.moveaxis(p.ct > -500, ax, 0)
    want = np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in slices]), 0, ax)
    assert 0 < want.sum() < want.size
    np.testing.assert_array_equal(q.possible_dose_mask, want)
    assert q.meta["possible_dose_mask"] == ("CT > -500 HU, holes filled (no possible_dose_mask.nii.gz nor "
                                            "body ROI)")
