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
from dosepred.models.transfer import add_distance_inputs, plan_transfer, transfer_state
from dosepred.models.unet import DIST_OUT, DIST_SCALE, signed_distance, target_distance_channels
from dosepred.patient import Roi, RoiSet
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run

SPACING = (3.0, 2.0, 2.5)


def sphere(shape, centre, radius_mm, spacing=SPACING):
    """(inside, exact signed distance in mm) of a ball on a grid of ``spacing``."""
    idx = np.indices(shape).astype(float)
    r = np.sqrt(sum(((idx[i] - centre[i]) * spacing[i]) ** 2 for i in range(3)))
    return r <= radius_mm, r - radius_mm


@pytest.mark.parametrize("shape", [(40, 50, 44), (41, 37, 45)])  # odd sizes: padded, cropped back
def test_signed_distance_of_a_ball_is_the_analytic_one(shape):
    inside, exact = sphere(shape, (20.3, 18.7, 21.1), 20.0)
    d = signed_distance(torch.from_numpy(inside), SPACING).numpy()
    assert d.shape == shape
    err = np.abs(d - exact)
    # computed on the grid coarsened 2x: within one coarse voxel (2 x 3 mm) anywhere, ~1 mm on average
    assert err.max() < 6.0 and err.mean() < 1.6
    assert np.all(d[exact < -6] < 0) and np.all(d[exact > 6] > 0)  # the sign: negative inside


def test_signed_distance_outside_a_box_matches_brute_force():
    shape = (24, 28, 20)
    inside = np.zeros(shape, bool)
    inside[6:10, 10:20, 4:8] = True
    pts = np.argwhere(inside) * np.array(SPACING)
    grid = np.indices(shape).reshape(3, -1).T * np.array(SPACING)
    # distance from each voxel centre to the nearest target voxel centre, by brute force
    brute = np.sqrt(((grid[:, None, :] - pts[None]) ** 2).sum(-1)).min(1).reshape(shape)
    d = signed_distance(torch.from_numpy(inside), SPACING).numpy()
    far = brute > 10
    assert np.abs(d[far] - brute[far]).max() < 2 * max(SPACING)


def test_empty_and_full_regions_and_a_thin_one():
    shape = (10, 12, 14)
    assert torch.all(signed_distance(torch.zeros(shape, dtype=torch.bool), SPACING) == DIST_OUT)
    assert torch.all(signed_distance(torch.ones(shape, dtype=torch.bool), SPACING) < 0)
    thin = torch.zeros(shape, dtype=torch.bool)
    thin[5, 6, 7] = True  # one voxel: smaller than a coarse voxel, still a target
    d = signed_distance(thin, SPACING)
    assert d[5, 6, 7] < 2 * max(SPACING) and d[0, 0, 13] > 15


def test_the_channels_read_the_top_targets_and_all_targets():
    rs = RoiSet.openkbp()
    shape = (20, 20, 20)
    codes = np.zeros(shape, np.int32)
    codes[2:6, 2:6, 2:6] |= 1 << rs.index("PTV70")
    codes[14:18, 14:18, 14:18] |= 1 << rs.index("PTV56")
    targets = [(rs.index(r.name), r.prescription) for r in rs if r.kind == "target"]
    ch = target_distance_channels(torch.from_numpy(codes)[None], targets, SPACING)
    assert ch.shape == (1, 2, *shape) and ch.dtype == torch.float32
    top, every = ch[0, 0].numpy(), ch[0, 1].numpy()
    assert top[4, 4, 4] < 0 and every[4, 4, 4] < 0  # inside PTV70: both negative
    assert top[16, 16, 16] > 0.5 and every[16, 16, 16] < 0  # inside PTV56: only all targets
    assert ch.min() >= -20 / DIST_SCALE and ch.max() <= DIST_OUT / DIST_SCALE
    none = target_distance_channels(torch.zeros((2, *shape), dtype=torch.int32), targets,
                                    [SPACING, SPACING])
    assert torch.all(none == DIST_OUT / DIST_SCALE)  # no target: far everywhere
    with pytest.raises(ModelError, match="spacing must be three positive mm values"):
        target_distance_channels(torch.from_numpy(codes)[None], targets, (3.0, 0.0, 2.5))


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
    state = add_distance_inputs(old.state_dict(), old.config)
    new.load_state_dict(new.complete_state(state))
    first = new.state_dict()["net.model.0.conv.weight"]
    assert torch.all(first[:, 9:11] == 0) and first[:, :9].abs().sum() > 0  # the two new ones
    ct, codes, mask = random_inputs(1, size=32)
    with torch.no_grad():
        want = old(ct, codes, mask)
        torch.testing.assert_close(new(ct, codes, mask, SPACING), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ModelError, match="already reads target distances"):
        add_distance_inputs(new.state_dict(), new.config)


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
    assert any("gets target distance channels" in m for m in logged)
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
    with pytest.raises(ModelError, match="reads target distances but target_distance=false"):
        Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                            init=str(out), target_distance=False, **TINY), progress=False).fit()
    assert not (tmp_path / "x").exists()
