"""Training configuration: one validated model (pydantic, as the protocols), written to
``RUN/config.json`` and into every checkpoint.

Every field is documented once, here (its ``description``); ``dosepred train`` makes a flag of every
field from it (``--steps-per-epoch`` for ``steps_per_epoch``), reads whole configs with ``--config
FILE`` (JSON or TOML: the same keys) and single fields with ``--set KEY=VALUE``. Precedence: the
defaults, then the run's stored ``config.json`` (``--resume``), then ``--config``, then flags.

Architecture fields (``base``, ``levels``, ``res_units``, ``norm``) may be left ``None``: they are
then taken from the ``init`` checkpoint when fine-tuning, else from :class:`ModelConfig`'s defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import InputError

Schedule = Literal["cosine", "constant", "step"]
Select = Literal["dvh", "dose", "ptv", "oar", "dose+dvh"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
SELECT: tuple[str, ...] = get_args(Select)


class TrainConfig(BaseModel):
    """Everything a training run needs (data, model, loss, schedule, device); saved as the run's
    ``config.json`` and merged with command-line overrides (``dosepred train``)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field("", description="Training cache (optional with --resume).")
    out: str = Field("", description="Run folder (config, checkpoints, metrics.csv, tb/).")
    val: str | None = Field(None, description="Validation cache (whole-grid scores pick best.pt; none: "
                                              "best.pt = last).")
    train_split: str | None = Field(None, description="FILE:NAME: train on these ids of --data.")
    val_split: str | None = Field(None, description="FILE:NAME: validate on these ids of --val (or "
                                                    "--data).")
    loss: str = Field("mae", description="Loss spec, e.g. mae, mae+cdm, mae+0.5*dvh.")
    loss_options: dict[str, Any] = Field(default_factory=dict, description="Loss options (--loss-opt "
                                         "key=value, repeatable), e.g. cdm_tau=0.5.")
    protocol: str | None = Field(None, description="Protocol for the CDM loss and validation: openkbp, "
                                                   "openkbp-clinical or a JSON file.")
    epochs: int = Field(100, ge=1, description="Number of epochs.")
    steps_per_epoch: int | None = Field(None, ge=1,
        description="Steps per epoch (none: one crop per training "
                    "patient per global batch).")
    batch: int = Field(2, ge=1, description="Crops per step (per process).")
    patch: tuple[int, int, int] = Field((64, 64, 64), description="Crop / sliding-window size (one "
                                                                  "size or three, e.g. 64 or 64,64,96).")
    # finite, at most 1e30: a larger one overflows the float32 update (an internal error, not a divergence)
    lr: float = Field(3e-4, gt=0, le=1e30, allow_inf_nan=False, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    schedule: Schedule = Field("cosine", description="Learning-rate schedule.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up steps.")
    step_every_epochs: int = Field(30, ge=1, description="Schedule step: lr x step_gamma every this many "
                                                   "epochs.")
    step_gamma: float = Field(0.1, gt=0, allow_inf_nan=False, description="Schedule step: the factor.")
    min_lr_fraction: float = Field(0.01, ge=0, le=1, description="Cosine floor, fraction of lr.")
    grad_clip: float | None = Field(1.0, ge=0, description="Gradient norm clip (0 or none: off).")
    seed: int = Field(0, ge=0, description="Seed of weights and crop sampling.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    amp: bool = Field(True, description="Mixed precision on CUDA (ignored on CPU).")
    cpu_bf16: bool = Field(False, description="bfloat16 autocast of the network on the CPU (losses, "
                           "weights and validation in float32): faster steps on CPUs with AVX512-BF16 "
                           "or AMX, many times slower without (`python -m dosepred.bench.train_step "
                           "--variants fp32,bf16` measures it; ignored on CUDA, where --amp applies).")
    workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    threads: int | None = Field(None, ge=1, description="Torch CPU threads (none: all cores / processes).")
    init: str | None = Field(None, description="Start from these weights (run, model folder or .pt; "
                                               "fresh optimiser).")
    base: int | None = Field(None, description="U-Net base channels (none: --init's, else 16).")
    levels: int | None = Field(None, description="U-Net levels (none: --init's, else 4).")
    res_units: int | None = Field(None, description="Residual units per U-Net level, 0: plain "
                                                    "convolutions (none: --init's, else 2).")
    norm: str | None = Field(None, description="U-Net normalisation layer (none: --init's, else "
                                               "instance).")
    channels: list[int] | None = Field(None, description="U-Net channels per level, finest first, e.g. "
                                       "16,32,64,128,256,512 (overrides base and levels; none: --init's, "
                                       "else base doubled per level). Wider than --init's at some levels "
                                       "(same levels): the model is grown, its new channels start with "
                                       "zero outgoing weights so it predicts what --init does.")
    coarse: list[int] | None = Field(None, description="Channels of a coarse branch under the U-Net's "
                                     "bottom, e.g. 128,128,256 (levels at 1/2, 1/4, 1/8 of the bottom's "
                                     "resolution; its output is added to the bottom's and starts at zero, "
                                     "so an --init without it predicts as before; none: --init's, else "
                                     "no branch).")
    head: int | None = Field(None, ge=1, description="Channels of a pointwise full-resolution head on the "
                             "U-Net's output (it reads the input channels and that many more U-Net "
                             "outputs, and adds a correction that starts at zero, so an --init without "
                             "it predicts as before; none: --init's, else no head).")
    target_distance: bool | None = Field(None, description="Two more input channels: signed distances "
                                         "(mm) to the highest-prescription targets and to all targets "
                                         "(their weights start at zero, so an --init without them "
                                         "predicts as before; none: --init's, else none).")
    laterality: bool | None = Field(None, description="One more input channel: each voxel's patient-left "
                                    "position (mm from the body's centre), mirrored with the crops, "
                                    "so the model can tell the patient's right from a mirrored left "
                                    "(its weights start at zero, so an --init without it predicts as "
                                    "before; none: --init's, else none).")
    dropout: float | None = Field(None, ge=0, lt=1, allow_inf_nan=False, description=(
        "Dropout rate after every U-Net convolution but the last (MONAI's, element-wise), in training "
        "only (prediction runs without it; none: --init's, else 0). Measured harmful on the released "
        "recipe: 0.1 added to a fine-tune from the release raised the validation DVH Score by 60 % "
        "(docs/results.md round 34)."))
    stages: int | None = Field(None, ge=1, le=2, description="U-Nets in the cascade: 2 adds a second "
                               "U-Net refining the first's dose (none: --init's, else 1; a one-stage "
                               "--init becomes the first stage).")
    freeze_stage1: bool = Field(False, description="With stages=2: train only the second stage (the "
                                                   "first runs without gradients).")
    freeze_steps: int = Field(0, ge=0, description="Fine-tuning (with --init): for the first N optimiser "
                              "steps the --init model's contracting path below its first level (the "
                              "deeper levels' down layers, the bottom, a coarse branch it had) keeps its "
                              "weights; the first level's down layer (it reads the input channels, new "
                              "ROIs among them) and the expanding path train; then every weight trains.")
    target_fraction: float = Field(2 / 3, ge=0, le=1,
        description="Fraction of crops centred on a target voxel "
                    "(the others on a mask voxel).")
    flip: bool = Field(True, description="Mirror crops left-right (Left/Right ROIs swapped); the axis "
                                         "comes from the geometry.")
    flip_axis: int | None = Field(None, description="Deprecated (old runs): the left-right axis is read "
                                                    "from the geometry.")
    orientation: str = Field("PLI", description="Axis letters every training patient is permuted into, "
                                                "recorded with the model (its space) and used by "
                                                "predict: e.g. PLI (OpenKBP arrays) or 'first' (the "
                                                "first training patient's).")
    head_feet_axis: int | None = Field(None, ge=0, le=2,
        description="Rotations turn about this array axis (none: the "
                    "training data's S-I axis).")
    rotate_p: float = Field(0.0, ge=0, le=1,
        description="Probability of rotating a crop about the head-feet axis "
                    "(0: never).")
    rotate_step: float = Field(40.0, gt=0, lt=360,
        description="Rotations are k x rotate_step degrees, k = 1 .. "
                    "360/rotate_step - 1.")
    rotate_max: float = Field(0.0, ge=0, le=180,
        description="> 0: rotations are uniform in +-rotate_max degrees "
                    "instead of multiples of rotate_step (needs rotate_p).")
    scale_p: float = Field(0.0, ge=0, le=1,
        description="Probability of scaling a crop isotropically in mm by a "
                    "uniform factor in 1 +- scale_max (0: never).")
    scale_max: float = Field(0.0, ge=0, lt=0.5,
        description="Largest relative scaling (needs scale_p).")
    shift: bool = Field(False, description="Random translation keeping the possible-dose mask in the "
                                           "window where it fits.")
    ema_decay: float = Field(0.0, ge=0, lt=1,
        description="Exponential moving average of the weights (0: off): "
                    "checkpoints' model is the average, train_model the raw "
                    "weights; decay min(ema_decay, (1+n)/(10+n)) at step n.")
    val_patients: int | None = Field(None, ge=1, description="Validate on the first N validation patients "
                                                       "in the ids' natural order: pt_2 before pt_10 "
                                                       "(none: all).")
    val_every: int = Field(5, ge=1, description="Validate every N epochs (and after the last).")
    select: Select = Field("dvh", description="Validation score that picks best.pt (lower is better).")
    sw_overlap: float = Field(0.5, ge=0, lt=1,
        description="Sliding-window overlap of validation predictions.")
    sw_mode: Literal["gaussian", "constant"] = Field("gaussian", description="Sliding-window blending.")
    stop_after: int | None = Field(None, ge=1, description="End this process after that epoch (a job slice); "
                                                     "--resume continues exactly.")
    save_every: int = Field(0, ge=0,
        description="Also keep checkpoints/epoch_K.pt every K epochs (0: never).")

    @field_validator("patch", mode="before")
    @classmethod
    def _patch(cls, v: Any) -> Any:
        if isinstance(v, str):  # the command line: "64" or "64,64,96"
            parts = v.replace(" ", "").split(",")
            try:
                sizes = [int(c) for c in parts]
            except ValueError:
                sizes = []
            if len(sizes) not in (1, 3):
                raise InputError(f"patch must be one size or three comma-separated sizes such as 64 or "
                                 f"64,64,96, got {v!r}")
            v = sizes
        if isinstance(v, int) and not isinstance(v, bool):
            return (v,) * 3
        if isinstance(v, (list, tuple)) and len(v) == 1:
            return tuple(v) * 3
        if isinstance(v, (list, tuple)) and len(v) != 3:
            raise InputError(f"patch must be one or three sizes, got {list(v)}")
        return v

    @field_validator("data", "out", "val", "init", "protocol", "train_split", "val_split", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("channels", "coarse", mode="before")
    @classmethod
    def _channels(cls, v: Any, info: Any) -> Any:
        if isinstance(v, str):
            example = "16,32,64" if info.field_name == "channels" else "128,128,256"
            bad = InputError(f"{info.field_name} must be comma-separated integers such as {example}")
            parts = v.replace(" ", "").split(",")
            if "" in parts:  # '4,,8' or '4,8,': a blank is a slip, never dropped silently
                raise bad
            try:
                return [int(c) for c in parts]
            except ValueError:
                raise bad from None
        return v

    @field_validator("loss_options", mode="before")
    @classmethod
    def _opts(cls, v: Any) -> Any:
        return {} if v is None else v

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise InputError(_describe(e)) from None

    def check_freeze_steps(self, steps_per_epoch: int) -> None:
        """``freeze_steps`` must leave steps to train the contracting path in (the trainer calls this
        once it knows the steps per epoch when ``steps_per_epoch`` is not given)."""
        total = self.epochs * steps_per_epoch
        if self.freeze_steps and self.freeze_steps >= total:
            raise InputError(f"freeze_steps {self.freeze_steps} is not below the run's {total} steps "
                             f"({self.epochs} epochs x {steps_per_epoch}): the contracting path would "
                             "never train")

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        from ..losses.spec import parse_spec  # here: torch is imported only when a config is made

        parse_spec(v)  # a typo, a negative weight or a loss that is always 0 fails here, before any work
        return v

    @model_validator(mode="after")
    def _fields_together(self) -> TrainConfig:
        if self.patch and min(self.patch) < 1:
            raise InputError(f"patch sizes must be >= 1, got {list(self.patch)}")
        if not (360 / self.rotate_step).is_integer():
            raise InputError(f"rotate_step must divide 360 degrees, got {self.rotate_step}")
        if self.rotate_max > 0 and self.rotate_p == 0:
            raise InputError(f"rotate_max={self.rotate_max} has no effect with rotate_p=0 (set both)")
        if (self.scale_p > 0) != (self.scale_max > 0):
            raise InputError(f"scale_p={self.scale_p} and scale_max={self.scale_max}: scaling needs both "
                             "above 0 (one of them 0 scales nothing)")
        if self.steps_per_epoch:
            self.check_freeze_steps(self.steps_per_epoch)
        if self.freeze_steps and not self.init:
            raise InputError("freeze_steps needs --init (it keeps the --init model's contracting path for a "
                             "while; a network from random weights has nothing to keep)")
        if self.freeze_stage1 and self.stages == 1:
            raise InputError("freeze_stage1 needs stages=2 (a one-stage model would train nothing)")
        if self.orientation.lower() != "first":
            from ..models.space import ModelSpace

            try:
                ModelSpace(axes=self.orientation)
            except (KeyError, ValueError):
                raise InputError(f"orientation must be three axis letters such as PLI (one of R/L, A/P, "
                                 f"S/I each) or 'first', got {self.orientation!r}") from None
        return self

    def check(self) -> None:
        """What a run needs beyond valid fields (each field is checked on construction)."""
        if not self.data:
            raise InputError("no training data: give --data CACHE")
        if not self.out:
            raise InputError("no run folder: give --out RUN")

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(d) - set(cls.model_fields))
        if unknown:
            raise InputError(f"training config has unknown keys {unknown}")
        return cls(**d)

    @classmethod
    def read_file(cls, path: str | os.PathLike) -> dict[str, Any]:
        """The fields set in a JSON or TOML config file (``--config``), checked against the model;
        errors name the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) read as none
            if path.suffix.lower() == ".toml":
                import tomllib

                d: Any = tomllib.loads(text)
            else:
                d = json.loads(text)
        except ValueError as e:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
            raise InputError(f"{path}: not a readable training config ({e})") from None
        if not isinstance(d, dict):
            raise InputError(f"{path}: a training config is a JSON object (fields), got {type(d).__name__}")
        d.pop("$comment", None)
        try:
            cls.from_dict(d)
        except ValueError as e:
            raise InputError(f"{path}: {e}") from None
        return d

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a run's ``config.json`` (or any config file); errors name the file."""
        return cls.from_dict(cls.read_file(path))

    def merged(self, overrides: dict[str, Any], keep_none: bool = False) -> TrainConfig:
        """A copy with ``overrides`` applied: their non-None values (flags not given are None), or all
        of them with ``keep_none`` (a config file's ``null`` unsets a field). ``loss_options`` are
        merged key by key."""
        d = self.to_dict()
        for k, v in overrides.items():
            if k == "loss_options" and isinstance(v, dict):
                d[k] = {**d.get(k, {}), **v}
            elif v is not None or keep_none:
                d[k] = v
        return TrainConfig.from_dict(d)


def _describe(e: ValidationError) -> str:
    """Pydantic's errors as one line naming each field, its expected type and the value given."""
    parts = []
    for err in e.errors():
        name = ".".join(str(x) for x in err["loc"])
        field = TrainConfig.model_fields.get(str(err["loc"][0])) if err["loc"] else None
        want = _type_name(field.annotation) if field is not None else ""
        msg = err["msg"][0].lower() + err["msg"][1:]
        msg = msg.removeprefix("value error, ")
        if want and err["type"].endswith(("_type", "_parsing")):
            parts.append(f"training config field {name} must be {want}, got {err.get('input')!r} ({msg})")
        else:
            quoted = isinstance(err["input"], str) and repr(err["input"]) in msg  # said once, not twice
            got = "" if quoted else f", got {err['input']!r}"
            parts.append(f"training config field {name}: {msg}{got}" if name else f"training config: {msg}")
    return "; ".join(parts)


def _type_name(t: Any) -> str:
    s = str(t).replace("typing.", "")
    for k in ("int", "float", "str", "bool"):
        s = s.replace(f"<class '{k}'>", k)
    return s
