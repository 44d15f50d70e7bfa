"""How a dose is predicted, as one typed value, and what a prediction records of it.

:class:`InferenceOptions` holds every choice of :func:`dosepred.predict.predict_dose` (device,
sliding-window overlap, blending, window batch, mixed precision, flipping, translated passes, missing
ROIs, spacing policy); it is frozen and passed down whole, from ``dosepred predict`` (which builds one
from its flags) to the sliding windows.

``dosepred predict --format cache`` stores what it did in the cache's ``dataset.json`` as data,
under ``"prediction"`` (:class:`PredictionRecord`: the options it used, the model and its SHA-256,
the data, the dosepred version; the record has its own ``version``). :func:`prediction_record`
reads it back, and also understands the command string earlier versions left in ``source``
(``dosepred predict --model M --data D --tta --tta-shift``), saying which options such a record
cannot tell (:attr:`PredictionRecord.unknown`: whether mixed precision was used, among others).
Code that needs predictions made a given way (``calibrate --predictions``, ``bench qa-power
--prediction``) compares the options that change the predicted dose (:data:`DOSE_OPTIONS`,
:meth:`InferenceOptions.differences`).

No torch here: asking how predictions were made costs no model import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import DosepredError, InputError

#: Whether a prediction is averaged with the patient's left-right mirror image by default (the
#: default of :attr:`InferenceOptions.tta`: ``predict_dose``, ``predict_patients``, ``predict_to`` and
#: ``dosepred predict`` alike; a lower dose score for every released model, twice the time;
#: docs/results.md). Callers whose results must be unflipped (plan QA against an unflipped
#: calibration, training validation) say ``tta=False``.
DEFAULT_TTA = True

#: the translation of ``--tta-shift`` (voxels per array axis): half the stride of the deepest level of a
#: 4-level U-Net (8 voxels), so the second pass sees the pooling grid at the other phase
TTA_SHIFT = (4, 4, 4)

#: Sliding-window blending modes (MONAI's ``BlendMode``)
BLEND_MODES = ("gaussian", "constant")
#: How the spacing of an axis outside the training range is chosen
#: (:meth:`dosepred.models.space.ModelSpace.target_spacing`)
SPACING_POLICIES = ("fov", "median", "nearest")

#: The options that change the predicted dose values (the others: where it runs, how many windows at
#: once, whether a patient lacking ROIs is predicted at all).
DOSE_OPTIONS = ("tta", "shifts", "amp", "overlap", "mode", "spacing_policy")

#: Version of the ``"prediction"`` record of a prediction cache's ``dataset.json``.
PREDICTION_RECORD_VERSION = 1


class PredictionRecordError(DosepredError, ValueError):
    """A prediction cache whose ``"prediction"`` record is malformed or from a newer dosepred."""


@dataclass(frozen=True)
class InferenceOptions:
    """Every choice of whole-grid prediction (:func:`dosepred.predict.predict_dose`).

    - ``device``: ``"auto"`` (the model's device; :func:`dosepred.predict.predict_to` loads the model
      on CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``;
    - ``overlap`` (0 <= overlap < 1), ``mode`` (:data:`BLEND_MODES`), ``sw_batch`` (windows per
      forward pass): the sliding windows of the training patch;
    - ``amp``: mixed precision on CUDA (ignored on the CPU; ``dosepred predict --amp``, its default);
    - ``tta``: average with the prediction of the patient mirrored along its left-right axis
      (:data:`DEFAULT_TTA`); ``shifts``: also with the input translated by each of these offsets
      (voxels per array axis; ``--tta-shift`` is ``(TTA_SHIFT,)``);
    - ``allow_missing_rois``: predict patients lacking ROIs every training patient had
      (:func:`dosepred.predict.match_rois`);
    - ``spacing_policy``: the spacing of an axis outside the training range (:data:`SPACING_POLICIES`).

    A value out of range is an :class:`~dosepred.errors.InputError` at construction.
    """

    device: str = "auto"
    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch: int = 1
    amp: bool = False
    tta: bool = DEFAULT_TTA
    shifts: tuple[tuple[int, int, int], ...] = ()
    allow_missing_rois: bool = False
    spacing_policy: str = "fov"

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise InputError(f"inference option device must be a device name (auto, cpu, cuda, cuda:N), "
                             f"got {self.device!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)) \
                or not 0 <= self.overlap < 1:
            raise InputError(f"inference option overlap must be a number with 0 <= overlap < 1, "
                             f"got {self.overlap!r}")
        if self.mode not in BLEND_MODES:
            raise InputError(f"inference option mode must be one of {', '.join(BLEND_MODES)}, "
                             f"got {self.mode!r}")
        if isinstance(self.sw_batch, bool) or not isinstance(self.sw_batch, int) or self.sw_batch < 1:
            raise InputError(f"inference option sw_batch must be an integer >= 1, got {self.sw_batch!r}")
        for name in ("amp", "tta", "allow_missing_rois"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"inference option {name} must be true or false, "
                                 f"got {getattr(self, name)!r}")
        if self.spacing_policy not in SPACING_POLICIES:
            raise InputError(f"inference option spacing_policy must be one of {', '.join(SPACING_POLICIES)}, "
                             f"got {self.spacing_policy!r}")
        object.__setattr__(self, "overlap", float(self.overlap))
        object.__setattr__(self, "shifts", _shifts(self.shifts))

    # ---------------------------------------------------------------- record
    def to_json(self) -> dict[str, Any]:
        """The options as a JSON object (every field; ``shifts`` as lists)."""
        d = asdict(self)
        d["shifts"] = [list(s) for s in self.shifts]
        return d

    @classmethod
    def from_json(cls, obj: Any, where: str = "inference options") -> InferenceOptions:
        """Options from :meth:`to_json`'s object: every field present, no other (an unknown one may
        change the dose: a record of a newer dosepred); :class:`PredictionRecordError` naming ``where``
        and the field otherwise."""
        if not isinstance(obj, Mapping):
            raise PredictionRecordError(f"{where}: expected an object of inference options, "
                                        f"got {type(obj).__name__}")
        names = [f.name for f in fields(cls)]
        extra = sorted(set(obj) - set(names))
        if extra:
            raise PredictionRecordError(f"{where}: unknown inference option(s) {', '.join(map(repr, extra))} "
                                        "(written by a newer dosepred? upgrade dosepred)")
        lacking = [n for n in names if n not in obj]
        if lacking:
            raise PredictionRecordError(f"{where}: lacks the inference option(s) {', '.join(lacking)}")
        try:
            return cls(**{n: obj[n] for n in names})
        except InputError as e:
            raise PredictionRecordError(f"{where}: {e}") from None

    # ---------------------------------------------------------------- comparing
    def differences(self, other: InferenceOptions, among: Sequence[str] = DOSE_OPTIONS) -> tuple[str, ...]:
        """The options of ``among`` (default: those that change the dose, :data:`DOSE_OPTIONS`) whose
        values differ between ``self`` and ``other``, in the order of ``among``."""
        return tuple(n for n in among if getattr(self, n) != getattr(other, n))

    def words(self, names: Sequence[str]) -> str:
        """How these options were set, as a reader of ``dosepred predict`` says it: ``--no-tta``,
        ``--tta-shift``, ``mixed precision (--amp on a GPU)``, ``overlap 0.25``, ..."""
        return ", ".join(_word(self, n) for n in names)


def _shifts(value: Any) -> tuple[tuple[int, int, int], ...]:
    bad = InputError(f"inference option shifts must be a list of [i, j, k] voxel offsets (integers), "
                     f"got {value!r}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise bad
    out = []
    for s in value:
        if isinstance(s, (str, bytes)) or not isinstance(s, Sequence) or len(s) != 3 \
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in s):
            raise bad
        out.append((int(s[0]), int(s[1]), int(s[2])))
    return tuple(out)


def _word(o: InferenceOptions, name: str) -> str:
    if name == "tta":
        return "--tta" if o.tta else "--no-tta"
    if name == "shifts":
        return ("no --tta-shift" if not o.shifts else "--tta-shift" if o.shifts == (TTA_SHIFT,)
                else f"translated passes {[list(s) for s in o.shifts]}")
    if name == "amp":
        return "mixed precision (--amp on a GPU)" if o.amp else "full precision (no mixed precision)"
    if name == "overlap":
        return f"window overlap {o.overlap:g}"
    if name == "mode":
        return f"{o.mode} blending"
    if name == "spacing_policy":
        return f"spacing policy {o.spacing_policy}"
    return f"{name} {getattr(o, name)!r}"


# -------------------------------------------------------------------------- what predict records
@dataclass(frozen=True)
class PredictionRecord:
    """How the doses of a prediction cache were made: what ``dosepred predict --format cache``
    stores under ``"prediction"`` in ``dataset.json`` (:meth:`to_json`), or what the command string
    of an older cache tells (``legacy``; the options it cannot tell are in ``unknown`` and hold their
    defaults in ``options``)."""

    options: InferenceOptions
    model: str | None = None
    model_sha256: str | None = None
    data: str | None = None
    dosepred_version: str | None = None
    unknown: tuple[str, ...] = ()
    legacy: bool = False
    version: int = PREDICTION_RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        """The ``"prediction"`` object of ``dataset.json``."""
        return {"version": self.version, "model": self.model, "model_sha256": self.model_sha256,
                "data": self.data, "options": self.options.to_json(),
                "dosepred_version": self.dosepred_version}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> PredictionRecord:
        """The record of ``obj`` (a ``"prediction"`` object); :class:`PredictionRecordError` naming
        ``where`` and the field when it is malformed or of a newer version."""
        if not isinstance(obj, Mapping):
            raise PredictionRecordError(f"{where}: 'prediction' must be an object, got {type(obj).__name__}")
        v = obj.get("version")
        if v != PREDICTION_RECORD_VERSION:
            raise PredictionRecordError(f"{where}: 'prediction' record version {v!r} is not one this "
                                        f"dosepred reads ({PREDICTION_RECORD_VERSION}); upgrade dosepred")
        if "options" not in obj:
            raise PredictionRecordError(f"{where}: 'prediction' lacks 'options'")
        for key in ("model", "model_sha256", "data", "dosepred_version"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise PredictionRecordError(f"{where}: 'prediction' field {key!r} must be a string, "
                                            f"got {type(obj[key]).__name__}")
        return cls(InferenceOptions.from_json(obj["options"], f"{where}: 'prediction' 'options'"),
                   obj.get("model"), obj.get("model_sha256"), obj.get("data"), obj.get("dosepred_version"))

    def words(self, names: Sequence[str]) -> str:
        """:meth:`InferenceOptions.words` of the recorded options."""
        return self.options.words(names)


#: What an older cache's command string cannot tell: ``dosepred predict`` used mixed precision on a
#: GPU and recorded neither the device nor that, nor ``--allow-missing-rois``.
LEGACY_UNKNOWN = ("device", "amp", "allow_missing_rois")


def prediction_record(cache: Any) -> PredictionRecord | None:
    """How the doses of an opened :class:`~dosepred.io.cache.Cache` were predicted: its
    ``"prediction"`` record, else what the command string of a cache written by an earlier
    ``dosepred predict`` tells (``--tta`` / ``--no-tta``, ``--tta-shift``; ``legacy``, with
    :data:`LEGACY_UNKNOWN` unknown); None for a cache that records neither (not written by
    ``predict``, or before ``predict`` recorded flipping). :class:`PredictionRecordError` for a
    malformed record."""
    info = cache.info
    where = f"{cache.root / 'dataset.json'}" if hasattr(cache, "root") else "dataset.json"
    if info.get("prediction") is not None:
        return PredictionRecord.from_json(info["prediction"], where)
    made = str(info.get("source", "")).split()
    if "--tta" not in made and "--no-tta" not in made:
        return None
    model = made[made.index("--model") + 1] if "--model" in made[:-1] else None
    data = made[made.index("--data") + 1] if "--data" in made[:-1] else None
    opts = InferenceOptions(tta="--tta" in made, shifts=(TTA_SHIFT,) if "--tta-shift" in made else ())
    return PredictionRecord(opts, model, None, data, None, LEGACY_UNKNOWN, legacy=True, version=0)


__all__ = ["DEFAULT_TTA", "TTA_SHIFT", "DOSE_OPTIONS", "InferenceOptions", "PredictionRecord",
           "PredictionRecordError", "prediction_record", "PREDICTION_RECORD_VERSION"]
