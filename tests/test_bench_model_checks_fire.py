"""Checks of the benchmarks, the losses, the model and the synthetic cohort that no other test ran
(a coverage run of the suite): each user-reachable one is triggered through its public entry point
and must end in one ``error:`` line naming the option or field and its rule, exit code 2, no
traceback and nothing written; a few guards reachable only from the Python API (documented
functions a researcher calls) get a short unit test.

Covered: ``dosepred bench bitmask | networks | losses | qa-power`` options and data,
``python -m dosepred.bench.train_step``, ``dosepred train --set`` (architecture) and ``--loss-opt``
(every loss's settings), damaged checkpoints given to ``predict`` and to ``train --init`` while
growing channels, ``dosepred data synth``, and the API guards of :mod:`dosepred.losses`,
:mod:`dosepred.models` and :mod:`dosepred.synth`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from conftest import ROOT
from dosepred import synth
from dosepred.bench import example_patients, train_step
from dosepred.bench import losses as losses_bench
from dosepred.bench import networks as networks_bench
from dosepred.bench import qa_degrade as qd
from dosepred.bench import qa_power as qp
from dosepred.bench import qa_power_cv as qcv
from dosepred.errors import InputError
from dosepred.io.cache import write_cache
from dosepred.losses import (
    CDMLoss,
    DVHCurveLoss,
    MomentLoss,
    cdm_loss,
    d_metric,
    dvh_curve_loss,
    mae,
    moment_loss,
    soft_dvh,
    sorted_percentile,
    v_metric,
)
from dosepred.metrics import MetricError
from dosepred.models import ModelConfig, ModelError, build_model, check_roi_set
from dosepred.models.grow import grow_state
from dosepred.patient import RoiSet
from dosepred.training import TrainConfig, Trainer
from test_bad_inputs import cli, fails, unchanged
from tiny_models import TINY, tiny_cache, tiny_run

MODEL = ROOT / "models" / "openkbp-mae-cdm"  # released, with a calibration (qa-power reads it)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def one_error(r, *needles: str) -> str:
    """:func:`fails` (exit 2, an ``error:`` line naming every needle, no traceback), and only one."""
    text = fails(r, *needles)
    assert text.count("error:") == 1, text
    return text


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-patient 20^3 cache, a TINY run (res_units=0: it can grow) and one with a head."""
    root = tmp_path_factory.mktemp("runs")
    cache = tiny_cache(root, seed=5)
    tiny_run(cache, root / "run")
    Trainer(TrainConfig(data=str(cache), out=str(root / "head"), epochs=1, steps_per_epoch=1, head=2,
                        **TINY), progress=False).fit()
    return root


def damaged(runs, name: str, change) -> str:
    """The TINY run's last checkpoint changed by ``change(ckpt)``, saved as ``name``."""
    src = runs / ("head" if name.startswith("head") else "run") / "checkpoints" / "last.pt"
    ck = torch.load(src, weights_only=True)
    change(ck)
    torch.save(ck, runs / name)
    return str(runs / name)


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    """Three synthetic 32^3 plans and caches of their predictions: plain (--no-tta), flipped (--tta),
    missing one patient, without doses; and plans hot in PTV70 (V110% near 100 %)."""
    root = tmp_path_factory.mktemp("qa")
    pats = synth.make_cohort(3, seed=3, size=32)
    preds = [p.with_dose(gaussian_filter(p.dose, 1.0).astype(np.float32)) for p in pats]
    plain, flipped = ("dosepred predict --model m --data d " + f for f in ("--no-tta", "--tta"))
    write_cache(pats, root / "data")
    write_cache(preds, root / "pred", source=plain)
    write_cache(preds, root / "flip", source=flipped)
    write_cache(preds[:2], root / "pred2", source=plain)
    write_cache(preds[:2], root / "flip2", source=flipped)
    write_cache([p.with_dose(None) for p in preds], root / "pred-nodose", source=plain)
    write_cache([p.with_dose(None) for p in preds], root / "flip-nodose", source=flipped)
    write_cache([p.with_dose(None) for p in pats], root / "nodose")
    write_cache([p.with_dose(np.where(p.mask("PTV70"), 1.3 * p.dose, p.dose).astype(np.float32))
                 for p in pats], root / "hot")
    return root


# ------------------------------------------------------------------------------ bench bitmask

@pytest.mark.parametrize("args, needles", [
    (["--rois", ","], ["--rois needs at least one ROI count"]),
    (["--patch", "20"], ["--patch 20 must be divisible by 8"]),
    # was: --patch 8 (a one-voxel bottom) and 0 or -8 passed, then a traceback in the first step
    (["--patch", "8", "--size", "16"], ["--patch 8", "at least 16"]),
    (["--patch", "0"], ["--patch 0", "at least 16"]),
    (["--patch", "-8"], ["--patch -8", "at least 16"]),
    (["--pipelines", "bitmask,foo"], ["unknown pipeline(s) ['foo']", "choose from bitmask"]),
    (["--model", "basicunet", "--patch", "24"], ["--model basicunet needs --patch divisible by 16"]),
    (["--device", "tpu"], ["--device 'tpu': choose cpu or cuda"]),
    pytest.param(["--device", "cuda"], ["--device cuda: no CUDA device"], marks=NO_CUDA),
])
def test_bench_bitmask_refuses_bad_options_before_any_work(work, args, needles):
    with unchanged(work):
        one_error(cli("bench", "bitmask", *args, "--json", work / "b.json"), *needles)


# ----------------------------------------------------------------------------- bench networks

@pytest.mark.parametrize("args, needles", [
    # were: a run in a subprocess per network, then "internal error ... network 4,8 failed"
    (["--device", "tpu"], ["--device 'tpu': choose cpu or cuda"]),
    pytest.param(["--device", "cuda"], ["--device cuda: no CUDA device"], marks=NO_CUDA),
    (["--network", "4,8,16,32", "--size", "8"], ["--size 8 must be at least 2^levels = 16",
                                                 "network 4,8,16,32"]),
    (["--size", "0"], ["--size 0 must be at least"]),
    (["--size", "-4"], ["--size -4 must be"]),
])
def test_bench_networks_refuses_bad_options_before_any_run(work, args, needles):
    args = args if "--network" in args else ["--network", "4,8", *args]
    with unchanged(work):
        one_error(cli("bench", "networks", *args, "--steps", "1", "--repeats", "1",
                      "--json", work / "n.json"), *needles)


def test_bench_networks_api_refuses_no_network():
    # the command line falls back to the candidates; the API measures what it is given
    with pytest.raises(InputError, match="no network to measure"):
        networks_bench.run(())


# ------------------------------------------------------------------------------- bench losses

@pytest.mark.parametrize("args, needles", [
    (["--device", "tpu"], ["--device must be cpu, cuda or all, got 'tpu'"]),
    pytest.param(["--device", "cuda"], ["--device cuda: no CUDA device"], marks=NO_CUDA),
    # were: 0 timed an empty volume and printed it, -3 a traceback, 20 and 8 a traceback in the U-Net
    # step, an empty list an empty table
    (["--sizes", "0", "--no-unet"], ["--sizes 0: a volume size must be at least 16"]),
    (["--sizes", "-3", "--no-unet"], ["--sizes -3"]),
    (["--sizes", "8"], ["--sizes 8: a volume size must be at least 16"]),
    (["--sizes", "20"], ["--sizes 20: the U-Net step needs a size divisible by 8", "--no-unet"]),
    (["--sizes", ","], ["--sizes: give at least one volume size"]),
])
def test_bench_losses_refuses_bad_options_before_any_work(work, args, needles):
    with unchanged(work):
        one_error(cli("bench", "losses", "--data", "synthetic", "--losses", "mae", "--repeats", "1", *args,
                      "--json", work / "l.json"), *needles)


def test_bench_losses_size_beyond_the_patient_grid_names_the_option(work):
    with unchanged(work):
        one_error(cli("bench", "losses", "--data", example_patients(), "--sizes", "256", "--losses", "mae",
                      "--no-unet", "--json", work / "l.json"), "--sizes 256 exceeds the grid", "pt_201")


def test_bench_losses_markdown_without_mae():
    # was: `bench losses --losses moment` ended in a traceback after every loss was timed (the Markdown
    # table formatted "vs MAE" = None); a result as run() returns it without MAE
    row = {"size": 16, "device": "cpu", "loss": "moment", "seconds": 0.002, "vs_mae": None,
           "vs_unet_step": None, "aten_ops": 90, "host_syncs": 1}
    assert "| 16^3 | cpu | moment | 2.0 | - | - | 90 | 1 |" in losses_bench.markdown({"rows": [row],
                                                                                      "unet_steps": []})


# ----------------------------------------------------------------------------- bench qa-power

@pytest.mark.parametrize("args, needles", [
    (["--coverage", "1.5"], ["--coverage must be between 0 and 1", "got 1.5"]),
    (["--splits", "0"], ["--splits must be at least 1, got 0"]),
    (["--hot-pct", "60"], ["--hot-pct: a hot spot is at most 49 %"]),
    (["--oar-gy", "2,abc"], ["--oar-gy '2,abc': expected comma-separated numbers"]),
    (["--cold-gy", ","], ["--cold-gy ',': give at least one amount"]),
    # was: "patient synth_000: no cold spot ...", naming no option
    (["--cold-gy", "200"], ["--cold-gy 200: patient synth_000: no cold spot of 10% of PTV70 lowers "
                            "its D95%"]),
    (["--calibration-patients", "3"], ["--calibration-patients 3: must be between 2 and 2",
                                       "the data has 3 patients"]),
])
def test_qa_power_refuses_bad_amounts_and_settings(qa, work, args, needles):
    with unchanged(work):
        one_error(cli("bench", "qa-power", "--model", MODEL, "--data", qa / "data", "--prediction",
                      qa / "pred", "--splits", "2", *args, "--json", work / "q.json"), *needles)


@pytest.mark.parametrize("data, args, needles", [
    ("data", ["--prediction", "flip", "--flip-prediction", "flip"],
     ["--prediction", "must be predicted with --no-tta"]),
    ("data", ["--prediction", "pred2"], ["pred2: no prediction for patient synth_002"]),
    ("data", ["--prediction", "pred-nodose"], ["pred-nodose: patient synth_000 has no predicted dose"]),
    ("data", ["--prediction", "pred", "--flip-prediction", "flip2"],
     ["--flip-prediction", "flip2: no prediction for patient synth_002"]),
    ("data", ["--prediction", "pred", "--flip-prediction", "flip-nodose"],
     ["--flip-prediction", "flip-nodose: patient synth_000 has no predicted dose"]),
    # the reader refuses plans without dose before the benchmark's own check could
    ("nodose", ["--prediction", "pred"], ["patient synth_000 of", "has no dose"]),
    # V110% already near 100 %: was "patient ...: no hot spot raises ...", naming no option
    ("hot", ["--prediction", "pred"], ["--hot-pct 10: patient synth_000: no hot spot raises PTV70 V110%"]),
])
def test_qa_power_refuses_predictions_and_plans_it_cannot_use(qa, work, data, args, needles):
    args = [qa / a if i % 2 else a for i, a in enumerate(args)]
    with unchanged(work):
        one_error(cli("bench", "qa-power", "--model", MODEL, "--data", qa / data, *args, "--hot-pct", "10",
                      "--json", work / "q.json"), *needles)


def test_qa_power_api_guards(qa):
    """Reachable from the Python API only: an unknown test-time pass, calibration methods that are
    not methods, and the degradations' settings that have no command-line option."""
    with pytest.raises(InputError, match="unknown test-time pass 'bogus'"):
        qp.collect(MODEL, qa / "data", qd.PowerConfig(), qa / "pred", {"bogus": qa / "flip"})
    crits, cases = [], []
    for i in range(4):
        c = qd.Crit(f"pt_{i}", "Larynx Dmean", "Larynx", "Dmean", "oar_mean", "oar", True, "Gy", 30.0 + i,
                    30.0)
        crits.append(c)
        cases.append(qd.Case(c.patient, "oar", "Larynx", c.key, c.family, 2.0, 2.0, {c.key: c.plan + 2}))
    with pytest.raises(InputError, match=r"calibration methods \{'oar_mean': 'bogus'\} are not among"):
        qcv.cross_validate(crits, cases, qd.PowerConfig(splits=1), ["qa"], {"oar_mean": "bogus"})
    with pytest.raises(InputError, match="fade_mm must be >= 0, got -1"):
        qd.PowerConfig(fade_mm=-1).check()
    with pytest.raises(InputError, match="cold_fraction must be between 0 and 1, got 0"):
        qd.PowerConfig(cold_fraction=0).check()


# ------------------------------------------------------------------- train: architecture, losses

def _train(runs, out, *args):
    return cli("train", "--data", runs / "train", "--out", out, "--epochs", "1", "--steps-per-epoch", "1",
               "--patch", "16", "--threads", "1", *args)


@pytest.mark.parametrize("setting, needle", [
    ("levels=1", "levels must be >= 2, got 1"),
    ("base=0", "base channels must be >= 1, got 0"),
    ("norm=group", "norm must be 'instance' or 'batch', got 'group'"),
    ("res_units=-1", "res_units must be >= 0, got -1"),  # was: trained with plain convolutions
])
def test_train_refuses_a_bad_architecture_before_loading(runs, work, setting, needle):
    with unchanged(work):
        one_error(_train(runs, work / "run", "--set", setting), needle)


@pytest.mark.parametrize("loss, opt, needle", [
    ("mae", "mae_dose_scale=0", "mae dose_scale must be > 0 Gy, got 0"),
    ("mae+cdm", "cdm_tau=0", "cdm tau must be a finite number > 0 Gy, got 0"),
    ("mae+cdm", "cdm_spread=150", "cdm spread must be 0-100 percent, got 150"),  # was: accepted
    ("mae+cdm", "cdm_spread=-1", "cdm spread must be 0-100 percent, got -1"),
    ("mae+cdm", "cdm_spread=NaN", "cdm spread must be 0-100 percent, got nan"),  # was: accepted
    ("mae+cdm", "cdm_oar_weight=-1", "cdm oar_weight must be a finite number >= 0, got -1"),
    ("mae+cdm", "cdm_match=false", "the CDM loss needs match=True or constraint=True"),
    ("mae+cdm", "cdm_dose_scale=-5", "cdm dose_scale must be > 0 Gy, got -5"),
    ("mae+dvh", "dvh_bin_width=0", "dvh bin_width and steepness must be > 0, got 0"),
    ("mae+dvh", "dvh_max_dose=-1", "dvh max_dose must be > 0 Gy"),  # was: one bin at 0 Gy, accepted
    ("mae+moment", "moment_oar_powers=[0,2]", "moment powers must be > 0, got 0"),
    ("mae+moment", "moment_dose_scale=0", "moment dose_scale must be > 0 Gy, got 0"),
    # were: "loss 'cdm': '>' not supported between instances of 'str' and 'int'"; a true match
    ("mae+cdm", "cdm_tau=nan", "loss 'cdm': option cdm_tau='nan': expected a number"),
    ("mae+cdm", "cdm_match=no", "loss 'cdm': option cdm_match='no': expected true or false"),
])
def test_train_refuses_bad_loss_options_before_loading(runs, work, loss, opt, needle):
    with unchanged(work):
        one_error(_train(runs, work / "run", "--loss", loss, "--loss-opt", opt), needle)


# ------------------------------------------------------------------------- damaged checkpoints

@pytest.mark.parametrize("key, value, needle", [
    ("patch", [0, 16, 16], "patch must be three positive sizes"),
    ("levels", 1, "levels must be >= 2"),
    ("levels", "x", "levels must be a whole number, got 'x'"),  # was: a traceback
    ("norm", "group", "norm must be 'instance' or 'batch'"),
    ("foo", 1, "model config has unknown keys ['foo']"),
])
def test_predict_names_the_checkpoint_with_a_bad_model_config(runs, work, key, value, needle):
    bad = damaged(runs, f"cfg-{key}.pt", lambda ck: ck["model_config"].__setitem__(key, value))
    with unchanged(work):
        one_error(cli("predict", "--model", bad, "--data", runs / "train", "--out", work / "pred"),
                  f"{bad}: model_config: {needle}")


def _first_weight(ck):
    return sorted(ck["model"])[0]


@pytest.mark.parametrize("name, change, needle", [
    ("lacks.pt", lambda ck: ck["model"].pop(_first_weight(ck)), "cannot grow the model: its weights lack"),
    ("shape.pt", lambda ck: ck["model"].__setitem__(_first_weight(ck), torch.zeros(3)),
     "has shape (3,), expected"),
    ("extra.pt", lambda ck: ck["model"].__setitem__("bogus.weight", torch.zeros(1)),
     "weights the wider network does not have: ['bogus.weight']"),
    ("head-lacks.pt", lambda ck: ck["model"].pop("head.mix.weight"),
     "head.mix.weight (missing) is not one of the layers that grow"),
])
def test_growing_a_damaged_init_checkpoint_names_it(runs, work, name, change, needle):
    # was: "cannot grow the model: ..." naming neither --init nor its file
    bad = damaged(runs, name, change)
    with unchanged(work):
        one_error(_train(runs, work / "run", "--init", bad, "--channels", "8,8"), f"--init {bad}:", needle)


def test_model_api_guards(runs):
    """Reachable from the Python API only: growing into a network of other levels, and a data ROI
    set whose prescriptions differ from the model's (:func:`dosepred.models.check_roi_set`)."""
    ck = torch.load(runs / "run" / "checkpoints" / "last.pt", weights_only=True)
    old = ModelConfig.from_dict(dict(ck["model_config"]))
    deeper = build_model({**old.to_dict(), "levels": 3, "patch": [16] * 3})
    with pytest.raises(ModelError, match="cannot grow the model: it has 2 levels"):
        grow_state(ck["model"], old, deeper)
    rois = RoiSet.openkbp().to_dicts()
    other = RoiSet.from_dicts([{**r, "prescription": 66.0} if r["name"] == "PTV70" else r for r in rois])
    with pytest.raises(ModelError, match="cache X prescriptions .* differ from the model's"):
        check_roi_set(ModelConfig(rois=rois), other, "cache X")


# ----------------------------------------------------------------------------------- train_step

@pytest.mark.parametrize("args, needle", [
    (["--device", "nope"], "error: --device 'nope': choose cpu or cuda"),
    (["--size", "8", "--variants", "fp32"],
     "error: the plain float32 step failed: ModelError: patch (8, 8, 8) is too small"),
])
def test_train_step_bench_fails_in_one_line_with_exit_code_2(tmp_path, capsys, args, needle):
    # was: exit code 1 (sys.exit of the message), and --device nope failed in every variant
    with pytest.raises(SystemExit) as e:
        train_step.main([*args, "--steps", "1", "--repeats", "1", "--json", str(tmp_path / "t.json")])
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


# ----------------------------------------------------------------------------------- synth

def test_synth_sizes_and_counts(work):
    # the command line's own ranges answer first (a usage error naming the option, exit code 2) ...
    for args, flag in ((["--patients", "0"], "--patients"), (["--patients", "1", "--size", "4"], "--size")):
        r = cli("data", "synth", *args, "--out", work / "c")
        assert r.exit_code == 2 and flag in r.output and "Traceback" not in r.output
    assert not (work / "c").exists()
    # ... the API's checks guard the Python callers
    with pytest.raises(InputError, match="size must be >= 8 voxels, got 4"):
        synth.make_patient(0, size=4)
    with pytest.raises(InputError, match="a cohort needs at least 1 patient, got 0"):
        synth.make_cohort(0)


# --------------------------------------------------------------------------- losses: the API

def test_loss_api_guards():
    """The documented loss functions refuse what no trainer passes: empty ROIs, percentiles beyond
    0..100, a V-metric where a D-metric is asked, missing codes, bad settings, wrong shapes."""
    d = torch.tensor([1.0, 2.0, 3.0])
    empty = torch.zeros(0)
    with pytest.raises(ValueError, match="percentile of an empty ROI"):
        sorted_percentile(empty, 50)
    with pytest.raises(ValueError, match="percentile must be in 0..100, got 150"):
        sorted_percentile(d, 150)
    with pytest.raises(ValueError, match="non-empty 1-D tensor"):
        d_metric(empty, "Dmean")
    with pytest.raises(MetricError, match="is a V-metric; use v_metric"):
        d_metric(d, "V20Gy")
    with pytest.raises(ValueError, match="needs the voxel volume"):
        d_metric(d, "D2cc")
    with pytest.raises(InputError, match="tau must be a finite number > 0 Gy, got 0"):
        v_metric(d, 2.0, tau=0)
    with pytest.raises(ValueError, match="V-metric of an empty ROI"):
        v_metric(empty, 2.0)
    with pytest.raises(ValueError, match="non-empty 1-D tensor"):
        soft_dvh(empty, torch.tensor([1.0]))
    x = torch.ones(1, 1, 4, 4, 4)
    codes = torch.ones(1, 4, 4, 4, dtype=torch.int32)
    terms = CDMLoss(roi_set=RoiSet.openkbp()).terms
    clinical = CDMLoss("openkbp-clinical", roi_set=RoiSet.openkbp()).terms
    for call, match in [
        (lambda: cdm_loss(x, x, None, None, terms), "the CDM loss needs roi_codes"),
        (lambda: cdm_loss(x, x, codes, None, terms, spread=float("nan")), "spread must be 0-100"),
        # were accepted from Python (the CLI reads no 'inf'): every V-metric a flat 50 % without gradient
        (lambda: CDMLoss(roi_set=RoiSet.openkbp(), tau=float("inf")), "tau must be a finite number > 0"),
        (lambda: CDMLoss(roi_set=RoiSet.openkbp(), spread=float("inf")), "spread must be 0-100 percent"),
        (lambda: cdm_loss(x, x, codes, None, clinical, tau=float("inf")), "tau must be a finite"),
        (lambda: cdm_loss(x, x, codes, None, clinical, tau=0), "tau must be a finite number"),  # has V110%
        (lambda: dvh_curve_loss(x, x, None, [0]), "the DVH-curve loss needs roi_codes"),
        (lambda: dvh_curve_loss(x, x, codes, [0], bin_width=0), "bin_width and steepness must be > 0"),
        (lambda: moment_loss(x, x, None, {0: (1.0,)}), "the moment loss needs roi_codes"),
        (lambda: CDMLoss(), "the CDM loss needs the dataset's roi_set"),
        (lambda: DVHCurveLoss(None), "the DVH-curve loss needs the dataset's roi_set"),
        (lambda: MomentLoss(None), "the moment loss needs the dataset's roi_set"),
        (lambda: mae([1.0], x), "pred and ref must be torch tensors"),
        (lambda: mae(torch.ones(4, 4), torch.ones(4, 4)), r"pred must be \(B, 1, \*spatial\)"),
        (lambda: mae(x, torch.ones(1, 1, 4, 4, 5)), "ref shape"),
        (lambda: mae(x, x, torch.ones(1, 1, 4, 4, 5)), r"mask must be \(B, 1, \*spatial\)"),
        (lambda: cdm_loss(x, x, torch.ones(1, 4, 4, 5, dtype=torch.int32), None, terms), "roi_codes must be"),
        (lambda: cdm_loss(x, x, codes.float(), None, terms), "roi_codes must be an integer tensor"),
        (lambda: cdm_loss(x, x, codes, [1.0, 2.0], terms), r"spacing must be \(B, 3\)"),
        (lambda: cdm_loss(x, x, codes, [1.0, 0.0, 2.0], terms), "spacing must be positive"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            call()
