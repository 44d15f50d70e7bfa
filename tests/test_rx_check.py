"""The plan dose checked against the targets' prescriptions wherever a patient enters (io.rx_check via
io.source): medians computed here with numpy on the masks, the files written by hand-made edits."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dicom_layouts import write_rtplan
from dosepred import synth
from dosepred.cli import app
from dosepred.io import dicom, load_patients, open_source
from dosepred.io.rx_check import PrescriptionError, PrescriptionWarning, check_plan_dose, target_doses
from test_bad_dicom import _boost
from test_dicom import make_patient


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """make_patient as CT + RTSTRUCT + RTDOSE + an RTPLAN prescribing PTV70 70 Gy."""
    d = dicom.write_dicom(make_patient(), tmp_path_factory.mktemp("rx") / "dcm")
    write_rtplan(d, d / "RS.dcm", {"PTV70": 70.0})
    return d


def _ptv_median(p) -> float:
    return float(np.median(p.dose[p.mask("PTV70")]))


def _copy(template: Path, tmp_path: Path) -> Path:
    src = tmp_path / "in"
    shutil.copytree(template, src)
    return src


def test_a_consistent_dicom_patient_passes_quietly(template):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrescriptionWarning)
        (p,) = load_patients(template)
    t = {x.name: x for x in target_doses(p)}["PTV70"]
    assert t.median == pytest.approx(_ptv_median(p)) and t.ratio == pytest.approx(_ptv_median(p) / 70)
    assert 0.8 < t.ratio < 1.3 and "RTPLAN" in t.source


def test_concurrent_plans_each_prescribing_the_full_dose_are_an_error_naming_both(template, tmp_path):
    """Two CONCURRENT RTPLANs each stating PTV70 70 Gy (their RTDOSEs add up to the plan dose): the
    reader sums their prescriptions to 140 Gy, which the dose (median ~62 Gy) cannot be a plan of."""
    src = _copy(template, tmp_path)
    _boost(src, "CONCURRENT", rx1={"PTV70": 70.0}, rx2={"PTV70": 70.0})
    with pytest.raises(PrescriptionError) as e:
        list(load_patients(src))
    msg = str(e.value)
    assert "patient pt_a" in msg and "RP1.dcm" in msg and "RP2.dcm" in msg and "PTV70 (Rx 140 Gy" in msg
    assert "summed" in msg and "--roi-map" in msg and "\n" not in msg
    assert ('another plan or course left in the structure set (an ROI map leaves it out: {"<its RTSTRUCT '
            'name>": null})') in msg
    # the ratio stated is the median inside the PTV over 140 Gy
    ref = next(iter(dicom.read_dicom_folder(template)))
    assert f"= {_ptv_median(ref) / 140:.2f} x Rx" in msg
    # importing it: one error line, exit 2, no cache
    out = tmp_path / "cache"
    res = CliRunner().invoke(app, ["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "RP1.dcm" in " ".join(res.output.split()) and not out.exists()


def test_a_dose_scaled_by_0_7_is_a_warning(template, tmp_path):
    src = _copy(template, tmp_path)
    rd = src / "RD.dcm"
    ds = pydicom.dcmread(rd)
    ds.DoseGridScaling = f"{float(ds.DoseGridScaling) * 0.7:.10g}"
    ds.save_as(rd)
    with pytest.warns(PrescriptionWarning, match=r"patient pt_a of .*: plan dose and prescriptions disagree: "
                                                 r"PTV70 \(Rx 70 Gy, from RTPLAN .*RP\.dcm.*\): median") as w:
        (p,) = open_source(src).patients()
    assert p.dose is not None and f"= {_ptv_median(p) / 70:.2f} x Rx" in str(w[0].message)
    assert 0.5 < _ptv_median(p) / 70 < 0.8
    # the CLI shows it as one warning line and imports the patient
    out = tmp_path / "c"
    res = CliRunner().invoke(app, ["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "warning: patient pt_a" in res.output and (tmp_path / "c" / "dataset.json").exists()


def test_an_inconsistent_prescription_from_the_roi_map_is_a_warning_not_an_error(template, tmp_path):
    """The user's ROI map sets PTV70 to 140 Gy (0.44 x the median: an error were it the plans'): the
    user said so, so it is a warning naming the map."""
    m = tmp_path / "map.json"
    m.write_text(json.dumps({"names": {}, "prescriptions": {"PTV70": 140}}))
    with pytest.warns(PrescriptionWarning, match=r"PTV70 \(Rx 140 Gy, from ROI map .*map\.json prescr"):
        (p,) = load_patients(template, roi_map=m)
    assert p.roi_set["PTV70"].prescription == 140 and _ptv_median(p) / 140 < 0.5


def test_a_dose_far_above_the_highest_prescription_is_an_error(template):
    (p,) = dicom.read_dicom_folder(template)
    with pytest.raises(PrescriptionError, match=r"PTV70 .* x Rx = 2\.\d\d x the highest Rx"):
        check_plan_dose(p.with_dose(p.dose * 3))
    with pytest.warns(PrescriptionWarning, match=r"x the highest Rx"):
        check_plan_dose(p.with_dose(p.dose * 1.6))


def test_openkbp_sample_and_synthetic_patients_are_consistent(sample_dir):
    """OpenKBP's fixed 56 / 63 / 70 Gy against its doses, and dosepred.synth's plans: no warning; the
    ratios are the numpy medians over the prescriptions."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrescriptionWarning)
        patients = list(load_patients(sample_dir)) + synth.make_cohort(3, seed=1, size=48)
    for p in patients:
        assert check_plan_dose(p) == []
        ts = target_doses(p)
        assert ts
        for t in ts:
            med = float(np.median(p.dose[p.mask(t.name)]))
            assert t.ratio == pytest.approx(med / p.roi_set[t.name].prescription, rel=1e-6)
            assert 0.8 < t.ratio and t.ratio_highest < 1.3


def test_a_cache_is_checked_but_a_cache_of_predictions_is_not(template, tmp_path):
    """A poor model's prediction is no plan: a cache written by predict (its "prediction" record) is
    read as it is; the same dose in an imported cache is refused."""
    from dosepred.io.cache import write_cache

    (p,) = dicom.read_dicom_folder(template)
    low = p.with_dose(p.dose * 0.3)
    write_cache([low], tmp_path / "plans", source="test")
    with pytest.raises(PrescriptionError, match=r"patient pt_a of .*: .*PTV70 \(Rx 70 Gy"):
        list(load_patients(tmp_path / "plans"))
    write_cache([low], tmp_path / "pred", source="test", record={"prediction": {"version": 1}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrescriptionWarning)
        (q,) = load_patients(tmp_path / "pred")
    np.testing.assert_allclose(q.dose, low.dose)


def test_a_cache_of_dicom_patients_is_named_and_given_a_remedy_it_takes(template, tmp_path):
    """A cache imported from DICOM keeps its patients' DICOM folder and prescription sources in
    ``meta``: reading the cache, the message names the cache the user gave (and the folder it came
    from), and its remedy is to import the DICOM again with an ROI map, which a cache does not take."""
    from dosepred.io.cache import write_cache

    (p,) = dicom.read_dicom_folder(template)
    write_cache([p.with_dose(p.dose * 0.3)], tmp_path / "plans", source="test")
    with pytest.raises(PrescriptionError) as e:
        list(load_patients(tmp_path / "plans"))
    msg = str(e.value)
    assert msg.startswith(f"patient pt_a of {tmp_path / 'plans'} (imported from {p.meta['source']}):"), msg
    assert "import its DICOM again setting the prescription with an ROI map (--roi-map" in msg
    # read from the DICOM folder itself: the ROI map is for this very source
    with pytest.raises(PrescriptionError) as e:
        check_plan_dose(p.with_dose(p.dose * 0.3))
    assert "; set the prescription with an ROI map (--roi-map" in str(e.value)


def test_the_remedy_fits_the_source(tmp_path, sample_dir):
    """An OpenKBP patient (no ROI map possible) in cGy: the error names the units and no --roi-map
    (since the dose.csv range check, the reader's own error, before the prescription check)."""
    import pandas as pd

    from dosepred.io.openkbp import OpenKBPFormatError, read_patient

    src = tmp_path / "pt"
    shutil.copytree(sorted(p for p in sample_dir.iterdir() if p.is_dir())[0], src)
    d = pd.read_csv(src / "dose.csv", index_col=0)
    d["data"] = d["data"] * 100
    d.to_csv(src / "dose.csv")
    with pytest.raises((PrescriptionError, OpenKBPFormatError)) as e:
        check_plan_dose(read_patient(src))
    msg = str(e.value)
    assert "cGy" in msg and "--roi-map" not in msg and "\n" not in msg
