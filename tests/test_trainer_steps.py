"""The trainer's overridable steps: a subclass replaces one step and `fit` uses it; the records
(dosepred.training.logging) and the checkpoint rotation (dosepred.models.checkpoint) on their own."""

import csv
import warnings

import pytest
import torch

from dosepred.io.cache import write_cache
from dosepred.models import ModelError
from dosepred.models.checkpoint import ResumeFallbackWarning, load_resumable, save_rotating
from dosepred.synth import make_cohort
from dosepred.training import TrainConfig, Trainer
from dosepred.training.logging import CsvLog, RunLogger

TINY = dict(patch=(16, 16, 16), base=4, levels=2, res_units=0, batch=1, threads=1, loss="mae")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("steps")
    cohort = make_cohort(4, seed=3, size=20)
    write_cache(cohort[:3], root / "train")
    write_cache(cohort[3:], root / "val")
    return root


class CountingTrainer(Trainer):
    """Counts its optimiser steps and the learning rates it was given."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[int, float]] = []

    def train_step(self, batch, lr):
        self.calls.append((self.global_step, lr))
        return super().train_step(batch, lr)


def test_fit_uses_an_overridden_train_step(caches, tmp_path):
    cfg = TrainConfig(data=str(caches / "train"), out=str(tmp_path / "run"), epochs=2, steps_per_epoch=3,
                      **TINY)
    t = CountingTrainer(cfg, progress=False)
    res = t.fit()
    assert [s for s, _ in t.calls] == list(range(6)) and res["global_step"] == 6
    assert [lr for _, lr in t.calls] == [t.learning_rate(s) for s in range(6)]
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["global_step"] == 6 and ck["epoch"] == 2


class CustomMetricTrainer(Trainer):
    """Validates with its own score (lowest at epoch 2) and picks best.pt by it."""

    val_keys = ("made_up", "sec")
    SCORES = {1: 3.0, 2: 1.0, 3: 2.0}

    def validation_step(self):
        return {"made_up": self.SCORES[self.epoch]}

    def selection_value(self, scores):
        return scores["made_up"]


def test_a_custom_validation_metric_selects_best(caches, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(caches / "train"), val=str(caches / "val"), out=str(run), epochs=3,
                      steps_per_epoch=1, val_every=1, **TINY)
    res = CustomMetricTrainer(cfg, progress=False).fit()
    assert res["best"]["epoch"] == 2 and res["best"]["value"] == 1.0
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["val_made_up"]) for r in rows] == [3.0, 1.0, 2.0]
    assert "val_dose_score" not in rows[0]


def test_csv_log_keeps_rows_up_to_the_resumed_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    log = CsvLog(path, None)
    for e in (1, 2, 3):
        log.append({"epoch": e, "loss": 1.0 / e})
    CsvLog(path, 2).append({"epoch": 3, "loss": 9.0})
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,loss" and [x.split(",")[0] for x in lines[1:]] == ["1", "2", "3"]
    assert lines[-1] == "3,9.0"
    CsvLog(path, None)  # a new run starts a new file
    assert not path.exists()


def test_a_disabled_logger_records_nothing(tmp_path):
    said: list[str] = []
    off = RunLogger(tmp_path, said.append, enabled=False)
    off.open(None)
    off.start_progress(10, 0, True)
    off.epoch({"epoch": 1, "train_loss": 1.0, "lr": 1e-3, "sec_per_step": 0.1}, True, 1)
    off.message("hello")
    off.close()
    assert said == [] and not any(tmp_path.iterdir())
    on = RunLogger(tmp_path, said.append)
    on.open(None)
    on.epoch({"epoch": 1, "train_loss": 1.0, "lr": 1e-3, "sec_per_step": 0.1}, True, 1)
    on.close()
    assert said == ["epoch 1: loss 1.0000  lr 1.00e-03  0.10 s/step"]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "epoch,train_loss,lr,sec_per_step"


def _ck(epoch: int) -> dict:
    return {"format": "dosepred-checkpoint", "model_config": {}, "model": {}, "epoch": epoch}


def test_rotation_and_resume_fallback(tmp_path):
    last, prev = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "prev.pt"
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        load_resumable(last, prev)
    save_rotating(_ck(1), last, prev)
    assert not prev.exists()
    save_rotating(_ck(2), last, prev)
    ck, path, fell_back = load_resumable(last, prev)
    assert (ck["epoch"], path, fell_back) == (2, last, False)
    assert torch.load(prev, weights_only=True)["epoch"] == 1
    last.write_bytes(b"")  # damaged
    with pytest.warns(ResumeFallbackWarning, match="prev.pt"):
        ck, path, fell_back = load_resumable(last, prev)
    assert (ck["epoch"], path, fell_back) == (1, prev, True)
    save_rotating(_ck(2), last, prev, rotate=False)  # the damaged last.pt never replaces prev.pt
    assert torch.load(prev, weights_only=True)["epoch"] == 1
    prev.unlink()
    last.write_bytes(b"")
    with warnings.catch_warnings(), pytest.raises(ModelError, match="no prev.pt"):
        warnings.simplefilter("error")
        load_resumable(last, prev)
    assert not list(last.parent.glob(".*"))  # no temporary files left


class ScriptedPartsTrainer(Trainer):
    """Reports scripted loss parts instead of training: a part only some steps have (a CDM loss's
    ``cdm_target_gy`` is there only when the crop holds a target)."""

    script = [{"total": 1.0, "cdm_target_gy": 4.0}, {"total": 3.0},  # epoch 1
              {"total": 1.0, "cdm_oar_gy": 2.0}, {"total": 1.0, "cdm_oar_gy": 6.0}]  # epoch 2

    def train_step(self, batch, lr):
        return dict(self.script[self.global_step])


def test_a_loss_part_of_some_steps_is_averaged_over_them(caches, tmp_path):
    """metrics.csv's mean of a loss part present in some steps only was its sum over them divided by
    every step of the epoch: a crop without a target counted as a 0 Gy target error (2.0 for 4.0)."""
    cfg = TrainConfig(data=str(caches / "train"), out=str(tmp_path / "run"), epochs=2, steps_per_epoch=2,
                      **TINY)
    ScriptedPartsTrainer(cfg, progress=False).fit()
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["train_loss"]) for r in rows] == [2.0, 1.0]
    assert float(rows[0]["train_cdm_target_gy"]) == 4.0 and rows[1]["train_cdm_target_gy"] == ""


def test_a_loss_part_no_earlier_epoch_gave_gets_a_column(caches, tmp_path):
    """The header was the first row's and later keys were dropped: a CDM part absent from every step of
    the first epoch (no crop held an OAR with a dose criterion) was never written, whatever later
    epochs gave. Now its column is added, empty in the rows before, after the key before it."""
    cfg = TrainConfig(data=str(caches / "train"), out=str(tmp_path / "run"), epochs=2, steps_per_epoch=2,
                      **TINY)
    ScriptedPartsTrainer(cfg, progress=False).fit()
    with open(tmp_path / "run" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["train_cdm_oar_gy"] == "" and float(rows[1]["train_cdm_oar_gy"]) == 4.0
    head = list(rows[0])
    assert head.index("train_cdm_oar_gy") == head.index("train_loss") + 1  # row order: after train_loss
    path = tmp_path / "m.csv"
    log = CsvLog(path, None)
    log.append({"epoch": 1, "a": 1})
    log.append({"epoch": 2, "b": 2, "a": 3})
    CsvLog(path, 2).append({"epoch": 3, "a": 5, "c": 6})  # resumed: kept rows, a new column
    assert path.read_text().splitlines() == ["epoch,b,a,c", "1,,1,", "2,2,3,", "3,,5,6"]


def test_a_metrics_row_cut_short_by_a_full_disk_is_not_left_and_names_the_file(tmp_path, monkeypatch):
    """metrics.csv gets a row per epoch by appending; a full disk met mid-row left the part written (a
    row cut short, read by --resume and by whoever plots the file) and raised 'No space left on device'
    naming no file. Now the file is as it was before the row and the error names it."""
    import builtins
    import errno

    from dosepred.training import logging as run_logging

    path = tmp_path / "metrics.csv"
    log = CsvLog(path, None)
    log.append({"epoch": 1, "loss": 0.5})
    before = path.read_bytes()

    class Full:  # writes the first 5 bytes it is given, then meets a full disk
        def __init__(self, fh):
            self.fh = fh

        def write(self, text):
            self.fh.write(text[:5])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(run_logging, "open", lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)
    with pytest.raises(OSError, match="No space") as e:
        log.append({"epoch": 2, "loss": 0.25})
    assert e.value.filename == str(path)
    assert path.read_bytes() == before
