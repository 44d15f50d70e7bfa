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
