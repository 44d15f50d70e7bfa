"""`dosepred train` takes its options from the one validated TrainConfig: every field is a flag
(documented once, by the field's description), --config FILE (JSON or TOML) sets many, and the
precedence is defaults < stored config (--resume) < --config < flags / --set."""

import json
import re

import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.training import TrainConfig

TINY = {"epochs": 1, "steps_per_epoch": 1, "batch": 1, "patch": 16, "base": 4, "levels": 2, "res_units": 0,
        "threads": 1, "val_every": 1}


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "c"
    assert cli("data", "synth", "--patients", "2", "--size", "16", "--out", root).exit_code == 0
    return root


def test_every_config_field_is_a_flag_with_its_description():
    text = re.sub(r"\s+", " ", cli("train", "--help").output)
    for name, f in TrainConfig.model_fields.items():
        if name in ("out", "loss_options"):
            continue
        flag = "--split" if name == "train_split" else "--" + name.replace("_", "-")
        assert flag in text, name
        assert f.description and f.description.split()[0] in text, name
    for flag in ("--config", "--set", "--loss-opt", "--resume", "--overwrite", "--amp / --no-amp"):
        assert flag in text


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_config_file_then_flags(tmp_path, cache, fmt):
    cfg = {**TINY, "lr": 0.001, "warmup_steps": 3, "grad_clip": 0.5, "loss": "mae"}
    f = tmp_path / f"run.{fmt}"
    if fmt == "json":
        f.write_text(json.dumps(cfg))
    else:
        f.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in cfg.items()) + "\n")
    r = cli("train", "--config", f, "--data", cache, "--out", tmp_path / "run", "--lr", "0.002",
            "--set", "weight_decay=0.5", "--no-progress")
    assert r.exit_code == 0, r.output
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["lr"] == 0.002  # the flag wins over the file
    assert stored["weight_decay"] == 0.5  # --set too
    assert stored["warmup_steps"] == 3 and stored["grad_clip"] == 0.5  # fields without a flag before
    assert stored["patch"] == [16, 16, 16] and stored["epochs"] == 1
    assert stored["schedule"] == "cosine"  # a default neither file nor flag set
    # --resume keeps the stored config; a flag still overrides it
    r = cli("train", "--out", tmp_path / "run", "--resume", "--epochs", "2", "--no-progress")
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "run" / "config.json").read_text())
    assert again["epochs"] == 2 and again["lr"] == 0.002 and again["warmup_steps"] == 3


@pytest.mark.parametrize("content, needles", [
    ('{"epochs": 1, "bogus": 2}', ["bogus", "unknown"]),
    ('{"epochs": "many"}', ["epochs", "int", "many"]),
    ('{"epochs": 1,', ["not a readable training config"]),
    ('[1, 2]', ["JSON object"]),
])
def test_bad_config_file_is_one_clear_error(tmp_path, cache, content, needles):
    f = tmp_path / "bad.json"
    f.write_text(content)
    r = cli("train", "--config", f, "--data", cache, "--out", tmp_path / "run")
    assert r.exit_code == 2 and "Traceback" not in r.output and str(f) in r.output.replace("\n", "")
    for n in needles:
        assert n in r.output
    assert not (tmp_path / "run").exists()


def test_config_file_null_unsets_and_loss_options_merge_key_by_key(tmp_path, cache):
    from dosepred.workflows import train_run

    f = tmp_path / "c.json"
    f.write_text(json.dumps({**TINY, "val": None, "loss": "mae+cdm", "protocol": "openkbp",
                             "loss_options": {"cdm_tau": 0.5, "cdm_spread": 2}}))
    run = tmp_path / "run"
    train_run(run, {"data": str(cache), "val": None, "loss_options": {"cdm_target_weight": 4}}, config=f)
    stored = json.loads((run / "config.json").read_text())
    assert stored["loss_options"] == {"cdm_tau": 0.5, "cdm_spread": 2, "cdm_target_weight": 4}
    # a stored validation cache is unset by a config file's null when resuming
    cfg = TrainConfig.load(run / "config.json").merged({"val": "elsewhere"})
    assert cfg.merged(TrainConfig.read_file(f), keep_none=True).val is None
    assert cfg.merged({"val": None}).val == "elsewhere"  # a flag not given leaves it


@pytest.mark.parametrize("bad, needle", [
    ({"epochs": 0}, "epochs"), ({"schedule": "nope"}, "'cosine', 'constant' or 'step'"), ({"lr": -1}, "lr"),
    ({"rotate_step": 35}, "divide 360"), ({"orientation": "XYZ"}, "three axis letters"),
    ({"select": "loss"}, "select"), ({"grad_clip": -1}, "grad_clip")])
def test_ranges_and_choices_are_checked_on_construction(bad, needle):
    with pytest.raises(ValueError, match="training config") as e:
        TrainConfig(**bad)
    assert needle in str(e.value)


@pytest.mark.parametrize("bad, needle", [
    ({"step_gamma": -1.0}, "step_gamma: input should be greater than 0"),  # a negative lr: gradient ascent
    ({"step_gamma": float("nan")}, "step_gamma: input should be a finite number"),
    ({"step_gamma": float("inf")}, "step_gamma: input should be a finite number"),
    ({"lr": float("inf")}, "lr: input should be a finite number"),
    ({"lr": 1e300}, "lr: input should be less than or equal to"),  # overflowed AdamW's float32 step
    ({"channels": "4,,8"}, "channels must be comma-separated integers"),
    ({"channels": "4,8,"}, "channels must be comma-separated integers"),
    ({"coarse": ",8,8"}, "coarse must be comma-separated integers")])
def test_non_finite_numbers_and_blank_list_items_are_refused(bad, needle):
    """Found by the CLI bad-input pass: --step-gamma -1 trained with a negative learning rate, nan or inf
    failed an epoch later as a 'diverged' loss, --lr 1e300 was an internal error, and --channels 4,,8
    dropped the blank and trained [4, 8] without a word."""
    with pytest.raises(ValueError, match="training config") as e:
        TrainConfig(data="d", out="o", **bad)
    assert needle in str(e.value)


def test_cli_lr_too_large_is_one_line_not_an_internal_error(tmp_path, cache):
    r = cli("train", "--data", cache, "--out", tmp_path / "run", "--lr", "1e300", "--no-progress")
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        "error: training config field lr: input should be less than or equal to "
        "1000000000000000000000000000000, got 1e+300"], r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["predict", "--help"],
                                  ["data", "import-dicom", "--help"], ["qa", "--help"]])
def test_help_imports_no_heavy_library(args):
    """`dosepred ... --help` loads every command module (as the entry point does) and runs the help,
    in a fresh interpreter, without importing torch, matplotlib, pydicom, nibabel or monai (importing
    `dosepred.cli` alone loads no command, so it proved nothing)."""
    import subprocess
    import sys

    code = ("import sys\n"
            f"sys.argv = ['dosepred', *{args!r}]\n"
            "from dosepred.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "assert 'dosepred.cli.model' in sys.modules and 'dosepred.cli.bench' in sys.modules\n"
            "heavy = [m for m in ('torch', 'matplotlib', 'pydicom', 'nibabel', 'monai')\n"
            "         if m in sys.modules]\n"
            "assert not heavy, f'imported {heavy}'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_config_model_checks_types_and_names():
    with pytest.raises(ValueError, match="ema_decay must be float"):
        TrainConfig(ema_decay="abc")
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"bogus": 1})
    assert TrainConfig(patch=32).patch == (32, 32, 32) and TrainConfig(patch=[8, 16, 32]).patch == (8, 16, 32)
    with pytest.raises(ValueError, match="one or three sizes"):
        TrainConfig(patch=[1, 2])
    c = TrainConfig(data="d", out="o")
    assert TrainConfig.from_dict(c.to_dict()) == c  # what a run stores it reads back


def test_experiment_round_configs_are_valid_training_configs():
    from pathlib import Path

    from dosepred.protocol import load_protocol

    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "experiments").glob("*/*.json"))
    assert files
    for f in files:
        if f.parent.name == "protocols":  # the experiments' own protocols
            assert load_protocol(f).criteria, f
            continue
        cfg = TrainConfig.load(f)
        # a fine-tune names weights in the repository; a run from scratch names its network
        assert (cfg.init and root.joinpath(cfg.init).exists()) or cfg.levels or cfg.channels, f
        if cfg.protocol and cfg.protocol.endswith(".json"):
            assert load_protocol(root / cfg.protocol).criteria, f


def test_patch_flag_takes_one_size_or_three(tmp_path, cache):
    """`train -h` says --patch is "one size or three": the flag took only one integer ('--patch
    16,16,24': "Input should be a valid integer"), three only through --set or --config."""
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "patch"]
    r = cli("train", "--data", cache, "--out", tmp_path / "run", "--patch", "16,16,24", *opts,
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["patch"] == [16, 16, 24]
    r = cli("train", "--data", cache, "--out", tmp_path / "run2", "--patch", "16", *opts, "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["patch"] == [16, 16, 16]
    for bad in ("16,16", "16,x,16", "16,,16"):
        r = cli("train", "--data", cache, "--out", tmp_path / "run3", "--patch", bad, *opts)
        assert r.exit_code == 2 and "patch" in r.output and "64,64,96" in r.output, (bad, r.output)
        assert not (tmp_path / "run3").exists()
