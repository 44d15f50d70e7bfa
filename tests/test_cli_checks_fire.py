"""Input checks that no other test executed (a coverage run of the suite listed them) now fire from
the public entry point a user meets: the CLI (typer's CliRunner) for a command line, a split file,
a protocol JSON, a model or ensemble folder, a cache; the Python API where only a caller reaches the
check. Each asserts exit code 2, one ``error:`` line naming the file or field, no traceback and
nothing written (``fails``/``unchanged`` of test_bad_inputs); a warning, that it is shown and the
result still right.

Classes: data split and split files, protocols (dosepred and PortPy JSON), evaluate, predict,
calibrate and plan QA, train, ensembles and model files, the Python API.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort
from test_bad_inputs import cli, fails, ok, prediction_csv, tiny_openkbp_patient, unchanged


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Shared inputs, never written by a test: ``okbp``, two tiny OpenKBP patients pt_1, pt_2 (PTV70,
    SpinalCord), and ``pred``, their predictions as OpenKBP CSV files."""
    root = tmp_path_factory.mktemp("inputs")
    for k in (1, 2):
        tiny_openkbp_patient(root / "okbp" / f"pt_{k}", shift=k)
        prediction_csv(root / "pred" / f"pt_{k}.csv", {10 + k: "70", 11 + k: "60", 12 + k: "3"})
    return root


@pytest.fixture(scope="module")
def cache2(tmp_path_factory) -> Path:
    """Two synthetic 16^3 patients (synth_000, synth_001, with study dates), never written by a test."""
    root = tmp_path_factory.mktemp("c2")
    write_cache(make_cohort(2, seed=5, size=16), root / "cache")
    return root / "cache"


# ------------------------------------------------------------------------------------- data split

def split_cli(src, out, *args):
    return cli("data", "split", src, "--out", out, *args)


def test_split_more_fractions_than_default_names(cache2, work):
    with unchanged(work):
        fails(split_cli(cache2, work / "s.json", "--random", "--fractions", "0.25,0.25,0.25,0.25"),
              "4 fractions given", "--names")


@pytest.mark.parametrize("ids, needle", [
    (["a=synth_000,synth_000"], "split 'a' lists a patient twice"),
    (["=synth_000"], "empty split name in --ids"),
])
def test_split_bad_id_lists(cache2, work, ids, needle):
    args = [a for i in ids for a in ("--ids", i)]
    with unchanged(work):
        fails(split_cli(cache2, work / "s.json", *args), needle)


@pytest.mark.parametrize("content, needle", [
    ({"a": "synth_000"}, "split 'a' must be a list of patient ids"),
    ({}, "no split lists given"),
])
def test_split_bad_id_file(cache2, work, content, needle):
    f = work / "lists.json"
    f.write_text(json.dumps(content))
    with unchanged(work):
        text = fails(split_cli(cache2, work / "s.json", "--ids", f), needle)
    assert "lists.json" in text or needle == "no split lists given"


@pytest.mark.parametrize("csv, needle", [
    ("", "is not a readable CSV"),
    ("id,date\n,20200101\n", "row 2: empty 'id'"),
    ("id,date\nsynth_000,20200101\nsynth_001,\n", "row 3: patient synth_001 has no 'date'"),
])
def test_split_bad_manifest(cache2, work, csv, needle):
    m = work / "manifest.csv"
    m.write_text(csv)
    with unchanged(work):
        fails(split_cli(cache2, work / "s.json", "--temporal", "--manifest", m), "manifest.csv", needle)


def test_split_temporal_cache_without_dates(work):
    pats = make_cohort(2, seed=5, size=12)
    write_cache(pats, work / "c")
    info = json.loads((work / "c" / "dataset.json").read_text())
    for e in info["patients"]:
        (e.get("meta") or {}).pop("study_date", None)
    (work / "c" / "dataset.json").write_text(json.dumps(info))
    with unchanged(work):
        fails(split_cli(work / "c", work / "s.json", "--temporal"), "synth_000", "study_date")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"splits": {"train": [1, 2]}}), "split 'train' must be a list of patient id strings"),
])
def test_subset_bad_split_file(cache2, work, content, needle):
    f = work / "split.json"
    f.write_text(content)
    with unchanged(work):
        fails(cli("data", "subset", cache2, "--split", f"{f}:train", "--out", work / "sub"),
              "split.json", needle)


# -------------------------------------------------------------------------------------- protocols

def evaluate_with(base, work, protocol):
    f = work / "protocol.json"
    f.write_text(protocol if isinstance(protocol, str) else json.dumps(protocol))
    with unchanged(work):
        return fails(cli("evaluate", "--reference", base / "okbp", "--prediction", base / "pred",
                         "--protocol", f, "--json", work / "r.json"), "protocol.json")


def portpy(*criteria):
    return {"name": "hn", "criteria": list(criteria)}


def test_protocol_not_an_object(base, work):
    evaluate_with(base, work, "[]")


def test_protocol_negative_limit(base, work):
    text = evaluate_with(base, work, {"name": "p", "criteria": [
        {"roi": "SpinalCord", "metric": "Dmax", "limit": -1, "direction": "<="}]})
    assert "SpinalCord Dmax: limit must be >= 0, got -1" in text


@pytest.mark.parametrize("criterion, needle", [
    ({"type": "dose_volume_D", "parameters": {"structure_name": "PTV70"}},
     "PortPy criterion 1 (PTV70 dose_volume_D): needs parameters volume_perc or volume_cc"),
    ({"type": "dose_volume_V", "parameters": {"structure_name": "SpinalCord"}},
     "PortPy criterion 1 (SpinalCord dose_volume_V): needs parameters dose_gy or dose_perc"),
    ({"type": "conformity", "parameters": {"structure_name": "PTV70"}},
     "type 'conformity' is not supported"),
    ({"type": "max_dose", "parameters": {"structure_name": "SpinalCord"},
      "constraints": {"limit_volume_perc": 5}},
     "PortPy criterion 1 (SpinalCord max_dose): PortPy constraint 'limit_volume_perc' is not supported"),
])
def test_portpy_protocol_bad_criterion(base, work, criterion, needle):
    assert needle in evaluate_with(base, work, portpy(criterion))


# ---------------------------------------------------------------------------------------- predict

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A TINY model trained 3 steps on 3 synthetic 20^3 patients (tests/tiny_models.py)."""
    from tiny_models import tiny_cache, tiny_run

    root = tmp_path_factory.mktemp("run")
    return tiny_run(tiny_cache(root, seed=2), root / "run")


def edited_cache(folder: Path, n: int = 1, seed: int = 7, rois=None) -> Path:
    """A cache of ``n`` synthetic 16^3 patients, its dataset.json ROI list passed through ``rois``."""
    write_cache(make_cohort(n, seed=seed, size=16), folder)
    if rois is not None:
        info = json.loads((folder / "dataset.json").read_text())
        info["rois"] = rois(info["rois"])
        (folder / "dataset.json").write_text(json.dumps(info))
    return folder


def renamed(old: str, new: dict):
    return lambda rois: [new if r["name"] == old else r for r in rois]


def test_predict_cuda_without_cuda(run, work, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = edited_cache(work / "data")
    with unchanged(work):
        fails(cli("predict", "--model", run, "--data", data, "--out", work / "out", "--device", "cuda"),
              "device 'cuda'", "CUDA is not available")


def test_predict_roi_of_another_prescription(run, work):
    data = edited_cache(work / "data", rois=renamed(
        "PTV70", {"name": "PTV70", "kind": "target", "prescription": 66.0}))
    with unchanged(work):
        fails(cli("predict", "--model", run, "--data", data, "--out", work / "out"),
              "synth_000", "ROI PTV70 is a target (prescription 66 Gy)", "(prescription 70 Gy)",
              "fine-tune a model")


def test_predict_unknown_target_warns_and_predicts(run, work):
    data = edited_cache(work / "data", rois=renamed(
        "PTV56", {"name": "PTV54", "kind": "target", "prescription": 54.0}))
    r = cli("predict", "--model", run, "--data", data, "--out", work / "out", "--format", "cache",
            "--allow-missing-rois")
    assert r.exit_code == 0, r.output
    assert "its target(s) PTV54" in r.output and "not the model's: predicted without them" in r.output
    from dosepred.io.cache import Cache

    (p,) = list(Cache.open(work / "out"))
    assert p.dose is not None and np.isfinite(p.dose).all() and p.dose.max() > 0


@pytest.mark.parametrize("fmt", ["openkbp", "cache"])
def test_predict_empty_split(run, work, fmt):
    data = edited_cache(work / "data")
    f = work / "split.json"
    f.write_text(json.dumps({"splits": {"none": [], "all": ["synth_000"]}}))
    with unchanged(work):
        fails(cli("predict", "--model", run, "--data", data, "--out", work / "out", "--format", fmt,
                  "--split", f"{f}:none"), "split 'none' names no patient")


def test_predict_split_naming_a_patient_the_data_lacks(base, run, work):
    """`predict --split FILE:NAME` whose split names a patient the data does not hold (a split made for
    another cache, a typo) predicted the others of an OpenKBP (or NIfTI, DICOM) folder, wrote them and
    exited 0: the patient was missing from the outputs without a word (a cache said 'patient pt_9 is not
    in cache'). Now one error naming the split file, the split and the patient (as `data subset` and
    `train` refuse it), nothing written."""
    f = work / "split.json"
    f.write_text(json.dumps({"splits": {"a": ["pt_1", "pt_9"]}}))
    with unchanged(work):
        fails(cli("predict", "--model", run, "--data", base / "okbp", "--out", work / "out", "--split",
                  f"{f}:a", "--allow-missing-rois"),
              f"split file {f}: split 'a' names patients not in the data: pt_9")


def test_predict_unknown_format(run, work):
    data = edited_cache(work / "data")
    with unchanged(work):
        fails(cli("predict", "--model", run, "--data", data, "--out", work / "out", "--format", "png"),
              "png")


# ------------------------------------------------------------------------- ensembles, model files

@pytest.fixture(scope="module")
def run2(tmp_path_factory) -> Path:
    """A second TINY model, trained on other synthetic patients (other weights than ``run``'s)."""
    from tiny_models import tiny_cache, tiny_run

    root = tmp_path_factory.mktemp("run2")
    return tiny_run(tiny_cache(root, seed=3), root / "run")


def ensemble_of(run: Path, run2: Path, out: Path) -> dict:
    """An ensemble of the two runs written by the CLI; its ensemble.json."""
    ok(cli("ensemble", run / "checkpoints" / "last.pt", run2 / "checkpoints" / "last.pt", "--out", out))
    return json.loads((out / "ensemble.json").read_text())


@pytest.mark.parametrize("member, needle", [
    (1, "member 1 must be an object with \"model\", \"sha256\" and \"weight\""),
    ({"model": "", "sha256": "0" * 64, "weight": 0.5},
     "member 1: \"model\" must be the path of a model file"),
])
def test_predict_ensemble_bad_member_entry(run, run2, work, member, needle):
    spec = ensemble_of(run, run2, work / "ens")
    spec["members"][0] = member
    (work / "ens" / "ensemble.json").write_text(json.dumps(spec))
    data = edited_cache(work / "data")
    with unchanged(work):
        fails(cli("predict", "--model", work / "ens", "--data", data, "--out", work / "out"),
              "ensemble.json", needle)


def test_predict_ensemble_member_not_a_checkpoint(run, run2, work):
    import hashlib

    spec = ensemble_of(run, run2, work / "ens")
    junk = work / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    spec["members"][0].update(model=str(junk), sha256=hashlib.sha256(junk.read_bytes()).hexdigest())
    (work / "ens" / "ensemble.json").write_text(json.dumps(spec))
    data = edited_cache(work / "data")
    with unchanged(work):
        text = fails(cli("predict", "--model", work / "ens", "--data", data, "--out", work / "out"),
                     "ensemble.json: member 1", "not a readable dosepred checkpoint")
    assert text.count(str(junk)) <= 1  # the member's path said once, not twice


def test_ensemble_of_missing_model(run, work):
    with unchanged(work):
        fails(cli("ensemble", work / "nowhere.pt", run, "--out", work / "ens"), "nowhere.pt")


def test_predict_checkpoint_without_weights(run, work):
    import torch

    from dosepred.models.tags import CHECKPOINT_FORMAT

    f = work / "bare.pt"
    torch.save({"format": CHECKPOINT_FORMAT}, f)
    data = edited_cache(work / "data")
    with unchanged(work):
        fails(cli("predict", "--model", f, "--data", data, "--out", work / "out"),
              "bare.pt", "lacks model_config or model weights")


# ------------------------------------------------------------------------------------------ train

def train_cli(out, *args):
    return cli("train", "--out", out, "--no-progress", "--set", "epochs=1", "--set", "steps_per_epoch=1",
               "--patch", "16", "--base", "4", "--levels", "2", "--res-units", "0", "--batch", "1",
               "--threads", "1", *args)


def test_train_resume_of_no_run(work):
    (work / "run").mkdir()
    with unchanged(work):
        fails(train_cli(work / "run", "--resume"), "no training run to resume (no config.json)",
              "--data CACHE")


def test_train_patch_below_one(cache2, work):
    with unchanged(work):
        fails(train_cli(work / "run", "--data", cache2, "--set", "patch=[0,16,16]"),
              "patch sizes must be >= 1, got [0, 16, 16]")


def test_train_cache_without_doses(work):
    write_cache([p.with_dose(None) for p in make_cohort(2, seed=5, size=12)], work / "nodose")
    with unchanged(work):
        fails(train_cli(work / "run", "--data", work / "nodose"), "patients without dose cannot train",
              "synth_000")


def test_train_empty_split(cache2, work):
    f = work / "split.json"
    f.write_text(json.dumps({"splits": {"none": [], "all": ["synth_000", "synth_001"]}}))
    with unchanged(work):
        fails(train_cli(work / "run", "--data", cache2, "--split", f"{f}:none"),
              "split 'none' names no patient")


def test_train_init_in_other_axes(run, cache2, work):
    with unchanged(work):
        fails(train_cli(work / "run", "--data", cache2, "--init", run, "--set", "orientation=RAS"),
              "was trained in axes PLI", "orientation 'RAS'")


def test_train_rotations_with_first_orientation_need_axis(cache2, work):
    with unchanged(work):
        fails(train_cli(work / "run", "--data", cache2, "--set", "orientation=first",
                        "--set", "rotate_p=0.5"),
              "head_feet_axis")


@pytest.mark.parametrize("step", ["0", "7"])
def test_train_rotate_step_not_dividing_360(cache2, work, step):
    with unchanged(work):
        fails(train_cli(work / "run", "--data", cache2, "--set", "rotate_p=0.5",
                        "--set", f"rotate_step={step}"),
              "rotate_step")


def test_train_deprecated_flip_axis_warns_and_trains(cache2, work):
    r = train_cli(work / "run", "--data", cache2, "--set", "flip_axis=0")
    assert r.exit_code == 0, r.output
    assert "flip_axis=0 is deprecated and ignored" in r.output and "axis 1" in r.output
    assert (work / "run" / "checkpoints" / "last.pt").is_file()


# --------------------------------------------------------------------------------------- evaluate

def test_evaluate_reference_with_empty_mask(base, work):
    import shutil

    shutil.copytree(base / "okbp", work / "ref")
    (work / "ref" / "pt_1" / "possible_dose_mask.csv").write_text(",data\n")
    with unchanged(work):
        fails(cli("evaluate", "--reference", work / "ref", "--prediction", base / "pred", "--json",
                  work / "r.json"), "patient pt_1: the possible-dose mask is empty")


def test_evaluate_no_pair_at_all_with_allow_missing(base, work):
    prediction_csv(work / "pred" / "pt_9.csv", {11: "1"})
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", work / "pred", "--allow-missing",
                  "--json", work / "r.json"), "no reference patient of", "has a prediction in")


def test_evaluate_roi_recorded_missing_with_voxels(work):
    write_cache(make_cohort(2, seed=5, size=16), work / "ref")
    write_cache(make_cohort(2, seed=5, size=16), work / "pred")
    info = json.loads((work / "ref" / "dataset.json").read_text())
    assert "SpinalCord" not in info["patients"][0]["missing_rois"]
    info["patients"][0]["missing_rois"].append("SpinalCord")
    (work / "ref" / "dataset.json").write_text(json.dumps(info))
    with unchanged(work):
        fails(cli("evaluate", "--reference", work / "ref", "--prediction", work / "pred", "--json",
                  work / "r.json"), "patient synth_000: ROI SpinalCord is recorded missing but has")


# ---------------------------------------------------------------------------- other command lines

def test_set_without_equals(cache2, work):
    with unchanged(work):
        fails(train_cli(work / "run", "--data", cache2, "--set", "epochs"),
              "--set 'epochs': expected key=value")


def test_bench_evaluate_missing_data(work):
    with unchanged(work):
        fails(cli("bench", "evaluate", "--data", work / "nowhere"), "--data", "nowhere", "does not exist")


def test_bench_predict_missing_patient(base, work):
    with unchanged(work):
        fails(cli("bench", "predict", "--data", base / "okbp", "--patient", "pt_9"), "holds no patient pt_9")


# -------------------------------------------------------------------------------------- calibrate

@pytest.fixture(scope="module")
def calset(run, tmp_path_factory) -> Path:
    """``cal``: 12 synthetic 12^3 patients (as many as calibration needs); ``preds``: the run's
    predictions (as calibrate --predictions takes them) of the first 11 only."""
    root = tmp_path_factory.mktemp("cal")
    pats = make_cohort(12, seed=9, size=12)
    write_cache(pats, root / "cal")
    f = root / "split.json"
    f.write_text(json.dumps({"splits": {"some": [p.id for p in pats[:11]]}}))
    ok(cli("predict", "--model", run, "--data", root / "cal", "--out", root / "preds", "--format", "cache",
           "--no-amp", "--split", f"{f}:some"))
    return root


def test_calibrate_predictions_lacking_a_patient(run, calset, work):
    with unchanged(work):
        fails(cli("calibrate", "--model", run, "--data", calset / "cal", "--predictions", calset / "preds"),
              "no prediction for patient synth_011", str(calset / "preds"))
    assert not (run / "checkpoints" / "calibration.json").exists()


def test_calibrate_predictions_with_a_bad_options_record(run, calset, work):
    import shutil

    shutil.copytree(calset / "preds", work / "preds")
    info = json.loads((work / "preds" / "dataset.json").read_text())
    info["prediction"]["options"] = ["cpu"]
    (work / "preds" / "dataset.json").write_text(json.dumps(info))
    with unchanged(work):
        fails(cli("calibrate", "--model", run, "--data", calset / "cal", "--predictions", work / "preds"),
              "preds/dataset.json", "'options': expected an object of inference options, got list")
    assert not (run / "checkpoints" / "calibration.json").exists()


# --------------------------------------------------------------------- model files edited by hand

@pytest.mark.parametrize("key, value, needle", [
    ("absent_rois", "PTV56", "absent_rois must be a list of ROI names, got 'PTV56'"),
    ("absent_counts", {"PTV56": -1}, "absent_counts: 'PTV56' must be a count of patients, got -1"),
    ("spacing_min", [0.0, 1.0, 1.0], "is not 0 < min <= max"),
    ("shape_median", [16, 16], "expected three values, got [16, 16]"),
])
def test_predict_checkpoint_with_a_bad_space_record(run, work, key, value, needle):
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["space"] = {**ckpt["space"], key: value}
    torch.save(ckpt, work / "edited.pt")
    data = edited_cache(work / "data")
    with unchanged(work):
        fails(cli("predict", "--model", work / "edited.pt", "--data", data, "--out", work / "out"),
              "edited.pt: the model's space record is invalid", needle)


def test_split_overwrite_onto_a_folder(cache2, work):
    (work / "splits").mkdir()
    (work / "splits" / "keep.json").write_text("{}")
    with unchanged(work):
        fails(split_cli(cache2, work / "splits", "--random", "--fractions", "0.5,0.5", "--overwrite"),
              "splits: --out is a folder",
              "give a file name")
