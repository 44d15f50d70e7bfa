"""Fine-tuning a released model on a clinic's ROI set (dosepred.models.transfer, ``train --init``).

The released model here is a small random U-Net with OpenKBP's ROIs (its weights perturbed, so no
weight is zero by construction). Every expected prediction is computed independently: the released
model's network run on input channels assembled by hand in numpy from the masks, in the released
model's channel order ([CT, Rx / 70, its OARs, mask]), with the channels the clinic lacks left at zero.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dosepred.errors import InputError
from dosepred.io.cache import write_cache
from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import MODEL_FORMAT, export_model, load_checkpoint, save_checkpoint
from dosepred.models.space import ModelSpace
from dosepred.models.transfer import (
    RoiTransfer,
    TransferError,
    input_keys,
    match_key,
    plan_transfer,
    transfer_checkpoint,
    transfer_state,
)
from dosepred.patient import Patient, Roi, RoiSet
from dosepred.synth import make_cohort
from dosepred.training import TrainConfig
from dosepred.training.trainer import Trainer
from tiny_models import ready

OKBP = RoiSet.openkbp()
#: the clinic's names of the OpenKBP organs it contours (TG-263 spellings); it lacks Esophagus, Larynx
RENAME = {"Brainstem": "BrainStem", "SpinalCord": "SpinalCord", "RightParotid": "Parotid_R",
          "LeftParotid": "Parotid_L", "Mandible": "Bone_Mandible"}
LEVELS = {"PTV70": ("PTV_66", 66.0), "PTV63": ("PTV_60", 60.0), "PTV56": ("PTV_54", 54.0)}
#: the clinic's ROI set: its organs in its own order, a new OAR, targets at 66/60/54 Gy, a couch
CLINIC = RoiSet((Roi("Parotid_L"), Roi("Glnd_Submand_L"), Roi("Bone_Mandible"), Roi("Parotid_R"),
                 Roi("SpinalCord"), Roi("BrainStem"), Roi("PTV_66", "target", 66.0),
                 Roi("PTV_60", "target", 60.0), Roi("PTV_54", "target", 54.0), Roi("Couch", "other")))
SIZE = 16
TINY = dict(base=4, levels=2, res_units=1, patch=(16, 16, 16))


def released_model(seed=0, **arch) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model(ModelConfig(rois=OKBP.to_dicts(), **{**TINY, **arch}))
    with torch.no_grad():
        for q in m.parameters():
            q.add_(0.05 * torch.randn_like(q))
    return m.eval()


def save_released(model, path):
    save_checkpoint({"format": MODEL_FORMAT, "model_config": model.config.to_dict(),
                     "model": model.state_dict()}, path)
    return path


def clinic_patient(p: Patient, rois: RoiSet = CLINIC, extra: np.ndarray | None = None) -> Patient:
    """An OpenKBP-named synthetic patient as the clinic contours it (``rois``'s names)."""
    masks = {}
    for n in p.roi_set.names:
        new = RENAME.get(n) or (LEVELS[n][0] if n in LEVELS else None)
        if new in rois and n not in p.missing_rois:
            masks[new] = p.mask(n)
    if "Glnd_Submand_L" in rois:
        sub = np.zeros(p.shape, bool) if extra is None else extra
        if extra is None:
            sub[3:8, 9:14, 5:10] = True
        masks["Glnd_Submand_L"] = sub
    if "Couch" in rois:
        couch = np.zeros(p.shape, bool)
        couch[-2:] = True
        masks["Couch"] = couch
    return Patient.from_masks(p.id, p.ct, masks, rois, p.spacing, p.possible_dose_mask, p.dose,
                              dict(p.meta), p.geometry)


def hand_input(p: Patient, oars: list[str | None], rx: dict[str, float]) -> torch.Tensor:
    """Input channels assembled in numpy: CT, Rx map / 70 Gy, one channel per entry of ``oars`` (the
    patient's ROI of that name, zeros for None), the possible-dose mask."""
    ct = np.clip(p.ct.astype(np.float64), -1000, 2000) / 1000
    rxmap = np.zeros(p.shape)
    for n, v in rx.items():
        rxmap = np.maximum(rxmap, p.mask(n) * v)
    chans = [ct, rxmap / 70.0] + [np.zeros(p.shape) if n is None else p.mask(n).astype(float) for n in oars]
    chans.append(p.possible_dose_mask.astype(float))
    return torch.from_numpy(np.stack(chans)[None].astype(np.float32))


def run(model, p: Patient) -> torch.Tensor:
    from dosepred.roi import to_torch

    with torch.no_grad():
        return model(torch.from_numpy(p.ct[None, None].astype(np.float32)), to_torch(p.roi_codes)[None],
                     torch.from_numpy(p.possible_dose_mask[None, None]))


def transferred(released, rois: RoiSet = CLINIC):
    tr = plan_transfer(released.config.roi_set, rois, "clinic")
    new = build_model(ModelConfig.from_dict({**released.config.to_dict(), "rois": rois.to_dicts()}))
    new.load_state_dict(transfer_state(released.state_dict(), new, tr))
    return new.eval(), tr


@pytest.fixture(scope="module")
def synth():
    return make_cohort(4, seed=3, size=SIZE)


# --------------------------------------------------------------------------------- the mapping

def test_match_key_joins_tg263_and_openkbp_names():
    for a, b in [("Parotid_L", "LeftParotid"), ("Parotid_R", "RightParotid"), ("Bone_Mandible", "Mandible"),
                 ("BrainStem", "Brainstem"), ("Spinal_Cord", "SpinalCord"), ("Glnd_Submand_L",
                                                                              "LeftSubmandibular"),
                 ("my organ", "My_Organ")]:
        assert match_key(a) == match_key(b), (a, b)
    assert match_key("Parotid_L") != match_key("Parotid_R")


def test_plan_names_matched_new_dropped_and_prescriptions():
    tr = plan_transfer(OKBP, CLINIC, "clinic")
    assert tr.matched == {"Parotid_L": "LeftParotid", "Bone_Mandible": "Mandible",
                          "Parotid_R": "RightParotid", "SpinalCord": "SpinalCord", "BrainStem": "Brainstem"}
    assert tr.new == ("Glnd_Submand_L",) and tr.dropped == ("Esophagus", "Larynx")
    assert tr.data_targets == {"PTV_66": 66.0, "PTV_60": 60.0, "PTV_54": 54.0}
    assert tr.model_targets == {"PTV56": 56.0, "PTV63": 63.0, "PTV70": 70.0}
    # model channels: 0 CT, 1 Rx, 2.. Brainstem, SpinalCord, RightParotid, LeftParotid, Esophagus,
    # Larynx, Mandible, 9 mask; clinic OARs in its order: Parotid_L, Submand, Mandible, Parotid_R, Cord, Stem
    assert tr.channel_sources() == [0, 1, 5, None, 8, 4, 3, 2, 9]
    assert any("Esophagus, Larynx" in n and "dropped" in n for n in tr.notes)
    assert any("Glnd_Submand_L" in n and "zero" in n for n in tr.notes)
    assert RoiTransfer.from_dict(json.loads(json.dumps(tr.to_dict()))) == tr
    assert plan_transfer(OKBP, OKBP).identity and not tr.identity


def test_input_keys_are_the_first_layers():
    one = input_keys(ModelConfig(rois=OKBP.to_dicts(), **TINY))
    assert one == {"net.model.0.conv.unit0.conv.weight": 10, "net.model.0.residual.weight": 10}
    two = input_keys(ModelConfig(rois=OKBP.to_dicts(), **{**TINY, "res_units": 0, "stages": 2}))
    assert two == {"net.model.0.conv.weight": 10, "refine.model.0.conv.weight": 11}


# ----------------------------------------------------------------- predictions, independently

def test_new_oar_channel_starts_at_zero_same_prediction(synth):
    released = released_model()
    new, tr = transferred(released)
    for name in input_keys(new.config):
        w = new.state_dict()[name]
        assert torch.all(w[:, 3] == 0) and w[:, 3].numel() > 0  # Glnd_Submand_L, channel 3
    p = clinic_patient(synth[0])
    assert p.mask("Glnd_Submand_L").sum() > 0
    got = run(new, p)
    # the released model on its own channels: the clinic's organs in place, Esophagus and Larynx
    # absent, the new gland nowhere, the clinic's prescriptions
    order = ["BrainStem", "SpinalCord", "Parotid_R", "Parotid_L", None, None, "Bone_Mandible"]
    with torch.no_grad():
        want = released.from_input(hand_input(p, order, {"PTV_66": 66, "PTV_60": 60, "PTV_54": 54}))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # the gland makes no difference at the start
    no_gland = clinic_patient(synth[0], extra=np.zeros(p.shape, bool))
    torch.testing.assert_close(run(new, no_gland), got, rtol=1e-5, atol=1e-4)
    # ... but training reaches it: its first-layer weights get a gradient
    new.train()
    from dosepred.roi import to_torch

    out = new(torch.from_numpy(p.ct[None, None].astype(np.float32)), to_torch(p.roi_codes)[None],
              torch.from_numpy(p.possible_dose_mask[None, None]))
    out.mean().backward()
    g = new.net.model[0].conv.unit0.conv.weight.grad
    assert g[:, 3].abs().sum() > 0


def test_dropped_oars_equal_the_released_model_without_them(synth):
    released = released_model(1)
    rois = RoiSet(tuple(r for r in CLINIC if r.name != "Glnd_Submand_L"))
    new, tr = transferred(released, rois)
    assert tr.dropped == ("Esophagus", "Larynx") and tr.new == ()
    assert new.config.in_channels == released.config.in_channels - 2
    src = synth[1]
    assert src.mask("Esophagus").sum() > 0 and src.mask("Larynx").sum() > 0
    p = clinic_patient(src, rois)
    got = run(new, p)
    rx = {"PTV_66": 66, "PTV_60": 60, "PTV_54": 54}
    order = ["BrainStem", "SpinalCord", "Parotid_R", "Parotid_L", None, None, "Bone_Mandible"]
    with torch.no_grad():
        want = released.from_input(hand_input(p, order, rx))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # the released model did read those channels: with them present its prediction differs
    with_them = hand_input(p, order, rx)
    with_them[0, 6] = torch.from_numpy(src.mask("Esophagus").astype(np.float32))
    with_them[0, 7] = torch.from_numpy(src.mask("Larynx").astype(np.float32))
    with torch.no_grad():
        assert (released.from_input(with_them) - want).abs().max() > 1e-3


@pytest.mark.parametrize("levels", [{"PTV_66": 66.0, "PTV_60": 60.0, "PTV_54": 54.0}, {"PTV_60": 60.0}])
def test_prescriptions_of_other_levels_fill_the_rx_channel(synth, levels):
    released = released_model(2)
    rois = RoiSet(tuple(r for r in CLINIC if r.kind != "target" or r.name in levels))
    rois = RoiSet(tuple(Roi(r.name, r.kind, levels.get(r.name, r.prescription)) for r in rois))
    new, _ = transferred(released, rois)
    p = clinic_patient(synth[2], rois)
    from dosepred.roi import to_torch

    x = new.assemble(torch.from_numpy(p.ct[None, None].astype(np.float32)), to_torch(p.roi_codes)[None],
                     torch.from_numpy(p.possible_dose_mask[None, None]))
    want = np.zeros(p.shape)
    for n, v in levels.items():
        want = np.maximum(want, p.mask(n) * v)
    assert want.max() == max(levels.values())
    np.testing.assert_allclose(x[0, 1].numpy(), want / 70.0, rtol=1e-6)
    order = ["BrainStem", "SpinalCord", "Parotid_R", "Parotid_L", None, None, "Bone_Mandible"]
    with torch.no_grad():
        torch.testing.assert_close(run(new, p), released.from_input(hand_input(p, order, levels)),
                                   rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed, arch", [
    (3, {"res_units": 0, "stages": 2}),  # the second stage reads the input channels and the dose
    (4, {"res_units": 0, "head": 3}),  # a head reads the input channels and the U-Net's 1 + 3 outputs
    (4, {"res_units": 1, "head": 2}),
])
def test_weights_reading_more_than_the_input_channels_transfer(synth, seed, arch):
    """A second stage and a full-resolution head read the input channels and more after them: the
    input part is mapped like the U-Net's first layer, what follows is kept."""
    released = released_model(seed, **arch)
    new, _ = transferred(released)
    p = clinic_patient(synth[3])
    order = ["BrainStem", "SpinalCord", "Parotid_R", "Parotid_L", None, None, "Bone_Mandible"]
    with torch.no_grad():
        want = released.from_input(hand_input(p, order, {"PTV_66": 66, "PTV_60": 60, "PTV_54": 54}))
    torch.testing.assert_close(run(new, p), want, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------ errors

def test_what_cannot_be_mapped_is_a_clear_error():
    oars = tuple(r for r in CLINIC if r.kind == "oar")
    with pytest.raises(TransferError, match=r"clinic.*no target among its ROIs.*--roi-map"):
        plan_transfer(OKBP, RoiSet(oars), "clinic")
    with pytest.raises(TransferError, match=r"PTV_High have no prescription"):
        plan_transfer(OKBP, RoiSet((*oars, Roi("PTV_High", "target"))), "clinic")
    with pytest.raises(TransferError, match=r"LeftParotid and Parotid_L are both the model's OAR Left"):
        plan_transfer(OKBP, RoiSet((Roi("LeftParotid"), *CLINIC.rois)), "clinic")
    with pytest.raises(TransferError, match=r"PTV70 is an OAR but the model's PTV70 is a target"):
        plan_transfer(OKBP, RoiSet((Roi("PTV70"), *CLINIC.rois)), "clinic")
    with pytest.raises(TransferError, match=r"Mandible is a target but the model's Mandible is an OAR"):
        plan_transfer(OKBP, RoiSet((Roi("Mandible", "target", 50.0), Roi("PTV_66", "target", 66.0))),
                      "clinic")
    # a target without prescription beside prescribed ones is only a note; an organ of kind other too
    tr = plan_transfer(OKBP, RoiSet((*CLINIC.rois, Roi("CTV_1", "target"), Roi("Larynx", "other"))))
    assert tr.unprescribed == ("CTV_1",) and tr.not_oars == ("Larynx",)
    # ... but not when an OAR of the data (after it in bit order) is that organ
    both = plan_transfer(OKBP, RoiSet((Roi("Mandible", "other"), *CLINIC.rois)))
    assert both.not_oars == () and both.matched["Bone_Mandible"] == "Mandible"
    assert any("CTV_1" in n for n in tr.notes) and any("Larynx is of kind 'other'" in n for n in tr.notes)


def test_weights_of_another_architecture_are_refused():
    released = released_model()
    tr = plan_transfer(OKBP, CLINIC)
    other = build_model(ModelConfig(rois=CLINIC.to_dicts(), **{**TINY, "base": 8}))
    with pytest.raises(ModelError, match="do not fit"):
        transfer_state(released.state_dict(), other, tr)


# ------------------------------------------------------------------ train --init, checkpoints

@pytest.fixture(scope="module")
def clinic_cache(tmp_path_factory, synth):
    root = tmp_path_factory.mktemp("clinic")
    write_cache([clinic_patient(p) for p in synth], root / "cache")
    return root / "cache"


def _cfg(tmp_path, cache, init, **kw):
    return TrainConfig(**{"data": str(cache), "out": str(tmp_path / "run"), "init": str(init), "loss": "mae",
                          "epochs": 1, "steps_per_epoch": 1, "batch": 1, "patch": (16, 16, 16), "threads": 1,
                          **kw})


def test_trainer_init_starts_from_the_released_prediction(tmp_path, synth, clinic_cache):
    released = released_model(4)
    ck = save_released(released, tmp_path / "released.pt")
    t = ready(_cfg(tmp_path, clinic_cache, ck))
    assert t.model.config.roi_set == CLINIC and t.roi_transfer["new"] == ["Glnd_Submand_L"]
    p = clinic_patient(synth[0])
    order = ["BrainStem", "SpinalCord", "Parotid_R", "Parotid_L", None, None, "Bone_Mandible"]
    with torch.no_grad():
        want = released.from_input(hand_input(p, order, {"PTV_66": 66, "PTV_60": 60, "PTV_54": 54}))
    torch.testing.assert_close(run(t.model.eval(), p), want, rtol=1e-5, atol=1e-4)


def test_one_stage_init_onto_a_two_stage_clinic_model(tmp_path, synth, clinic_cache):
    released = released_model(7, res_units=0)
    ck = save_released(released, tmp_path / "released.pt")
    t = ready(_cfg(tmp_path, clinic_cache, ck, stages=2, freeze_stage1=True))
    p = clinic_patient(synth[2])
    order = ["BrainStem", "SpinalCord", "Parotid_R", "Parotid_L", None, None, "Bone_Mandible"]
    with torch.no_grad():
        want = released.from_input(hand_input(p, order, {"PTV_66": 66, "PTV_60": 60, "PTV_54": 54}))
    torch.testing.assert_close(run(t.model.eval(), p), want, rtol=1e-5, atol=1e-4)


def test_a_mapped_run_resumes(tmp_path, clinic_cache):
    from dosepred.training import train

    ck = save_released(released_model(8), tmp_path / "released.pt")
    cfg = _cfg(tmp_path, clinic_cache, ck, stop_after=1)
    train(TrainConfig(**{**cfg.model_dump(), "epochs": 2}))
    train(TrainConfig(**{**cfg.model_dump(), "epochs": 2, "stop_after": None}), resume=True)
    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert got["epoch"] == 2 and got["roi_transfer"]["dropped"] == ["Esophagus", "Larynx"]


def test_a_fine_tune_resumed_with_another_init_is_one_error(tmp_path, clinic_cache):
    """``train --resume --init OTHER`` of a fine-tune continued the run's weights (those of the first
    --init) but recorded OTHER as its start: every later checkpoint's and the export's ``roi_transfer``
    and the README's "fine-tuned from" named a model the run never started from, without a word. One
    error line naming both, the run as it was; the same --init spelt another way resumes."""
    import os

    from dosepred.cli import app
    from dosepred.training import train

    first = save_released(released_model(8), tmp_path / "released.pt")
    other = save_released(released_model(9), tmp_path / "other.pt")
    cfg = _cfg(tmp_path, clinic_cache, first, stop_after=1)
    train(TrainConfig(**{**cfg.model_dump(), "epochs": 2}))
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    r = CliRunner().invoke(app, ["train", "--out", str(run_dir), "--resume", "--init", str(other),
                                 "--threads", "1", "--no-progress"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines()[-1].startswith(
        f"error: --resume: init was '{first}' in {last}, now '{other}': the run's weights descend"), r.output
    assert "Traceback" not in r.output and last.read_bytes() == before
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        r = CliRunner().invoke(app, ["train", "--out", str(run_dir), "--resume", "--init", "released.pt",
                                     "--threads", "1", "--no-progress"])
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0, (r.output, r.exception)
    assert (tmp_path / load_checkpoint(last)["roi_transfer"]["source"]).resolve() == first.resolve()


@pytest.mark.parametrize("asked, message", [
    ({"channels": [4, 4]}, "has channels [4, 6]; level 2 of [4, 4] is narrower (4 < 6), and a network "
                           "can only grow, but channels [4, 4] were requested"),
    ({"channels": [4, 8]}, "cannot grow its channels and move onto other ROIs in one fine-tune: "
                           "do them in two"),
    ({"head": 3}, "cannot get a full-resolution head and move onto other ROIs in one fine-tune: do "
                  "them in two"),
    ({"res_units": 1}, "has res_units=0 but res_units=1 was requested"),
    ({"norm": "batch"}, "has norm=instance but norm=batch was requested"),
])
def test_init_from_a_model_of_another_architecture_is_one_error(tmp_path, clinic_cache, asked, message):
    """``--init`` with an architecture option the model contradicts would load none of its weights
    into the asked-for network: one error naming the option and both values, before a run folder is
    made."""
    from dosepred.models import ModelError
    from dosepred.training import train

    ck = save_released(released_model(5, res_units=0, channels=[4, 6]), tmp_path / "released.pt")
    with pytest.raises(ModelError) as ei:
        train(_cfg(tmp_path, clinic_cache, ck, **asked))
    assert str(ei.value) == f"--init {ck} {message}"
    assert not (tmp_path / "run").exists()


def test_checkpoints_and_exports_record_the_mapping(tmp_path, clinic_cache):
    from dosepred.training import train

    ck = save_released(released_model(5, res_units=0, channels=[4, 6]), tmp_path / "released.pt")
    logs = []
    train(_cfg(tmp_path, clinic_cache, ck), log=logs.append)
    assert any("dropped" in m and "Esophagus, Larynx" in m for m in logs)
    assert any("Glnd_Submand_L" in m and "zero" in m for m in logs)
    for name in ("last.pt", "best.pt"):
        got = load_checkpoint(tmp_path / "run" / "checkpoints" / name)
        rec = got["roi_transfer"]
        assert rec["matched"]["Parotid_L"] == "LeftParotid" and rec["dropped"] == ["Esophagus", "Larynx"]
        assert rec["new"] == ["Glnd_Submand_L"] and rec["channel_sources"] == [0, 1, 5, None, 8, 4, 3, 2, 9]
        assert rec["source"] == str(ck) and rec["data_targets"]["PTV_66"] == 66.0
        assert got["model_config"]["channels"] == [4, 6]  # --init's widths carried
        assert [r["name"] for r in got["model_config"]["rois"]] == list(CLINIC.names)
    # the released model's training patients lacked the lower targets (OpenKBP's record, the default):
    # the fine-tune lets clinic patients lack theirs too, though every clinic training patient had them
    assert got["space"]["absent_rois"] == ["Parotid_L", "Bone_Mandible", "Parotid_R", "SpinalCord",
                                           "BrainStem", "PTV_60", "PTV_54"]
    # how many lacked each: the OpenKBP record's 169 patients (mapped as above) and the clinic's own
    info = json.loads((clinic_cache / "dataset.json").read_text())
    own = {n: sum(n in e["missing_rois"] for e in info["patients"]) for n in CLINIC.names}
    was = {"Parotid_L": 6, "Bone_Mandible": 57, "Parotid_R": 7, "SpinalCord": 1, "BrainStem": 13,
           "PTV_60": 84, "PTV_54": 15}
    assert got["space"]["absent_counts"] == {n: was[n] + own[n] for n in was}
    assert got["space"]["absent_patients"] == 169 + len(info["patients"])
    out = export_model(tmp_path / "run", tmp_path / "clinic-model")
    info = json.loads((out / "config.json").read_text())
    assert info["roi_transfer"]["new"] == ["Glnd_Submand_L"]
    assert "Esophagus, Larynx" in (out / "README.md").read_text()
    # fine-tuning the clinic model again on the clinic's cache: same ROIs, the record carried
    train(TrainConfig(**{**_cfg(tmp_path, clinic_cache, out).model_dump(), "out": str(tmp_path / "again")}))
    again = load_checkpoint(tmp_path / "again" / "checkpoints" / "last.pt")
    assert again["roi_transfer"]["new"] == ["Glnd_Submand_L"]


#: a 3-level U-Net's contracting path below its first level, named by hand from MONAI's nesting
#: Sequential(down0, Skip(Sequential(down1, Skip(bottom), up1)), up0): down1 and the bottom
CONTRACTING = ("net.model.1.submodule.0.", "net.model.1.submodule.1.submodule.")


@pytest.mark.parametrize("coarse", [None, [6, 8]])
def test_freeze_steps_keep_the_contracting_path_then_train_it(tmp_path, clinic_cache, coarse):
    from dosepred.training import train

    ck = save_released(released_model(9, levels=3, res_units=0), tmp_path / "released.pt")
    cfg = _cfg(tmp_path, clinic_cache, ck, levels=3, res_units=0, coarse=coarse, freeze_steps=3,
               steps_per_epoch=2, epochs=3, stop_after=1, seed=2)
    start = {k: v.clone() for k, v in ready(cfg).model.state_dict().items()}  # step 0 (branch included)

    def weights(run="run"):
        return load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")["model"]

    def held(k):  # from --init: not the coarse branch this run adds under the bottom (it trains)
        return k.startswith(CONTRACTING) and ".extra." not in k

    logs = []
    train(cfg, log=logs.append)
    assert any("keeps its --init weights for the first 3 steps" in m for m in logs)
    w = weights()
    assert w.keys() == start.keys() and any(".extra." in k for k in w) == bool(coarse)
    assert any(map(held, w)) and not all(map(held, w))
    for k in w:  # after 2 of the 3 held steps: the held weights bit for bit the start's, the rest moved
        assert torch.equal(w[k], start[k]) == held(k), k
    # resumed inside the freeze, stopped one step after it: the held weights have moved
    train(TrainConfig(**{**cfg.model_dump(), "stop_after": 2}), resume=True)
    w4 = weights()
    assert not any(torch.equal(w4[k], w[k]) for k in w if held(k))
    # to the end: the same weights as the run without interruptions
    train(TrainConfig(**{**cfg.model_dump(), "stop_after": None}), resume=True)
    whole = TrainConfig(**{**cfg.model_dump(), "stop_after": None, "out": str(tmp_path / "whole")})
    train(whole)
    w6 = weights()
    for k, v in weights("whole").items():
        assert torch.equal(v, w6[k]), k
    with pytest.raises(InputError, match="freeze_steps was 3"):  # another schedule is another run
        train(TrainConfig(**{**whole.model_dump(), "freeze_steps": 4, "epochs": 4}), resume=True)


def test_freeze_steps_refusals(tmp_path, clinic_cache):
    from dosepred.cli import app

    one_line = CliRunner().invoke
    with pytest.raises(InputError, match="freeze_steps needs --init"):
        TrainConfig(data=str(clinic_cache), out=str(tmp_path / "run"), freeze_steps=10)
    with pytest.raises(InputError, match="freeze_steps 4 is not below the run's 4 steps"):
        _cfg(tmp_path, clinic_cache, tmp_path, freeze_steps=4, epochs=2, steps_per_epoch=2)
    ck = save_released(released_model(3, res_units=0), tmp_path / "released.pt")
    per_patient = {**_cfg(tmp_path, clinic_cache, ck, epochs=3).model_dump(), "steps_per_epoch": None}
    with pytest.raises(InputError, match="freeze_steps 1000 is not below the run's .* steps"):
        Trainer(TrainConfig(**{**per_patient, "freeze_steps": 1000}), progress=False).initialize()
    # a second stage added over a frozen first: nothing to keep comes from --init
    with pytest.raises(InputError, match="no weight of the contracting path"):
        ready(_cfg(tmp_path, clinic_cache, ck, stages=2, freeze_stage1=True, freeze_steps=1, epochs=2))
    for args in (["--freeze-steps", "10"], ["--freeze-steps", "-1", "--init", str(ck)]):
        r = one_line(app, ["train", "--data", str(clinic_cache), "--out", str(tmp_path / "cli"), *args,
                           "--epochs", "1", "--patch", "16", "--no-progress"])
        assert r.exit_code == 2 and "freeze_steps" in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "cli").exists()


def test_transfer_checkpoint_predicts_like_the_released_model(tmp_path, synth):
    released = released_model(6)
    ck = load_checkpoint(save_released(released, tmp_path / "released.pt"))
    mapped = transfer_checkpoint(ck, CLINIC, "clinic")
    assert mapped["roi_transfer"]["dropped"] == ["Esophagus", "Larynx"]
    save_checkpoint(mapped, tmp_path / "mapped.pt")
    from dosepred.models.checkpoint import load_model

    m = load_model(tmp_path / "mapped.pt")
    p = clinic_patient(synth[1])
    order = ["BrainStem", "SpinalCord", "Parotid_R", "Parotid_L", None, None, "Bone_Mandible"]
    with torch.no_grad():
        want = released.from_input(hand_input(p, order, {"PTV_66": 66, "PTV_60": 60, "PTV_54": 54}))
    torch.testing.assert_close(run(m, p), want, rtol=1e-5, atol=1e-4)
    assert transfer_checkpoint(ck, OKBP)["roi_transfer"] is None
    # the ROIs some training patients lacked, in the clinic's names: parotid as parotid, the lower
    # targets by rank of prescription, the new gland (never read); a dropped OAR is gone
    space = {**ck["space"], "absent_rois": ["RightParotid", "Esophagus", "PTV56", "PTV63"]}
    got = transfer_checkpoint({**ck, "space": space}, CLINIC)["space"]["absent_rois"]
    assert got == ["Glnd_Submand_L", "Parotid_R", "PTV_60", "PTV_54"]
    # with the counts (of 169): the parotid keeps its 7, the targets their rank's, the new gland was
    # lacked by all 169 (never read); the parotid stays rarely missing, the rest may be missing
    space["absent_counts"] = {"RightParotid": 7, "Esophagus": 111, "PTV56": 15, "PTV63": 84}
    space["absent_patients"] = 169
    got = transfer_checkpoint({**ck, "space": space}, CLINIC)["space"]
    assert got["absent_counts"] == {"Glnd_Submand_L": 169, "Parotid_R": 7, "PTV_60": 84, "PTV_54": 15}
    assert ModelSpace.from_dict(got).rarely_absent() == {"Parotid_R": 7}


def test_cli_train_init_without_targets_is_one_line_and_writes_nothing(tmp_path, synth):
    from dosepred.cli import app

    rois = RoiSet(tuple(r for r in CLINIC if r.kind != "target"))
    write_cache([clinic_patient(p, rois) for p in synth[:1]], tmp_path / "notarget")
    ck = save_released(released_model(), tmp_path / "released.pt")
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "notarget"), "--init", str(ck), "--out",
                                 str(tmp_path / "run"), "--epochs", "1", "--patch", "16", "--threads", "1",
                                 "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "no target among its ROIs" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def _foreign(path, config, weights_of):
    """A checkpoint whose model_config is ``config`` but whose weights are those of ``weights_of``
    (another model's weights under this one's record: a file put together by hand or another tool)."""
    return save_checkpoint({"format": MODEL_FORMAT, "model_config": config.to_dict(),
                            "model": weights_of.state_dict()}, path)


def _okbp_less_larynx():
    return ModelConfig(rois=RoiSet(tuple(r for r in OKBP if r.name != "Larynx")).to_dicts(), **TINY)


@pytest.mark.parametrize("weights, data, message", [
    (dict(base=8), "clinic", "input weights net.model.0.conv.unit0.conv.weight of shape (8, 10, 3, 3, 3) do "
     "not fit (4, 10, 3, 3, 3) (another architecture?)"),
    (dict(stages=2), "clinic", "weights refine.model.0.conv.unit0.adn.A.weight, refine.model.0.conv.unit0."
     "conv.bias, refine.model.0.conv.unit0.conv.weight have no place in the new model (another "
     "architecture?)"),
    ("less", "clinic", "input weights net.model.0.conv.unit0.conv.weight of shape (4, 10, 3, 3, 3) do not "
     "fit (4, 9, 3, 3, 3) (another architecture?)"),
    (dict(base=8), "okbp", "weights do not fit (size mismatch for net.model.0.conv.unit0.conv.weight: "
     "copying a param with shape torch.Size([8, 10, 3, 3, 3]) from checkpoint, the shape in current model "
     "is torch.Size([4, 10, 3, 3, 3]). (and 8 more))"),
    (dict(stages=2), "okbp", 'weights do not fit (Unexpected key(s) in state_dict: "refine.model.0.conv.'),
], ids=["wider-mapped", "two-stage-mapped", "other-rois-mapped", "wider-same-rois", "two-stage-same-rois"])
def test_cli_init_from_weights_that_do_not_fit_is_one_line(tmp_path, synth, clinic_cache, weights, data,
                                                            message):
    """``train --init`` of a checkpoint whose weights are not of the model its record describes (another
    width, a second stage, another ROI set's input channels), onto a clinic's ROIs (mapped channel by
    channel) or onto the same ROIs: one error line naming the file, the weight and both shapes, and no
    run folder. (The same-ROI case named nothing: torch's first line, 'Error(s) in loading state_dict
    for DoseUNet:'.)"""
    from dosepred.cli import app

    if data == "okbp":
        write_cache(synth[:1], tmp_path / "okbp")
    cache = clinic_cache if data == "clinic" else tmp_path / "okbp"
    released = released_model()
    if weights == "less":
        ck = _foreign(tmp_path / "foreign.pt", _okbp_less_larynx(), released)
    else:
        ck = _foreign(tmp_path / "foreign.pt", released.config, released_model(**weights))
    r = CliRunner().invoke(app, ["train", "--data", str(cache), "--init", str(ck), "--out",
                                 str(tmp_path / "run"), "--epochs", "1", "--patch", "16", "--batch", "1",
                                 "--threads", "1", "--no-progress"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.startswith(f"error: --init {ck}: {message}") and len(r.output.splitlines()) == 1, r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("record, message", [
    ({"format": "dosepred-roi-something"},
     "not an ROI transfer record (format 'dosepred-roi-something', expected 'dosepred-roi-transfer')"),
    ({"format": "dosepred-roi-transfer", "version": 1}, "the ROI transfer record lacks the key 'model_rois'"),
    ("Parotid_L<-LeftParotid", "not an ROI transfer record (format 'str', expected 'dosepred-roi-transfer')"),
])
def test_cli_export_of_a_checkpoint_with_a_bad_transfer_record(tmp_path, record, message):
    """A checkpoint whose ``roi_transfer`` record is of another format, lacks a key or is no object:
    ``export-model`` stops with one line naming the file and the record (was a KeyError or
    AttributeError traceback, or a line naming no file) and writes no model folder."""
    from dosepred.cli import app

    released = released_model()
    ck = save_checkpoint({"format": MODEL_FORMAT, "model_config": released.config.to_dict(),
                          "model": released.state_dict(), "roi_transfer": record}, tmp_path / "model.pt")
    r = CliRunner().invoke(app, ["export-model", str(ck), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output == f"error: {ck}: roi_transfer: {message}\n"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["model.pt"]


def test_data_subset_writes_a_split_with_the_whole_roi_set(tmp_path, synth):
    from dosepred.cli import app
    from dosepred.io.cache import Cache

    pats = [clinic_patient(p) for p in synth[:3]]
    q = pats[2]  # the held-out patient lacks the new gland: the subset must still carry it in its ROI set
    pats[2] = Patient.from_masks(q.id, q.ct, {n: q.mask(n) for n in q.present_rois if n != "Glnd_Submand_L"},
                                 CLINIC, q.spacing, q.possible_dose_mask, q.dose, dict(q.meta), q.geometry)
    write_cache(pats, tmp_path / "c")
    ids = [p.id for p in pats]

    def cli(*a):
        return CliRunner().invoke(app, [str(x) for x in a])

    split = tmp_path / "s.json"
    r = cli("data", "split", tmp_path / "c", "--out", split, "--ids", f"train={ids[0]},{ids[1]}",
            "--ids", f"test={ids[2]}")
    assert r.exit_code == 0, r.output
    r = cli("data", "subset", tmp_path / "c", "--split", f"{split}:test", "--out", tmp_path / "t")
    assert r.exit_code == 0, r.output
    t = Cache.open(tmp_path / "t")
    assert t.ids == [ids[2]] and t.roi_set == CLINIC
    got = next(iter(t.patients(t.ids)))
    assert "Glnd_Submand_L" in got.missing_rois and got.missing_rois == pats[2].missing_rois
    np.testing.assert_array_equal(got.dose, pats[2].dose)
    np.testing.assert_array_equal(got.roi_codes, pats[2].roi_codes)
    r = cli("data", "subset", tmp_path / "c", "--split", f"{split}:val", "--out", tmp_path / "v")
    assert r.exit_code == 2 and "has no split 'val'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "v").exists()


def test_data_subset_of_a_prediction_cache_keeps_its_prediction_record(tmp_path, synth):
    """`data subset` of a cache `predict --format cache` wrote (the clinic cache predicted once, then cut
    by the split as docs/finetune.md cuts the plans) dropped dataset.json's "prediction" record: the
    calib split of the predictions was refused by `calibrate --predictions` ("do not record how they
    were made"), and `qa --plans` took it for plans. Now the subset keeps the record as it was."""
    from dosepred.cli import app
    from dosepred.inference import InferenceOptions, PredictionRecord, prediction_record
    from dosepred.io.cache import Cache
    from dosepred.io.source import open_source

    rec = PredictionRecord(InferenceOptions(device="cpu"), "models/m", "ab" * 32, "clinic", "0.1.0")
    write_cache(synth, tmp_path / "pred", source="dosepred predict: model models/m, data clinic",
                record={"prediction": rec.to_json()})
    split = tmp_path / "s.json"
    split.write_text(json.dumps({"splits": {"calib": [synth[0].id, synth[2].id], "test": [synth[1].id]}}))
    r = CliRunner().invoke(app, ["data", "subset", str(tmp_path / "pred"), "--split", f"{split}:calib",
                                 "--out", str(tmp_path / "sub")])
    assert r.exit_code == 0, r.output
    sub = Cache.open(tmp_path / "sub")
    assert sub.ids == [synth[0].id, synth[2].id]
    assert sub.info["prediction"] == rec.to_json() and prediction_record(sub) == rec
    assert open_source(tmp_path / "sub").predicted


def test_a_fine_tune_on_voxels_far_from_the_init_models_is_warned_of(tmp_path, synth):
    """A clinic's CT imported at its own 1-1.5 mm under a released model of OpenKBP's 2.7-5.1 mm voxels:
    training keeps the patients' voxels, so the model's convolutions start on anatomy of another size
    than they learnt, without a word (OpenKBP validation pt_208 as the clinic, released MAE+CDM mapped
    and not trained: validation dose score 8.61 Gy at 1.5 x 2 x 1.5 mm, 4.15 on its own grid). One
    warning naming both spacings; none at the --init model's own spacing."""
    from dosepred.resample import grid_with_spacing, resample_patient
    from dosepred.training.init import InitSpacingWarning

    released = released_model(4)
    sp = synth[0].spacing  # (16, 16, 12) mm: the --init model "learnt" there
    space = ModelSpace(axes="PLI", spacing_min=sp, spacing_max=sp, spacing_median=sp, patients=4)
    ck = save_checkpoint({"format": MODEL_FORMAT, "model_config": released.config.to_dict(),
                          "model": released.state_dict(), "space": space.to_dict()}, tmp_path / "r.pt")
    fine = []
    for p in synth:
        g, shape = grid_with_spacing(p.geometry, p.shape, np.asarray(p.spacing) / 2)
        fine.append(clinic_patient(resample_patient(p, g, shape)))
    assert fine[0].shape == (32, 32, 32)
    write_cache(fine, tmp_path / "fine")
    write_cache([clinic_patient(p) for p in synth], tmp_path / "same")
    with pytest.warns(InitSpacingWarning) as got:
        ready(_cfg(tmp_path / "a", tmp_path / "fine", ck)).load_train()
    (w,) = [str(w.message) for w in got if w.category is InitSpacingWarning]
    assert f"--init {ck} learnt on voxels of 16-16 x 16-16 x 12-12 mm" in w
    assert "the training patients' are 8 x 8 x 6 mm (median), up to 2.0x off" in w and "(16 x 16 x 12 mm" in w
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", InitSpacingWarning)
        t = ready(_cfg(tmp_path / "b", tmp_path / "same", ck))
        t.load_train()
    assert t.space.spacing_median == sp
