"""Prediction in the model's own space: the same patient in other layouts and on other grids gets the
same dose in patient coordinates; flips follow the geometry's left-right axis; far-off patients warn.

The layout tests are parametrised over axis letters (``LAYOUTS``) and go through two helpers,
``stored_as`` (the patient as a source would hold it) and ``on_reference_grid`` (a predicted dose
moved onto the reference patient's grid by its geometry alone), so a file-based version (e.g. DICOM
series written in each layout) can reuse them by replacing ``stored_as``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from dosepred.evaluation import evaluate_patient
from dosepred.geometry import Geometry, reorient
from dosepred.inference import InferenceOptions
from dosepred.models.space import ModelSpace, into_space
from dosepred.patient import Patient
from dosepred.resample import grid_with_spacing, resample, resample_patient
from dosepred.roi import lr_pairs, mirror_codes

MODELS = Path(__file__).resolve().parents[1] / "models"
RELEASED = sorted(m.parent for m in MODELS.glob("openkbp-*/model.pt"))  # single models (not ensembles)
MAE = MODELS / "openkbp-mae"

#: Other ways to store the same patient, as the letters its array axes run towards: in-plane
#: transposed, rows flipped, columns flipped, slices reversed, the usual DICOM (slice, row, column)
#: head-first ("SPL") and feet-first ("IPL", "SPR") layouts, and other permutations.
LAYOUTS = ["LPI", "ALI", "PRI", "PLS", "SPL", "IPL", "SPR", "SAL", "SLP"]


def stored_as(p: Patient, letters: str) -> Patient:
    """``p`` stored in another layout (same voxels, same patient coordinates)."""
    q = p.reoriented(letters)
    assert q.geometry.axis_letters() == letters
    return q


def on_reference_grid(dose: np.ndarray, geometry: Geometry, ref: Patient) -> np.ndarray:
    """A dose on ``geometry`` moved onto ``ref``'s grid in patient coordinates: by permutation/flip
    when the grids hold the same voxels, else by linear resampling."""
    perm, flips = ref.geometry.permutation_to(geometry.axis_letters())
    if ref.geometry.reoriented(perm, flips, ref.shape).same_as(geometry):
        from dosepred.geometry import unreorient

        return np.ascontiguousarray(unreorient(dose, perm, flips))
    return np.maximum(resample(dose, geometry, ref.geometry, ref.shape, 1, mode="nearest"), 0)


def scores(ref: Patient, dose: np.ndarray) -> tuple[float, float]:
    r = evaluate_patient(ref, dose * ref.possible_dose_mask, "openkbp")
    return r.dose_score, r.dvh_score


@pytest.fixture(scope="module")
def model():
    from dosepred.models.checkpoint import load_model

    return load_model(MAE)


@pytest.fixture(scope="module")
def patient(sample_dir):
    from dosepred.io.openkbp import read_patient

    return read_patient(sample_dir / "pt_196")


@pytest.fixture(scope="module")
def reference_prediction(model, patient):
    from dosepred.predict import predict_dose

    return predict_dose(model, patient, InferenceOptions(tta=False))


def test_released_models_record_the_openkbp_space():
    from dosepred.models.checkpoint import load_checkpoint

    for m in RELEASED:
        sp = ModelSpace.from_dict(load_checkpoint(m)["space"])
        assert sp.axes == "PLI" and sp.lr_axis == 1 and sp.masked
        assert sp.spacing_min == (2.734, 2.734, 1.5) and sp.spacing_max == (5.078, 5.078, 3.3)
        # recorded by the training (rounds 11 and 12) from the 169 OpenKBP training patients
        assert sp.source == "recorded" and sp.patients == 169


@pytest.mark.parametrize("letters", LAYOUTS)
def test_layout_does_not_change_the_prediction(model, patient, reference_prediction, letters):
    from dosepred.predict import predict_dose

    q = stored_as(patient, letters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an OpenKBP patient in any layout is not "far off"
        dose = predict_dose(model, q, InferenceOptions(tta=False))
    assert dose.shape == q.shape
    back = on_reference_grid(dose, q.geometry, patient)
    # only a permutation/flip separates the layouts: the model sees identical arrays
    assert np.array_equal(back, reference_prediction)
    ref_scores = scores(patient, reference_prediction)
    got = scores(patient, back)
    assert abs(got[0] - ref_scores[0]) < 0.1 and abs(got[1] - ref_scores[1]) < 0.1
    # and scored in the layout itself (its own reference dose, ROIs and voxel order)
    own = scores(q, dose)
    assert abs(own[0] - ref_scores[0]) < 1e-4 and abs(own[1] - ref_scores[1]) < 1e-4


DICOM_LAYOUTS = ["axial", "transposed", "rows_flipped", "columns_flipped", "slices_reversed", "feet_first"]


@pytest.mark.parametrize("layout", DICOM_LAYOUTS)
def test_dicom_layout_does_not_change_the_prediction(model, patient, reference_prediction, layout, tmp_path):
    """The same patient written as DICOM files in the layouts planning systems produce, read back by
    the DICOM reader and predicted: the same dose in patient coordinates (issue #13)."""
    from dicom_layouts import write_layout
    from dosepred.io.dicom import read_dicom_folder
    from dosepred.predict import predict_dose

    write_layout(patient, tmp_path, layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (q,) = read_dicom_folder(tmp_path)
    # pt_196 has no Esophagus contour: a DICOM structure set simply lacks it (OpenKBP records it missing);
    # some OpenKBP training patients lack it too, so it is predicted without the flag, with a note
    from dosepred.predict import RoiNote

    with pytest.warns(RoiNote, match="lacks Esophagus"):
        dose = predict_dose(model, q, InferenceOptions(tta=False))
    back = on_reference_grid(dose, q.geometry, patient)
    ref_scores = scores(patient, reference_prediction)
    got = scores(patient, back)
    assert abs(got[0] - ref_scores[0]) < 0.1 and abs(got[1] - ref_scores[1]) < 0.1
    from dosepred.qa.check import to_roi_set

    # scored in the file's own layout against the dose read from its RTDOSE (Esophagus recorded missing)
    own = scores(to_roi_set(q, patient.roi_set), dose)
    assert abs(own[0] - ref_scores[0]) < 0.1 and abs(own[1] - ref_scores[1]) < 0.1


@pytest.mark.parametrize("pid", ["pt_66", "pt_196"])
def test_resampled_patient_predicts_like_the_original(model, sample_dir, pid):
    """1.2 mm in-plane, 3 mm slices (finer than the training range in-plane): predicted in the model's
    space, brought back onto its own grid, then onto the original grid and scored against the
    original reference dose. (pt_196's slices are 2.5 mm: 3 mm is inside the range, so the model sees
    it at another slice thickness; pt_66's are 3 mm.)"""
    from dosepred.io.openkbp import read_patient
    from dosepred.predict import predict_dose

    patient = read_patient(sample_dir / pid)
    fine, shape = grid_with_spacing(patient.geometry, patient.shape, (1.2, 1.2, 3.0))
    q = resample_patient(patient, fine, shape)
    dose = predict_dose(model, q, InferenceOptions(tta=False))
    assert dose.shape == q.shape
    assert not dose[~q.possible_dose_mask].any()
    back = on_reference_grid(dose, fine, patient)
    d0, _ = scores(patient, predict_dose(model, patient, InferenceOptions(tta=False)))
    d1, _ = scores(patient, back)
    print(f"{pid} resampled to 1.2x1.2x3 mm: dose score {d1:.3f} vs {d0:.3f} on the original grid")
    assert abs(d1 - d0) < 0.3


def test_oblique_patient_dose_comes_back_in_patient_coordinates():
    """A grid rotated 20 degrees about z is resampled into the model's axes; a dose linear in patient
    coordinates on the model grid comes back as the same linear field on the patient's grid."""
    from scipy.spatial.transform import Rotation

    from dosepred.synth import make_patient

    p = make_patient(0, size=32)
    rot = Rotation.from_euler("z", 20, degrees=True).as_matrix()
    g = Geometry(rot @ p.geometry.origin, rot @ p.geometry.direction, p.geometry.spacing)
    p = Patient(p.id, p.ct, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                {}, g)
    space = ModelSpace(spacing_min=(4.0, 4.0, 4.0), spacing_max=(6.0, 6.0, 6.0), fov_min=(100,) * 3,
                       fov_max=(300,) * 3)
    placed = into_space(p, space)
    assert placed.kind == "resampled"
    mg = placed.patient.geometry
    assert mg.axis_letters() == "PLI" and mg.is_axis_aligned()

    def field(geo: Geometry, shape) -> np.ndarray:
        idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
        x = geo.to_patient(idx)
        return (30 + 0.2 * x[..., 0] - 0.1 * x[..., 1] + 0.05 * x[..., 2]).astype(np.float32)

    back = placed.back(field(mg, placed.patient.shape))
    want = field(g, p.shape) * p.possible_dose_mask
    inner = p.possible_dose_mask.copy()
    inner[[0, -1], :, :] = inner[:, [0, -1], :] = inner[:, :, [0, -1]] = False  # away from the edge
    np.testing.assert_allclose(back[inner], want[inner], atol=1e-3)
    assert not back[~p.possible_dose_mask].any()


def _mirrored_by_name(p: Patient, ax: int) -> Patient:
    """``p`` mirrored along array axis ``ax``, built from its masks by name (Left <-> Right)."""
    other = {"LeftParotid": "RightParotid", "RightParotid": "LeftParotid"}
    masks = {n: np.flip(p.mask(other.get(n, n)), ax) for n in p.present_rois}
    return Patient.from_masks(f"{p.id}-mirrored", np.flip(p.ct, ax), masks, p.roi_set, p.spacing,
                              np.flip(p.possible_dose_mask, ax), geometry=p.geometry)


def test_tta_flips_along_the_geometry_left_right_axis():
    """A patient whose left-right axis is array axis 0 (a synthetic patient reoriented to "LPI"),
    predicted by a model whose space is "LPI": --tta mirrors along axis 0 with Left/Right swapped,
    i.e. the average with the reoriented mirror of the original."""
    import torch

    from dosepred.models import ModelConfig, build_model
    from dosepred.predict import predict_dose
    from dosepred.synth import make_patient

    torch.manual_seed(0)
    net = build_model(ModelConfig(base=4, levels=2, res_units=0, patch=(16, 16, 16))).eval()
    p = make_patient(3, size=24)
    assert p.geometry.axis_along("LR") == 1
    q = p.reoriented("LPI")
    assert q.geometry.axis_along("LR") == 0
    space = ModelSpace(axes="LPI", spacing_min=q.spacing, spacing_max=q.spacing, fov_min=(1, 1, 1),
                       fov_max=(1e4,) * 3, masked=False)
    mirrored = _mirrored_by_name(p, 1).reoriented("LPI")  # reorienting the flipped original
    pairs = lr_pairs(q.roi_set)
    assert np.array_equal(mirror_codes(q.roi_codes, 0, pairs), mirrored.roi_codes)
    plain = predict_dose(net, q, InferenceOptions(tta=False), space=space)
    flipped = np.flip(predict_dose(net, mirrored, InferenceOptions(tta=False), space=space), 0)
    want = 0.5 * (plain + flipped) * q.possible_dose_mask
    got = predict_dose(net, q, InferenceOptions(tta=True), space=space)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(plain - flipped).max() > 1e-4


def test_training_takes_the_orientation_and_flip_axis_from_the_geometry(tmp_path):
    """Training patients stored "LPI" with orientation "first": the model space is "LPI", crops flip
    along axis 0 with Left/Right bits swapped (the reoriented mirror of the original crop), and the
    checkpoint records the space; with the default orientation they are permuted to "PLI"."""
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort
    from dosepred.training import TrainConfig
    from dosepred.training.dataset import CropDataset
    from dosepred.training.trainer import Trainer

    cohort = make_cohort(2, seed=4, size=24)
    write_cache([p.reoriented("LPI") for p in cohort], tmp_path / "lpi")
    for orientation, axes, lr in (("first", "LPI", 0), ("PLI", "PLI", 1)):
        cfg = TrainConfig(data=str(tmp_path / "lpi"), out=str(tmp_path / f"run-{orientation}"),
                          patch=(16,) * 3, base=4, levels=2, res_units=0, epochs=1, steps_per_epoch=1,
                          batch=1, threads=1, orientation=orientation, val_every=1)
        t = Trainer(cfg, progress=False)
        t.setup_device()
        t.setup_data()
        t.setup_model()
        arrays = t.load_train()
        assert t.space.axes == axes and t.space.lr_axis == lr and t.model.config.flip_axis == lr
        want_sp = cohort[0].reoriented(axes).spacing
        assert t.space.spacing_min == want_sp and t.space.patients == 2
        ds = CropDataset(arrays, t.roi_set, (16,) * 3, 8, seed=1, flip_axis=t.space.lr_axis)
        plain = CropDataset(arrays, t.roi_set, (16,) * 3, 8, seed=1, flip=False)
        pairs = lr_pairs(t.roi_set)
        flipped = 0
        for i in range(8):
            a, b = ds[i], plain[i]
            if torch_equal(a["ct"], b["ct"]):
                continue
            flipped += 1
            assert np.array_equal(a["ct"].numpy()[0], np.flip(b["ct"].numpy()[0], lr))
            codes_b = b["codes"].numpy().astype(arrays[0].codes.dtype)
            codes_a = a["codes"].numpy().astype(arrays[0].codes.dtype)
            assert np.array_equal(codes_a, mirror_codes(codes_b, lr, pairs))
        assert flipped
    # the recorded space travels with the checkpoint
    from dosepred.training import train

    cfg.out = str(tmp_path / "run-first")
    cfg.orientation = "first"
    train(cfg, progress=False)
    from dosepred.models.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "run-first")
    assert ck["space"]["axes"] == "LPI" and ck["space"]["source"] == "recorded"


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_far_off_patients_warn_naming_what_differs():
    from dosepred.synth import make_patient

    p = make_patient(1, size=16)  # 16 voxels of the synthetic spacing
    space = ModelSpace.openkbp()
    coarse = Patient(p.id, p.ct, p.roi_codes, p.roi_set, (8.0, 8.0, 5.5), None, None, p.missing_rois)
    with pytest.warns(UserWarning) as rec:
        placed = into_space(coarse, space)
    msg = " ".join(str(w.message) for w in rec)
    assert "spacing 8 mm along A->P" in msg and "spacing 5.5 mm along S->I" in msg
    assert "field of view 88 mm along S->I is much smaller" in msg
    assert "no possible-dose (body) mask" in msg
    # resampled as the training arrays were made: its field of view on 128 voxels, within the range
    assert placed.kind == "resampled" and placed.patient.spacing == (2.734, 2.734, 1.5)
    # an OpenKBP-like patient does not warn
    fine = Patient(p.id, np.zeros((128,) * 3, np.int16), np.zeros((128,) * 3, p.roi_set.dtype),
                   p.roi_set, (4.0, 4.0, 2.5), np.pad(np.ones((8, 8, 8), bool), 60))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert into_space(fine, space).kind == "reoriented"


def test_a_ct_not_in_hu_warns_at_prediction_and_training(sample_dir):
    """pt_196 with its CT stored 1000 HU high (raw values without the rescale intercept), or a
    patient without a body mask whose CT holds no air: predict read soft tissue as bone and air as
    water without a word (the released MAE model's dose score of two OpenKBP validation patients 3.04
    -> 3.54 Gy). Now into_space warns naming the body's median (numpy, on the possible-dose mask), and a
    training run on such patients warns once naming them; the patient in HU warns of nothing."""
    import dataclasses

    from dosepred.io.openkbp import read_patient
    from dosepred.models.space import SpaceRecorder

    p = read_patient(sample_dir / "pt_196")
    off = dataclasses.replace(p, ct=(p.ct.astype(np.int32) + 1000).astype(np.int16))
    med = float(np.median(off.ct[::2, ::2, ::2][off.possible_dose_mask[::2, ::2, ::2]]))
    assert 900 < med < 1100
    space = ModelSpace.openkbp()
    with pytest.warns(UserWarning, match=f"its CT's median inside the body \\(possible-dose mask\\) is "
                      f"{med:.0f} HU where soft tissue is near 0 HU"):
        into_space(off, space)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        into_space(p, space)
    # no body mask: a CT without air (its 1st percentile, numpy, above -500 HU)
    bare = dataclasses.replace(off, possible_dose_mask=None)
    assert np.percentile(bare.ct, 1) > -500 and bare.possible_dose_mask.all()
    with pytest.warns(UserWarning, match="its CT holds no air"):
        into_space(bare, space)
    rec = SpaceRecorder()
    for q in (p, dataclasses.replace(off, id="offset")):
        rec.add(q)
    with pytest.warns(UserWarning, match=r"1 of the 2 training patients have a CT that is not in HU "
                      r"\(offset:"):
        rec.space()


def test_reorientation_round_trip_is_exact():
    from dosepred.synth import make_patient

    p = make_patient(5, size=20)
    for letters in LAYOUTS:
        q = stored_as(p, letters)
        placed = into_space(q, ModelSpace(spacing_min=p.spacing, spacing_max=p.spacing, masked=False,
                                          fov_min=(1, 1, 1), fov_max=(1e4,) * 3))
        assert placed.kind == "reoriented"
        assert np.array_equal(placed.patient.ct, p.ct)
        dose = np.random.default_rng(0).random(p.shape).astype(np.float32)
        assert np.array_equal(placed.back(dose), reorient(dose, *p.geometry.permutation_to(letters))
                              * q.possible_dose_mask)


def test_a_patient_without_a_body_mask_is_predicted_in_the_ct_body(model, patient, reference_prediction):
    """A patient without a possible-dose mask (a Patient built in Python, a NIfTI folder of organs only)
    had the whole grid as its mask, which the released models, trained with body masks, read as a body
    filling the field of view: PTV70 D95 of 0.01 Gy and 118 Gy hot spots on a validation patient, with
    only a warning that dose was "predicted everywhere". Its body is now CT > -500 HU, as for a DICOM
    patient without a body contour, with a note; the dose is close to the one with the patient's mask."""
    import dataclasses

    from dosepred.predict import RoiNote, predict_dose

    bare = dataclasses.replace(patient, possible_dose_mask=None)
    assert bare.possible_dose_mask.all()
    with pytest.warns(RoiNote, match=r"patient pt_196 has no possible-dose \(body\) mask: its body is taken "
                                     r"as CT > -500 HU"):
        dose = predict_dose(model, bare, InferenceOptions(tta=False))
    from scipy import ndimage

    assert patient.geometry.axis_letters()[2] in "SI"  # OpenKBP: axial slices across the last axis
    body = np.stack([ndimage.binary_fill_holes(patient.ct[..., k] > -500)
                     for k in range(patient.shape[2])], -1)
    np.testing.assert_array_equal(dose[~body], 0)
    assert (dose[body & (patient.ct <= -500)] > 0).mean() > 0.9  # the airways: body, dose predicted
    ref_score, ref_dvh = scores(patient, reference_prediction)
    got_score, got_dvh = scores(patient, dose)
    assert got_score < 1.1 * ref_score and got_dvh < 1.1 * ref_dvh, (got_score, ref_score, got_dvh, ref_dvh)
    assert abs(float(np.percentile(dose[patient.mask("PTV70")], 5)) - 70) < 5  # PTV70 D95 near 70 Gy
