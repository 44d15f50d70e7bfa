"""The U-Net dose model, its input assembly from bit codes, and the crop dataset."""

import numpy as np
import pytest
import torch

from dosepred.models import ModelConfig, ModelError, build_model, check_roi_set
from dosepred.patient import Roi, RoiSet
from dosepred.roi import encode, to_torch
from dosepred.training.dataset import CropDataset, RankSampler, lr_pairs, prepare_patient, swap_bits


def tiny(**kw):
    kw.setdefault("base", 4)
    kw.setdefault("levels", 2)
    kw.setdefault("res_units", 1)
    kw.setdefault("patch", (8, 8, 8))
    return ModelConfig(**kw)


def test_output_is_dose_in_mask_only():
    torch.manual_seed(0)
    m = build_model(tiny())
    ct = torch.randint(-1000, 1500, (2, 1, 8, 8, 8), dtype=torch.int16)
    codes = torch.randint(0, 2**10, (2, 8, 8, 8)).to(torch.int16)
    mask = torch.zeros(2, 1, 8, 8, 8, dtype=torch.bool)
    mask[:, :, 2:6] = True
    d = m(ct, codes, mask)
    assert d.shape == (2, 1, 8, 8, 8)
    assert (d >= 0).all()
    assert (d[~mask] == 0).all() and (d[mask] > 0).all()


def test_assembled_channels():
    # two overlapping targets: the Rx map takes the highest prescription
    rs = RoiSet((Roi("Cord", "oar"), Roi("PTVlow", "target", 56.0), Roi("PTVhigh", "target", 70.0)))
    m = build_model(tiny(rois=rs.to_dicts()))
    shape = (8, 8, 8)
    low, high, cord = np.zeros(shape, bool), np.zeros(shape, bool), np.zeros(shape, bool)
    low[:4] = True
    high[2:6] = True
    cord[7] = True
    codes = to_torch(encode([cord, low, high]))[None]
    ct = torch.full((1, 1, *shape), 3000, dtype=torch.int16)
    x = m.assemble(ct, codes, torch.ones(1, 1, *shape))
    assert x.shape == (1, 4, *shape)  # CT, Rx, one OAR, mask
    assert torch.allclose(x[0, 0], torch.full(shape, 2.0))  # HU clipped at 2000 / 1000
    rx = x[0, 1]
    assert rx[0, 0, 0] == pytest.approx(56 / 70) and rx[3, 0, 0] == pytest.approx(1.0)
    assert rx[5, 0, 0] == pytest.approx(1.0) and rx[6, 0, 0] == 0
    assert torch.equal(x[0, 2].bool(), torch.from_numpy(cord))


def test_config_errors():
    with pytest.raises(ModelError, match="divisible"):
        ModelConfig(patch=(30, 32, 32), levels=4)
    with pytest.raises(ModelError, match="architecture"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "arch": "swin-unetr"})
    with pytest.raises(ModelError, match="trained on"):
        check_roi_set(ModelConfig(), RoiSet((Roi("Brain"),)), "cache X")
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()


def test_left_right_bits_swap():
    rs = RoiSet.openkbp()
    pairs = lr_pairs(rs)
    assert sorted(pairs[0]) == sorted([rs.index("RightParotid"), rs.index("LeftParotid")]) and len(pairs) == 1
    codes = encode([np.array([i == 2, i == 3, True]) for i in range(10)])  # voxel0: bit2, voxel1: bit3
    sw = swap_bits(codes, pairs)
    assert sw[0] == 1 << 3 and sw[1] == 1 << 2 and sw[2] == codes[2]
    assert np.array_equal(swap_bits(sw, pairs), codes)


def _synthetic(n=3, size=16):
    from dosepred.synth import make_cohort

    return make_cohort(n, seed=1, size=size)


def test_crops_deterministic_and_flip_consistent():
    pats = _synthetic()
    arrays = [prepare_patient(p, (8, 8, 8)) for p in pats]
    ds = CropDataset(arrays, pats[0].roi_set, (8, 8, 8), 10, seed=3)
    a = ds[4]
    b = CropDataset(arrays, pats[0].roi_set, (8, 8, 8), 10, seed=3)[4]
    for k in a:
        assert torch.equal(a[k], b[k])
    ds.set_epoch(1)
    assert any(not torch.equal(a[k], ds[4][k]) for k in ("ct", "dose"))
    assert a["codes"].dtype == torch.int16 and a["ct"].shape == (1, 8, 8, 8)
    # dose is zero outside the possible-dose mask in every crop (padding included)
    for i in range(10):
        it = ds[i]
        assert (it["dose"][~it["mask"]] == 0).all()


def test_rank_sampler_partitions_the_sequence():
    one = list(RankSampler(4, 2))
    two = [list(RankSampler(2, 2, r, 2)) for r in range(2)]
    assert one == list(range(8))
    assert sorted(two[0] + two[1]) == list(range(8)) and not set(two[0]) & set(two[1])
    assert list(RankSampler(4, 2, start_step=3)) == [6, 7]


def test_explicit_channels_build_those_widths():
    # widths not following the doubling rule are stored; the doubling rule is stored as base/levels
    c = tiny(channels=[4, 6, 12], patch=(8, 8, 8), res_units=0)
    assert (c.base, c.levels, c.widths) == (4, 3, [4, 6, 12])
    assert c.to_dict()["channels"] == [4, 6, 12]
    m = build_model(c)
    convs = [mod for mod in m.net.modules() if isinstance(mod, torch.nn.Conv3d)]
    assert sorted({mod.out_channels for mod in convs}) == [4, 6, 12]
    assert ModelConfig.from_dict(c.to_dict()).widths == [4, 6, 12]
    plain = tiny(channels=[4, 8, 16], patch=(8, 8, 8))
    assert plain.channels is None and (plain.base, plain.levels) == (4, 3)
    assert "channels" not in plain.to_dict()  # readable by a dosepred without the field
    with pytest.raises(ModelError, match="channels"):
        tiny(channels=[4])
    with pytest.raises(ModelError, match="divisible"):
        tiny(channels=[4, 8, 16, 32], patch=(12, 12, 12))
