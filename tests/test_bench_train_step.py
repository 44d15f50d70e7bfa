"""``python -m dosepred.bench.train_step``: every variant takes real steps (its weights move), fp32 is
the reference, an unknown variant is refused, and the command prints the table and writes the JSON."""

import json

import pytest
import torch

from dosepred.bench import train_step


def test_each_variant_trains(monkeypatch):
    moved = {}
    real = train_step._stepper

    def spy(variant, *a, **kw):
        step, c = real(variant, *a, **kw)
        # the closure's optimiser holds the trained parameters
        opt = next(x.cell_contents for x in step.__closure__
                   if isinstance(x.cell_contents, torch.optim.Optimizer))
        before = [q.detach().clone() for g in opt.param_groups for q in g["params"]]

        def wrapped():
            step()
            after = [q for g in opt.param_groups for q in g["params"]]
            moved[variant] = any(not torch.equal(b, q) for b, q in zip(before, after, strict=True))
        return wrapped, c

    monkeypatch.setattr(train_step, "_stepper", spy)
    res = train_step.run(size=16, steps=1, repeats=1, variants=("channels-last", "two-stage-frozen"))
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"fp32", "channels-last", "two-stage-frozen"}
    assert rows["fp32"]["ratio_vs_fp32"] == 1.0
    assert all(r["sec_per_step"] > 0 for r in rows.values())
    assert moved == {"fp32": True, "channels-last": True, "two-stage-frozen": True}


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        train_step.run(size=16, variants=("fp16-on-cpu",))


def test_main_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "ts.json"
    train_step.main(["--size", "16", "--steps", "1", "--repeats", "1", "--variants", "fp32",
                     "--json", str(out)])
    assert "one training step" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["rows"][0]["variant"] == "fp32" and res["size"] == 16


def test_channels_last_is_applied():
    step, _ = train_step._stepper("channels-last", 16, "cpu", 16, 4, 0)
    model = next(x.cell_contents for x in step.__closure__ if isinstance(x.cell_contents, torch.nn.Module))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    plain, _ = train_step._stepper("fp32", 16, "cpu", 16, 4, 0)
    model = next(x.cell_contents for x in plain.__closure__ if isinstance(x.cell_contents, torch.nn.Module))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_help_says_what_it_measures_in_whole_sentences(capsys):
    """`--help` (named by `train --cpu-bf16`'s help) printed the docstring's first line only, cut
    mid-sentence: 'the time of one training step of the dose U-Net in'."""
    with pytest.raises(SystemExit):
        train_step.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the dose U-Net in several execution variants, measured side by side in one process, relative " \
           "to the plain float32 step." in text
