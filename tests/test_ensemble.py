"""Ensembles (dosepred.models.ensemble, ``dosepred ensemble``): a folder naming member models whose
doses are averaged.

Every expected dose is computed independently: each member predicted alone by ``dosepred predict``
into its own cache, then the weighted mean taken here in numpy from those files.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.io.cache import Cache, write_cache
from dosepred.models import ModelError
from dosepred.models.checkpoint import (
    load_checkpoint,
    load_ensemble,
    load_model,
    save_checkpoint,
    write_ensemble,
)
from dosepred.models.ensemble import ENSEMBLE_FILE, EnsembleModel, ensemble_space, read_ensemble
from dosepred.models.space import ModelSpace
from dosepred.synth import make_cohort
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY

runner = CliRunner()
MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny models trained independently (seeds 1 and 2; the second with three levels) on one cache,
    and a second cache of patients to predict."""
    root = tmp_path_factory.mktemp("ens")
    write_cache(make_cohort(6, seed=5, size=20), root / "train")  # some lack PTV56 or PTV63: QA's plans may
    write_cache(make_cohort(2, seed=9, size=20), root / "plans")
    for seed, levels in ((1, 2), (2, 3)):
        cfg = TrainConfig(data=str(root / "train"), out=str(root / f"run{seed}"), epochs=1, steps_per_epoch=3,
                          seed=seed, **{**TINY, "levels": levels})
        Trainer(cfg, progress=False).fit()
    return root


def _doses(cache: Path) -> dict[str, np.ndarray]:
    c = Cache.open(cache)
    return {pid: c.load(pid).dose for pid in c.ids}


def _predict(model: Path, data: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    r = runner.invoke(app, ["predict", "--model", str(model), "--data", str(data), "--out", str(out),
                            "--format", "cache", "--no-progress", "--allow-missing-rois", *extra])
    assert r.exit_code == 0, r.output
    return _doses(out)


@pytest.mark.parametrize("tta", ["--tta", "--no-tta"])
def test_ensemble_predicts_the_weighted_mean_of_its_members(two_runs, tmp_path, tta):
    root = two_runs
    r = runner.invoke(app, ["ensemble", str(root / "run1"), str(root / "run2"), "--weights", "3,1",
                            "--out", str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    spec = json.loads((tmp_path / "ens" / ENSEMBLE_FILE).read_text())
    assert [m["weight"] for m in spec["members"]] == [3.0, 1.0]
    a = _predict(root / "run1", root / "plans", tmp_path / "a", tta)
    b = _predict(root / "run2", root / "plans", tmp_path / "b", tta)
    e = _predict(tmp_path / "ens", root / "plans", tmp_path / "e", tta)
    assert sorted(e) == sorted(a) == ["synth_000", "synth_001"]
    for pid in e:
        assert not np.allclose(a[pid], b[pid], atol=1e-3)  # the members disagree: the mean is a test
        np.testing.assert_allclose(e[pid], 0.75 * a[pid] + 0.25 * b[pid], rtol=0, atol=2e-5)
    rec = json.loads((tmp_path / "e" / "dataset.json").read_text())["prediction"]
    assert rec["model"] == str(tmp_path / "ens")  # the record names the ensemble and its file's hash
    import hashlib

    assert rec["model_sha256"] == hashlib.sha256((tmp_path / "ens" / ENSEMBLE_FILE).read_bytes()).hexdigest()


def test_a_diverged_member_is_named(two_runs, tmp_path):
    """An ensemble one of whose members predicts doses no plan gives was refused as "the model predicts
    doses up to ... Gy ...: train it again with a lower --lr", naming neither the ensemble nor which of
    its members; the error names the member's file."""
    root = two_runs
    ck = load_checkpoint(root / "run2")
    bias = [k for k in ck["model"] if k.endswith("bias")][-1]
    ck["model"][bias] = ck["model"][bias] + 1e7  # the last layer's bias: every voxel's dose 1e7 Gy up
    save_checkpoint(ck, tmp_path / "diverged.pt")
    r = runner.invoke(app, ["ensemble", str(root / "run1"), str(tmp_path / "diverged.pt"), "--out",
                            str(tmp_path / "ens")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "ens"), "--data", str(root / "plans"),
                            "--out", str(tmp_path / "e"), "--format", "cache", "--no-progress",
                            "--allow-missing-rois"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    said = " ".join(r.output.split())
    assert "member 2 (" in said and "diverged.pt" in said and "over 1000 Gy" in said, said
    assert not (tmp_path / "e").exists()


def test_equal_weights_by_default_and_the_folder_moves_with_its_members(two_runs, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(two_runs / "run1", root / "models" / "m1")
    shutil.copytree(two_runs / "run2", root / "models" / "m2")
    write_ensemble([root / "models" / "m1", root / "models" / "m2"], root / "models" / "ens")
    spec = json.loads((root / "models" / "ens" / ENSEMBLE_FILE).read_text())
    assert [m["model"] for m in spec["members"]] == ["../m1/checkpoints/best.pt", "../m2/checkpoints/best.pt"]
    assert [m["weight"] for m in spec["members"]] == [1.0, 1.0]
    moved = tmp_path / "elsewhere"
    shutil.move(root, moved)
    ens = load_model(moved / "models" / "ens")
    assert isinstance(ens, EnsembleModel) and ens.weights == (0.5, 0.5)
    assert ens.config.roi_set.names == load_model(moved / "models" / "m1").config.roi_set.names
    here = _predict(moved / "models" / "ens", two_runs / "plans", tmp_path / "p1")
    there = _predict(two_runs / "run1", two_runs / "plans", tmp_path / "p2")
    other = _predict(two_runs / "run2", two_runs / "plans", tmp_path / "p3")
    for pid in here:
        np.testing.assert_allclose(here[pid], 0.5 * there[pid] + 0.5 * other[pid], rtol=0, atol=2e-5)
    readme = (moved / "models" / "ens" / "README.md").read_text()
    assert "../m1/checkpoints/best.pt`, weight 0.5" in readme and "dosepred predict --model" in readme


def test_a_member_changed_since_is_refused(two_runs, tmp_path):
    shutil.copytree(two_runs / "run1", tmp_path / "m1")
    write_ensemble([tmp_path / "m1", two_runs / "run2"], tmp_path / "ens")
    ck = load_checkpoint(tmp_path / "m1")
    ck["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["model"].items()}
    save_checkpoint(ck, tmp_path / "m1" / "checkpoints" / "best.pt")
    with pytest.raises(ModelError, match=r"member 1 \(\.\./m1/checkpoints/best\.pt\): the file is not the "
                                         r"one the ensemble was made with \(its SHA-256 differs\)"):
        load_ensemble(tmp_path / "ens")
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "ens"), "--data", str(two_runs / "plans"),
                            "--out", str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "SHA-256 differs" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def _released_like(src: Path, out: Path, **change) -> Path:
    """``src``'s checkpoint with its model config or space record changed."""
    ck = load_checkpoint(src)
    for k, v in change.items():
        if k == "rois":
            ck["model_config"] = {**ck["model_config"], "rois": v}
        else:
            ck["space"] = {**ck["space"], k: v}
    return save_checkpoint(ck, out)


def test_members_must_share_rois_and_model_space(two_runs, tmp_path):
    rois = load_checkpoint(two_runs / "run2")["model_config"]["rois"]
    swapped = [rois[1], rois[0], *rois[2:]]  # the same ROIs in another bit order
    _released_like(two_runs / "run2", tmp_path / "order.pt", rois=swapped)
    with pytest.raises(ModelError, match=r"^model 2 .* predicts from other ROIs than member 1 .* bit order"):
        write_ensemble([two_runs / "run1", tmp_path / "order.pt"], tmp_path / "e1")
    assert not (tmp_path / "e1").exists()  # checked before anything is written
    sp = load_checkpoint(two_runs / "run2")["space"]
    # spacings no training patient of run1 had: no placement serves both
    _released_like(two_runs / "run2", tmp_path / "space.pt", spacing_min=[2 * v for v in sp["spacing_max"]],
                   spacing_max=[3 * v for v in sp["spacing_max"]])
    lo, hi = sp["spacing_min"][0], sp["spacing_max"][0]
    with pytest.raises(ModelError, match=rf"^model 2 .* another model space than member 1 \(spacing "
                                         rf"{2 * hi:.4g}-{3 * hi:.4g} mm along A->P vs {lo:.4g}-{hi:.4g} "
                                         r"mm: no spacing every member was trained on\)"):
        write_ensemble([two_runs / "run1", tmp_path / "space.pt"], tmp_path / "e2")
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), str(tmp_path / "space.pt"), "--out",
                            str(tmp_path / "e3")])
    assert r.exit_code == 2 and "another model space" in r.output and not (tmp_path / "e3").exists()
    _released_like(two_runs / "run2", tmp_path / "axes.pt", axes="LPI")
    with pytest.raises(ModelError, match=r"^model 2 .* another model space than member 1 \(axes LPI vs PLI"):
        write_ensemble([two_runs / "run1", tmp_path / "axes.pt"], tmp_path / "e4")
    _released_like(two_runs / "run2", tmp_path / "fov.pt", fov_min=[500.0, 500.0, 500.0],
                   fov_max=[600.0, 600.0, 600.0])
    with pytest.raises(ModelError, match=r"^model 3 .* another model space than members 1-2 \(field of view"):
        write_ensemble([two_runs / "run1", two_runs / "run2", tmp_path / "fov.pt"], tmp_path / "e5")


def test_cross_validation_folds_make_an_ensemble_warning_as_any_fold_would(two_runs, tmp_path):
    """Two models of one recipe trained on different patients (cross-validation folds: one placement,
    other training statistics) make an ensemble; its space keeps what any fold would refuse or warn
    of. Refused before: "another model space ... absent_rois ['PTV56', 'PTV63'] vs ['Larynx', ...]"."""
    write_cache(make_cohort(6, seed=6, size=20), tmp_path / "fold")  # lacking Larynx, Mandible, PTV56, PTV63
    Trainer(TrainConfig(data=str(tmp_path / "fold"), out=str(tmp_path / "run"), epochs=1, steps_per_epoch=3,
                        seed=3, **TINY), progress=False).fit()
    one, fold = (load_checkpoint(x)["space"] for x in (two_runs / "run1", tmp_path / "run"))
    assert one["absent_rois"] == ["PTV56", "PTV63"] and one["absent_counts"] == {"PTV56": 1, "PTV63": 2}
    assert fold["absent_rois"] == ["Larynx", "Mandible", "PTV56", "PTV63"]
    assert fold["absent_counts"] == {"Larynx": 1, "Mandible": 1, "PTV56": 2, "PTV63": 2}
    write_ensemble([two_runs / "run1", tmp_path / "run"], tmp_path / "ens")
    ens = load_model(tmp_path / "ens")
    sp = ens.space
    assert (sp.axes, sp.spacing_min, sp.spacing_max) == (one["axes"], tuple(one["spacing_min"]),
                                                         tuple(one["spacing_max"]))
    assert sp.absent_rois == ("PTV56", "PTV63")  # only what every fold's patients lacked some of
    assert dict(sp.absent_counts) == {"PTV56": 1, "PTV63": 2} and sp.absent_patients == 6
    # plans' synth_000 lacks Larynx, which every training patient of run1 had: refused as run1 refuses it
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "ens"), "--data", str(two_runs / "plans"),
                            "--out", str(tmp_path / "o"), "--format", "cache", "--no-progress"])
    assert r.exit_code == 2 and "lacks Larynx, which every patient the model was trained on had" in r.output
    e = _predict(tmp_path / "ens", two_runs / "plans", tmp_path / "e")
    a = _predict(two_runs / "run1", two_runs / "plans", tmp_path / "a")
    b = _predict(tmp_path / "run", two_runs / "plans", tmp_path / "b")
    for pid in e:
        np.testing.assert_allclose(e[pid], 0.5 * a[pid] + 0.5 * b[pid], rtol=0, atol=2e-5)


def test_ensemble_space_intersects_ranges_and_keeps_every_members_warnings():
    a = ModelSpace(spacing_min=(2.5, 2.5, 1.5), spacing_max=(5.0, 5.0, 3.0), fov_min=(300, 300, 200),
                   fov_max=(600, 600, 400), masked=False, patients=100, spacing_median=(4.0, 4.0, 2.5),
                   shape_median=(128, 128, 120), absent_rois=("SpinalCord", "Larynx", "PTV56"),
                   absent_counts={"SpinalCord": 1, "Larynx": 40, "PTV56": 10}, patients_sha="a" * 16)
    b = ModelSpace(spacing_min=(3.0, 3.0, 1.0), spacing_max=(6.0, 6.0, 2.5), fov_min=(350, 350, 150),
                   fov_max=(650, 650, 380), masked=True, patients=120, spacing_median=(3.0, 3.0, 2.0),
                   shape_median=(128, 128, 130), absent_rois=("SpinalCord", "PTV56", "Mandible"),
                   absent_counts={"SpinalCord": 30, "PTV56": 3, "Mandible": 5}, absent_patients=150,
                   patients_sha="b" * 16)
    old = ModelSpace(patients=80, absent_rois=None, absent_counts=None, shape_median=None)
    e = ensemble_space([a, b])
    assert (e.spacing_min, e.spacing_max) == ((3.0, 3.0, 1.5), (5.0, 5.0, 2.5))
    assert (e.fov_min, e.fov_max) == ((350, 350, 200), (600, 600, 380))
    assert e.spacing_median == (3.5, 3.5, 2.25) and e.shape_median == (128, 128, 125)
    assert e.masked and e.patients == 120 and e.patients_sha is None
    assert e.absent_rois == ("SpinalCord", "PTV56")  # Larynx / Mandible: every patient of b / a had it
    assert dict(e.absent_counts) == {"SpinalCord": 1, "PTV56": 3} and e.absent_of == 150
    # rarely missing for a member (SpinalCord: 1 of a's 100; PTV56: 3 of b's 150) -> for the ensemble
    # (Mandible, rarely missing for b, every patient of a had: refused without --allow-missing-rois)
    assert set(e.rarely_absent()) == {"SpinalCord", "PTV56"}
    assert (set(a.rarely_absent()) | set(b.rarely_absent())) - set(e.rarely_absent()) == {"Mandible"}
    # a record made before the list was kept does not widen what may be missing; nor its missing median
    f = ensemble_space([a, old])
    assert f.absent_rois == a.absent_rois and dict(f.absent_counts) == dict(a.absent_counts)
    assert f.shape_median is None and f.patients == 100
    assert ensemble_space([old, old]).absent_rois is None
    assert ensemble_space([a, a]) == a  # one recipe on the same patients: the record itself


def _spec(tmp_path: Path, two_runs: Path, **edit) -> Path:
    d = tmp_path / "ens"
    if not d.exists():
        write_ensemble([two_runs / "run1", two_runs / "run2"], d)
    obj = json.loads((d / ENSEMBLE_FILE).read_text())
    for k, v in edit.items():
        if k.startswith("m0_"):
            obj["members"][0][k[3:]] = v
        else:
            obj[k] = v
    (d / ENSEMBLE_FILE).write_text(json.dumps(obj))
    return d


@pytest.mark.parametrize("edit, message", [
    ({"format": "dosepred-model"}, r"not a dosepred ensemble"),
    ({"version": 2}, r"ensemble version 2 is not one this dosepred reads"),
    ({"members": []}, r"\"members\" must list at least two models, got 0"),
    ({"m0_weight": 0}, r"member 1: weight must be a positive finite number, got 0"),
    ({"m0_weight": "1"}, r"member 1: weight must be a positive finite number"),
    ({"m0_sha256": "abc"}, r"member 1: \"sha256\" must be the 64 hex digits"),
    ({"m0_model": "../nothing/model.pt"}, r"member 1 \(\.\./nothing/model\.pt\): no such model file"),
])
def test_a_malformed_ensemble_is_one_clear_error(two_runs, tmp_path, edit, message):
    d = _spec(tmp_path, two_runs, **edit)
    with pytest.raises(ModelError, match=message):
        load_model(d)
    r = runner.invoke(app, ["predict", "--model", str(d), "--data", str(two_runs / "plans"), "--out",
                            str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "Traceback" not in r.output, r.output
    assert str(d / ENSEMBLE_FILE) in r.output


def test_broken_json_and_nested_ensembles(two_runs, tmp_path):
    d = _spec(tmp_path, two_runs)
    (d / ENSEMBLE_FILE).write_text("{not json")
    with pytest.raises(ModelError, match=r"not a readable ensemble file"):
        read_ensemble(d)
    inner = tmp_path / "inner"
    write_ensemble([two_runs / "run1", two_runs / "run2"], inner)
    with pytest.raises(ModelError, match=r"model 2 .* is an ensemble itself: members must be single models"):
        write_ensemble([two_runs / "run1", inner], tmp_path / "outer")
    obj = json.loads((inner / ENSEMBLE_FILE).read_text())  # written by hand: refused when loaded
    obj["members"][1]["model"] = "../inner"
    (tmp_path / "outer2").mkdir()
    (tmp_path / "outer2" / ENSEMBLE_FILE).write_text(json.dumps(obj))
    with pytest.raises(ModelError, match=r"member 2 \(\.\./inner\) is an ensemble itself"):
        load_model(tmp_path / "outer2")


def test_a_model_given_twice_is_refused(two_runs, tmp_path):
    best = two_runs / "run1" / "checkpoints" / "best.pt"
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), str(best), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "model 2" in r.output and "is the file of model 1" in r.output, r.output
    assert not (tmp_path / "e").exists()


def test_a_copy_of_a_member_is_refused(two_runs, tmp_path):
    """Two files with one model's weights (a copy, or a run's last.pt and best.pt of its best epoch):
    the 'ensemble' would predict as that model alone, under an ensemble's name."""
    shutil.copytree(two_runs / "run1", tmp_path / "copy")
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), str(tmp_path / "copy"), "--out",
                            str(tmp_path / "e")])
    assert r.exit_code == 2 and r.output.count("error:") == 1, r.output
    assert "model 2" in r.output and "the same weights as model 1" in r.output, r.output
    assert not (tmp_path / "e").exists()
    d = _spec(tmp_path, two_runs)  # and written by hand: the second member's file is a copy of the first
    obj = json.loads((d / ENSEMBLE_FILE).read_text())
    dup = tmp_path / "dup.pt"
    shutil.copy(d / obj["members"][0]["model"], dup)
    obj["members"][1] = {**obj["members"][0], "model": str(dup)}
    (d / ENSEMBLE_FILE).write_text(json.dumps(obj))
    with pytest.raises(ModelError, match=r"member 2 .* has the same weights as member 1"):
        load_model(d)


@pytest.mark.parametrize("args, message", [
    (["--weights", "1,x"], "--weights must be comma-separated numbers"),
    (["--weights", "1"], "1 weights for 2 models"),
    (["--weights", "1,-2"], "weight must be a positive finite number, got -2.0"),
])
def test_ensemble_cli_options(two_runs, tmp_path, args, message):
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), str(two_runs / "run2"), "--out",
                            str(tmp_path / "e"), *args])
    assert r.exit_code == 2 and message in r.output and r.output.count("error:") == 1, r.output
    assert not (tmp_path / "e").exists()


def test_ensemble_cli_needs_two_models_and_overwrite(two_runs, tmp_path):
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "at least two models, got 1" in r.output
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), str(two_runs / "run2"), "--out",
                            str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    before = (tmp_path / "e" / ENSEMBLE_FILE).read_text()
    r = runner.invoke(app, ["ensemble", str(two_runs / "run2"), str(two_runs / "run1"), "--out",
                            str(tmp_path / "e")])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (tmp_path / "e" / ENSEMBLE_FILE).read_text() == before
    r = runner.invoke(app, ["ensemble", str(two_runs / "run2"), str(two_runs / "run1"), "--out",
                            str(tmp_path / "e"), "--overwrite"])
    assert r.exit_code == 0 and (tmp_path / "e" / ENSEMBLE_FILE).read_text() != before


def test_commands_that_need_one_network_refuse_an_ensemble(two_runs, tmp_path):
    write_ensemble([two_runs / "run1", two_runs / "run2"], tmp_path / "ens")
    with pytest.raises(ModelError, match=r"is an ensemble of 2 models .* this needs a single model"):
        load_checkpoint(tmp_path / "ens")
    r = runner.invoke(app, ["export-model", str(tmp_path / "ens"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "is an ensemble of 2 models" in r.output and not (tmp_path / "x").exists()
    r = runner.invoke(app, ["train", "--init", str(tmp_path / "ens"), "--data", str(two_runs / "train"),
                            "--out", str(tmp_path / "r"), "--epochs", "1", "--steps-per-epoch", "1",
                            "--patch", "16", "--no-progress"])
    assert r.exit_code == 2 and "is an ensemble of 2 models" in r.output and "Traceback" not in r.output
    with pytest.raises(ModelError, match="no single forward pass"):
        load_model(tmp_path / "ens")(torch.zeros(1))


def test_the_released_ensemble_names_the_released_models():
    """models/openkbp-ensemble: the released MAE+CDM and MAE models at equal weights, their files as
    released (loading checks every SHA-256), with a calibration for plan QA made for this ensemble file."""
    import hashlib

    d = MODELS / "openkbp-ensemble"
    spec = read_ensemble(d)
    assert [(m.model, m.weight) for m in spec.members] == [("../openkbp-mae-cdm/model.pt", 1.0),
                                                          ("../openkbp-mae/model.pt", 1.0)]
    ens = load_model(d)
    assert isinstance(ens, EnsembleModel) and len(ens.members) == 2
    cal = json.loads((d / "calibration.json").read_text())
    assert cal["model_sha256"] == hashlib.sha256((d / ENSEMBLE_FILE).read_bytes()).hexdigest()


def test_weights_near_the_float_limit_and_beyond(two_runs, tmp_path):
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), str(two_runs / "run2"), "--weights",
                            "1e308,1e308", "--out", str(tmp_path / "big")])
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "big").weights == (0.5, 0.5)  # not 0 / inf
    assert "weight 0.5 " in (tmp_path / "big" / "README.md").read_text()
    d = _spec(tmp_path, two_runs)
    huge = '"weight": 1' + "0" * 400
    (d / ENSEMBLE_FILE).write_text((d / ENSEMBLE_FILE).read_text().replace('"weight": 1.0', huge, 1))
    with pytest.raises(ModelError, match=r"member 1: weight must be a positive finite number, got 1000"):
        read_ensemble(d)


def test_a_member_listed_twice_by_hand_is_refused(two_runs, tmp_path):
    d = _spec(tmp_path, two_runs)
    obj = json.loads((d / ENSEMBLE_FILE).read_text())
    obj["members"][1] = dict(obj["members"][0])
    (d / ENSEMBLE_FILE).write_text(json.dumps(obj))
    with pytest.raises(ModelError, match=r"member 2 .* is the file of member 1"):
        load_model(d)


def test_out_given_as_a_link_and_a_folder_with_both_files(two_runs, tmp_path):
    (tmp_path / "deep" / "a" / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "deep" / "a" / "b")
    r = runner.invoke(app, ["ensemble", str(two_runs / "run1"), str(two_runs / "run2"), "--out",
                            str(tmp_path / "link"), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert isinstance(load_model(tmp_path / "link"), EnsembleModel)  # the paths hold where the folder is
    both = tmp_path / "both"
    shutil.copytree(tmp_path / "link", both)
    shutil.copy(two_runs / "run1" / "checkpoints" / "best.pt", both / "model.pt")
    with pytest.raises(ModelError, match=r"holds both model\.pt and ensemble\.json"):
        load_model(both)


def test_qa_with_an_ensemble_checks_the_members_mean_and_its_own_calibration(two_runs, tmp_path):
    """calibrate + qa on an ensemble: each plan's predicted Dmean is the Dmean of the members' mean dose
    (each member's flipped prediction from `predict`, averaged and read over the ROI's mask here); an
    ensemble.json changed after calibrating makes QA refuse the calibration."""
    write_cache(make_cohort(12, seed=5, size=20), tmp_path / "plans")  # every ROI all 6 training patients had
    write_ensemble([two_runs / "run1", two_runs / "run2"], tmp_path / "ens")
    r = runner.invoke(app, ["calibrate", "--model", str(tmp_path / "ens"), "--data", str(tmp_path / "plans"),
                            "--protocol", "openkbp-clinical", "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["qa", "--model", str(tmp_path / "ens"), "--plans", str(tmp_path / "plans"),
                            "--protocol", "openkbp-clinical", "--out", str(tmp_path / "qa"), "--no-report",
                            "--json", str(tmp_path / "qa.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    a = _predict(two_runs / "run1", tmp_path / "plans", tmp_path / "a")
    b = _predict(two_runs / "run2", tmp_path / "plans", tmp_path / "b")
    plans = Cache.open(tmp_path / "plans")
    checked = 0
    for pq in json.loads((tmp_path / "qa.json").read_text())["patients"]:
        p = plans.load(pq["id"])
        mean = 0.5 * a[pq["id"]] + 0.5 * b[pq["id"]]
        for c in pq["criteria"]:
            if c["metric"] == "Dmean" and c["predicted"] is not None:
                assert c["predicted"] == pytest.approx(float(mean[p.mask(c["roi"])].mean()), abs=1e-3)
                checked += 1
    assert checked >= 12
    spec = tmp_path / "ens" / ENSEMBLE_FILE
    spec.write_text(spec.read_text().replace('"weight": 1.0', '"weight": 2.0', 1))
    r = runner.invoke(app, ["qa", "--model", str(tmp_path / "ens"), "--plans", str(tmp_path / "plans"),
                            "--protocol", "openkbp-clinical", "--out", str(tmp_path / "qa2"),
                            "--no-progress"])
    assert r.exit_code == 2 and "computed for another model file" in r.output, r.output
