"""Rotation/translation augmentation of training crops, and the EMA of the weights.

Independent references: ``np.rot90`` for quarter turns, the rigid rotation of a centroid in
millimetres for 40-degree turns, and an EMA recomputed by hand from the raw weights of each step.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from dosepred.io.cache import write_cache
from dosepred.patient import Patient, RoiSet
from dosepred.roi import encode
from dosepred.training import TrainConfig, train
from dosepred.training.dataset import (
    CropDataset,
    mask_extremes,
    prepare_patient,
    rotate_patient_arrays,
    rotation_voxels,
)
from dosepred.training.trainer import ema_decay_at, ema_update

HF, LR = 2, 1  # OpenKBP arrays: axis 2 superior->inferior (head-feet), axis 1 right->left
SPACING = (2.0, 3.0, 2.5)  # anisotropic in the rotation plane on purpose


def _ball(shape, centre_mm, radius_mm, spacing=SPACING):
    g = np.indices(shape).astype(float)
    d2 = sum(((g[a] - (shape[a] - 1) / 2) * spacing[a] - centre_mm[a]) ** 2 for a in range(3))
    return d2 <= radius_mm**2


def _phantom(shape=(40, 28, 8)):
    """Body disc, a PTV at the centre, a left parotid at +15 mm along the left-right axis."""
    rs = RoiSet.openkbp()
    body = _ball(shape, (0, 0, 0), 30) | _ball(shape, (0, 0, 5), 30)
    body = np.broadcast_to(body.any(axis=HF, keepdims=True), shape).copy()
    lp = _ball(shape, (0, 15, 0), 8)
    ptv = _ball(shape, (-6, -4, 0), 9)
    masks = {n: np.zeros(shape, bool) for n in rs.names}
    masks["LeftParotid"], masks["PTV70"], masks["SpinalCord"] = lp, ptv, _ball(shape, (12, 0, 0), 5)
    codes = encode([masks[n] for n in rs.names])
    g = np.indices(shape).astype(float)
    ct = np.where(body, 40 + 200 * np.sin(g[0] / 6) * np.cos(g[1] / 5), -1000).astype(np.int16)
    dose = np.where(body, 70 * np.exp(-((g[0] - 22) ** 2 + (g[1] - 12) ** 2) / 150.0), 0).astype(np.float32)
    return rs, {"ct": ct, "dose": dose, "codes": codes, "mask": body}


def _centroid_mm(m, spacing=SPACING):
    idx = np.argwhere(m).astype(float)
    return (idx - (np.asarray(m.shape) - 1) / 2).mean(0) * np.asarray(spacing)


def test_quarter_turn_is_rot90():
    rng = np.random.default_rng(0)
    a = {"ct": rng.integers(-1000, 1000, (6, 6, 5)).astype(np.int16),
         "dose": rng.random((6, 6, 5)).astype(np.float32),
         "codes": rng.integers(0, 2**10, (6, 6, 5)).astype(np.uint16)}
    for k in (1, 2, 3):
        r = rotate_patient_arrays(a, 90 * k, HF, (3.0, 3.0, 2.5))
        for name, v in a.items():
            # (u_a, u_b) -> (-u_b, u_a): numpy's rot90 over axes (0, 1) turns axis 0 toward axis 1
            np.testing.assert_allclose(r[name], np.rot90(v, k, axes=(0, 1)), atol=1e-4, err_msg=name)


def test_full_turn_in_40_degree_steps_returns_the_patient():
    _, a = _phantom()
    same = rotate_patient_arrays(a, 360, HF, SPACING)
    for k in ("ct", "codes", "mask"):
        assert np.array_equal(same[k], a[k]), k
    np.testing.assert_allclose(same["dose"], a["dose"], atol=1e-4)
    # composed turns resample nine times (each nearest resampling moves a boundary voxel by up to
    # half a voxel), so they return the patient up to boundary voxels: the structures come back to
    # where they were, with their volume, and most voxels keep their codes
    rs, _ = _phantom()
    lp = (a["codes"] >> rs.index("LeftParotid")) & 1
    r = a
    for _ in range(9):
        r = rotate_patient_arrays(r, 40, HF, SPACING)
    lp9 = ((r["codes"] >> rs.index("LeftParotid")) & 1).astype(bool)
    assert r["codes"].dtype == a["codes"].dtype and r["mask"].dtype == bool
    assert np.mean(r["codes"] == a["codes"]) > 0.95
    assert 2 * (r["mask"] & a["mask"]).sum() / (r["mask"].sum() + a["mask"].sum()) > 0.93
    np.testing.assert_allclose(_centroid_mm(lp9), _centroid_mm(lp.astype(bool)), atol=1.5)  # mm
    assert abs(int(lp9.sum()) - int(lp.sum())) < 0.2 * lp.sum()
    inside = a["mask"] & r["mask"]
    assert np.abs(r["dose"] - a["dose"])[inside].mean() < 0.05 * a["dose"][inside].mean()
    two = rotate_patient_arrays(rotate_patient_arrays(a, 40, HF, SPACING), 320, HF, SPACING)
    lp2 = ((two["codes"] >> rs.index("LeftParotid")) & 1).astype(bool)
    assert 2 * (lp2 & lp.astype(bool)).sum() / (lp2.sum() + lp.sum()) > 0.9


def test_rotation_keeps_bits_and_moves_the_left_parotid_where_it_says():
    rs, a = _phantom()
    bit = rs.index("LeftParotid")
    lp = ((a["codes"] >> bit) & 1).astype(bool)
    for angle in (40, 80, 120, 200, 320):
        r = rotate_patient_arrays(a, angle, HF, SPACING)
        # nearest neighbour: every output code is a code of the input (no blended bit patterns)
        assert set(np.unique(r["codes"])) <= set(np.unique(a["codes"]))
        assert r["mask"].dtype == bool
        lp_r = ((r["codes"] >> bit) & 1).astype(bool)
        t = np.deg2rad(angle)
        c = _centroid_mm(lp)
        want = np.array([c[0] * np.cos(t) - c[1] * np.sin(t), c[0] * np.sin(t) + c[1] * np.cos(t), c[2]])
        np.testing.assert_allclose(_centroid_mm(lp_r), want, atol=0.6)  # mm, under a voxel
        assert abs(lp_r.sum() - lp.sum()) <= 0.1 * lp.sum()


def test_rotation_matrix_is_rigid_in_mm():
    f = rotation_voxels(40, HF, SPACING)
    s = np.diag(SPACING)
    r = s @ f @ np.linalg.inv(s)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert r[HF, HF] == 1


def test_mask_extremes_bound_every_rotation():
    _, a = _phantom()
    pts = mask_extremes(a["mask"])
    allv = np.argwhere(a["mask"])
    for angle in (0, 40, 160):
        f = rotation_voxels(angle, HF, SPACING)
        q, qa = pts @ f.T, allv @ f.T
        np.testing.assert_allclose(q.min(0), qa.min(0))
        np.testing.assert_allclose(q.max(0), qa.max(0))


def _patient(rs, a, pid="p1"):
    return Patient(pid, a["ct"], a["codes"], rs, SPACING, a["mask"], a["dose"])


def test_dataset_rotations_and_shifts_keep_the_mask_in_view():
    rs, a = _phantom()
    p = _patient(rs, a)
    patch = (48, 48, 12)  # the rotated mask (about 30 x 20 voxels in-plane) always fits
    arrays = [prepare_patient(p, patch, rotate_axis=HF)]
    n_mask = int(a["mask"].sum())
    plain = CropDataset([prepare_patient(p, patch)], rs, patch, 12, seed=1, flip_axis=LR, shift=True)
    rot = CropDataset(arrays, rs, patch, 12, seed=1, flip_axis=LR, rotate_p=1.0, rotate_axis=HF, shift=True)
    starts = set()
    for i in range(12):
        it = plain[i]
        assert int(it["mask"].sum()) == n_mask  # exact: an integer shift, the whole mask in view
        np.testing.assert_array_equal(it["dose"][it["mask"]].sort().values.numpy(),
                                      np.sort(a["dose"][a["mask"]]))
        starts.add(tuple(np.argwhere(it["mask"][0].numpy()).min(0)))
        r = rot[i]
        assert abs(int(r["mask"].sum()) - n_mask) <= 0.03 * n_mask  # nearest resampling only
        assert (r["dose"][~r["mask"]] == 0).all()
        assert torch.equal(r["ct"], rot[i]["ct"])  # deterministic per (seed, epoch, index)
    assert len(starts) > 3  # the translation does vary
    # rotations leave the crop centres and flips of the seed alone: with p = 0 the crops are today's
    base = CropDataset([prepare_patient(p, patch)], rs, patch, 4, seed=1, flip_axis=LR)
    off = CropDataset([prepare_patient(p, patch)], rs, patch, 4, seed=1, flip_axis=LR, rotate_p=0.0,
                      rotate_axis=HF)
    assert all(torch.equal(base[i][k], off[i][k]) for i in range(4) for k in ("ct", "codes"))
    with pytest.raises(ValueError, match="rotate_axis"):
        CropDataset(arrays, rs, patch, 1, rotate_p=0.5)



def _angle_deg(f, spacing=SPACING, axis=HF):
    """The rotation angle of a voxel map F = z S^-1 R S (R recovered in millimetres)."""
    s = np.asarray(spacing, float)
    r = f * s[:, None] / s[None, :]
    a, b = (k for k in range(3) if k != axis)
    return float(np.degrees(np.arctan2(r[b, a], r[a, a])))


def test_small_rotations_are_uniform_within_the_bound():
    rs, a = _phantom()
    arrays = [prepare_patient(_patient(rs, a), (48, 48, 12), rotate_axis=HF)]
    ds = CropDataset(arrays, rs, (48, 48, 12), 8, seed=3, flip_axis=LR, rotate_p=1.0, rotate_axis=HF,
                     rotate_max=10.0, shift=True)  # the whole body in every window
    angles = [_angle_deg(ds.draw_map(np.random.default_rng([3, 0, i, 1]), SPACING)) for i in range(300)]
    assert max(abs(x) for x in angles) <= 10.0 + 1e-9
    assert min(angles) < -8 and max(angles) > 8 and abs(np.mean(angles)) < 1.5  # both ways, not steps
    # the crop is the phantom turned by that angle: the left parotid's centroid, relative to the
    # body's, turns rigidly in millimetres (mask and codes from one map)
    lp_bit = rs.index("LeftParotid")
    ref = _centroid_mm(a["codes"] >> lp_bit & 1 > 0) - _centroid_mm(a["mask"])
    for i in range(4):
        it = ds[i]
        ang = np.radians(_angle_deg(ds.draw_map(np.random.default_rng([3, 0, i, 1]), SPACING)))
        m = it["mask"][0].numpy()
        lp = (it["codes"].numpy() >> lp_bit & 1) > 0
        if ds.flip_axis is not None and _centroid_mm(lp)[LR] < _centroid_mm(m)[LR] - 5:
            continue  # a mirrored crop carries the parotid's bit on the other side; checked elsewhere
        got = _centroid_mm(lp) - _centroid_mm(m)
        want = ref.copy()
        want[0], want[1] = (ref[0] * np.cos(ang) - ref[1] * np.sin(ang),
                            ref[0] * np.sin(ang) + ref[1] * np.cos(ang))
        np.testing.assert_allclose(got[:2], want[:2], atol=1.5)


def test_scaling_grows_and_shrinks_volumes_by_the_cube_of_the_zoom():
    rs, a = _phantom((40, 28, 20))
    p = _patient(rs, a)
    patch = (64, 48, 32)  # holds the mask at a zoom of 1.2
    ds = CropDataset([prepare_patient(p, patch, reach=1 / 0.8)], rs, patch, 24, seed=5, flip=False,
                     flip_axis=LR, shift=True, scale_p=1.0, scale_max=0.2)
    n_mask, n_hot = int(a["mask"].sum()), int((a["dose"] > 35).sum())
    zooms = []
    for i in range(24):
        f = ds.draw_map(np.random.default_rng([5, 0, i, 1]), SPACING)
        z = float(np.cbrt(np.linalg.det(f)))
        np.testing.assert_allclose(f, z * np.eye(3), atol=1e-12)  # isotropic, no rotation asked for
        zooms.append(z)
        it = ds[i]
        m = it["mask"][0].numpy()
        # a head z times larger holds z^3 times the voxels at the patient's spacing (analytic ratio;
        # a map applied the wrong way round gives z^-3)
        assert abs(m.sum() / (n_mask * z**3) - 1) < 0.05, (z, m.sum(), n_mask)
        d = it["dose"][0].numpy()
        assert abs((d > 35).sum() / (n_hot * z**3) - 1) < 0.08  # the dose distribution scaled with it
        assert abs(d.max() - a["dose"].max()) < 1.0 and (d[~m] == 0).all()  # dose values kept
    assert min(zooms) < 0.85 and max(zooms) > 1.15 and all(0.8 <= z <= 1.2 for z in zooms)
    # the cut reaches 1/0.8 as far, so a shrunk window sees real context, not fill
    assert all(x >= y for x, y in zip(prepare_patient(p, patch, reach=1.25).ct.shape,
                                      prepare_patient(p, patch).ct.shape, strict=True))
    with pytest.raises(ValueError, match="reach"):
        prepare_patient(p, patch, reach=0.5)
    with pytest.raises(ValueError, match="scale_max"):
        CropDataset([prepare_patient(p, patch)], rs, patch, 1, scale_p=1.0, scale_max=0.6)


def test_scaling_off_draws_what_it_drew_before():
    # a run without scaling draws rotations and shifts exactly as before scaling existed
    rs, a = _phantom()
    arrays = [prepare_patient(_patient(rs, a), (48, 48, 12), rotate_axis=HF)]
    ds = CropDataset(arrays, rs, (48, 48, 12), 4, seed=1, flip_axis=LR, rotate_p=0.5, rotate_axis=HF)
    for i in range(20):
        arng = np.random.default_rng([1, 0, i, 1])
        f = ds.draw_map(np.random.default_rng([1, 0, i, 1]), SPACING)
        if arng.random() < 0.5:
            k = int(arng.integers(1, 9))
            np.testing.assert_allclose(f, rotation_voxels(40 * k, HF, SPACING))
        else:
            assert f is None

# ------------------------------------------------------------------------------------------ EMA

def test_ema_update_matches_the_formula():
    torch.manual_seed(0)
    m, e = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in e.state_dict().items()}
    ema_update(e, m, 0.9)
    for k, v in e.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * m.state_dict()[k])
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1) and ema_decay_at(0.99, 10**6) == 0.99


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from dosepred.synth import make_cohort

    root = tmp_path_factory.mktemp("ema")
    write_cache(make_cohort(4, seed=3, size=20), root / "train")
    return root / "train"


TINY = dict(patch=(16, 16, 16), base=4, levels=2, res_units=1, batch=1, threads=1, lr=1e-2)


def _ck(run: Path, name="last.pt"):
    return torch.load(run / "checkpoints" / name, weights_only=True)


def test_ema_checkpoint_is_the_average_of_the_raw_weights(cache, tmp_path):
    train(TrainConfig(data=str(cache), out=str(tmp_path / "warm"), epochs=1, steps_per_epoch=1, **TINY))
    init = _ck(tmp_path / "warm")["model"]
    decay = 0.7
    train(TrainConfig(data=str(cache), out=str(tmp_path / "ema"), init=str(tmp_path / "warm"), epochs=4,
                      steps_per_epoch=1, save_every=1, ema_decay=decay, rotate_p=0.5, shift=True,
                      **{**TINY, "base": None, "levels": None, "res_units": None}))
    e = {k: v.double() for k, v in init.items()}
    for step in range(4):  # one step per epoch: epoch_{n+1}.pt holds the raw weights after step n
        w = _ck(tmp_path / "ema", f"epoch_{step + 1}.pt")["train_model"]
        d = min(decay, (1 + step) / (10 + step))
        e = {k: d * e[k] + (1 - d) * w[k].double() if e[k].is_floating_point() else w[k] for k in e}
    last = _ck(tmp_path / "ema")
    for k, v in last["model"].items():
        torch.testing.assert_close(v.double(), e[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in init)
    # predict/export read "model": the average
    from dosepred.models.checkpoint import load_model

    m = load_model(tmp_path / "ema")
    assert all(torch.equal(v, last["model"][k]) for k, v in m.state_dict().items())


def test_ema_resume_is_exact(cache, tmp_path):
    common = dict(data=str(cache), epochs=3, steps_per_epoch=2, seed=2, ema_decay=0.9, rotate_p=0.5,
                  shift=True, **TINY)
    train(TrainConfig(out=str(tmp_path / "a"), **common))
    train(TrainConfig(out=str(tmp_path / "b"), stop_after=1, **common))
    train(TrainConfig(out=str(tmp_path / "b"), **common), resume=True)
    a, b = _ck(tmp_path / "a"), _ck(tmp_path / "b")
    for part in ("model", "train_model"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    with pytest.raises(ValueError, match="EMA"):
        train(TrainConfig(out=str(tmp_path / "c"), **{**common, "ema_decay": 0.0}))
        train(TrainConfig(out=str(tmp_path / "c"), **common), resume=True)


def test_config_checks_the_new_fields():
    for bad in (dict(rotate_p=1.5), dict(rotate_step=35), dict(ema_decay=1.0), dict(head_feet_axis=3),
                dict(rotate_max=10), dict(rotate_p=0.5, rotate_max=200), dict(scale_p=0.5),
                dict(scale_max=0.1), dict(scale_p=0.5, scale_max=0.5), dict(scale_p=2, scale_max=0.1)):
        with pytest.raises(ValueError):
            TrainConfig(data="x", out="y", **bad).check()


def test_flipped_crops_keep_a_left_roi_on_the_patients_left():
    # the phantom's left ROI lies at high axis-1 indices (axis 1 runs right -> left): in every crop,
    # flipped or not, its channel stays left of the right one's, also for names the aliases do not
    # know ('Hippocampus L'), which a flip used to mirror without swapping (25 of 40 crops wrong)
    from dosepred.patient import Roi

    shape = (20, 40, 10)
    g = np.indices(shape)
    ptv = (abs(g[0] - 10) < 3) & (abs(g[1] - 20) < 3)
    left = (abs(g[0] - 10) < 3) & (abs(g[1] - 30) < 3)
    right = (abs(g[0] - 10) < 3) & (abs(g[1] - 10) < 3)
    for names in (("Hippocampus L", "Hippocampus R"), ("LeftParotid", "RightParotid")):
        rs = RoiSet((Roi("PTV70", "target", 70.0), Roi(names[0], "oar"), Roi(names[1], "oar")))
        dose = (1.0 + g[1]).astype(np.float32)  # grows towards the left: tells a flipped crop
        p = Patient("p", np.zeros(shape, np.int16), encode([ptv, left, right]), rs, (3.0, 3.0, 3.0),
                    np.ones(shape, bool), dose)
        ds = CropDataset([prepare_patient(p, (16, 48, 8))], rs, (16, 48, 8), 40, seed=0, flip_axis=LR)
        flipped = 0
        for i in range(40):
            it = ds[i]
            c, d = it["codes"].numpy(), it["dose"][0].numpy()
            if not (((c >> 1) & 1).any() and ((c >> 2) & 1).any()):
                continue  # a crop holding one side only
            lj, rj = (np.argwhere((c >> k) & 1)[:, LR].mean() for k in (1, 2))
            assert lj > rj, (names, i)
            flipped += bool(d[((c >> 1) & 1) > 0].mean() < d[((c >> 2) & 1) > 0].mean())
        assert 10 < flipped < 30  # about half the crops are mirrored


def test_training_with_small_rotations_and_scaling(cache, tmp_path):
    cfg = TrainConfig(data=str(cache), out=str(tmp_path / "r"), epochs=1, steps_per_epoch=2, rotate_p=1.0,
                      rotate_max=10, scale_p=1.0, scale_max=0.1, shift=True, **TINY)
    train(cfg)
    saved = _ck(tmp_path / "r")["train_config"]
    assert (saved["rotate_max"], saved["scale_p"], saved["scale_max"]) == (10, 1.0, 0.1)


def test_scaling_is_refused_for_channels_in_millimetres():
    # a window zoomed by z shows anatomy z times larger at the patient's spacing, so its distances to
    # the PTV are z times the whole-grid channel's: a model reading them is refused, not fed 1/z errors
    rs, a = _phantom()
    p = _patient(rs, a)
    patch = (48, 48, 12)

    class Extra:
        extra_fill = (2.0,)

        def extra_channels(self, codes, mask, geometry, spacing):
            return np.ones((1, *codes.shape), np.float32)

    arrays = [prepare_patient(p, patch, extra=Extra(), reach=1 / 0.9)]
    assert arrays[0].extra is not None
    with pytest.raises(ValueError, match="scale_p > 0 with a model reading target distances"):
        CropDataset(arrays, rs, patch, 1, scale_p=0.5, scale_max=0.1)
    CropDataset(arrays, rs, patch, 1, rotate_p=0.5, rotate_axis=HF, rotate_max=10)  # rigid: kept


@pytest.mark.parametrize("kw", [dict(rotate_p=1.0, rotate_max=10.0), dict(rotate_p=1.0),
                                dict(scale_p=1.0, scale_max=0.1)])
def test_warped_targets_keep_the_plan_s_dose_metrics(kw):
    """A target at 70 Gy with 30 Gy right outside it (a step at its edge): every voxel of the warped
    target still holds 70 Gy, so its D99 is the plan's (numpy percentile); dose interpolated
    linearly blended the 30 Gy into its edge voxels (D99 about 50 Gy) and taught the loss colder
    targets than the plans have."""
    rs, a = _phantom((40, 28, 20))
    ptv = (a["codes"] >> rs.index("PTV70")) & 1 > 0
    a["dose"] = np.where(ptv, 70.0, np.where(a["mask"], 30.0, 0.0)).astype(np.float32)
    p = _patient(rs, a)
    patch = (64, 48, 32)
    ds = CropDataset([prepare_patient(p, patch, rotate_axis=HF, reach=1 / 0.9)], rs, patch, 8, seed=4,
                     flip_axis=LR, rotate_axis=HF, shift=True, **kw)
    bit = rs.index("PTV70")
    for i in range(8):
        it = ds[i]
        d, codes = it["dose"][0].numpy(), it["codes"].numpy()
        target = d[(codes >> bit) & 1 > 0]
        assert target.size > 0.6 * ptv.sum()  # in view (a zoom of 0.9 keeps 0.73 of it)
        assert np.percentile(target, 1) == 70.0 and target.min() == 70.0, np.percentile(target, 1)
        assert set(np.unique(d[it["mask"][0].numpy()])) <= {30.0, 70.0}  # no blended values anywhere


def test_crops_of_a_seed_do_not_depend_on_the_order_of_the_patients():
    # a cache (or split file) listing the same patients in another order trained another model with
    # the same seed: index -> patient went through the list's order (3 steps: weights 5e-4 apart)
    rs, a = _phantom()
    patch = (16, 16, 8)
    pts = [_patient(rs, {**a, "dose": a["dose"] * (1 + k / 10)}, f"pt_{k}") for k in (2, 10, 1)]
    arrays = [prepare_patient(p, patch) for p in pts]
    one = CropDataset(arrays, rs, patch, 9, seed=4, flip_axis=LR)
    other = CropDataset(arrays[::-1], rs, patch, 9, seed=4, flip_axis=LR)
    assert [p.id for p in one.patients] == ["pt_1", "pt_2", "pt_10"]  # natural order, as data split's
    for i in range(9):
        assert all(torch.equal(one[i][k], other[i][k]) for k in ("ct", "dose", "codes", "mask"))
