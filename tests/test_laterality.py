"""The laterality input channel (ModelConfig.laterality, issue 24): each voxel's patient-left position,
so a model trained on left-right mirrored crops can tell a patient's right from a mirrored left.
Checked against the patient coordinates of the grid (LPS, any orientation), that it is mirrored with
the crops and the flipped prediction pass, that a fine-tune adding it starts from its --init's
prediction, and that a model with it refuses to run without it."""

import numpy as np
import pytest
import torch

from dosepred.geometry import Geometry
from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import export_model, load_checkpoint, load_model
from dosepred.models.transfer import add_extra_inputs
from dosepred.models.unet import LAT_CLIP, LAT_SCALE, lateral_coordinate
from dosepred.patient import RoiSet
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run


@pytest.mark.parametrize("direction", [
    np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),  # OpenKBP: axis 1 towards the left
    np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),  # axis 1 towards the right
    np.array([[0.8, 0.6, 0.0], [-0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]),  # oblique in the axial plane
])
def test_the_channel_is_the_patient_left_coordinate_from_the_body_centre(direction):
    shape, spacing = (9, 11, 7), (3.0, 4.0, 2.5)
    g = Geometry(np.array([-20.0, 5.0, 30.0]), direction, spacing)
    mask = np.zeros(shape, bool)
    mask[2:7, 1:6, 1:6] = True
    lat = lateral_coordinate(g, shape, mask)
    pts = g.to_patient(np.indices(shape).reshape(3, -1).T)  # LPS mm of each voxel centre
    centre = g.to_patient(np.argwhere(mask).mean(0))
    want = np.clip((pts[:, 0] - centre[0]) / LAT_SCALE, -LAT_CLIP, LAT_CLIP).reshape(shape)
    np.testing.assert_allclose(lat, want, atol=1e-5)
    if direction[0, 1] == 1.0:
        assert np.all(np.diff(lat, axis=1) > 0)  # increasing towards the patient's left
    far = lateral_coordinate(Geometry(np.zeros(3), np.eye(3), (400.0, 1.0, 1.0)), (5, 2, 2))
    assert far.max() == LAT_CLIP and far.min() == -LAT_CLIP  # clipped; no mask: the grid's centre


def test_a_model_with_it_needs_the_whole_grid_channels():
    rs = RoiSet.openkbp()
    m = build_model(ModelConfig(channels=[4, 6], patch=(16, 16, 16), laterality=True))
    assert m.config.in_channels == 3 + len(rs.oars) + 1 and m.extra_fill == (0.0,)
    assert ModelConfig.from_dict(m.config.to_dict()).laterality is True
    assert "laterality" not in ModelConfig(channels=[4, 6], patch=(16, 16, 16)).to_dict()
    with pytest.raises(ModelError, match=r"laterality\): pass DoseUNet.extra_channels"):
        m(*random_inputs(0), (3.0, 3.0, 3.0))
    with pytest.raises(ModelError, match="needs the patient's geometry"):
        m.extra_channels(np.zeros((4, 4, 4), np.int32), np.ones((4, 4, 4), bool), None, (3.0, 3.0, 3.0))
    with pytest.raises(ModelError, match="laterality must be true or false"):
        ModelConfig(channels=[4, 6], patch=(16, 16, 16), laterality=1)


def test_adding_it_to_a_distance_model_keeps_the_distance_weights():
    torch.manual_seed(0)
    cfg = dict(channels=[4, 6], res_units=0, patch=(16, 16, 16), target_distance=True)
    old = build_model(ModelConfig(**cfg)).eval()
    with torch.no_grad():
        for q in old.parameters():
            q.normal_(0, 0.3)
    new = build_model(ModelConfig(**cfg, laterality=True)).eval()
    new.load_state_dict(add_extra_inputs(old.state_dict(), old.config, new.config))
    w_old, w_new = old.state_dict()["net.model.0.conv.weight"], new.state_dict()["net.model.0.conv.weight"]
    torch.testing.assert_close(w_new[:, :11], w_old[:, :11])  # CT, Rx, 7 OARs, 2 distances
    assert torch.all(w_new[:, 11] == 0)  # the laterality channel
    torch.testing.assert_close(w_new[:, 12], w_old[:, 11])  # the mask
    ct, codes, mask = random_inputs(5)
    g = torch.Generator().manual_seed(1)
    dist = torch.rand((1, 2, 16, 16, 16), generator=g)
    lat = torch.rand((1, 1, 16, 16, 16), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(new(ct, codes, mask, extra=torch.cat([dist, lat], 1)),
                                   old(ct, codes, mask, extra=dist), rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("lat"), seed=13)


@pytest.fixture(scope="module")
def plain(cache, tmp_path_factory):
    return tiny_run(cache, tmp_path_factory.mktemp("plain") / "run")


def test_a_fine_tune_adds_it_trains_exports_and_predicts_with_a_mirrored_pass(cache, plain, tmp_path):
    from dosepred.io.cache import Cache
    from dosepred.predict import InferenceOptions, predict_in_space

    logged = []
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "l"), epochs=1, steps_per_epoch=1,
                          init=str(plain), laterality=True, **TINY), log=logged.append)
    assert any("gets the laterality input channels" in m for m in logged)
    ct, codes, mask = random_inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(t.model.eval()(ct, codes, mask, extra=torch.ones((1, 1, 16, 16, 16))),
                                   load_model(plain)(ct, codes, mask), rtol=1e-5, atol=1e-4)
    Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "run"), epochs=2, steps_per_epoch=2, lr=1e-2,
                        init=str(plain), laterality=True, **TINY), progress=False).fit()
    ck = load_checkpoint(tmp_path / "run")
    assert ck["model_config"]["laterality"] is True
    assert ck["model"]["net.model.0.conv.weight"][:, 9].abs().sum() > 0  # it learned
    out = export_model(tmp_path / "run", tmp_path / "model", half=False)
    assert "a laterality input channel" in (out / "README.md").read_text()
    m = load_model(out).eval()
    # the flipped pass: mirrored inputs, mirrored channel (it says the view is mirrored), mirrored back
    c = Cache.open(cache)
    p = c.load(c.ids[0])
    m.config.patch = p.shape  # one window: the prediction is two plain forward passes
    full = torch.from_numpy(m.extra_channels(p.roi_codes, p.possible_dose_mask, p.geometry, p.spacing))[None]
    ax = p.geometry.axis_along("LR") + 2
    ct_t = torch.from_numpy(p.ct.astype(np.float32))[None, None]
    mask_t = torch.from_numpy(p.possible_dose_mask)[None, None]
    from dosepred.roi import lr_pairs, mirror_codes

    codes_f = mirror_codes(p.roi_codes, ax - 2, lr_pairs(p.roi_set))
    with torch.no_grad():
        a = m(ct_t, torch.from_numpy(p.roi_codes.astype(np.int32))[None], mask_t, extra=full)
        b = m(ct_t.flip(ax), torch.from_numpy(codes_f.astype(np.int32))[None], mask_t.flip(ax),
              extra=full.flip(ax)).flip(ax)
    got = predict_in_space(m, p, InferenceOptions(tta=True))
    np.testing.assert_allclose(got, ((a + b) / 2)[0, 0].numpy(), rtol=1e-4, atol=1e-3)
    assert not np.allclose(a.numpy(), b.numpy(), atol=1e-3)  # the channel tells the passes apart
