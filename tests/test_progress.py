"""Progress that reaches logs: plain lines when output is not a terminal, never one per step."""

import io
import os
import subprocess
import sys
from pathlib import Path

from dosepred import progress
from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort


def test_ticker_throttles_lines():
    buf = io.StringIO()
    t = progress.Ticker("training", total=1000, every=3600.0, out=buf)
    for _ in range(1000):
        t.update(1, info="loss 0.1")
    t.close("loss 0.1")
    lines = buf.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("training: 1000/1000 done in ")


def test_ticker_lines_report_step_and_time_left():
    got: list[str] = []
    t = progress.Ticker("training", total=10, every=0.0, out=got.append)
    for _ in range(4):
        t.update(1, info="loss 0.5")
    assert len(got) == 4  # every=0: one line per update (only for tests)
    last = got[-1]
    assert last.startswith("training: 4/10 (40 %), ") and "left" in last and last.endswith("loss 0.5")


def test_mode_and_interval(monkeypatch):
    monkeypatch.setenv("DOSEPRED_PROGRESS_INTERVAL", "0.5")
    assert progress.interval() == 0.5
    progress.set_enabled(False)
    try:
        assert progress.mode() == "lines" and progress.mode(False) == "off"
        monkeypatch.setenv("DOSEPRED_PROGRESS_INTERVAL", "off")
        assert progress.interval() is None and progress.mode() == "off"
        assert list(progress.track(range(3), "x")) == [0, 1, 2]
    finally:
        progress.set_enabled(None)


def test_train_redirected_to_a_file_logs_progress(tmp_path):
    """`dosepred train ... > log`: the log shows stage lines and periodic step lines."""
    write_cache(make_cohort(3, seed=5, size=16), tmp_path / "train")
    log = tmp_path / "train.log"
    env = {**os.environ, "DOSEPRED_PROGRESS_INTERVAL": "0",
           "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("DOSEPRED_NO_PROGRESS", None)
    with log.open("w") as fh:
        r = subprocess.run([sys.executable, "-m", "dosepred", "train", "--data", str(tmp_path / "train"),
                            "--out", str(tmp_path / "run"), "--loss", "mae", "--epochs", "2",
                            "--steps-per-epoch", "3", "--patch", "16", "--base", "4", "--levels", "2",
                            "--res-units", "0", "--threads", "1"],
                           stdout=fh, stderr=subprocess.PIPE, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    text = log.read_text()
    step_lines = [ln for ln in text.splitlines() if ln.startswith("training: ")]
    assert any("/6 (" in ln and "loss " in ln and "left" in ln for ln in step_lines), text
    assert any(ln.startswith("training: 6/6 done in ") for ln in step_lines), text
    assert "loading patients: 3 done in " in text and "epoch 2: loss" in text and "done: 6 steps" in text
    assert "\x1b[" not in text  # no terminal control codes in a log
