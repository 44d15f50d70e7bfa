"""The console renderings say what the results they render hold."""

import json
from pathlib import Path

from dosepred import console
from dosepred.qa import load_calibration
from dosepred.qa.families import FAMILY_TITLES

MODEL = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm"


def test_calibration_table_names_the_splits_of_every_family():
    """``calibrate``'s table names the splits each family was cross-validated with: a family of one
    unit per patient (the V-metrics) gets ten times more, which the title left out (it said 200 for
    all); the widths' units (Gy; points of % for V-metrics) are said too."""
    raw = json.loads((MODEL / "calibration.json").read_text())["cross_validation"]
    assert raw["splits_small_families"], "the released calibration has a family cross-validated apart"
    title = str(console.calibration(load_calibration(MODEL)).title)
    assert f"{raw['splits']} random splits" in title
    for fam, n in raw["splits_small_families"].items():
        assert n != raw["splits"] and f"{n} for the {FAMILY_TITLES[fam]}" in title, title
    assert "Gy" in title and "% of the ROI volume" in title


def test_calibration_table_marks_coverage_of_splits_with_unbounded_intervals():
    """A family whose chosen method was unbounded in some cross-validation splits (too few calibrating
    units: a V-metric of an ROI 11 of 33 patients have, ~9 units per split, where a 90 % ``absolute``
    interval needs 9) had its V-metric interval clipped to 0-100 % there and counted as covering every
    held-out value: the table printed that inflated mean (here 93.4 % for intervals that covered about
    86 % where bounded) as a plain coverage. It is now marked, and the caption says why."""
    import dataclasses
    import io

    from rich.console import Console

    cal = load_calibration(MODEL)
    fam = "v_metric"
    method = cal.families[fam].method
    results = {f: dict(ms) for f, ms in cal.cross_validation.results.items()}
    stats = {"coverage": 93.4, "coverage_sd": 9.0, "width": 100.0, "width_mean": 80.0, "units": 11,
             "false_alarms": 2.0, "flag_margin": 50.0, "unbounded": 51.6}
    results[fam] = {**results[fam], method: {**results[fam][method], "0.9": stats}}
    cv = dataclasses.replace(cal.cross_validation, results=results)
    cal = dataclasses.replace(cal, cross_validation=cv)
    out = io.StringIO()
    Console(file=out, width=200).print(console.calibration(cal))
    text = out.getvalue()
    row = next(line for line in text.splitlines() if FAMILY_TITLES[fam] in line and method in line)
    assert "93.4*" in row and "100.00*" in row, row
    words = " ".join(text.split())  # the caption wraps
    assert "unbounded" in words and "52 %" in words and "not a measured coverage" in words, text
    # the released calibration (bounded in every split) gets no mark
    plain = io.StringIO()
    Console(file=plain, width=200).print(console.calibration(load_calibration(MODEL)))
    assert "*" not in plain.getvalue() and "unbounded" not in plain.getvalue()
