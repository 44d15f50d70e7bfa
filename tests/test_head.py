"""The full-resolution head (ModelConfig.head, issue 24): a pointwise correction on the full grid from
the input channels and the U-Net's extra outputs. Checked against a numpy computation of what it
should do, against the model it is added to (exactly the same prediction), and that it learns, resumes,
exports and refuses what it cannot do in one clear error."""

import numpy as np
import pytest
import torch

from dosepred.bench.networks import parse_head, parse_network
from dosepred.errors import InputError
from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import export_model, load_checkpoint, load_model
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run


def test_the_head_is_a_pointwise_correction_of_the_first_output():
    torch.manual_seed(0)
    m = build_model(ModelConfig(channels=[4, 6], res_units=0, patch=(16, 16, 16), head=3)).eval()
    with torch.no_grad():
        for q in m.head.parameters():
            q.normal_(0, 0.5)
    x = m.assemble(*random_inputs(2))
    seen = {}
    m.net.register_forward_hook(lambda mod, i, o: seen.__setitem__("y", o))
    with torch.no_grad():
        dose = m.from_input(x)
    y = seen["y"].numpy().astype(np.float64)
    assert y.shape[1] == 4  # the dose's raw value and 3 channels for the head
    xy = np.concatenate([x.numpy().astype(np.float64), y], axis=1)[0]  # (C, D, H, W)
    w1 = m.head.mix.weight.detach().numpy()[:, :, 0, 0, 0]
    b1 = m.head.mix.bias.detach().numpy()
    w2 = m.head.out.weight.detach().numpy()[0, :, 0, 0, 0]
    hidden = np.maximum(np.einsum("hc,cdxy->hdxy", w1, xy) + b1[:, None, None, None], 0)
    raw = y[0, 0] + np.einsum("h,hdxy->dxy", w2, hidden) + m.head.out.bias.item()
    want = 70.0 * np.log1p(np.exp(raw)) * x.numpy()[0, -1]  # dose_scale * softplus * mask
    np.testing.assert_allclose(dose.numpy()[0, 0], want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kw", [{}, {"coarse": [8, 8]}])
def test_a_head_added_to_a_model_starts_from_its_prediction(kw):
    torch.manual_seed(0)
    old = build_model(ModelConfig(channels=[4, 6, 8], res_units=0, patch=(32, 32, 32), **kw)).eval()
    with torch.no_grad():
        for q in old.parameters():
            q.normal_(0, 0.3)
    new = build_model(ModelConfig(channels=[4, 6, 8], res_units=0, patch=(32, 32, 32), head=4, **kw)).eval()
    new.load_state_dict(new.complete_state(old.state_dict()))
    ct, codes, mask = random_inputs(1, size=32)
    with torch.no_grad():
        want = old(ct, codes, mask)
        assert want.abs().mean() > 1
        torch.testing.assert_close(new(ct, codes, mask), want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kw, message", [
    ({"head": 0}, "head must be a positive number of channels, got 0"),
    ({"head": True}, "head must be a positive number of channels, got True"),
    ({"head": 2.5}, "head must be a positive number of channels, got 2.5"),
    ({"head": 2, "stages": 2}, "a full-resolution head (head) is for one-stage models"),
])
def test_bad_head_settings_are_named(kw, message):
    with pytest.raises(ModelError) as ei:
        ModelConfig(channels=[4, 6], patch=(16, 16, 16), **kw)
    assert message in str(ei.value)


def test_config_round_trip_and_old_readers():
    plain = ModelConfig(channels=[4, 6], patch=(16, 16, 16))
    assert "head" not in plain.to_dict()  # what older dosepreds read stays the same
    c = ModelConfig(channels=[4, 6], patch=(16, 16, 16), head=5)
    assert c.to_dict()["head"] == 5 and ModelConfig.from_dict(c.to_dict()).head == 5


def test_a_head_cannot_be_added_over_residual_units():
    torch.manual_seed(0)
    old = build_model(ModelConfig(channels=[4, 6], res_units=1, patch=(16, 16, 16)))
    new = build_model(ModelConfig(channels=[4, 6], res_units=1, patch=(16, 16, 16), head=2))
    with pytest.raises(ModelError, match=r"only with res_units=0 \(this one has 1\)"):
        new.complete_state(old.state_dict())


def test_bench_network_with_a_head():
    assert parse_head("16,64,64,128+128,128,256@4") == 4
    assert parse_network("16,64,64,128+128,128,256@4") == ([16, 64, 64, 128], 0, [128, 128, 256])
    assert parse_head("16,32:1") is None
    for bad in ("16,32@0", "16,32@x", "16,32@"):
        with pytest.raises(InputError, match="@HEAD must be a positive number of channels"):
            parse_head(bad)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("head"), seed=11)


@pytest.fixture(scope="module")
def plain(cache, tmp_path_factory):
    return tiny_run(cache, tmp_path_factory.mktemp("plain") / "run")  # TINY: channels [4, 8]


@pytest.mark.parametrize("kw", [{}, {"coarse": [8, 8]}])
def test_a_fine_tune_with_a_head_starts_from_the_init_prediction(cache, plain, tmp_path, kw):
    logged = []
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "h"), epochs=1, steps_per_epoch=1,
                          init=str(plain), head=3, **TINY, **kw), log=logged.append)
    assert t.model.head is not None and t.model.config.head == 3
    assert any("gets a full-resolution head of 3 channels" in m for m in logged)
    ct, codes, mask = random_inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(t.model.eval()(ct, codes, mask), load_model(plain)(ct, codes, mask),
                                   rtol=1e-5, atol=1e-4)


def test_head_training_moves_resumes_exports_and_continues(cache, plain, tmp_path):
    kw = dict(data=str(cache), epochs=2, steps_per_epoch=2, lr=1e-2, init=str(plain), head=3, **TINY)
    Trainer(TrainConfig(out=str(tmp_path / "whole"), **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), stop_after=1, **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), **kw), resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "whole")
    b = load_checkpoint(tmp_path / "cut")["model"]
    assert all(torch.equal(a["model"][k], b[k]) for k in b)  # --resume is exact
    assert a["model_config"]["head"] == 3
    assert a["model"]["head.out.weight"].abs().sum() > 0  # the zero-started correction learned
    ct, codes, mask = random_inputs(4)
    with torch.no_grad():
        d = load_model(tmp_path / "whole")(ct, codes, mask)
        assert not torch.allclose(d, load_model(plain)(ct, codes, mask))
    out = export_model(tmp_path / "whole", tmp_path / "model", half=False)
    assert "a full-resolution head of 3 channels" in (out / "README.md").read_text()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "model")(ct, codes, mask), d)
    # a fine-tune of the model keeps its head without being told, and may grow its channels
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "again"), epochs=1, steps_per_epoch=1,
                          init=str(tmp_path / "model"), channels=[6, 8],
                          **{k: v for k, v in TINY.items() if k not in ("base", "levels")}))
    assert t.model.config.head == 3 and t.model.config.widths == [6, 8]
    with torch.no_grad():
        torch.testing.assert_close(t.model.eval()(ct, codes, mask), d, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kw, message", [
    ({"channels": [6, 8]}, "has head=None; grow the channels and add a full-resolution head (head=3) in "
                           "two fine-tunes, but channels [6, 8] were requested"),
    ({"stages": 2}, "a full-resolution head (head) is for one-stage models"),
])
def test_a_fine_tune_that_cannot_add_the_head_is_one_error(cache, plain, tmp_path, kw, message):
    arch = {k: v for k, v in TINY.items() if not ("channels" in kw and k in ("base", "levels"))}
    cfg = TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                      init=str(plain), head=3, **{**arch, **kw})
    with pytest.raises(ModelError) as ei:
        Trainer(cfg, progress=False).fit()
    assert message in str(ei.value)
    assert not (tmp_path / "x").exists()


def test_another_head_width_than_the_inits_is_one_error(cache, plain, tmp_path):
    Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "h3"), epochs=1, steps_per_epoch=1,
                        init=str(plain), head=3, **TINY), progress=False).fit()
    with pytest.raises(ModelError, match=r"has head=3 but head=5 was requested"):
        Trainer(TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                            init=str(tmp_path / "h3"), head=5, **TINY), progress=False).fit()
    assert not (tmp_path / "x").exists()
