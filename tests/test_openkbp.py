"""OpenKBP CSV reader/writer: exact round trip on the sample patients, clear errors on bad files."""

import dataclasses
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dosepred.errors import InputError
from dosepred.geometry import Geometry
from dosepred.io import cache, openkbp


def _parse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_csv(path, header=0)
    return df.iloc[:, 0].to_numpy(), df.iloc[:, 1].to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def roundtrip(sample_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    c = cache.write_cache(openkbp.read_folder(sample_dir), tmp / "cache")
    for p in cache.Cache.open(tmp / "cache"):
        openkbp.write_patient(p, tmp / "export")
    return c, tmp / "export"


def test_roundtrip_files_are_value_identical(sample_dir, roundtrip):
    c, export = roundtrip
    assert c.ids == ["pt_66", "pt_187", "pt_196"]  # numeric order
    for src in openkbp.patient_folders(sample_dir):
        out = export / src.name
        src_files = sorted(f.name for f in src.glob("*.csv"))
        assert sorted(f.name for f in out.glob("*.csv")) == src_files
        for name in src_files:
            if name == "voxel_dimensions.csv":
                np.testing.assert_array_equal(np.loadtxt(src / name), np.loadtxt(out / name))
                continue
            i0, v0 = _parse(src / name)
            i1, v1 = _parse(out / name)
            np.testing.assert_array_equal(i0, i1, err_msg=f"{src.name}/{name} indices")
            if name in ("ct.csv", "dose.csv"):
                np.testing.assert_array_equal(v0.astype(np.float32), v1.astype(np.float32),
                                              err_msg=f"{src.name}/{name} values")
            else:
                assert np.isnan(v0).all() and np.isnan(v1).all()


def test_roundtrip_arrays_exact(sample_dir, roundtrip):
    _, export = roundtrip
    for src in openkbp.patient_folders(sample_dir):
        a, b = openkbp.read_patient(src), openkbp.read_patient(export / src.name)
        np.testing.assert_array_equal(a.ct, b.ct)
        np.testing.assert_array_equal(a.dose, b.dose)
        np.testing.assert_array_equal(a.roi_codes, b.roi_codes)
        np.testing.assert_array_equal(a.possible_dose_mask, b.possible_dose_mask)
        assert a.spacing == b.spacing and a.missing_rois == b.missing_rois


def test_explicit_zero_doses_are_kept(sample_dir, roundtrip):
    _, export = roundtrip
    found = 0
    for src in openkbp.patient_folders(sample_dir):
        i0, v0 = _parse(src / "dose.csv")
        zeros = set(i0[v0 == 0].tolist())
        found += len(zeros)
        i1, v1 = _parse(export / src.name / "dose.csv")
        assert zeros == set(i1[v1 == 0].tolist())
        # the dose rows are exactly the possible-dose mask's indices
        np.testing.assert_array_equal(i0, _parse(src / "possible_dose_mask.csv")[0])
    assert found > 0, "the sample should contain explicit zeros in dose.csv"


def test_missing_roi_is_recorded(sample_dir, roundtrip):
    c, export = roundtrip
    assert c.entry("pt_196")["missing_rois"] == ["Esophagus"]
    p = c.load("pt_196")
    assert p.missing_rois == ("Esophagus",) and not p.mask("Esophagus").any()
    assert not (export / "pt_196" / "Esophagus.csv").exists()
    assert c.load("pt_66").missing_rois == ()


def test_ct_values_are_hu(sample_dir):
    p = openkbp.read_patient(sample_dir / "pt_66")
    assert p.ct.dtype == np.int16 and p.ct.min() >= -1024
    assert p.ct[0, 0, 0] == -1024  # unlisted voxels are 0 in the file, i.e. air
    assert p.spacing[0] > 0 and p.shape == (128, 128, 128)


# ---------------------------------------------------------------------------- bad inputs

def _tiny_patient(folder: Path) -> Path:
    """A valid OpenKBP folder with a handful of voxels (fast to read)."""
    folder.mkdir(parents=True)
    (folder / "ct.csv").write_text(",data\n10,1000.0\n11,1050.0\n12,24.0\n")
    (folder / "possible_dose_mask.csv").write_text(",data\n10,\n11,\n12,\n")
    (folder / "dose.csv").write_text(",data\n10,70.5\n11,69.5\n12,3.25\n")
    (folder / "voxel_dimensions.csv").write_text("3.906\n3.906\n2.5\n")
    (folder / "PTV70.csv").write_text(",data\n10,\n11,\n")
    (folder / "SpinalCord.csv").write_text(",data\n12,\n")
    return folder


def test_tiny_patient_reads(tmp_path):
    p = openkbp.read_patient(_tiny_patient(tmp_path / "pt_1"))
    flat = p.dose.ravel()
    assert flat[10] == np.float32(70.5) and flat[12] == np.float32(3.25)
    assert p.ct.ravel()[10] == 1000 - 1024
    assert p.mask("PTV70").sum() == 2 and "Brainstem" in p.missing_rois


@pytest.mark.parametrize("fname, content, match", [
    ("dose.csv", ",data\n10,70.5\n11,0.0\n12", r"dose\.csv row 4: value is missing \(truncated"),
    ("dose.csv", ",data\n10,70.5\n11,abc\n12,3\n", r"dose\.csv row 3: value 'abc' is not a number"),
    ("dose.csv", ",data\n10,70.5\n2097152,1\n", r"dose\.csv row 3: flat index 2097152 is out of range"),
    ("dose.csv", ",data\n10,-1\n", r"dose\.csv holds negative doses"),
    ("ct.csv", ",data\n10,1000.5\n", r"ct\.csv holds non-integer CT values"),
    ("ct.csv", "", r"ct\.csv is empty"),
    ("PTV70.csv", ",data\n", r"ROI file .*PTV70\.csv is empty"),
    ("SpinalCord.csv", ",data\n-1,\n", r"SpinalCord\.csv row 2: flat index -1 is out of range"),
    ("voxel_dimensions.csv", "3.9\n3.9\n", r"voxel_dimensions\.csv: expected three positive voxel sizes"),
    # OpenKBP's sizes in cm / m / micrometres: every ROI volume (D2cc, V-metrics in cc) scaled by 1e-3 / 1e-9
    # / 1e9
    ("voxel_dimensions.csv", "0.3906\n0.3906\n0.25\n",
     r"voxel sizes \[0\.3906, 0\.3906, 0\.25\] give a 32 mm wide grid .*smaller than a head .* in mm"),
    ("voxel_dimensions.csv", "0.003906\n0.003906\n0.0025\n", r"smaller than a head .*not cm or m"),
    ("voxel_dimensions.csv", "3906\n3906\n2500\n", r"give a 499968 mm wide grid .*wider than any CT"),
])
def test_bad_file_gives_one_clear_error(tmp_path, fname, content, match):
    folder = _tiny_patient(tmp_path / "pt_5")
    (folder / fname).write_text(content)
    with pytest.raises(openkbp.OpenKBPFormatError, match=match) as e:
        openkbp.read_patient(folder)
    assert "patient pt_5" in str(e.value) and str(folder) in str(e.value)


@pytest.mark.parametrize("sizes", [(0.625, 0.625, 0.625), (11.7, 11.7, 11.7), (2.734, 5.078, 1.5),
                                   (5.078, 2.734, 3.3)])
def test_plausible_voxel_sizes_read(tmp_path, sizes):
    # the edges of the accepted extents (80-1500 mm over 128 voxels) and OpenKBP's own extremes read as
    # written
    folder = _tiny_patient(tmp_path / "pt_5")
    (folder / "voxel_dimensions.csv").write_text("".join(f"{s}\n" for s in sizes))
    assert openkbp.read_patient(folder).spacing == sizes
    assert openkbp.read_sparse_patient(folder).spacing == sizes


def test_sparse_reader_refuses_voxel_sizes_in_cm(tmp_path):
    folder = _tiny_patient(tmp_path / "pt_5")
    (folder / "voxel_dimensions.csv").write_text("0.3906\n0.3906\n0.25\n")
    with pytest.raises(openkbp.OpenKBPFormatError, match="pt_5: .*smaller than a head"):
        openkbp.read_sparse_patient(folder)


def test_export_refuses_what_the_reader_would(tmp_path):
    p = openkbp.read_patient(_tiny_patient(tmp_path / "pt_5"))
    cm = (0.39, 0.39, 0.25)
    small = dataclasses.replace(p, spacing=cm, geometry=Geometry.openkbp(openkbp.GRID, cm))
    with pytest.raises(InputError, match="pt_5: OpenKBP export of voxel sizes .*smaller than a head"):
        openkbp.write_patient(small, tmp_path / "out")
    assert not (tmp_path / "out" / "pt_5").exists()


def test_missing_required_file(tmp_path):
    folder = _tiny_patient(tmp_path / "pt_5")
    (folder / "voxel_dimensions.csv").unlink()
    with pytest.raises(openkbp.OpenKBPFormatError, match="pt_5: .* lacks voxel_dimensions.csv"):
        openkbp.read_patient(folder)


def test_unknown_roi_file_warns_and_is_ignored(tmp_path):
    folder = _tiny_patient(tmp_path / "pt_5")
    (folder / "Cochlea_L.csv").write_text(",data\n10,\n")
    with pytest.warns(openkbp.UnknownRoiWarning, match=r"pt_5: .*Cochlea_L\.csv is not a known ROI"):
        p = openkbp.read_patient(folder)
    assert "Cochlea_L" not in p.roi_set


def _failing_source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _tiny_patient(src / "pt_1")
    _tiny_patient(src / "pt_2")
    bad = _tiny_patient(src / "pt_3")
    (bad / "dose.csv").write_text(",data\n10,1\n11,oops\n")
    return src


def test_failed_import_leaves_nothing_behind(tmp_path):
    src = _failing_source(tmp_path)
    out = tmp_path / "cache"
    with pytest.raises(openkbp.OpenKBPFormatError, match="pt_3"):
        cache.write_cache(openkbp.read_folder(src), out)
    assert list(out.iterdir()) == []  # no npz, no .part, no dataset.json


def test_failed_import_keeps_a_previous_cache_intact(tmp_path):
    src = tmp_path / "good"
    _tiny_patient(src / "pt_1")
    out = tmp_path / "cache"
    cache.write_cache(openkbp.read_folder(src), out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(openkbp.OpenKBPFormatError):
        cache.write_cache(openkbp.read_folder(_failing_source(tmp_path)), out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert cache.Cache.open(out).ids == ["pt_1"]


def test_cli_import_failure_exit_code_and_message(tmp_path):
    from typer.testing import CliRunner

    from dosepred.cli import app

    src = _failing_source(tmp_path)
    (src / "pt_1" / "Cochlea_L.csv").write_text(",data\n10,\n")
    out = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = CliRunner().invoke(app, ["data", "import-openkbp", str(src), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())  # rich may wrap long lines
    assert "error:" in text and "dose.csv" in text and "'oops' is not a number" in text
    assert "Cochlea_L.csv is not a known ROI" in text
    assert "Traceback" not in text
    assert not out.exists() or list(out.iterdir()) == []


def test_write_patient_needs_128_grid(tmp_path):
    from dosepred import synth

    with pytest.raises(ValueError, match="needs a"):
        openkbp.write_patient(synth.make_patient(0, size=16), tmp_path)


def test_dose_csv_prediction_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    dose = np.zeros(openkbp.GRID, np.float32)
    dose[60:64, 60:64, 60:64] = rng.uniform(0, 75, (4, 4, 4)).astype(np.float32)
    mask = np.zeros(openkbp.GRID, bool)
    mask[59:65, 59:65, 59:65] = True
    openkbp.write_dose_csv(tmp_path / "pt_1.csv", dose, mask)
    np.testing.assert_array_equal(openkbp.read_dose_csv(tmp_path / "pt_1.csv"), dose)
    idx, _ = _parse(tmp_path / "pt_1.csv")
    assert len(idx) == mask.sum()  # zeros inside the mask are written explicitly


def test_folder_helpers(tmp_path, sample_dir):
    assert openkbp.is_openkbp_folder(sample_dir) and openkbp.is_openkbp_folder(sample_dir / "pt_66")
    assert openkbp.patient_folders(sample_dir / "pt_66") == [sample_dir / "pt_66"]
    with pytest.raises(openkbp.OpenKBPFormatError, match="no OpenKBP patient folders"):
        openkbp.patient_folders(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        openkbp.patient_folders(tmp_path / "nope")
    shutil.rmtree(tmp_path, ignore_errors=True)


def _import(src: Path, out: Path):
    from typer.testing import CliRunner

    from dosepred.cli import app

    return CliRunner().invoke(app, ["data", "import-openkbp", str(src), "--out", str(out), "--no-progress"])


@pytest.mark.parametrize("fname, content, message", [
    ("dose.csv", "", "dose.csv is empty (expected header ',data' and rows 'flat_index,value')"),
    ("possible_dose_mask.csv", "", "possible_dose_mask.csv is empty (expected header ',data'"),
    ("dose.csv", ",data,extra\n10,70.5,1\n", "dose.csv has 3 columns, expected 2 (flat_index,value)"),
    ("dose.csv", ",data\n10,70.5\n11,60,5\n", "dose.csv is not a valid OpenKBP sparse CSV (rows "
     "'flat_index,value'): Error tokenizing data. C error: Expected 2 fields in line 3, saw 3"),
    ("dose.csv", ",data\n10,70.5\n11,sixty\n", "dose.csv row 3: value 'sixty' is not a number"),
    ("voxel_dimensions.csv", None, "pt_5 lacks voxel_dimensions.csv"),
    ("ct.csv", ",data\n10,1000\n11,40000\n",
     "ct.csv row 3: CT value 40000 is outside -31744..33791 (HU + 1024, stored as int16)"),
    ("ct.csv", ",data\n10,-40000\n", "ct.csv row 2: CT value -40000 is outside -31744..33791"),
    ("SpinalCord.csv", ",data\n", "ROI file {folder}/SpinalCord.csv is empty (no voxels); delete it if "
     "the ROI was not contoured"),
])
def test_cli_bad_csv_is_one_line_and_no_cache(tmp_path, fname, content, message):
    """``data import-openkbp`` of a patient with an empty CSV, a CSV of three columns or a ragged row,
    a non-numeric value, a missing required file or CT values int16 cannot hold: exit code 2, one
    line naming the patient, the file (and row) and the rule, and no --out folder."""
    folder = _tiny_patient(tmp_path / "src" / "pt_5")
    if content is None:
        (folder / fname).unlink()
    else:
        (folder / fname).write_text(content)
    r = _import(tmp_path / "src", tmp_path / "out")
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines() == [r.output.rstrip("\n")] and r.output.startswith("error: patient pt_5: ")
    assert message.format(folder=folder) in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fname, content", [
    ("dose.csv", "10,70.5\n11,69.5\n12,3.25\n"),
    ("ct.csv", "10,1000.0\n11,1050.0\n12,24.0\n"),
    ("possible_dose_mask.csv", "10,\n11,\n12,\n"),
    ("PTV70.csv", "10,\n11,\n"),
])
def test_a_sparse_csv_without_its_header_line_is_refused(tmp_path, fname, content):
    """A sparse CSV written without the ',data' header (``to_csv(header=False)``): its first voxel
    was taken for the header and silently dropped (dose.csv's 70.5 Gy read as 0 Gy, a PTV70 voxel
    left out). Now one line naming the patient, the file and its first row."""
    folder = _tiny_patient(tmp_path / "src" / "pt_5")
    (folder / fname).write_text(content)
    r = _import(tmp_path / "src", tmp_path / "out")
    assert r.exit_code == 2, (r.output, r.exception)
    first = content.splitlines()[0]
    assert r.output == (f"error: patient pt_5: {folder / fname} row 1 is {first!r}, a voxel, not the header "
                        "',data': a sparse CSV starts with the header line (without it, the first voxel "
                        "would be dropped)\n")
    assert not (tmp_path / "out").exists()
    (tmp_path / "pt_7.csv").write_text("10,70.5\n11,3.25\n")  # a prediction alike
    with pytest.raises(openkbp.OpenKBPFormatError, match=r"row 1 is '10,70\.5', a voxel, not the header"):
        openkbp.read_dose_csv(tmp_path / "pt_7.csv")


def test_a_reference_dose_csv_in_cgy_is_refused(tmp_path):
    """A dose.csv written in cGy (7050 for 70.5 Gy): ``evaluate --reference`` of the folder, which reads
    it as voxel lists without the prescription check, scored it as 7050 Gy without a word (a dose score
    of thousands of Gy). Refused as an RTDOSE or NIfTI dose over 1000 Gy is, by the import, the
    evaluation's reference reader and the patient reader alike."""
    from typer.testing import CliRunner

    from dosepred.cli import app

    folder = _tiny_patient(tmp_path / "src" / "pt_5")
    (folder / "dose.csv").write_text(",data\n10,7050.0\n11,6950.0\n12,325.0\n")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "pt_5.csv").write_text(",data\n10,70.5\n11,69.5\n12,3.25\n")
    want = (f"error: patient pt_5: {folder / 'dose.csv'}: maximum dose 7050 Gy is not a radiotherapy dose "
            "(a dose in cGy? OpenKBP doses are Gy)\n")
    r = CliRunner().invoke(app, ["evaluate", "--reference", str(tmp_path / "src"), "--prediction",
                                 str(tmp_path / "pred"), "--no-progress"])
    assert (r.exit_code, r.output) == (2, want), (r.output, r.exception)
    r = _import(tmp_path / "src", tmp_path / "out")
    assert (r.exit_code, r.output) == (2, want), (r.output, r.exception)
    assert not (tmp_path / "out").exists()
    with pytest.raises(openkbp.OpenKBPFormatError, match="maximum dose 7050 Gy is not a radiotherapy dose"):
        openkbp.read_sparse_patient(folder)
    (folder / "dose.csv").write_text(",data\n10,1000.0\n11,69.5\n12,3.25\n")  # the highest allowed
    assert openkbp.read_patient(folder).dose.max() == 1000.0


def test_evaluate_checks_an_openkbp_reference_dose_against_its_prescriptions(tmp_path):
    """An OpenKBP reference whose dose.csv holds one fraction's dose (2 Gy in PTV70): the import refuses
    it (the prescription check every source's patients pass), but ``evaluate --reference`` read the
    folder as voxel lists past that check and scored it without a word. Now the same one line."""
    from typer.testing import CliRunner

    from dosepred.cli import app

    folder = _tiny_patient(tmp_path / "src" / "pt_5")
    (folder / "dose.csv").write_text(",data\n10,2.01\n11,1.99\n12,0.09\n")
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "pt_5.csv").write_text(",data\n10,70.5\n11,69.5\n12,3.25\n")
    r = CliRunner().invoke(app, ["evaluate", "--reference", str(tmp_path / "src"), "--prediction",
                                 str(tmp_path / "pred"), "--no-progress"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.startswith(f"error: patient pt_5 of {folder}: plan dose and prescriptions disagree: "
                               "PTV70 (Rx 70 Gy): median 2.0 Gy = 0.03 x Rx"), r.output
    assert len(r.output.splitlines()) == 1
    r = _import(tmp_path / "src", tmp_path / "out")  # the import says the same
    assert r.exit_code == 2 and "PTV70 (Rx 70 Gy): median 2.0 Gy = 0.03 x Rx" in r.output, r.output


def test_cli_unknown_roi_file_warns_and_imports_the_rest(tmp_path):
    """An ROI file whose name is no ROI of the set: one warning line naming the patient and the file,
    the patient imported without it; an ROI file without voxels is the error line above."""
    folder = _tiny_patient(tmp_path / "src" / "pt_5")
    (folder / "Cochlea_L.csv").write_text(",data\n10,\n")
    r = _import(tmp_path / "src", tmp_path / "out")
    assert r.exit_code == 0, (r.output, r.exception)
    warned = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert warned == [f"warning: patient pt_5: {folder / 'Cochlea_L.csv'} is not a known ROI (Brainstem, "
                      "SpinalCord, RightParotid, LeftParotid, Esophagus, Larynx, Mandible, PTV56, PTV63, "
                      "PTV70); ignored"]
    c = cache.Cache.open(tmp_path / "out")
    assert "Cochlea_L" not in c.roi_set and c.ids == ["pt_5"]
    assert c.load("pt_5").mask("PTV70").sum() == 2


@pytest.mark.parametrize("name, why", [("dose", "dose.csv"), ("Possible_Dose_Mask", "possible_dose_mask.csv"),
                                       ("Ring 1/2", "slash"), ("Ring 1\\2", "backslash"),
                                       ("PTV>60", "'>', which no file name on Windows"),
                                       ("AUX", "device name on Windows"), ("Lens R.", "ends in '.'")])
def test_an_roi_name_that_is_no_roi_file_name_is_refused_by_name(sample_dir, tmp_path, name, why):
    """An ROI named "dose" (a clinic's isodose structure; DICOM names are kept as they are) was written
    as dose.csv over the patient's dose, and the export said nothing (the folder's import then failed on
    an empty dose value); on a case-insensitive disk (macOS, Windows) "Possible_Dose_Mask" alike; one
    named "Ring 1/2" failed with "No such file or directory". Now an error naming the patient and the
    ROI, before anything is written."""
    from dosepred.errors import InputError
    from dosepred.patient import Patient, Roi, RoiSet

    p = next(iter(openkbp.read_folder(sample_dir)))
    rs = RoiSet(tuple(Roi(name if r.name == "Larynx" else r.name, r.kind, r.prescription) for r in p.roi_set))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose,
                tuple(name if m == "Larynx" else m for m in p.missing_rois), dict(p.meta), p.geometry)
    assert name in p.present_rois
    with pytest.raises(InputError, match=rf"patient {p.id}: ROI {re.escape(repr(name))}.*{why}"):
        openkbp.write_patient(p, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_two_roi_names_differing_only_in_case_are_refused(sample_dir, tmp_path):
    """ROIs "Larynx" and "LARYNX" are files Larynx.csv and LARYNX.csv, one file on a case-insensitive
    disk (macOS's, Windows' default): the second was written over the first and read back as it, without
    a word (ac229d4 refused "CT" for ct.csv so, not two ROIs). Now an error naming both, before anything
    is written."""
    from dosepred.errors import InputError
    from dosepred.patient import Patient, Roi, RoiSet

    p = next(iter(openkbp.read_folder(sample_dir)))
    rs = RoiSet(tuple(Roi("LARYNX" if r.name == "Mandible" else r.name, r.kind, r.prescription)
                      for r in p.roi_set))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose,
                tuple("LARYNX" if m == "Mandible" else m for m in p.missing_rois), dict(p.meta), p.geometry)
    assert {"Larynx", "LARYNX"} <= set(p.present_rois)
    with pytest.raises(InputError, match=rf"patient {p.id}: ROIs 'Larynx' and 'LARYNX' differ only in case"):
        openkbp.write_patient(p, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("fname, content", [
    ("dose.csv", ",data\n10,70.5\n11,69.5\n12,3.2"),  # "12,3.25\n" cut inside its value
    ("PTV70.csv", ",data\n10,\n1"),  # "11,\n" cut inside its index: voxel 1 would be inside the PTV
])
def test_a_sparse_csv_cut_inside_its_last_row_is_refused(tmp_path, fname, content):
    """A sparse CSV cut short inside its last row (a copy interrupted, a full disk) was read whole when
    the cut left a number: the last dose read as 3.2 Gy for 3.25 and the rows after it as 0 Gy, an ROI
    file's last index cut to another voxel, without a word. OpenKBP's files and every CSV writer end
    their last row with a line break: a file that does not is refused as truncated, naming it."""
    folder = _tiny_patient(tmp_path / "pt_5")
    (folder / fname).write_text(content)
    with pytest.raises(openkbp.OpenKBPFormatError, match=rf"{fname.replace('.', r'.')} does not end with a "
                                                         r"line break") as e:
        openkbp.read_patient(folder)
    assert "patient pt_5" in str(e.value) and "truncated" in str(e.value)


def test_an_unterminated_last_row_error_says_how_to_read_a_whole_file(tmp_path):
    """A whole dose.csv from a tool that ends its last row without a line break is refused (it cannot be
    told from a cut one); the error said only 'copy the file again', which gives the same file: it now
    says to add the line break when the file is whole, and with one added the file is read as written."""
    folder = _tiny_patient(tmp_path / "pt_5")
    (folder / "dose.csv").write_text(",data\n10,70.5\n11,69.5\n12,3.25")
    with pytest.raises(openkbp.OpenKBPFormatError, match=r"if it is whole .*add one at its end"):
        openkbp.read_patient(folder)
    with open(folder / "dose.csv", "a") as fh:
        fh.write("\n")
    dose = openkbp.read_patient(folder).dose.ravel()
    assert dose[10] == pytest.approx(70.5) and dose[12] == pytest.approx(3.25)


@pytest.mark.parametrize("name, why", [("pt_1:a", "it holds ':'"), ("pt_1.", "it ends in '.'"),
                                       ("pt_CON", None)])
def test_a_patient_folder_whose_name_windows_refuses_is_named(sample_dir, tmp_path, name, why):
    """An OpenKBP patient folder pt_1: or pt_1. (made on Linux) was imported as pt_1:a.npz / pt_1..npz,
    files a Windows or macOS colleague cannot copy; refused by the patient's id alone, it named no
    folder. Now one error naming the folder and the rule, before anything is written; pt_CON is a
    name like any other (only CON itself is Windows' device)."""
    from dosepred.workflows import import_patients

    src = tmp_path / "src"
    shutil.copytree(openkbp.patient_folders(sample_dir)[0], src / name)
    if why is None:
        import_patients(src, tmp_path / "out")
        assert cache.Cache.open(tmp_path / "out").ids == [name]
        return
    with pytest.raises(openkbp.OpenKBPFormatError, match=rf"{re.escape(str(src / name))}: the folder's name, "
                                                         rf"the patient id, cannot name .*{re.escape(why)}"):
        import_patients(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
