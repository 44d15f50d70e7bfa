"""predict / export-model end to end from the CLI, on the OpenKBP sample patients."""

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.inference import InferenceOptions, prediction_record
from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    write_cache(make_cohort(4, seed=2, size=32), root / "train")
    r = runner.invoke(app, ["train", "--data", str(root / "train"), "--out", str(root / "run"),
                            "--loss", "mae",
                            "--epochs", "1", "--steps-per-epoch", "2", "--patch", "32", "--base", "4",
                            "--levels", "3", "--res-units", "0", "--threads", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="module")
def one_patient(sample_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    first = sorted(p for p in sample_dir.iterdir() if p.name.startswith("pt_"))[0]
    os.symlink(first, d / first.name)
    return d


def test_predict_then_evaluate_openkbp(run_dir, one_patient, tmp_path):
    out = tmp_path / "pred"
    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(one_patient),
                            "--out", str(out),
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    files = sorted(f.name for f in out.iterdir())
    assert files == [f"{p.name}.csv" for p in one_patient.iterdir()]
    r = runner.invoke(app, ["evaluate", "--reference", str(one_patient), "--prediction", str(out),
                            "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    js = json.loads((tmp_path / "s.json").read_text())
    assert len(js["patients"]) == 1 and 0 < js["dose_score"] < 70


def test_predict_to_cache_then_evaluate_fast_path(run_dir, sample_dir, tmp_path):
    """--format cache writes the predicted doses losslessly; evaluating from it (the compact path of
    `evaluate`) gives the scores of an independent numpy computation on the same arrays."""
    import numpy as np

    from dosepred.io import cache, openkbp

    r = runner.invoke(app, ["data", "import-openkbp", str(sample_dir), "--out", str(tmp_path / "ref"),
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    # pt_196 lacks Esophagus, which every synthetic training patient had: the flag predicts it all the same
    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(tmp_path / "ref"),
                            "--out", str(tmp_path / "pc"), "--format", "cache", "--no-progress",
                            "--allow-missing-rois"])
    assert r.exit_code == 0, r.output
    pc = cache.Cache.open(tmp_path / "pc")
    # flipping by default, mixed precision only on a GPU, recorded as data
    made = prediction_record(pc).options
    assert made == InferenceOptions(device="cpu", tta=True, allow_missing_rois=True)
    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(tmp_path / "ref"),
                            "--out", str(tmp_path / "ps"), "--format", "cache", "--tta-shift",
                            "--no-progress", "--allow-missing-rois"])
    assert r.exit_code == 0, r.output
    assert prediction_record(cache.Cache.open(tmp_path / "ps")).options == InferenceOptions(
        device="cpu", tta=True, shifts=((4, 4, 4),), allow_missing_rois=True)
    refs = {p.id: p for p in openkbp.read_folder(sample_dir)}
    assert sorted(pc.ids) == sorted(refs)
    r = runner.invoke(app, ["evaluate", "--reference", str(tmp_path / "ref"), "--prediction",
                            str(tmp_path / "pc"), "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    js = json.loads((tmp_path / "s.json").read_text())
    assert sorted(js["patients"]) == sorted(refs)
    for row in js["per_patient"]:
        ref = refs[row["id"]]
        pred = pc.load(row["id"]).dose
        assert not pred[~ref.possible_dose_mask].any()  # predictions are masked
        want = np.abs(ref.dose.astype(np.float64) - pred).sum() / ref.possible_dose_mask.sum()
        assert abs(row["dose_score"] - want) < 1e-6
        m = ref.mask("PTV70")
        d99 = np.percentile(pred[m].astype(np.float64), 1)
        assert abs(row["rois"]["PTV70"]["metrics"]["D99%"]["pred"] - d99) < 1e-5


def test_export_model_folder_predicts(run_dir, one_patient, tmp_path):
    model = tmp_path / "models" / "tiny"
    r = runner.invoke(app, ["export-model", str(run_dir / "run"), "--out", str(model)])
    assert r.exit_code == 0, r.output
    assert {"model.pt", "config.json", "README.md"} <= {f.name for f in model.iterdir()}
    assert (model / "model.pt").stat().st_size < (run_dir / "run" / "checkpoints" / "last.pt").stat().st_size
    r = runner.invoke(app, ["predict", "--model", str(model), "--data", str(run_dir / "train"),
                            "--out", str(tmp_path / "nii"), "--format", "nifti", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "nii").glob("*.nii.gz"))) == 4


def test_predict_errors_are_clear(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(tmp_path / "empty"),
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "neither a dosepred cache" in r.output
    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(tmp_path / "empty"),
                            "--out", str(tmp_path / "o"), "--format", "cache"])
    # what it is not, as for the other formats (it was "holds no patients to predict": the source's
    # error was a CacheError, taken for the cache writer's "no patients to write")
    assert r.exit_code == 2 and "neither a dosepred cache" in r.output, r.output
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "empty"), "--data", str(run_dir / "train"),
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "holds no model" in r.output
    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(run_dir / "train"),
                            "--out", str(tmp_path / "o"), "--format", "png"])
    assert r.exit_code == 2 and "unknown format" in r.output
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "not a dosepred cache" in r.output


RELEASED = sorted((Path(__file__).resolve().parents[1] / "models").glob("openkbp-*"))


@pytest.mark.parametrize("model", RELEASED, ids=lambda p: p.name)
def test_released_models_predict_a_sample_patient(model, one_patient, tmp_path):
    """Every released model folder loads and predicts an OpenKBP patient far better than chance (the
    validation dose scores of the release are 3.6-4.0 Gy; no learning gives 9.6)."""
    out = tmp_path / "pred"
    r = runner.invoke(app, ["predict", "--model", str(model), "--data", str(one_patient), "--out", str(out),
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--reference", str(one_patient), "--prediction", str(out),
                            "--json", str(tmp_path / "s.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    js = json.loads((tmp_path / "s.json").read_text())
    assert js["dose_score"] < 6.0, js["dose_score"]


def test_tta_averages_with_the_mirrored_patient(run_dir):
    """--tta = mean of the prediction and the mirrored prediction of the mirrored patient, the
    mirrored patient built here from its masks by name (LeftParotid <-> RightParotid), not by bits."""
    import numpy as np

    from dosepred.models.checkpoint import load_model
    from dosepred.patient import Patient
    from dosepred.predict import predict_dose

    model = load_model(run_dir / "run")
    p = make_cohort(1, seed=11, size=32)[0]
    ax = p.geometry.axis_along("LR")  # the left-right axis, from the geometry
    names = list(p.roi_set.names)
    assert {"LeftParotid", "RightParotid"} <= set(names)
    other = {"LeftParotid": "RightParotid", "RightParotid": "LeftParotid"}
    codes = np.zeros_like(p.roi_codes)
    for i, n in enumerate(names):
        codes |= np.flip(p.mask(other.get(n, n)), ax).astype(codes.dtype) << codes.dtype.type(i)
    q = Patient(id="mirrored", ct=np.flip(p.ct, ax).copy(), roi_codes=codes, roi_set=p.roi_set,
                spacing=p.spacing, possible_dose_mask=np.flip(p.possible_dose_mask, ax).copy())
    plain = predict_dose(model, p, InferenceOptions(tta=False))
    mirrored = np.flip(predict_dose(model, q, InferenceOptions(tta=False)), ax)
    want = 0.5 * (plain + mirrored) * p.possible_dose_mask
    got = predict_dose(model, p, InferenceOptions(tta=True))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(plain - mirrored).max() > 1e-3  # the two differ: the test can see a wrong mirror


def test_tta_shift_averages_with_the_translated_patient(run_dir):
    """shifts = mean with the prediction of the patient translated here by numpy (border slices
    repeated), translated back; voxels whose source fell outside the array keep the plain prediction."""
    import numpy as np

    from dosepred.models.checkpoint import load_model
    from dosepred.patient import Patient
    from dosepred.predict import predict_dose

    model = load_model(run_dir / "run")
    p = make_cohort(1, seed=12, size=32)[0]
    s = (4, -3, 2)

    def moved(a):  # out[i] = a[i - s], clamped
        for d, k in enumerate(s):
            a = np.take(a, np.clip(np.arange(a.shape[d]) - k, 0, a.shape[d] - 1), axis=d)
        return a.copy()

    q = Patient(id="moved", ct=moved(p.ct), roi_codes=moved(p.roi_codes), roi_set=p.roi_set,
                spacing=p.spacing, possible_dose_mask=moved(p.possible_dose_mask), geometry=p.geometry)
    plain_options = InferenceOptions(tta=False)
    plain, dq = predict_dose(model, p, plain_options), predict_dose(model, q, plain_options)
    back = np.zeros_like(dq)
    valid = np.zeros(dq.shape, bool)
    n = dq.shape
    for i in range(n[0]):
        for j in range(n[1]):
            for k in range(n[2]):
                a, b, c = i + s[0], j + s[1], k + s[2]
                if 0 <= a < n[0] and 0 <= b < n[1] and 0 <= c < n[2]:
                    back[i, j, k], valid[i, j, k] = dq[a, b, c], True
    want = (plain + back * valid) / (1 + valid) * p.possible_dose_mask
    got = predict_dose(model, p, InferenceOptions(tta=False, shifts=(s,)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not valid.all() and np.abs(got - plain).max() > 1e-3  # borders and interior both tested
    # with flipping: four passes; the flip and the shift commute with the average
    both = predict_dose(model, p, InferenceOptions(tta=True, shifts=(s,)))
    flipped = predict_dose(model, p, InferenceOptions(tta=True))
    assert np.isfinite(both).all() and np.abs(both - flipped).max() > 1e-3


@pytest.fixture(scope="module")
def lacking_cache(tmp_path_factory):
    """Two synthetic patients whose ROI set has no Esophagus (as a clinic's export might), and the
    same patients in the model's full set with Esophagus recorded missing."""
    from dosepred.patient import Patient, RoiSet

    root = tmp_path_factory.mktemp("lacking")
    full, lacking = [], []
    for p in make_cohort(2, seed=5, size=32):
        masks = {n: p.mask(n) for n in p.present_rois if n != "Esophagus"}
        rs = RoiSet(tuple(r for r in p.roi_set if r.name != "Esophagus"))
        lacking.append(Patient.from_masks(p.id, p.ct, masks, rs, p.spacing, p.possible_dose_mask,
                                          geometry=p.geometry))
        full.append(Patient.from_masks(p.id, p.ct, masks, p.roi_set, p.spacing, p.possible_dose_mask,
                                       geometry=p.geometry))
    write_cache(lacking, root / "cache")
    return root / "cache", full


def test_missing_rois_error_is_the_same_for_every_format(run_dir, lacking_cache, tmp_path):
    msgs = set()
    for fmt in ("openkbp", "nifti", "dicom", "cache"):
        r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(lacking_cache[0]),
                                "--out", str(tmp_path / fmt), "--format", fmt, "--no-progress"])
        assert r.exit_code == 2, r.output
        assert "lacks Esophagus" in r.output and "--allow-missing-rois" in r.output, r.output
        assert "holds no patients" not in r.output
        msgs.add(" ".join(r.output.split()))
        assert not (tmp_path / fmt).exists() or not any((tmp_path / fmt).iterdir())
    assert len(msgs) == 1, msgs


def test_allow_missing_rois_predicts_with_an_empty_channel(run_dir, lacking_cache, tmp_path):
    """With --allow-missing-rois the patient is predicted as the same patient in the model's ROI set
    with Esophagus recorded missing (an empty channel), and a warning names the missing ROI."""
    import numpy as np

    from dosepred.io.cache import Cache
    from dosepred.models.checkpoint import load_model
    from dosepred.predict import predict_dose

    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(lacking_cache[0]),
                            "--out", str(tmp_path / "pc"), "--format", "cache", "--allow-missing-rois",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "lacks the model's ROIs Esophagus" in " ".join(r.output.split())
    model = load_model(run_dir / "run")
    pc = Cache.open(tmp_path / "pc")
    for p in lacking_cache[1]:
        # the command flips by default
        want = predict_dose(model, p, InferenceOptions(tta=True, allow_missing_rois=True))
        np.testing.assert_array_equal(pc.load(p.id).dose, want)


def test_one_flipping_default_for_the_api_and_the_cli(run_dir, tmp_path):
    """`dosepred predict` and the Python quick start (`dosepred.predict_dose(model, p)`) give the same
    dose for the same patient: one default (flipping), declared once (DEFAULT_TTA)."""
    import inspect

    import numpy as np
    from typer.main import get_command

    from dosepred.io.cache import Cache
    from dosepred.models.checkpoint import load_model
    from dosepred.predict import DEFAULT_TTA, predict_dose, predict_patients, predict_to

    opt = next(p for p in get_command(app).commands["predict"].params if p.name == "tta")
    assert opt.default is DEFAULT_TTA
    for f in (predict_dose, predict_patients, predict_to):
        assert inspect.signature(f).parameters["options"].default.tta is DEFAULT_TTA, f
    r = runner.invoke(app, ["predict", "--model", str(run_dir / "run"), "--data", str(run_dir / "train"),
                            "--out", str(tmp_path / "pc"), "--format", "cache", "--no-progress"])
    assert r.exit_code == 0, r.output
    model = load_model(run_dir / "run")
    pc = Cache.open(tmp_path / "pc")
    p = next(iter(Cache.open(run_dir / "train")))
    np.testing.assert_array_equal(pc.load(p.id).dose, predict_dose(model, p))


def test_predict_to_records_the_options_it_used_and_predicts_with_them(run_dir, tmp_path):
    """Options passed whole (every field other than its default) reach the prediction: the cache holds
    exactly what predict_dose gives with them, and records them as data (as they applied on the CPU:
    no mixed precision there), with the model's SHA-256 (hashlib on the checkpoint file) and the data."""
    import hashlib

    import numpy as np

    from dosepred.io.cache import Cache
    from dosepred.models.checkpoint import load_model, resolve_model_path
    from dosepred.predict import predict_dose, predict_to

    asked = InferenceOptions(device="cpu", overlap=0.25, mode="constant", sw_batch=2, amp=True, tta=False,
                             shifts=((2, 0, 1),), allow_missing_rois=True, spacing_policy="median")
    n = predict_to(run_dir / "run", run_dir / "train", tmp_path / "pc", "cache", asked, progress=False)
    pc = Cache.open(tmp_path / "pc")
    rec = prediction_record(pc)
    used = InferenceOptions(**{**asked.to_json(), "amp": False, "shifts": asked.shifts})
    assert n == 4 and rec is not None and not rec.legacy and rec.options == used
    ckpt = resolve_model_path(run_dir / "run")
    assert rec.model_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert rec.model == str(run_dir / "run") and rec.data == str(run_dir / "train")
    model = load_model(run_dir / "run")
    p = next(iter(Cache.open(run_dir / "train")))
    got = pc.load(p.id).dose
    np.testing.assert_array_equal(got, predict_dose(model, p, used))
    assert np.abs(got - predict_dose(model, p, InferenceOptions(tta=False))).max() > 1e-4  # they mattered


def test_a_patient_without_ct_is_refused_by_predict_with_one_clear_error(run_dir):
    """A Patient read without its CT (``ct=None``, as evaluation reads references) cannot be
    predicted: one InputError naming the patient and what needs the CT, before any work."""
    from dosepred.errors import InputError
    from dosepred.models.checkpoint import load_model
    from dosepred.patient import Patient
    from dosepred.predict import predict_dose

    model = load_model(run_dir / "run")
    p = make_cohort(1, seed=12, size=32)[0]
    q = Patient(p.id, None, p.roi_codes, p.roi_set, possible_dose_mask=p.possible_dose_mask,
                geometry=p.geometry)
    with pytest.raises(InputError, match=f"^patient {p.id}: no CT .*prediction needs the CT$"):
        predict_dose(model, q, InferenceOptions(tta=False))


def test_input_rois_the_model_does_not_use_are_a_note_and_change_nothing(tmp_path):
    """A patient contoured with a structure the model was not trained with (a couch): predicted as
    without it, the same dose to the bit, and one note line naming the patient and the structure."""
    import numpy as np

    from dosepred.io.cache import Cache
    from dosepred.patient import Patient, Roi, RoiSet
    from tiny_models import tiny_cache, tiny_run

    run = tiny_run(tiny_cache(tmp_path, 1), tmp_path / "run")
    p = make_cohort(1, seed=4, size=20)[0]
    couch = np.zeros(p.shape, bool)
    couch[-3:] = True
    masks = {n: p.mask(n) for n in p.roi_set.names if n not in p.missing_rois} | {"Couch": couch}
    q = Patient.from_masks(p.id, p.ct, masks, RoiSet((*p.roi_set.rois, Roi("Couch", "other"))), p.spacing,
                           p.possible_dose_mask, p.dose, dict(p.meta), p.geometry)
    write_cache([p], tmp_path / "plain")
    write_cache([q], tmp_path / "couch")
    doses, notes = {}, {}
    for name in ("plain", "couch"):
        r = runner.invoke(app, ["predict", "--model", str(run), "--data", str(tmp_path / name), "--out",
                                str(tmp_path / f"pred-{name}"), "--format", "cache", "--no-tta", "--device",
                                "cpu", "--no-progress"])
        assert r.exit_code == 0, (r.output, r.exception)
        notes[name] = [line for line in r.output.splitlines() if line.startswith(("note:", "warning:"))
                       and "does not deliver its prescriptions" not in line]  # a 3-step model's dose
        doses[name] = Cache.open(tmp_path / f"pred-{name}").load(p.id, with_ct=False).dose
    note = f"note: patient {p.id}: its ROIs Couch are not used by the model"
    assert notes == {"plain": [], "couch": [note]}
    assert np.array_equal(doses["plain"], doses["couch"]) and doses["plain"].max() > 0


def test_a_target_prescribed_at_the_model_s_dose_level_is_predicted_as_the_model_s(tmp_path):
    """A clinic's PTV70 of 33 x 2.12 = 69.96 Gy is the model's 70 Gy level (0.06 % apart): predicted as the
    model's (the same dose to the bit as the patient prescribed 70 Gy), with one warning naming both;
    before, it was refused like a 66 Gy plan. 69.3 Gy (33 x 2.1, 1 % apart) stays refused, with a remedy."""
    import dataclasses

    import numpy as np

    from dosepred.io.cache import Cache
    from dosepred.patient import Roi, RoiSet
    from tiny_models import tiny_cache, tiny_run

    run = tiny_run(tiny_cache(tmp_path, 1), tmp_path / "run")
    p = make_cohort(1, seed=4, size=20)[0]
    target = next(r for r in p.roi_set
                  if r.kind == "target" and r.prescription and r.name not in p.missing_rois)

    def at(rx):
        rois = tuple(Roi(r.name, "target", rx) if r.name == target.name else r for r in p.roi_set)
        return dataclasses.replace(p, roi_set=RoiSet(rois))

    out = {}
    for name, rx in (("own", target.prescription), ("near", target.prescription * 69.96 / 70),
                     ("other", target.prescription * 0.99)):
        write_cache([at(rx)], tmp_path / name)
        out[name] = runner.invoke(app, ["predict", "--model", str(run), "--data", str(tmp_path / name),
                                        "--out", str(tmp_path / f"pred-{name}"), "--format", "cache",
                                        "--no-tta", "--device", "cpu", "--no-progress"])
    assert out["own"].exit_code == 0 and out["near"].exit_code == 0, out["near"].output
    assert f"warning: patient {p.id}: its {target.name} at " in out["near"].output
    assert "one dose level (within 0.5%), predicted as the model's" in out["near"].output
    assert "one dose level" not in out["own"].output
    doses = {n: Cache.open(tmp_path / f"pred-{n}").load(p.id, with_ct=False).dose for n in ("own", "near")}
    assert np.array_equal(doses["own"], doses["near"]) and doses["own"].max() > 0
    r = out["other"]
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"ROI {target.name} is a target (prescription" in r.output and "fine-tune a model" in r.output
    assert not (tmp_path / "pred-other").exists()


def test_loose_targets_are_unprescribed_targets_largely_outside_the_prescribed_ones():
    """Hand-made masks on a 2 mm grid (0.008 cc a voxel): a CTV inside the prescribed PTV70 is no dose
    level; an unprescribed PTV_Low half outside it (1000 voxels outside, 8 cc) is; a 62-voxel (0.5 cc)
    unprescribed target outside is below the 1 cc floor; a prescribed target is never listed."""
    import numpy as np

    from dosepred.patient import Patient, Roi, RoiSet
    from dosepred.predict import loose_targets

    shape = (20, 20, 20)
    m = {n: np.zeros(shape, bool) for n in ("PTV70", "CTV", "PTV_Low", "Tiny")}
    m["PTV70"][5:15, 5:15, 5:15] = True
    m["CTV"][7:12, 7:12, 7:12] = True
    m["PTV_Low"][5:15, 5:15, :] = True
    m["Tiny"].reshape(-1)[:62] = True  # 62 voxels in the first slices, all outside PTV70
    rs = RoiSet((Roi("PTV70", "target", 70.0), Roi("CTV", "target"), Roi("PTV_Low", "target"),
                 Roi("Tiny", "target")))
    p = Patient.from_masks("p", np.zeros(shape), m, rs, (2.0, 2.0, 2.0), np.ones(shape, bool),
                           np.zeros(shape, np.float32))
    assert [(n, round(cc, 6)) for n, cc in loose_targets(p)] == [("PTV_Low", 8.0)]
    rs2 = RoiSet((Roi("PTV70", "target", 70.0), Roi("CTV", "target"), Roi("PTV_Low", "target", 56.0),
                  Roi("Tiny", "target")))
    p2 = Patient.from_masks("p", np.zeros(shape), m, rs2, (2.0, 2.0, 2.0), np.ones(shape, bool),
                            np.zeros(shape, np.float32))
    assert loose_targets(p2) == []


def test_a_model_whose_weights_give_nan_is_named_not_the_patient(tmp_path):
    """A run that diverged in its last step ends 'done' with weights that predict NaN (one step at
    --lr 1e20); predict then said 'patient synth_000: dose contains NaN/inf', as for a damaged dose file
    of that patient. Now one error line saying the model predicts NaN, nothing written."""
    from tiny_models import tiny_cache

    data = tiny_cache(tmp_path, 1)
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--loss", "mae",
                            "--epochs", "1", "--steps-per-epoch", "1", "--lr", "1e20", "--patch", "16",
                            "--base", "4", "--levels", "2", "--res-units", "0", "--threads", "1",
                            "--no-progress"])
    assert r.exit_code == 0, r.output  # the loss checked was the step's, before its update
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "--data", str(data), "--format",
                            "cache", "--out", str(tmp_path / "pred")])
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: the model predicts NaN or infinite doses for patient synth_"), r.output
    assert "diverged" in last and "Traceback" not in r.output and not (tmp_path / "pred").exists()


def test_a_model_whose_weights_give_doses_over_1000_gy_is_named_not_the_patient(tmp_path):
    """A run trained one step at --lr 1e3 ends 'done' with weights that predict ~1e8 Gy (finite); predict
    then said 'patient synth_000: dose reaches ... Gy: a dose in cGy? (divide by 100)' for a cache, as for
    that patient's data, and wrote the NIfTI doses without a word. Now one line naming the model, for
    every format, nothing written."""
    from tiny_models import tiny_cache

    data = tiny_cache(tmp_path, 1)
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--loss", "mae",
                            "--epochs", "1", "--steps-per-epoch", "1", "--lr", "1e3", "--patch", "16",
                            "--base", "4", "--levels", "2", "--res-units", "0", "--threads", "1",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    for fmt in ("cache", "nifti"):
        out = tmp_path / f"pred-{fmt}"
        r = runner.invoke(app, ["predict", "--model", str(tmp_path / "run"), "--data", str(data), "--format",
                                fmt, "--out", str(out)])
        assert r.exit_code == 2, r.output
        last = r.output.strip().splitlines()[-1]
        assert last.startswith("error: the model predicts doses up to "), r.output
        assert "over 1000 Gy" in last and "cGy" not in last and "lower --lr" in last, r.output
        assert "Traceback" not in r.output and not out.exists()


def test_predict_dose_names_a_path_or_a_list_given_for_its_model_or_patient(tmp_path):
    """predict_dose("models/m", p) was AttributeError: 'str' object has no attribute 'config' (predict_to
    takes a path, predict_dose a loaded model); predict_dose(model, [p]) AttributeError 'list' object has
    no attribute 'require_ct'."""
    from dosepred import predict_dose
    from dosepred.errors import InputError
    from dosepred.models import ModelConfig, build_model

    (p,) = make_cohort(1, seed=1, size=16)
    with pytest.raises(InputError, match=r"predict_dose takes a loaded model, got the path 'models/m': "
                                         r"predict_dose\(dosepred.load_model\(path\), patient\)"):
        predict_dose("models/m", p)
    with pytest.raises(InputError, match="got the path"):
        predict_dose(tmp_path, p)
    net = build_model(ModelConfig(rois=p.roi_set.to_dicts(), channels=[4, 6], patch=(16, 16, 16)))
    with pytest.raises(InputError, match=r"predict_dose predicts one Patient, got list: call it per patient"):
        predict_dose(net, [p])


@pytest.mark.parametrize("fmt", ["cache", "openkbp"])
def test_a_model_predicting_more_than_any_dose_is_named_not_asked_about_cgy(tmp_path, fmt):
    """Weights that predict thousands of Gy (a training that diverged without NaN) met the writers'
    refusal of a dose over 1000 Gy, which asks whether the patient's dose is in cGy. Now one line naming
    the model and the dose, nothing written."""
    import torch

    from dosepred.models.checkpoint import load_checkpoint, save_checkpoint
    from tiny_models import tiny_cache

    data = tiny_cache(tmp_path, 1)
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--loss", "mae",
                            "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "--base", "4",
                            "--levels", "2", "--res-units", "0", "--threads", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    last_bias = [k for k, v in ck["model"].items() if k.endswith("bias") and v.numel() == 1][-1]
    ck["model"][last_bias] = torch.full_like(ck["model"][last_bias], 1000.0)  # every voxel far over 1000 Gy
    ck.pop("path")
    save_checkpoint(ck, tmp_path / "broken.pt")
    r = runner.invoke(app, ["predict", "--model", str(tmp_path / "broken.pt"), "--data", str(data),
                            "--format", fmt, "--out", str(tmp_path / "pred"), "--no-progress"])
    assert r.exit_code == 2, r.output
    last = r.output.strip().splitlines()[-1]
    assert re.match(r"error: the model predicts doses up to [\d.e+]+ Gy for patient synth_\S+, over 1000 Gy, "
                    r"which no plan gives: its weights are not usable", last), r.output
    assert "cGy" not in r.output and not (tmp_path / "pred").exists()


def test_a_predicted_dose_far_below_a_target_s_prescription_is_warned_of():
    """A model's dose that does not deliver the prescriptions (a target unlike any it trained on: the
    released MAE model gives a 1.5 cc PTV70 of an OpenKBP validation patient a median 52.5 Gy) was
    returned without a word. A network whose every weight is zero predicts dose_scale x softplus(bias)
    inside the mask: 40 Gy is 0.57 x PTV70's 70 Gy (below 0.8 x, a warning naming the patient, the
    target and its median, as numpy computes it); 63 Gy is 0.9-1.125 x every target's (silent)."""
    import math
    import warnings

    import numpy as np
    import torch

    from dosepred import predict_dose
    from dosepred.models import ModelConfig, build_model
    from dosepred.predict import OffRxWarning

    (p,) = make_cohort(1, seed=1, size=16)
    net = build_model(ModelConfig(rois=p.roi_set.to_dicts(), channels=[4, 6], patch=(16, 16, 16)))
    last_bias = [v for k, v in net.named_parameters() if k.endswith("bias") and v.numel() == 1][-1]
    said = {}
    for gy in (40.0, 63.0):
        with torch.no_grad():
            for v in net.parameters():
                v.zero_()
            last_bias.fill_(math.log(math.expm1(gy / net.config.dose_scale)))  # softplus^-1
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            dose = predict_dose(net, p, InferenceOptions(tta=False))
        said[gy] = [str(x.message) for x in w if issubclass(x.category, OffRxWarning)]
        med = float(np.median(dose[p.mask("PTV70")]))
        assert abs(med - gy) < 0.01
    assert said[63.0] == []
    (msg,) = said[40.0]
    assert msg.startswith(f"patient {p.id}: the predicted dose does not deliver its prescriptions: ")
    assert "PTV70 (Rx 70 Gy): median 40.0 Gy = 0.57 x Rx" in msg
    assert "unlike those the model was trained on" in msg
