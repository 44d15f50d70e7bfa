"""``calibration.json``: a model's calibrated intervals as a typed record, read and written by version.

A :class:`Calibration` holds what :func:`dosepred.qa.calibrating.calibrate` computed and plan QA
(:mod:`dosepred.qa.check`) reads: the fitted metric families (their sorted scores per method, so any
coverage can be asked for later, and the method QA uses), the quantile rule, whether the predictions
were flipped (``tta``: QA predicts the same way), the protocol and criteria it was computed for, the
cross-validated coverage, widths, false alarms and flag margins, the ranges of ROI volumes and voxel
spacings of the training data (QA's reliability notes) and the DVH band (:mod:`dosepred.qa.band`).

Versions (:data:`CALIBRATION_VERSION`; each still read, with the meaning it had):

- 1: no ``quantile_rule`` (the ``conservative`` rule, :data:`~dosepred.qa.conformal.LEGACY_RULE`), no
  tail scores, unflipped predictions;
- 2: ``quantile_rule``, tail scores per family, later ``dvh_band``; unflipped predictions;
- 3: ``tta`` (whether the predictions were flipped; required) and ``method_rule`` (how the methods
  were chosen, :mod:`dosepred.qa.crossval`);
- 4: the ``centred`` method (its scores, and a ``centre`` in every per-criterion statistic); and
  required, as every writer wrote them but QA's checks stand on them (:data:`REQUIRED_FIELDS`): the
  model file's ``model_sha256``, the calibrated ``criteria`` and the ``training_ranges`` of ROI
  volumes. A file of an earlier version lacking one still loads (QA then warns that the check it
  feeds is not made).

:meth:`Calibration.to_json` writes a file's keys in the order and with the values they were read
with, so a calibration read and written again is the same file; :func:`write_calibration` writes it
atomically into the model folder. A file that is not a calibration, or a field of the wrong type, is
a :class:`CalibrationError` naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DosepredError
from ..fsutil import RepeatedKeyError, loads_unique, sha256_file, write_text
from ..inference import InferenceOptions
from .band import DvhBand
from .conformal import LEGACY_RULE, METHODS, QUANTILE_RULES, CriterionStats, Family, Tails
from .crossval import CvResults

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "dosepred-calibration"
#: Version 4: the ``centred`` method (per-criterion centres). Version 3: the file records whether its
#: predictions were flipped (``tta``; plan QA predicts the same way) and the rule that chose the methods
#: (``method_rule``). Versions 1 and 2 were made from unflipped predictions.
CALIBRATION_VERSION = 4
#: What a file of the current version must hold, and which check of plan QA each feeds: removed or
#: emptied by a hand edit, each switched its check off without a word (docs/qa.md)
REQUIRED_FIELDS = {
    "model_sha256": "the SHA-256 of the model file it was computed for: QA refuses another model file",
    "criteria": "the criteria it calibrated: QA flags any other 'criterion not calibrated'",
    "training_ranges": "the training patients' ROI volume ranges: QA notes a volume far outside them"}


class CalibrationError(DosepredError, ValueError):
    """No calibration, or one that does not fit the model, protocol or request."""


@dataclass(frozen=True)
class TrainingRanges:
    """ROI volumes (cc, [min, max] per ROI) and voxel spacings (mm, min and max per array axis sorted
    ascending; None without patients) of the training patients; ``source``: where they came from."""

    patients: int | None
    roi_volume_cc: Mapping[str, tuple[float, float]]
    spacing_min: tuple[float, ...] | None
    spacing_max: tuple[float, ...] | None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "patients": self.patients, "roi_volume_cc": {r: list(v) for r, v in self.roi_volume_cc.items()},
            "spacing_mm": {"min": _list(self.spacing_min), "max": _list(self.spacing_max)}}
        if self.source is not None:
            out["source"] = self.source
        return out

    @classmethod
    def from_json(cls, obj: Any, source: str | os.PathLike) -> TrainingRanges:
        """From the JSON object (as :meth:`to_json` writes it); :class:`CalibrationError` naming
        ``source`` and the field otherwise."""
        r = _Reader(source)
        d = r.obj(obj, "training_ranges")
        sp = r.obj(d.get("spacing_mm", {}), "training_ranges.spacing_mm")
        vols = r.obj(d.get("roi_volume_cc", {}), "training_ranges.roi_volume_cc")
        return cls(r.opt(d.get("patients"), r.integer, "training_ranges.patients"),
                   {k: r.pair(v, f"training_ranges.roi_volume_cc.{k}") for k, v in vols.items()},
                   r.opt(sp.get("min"), r.numbers, "training_ranges.spacing_mm.min"),
                   r.opt(sp.get("max"), r.numbers, "training_ranges.spacing_mm.max"),
                   r.opt(d.get("source"), r.text, "training_ranges.source"))


@dataclass(frozen=True)
class CrossValidation:
    """How the methods were cross-validated (random patient splits) and the results per family,
    method and coverage (:func:`dosepred.qa.crossval.cross_validate`); families with at most one unit
    per patient get more splits (``splits_small_families``; absent in early files)."""

    splits: int
    calibration_fraction: float
    seed: int
    results: CvResults
    splits_small_families: Mapping[str, int] | None = None


def qa_inference(tta: bool) -> InferenceOptions:
    """How plan QA predicts, and so how the predictions a calibration is made of must be made:
    flipped as the calibration records (``tta``), in full precision also on a GPU, with no translated
    passes, overlap 0.5, gaussian blending, the "fov" spacing policy, on the model's device, one
    window at a time, refusing a patient that lacks ROIs. Every option is written here, not taken
    from :class:`InferenceOptions`' defaults: a calibration describes predictions made exactly so, and
    a changed default (``dosepred predict``'s) must not change what QA does."""
    return InferenceOptions(device="auto", overlap=0.5, mode="gaussian", sw_batch=1, amp=False,
                            tta=bool(tta), shifts=(), allow_missing_rois=False, spacing_policy="fov")


@dataclass(frozen=True)
class Calibration:
    """A model's calibration (the module docstring says what each field is for). ``quantile_rule``
    and ``tta`` are what QA uses: ``conservative`` and unflipped for the files that predate them."""

    version: int
    quantile_rule: str
    tta: bool
    method_rule: str | None
    model_sha256: str | None
    protocol: str | None
    criteria: tuple[str, ...]
    data: str
    patients: tuple[str, ...]
    normalisation: str
    families: Mapping[str, Family]
    cross_validation: CrossValidation | None
    training_ranges: TrainingRanges | None
    dvh_band: DvhBand | None

    @property
    def inference(self) -> InferenceOptions:
        """How plan QA predicts with this calibration (:func:`qa_inference` of ``tta``)."""
        return qa_inference(self.tta)

    def check_model_file(self, model_file: str | os.PathLike) -> None:
        """:class:`CalibrationError` when the calibration records a model SHA-256 and ``model_file``
        (the checkpoint or ``ensemble.json`` it lies beside) is another file: a calibration copied
        beside another model, or a model retrained or replaced since. Every reader of a model's
        calibration (``qa``, ``bench qa-power``) checks it."""
        if self.model_sha256 is not None and sha256_file(model_file) != self.model_sha256:
            raise CalibrationError(f"{Path(model_file).parent / CALIBRATION_FILE} was computed for another "
                                   "model file (sha256 differs): recalibrate with `dosepred calibrate`")

    @property
    def methods(self) -> dict[str, str]:
        """Family -> the method plan QA uses for it."""
        return {f: fam.method for f, fam in self.families.items()}

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``calibration.json`` (keys of the file's version, in the file's order)."""
        out: dict[str, Any] = {"format": CALIBRATION_FORMAT, "version": self.version}
        if self.version >= 2 or self.quantile_rule != LEGACY_RULE:
            out["quantile_rule"] = self.quantile_rule
        if self.version >= 3:
            out["tta"] = self.tta
        if self.method_rule is not None:
            out["method_rule"] = self.method_rule
        cv = self.cross_validation
        out.update({
            "model_sha256": self.model_sha256, "protocol": self.protocol, "criteria": list(self.criteria),
            "data": self.data, "patients": list(self.patients), "normalisation": self.normalisation,
            "families": {k: _family_json(f) for k, f in self.families.items()},
            "cross_validation": None if cv is None else {
                "splits": cv.splits, "calibration_fraction": cv.calibration_fraction, "seed": cv.seed,
                **({} if cv.splits_small_families is None
                   else {"splits_small_families": dict(cv.splits_small_families)}),
                "results": cv.results},
            "training_ranges": None if self.training_ranges is None else self.training_ranges.to_json()})
        if self.dvh_band is not None or self.version >= 3:
            b = self.dvh_band
            out["dvh_band"] = None if b is None else {
                "levels": list(b.levels), "method": b.method,
                "rois": {r: [list(s) for s in v] for r, v in b.rois.items()}}
        return out

    @classmethod
    def from_json(cls, obj: Any, source: str | os.PathLike = CALIBRATION_FILE) -> Calibration:
        """The calibration of a JSON object of any version (1 to :data:`CALIBRATION_VERSION`);
        :class:`CalibrationError` naming ``source`` for anything else."""
        if not isinstance(obj, dict) or obj.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"{source} is not a dosepred calibration (format {CALIBRATION_FORMAT!r})")
        r = _Reader(source)
        version = r.integer(obj.get("version", 1), "version")
        if version > CALIBRATION_VERSION:
            raise CalibrationError(f"{source}: calibration.json version {version} is newer than this "
                                   f"dosepred reads (1-{CALIBRATION_VERSION}): update dosepred or "
                                   "recalibrate")
        rule = obj.get("quantile_rule", LEGACY_RULE)
        if rule not in QUANTILE_RULES:
            raise CalibrationError(f"calibration quantile rule {rule!r} is not one of "
                                   f"{', '.join(QUANTILE_RULES)}: recalibrate with this version of dosepred")
        tta = False  # versions 1 and 2 were made from unflipped predictions
        if version >= 3:
            tta = obj.get("tta")
            if not isinstance(tta, bool):
                why = "has no 'tta' record" if tta is None else f"has 'tta' {json.dumps(tta)}, not a record"
                raise CalibrationError(f"{source}: calibration.json version {obj.get('version')} {why} "
                                       "(true or false: whether its predictions were flipped): recalibrate "
                                       "with `dosepred calibrate`")
        if version >= CALIBRATION_VERSION:
            check_required(obj, source)
        fams = r.obj(obj.get("families", {}), "families")
        cv = obj.get("cross_validation")
        ranges = obj.get("training_ranges")
        return cls(
            version, rule, tta, r.opt(obj.get("method_rule"), r.text, "method_rule"),
            r.opt(obj.get("model_sha256"), r.text, "model_sha256"),
            r.opt(obj.get("protocol"), r.text, "protocol"),
            r.texts(obj.get("criteria", []), "criteria"), r.text(obj.get("data", ""), "data"),
            r.texts(obj.get("patients", []), "patients"),
            r.text(obj.get("normalisation", ""), "normalisation"),
            {k: _family(r, v, k, version) for k, v in fams.items()},
            None if cv is None else _cross_validation(r, cv),
            None if ranges is None else TrainingRanges.from_json(ranges, source),
            _band(r, obj.get("dvh_band")))


def check_required(obj: Mapping[str, Any], source: str | os.PathLike) -> None:
    """:class:`CalibrationError` naming ``source`` and the field where ``obj`` (a calibration's JSON
    object) lacks one of :data:`REQUIRED_FIELDS` or holds it empty: a model SHA-256 of 64 hex digits,
    a non-empty list of criteria, training ranges with ROI volumes."""
    for key, what in REQUIRED_FIELDS.items():
        v = obj.get(key)
        if key == "model_sha256":
            ok = isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower())
        elif key == "criteria":
            ok = isinstance(v, list) and len(v) > 0
        else:
            vols = v.get("roi_volume_cc") if isinstance(v, dict) else None
            ok = isinstance(vols, dict) and len(vols) > 0
        if not ok:
            shown = json.dumps(v)
            has = f"has no {key!r}" if key not in obj else \
                f"has {key!r} {shown if len(shown) <= 40 else shown[:40] + '...'}"
            raise CalibrationError(f"{source}: calibration.json version {obj.get('version')} {has}; a file "
                                   f"of this version must hold it ({what}): recalibrate with `dosepred "
                                   "calibrate`")


def load_calibration(model: str | os.PathLike) -> Calibration:
    """The calibration of ``model`` (its folder or checkpoint file); :class:`CalibrationError` when it
    has none or it is not readable."""
    d = Path(model)
    if d.is_file():
        d = d.parent
    path = d / CALIBRATION_FILE
    if not path.is_file():
        raise CalibrationError(f"model {model} has no {CALIBRATION_FILE}: run `dosepred calibrate --model "
                               f"{model} --data SRC --protocol P` on patients the model was not trained on")
    return Calibration.from_json(read_json(path), path)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON of ``path``; :class:`CalibrationError` naming it when it is not readable JSON, or when
    an object repeats a key (JSON keeps the last silently: a hand edit that added a second ``"n"`` or
    ``"scores"`` would be read without a word)."""
    try:
        return loads_unique(Path(path).read_text(encoding="utf-8-sig"))  # a byte-order mark read as none
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CalibrationError(f"{path} is not readable JSON: {e}") from None
    except RepeatedKeyError as e:
        raise CalibrationError(f"{path}: key {e.key!r} appears twice in one object (JSON would keep "
                               "the last silently): keep one") from None


def write_calibration(model_dir: str | os.PathLike, calib: Calibration) -> Path:
    """Write ``model_dir/calibration.json`` atomically (temporary file, then rename); nothing else in
    the folder is touched. Infinite values are written as ``"inf"`` / ``"-inf"``, NaN as null."""
    d = Path(model_dir)
    if d.is_file():
        d = d.parent
    path = d / CALIBRATION_FILE
    obj = _finite(calib.to_json())
    if calib.version >= CALIBRATION_VERSION:  # never write a file that would not be read back
        check_required(obj, path)
    write_text(path, json.dumps(obj, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------------- JSON <-> types
def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if x != x else ("inf" if x > 0 else "-inf")
    return x


def _list(x: tuple[float, ...] | None) -> list[float] | None:
    return None if x is None else list(x)


def _family_json(f: Family) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": f.n, "criterion_stats": {k: {"bias": s.bias, "scale": s.scale, "n": s.n,
                                          **({} if s.centre is None else {"centre": s.centre})}
                                      for k, s in f.criterion_stats.items()},
        "scores": {m: list(s) for m, s in f.scores.items()}}
    if f.tail_scores is not None:
        out["tail_scores"] = {m: {"lower": list(t.lower), "upper": list(t.upper)}
                              for m, t in f.tail_scores.items()}
    return {**out, "family": f.family, "method": f.method, "criteria": list(f.criteria)}


def _family(r: _Reader, obj: Any, name: str, version: int = CALIBRATION_VERSION) -> Family:
    """A family as :func:`_family_json` writes it, checked as :func:`~dosepred.qa.conformal.fit_family`
    makes it: ``n`` units, every method's ``n`` scores finite and sorted ascending (``absolute``: >= 0),
    each tail's scores some of its method's (at most ``n``), finite per-criterion statistics (each with a
    centre where the family has ``centred`` scores). A hand
    edit that breaks any of these would move the intervals silently; it is a :class:`CalibrationError`
    naming the file and the field."""
    w = f"families.{name}"
    d = r.obj(obj, w)
    family = r.text(d.get("family", name), f"{w}.family")
    if family != name:  # the name decides the clipping (V-metrics 0-100 %) and which criteria it serves
        raise r.bad(f"{w}.family", f"the family's name {name!r} (it is {family!r})")
    n = r.integer(d.get("n", 0), f"{w}.n")
    if n < 0:
        raise r.bad(f"{w}.n", f"a number of calibration units (>= 0; it is {n})")
    stats = {}
    for k, v in r.obj(d.get("criterion_stats", {}), f"{w}.criterion_stats").items():
        s = r.obj(v, f"{w}.criterion_stats.{k}")
        scale = r.number(s.get("scale"), f"{w}.criterion_stats.{k}.scale")
        if not (math.isfinite(scale) and scale > 0):  # normalised intervals are multiples of it
            raise r.bad(f"{w}.criterion_stats.{k}.scale", f"a positive number (it is {s.get('scale')})")
        bias = r.number(s.get("bias"), f"{w}.criterion_stats.{k}.bias")
        if not math.isfinite(bias):  # normalised intervals are shifted by it
            raise r.bad(f"{w}.criterion_stats.{k}.bias", f"a finite number (it is {s.get('bias')})")
        k_n = r.integer(s.get("n", 0), f"{w}.criterion_stats.{k}.n")
        if k_n < 0:
            raise r.bad(f"{w}.criterion_stats.{k}.n", f"a number of calibration units (>= 0; it is {k_n})")
        centre = None
        if "centre" in s:  # version 4 on; null would not be written back
            if version < 4:
                raise r.bad(f"{w}.criterion_stats.{k}.centre", f"allowed in version {version} (centres came "
                            "with version 4)")
            centre = r.number(s["centre"], f"{w}.criterion_stats.{k}.centre")
            if not math.isfinite(centre):  # centred intervals are shifted by it
                raise r.bad(f"{w}.criterion_stats.{k}.centre", f"a finite number (it is {s.get('centre')})")
            if k == "*" and centre != 0:  # a criterion the calibration did not see is not moved
                raise r.bad(f"{w}.criterion_stats.*.centre", f"0 (it is {centre})")
        stats[k] = CriterionStats(bias, scale, k_n, centre)
    scores = {m: r.scores(v, f"{w}.scores.{m}", n, nonnegative=m == "absolute")
              for m, v in r.obj(d.get("scores", {}), f"{w}.scores").items()}
    tails = None
    if d.get("tail_scores") is not None:  # absent in version 1
        tails = {}
        for m, v in r.obj(d["tail_scores"], f"{w}.tail_scores").items():
            t = r.obj(v, f"{w}.tail_scores.{m}")
            if m not in scores:
                raise r.bad(f"{w}.tail_scores.{m}", f"the tails of a method it has scores for "
                            f"({', '.join(scores) or 'none'})")
            tails[m] = Tails(r.tail(t.get("lower"), f"{w}.tail_scores.{m}.lower", scores[m]),
                             r.tail(t.get("upper"), f"{w}.tail_scores.{m}.upper", scores[m]))
    if "centred" in scores and version < 4:
        raise r.bad(f"{w}.scores.centred", f"allowed in version {version} (the centred method came with "
                    "version 4)")
    no_centre = sorted(k for k, v in stats.items() if v.centre is None)
    if "centred" in scores and no_centre:  # its intervals would silently not be centred there
        raise r.bad(f"{w}.criterion_stats.{no_centre[0]}.centre",
                    "a number: the family has centred scores, so every criterion needs its centre")
    method = r.text(d.get("method", "absolute"), f"{w}.method")
    if method not in METHODS or method not in scores:
        have = ", ".join(m for m in METHODS if m in scores)
        raise r.bad(f"{w}.method", f"one of the methods it has scores for ({have}; it is {method!r})")
    return Family(family, n, stats, scores, tails, method, r.texts(d.get("criteria", []), f"{w}.criteria"))


def _cross_validation(r: _Reader, obj: Any) -> CrossValidation:
    d = r.obj(obj, "cross_validation")
    w = "cross_validation.splits_small_families"
    small = None if d.get("splits_small_families") is None else {
        k: r.integer(v, f"{w}.{k}") for k, v in r.obj(d["splits_small_families"], w).items()}

    def table(x: Any, where: str, depth: int) -> Any:  # family -> method -> coverage -> statistic -> number
        if depth == 4:
            return r.number(x, where)
        return {k: table(v, f"{where}.{k}", depth + 1) for k, v in r.obj(x, where).items()}

    return CrossValidation(
        r.integer(d.get("splits"), "cross_validation.splits"),
        r.number(d.get("calibration_fraction"), "cross_validation.calibration_fraction"),
        r.integer(d.get("seed"), "cross_validation.seed"),
        table(d.get("results", {}), "cross_validation.results", 0), small)


def _band(r: _Reader, obj: Any) -> DvhBand | None:
    if not obj:  # absent (before version 2), null or empty: no band
        return None
    d = r.obj(obj, "dvh_band")
    rois = r.obj(d.get("rois", {}), "dvh_band.rois")
    levels = r.numbers(d.get("levels"), "dvh_band.levels")
    out = {}
    for roi, v in rois.items():
        if not isinstance(v, list) or len(v) != len(levels):
            raise r.bad(f"dvh_band.rois.{roi}", f"a list of {len(levels)} lists (one per level)")
        out[roi] = tuple(r.numbers(s, f"dvh_band.rois.{roi}") for s in v)
    return DvhBand(levels, r.text(d.get("method", "signed"), "dvh_band.method"), out)


class _Reader:
    """Typed reads of a calibration file's values; a wrong type is a :class:`CalibrationError` naming
    the file and the field. Numbers keep their JSON type (so that a file written again is the same);
    ``"inf"``, ``"-inf"`` and null in number fields are what :func:`_finite` writes for them."""

    def __init__(self, source: str | os.PathLike) -> None:
        self.source = source

    def bad(self, where: str, want: str) -> CalibrationError:
        return CalibrationError(f"{self.source}: {where} is not {want}: recalibrate with "
                                "`dosepred calibrate`")

    def obj(self, x: Any, where: str) -> dict[str, Any]:
        if not isinstance(x, dict):
            raise self.bad(where, "an object")
        return x

    def text(self, x: Any, where: str) -> str:
        if not isinstance(x, str):
            raise self.bad(where, "a string")
        return x

    def texts(self, x: Any, where: str) -> tuple[str, ...]:
        if not isinstance(x, list) or not all(isinstance(v, str) for v in x):
            raise self.bad(where, "a list of strings")
        return tuple(x)

    def integer(self, x: Any, where: str) -> int:
        if not isinstance(x, int) or isinstance(x, bool):
            raise self.bad(where, "an integer")
        return x

    def number(self, x: Any, where: str) -> float:
        if x is None:
            return math.nan
        if isinstance(x, str) and x in ("inf", "-inf"):
            return float(x)
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            raise self.bad(where, "a number")
        return x

    def numbers(self, x: Any, where: str) -> tuple[float, ...]:
        if not isinstance(x, list):
            raise self.bad(where, "a list of numbers")
        return tuple(self.number(v, where) for v in x)

    def scores(self, x: Any, where: str, n: int, nonnegative: bool = False) -> tuple[float, ...]:
        """A method's calibration scores: ``n`` finite numbers (``nonnegative``: >= 0, as absolute
        residuals are) sorted ascending, as :func:`~dosepred.qa.conformal.fit_family` writes them
        (intervals are read off them by position). No score is ever infinite or NaN: the ``"inf"``
        and null that :func:`_finite` writes belong to the cross-validation results."""
        v = self.numbers(x, where)
        if len(v) != n:
            raise self.bad(where, f"a list of n = {n} scores, one per calibration unit (it has {len(v)})")
        self._finite_sorted(v, where, nonnegative)
        return v

    def tail(self, x: Any, where: str, scores: tuple[float, ...]) -> tuple[float, ...]:
        """A tail's scores: some of its method's ``scores`` (those of the units not at a bound of the
        metric), so at most as many, finite and sorted ascending."""
        v = self.numbers(x, where)
        if len(v) > len(scores):
            raise self.bad(where, f"at most the {len(scores)} scores of its method (it has {len(v)})")
        self._finite_sorted(v, where)
        rest = Counter(scores)
        rest.subtract(v)
        extra = [s for s, k in rest.items() if k < 0]
        if extra:
            raise self.bad(where, f"a selection of its method's scores ({extra[0]!r} is not one of them)")
        return v

    def _finite_sorted(self, v: tuple[float, ...], where: str, nonnegative: bool = False) -> None:
        for i, s in enumerate(v):
            if not math.isfinite(s):
                shown = "null" if s != s else json.dumps(str(s))
                raise self.bad(where, f"a list of finite numbers (entry {i} is {shown})")
            if nonnegative and s < 0:
                raise self.bad(where, f"a list of numbers >= 0, absolute residuals (entry {i} is {s})")
            if i and s < v[i - 1]:
                raise self.bad(where, f"sorted ascending (entry {i}, {s}, is below entry {i - 1}, "
                                      f"{v[i - 1]})")

    def pair(self, x: Any, where: str) -> tuple[float, float]:
        v = self.numbers(x, where)
        if len(v) != 2:
            raise self.bad(where, "[min, max]")
        return v[0], v[1]

    def opt(self, x: Any, read: Any, where: str) -> Any:
        return None if x is None else read(x, where)
