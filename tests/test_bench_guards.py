"""Guards of the `bench` commands found by running them as a careless user would: --repeats,
--threads and --patients out of range, and plan-QA power on too few patients, are one clear error
line (exit code 2) before any work, never a traceback nor a run that ignores them."""

import inspect

import numpy as np
import pytest
from typer.testing import CliRunner

from dosepred.bench import evaluate as evaluate_bench
from dosepred.bench import networks as networks_bench
from dosepred.bench import predict as predict_bench
from dosepred.bench import qa_degrade as qd
from dosepred.bench.bitmask import BenchConfig
from dosepred.cli import app
from dosepred.cli import model as cli_model
from dosepred.errors import InputError


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


def fails(r, *words: str) -> None:
    """Exit code 2, one ``error:`` line holding ``words``, no traceback."""
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.count("error:") == 1, r.output
    for w in words:
        assert w in r.output, (w, r.output)


@pytest.mark.parametrize("repeats", [0, -3])
def test_bench_evaluate_refuses_repeats_below_one(sample_dir, repeats):
    # was: ValueError: min() arg is an empty sequence, after the patients were written
    fails(cli("bench", "evaluate", "--data", sample_dir, "--patients", "1", "--repeats", repeats),
          f"--repeats must be >= 1, got {repeats}")
    with pytest.raises(InputError, match="--repeats must be >= 1"):
        evaluate_bench.run(sample_dir, 1, repeats=repeats)


def test_bench_evaluate_refuses_a_negative_patient_count(sample_dir):
    # was: "no patients to write to /tmp/..." (folders[:-1] of one patient)
    fails(cli("bench", "evaluate", "--data", sample_dir, "--patients", "-1"), "--patients must be >= 1",
          "0: all", "got -1")
    with pytest.raises(InputError, match="--patients must be >= 1, got 0"):
        evaluate_bench.run(sample_dir, 0)


@pytest.mark.parametrize("repeats", [0, -1])
def test_bench_predict_refuses_repeats_below_one(repeats):
    # was: ran anyway and printed "best of -1"
    fails(cli("bench", "predict", "--repeats", repeats), f"--repeats must be >= 1, got {repeats}")


@pytest.mark.parametrize("threads", [0, -1])
def test_bench_predict_refuses_threads_below_one(threads):
    # was: RuntimeError: set_num_threads expects a positive integer (-1); 0 silently meant all cores
    fails(cli("bench", "predict", "--threads", threads), f"--threads must be >= 1, got {threads}")
    with pytest.raises(InputError, match="--threads must be >= 1"):
        predict_bench.run("unused", "unused", threads=threads)


def test_bench_bitmask_and_networks_refuse_negative_threads():
    # bitmask: 0 is torch's default, a negative count failed in each subprocess
    fails(cli("bench", "bitmask", "--threads", "-1"), "--threads must be >= 0, got -1")
    BenchConfig(threads=0).check()
    with pytest.raises(InputError, match="--threads must be >= 1, got 0"):  # the API as its CLI (min=1)
        networks_bench.run(threads=0)
    with pytest.raises(InputError, match="--repeats must be >= 1, got 0"):
        networks_bench.run(repeats=0)


def test_qa_power_on_too_few_patients_says_how_many_it_has_and_needs(tmp_path):
    """One patient: was "--calibration-patients 1: must be between 2 and 0", an impossible range."""
    from scipy.ndimage import gaussian_filter

    from dosepred import synth
    from dosepred.io.cache import write_cache

    pats = synth.make_cohort(1, seed=3, size=32)
    write_cache(pats, tmp_path / "data")
    preds = [p.with_dose(gaussian_filter(p.dose, 1.0).astype(np.float32)) for p in pats]
    write_cache(preds, tmp_path / "pred", source="dosepred predict --model m --data d --no-tta")
    r = cli("bench", "qa-power", "--model", "models/openkbp-mae-cdm", "--data", tmp_path / "data",
            "--prediction", tmp_path / "pred", "--splits", "2", "--json", tmp_path / "p.json")
    fails(r, f"--data {tmp_path / 'data'}: 1 patient with plan-QA criteria", "needs at least 3")
    assert "between 2 and 0" not in r.output and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("n", [0, 1, -2])
def test_qa_power_refuses_fewer_than_two_calibration_patients(n):
    # 0 used to mean the default (two thirds) silently
    with pytest.raises(InputError, match=f"--calibration-patients must be at least 2, got {n}"):
        qd.PowerConfig(calibration_patients=n).check()
    fails(cli("bench", "qa-power", "--model", "models/openkbp-mae-cdm", "--data", "nowhere",
              "--calibration-patients", n), "--calibration-patients must be at least 2")


def _fake_predict_result(tta: bool) -> dict:
    return {"patient": "pt_201", "model": "m", "clinical_shape": [150, 512, 512],
            "clinical_spacing": [3.0, 0.977, 0.977], "clinical_axes": "SPL", "model_grid_shape": [128] * 3,
            "model_grid_spacing": [3.9, 3.9, 3.0], "model_axes": "PLS", "window_box": [], "windows": 1,
            "tta": tta, "setup_s": 0.1, "resample_in_s": 1.0, "predict_s": 2.0, "resample_out_s": 0.5,
            "total_s": 3.5, "repeats": 1, "threads": 1, "cpu": "cpu", "cores": 2,
            "dose_score_clinical_grid": 2.0, "dose_score_on_openkbp_grid": 2.1,
            "dose_score_openkbp_path": 2.2, "dosepred": "0"}


@pytest.mark.parametrize("flag, want", [((), True), (("--tta",), True), (("--no-tta",), False)])
def test_bench_predict_times_predict_as_it_runs_by_default(monkeypatch, flag, want):
    # was: always timed without test-time flipping (run's tta=False, no option), while `dosepred predict`
    # and QA flip by default: half the network passes of what the benchmark says it times
    seen = {}

    def fake(data, model, pid, repeats, threads, tta=None):
        seen["tta"] = tta
        return _fake_predict_result(tta)

    monkeypatch.setattr(predict_bench, "run", fake)
    r = cli("bench", "predict", *flag)
    assert r.exit_code == 0, r.output
    assert seen["tta"] is want
    assert ("with test-time flipping" if want else "without test-time flipping") in r.output
    assert inspect.signature(cli_model.predict).parameters["tta"].default is True  # predict's default


def test_bench_predict_run_flips_by_default():
    assert inspect.signature(predict_bench.run).parameters["tta"].default is True
