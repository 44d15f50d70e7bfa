"""Guards of `train` found by running it as a careless user would: a loss that is always 0 (or has a
negative weight) is one clear error before any work, and validating on the training patients (--val
the --data cache) is one warning line."""

import json
import warnings

import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.errors import InputError
from dosepred.losses.spec import parse_spec
from dosepred.training import TrainConfig
from dosepred.training.trainer import Trainer, ValidatesOnTrainingWarning

TINY = dict(patch=(16, 16, 16), base=4, levels=2, res_units=1, batch=1, threads=1)


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("train-guards") / "c"
    assert cli("data", "synth", "--patients", "2", "--size", "16", "--out", out).exit_code == 0
    return out


@pytest.mark.parametrize("spec", ["0*mae", "0*mae+0.0*dvh", "0e3*mse"])
def test_a_loss_whose_every_weight_is_zero_is_refused(cache, tmp_path, spec):
    # was: trained with an identically zero loss, exit 0, "loss 0.0000"
    r = cli("train", "--data", cache, "--out", tmp_path / "r", "--loss", spec, "--epochs", "1",
            "--no-progress")
    assert r.exit_code == 2, r.output
    assert "every term has weight 0" in r.output and spec in r.output
    assert "Traceback" not in r.output and r.output.count("error:") == 1
    assert not (tmp_path / "r").exists()


def test_negative_and_infinite_weights_are_refused_zero_terms_beside_others_are_kept():
    with pytest.raises(InputError, match="negative weight"):
        parse_spec("mae+-0.5*dvh")
    with pytest.raises(InputError, match="finite"):
        parse_spec("1e999*mae")
    assert [t.weight for t in parse_spec("mae+0*cdm")] == [1.0, 0.0]  # cdm logged, not trained on
    with pytest.raises(InputError, match="every term has weight 0"):
        TrainConfig(loss="0*mae")


def test_validating_on_the_training_cache_warns_once(cache, tmp_path):
    cfg = TrainConfig(data=str(cache), val=str(cache.parent / "." / cache.name), out=str(tmp_path / "r"),
                      **TINY)
    with pytest.warns(ValidatesOnTrainingWarning, match="is the training cache and 2 of the 2 validation "
                      "patients are trained on: validation scores"):
        Trainer(cfg, progress=False).setup_data()


def test_disjoint_splits_of_one_cache_do_not_warn(cache, tmp_path):
    from dosepred.io.cache import Cache

    ids = list(Cache.open(cache).ids)
    split = tmp_path / "s.json"
    split.write_text(json.dumps({"splits": {"train": ids[:1], "val": ids[1:]}}))
    cfg = TrainConfig(data=str(cache), val=str(cache), out=str(tmp_path / "r"), train_split=f"{split}:train",
                      val_split=f"{split}:val", **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidatesOnTrainingWarning)
        Trainer(cfg, progress=False).setup_data()


def test_cli_prints_the_warning_as_one_line(cache, tmp_path):
    r = cli("train", "--data", cache, "--val", cache, "--out", tmp_path / "r", "--epochs", "1",
            "--steps-per-epoch", "1", "--patch", "16", "--base", "4", "--levels", "2", "--threads", "1",
            "--no-progress")
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if "is the training cache" in x]
    assert len(lines) == 1 and lines[0].startswith("warning: validation cache")


def test_a_patch_whose_deepest_level_is_one_voxel_is_one_error(cache, tmp_path):
    """A crop whose deepest U-Net level is a single voxel (``--patch 8`` at 4 levels; ``--patch 32``
    fine-tuning a released model, whose coarse branch makes 6 levels) passed every check, then ended
    in a traceback in the first step ("internal error ... Expected more than 1 spatial element"):
    instance normalisation cannot normalise one voxel. One error line naming the patch and the size that
    works, nothing written; a patch whose deepest level holds two voxels along one axis trains."""
    import torch

    from dosepred.models import ModelConfig, ModelError, build_model

    r = cli("train", "--data", cache, "--out", tmp_path / "r", "--patch", "8", "--levels", "4", "--base", "2",
            "--epochs", "1", "--steps-per-epoch", "1", "--threads", "1", "--no-progress")
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == (
        "error: patch (8, 8, 8) is too small for a U-Net of 4 resolution levels: its deepest level would "
        "hold one voxel, which instance normalisation cannot normalise; give a patch of at least 16 along "
        "one axis"), r.output
    assert "Traceback" not in r.output and not (tmp_path / "r").exists()
    # a fine-tune of a model with a coarse branch (2 levels + 1 below them: a 4 patch is 1 voxel deep)
    Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "coarse"), epochs=1, steps_per_epoch=1,
                        coarse=[4, 4], **{**TINY, "res_units": 0}), progress=False).fit()
    r = cli("train", "--init", tmp_path / "coarse", "--data", cache, "--out", tmp_path / "ft", "--patch", "4",
            "--epochs", "1", "--steps-per-epoch", "1", "--threads", "1", "--no-progress")
    assert r.exit_code == 2, r.output
    assert "error: patch (4, 4, 4) is too small for a U-Net of 3 resolution levels (2 and a coarse " \
           "branch's 1)" in r.output and "at least 8 along one axis" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "ft").exists()
    # two voxels at the bottom (16 x 16 x 8 at 4 levels: 2 x 2 x 1) train
    net = build_model(ModelConfig(base=2, levels=4, res_units=0, patch=(16, 16, 8))).train()
    net(torch.zeros(1, 1, 16, 16, 8), torch.zeros(1, 16, 16, 8, dtype=torch.int32),
        torch.ones(1, 1, 16, 16, 8)).sum().backward()
    with pytest.raises(ModelError, match="too small"):
        ModelConfig(base=2, levels=4, res_units=0, patch=(8, 8, 8))


def _protocol(tmp_path, criteria):
    p = tmp_path / "protocol.json"
    p.write_text(json.dumps({"name": "clinic", "prescriptions": {"PTV70": 70, "PTV63": 63, "PTV56": 56},
                             "criteria": criteria}))
    return p


V_TARGETS = [{"roi": t, "metric": "V95%", "limit": 95, "direction": ">="}
             for t in ("PTV70", "PTV63", "PTV56")]
V_OARS = [{"roi": "SpinalCord", "metric": "V45Gy", "limit": 1, "direction": "<="},
          {"roi": "LeftParotid", "metric": "V30Gy", "limit": 50, "direction": "<="}]


@pytest.mark.parametrize("select, criteria, why", [
    ("ptv", V_TARGETS + [{"roi": "SpinalCord", "metric": "D0.1cc", "limit": 45, "direction": "<="}],
     "no dose metric (D-metric or Dmean) of a target"),
    ("oar", [{"roi": "PTV70", "metric": "D95%", "limit": 95, "direction": ">="}] + V_OARS,
     "no dose metric (D-metric or Dmean) of an OAR"),
])
def test_a_selection_score_the_validation_patients_cannot_have_is_refused(cache, tmp_path, select, criteria,
                                                                          why):
    """A clinic's protocol whose target (or OAR) criteria are all V-metrics gives no PTV (OAR) score:
    validation wrote ``nan`` for it every epoch, and best.pt, chosen by ``--select ptv``, stayed the
    first validated epoch (NaN is never lower than NaN) while the run said ``best epoch 1 (ptv nan)``.
    Now one error line before any work, nothing written; ``--select dose`` trains."""
    proto = _protocol(tmp_path, criteria)
    base = ("train", "--data", cache, "--val", cache, "--protocol", proto, "--epochs", "2",
            "--val-every", "1", "--steps-per-epoch", "1", "--patch", "16", "--base", "4", "--levels", "2",
            "--threads", "1", "--no-progress")
    r = cli(*base, "--out", tmp_path / "r", "--select", select)
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith(f"error: --select {select}: ") and why in last and str(proto) in last, r.output
    assert "Traceback" not in r.output and r.output.count("error:") == 1
    assert not (tmp_path / "r").exists()
    r = cli(*base, "--out", tmp_path / "ok", "--select", "dose")
    assert r.exit_code == 0, r.output
    import torch

    best = torch.load(tmp_path / "ok" / "checkpoints" / "best.pt", weights_only=False)["best"]
    assert best["select"] == "dose" and best["value"] == best["value"]  # a number, not NaN


def test_a_dvh_selection_on_rois_named_otherwise_than_openkbp_scores_them(cache, tmp_path):
    """The DVH score averaged OpenKBP's metrics of the ROIs named as OpenKBP names them: on a clinic's
    cache named otherwise (``Cord``, ``PTV66``) it was NaN every epoch (then refused before any work).
    It now takes OpenKBP's metrics of every OAR and target (tests/test_evaluation.py), so the default
    ``--select dvh`` picks best.pt by the cord's and PTV66's metrics; ``--select ptv`` trains too."""
    from dosepred.io.cache import Cache, write_cache
    from dosepred.patient import Patient, Roi, RoiSet

    rename = {"SpinalCord": "Cord", "PTV70": "PTV66"}
    rs = RoiSet((Roi("Cord"), Roi("PTV66", "target", 66.0)))
    pats = [Patient.from_masks(p.id, p.ct, {rename[n]: p.mask(n) for n in rename}, rs, p.spacing,
                               possible_dose_mask=p.possible_dose_mask, dose=p.dose * 66 / 70,
                               geometry=p.geometry) for p in Cache.open(cache).patients()]
    clinic = tmp_path / "clinic"
    write_cache(pats, clinic)
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps({"name": "clinic", "criteria": [
        {"roi": "PTV66", "metric": "D95%", "limit": 95, "limit_unit": "%Rx", "direction": ">="}]}))
    kw = dict(data=str(clinic), val=str(clinic), protocol=str(proto), epochs=1, steps_per_epoch=1,
              **{**TINY, "res_units": 0})
    best = Trainer(TrainConfig(out=str(tmp_path / "r"), **kw), progress=False).fit()["best"]
    assert best["select"] == "dvh" and best["dvh_score"] == best["value"] and best["value"] >= 0
    best = Trainer(TrainConfig(out=str(tmp_path / "ok"), select="ptv", **kw), progress=False).fit()["best"]
    assert best["ptv_score"] == best["value"] and best["value"] >= 0


def test_a_patient_without_any_target_is_refused_before_training(cache, tmp_path):
    """A training patient with none of the cache's targets contoured (its PTVs under a name nobody
    mapped) was trained on, its plan dose learnt from an empty prescription channel, while predict
    refuses such a patient; as a validation patient it stopped the run at the first validation, epochs
    later. Now one error line naming it before any work, nothing written."""
    from dosepred.io.cache import Cache, write_cache
    from dosepred.patient import Patient

    pats = list(Cache.open(cache).patients())
    p = pats[0]
    bare = Patient.from_masks("no_ptv", p.ct, {n: p.mask(n) for n in p.present_rois
                                               if p.roi_set[n].kind != "target"}, p.roi_set, p.spacing,
                              possible_dose_mask=p.possible_dose_mask, dose=p.dose, geometry=p.geometry)
    assert not any(bare.mask(t).any() for t in p.roi_set.targets)
    messy = tmp_path / "messy"
    write_cache([*pats, bare], messy)
    split = tmp_path / "s.json"
    ids = [q.id for q in pats]
    split.write_text(json.dumps({"splits": {"train": ids, "val": ["no_ptv"]}}))
    base = ("--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "--base", "4", "--levels", "2",
            "--threads", "1", "--no-progress")
    for what, args in (("training", ()), ("validation", ("--split", f"{split}:train", "--val", messy,
                                                          "--val-split", f"{split}:val"))):
        r = cli("train", "--data", messy, *args, "--out", tmp_path / what, *base)
        assert r.exit_code == 2, r.output
        last = r.output.strip().splitlines()[-1]
        assert last.startswith(f"error: {what} cache {messy}: patient no_ptv has none of its targets "
                               "(PTV56, PTV63, PTV70) contoured"), r.output
        assert "Traceback" not in r.output and not (tmp_path / what).exists()
    r = cli("train", "--data", messy, "--split", f"{split}:train", "--out", tmp_path / "ok", *base)
    assert r.exit_code == 0, r.output


def test_a_cache_whose_targets_have_no_prescription_is_refused(cache, tmp_path):
    """Targets reach the network only through the prescription channel: on a cache whose targets carry
    no prescription (a clinic's PTV_High imported without an ROI map) a new model trained, and then
    predicted, without ever seeing where the targets are, without a word (a fine-tune, --init, was
    already refused). Now one error line naming the cache and its targets, nothing written."""
    from dosepred.io.cache import Cache, write_cache
    from dosepred.patient import Patient, Roi, RoiSet

    src = Cache.open(cache)
    rs = RoiSet(tuple(Roi(r.name, r.kind) for r in src.roi_set))
    assert not any(r.prescription for r in rs) and rs.targets
    norx = tmp_path / "norx"
    write_cache([Patient.from_masks(p.id, p.ct, {n: p.mask(n) for n in p.present_rois}, rs, p.spacing,
                                    possible_dose_mask=p.possible_dose_mask, dose=p.dose, geometry=p.geometry)
                 for p in src.patients()], norx)
    r = cli("train", "--data", norx, "--out", tmp_path / "r", "--epochs", "1", "--steps-per-epoch", "1",
            "--patch", "16", "--base", "4", "--levels", "2", "--threads", "1", "--no-progress")
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == (
        f"error: training cache {norx}: its targets PTV56, PTV63, PTV70 have no prescription, so the model's "
        "prescription channel would be empty and it would not see where the targets are; give each target "
        "its prescription (kind and Gy) with data import-dicom --roi-map"), r.output
    assert "Traceback" not in r.output and not (tmp_path / "r").exists()
