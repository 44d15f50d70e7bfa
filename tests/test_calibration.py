import json
import math

import numpy as np
import pytest

from dosepred.calibration import (
    CalibrationError,
    Unit,
    choose_methods,
    conformal_lower,
    conformal_quantile,
    cross_validate,
    fit_family,
    interval,
    load_calibration,
    metric_family,
    offsets,
    write_calibration,
)


@pytest.mark.parametrize("n", [1, 5, 19, 20, 100, 333])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.5])
def test_conformal_quantile_is_the_ceil_n_plus_1_empirical_quantile(n, alpha):
    s = np.random.default_rng(n).normal(size=n)
    level = math.ceil((n + 1) * (1 - alpha)) / n
    got = conformal_quantile(s, alpha)
    if level > 1:
        assert got == math.inf
    else:
        assert got == np.quantile(s, level, method="inverted_cdf")
    # the lower counterpart mirrors it
    lo = conformal_lower(s, alpha)
    assert lo == (-math.inf if level > 1 else -np.quantile(-s, level, method="inverted_cdf"))


def test_offsets_by_method():
    r = np.arange(-50, 50, dtype=float)  # 100 scores
    lo, hi = offsets(np.abs(r), "absolute", 0.9)
    assert hi == np.sort(np.abs(r))[math.ceil(101 * 0.9) - 1] and lo == -hi
    lo, hi = offsets(r, "signed", 0.8)
    assert hi == np.sort(r)[math.ceil(101 * 0.9) - 1]
    assert lo == -np.sort(-r)[math.ceil(101 * 0.9) - 1]
    with pytest.raises(ValueError):
        offsets(r, "nope", 0.9)


@pytest.mark.parametrize(("metric", "kind", "family"), [
    ("D95%", "target", "target_dose"), ("D1%", "target", "target_dose"), ("Dmean", "target", "target_dose"),
    ("Dmean", "oar", "oar_mean"), ("D50%", "oar", "oar_mean"), ("D0.1cc", "oar", "oar_nearmax"),
    ("D2%", "oar", "oar_nearmax"), ("Dmax", "oar", "oar_nearmax"), ("D2cc", "oar", "oar_nearmax"),
    ("V110%", "target", "v_metric"), ("V30Gy", "oar", "v_metric")])
def test_metric_family(metric, kind, family):
    assert metric_family(metric, kind) == family


def _synthetic_units(n_patients=60, seed=0):
    """Residuals of three criteria per family with different spreads and biases."""
    rng = np.random.default_rng(seed)
    units = []
    spec = {"target_dose": [("PTV70", "D95%", 0.5, 1.0), ("PTV70", "D99%", 1.0, 2.0),
                            ("PTV56", "D95%", -0.5, 1.5)],
            "oar_mean": [("LeftParotid", "Dmean", -1.0, 3.0), ("Larynx", "Dmean", 0.0, 1.0)]}
    for i in range(n_patients):
        for fam, crits in spec.items():
            for roi, metric, bias, sd in crits:
                yhat = rng.uniform(20, 70)
                units.append(Unit(f"p{i}", roi, metric, fam, yhat + bias + sd * rng.standard_t(5), yhat, 1.0))
    return units


def test_cross_validated_coverage_is_nominal_on_synthetic_residuals():
    units = _synthetic_units()
    cv = cross_validate(units, coverages=(0.8, 0.9), splits=80, cal_fraction=0.5, seed=1)
    for fam in ("target_dose", "oar_mean"):
        for m in ("absolute", "signed", "normalised"):
            for cov in (0.8, 0.9):
                c = cv[fam][m][f"{cov:g}"]["coverage"]
                assert cov * 100 - 2.0 <= c <= cov * 100 + 4.0, (fam, m, cov, c)
    # normalised adapts to the criteria's different spreads: narrower than plain conformal here
    assert cv["oar_mean"]["normalised"]["0.9"]["width"] < cv["oar_mean"]["absolute"]["0.9"]["width"]


def test_coverage_on_new_patients_matches_direct_count():
    """Interval from calibration units, checked by counting on fresh synthetic patients."""
    cal = [u for u in _synthetic_units(40, seed=2) if u.family == "oar_mean"]
    test = [u for u in _synthetic_units(400, seed=3) if u.family == "oar_mean"]
    fam = fit_family(cal)
    fam["family"] = "oar_mean"
    for m in ("absolute", "signed", "normalised"):
        hits = []
        for u in test:
            lo, hi = interval(u.predicted, f"{u.roi} {u.metric}", fam, m, 0.9)
            hits.append(lo <= u.plan <= hi)
        assert 0.86 <= np.mean(hits) <= 0.97, (m, np.mean(hits))


def test_interval_clipped_to_the_metric_range():
    units = [Unit(f"p{i}", "PTV70", "V110%", "v_metric", float(v), 0.0, 0.0)
             for i, v in enumerate([0, 0, 1, 2, 3] * 5)]
    fam = fit_family(units)
    fam["family"] = "v_metric"
    lo, hi = interval(0.0, "PTV70 V110%", fam, "absolute", 0.8)
    assert lo == 0.0 and 0 < hi <= 100
    lo, hi = interval(99.5, "PTV70 V110%", fam, "absolute", 0.8)
    assert hi == 100.0


def test_choose_methods_prefers_absolute_unless_clearly_narrower_and_covering():
    def stats(c8, w8, c9, w9):
        return {"0.8": {"coverage": c8, "width": w8}, "0.9": {"coverage": c9, "width": w9}}

    cv = {"a": {"absolute": stats(80, 10, 90, 12), "signed": stats(80, 9.8, 90, 11.9),
                "normalised": stats(79, 8, 89, 10)},
          "b": {"absolute": stats(80, 10, 90, 12), "signed": stats(75, 5, 85, 6),  # under-covers: not allowed
                "normalised": stats(80, 9.9, 90, 11.9)},
          "c": {"absolute": stats(80, 10, 90, 12), "signed": stats(84, 8, 94, 10)}}  # narrower, covers more
    assert choose_methods(cv) == {"a": "normalised", "b": "absolute", "c": "signed"}


def test_write_and_load_calibration_atomic(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    with pytest.raises(CalibrationError, match="no calibration.json"):
        load_calibration(tmp_path)
    path = write_calibration(tmp_path, {"format": "dosepred-calibration", "x": math.inf})
    assert json.loads(path.read_text())["x"] == "inf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json", "model.pt"]
    assert (tmp_path / "model.pt").read_bytes() == b"weights"
    assert load_calibration(tmp_path / "model.pt")["format"] == "dosepred-calibration"
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(CalibrationError, match="not a dosepred calibration"):
        load_calibration(tmp_path)
