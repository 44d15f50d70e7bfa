"""Target distance input channels (ModelConfig.target_distance, issue 24): signed distances in mm to
the targets' surfaces. Checked against the analytic distance to a sphere on an anisotropic grid and to
a brute-force numpy distance, for which targets each channel reads, that a model given the channels
by a fine-tune starts from its --init's prediction, and that they train, export, predict and move onto
other ROIs, with one clear error for what cannot be done."""

import numpy as np
import pytest
import torch

from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import export_model, load_checkpoint, load_model
from dosepred.models.transfer import add_extra_inputs, plan_transfer, transfer_state
from dosepred.models.unet import (
    DIST_IN,
    DIST_OUT,
    DIST_SCALE,
    signed_distance,
    target_distance_channels,
    target_distance_volume,
)
from dosepred.patient import Roi, RoiSet
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run

SPACING = (3.0, 2.0, 2.5)


def sphere(shape, centre, radius_mm, spacing=SPACING):
    """(inside, exact signed distance in mm to the ball's surface) on a grid of ``spacing``."""
    idx = np.indices(shape).astype(float)
    r = np.sqrt(sum(((idx[i] - centre[i]) * spacing[i]) ** 2 for i in range(3)))
    return r <= radius_mm, r - radius_mm


def brute_force(inside, spacing=SPACING):
    """Outside: distance to the nearest region voxel centre; inside: minus the distance to the nearest
    voxel centre outside the region (the array's edge counts: a layer of outside voxels around it)."""
    padded = np.pad(inside, 1)
    grid = np.indices(padded.shape).reshape(3, -1).T * np.array(spacing)
    ins, outs = grid[padded.ravel()], grid[~padded.ravel()]
    core = np.indices(inside.shape).reshape(3, -1).T + 1
    pts = core * np.array(spacing)
    flat = inside.ravel()
    d = np.empty(len(pts))
    d[~flat] = np.sqrt(((pts[~flat][:, None] - ins[None]) ** 2).sum(-1)).min(1)
    d[flat] = -np.sqrt(((pts[flat][:, None] - outs[None]) ** 2).sum(-1)).min(1)
    return d.reshape(inside.shape)


def test_signed_distance_is_the_brute_force_one_inside_and_outside():
    shape = (14, 16, 12)
    inside = np.zeros(shape, bool)
    inside[3:9, 5:13, 0:5] = True  # touches the array's edge: beyond it is outside
    inside[10:12, 2:4, 8:10] = True  # a second, small piece
    np.testing.assert_allclose(signed_distance(inside, SPACING), brute_force(inside), rtol=1e-5,
                               atol=1e-4)


@pytest.mark.parametrize("shape", [(40, 50, 44), (41, 37, 45)])
def test_signed_distance_of_a_ball_is_within_a_voxel_of_the_analytic_one(shape):
    inside, exact = sphere(shape, (20.3, 18.7, 21.1), 20.0)
    d = signed_distance(inside, SPACING)
    assert d.shape == shape and d.dtype == np.float32
    err = np.abs(d - exact)  # voxel centres to voxel centres: at most one voxel from the surface's
    assert err.max() <= max(SPACING) + 1e-4 and err.mean() < 1.5
    assert np.all(d[exact < 0] < 0) and np.all(d[exact > 0] > 0)  # the sign: negative inside
    # shift-equivariant (no coarse grid): the region one voxel over, the distances one voxel over
    moved = signed_distance(np.roll(inside, 1, axis=0), SPACING)
    np.testing.assert_allclose(moved[5:-5], d[4:-6], atol=1e-4)


def test_an_empty_region_is_far_everywhere():
    assert np.all(signed_distance(np.zeros((6, 7, 8), bool), SPACING) == DIST_OUT)


def test_the_channels_read_the_top_targets_and_all_targets():
    rs = RoiSet.openkbp()
    shape = (20, 20, 20)
    codes = np.zeros(shape, np.int32)
    codes[2:6, 2:6, 2:6] |= 1 << rs.index("PTV70")
    codes[14:18, 14:18, 14:18] |= 1 << rs.index("PTV56")
    targets = [(rs.index(r.name), r.prescription) for r in rs if r.kind == "target"]
    ch = target_distance_volume(codes, targets, SPACING)
    assert ch.shape == (2, *shape) and ch.dtype == np.float32
    top, every = ch
    assert top[4, 4, 4] < 0 and every[4, 4, 4] < 0  # inside PTV70: both negative
    assert top[16, 16, 16] > 0.5 and every[16, 16, 16] < 0  # inside PTV56: only all targets
    ptv70 = ((codes >> rs.index("PTV70")) & 1).astype(bool)
    np.testing.assert_allclose(top, np.clip(brute_force(ptv70), -DIST_IN, DIST_OUT) / DIST_SCALE,
                               atol=1e-5)
    assert ch.min() >= -DIST_IN / DIST_SCALE and ch.max() <= DIST_OUT / DIST_SCALE
    none = target_distance_channels(torch.zeros((2, *shape), dtype=torch.int32), targets,
                                    [SPACING, SPACING])
    assert none.shape == (2, 2, *shape) and torch.all(none == DIST_OUT / DIST_SCALE)
    with pytest.raises(ModelError, match="spacing must be three positive mm values"):
        target_distance_volume(codes, targets, (3.0, 0.0, 2.5))


def test_config_round_trip_input_width_and_a_named_error_without_spacing():
    plain = ModelConfig(channels=[4, 6], patch=(16, 16, 16))
    assert "target_distance" not in plain.to_dict()  # what older dosepreds read stays the same
    c = ModelConfig(channels=[4, 6], patch=(16, 16, 16), target_distance=True)
    assert c.in_channels == plain.in_channels + 2
    assert ModelConfig.from_dict(c.to_dict()).target_distance is True
    with pytest.raises(ModelError, match="target_distance must be true or false"):
        ModelConfig(channels=[4, 6], patch=(16, 16, 16), target_distance="yes")
    m = build_model(c)
    with pytest.raises(ModelError, match="needs the voxel spacing"):
        m(*random_inputs(0))
    x = m.assemble(*random_inputs(0), SPACING)
    assert x.shape[1] == c.in_channels and torch.equal(x[:, -1:], random_inputs(0)[2])  # mask last


@pytest.mark.parametrize("kw", [{}, {"head": 3}, {"coarse": [8, 8]}])
def test_added_channels_start_at_zero_so_the_prediction_is_the_old_one(kw):
    torch.manual_seed(0)
    cfg = dict(channels=[4, 6, 8], res_units=0, patch=(32, 32, 32))
    old = build_model(ModelConfig(**cfg)).eval()
    with torch.no_grad():
        for q in old.parameters():
            q.normal_(0, 0.3)
    new = build_model(ModelConfig(**cfg, **kw, target_distance=True)).eval()
    state = add_extra_inputs(old.state_dict(), old.config, new.config)
    new.load_state_dict(new.complete_state(state))
    first = new.state_dict()["net.model.0.conv.weight"]
    assert torch.all(first[:, 9:11] == 0) and first[:, :9].abs().sum() > 0  # the two new ones
    ct, codes, mask = random_inputs(1, size=32)
    with torch.no_grad():
        want = old(ct, codes, mask)
        torch.testing.assert_close(new(ct, codes, mask, SPACING), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ModelError, match="cannot drop input channels of the whole grid"):
        add_extra_inputs(new.state_dict(), new.config, old.config)


def test_a_distance_model_moves_onto_other_rois_keeping_its_channels():
    torch.manual_seed(0)
    rs = RoiSet.openkbp()
    old = build_model(ModelConfig(channels=[4, 6], res_units=0, patch=(16, 16, 16),
                                  target_distance=True)).eval()
    with torch.no_grad():
        for q in old.parameters():
            q.normal_(0, 0.3)
    more = RoiSet((*rs.rois, Roi("OpticNerve", "oar")))  # one more OAR: a new zero channel
    tr = plan_transfer(rs, more)
    new = build_model(ModelConfig.from_dict({**old.config.to_dict(), "rois": more.to_dicts()})).eval()
    new.load_state_dict(transfer_state(old.state_dict(), new, tr))
    ct, codes, mask = random_inputs(2)
    codes &= (1 << len(rs)) - 1  # the new OAR empty: the same prediction
    with torch.no_grad():
        torch.testing.assert_close(new(ct, codes, mask, SPACING), old(ct, codes, mask, SPACING),
                                   rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("dist"), seed=12)


@pytest.fixture(scope="module")
def plain(cache, tmp_path_factory):
    return tiny_run(cache, tmp_path_factory.mktemp("plain") / "run")


def test_a_fine_tune_adds_them_trains_exports_and_predicts(cache, plain, tmp_path):
    from dosepred.io.cache import Cache
    from dosepred.predict import predict_dose

    logged = []
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "d"), epochs=1, steps_per_epoch=1,
                          init=str(plain), target_distance=True, **TINY), log=logged.append)
    assert t.model.config.target_distance
    assert any("gets the target_distance input channels" in m for m in logged)
    ct, codes, mask = random_inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(t.model.eval()(ct, codes, mask, SPACING),
                                   load_model(plain)(ct, codes, mask), rtol=1e-5, atol=1e-4)
    c = Cache.open(cache)
    patient = c.load(c.ids[0])
    before = predict_dose(load_model(plain), patient)
    kw = dict(data=str(cache), epochs=2, steps_per_epoch=2, lr=1e-2, init=str(plain),
              target_distance=True, **TINY)
    Trainer(TrainConfig(out=str(tmp_path / "run"), **kw), progress=False).fit()
    ck = load_checkpoint(tmp_path / "run")
    assert ck["model_config"]["target_distance"] is True
    assert ck["model"]["net.model.0.conv.weight"][:, 9:11].abs().sum() > 0  # they learned
    out = export_model(tmp_path / "run", tmp_path / "model", half=False)
    assert "target distance input channels" in (out / "README.md").read_text()
    after = predict_dose(load_model(out), patient)
    assert after.shape == before.shape and not np.allclose(after, before)
    # a fine-tune of it keeps them without being told; asking to drop them is one error
    t2 = ready(TrainConfig(data=str(cache), out=str(tmp_path / "again"), epochs=1, steps_per_epoch=1,
                           init=str(out), **TINY))
    assert t2.model.config.target_distance
    grown = ready(TrainConfig(data=str(cache), out=str(tmp_path / "grown"), epochs=1, steps_per_epoch=1,
                              init=str(out), channels=[6, 8],
                              **{k: v for k, v in TINY.items() if k not in ("base", "levels")}))
    assert grown.model.config.target_distance and grown.model.config.widths == [6, 8]
    with torch.no_grad():
        torch.testing.assert_close(grown.model.eval()(ct, codes, mask, SPACING),
                                   load_model(out)(ct, codes, mask, SPACING), rtol=1e-5, atol=1e-4)
    with pytest.raises(ModelError, match="has the target_distance input channels but target_distance=false"):
        Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                            init=str(out), target_distance=False, **TINY), progress=False).fit()
    assert not (tmp_path / "x").exists()


def test_training_crops_carry_the_whole_grids_distances():
    """A crop's distance channels are the whole patient's, cut, flipped and shifted with it: a target
    outside the crop still counts (the dose encodes each voxel's index, to find where it came from)."""
    from dosepred.patient import Patient
    from dosepred.roi import encode
    from dosepred.training.dataset import CropDataset, prepare_patient

    shape = (20, 40, 12)
    g = np.indices(shape)
    ptv = (g[0] < 5) & (g[1] < 6) & (g[2] > 7)  # a corner: outside most crops
    rs = RoiSet((Roi("PTV70", "target", 70.0), Roi("LeftParotid", "oar"), Roi("RightParotid", "oar")))
    dose = ((1 + g[0] + 20 * g[1] + 800 * g[2]) / 10).astype(np.float32)  # <= 960 Gy, a Patient's dose
    p = Patient("p", np.zeros(shape, np.int16), encode([ptv, g[1] > 30, g[1] < 8]), rs, SPACING,
                np.ones(shape, bool), dose)
    model = build_model(ModelConfig(rois=rs.to_dicts(), channels=[4, 6], patch=(8, 16, 8),
                                    target_distance=True, laterality=True))
    full = model.extra_channels(p.roi_codes, p.possible_dose_mask, p.geometry, p.spacing)
    assert full.shape == (3, *shape)
    np.testing.assert_array_equal(full[:2], target_distance_volume(p.roi_codes, [(0, 70.0)], SPACING))
    patch = (8, 16, 8)
    kw = dict(extra=model)
    for shift in (False, True):
        ds = CropDataset([prepare_patient(p, patch, **kw)], rs, patch, 30, seed=2, flip_axis=1, shift=shift)
        flips = 0
        for n in range(30):
            it = ds[n]
            d, dist = np.rint(it["dose"][0].numpy() * 10).astype(np.int64), it["extra"].numpy()
            assert dist.shape == (3, *patch)
            seen = d > 0
            k, rest = np.divmod(d[seen] - 1, 800)
            j, i = np.divmod(rest, 20)
            np.testing.assert_allclose(dist[:, seen], full[:, i, j, k], atol=2e-3)  # float16 storage
            assert np.all(dist[:2, ~seen] == DIST_OUT / DIST_SCALE)  # beyond the array: far
            assert np.all(dist[2, ~seen] == 0)
            flips += bool(seen.any() and (np.diff(d, axis=1)[seen[:, 1:] & seen[:, :-1]] < 0).any())
        assert 5 < flips < 25  # mirrored crops among them
    rot = CropDataset([prepare_patient(p, patch, rotate_axis=2, **kw)], rs, patch, 4,
                      seed=2, flip_axis=1, rotate_p=1.0, rotate_axis=2)
    it = rot[0]
    assert it["extra"].shape == (3, *patch) and it["extra"][:2].min() >= -DIST_IN / DIST_SCALE
    plain = CropDataset([prepare_patient(p, patch)], rs, patch, 2, seed=2, flip_axis=1)
    assert "extra" not in plain[0]  # only models that read them pay for them


def test_prediction_uses_the_whole_grids_distances(cache, tmp_path):
    """predict_in_space cuts the whole grid's distances like its windows: the same dose as the model
    given them directly on a patient its patch covers."""
    from dosepred.io.cache import Cache
    from dosepred.predict import InferenceOptions, predict_in_space

    torch.manual_seed(0)
    c = Cache.open(cache)
    p = c.load(c.ids[0])
    m = build_model(ModelConfig(rois=p.roi_set.to_dicts(), channels=[4, 6], res_units=0,
                                patch=p.shape, target_distance=True)).eval()
    with torch.no_grad():
        for q in m.parameters():
            q.normal_(0, 0.3)
    got = predict_in_space(m, p, InferenceOptions(tta=False))
    dist = torch.from_numpy(target_distance_volume(p.roi_codes, m.targets, p.spacing))[None]
    with torch.no_grad():
        want = m(torch.from_numpy(p.ct.astype(np.float32))[None, None],
                 torch.from_numpy(p.roi_codes.astype(np.int32))[None],
                 torch.from_numpy(p.possible_dose_mask)[None, None], extra=dist)[0, 0].numpy()
        again = m(torch.from_numpy(p.ct.astype(np.float32))[None, None],
                  torch.from_numpy(p.roi_codes.astype(np.int32))[None],
                  torch.from_numpy(p.possible_dose_mask)[None, None], p.spacing)[0, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(again, want, rtol=1e-5, atol=1e-4)  # computed from the codes alike


def test_freezing_a_first_stage_that_gets_the_channels_is_one_error(cache, plain, tmp_path):
    with pytest.raises(ModelError, match="freeze_stage1 with target_distance added"):
        Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                            init=str(plain), target_distance=True, stages=2, freeze_stage1=True,
                            **{k: v for k, v in TINY.items()}), progress=False).fit()
    assert not (tmp_path / "x").exists()


def test_the_transfer_record_counts_the_distance_channels():
    from dosepred.models.transfer import transfer_checkpoint

    rs = RoiSet.openkbp()
    m = build_model(ModelConfig(channels=[4, 6], res_units=0, patch=(16, 16, 16), target_distance=True))
    more = RoiSet((*rs.rois, Roi("OpticNerve", "oar")))
    ck = transfer_checkpoint({"model_config": m.config.to_dict(), "model": m.state_dict()}, more)
    src = ck["roi_transfer"]["channel_sources"]
    n_oar = len(rs.oars)
    # CT, Rx, the 7 OARs, the new OAR (None), the two distance channels, the mask
    assert src == [0, 1, *range(2, 2 + n_oar), None, 2 + n_oar, 3 + n_oar, 4 + n_oar]


def test_scaling_with_target_distances_is_refused_before_the_patients_load(cache, plain, tmp_path):
    """Distances in mm would be unscaled in a zoomed window: one error from the trainer, before the
    training patients are read (minutes on a real cache), not from the dataset after them."""
    from dosepred.training import trainer as trainer_mod

    read = []
    real = trainer_mod.load_arrays
    trainer_mod.load_arrays = lambda *a, **k: read.append(1) or real(*a, **k)
    try:
        with pytest.raises(ValueError, match="scale_p > 0 with a model reading target distances"):
            Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "s"), epochs=1, steps_per_epoch=1,
                                init=str(plain), target_distance=True, scale_p=0.5, scale_max=0.1, **TINY),
                    progress=False).fit()
    finally:
        trainer_mod.load_arrays = real
    assert read == []
