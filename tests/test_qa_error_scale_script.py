"""scripts/qa_error_scale.py (docs/qa.md "How much smaller the model's error must be"): which units it
reads from an evaluation JSON, and its cross-validated rates against the Gaussian answer (scipy)."""

import numpy as np
from scipy import stats

from script_loader import load_script


def _script():
    return load_script("qa_error_scale")


def _roi(kind, **metrics):
    return {"kind": kind, "metrics": {m: {"ref": r, "pred": p} for m, (r, p) in metrics.items()}}


def test_reads_only_the_oar_mean_doses_a_criterion_checks():
    ev = {"per_patient": [
        {"criteria": [{"roi": "LeftParotid", "metric": "Dmean"}, {"roi": "PTV70", "metric": "D95%"}],
         "rois": {"LeftParotid": _roi("oar", Dmean=(25.0, 22.5)), "Mandible": _roi("oar", Dmean=(40.0, 30.0)),
                  "PTV70": _roi("target", **{"D95%": (70.0, 71.0)})}},
        {"criteria": [], "rois": {"LeftParotid": _roi("oar", Dmean=(20.0, 21.0), D1=(50.0, 40.0))}}]}
    pat, r = _script().oar_mean_residuals(ev)
    assert pat.tolist() == [0, 1]  # the second patient's parotid: a criterion of the protocol elsewhere
    assert r.tolist() == [2.5, -1.0]  # plan - predicted; the Mandible has no Dmean criterion


def test_rates_match_the_gaussian_answer_and_shrink_with_the_error():
    rng = np.random.default_rng(5)
    pat = np.repeat(np.arange(3000), 2)
    r = rng.normal(0.0, 2.0, pat.size)
    mod = _script()
    d = mod.detection(pat, r, splits=20, n_cal=2000)
    q = stats.norm.ppf(0.95) * 2.0  # the 90 % bound of |N(0, 2)|
    assert abs(d["width"] - 2 * q) < 0.2  # one sample of 6000: SE of the width ~0.07 Gy
    assert abs(d["false_alarms"] - 5.0) < 0.7
    assert abs(d["caught_3"] - 100 * stats.norm.sf(q - 3, scale=2.0)) < 1.5
    assert abs(d["caught_6"] - 100 * stats.norm.sf(q - 6, scale=2.0)) < 1.0
    half = mod.detection(pat, r * 0.5, splits=20, n_cal=2000)
    assert abs(half["width"] - q) < 0.1 and half["caught_3"] > d["caught_3"] + 30


def test_centring_each_roi_removes_its_bias_from_the_interval():
    mod = _script()
    rng = np.random.default_rng(3)
    n = 40
    pat = np.repeat(np.arange(n), 2)
    rois = np.array(["RightParotid", "LeftParotid"] * n, dtype=object)
    r = np.where(rois == "RightParotid", 2.0, -2.0) + rng.normal(0, 0.5, 2 * n)  # biased per ROI
    pooled = mod.detection(pat, r, splits=100, n_cal=30)
    centred = mod.detection(pat, r, splits=100, n_cal=30, rois=rois)
    # pooled |r| is about 2 + |noise|: width about 2 x (2 + 0.82); centred about 2 x 1.645 x 0.5
    assert 4.5 < pooled["width"] < 7 and 1.2 < centred["width"] < 2.4
    assert centred["caught_3"] > 95 and pooled["caught_3"] < 80  # the left parotid's +3 Gy hides
    assert centred["false_alarms"] < 20
    same = mod.detection(pat, r, splits=100, n_cal=30, rois=np.array(["A"] * (2 * n), dtype=object))
    assert same["width"] < pooled["width"] + 0.5  # one ROI: centring on its median only


def test_per_roi_rates_are_each_rois_own_counts_under_the_pooled_interval():
    """Two ROIs, one biased high: under the pooled interval its untouched units are flagged often and
    the other's never; the rates equal a direct count over the same splits, and their unit-weighted
    mean is the pooled rate."""
    mod = _script()
    rng = np.random.default_rng(4)
    n = 50
    pat = np.repeat(np.arange(n), 2)
    rois = np.array(["Right", "Left"] * n, dtype=object)
    r = np.where(rois == "Right", 1.5, -1.5) + rng.normal(0, 1.0, 2 * n)
    d = mod.detection(pat, r, splits=50, n_cal=30, per_roi=rois)
    right, left = d["by_roi"]["Right"], d["by_roi"]["Left"]
    assert right["false_alarms"] > 8 and left["false_alarms"] < 1
    assert right["caught_3"] > left["caught_3"] + 30
    # direct count with the same splits (the same generator and order as detection)
    g = np.random.default_rng(0)
    hits, total = 0, 0
    for _ in range(50):
        cal = np.isin(pat, g.permutation(np.unique(pat))[:30])
        z = np.sort(np.abs(r[cal]))
        q = z[int(np.ceil((z.size + 1) * 0.9)) - 1]
        sel = ~cal & (rois == "Right")
        hits, total = hits + int(np.sum(r[sel] > q)), total + int(np.sum(sel))
    assert abs(right["false_alarms"] - 100 * hits / total) < 1e-9
    # every split checks 20 patients, one unit of each ROI each: equal counts, so the mean is the pooled rate
    assert abs((right["false_alarms"] + left["false_alarms"]) / 2 - d["false_alarms"]) < 1e-9
