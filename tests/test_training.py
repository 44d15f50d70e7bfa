"""Training: learning on synthetic data, exact resume, fine-tuning, DDP, and clear errors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dosepred.io.cache import write_cache
from dosepred.models import ModelError
from dosepred.patient import Patient, Roi, RoiSet
from dosepred.synth import make_cohort
from dosepred.training import TrainConfig, train

TINY = dict(patch=(16, 16, 16), base=4, levels=2, res_units=1, batch=2, threads=2)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("caches")
    cohort = make_cohort(10, seed=5, size=24)
    write_cache(cohort[:7], root / "train")
    write_cache(cohort[7:], root / "val")
    return root


def _weights(run: Path, name="last.pt"):
    return torch.load(run / "checkpoints" / name, weights_only=True)["model"]


def test_training_beats_a_constant_dose(caches, tmp_path):
    from dosepred.evaluation import evaluate_cohort
    from dosepred.io.cache import Cache
    from dosepred.models.checkpoint import load_model
    from dosepred.predict import predict_dose

    cfg = TrainConfig(data=str(caches / "train"), val=str(caches / "val"), out=str(tmp_path / "run"),
                      loss="mae",
                      epochs=4, steps_per_epoch=30, lr=1e-2, seed=0, val_every=2,
                      **TINY)
    res = train(cfg)
    val = list(Cache.open(caches / "val"))
    train_p = list(Cache.open(caches / "train"))
    mean_in_mask = float(np.mean([p.dose[p.possible_dose_mask].mean() for p in train_p]))
    const = evaluate_cohort([(p, mean_in_mask * p.possible_dose_mask) for p in val]).dose_score
    model = load_model(tmp_path / "run")
    learned = evaluate_cohort([(p, predict_dose(model, p)) for p in val]).dose_score
    assert learned < 0.8 * const, (learned, const)
    assert res["best"]["epoch"] in (2, 4)
    run = tmp_path / "run"
    for f in ("config.json", "dataset.json", "protocol.json", "version.json", "metrics.csv",
              "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / f).is_file(), f
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and "val_dose_score" in rows[0]


def test_resume_is_exact(caches, tmp_path):
    common = dict(data=str(caches / "train"), loss="mae", epochs=2, steps_per_epoch=3, seed=1, **TINY)
    train(TrainConfig(out=str(tmp_path / "a"), **common))
    train(TrainConfig(out=str(tmp_path / "b"), stop_after=1, **common))  # as if interrupted
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(out=str(tmp_path / "b"), **common))
    train(TrainConfig(out=str(tmp_path / "b"), **common), resume=True)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]


def test_init_fine_tunes_from_weights(caches, tmp_path):
    common = dict(data=str(caches / "train"), epochs=1, steps_per_epoch=2, **TINY)
    train(TrainConfig(out=str(tmp_path / "warm"), loss="mae", **common))
    cfg = TrainConfig(out=str(tmp_path / "ft"), loss="mae+cdm", init=str(tmp_path / "warm"),
                      **{**common, "base": None, "levels": None, "res_units": None})
    train(cfg)
    ck = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["model_config"]["base"] == 4 and ck["global_step"] == 2
    with pytest.raises(ModelError, match="base"):
        train(TrainConfig(out=str(tmp_path / "ft2"), loss="mae", init=str(tmp_path / "warm"),
                          **{**common, "base": 8}))


def test_explicit_channels_train_and_pass_to_fine_tunes(caches, tmp_path):
    common = dict(data=str(caches / "train"), epochs=1, steps_per_epoch=1,
                  **{**TINY, "base": None, "levels": None, "res_units": 0})
    train(TrainConfig(out=str(tmp_path / "w"), loss="mae", channels="4,6,12", **common))
    ck = torch.load(tmp_path / "w" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["model_config"]["channels"] == [4, 6, 12] and ck["model_config"]["levels"] == 3
    # a fine-tune takes --init's widths without being told, and refuses others
    train(TrainConfig(out=str(tmp_path / "ft"), loss="mae", init=str(tmp_path / "w"), **common))
    ck = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["model_config"]["channels"] == [4, 6, 12]
    with pytest.raises(ModelError, match=r"level 2 of \[4, 4, 12\] is narrower .* channels \[4, 4, 12\]"):
        train(TrainConfig(out=str(tmp_path / "ft2"), loss="mae", init=str(tmp_path / "w"),
                          channels=[4, 4, 12], **common))  # wider ones grow the model (test_grow.py)
    with pytest.raises(ModelError, match="levels"):
        train(TrainConfig(out=str(tmp_path / "x"), loss="mae", channels=[4, 8], **{**common, "levels": 3}))
    with pytest.raises(ValueError, match="comma-separated"):
        TrainConfig(out="x", data="y", channels="4,eight")


def test_bad_inputs_are_clear(caches, tmp_path):
    # a cache the --init model's channels cannot be mapped onto: no target with a prescription
    # (tests/test_finetune.py tests the ROI sets that can)
    rs = RoiSet((Roi("Cord"), Roi("PTV", "target")))
    shape = (16, 16, 16)
    m = np.zeros(shape, bool)
    m[4:12, 4:12, 4:12] = True
    p = Patient.from_masks("x1", np.zeros(shape, np.int16), {"PTV": m}, rs, (2, 2, 2), dose=m * 60.0)
    write_cache([p], tmp_path / "other")
    common = dict(epochs=1, steps_per_epoch=1, **TINY)
    train(TrainConfig(data=str(caches / "train"), out=str(tmp_path / "r"), **common))
    with pytest.raises(ModelError, match="no prescription"):
        train(TrainConfig(data=str(tmp_path / "other"), out=str(tmp_path / "r2"), init=str(tmp_path / "r"),
                          **{**common, "base": None}))
    with pytest.raises(ValueError, match="validation cache"):
        train(TrainConfig(data=str(caches / "train"), val=str(tmp_path / "other"), out=str(tmp_path / "r3"),
                          **common))
    # a checkpoint of another architecture
    ck = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    ck["model_config"]["arch"] = "other-net"
    torch.save(ck, tmp_path / "foreign.pt")
    with pytest.raises(ModelError, match="architecture"):
        train(TrainConfig(data=str(caches / "train"), out=str(tmp_path / "r4"),
                          init=str(tmp_path / "foreign.pt"), **common))
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    from dosepred.models.checkpoint import load_model

    with pytest.raises(ModelError, match="not a dosepred checkpoint"):
        load_model(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError, match="resume"):
        train(TrainConfig(data=str(caches / "train"), out=str(tmp_path / "none"), **common), resume=True)
    # --resume of a run trained in its data's own axis order (orientation "first") after the cache was
    # rewritten in another: named as such (it read "different model ({'flip_axis': ...})" before, the
    # flip axis following the axes)
    from dosepred.io.cache import Cache

    pats = list(Cache.open(caches / "train"))
    letters = pats[0].geometry.axis_letters()
    other = letters[2] + letters[0] + letters[1]
    write_cache(pats, tmp_path / "mine")
    first = dict(common, orientation="first", epochs=2, stop_after=1)
    train(TrainConfig(data=str(tmp_path / "mine"), out=str(tmp_path / "r5"), **first))
    shutil.rmtree(tmp_path / "mine")
    write_cache([q.reoriented(other) for q in pats], tmp_path / "mine")
    with pytest.raises(ModelError, match=f"axis order {letters}, the data now gives {other}"):
        train(TrainConfig(data=str(tmp_path / "mine"), out=str(tmp_path / "r5"), **first), resume=True)


@pytest.mark.skipif(not hasattr(torch, "distributed") or not torch.distributed.is_available(),
                    reason="torch.distributed unavailable")
def test_ddp_two_processes_gloo(caches, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "DOSEPRED_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "dosepred.cli", "train", "--data", str(caches / "train"), "--out", str(run), "--loss", "mae",
           "--epochs", "2", "--steps-per-epoch", "2", "--patch", "16", "--base", "4", "--levels", "2",
           "--device", "cpu", "--threads", "1", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["global_step"] == 4 and ck["epoch"] == 2
    assert sorted(os.listdir(run / "checkpoints")) == ["best.pt", "last.pt", "prev.pt"]
    assert len((run / "metrics.csv").read_text().splitlines()) == 3


def test_a_run_that_fails_after_a_finished_epoch_is_kept_for_resume(caches, tmp_path, monkeypatch):
    """A new run that dies at its first validation (epoch 2) keeps epoch 1 (hours of work on a real
    run) and says how to continue; --resume then finishes it exactly like an uninterrupted run. One
    that dies before any epoch is saved leaves nothing (and an --overwrite'd old run restored)."""
    from dosepred.training import trainer
    from dosepred.workflows import train_run

    opts = dict(data=str(caches / "train"), val=str(caches / "val"), loss="mae", epochs=2, steps_per_epoch=2,
                val_every=2, seed=3, patch=16, base=4, levels=2, res_units=0, batch=1, threads=1)
    ref = tmp_path / "ref"
    train_run(ref, opts)
    real = trainer.validate

    def broken(*a, **k):
        raise RuntimeError("simulated failure in validation")

    monkeypatch.setattr(trainer, "validate", broken)
    said: list[str] = []
    run = tmp_path / "my run"  # the command it shows quotes the folder (a space broke it when copied)
    with pytest.raises(RuntimeError, match="simulated"):
        train_run(run, opts, log=said.append)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert any(f"continue with `dosepred train --out '{run}' --resume`" in s and "last: 1" in s for s in said)
    monkeypatch.setattr(trainer, "validate", real)
    train_run(run, {}, resume=True)
    a, b = _weights(ref), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # before the first epoch ends: nothing kept, and an old run given with --overwrite comes back
    monkeypatch.setattr(trainer, "validate", broken)
    early = dict(opts, val_every=1)
    with pytest.raises(RuntimeError, match="simulated"):
        train_run(tmp_path / "new", early)
    assert not (tmp_path / "new").exists()
    before = (run / "checkpoints" / "last.pt").read_bytes()
    said.clear()
    with pytest.raises(RuntimeError, match="simulated"):
        train_run(run, early, overwrite=True, log=said.append)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before and not any("--resume" in s for s in said)


def test_val_patients_takes_the_first_ids_in_natural_order_not_the_caches_order(tmp_path):
    """--val-patients N validated on the first N entries of the cache's dataset.json: a cache written
    in another order (pt_10, pt_2, pt_9, pt_1) validated on pt_10 and pt_2, another cohort than the same
    patients' cache in order (pt_1, pt_2), and best.pt could differ. Now: the first N in natural order."""
    from dataclasses import replace

    from dosepred.training import Trainer

    ids = ["pt_10", "pt_2", "pt_9", "pt_1"]
    cohort = [replace(p, id=i) for p, i in zip(make_cohort(4, seed=1, size=20), ids, strict=True)]
    write_cache(cohort, tmp_path / "val")
    write_cache(cohort[:2], tmp_path / "train")
    t = Trainer(TrainConfig(data=str(tmp_path / "train"), val=str(tmp_path / "val"), val_patients=2,
                            out=str(tmp_path / "run"), **TINY), progress=False)
    t.setup_data()
    assert t.val_ids == ["pt_1", "pt_2"]


def test_a_continued_training_does_not_count_its_patients_twice():
    """The ROI-absence counts a model carries (what prediction's 'N of the model's M training patients
    lacked it' says) are over distinct patients: a fine-tune on the --init's own patients (a training
    continued in stages) keeps them; one on other patients adds them. Round 13's campaign models,
    recorded before fingerprints, said 507 training patients after three stages on 169."""
    from dosepred.models.space import ModelSpace, ids_sha
    from dosepred.training.init import same_patients

    ids = [f"pt_{i}" for i in range(169)]
    assert ids_sha(ids) == ids_sha(list(reversed(ids))) != ids_sha(ids[:-1])
    own = {"Esophagus": 74, "Larynx": 59}
    mine = ModelSpace(patients=169, absent_counts=own, absent_patients=169, patients_sha=ids_sha(ids))
    again = ModelSpace(patients=169, absent_counts=own, absent_patients=169, patients_sha=ids_sha(ids))
    other = ModelSpace(patients=20, absent_counts={"Esophagus": 3}, absent_patients=20,
                       patients_sha=ids_sha([f"clinic_{i}" for i in range(20)]))
    assert same_patients(again, mine, own, own)
    assert not same_patients(other, mine, {"Esophagus": 3}, own)
    # recorded before fingerprints: the same patients counted k times over are recognised as such
    legacy = ModelSpace(patients=169, absent_counts={"Esophagus": 222, "Larynx": 177}, absent_patients=507)
    assert same_patients(legacy, mine, {"Esophagus": 222, "Larynx": 177}, own)
    odd = ModelSpace(patients=169, absent_counts={"Esophagus": 220, "Larynx": 177}, absent_patients=507)
    assert not same_patients(odd, mine, {"Esophagus": 220, "Larynx": 177}, own)
    assert ModelSpace.from_dict(mine.to_dict()).patients_sha == ids_sha(ids)


def _cli(*args):
    from typer.testing import CliRunner

    from dosepred.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags, message", [
    (["--seed", "5"], "--resume: seed was 1 in {last}, now 5"),
    (["--batch", "2"], "--resume: batch was 1 in {last}, now 2"),
    (["--loss", "mae+dvh"], "--resume: loss was 'mae' in {last}, now 'mae+dvh'"),
    (["--data", "{other}"], "--resume: data was '{data}' in {last}, now '{other}'"),
    (["--base", "8"], "--resume: {last} was trained with a different model ({{'base': (4, 8)}})"),
    (["--cpu-bf16"], "--resume: cpu_bf16 was False in {last}, now True"),
])
def test_cli_resume_with_changed_options_is_one_line(tmp_path, flags, message):
    """``train --resume`` with a seed, batch, loss, training cache or width other than the run's would
    not continue that training: one error line naming the option, both values and the checkpoint,
    and the run folder as it was (config.json not rewritten)."""
    from tiny_models import TINY, tiny_cache

    data = tiny_cache(tmp_path, 1)
    other = tiny_cache(tmp_path / "b", 2)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), epochs=2, steps_per_epoch=1, stop_after=1, seed=1,
                      **TINY))
    before = _files(run)
    fill = dict(last=run / "checkpoints" / "last.pt", data=data, other=other)
    r = _cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress",
             *(f.format(**fill) for f in flags))
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines()[-1] == "error: " + message.format(**fill), r.output
    assert "Traceback" not in r.output and _files(run) == before


def test_cli_resume_from_another_folder_finds_the_runs_inputs(tmp_path, monkeypatch):
    """A run started with relative paths (--data syn) recorded them so in config.json: --resume from
    another folder ended 'error: syn does not exist', not saying the path came from the run's config.
    The inputs are now recorded absolute (the run resumes from anywhere); a run recorded relative says
    where the path came from."""
    import json

    from tiny_models import tiny_cache

    tiny_cache(tmp_path / "a", 1)
    (tmp_path / "a" / "s.json").write_text(json.dumps({"splits": {"x": ["synth_000", "synth_001"]}}))
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    tiny = ["--patch", "16", "--base", "4", "--levels", "2", "--res-units", "0", "--batch", "1"]
    r = _cli("train", "--data", "train", "--val", "train", "--split", "s.json:x", "--out", "run", "--epochs",
             "2", "--stop-after", "1", "--steps-per-epoch", "1", "--threads", "1", "--no-progress", *tiny)
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "a" / "run" / "config.json").read_text())
    want = str(tmp_path / "a" / "train")
    assert (cfg["data"], cfg["val"], cfg["train_split"]) == (want, want, f"{tmp_path / 'a' / 's.json'}:x")
    monkeypatch.chdir(tmp_path / "b")
    r = _cli("train", "--out", "../a/run", "--resume", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    # a run recorded before: its relative paths are named as the config's
    cfg["data"] = "train"
    (tmp_path / "a" / "run" / "config.json").write_text(json.dumps(cfg))
    r = _cli("train", "--out", "../a/run", "--resume", "--epochs", "3", "--threads", "1", "--no-progress")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.splitlines()[-1] == (
        "error: ../a/run/config.json: data 'train' does not exist here (a path relative to the folder the "
        "run was started in): resume from there or give --data again"), r.output
    r = _cli("train", "--out", "../a/run", "--resume", "--epochs", "3", "--data", "../a/train",
             "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("flags, key, was, now", [
    (["--select", "dvh"], "select", "'dose'", "'dvh'"),
    (["--val-patients", "1"], "val_patients", "None", "1"),
    (["--val", "{data}"], "val", "'{val}'", "'{data}'"),
    (["--sw-overlap", "0.25"], "sw_overlap", "0.5", "0.25"),
])
def test_cli_resume_with_another_validation_is_one_line(tmp_path, flags, key, was, now):
    """``train --resume`` of a run whose best.pt was chosen by validation, with another score to select
    by, other validation patients or other windows, compared the new epochs' scores with best.pt's
    recorded one (a DVH score of 20 against a dose score of 11: no later epoch was ever best) and kept
    the wrong best.pt without a word: one error line naming the option, and the run folder as it was.
    The same validation spelt another way (a relative path) resumes."""
    from tiny_models import TINY, tiny_cache

    data = tiny_cache(tmp_path / "a", 1)
    val = tiny_cache(tmp_path / "b", 2)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), val=str(val), out=str(run), epochs=2, steps_per_epoch=1, stop_after=1,
                      seed=1, select="dose", val_every=1, **TINY))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["best"]["select"] == "dose"
    before = _files(run)
    fill = dict(data=data, val=val)
    r = _cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress",
             *(f.format(**fill) for f in flags))
    last = run / "checkpoints" / "last.pt"
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines()[-1].startswith(
        f"error: --resume: {key} was {was.format(**fill)} in {last}, now {now.format(**fill)}: best.pt was "
        "chosen by validation scores"), r.output
    assert "Traceback" not in r.output and _files(run) == before
    if key == "val":
        cwd = os.getcwd()
        os.chdir(val.parent)
        try:
            r = _cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress", "--val", "train")
        finally:
            os.chdir(cwd)
        assert r.exit_code == 0, (r.output, r.exception)


@pytest.mark.parametrize("change", ["protocol", "train_split", "split_file", "loss_options"])
def test_cli_resume_with_other_patients_or_another_protocol_is_one_line(tmp_path, change):
    """``train --resume`` with another protocol (the CDM loss's criteria), other loss options, another
    training split, or a split file rewritten in place with other patients continued the run on another
    loss or other patients without a word (hunt/resume_protocol.py), though another loss or cache
    path was refused: one error line, and the run folder as it was (protocol.json not rewritten)."""
    import json

    from tiny_models import TINY

    data = tmp_path / "data"
    write_cache(make_cohort(4, seed=1, size=20), data)
    ids = sorted(p.stem for p in data.glob("*.npz"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"splits": {"a": ids[:2], "b": ids[2:]}}))
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), out=str(run), epochs=2, steps_per_epoch=1, stop_after=1, seed=1,
                      train_split=f"{split}:a", protocol="openkbp", **{**TINY, "loss": "mae+cdm"}))
    before = _files(run)
    last = run / "checkpoints" / "last.pt"
    flags, message = {
        "protocol": (["--protocol", "openkbp-clinical"],
                     f"--resume: protocol was 'openkbp' in {last}, now 'openkbp-clinical': the loss and "
                     "the validation scores would change mid-run"),
        "loss_options": (["--loss-opt", "cdm_tau=2"], f"--resume: loss_options was {{}} in {last}, now "
                         "{'cdm_tau': 2}"),
        "train_split": (["--split", f"{split}:b"],
                        f"--resume: {last} was trained on 2 other patients than the 2 the data now gives "
                        f"(train_split was '{split}:a', now '{split}:b')"),
        "split_file": ([], f"--resume: {last} was trained on 2 other patients than the 2 the data now gives "
                       f"(the ids of {data} split {split}:a are others now)"),
    }[change]
    if change == "split_file":  # rewritten in place: its split "a" names the other patients
        split.write_text(json.dumps({"splits": {"a": ids[2:], "b": ids[:2]}}))
    r = _cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress", *flags)
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines()[-1].startswith("error: " + message), r.output
    assert "Traceback" not in r.output and _files(run) == before


def test_a_protocol_prescribing_a_target_otherwise_than_the_cache_is_refused(tmp_path):
    """openkbp-clinical (PTV70 at 70 Gy) on a cache whose PTV70 is prescribed 66 Gy trained the CDM loss
    towards PTV70 D99% >= 66.5 Gy (101 % of the cache's prescription, which the model's input says)
    without a word (hunt/protocol_rx_mismatch.py): refused, naming the target, both prescriptions and
    the criteria; the same protocol with the cache's prescription trains."""
    import json
    from dataclasses import replace

    from dosepred.errors import InputError
    from dosepred.protocol import load_protocol
    from tiny_models import TINY

    pts = make_cohort(2, seed=1, size=20)
    rs = RoiSet(tuple(replace(r, prescription=66.0) if r.name == "PTV70" else r for r in pts[0].roi_set))
    write_cache([Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                         dict(p.meta), p.geometry) for p in pts], tmp_path / "data")
    common = dict(data=str(tmp_path / "data"), epochs=1, steps_per_epoch=1, seed=1,
                  **{**TINY, "loss": "mae+cdm"})
    with pytest.raises(InputError, match=r"^protocol 'openkbp-clinical' prescribes PTV70 at 70 Gy where the "
                       r"cache's is 66 Gy \(its D99%, D98%, D95%, V110%\): the CDM loss"):
        train(TrainConfig(out=str(tmp_path / "r"), protocol="openkbp-clinical", **common))
    assert not (tmp_path / "r").exists()
    mine = load_protocol("openkbp-clinical").model_dump(mode="json")
    mine["prescriptions"]["PTV70"] = 66.0
    (tmp_path / "p.json").write_text(json.dumps(mine))
    train(TrainConfig(out=str(tmp_path / "ok"), protocol=str(tmp_path / "p.json"), **common))
    assert (tmp_path / "ok" / "checkpoints" / "last.pt").is_file()


def test_cli_a_loss_that_becomes_nan_stops_the_run_and_leaves_nothing(tmp_path):
    """The loss check fires when the training diverges (here --lr 1e30: the first step's update makes the
    weights ~1e30, the next loss NaN): one line naming the step and the likely cause, and no run folder
    (it failed before a finished epoch). A NaN in the data cannot reach it: the cache reader refuses a
    dose that is not finite."""
    from dosepred.io.cache import write_members
    from tiny_models import tiny_cache

    data = tiny_cache(tmp_path, 1)
    args = ["train", "--data", data, "--patch", "16", "--base", "4", "--levels", "2", "--res-units", "0",
            "--batch", "1", "--threads", "1", "--loss", "mae", "--epochs", "1", "--steps-per-epoch", "3",
            "--no-progress"]
    r = _cli(*args, "--out", tmp_path / "run", "--lr", "1e30")
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines()[-1] == "error: loss became nan at step 1; lower --lr?", r.output
    assert "Traceback" not in r.output and not (tmp_path / "run").exists()
    f = sorted(data.glob("*.npz"))[0]
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["dose"] = np.full_like(arrays["dose"], np.nan)  # written by another tool
    write_members(f, arrays)
    r = _cli(*args, "--out", tmp_path / "run")
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines()[-1] == f"error: patient {f.stem}: dose contains NaN/inf (in {f})", r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["best.pt", "epoch_2.pt", "metrics.csv"])
def test_a_failure_between_an_epochs_files_is_resumed_whole(caches, tmp_path, monkeypatch, where):
    """A full disk (or kill -9) while an epoch's files are written: last.pt was saved first, then best.pt,
    epoch_K.pt and the metrics row. A failure after last.pt left a run whose last.pt said epoch 2 was done
    (and, without validation, best) while best.pt still held epoch 1, no epoch_2.pt was ever written, or
    metrics.csv lacked row 2: --resume then said the run was finished, and `predict --model RUN` used
    epoch 1's weights. Now last.pt is written last (the epoch is done only when every file of it is):
    --resume trains epoch 2 again and the run ends like an uninterrupted one."""
    import errno

    from dosepred.training import logging as run_logging
    from dosepred.training import trainer
    from dosepred.workflows import train_run

    opts = dict(data=str(caches / "train"), loss="mae", epochs=2, steps_per_epoch=2, save_every=2, seed=3,
                patch=16, base=4, levels=2, res_units=0, batch=1, threads=1)
    ref = tmp_path / "ref"
    train_run(ref, opts)
    full = OSError(errno.ENOSPC, "No space left on device")
    real_save, real_append = trainer.checkpoint.save_checkpoint, run_logging.CsvLog.append

    def save(st, path):
        if Path(path).name == where and st["epoch"] == 2:
            raise full
        return real_save(st, path)

    def append(self, row):
        if where == "metrics.csv" and row["epoch"] == 2:
            raise full
        return real_append(self, row)

    monkeypatch.setattr(trainer.checkpoint, "save_checkpoint", save)
    monkeypatch.setattr(run_logging.CsvLog, "append", append)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        train_run(run, opts)
    monkeypatch.setattr(trainer.checkpoint, "save_checkpoint", real_save)
    monkeypatch.setattr(run_logging.CsvLog, "append", real_append)
    train_run(run, {}, resume=True)
    for name in ("last.pt", "best.pt", "epoch_2.pt"):
        assert torch.load(run / "checkpoints" / name, weights_only=True)["epoch"] == 2, name
        a, b = _weights(ref, name), _weights(run, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()] == ["epoch", "1", "2"]


def test_a_resumed_run_s_tensorboard_log_holds_each_step_once(caches, tmp_path, monkeypatch):
    """An epoch's row goes to metrics.csv and TensorBoard before its last.pt is saved; a failure (full
    disk, kill -9, Ctrl-C) between them has --resume train that epoch again. metrics.csv dropped the
    lost row, but TensorBoard kept it: the redone epoch's values were logged a second time at the same
    step (a run that resumed on another thread count showed two losses per step). Now the resumed log
    purges what was logged after the resumed checkpoint's step, as an uninterrupted run's shows."""
    import errno
    import time

    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from dosepred.training import trainer
    from dosepred.workflows import train_run

    opts = dict(data=str(caches / "train"), loss="mae", epochs=3, steps_per_epoch=2, seed=3, patch=16,
                base=4, levels=2, res_units=0, batch=1, threads=1)
    real = trainer.checkpoint.save_rotating

    def save(st, path, prev, rotate=True):
        if st["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(st, path, prev, rotate)

    monkeypatch.setattr(trainer.checkpoint, "save_rotating", save)
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        train_run(run, opts)
    monkeypatch.setattr(trainer.checkpoint, "save_rotating", real)
    time.sleep(1.1)  # events files are read in name order, named by the second they were opened in
    train_run(run, {}, resume=True)
    acc = ea.EventAccumulator(str(run / "tb"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train_loss")]
    assert steps == [2, 4, 6], steps
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    csv_loss = [float(r.split(",")[3]) for r in rows]
    assert [e.value for e in acc.Scalars("train_loss")] == pytest.approx(csv_loss, rel=1e-6)


def test_a_stop_sent_to_every_process_of_a_job_with_loader_workers_is_one_line(caches, tmp_path):
    """`train --workers 2` stopped by SIGTERM sent to its whole process group (a batch system's time
    limit, a container stopping): torch's DataLoader workers die of a SIGTERM not sent by their parent,
    and the command printed 'Exception ignored in ... Traceback ... RuntimeError: DataLoader worker
    (pid N) is killed by signal: Terminated.' above its error line. Now the workers leave the signals to
    the command, which ends them: one line, exit code 143, the finished epoch kept for --resume."""
    import signal

    out = tmp_path / "run"
    script = tmp_path / "stop.py"
    script.write_text(f"""
import os, signal, sys, time
from dosepred.training import dataset
real = dataset.CropDataset.__getitem__
def get(self, index):
    if self.epoch == 2 and index == 0:
        os.killpg(0, signal.SIGTERM)
        time.sleep(1)
    return real(self, index)
dataset.CropDataset.__getitem__ = get
sys.argv = ["dosepred", "train", "--data", {str(caches / "train")!r}, "--out", {str(out)!r},
            "--loss", "mae", "--patch", "16", "--channels", "4,8", "--res-units", "0", "--batch", "1",
            "--steps-per-epoch", "2", "--epochs", "3", "--threads", "1", "--workers", "2", "--no-progress"]
from dosepred.cli import main
main()
""")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                       start_new_session=True)
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: interrupted (SIGTERM): {out} keeps its last finished "
                                             f"epoch; continue with `dosepred train --out {out} --resume`"]
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("full_from", [1, 2])
def test_a_full_disk_met_by_the_tensorboard_log_is_one_line_naming_it(caches, tmp_path, full_from):
    """TensorBoard writes its events file in a thread of its own: a full disk met there printed 'Exception
    in thread Thread-1: Traceback ... OSError' and then 'error: [Errno 28] No space left on device',
    naming no file (also when the disk was full from the log's first event, written as it is opened).
    Now it is one line naming the log (RUN/tb), and a finished epoch stays for --resume."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    script = tmp_path / "full.py"
    script.write_text(f"""
import errno, sys
from tensorboard.summary.writer import record_writer
from dosepred.training import logging as run_logging
full = []
real_write, real_epoch = record_writer.RecordWriter.write, run_logging.RunLogger.epoch
def write(self, data):
    if full:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_write(self, data)
def epoch(self, row, is_best, step):
    if row["epoch"] == 2:
        full.append(1)
    return real_epoch(self, row, is_best, step)
if {full_from} == 1:
    full.append(1)
record_writer.RecordWriter.write, run_logging.RunLogger.epoch = write, epoch
sys.argv = ["dosepred", "train", "--data", {str(caches / "train")!r}, "--out", {str(out)!r},
            "--loss", "mae", "--patch", "16", "--channels", "4,8", "--res-units", "0", "--batch", "1",
            "--steps-per-epoch", "2", "--epochs", "3", "--threads", "1", "--no-progress"]
from dosepred.cli import main
main()
""")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Exception in thread" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {out / 'tb'}: No space left on device"], r.stderr
    if full_from == 1:  # no epoch finished: nothing to resume, nothing left
        assert not out.exists()
    else:
        assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1


def test_a_validation_of_a_diverged_model_says_it_diverged(tmp_path):
    """--lr 1e3: the first step's update leaves the loss finite but the weights huge, and validation
    predicted 4e7 Gy; the run then stopped with the scoring's message for a prediction file, 'a dose
    in cGy? a dose is in Gy (divide by 100)', which sends a user to their data. Now the line says the
    training diverged, at which epoch, for which validation patient."""
    from tiny_models import tiny_cache

    data = tiny_cache(tmp_path, 1)
    r = _cli("train", "--data", data, "--val", data, "--patch", "16", "--base", "4", "--levels", "2",
             "--res-units", "0", "--batch", "1", "--threads", "1", "--loss", "mae", "--epochs", "1",
             "--steps-per-epoch", "1", "--lr", "1e3", "--out", tmp_path / "run", "--no-progress")
    assert r.exit_code == 2, (r.output, r.exception)
    last = r.output.splitlines()[-1]
    assert last.startswith("error: validation after epoch 1: the model predicts ") and "cGy" not in last
    assert "for validation patient " in last and "training diverged; lower --lr?" in last, r.output
    assert "Traceback" not in r.output


def test_a_divergence_in_the_saved_weights_does_not_advise_resuming(tmp_path):
    """--lr 1e20, one step per epoch: epoch 1's step updates the weights to ~1e20 (its loss, computed
    before, is finite), last.pt saves them, and epoch 2's first loss is NaN. The run said 'keeps its
    finished epochs (last: 1); once the cause below is fixed, continue with --resume' and 'lower --lr?';
    resuming with a lower --lr met the same NaN at the same step (last.pt's weights are the diverged
    ones), as often as one tried. Now the error says so, and the run is not offered for --resume."""
    from tiny_models import tiny_cache

    data = tiny_cache(tmp_path, 1)
    args = ["train", "--data", data, "--patch", "16", "--base", "4", "--levels", "2", "--res-units", "0",
            "--batch", "1", "--threads", "1", "--loss", "mae", "--epochs", "3", "--steps-per-epoch", "1",
            "--schedule", "constant", "--out", tmp_path / "run", "--no-progress"]
    r = _cli(*args, "--lr", "1e20")
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.splitlines()[-1] == (
        "error: loss became nan at step 1, the first step from the weights saved after epoch 1 "
        "(checkpoints/last.pt): they have diverged too, so --resume would meet this again; start the run "
        "anew with a lower --lr (--overwrite)"), r.output
    assert "--resume`" not in r.output and "Traceback" not in r.output
    r = _cli(*args, "--lr", "1e-4", "--resume")  # what the message says: resuming fails the same way
    assert r.exit_code == 2 and "loss became nan at step 1, the first step" in r.output, r.output
    r = _cli(*args, "--lr", "1e-4", "--overwrite")
    assert r.exit_code == 0, r.output


def test_a_validation_predicting_nan_says_the_saved_weights_diverged(tmp_path):
    """--lr 1e20 with validation: epoch 1's weights (saved in last.pt) predict NaN. predict's error for
    such weights ('train it again with a lower --lr') stopped the run, and the run then said 'continue
    with --resume', which would start from those weights. Now one line says the training diverged and
    the saved weights are not usable, and --resume is not offered."""
    from tiny_models import tiny_cache

    data = tiny_cache(tmp_path, 1)
    r = _cli("train", "--data", data, "--val", data, "--patch", "16", "--base", "4", "--levels", "2",
             "--res-units", "0", "--batch", "1", "--threads", "1", "--loss", "mae", "--epochs", "2",
             "--steps-per-epoch", "1", "--schedule", "constant", "--lr", "1e20", "--val-every", "1", "--out",
             tmp_path / "run",
             "--no-progress")
    assert r.exit_code == 2, (r.output, r.exception)
    last = r.output.splitlines()[-1]
    assert last.startswith("error: validation after epoch 1: the model predicts NaN or infinite doses for "
                           "validation patient "), r.output
    assert "start again (--overwrite) with a lower --lr" in last
    assert "--resume" not in r.output and "Traceback" not in r.output


def test_a_nan_gradient_of_a_finite_loss_stops_the_step_that_made_it(caches, tmp_path):
    """A loss term whose derivative is infinite where its value is finite (moment powers below 1 had
    one at a zero dose, which the model predicts outside the possible-dose mask, where a contour may
    reach; here a term 0 * sqrt|pred - pred|): the loss was finite, its gradient NaN, and the step wrote
    NaN into every weight. A run of one step ended 'done' with a NaN last.pt (a longer one: 'loss
    became nan at step 1; lower --lr?'). Now that step stops the run, saying so, before any weight is
    written."""
    from dosepred.training import Trainer
    from dosepred.training.checks import TrainingDivergedError

    class NanGradient(Trainer):
        def setup_loss(self):
            super().setup_loss()
            inner = self.loss_fn

            def loss(pred, *rest):
                total, parts = inner(pred, *rest)
                return total + 0.0 * torch.sqrt((pred - pred.detach()).abs()).sum(), parts

            self.loss_fn = loss

    cfg = TrainConfig(data=str(caches / "train"), out=str(tmp_path / "run"), loss="mae", epochs=1,
                      steps_per_epoch=1, **{**TINY, "res_units": 0, "batch": 1, "threads": 1})
    with pytest.raises(TrainingDivergedError, match=r"^the gradient became nan at step 0 though the loss "
                       r"\([0-9.]+\) is finite"):
        NanGradient(cfg, progress=False).fit()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_cli_resume_of_a_run_and_data_copied_to_another_machine(tmp_path):
    """A run and its training cache copied to another machine (or a disk mounted elsewhere) could not be
    resumed: config.json and last.pt name the data by the first machine's path, and --data at the new
    one was refused ("--resume: data was '/home/alice/...' in last.pt, now '/data/bob/...'"), though the
    cache was the same, and so was --val of a run that chose best.pt by validation. It resumes when each
    cache's dataset.json is byte for byte the run's record of it; another cache is refused as before, and
    without --data / --val the recorded path is named as the config's."""
    import shutil

    from tiny_models import TINY, tiny_cache

    data, val = tiny_cache(tmp_path / "alice", 1), tiny_cache(tmp_path / "alice" / "v", 3)
    run = tmp_path / "alice" / "run"
    train(TrainConfig(data=str(data), val=str(val), out=str(run), epochs=3, steps_per_epoch=1, stop_after=1,
                      seed=1, select="dose", val_every=1, **TINY))
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["best"]["select"] == "dose"
    shutil.copytree(tmp_path / "alice", tmp_path / "bob")
    shutil.rmtree(tmp_path / "alice")
    moved, other = tmp_path / "bob" / "run", tiny_cache(tmp_path / "other", 2)
    r = _cli("train", "--out", moved, "--resume", "--threads", "1", "--no-progress")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.splitlines()[-1] == (
        f"error: {moved / 'config.json'}: data {str(data)!r} does not exist here (the run was made on "
        "another machine, or its data moved?): give --data again"), r.output
    r = _cli("train", "--out", moved, "--resume", "--data", other, "--val", tmp_path / "bob" / "v" / "train",
             "--threads", "1", "--no-progress")
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("error: --resume: data was "), r.output
    new = ["--data", tmp_path / "bob" / "train", "--threads", "1", "--no-progress"]
    r = _cli("train", "--out", moved, "--resume", *new)
    assert r.exit_code == 2 and r.output.splitlines()[-1].endswith("give --val again"), r.output
    r = _cli("train", "--out", moved, "--resume", *new, "--val", other)  # best.pt's scores: of other patients
    assert r.exit_code == 2 and r.output.splitlines()[-1].startswith("error: --resume: val was "), r.output
    r = _cli("train", "--out", moved, "--resume", *new, "--val", tmp_path / "bob" / "v" / "train")
    assert r.exit_code == 0, r.output
    assert torch.load(moved / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 2


def test_cli_resume_of_a_fine_tune_whose_init_moved_names_the_remedy_that_works(tmp_path):
    """A fine-tune whose --init model was moved was told to 'give --init again' (22a9732), and with --init
    at the new path was then refused ('--resume: init was ... now ...'): --resume loads the --init model
    and keeps it by its path. The message now says to put it back there (a link will do), which resumes."""
    from tiny_models import TINY, tiny_cache

    data = tiny_cache(tmp_path / "d", 1)
    first, run = tmp_path / "first", tmp_path / "ft"
    train(TrainConfig(data=str(data), out=str(first), epochs=1, steps_per_epoch=1, **TINY))
    train(TrainConfig(data=str(data), out=str(run), init=str(first), epochs=2, steps_per_epoch=1,
                      stop_after=1, **TINY))
    first.rename(tmp_path / "moved")
    r = _cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress")
    assert r.exit_code == 2 and r.output.splitlines()[-1] == (
        f"error: {run / 'config.json'}: init {str(first)!r} does not exist here (the run was made on another "
        "machine, or its data moved?): a resumed run loads it and keeps it by this path, so put it back "
        "there (a symbolic link will do)"), r.output
    first.symlink_to(tmp_path / "moved")
    r = _cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
