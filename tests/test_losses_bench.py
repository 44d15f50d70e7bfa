"""`dosepred bench losses` on a tiny synthetic case (no U-Net, one repeat)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from dosepred.bench.losses import markdown, run
from dosepred.cli import app


def test_bench_losses_api_synthetic():
    res = run(sizes=(16,), repeats=1, devices=["cpu"], patient_dir=None, losses=["mae", "cdm", "dvh"],
              unet=False)
    assert [r["loss"] for r in res["rows"]] == ["mae", "cdm", "dvh"]
    assert all(r["seconds"] > 0 and r["vs_mae"] > 0 for r in res["rows"])
    assert res["rows"][0]["vs_mae"] == 1.0 and "synthetic" in res["rows"][0]["source"]
    assert "| 16^3 | cpu | cdm |" in markdown(res)
    by = {r["loss"]: r for r in res["rows"]}
    # MAE is a handful of ops and never waits for the device; the CDM loss gathers ROI voxels
    # (nonzero) and reads the ROI sizes (one host copy), a fixed few syncs per batch
    assert 0 < by["mae"]["aten_ops"] < by["cdm"]["aten_ops"] and by["mae"]["host_syncs"] == 0
    assert 2 <= by["cdm"]["host_syncs"] <= 6


def test_bench_losses_cli(tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", "losses", "--sizes", "16", "--repeats", "1",
                                 "--losses", "mae,moment", "--no-unet", "--device", "cpu",
                                 "--data", "synthetic",
                                 "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert {row["loss"] for row in json.loads(out.read_text())["rows"]} == {"mae", "moment"}
    typo = CliRunner().invoke(app, ["bench", "losses", "--data", str(tmp_path / "typo"), "--sizes", "16"])
    assert typo.exit_code == 2 and "does not exist" in typo.output  # never silently synthetic
    bad = CliRunner().invoke(app, ["bench", "losses", "--losses", "nope", "--no-unet", "--sizes", "16"])
    assert bad.exit_code == 2 and "unknown loss case" in bad.output
