"""Scoring of predicted doses against reference patients: scores and protocol criteria.

Scoring works on :class:`~dosepred.Patient` objects and dose arrays, or on scoring cases; it reads
no files (the pairing of sources is :mod:`dosepred.evaluation.pairing`).

::

    from dosepred.evaluation import evaluate_patient, evaluate_cohort
    r = evaluate_patient(ref_patient, pred_dose, "openkbp-clinical")   # one patient
    c = evaluate_cohort([(ref, pred), ...], "openkbp-clinical")        # a cohort
    c.dose_score, c.dvh_score, c.ptv_score, c.oar_score, c.criteria_pass_rate
    c.to_json()   # {"patients", "dose_score", "dvh_score", "ptv_score", "oar_score",
                  #  "criteria_pass_rate", "per_patient", ...}

Definitions (OpenKBP: Babier et al., Med Phys 48(9), 2021, and its evaluator, ababier/open-kbp):

- **dose score** (OpenKBP): per patient ``sum over ALL voxels |ref - pred| / count(possible-dose
  mask)`` (the numerator is not masked: a prediction's dose outside the mask counts); the reference
  is 0 Gy outside the mask, as OpenKBP's are (a reference from another format with dose computed in
  air is read so, :class:`~dosepred.evaluation.case.ScoringCase`); cohort = mean over patients.
- **DVH score** (OpenKBP): mean over all (patient, ROI, metric) of ``|M_ref - M_pred|`` over the
  ``openkbp`` protocol's metrics by kind (OAR D0.1cc, Dmean; target D99%, D95%, D1%) of every OAR and
  target of the reference's ROI set (a clinic's PTV66 and its own OARs too; ROIs of kind ``other`` are
  not scored; :func:`dvh_metrics`), whatever protocol is evaluated; ROIs the reference patient lacks
  are skipped.
- **PTV score** / **OAR score**: the same mean over the *evaluated protocol's* dose metrics (Gy)
  of target / OAR ROIs (V-metrics, in %, are left out).
- **criteria**: each criterion with a limit is checked on the prediction and on the reference;
  ``criteria_pass_rate`` is the % of checked (patient, criterion) pairs the prediction passes,
  ``criteria_agreement`` the % where prediction and reference give the same verdict.

Metrics use OpenKBP's exact definitions (:mod:`dosepred.metrics`). Scoring reads one
:class:`~dosepred.evaluation.case.ScoringCase` per patient (:func:`evaluate_case`): both doses as
flat arrays over the scored voxels, the possible-dose voxels among them, each ROI's voxel indices,
the voxel volume and the prediction's dose on the voxels left out. :func:`evaluate_patient` builds it
from a Patient (:meth:`ScoringCase.from_patient`: on the box outside which the reference's dose, mask
and ROIs are zero when known, :meth:`Patient.support_box`, about a quarter of an OpenKBP grid); the
fast paths of :mod:`dosepred.evaluation.pairing` build it from what they read, so evaluating a
patient costs a few ms. ``pred_dose`` may be a numpy array or a torch tensor with the reference's
spatial shape (leading singleton batch/channel axes are dropped).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..constants import MAX_DOSE_GY
from ..dvh import roi_metrics_pair
from ..errors import InputError, name_some
from ..metrics import larger_than_roi, parse_metric
from ..patient import Patient, RoiSet
from ..progress import track
from ..protocol import BoundProtocol, Protocol, ProtocolError, bound_for, lint, load_protocol
from .case import ScoringCase, as_dose_array, check_finite, check_nonnegative, prediction_where, scorable

__all__ = ["MAX_DOSE_OUTSIDE_MASK", "CohortResult", "CriterionResult", "MetricValue", "PatientResult",
           "ScoringCase", "as_dose_array", "evaluate_case", "evaluate_cohort", "evaluate_patient"]


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
    #: the criterion's 1-based position in the protocol (:attr:`BoundCriterion.index
    #: <dosepred.protocol.bound.BoundCriterion.index>`): what plan QA looks a criterion's result up by
    #: (:meth:`PatientResult.by_criterion`); not in the JSON
    index: int = 0

    @property
    def checked(self) -> bool:
        return self.pred_pass is not None and self.ref_pass is not None

    @property
    def agree(self) -> bool | None:
        return None if not self.checked else self.pred_pass == self.ref_pass


def _criterion_json(c: CriterionResult) -> dict[str, Any]:
    """A criterion's object of the evaluate JSON: its fields but ``index`` (internal)."""
    d = asdict(c)
    del d["index"]
    return d


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
    dvh_errors: list[float]  # |ref - pred| of the DVH score's metrics (dvh_metrics)
    ptv_errors: list[float]  # |ref - pred| of the protocol's target dose metrics
    oar_errors: list[float]  # |ref - pred| of the protocol's OAR dose metrics
    criteria: list[CriterionResult]
    missing_rois: tuple[str, ...] = ()
    #: share of the predicted dose (sum of |dose|) outside the possible-dose mask, % (``predict`` writes 0)
    pred_outside_pct: float = 0.0
    #: ``D<x>cc`` metrics of ROIs smaller than ``x`` cc ("Brainstem D0.1cc (0.02 cc)"): their values are the
    #: ROI's minimum dose (:func:`dosepred.metrics.larger_than_roi`), named in a cohort warning
    small_rois: tuple[str, ...] = ()

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

    def by_criterion(self) -> dict[int, CriterionResult]:
        """The criteria's results keyed by their criterion's position in the protocol
        (:attr:`CriterionResult.index`, :attr:`BoundCriterion.index
        <dosepred.protocol.bound.BoundCriterion.index>`); a criterion that could not be computed (its ROI
        not contoured, a %Rx metric without prescription) has no entry."""
        return {c.index: c for c in self.criteria}

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
            "rois": rois, "criteria": [_criterion_json(c) for c in self.criteria]})


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
        """Per criterion (in protocol order): patients checked, pass counts of pred and ref.

        One row per criterion of the protocol (by its position, :attr:`CriterionResult.index`): two
        criteria on one ROI, metric and direction with different limits (``V110% <= 20 %`` required,
        ``<= 2 %`` desirable) are two rows, never one row that counts each patient twice."""
        rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for p in self.patients:
            for c in p.criteria:
                if not c.checked:
                    continue
                key = (c.index,) if c.index else (c.roi, c.metric, c.direction, c.limit, c.goal)
                r = rows.setdefault(key, {"roi": c.roi, "metric": c.metric, "criterion": c.name,
                                          "index": c.index, "n": 0, "pred_pass": 0, "ref_pass": 0,
                                          "agree": 0})
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


# ---------------------------------------------------------------------------------- evaluation

_OPENKBP: Protocol | None = None


def _openkbp() -> Protocol:
    global _OPENKBP
    if _OPENKBP is None:
        _OPENKBP = load_protocol("openkbp")
    return _OPENKBP


def dvh_metrics(roi_set: RoiSet) -> dict[str, list[str]]:
    """ROI -> the DVH score's metrics: OpenKBP's by kind (the ``openkbp`` protocol's metrics of its OARs,
    D0.1cc and Dmean, and of its targets, D99%, D95%, D1%) for every OAR and target of ``roi_set``, so a
    clinic's PTV66 counts as PTV70 does (by name only, its targets were left out); on OpenKBP's ROI set
    exactly the ``openkbp`` protocol's."""
    kinds = RoiSet.openkbp()
    by_kind: dict[str, list[str]] = {}
    for c in _openkbp().criteria:
        ms = by_kind.setdefault(kinds[c.roi].kind, [])
        if c.metric not in ms:
            ms.append(c.metric)
    return {r.name: by_kind[r.kind] for r in roi_set if r.kind in by_kind}


def _needed(protocol: Protocol, roi_set: RoiSet) -> dict[str, list[str]]:
    """ROI -> metric strings to compute: the DVH score's (:func:`dvh_metrics`) plus the protocol's,
    deduplicated."""
    out: dict[str, list[str]] = {n: list(ms) for n, ms in dvh_metrics(roi_set).items()}
    for c in protocol.criteria:
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


#: a prediction with more than this fraction of its dose outside the possible-dose mask is refused
MAX_DOSE_OUTSIDE_MASK = 0.5
#: patients whose predictions hold more than this share (%) of their dose outside the possible-dose
#: mask are named in one cohort warning (a prediction made from other data: another patient's under
#: this id, another contour of the body); ``dosepred predict`` writes none there
WARN_DOSE_OUTSIDE_MASK_PCT = 5.0


def _check_prediction(case: ScoringCase) -> float:
    """Refuse a predicted dose that cannot be scored honestly: non-finite values (NaN would drop the
    patient from every mean), a negative voxel (a dose is >= 0 Gy, as the reference's), a voxel
    over :data:`~dosepred.constants.MAX_DOSE_GY` (a dose in cGy), or most of its dose outside the
    possible-dose mask (a file written for another patient or grid).
    Messages name the patient and the prediction file when known. Returns the share (%) of the
    predicted dose outside the mask."""
    check_finite(case.pred, case.id, case.source)
    check_nonnegative(case.pred, case.id, case.source)
    where = prediction_where(case.id, case.source)
    if not np.isfinite(case.pred_outside):
        raise InputError(f"{where}the predicted dose holds non-finite values outside the scored voxels")
    top = float(case.pred.max()) if case.pred.size else 0.0
    if top > MAX_DOSE_GY:
        raise InputError(f"{where}the predicted dose reaches {top:.6g} Gy, over {MAX_DOSE_GY:g} Gy: a "
                         "dose in cGy? a dose is in Gy (divide by 100)")
    a = np.abs(case.pred, dtype=np.float64)
    total = float(a.sum()) + case.pred_outside
    if total > 0:
        outside = total - float(a[case.mask].sum())
        if outside > MAX_DOSE_OUTSIDE_MASK * total:
            raise InputError(f"{where}{100 * outside / total:.0f} % of the predicted dose lies outside the "
                             "possible-dose mask; is it a prediction for another patient or grid?")
        return 100.0 * max(outside, 0.0) / total
    return 0.0


def _bound(protocol: Protocol | BoundProtocol | str, roi_set: RoiSet, pid: str) -> BoundProtocol:
    """``protocol`` resolved for ``roi_set``: as given when it already is (no second validation: the
    caller bound and checked it), else loaded and bound (which validates), a protocol prescribing a
    target otherwise than ``roi_set`` refused as by :func:`evaluate_cohort`
    (:func:`_refuse_other_prescriptions`, patient ``pid``)."""
    if isinstance(protocol, BoundProtocol):
        bound = bound_for(protocol, roi_set)
        if bound is protocol:
            return bound
    else:
        bound = bound_for(load_protocol(protocol), roi_set)
    return _refuse_other_prescriptions(bound, pid)


def evaluate_patient(ref: Patient, pred_dose: Any,
                     protocol: Protocol | BoundProtocol | str = "openkbp") -> PatientResult:
    """Evaluate one predicted dose against the reference patient's dose (through its
    :class:`ScoringCase`; the reference's CT is not read and may be None).

    ``protocol``: a :class:`BoundProtocol` for the patient's RoiSet (what a cohort's evaluation
    passes: resolved once), or a :class:`Protocol` or a name/path for :func:`load_protocol`, then
    checked against the patient's RoiSet (unknown ROI or missing prescription -> ProtocolError).
    """
    if not isinstance(ref, Patient):  # (pred, ref) swapped was AttributeError: no attribute 'dose'
        raise InputError(f"evaluate_patient: the reference must be a Patient, got {_what(ref)}; the call is "
                         "evaluate_patient(reference, predicted_dose, protocol)")
    scorable(ref)
    bound = _bound(protocol, ref.roi_set, ref.id)
    return evaluate_case(ScoringCase.from_patient(ref, pred_dose), bound)


def evaluate_case(case: ScoringCase, protocol: Protocol | BoundProtocol | str = "openkbp") -> PatientResult:
    """Evaluate one :class:`ScoringCase` (what :func:`evaluate_patient` and the fast paths of
    :mod:`dosepred.evaluation.pairing` build); ``protocol`` as for :func:`evaluate_patient`."""
    bound = _bound(protocol, case.roi_set, case.id)
    if case.n_mask == 0:
        raise InputError(f"patient {case.id}: the possible-dose mask is empty")
    outside_pct = _check_prediction(case)
    # The dose score's numerator is over ALL voxels: the prediction's dose outside the scored
    # voxels (where the reference dose is zero) is added; the reference's dose outside the mask is not
    # (0 Gy there: ScoringCase).
    total = _abs_diff_sum(case.ref, case.pred) + case.pred_outside
    dose_score = float(total / case.n_mask)
    refd, predd, rs, idx, vox = case.ref, case.pred, case.roi_set, case.rois, case.voxel_mm3

    needed = _needed(bound.protocol, rs)
    dvh_names = {(roi, m) for roi, ms in dvh_metrics(rs).items() for m in ms}
    values: dict[tuple[str, str], MetricValue] = {}
    missing: list[str] = []
    for roi, ms in needed.items():
        if roi not in idx:
            if roi in rs:
                missing.append(roi)
            continue  # a protocol's ROIs absent from the RoiSet are not evaluated
        rx = bound.prescription(roi)
        computable = [m for m in ms if not (parse_metric(m).needs_prescription and rx is None)]
        r_vals, p_vals = roi_metrics_pair(refd[idx[roi]], predd[idx[roi]], computable, vox, rx)
        for m, rv, pv in zip(computable, r_vals, p_vals, strict=True):
            values[(roi, m)] = MetricValue(roi, m, rs[roi].kind, rv, pv)

    small = tuple(f"{roi} {m} ({len(idx[roi]) * vox / 1000:.2g} cc)" for roi, m in values
                  if larger_than_roi(parse_metric(m), len(idx[roi]), vox))
    dvh_errors = [v.error for k, v in values.items() if k in dvh_names]
    ptv_errors: list[float] = []
    oar_errors: list[float] = []
    seen: set[tuple[str, str]] = set()
    criteria: list[CriterionResult] = []
    for c in bound.criteria:
        v = values.get((c.roi, c.metric))
        if v is None:
            continue
        if c.parsed.is_dose and (c.roi, c.metric) not in seen:
            seen.add((c.roi, c.metric))
            if v.kind == "target":
                ptv_errors.append(v.error)
            elif v.kind == "oar":
                oar_errors.append(v.error)
        criteria.append(CriterionResult(
            name=c.name, roi=c.roi, metric=c.metric, direction=c.direction,
            limit=c.limit, goal=c.goal, unit=c.unit, priority=c.priority,
            ref=v.ref, pred=v.pred, ref_pass=c.check(v.ref), pred_pass=c.check(v.pred),
            ref_goal=c.check(v.ref, goal=True), pred_goal=c.check(v.pred, goal=True), index=c.index))
    return PatientResult(case.id, dose_score, list(values.values()), dvh_errors, ptv_errors, oar_errors,
                         criteria, tuple(missing), outside_pct, small)


def _refuse_other_prescriptions(bound: BoundProtocol, pid: str) -> BoundProtocol:
    """``bound``, or a :class:`ProtocolError` when its protocol prescribes a target of the reference
    otherwise than the reference (patient ``pid``, the first of its ROI set) where a criterion depends
    on it (:meth:`BoundProtocol.prescription_conflicts`): ``openkbp-clinical``'s PTV70 at 70 Gy on a
    reference whose PTV70 is prescribed 66 Gy would check its D99% against 66.5 Gy, not 62.7 Gy, and
    count V110% above 77 Gy, the plans and the predictions alike (QA and train refuse it too)."""
    if bound.prescription_conflicts():
        raise ProtocolError(
            f"protocol {bound.name!r} prescribes {bound.said_conflicts('the reference')} (patient {pid}): "
            "these criteria, relative to the prescription, would judge the reference plans and the "
            "predictions against another prescription than the plans'; give the protocol the reference's "
            "prescriptions (a protocol file with its own \"prescriptions\"), or, if the reference's are "
            "wrong, correct them (a DICOM reference: an ROI map with \"prescription\", --roi-map MAP.json)")
    bound.warn_roundings("the reference", f"patient {pid}: ")
    return bound


def _not_contoured(protocol: Protocol, patients: list[PatientResult], present: set[str]) -> list[str]:
    """One warning per ROI of the protocol's criteria that some patients lack (contoured in others):
    its criteria are not checked for them, which the criteria table shows only as a smaller count. An
    ROI contoured in no patient is :func:`~dosepred.protocol.lint`'s warning."""
    lacking: dict[str, list[str]] = {}
    for p in patients:
        have = {c.roi for c in p.criteria}
        for roi in protocol.rois:
            if roi in present and roi not in have:
                lacking.setdefault(roi, []).append(p.id)
    out = []
    for roi, ids in lacking.items():
        n = sum(c.roi == roi for c in protocol.criteria)
        crit = "its criterion is" if n == 1 else f"its {n} criteria are"
        out.append(f"{roi} is not contoured in {len(ids)} of {len(patients)} patients ({name_some(ids)}): "
                   f"{crit} not checked for them")
    return out


def _what(x: Any) -> str:
    """What ``x`` is, for a message: ``a Patient``, ``a numpy.ndarray``, ``a str``."""
    t = type(x)
    return "a Patient" if isinstance(x, Patient) else "a " + (
        t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}")


def _case_of(item: Any, i: int) -> ScoringCase:
    """The scoring case of ``evaluate_cohort``'s item ``i``: a ScoringCase, or the case of a (reference
    Patient, predicted dose) pair; anything else an InputError saying what it is (a bare Patient, the
    pair's order swapped, a triple: were TypeError / AttributeError from deep inside)."""
    if isinstance(item, ScoringCase):
        return item
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Patient):
        return ScoringCase.from_patient(item[0], item[1])
    if isinstance(item, (tuple, list)):
        got = f"a {len(item)}-item {type(item).__name__} of " + ", ".join(_what(x) for x in item[:3])
    else:
        got = _what(item)
    raise InputError(f"evaluate_cohort: item {i} is {got}; give (reference Patient, predicted dose) pairs "
                     "or ScoringCase objects")


def evaluate_cohort(pairs: Iterable[tuple[Patient, Any] | ScoringCase], protocol: Protocol | str = "openkbp",
                    progress: bool = False) -> CohortResult:
    """Evaluate ``(reference patient, predicted dose)`` pairs and/or :class:`ScoringCase` objects
    (:func:`dosepred.evaluation.iter_cases`); the iterable may be lazy so only one patient is in
    memory at a time."""
    proto = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
    it: Iterable[tuple[Patient, Any] | ScoringCase] = pairs
    if progress:
        it = track(pairs, description="evaluating")
    out = CohortResult(proto.name)
    present: set[str] = set()
    bound: dict[RoiSet, BoundProtocol] = {}  # resolved once per ROI set (one for a whole source)
    for item in it:
        case = _case_of(item, len(out.patients))
        if case.roi_set not in bound:
            bound[case.roi_set] = _refuse_other_prescriptions(proto.bind(case.roi_set), case.id)
        r = evaluate_case(case, bound[case.roi_set])
        out.patients.append(r)
        present.update(n for n in case.roi_set.names
                       if n not in r.missing_rois and n not in case.missing_rois)
    if out.patients:
        out.warnings = lint(proto, present)
        out.warnings += _not_contoured(proto, out.patients, present)
        off = [p for p in out.patients if p.pred_outside_pct > WARN_DOSE_OUTSIDE_MASK_PCT]
        if off:
            out.warnings.append(
                f"{len(off)} of {len(out.patients)} prediction(s) hold more than "
                f"{WARN_DOSE_OUTSIDE_MASK_PCT:g} % of their dose outside the reference's possible-dose mask: "
                + name_some([f"{p.id} ({p.pred_outside_pct:.0f} %)" for p in off])
                + "; made from other data (another patient's under this id, another body contour)? "
                "dosepred predict writes no dose there (a pt_N.csv of a DICOM or NIfTI patient written "
                "by dosepred before 2026-12-07 numbered its voxels in that patient's layout, not "
                "OpenKBP's: predict it again)")
        small = [f"{p.id} {s}" for p in out.patients for s in p.small_rois]
        if small:
            out.warnings.append(
                f"{len(small)} D<x>cc value(s) of an ROI smaller than x cc, which are the ROI's minimum "
                "dose, not the dose of its hottest x cc (OpenKBP's evaluator stops there): "
                + name_some(small))
    return out
