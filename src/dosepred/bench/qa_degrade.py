"""``dosepred bench qa-power``'s plans: the untouched criteria of a plan and plans made worse by a
known amount (:mod:`dosepred.bench.qa_power` runs the benchmark; its docstring says what it measures).

``oar``   every OAR with a dose criterion gets its dose raised by X Gy inside the OAR, fading to 0
          over ``fade_mm`` outside it (a raised cosine, only where dose is possible): its Dmean (and
          every D-metric of it) rises by exactly X (:func:`raise_oar`; an OAR reaching outside the
          possible-dose mask, where the evaluator reads 0 Gy, is raised inside it by what raises each
          criterion by exactly X, one plan per criterion);
``cold``  every target with the ``cold_metric`` criterion (D95%) gets a cold spot: the dose lowered
          in a ball holding ``cold_fraction`` of its volume, centred on its voxel nearest an OAR,
          fading over ``fade_mm``, as deep as needed to lower the metric by exactly X Gy
          (:func:`cold_spot`);
``hot``   every target with the ``hot_metric`` criterion (V110%) gets a hot spot: the dose raised in
          a ball around its deepest voxel holding twice X % of its volume, by the least amount that
          raises the metric by X points of the volume (:func:`hot_spot`).

Every degraded value is recomputed by the evaluator and the change checked against X
(:func:`degrade`). :class:`PowerConfig` holds the amounts and the benchmark's other settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dvh import roi_metrics
from ..errors import InputError
from ..evaluation import evaluate_patient
from ..metrics import parse_metric
from ..patient import Patient
from ..protocol import BoundProtocol, Protocol
from ..qa.conformal import DEFAULT_RULE
from ..qa.families import Unit, lower_is_better, metric_family

DEFAULT_OAR_GY = (2.0, 3.0, 4.0, 6.0, 8.0)
DEFAULT_COLD_GY = (1.0, 2.0, 3.0)
DEFAULT_HOT_PCT = (2.0, 5.0, 10.0)
#: A degraded Dmean / D-metric must change by the amount within this (Gy): it is exact by construction.
EXACT_TOL_GY = 1e-3


@dataclass
class PowerConfig:
    """The benchmark's settings: protocol, coverage and splits of the cross-validation, and the
    degradations (amounts per kind, fade, cold-spot size, the target metrics degraded)."""

    protocol: str = "openkbp-clinical"
    coverage: float = 0.9
    splits: int = 200
    calibration_patients: int | None = None  # default: two thirds of the patients (22 of 33)
    seed: int = 0
    oar_gy: tuple[float, ...] = DEFAULT_OAR_GY
    cold_gy: tuple[float, ...] = DEFAULT_COLD_GY
    hot_pct: tuple[float, ...] = DEFAULT_HOT_PCT
    fade_mm: float = 5.0
    cold_fraction: float = 0.10
    cold_metric: str = "D95%"
    hot_metric: str = "V110%"
    rule: str = DEFAULT_RULE

    def check(self) -> None:
        if not 0 < self.coverage < 1:
            raise InputError(f"--coverage must be between 0 and 1 (e.g. 0.9), got {self.coverage}")
        if self.splits < 1:
            raise InputError(f"--splits must be at least 1, got {self.splits}")
        if self.calibration_patients is not None and self.calibration_patients < 2:
            raise InputError(f"--calibration-patients must be at least 2, got {self.calibration_patients}")
        for flag, v in (("--oar-gy", self.oar_gy), ("--cold-gy", self.cold_gy), ("--hot-pct", self.hot_pct)):
            if any(not (x > 0 and math.isfinite(x)) for x in v):
                raise InputError(f"{flag} {','.join(f'{x:g}' for x in v)}: amounts must be > 0")
        if any(x >= 50 for x in self.hot_pct):
            raise InputError("--hot-pct: a hot spot is at most 49 % of the target volume")
        if not self.fade_mm >= 0:
            raise InputError(f"fade_mm must be >= 0, got {self.fade_mm}")
        if not 0 < self.cold_fraction < 1:
            raise InputError(f"cold_fraction must be between 0 and 1, got {self.cold_fraction}")


# ------------------------------------------------------------------------------- degradations
def fade_weight(inside: np.ndarray, spacing: Sequence[float], fade_mm: float) -> np.ndarray:
    """1 in ``inside``, a raised cosine falling to 0 at ``fade_mm`` from it (Euclidean distance in mm
    between voxel centres), 0 beyond; float32, the shape of ``inside``."""
    from scipy.ndimage import distance_transform_edt

    w = np.zeros(inside.shape, dtype=np.float32)
    nz = np.nonzero(inside)
    if not nz[0].size:
        return w
    pad = [int(math.ceil(fade_mm / s)) + 1 for s in spacing]
    box = tuple(slice(max(int(a.min()) - p, 0), min(int(a.max()) + p + 1, n))
                for a, p, n in zip(nz, pad, inside.shape, strict=True))
    d = distance_transform_edt(~inside[box], sampling=spacing)
    w[box] = _cosine(d, fade_mm)
    return w


def _cosine(d: np.ndarray, fade_mm: float) -> np.ndarray:
    """1 at d <= 0, 0.5 (1 + cos(pi d / fade)) for 0 < d < fade, 0 beyond (d in mm)."""
    if fade_mm <= 0:
        return (d <= 0).astype(np.float32)
    return np.where(d <= 0, 1.0, np.where(d < fade_mm, 0.5 * (1 + np.cos(np.pi * d / fade_mm)), 0.0)
                    ).astype(np.float32)


def _ball(patient: Patient, centre: Sequence[int], radius_mm: float, fade_mm: float) -> np.ndarray:
    """1 within ``radius_mm`` of the voxel ``centre``, fading to 0 over ``fade_mm`` beyond (float32)."""
    w = np.zeros(patient.shape, dtype=np.float32)
    reach = radius_mm + fade_mm
    box = tuple(slice(max(c - int(math.ceil(reach / s)) - 1, 0), min(c + int(math.ceil(reach / s)) + 2, n))
                for c, s, n in zip(centre, patient.spacing, patient.shape, strict=True))
    axes = [((np.arange(b.start, b.stop) - c) * s) for b, c, s in zip(box, centre, patient.spacing,
                                                                      strict=True)]
    d = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    w[box] = _cosine(d - radius_mm, fade_mm)
    return w


def _where_dose(patient: Patient, inside: np.ndarray) -> np.ndarray:
    assert patient.possible_dose_mask is not None
    return patient.possible_dose_mask | inside


def raise_oar(patient: Patient, roi: str, gy: float, fade_mm: float, metric: str | None = None,
              rx: float | None = None) -> np.ndarray:
    """The plan dose with ``gy`` added inside ``roi`` and a raised-cosine fade over ``fade_mm`` outside
    it (only where dose is possible): every voxel of the ROI gets exactly ``gy`` more, so its Dmean and
    every D-metric of it rise by exactly ``gy``. The evaluator reads a plan's dose outside its
    possible-dose mask as 0 Gy, so nothing is added there; for an ROI reaching outside the mask (as
    OpenKBP's OARs do) the ROI's voxels inside it are raised by the amount that raises ``metric``,
    as scored, by exactly ``gy`` (found by bisection; ``gy`` itself without ``metric``)."""
    assert patient.dose is not None and patient.possible_dose_mask is not None
    inside = patient.mask(roi)
    w = fade_weight(inside, patient.spacing, fade_mm)
    w[~_where_dose(patient, inside)] = 0.0
    w[inside] = 1.0
    pdm = patient.possible_dose_mask
    w[~pdm] = 0.0
    dose = patient.dose.astype(np.float32)
    if metric is None or pdm[inside].all():
        return (dose + np.float32(gy) * w).astype(np.float32)
    base = np.where(pdm, dose, np.float32(0))[inside]
    w_in = w[inside]
    before = _metric(patient, base, metric, rx)

    def rise(a: float) -> float:
        return _metric(patient, (base + np.float32(a) * w_in).astype(np.float32), metric, rx) - before

    hi = 2 * gy * inside.sum() / max(int((pdm & inside).sum()), 1)  # twice what Dmean needs
    a = _bisect(rise, gy, hi, rising=True) if rise(hi) >= gy else gy  # else: degrade names the shortfall
    return (dose + np.float32(a) * w).astype(np.float32)


def _metric(patient: Patient, dose_in_roi: np.ndarray, metric: str, rx: float | None) -> float:
    return roi_metrics(dose_in_roi, [metric], patient.voxel_volume_mm3, rx)[0]


def _bisect(f: Callable[[float], float], target: float, hi: float, rising: bool, steps: int = 80) -> float:
    """Smallest ``a`` in [0, hi] with f(a) >= target (``rising``) or f(a) <= target (falling), f monotone."""
    lo = 0.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if (f(mid) >= target) if rising else (f(mid) <= target):
            hi = mid
        else:
            lo = mid
    return hi


def cold_spot(patient: Patient, roi: str, metric: str, gy: float, rx: float | None, fade_mm: float,
              fraction: float) -> np.ndarray:
    """The plan dose with a cold spot in target ``roi`` lowering ``metric`` (a D-metric) by ``gy``: the
    dose lowered (not below 0) in a ball holding ``fraction`` of the target's voxels, centred on its
    voxel nearest an OAR, fading over ``fade_mm``; the depth is found by bisection (the metric is
    continuous and falls as the spot deepens)."""
    from scipy.spatial import cKDTree

    assert patient.dose is not None
    inside = patient.mask(roi)
    ptv = np.argwhere(inside)
    sp = np.asarray(patient.spacing)
    oars = [r.name for r in patient.roi_set if r.kind == "oar" and r.name in patient.present_rois]
    centre = ptv[len(ptv) // 2]
    if oars:
        union = np.zeros(patient.shape, dtype=bool)
        for r in oars:
            union |= patient.mask(r)
        dist, _ = cKDTree(np.argwhere(union) * sp).query(ptv * sp)
        centre = ptv[int(np.argmin(dist))]
    radius = float(np.quantile(np.sqrt((((ptv - centre) * sp) ** 2).sum(axis=1)), fraction))
    w = _ball(patient, centre, radius, fade_mm)
    w[~_where_dose(patient, inside)] = 0.0
    base, wv = patient.dose[inside], w[inside]  # float32, the arithmetic of the degraded dose itself
    m0 = _metric(patient, base, metric, rx)

    def f(a: float) -> float:
        return _metric(patient, np.maximum(base - np.float32(a) * wv, np.float32(0)), metric, rx)

    hi = float(base.max()) + 1.0
    if f(hi) > m0 - gy:
        raise InputError(f"--cold-gy {gy:g}: patient {patient.id}: no cold spot of {fraction:.0%} of {roi} "
                         f"lowers its {metric} ({m0:.2f} Gy) by {gy:g} Gy")
    a = _bisect(f, m0 - gy, hi, rising=False)
    return np.maximum(patient.dose - np.float32(a) * w, np.float32(0))


def hot_spot(patient: Patient, roi: str, metric: str, pct: float, rx: float | None, fade_mm: float
             ) -> np.ndarray:
    """The plan dose with a hot spot in target ``roi`` raising ``metric`` (a V-metric, % of the ROI
    volume) by at least ``pct`` points, by the least dose added (bisection; a V-metric moves by whole
    voxels): the dose raised in a ball around the target's deepest voxel holding ``2 pct`` % of its
    voxels (plus those already hot), fading over ``fade_mm``."""
    from scipy.ndimage import distance_transform_edt

    assert patient.dose is not None
    inside = patient.mask(roi)
    nz = np.nonzero(inside)
    box = tuple(slice(max(int(a.min()) - 1, 0), min(int(a.max()) + 2, n))
                for a, n in zip(nz, inside.shape, strict=True))
    depth = distance_transform_edt(inside[box], sampling=patient.spacing)
    centre = [int(i) + b.start for i, b in zip(np.unravel_index(int(np.argmax(depth)), depth.shape), box,
                                               strict=True)]
    v0 = _metric(patient, patient.dose[inside], metric, rx)
    ptv = np.argwhere(inside)
    sp = np.asarray(patient.spacing)
    share = min(1.0, (2 * pct + v0) / 100.0)
    radius = float(np.quantile(np.sqrt((((ptv - centre) * sp) ** 2).sum(axis=1)), share))
    w = _ball(patient, centre, radius, fade_mm)
    w[~_where_dose(patient, inside)] = 0.0
    # Plan doses are stored rounded (OpenKBP's CSVs: 0.01 Gy or so), so many voxels share a dose and a
    # weight and would cross the threshold together; a fixed jitter of 1e-4 of the weight separates
    # them, so the metric moves one voxel at a time.
    w *= (1.0 + 1e-4 * np.random.default_rng(0).random(w.shape)).astype(np.float32)
    base, wv = patient.dose[inside], w[inside]

    def f(a: float) -> float:
        return _metric(patient, base + np.float32(a) * wv, metric, rx)

    hi = 2.0 * (float(base.max()) + (rx or 0.0)) + 1.0
    if f(hi) < v0 + pct:
        raise InputError(f"--hot-pct {pct:g}: patient {patient.id}: no hot spot raises {roi} {metric} "
                         f"({v0:.1f} %) by {pct:g} points")
    a = _bisect(f, v0 + pct, hi, rising=True)
    return patient.dose + np.float32(a) * w


# --------------------------------------------------------------------------------- collection
@dataclass
class Crit:
    """One criterion of one untouched plan: plan and predicted value and what QA needs to flag it."""

    patient: str
    key: str  # "ROI metric"
    roi: str
    metric: str
    family: str
    kind: str
    lower_better: bool
    unit: str
    plan: float
    predicted: float
    passes: dict[str, float] = field(default_factory=dict)  # the value on other test-time passes

    def unit_record(self) -> Unit:
        return Unit(self.patient, self.roi, self.metric, self.family, self.plan, self.predicted, 0.0)


@dataclass
class Case:
    """One degraded plan: which criterion was degraded (``key``), how, by how much, the change the
    evaluator measured, and every criterion's plan value on the degraded plan."""

    patient: str
    what: str  # oar / cold / hot
    roi: str
    key: str
    family: str
    amount: float
    change: float
    values: dict[str, float]


def criteria_of(plan: Patient, pred: np.ndarray, protocol: BoundProtocol | Protocol | str
                ) -> tuple[list[Crit], Any]:
    res = evaluate_patient(plan, pred, protocol)
    kinds = {r.name: r.kind for r in plan.roi_set}
    out, seen = [], set()
    for c in res.criteria:
        key = f"{c.roi} {c.metric}"
        if key in seen or not (c.ref == c.ref and c.pred == c.pred):
            continue
        seen.add(key)
        kind = kinds.get(c.roi, "oar")
        rx = plan.roi_set.prescription(c.roi) if c.roi in plan.roi_set else None
        out.append(Crit(plan.id, key, c.roi, c.metric, metric_family(c.metric, kind), kind,
                        lower_is_better(c.direction, c.metric, kind, rx), c.unit, float(c.ref),
                        float(c.pred)))
    return out, res


def _values(plan: Patient, dose: np.ndarray, pred: np.ndarray, protocol: BoundProtocol) -> dict[str, float]:
    """Every criterion's plan value of ``plan`` with ``dose`` as its plan dose."""
    q = plan.with_dose(dose)
    box = plan.support_box()
    if box is not None:  # the degradations stay where dose is possible, inside the box
        q.set_support_box(box)
    return {f"{c.roi} {c.metric}": float(c.ref) for c in evaluate_patient(q, pred, protocol).criteria}


def degrade(plan: Patient, pred: np.ndarray, crits: list[Crit], protocol: BoundProtocol, cfg: PowerConfig
            ) -> list[Case]:
    """The degraded plans of one patient (:func:`raise_oar`, :func:`cold_spot`, :func:`hot_spot`), each
    evaluated; a degradation that did not change its criterion by the amount is a bug (RuntimeError)."""
    cases: list[Case] = []
    by_roi: dict[str, list[Crit]] = {}
    for c in crits:
        by_roi.setdefault(c.roi, []).append(c)
    for roi, cs in by_roi.items():
        raised = [c for c in cs if c.kind != "target" and c.lower_better and parse_metric(c.metric).is_dose]
        rx = protocol.prescription(roi)
        apart = raised and not plan.possible_dose_mask[plan.mask(roi)].all()  # the ROI reaches outside it
        for gy in cfg.oar_gy if raised else ():
            vals = {}
            for c in raised:  # one raised plan for all, or one per criterion (raise_oar)
                if apart or not vals:
                    dose = raise_oar(plan, roi, gy, cfg.fade_mm, c.metric if apart else None, rx)
                    vals = _values(plan, dose, pred, protocol)
                change = vals[c.key] - c.plan
                if abs(change - gy) > EXACT_TOL_GY:
                    raise RuntimeError(f"patient {plan.id}: raising {roi} by {gy:g} Gy changed {c.key} by "
                                       f"{change:.6f} Gy")
                cases.append(Case(plan.id, "oar", roi, c.key, c.family, gy, change, vals))
        for c in cs:
            if c.kind == "target" and c.metric == cfg.cold_metric and not c.lower_better:
                for gy in cfg.cold_gy:
                    dose = cold_spot(plan, roi, c.metric, gy, rx, cfg.fade_mm, cfg.cold_fraction)
                    vals = _values(plan, dose, pred, protocol)
                    change = vals[c.key] - c.plan
                    if abs(change + gy) > EXACT_TOL_GY:
                        raise RuntimeError(f"patient {plan.id}: the cold spot of {gy:g} Gy changed {c.key} "
                                           f"by {change:.6f} Gy")
                    cases.append(Case(plan.id, "cold", roi, c.key, c.family, gy, change, vals))
            if c.kind == "target" and c.metric == cfg.hot_metric and c.lower_better:
                n_vox = int(plan.mask(roi).sum())
                for pct in cfg.hot_pct:
                    vals = _values(plan, hot_spot(plan, roi, c.metric, pct, rx, cfg.fade_mm), pred, protocol)
                    change = vals[c.key] - c.plan
                    if not pct - 1e-9 <= change <= pct + 100.0 / n_vox + 1e-9:  # within one voxel
                        raise RuntimeError(f"patient {plan.id}: the hot spot of {pct:g} % changed {c.key} "
                                           f"by {change:.4f} %")
                    cases.append(Case(plan.id, "hot", roi, c.key, c.family, pct, change, vals))
    return cases
