import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from calibration_versions import without_centred
from dosepred.qa.calibrating import build_calibration
from dosepred.qa.calibration import (
    CALIBRATION_VERSION,
    REQUIRED_FIELDS,
    Calibration,
    CalibrationError,
    TrainingRanges,
    load_calibration,
    write_calibration,
)
from dosepred.qa.conformal import (
    MIN_CENTRE_UNITS,
    apply_offsets,
    conformal_lower,
    conformal_quantile,
    family_offsets,
    fit_family,
    interval,
    offsets,
    tail_scores,
)
from dosepred.qa.crossval import choose_methods, cross_validate
from dosepred.qa.families import Unit, metric_family

#: training ranges for the calibrations built here (a calibration of the current version must hold them)
RANGES = TrainingRanges(20, {"PTV70": (40.0, 1200.0), "SpinalCord": (5.0, 60.0)}, (1.5, 2.7, 2.7),
                        (3.3, 5.1, 5.1))


@pytest.mark.parametrize("n", [1, 5, 19, 20, 100, 333])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.5])
def test_conservative_quantile_is_the_ceil_n_plus_1_empirical_quantile(n, alpha):
    s = np.random.default_rng(n).normal(size=n)
    level = math.ceil((n + 1) * (1 - alpha)) / n
    got = conformal_quantile(s, alpha, "conservative")
    if level > 1:
        assert got == math.inf
    else:
        assert got == np.quantile(s, level, method="inverted_cdf")
    # the lower counterpart mirrors it
    lo = conformal_lower(s, alpha, "conservative")
    assert lo == (-math.inf if level > 1 else -np.quantile(-s, level, method="inverted_cdf"))


@pytest.mark.parametrize(("alpha", "interpolated", "conservative"), [
    (0.5, 2.5, 3.0),        # c = 5 * 0.5 = 2.5: halfway between the 2nd and 3rd smallest; ceil: 3rd
    (0.2, 4.0, 4.0),        # c = 4 exactly: the 4th smallest for both
    (0.3, 3.5, 4.0),        # c = 3.5
    (0.1, math.inf, math.inf),  # c = 4.5 > n = 4: too few scores
    (0.9, 1.0, 1.0),        # c = 0.5 < 1: the smallest score
])
def test_quantile_rules_by_hand(alpha, interpolated, conservative):
    s = [4.0, 2.0, 1.0, 3.0]
    assert conformal_quantile(s, alpha, "interpolated") == pytest.approx(interpolated)
    assert conformal_quantile(s, alpha, "conservative") == conservative
    with pytest.raises(ValueError, match="quantile rule"):
        conformal_quantile(s, alpha, "nearest")


def test_interpolated_quantile_mirrors_and_handles_ties():
    s = [0.0, 0.0, 0.0, 1.0, 2.0]  # c = 6 * 0.5 = 3: the 3rd smallest (a tied 0)
    assert conformal_quantile(s, 0.5) == 0.0
    assert conformal_quantile(s, 0.25) == pytest.approx(1.5)  # c = 4.5
    assert conformal_lower(s, 0.25) == pytest.approx(-conformal_quantile([-x for x in s], 0.25))


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))) if math.isfinite(x) else float(x > 0)


@pytest.mark.parametrize("cov", [0.8, 0.9])
def test_interpolated_rule_exact_on_uniform_scores(cov):
    """For U(0, 1) scores the coverage of a threshold q is q itself, so the mean coverage is the mean
    threshold: exactly f / (n + 1) + w / (n + 1) = cov for the interpolated rule (linear in two order
    statistics with means f / (n + 1) and (f + 1) / (n + 1)), ceil(c) / (n + 1) for the conservative."""
    n = 26
    rng = np.random.default_rng(7)
    draws = rng.random((20000, n))
    q_int = np.array([conformal_quantile(d, 1 - cov, "interpolated") for d in draws])
    q_con = np.array([conformal_quantile(d, 1 - cov, "conservative") for d in draws])
    se = 0.29 / math.sqrt(len(draws))  # sd of a uniform order statistic < 0.29
    assert abs(q_int.mean() - cov) < 4 * se
    assert abs(q_con.mean() - math.ceil((n + 1) * cov) / (n + 1)) < 4 * se
    assert q_con.mean() - cov > 0.01  # the conservative rule's excess the interpolated one removes


@pytest.mark.parametrize("cov", [0.8, 0.9])
def test_absolute_intervals_with_a_point_mass_at_zero(cov):
    """Half the residuals exactly 0 (plan and prediction agree: no hot spot in either), the others
    N(0, 1); 26 calibration units like the V-metric family in a cross-validation fold. The exact
    coverage of threshold q for a new unit is 0.5 + 0.5 (2 Phi(q) - 1); averaged over calibration
    draws it is the interval's expected coverage."""
    rng = np.random.default_rng(11)
    got = {"interpolated": [], "conservative": []}
    for _ in range(3000):
        r = np.where(rng.random(26) < 0.5, 0.0, rng.normal(size=26))
        for rule, acc in got.items():
            lo, hi = offsets(r, "absolute", cov, rule)
            acc.append(0.5 + 0.5 * (2 * _phi(hi) - 1))
    assert abs(np.mean(got["interpolated"]) - cov) < 0.006
    assert np.mean(got["conservative"]) - cov > 0.01


@pytest.mark.parametrize("cov", [0.8, 0.9])
def test_signed_intervals_when_a_tail_threshold_sits_on_the_point_mass(cov):
    """60 % of residuals exactly 0, 2 % negative (-|N(0, 1)|), 38 % positive (2 |N(0, 1)|): the lower
    tail has less than alpha / 2, so the lower threshold is the tied 0. The exact coverage of [lo, hi]
    is 0.6 [lo <= 0 <= hi] + 0.02 P(|N| <= -lo) + 0.38 P(2 |N| <= hi). Unused lower miss goes to the
    upper tail: nominal coverage, where alpha / 2 per tail covers 1 - 0.02 - alpha / 2."""
    rng = np.random.default_rng(12)

    def exact(lo: float, hi: float) -> float:
        pneg = 2 * _phi(-lo) - 1 if lo < 0 else 0.0
        ppos = 2 * _phi(hi / 2) - 1 if hi > 0 else 0.0
        return 0.6 * (lo <= 0 <= hi) + 0.02 * pneg + 0.38 * ppos

    new, per_tail = [], []
    a = 1 - cov
    for _ in range(2000):
        u = rng.random(100)
        r = np.where(u < 0.6, 0.0, np.where(u < 0.62, -np.abs(rng.normal(size=100)),
                                            2 * np.abs(rng.normal(size=100))))
        lo, hi = offsets(r, "signed", cov)
        assert lo <= 0.0 <= hi
        new.append(exact(lo, hi))
        per_tail.append(exact(conformal_lower(r, a / 2), conformal_quantile(r, a / 2)))
    assert abs(np.mean(new) - cov) < 0.006
    assert np.mean(per_tail) > cov + 0.02  # what a tie-blind alpha / 2 per tail gives


def test_v_metric_plans_at_zero_are_not_scores_of_the_upper_tail():
    """V-metric plans at 0 % (80 %; no hot spot) with predictions that are not (Exp(1.5)), the others
    prediction * exp(N(-0.5, 0.6)): the model predicts hot spots hotter than planned, like mae-dvh.
    A plan at 0 % lies in every interval clipped at 0 whose lower end is <= 0; counting its residual
    0 - predicted among the upper tail's scores over-covers. Exact coverage of the clipped interval:
    0.8 [low <= 0] + 0.2 P(low <= predicted e^Z <= high), averaged over predictions (quantile grid)
    and calibration draws (40 units)."""
    p0, mu, sig, scale = 0.8, -0.5, 0.6, 1.5
    grid = -scale * np.log(1 - (np.arange(20) + 0.5) / 20)
    rng = np.random.default_rng(3)

    def exact(fam, cov: float) -> float:
        lo, hi = family_offsets(fam, "signed", cov)
        c = []
        for yh in grid:
            low, high = apply_offsets(float(yh), "PTV70 V110%", fam, "signed", lo, hi)
            assert 0.0 <= low <= high <= 100.0
            zl = (math.log(low / yh) - mu) / sig if low > 0 else -math.inf
            zh = (math.log(high / yh) - mu) / sig if high > 0 else -math.inf
            c.append(p0 * (low <= 0) + (1 - p0) * max(_phi(zh) - _phi(zl), 0.0))
        return float(np.mean(c))

    res: dict[tuple[float, str], list[float]] = {}
    for _ in range(150):
        yhat = rng.exponential(scale, 40)
        y = np.where(rng.random(40) < p0, 0.0, yhat * np.exp(mu + sig * rng.normal(size=40)))
        fam = fit_family([Unit(f"p{i}", "PTV70", "V110%", "v_metric", float(a), float(b), 0.0)
                          for i, (a, b) in enumerate(zip(y, yhat, strict=True))])
        assert fam.family == "v_metric"
        plain = dataclasses.replace(fam, tail_scores=None)  # as a version 1 calibration
        for cov in (0.8, 0.9):
            res.setdefault((cov, "bounded"), []).append(exact(fam, cov))
            res.setdefault((cov, "plain"), []).append(exact(plain, cov))
    for cov in (0.8, 0.9):
        assert abs(np.mean(res[(cov, "bounded")]) - cov) < 0.015, cov
    assert np.mean(res[(0.8, "plain")]) - np.mean(res[(0.8, "bounded")]) > 0.02


def test_tail_scores_follow_their_units():
    """The normalised scores are cross-fitted patient by patient; their bound masks must stay aligned."""
    units = [Unit("p1", "PTV70", "V110%", "v_metric", 0.0, 2.0, 0.0),
             Unit("p2", "PTV70", "V110%", "v_metric", 3.0, 1.0, 0.0),
             Unit("p1", "PTV56", "V110%", "v_metric", 100.0, 90.0, 0.0),
             Unit("p3", "PTV70", "V110%", "v_metric", 5.0, 5.5, 0.0)]
    fam = fit_family(units)
    ts = fam.tail_scores["signed"]
    assert ts.upper == (-0.5, 2.0, 10.0)  # the plan at 0 % is not in the upper tail
    assert ts.lower == (-2.0, -0.5, 2.0)  # the plan at 100 % is not in the lower tail
    lo, hi = tail_scores(fam, "signed")
    assert lo.tolist() == [-2.0, -0.5, 2.0, math.inf] and hi.tolist() == [-math.inf, -0.5, 2.0, 10.0]
    assert len(fam.tail_scores["normalised"].upper) == 3


def test_offsets_by_method():
    r = np.arange(-50, 50, dtype=float)  # 100 scores
    lo, hi = offsets(np.abs(r), "absolute", 0.9, "conservative")
    assert hi == np.sort(np.abs(r))[math.ceil(101 * 0.9) - 1] and lo == -hi
    lo, hi = offsets(r, "signed", 0.8, "conservative")
    assert hi == np.sort(r)[math.ceil(101 * 0.9) - 1]
    assert lo == -np.sort(-r)[math.ceil(101 * 0.9) - 1]
    # interpolated: c = 101 * 0.9 = 90.9: 0.9 of the way from the 90th smallest (39) to the 91st (40);
    # the lower side mirrors it on -r (-49 ... 50): -(40 + 0.9)
    lo, hi = offsets(r, "signed", 0.8)
    assert hi == pytest.approx(39.9) and lo == pytest.approx(-40.9)
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
        for m in ("absolute", "signed", "normalised", "centred"):
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
    assert fam.family == "oar_mean"
    for m in ("absolute", "signed", "normalised", "centred"):
        hits = []
        for u in test:
            lo, hi = interval(u.predicted, f"{u.roi} {u.metric}", fam, m, 0.9)
            hits.append(lo <= u.plan <= hi)
        assert 0.86 <= np.mean(hits) <= 0.97, (m, np.mean(hits))


def test_interval_clipped_to_the_metric_range():
    units = [Unit(f"p{i}", "PTV70", "V110%", "v_metric", float(v), 0.0, 0.0)
             for i, v in enumerate([0, 0, 1, 2, 3] * 5)]
    fam = fit_family(units)
    lo, hi = interval(0.0, "PTV70 V110%", fam, "absolute", 0.8)
    assert lo == 0.0 and 0 < hi <= 100
    lo, hi = interval(99.5, "PTV70 V110%", fam, "absolute", 0.8)
    assert hi == 100.0


def test_choose_methods_total_width_prefers_absolute_unless_clearly_narrower_and_covering():
    def stats(c8, w8, c9, w9):
        return {"0.8": {"coverage": c8, "width": w8}, "0.9": {"coverage": c9, "width": w9}}

    cv = {"a": {"absolute": stats(80, 10, 90, 12), "signed": stats(80, 9.8, 90, 11.9),
                "normalised": stats(79, 8, 89, 10)},
          "b": {"absolute": stats(80, 10, 90, 12), "signed": stats(75, 5, 85, 6),  # under-covers: not allowed
                "normalised": stats(80, 9.9, 90, 11.9)},
          "c": {"absolute": stats(80, 10, 90, 12), "signed": stats(84, 8, 94, 10)}}  # narrower, covers more
    assert choose_methods(cv, rule="total-width") == {"a": "normalised", "b": "absolute", "c": "signed"}


def test_write_and_load_calibration_atomic(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    with pytest.raises(CalibrationError, match="no calibration.json"):
        load_calibration(tmp_path)
    units = _synthetic_units(20, seed=5)
    ids = sorted({u.patient for u in units})
    cal = build_calibration(units, ids, "openkbp-clinical", tmp_path / "model.pt", "d", RANGES, splits=5)
    stats = {"width": math.inf, "coverage": math.nan}
    results = {**cal.cross_validation.results, "oar_mean": {"absolute": {"0.9": stats}}}
    cv = dataclasses.replace(cal.cross_validation, results=results)
    cal = dataclasses.replace(cal, cross_validation=cv)
    path = write_calibration(tmp_path, cal)
    assert json.loads(path.read_text())["cross_validation"]["results"]["oar_mean"]["absolute"]["0.9"] == {
        "width": "inf", "coverage": None}  # JSON has no inf or NaN
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json", "model.pt"]
    assert (tmp_path / "model.pt").read_bytes() == b"weights"
    again = load_calibration(tmp_path / "model.pt")
    assert again.cross_validation.results["oar_mean"]["absolute"]["0.9"]["width"] == math.inf
    assert again.families == cal.families and again.criteria == cal.criteria
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(CalibrationError, match="not a dosepred calibration"):
        load_calibration(tmp_path)


def _old_versions(cal: dict) -> dict[int, dict]:
    """The released calibration (version 3 or 4) as the writers of the earlier versions wrote theirs:
    version 3 without the ``centred`` method (its scores, tails, method and per-criterion centres);
    version 2 also without ``tta`` and ``method_rule``; version 1 also without the quantile rule, the
    tail scores and the DVH band."""
    out = {cal["version"]: cal}
    if cal["version"] == 4:
        cal = {**without_centred(json.loads(json.dumps(cal))), "version": 3}
        out[3] = cal
    v2 = {k: v for k, v in cal.items() if k not in ("tta", "method_rule")}
    v2["version"] = 2
    v1 = {k: v for k, v in v2.items() if k not in ("quantile_rule", "dvh_band")}
    v1["version"] = 1
    v1["families"] = {f: {k: v for k, v in d.items() if k != "tail_scores"}
                      for f, d in cal["families"].items()}
    return {1: v1, 2: v2, **out}


def test_calibration_files_of_every_version_read_and_write_back_unchanged(tmp_path):
    """A calibration.json of each version, as its writer wrote it (``json.dumps(..., indent=1)``), is
    read with its version's meaning (rule, flipping, tail scores, band) and written back byte for
    byte: the typed record loses nothing and adds nothing."""
    from pathlib import Path

    released = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm" / "calibration.json"
    text = released.read_text()
    assert json.dumps(json.loads(text), indent=1) + "\n" == text  # how the writer writes
    for version, obj in _old_versions(json.loads(text)).items():
        d = tmp_path / f"v{version}"
        d.mkdir()
        written = json.dumps(obj, indent=1) + "\n"
        (d / "calibration.json").write_text(written)
        cal = load_calibration(d)
        assert cal.version == version
        assert cal.quantile_rule == ("conservative" if version == 1 else "interpolated")
        assert cal.tta is (version >= 3)
        assert all(("centred" in f.scores) is (version == 4) for f in cal.families.values())
        assert (cal.dvh_band is None) is (version == 1)
        assert all((f.tail_scores is None) is (version == 1) for f in cal.families.values())
        assert cal.methods == {f: v["method"] for f, v in obj["families"].items()}
        ranges = obj["training_ranges"]["roi_volume_cc"]
        assert cal.training_ranges.roi_volume_cc == {r: tuple(v) for r, v in ranges.items()}
        fam = cal.families["target_dose"]
        assert fam.scores["signed"] == tuple(obj["families"]["target_dose"]["scores"]["signed"])
        assert fam.criterion_stats["PTV70 D95%"].scale == obj["families"]["target_dose"]["criterion_stats"][
            "PTV70 D95%"]["scale"]
        out = tmp_path / f"out{version}"
        out.mkdir()
        assert write_calibration(out, cal).read_text() == written


RELEASED = sorted((Path(__file__).resolve().parents[1] / "models").glob("*/calibration.json"))


@pytest.mark.parametrize(("edit", "field", "has"), [
    (lambda c: c.update(criteria=[]), "criteria", "has 'criteria' []"),
    (lambda c: c.pop("criteria"), "criteria", "has no 'criteria'"),
    (lambda c: c.pop("model_sha256"), "model_sha256", "has no 'model_sha256'"),
    (lambda c: c.update(model_sha256=None), "model_sha256", "has 'model_sha256' null"),
    (lambda c: c.update(model_sha256="abc"), "model_sha256", "has 'model_sha256' \"abc\""),
    (lambda c: c.pop("training_ranges"), "training_ranges", "has no 'training_ranges'"),
    (lambda c: c.update(training_ranges=None), "training_ranges", "has 'training_ranges' null"),
    (lambda c: c["training_ranges"].update(roi_volume_cc={}), "training_ranges", "has 'training_ranges' {"),
])
def test_a_current_calibration_must_hold_what_qa_s_checks_stand_on(tmp_path, edit, field, has):
    """A version-4 file edited by hand or damaged so that it lacks the criteria (every 'criterion not
    calibrated' flag went silent), the model's SHA-256 (the model-file check was skipped) or the
    training ROI volume ranges (the volume note was dropped) is one error naming the file and the field;
    each version 1-3 file, whose writers were not held to it, still loads without it."""
    obj = json.loads(RELEASED[0].read_text())
    assert obj["version"] == CALIBRATION_VERSION == 4
    edit(obj)
    (tmp_path / "calibration.json").write_text(json.dumps(obj))
    path = re.escape(str(tmp_path / "calibration.json"))
    with pytest.raises(CalibrationError, match=rf"^{path}: calibration\.json version 4 {re.escape(has)}.*; "
                                               rf"a file of this version must hold it \(.*\): recalibrate "
                                               r"with `dosepred calibrate`$"):
        load_calibration(tmp_path)
    for version, old in _old_versions(json.loads(RELEASED[0].read_text())).items():
        if version < 4:
            edit(old)
            (tmp_path / "calibration.json").write_text(json.dumps(old))
            cal = load_calibration(tmp_path)
            assert cal.version == version
            lacks = {"criteria": not cal.criteria, "model_sha256": len(cal.model_sha256 or "") != 64,
                     "training_ranges": cal.training_ranges is None or not cal.training_ranges.roi_volume_cc}
            assert set(lacks) == set(REQUIRED_FIELDS) and lacks[field]


def test_a_calibration_lacking_a_required_field_is_never_written(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"w")
    units = _synthetic_units(20, seed=5)
    cal = build_calibration(units, sorted({u.patient for u in units}), "openkbp-clinical",
                            tmp_path / "model.pt", "d", RANGES, splits=5)
    for change in ({"criteria": ()}, {"model_sha256": None},
                   {"training_ranges": dataclasses.replace(RANGES, roi_volume_cc={})}):
        with pytest.raises(CalibrationError, match=f"has '{next(iter(change))}'"):
            write_calibration(tmp_path, dataclasses.replace(cal, **change))
        assert not (tmp_path / "calibration.json").exists()


@pytest.mark.parametrize("path", RELEASED, ids=lambda p: p.parent.name)
def test_the_released_calibrations_hold_every_required_field(path):
    cal = load_calibration(path.parent)
    assert cal.version == CALIBRATION_VERSION and len(cal.model_sha256) == 64 and cal.criteria
    assert cal.training_ranges.roi_volume_cc


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c.update(version=5), r"version 5 is newer than this dosepred reads \(1-4\)"),
    (lambda c: c["families"]["oar_mean"].update(scores={"signed": "x"}),
     r"families\.oar_mean\.scores\.signed is not a list of numbers: recalibrate"),
    (lambda c: c["training_ranges"]["roi_volume_cc"].update(Larynx=[1.0]),
     r"training_ranges\.roi_volume_cc\.Larynx is not \[min, max\]"),
    (lambda c: c.update(families=[]), r"calibration\.json: families is not an object"),
    (lambda c: c.update(quantile_rule="nearest"), r"quantile rule 'nearest' is not one of interpolated"),
    # careless-user edits: a misspelt method (an internal KeyError in QA before), a scale that is null
    # (NaN: a null interval) or negative (a different interval, silently), a tta that is a string
    (lambda c: c["families"]["oar_mean"].update(method="signd"),
     r"families\.oar_mean\.method is not one of the methods it has scores for \(.*signed.*; it is 'signd'\)"),
    (lambda c: c["families"]["oar_mean"]["criterion_stats"]["Larynx Dmean"].update(scale=None),
     r"criterion_stats\.Larynx Dmean\.scale is not a positive number \(it is None\)"),
    (lambda c: c["families"]["oar_mean"]["criterion_stats"]["Larynx Dmean"].update(scale=-2.16),
     r"criterion_stats\.Larynx Dmean\.scale is not a positive number \(it is -2\.16\)"),
    (lambda c: c.update(tta="yes"),
     r"calibration\.json: calibration\.json version \d has 'tta' \"yes\", not a record"),
])
def test_a_malformed_calibration_is_one_clear_error(tmp_path, edit, message):
    from pathlib import Path

    released = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm" / "calibration.json"
    cal = json.loads(released.read_text())
    edit(cal)
    (tmp_path / "calibration.json").write_text(json.dumps(cal))
    with pytest.raises(CalibrationError, match=message):
        load_calibration(tmp_path)


# ------------------------------------------------------------------------------- the DVH band
def test_band_doses_are_d_at_volume(sample_dir):
    from dosepred.dvh import roi_metric
    from dosepred.io import load_patients
    from dosepred.qa.band import BAND_LEVELS, band_doses

    p = next(iter(load_patients(sample_dir, ids=["pt_66"])))
    d0 = band_doses(p, p.dose)
    d1 = band_doses(p, p.dose + 2.0)
    assert set(d0) == set(p.present_rois)
    for roi, vals in d0.items():
        assert np.all(np.diff(vals) <= 1e-9), roi  # D1% >= D2% >= ... >= D99%
        assert np.allclose(np.subtract(d1[roi], vals), 2.0, atol=1e-4)
    k = BAND_LEVELS.index(95.0)
    assert d0["PTV70"][k] == pytest.approx(roi_metric(p, "PTV70", "D95%"), abs=1e-4)


def test_band_offsets_hold_their_coverage_at_every_level():
    """Residuals of D at each level ~ N(mu_l, sd_l) (colder and wider towards small volumes), 40
    calibration patients: at each level the exact coverage Phi((hi - mu) / sd) - Phi((lo - mu) / sd),
    averaged over calibration draws, is nominal."""
    from dosepred.qa.band import BAND_LEVELS, band_offsets, fit_band

    mu = np.linspace(-2.0, 1.0, len(BAND_LEVELS))
    sd = np.linspace(3.0, 1.0, len(BAND_LEVELS))
    rng = np.random.default_rng(21)
    cover = {0.8: [], 0.9: []}
    for _ in range(400):
        rows = {f"p{i}": (mu + sd * rng.normal(size=mu.size)).tolist() for i in range(40)}
        band = fit_band({"LeftParotid": rows})
        for cov, acc in cover.items():
            levels, lo, hi = band_offsets(band, "LeftParotid", cov)
            assert levels.tolist() == list(BAND_LEVELS)
            acc.append([_phi((h - m) / s) - _phi((a - m) / s)
                        for a, h, m, s in zip(lo, hi, mu, sd, strict=True)])
    for cov, acc in cover.items():
        per_level = np.mean(acc, axis=0)
        assert np.all(np.abs(per_level - cov) < 0.012), (cov, per_level)
    band = fit_band({"LeftParotid": {f"p{i}": mu.tolist() for i in range(5)}})
    assert band_offsets(band, "Larynx", 0.9) is None  # no band for an ROI the calibration lacked
    assert band_offsets(band, "LeftParotid", 0.9) is None  # 5 patients: too few at every level
    assert band_offsets(None, "LeftParotid", 0.9) is None


def test_qa_inference_sets_every_option_whatever_the_defaults(monkeypatch):
    """Plan QA predicts in full precision, untranslated, with the default windows and spacing policy,
    flipped as the calibration says: written out in `qa_inference`, so a changed default of
    InferenceOptions (say mixed precision for `dosepred predict`) cannot change what QA predicts."""
    import functools

    import dosepred.qa.calibration as calibration
    from dosepred.inference import InferenceOptions

    other_defaults = functools.partial(InferenceOptions, device="cpu", overlap=0.25, mode="constant",
                                       sw_batch=4, amp=True, tta=False, shifts=((4, 4, 4),),
                                       allow_missing_rois=True, spacing_policy="median")
    monkeypatch.setattr(calibration, "InferenceOptions", other_defaults)
    for tta in (True, False):
        o = calibration.qa_inference(tta)
        assert (o.device, o.overlap, o.mode, o.sw_batch, o.amp, o.tta, o.shifts, o.allow_missing_rois,
                o.spacing_policy) == ("auto", 0.5, "gaussian", 1, False, tta, (), False, "fov")


def test_predictions_must_be_made_as_the_calibration_records(tmp_path):
    """A calibration records whether its predictions were flipped (plan QA then predicts that way):
    flipped by default, as `dosepred predict`. Predictions made otherwise (unflipped for a flipped
    calibration, or flipped for an unflipped one, translated, or not saying) are refused, naming
    the cache and the fix."""
    from dosepred.io.cache import write_cache
    from dosepred.protocol import load_protocol
    from dosepred.qa.calibrating import collect_units
    from dosepred.synth import make_cohort

    cohort = make_cohort(2, seed=4, size=24)
    write_cache(cohort, tmp_path / "plans")
    made = {"flipped": "--tta", "plain": "--no-tta", "shifted": "--tta --tta-shift",
            "plain-shifted": "--no-tta --tta-shift", "unsaid": ""}
    for name, flags in made.items():
        write_cache(cohort, tmp_path / name, source=f"dosepred predict --model M --data D {flags}".strip())
    proto = load_protocol("openkbp-clinical")
    units, ids = collect_units("unused", tmp_path / "plans", proto, tmp_path / "flipped")  # the default
    assert sorted(ids) == sorted(p.id for p in cohort) and units
    units, _ = collect_units("unused", tmp_path / "plans", proto, tmp_path / "plain", tta=False)
    assert units
    with pytest.raises(CalibrationError, match=r"plain: .*made with --no-tta.*with flipping.*--tta`"):
        collect_units("unused", tmp_path / "plans", proto, tmp_path / "plain")
    with pytest.raises(CalibrationError, match=r"made with --tta, .*predicts without flipping.*--no-tta`"):
        collect_units("unused", tmp_path / "plans", proto, tmp_path / "flipped", tta=False)
    for name, tta in (("shifted", True), ("plain-shifted", False)):
        with pytest.raises(CalibrationError, match=r"--tta-shift, but .*no --tta-shift"):
            collect_units("unused", tmp_path / "plans", proto, tmp_path / name, tta=tta)
    with pytest.raises(CalibrationError, match=r"unsaid: these predictions do not record how"):
        collect_units("unused", tmp_path / "plans", proto, tmp_path / "unsaid")


def test_predictions_made_with_other_options_are_refused_naming_the_option(tmp_path):
    """Predictions recorded as data (`predict --format cache` now): refused when made with other
    options than plan QA predicts with (flipping, translated passes, and mixed precision, which a GPU
    prediction used and the command string never told), or by another model than the one calibrated,
    each naming the cache, the option and the fix; accepted when made as QA predicts. A cache of the
    command-string era is still read, with a warning that it cannot tell mixed precision."""
    import hashlib
    import shutil
    import warnings

    from dosepred.inference import TTA_SHIFT, InferenceOptions, PredictionRecord
    from dosepred.io.cache import write_cache
    from dosepred.protocol import load_protocol
    from dosepred.qa.calibrating import collect_units
    from dosepred.synth import make_cohort

    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm", model)
    sha = hashlib.sha256((model / "model.pt").read_bytes()).hexdigest()
    cohort = make_cohort(2, seed=4, size=24)
    write_cache(cohort, tmp_path / "plans")
    made = {"as-qa": InferenceOptions(device="cpu"), "amp": InferenceOptions(device="cuda", amp=True),
            "plain": InferenceOptions(tta=False), "shifted": InferenceOptions(shifts=(TTA_SHIFT,)),
            "windows": InferenceOptions(overlap=0.25)}
    for name, opts in made.items():
        rec = PredictionRecord(opts, str(model), sha, "plans", "0.1.0")
        write_cache(cohort, tmp_path / name, source="dosepred predict: ...",
                    record={"prediction": rec.to_json()})
    other = PredictionRecord(InferenceOptions(), "models/other", "0" * 64, "plans", "0.1.0")
    write_cache(cohort, tmp_path / "other-model", record={"prediction": other.to_json()})
    write_cache(cohort, tmp_path / "old", source="dosepred predict --model M --data D --tta")
    proto = load_protocol("openkbp-clinical")

    def units(name, tta=True):
        return collect_units(model, tmp_path / "plans", proto, tmp_path / name, tta=tta)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert units("as-qa")[0]
        assert units("plain", tta=False)[0]
    with pytest.raises(CalibrationError, match=r"amp: these predictions were made with --tta, mixed "
                                               r"precision \(--amp on a GPU\), but plan QA .* full "
                                               r"precision.*--format cache --tta --no-amp`"):
        units("amp")
    with pytest.raises(CalibrationError, match=r"plain: .*made with --no-tta, but .*predicts with flipping"):
        units("plain")
    with pytest.raises(CalibrationError, match=r"shifted: .*made with --tta, --tta-shift, but .*and without "
                                               r"--tta-shift"):
        units("shifted")
    with pytest.raises(CalibrationError, match=r"windows: .*made with --tta, window overlap 0.25, but .* "
                                               r"window overlap 0.5"):
        units("windows")
    with pytest.raises(CalibrationError, match=r"other-model: these predictions were made by model "
                                               r"models/other \(SHA-256 000000000000...\), not by "
                                               r".*model.pt, the model being calibrated"):
        units("other-model")
    with pytest.warns(UserWarning, match=r"old: made by an earlier dosepred.*mixed precision.*--no-amp"):
        assert units("old")[0]


def test_calibrate_cli_refuses_mixed_precision_predictions_in_one_line(tmp_path):
    """The issue-26 finding: `predict --format cache` on a GPU (mixed precision by default) made
    predictions `calibrate --predictions` took as QA's. Now one line naming the cache and the option,
    exit 2, nothing written."""
    import shutil

    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.inference import InferenceOptions, PredictionRecord
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort

    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm", model)
    (model / "calibration.json").unlink()
    cohort = make_cohort(12, seed=5, size=16)
    write_cache(cohort, tmp_path / "plans")
    rec = PredictionRecord(InferenceOptions(device="cuda:0", amp=True), str(model), None, "plans", "0.1.0")
    write_cache(cohort, tmp_path / "pred", record={"prediction": rec.to_json()})
    r = CliRunner().invoke(app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "plans"),
                                 "--predictions", str(tmp_path / "pred"), "--no-progress"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert text.startswith(f"error: {tmp_path / 'pred'}: these predictions were made with --tta, mixed "
                           "precision (--amp on a GPU)"), text
    assert "--no-amp" in text and not (model / "calibration.json").exists()


def test_calibrate_cli_refuses_patients_without_a_plan_dose_in_one_line(tmp_path):
    """Calibration measures the model's errors against plan doses: patients without one (an import of
    CT and contours only) are one error naming the first, and no calibration.json is written."""
    import shutil

    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort

    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm", model)
    (model / "calibration.json").unlink()
    write_cache([p.with_dose(None) for p in make_cohort(12, seed=5, size=16)], tmp_path / "plans")
    r = CliRunner().invoke(app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "plans"),
                                 "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert " ".join(r.output.split()) == (f"error: patient synth_000 of {tmp_path / 'plans'} (cache) has no "
                                          "dose: this needs each patient's plan dose")
    assert sorted(f.name for f in model.iterdir()) == ["README.md", "config.json", "model.pt"]


def test_calibration_records_its_flipping_and_old_files_mean_unflipped(tmp_path):
    """Version 3 files record ``tta`` (and the method rule); versions 1 and 2, made before, were made
    from unflipped predictions: QA must predict unflipped for them. A version 3 file without the
    record is an error, not a guess."""
    units = _synthetic_units(20, seed=5)
    (tmp_path / "model.pt").write_bytes(b"w")
    ids = sorted({u.patient for u in units})
    for tta in (True, False):
        cal = build_calibration(units, ids, "openkbp-clinical", tmp_path / "model.pt", "d", RANGES, splits=5,
                                tta=tta)
        assert cal.version == CALIBRATION_VERSION and cal.tta is tta and cal.method_rule == "flagging-end"
        written = json.loads(write_calibration(tmp_path, cal).read_text())
        assert written["tta"] is tta and load_calibration(tmp_path).tta is tta
    head = {"format": "dosepred-calibration"}
    v2 = {**head, "version": 2, "quantile_rule": "interpolated", "tta": True}
    assert Calibration.from_json(v2).tta is False  # made before flipping: whatever it says
    assert Calibration.from_json(head).tta is False  # version 1 does not say
    with pytest.raises(CalibrationError, match="version 3 has no 'tta' record.*recalibrate"):
        Calibration.from_json({**head, "version": 3})


def _skewed_units(n_patients, seed, fam, lower_better):
    """One criterion with residuals r = 1 - E, E ~ Exp(1): a long tail below, none above 1."""
    rng = np.random.default_rng(seed)
    roi, metric = ("Larynx", "Dmean") if fam == "oar_mean" else ("PTV70", "D95%")
    return [Unit(f"p{i}", roi, metric, fam, 40.0 + 1.0 - rng.exponential(), 40.0, 1.0, lower_better)
            for i in range(n_patients)]


def test_cross_validation_measures_the_flagging_end_and_choose_by_it():
    """For r = 1 - Exp(1): the 90 % absolute interval is +/- (ln 10 - 1) = 1.303, so it never flags
    above (r <= 1) and flags 10 % below (r < -1.303: E > ln 10); the signed interval flags 5 % at
    each end, above at 1 - (-ln 0.95) = 0.949 and below at -(ln 20 - 1) = -1.996. An OAR (flagged
    above) is better served by signed (nearer flagging end, 5 % false alarms); a target coverage
    criterion (flagged below) cannot use absolute (10 % false alarms where QA promises 5 %). The
    total-width rule (versions 1 and 2) keeps absolute for both (2.61 against 2.95 wide)."""
    q_abs, hi_signed, lo_signed = math.log(10) - 1, 1 + math.log(0.95), 1 - math.log(20)
    units = _skewed_units(1000, 1, "oar_mean", True) + _skewed_units(1000, 1, "target_dose", False)
    cv = cross_validate(units, coverages=(0.8, 0.9), splits=10, cal_fraction=0.5, seed=2)
    oar, tgt = cv["oar_mean"], cv["target_dose"]
    assert oar["absolute"]["0.9"]["false_alarms"] == pytest.approx(0.0, abs=0.3)
    assert tgt["absolute"]["0.9"]["false_alarms"] == pytest.approx(10.0, abs=1.0)
    for fam in (oar, tgt):
        assert fam["signed"]["0.9"]["false_alarms"] == pytest.approx(5.0, abs=1.0)
        assert fam["absolute"]["0.9"]["flag_margin"] == pytest.approx(q_abs, abs=0.1)
    assert oar["signed"]["0.9"]["flag_margin"] == pytest.approx(hi_signed, abs=0.05)
    assert tgt["signed"]["0.9"]["flag_margin"] == pytest.approx(-lo_signed, abs=0.15)
    chosen = choose_methods(cv)
    assert chosen["oar_mean"] != "absolute" and chosen["target_dose"] != "absolute"
    assert choose_methods(cv, rule="total-width") == {"oar_mean": "absolute", "target_dose": "absolute"}


def test_choose_methods_by_the_flagging_end():
    def stats(c8, fa8, m8, c9, fa9, m9):
        return {"0.8": {"coverage": c8, "false_alarms": fa8, "flag_margin": m8, "width": 2 * m8},
                "0.9": {"coverage": c9, "false_alarms": fa9, "flag_margin": m9, "width": 2 * m9}}

    ok = stats(80, 10, 2.0, 90, 5, 3.0)
    cv = {
        # signed's end is 10 % nearer: chosen; normalised nearer still but over its false-alarm share
        "a": {"absolute": stats(80, 6, 2.5, 90, 2.5, 3.0), "signed": stats(80, 10.5, 2.0, 90, 5.5, 2.5),
              "normalised": stats(80, 12, 1.5, 90, 7, 2.0)},
        # within 5 % of absolute's: absolute stays
        "b": {"absolute": stats(80, 8, 2.0, 90, 4, 3.0), "signed": ok,
              "normalised": stats(80, 10, 2, 90, 5, 2.9)},
        # absolute flags more than its share (12 % at 80 %): the nearest eligible end, even if farther
        "c": {"absolute": stats(80, 12, 1.0, 90, 5, 1.5), "signed": stats(80, 10, 2.2, 90, 5, 3.2),
              "normalised": ok},
        # signed over-covers by more than 3 points: not eligible
        "d": {"absolute": stats(80, 6, 2.5, 90, 2.5, 3.0), "signed": stats(84, 8, 1.0, 94, 4, 1.0)},
        # none eligible (all under-cover): the total-width rule decides
        "e": {"absolute": stats(70, 6, 2.5, 80, 2.5, 3.0), "signed": stats(70, 10, 1.0, 80, 5, 1.0)},
        # none eligible, all cover, all flag too often (the round-15 MAE+CDM's V110%: ties at the
        # tail): absolute flags 9.9 % at 90 % and is the narrowest; the least excess (12.3 points
        # summed for absolute, 6.4 signed, 6.1 normalised) decides, signed and normalised are
        # near-equal, and signed's flagging end is the nearer
        "f": {"absolute": stats(81.7, 17.4, 0.28, 90.1, 9.9, 1.21),
              "signed": stats(81.7, 16.2, 0.65, 91.8, 5.2, 3.72),
              "normalised": stats(81.8, 16.1, 0.66, 92.7, 4.35, 6.03)},
        # ... and a clearly smaller excess wins even with a farther flagging end
        "g": {"absolute": stats(80, 16, 1.0, 90, 9, 1.5), "signed": stats(80, 12, 2.0, 90, 6, 3.0)},
        # ... but not one that under-covers (76 % at 80 %), however few its false alarms
        "h": {"absolute": stats(80, 14, 1.0, 90, 8, 1.5), "signed": stats(76, 11, 0.8, 86, 5, 1.2)},
        # ... while one that over-covers by more than 3 points (not eligible) and flags no more than
        # its share is the least excess (0)
        "i": {"absolute": stats(80, 20, 1.0, 90, 12, 1.5), "signed": stats(84, 8, 2.0, 94, 3, 3.0)},
        # near-equal excess (9 and 8.5 points) and signed's end only 2.5 % nearer: absolute stays
        "j": {"absolute": stats(80, 16, 1.0, 90, 8, 2.0), "signed": stats(80, 15.5, 1.0, 90, 8, 1.925)},
        # a level under its share counts 0, not minus: absolute's 4 % at 80 % does not offset its
        # 10.5 % at 90 % (excess 5.5 against signed's 3.5)
        "k": {"absolute": stats(80, 4, 2.0, 90, 10.5, 1.0), "signed": stats(80, 13, 1.5, 90, 5.5, 1.5)},
        # the excess is summed over the levels (absolute 4 + 5 = 9, signed 6.5 + 0), not its largest
        "l": {"absolute": stats(80, 14, 1.0, 90, 10, 1.0), "signed": stats(80, 16.5, 1.0, 90, 5, 1.0)},
    }
    assert choose_methods(cv) == {"a": "signed", "b": "absolute", "c": "normalised", "d": "absolute",
                                  "e": "absolute", "f": "signed", "g": "signed", "h": "absolute",
                                  "i": "signed", "j": "absolute", "k": "signed", "l": "signed"}
    with pytest.raises(ValueError, match="method rule"):
        choose_methods(cv, rule="nope")


# ------------------------------------------------------------------------------------- centred
def _biased_units(n_patients: int, seed: int) -> list[Unit]:
    """OAR mean doses of four ROIs whose residuals are biased per ROI (+2, -2, +1, 0 Gy) around one
    spread (sd 1 Gy), as the released model's parotids are (docs/qa.md, "Centring each ROI"); one ROI
    seen in two patients only."""
    rng = np.random.default_rng(seed)
    units = []
    for i in range(n_patients):
        for roi, bias in (("RightParotid", 2.0), ("LeftParotid", -2.0), ("Larynx", 1.0), ("Esophagus", 0.0)):
            yhat = rng.uniform(10, 40)
            units.append(Unit(f"p{i}", roi, "Dmean", "oar_mean", yhat + bias + rng.normal(), yhat, 1.0))
        if i < 2:
            units.append(Unit(f"p{i}", "Brainstem", "Dmean", "oar_mean", 15.0 + 5 * i, 10.0, 1.0))
    return units


def test_centred_scores_are_cross_fitted_per_criterion_medians():
    """Each calibration unit's centred score is its residual less the median of its criterion's
    residuals over the *other* patients (numpy, by hand); a criterion with fewer than
    MIN_CENTRE_UNITS units keeps centre 0; the centres a new patient gets are the medians over all."""
    units = _biased_units(9, seed=1)
    fam = fit_family(units)
    want = []
    for u in units:
        others = [v.residual for v in units if v.criterion == u.criterion and v.patient != u.patient]
        want.append(u.residual - (float(np.median(others)) if len(others) >= MIN_CENTRE_UNITS else 0.0))
    assert np.allclose(fam.scores["centred"], np.sort(want))
    for crit in ("RightParotid Dmean", "LeftParotid Dmean", "Larynx Dmean", "Esophagus Dmean"):
        r = [u.residual for u in units if u.criterion == crit]
        assert fam.criterion_stats[crit].centre == pytest.approx(float(np.median(r)))
    assert fam.criterion_stats["Brainstem Dmean"].centre == 0.0  # 2 units: not centred
    assert fam.criterion_stats["*"].centre == 0.0
    assert len(fam.tail_scores["centred"].upper) == len(units)


def test_centred_interval_by_hand():
    """The centred interval of a prediction: prediction + its criterion's median + the signed offsets
    of the centred scores (conservative rule: the ceil((n + 1)(1 - a/2))-th smallest, by hand)."""
    units = _biased_units(30, seed=2)
    fam = fit_family(units)
    z = np.sort(fam.scores["centred"])
    k = math.ceil((z.size + 1) * 0.95)
    hi, lo = z[k - 1], -np.sort(-z)[k - 1]
    med = float(np.median([u.residual for u in units if u.criterion == "LeftParotid Dmean"]))
    low, high = interval(25.0, "LeftParotid Dmean", fam, "centred", 0.9, "conservative")
    assert low == pytest.approx(25.0 + med + lo) and high == pytest.approx(25.0 + med + hi)
    # a criterion the calibration did not see is not moved
    low, high = interval(25.0, "SpinalCord Dmean", fam, "centred", 0.9, "conservative")
    assert low == pytest.approx(25.0 + lo) and high == pytest.approx(25.0 + hi)


def test_centred_holds_coverage_and_narrows_per_roi_biased_families():
    """On residuals biased per ROI, centred covers its nominal level on held-out patients (within the
    tolerance choose_methods uses), misses about its one-sided share at the flagging end, and its
    flagging end is nearer the prediction than absolute's or signed's: choose_methods picks it."""
    units = _biased_units(40, seed=3)
    cv = cross_validate(units, coverages=(0.8, 0.9), splits=60, cal_fraction=0.6, seed=4)
    got = cv["oar_mean"]
    for cov in ("0.8", "0.9"):
        c = got["centred"][cov]
        assert abs(c["coverage"] - float(cov) * 100) <= 3.0, (cov, c)
        assert c["false_alarms"] <= (1 - float(cov)) * 50 + 1.5, (cov, c)
        assert c["width"] < 0.7 * got["signed"][cov]["width"], (cov, c, got["signed"][cov])
        assert c["flag_margin"] < got["absolute"][cov]["flag_margin"]
    assert choose_methods(cv)["oar_mean"] in ("centred", "normalised")
    # and checked by counting on fresh patients (over five calibrations: one alone covers 90 % +- 2.3)
    test = [u for u in _biased_units(300, seed=5) if u.roi != "Brainstem"]
    hits = [lo <= u.plan <= hi for seed in range(10, 15) for fam in [fit_family(_biased_units(40, seed))]
            for u in test for lo, hi in [interval(u.predicted, u.criterion, fam, "centred", 0.9)]]
    assert 0.87 <= np.mean(hits) <= 0.94, np.mean(hits)


def test_centres_are_written_read_and_required_where_centred_scores_are(tmp_path):
    """calibration.json (version 4) keeps each criterion's centre exactly; a family with centred scores
    whose criterion has no centre, or a centre that is not finite, is one clear error (its intervals
    would silently not be centred)."""
    units = _biased_units(12, seed=6)
    (tmp_path / "model.pt").write_bytes(b"w")
    cal = build_calibration(units, sorted({u.patient for u in units}), "openkbp-clinical",
                            tmp_path / "model.pt", "d", RANGES, splits=5, tta=True)
    path = write_calibration(tmp_path, cal)
    back = load_calibration(tmp_path).families["oar_mean"]
    assert back.criterion_stats == cal.families["oar_mean"].criterion_stats
    assert back.criterion_stats["RightParotid Dmean"].centre == pytest.approx(
        float(np.median([u.residual for u in units if u.roi == "RightParotid"])))
    obj = json.loads(path.read_text())
    for edit, message in (
            (lambda s: s.pop("centre"), r"criterion_stats\.Larynx Dmean\.centre is not a number: the family "
                                        r"has centred scores"),
            (lambda s: s.update(centre="inf"),
             r"criterion_stats\.Larynx Dmean\.centre is not a finite number")):
        bad = json.loads(json.dumps(obj))
        edit(bad["families"]["oar_mean"]["criterion_stats"]["Larynx Dmean"])
        (tmp_path / "calibration.json").write_text(json.dumps(bad))
        with pytest.raises(CalibrationError, match=message):
            load_calibration(tmp_path)


def test_an_exact_tie_goes_to_the_method_listed_first():
    """Where every centre is 0 (one criterion whose median residual is 0: PTV70 V110%, mostly 0 % in
    plan and prediction), centred's scores are signed's; the choice must not fall to it by its name."""
    units = [Unit(f"p{i}", "PTV70", "V110%", "v_metric", float(v), 0.0, 0.0)
             for i, v in enumerate([0.0] * 20 + list(np.linspace(0.5, 6.0, 12)))]
    fam = fit_family(units)
    assert fam.criterion_stats["PTV70 V110%"].centre == 0.0
    assert fam.scores["centred"] == fam.scores["signed"]
    same = {"0.8": {"coverage": 80.0, "width": 2.0, "false_alarms": 10.0, "flag_margin": 1.0},
            "0.9": {"coverage": 90.0, "width": 3.0, "false_alarms": 5.0, "flag_margin": 1.5}}
    far = {c: {**s, "flag_margin": 3 * s["flag_margin"], "width": 3 * s["width"]} for c, s in same.items()}
    cv = {"v_metric": {"absolute": far, "signed": same, "normalised": far, "centred": same}}
    assert choose_methods(cv) == {"v_metric": "signed"}
    assert choose_methods(cv, rule="total-width") == {"v_metric": "signed"}


def test_a_criterion_is_centred_only_where_every_fit_without_one_patient_can_centre_it():
    """Three units (one per patient) leave two without any one patient: neither the stored centre nor
    the cross-fitted scores centre it (else its bias would count in the spread and in the shift);
    four units leave three: both do."""
    rng = np.random.default_rng(7)
    units = [Unit(f"p{i}", "Larynx", "Dmean", "oar_mean", 30.0 + rng.normal(), 30.0, 1.0) for i in range(12)]
    units += [Unit(f"p{i}", "Brainstem", "Dmean", "oar_mean", 15.0 + i, 10.0, 1.0) for i in range(3)]
    units += [Unit(f"p{i}", "OpticChiasm", "Dmean", "oar_mean", 8.0 + i, 5.0, 1.0) for i in range(4)]
    fam = fit_family(units)
    assert fam.criterion_stats["Brainstem Dmean"].centre == 0.0
    assert fam.criterion_stats["OpticChiasm Dmean"].centre == pytest.approx(4.5)  # residuals 3, 4, 5, 6
    brainstem = [u.residual for u in units if u.roi == "Brainstem"]  # 5, 6, 7: scores uncentred
    chiasm = [u.residual - np.median([v.residual for v in units if v.roi == "OpticChiasm" and v is not u])
              for u in units if u.roi == "OpticChiasm"]  # -2, -2/3, 2/3, 2 of 3, 4, 5, 6
    for x in [*brainstem, *chiasm]:
        assert np.isclose(fam.scores["centred"], x).any(), x
    low, high = interval(10.0, "Brainstem Dmean", fam, "centred", 0.8)
    lo, hi = family_offsets(fam, "centred", 0.8)
    assert (low, high) == pytest.approx((10.0 + lo, 10.0 + hi))


def test_centred_v_metrics_keep_the_bounds_out_of_their_tails_and_clip():
    """V-metrics with plans at 0 % (no hot spot): a unit at 0 % is no score of the upper tail of
    centred either, and an interval centred below 0 % is clipped to the metric's range."""
    units = []
    for i in range(12):
        units.append(Unit(f"p{i}", "PTV70", "V110%", "v_metric", 0.0 if i % 2 else 2.0 + i / 4, 1.0, 0.0))
        units.append(Unit(f"p{i}", "PTV63", "V105%", "v_metric", 100.0 if i < 3 else 90.0 - i, 95.0, 0.0))
    fam = fit_family(units)
    at_zero = sum(u.plan <= 0 for u in units)
    at_top = sum(u.plan >= 100 for u in units)
    assert len(fam.tail_scores["centred"].upper) == len(units) - at_zero
    assert len(fam.tail_scores["centred"].lower) == len(units) - at_top
    low, high = interval(0.0, "PTV70 V110%", fam, "centred", 0.8)
    assert 0.0 <= low <= high
    low, high = interval(99.0, "PTV63 V105%", fam, "centred", 0.8)
    assert low <= high <= 100.0


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c: c["families"]["oar_mean"]["criterion_stats"]["Larynx Dmean"].update(centre=None),
     r"criterion_stats\.Larynx Dmean\.centre is not a finite number \(it is None\)"),
    (lambda c: c["families"]["oar_mean"]["criterion_stats"]["*"].update(centre=1.5),
     r"criterion_stats\.\*\.centre is not 0 \(it is 1\.5\)"),
    (lambda c: c.update(version=3),
     r"oar_mean\.criterion_stats\.\*\.centre is not allowed in version 3 \(centres came with version 4\)"),
    (lambda c: [s.pop("centre") for s in c["families"]["oar_mean"]["criterion_stats"].values()] and c.update(
        version=3), r"oar_mean\.scores\.centred is not allowed in version 3 \(the centred method came with"),
])
def test_centres_only_as_version_4_writes_them(tmp_path, edit, message):
    units = _biased_units(12, seed=8)
    (tmp_path / "model.pt").write_bytes(b"w")
    cal = build_calibration(units, sorted({u.patient for u in units}), "openkbp-clinical",
                            tmp_path / "model.pt", "d", RANGES, splits=5, tta=True)
    obj = json.loads(write_calibration(tmp_path, cal).read_text())
    edit(obj)
    (tmp_path / "calibration.json").write_text(json.dumps(obj))
    with pytest.raises(CalibrationError, match=message):
        load_calibration(tmp_path)


def test_calibrate_cli_names_its_own_remedy_for_a_patient_lacking_an_roi(tmp_path):
    """A plan without the PTV70 every training patient had: calibrate said '--allow-missing-rois predicts
    it all the same', a flag calibrate has not (it predicts as QA does, which checks no such plan). Now
    one line naming the patient and what calibration can do instead; nothing written."""
    import shutil

    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io.cache import write_cache
    from dosepred.patient import Patient
    from dosepred.synth import make_cohort

    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm", model)
    (model / "calibration.json").unlink()
    cohort = make_cohort(12, seed=5, size=16)
    p = cohort[0]
    no70 = Patient.from_masks(p.id, p.ct, {n: p.mask(n) for n in p.present_rois if n != "PTV70"}, p.roi_set,
                              p.spacing, p.possible_dose_mask, p.dose, {}, p.geometry)
    write_cache([no70, *cohort[1:]], tmp_path / "plans")
    r = CliRunner().invoke(app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "plans"),
                                 "--no-progress"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"error: patient {p.id} lacks PTV70, which every patient the model was trained on" in text, text
    assert text.count("error:") == 1  # (and the high dose left without its target is warned of)
    assert "--allow-missing-rois" not in text and "leave the patient out of the calibration data" in text
    assert sorted(f.name for f in model.iterdir()) == ["README.md", "config.json", "model.pt"]


def test_calibrate_warns_of_the_patients_the_model_was_trained_on(tmp_path):
    """`calibrate --data` the model's own training cache (the same ids: the space record's fingerprint)
    made intervals from its training errors, smaller than on new patients (the released MAE+CDM: DVH
    1.33 on its training patients, 1.60 on validation), without a word: QA's false alarms. Now a
    warning names it (not an error: other patients may carry the same ids); other ids: no warning."""
    import warnings

    from dosepred.io.cache import write_cache
    from dosepred.models.checkpoint import resolve_model_path
    from dosepred.qa.calibrating import check_before_predicting
    from dosepred.synth import make_cohort
    from tiny_models import tiny_run

    write_cache(make_cohort(12, seed=3, size=20), tmp_path / "train")
    run = tiny_run(tmp_path / "train", tmp_path / "run")
    ckpt = resolve_model_path(run)
    with pytest.warns(UserWarning, match=r"its 12 patients have the ids of the ones model .* was trained on: "
                                         r"if they are those patients, the intervals .* too narrow"):
        check_before_predicting(ckpt, tmp_path / "train", model=run)
    held_out = [dataclasses.replace(p, id=f"held_{i}")
                for i, p in enumerate(make_cohort(12, seed=4, size=20))]
    write_cache(held_out, tmp_path / "other")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_before_predicting(ckpt, tmp_path / "other", model=run)
    # a protocol prescribing the model's PTV70 otherwise (66 Gy) is refused before any prediction, as
    # plan QA would refuse it with this calibration; the model's own prescription passes
    from importlib import resources

    from dosepred.protocol import parse_protocol
    from dosepred.qa.calibration import CalibrationError

    proto = json.loads(resources.files("dosepred.protocol").joinpath("builtin/openkbp-clinical.json")
                       .read_text())
    proto["prescriptions"]["PTV70"] = 66.0
    with pytest.raises(CalibrationError, match=r"prescribes PTV70 at 66 Gy where the model's is 70 Gy"):
        check_before_predicting(ckpt, tmp_path / "other", model=run, protocol=parse_protocol(proto))
    proto["prescriptions"]["PTV70"] = 70.0
    check_before_predicting(ckpt, tmp_path / "other", model=run, protocol=parse_protocol(proto))


def test_few_patients_choose_a_method_with_a_bounded_interval_at_qa_coverage(tmp_path):
    """12 calibration patients (the fewest `calibrate` takes, docs/finetune.md's walk) and a family of
    one unit per patient (PTV70 V110%), most plans without a hot spot: a two-sided 90 % interval of a
    method with a tail per side (signed, normalised, centred) needs ceil((n + 1) * 0.95) <= n, so
    n >= 19 units, which neither the 10 calibrating units of a cross-validation split nor the 12 of
    the file have; absolute needs ceil((n + 1) * 0.9) <= n, n >= 9. The cross-validation measured
    the unbounded intervals (clipped to 0-100 %) as covering everything with no false alarm and
    chose signed, and `qa` at its default coverage then refused the calibration ("coverage 0.9 needs
    more calibration units than the 12 of family v_metric")."""
    (tmp_path / "model.pt").write_bytes(b"weights")
    plans = [0.0] * 11 + [2.54]
    units = [Unit(f"p{i:02d}", "PTV70", "V110%", "v_metric", v, 0.0, 1.0) for i, v in enumerate(plans)]
    units += [Unit(f"p{i:02d}", "SpinalCord", "D0.1cc", "oar_nearmax", 40.0 + (i % 5) - 2, 40.0, 1.0)
              for i in range(12)]
    ids = sorted({u.patient for u in units})
    cal = build_calibration(units, ids, "openkbp-clinical", tmp_path / "model.pt", "d", RANGES, splits=20)
    fam = cal.families["v_metric"]
    assert fam.method == "absolute"
    for cov in (0.8, 0.9):  # what QA checks before using a family (QAChecker._check_protocol)
        lo, hi = family_offsets(fam, fam.method, cov)
        assert math.isfinite(lo) and math.isfinite(hi), cov
    # the measure that ruled the others out is recorded with the cross-validation
    stats = cal.cross_validation.results["v_metric"]
    assert stats["signed"]["0.9"]["unbounded"] == 100.0 and stats["absolute"]["0.9"]["unbounded"] == 0.0


def test_calibrate_warns_when_its_patients_overlap_the_training_data(tmp_path):
    """`calibrate --data clinic-cache --train-data train-cache` (the whole cache given for its calib
    split) calibrated partly on the model's training patients without a word: the model's fingerprint
    warns only when the two sets are equal. Now the ids shared with --train-data are named."""
    from dosepred.io.cache import write_cache
    from dosepred.qa.calibrating import calibrate
    from dosepred.synth import make_patient

    write_cache([make_patient(i, size=8, pid=f"pt_{i}") for i in range(1, 6)], tmp_path / "all")
    write_cache([make_patient(i, size=8, pid=f"pt_{i}") for i in range(1, 3)], tmp_path / "train")
    with pytest.warns(UserWarning, match=r"all: 2 of its patients have the ids of training patients of "
                                         r"\S*train \(pt_1, pt_2\)"):
        with pytest.raises(FileNotFoundError, match="no-model"):  # no model there: after the warning
            calibrate(tmp_path / "no-model", tmp_path / "all", "openkbp", train_data=tmp_path / "train")


def test_calibrate_cli_refuses_a_cache_of_predicted_doses_as_data(tmp_path):
    """`calibrate --data PRED` (a prediction cache where the plans belong, --data and --predictions
    swapped) measured the model's errors against its own doses: residuals near 0, intervals of almost
    no width, and QA would flag nearly every plan; exit 0. Now one line naming the folder, exit 2, no
    calibration.json."""
    import shutil

    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.inference import InferenceOptions, PredictionRecord
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort

    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm", model)
    (model / "calibration.json").unlink()
    rec = PredictionRecord(InferenceOptions(), str(model), None, "plans", "0.1.0")
    write_cache(make_cohort(12, seed=5, size=16), tmp_path / "pred", record={"prediction": rec.to_json()})
    r = CliRunner().invoke(app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "pred"),
                                 "--no-progress"])
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert text.startswith(f"error: {tmp_path / 'pred'}: its doses are predictions written by `dosepred "
                           "predict`"), text
    assert sorted(f.name for f in model.iterdir()) == ["README.md", "config.json", "model.pt"]


def test_calibrate_refuses_a_model_file_replaced_while_it_was_calibrated(tmp_path, monkeypatch):
    """`calibrate --model RUN` while RUN still trains: its best.pt is replaced between the predictions
    and the end. The calibration recorded the SHA-256 of the new file, so `dosepred qa` took intervals
    made of the old model's errors for the new model without a word. Now it is an error naming the
    file, and no calibration.json is written."""
    import shutil

    from dosepred.io.cache import write_cache
    from dosepred.qa import calibrating
    from dosepred.synth import make_cohort

    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "models" / "openkbp-mae" / "model.pt", run / "best.pt")
    write_cache(make_cohort(12, seed=5, size=16), tmp_path / "plans")
    newer = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm" / "model.pt"

    def collect(*args, **kwargs):  # the training saves a better epoch while the patients are predicted
        shutil.copy(newer, run / "best.pt")
        units = _synthetic_units(12, seed=1)
        return units, sorted({u.patient for u in units})

    monkeypatch.setattr(calibrating, "collect_units", collect)
    with pytest.raises(CalibrationError, match=r"run/checkpoints/best\.pt changed while"):
        calibrating.calibrate(tmp_path / "run", tmp_path / "plans", "openkbp-clinical", splits=5)
    assert not (run / "calibration.json").exists()


def test_a_calibration_names_no_folder_of_the_machine_that_made_it(tmp_path, monkeypatch):
    """calibration.json lies in the model folder, which is shared: it recorded the calibration data and
    the training data by their full paths (the released models: "/work/exp/cache/val", a clinic's
    "/home/alice/clinic/..."), which say who made it and where patients' data lie, and mean nothing on
    another machine. They are now recorded by name (the patients are its ids and ranges)."""
    import shutil

    from dosepred.io.cache import write_cache
    from dosepred.qa import calibrating
    from dosepred.synth import make_cohort

    home = tmp_path / "home" / "alice"
    run = home / "run" / "checkpoints"
    run.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "models" / "openkbp-mae" / "model.pt", run / "best.pt")
    write_cache(make_cohort(12, seed=5, size=16), home / "plans")
    write_cache([dataclasses.replace(p, id=f"t{i}") for i, p in enumerate(make_cohort(3, seed=6, size=16))],
                home / "train")
    units = _synthetic_units(12, seed=1)
    ids = sorted({u.patient for u in units})
    monkeypatch.setattr(calibrating, "collect_units", lambda *a, **k: (units, ids))
    path, _ = calibrating.calibrate(home / "run", home / "plans", "openkbp-clinical", splits=5,
                                    train_data=home / "train")
    text = path.read_text()
    assert "alice" not in text and str(tmp_path) not in text
    written = json.loads(text)
    assert (written["data"], written["training_ranges"]["source"]) == ("plans", "train")
    assert load_calibration(run).data == "plans"


def test_calibration_warns_of_a_plan_whose_dose_is_missing_in_part_of_an_roi(tmp_path):
    """A clinic's plan whose RTDOSE grid ends inside an ROI (0 Gy beyond it, as DICOM import reads it)
    was calibrated on without a word: the dose not there counted as the model's error, widening and
    shifting every interval QA would use. Now calibration warns, naming the patient, the ROI and how many
    of its voxels have 0 Gy (numpy on the hand-cut dose); the plan as delivered gets no warning."""
    import warnings

    from dosepred.io.cache import write_cache
    from dosepred.protocol import load_protocol
    from dosepred.qa.calibrating import collect_units
    from dosepred.synth import make_cohort

    cohort = make_cohort(2, seed=4, size=24)
    cut, whole = cohort
    z = np.indices(cut.shape)[2]
    dose = np.asarray(cut.dose, dtype=np.float32).copy()
    dose[z <= 5] = 0.0  # the grid ends at slice 6: the brainstem (slices 2-5) lies beyond it
    m = cut.mask("Brainstem")
    assert (np.asarray(cut.dose)[m & (z <= 5)] >= 5).all()  # the plan as delivered has dose there
    n0 = int((m & cut.possible_dose_mask & (z <= 5)).sum())
    write_cache([cut.with_dose(dose), whole], tmp_path / "plans")
    # predictions: the plans as delivered (a model that is right), made as plan QA predicts
    write_cache(cohort, tmp_path / "pred", source="dosepred predict --model M --data D --tta")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        collect_units("unused", tmp_path / "plans", load_protocol("openkbp-clinical"), tmp_path / "pred")
    gaps = [str(w.message) for w in said if "plan dose missing" in str(w.message)]
    assert len(gaps) == 1 and gaps[0].startswith(f"patient {cut.id} of "), gaps
    assert f"Brainstem: {n0} of its {int(m.sum())} voxels" in gaps[0], gaps[0]


def test_normalised_scores_and_cross_validation_do_not_depend_on_the_order_of_the_patients():
    # the validation split's PTV70 V110% units: most plans and predictions without a hot spot
    # (residual exactly 0: one normalised score in exact arithmetic, a point mass the tie rule of
    # signed_offsets reads); numpy's sums split it by a few ulps, differently in every order, and
    # calibrate's cross-validated V-metric coverage and infinite intervals moved with the patients' order
    rng = np.random.default_rng(7)
    units = [Unit(f"p{i}", "PTV70", "V110%", "v_metric", 0.0, 0.0, 0.0) for i in range(27)]
    units += [Unit(f"q{i}", "PTV70", "V110%", "v_metric", float(rng.uniform(0.3, 6)),
                   float(rng.choice([0.0, rng.uniform(0, 0.5)])), 0.0) for i in range(6)]
    zero = [k for k, u in enumerate(units) if u.residual == 0]
    orders = [units, units[::-1], [units[k] for k in np.random.default_rng(3).permutation(len(units))]]
    fams = [fit_family(us, "v_metric") for us in orders]
    held = fams[0].scores["normalised"]
    assert len({held[k] for k in range(len(zero))}) == 1  # sorted: the 27 at residual 0 come first
    assert all(f.scores == fams[0].scores and f.criterion_stats == fams[0].criterion_stats for f in fams)
    cvs = [cross_validate(us, splits=300, cal_fraction=0.8, methods=("normalised",))["v_metric"]["normalised"]
           for us in orders]
    for cv in cvs[1:]:  # the same splits; the means over each split's units still sum in their order
        assert {c: pytest.approx(v, rel=1e-12) for c, v in cv.items()} == cvs[0]
