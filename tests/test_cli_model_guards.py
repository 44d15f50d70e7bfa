"""Guards of `export-model` and `predict` found by running them as a careless user would: averaging
two models trained with different losses (or one checkpoint twice) is refused without --allow-mixed,
an average's README and config.json say what it is, and `predict --dose-spacing` is refused for a
format it does not apply to."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import CHECKPOINT_FORMAT, average_checkpoints, save_checkpoint


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def _runs(tmp_path, losses=("mae", "mae+cdm")) -> list:
    """One checkpoint per loss, of one architecture, each with its own training record."""
    cfg = ModelConfig(base=2, levels=2, res_units=0, patch=(8, 8, 8))
    paths = []
    for i, loss in enumerate(losses):
        torch.manual_seed(i)
        paths.append(save_checkpoint({"format": CHECKPOINT_FORMAT, "model_config": cfg.to_dict(),
                                      "model": build_model(cfg).state_dict(),
                                      "train_config": {"loss": loss, "data": f"cache{i}"}, "epoch": 10 + i,
                                      "global_step": 100 + i, "best": {"epoch": 5 + i, "value": 2.0 + i}},
                                     tmp_path / f"c{i}.pt"))
    return paths


def test_export_refuses_models_trained_with_different_losses(tmp_path):
    # was: averaged silently, README "trained with loss `mae`" and the first model's score
    a, b = _runs(tmp_path)
    r = cli("export-model", a, b, "--out", tmp_path / "m")
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.splitlines()) == 1, r.output
    assert "trained with different losses" in r.output and "'mae+cdm'" in r.output
    assert "--allow-mixed" in r.output and not (tmp_path / "m").exists()


def test_export_refuses_one_checkpoint_given_twice(tmp_path):
    a, _ = _runs(tmp_path)
    r = cli("export-model", a, tmp_path / "." / a.name, "--out", tmp_path / "m")
    assert r.exit_code == 2 and "the same checkpoint is given twice" in r.output, r.output
    assert not (tmp_path / "m").exists()
    with pytest.raises(ModelError, match="given twice"):
        average_checkpoints([a, a])


def test_allow_mixed_exports_an_average_that_says_what_it_is(tmp_path):
    a, b = _runs(tmp_path)
    r = cli("export-model", a, b, "--out", tmp_path / "m", "--allow-mixed")
    assert r.exit_code == 0, r.output
    readme = (tmp_path / "m" / "README.md").read_text()
    assert "the uniform average of the weights of 2 checkpoints" in readme
    assert "`c0.pt`: trained with loss `mae` on `cache0` for 10 epochs" in readme  # by name, not the folders
    assert "`c1.pt`: trained with loss `mae+cdm` on `cache1` for 11 epochs" in readme
    assert "- trained with loss" not in readme and "- best validation" not in readme  # not the first's
    info = json.loads((tmp_path / "m" / "config.json").read_text())
    assert info["source"] == "the average of 2 checkpoints: c0.pt, c1.pt" and str(tmp_path) not in str(info)
    assert [x["loss"] for x in info["averaged_inputs"]] == ["mae", "mae+cdm"]
    assert "best" not in info and "train_config" not in info and "epoch" not in info


def test_allow_mixed_needs_several_checkpoints(tmp_path):
    a, _ = _runs(tmp_path)
    r = cli("export-model", a, "--out", tmp_path / "m", "--allow-mixed")
    assert r.exit_code == 2 and "--allow-mixed applies to averaging several" in r.output, r.output


def test_same_loss_averages_without_the_flag(tmp_path):
    a, b = _runs(tmp_path, losses=("mae+cdm", "1*mae + cdm"))  # one loss, written two ways
    r = cli("export-model", a, b, "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert "average of the weights of 2 checkpoints" in (tmp_path / "m" / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["openkbp", "nifti", "cache"])
def test_predict_refuses_dose_spacing_for_a_format_other_than_dicom(tmp_path, fmt):
    # was: exit 0, the option ignored
    r = cli("predict", "--model", "models/openkbp-mae", "--data", tmp_path / "nowhere", "--out",
            tmp_path / "p", "--format", fmt, "--dose-spacing", "3")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert ("--dose-spacing applies to --format dicom only (a dose grid of its own), not to --format "
            f"{fmt}") in r.output
    assert not (tmp_path / "p").exists()


def test_an_unrecorded_loss_is_not_a_different_one_and_an_average_keeps_its_inputs_losses(tmp_path):
    a, b, c = _runs(tmp_path, losses=("mae+cdm", "mae+cdm", "mae"))
    ck = torch.load(b, weights_only=True)
    del ck["train_config"]["loss"]  # a checkpoint that did not record its loss
    torch.save(ck, b)
    r = cli("export-model", a, b, "--out", tmp_path / "ab")
    assert r.exit_code == 0, r.output
    # the average (no training record of its own) still says its inputs were mae+cdm
    r = cli("export-model", tmp_path / "ab", c, "--out", tmp_path / "abc")
    assert r.exit_code == 2 and "trained with different losses" in r.output, r.output
    assert "'mae+cdm'" in r.output and "'mae'" in r.output
    r = cli("export-model", tmp_path / "ab", a, "--out", tmp_path / "aba")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("args", "said"), [
    (("predict", "--model", "models/openkbp-mae", "--format", "dicom", "--dose-spacing", "1e9"),
     "Invalid value for '--dose-spacing'"),
    (("baseline", "--falloff", "inf"), "falloff must be a finite length > 0 mm, got inf"),
])
def test_a_dose_grid_too_coarse_to_use_or_an_infinite_falloff_is_refused(tmp_path, args, said):
    """Careless values that ran (exit 0): an RTDOSE on a 1e9 mm grid (PTV70 D99/D95 a flat 19.2 Gy
    against the plan's 64.9 / 69.3) and a no-learning dose with the prescription everywhere."""
    from dosepred.io import write_cache
    from dosepred.synth import make_cohort

    write_cache(make_cohort(1, seed=0, size=20), tmp_path / "c")
    r = cli(*args, "--data", tmp_path / "c", "--out", tmp_path / "p")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert said in " ".join(r.output.split()) and not (tmp_path / "p").exists()
