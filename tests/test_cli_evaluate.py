"""`dosepred evaluate` prints the metric values (reference, prediction) when the protocol has no
limits, and with --show-metrics; the numbers are checked against numpy on the same doses."""

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort

runner = CliRunner()


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    ref = make_cohort(2, seed=7, size=24)
    pred = [p.with_dose(p.dose * 0.9) for p in ref]
    write_cache(ref, root / "ref")
    write_cache(pred, root / "pred")
    return root, ref, pred


def _row(text: str, pid: str, roi: str, metric: str) -> tuple[float, float, float]:
    """(reference, prediction, difference) of one table row; rows are split by the box characters."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if len(cells) == 6 and cells[0] == pid and cells[1] == roi and cells[2].startswith(metric + " ("):
            return float(cells[3]), float(cells[4]), float(cells[5])
    raise AssertionError(f"no row {pid} {roi} {metric} in:\n{text}")


def _evaluate(root, *extra):
    r = runner.invoke(app, ["evaluate", "--reference", str(root / "ref"), "--prediction", str(root / "pred"),
                            "--no-progress", *extra],
                      env={"COLUMNS": "160", "DOSEPRED_PROGRESS_INTERVAL": "off"})
    assert r.exit_code == 0, r.output
    return r.output


def test_no_limits_protocol_prints_values(caches):
    root, ref, pred = caches
    out = _evaluate(root, "--protocol", "openkbp")
    for p, q in zip(ref, pred, strict=True):
        m = p.mask("PTV70")
        r_mean, p_mean, diff = _row(out, p.id, "PTV70", "D95%")
        assert r_mean == pytest.approx(np.percentile(p.dose[m], 5), abs=0.006)
        assert p_mean == pytest.approx(np.percentile(q.dose[m], 5), abs=0.006)
        assert diff == pytest.approx(p_mean - r_mean, abs=0.011)
        par = p.mask("LeftParotid")
        r_mean, p_mean, _ = _row(out, p.id, "LeftParotid", "Dmean")
        assert r_mean == pytest.approx(p.dose[par].mean(), abs=0.006)
        assert p_mean == pytest.approx(q.dose[par].mean(), abs=0.006)


def test_limits_protocol_shows_values_only_when_asked(caches):
    root, ref, pred = caches
    out = _evaluate(root, "--protocol", "openkbp-clinical")
    assert "metric values" not in out and "criteria pass rate" in out
    out = _evaluate(root, "--protocol", "openkbp-clinical", "--show-metrics")
    assert "metric values" in out and "criteria pass rate" in out
    p = ref[0]
    cord = p.mask("SpinalCord")
    r_val, p_val, _ = _row(out, p.id, "SpinalCord", "D0.1cc")
    assert p_val == pytest.approx(0.9 * r_val, abs=0.02) and r_val <= p.dose[cord].max() + 1e-3


def test_missing_predictions_are_named_in_one_short_line(tmp_path):
    """A reference with many patients and a prediction folder with one: the error says how many lack a
    prediction and names five, not all of them (136 ids made a line of 1,100 characters)."""
    ref = make_cohort(8, seed=3, size=16)
    write_cache(ref, tmp_path / "ref")
    write_cache([ref[0].with_dose(ref[0].dose * 0.9)], tmp_path / "pred")
    args = ["evaluate", "--reference", str(tmp_path / "ref"), "--prediction", str(tmp_path / "pred"),
            "--no-progress"]
    r = runner.invoke(app, args, env={"COLUMNS": "400", "DOSEPRED_PROGRESS_INTERVAL": "off"})
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    missing = [p.id for p in ref[1:]]
    assert "for 7 reference patient(s)" in lines[0]
    assert ", ".join(missing[:5]) + " and 2 more" in lines[0] and missing[5] not in lines[0]
    assert "--allow-missing" in lines[0]


def test_criteria_table_colours_the_prediction_by_agreement_with_the_plans(sample_dir):
    """The printed criteria table colours a prediction's count as the HTML report does: green only where
    it passes or fails the criterion exactly where the plan does (counted here from the per-patient
    results), red elsewhere. It coloured the count green whenever every prediction passed, so a dose 1.1 x
    the plan's, passing a target criterion the plans fail on some patients, was printed green though it
    disagreed with them (the report, in red, said the opposite)."""
    from dosepred import console
    from dosepred.evaluation import evaluate_cohort
    from dosepred.io.source import load_patients

    pats = list(load_patients(sample_dir))
    res = evaluate_cohort(((p, p.dose * 1.1) for p in pats), "openkbp-clinical")
    table = next(t for t in console.evaluation(res, [])
                 if getattr(t, "title", "") == "criteria (patients passing)")
    names, shown = list(table.columns[0].cells), list(table.columns[1].cells)
    seen_all_pass_disagreeing = False
    for row in res.criteria_table():
        agree = sum(c.pred_pass == c.ref_pass for p in res.patients for c in p.criteria
                    if c.index == row["index"] and c.checked)
        cell = shown[names.index(row["criterion"])]
        style = cell.style  # styled text (the console prints no markup)
        assert style == ("green" if agree == row["n"] else "red"), (row["criterion"], cell)
        seen_all_pass_disagreeing |= row["pred_pass"] == row["n"] and agree < row["n"]
    assert seen_all_pass_disagreeing


def test_a_reference_of_predicted_doses_is_said_on_stderr_and_in_the_json(caches, tmp_path):
    """`--reference PRED_CACHE` (a cache `predict --format cache` wrote, which dataset.json records; a
    batch script's variables swapped) scored predictions against predictions and reported them as
    accuracy without a word. Now a warning on stderr, and in the JSON's `warnings`, that the reference
    doses are predictions, not plans (comparing two models stays possible)."""
    import json

    from dosepred.inference import InferenceOptions, PredictionRecord

    root, ref, pred = caches
    rec = PredictionRecord(InferenceOptions(), "models/m", None, "plans", "0.1.0")
    write_cache(ref, tmp_path / "ref-pred", record={"prediction": rec.to_json()})
    r = runner.invoke(app, ["evaluate", "--reference", str(tmp_path / "ref-pred"), "--prediction",
                            str(root / "pred"), "--json", str(tmp_path / "e.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    said = [ln for ln in r.stderr.splitlines() if "doses are predictions" in ln]
    want = (f"warning: reference {tmp_path / 'ref-pred'}: its doses are predictions written by `dosepred "
            "predict` (model models/m")
    assert len(said) == 1 and said[0].startswith(want), r.stderr
    assert said[0][len("warning: "):] in json.loads((tmp_path / "e.json").read_text())["warnings"]
    r = runner.invoke(app, ["evaluate", "--reference", str(root / "ref"), "--prediction", str(root / "pred"),
                            "--no-progress"])
    assert r.exit_code == 0 and "doses are predictions" not in r.output, r.output


def test_names_with_square_brackets_are_printed_as_they_are(caches, tmp_path):
    """The console read every printed string as rich markup: `--json 'eval[final].json'` was reported
    as `wrote .../eval.json` (the file written was eval[final].json), a source folder `plans[v2]` was
    titled `plans`, and a name holding `[/x]` ended in an internal error after the outputs were
    written. Paths, patient ids and criterion names are now printed as they are."""
    root, ref, pred = caches
    out = tmp_path / "eval[final].json"
    refb = tmp_path / "ref[v2]"
    write_cache(ref, refb)
    r = runner.invoke(app, ["evaluate", "--reference", str(refb), "--prediction", str(root / "pred"),
                            "--json", str(out), "--no-progress"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert out.is_file() and f"wrote {out}" in r.stdout, r.stdout
    bad = tmp_path / "x[" / "b]"  # the path reads .../x[/b]/e.json: a closing tag to rich
    bad.mkdir(parents=True)
    r = runner.invoke(app, ["evaluate", "--reference", str(root / "ref"), "--prediction", str(root / "pred"),
                            "--json", str(bad / "e.json"), "--no-progress"], env={"COLUMNS": "400"})
    assert r.exit_code == 0 and f"wrote {bad / 'e.json'}" in r.stdout, r.output
    assert "[bold]" not in r.stdout and "[/]" not in r.stdout  # the cohort row's style is applied, not shown


def test_report_names_the_patients_left_out_with_allow_missing(tmp_path):
    """--allow-missing with a prediction for 2 of 3 reference patients: the console and the JSON say
    which patient was not evaluated; the HTML report said only "2 patients", so a reader of the report
    took its cohort numbers for the whole reference."""
    import json

    ref = make_cohort(3, seed=5, size=16)
    write_cache(ref, tmp_path / "ref")
    write_cache([p.with_dose(p.dose * 0.9) for p in ref[:2]], tmp_path / "pred")
    r = runner.invoke(app, ["evaluate", "--reference", str(tmp_path / "ref"), "--prediction",
                            str(tmp_path / "pred"), "--allow-missing", "--no-progress",
                            "--json", str(tmp_path / "ev.json"), "--report", str(tmp_path / "rep")],
                      env={"COLUMNS": "160", "DOSEPRED_PROGRESS_INTERVAL": "off"})
    assert r.exit_code == 0, r.output
    gone = ref[2].id
    assert json.loads((tmp_path / "ev.json").read_text())["missing_predictions"] == [gone]
    assert f"not evaluated (no prediction): 1 patient(s), {gone}" in r.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert f"not evaluated (no prediction): 1 patient(s), {gone}" in html
