"""``train --cpu-bf16``: bfloat16 autocast of the network on the CPU, and the check of the CPU's flags."""

import pytest
import torch

from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort
from dosepred.training import TrainConfig, train
from dosepred.training import trainer as trainer_mod
from dosepred.training.trainer import cpu_has_bf16
from dtype_spy import conv_output_dtypes

TINY = dict(patch=(16, 16, 16), base=4, levels=2, res_units=1, batch=2, threads=1, loss="mae",
            epochs=1, steps_per_epoch=3, seed=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    write_cache(make_cohort(4, seed=6, size=24), root / "train")
    return root / "train"


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu sse avx2 amx_tile amx_bf16", True),
    ("fpu sse avx2 avx512f avx512_vnni", False),  # AVX-512 without its bfloat16 extension
])
def test_cpu_bf16_is_read_from_the_flags_of_every_core(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text("".join(f"processor\t: {i}\nmodel name\t: X\nflags\t\t: {flags}\n\n" for i in range(2)))
    assert cpu_has_bf16(info) is expected


def test_cpu_bf16_is_unknown_without_cpuinfo_or_flags(tmp_path):
    assert cpu_has_bf16(tmp_path / "absent") is None
    (tmp_path / "noflags").write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # e.g. ARM's wording
    assert cpu_has_bf16(tmp_path / "noflags") is None


def _autocast_calls(monkeypatch):
    calls = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        calls.append((device_type, dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(trainer_mod.torch, "autocast", spy)
    return calls


def test_cpu_bf16_runs_the_network_in_bfloat16_and_keeps_float32_weights(cache, tmp_path, monkeypatch):
    calls, dtypes = _autocast_calls(monkeypatch), conv_output_dtypes(monkeypatch)
    monkeypatch.setattr(trainer_mod, "cpu_has_bf16", lambda: True)
    said = []
    train(TrainConfig(data=str(cache), out=str(tmp_path / "bf16"), cpu_bf16=True, device="cpu", **TINY),
          log=said.append)
    assert ("cpu", torch.bfloat16, True) in calls
    assert torch.bfloat16 in dtypes  # the training steps' convolutions ran in bfloat16
    assert any("bfloat16 autocast" in s for s in said) and not any("warning" in s for s in said)
    ck = torch.load(tmp_path / "bf16" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["train_config"]["cpu_bf16"] is True
    assert {v.dtype for v in ck["model"].values() if v.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_cpu_bf16_leaves_the_loss_and_the_validation_in_float32(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "cpu_has_bf16", lambda: True)
    in_loss, in_val = [], []
    real_make_loss, real_validate = trainer_mod.make_loss, trainer_mod.validate

    def make_loss(*a, **kw):
        fn = real_make_loss(*a, **kw)

        def loss(pred, *rest):
            in_loss.append((torch.is_autocast_enabled("cpu"), pred.dtype))
            return fn(pred, *rest)
        return loss

    convs = conv_output_dtypes(monkeypatch)

    def validate(*a, **kw):
        convs.clear()
        out = real_validate(*a, **kw)
        in_val.append((torch.is_autocast_enabled("cpu"), set(convs)))
        return out

    monkeypatch.setattr(trainer_mod, "make_loss", make_loss)
    monkeypatch.setattr(trainer_mod, "validate", validate)
    train(TrainConfig(data=str(cache), val=str(cache), out=str(tmp_path / "v"), cpu_bf16=True, device="cpu",
                      **{**TINY, "val_every": 1}))
    assert in_loss and all(not on and dt == torch.float32 for on, dt in in_loss)
    assert in_val and all(not on and dts == {torch.float32} for on, dts in in_val)


def test_without_cpu_bf16_every_convolution_stays_float32(cache, tmp_path, monkeypatch):
    calls, dtypes = _autocast_calls(monkeypatch), conv_output_dtypes(monkeypatch)
    said = []
    train(TrainConfig(data=str(cache), out=str(tmp_path / "fp32"), device="cpu", **TINY), log=said.append)
    assert calls and all(not enabled for _, _, enabled in calls)
    assert dtypes == {torch.float32}
    assert not any("bfloat16" in s for s in said)


def test_cpu_bf16_trains_close_to_float32(cache, tmp_path):
    """Same seed, same steps: bfloat16's rounding moves the weights a little, not the training."""
    runs = {}
    for bf in (False, True):
        out = tmp_path / f"run-{bf}"
        train(TrainConfig(data=str(cache), out=str(out), cpu_bf16=bf, device="cpu",
                          **{**TINY, "steps_per_epoch": 8, "lr": 1e-2}))
        runs[bf] = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    a, b = runs[False], runs[True]
    diff = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
    moved = max(float(a[k].abs().max()) for k in a if a[k].is_floating_point())
    assert 0 < diff < 0.1 * moved, (diff, moved)


def test_cpu_bf16_warns_on_a_cpu_without_native_bfloat16(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "cpu_has_bf16", lambda: False)
    said = []
    train(TrainConfig(data=str(cache), out=str(tmp_path / "slow"), cpu_bf16=True, device="cpu", **TINY),
          log=said.append)
    warning = [s for s in said if s.startswith("warning")]
    assert len(warning) == 1 and "AVX512-BF16" in warning[0] and "bench.train_step" in warning[0]
