"""Growing a trained U-Net wider (dosepred.models.grow, issue 24): the wider network predicts exactly
what the narrower one did (checked against the narrower model itself, for every layer that grows:
down, up, bottom, with a coarse branch, a second stage and batch-norm statistics), its new channels
compute something and learn, and what cannot be grown is one clear error."""

import pytest
import torch

from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import export_model, load_checkpoint, load_model
from dosepred.models.grow import grow_problem, grow_state
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run

#: TINY without base and levels, which explicit channels decide
ARCH = {k: v for k, v in TINY.items() if k not in ("base", "levels")}


def _model(seed, channels, **kw):
    torch.manual_seed(seed)
    m = build_model(ModelConfig(channels=channels, res_units=0, patch=(32, 32, 32), **kw))
    with torch.no_grad():  # every weight off its initial value, the zero-started ones included
        for q in m.parameters():
            q.normal_(0, 0.3)
        for name, b in m.named_buffers():
            if "running_var" in name:
                b.uniform_(0.5, 2.0)
            elif "running_mean" in name:
                b.normal_(0, 0.5)
    return m.eval()


def _inputs(m, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, m.config.in_channels, size, size, size), generator=g)
    x[:, -1] = (torch.rand((2, size, size, size), generator=g) > 0.2).float()
    return x


@pytest.mark.parametrize("was, now, kw", [
    ([4, 6, 8], [4, 10, 8], {}),  # the middle level: its down, its up (both halves), the next down
    ([4, 6, 8], [7, 6, 8], {}),  # the first level: reads the input, its up writes the output
    ([4, 6, 8], [5, 9, 12], {}),  # every level, the bottom (the deepest up's second half) too
    ([4, 6, 8], [6, 9, 8], {"coarse": [8, 8]}),  # a coarse branch under an unchanged bottom
    ([4, 6, 8], [6, 9, 11], {"stages": 2}),  # both U-Nets of a cascade (the second reads one more)
    ([4, 6, 8], [6, 9, 11], {"norm": "batch"}),  # batch-norm statistics and affine per channel
    ([4, 6, 8], [7, 9, 11], {"head": 3}),  # a head reads the U-Net's 1 + 3 outputs: the top up layer's
])
def test_the_grown_network_predicts_exactly_what_the_narrow_one_did(was, now, kw):
    narrow = _model(0, was, **kw)
    wide = _model(1, now, **kw)
    wide.load_state_dict(grow_state(narrow.state_dict(), narrow.config, wide))
    x = _inputs(narrow)
    with torch.no_grad():
        want = narrow.from_input(x)
        got = wide.from_input(x)
    assert want.abs().mean() > 1  # a dose, not zeros
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_new_channels_compute_something_and_learn():
    narrow = _model(0, [4, 6, 8, 8])
    wide = _model(1, [4, 10, 8, 8])
    wide.load_state_dict(grow_state(narrow.state_dict(), narrow.config, wide))
    down1 = wide.net.model[1].submodule[0]  # the second level's down layer: 10 channels, 4 new
    seen = {}
    down1.register_forward_hook(lambda mod, i, o: seen.__setitem__("y", o))
    wide.train()
    x = _inputs(wide)
    dose = wide.from_input(x)
    assert seen["y"].shape[1] == 10 and seen["y"][:, 6:].abs().mean() > 0.1  # new channels are alive
    (dose - 30.0).abs().mean().backward()
    reader = wide.net.model[1].submodule[1].submodule[0].conv.weight  # the next level's down conv
    assert torch.equal(reader.detach()[:, 6:], torch.zeros_like(reader[:, 6:]))  # reads them with 0
    assert reader.grad[:, 6:].abs().sum() > 0  # and learns to read them
    up = wide.net.model[1].submodule[2].conv.weight  # the level's up (transposed: in, out), reads both
    assert up.shape[0] == 2 * 10
    for new in (slice(6, 10), slice(16, 20)):  # the new channels of both halves of cat([skip, deeper])
        assert torch.equal(up.detach()[new], torch.zeros_like(up[new]))
        assert up.grad[new].abs().sum() > 0


@pytest.mark.parametrize("was_kw, widths, kw, message", [
    ({}, [4, 6], {}, "has 3 levels ([4, 6, 8]); a wider network needs the same number of levels"),
    ({}, [4, 5, 8], {}, "level 2 of [4, 5, 8] is narrower (5 < 6), and a network can only grow"),
    ({}, [4, 8, 8], {"res_units": 1}, "growing channels needs plain convolutions"),
    ({"coarse": [8, 8]}, [4, 6, 10], {}, "the bottom's width cannot grow (10 asked)"),
    ({}, [4, 8, 8], {"stages": 2}, "grow the channels and add a second stage in two fine-tunes"),
    ({}, [4, 8, 8], {"head": 4}, "has head=None; grow the channels and add a full-resolution head (head=4) "
                                 "in two fine-tunes"),
])
def test_what_cannot_grow_is_named(was_kw, widths, kw, message):
    old = ModelConfig(channels=[4, 6, 8], res_units=0, patch=(32, 32, 32), **was_kw)
    args = {"res_units": 0, "coarse": old.coarse, "stages": 1, "head": old.head, **kw}
    assert message in grow_problem(old, widths, **args)
    assert grow_problem(old, [4, 8, 8], 0, old.coarse, 1, old.head) is None


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("grow"), seed=9)


@pytest.fixture(scope="module")
def plain(cache, tmp_path_factory):
    return tiny_run(cache, tmp_path_factory.mktemp("plain") / "run")  # TINY: channels [4, 8]


def test_a_fine_tune_with_wider_channels_starts_from_the_init_prediction(cache, plain, tmp_path):
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "w"), epochs=1, steps_per_epoch=1,
                          init=str(plain), channels=[7, 8], **ARCH))
    assert t.model.config.widths == [7, 8]
    ct, codes, mask = random_inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(t.model.eval()(ct, codes, mask), load_model(plain)(ct, codes, mask),
                                   rtol=1e-5, atol=1e-4)


def test_grown_while_a_coarse_branch_is_added_predicts_the_init(cache, plain, tmp_path):
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "w"), epochs=1, steps_per_epoch=1,
                          init=str(plain), channels=[7, 8], coarse=[8, 8], **ARCH))
    assert t.model.config.widths == [7, 8] and t.model.config.coarse == [8, 8]
    ct, codes, mask = random_inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(t.model.eval()(ct, codes, mask), load_model(plain)(ct, codes, mask),
                                   rtol=1e-5, atol=1e-4)


def test_a_grown_two_stage_model_cannot_freeze_its_first_stage(cache, plain, tmp_path):
    two = tmp_path / "two"
    Trainer(TrainConfig(data=str(cache), out=str(two), epochs=1, steps_per_epoch=1, init=str(plain),
                        stages=2, **ARCH), progress=False).fit()
    with pytest.raises(ModelError, match=r"freeze_stage1 with channels \[7, 8\] wider .* would never train"):
        ready(TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                          init=str(two), channels=[7, 8], freeze_stage1=True, **ARCH))
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "y"), epochs=1, steps_per_epoch=1,
                          init=str(two), channels=[7, 8], **ARCH))  # both stages grow
    assert t.model.refine is not None and t.model.config.widths == [7, 8]


def test_grown_training_moves_resumes_exports_and_continues(cache, plain, tmp_path):
    kw = dict(data=str(cache), epochs=2, steps_per_epoch=2, lr=1e-2, init=str(plain), channels=[7, 8], **ARCH)
    Trainer(TrainConfig(out=str(tmp_path / "whole"), **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), stop_after=1, **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), **kw), resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "whole")
    b = load_checkpoint(tmp_path / "cut")["model"]
    assert all(torch.equal(a["model"][k], b[k]) for k in b)  # --resume of a grown run is exact
    assert a["model_config"]["channels"] == [7, 8]
    first = a["model"]["net.model.0.conv.weight"]  # (7, in, 3, 3, 3): the 3 new channels trained
    assert first[4:].abs().sum() > 0
    ct, codes, mask = random_inputs(4)
    with torch.no_grad():
        d = load_model(tmp_path / "whole")(ct, codes, mask)
        assert not torch.allclose(d, load_model(plain)(ct, codes, mask))
    export_model(tmp_path / "whole", tmp_path / "model", half=False)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "model")(ct, codes, mask), d)
    # a fine-tune of the grown model keeps its channels without being told
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "again"), epochs=1, steps_per_epoch=1,
                          init=str(tmp_path / "model"), **ARCH))
    assert t.model.config.widths == [7, 8]


@pytest.mark.parametrize("kw, message", [
    ({"channels": [3, 8]}, "level 1 of [3, 8] is narrower (3 < 4), and a network can only grow, "
                           "but channels [3, 8] were requested"),
    ({"channels": [4, 8, 16], "patch": (16, 16, 16)}, "has 2 levels ([4, 8]); a wider network needs "
                                                      "the same number of levels"),
    ({"channels": [6, 8], "freeze_steps": 2, "steps_per_epoch": 3},
     "freeze_steps with channels [6, 8] wider than --init"),
    ({"channels": [6, 8], "stages": 2, "freeze_stage1": True},
     "has stages=1; grow the channels and add a second stage in two fine-tunes"),
    ({"channels": [6, 10], "coarse": [8, 8]},
     "has a bottom of 8 channels, which cannot grow (10 asked) while a coarse branch (coarse=[8, 8]) is "
     "added under it"),
    ({"base": 8}, "has base=4 but base=8 was requested (--channels grows a model"),
])
def test_a_fine_tune_that_cannot_grow_is_one_error(cache, plain, tmp_path, kw, message):
    cfg = TrainConfig(**{"data": str(cache), "out": str(tmp_path / "x"), "epochs": 1, "steps_per_epoch": 1,
                         "init": str(plain), **{**ARCH, **kw}})
    with pytest.raises(ModelError) as ei:
        Trainer(cfg, progress=False).fit()
    assert message in str(ei.value)
    assert not (tmp_path / "x").exists()
