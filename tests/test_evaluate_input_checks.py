"""Bad input to ``evaluate`` (careless-user sweep): each gets one clear error naming the patient, the
file and the rule, or a warning where input is ignored; never a silent score."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dosepred import synth
from dosepred.cli import app
from dosepred.errors import DosepredError
from dosepred.evaluation import evaluate_cohort, evaluate_patient, iter_cases, iter_pairs, match_predictions
from dosepred.io import cache, openkbp
from handmade import write_sparse_csv

runner = CliRunner()
ENV = {"COLUMNS": "200", "DOSEPRED_PROGRESS_INTERVAL": "off"}


@pytest.fixture(scope="module")
def cc(tmp_path_factory) -> dict:
    """One synthetic patient as a reference cache, a prediction cache (its mask, compact pairs) and a
    prediction CSV folder."""
    root = tmp_path_factory.mktemp("bad-eval")
    (p,) = synth.make_cohort(1, seed=3, size=24)
    pred = (p.dose * 0.9).astype(np.float32)
    cache.write_cache([p], root / "ref")
    cache.write_cache([p.with_dose(pred)], root / "pred")
    (root / "csv").mkdir()
    idx = np.flatnonzero(pred)
    write_sparse_csv(root / "csv" / f"{p.id}.csv", idx, pred.ravel()[idx])
    return {"root": root, "p": p, "pred": pred}


def _members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _edited_cache(src: Path, dst: Path, pid: str, **changes: np.ndarray) -> Path:
    """A copy of cache ``src`` whose patient file has ``changes`` members (as a damaged file)."""
    shutil.copytree(src, dst)
    m = _members(dst / f"{pid}.npz")
    m.update(changes)
    cache.write_members(dst / f"{pid}.npz", m)
    return dst


def _score(ref: Path, pred: Path, pid: str, compact: bool = True) -> None:
    evaluate_cohort(iter_cases(ref, pred, [pid], compact=compact, read_ahead=0))


def _evaluate_cli(ref: Path, pred: Path, *extra: str):
    args = ["evaluate", "--reference", str(ref), "--prediction", str(pred), "--no-progress", *extra]
    return runner.invoke(app, args, env=ENV)


# ---------------------------------------------------------------------- 1. negative predicted doses

@pytest.mark.parametrize("compact", [True, False])
def test_negative_dose_in_a_prediction_cache_is_refused(cc, tmp_path, compact):
    p = cc["p"]
    m = _members(cc["root"] / "pred" / f"{p.id}.npz")
    bad = _edited_cache(cc["root"] / "pred", tmp_path / "neg", p.id, dose=-m["dose"])
    with pytest.raises(DosepredError, match=rf"patient {p.id}: .*neg/{p.id}\.npz: the predicted dose must be "
                                            r">= 0 Gy, but \d+ voxel\(s\) are negative"):
        _score(cc["root"] / "ref", bad, p.id, compact)
    with pytest.raises(DosepredError, match=r"must be >= 0 Gy"):  # whole grids too
        evaluate_cohort(iter_pairs(cc["root"] / "ref", bad, [p.id], read_ahead=0))
    r = _evaluate_cli(cc["root"] / "ref", bad)
    assert r.exit_code != 0 and "must be >= 0 Gy" in r.output and "Traceback" not in r.output


def test_one_negative_voxel_in_a_prediction_csv_is_refused(cc, tmp_path):
    p, pred = cc["p"], cc["pred"]
    idx = np.flatnonzero(pred)
    vals = pred.ravel()[idx].copy()
    vals[3] = -5.0
    (tmp_path / "neg").mkdir()
    write_sparse_csv(tmp_path / "neg" / f"{p.id}.csv", idx, vals)
    for compact in (True, False):
        with pytest.raises(DosepredError, match=rf"patient {p.id}: .*{p.id}\.csv holds negative doses \(1 "
                                                r"row\(s\), the first row 5: -5 Gy\); a dose must be >= 0"):
            _score(cc["root"] / "ref", tmp_path / "neg", p.id, compact)


def test_evaluate_patient_refuses_a_negative_dose_array(cc):
    """What qa and calibrate score through: a dose array from any reader."""
    p = cc["p"]
    d = cc["pred"].copy()
    d[0, 0, 0] = -1e-3  # outside the data box too
    with pytest.raises(DosepredError, match=rf"patient {p.id}: the predicted dose must be >= 0 Gy"):
        evaluate_patient(p, d)


# ------------------------------------------------------------ 2. a cache and CSV files in one folder

def test_a_prediction_folder_with_a_cache_and_csv_files_is_ambiguous(cc, tmp_path):
    p = cc["p"]
    mixed = tmp_path / "mixed"
    shutil.copytree(cc["root"] / "pred", mixed)
    shutil.copy(cc["root"] / "csv" / f"{p.id}.csv", mixed)
    msg = r"prediction folder .*mixed is ambiguous: it holds both a dosepred cache .* and 1 OpenKBP"
    with pytest.raises(DosepredError, match=rf"{msg} prediction file\(s\) \({p.id}\.csv\)"):
        match_predictions(cc["root"] / "ref", mixed)
    with pytest.raises(DosepredError, match="ambiguous"):
        _score(cc["root"] / "ref", mixed, p.id)


def test_the_reference_given_as_its_own_prediction_is_refused(cc, tmp_path):
    """--prediction the reference cache itself, under another spelling (a link, an absolute path):
    each patient's plan dose was scored against itself, dose score 0.00, exit 0, without a word."""
    ref = cc["root"] / "ref"
    (tmp_path / "link").symlink_to(ref)
    res = _evaluate_cli(ref, tmp_path / "link")
    text = " ".join(res.output.split())
    assert res.exit_code == 2, text
    assert f"error: prediction folder {tmp_path / 'link'} is the reference {ref}: each patient's " \
           "\"prediction\" would be its own plan dose and every score 0" in text, text
    assert _evaluate_cli(ref, cc["root"] / "pred").exit_code == 0


def test_a_dicom_reference_given_as_its_own_prediction_is_refused(cc, tmp_path):
    """--prediction the DICOM reference folder (or one patient's folder in it): its RTDOSE, matched by
    what it references, was each patient's "prediction": dose score 0.000, every metric +0.00, exit 0."""
    from dosepred.io.dicom import read_dicom_folder, write_dicom, write_rtdose

    ref = tmp_path / "dicom"
    write_dicom(cc["p"], ref / cc["p"].id)
    for pred in (ref, ref / cc["p"].id):
        res = _evaluate_cli(ref, pred)
        text = " ".join(res.output.split())
        assert res.exit_code == 2, text
        assert f"error: patient {cc['p'].id}: the RTDOSE matched as its prediction" in text, text
        assert f"is the plan dose of reference patient {cc['p'].id}" in text, text
    (p,) = read_dicom_folder(ref / cc["p"].id)
    write_rtdose(p, p.dose * 0.9, tmp_path / "pred")  # a prediction of it, in a folder of its own
    res = _evaluate_cli(ref, tmp_path / "pred")
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------- 3. a damaged reference cache

@pytest.mark.parametrize("compact", [True, False])
def test_reference_cache_codes_beyond_the_roi_set_are_refused(cc, tmp_path, compact):
    p = cc["p"]
    m = _members(cc["root"] / "ref" / f"{p.id}.npz")
    codes = m["roi_codes"].copy()
    codes[0] = 65535
    bad = _edited_cache(cc["root"] / "ref", tmp_path / "codes", p.id, roi_codes=codes)
    msg = rf"patient {p.id}: ROI codes have bits set beyond the 10 ROIs of the set \(in .*codes/{p.id}\.npz\)"
    with pytest.raises(DosepredError, match=msg):
        _score(bad, cc["root"] / "pred", p.id, compact)
    with pytest.raises(DosepredError, match=msg):
        _score(bad, cc["root"] / "csv", p.id, compact)
    with pytest.raises(DosepredError, match=msg):  # whole patients: as baseline reads them
        list(iter_pairs(bad, cc["root"] / "pred", [p.id], read_ahead=0))


@pytest.mark.parametrize("pred", ["pred", "csv"])
def test_reference_cache_with_bad_boxes_names_the_cache_file(cc, tmp_path, pred):
    p = cc["p"]
    m = _members(cc["root"] / "ref" / f"{p.id}.npz")
    bad = _edited_cache(cc["root"] / "ref", tmp_path / "boxes", p.id, boxes=m["boxes"] * 10)
    with pytest.raises(DosepredError, match=rf"patient {p.id}: .*boxes/{p.id}\.npz: the member 'boxes': the "
                                            r"grid \(240, 240, 240\) differs from the shape \(24, 24, 24\)"):
        _score(bad, cc["root"] / pred, p.id)
    inside = m["boxes"].copy()
    inside[1, 0, 1] = 30  # a data box beyond the grid
    bad2 = _edited_cache(cc["root"] / "ref", tmp_path / "boxes2", p.id, boxes=inside)
    with pytest.raises(DosepredError, match=r"boxes2/.*the data box .* does not lie within the grid"):
        _score(bad2, cc["root"] / pred, p.id)


def test_short_dose_of_a_prediction_cache_names_the_file(cc, tmp_path):
    p = cc["p"]
    m = _members(cc["root"] / "pred" / f"{p.id}.npz")
    bad = _edited_cache(cc["root"] / "pred", tmp_path / "short", p.id, dose=m["dose"][:-10])
    for compact in (True, False):
        with pytest.raises(DosepredError, match=rf"patient {p.id}: .*short/{p.id}\.npz: it holds \d+ dose "
                                                r"values for \d+ (possible-dose|voxels of its dose support)"):
            _score(cc["root"] / "ref", bad, p.id, compact)


# ------------------------------------------------------------------ 4. input ignored: a warning

def test_predictions_without_a_reference_and_other_files_are_named(cc, tmp_path):
    p = cc["p"]
    extra = tmp_path / "extra"
    shutil.copytree(cc["root"] / "csv", extra)
    shutil.copy(extra / f"{p.id}.csv", extra / "pt_66.csv")
    (extra / "notes.txt").write_text("my notes\n")
    with pytest.warns(UserWarning, match=r"prediction folder .*extra: ignored 1 prediction\(s\) with no "
                                         r"reference patient in .* \(pt_66\.csv\) and 1 file\(s\) that are "
                                         r"no prediction \(notes\.txt\)"):
        found, missing = match_predictions(cc["root"] / "ref", extra)
    assert [i for i, _ in found] == [p.id] and not missing
    # a prediction cache with a patient the reference lacks
    (q,) = synth.make_cohort(1, seed=4, size=24)
    q.id = "other"
    cache.write_cache([p.with_dose(cc["pred"]), q], tmp_path / "pc")
    with pytest.warns(UserWarning, match=r"ignored 1 prediction\(s\) with no reference patient .*\(other\)"):
        match_predictions(cc["root"] / "ref", tmp_path / "pc")
    r = _evaluate_cli(cc["root"] / "ref", extra)
    assert r.exit_code == 0, r.output
    assert "warning: prediction folder" in r.output and "pt_66.csv" in r.output
    with warnings.catch_warnings():  # a clean folder: no warning
        warnings.simplefilter("error")
        match_predictions(cc["root"] / "ref", cc["root"] / "csv")
        match_predictions(cc["root"] / "ref", cc["root"] / "pred")


def test_unknown_roi_file_of_an_openkbp_reference_is_a_warning(openkbp_truth, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(openkbp_truth["root"], ref)
    pid = "pt_3"
    shutil.copy(ref / pid / "PTV70.csv", ref / pid / "Foo.csv")
    pred = tmp_path / "pred"
    pred.mkdir()
    t = openkbp_truth["truth"][pid]
    write_sparse_csv(pred / f"{pid}.csv", t["mask"], t["dose"])
    with pytest.warns(openkbp.UnknownRoiWarning, match=rf"patient {pid}: .*Foo\.csv is not a known ROI"):
        _score(ref, pred, pid)


# -------------------------------------------------------------------- 5. OpenKBP mask / ROI values

@pytest.mark.parametrize(("file", "value"), [("possible_dose_mask.csv", 2.0), ("possible_dose_mask.csv", 0.0),
                                             ("PTV70.csv", 0.0)])
def test_mask_and_roi_values_other_than_1_are_refused(openkbp_truth, tmp_path, file, value):
    ref = tmp_path / "ref"
    shutil.copytree(openkbp_truth["root"], ref)
    pid = "pt_3"
    idx = openkbp_truth["truth"][pid]["mask" if file.startswith("possible") else "PTV70"]
    vals = np.full(idx.size, np.nan)
    vals[2] = value
    (ref / pid / file).write_text(",data\n" + "".join(
        f"{i},{'' if np.isnan(v) else v}\n" for i, v in zip(idx.tolist(), vals, strict=True)))
    msg = rf"patient {pid}: .*{file} row 4: value {value} in the data column \(1 such row\(s\)\); a mask"
    with pytest.raises(openkbp.OpenKBPFormatError, match=msg):
        openkbp.read_patient(ref / pid)
    with pytest.raises(openkbp.OpenKBPFormatError, match=msg):
        openkbp.read_sparse_patient(ref / pid)


def test_mask_values_of_1_are_accepted(openkbp_truth, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(openkbp_truth["root"], ref)
    pid = "pt_3"
    idx = openkbp_truth["truth"][pid]["mask"]
    write_sparse_csv(ref / pid / "possible_dose_mask.csv", idx, np.ones(idx.size))
    assert openkbp.read_patient(ref / pid).possible_dose_mask.sum() == idx.size


# -------------------------------------------------------------------------------- 6. messages

def test_a_file_given_as_a_folder_says_so(cc, openkbp_truth, tmp_path):
    p = cc["p"]
    npz = cc["root"] / "pred" / f"{p.id}.npz"
    with pytest.raises(DosepredError, match=r"prediction folder .*\.npz is a file, not a folder"):
        match_predictions(cc["root"] / "ref", npz)
    ct = openkbp_truth["root"] / "pt_3" / "ct.csv"
    with pytest.raises(DosepredError, match=r"OpenKBP folder .*ct\.csv is a file, not a folder"):
        openkbp.patient_folders(ct)
    r = runner.invoke(app, ["data", "import-openkbp", str(ct), "--out", str(tmp_path / "c")], env=ENV)
    assert r.exit_code != 0 and "is a file, not a folder" in r.output, r.output
    r = _evaluate_cli(npz, cc["root"] / "pred")
    assert r.exit_code != 0 and "is a file, not a folder" in r.output, r.output


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_json_output_that_is_a_folder_is_refused(cc, tmp_path, overwrite):
    folder = tmp_path / "out"
    folder.mkdir()
    r = _evaluate_cli(cc["root"] / "ref", cc["root"] / "pred", "--json", str(folder), *overwrite)
    assert r.exit_code != 0 and "is a folder, not a JSON file path" in r.output, r.output
    assert folder.is_dir() and not any(folder.iterdir())


def test_a_cache_beside_a_csv_that_is_no_patients_prediction_is_a_warning(cc, tmp_path):
    # a prediction cache with my_results.csv beside it: not ambiguous (no patient of the cache is named
    # so), the file is named in a warning and the cache is scored
    p = cc["p"]
    folder = tmp_path / "withnotes"
    shutil.copytree(cc["root"] / "pred", folder)
    shutil.copy(cc["root"] / "csv" / f"{p.id}.csv", folder / "my_results.csv")
    with pytest.warns(UserWarning, match=r"ignored 1 file\(s\) that are no prediction \(my_results\.csv\)"):
        pairs, missing = match_predictions(cc["root"] / "ref", folder)
    assert [i for i, _ in pairs] == [p.id] and missing == []


@pytest.mark.parametrize("bad", [-3.0, np.nan])
def test_a_dose_placed_by_its_header_is_checked_before_resampling_clips_it(cc, bad):
    # an off-grid NIfTI / RTDOSE prediction is resampled onto the reference grid, which clips at 0 Gy:
    # a negative (or NaN) voxel must be refused before that, not scored as 0 Gy
    from dosepred.geometry import Geometry
    from dosepred.io.formats import place_dose

    p = cc["p"]
    g = p.geometry
    step = np.asarray(g.direction) @ np.asarray(g.spacing)  # one voxel along each array axis, in mm
    shifted = Geometry(g.origin - step, g.direction, g.spacing)  # the grid padded by one voxel
    dose = np.pad(cc["pred"], 1).astype(np.float32)
    ok = place_dose(dose, shifted, Path("x.nii.gz"), p, "dose", strict=True)
    assert ok.min() >= 0 and np.allclose(ok, cc["pred"], atol=1e-4)  # the placement itself is right
    dose[tuple(np.argwhere(dose > 0)[0])] = bad
    with pytest.raises(DosepredError, match=rf"patient {p.id}: the predicted dose x\.nii\.gz holds "
                                            r"(negative \(min -3 Gy\)|non-finite) values"):
        place_dose(dose, shifted, Path("x.nii.gz"), p, "dose", strict=True)
