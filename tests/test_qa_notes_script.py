"""scripts/qa_notes.py (docs/qa.md, "Reliability notes"): it measures QA's errors, so it must predict as
QA does with the model's calibration, flipped or not, and take only predictions made that way."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from calibration_versions import without_centred
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "openkbp-mae-cdm"


def _script():
    return load_script("qa_notes")


@pytest.fixture
def setup(sample_dir, tmp_path, monkeypatch):
    """A version 2 copy of the released model (QA predicts it unflipped), the sample plans as a cache,
    their plan doses as 'predictions' recorded as made with --tta or --no-tta, and predict_dose
    replaced by one that records how it was asked to predict (and returns the plan's dose)."""
    import dosepred.predict
    from dosepred.io import load_patients, write_cache

    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    cal = json.loads((model / "calibration.json").read_text())
    without_centred(cal)["version"] = 2
    cal.pop("tta", None)
    (model / "calibration.json").write_text(json.dumps(cal))
    plans = list(load_patients(sample_dir))
    write_cache(plans, tmp_path / "plans")
    for flags in ("--tta", "--no-tta"):
        write_cache(plans, tmp_path / f"pred{flags}", source=f"dosepred predict --model M --data D {flags}")
    asked: list[bool] = []

    def fake(model, patient, options, **kwargs):
        asked.append(options.tta)
        return patient.dose

    monkeypatch.setattr(dosepred.predict, "predict_dose", fake)
    return model, tmp_path, asked


def _run(monkeypatch, model, work, pred, *extra):
    monkeypatch.setattr(sys, "argv", ["qa_notes.py", "--model", str(model), "--data", str(work / "plans"),
                                      "--predictions", str(work / pred), "--json", str(work / "out.json"),
                                      *extra])
    _script().main()


def test_qa_notes_refuses_predictions_made_otherwise_than_qa_s(setup, monkeypatch):
    from dosepred.qa.calibration import CalibrationError

    model, work, _ = setup
    with pytest.raises(CalibrationError, match=r"pred--tta: these predictions were made with --tta, but "
                                               r"plan QA with this calibration predicts without flipping"):
        _run(monkeypatch, model, work, "pred--tta")


def test_qa_notes_predicts_regridded_plans_as_qa_does(setup, monkeypatch):
    model, work, asked = setup
    _run(monkeypatch, model, work, "pred--no-tta", "--grids", "1.6")
    assert len(asked) == 3 and set(asked) == {False}  # the version 2 calibration's way: unflipped
    assert json.loads((work / "out.json").read_text())["grids"]
