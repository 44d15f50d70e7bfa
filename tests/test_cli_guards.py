"""Guards found by running the new commands as a careless user would: `calibrate` never replaces a
model's calibration without --overwrite nor calibrates on too few patients, and `train --set` values
of the wrong type are one clear error."""

import hashlib
import shutil
from pathlib import Path

from typer.testing import CliRunner

from dosepred.cli import app

MODEL = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae"


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_calibrate_keeps_an_existing_calibration_and_needs_enough_patients(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(MODEL, model)
    before = _digest(model)
    assert cli("data", "synth", "--patients", "2", "--size", "16", "--out", tmp_path / "c").exit_code == 0
    r = cli("calibrate", "--model", model, "--data", tmp_path / "c", "--no-progress")
    assert r.exit_code == 2 and "calibration.json exists" in r.output and "--overwrite" in r.output
    assert "Traceback" not in r.output
    r = cli("calibrate", "--model", model, "--data", tmp_path / "c", "--overwrite", "--no-progress")
    assert r.exit_code == 2 and "at least 12" in r.output and "Traceback" not in r.output
    assert _digest(model) == before  # the shipped calibration is untouched by both failures


def test_train_set_with_a_value_of_the_wrong_type(tmp_path):
    assert cli("data", "synth", "--patients", "2", "--size", "16", "--out", tmp_path / "c").exit_code == 0
    r = cli("train", "--data", tmp_path / "c", "--out", tmp_path / "r", "--set", "ema_decay=abc")
    assert r.exit_code == 2 and "ema_decay" in r.output and "float" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "r").exists()
    r = cli("train", "--data", tmp_path / "c", "--out", tmp_path / "r", "--set", "rotate_step=35")
    assert r.exit_code == 2 and "rotate_step" in r.output and not (tmp_path / "r").exists()


def test_an_output_named_dash_is_refused_not_written_as_a_file(tmp_path, monkeypatch):
    """`--json -` (as many tools write to stdout) wrote a file named '-' in the working folder and said
    `wrote -`, while the console table went to stdout: a pipeline's `| jq` read the table. Now one
    error saying that '-' is no output path (for --json, --out alike), exit 2, nothing written."""
    monkeypatch.chdir(tmp_path)
    assert cli("data", "synth", "--patients", "2", "--size", "16", "--out", "c").exit_code == 0
    assert cli("baseline", "--data", "c", "--out", "pred", "--no-progress").exit_code == 0
    for args in (("evaluate", "--reference", "c", "--prediction", "pred", "--json", "-"),
                 ("data", "split", "c", "--random", "--fractions", "1,1", "--out", "-"),
                 ("baseline", "--data", "c", "--out", "-")):
        r = cli(*args, "--no-progress") if args[0] != "data" else cli(*args)
        flat = " ".join(r.output.split())
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert flat.startswith("error: -: ") and "standard output" in flat, flat
        assert not (tmp_path / "-").exists()
