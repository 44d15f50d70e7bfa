"""scripts/qa_residual_probes.py (docs/qa.md "What else was tried on the error itself"): its cross-fitted
scores against leave-one-patient-out computations written out by hand (numpy), on planted residuals."""

import subprocess
import sys

import numpy as np

from dosepred.qa.families import Unit
from script_loader import SCRIPTS, load_script


def _script():
    return load_script("qa_residual_probes")


def _units(slope=0.0, seed=0, n=12):
    """Two OARs per patient, each with its own bias; residual = bias + slope * (pred - 30) + noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        for roi, bias in (("LeftParotid", 1.5), ("Larynx", -2.0)):
            pred = float(rng.uniform(15, 45))
            r = bias + slope * (pred - 30.0) + float(rng.normal(0, 0.5))
            out.append(Unit(f"pt_{i}", roi, "Dmean", "oar_mean", pred + r, pred, 1.0))
    return out


def test_centred_scores_are_each_residual_minus_its_roi_median_without_its_patient():
    units = _units(seed=1)
    got = _script().cross_fitted_scores(units, "centred")
    for k, u in enumerate(units):
        others = [v.plan - v.predicted for v in units if v.roi == u.roi and v.patient != u.patient]
        assert np.isclose(got[k], (u.plan - u.predicted) - np.median(others))
    assert np.allclose(_script().cross_fitted_scores(units, "signed"), [u.plan - u.predicted for u in units])
    means = _script().cross_fitted_scores(units, "mean")
    for k, u in enumerate(units):
        others = [v.plan - v.predicted for v in units if v.roi == u.roi and v.patient != u.patient]
        assert np.isclose(means[k], (u.plan - u.predicted) - np.mean(others))


def test_linear_scores_remove_a_planted_slope_that_centring_leaves():
    mod = _script()
    units = _units(slope=0.3, seed=2, n=20)
    centred, linear = mod.cross_fitted_scores(units, "centred"), mod.cross_fitted_scores(units, "linear")
    assert linear.std() < 0.5 * centred.std()
    # by hand for the first unit: pooled within-ROI slope and ROI mean from the other patients
    u = units[0]
    rest = [v for v in units if v.patient != u.patient]
    dp, dr = [], []
    for roi in ("LeftParotid", "Larynx"):
        p = np.array([v.predicted for v in rest if v.roi == roi])
        r = np.array([v.plan - v.predicted for v in rest if v.roi == roi])
        dp += list(p - p.mean())
        dr += list(r - r.mean())
    b = np.dot(dp, dr) / np.dot(dp, dp)
    same = [v for v in rest if v.roi == u.roi]
    want = (u.plan - u.predicted) - (np.mean([v.plan - v.predicted for v in same])
                                     + b * (u.predicted - np.mean([v.predicted for v in same])))
    assert np.isclose(linear[0], want)


def test_without_a_slope_linear_is_no_better_than_centring():
    mod = _script()
    units = _units(slope=0.0, seed=3, n=20)
    lin, cen = mod.cross_fitted_scores(units, "linear"), mod.cross_fitted_scores(units, "centred")
    assert lin.std() > 0.9 * cen.std()


def test_a_criterion_with_too_few_other_patients_is_not_shifted():
    mod = _script()
    units = _units(seed=4, n=3)  # each ROI has 2 units without any one patient: fewer than MIN_UNITS
    for kind in ("centred", "mean", "linear"):
        assert np.allclose(mod.cross_fitted_scores(units, kind), [u.plan - u.predicted for u in units])


def test_a_missing_predictions_folder_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPTS / "qa_residual_probes.py"), "--model",
                        str(SCRIPTS.parent / "models" / "openkbp-mae-cdm"),
                        "--data", str(tmp_path / "no-cache"), "--predictions", str(tmp_path / "no-pred")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "no-" in lines[0]
