"""A hand-edited or corrupted calibration.json is one clear error naming the file and the field, never
intervals that moved silently; the options of ``calibrate`` and ``qa`` that would make a wrong answer
are refused before any work."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dosepred.errors import InputError
from dosepred.qa.calibrating import build_calibration
from dosepred.qa.calibration import CalibrationError, load_calibration
from dosepred.qa.conformal import CriterionStats, Family
from dosepred.qa.crossval import cross_validate
from dosepred.qa.families import Unit

MODELS = Path(__file__).resolve().parents[1] / "models"
RELEASED = MODELS / "openkbp-mae-cdm" / "calibration.json"


def _edited(tmp_path, edit, text=None):
    cal = json.loads(RELEASED.read_text())
    edit(cal)
    (tmp_path / "calibration.json").write_text(text if text is not None else json.dumps(cal))
    return tmp_path


def _fam(c, name="oar_mean"):
    return c["families"][name]


def _set(lst, i, v):
    lst[i] = v


@pytest.mark.parametrize(("edit", "message"), [
    # a NaN score (null in JSON) moved the interval silently
    (lambda c: _set(_fam(c)["scores"]["absolute"], 3, None),
     r"families\.oar_mean\.scores\.absolute is not a list of finite numbers \(entry 3 is null\)"),
    # no score is ever infinite ("inf" belongs to the cross-validation results only)
    (lambda c: _set(_fam(c)["scores"]["signed"], 92, "inf"),
     r"families\.oar_mean\.scores\.signed is not a list of finite numbers \(entry 92 is \"inf\"\)"),
    (lambda c: _set(_fam(c)["tail_scores"]["signed"]["lower"], 0, None),
     r"families\.oar_mean\.tail_scores\.signed\.lower is not a list of finite numbers \(entry 0 is null\)"),
    # absolute residuals are >= 0
    (lambda c: _fam(c)["scores"].update(absolute=[-1.0] * _fam(c)["n"]),
     r"families\.oar_mean\.scores\.absolute is not a list of numbers >= 0, absolute residuals "
     r"\(entry 0 is -1\.0\)"),
    # intervals are read off the sorted scores by position
    (lambda c: _fam(c)["scores"]["absolute"].reverse(),
     r"families\.oar_mean\.scores\.absolute is not sorted ascending \(entry 1, .* is below entry 0"),
    (lambda c: _fam(c)["tail_scores"]["normalised"]["upper"].reverse(),
     r"families\.oar_mean\.tail_scores\.normalised\.upper is not sorted ascending"),
    # n: a count, and the number of every method's scores
    (lambda c: _fam(c).update(n=-5), r"families\.oar_mean\.n is not a number of calibration units "
                                     r"\(>= 0; it is -5\)"),
    (lambda c: _fam(c).update(n=100),
     r"families\.oar_mean\.scores\.\w+ is not a list of n = 100 scores, one per calibration unit "
     r"\(it has 93\)"),
    (lambda c: _fam(c)["scores"].update(signed=[]),
     r"families\.oar_mean\.scores\.signed is not a list of n = 93 scores, one per calibration unit "
     r"\(it has 0\)"),
    (lambda c: _fam(c)["scores"]["normalised"].pop(),
     r"families\.oar_mean\.scores\.normalised is not a list of n = 93 scores.*\(it has 92\)"),
    # tails: some of their method's scores
    (lambda c: _fam(c)["tail_scores"]["signed"]["upper"].append(1e6),
     r"families\.oar_mean\.tail_scores\.signed\.upper is not at most the 93 scores of its method "
     r"\(it has 94\)"),
    (lambda c: _set(_fam(c)["tail_scores"]["signed"]["upper"], 92, 1e6),
     r"families\.oar_mean\.tail_scores\.signed\.upper is not a selection of its method's scores "
     r"\(1000000\.0 is not one of them\)"),
    (lambda c: _fam(c)["tail_scores"].update(absolut={"lower": [], "upper": []}),
     r"families\.oar_mean\.tail_scores\.absolut is not the tails of a method it has scores for"),
    # the per-criterion statistics of normalised intervals
    (lambda c: _fam(c)["criterion_stats"]["Larynx Dmean"].update(bias=None),
     r"criterion_stats\.Larynx Dmean\.bias is not a finite number \(it is None\)"),
    (lambda c: _fam(c)["criterion_stats"]["Larynx Dmean"].update(n=-1),
     r"criterion_stats\.Larynx Dmean\.n is not a number of calibration units \(>= 0; it is -1\)"),
    # the family's name decides its clipping (V-metrics 0-100 %)
    (lambda c: _fam(c).update(family="v_metric"),
     r"families\.oar_mean\.family is not the family's name 'oar_mean' \(it is 'v_metric'\)"),
])
def test_a_corrupted_family_is_one_clear_error(tmp_path, edit, message):
    d = _edited(tmp_path, edit)
    with pytest.raises(CalibrationError, match=message) as ei:
        load_calibration(d)
    assert str(ei.value).startswith(f"{d / 'calibration.json'}: families.")
    assert str(ei.value).endswith("recalibrate with `dosepred calibrate`")


def test_a_key_repeated_in_calibration_json_is_refused(tmp_path):
    text = RELEASED.read_text()
    assert text.count('"n": 93,') == 1
    d = _edited(tmp_path, lambda c: None, text.replace('"n": 93,', '"n": 93, "n": 5,'))
    with pytest.raises(CalibrationError, match=r"calibration\.json: key 'n' appears twice in one object"):
        load_calibration(d)


def test_every_released_calibration_still_loads():
    files = sorted(MODELS.glob("*/calibration.json"))
    assert files
    for f in files:
        cal = load_calibration(f.parent)
        assert all(len(s) == fam.n for fam in cal.families.values() for s in fam.scores.values())


def test_too_few_scores_names_the_scores_it_has_not_the_stored_n():
    """QA's 'needs more calibration units' error counts the scores the interval is read off."""
    from types import SimpleNamespace

    from dosepred.qa.check import QAChecker

    fam = Family("oar_mean", 93, {"*": CriterionStats(0.0, 1.0, 0)}, {"absolute": (0.1, 0.2, 0.3)},
                 None, "absolute", ("Larynx Dmean",))
    chk = object.__new__(QAChecker)
    chk.calibration = SimpleNamespace(families={"oar_mean": fam}, protocol="p")
    chk.methods = {"oar_mean": "absolute"}
    chk.bound = SimpleNamespace(criteria=[SimpleNamespace(metric="Dmean", kind="oar",
                                                          criterion=SimpleNamespace(name="Larynx Dmean"))])
    chk.coverage, chk.rule, chk.warnings = 0.9, "interpolated", []
    with pytest.raises(CalibrationError, match=r"coverage 0\.9 needs more calibration units than family "
                                               r"oar_mean \(3 units\) has: ask for a lower --coverage "
                                               r"\(at most 0\.75\)"):
        chk._check_protocol()


def test_too_few_units_names_every_family_that_falls_short():
    """Only the first family short of units was named: lowering --coverage for it met the next refusal."""
    from types import SimpleNamespace

    from dosepred.qa.check import QAChecker

    def fam(name, n):
        scores = {"absolute": tuple(0.1 * k for k in range(n))}
        return Family(name, n, {"*": CriterionStats(0.0, 1.0, 0)}, scores, None, "absolute", ())
    chk = object.__new__(QAChecker)
    fams = {"oar_mean": fam("oar_mean", 3), "oar_nearmax": fam("oar_nearmax", 7),
            "target_dose": fam("target_dose", 400)}
    chk.calibration = SimpleNamespace(families=fams, protocol="p")
    chk.methods = {f: "absolute" for f in chk.calibration.families}
    crit = [("Dmean", "oar", "Larynx Dmean"), ("D1%", "oar", "Cord D1%"), ("D95%", "target", "PTV70 D95%")]
    chk.bound = SimpleNamespace(criteria=[SimpleNamespace(metric=m, kind=k, criterion=SimpleNamespace(name=c))
                                          for m, k, c in crit])
    chk.coverage, chk.rule, chk.warnings = 0.9, "interpolated", []
    # by hand, a one-sided (absolute) score's quantile needs (n + 1) * coverage <= n: 3 units give at most
    # 0.75, 7 at most 0.875 (the target family's 400 give 0.9)
    with pytest.raises(CalibrationError, match=r"than families oar_mean \(3 units\), oar_nearmax \(7 units\) "
                                               r"have: ask for a lower --coverage \(at most 0\.75\)"):
        chk._check_protocol()


# --------------------------------------------------------------------------- calibrate's options
def _units(n_patients=14):
    rng = np.random.default_rng(0)
    return [Unit(f"p{i}", "Larynx", "Dmean", "oar_mean", float(rng.normal(30, 2)), 30.0, 1.0)
            for i in range(n_patients)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"splits": 0}, r"--splits \(random patient splits of the cross-validation\) must be a whole number of "
                    r"at least 1, got 0"),
    ({"splits": -1}, r"--splits .* got -1"),
    ({"splits": 2.5}, r"--splits .* got 2\.5"),
    ({"cal_fraction": 1.0}, r"calibration fraction .* between 0 and 1 \(exclusive\), got 1\.0"),
    ({"cal_fraction": 0}, r"calibration fraction .* got 0"),
    ({"cal_fraction": float("nan")}, r"calibration fraction .* got nan"),
    ({"seed": -3}, r"--seed .* must be a whole number >= 0, got -3"),
])
def test_nonsense_cross_validation_options_are_refused(tmp_path, kwargs, message):
    units = _units()
    with pytest.raises(InputError, match=message):
        cross_validate(units, **kwargs)
    with pytest.raises(InputError, match=message):
        build_calibration(units, sorted({u.patient for u in units}), "openkbp-clinical",
                          tmp_path / "model.pt", "d", None, **kwargs)


@pytest.mark.parametrize("splits", ["0", "-1"])
def test_calibrate_cli_refuses_splits_below_one_before_predicting(tmp_path, monkeypatch, splits):
    """`calibrate --splits 0` wrote a calibration with no cross-validation (every family falling back to
    `absolute`) and a table of "-1 random splits"; now one line, exit 2, nothing predicted or written."""
    from typer.testing import CliRunner

    import dosepred.qa.calibrating as calibrating
    from dosepred.cli import app
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort

    def no_work(*a, **k):
        raise AssertionError("predicted before checking --splits")

    monkeypatch.setattr(calibrating, "collect_units", no_work)
    model = tmp_path / "model"
    shutil.copytree(MODELS / "openkbp-mae-cdm", model)
    (model / "calibration.json").unlink()
    write_cache(make_cohort(12, seed=5, size=16), tmp_path / "plans")
    r = CliRunner().invoke(app, ["calibrate", "--model", str(model), "--data", str(tmp_path / "plans"),
                                 "--splits", splits, "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert " ".join(r.output.split()) == ("error: --splits (random patient splits of the cross-validation) "
                                          f"must be a whole number of at least 1, got {splits}")
    assert not (model / "calibration.json").exists()


def test_qa_refuses_a_negative_report_max_before_any_work(tmp_path):
    """A negative --report-max sliced the ranking from its end: the last patients left out silently."""
    from dosepred.qa.check import run_qa

    with pytest.raises(InputError, match=r"--report-max \(patients with images in the report\) must be >= 0 "
                                         r"\(0: all\), got -1"):
        run_qa(tmp_path / "no-model", tmp_path / "no-plans", "openkbp-clinical", report=tmp_path / "r",
               report_max=-1)


def test_a_family_that_can_give_no_coverage_says_so_not_at_most_0():
    """A signed (two-sided) interval of one unit exists at no coverage: the message asked for 'a lower
    --coverage (at most 0)' and counted '(1 units)'."""
    from types import SimpleNamespace

    from dosepred.qa.check import QAChecker

    fam = Family("oar_mean", 1, {"*": CriterionStats(0.0, 1.0, 0)}, {"signed": (0.3,)}, None, "signed", ())
    chk = object.__new__(QAChecker)
    chk.calibration = SimpleNamespace(families={"oar_mean": fam}, protocol="p")
    chk.methods = {"oar_mean": "signed"}
    chk.bound = SimpleNamespace(criteria=[SimpleNamespace(metric="Dmean", kind="oar",
                                                          criterion=SimpleNamespace(name="Larynx Dmean"))])
    chk.coverage, chk.rule, chk.warnings = 0.9, "interpolated", []
    with pytest.raises(CalibrationError, match=r"than family oar_mean \(1 unit\) has: no coverage can be "
                                               r"given: recalibrate on more patients"):
        chk._check_protocol()
