"""Training configuration: one dataclass, written to ``RUN/config.json`` and into every checkpoint.

Architecture fields (``base``, ``levels``, ``res_units``, ``norm``) may be left ``None``: they are
then taken from the ``init`` checkpoint when fine-tuning, else from :class:`ModelConfig`'s defaults.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEDULES = ("cosine", "constant", "step")
SELECT = ("dvh", "dose", "ptv", "oar", "dose+dvh")


@dataclass
class TrainConfig:
    data: str = ""  # training cache
    out: str = ""  # run folder
    val: str | None = None  # validation cache (None: no validation, best.pt = last)
    train_split: str | None = None  # "FILE:NAME" selecting training ids in `data`
    val_split: str | None = None  # "FILE:NAME" selecting validation ids in `val` (or `data`)
    loss: str = "mae"
    loss_options: dict[str, Any] = field(default_factory=dict)
    protocol: str | None = None  # built-in name or JSON file (CDM loss and validation scores)
    epochs: int = 100
    steps_per_epoch: int | None = None  # None: one crop per training patient (per global batch)
    batch: int = 2  # crops per step per process
    patch: tuple[int, int, int] = (64, 64, 64)
    lr: float = 3e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | constant | step
    warmup_steps: int = 0
    step_every_epochs: int = 30  # schedule "step": lr x step_gamma every this many epochs
    step_gamma: float = 0.1
    min_lr_fraction: float = 0.01  # cosine floor, fraction of lr
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    workers: int = 0
    threads: int | None = None  # torch CPU threads (None: all cores / processes)
    init: str | None = None  # checkpoint or run to start from (weights only, fresh optimiser)
    base: int | None = None
    levels: int | None = None
    res_units: int | None = None
    norm: str | None = None
    target_fraction: float = 2 / 3
    flip: bool = True
    flip_axis: int = 1  # left-right axis of the arrays (OpenKBP: axis 1, right->left)
    head_feet_axis: int = 2  # axis the rotations turn about (OpenKBP: axis 2, superior->inferior)
    rotate_p: float = 0.0  # probability of rotating a crop about head_feet_axis (0: never)
    rotate_step: float = 40.0  # rotations are k * rotate_step degrees, k = 1 .. 360/rotate_step - 1
    shift: bool = False  # random translation keeping the possible-dose mask in the window where it fits
    # exponential moving average of the weights (0: off); checkpoints' "model" then holds the average
    # (what validation, predict and export use) and "train_model" the raw weights; the decay is
    # min(ema_decay, (1 + n) / (10 + n)) at the run's step n, so a short fine-tune is not pinned to --init
    ema_decay: float = 0.0
    val_patients: int | None = None  # first N validation patients (None: all)
    # validate every N epochs (and after the last): whole-grid prediction costs ~10-25 s per 128^3
    # patient on 2 CPU cores, more than an epoch of training
    val_every: int = 5
    select: str = "dvh"  # validation score that picks best.pt (lower is better)
    sw_overlap: float = 0.5
    sw_mode: str = "gaussian"  # gaussian | constant
    stop_after: int | None = None  # end this process after that epoch (a job slice); --resume continues
    save_every: int = 0  # also keep checkpoints/epoch_K.pt every K epochs (0: never)

    def __post_init__(self) -> None:
        if isinstance(self.patch, int):
            self.patch = (self.patch,) * 3
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        if len(self.patch) != 3:
            raise ValueError(f"patch must be one or three sizes, got {self.patch}")
        self.loss_options = dict(self.loss_options or {})
        self.data = str(self.data) if self.data else ""
        self.out = str(self.out) if self.out else ""
        for k in ("val", "init", "protocol", "train_split", "val_split"):
            v = getattr(self, k)
            if v is not None:
                setattr(self, k, str(v))

    def validate(self) -> None:
        if not self.data:
            raise ValueError("no training data: give --data CACHE")
        if not self.out:
            raise ValueError("no run folder: give --out RUN")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"--steps-per-epoch must be >= 1, got {self.steps_per_epoch}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.select not in SELECT:
            raise ValueError(f"--select must be one of {', '.join(SELECT)}, got {self.select!r}")
        if self.sw_mode not in ("gaussian", "constant"):
            raise ValueError(f"sw_mode must be gaussian or constant, got {self.sw_mode!r}")
        if not 0 <= self.target_fraction <= 1:
            raise ValueError(f"target_fraction must be in [0, 1], got {self.target_fraction}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if not 0 <= self.rotate_p <= 1:
            raise ValueError(f"rotate_p must be in [0, 1], got {self.rotate_p}")
        if not 0 < self.rotate_step < 360 or not (360 / self.rotate_step).is_integer():
            raise ValueError(f"rotate_step must divide 360 degrees, got {self.rotate_step}")
        if self.head_feet_axis == self.flip_axis or not all(0 <= a < 3 for a in (self.head_feet_axis,
                                                                                self.flip_axis)):
            raise ValueError(f"head_feet_axis ({self.head_feet_axis}) and flip_axis ({self.flip_axis}) "
                             "must be two different axes in 0..2")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.val_every < 1:
            raise ValueError(f"--val-every must be >= 1, got {self.val_every}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"training config has unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def merged(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with the non-None values of ``overrides`` applied."""
        d = self.to_dict()
        d.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(d)
