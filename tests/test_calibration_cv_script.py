"""scripts/calibration_cv.py (docs/qa.md, "Recomputing the released calibrations"): it runs on
prediction caches as `dosepred predict --format cache` writes them today (a record with the model's
SHA-256)."""

import json
import sys

from dosepred.inference import InferenceOptions, PredictionRecord
from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort
from script_loader import load_script


def test_runs_on_a_prediction_cache_that_records_its_model(tmp_path, monkeypatch, capsys):
    """The script gave collect_units the model path "" (it has no model), and a cache recording its
    model's SHA-256, as every `predict --format cache` writes since the record, sent the check of the
    model to resolve "": FileNotFoundError (". holds no model") and a traceback, the command of
    docs/qa.md with it. A prediction cache's model is not the script's to check."""
    cohort = make_cohort(12, seed=3, size=24)
    write_cache(cohort, tmp_path / "plans")
    rec = PredictionRecord(InferenceOptions(device="cpu"), "models/m", "ab" * 32, "plans", "0.1.0")
    write_cache(cohort, tmp_path / "pred", record={"prediction": rec.to_json()})  # plan doses as predictions
    out = tmp_path / "cv.json"
    monkeypatch.setattr(sys, "argv", ["calibration_cv.py", "--data", str(tmp_path / "plans"), "--pred",
                                      f"m={tmp_path / 'pred'}", "--splits", "5", "--v-splits", "5",
                                      "--json", str(out)])
    load_script("calibration_cv").main()
    res = json.loads(out.read_text())
    assert res["m"]["patients"] == 12 and res["m"]["units"] > 0
