"""What a training run reports: ``metrics.csv``, TensorBoard events, per-step progress, one line per epoch.

:class:`RunLogger` is everything :class:`~dosepred.training.trainer.Trainer` records about a run;
the trainer hands it each epoch's row (a dict: ``epoch``, ``step``, ``lr``, ``train_*``,
``val_*``, timings) and never writes a record itself. A logger made with ``enabled=False`` (the
trainer on a DDP rank other than 0) records nothing.

- ``RUN/metrics.csv``: one row per epoch, the header the first row's, a column added (empty in the
  rows before) for a loss part a later epoch first gives (:class:`CsvLog`); ``--resume`` keeps the
  rows up to the resumed epoch.
- ``RUN/tb/``: every numeric value of the row as a TensorBoard scalar at the run's step, when
  tensorboard is installed (it is optional); ``--resume`` hides what was logged after the resumed
  checkpoint's step (``purge_step``), so an epoch logged but not saved is not shown twice.
- per-step progress: a bar on a terminal, a plain line about every 20 s in a log
  (:mod:`dosepred.progress`).
- the epoch line (:func:`epoch_line`) and any other message go to the ``log`` callable.
"""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fsutil import atomic_file
from ..progress import steps

Log = Callable[[str], None]

#: The validation columns every row has once a run validates (empty in epochs without validation).
VAL_KEYS = ("dose_score", "dvh_score", "ptv_score", "oar_score", "criteria_pass_rate", "sec")


def mean_parts(sums: dict[str, float], n: int | dict[str, int], world: int = 1) -> dict[str, float]:
    """Per-key means of an epoch's loss-part ``sums``: over ``n`` steps, or ``n[key]`` steps for a part
    only some steps give (a CDM loss's ``cdm_target_gy`` comes from a crop holding a target: its mean
    is over those, not a 0 Gy error for each crop without one). With ``world`` > 1 DDP processes,
    over all of them (every rank calls it; the ranks may have seen different parts)."""
    keys = sorted(sums)
    counts = n if isinstance(n, dict) else dict.fromkeys(keys, n)
    if world > 1:
        import torch
        import torch.distributed as dist

        seen: list[Any] = [None] * world
        dist.all_gather_object(seen, keys)
        keys = sorted(set().union(*seen))
        t = torch.tensor([[sums.get(k, 0.0), counts.get(k, 0)] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        sums, counts = ({k: v for k, v in zip(keys, t[:, j].tolist(), strict=True)} for j in (0, 1))
    return {k: sums[k] / max(1, counts[k]) for k in keys}


def _merged(header: list[str], keys: list[str]) -> list[str]:
    """``header`` with the ``keys`` it lacks, each placed after the key before it in ``keys``."""
    out = list(header)
    for i, k in enumerate(keys):
        if k not in out:
            out.insert(out.index(keys[i - 1]) + 1 if i else 0, k)
    return out


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.csv to resume (a byte-order mark read as none, rows of empty cells
    skipped); an :class:`InputError` naming it when it is not as written, e.g. saved by Excel with ';'
    separators or as UTF-16 (a KeyError 'epoch' or UnicodeDecodeError before)."""
    why = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.DictReader(fh) if any(v not in ("", None) for v in r.values())]
    except UnicodeDecodeError:
        rows, why = [], "not UTF-8 text"
    except csv.Error as e:
        rows, why = [], str(e)
    for i, r in enumerate(rows, start=2):
        if why is None and not str(r.get("epoch") or "").strip().isdigit():
            why = (f"no 'epoch' column (header {','.join(map(str, r))[:60]!r})" if "epoch" not in r
                   else f"row {i}: epoch {r['epoch']!r} is not a number")
    if why is not None:
        raise InputError(f"{path}: not a metrics.csv as dosepred writes it ({why}; saved by Excel?): "
                         "restore it, or move it aside and --resume starts a new one")
    return rows


class CsvLog:
    """metrics.csv with the first row's header, grown by keys a later row first has (the rows before
    are rewritten with them empty); resume keeps rows up to the resumed epoch."""

    def __init__(self, path: Path, resume_epoch: int | None) -> None:
        self.path = path
        self.header: list[str] | None = None
        if resume_epoch is not None and path.is_file():
            rows = _read_rows(path)
            if rows:
                self.header = list(rows[0].keys())
                keep = [r for r in rows if int(r["epoch"]) <= resume_epoch]
                self._write_all(keep)
        elif path.exists():
            path.unlink()

    def _write_all(self, rows: list[dict[str, Any]]) -> None:
        assert self.header is not None
        with atomic_file(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.header, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        new = self.header is None
        if not new and any(k not in self.header for k in row):  # a part no earlier epoch gave: a column
            with open(self.path, newline="") as fh:  # for it, empty in the rows before (rewritten)
                rows = list(csv.DictReader(fh))
            self.header = _merged(self.header, list(row))
            self._write_all(rows)
        if new:
            self.header = list(row.keys())
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a", newline="") as fh:
                w = csv.DictWriter(fh, self.header, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        except OSError as e:  # a full disk: no part of the row is left, and the error names the file
            if self.path.exists():
                os.truncate(self.path, size)
            raise (e if e.filename is not None else OSError(e.errno, e.strerror, str(self.path))) from None


def epoch_line(row: dict[str, Any], is_best: bool) -> str:
    """The one line an epoch prints: loss, learning rate, speed and, when it validated, the scores."""
    s = (f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  lr {row['lr']:.2e}  "
         f"{row['sec_per_step']:.2f} s/step")
    validated = row.get("val_dose_score", "") != ""
    if validated:
        s += (f"  val dose {row['val_dose_score']:.3f} DVH {row['val_dvh_score']:.3f} "
              f"PTV {row['val_ptv_score']:.3f} OAR {row['val_oar_score']:.3f}")
    return s + ("  *best*" if is_best and validated else "")


def open_tensorboard(folder: Path, purge_step: int | None = None) -> Any | None:
    """A TensorBoard ``SummaryWriter`` on ``folder``, or None when tensorboard is not installed.
    ``purge_step``: what an earlier writer logged at that step or later is hidden (a resumed run
    logs again the epochs after its checkpoint; without it TensorBoard shows them twice)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional dependency
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


class RunLogger:
    """The records of one training run in folder ``run`` (see the module docstring).

    Call order: :meth:`open` (once the run folder holds its run info), :meth:`start_progress`,
    then per step :meth:`step` and per epoch :meth:`epoch`, and :meth:`close` at the end (also
    after an error). :meth:`message` may be called at any time."""

    def __init__(self, run: Path, log: Log | None = None, enabled: bool = True) -> None:
        self.run = Path(run)
        self._log = log
        self.enabled = enabled
        self.csv: CsvLog | None = None
        self.tb: Any | None = None
        self.bar: Any | None = None
        self._hook: Callable[[Any], Any] | None = None  # threading.excepthook while TensorBoard writes

    def message(self, msg: str) -> None:
        """Pass ``msg`` to the ``log`` callable (nothing when disabled or without one)."""
        if self._log is not None and self.enabled:
            self._log(msg)

    def open(self, resume_epoch: int | None, resume_step: int | None = None) -> None:
        """Open ``metrics.csv`` (a new run: emptied; a resumed one: rows after ``resume_epoch``
        dropped) and the TensorBoard writer (a resumed one: what was logged after ``resume_step``,
        the resumed checkpoint's step, hidden: an epoch logged but not saved is logged again)."""
        if not self.enabled:
            return
        self.csv = CsvLog(self.run / "metrics.csv", resume_epoch)
        self._hook = threading.excepthook  # restored by close(); before its writer thread starts writing
        threading.excepthook = _quiet_tb_thread(self._hook)
        try:
            self.tb = open_tensorboard(self.run / "tb", None if resume_step is None else resume_step + 1)
        except OSError as e:  # a full disk met by its first event, written as it is opened
            threading.excepthook, self._hook = self._hook, None
            raise _tb_error(e, self.run / "tb") from None
        except UnicodeError:  # its file layer takes only UTF-8 names (a folder named in Latin-1)
            self.tb = None
            self.message(f"no TensorBoard log: TensorBoard cannot write under {self.run}, whose path is not "
                         "valid UTF-8 (metrics.csv holds every number)")

    def start_progress(self, total_steps: int, done_steps: int, show: bool) -> None:
        """Per-step progress over ``total_steps`` of which ``done_steps`` are done (when ``show``)."""
        if self.enabled and show:
            self.bar = steps("training", total_steps, done=done_steps, requested=True)

    def step(self, info: str) -> None:
        """One optimiser step done; ``info`` (e.g. the epoch's running loss) goes with the progress."""
        if self.bar is not None:
            self.bar.update(1, info=info)

    def epoch(self, row: dict[str, Any], is_best: bool, step: int) -> None:
        """Record an epoch's row: a CSV row, its numbers as TensorBoard scalars at ``step``, the line."""
        if not self.enabled:
            return
        if self.csv is not None:
            self.csv.append(row)
        if self.tb is not None:
            try:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, step)
                self.tb.flush()
            except OSError as e:  # met by its writer thread (a full disk) and raised here: named
                self.tb = None  # its thread has ended: closing it would only fail again
                raise _tb_error(e, self.run / "tb") from None
        self.message(epoch_line(row, is_best))

    def close(self, last: dict[str, Any] | None = None) -> None:
        """End the progress (with the last row's loss) and close the TensorBoard writer."""
        if self.bar is not None:
            self.bar.close(f"loss {last['train_loss']:.4f}" if last else "")
            self.bar = None
        if self.tb is not None:
            tb, self.tb = self.tb, None
            try:
                tb.close()
            except OSError as e:  # a full disk: said, not raised over the error that may be ending the run
                self.message(f"the TensorBoard log may lack its last values: {_tb_error(e, self.run / 'tb')}")
        if self._hook is not None:
            threading.excepthook, self._hook = self._hook, None


def _tb_error(e: OSError, folder: Path) -> OSError:
    """``e`` naming the TensorBoard log ``folder`` where it names no file."""
    return e if e.filename is not None else OSError(e.errno, e.strerror or str(e), str(folder))


def _quiet_tb_thread(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``threading.excepthook`` that leaves the ``OSError`` of TensorBoard's writer thread (a full disk)
    unprinted: the writer raises it again in the trainer (:meth:`RunLogger.epoch`), which names the log;
    anything else goes to ``hook``."""
    def quiet(args: Any) -> Any:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return None
        return hook(args)

    return quiet
