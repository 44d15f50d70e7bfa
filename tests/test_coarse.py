"""The coarse branch (``coarse``, issue 24): a U-Net of coarser levels on the output of the U-Net's
bottom, added to it. Made from a model without it (``--init``), it predicts exactly what that model
does; the branch runs at the resolutions it claims; training moves it; the checkpoint loads, exports,
resumes and refuses what does not fit."""

import numpy as np
import pytest
import torch

from dosepred.models import ModelConfig, ModelError, build_model
from dosepred.models.checkpoint import export_model, load_checkpoint, load_model
from dosepred.models.unet import CoarseBranch
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run

COARSE = [4, 4, 8]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("coarse"), seed=6)


@pytest.fixture(scope="module")
def plain(cache, tmp_path_factory):
    return tiny_run(cache, tmp_path_factory.mktemp("plain") / "run")




def test_config_without_branch_is_unchanged():
    old = ModelConfig(patch=(16, 16, 16), base=4, levels=2).to_dict()
    assert "coarse" not in old  # checkpoints without the branch stay readable by older dosepreds
    assert ModelConfig.from_dict(old).coarse is None
    c = ModelConfig(patch=(16, 16, 16), base=4, levels=2, coarse=COARSE)
    assert ModelConfig.from_dict(c.to_dict()).coarse == COARSE
    assert c.depth == 4
    with pytest.raises(ModelError, match="coarse must list at least two"):
        ModelConfig(coarse=[8])
    # the patch must halve through the branch's levels too: 2 + 2 more down-samplings = 2^3
    with pytest.raises(ModelError, match="divisible by 2\\^3"):
        ModelConfig(patch=(12, 12, 12), base=4, levels=2, coarse=COARSE)


def test_branch_runs_below_the_bottom_and_adds_to_it():
    """Hooks record what the branch sees: the bottom's output (levels=2: half the input size), then
    half and a quarter of that; its output is added to the bottom's."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(patch=(16, 16, 16), base=4, levels=2, res_units=0, coarse=COARSE)).eval()
    branch = next(b for b in m.modules() if isinstance(b, CoarseBranch))
    seen: dict[str, torch.Tensor] = {}
    branch.bottom.register_forward_hook(lambda mod, i, o: seen.__setitem__("bottom", o))
    branch.extra.register_forward_hook(lambda mod, i, o: seen.__setitem__("extra", o))
    branch.register_forward_hook(lambda mod, i, o: seen.__setitem__("sum", o))
    convs = [c for c in branch.extra.modules() if isinstance(c, torch.nn.Conv3d)]
    shapes: list[tuple[int, ...]] = []
    for c in convs:
        c.register_forward_hook(lambda mod, i, o: shapes.append(tuple(o.shape[2:])))
    for q in branch.extra.parameters():  # move the zero-initialised last layer off zero
        q.data.normal_(0, 0.1)
    with torch.no_grad():
        m(*random_inputs())
    assert seen["bottom"].shape == (1, 8, 8, 8, 8)  # levels=2, base 4: 8 channels at 8^3
    assert sorted({s[0] for s in shapes}) == [2, 4]  # the branch's levels: 1/2 and 1/4 of 8^3
    assert torch.allclose(seen["sum"], seen["bottom"] + seen["extra"])
    assert seen["extra"].abs().max() > 0


def test_made_from_a_model_without_it_predicts_exactly_the_same(cache, plain, tmp_path):
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "c"), epochs=1, steps_per_epoch=1,
                           init=str(plain), coarse=COARSE, **TINY))
    assert t.model.config.coarse == COARSE
    before = load_model(plain)
    ct, codes, mask = random_inputs(1)
    with torch.no_grad():
        assert torch.equal(t.model.eval()(ct, codes, mask), before(ct, codes, mask))
    # every weight of the plain model is in the new one, the branch is all that is new
    old = load_checkpoint(plain)["model"]
    new = t.model.state_dict()
    moved = {k.replace("net.model.1.submodule.", "net.model.1.submodule.bottom.") for k in old}  # levels=2
    assert moved <= set(new)
    assert all(".extra." in k for k in set(new) - moved)


def test_training_moves_the_branch_and_the_model_round_trips(cache, plain, tmp_path):
    out = tmp_path / "c"
    Trainer(TrainConfig(data=str(cache), out=str(out), epochs=1, steps_per_epoch=4, lr=1e-2,
                        init=str(plain), coarse=COARSE, **TINY), progress=False).fit()
    after = load_checkpoint(out)
    assert after["model_config"]["coarse"] == COARSE
    extra = [k for k in after["model"] if ".extra." in k and k.endswith("weight")]
    assert after["model"][extra[-1]].abs().sum() > 0  # the last layer left zero
    m = load_model(out)
    ct, codes, mask = random_inputs(2)
    with torch.no_grad():
        d = m(ct, codes, mask).numpy()
        plain_d = load_model(plain)(ct, codes, mask).numpy()
    assert np.isfinite(d).all() and (d[mask.numpy() == 0] == 0).all()
    assert not np.allclose(d, plain_d)
    export_model(out, tmp_path / "model", half=False)
    assert "a coarse branch [4, 4, 8] under the bottom" in (tmp_path / "model" / "README.md").read_text()
    with torch.no_grad():
        assert np.array_equal(load_model(tmp_path / "model")(ct, codes, mask).numpy(), d)
    # a fine-tune of it keeps the branch without being told
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "again"), epochs=1, steps_per_epoch=1,
                           init=str(out), **TINY))
    assert t.model.config.coarse == COARSE
    with torch.no_grad():
        assert np.array_equal(t.model.eval()(ct, codes, mask).numpy(), d)


def test_resume_is_exact(cache, plain, tmp_path):
    kw = dict(data=str(cache), epochs=2, steps_per_epoch=2, init=str(plain), coarse=COARSE, **TINY)
    Trainer(TrainConfig(out=str(tmp_path / "whole"), **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), stop_after=1, **kw), progress=False).fit()
    Trainer(TrainConfig(out=str(tmp_path / "cut"), **kw), resume=True, progress=False).fit()
    a = load_checkpoint(tmp_path / "whole")["model"]
    b = load_checkpoint(tmp_path / "cut")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_what_does_not_fit_is_refused(cache, plain, tmp_path):
    c = tmp_path / "c"
    Trainer(TrainConfig(data=str(cache), out=str(c), epochs=1, steps_per_epoch=1, init=str(plain),
                        coarse=COARSE, **TINY), progress=False).fit()
    with pytest.raises(ModelError, match=r"coarse=\[4, 4, 8\] but coarse=\[4, 8\]"):
        ready(TrainConfig(data=str(cache), out=str(tmp_path / "x"), epochs=1, steps_per_epoch=1,
                           init=str(c), coarse=[4, 8], **TINY))
    with pytest.raises(ModelError, match="two fine-tunes"):
        ready(TrainConfig(data=str(cache), out=str(tmp_path / "y"), epochs=1, steps_per_epoch=1,
                           init=str(plain), coarse=COARSE, stages=2, **TINY))


def test_command_line_takes_comma_separated_widths(tmp_path):
    """`train --coarse 128,128,256` as `--channels` takes its widths (a list in a --config file)."""
    from typer.testing import CliRunner

    from dosepred.cli import app

    assert TrainConfig(data="d", out="o", coarse="128, 128,256").coarse == [128, 128, 256]
    assert TrainConfig(data="d", out="o", coarse=[8, 8]).coarse == [8, 8]
    with pytest.raises(ValueError, match="coarse must be comma-separated integers such as 128,128,256"):
        TrainConfig(data="d", out="o", coarse="a,b")
    r = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r"),
                                 "--coarse", "8,x"])
    assert r.exit_code == 2 and "coarse must be comma-separated integers" in r.output
