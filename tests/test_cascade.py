"""Two-stage models (``stages=2``): made from a one-stage model they predict exactly what it does;
with ``freeze_stage1`` only the second stage learns; the checkpoint loads, predicts, resumes and
refuses what does not fit."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import export_model, load_checkpoint, load_model
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("cascade"), seed=5)


@pytest.fixture(scope="module")
def one_stage(cache, tmp_path_factory):
    return tiny_run(cache, tmp_path_factory.mktemp("one") / "run")




def test_config_accepts_one_or_two_stages():
    assert ModelConfig().stages == 1
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "stages"}  # before stages existed
    assert ModelConfig.from_dict(old).stages == 1
    with pytest.raises(ModelError, match="stages"):
        ModelConfig(stages=3)


def test_second_stage_is_a_correction_of_the_first():
    """The forward pass written out by hand: raw = raw1 + refine([x, softplus(raw1) * mask])."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(patch=(16, 16, 16), base=4, levels=2, res_units=0, stages=2)).eval()
    for q in m.refine.parameters():  # move the zero-initialised last layer off zero
        q.data.normal_(0, 0.1)
    ct, codes, mask = random_inputs()
    with torch.no_grad():
        x = m.assemble(ct, codes, mask)
        raw1 = m.net(x)
        first = F.softplus(raw1) * mask
        raw = raw1 + m.refine(torch.cat([x, first], 1))
        want = 70.0 * F.softplus(raw) * mask
        got = m(ct, codes, mask)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, 70.0 * first, atol=1e-3)  # the second stage does something


def test_two_stages_from_one_predict_exactly_the_same(cache, one_stage, tmp_path):
    """--init from a one-stage run: step 0 of a two-stage run is the one-stage model's prediction."""
    cfg = TrainConfig(data=str(cache), out=str(tmp_path / "two"), epochs=1, steps_per_epoch=1,
                      init=str(one_stage), stages=2, freeze_stage1=True, **TINY)
    t = ready(cfg)
    one = load_model(one_stage)
    ct, codes, mask = random_inputs(1)
    with torch.no_grad():
        assert torch.equal(t.model.eval()(ct, codes, mask), one(ct, codes, mask))
    assert t.model.config.stages == 2 and t.model.freeze_first


def test_frozen_first_stage_does_not_move(cache, one_stage, tmp_path):
    out = tmp_path / "two"
    Trainer(TrainConfig(data=str(cache), out=str(out), epochs=1, steps_per_epoch=4, lr=1e-2,
                        init=str(one_stage), stages=2, freeze_stage1=True, **TINY), progress=False).fit()
    before = load_checkpoint(one_stage)["model"]
    after = load_checkpoint(out)["model"]
    first = {k: v for k, v in after.items() if k.startswith("net.")}
    assert first.keys() == before.keys()
    assert all(torch.equal(first[k].float(), before[k].float()) for k in before)
    refine = [k for k in after if k.startswith("refine.")]
    assert refine
    # the second stage learned: its last layer left zero
    last_w = [k for k in refine if k.endswith("weight")][-1]
    assert after[last_w].abs().sum() > 0
    # the saved two-stage model loads and predicts a dose inside the mask
    m = load_model(out)
    assert m.config.stages == 2 and not m.freeze_first
    ct, codes, mask = random_inputs(2)
    with torch.no_grad():
        d = m(ct, codes, mask).numpy()
    assert np.isfinite(d).all() and (d >= 0).all() and (d[mask.numpy() == 0] == 0).all()
    # exported as a model folder (fp32): the card says what it is, and it predicts the same
    export_model(out, tmp_path / "model", half=False)
    assert "two-stage cascade of 3D U-Nets" in (tmp_path / "model" / "README.md").read_text()
    with torch.no_grad():
        assert np.array_equal(load_model(tmp_path / "model")(ct, codes, mask).numpy(), d)


def test_unfrozen_cascade_trains_both_stages(cache, one_stage, tmp_path):
    out = tmp_path / "joint"
    Trainer(TrainConfig(data=str(cache), out=str(out), epochs=1, steps_per_epoch=3, lr=1e-2,
                        init=str(one_stage), stages=2, **TINY), progress=False).fit()
    before = load_checkpoint(one_stage)["model"]
    after = load_checkpoint(out)["model"]
    assert any(not torch.equal(after[k].float(), before[k].float()) for k in before)


def test_cascade_resume_is_exact(cache, one_stage, tmp_path):
    kw = dict(data=str(cache), epochs=2, steps_per_epoch=2, init=str(one_stage), stages=2,
              freeze_stage1=True, **TINY)
    Trainer(TrainConfig(out=str(tmp_path / "whole"), **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), stop_after=1, **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), **kw), resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "whole")["model"]
    b = load_checkpoint(tmp_path / "cut")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_what_does_not_fit_is_refused(cache, one_stage, tmp_path):
    two = tmp_path / "two"
    Trainer(TrainConfig(data=str(cache), out=str(two), epochs=1, steps_per_epoch=1,
                        init=str(one_stage), stages=2, **TINY), progress=False).fit()
    with pytest.raises(ModelError, match="stages=2 but stages=1"):
        ready(TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                           init=str(two), stages=1, **TINY))
    with pytest.raises(ValueError, match="freeze_stage1 needs stages=2"):
        TrainConfig(data=str(cache), out="x", stages=1, freeze_stage1=True)
    with pytest.raises(ModelError, match="freeze_stage1 needs stages=2"):
        ready(TrainConfig(data=str(cache), out=str(tmp_path / "y"), epochs=1, steps_per_epoch=1,
                           init=str(one_stage), freeze_stage1=True, **TINY))


def test_frozen_first_stage_stays_exact_under_ema_and_batch_norm(cache, tmp_path):
    """EMA copies frozen weights instead of averaging them (an average of equal floats can round);
    batch-norm statistics and dropout of a frozen stage stay those of eval mode."""
    one = tmp_path / "one"
    Trainer(TrainConfig(data=str(cache), out=str(one), epochs=1, steps_per_epoch=2, seed=3,
                        **{**TINY, "norm": "batch"}), progress=False).fit()
    two = tmp_path / "two"
    Trainer(TrainConfig(data=str(cache), out=str(two), epochs=1, steps_per_epoch=4, lr=1e-2, ema_decay=0.5,
                        init=str(one), stages=2, freeze_stage1=True, **{**TINY, "norm": "batch"}),
            progress=False).fit()
    before = load_checkpoint(one)["model"]
    ck = load_checkpoint(two)
    for part in ("model", "train_model"):  # the EMA and the raw weights
        first = {k: v for k, v in ck[part].items() if k.startswith("net.")}
        assert any("running_mean" in k for k in first)
        assert all(torch.equal(first[k].float(), before[k].float()) for k in before), part
    m = build_model(ModelConfig.from_dict(ck["model_config"]))
    m.freeze_first = True
    m.train()
    assert m.training and m.refine.training and not m.net.training


def test_checkpoints_from_before_stages_resume_and_average(cache, one_stage, tmp_path):
    """A checkpoint written before the `stages` field existed (the released models, older runs)
    resumes and averages with one that has it."""
    from dosepred.models.checkpoint import average_checkpoints, save_checkpoint

    old = load_checkpoint(one_stage)
    old.pop("path")
    del old["model_config"]["stages"]
    save_checkpoint(old, tmp_path / "old.pt")
    avg = average_checkpoints([tmp_path / "old.pt", one_stage / "checkpoints" / "last.pt"])
    assert all(torch.equal(avg["model"][k], old["model"][k].float()) for k in old["model"])
    run = tmp_path / "run"
    kw = dict(data=str(cache), out=str(run), epochs=2, steps_per_epoch=1, **TINY)
    Trainer(TrainConfig(stop_after=1, **kw), progress=False).fit()
    last = load_checkpoint(run)
    last.pop("path")
    del last["model_config"]["stages"]
    save_checkpoint(last, run / "checkpoints" / "last.pt")
    res = Trainer(TrainConfig(**kw), resume=True, progress=False).fit()
    assert res["global_step"] == 2
