"""Knowledge-based plan QA: a clinical plan against the dose the model predicts as achievable.

::

    from dosepred.qa import run_qa
    result = run_qa("models/openkbp-mae-cdm", "plans/", "openkbp-clinical", coverage=0.9)
    result.to_json()   # {"coverage", "model", "patients": [{"id", "criteria": [...]}], "summary", ...}

For every patient and criterion of the protocol: the plan's value, the predicted achievable value,
the calibrated interval at ``coverage`` (:mod:`dosepred.calibration`; the model must have a
``calibration.json``), the plan's pass/fail against the limit, and flags (:data:`FLAG_*`):

- ``OAR dose above achievable`` - an OAR metric (lower is better) above the interval; the flag
  text says how much might be spared: plan - predicted (Gy, or % for V-metrics);
- ``target hot spot above achievable`` - the same for a target metric where lower is better
  (D1%, Dmax, V110%);
- ``target coverage below achievable`` - a target metric (higher is better) below the interval;
- ``plan better than predicted`` - beyond the interval on the good side;
- reliability: ``OAR overlaps a target``, ``ROI volume outside training range``, ``voxel spacing
  outside training range``, ``criterion not calibrated`` (the family's interval is used).

A plan's *potential improvement* (Gy) is the sum of plan - predicted over its OAR and hot-spot flags
plus predicted - plan over its coverage flags (dose metrics only); the cohort summary ranks plans by
it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .calibration import (
    FAMILIES,
    CalibrationError,
    band_offsets,
    family_offsets,
    interval,
    load_calibration,
    metric_family,
    quantile_rule,
    roi_features,
)
from .patient import Patient, RoiSet

FLAG_OAR_ABOVE = "OAR dose above achievable"
FLAG_HOT_ABOVE = "target hot spot above achievable"
FLAG_COVERAGE_BELOW = "target coverage below achievable"
FLAG_BETTER = "plan better than predicted"
FLAG_OVERLAP = "OAR overlaps a target"
FLAG_VOLUME = "ROI volume outside training range"
FLAG_SPACING = "voxel spacing outside training range"
FLAG_UNCALIBRATED = "criterion not calibrated"
#: Flags that say the plan might be improved (they add to the potential improvement).
IMPROVEMENT_FLAGS = (FLAG_OAR_ABOVE, FLAG_HOT_ABOVE, FLAG_COVERAGE_BELOW)
RELIABILITY_FLAGS = (FLAG_OVERLAP, FLAG_VOLUME, FLAG_SPACING, FLAG_UNCALIBRATED)
#: An OAR counts as overlapping a target from this % of its voxels inside one.
OVERLAP_PCT = 1.0
#: Relative tolerance on the training range of spacings and ROI volumes.
RANGE_TOL = 0.02


def lower_is_better(direction: str | None, metric: str, kind: str) -> bool:
    """Whether a smaller value of the metric is the better plan: the criterion's direction when it has
    one; else OARs lower, target hot-spot metrics (Dmax, D<=5%, D<x>cc, V>100%) lower, other target
    metrics (coverage) higher."""
    if direction is not None:
        return direction == "<="
    from .metrics import parse_metric

    m = parse_metric(metric)
    if kind != "target":
        return True
    if m.kind == "Dmax" or (m.kind == "D" and (m.unit == "cc" or (m.value or 0) <= 5)):
        return True
    return m.kind == "V" and m.unit == "%" and (m.value or 0) > 100


def flags_for(plan: float, predicted: float, low: float, high: float, kind: str, lower_better: bool,
              unit: str = "Gy") -> tuple[list[str], float]:
    """Improvement flags of one value and its potential improvement (in ``unit``; 0 when none)."""
    if lower_better and plan > high:
        gain = plan - predicted
        name = FLAG_OAR_ABOVE if kind != "target" else FLAG_HOT_ABOVE
        return [f"{name}: {gain:.1f} {unit} might be spared"], gain
    if not lower_better and plan < low:
        gain = predicted - plan
        name = FLAG_COVERAGE_BELOW if kind == "target" else "OAR dose below achievable"
        return [f"{name}: {gain:.1f} {unit} below the prediction"], gain
    if (lower_better and plan < low) or (not lower_better and plan > high):
        return [FLAG_BETTER], 0.0
    return [], 0.0


def _outside(v: float, lo: float, hi: float) -> bool:
    return v < lo * (1 - RANGE_TOL) or v > hi * (1 + RANGE_TOL)


@dataclass
class CriterionQA:
    roi: str
    metric: str
    plan: float
    predicted: float
    low: float
    high: float
    limit: float | None
    plan_pass: bool | None
    flags: list[str]
    # not in the JSON contract's criterion object
    name: str = ""
    family: str = ""
    unit: str = "Gy"
    kind: str = "oar"
    lower_better: bool = True
    gain: float = 0.0

    def to_json(self) -> dict[str, Any]:
        def f(x: float) -> float | None:
            return float(x) if x == x and math.isfinite(x) else None

        return {"roi": self.roi, "metric": self.metric, "plan": f(self.plan), "predicted": f(self.predicted),
                "low": f(self.low), "high": f(self.high),
                "limit": None if self.limit is None else float(self.limit),
                "plan_pass": self.plan_pass, "flags": list(self.flags)}


@dataclass
class PatientQA:
    id: str
    criteria: list[CriterionQA]
    patient_flags: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def potential_gy(self) -> float:
        return float(sum(c.gain for c in self.criteria if c.unit == "Gy" and c.gain > 0))

    @property
    def improvement_flags(self) -> list[CriterionQA]:
        return [c for c in self.criteria if any(f.startswith(IMPROVEMENT_FLAGS) for f in c.flags)]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "criteria": [c.to_json() for c in self.criteria]}


@dataclass
class QAResult:
    coverage: float
    model: str
    protocol: str
    calibration_protocol: str
    patients: list[PatientQA]
    methods: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> list[dict[str, Any]]:
        """Plans ranked by potential improvement (Gy), most first."""
        rows = []
        for p in self.patients:
            flagged = p.improvement_flags
            rows.append({"id": p.id, "potential_gy": round(p.potential_gy, 2),
                         "flags": len(flagged),
                         "failed": sum(c.plan_pass is False for c in p.criteria),
                         "flagged": [f"{c.roi} {c.metric}" for c in flagged],
                         "reliability": sorted({f.split(":")[0].split(" (")[0] for c in p.criteria
                                                for f in c.flags if f.startswith(RELIABILITY_FLAGS)}
                                               | set(p.patient_flags))})
        rows.sort(key=lambda r: (-r["potential_gy"], -r["flags"], r["id"]))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        return rows

    def to_json(self) -> dict[str, Any]:
        """The JSON contract (``coverage``, ``model``, ``patients``) plus ``protocol``,
        ``calibration`` and the ranked ``summary``."""
        return {"coverage": self.coverage, "model": self.model,
                "patients": [p.to_json() for p in self.patients],
                "protocol": self.protocol,
                "calibration": {"protocol": self.calibration_protocol, "methods": self.methods},
                "summary": self.summary()}

    def write_json(self, path: str | os.PathLike) -> None:
        import json

        from .fsutil import write_json

        json.dumps(self.to_json())  # fail before touching the file
        write_json(path, self.to_json())


# ------------------------------------------------------------------------------------ sources
def to_roi_set(p: Patient, roi_set: RoiSet) -> Patient:
    """The patient with its ROIs re-encoded in ``roi_set``'s bit order (by name); ROIs of the set
    that the patient lacks are recorded missing, others are dropped. Prescriptions: ``roi_set``'s."""
    if p.roi_set.names == roi_set.names and p.roi_set == roi_set:
        return p
    masks = {n: p.mask(n) for n in roi_set.names if n in p.roi_set and n not in p.missing_rois}
    return Patient.from_masks(p.id, p.ct, masks, roi_set, p.spacing, p.possible_dose_mask, p.dose,
                              dict(p.meta), p.geometry)


def open_plans(src: str | os.PathLike) -> Iterator[Patient]:
    """Patients with their plan dose from any source (:func:`dosepred.io.source.open_source`: a cache,
    an OpenKBP folder, a NIfTI folder or a DICOM folder of CT + RTSTRUCT + RTDOSE)."""
    from .io.source import open_source

    yield from open_source(src).patients(require_dose=True)


# ---------------------------------------------------------------------------------------- qa
class QAChecker:
    """A loaded model and its calibration; :meth:`check` runs QA on one plan."""

    def __init__(self, model: str | os.PathLike, protocol: Any, coverage: float = 0.9,
                 device: Any = None) -> None:
        from .models.checkpoint import load_checkpoint, model_from_checkpoint, resolve_model_path
        from .predict import resolve_device
        from .protocol import load_protocol

        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}")
        self.model_path = resolve_model_path(model)
        self.calib = load_calibration(self.model_path)
        self._check_model_hash()
        ckpt = load_checkpoint(self.model_path)
        self.net = model_from_checkpoint(ckpt, resolve_device(device or "auto"))
        self.roi_set: RoiSet = self.net.config.roi_set
        self.protocol = load_protocol(protocol, self.roi_set, roi_owner="the model")
        self.coverage = coverage
        self.families = self.calib.get("families", {})
        self.methods = {f: d.get("method", "absolute") for f, d in self.families.items()}
        self.calibrated = set(self.calib.get("criteria", []))
        self.rule = quantile_rule(self.calib)
        self._bands: dict[str, Any] = {}
        self.ranges = self.calib.get("training_ranges") or {}
        self.warnings: list[str] = []
        self._check_protocol()

    def _check_model_hash(self) -> None:
        from .calibration import sha256_file

        want = self.calib.get("model_sha256")
        if want and sha256_file(self.model_path) != want:
            raise CalibrationError(f"{self.model_path.parent / 'calibration.json'} was computed for another "
                                   "model file (sha256 differs): recalibrate with `dosepred calibrate`")

    def _check_protocol(self) -> None:
        kinds = {r.name: r.kind for r in self.roi_set}
        missing: dict[str, list[str]] = {}
        for c in self.protocol.criteria:
            fam = metric_family(c.metric, kinds.get(c.roi, "oar"))
            if fam not in self.families:
                missing.setdefault(fam, []).append(c.name)
            else:
                fam_cal = self.families[fam]
                meth = self.methods[fam]
                lo, hi = family_offsets(fam_cal, meth, self.coverage, self.rule)
                ok = lo > -math.inf and hi < math.inf  # -inf / +inf: too few units for this coverage
                if not ok:
                    n = self.families[fam]["n"]
                    raise CalibrationError(f"coverage {self.coverage:g} needs more calibration units than "
                                           f"the {n} of family {fam}: ask for a lower --coverage")
        if missing:
            fams = "; ".join(f"{f} ({', '.join(v)})" for f, v in missing.items())
            raise CalibrationError(
                f"the calibration of {self.model_path.parent} (protocol {self.calib.get('protocol')!r}) "
                f"covers the families {', '.join(sorted(self.families))}, not {fams}: recalibrate with "
                f"`dosepred calibrate --protocol {self.protocol.name}`")
        if self.calib.get("protocol") != self.protocol.name:
            self.warnings.append(f"calibration computed for protocol {self.calib.get('protocol')!r}, QA "
                                 f"with {self.protocol.name!r}: criteria it did not see use their family's "
                                 "interval")

    def dvh_band(self, roi: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(levels %, lower, upper offsets in Gy) of ``roi``'s calibrated DVH band at the checker's
        coverage (:func:`dosepred.calibration.band_offsets`); None without one (calibrations before
        version 2, ROIs the calibration patients did not have)."""
        if roi not in self._bands:
            self._bands[roi] = band_offsets(self.calib.get("dvh_band"), roi, self.coverage, self.rule)
        return self._bands[roi]

    @property
    def has_dvh_band(self) -> bool:
        """Whether the calibration has a DVH band (version 2); else the report's band is illustrative."""
        return bool(self.calib.get("dvh_band"))

    def predict(self, plan: Patient) -> np.ndarray:
        from .predict import predict_dose

        return predict_dose(self.net, plan)

    def prepare(self, plan: Patient) -> Patient:
        """The plan in the model's ROI bit order (prediction brings it into the model's own space and
        the dose back onto the plan's grid, :func:`dosepred.predict.predict_dose`)."""
        if plan.dose is None:
            raise ValueError(f"patient {plan.id} has no dose: QA needs the plan's dose (RTDOSE)")
        return to_roi_set(plan, self.roi_set)

    def check(self, plan: Patient, pred: np.ndarray | None = None) -> tuple[PatientQA, np.ndarray, Patient]:
        """QA of one plan (its dose); returns the result, the predicted dose and the plan as checked
        (:meth:`prepare`; the predicted dose is on its grid)."""
        from .evaluation import evaluate_patient

        t0 = time.perf_counter()
        plan = self.prepare(plan)
        if pred is None:
            pred = self.predict(plan)
        res = evaluate_patient(plan, pred, self.protocol)
        feats = roi_features(plan, pred, [c.roi for c in res.criteria])
        kinds = {r.name: r.kind for r in self.roi_set}
        patient_flags: list[str] = []
        sp = self.ranges.get("spacing_mm") or {}
        if sp.get("min") and sp.get("max"):
            mine = sorted(plan.spacing)
            if any(_outside(v, lo, hi) for v, lo, hi in zip(mine, sp["min"], sp["max"], strict=True)):
                patient_flags.append(f"{FLAG_SPACING} ({', '.join(f'{v:.2f}' for v in plan.spacing)} mm)")
        vol_ranges = self.ranges.get("roi_volume_cc") or {}
        out: list[CriterionQA] = []
        for c in res.criteria:
            kind = kinds.get(c.roi, "oar")
            fam = metric_family(c.metric, kind)
            f = feats.get(c.roi, {"spread": 0.0, "volume_cc": math.nan, "target_overlap": 0.0})
            low, high = interval(c.pred, f"{c.roi} {c.metric}", self.families[fam], self.methods[fam],
                                 self.coverage, self.rule)
            lb = lower_is_better(c.direction, c.metric, kind)
            flags, gain = flags_for(c.ref, c.pred, low, high, kind, lb, c.unit)
            if kind != "target" and f["target_overlap"] >= OVERLAP_PCT:
                flags.append(f"{FLAG_OVERLAP} ({f['target_overlap']:.0f} % of its volume)")
            vr = vol_ranges.get(c.roi)
            if vr and f["volume_cc"] == f["volume_cc"] and _outside(f["volume_cc"], vr[0], vr[1]):
                flags.append(f"{FLAG_VOLUME} ({f['volume_cc']:.1f} cc; training {vr[0]:.1f}-{vr[1]:.1f} cc)")
            flags += patient_flags
            if self.calibrated and f"{c.roi} {c.metric}" not in self.calibrated:
                flags.append(f"{FLAG_UNCALIBRATED} (interval of the {fam} family)")
            out.append(CriterionQA(c.roi, c.metric, float(c.ref), float(c.pred), float(low), float(high),
                                   c.limit, c.ref_pass, flags, name=c.name, family=fam, unit=c.unit,
                                   kind=kind, lower_better=lb, gain=gain))
        return PatientQA(plan.id, out, patient_flags, time.perf_counter() - t0), pred, plan


def run_qa(model: str | os.PathLike, plans: str | os.PathLike | Iterable[Patient], protocol: Any,
           coverage: float = 0.9, report: str | os.PathLike | None = None, progress: bool = False,
           report_max: int | None = None, point_mm: tuple[float, float, float] | None = None) -> QAResult:
    """QA of every plan of ``plans``; with ``report`` also writes ``report/report.html`` (views through
    ``point_mm``, a patient point in LPS mm, else through the target centroid)."""
    chk = QAChecker(model, protocol, coverage)
    it: Iterable[Patient] = open_plans(plans) if isinstance(plans, (str, os.PathLike)) else plans
    if progress:
        from .progress import track
        it = track(it, description="plan QA")
    writer = None
    if report is not None:
        from .report.qa import QAReportWriter

        writer = QAReportWriter(report, chk, max_patients=report_max, point_mm=point_mm)
    patients: list[PatientQA] = []
    for p in it:
        pq, pred, checked = chk.check(p)
        patients.append(pq)
        if writer is not None:
            writer.add(checked, pred, pq)
    if not patients:
        raise ValueError(f"no plans found in {plans}")
    res = QAResult(coverage, str(chk.model_path.parent), chk.protocol.name, str(chk.calib.get("protocol")),
                   patients, chk.methods, chk.warnings)
    if writer is not None:
        writer.finish(res)
    return res


__all__ = ["FAMILIES", "QAChecker", "QAResult", "flags_for", "lower_is_better", "open_plans", "run_qa"]
