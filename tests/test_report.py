import json
import re
from html import escape

import numpy as np
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.evaluation import evaluate_cohort
from dosepred.io.openkbp import write_dose_csv
from dosepred.io.source import load_patients
from dosepred.report import write_report


@pytest.fixture(scope="module")
def preds(sample_dir, tmp_path_factory):
    """Perturbed reference doses written as OpenKBP pt_N.csv (the last patient has none)."""
    out = tmp_path_factory.mktemp("pred")
    pats = list(load_patients(sample_dir))
    rng = np.random.default_rng(3)
    for p in pats[:-1]:
        noise = rng.normal(0, 1, p.shape).astype(np.float32) * p.possible_dose_mask
        d = np.clip(p.dose * 0.98 + noise, 0, None)
        write_dose_csv(out / f"{p.id}.csv", d, p.possible_dose_mask)
    return out, [p.id for p in pats]


def test_write_report_two_models(sample_dir, tmp_path):
    pats = list(load_patients(sample_dir))[:1]
    a = [p.dose * 0.9 for p in pats]
    b = [p.dose * 1.02 for p in pats]
    ra = evaluate_cohort(zip(pats, a, strict=True), "openkbp-clinical")
    rb = evaluate_cohort(zip(pats, b, strict=True), "openkbp-clinical")
    path = write_report(tmp_path, {"MAE": ra, "MAE+CDM": rb}, pats, {"MAE": a, "MAE+CDM": b}, title="t",
                        extra_tables={"training": [{"model": "MAE", "minutes": 1.0}]})
    html = path.read_text()
    assert path.name == "report.html" and "MAE+CDM" in html and "training" in html
    assert "class='fail'" in html and "class='pass'" in html and "colour key" in html
    # one self-contained file: every image embedded, no external reference
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)['"]""", html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    for section in ("Cohort", "Patients", "axial", "coronal", "sagittal", "type='range'",
                    "MAE+CDM - reference", "ROI contours", "isodose lines", "50 mm"):
        assert section in html, section


def test_cli_missing_prediction_is_an_error(sample_dir, preds):
    out, ids = preds
    r = CliRunner().invoke(app, ["evaluate", "--reference", str(sample_dir), "--prediction", str(out)])
    assert r.exit_code == 2
    assert ids[-1] in r.output and "Traceback" not in r.output


def test_cli_allow_missing_json_and_report(sample_dir, preds, tmp_path):
    out, ids = preds
    js = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["evaluate", "--reference", str(sample_dir), "--prediction", str(out),
                                 "--allow-missing", "--protocol", "openkbp-clinical", "--json", str(js),
                                 "--report", str(tmp_path / "rep"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert ids[-1] in r.output and "cohort" in r.output
    data = json.loads(js.read_text())
    for k in ("patients", "dose_score", "dvh_score", "ptv_score", "oar_score", "criteria_pass_rate",
              "per_patient"):
        assert k in data
    assert data["patients"] == ids[:-1] and data["missing_predictions"] == [ids[-1]]
    assert (tmp_path / "rep" / "report.html").is_file()


def test_cli_user_errors(sample_dir, preds, tmp_path):
    out, _ = preds
    r = CliRunner().invoke(app, ["evaluate", "--reference", str(sample_dir), "--prediction", str(out),
                                 "--allow-missing", "--protocol", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "neither a built-in" in r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pt_66.csv").write_text(",data\n999999999,1.0\n")
    for p in ("pt_187", "pt_196"):
        (bad / f"{p}.csv").write_text(",data\n0,1.0\n")
    r = CliRunner().invoke(app, ["evaluate", "--reference", str(sample_dir), "--prediction", str(bad)])
    assert r.exit_code == 2 and "out of range" in r.output and "Traceback" not in r.output


def test_criteria_rows_pair_each_prediction_by_criterion(sample_dir, tmp_path):
    """A second prediction whose results come in another order still shows, on each criterion's row,
    its own value of that criterion (found independently: the second prediction's dose is the plan's
    x 1.1, so every dose value is 1.1 x the reference's)."""
    pats = list(load_patients(sample_dir))[:1]
    a, b = [p.dose * 0.9 for p in pats], [p.dose * 1.1 for p in pats]
    ra = evaluate_cohort(zip(pats, a, strict=True), "openkbp-clinical")
    rb = evaluate_cohort(zip(pats, b, strict=True), "openkbp-clinical")
    rb.patients[0].criteria.reverse()
    html = write_report(tmp_path, {"A": ra, "B": rb}, pats, {"A": a, "B": b}, title="t").read_text()
    checked = 0
    for c in ra.patients[0].criteria:
        if c.unit != "Gy" or c.ref < 1:
            continue
        rows = re.findall(rf"<tr><td class='l'>{re.escape(escape(c.name))}</td>(.*?)</tr>", html)
        assert rows, c.name  # the last: the patient's table (the first is the cohort's pass counts)
        values = [float(v) for v in re.findall(r"<td class='\w+'>([-\d.]+) Gy</td>", rows[-1])]
        ref, _, second = values
        assert second == pytest.approx(1.1 * ref, abs=0.02), c.name
        checked += 1
    assert checked >= 5


def test_qa_dvh_marks_every_improvement_flag_as_a_triangle(monkeypatch):
    """The QA DVH draws a criterion with an improvement flag as a triangle, whichever flag it is: an
    OAR criterion whose protocol says higher is better (">="), below its interval, was drawn as an
    unflagged circle (the plot listed three of the four improvement flags by hand)."""
    import matplotlib.axes

    from dosepred.qa.result import CriterionQA, flags_for
    from dosepred.report.plots import dvh_qa_uri
    from dosepred.synth import make_cohort

    p = make_cohort(1, seed=0, size=20)[0]
    oar = next(r.name for r in p.roi_set if r.kind == "oar" and r.name in p.present_rois)
    cases = {  # plan value, lower is better -> flagged (beyond the interval [15, 25] on the bad side)
        "above, <=": (30.0, True, True), "below, >=": (10.0, False, True),
        "inside, <=": (20.0, True, False), "below, <=": (10.0, True, False)}
    crits = []
    for plan, lower, _ in cases.values():
        flags, gain = flags_for(plan, 20.0, 15.0, 25.0, "oar", lower)
        crits.append(CriterionQA(oar, "Dmean", plan, 20.0, 15.0, 25.0, None, None, flags, unit="Gy",
                                 kind="oar", lower_better=lower, gain=gain))
    seen = []
    orig = matplotlib.axes.Axes.errorbar

    def errorbar(self, *a, **k):
        seen.append(k.get("fmt"))
        return orig(self, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    dvh_qa_uri(p, p.dose * 0.9, crits)
    assert seen == ["^" if flagged else "o" for _, _, flagged in cases.values()], seen


def test_cohort_criteria_cells_are_coloured_by_agreement_with_the_plans(sample_dir, tmp_path):
    """The cohort's criteria table colours a prediction's cell green only where it passes or fails the
    criterion exactly where the plan does, patient by patient (counted here from the per-patient
    results); before, green meant 'passes at least as often as the plans', so a prediction at 1.1 x the
    dose passing a target criterion the plans fail on some patients showed green though it disagreed."""
    pats = list(load_patients(sample_dir))
    doses = [p.dose * 1.1 for p in pats]
    res = evaluate_cohort(zip(pats, doses, strict=True), "openkbp-clinical")
    html = write_report(tmp_path, {"x1.1": res}, pats, {"x1.1": doses}, title="t").read_text()
    table = html[html.index("<table><tr><th class='l'>criterion</th><th>reference</th>"):]
    table = table[: table.index("</table>")]
    seen_red_with_more_passes = False
    for row in res.criteria_table():
        agree = sum(c.pred_pass == c.ref_pass for p in res.patients for c in p.criteria
                    if c.index == row["index"] and c.checked)
        cell = re.search(rf"<td class='l'>{re.escape(escape(row['criterion']))}</td><td>\d+/\d+</td>"
                         r"<td class='(\w+)'>(\d+)/(\d+) \(agrees (\d+)/\d+\)</td>", table)
        assert cell, row["criterion"]
        assert int(cell.group(4)) == agree and int(cell.group(3)) == row["n"]
        assert cell.group(1) == ("pass" if agree == row["n"] else "fail"), row["criterion"]
        seen_red_with_more_passes |= cell.group(1) == "fail" and row["pred_pass"] >= row["ref_pass"]
    assert seen_red_with_more_passes


@pytest.mark.parametrize(("finite", "want"), [
    (True, "95% band of D at each volume\n(calibrated, pointwise)"),
    (False, "no 95% band: too few calibration\npatients for it (see the criteria table)"),
])
def test_qa_dvh_legend_says_a_band_only_where_one_is_drawn(monkeypatch, finite, want):
    """At a coverage the calibration patients are too few for (qa --coverage 0.95 with 33 of them), no
    ROI gets a band: the legend said '95% band ... (calibrated)' all the same."""
    import matplotlib.axes

    from dosepred.report.plots import dvh_qa_uri
    from dosepred.synth import make_cohort

    p = make_cohort(1, seed=0, size=20)[0]
    levels = np.array([5.0, 50.0, 95.0])
    band = {r: (levels, np.full(3, -1.0), np.full(3, 1.0)) if finite else None for r in p.present_rois}
    labels: list[str] = []
    orig = matplotlib.axes.Axes.legend

    def legend(self, *a, **k):
        labels.extend(h.get_label() for h in k.get("handles", []))
        return orig(self, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
    dvh_qa_uri(p, p.dose * 0.9, [], band=band, coverage=0.95)
    assert want in labels and not any("band" in x and x != want for x in labels), labels


@pytest.mark.parametrize(("metrics", "want"), [
    (["Dmean"], {"|": "limit"}),
    (["V95%"], {"_": "limit"}),
    (["Dmean", "V95%"], {"|": "dose limit", "_": "volume limit"}),
])
def test_qa_dvh_legend_shows_the_limit_ticks_drawn(monkeypatch, metrics, want):
    """A V-metric's limit is a volume, drawn as a horizontal tick at its threshold dose; the legend
    showed only a vertical tick ('limit'), the D-metrics' and means', whatever was drawn."""
    import matplotlib.axes

    from dosepred.qa.result import CriterionQA
    from dosepred.report.plots import dvh_qa_uri
    from dosepred.synth import make_cohort

    p = make_cohort(1, seed=0, size=20)[0]
    target = next(r for r in p.roi_set if r.kind == "target" and r.prescription and r.name in p.present_rois)
    crits = [CriterionQA(target.name, m, 50.0, 50.0, 45.0, 55.0, 60.0, None, [],
                         unit="%" if m.startswith("V") else "Gy", kind="target", lower_better=False)
             for m in metrics]
    drawn, legend_ticks = set(), {}
    orig_plot, orig_legend = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.legend

    def plot(self, *a, **k):
        if k.get("marker") in ("|", "_"):
            drawn.add(k["marker"])
        return orig_plot(self, *a, **k)

    def legend(self, *a, **k):
        legend_ticks.update({h.get_marker(): h.get_label() for h in k.get("handles", [])
                             if hasattr(h, "get_marker") and h.get_marker() in ("|", "_")})
        return orig_legend(self, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
    dvh_qa_uri(p, p.dose * 0.9, crits)
    assert drawn == set(want) and legend_ticks == want, (drawn, legend_ticks)


def test_the_report_says_the_cohort_warnings(tmp_path):
    """A 2-voxel cord (0.02 cc): its D0.1cc is the cord's minimum dose (30 Gy, though a voxel gets 60 Gy),
    and a protocol criterion repeated: the console and the JSON said so; the report, which a physicist
    may read alone, showed the 30 Gy passing its 50 Gy limit without a word."""
    from dosepred.protocol import parse_protocol
    from test_evaluation import two_voxel_cord

    p, dose = two_voxel_cord()
    crit = {"roi": "Cord", "metric": "D0.1cc", "limit": 50, "direction": "<="}
    res = evaluate_cohort([(p, dose)], parse_protocol({"name": "t", "criteria": [crit, crit]}))
    assert len(res.warnings) == 2
    html = write_report(tmp_path, res, [p], [dose], title="t").read_text()
    for w in res.warnings:
        assert escape(w) in html, w


def _shown_number(cell: str) -> float:
    return float(re.match(r"\s*([-\d.]+)", cell).group(1))


def test_a_value_near_its_limit_is_shown_on_the_side_its_verdict_says(tmp_path):
    """A value a few mGy from its limit is shown with the decimals that keep it on the side its verdict
    says: a PTV70 D99% of 66.496 Gy (fails '>= 66.5 Gy') was shown '66.50 Gy' in red, a Dmean of
    26.004 Gy (fails '<= 26 Gy') '26.00 Gy' in red. Values far from the limit keep two decimals."""
    from dosepred import Patient, RoiSet

    sh = (12, 12, 12)
    ptv, par = np.zeros(sh, bool), np.zeros(sh, bool)
    ptv[1:6, 1:6, 1:6] = True
    par[7:11, 7:11, 7:11] = True
    ref = np.zeros(sh, np.float32)
    ref[ptv], ref[par] = 68.0, 20.0
    pred = ref.copy()
    pred[ptv], pred[par] = 66.496, 26.004
    p = Patient.from_masks("pt_1", np.zeros(sh, np.int16), {"PTV70": ptv, "RightParotid": par},
                           RoiSet.openkbp(), (3.0, 3.0, 3.0), dose=ref)
    res = evaluate_cohort([(p, pred)], "openkbp-clinical")
    html = write_report(tmp_path, res, [p], [pred], title="t").read_text()
    shown = 0
    for c in res.patients[0].criteria:
        if c.limit is None:
            continue
        row = re.findall(rf"<tr><td class='l'>{re.escape(escape(c.name))}</td>(.*?)</tr>", html)[-1]
        cells = re.findall(r"<td class='(\w+)'>([^<]*)</td>", row)
        for (cls, text), value, ok in zip(cells, (c.ref, c.pred), (c.ref_pass, c.pred_pass), strict=True):
            v = _shown_number(text)
            assert cls == ("pass" if ok else "fail")
            seems = v >= c.limit if c.direction == ">=" else v <= c.limit
            assert seems == ok, (c.name, text, ok)  # the number shown agrees with the colour
            assert v == pytest.approx(value, abs=0.006)
            shown += 1
    assert shown >= 8
    assert "66.496 Gy" in html and "26.004 Gy" in html and "68.00 Gy" in html and "20.00 Gy" in html


def test_qa_report_shows_a_plan_value_near_its_limit_or_interval_on_its_side(tmp_path):
    """The QA criteria table (and the demo's table of the first plan) show a plan value a few mGy
    from its limit or from its interval's bound with the decimals that keep it on the side its
    verdict and flag say: 66.496 Gy against '>= 66.50 Gy' FAIL was '66.50 Gy', a plan 0.03 Gy below
    its interval flagged 'below' was shown equal to the interval's bound in the demo (one decimal)."""
    from dosepred.demo import qa_html
    from dosepred.qa.report import QAReportWriter
    from dosepred.qa.result import CriterionQA, PatientQA, QAResult, flags_for

    class Checker:
        coverage = 0.9
        has_dvh_band = False

        def dvh_band(self, roi):
            return None

    crits = []
    for roi, metric, plan, pred, low, high, limit in (("PTV70", "D99%", 66.496, 67.5, 66.5, 69.0, 66.5),
                                                    ("PTV56", "D99%", 51.131, 54.0, 51.16, 56.0, 53.2)):
        flags, gain = flags_for(plan, pred, low, high, "target", False)
        crits.append(CriterionQA(roi, metric, plan, pred, low, high, limit, plan >= limit, flags,
                                 name=f"{roi} {metric} >= {limit:g} Gy", family="target_d", unit="Gy",
                                 kind="target", lower_better=False, gain=gain))
    assert crits[0].flags and crits[1].flags  # both below their interval
    res = QAResult(0.9, "m", "p", "p", [PatientQA("pt_1", crits)], {})
    html = QAReportWriter(tmp_path, Checker()).finish(res).read_text()
    for c in crits:
        row = re.search(rf"<td class='l'>{re.escape(escape(c.name))}</td>.*?</tr>", html).group(0)
        plan, _, interval, limit = re.findall(r"<td>([^<]*)</td>", row)[:4]
        lo = float(interval.split(" - ")[0])
        assert _shown_number(plan) < lo, row  # flagged below its interval
        lim = float(re.search(r"([-\d.]+) Gy", limit).group(1))
        assert (_shown_number(plan) >= lim) == c.plan_pass, row
    demo = qa_html({"coverage": 0.9, "ranked": res.summary(), "in_calibration": [], "model": "m",
                    "shown": "pt_1"}, res.patients[0], "", "plans")
    for c in crits:
        row = re.search(rf"<td class='l'>{re.escape(escape(c.name))}</td>.*?</tr>", demo).group(0)
        plan, _, interval = re.findall(r"<td>([^<]*)</td>", row)[:3]
        assert _shown_number(plan) < float(interval.split(" - ")[0]), row


def test_dvh_legends_and_titles_show_names_as_they_are(monkeypatch, tmp_path):
    """matplotlib leaves out of a legend the labels that start with an underscore (a helper structure
    "_PTV_opt" drew an unlabelled curve) and reads text between two "$" as mathtext ("Ring $x_$" ended
    the report with a ParseSyntaxException). Both DVH plots (evaluate's, qa's) now show the names and
    the patient id as they are."""
    import matplotlib.figure

    from dosepred.patient import Patient, Roi, RoiSet
    from dosepred.report.plots import dvh_qa_uri, plot_dvh
    from dosepred.synth import make_cohort

    p = make_cohort(1, seed=0, size=20)[0]
    present = [r.name for r in p.roi_set if r.name in p.present_rois]
    new = {present[0]: "_PTV_opt", present[1]: "Ring $x_$"}
    rs = RoiSet(tuple(Roi(new.get(r.name, r.name), r.kind, r.prescription) for r in p.roi_set))
    p = Patient("pt $1_$", p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose,
                tuple(new.get(m, m) for m in p.missing_rois), dict(p.meta), p.geometry)
    drawn: list[list[str]] = []
    orig = matplotlib.figure.Figure.savefig

    def savefig(self, *a, **k):
        ax = self.axes[0]
        texts = [t.get_text() for leg in ax.findobj(matplotlib.legend.Legend) for t in leg.get_texts()]
        drawn.append([ax.get_title(), *texts])
        return orig(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    plot_dvh(tmp_path / "dvh.png", p, {"model": p.dose * 0.9})
    dvh_qa_uri(p, p.dose * 0.9, [])
    assert len(drawn) == 2
    for texts in drawn:
        shown = [t.strip().replace("\\$", "$") for t in texts]
        assert "_PTV_opt" in shown and "Ring $x_$" in shown, shown
        assert shown[0].startswith("pt $1_$"), shown


def test_the_reports_say_when_they_were_made_with_the_utc_offset(tmp_path, monkeypatch):
    """evaluate's and qa's reports said 'generated 2026-12-07 17:27', local time without a zone: a report
    kept by a clinic, or made on a server in UTC and read in Delhi, did not say when it was made. They now
    give the offset from UTC (here +05:30), and the time is the UTC time plus that offset."""
    import time
    from datetime import UTC, datetime, timedelta, timezone

    from dosepred.protocol import parse_protocol
    from dosepred.qa.report import QAReportWriter
    from dosepred.qa.result import QAResult
    from test_evaluation import two_voxel_cord

    class Checker:
        coverage, has_dvh_band = 0.9, False

    monkeypatch.setenv("TZ", "IST-5:30")  # POSIX: 5 h 30 min east of UTC
    time.tzset()
    try:
        p, dose = two_voxel_cord()
        res = evaluate_cohort([(p, dose)], parse_protocol({"name": "t", "criteria": [
            {"roi": "Cord", "metric": "Dmean", "limit": 50, "direction": "<="}]}))
        before = datetime.now(UTC)
        qa = QAResult(0.9, "m", "p", "p", [], {})
        pages = [write_report(tmp_path / "e", res, [p], [dose], title="t").read_text(),
                 QAReportWriter(tmp_path / "q", Checker()).finish(qa).read_text()]
        after = datetime.now(UTC)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    for page in pages:
        when = re.search(r"generated (\d{4}-\d\d-\d\d \d\d:\d\d) UTC\+05:30 by dosepred", page)
        assert when, re.search(r"generated [^<]*", page).group(0)
        t = datetime.strptime(when.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=timezone(timedelta(hours=5.5)))
        assert before.replace(second=0, microsecond=0) <= t <= after
