"""Evaluation of predicted doses against reference plans: scores and protocol criteria.

::

    from dosepred.evaluation import evaluate_patient, evaluate_cohort
    r = evaluate_patient(ref_patient, pred_dose, "openkbp-clinical")   # one patient
    c = evaluate_cohort([(ref, pred), ...], "openkbp-clinical")        # a cohort
    c.dose_score, c.dvh_score, c.ptv_score, c.oar_score, c.criteria_pass_rate
    c.to_json()   # {"patients", "dose_score", "dvh_score", "ptv_score", "oar_score",
                  #  "criteria_pass_rate", "per_patient", ...}

Definitions (REFERENCE.md sections 2 and 4):

- **dose score** (OpenKBP): per patient ``sum over ALL voxels |ref - pred| / count(possible-dose
  mask)`` (the numerator is not masked); cohort = mean over patients.
- **DVH score** (OpenKBP): mean over all (patient, ROI, metric) of ``|M_ref - M_pred|`` over the
  ``openkbp`` protocol's metrics (OAR D0.1cc, Dmean; target D99%, D95%, D1%), whatever protocol is
  evaluated; ROIs the reference patient lacks are skipped.
- **PTV score** / **OAR score**: the same mean over the *evaluated protocol's* dose metrics (Gy)
  of target / OAR ROIs (V-metrics, in %, are left out).
- **criteria**: each criterion with a limit is checked on the prediction and on the reference;
  ``criteria_pass_rate`` is the % of checked (patient, criterion) pairs the prediction passes,
  ``criteria_agreement`` the % where prediction and reference give the same verdict.

Metrics use OpenKBP's exact definitions (:mod:`dosepred.metrics`). When the reference knows the box
outside which its dose, mask and ROIs are zero (:meth:`Patient.support_box`, set by the cache and
the CSV reader of :func:`load_references`), scores are computed on that box (about a quarter of an
OpenKBP grid) plus the prediction's dose outside it; ROI masks are decoded once per patient from the
bit-mask codes (:func:`dosepred.dvh.roi_voxel_indices`), so evaluating a patient costs a few ms.
``pred_dose`` may be a numpy array or a torch tensor with the reference's spatial shape (leading
singleton batch/channel axes are dropped).
"""

from __future__ import annotations

import collections
import functools
import math
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .dvh import roi_metrics_pair, roi_voxel_indices
from .metrics import parse_metric
from .patient import Patient
from .protocol import Protocol, load_protocol

T = TypeVar("T")


@dataclass
class MetricValue:
    """One metric of one ROI on the reference and on the prediction (Gy, or % for V-metrics)."""

    roi: str
    metric: str
    kind: str  # target / oar / other
    ref: float
    pred: float

    @property
    def error(self) -> float:
        return abs(self.pred - self.ref)


@dataclass
class CriterionResult:
    """A protocol criterion on one patient. ``*_pass`` is None when the criterion has no limit."""

    name: str  # with %Rx limits resolved to Gy, e.g. "PTV70 D99% >= 66.5 Gy"
    roi: str
    metric: str
    direction: str | None
    limit: float | None  # in the metric's unit (Gy or %)
    goal: float | None
    unit: str
    priority: int
    ref: float
    pred: float
    ref_pass: bool | None
    pred_pass: bool | None
    ref_goal: bool | None = None
    pred_goal: bool | None = None

    @property
    def checked(self) -> bool:
        return self.pred_pass is not None and self.ref_pass is not None

    @property
    def agree(self) -> bool | None:
        return None if not self.checked else self.pred_pass == self.ref_pass


def _mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else math.nan


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if x != x else float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


@dataclass
class PatientResult:
    """Scores, metric values and criteria of one patient."""

    id: str
    dose_score: float
    metrics: list[MetricValue]
    dvh_errors: list[float]  # |ref - pred| of the openkbp metrics
    ptv_errors: list[float]  # |ref - pred| of the protocol's target dose metrics
    oar_errors: list[float]  # |ref - pred| of the protocol's OAR dose metrics
    criteria: list[CriterionResult]
    missing_rois: tuple[str, ...] = ()

    @property
    def dvh_score(self) -> float:
        """Mean |ref - pred| of the OpenKBP DVH metrics (Gy)."""
        return _mean(self.dvh_errors)

    @property
    def ptv_score(self) -> float:
        """Mean |ref - pred| of the protocol's target dose metrics (Gy)."""
        return _mean(self.ptv_errors)

    @property
    def oar_score(self) -> float:
        """Mean |ref - pred| of the protocol's OAR dose metrics (Gy)."""
        return _mean(self.oar_errors)

    @property
    def checked(self) -> list[CriterionResult]:
        """The criteria with a limit that both doses could be checked against."""
        return [c for c in self.criteria if c.checked]

    @property
    def pass_rate(self) -> float:
        """% of the checked criteria that the prediction passes (NaN when none has a limit)."""
        ch = self.checked
        return 100.0 * sum(bool(c.pred_pass) for c in ch) / len(ch) if ch else math.nan

    def value(self, roi: str, metric: str) -> MetricValue | None:
        """The reference/prediction value of ``metric`` on ``roi`` (None if not computed)."""
        m = str(parse_metric(metric))
        return next((v for v in self.metrics if v.roi == roi and v.metric == m), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the scores, ROI metrics and criteria (NaN as None)."""
        rois: dict[str, dict[str, Any]] = {}
        for v in self.metrics:
            rois.setdefault(v.roi, {"kind": v.kind, "metrics": {}})["metrics"][v.metric] = {
                "ref": v.ref, "pred": v.pred}
        return _clean({
            "id": self.id, "dose_score": self.dose_score, "dvh_score": self.dvh_score,
            "ptv_score": self.ptv_score, "oar_score": self.oar_score,
            "criteria_pass_rate": self.pass_rate, "missing_rois": list(self.missing_rois),
            "rois": rois, "criteria": [asdict(c) for c in self.criteria]})


@dataclass
class CohortResult:
    """Per-patient results and the cohort scores (pooled as OpenKBP does)."""

    protocol: str
    patients: list[PatientResult] = field(default_factory=list)
    #: protocol lint (:func:`dosepred.protocol.lint`) for this cohort: shown by ``dosepred evaluate``
    #: and written as the JSON key ``warnings``
    warnings: list[str] = field(default_factory=list)

    @property
    def dose_score(self) -> float:
        """OpenKBP dose score: mean over patients of the mean |ref - pred| in the possible-dose mask (Gy)."""
        return _mean(p.dose_score for p in self.patients)

    @property
    def dvh_score(self) -> float:
        """OpenKBP DVH score: mean |ref - pred| over all patients' DVH metrics (Gy)."""
        return _mean(e for p in self.patients for e in p.dvh_errors)

    @property
    def ptv_score(self) -> float:
        """Mean |ref - pred| over all patients' target dose metrics of the protocol (Gy)."""
        return _mean(e for p in self.patients for e in p.ptv_errors)

    @property
    def oar_score(self) -> float:
        """Mean |ref - pred| over all patients' OAR dose metrics of the protocol (Gy)."""
        return _mean(e for p in self.patients for e in p.oar_errors)

    def _checked(self) -> list[CriterionResult]:
        return [c for p in self.patients for c in p.checked]

    @property
    def criteria_pass_rate(self) -> float:
        """% of the checked criteria (all patients) that the prediction passes."""
        ch = self._checked()
        return 100.0 * sum(bool(c.pred_pass) for c in ch) / len(ch) if ch else math.nan

    @property
    def reference_pass_rate(self) -> float:
        """% of the checked criteria (all patients) that the reference plan passes."""
        ch = self._checked()
        return 100.0 * sum(bool(c.ref_pass) for c in ch) / len(ch) if ch else math.nan

    @property
    def criteria_agreement(self) -> float:
        """% of the checked criteria where prediction and reference plan agree (both pass or both fail)."""
        ch = self._checked()
        return 100.0 * sum(bool(c.agree) for c in ch) / len(ch) if ch else math.nan

    def summary(self) -> dict[str, float]:
        """The cohort numbers (NaN where undefined)."""
        return {"dose_score": self.dose_score, "dvh_score": self.dvh_score, "ptv_score": self.ptv_score,
                "oar_score": self.oar_score, "criteria_pass_rate": self.criteria_pass_rate,
                "reference_pass_rate": self.reference_pass_rate,
                "criteria_agreement": self.criteria_agreement}

    def criteria_table(self) -> list[dict[str, Any]]:
        """Per criterion (in protocol order): patients checked, pass counts of pred and ref."""
        rows: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        for p in self.patients:
            for c in p.criteria:
                if not c.checked:
                    continue
                key = (c.roi, c.metric, c.direction)
                r = rows.setdefault(key, {"roi": c.roi, "metric": c.metric, "criterion": c.name,
                                          "n": 0, "pred_pass": 0, "ref_pass": 0, "agree": 0})
                r["n"] += 1
                r["pred_pass"] += bool(c.pred_pass)
                r["ref_pass"] += bool(c.ref_pass)
                r["agree"] += bool(c.agree)
        return list(rows.values())

    def metric_rows(self) -> list[dict[str, Any]]:
        """The protocol's metric values, one row per patient and (ROI, metric) in protocol order:
        ``patient, roi, metric, unit, reference, prediction, difference`` (prediction - reference;
        NaN where a value could not be computed). ROIs a patient lacks have no row."""
        rows: list[dict[str, Any]] = []
        for p in self.patients:
            seen: set[tuple[str, str]] = set()
            for c in p.criteria:
                if (c.roi, c.metric) in seen:
                    continue
                seen.add((c.roi, c.metric))
                rows.append({"patient": p.id, "roi": c.roi, "metric": c.metric, "unit": c.unit,
                             "reference": c.ref, "prediction": c.pred, "difference": c.pred - c.ref})
        return rows

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN as null) with keys ``patients, dose_score, dvh_score,
        ptv_score, oar_score, criteria_pass_rate, per_patient`` plus ``protocol``,
        ``reference_pass_rate``, ``criteria_agreement``."""
        out: dict[str, Any] = {"protocol": self.protocol, "patients": [p.id for p in self.patients]}
        out.update(self.summary())
        out["warnings"] = list(self.warnings)
        out["per_patient"] = [p.to_dict() for p in self.patients]
        return _clean(out)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_json` atomically (temporary name, then rename)."""
        from .fsutil import write_json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_json())


def metrics_table(result: CohortResult, title: str | None = None) -> Any:
    """A rich Table of :meth:`CohortResult.metric_rows` (reference and prediction per patient and
    criterion metric, and their difference) for the console."""
    from rich.table import Table

    t = Table(title=title or f"metric values, protocol {result.protocol} (prediction - reference)")
    for col in ("patient", "ROI", "metric", "reference", "prediction", "difference"):
        t.add_column(col, justify="left" if col in ("patient", "ROI", "metric") else "right")
    last = None
    for r in result.metric_rows():
        if last is not None and r["patient"] != last:
            t.add_section()
        last = r["patient"]
        t.add_row(r["patient"], r["roi"], f"{r['metric']} ({r['unit']})",
                  *("-" if v != v else f"{v:.2f}" for v in (r["reference"], r["prediction"])),
                  "-" if r["difference"] != r["difference"] else f"{r['difference']:+.2f}")
    return t


# ---------------------------------------------------------------------------------- evaluation

_OPENKBP: Protocol | None = None


def _openkbp() -> Protocol:
    global _OPENKBP
    if _OPENKBP is None:
        _OPENKBP = load_protocol("openkbp")
    return _OPENKBP


def as_dose_array(pred: Any, shape: tuple[int, ...], pid: str = "?") -> np.ndarray:
    """A prediction (numpy array or torch tensor, optionally with leading singleton axes) as a
    float array of ``shape``; raises ValueError naming the patient on a grid mismatch."""
    if hasattr(pred, "detach"):  # torch tensor, maybe on the GPU
        pred = pred.detach().float().cpu().numpy()
    a = np.asarray(pred)
    while a.ndim > len(shape) and a.shape[0] == 1:
        a = a[0]
    if a.shape != tuple(shape):
        raise ValueError(f"patient {pid}: predicted dose has shape {np.shape(pred)}, but the reference grid "
                         f"is {tuple(shape)}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    return a


def _needed(protocol: Protocol) -> dict[str, list[str]]:
    """ROI -> metric strings to compute: the openkbp metrics plus the protocol's, deduplicated."""
    out: dict[str, list[str]] = {}
    for c in list(_openkbp().criteria) + list(protocol.criteria):
        ms = out.setdefault(c.roi, [])
        if c.metric not in ms:
            ms.append(c.metric)
    return out


def _abs_diff_sum(a: np.ndarray, b: np.ndarray) -> float:
    """sum |a - b| accumulated in float64 (float32 inputs are subtracted in float32: exact to ~1e-7
    relative per voxel, which moves a dose score by far less than 1e-6 Gy)."""
    if np.result_type(a, b) == np.float32:
        d = np.subtract(a, b)
    else:
        d = np.subtract(a, b, dtype=np.float64)
    np.abs(d, out=d)
    return float(d.sum(dtype=np.float64))


def _abs_sum_outside(a: np.ndarray, box: tuple[slice, ...]) -> float:
    """sum |a| over the voxels of a 3-D ``a`` outside ``box``, as six slabs (no mask volume)."""
    (z0, z1), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in box)
    slabs = (a[:z0], a[z1:], a[z0:z1, :y0], a[z0:z1, y1:], a[z0:z1, y0:y1, :x0], a[z0:z1, y0:y1, x1:])
    return float(sum(np.abs(s).sum(dtype=np.float64) for s in slabs if s.size))


#: a prediction with more than this fraction of its dose outside the possible-dose mask is refused
MAX_DOSE_OUTSIDE_MASK = 0.5


def _check_prediction(ref: Patient, pred: np.ndarray, predc: np.ndarray, maskc: np.ndarray, full: bool,
                      box: tuple[slice, ...]) -> None:
    """Refuse a predicted dose that cannot be scored honestly: non-finite values (NaN would drop the
    patient from every mean), or most of its dose outside the possible-dose mask (a file written for
    another patient or grid). Messages name the patient and the prediction file when known."""
    src = ref.meta.get("prediction_file")
    where = f"patient {ref.id}: " + (f"{src}: " if src else "")
    bad = int(np.count_nonzero(~np.isfinite(pred)))
    if bad:
        kinds = [k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if np.any(f(pred))]
        raise ValueError(f"{where}the predicted dose holds {bad} non-finite value(s) "
                         f"({' and '.join(kinds)}); a dose is a finite number of Gy in every voxel")
    a = np.abs(predc, dtype=np.float64)
    total = float(a.sum()) + (0.0 if full else _abs_sum_outside(pred, box))
    if total > 0:
        outside = total - float(a[maskc].sum())
        if outside > MAX_DOSE_OUTSIDE_MASK * total:
            raise ValueError(f"{where}{100 * outside / total:.0f} % of the predicted dose lies outside the "
                             "possible-dose mask; is it a prediction for another patient or grid?")


def evaluate_patient(ref: Patient, pred_dose: Any, protocol: Protocol | str = "openkbp") -> PatientResult:
    """Evaluate one predicted dose against the reference patient's dose.

    ``protocol``: a :class:`Protocol` or a name/path for :func:`load_protocol`. It is checked
    against the patient's RoiSet (unknown ROI or missing prescription -> ProtocolError).
    """
    if ref.dose is None:
        raise ValueError(f"patient {ref.id}: the reference has no dose to compare with")
    protocol = load_protocol(protocol, ref.roi_set)
    pred = as_dose_array(pred_dose, ref.shape, ref.id)
    rs = ref.roi_set
    # Work inside the box outside which the reference dose, mask and ROIs are zero (known from the
    # cache or the CSV reader; else the whole grid). The dose score's numerator is over ALL voxels,
    # so the prediction's dose outside the box is added separately.
    box = ref.support_box()
    full = box is None or all(s.start == 0 and s.stop == n for s, n in zip(box, ref.shape, strict=True))
    if full:
        box = tuple(slice(0, n) for n in ref.shape)
    assert ref.possible_dose_mask is not None and box is not None
    n_mask = int(np.count_nonzero(ref.possible_dose_mask[box]))
    if n_mask == 0:
        raise ValueError(f"patient {ref.id}: the possible-dose mask is empty")
    refc = ref.dose[box]
    predc = pred[box]
    _check_prediction(ref, pred, predc, ref.possible_dose_mask[box], full, box)
    total = _abs_diff_sum(refc, predc) + (0.0 if full else _abs_sum_outside(pred, box))
    dose_score = float(total / n_mask)
    refd = np.ascontiguousarray(refc).ravel()
    predd = np.ascontiguousarray(predc).ravel()

    needed = _needed(protocol)
    openkbp_names = {(c.roi, c.metric) for c in _openkbp().criteria}
    idx = roi_voxel_indices(ref, [r for r in needed if r in rs], box)
    vox = ref.voxel_volume_mm3
    values: dict[tuple[str, str], MetricValue] = {}
    missing: list[str] = []
    for roi, ms in needed.items():
        if roi not in idx:
            if roi in rs:
                missing.append(roi)
            continue  # openkbp ROIs absent from a non-OpenKBP RoiSet are simply not evaluated
        rx = protocol.prescription(roi, rs)
        computable = [m for m in ms if not (parse_metric(m).needs_prescription and rx is None)]
        r_vals, p_vals = roi_metrics_pair(refd[idx[roi]], predd[idx[roi]], computable, vox, rx)
        for m, rv, pv in zip(computable, r_vals, p_vals, strict=True):
            values[(roi, m)] = MetricValue(roi, m, rs[roi].kind, rv, pv)

    dvh_errors = [v.error for k, v in values.items() if k in openkbp_names]
    ptv_errors: list[float] = []
    oar_errors: list[float] = []
    seen: set[tuple[str, str]] = set()
    criteria: list[CriterionResult] = []
    for c in protocol.criteria:
        v = values.get((c.roi, c.metric))
        if v is None:
            continue
        if c.parsed.is_dose and (c.roi, c.metric) not in seen:
            seen.add((c.roi, c.metric))
            if v.kind == "target":
                ptv_errors.append(v.error)
            elif v.kind == "oar":
                oar_errors.append(v.error)
        rx = protocol.prescription(c.roi, rs)
        criteria.append(CriterionResult(
            name=c.resolved_name(rx), roi=c.roi, metric=c.metric, direction=c.direction,
            limit=c.limit_value(rx), goal=c.goal_value(rx), unit=c.unit, priority=c.priority,
            ref=v.ref, pred=v.pred, ref_pass=c.check(v.ref, rx), pred_pass=c.check(v.pred, rx),
            ref_goal=c.check(v.ref, rx, goal=True), pred_goal=c.check(v.pred, rx, goal=True)))
    return PatientResult(ref.id, dose_score, list(values.values()), dvh_errors, ptv_errors, oar_errors,
                         criteria, tuple(missing))


def evaluate_cohort(pairs: Iterable[tuple[Patient, Any]], protocol: Protocol | str = "openkbp",
                    progress: bool = False) -> CohortResult:
    """Evaluate ``(reference patient, predicted dose)`` pairs; the iterable may be lazy so only one
    patient is in memory at a time."""
    proto = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    it: Iterable[tuple[Patient, Any]] = pairs
    if progress:
        from .progress import track
        it = track(pairs, description="evaluating")
    out = CohortResult(proto.name)
    present: set[str] = set()
    for ref, pred in it:
        r = evaluate_patient(ref, pred, proto)
        out.patients.append(r)
        present.update(n for n in ref.roi_set.names if n not in r.missing_rois and n not in ref.missing_rois)
    if out.patients:
        from .protocol import lint

        out.warnings = lint(proto, present)
    return out


# ------------------------------------------------------------------------------ prediction files

#: File names tried for a patient's prediction in a prediction folder, in order. ``{id}`` is the
#: reference patient id. To support a new format, add a pattern here and a reader in
#: :data:`PREDICTION_READERS` keyed by the file-name suffix.
PREDICTION_PATTERNS = ("{id}.csv", "{id}.nii.gz", "{id}.nii")


def _read_csv(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    from .io.openkbp import read_dose_csv

    return read_dose_csv(path, grid=shape)


def _read_nifti(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        from .io import nifti  # written by the NIfTI reader; optional until it lands
        reader = nifti.read_dose
    except (ImportError, AttributeError):
        raise ValueError(f"{path}: NIfTI predictions need dosepred.io.nifti.read_dose, which is not "
                         "available in this version; write predictions as OpenKBP pt_N.csv") from None
    return np.asarray(reader(path), dtype=np.float32)


PREDICTION_READERS = {".csv": _read_csv, ".nii.gz": _read_nifti, ".nii": _read_nifti}


def find_prediction(pred_dir: str | os.PathLike, pid: str) -> Path | None:
    """The prediction file of patient ``pid`` in ``pred_dir`` (``pt_N.csv``, ``pt_N.nii.gz``), or None."""
    d = Path(pred_dir)
    for pat in PREDICTION_PATTERNS:
        f = d / pat.format(id=pid)
        if f.is_file():
            return f
    return None


def read_prediction(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """Read one predicted dose file (format chosen by suffix) on a grid of ``shape``."""
    path = Path(path)
    for suffix, reader in PREDICTION_READERS.items():
        if path.name.endswith(suffix):
            return reader(path, shape)
    raise ValueError(f"{path}: unknown prediction format (expected {', '.join(PREDICTION_READERS)})")


def _fast_reference(src: str | os.PathLike) -> bool:
    """A cache or an OpenKBP folder: the sources evaluation reads itself, cropped and sparse."""
    from .io import cache
    from .io.source import source_kind

    return cache.is_cache(src) or source_kind(src) == "openkbp"


def reference_ids(src: str | os.PathLike) -> list[str]:
    """Patient ids of a reference source (cache, OpenKBP, NIfTI or DICOM folder), without loading
    arrays."""
    from .io import cache, openkbp
    from .io.source import open_source, source_kind

    if cache.is_cache(src):
        return cache.Cache.open(src).ids
    kind = source_kind(src)
    if kind == "openkbp" or (kind is None and openkbp.is_openkbp_folder(src)):
        return [f.name for f in openkbp.patient_folders(src)]
    return open_source(src).ids


@functools.lru_cache(maxsize=8)
def _rtdose_matches(reference: str, prediction: str, stamp: int = 0) -> dict[str, Path]:
    """Reference id -> predicted RTDOSE file of a prediction folder holding RTDOSE files (what
    ``predict --format dicom`` writes): matched by the RTSTRUCT/RTPLAN they reference, else
    FrameOfReference, else PatientID (:func:`dosepred.io.dicom.match_rtdose`)."""
    from .io import dicom
    from .io.source import open_source

    doses = dicom.scan_rtdoses(prediction)
    if not doses:
        return {}
    heads = open_source(reference).headers()
    out: dict[str, Path] = {}
    for pid, meta in heads.items():
        f = dicom.match_rtdose(pid, meta, doses)
        if f is not None:
            out[pid] = f
    return out


def _has_dicom(folder: Path) -> bool:
    return any(f.suffix.lower() == ".dcm" for f in folder.rglob("*.dcm"))


def match_predictions(reference: str | os.PathLike, prediction: str | os.PathLike
                      ) -> tuple[list[tuple[str, Path | None]], list[str]]:
    """Pair reference ids with prediction files: ([(id, file or None for a cache)], missing ids).

    ``prediction`` is a folder of per-patient files or a dosepred cache holding doses.
    """
    from .io import cache

    ids = reference_ids(reference)
    pred = Path(prediction)
    if not pred.is_dir():
        raise FileNotFoundError(f"prediction folder {pred} does not exist")
    if cache.is_cache(pred):
        have = set(cache.Cache.open(pred).ids)
        return [(i, None) for i in ids if i in have], [i for i in ids if i not in have]
    found = [(i, find_prediction(pred, i)) for i in ids]
    if any(f is None for _, f in found) and _has_dicom(pred):
        rd = _rtdose_matches(str(reference), str(prediction), pred.stat().st_mtime_ns)
        found = [(i, f if f is not None else rd.get(i)) for i, f in found]
    return [(i, f) for i, f in found if f is not None], [i for i, f in found if f is None]


def load_references(src: str | os.PathLike, ids: list[str] | None = None, with_ct: bool = False
                    ) -> Iterable[Patient]:
    """Reference patients for evaluation from a cache or an OpenKBP folder.

    Evaluation needs no CT, so unless ``with_ct`` it is not read (the CT is a zero volume and
    ``meta["ct_loaded"]`` is False): the biggest CSV file and the biggest cache array are skipped.
    Without the CT, the patients carry their support box (:meth:`Patient.support_box`).
    """
    from .io import cache
    from .io.cache import load_patients

    if with_ct or not _fast_reference(src):
        yield from load_patients(src, ids=ids)
        return
    if cache.is_cache(src):
        c = cache.Cache.open(src)
        rs = c.roi_set
        for pid in ids if ids is not None else c.ids:
            try:
                yield c.load(pid, rs, with_ct=False)
            except cache.CacheError as err:
                raise ValueError(str(err)) from None
        return
    for r in _csv_references(src, ids):
        full = tuple(slice(0, n) for n in r.shape)
        p = r.patient(full)
        if r.box is not None:
            p.set_support_box(r.box)
        yield p


Box = tuple[slice, ...]


def _box_of_coords(coords: list[tuple[np.ndarray, ...]]) -> Box | None:
    """Bounding box (slices) of voxel coordinates (tuples of per-axis index arrays); None if empty."""
    lo: list[int] = []
    hi: list[int] = []
    for c in coords:
        if c[0].size == 0:
            continue
        mins = [int(x.min()) for x in c]
        maxs = [int(x.max()) for x in c]
        lo = mins if not lo else [min(u, v) for u, v in zip(lo, mins, strict=True)]
        hi = maxs if not hi else [max(u, v) for u, v in zip(hi, maxs, strict=True)]
    if not lo:
        return None
    return tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))


def _union(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a if b is None else b
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _bshape(box: Box) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def _local(coords: tuple[np.ndarray, ...], box: Box) -> np.ndarray:
    """C-order flat indices inside ``box`` of voxel coordinates that lie in it."""
    return np.ravel_multi_index(tuple(c - s.start for c, s in zip(coords, box, strict=True)), _bshape(box))


def _embed(a: np.ndarray, box: Box, outer: Box) -> np.ndarray:
    """``a`` (the values on ``box``) on the larger ``outer`` box, zero elsewhere."""
    if box == outer:
        return a
    out = np.zeros(_bshape(outer), dtype=a.dtype)
    out[tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer, strict=True))] = a
    return out


@dataclass
class _SparseRef:
    """One OpenKBP reference read as sparse voxel lists (coordinates), before any dense array."""

    id: str
    shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    roi_set: Any
    mask: tuple[np.ndarray, ...]
    dose: tuple[np.ndarray, ...]
    dose_values: np.ndarray
    rois: list[tuple[int, tuple[np.ndarray, ...]]]
    missing: tuple[str, ...]
    meta: dict[str, Any]
    box: Box | None

    def patient(self, box: Box) -> Patient:
        """The reference on ``box`` (which must hold its support box), CT not loaded."""
        bs = _bshape(box)
        rs = self.roi_set
        mask = np.zeros(int(np.prod(bs)), bool)
        mask[_local(self.mask, box)] = True
        dose = np.zeros(mask.size, np.float32)
        dose[_local(self.dose, box)] = self.dose_values
        codes = np.zeros(mask.size, rs.dtype)
        for k, c in self.rois:
            codes[_local(c, box)] |= rs.dtype.type(1 << k)
        return Patient(self.id, np.zeros(bs, np.int16), codes.reshape(bs), rs, self.spacing, mask.reshape(bs),
                       dose.reshape(bs), self.missing, dict(self.meta))


def _csv_references(src: str | os.PathLike, ids: list[str] | None) -> Iterable[_SparseRef]:
    from .io import openkbp

    if not openkbp.is_openkbp_folder(src):
        raise ValueError(f"{src} is neither a dosepred cache (dataset.json) nor an OpenKBP folder (pt_*)")
    rs = openkbp.RoiSet.openkbp()
    grid = openkbp.GRID
    want = set(ids) if ids is not None else None
    for f in openkbp.patient_folders(src):
        if want is not None and f.name not in want:
            continue
        pid = f.name
        for req in ("dose.csv", "possible_dose_mask.csv", "voxel_dimensions.csv"):
            if not (f / req).is_file():
                raise ValueError(f"patient {pid}: {f} lacks {req}")
        spacing = openkbp.read_spacing(f / "voxel_dimensions.csv", pid)
        midx, _ = openkbp.read_sparse(f / "possible_dose_mask.csv", False, pid=pid)
        didx, dvals = openkbp.read_sparse(f / "dose.csv", True, pid=pid)
        assert dvals is not None
        mask = np.unravel_index(midx, grid)
        dose = np.unravel_index(didx, grid)
        nonzero = dvals != 0
        rois = []
        missing = []
        for k, name in enumerate(rs.names):
            rf = f / f"{name}.csv"
            if not rf.is_file():
                missing.append(name)
                continue
            ridx, _ = openkbp.read_sparse(rf, False, pid=pid)
            if len(ridx) == 0:  # as the import does: an empty file is an error, not a missing ROI
                raise openkbp.OpenKBPFormatError(openkbp.empty_roi_message(pid, rf))
            rois.append((k, np.unravel_index(ridx, grid)))
        box = _box_of_coords([mask, tuple(c[nonzero] for c in dose)] + [c for _, c in rois])
        yield _SparseRef(pid, grid, spacing, rs, mask, dose, dvals.astype(np.float32), rois, tuple(missing),
                         {"source": str(f), "format": "openkbp", "ct_loaded": False}, box)


def _prediction_crop(prediction: str | os.PathLike, pred_cache: Any, pid: str, shape: tuple[int, ...]
                     ) -> tuple[np.ndarray, Box | None]:
    """A predicted dose as (values on a box, the box) such that it is zero outside the box; the box
    is None for an all-zero dose. Only the prediction's own non-zero extent is made dense."""
    from .io import cache, openkbp

    full = tuple(slice(0, n) for n in shape)
    if pred_cache is not None:
        e = pred_cache.entry(pid)
        try:
            arrays, box = cache.read_arrays(pred_cache.root / e["file"], ("dose",), pid, crop=True)
        except cache.CacheError as err:
            raise ValueError(str(err)) from None
        d = arrays["dose"]
        if d is None:
            raise ValueError(f"patient {pid}: the prediction cache {prediction} holds no dose")
        if box is None:
            box = full
        if tuple(e["shape"]) != tuple(shape) or d.shape != _bshape(box):
            raise ValueError(f"patient {pid}: predicted dose has shape {tuple(e['shape'])}, but the "
                             f"reference grid is {tuple(shape)}")
        return d, box
    f = find_prediction(prediction, pid)
    assert f is not None
    if f.name.endswith(".csv"):
        idx, vals = openkbp.read_sparse(f, True, grid=shape, pid=f.stem)
        assert vals is not None
        keep = vals != 0
        coords = tuple(c[keep] for c in np.unravel_index(idx, shape))
        box = _box_of_coords([coords])
        if box is None:
            return np.zeros((0, 0, 0), np.float32), None
        d = np.zeros(int(np.prod(_bshape(box))), np.float32)
        d[_local(coords, box)] = vals[keep]
        return d.reshape(_bshape(box)), box
    return as_dose_array(read_prediction(f, shape), shape, pid), full


_READ_AHEAD_THREAD = "dosepred-read-ahead"


def _read_ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield ``items`` while one worker thread already produces the next ``depth`` of them.

    Reading a patient is mostly file I/O, CRC checks and numpy scatters, which release the GIL, so
    on a multi-core machine it overlaps with the evaluation of the previous patient. Items come in
    order; an exception of the producer is raised where its item would have come. ``depth=0``: plain
    iteration in the caller's thread.
    """
    if depth <= 0:
        yield from items
        return
    end = object()

    def produce() -> Any:
        return next(items, end)

    pool = ThreadPoolExecutor(1, thread_name_prefix=_READ_AHEAD_THREAD)
    pending: collections.deque = collections.deque()
    try:
        pending.extend(pool.submit(produce) for _ in range(depth))
        while pending:
            item = pending.popleft().result()
            if item is end:
                return
            pending.append(pool.submit(produce))
            yield item
    finally:
        # An abandoned generator may be finalised by the garbage collector inside the worker itself
        # (while it runs ``next(items)``): then neither join the worker nor close the producer.
        in_worker = threading.current_thread().name.startswith(_READ_AHEAD_THREAD)
        for f in pending:
            f.cancel()
        pool.shutdown(wait=not in_worker)
        close = getattr(items, "close", None)
        if close is not None and not in_worker:  # the worker is idle now: close the producer
            close()


def iter_pairs(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str],
               with_ct: bool = False, crop: bool | None = None, read_ahead: int = 1, compact: bool = False
               ) -> Iterator[tuple[Patient, np.ndarray]]:
    """Lazily yield (reference patient, predicted dose) for ``ids``, reading ahead ``read_ahead``
    patients in a worker thread (0: none, one patient in memory at a time; 1, the default: two).
    The reference CT is read only ``with_ct`` (the report's dose slices need it).

    ``crop`` (default: ``not with_ct``): yield each pair on the smallest box that holds every non-zero
    voxel of the reference dose, possible-dose mask, ROIs and the predicted dose (``meta["crop_box"]``,
    ``[[start, stop]] * 3`` on the original grid), never building full-grid arrays. All scores are
    unchanged, since both doses are zero outside that box; without ``crop`` arrays are full-grid.

    ``compact`` (with ``crop``; for scoring only): where reference and prediction are both version-2
    caches with the same possible-dose mask and no dose outside it (predictions written by
    ``dosepred predict --format cache``), yield the pair as voxel lists instead, a Patient of shape
    ``(1, 1, n)`` over the mask's voxels and the ROI voxels outside it (``meta["compact"]``): no
    box-sized array is built and every score is unchanged. Other pairs come as boxes.
    """
    return _read_ahead(_iter_pairs(reference, prediction, ids, with_ct, crop, compact), read_ahead)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _compact_pair(ref_cache: Any, pred_cache: Any, pid: str, rs: Any) -> tuple[Patient, np.ndarray] | None:
    """A reference and a prediction, both version-2 cache files with one data box and possible-dose
    mask and no dose outside the mask, as voxel lists (see :func:`iter_pairs`); None otherwise."""
    from .io import cache

    er, ep = ref_cache.entry(pid), pred_cache.entry(pid)
    if tuple(er["shape"]) != tuple(ep["shape"]):
        return None
    try:
        r = cache.read_voxels(ref_cache.root / er["file"], pid)
        p = cache.read_voxels(pred_cache.root / ep["file"], pid, rois=False)
    except cache.CacheError as err:
        raise ValueError(str(err)) from None
    if (r is None or p is None or r["dose"] is None or p["dose"] is None or r["dose_outside_mask"]
            or p["dose_outside_mask"] or r["box"] != p["box"]
            or not np.array_equal(r["mask_bits"], p["mask_bits"])):
        return None
    # ROI voxels: their rank among the mask's voxels (C order, as the dose values are stored), from
    # popcounts of the packed mask bytes; the ones outside the mask go after the mask's voxels
    bits = r["mask_bits"]
    pop = _POPCOUNT8[bits]
    before = np.cumsum(pop, dtype=np.int64) - pop  # mask voxels in the bytes before each byte
    n = int(before[-1] + pop[-1]) if bits.size else 0
    if r["dose"].size != n or p["dose"].size != n:
        raise ValueError(f"patient {pid}: cache file holds {r['dose'].size} / {p['dose'].size} dose values "
                         f"for {n} possible-dose voxels")
    ridx = r["roi_index"].astype(np.intp)
    byte_at, bit_at = ridx >> 3, (ridx & 7).astype(np.uint16)
    byte = bits[byte_at].astype(np.uint16)  # packbits order: the first voxel is the high bit
    hit = ((byte >> (7 - bit_at)) & 1).astype(bool)
    pos = before[byte_at] + _POPCOUNT8[byte >> (8 - bit_at)]
    out = ~hit
    pos[out] = n + np.arange(int(out.sum()))
    total = n + int(out.sum())
    codes = np.zeros(total, rs.dtype)
    codes[pos] = r["roi_codes"]
    mask = np.zeros(total, bool)
    mask[:n] = True
    ref_dose = np.zeros(total, np.float32)
    ref_dose[:n] = r["dose"]
    pred = np.zeros(total, np.float32)
    pred[:n] = p["dose"]
    shape = (1, 1, total)
    ref = Patient(pid, np.zeros(shape, np.int16), codes.reshape(shape), rs, tuple(er["spacing"]),
                  mask.reshape(shape), ref_dose.reshape(shape), tuple(er.get("missing_rois", ())),
                  {**er.get("meta", {}), "ct_loaded": False, "compact": True})
    return ref, pred.reshape(shape)


def _prediction_file(prediction: str | os.PathLike, pred_cache: Any, pid: str) -> str:
    if pred_cache is not None:
        return str(pred_cache.root / pred_cache.entry(pid)["file"])
    f = find_prediction(prediction, pid)
    return str(f) if f is not None else str(prediction)


def _iter_pairs(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str], with_ct: bool,
                crop: bool | None, compact: bool = False) -> Iterator[tuple[Patient, np.ndarray]]:
    from .io import cache

    crop = (not with_ct) if crop is None else crop
    pred_cache = cache.Cache.open(prediction) if cache.is_cache(prediction) else None
    rtdoses: dict[str, Path] = {}
    if pred_cache is None and Path(prediction).is_dir() and _has_dicom(Path(prediction)):
        rtdoses = _rtdose_matches(str(reference), str(prediction), Path(prediction).stat().st_mtime_ns)
    if rtdoses or not _fast_reference(reference):  # placed by geometry: whole grids, no crop
        crop = False
    if crop and compact and pred_cache is not None and cache.is_cache(reference):
        ref_cache = cache.Cache.open(reference)
        rs = ref_cache.roi_set
        for pid in ids:
            pair = _compact_pair(ref_cache, pred_cache, pid, rs)
            if pair is None:  # not the same mask etc.: this patient on its box
                pair = next(_iter_pairs(reference, prediction, [pid], with_ct, crop))
            pair[0].meta["prediction_file"] = _prediction_file(prediction, pred_cache, pid)
            yield pair
        return
    if not crop:
        for ref in load_references(reference, ids, with_ct):
            if pred_cache is not None:
                try:
                    d = pred_cache.load_dose(ref.id)
                except cache.CacheError as err:
                    raise ValueError(str(err)) from None
                if d is None:
                    raise ValueError(f"patient {ref.id}: the prediction cache {prediction} holds no dose")
                ref.meta["prediction_file"] = str(pred_cache.root / pred_cache.entry(ref.id)["file"])
            else:
                f = find_prediction(prediction, ref.id) or rtdoses.get(ref.id)
                assert f is not None
                if f.suffix.lower() == ".dcm":
                    d = _read_rtdose_on(f, ref)
                else:
                    d = read_prediction(f, ref.shape)
                ref.meta["prediction_file"] = str(f)
            yield ref, as_dose_array(d, ref.shape, ref.id)
        return
    for pid, shape, ref_box, make_ref in _reference_crops(reference, ids):
        pd, pbox = _prediction_crop(prediction, pred_cache, pid, shape)
        box = _union(ref_box, pbox) or tuple(slice(0, 1) for _ in shape)
        ref = make_ref(box)
        ref.meta["crop_box"] = [[s.start, s.stop] for s in box]
        ref.meta["prediction_file"] = _prediction_file(prediction, pred_cache, pid)
        pred = _embed(pd, pbox, box) if pbox is not None else np.zeros(_bshape(box), np.float32)
        yield ref, pred


def _read_rtdose_on(path: Path, ref: Patient) -> np.ndarray:
    """A predicted RTDOSE resampled onto the reference patient's grid in patient coordinates."""
    from .io import dicom

    dose, g = dicom.read_rtdose(path)
    assert ref.geometry is not None
    out, inside = dicom.dose_on_grid(dose, g, ref.geometry, ref.shape)
    mask = np.asarray(ref.possible_dose_mask, dtype=bool)
    uncovered = int((mask & ~inside).sum())
    if uncovered:
        frac = 100.0 * uncovered / max(int(mask.sum()), 1)
        warnings.warn(f"patient {ref.id}: the predicted RTDOSE {path} does not cover {uncovered} voxels "
                      f"({frac:.1f}%) of the possible-dose mask; they count as 0 Gy", stacklevel=2)
    return out


def _reference_crops(src: str | os.PathLike, ids: list[str] | None) -> Iterable[tuple[str, tuple[int, ...],
                                                                                      Box | None, Any]]:
    """(id, grid shape, support box, box -> reference Patient on that box) per reference patient."""
    from .io import cache

    if cache.is_cache(src):
        c = cache.Cache.open(src)
        rs = c.roi_set
        for pid in ids if ids is not None else c.ids:
            e = c.entry(pid)
            try:
                arrays, box = cache.read_arrays(c.root / e["file"], (*cache._EVAL_FIELDS, "roi_voxels"), pid,
                                                crop=True)
            except cache.CacheError as err:
                raise ValueError(str(err)) from None
            shape = tuple(e["shape"])
            if box is None:  # version-1 file: full-grid arrays
                box = tuple(slice(0, n) for n in shape)

            def make(outer: Box, pid=pid, e=e, arrays=arrays, box=box) -> Patient:
                dose = arrays["dose"]
                codes = _embed(arrays["roi_codes"], box, outer)
                p = Patient(pid, np.zeros(_bshape(outer), np.int16), codes,
                            rs, tuple(e["spacing"]), _embed(arrays["possible_dose_mask"], box, outer),
                            None if dose is None else _embed(dose, box, outer),
                            tuple(e.get("missing_rois", ())), {**e.get("meta", {}), "ct_loaded": False})
                known = arrays.get("roi_voxels")
                if known is not None:  # the stored non-zero-code voxels, as flat indices into the box
                    idx, vals = known
                    if box != outer:
                        local = np.unravel_index(idx, _bshape(box))
                        idx = np.ravel_multi_index(tuple(c + (s.start - o.start) for c, s, o in
                                                         zip(local, box, outer, strict=True)), _bshape(outer))
                    p.set_roi_voxels(idx, vals)
                return p
            yield pid, shape, box, make
        return
    for r in _csv_references(src, ids):
        yield r.id, r.shape, r.box, r.patient
