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
    """Everything a training run needs (data, model, loss, schedule, device); saved as the run's
    ``config.json`` and merged with command-line overrides (``dosepred train``)."""

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
    flip: bool = True  # mirror crops left-right (Left/Right ROIs swapped); the axis comes from the geometry
    flip_axis: int | None = None  # deprecated (old runs): the left-right axis is read from the geometry
    # axis letters every training patient is permuted into ("PLI": OpenKBP arrays; "first": the first
    # training patient's); recorded with the model (its space) and used by predict
    orientation: str = "PLI"
    head_feet_axis: int | None = None  # rotations turn about it; None: the training data's S-I axis
    rotate_p: float = 0.0  # probability of rotating a crop about the head-feet axis (0: never)
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

    def check_types(self) -> None:
        """Each scalar field holds its annotated type (values from ``--set`` or a JSON file arrive
        untyped): a clear error naming the field instead of a failure deep in training."""
        simple: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,),
                                               "str": (str,), "None": (type(None),)}
        for f in fields(self):
            parts = [t.strip() for t in str(f.type).split("|")]
            if not all(t in simple for t in parts):
                continue  # containers are checked where they are used
            ok = tuple(c for t in parts for c in simple[t])
            v = getattr(self, f.name)
            if not isinstance(v, ok) or (isinstance(v, bool) and bool not in ok):
                raise ValueError(f"training config field {f.name} must be {f.type}, got {v!r}")

    def validate(self) -> None:
        self.check_types()
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
        if self.orientation.lower() != "first":
            from ..models.space import ModelSpace

            try:
                ModelSpace(axes=self.orientation)
            except (KeyError, ValueError):
                raise ValueError(f"orientation must be three axis letters such as PLI (one of R/L, A/P, "
                                 f"S/I each) or 'first', got {self.orientation!r}") from None
        if not 0 <= self.rotate_p <= 1:
            raise ValueError(f"rotate_p must be in [0, 1], got {self.rotate_p}")
        if not 0 < self.rotate_step < 360 or not (360 / self.rotate_step).is_integer():
            raise ValueError(f"rotate_step must divide 360 degrees, got {self.rotate_step}")
        if self.head_feet_axis is not None and not 0 <= self.head_feet_axis < 3:
            raise ValueError(f"head_feet_axis must be an axis in 0..2, got {self.head_feet_axis}")
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
        """Read a ``config.json``; errors name the file and what is wrong with it."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a readable training config ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a training config is a JSON object, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def merged(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with the non-None values of ``overrides`` applied."""
        d = self.to_dict()
        d.update({k: v for k, v in overrides.items() if v is not None})
        return TrainConfig.from_dict(d)
