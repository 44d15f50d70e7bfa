"""`dosepred data ...` commands through typer's CliRunner on temporary folders."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.io import cache, openkbp

runner = CliRunner()


def _run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r, " ".join(r.output.split())


def test_synth_inspect_split(tmp_path):
    out = tmp_path / "syn"
    r, text = _run("data", "synth", "--patients", 5, "--out", out, "--size", 16, "--seed", 2, "--no-progress")
    assert r.exit_code == 0, text
    assert "wrote 5 synthetic patients" in text
    c = cache.Cache.open(out)
    assert c.ids == [f"synth_{i:03d}" for i in range(5)]
    r, text = _run("data", "inspect", out)
    assert r.exit_code == 0 and "synth_004" in text and "PTV70" in text
    r, text = _run("data", "split", out, "--out", tmp_path / "s.json", "--random",
                   "--fractions", "0.6,0.2,0.2")
    assert r.exit_code == 0, text
    s = json.loads((tmp_path / "s.json").read_text())
    assert [len(v) for v in s["splits"].values()] == [3, 1, 1] and s["method"] == "random"
    r, text = _run("data", "split", out, "--out", tmp_path / "t.json", "--temporal", "--fractions", "4,1")
    assert r.exit_code == 0, text
    t = json.loads((tmp_path / "t.json").read_text())["splits"]
    dates = {e["id"]: e["meta"]["study_date"] for e in c.info["patients"]}
    assert max(dates[i] for i in t["train"]) <= min(dates[i] for i in t["test"])
    r, text = _run("data", "split", out, "--out", tmp_path / "i.json", "--ids", "train=synth_000,synth_001",
                   "--ids", "val=synth_002")
    assert r.exit_code == 0
    assert json.loads((tmp_path / "i.json").read_text())["splits"]["val"] == ["synth_002"]


def test_synth_extra_rois_and_errors(tmp_path):
    r, text = _run("data", "synth", "--patients", 1, "--out", tmp_path / "x", "--size", 16,
                   "--extra-rois", 30)
    assert r.exit_code == 0 and "40 ROIs" in text
    r, text = _run("data", "synth", "--patients", 1, "--out", tmp_path / "y", "--extra-rois", 60)
    assert r.exit_code == 2 and "extra_rois must be 0..54" in text and not (tmp_path / "y").exists()


def test_split_errors(tmp_path):
    out = tmp_path / "syn"
    _run("data", "synth", "--patients", 3, "--out", out, "--size", 16)
    for args, msg in [((), "exactly one of"), (("--random", "--fractions", "0.5,0.2"), "add up to 1"),
                      (("--ids", "train=pt_9"), "not in the cache: pt_9"),
                      (("--temporal", "--manifest", tmp_path / "none.csv"), "does not exist")]:
        r, text = _run("data", "split", out, "--out", tmp_path / "s.json", *args)
        assert r.exit_code == 2 and msg in text, text
    assert not (tmp_path / "s.json").exists()
    r, text = _run("data", "inspect", tmp_path)
    assert r.exit_code == 2 and "not a dosepred cache" in text


def test_import_export_openkbp(tmp_path, sample_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pt_196").symlink_to(sample_dir / "pt_196")
    r, text = _run("data", "import-openkbp", src, "--out", tmp_path / "c", "--no-progress")
    assert r.exit_code == 0, text
    assert "wrote 1 patients" in text and "Esophagus" in text
    r, text = _run("data", "export-openkbp", tmp_path / "c", "--out", tmp_path / "e", "--no-progress")
    assert r.exit_code == 0, text
    a = openkbp.read_patient(sample_dir / "pt_196")
    b = openkbp.read_patient(tmp_path / "e" / "pt_196")
    for k in ("ct", "dose", "roi_codes", "possible_dose_mask"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


@pytest.mark.parametrize("bad", ["missing", "notafolder"])
def test_import_bad_source(tmp_path, bad):
    src = tmp_path / "src"
    if bad == "notafolder":
        src.mkdir()
    r, text = _run("data", "import-openkbp", src, "--out", tmp_path / "c")
    assert r.exit_code == 2 and "error:" in text and str(src) in text
