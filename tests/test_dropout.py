"""Channel dropout in training (TrainConfig.dropout, issue 24 round 34): active in training mode only,
a fine-tune takes --init's rate unless set, and a model trained with it predicts like the same
weights without it (dropout has no weights)."""

import pytest
import torch

from dosepred.errors import InputError
from dosepred.models import ModelConfig, build_model
from dosepred.models.checkpoint import export_model, load_checkpoint, load_model
from dosepred.training import TrainConfig, Trainer
from tiny_models import TINY, random_inputs, ready, tiny_cache, tiny_run


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tiny_cache(tmp_path_factory.mktemp("drop"), seed=5)


def test_dropout_is_random_in_training_and_nothing_in_eval():
    cfg = dict(channels=[8, 16], res_units=0, patch=(16, 16, 16), coarse=[16, 16])
    plain, dropped = build_model(ModelConfig(**cfg)), build_model(ModelConfig(**cfg, dropout=0.5))
    dropped.load_state_dict(plain.state_dict(), strict=True)  # the same weights: dropout has none
    ct, codes, mask = random_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval()(ct, codes, mask), plain.eval()(ct, codes, mask))
        torch.manual_seed(0)
        a = dropped.train()(ct, codes, mask)
        b = dropped(ct, codes, mask)
    assert not torch.allclose(a, b)  # random in training
    drops = [m for m in dropped.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.5 for m in drops)
    assert all(m.p == 0 for m in plain.modules() if isinstance(m, torch.nn.Dropout))
    # the coarse branch's convolutions have it too
    assert [m for n, m in dropped.named_modules() if "extra" in n and isinstance(m, torch.nn.Dropout)]


@pytest.mark.parametrize("init_rate, asked, want", [(0.0, None, 0.0), (0.0, 0.1, 0.1), (0.2, None, 0.2),
                                                    (0.2, 0.0, 0.0)])
def test_a_fine_tune_takes_init_s_rate_unless_set(cache, tmp_path, init_rate, asked, want):
    init = tmp_path / "init"
    Trainer(TrainConfig(data=str(cache), out=str(init), epochs=1, steps_per_epoch=1, seed=1,
                        dropout=init_rate, **TINY), progress=False).fit()
    assert load_checkpoint(init)["model_config"]["dropout"] == init_rate
    t = ready(TrainConfig(data=str(cache), out=str(tmp_path / "ft"), epochs=1, steps_per_epoch=1,
                          init=str(init), dropout=asked, **TINY))
    assert t.model_config.dropout == want
    drops = [m.p for m in t.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == want for p in drops)


def test_a_run_with_dropout_predicts_without_it(cache, tmp_path):
    plain = tiny_run(cache, tmp_path / "plain")
    run = tmp_path / "run"
    Trainer(TrainConfig(data=str(cache), out=str(run), epochs=1, steps_per_epoch=2, lr=1e-2, init=str(plain),
                        dropout=0.3, **TINY), progress=False).fit()
    ck = load_checkpoint(run)
    assert ck["model_config"]["dropout"] == 0.3
    m = load_model(run)
    ct, codes, mask = random_inputs(4)
    with torch.no_grad():
        p1, p2 = m(ct, codes, mask), m(ct, codes, mask)
    torch.testing.assert_close(p1, p2)  # loaded for prediction: eval mode, no dropout
    assert not m.training
    card = (export_model(run, tmp_path / "model", half=False) / "README.md").read_text()
    assert "dropout 0.3 in training" in card


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_a_rate_outside_0_1_is_refused(cache, tmp_path, bad):
    with pytest.raises(InputError, match="training config field dropout: input should be"):
        TrainConfig(data=str(cache), out=str(tmp_path / "x"), dropout=bad, **TINY)
