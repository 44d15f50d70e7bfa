"""``dosepred bench qa-power``: does plan QA catch a plan made worse by a known amount, and how often
does it flag a plan nobody touched?

Plan QA (:mod:`dosepred.qa`) flags a criterion when the plan's value lies beyond the calibrated
interval on the bad side. This benchmark measures, on patients with clinical plans the model was
not trained on (the OpenKBP validation split), cross-validated:

- **false alarms**: the share of untouched plan values flagged (per metric family), and of untouched
  plans with at least one flag;
- **sensitivity**: the share of plans degraded by a known amount that are flagged on the degraded
  criterion in the right direction (and on any criterion), per family and amount:

  ``oar``   every OAR with a dose criterion gets its dose raised by X Gy inside the OAR, fading to 0
            over ``fade_mm`` outside it (a raised cosine, only where dose is possible): its Dmean
            (and every D-metric of it) rises by exactly X; flagged right = ``OAR dose above
            achievable`` on that OAR's criterion;
  ``cold``  every target with the ``cold_metric`` criterion (D95%) gets a cold spot: the dose
            lowered in a ball holding ``cold_fraction`` of its volume, centred on its voxel nearest
            an OAR (where coverage is traded for sparing), fading over ``fade_mm``, as deep as needed
            to lower the metric by exactly X Gy (bisection); flagged right = ``target coverage
            below achievable`` on that criterion;
  ``hot``   every target with the ``hot_metric`` criterion (V110%) gets a hot spot: the dose raised
            in a ball around its deepest voxel holding twice X % of its volume, by the least amount
            that raises the metric by X points of the volume (within a voxel); flagged right =
            ``target hot spot above achievable``.

  Every degraded value is recomputed by the evaluator and the change checked against X.

Each split calibrates on ``calibration_patients`` patients (their untouched plans) with the same
conformal code as ``dosepred calibrate`` (:func:`dosepred.qa.conformal.fit_family`) and checks the
others with QA's flag rule (:func:`dosepred.qa.result.flags_for`): a degraded plan's prediction is its
untouched plan's (the prediction sees only the anatomy). Every method of
:data:`dosepred.qa.conformal.METHODS` is measured on the same splits, and so are locally adaptive
candidates (:data:`ADAPTIVE`) when the test-time passes they need are given: the normalised
interval scaled per unit by ``g(d) = a + b d``, ``d`` the disagreement of the criterion's value
between the plain prediction and another pass (left-right flipped, translated), ``a, b`` fitted to the
size of the calibration scores (cross-fitted per patient, as ``normalised`` is).

Predictions come from a cache (``dosepred predict --format cache``, flipped as plan QA predicts with a
calibration of version 3; ``--no-tta`` for older calibrations and for recovering the other passes:
computed once, the benchmark then runs in about a minute) or from the model, as plan QA predicts.
What it is not: a measure of what QA catches in real plans; the degradations are idealised (a
uniform excess, a spherical cold spot).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..patient import Patient
from ..qa.calibrate import flags_words, predictions_made_with
from ..qa.calibration import load_calibration
from ..qa.conformal import (
    DEFAULT_RULE,
    METHODS,
    apply_offsets,
    clip_to_range,
    criterion_norm,
    criterion_stats,
    family_offsets,
    fit_family,
    offsets,
)
from ..qa.families import FAMILIES, Unit, lower_is_better, metric_family
from ..qa.result import FLAG_COVERAGE_BELOW, FLAG_HOT_ABOVE, FLAG_OAR_ABOVE, IMPROVEMENT_FLAGS, flags_for

DEFAULT_OAR_GY = (2.0, 3.0, 4.0, 6.0, 8.0)
DEFAULT_COLD_GY = (1.0, 2.0, 3.0)
DEFAULT_HOT_PCT = (2.0, 5.0, 10.0)
#: Locally adaptive candidates: name -> the test-time passes whose disagreement is the difficulty.
ADAPTIVE = {"adaptive-flip": ("flip",), "adaptive-shift": ("shift",), "adaptive-passes": ("flip", "shift")}
#: A degraded Dmean / D-metric must change by the amount within this (Gy): it is exact by construction.
EXACT_TOL_GY = 1e-3
#: Floor of the adaptive scale g(d), as a share of the calibration scores' mean size.
G_FLOOR = 0.2
#: The issue-25 targets: OAR mean-dose false alarms at most 5 %, +3 Gy caught >= 60 %, +6 Gy >= 95 %,
#: coverage of every family within 3 points of nominal.
TARGETS = {"fa_max": 5.0, "sens": {3.0: 60.0, 6.0: 95.0}, "coverage_tol": 3.0}


@dataclass
class PowerConfig:
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
            raise ValueError(f"--coverage must be between 0 and 1 (e.g. 0.9), got {self.coverage}")
        if self.splits < 1:
            raise ValueError(f"--splits must be at least 1, got {self.splits}")
        for flag, v in (("--oar-gy", self.oar_gy), ("--cold-gy", self.cold_gy), ("--hot-pct", self.hot_pct)):
            if any(not (x > 0 and math.isfinite(x)) for x in v):
                raise ValueError(f"{flag} {','.join(f'{x:g}' for x in v)}: amounts must be > 0")
        if any(x >= 50 for x in self.hot_pct):
            raise ValueError("--hot-pct: a hot spot is at most 49 % of the target volume")
        if not self.fade_mm >= 0:
            raise ValueError(f"--fade-mm must be >= 0, got {self.fade_mm}")
        if not 0 < self.cold_fraction < 1:
            raise ValueError(f"cold_fraction must be between 0 and 1, got {self.cold_fraction}")


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


def raise_oar(patient: Patient, roi: str, gy: float, fade_mm: float) -> np.ndarray:
    """The plan dose with ``gy`` added inside ``roi`` and a raised-cosine fade over ``fade_mm`` outside
    it (only where dose is possible): every voxel of the ROI gets exactly ``gy`` more, so its Dmean and
    every D-metric of it rise by exactly ``gy``."""
    assert patient.dose is not None
    inside = patient.mask(roi)
    w = fade_weight(inside, patient.spacing, fade_mm)
    w[~_where_dose(patient, inside)] = 0.0
    w[inside] = 1.0
    return (patient.dose + np.float32(gy) * w).astype(np.float32)


def _metric(patient: Patient, dose_in_roi: np.ndarray, metric: str, rx: float | None) -> float:
    from ..dvh import roi_metrics

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
        raise ValueError(f"patient {patient.id}: no cold spot of {fraction:.0%} of {roi} lowers its {metric} "
                         f"by {gy:g} Gy")
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
        raise ValueError(f"patient {patient.id}: no hot spot raises {roi} {metric} by {pct:g} points")
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


def _criteria(plan: Patient, pred: np.ndarray, protocol: Any) -> tuple[list[Crit], Any]:
    from ..evaluation import evaluate_patient

    res = evaluate_patient(plan, pred, protocol)
    kinds = {r.name: r.kind for r in plan.roi_set}
    out, seen = [], set()
    for c in res.criteria:
        key = f"{c.roi} {c.metric}"
        if key in seen or not (c.ref == c.ref and c.pred == c.pred):
            continue
        seen.add(key)
        kind = kinds.get(c.roi, "oar")
        out.append(Crit(plan.id, key, c.roi, c.metric, metric_family(c.metric, kind), kind,
                        lower_is_better(c.direction, c.metric, kind), c.unit, float(c.ref), float(c.pred)))
    return out, res


def _values(plan: Patient, dose: np.ndarray, pred: np.ndarray, protocol: Any) -> dict[str, float]:
    """Every criterion's plan value of ``plan`` with ``dose`` as its plan dose."""
    from ..evaluation import evaluate_patient

    q = plan.with_dose(dose)
    box = plan.support_box()
    if box is not None:  # the degradations stay where dose is possible, inside the box
        q.set_support_box(box)
    return {f"{c.roi} {c.metric}": float(c.ref) for c in evaluate_patient(q, pred, protocol).criteria}


def degrade(plan: Patient, pred: np.ndarray, crits: list[Crit], protocol: Any, cfg: PowerConfig
            ) -> list[Case]:
    """The degraded plans of one patient (:func:`raise_oar`, :func:`cold_spot`, :func:`hot_spot`), each
    evaluated; a degradation that did not change its criterion by the amount is a bug (RuntimeError)."""
    from ..metrics import parse_metric

    cases: list[Case] = []
    by_roi: dict[str, list[Crit]] = {}
    for c in crits:
        by_roi.setdefault(c.roi, []).append(c)
    for roi, cs in by_roi.items():
        raised = [c for c in cs if c.kind != "target" and c.lower_better and parse_metric(c.metric).is_dose]
        for gy in cfg.oar_gy if raised else ():
            vals = _values(plan, raise_oar(plan, roi, gy, cfg.fade_mm), pred, protocol)
            for c in raised:
                change = vals[c.key] - c.plan
                if abs(change - gy) > EXACT_TOL_GY:
                    raise RuntimeError(f"patient {plan.id}: raising {roi} by {gy:g} Gy changed {c.key} by "
                                       f"{change:.6f} Gy")
                cases.append(Case(plan.id, "oar", roi, c.key, c.family, gy, change, vals))
        rx = protocol.prescription(roi, plan.roi_set)
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


def qa_flipping(model: str | os.PathLike) -> bool:
    """Whether plan QA predicts with flipping for ``model``: its calibration's record
    (:attr:`dosepred.qa.calibration.Calibration.tta`), True without a calibration (``dosepred
    calibrate``'s default, as ``dosepred predict``)."""
    try:
        return load_calibration(model).tta
    except ValueError:  # no or no readable calibration.json
        return True


def _pass_dose(plain: np.ndarray, avg: np.ndarray) -> np.ndarray:
    """The dose of one other test-time pass from the plain prediction and their average: ``2 avg -
    plain`` (``--tta`` averages the plain and the flipped pass everywhere; ``--tta-shift`` the plain
    and the translated one where the translated input covers the voxel, the plain one alone at the
    array border, where this gives the plain pass)."""
    return np.maximum(2.0 * avg - plain, 0.0).astype(np.float32)


def collect(model: str | os.PathLike, data: str | os.PathLike, cfg: PowerConfig,
            prediction: str | os.PathLike | None = None,
            passes: dict[str, str | os.PathLike] | None = None, progress: bool = False
            ) -> tuple[list[Crit], list[Case], dict[str, Any]]:
    """Untouched criteria and degraded plans of every patient of ``data`` (plan doses). Predictions from
    the cache ``prediction`` (a warning in the info when it was not made as QA predicts, flipped or not
    as the model's calibration records, :func:`qa_flipping`), else the model, as QA predicts;
    ``passes``: pass name
    (``flip`` / ``shift``) -> a cache predicted with ``--tta`` / ``--no-tta --tta-shift``, from which
    (with the plain prediction) that pass alone is recovered."""
    from ..io.cache import Cache
    from ..io.source import load_patients
    from ..protocol import load_protocol

    passes = dict(passes or {})
    qa_tta = qa_flipping(model)
    qa_way = "with flipping" if qa_tta else "without flipping"
    info: dict[str, Any] = {"prediction": str(prediction) if prediction is not None else None,
                            "qa_tta": qa_tta}
    pred_cache = Cache.open(prediction) if prediction is not None else None
    model_net = None
    if pred_cache is not None:
        flipped, shifted = predictions_made_with(pred_cache)
        info["prediction_made_with"] = pred_cache.info.get("source", "")
        if flipped is None:
            info["warning"] = (f"{prediction} does not record whether it was predicted with flipping; "
                               f"plan QA with this model's calibration predicts {qa_way}")
        elif flipped != qa_tta or shifted:
            info["warning"] = (f"{prediction} was predicted with {flags_words(flipped, shifted)}; plan QA "
                               f"with this model's calibration predicts {qa_way} and without --tta-shift: "
                               "these numbers describe QA with such a prediction")
        if passes and (flipped is not False or shifted):
            raise ValueError(f"--prediction {prediction}: the other test-time passes are recovered "
                             "from the plain prediction, which must be predicted with --no-tta "
                             "(no --tta-shift)")
    else:
        from ..models.checkpoint import load_model

        model_net = load_model(model)
        info["prediction_made_with"] = f"the model, {qa_way} (as plan QA with its calibration)"
    want = {"flip": (True, False), "shift": (False, True)}  # (flipped, shifted) of each pass's cache
    pass_caches = {}
    for name, path in passes.items():
        if name not in want:
            raise ValueError(f"unknown test-time pass {name!r} (flip or shift)")
        pc = Cache.open(path)
        if predictions_made_with(pc) != want[name]:
            flags = "--tta" if name == "flip" else "--no-tta --tta-shift"
            raise ValueError(f"--{name}-prediction {path}: made with {pc.info.get('source', '?')!r}, not "
                             f"with `dosepred predict ... {flags}`")
        pass_caches[name] = pc
    proto = None
    crits: list[Crit] = []
    cases: list[Case] = []
    from ..progress import track

    it: Any = load_patients(data)
    if progress:
        it = track(it, description="degrading plans")
    for p in it:
        if p.dose is None:
            raise ValueError(f"patient {p.id} of {data} has no dose: the benchmark needs plan doses")
        if proto is None:
            proto = load_protocol(cfg.protocol, p.roi_set)
        if pred_cache is not None:
            if p.id not in pred_cache.ids:
                raise ValueError(f"--prediction {prediction}: no prediction for patient {p.id}")
            pred = pred_cache.load_dose(p.id)
            if pred is None:
                raise ValueError(f"--prediction {prediction}: patient {p.id} has no predicted dose")
        else:
            from ..predict import predict_dose

            pred = predict_dose(model_net, p, tta=qa_tta)  # type: ignore[arg-type]
        cs, _ = _criteria(p, pred, proto)
        for name, pc in pass_caches.items():
            if p.id not in pc.ids:
                raise ValueError(f"--{name}-prediction {passes[name]}: no prediction for patient {p.id}")
            avg = pc.load_dose(p.id)
            if avg is None:
                raise ValueError(f"--{name}-prediction {passes[name]}: patient {p.id} has no predicted dose")
            other, _ = _criteria(p, _pass_dose(pred, avg), proto)
            ov = {c.key: c.predicted for c in other}
            for c in cs:
                c.passes[name] = ov.get(c.key, c.predicted)
        crits += cs
        cases += degrade(p, pred, cs, proto, cfg)
    if not crits:
        raise ValueError(f"no criterion of protocol {cfg.protocol} could be evaluated on {data}")
    return crits, cases, info


# ----------------------------------------------------------------------------- intervals
def _adaptive_fit(cu: list[Crit], names: Sequence[str]) -> dict[str, Any]:
    """A normalised family scaled per unit by g(d) = a + b d (d: the disagreement with the passes
    ``names``): per-criterion bias and scale as ``normalised`` (:func:`criterion_stats`), ``a, b``
    by least squares of the normalised scores' size on d (b >= 0; g >= :data:`G_FLOOR` of their
    mean); each calibration unit's score uses statistics fitted without its patient."""
    def d_of(c: Crit) -> float:
        return math.sqrt(sum((c.passes[n] - c.predicted) ** 2 for n in names) / len(names))

    def score(u: Crit, st: dict[str, Any]) -> float:  # the normalised score
        b, s = criterion_norm(st, u.key)
        return (u.plan - u.predicted - b) / s

    def fit(us: list[Crit]) -> tuple[dict[str, Any], float, float, float]:
        st = criterion_stats([u.unit_record() for u in us])
        z = np.array([abs(score(u, st)) for u in us])
        d = np.array([d_of(u) for u in us])
        b = float(np.polyfit(d, z, 1)[0]) if d.size > 2 and d.std() > 0 else 0.0
        b = max(b, 0.0)
        a = float(z.mean() - b * d.mean())
        return st, a, b, G_FLOOR * float(z.mean())

    def g(a: float, b: float, floor: float, c: Crit) -> float:
        return max(a + b * d_of(c), floor, 1e-6)

    st, a, b, floor = fit(cu)
    by: dict[str, list[Crit]] = {}
    for u in cu:
        by.setdefault(u.patient, []).append(u)
    lower, upper = [], []
    for pid, mine in by.items():
        rest = [u for u in cu if u.patient != pid]
        s2, a2, b2, f2 = fit(rest) if rest else (st, a, b, floor)
        for u in mine:
            bias, scale = criterion_norm(s2, u.key)
            z = (u.plan - u.predicted - bias) / (scale * g(a2, b2, f2, u))
            top = 100.0 if u.family == "v_metric" else math.inf
            lower.append(math.inf if u.plan >= top else z)  # plan values at a bound: see tail_scores
            upper.append(-math.inf if u.plan <= 0 else z)
    return {"stats": st, "a": a, "b": b, "floor": floor, "lower": np.array(lower), "upper": np.array(upper),
            "g": lambda c: g(a, b, floor, c)}


# ------------------------------------------------------------------------------ cross-validation
def methods_default(have: set[str]) -> list[str]:
    """Every method of :data:`METHODS`, and the adaptive candidates whose passes are in ``have``."""
    return [*METHODS, *(m for m, need in ADAPTIVE.items() if set(need) <= have)]


def cross_validate(crits: Sequence[Crit], cases: Sequence[Case], cfg: PowerConfig,
                   methods: Sequence[str] | None = None, qa_methods: dict[str, str] | None = None
                   ) -> dict[str, Any]:
    """Random patient-level splits (``cfg.calibration_patients`` calibrate, the rest are checked);
    per method: coverage, median width, false alarms and sensitivity, counted over (split, checked
    unit) pairs. ``methods``: of :data:`METHODS` and :data:`ADAPTIVE` (default: every method, and
    the adaptive candidates whose passes every criterion has), and ``qa``: per family the method of
    ``qa_methods`` (family -> one of :data:`METHODS`; absolute for a family it does not name)."""
    have = set.intersection(*(set(c.passes) for c in crits)) if crits else set()
    if methods is None and not qa_methods:
        methods = methods_default(have)
    qa_methods = dict(qa_methods or {})
    if qa_methods and methods is None:
        methods = [*methods_default(have), "qa"]
    for m in methods or ():
        if m == "qa":
            bad = {f: v for f, v in qa_methods.items() if v not in METHODS}
            if bad:
                raise ValueError(f"calibration methods {bad} are not among {', '.join(METHODS)}")
            continue
        if m not in METHODS and not (m in ADAPTIVE and set(ADAPTIVE[m]) <= have):
            raise ValueError(f"--methods: {m!r} is not one of {', '.join(METHODS)}, qa, or an adaptive "
                             f"candidate whose test-time passes were given ({', '.join(ADAPTIVE)})")
    pids = sorted({c.patient for c in crits})
    n_cal = cfg.calibration_patients or int(round(len(pids) * 2 / 3))
    if not 2 <= n_cal <= len(pids) - 1:
        raise ValueError(f"--calibration-patients {n_cal}: must be between 2 and {len(pids) - 1} "
                         f"({len(pids)} patients)")
    right = {"oar": FLAG_OAR_ABOVE, "cold": FLAG_COVERAGE_BELOW, "hot": FLAG_HOT_ABOVE}
    by_pat: dict[str, list[Crit]] = {}
    for c in crits:
        by_pat.setdefault(c.patient, []).append(c)
    cases_by_pat: dict[str, list[Case]] = {}
    for k in cases:
        cases_by_pat.setdefault(k.patient, []).append(k)
    rng = np.random.default_rng(cfg.seed)
    # acc[method]: counters
    acc: dict[str, dict[str, Any]] = {m: {"fam": {}, "case": {}, "plans": [0, 0], "roi": {}} for m in methods}

    def flagged(c: Crit, value: float, low: float, high: float) -> list[str]:
        return flags_for(value, c.predicted, low, high, c.kind, c.lower_better, c.unit)[0]

    for _ in range(cfg.splits):
        perm = rng.permutation(pids)
        cal, test = set(perm[:n_cal].tolist()), perm[n_cal:].tolist()
        fits: dict[str, Any] = {}
        cal_by_fam: dict[str, list[Crit]] = {}
        for c in crits:
            if c.patient in cal:
                cal_by_fam.setdefault(c.family, []).append(c)
        for fam, cu in cal_by_fam.items():
            f = fit_family([u.unit_record() for u in cu], fam)
            fits[fam] = f
        for m in methods:
            a = acc[m]
            meth = {fam: (qa_methods.get(fam, "absolute") if m == "qa" else m) for fam in fits}
            off: dict[str, tuple[float, float]] = {}
            ada: dict[str, dict[str, Any]] = {}
            for fam, f in fits.items():
                if m in ADAPTIVE:
                    ada[fam] = _adaptive_fit(cal_by_fam[fam], ADAPTIVE[m])
                    off[fam] = offsets(ada[fam]["lower"], "normalised", cfg.coverage, cfg.rule,
                                       ada[fam]["upper"])
                else:
                    off[fam] = family_offsets(f, meth[fam], cfg.coverage, cfg.rule)
            for pid in test:
                ivs: dict[str, tuple[float, float]] = {}
                any_flag = False
                for c in by_pat[pid]:
                    if c.family not in fits:
                        continue
                    lo, hi = off[c.family]
                    if m in ADAPTIVE:
                        fa = ada[c.family]
                        b, s = criterion_norm(fa["stats"], c.key)
                        s = s * fa["g"](c)
                        low, high = clip_to_range(c.predicted + (b + s * lo), c.predicted + (b + s * hi),
                                                  c.family)
                    else:
                        low, high = apply_offsets(c.predicted, c.key, fits[c.family], meth[c.family], lo, hi)
                    ivs[c.key] = (low, high)
                    fl = flagged(c, c.plan, low, high)
                    bad = any(x.startswith(IMPROVEMENT_FLAGS) for x in fl)
                    any_flag |= bad
                    d = a["fam"].setdefault(c.family, {"n": 0, "covered": 0, "flagged": 0, "widths": []})
                    d["n"] += 1
                    d["covered"] += int(low <= c.plan <= high)
                    d["flagged"] += int(bad)
                    d["widths"].append(high - low)
                a["plans"][0] += 1
                a["plans"][1] += int(any_flag)
                crit_of = {c.key: c for c in by_pat[pid]}
                for k in cases_by_pat.get(pid, []):
                    c = crit_of[k.key]
                    if k.key not in ivs:
                        continue
                    ok = any(x.startswith(right[k.what]) for x in flagged(c, k.values[k.key], *ivs[k.key]))
                    anywhere = any(x.startswith(IMPROVEMENT_FLAGS)
                                   for kk, v in k.values.items() if kk in ivs
                                   for x in flagged(crit_of[kk], v, *ivs[kk]))
                    for store, key in ((a["case"], (k.what, k.family, k.amount)),
                                       (a["roi"], (k.what, k.family, k.key, k.amount))):
                        e = store.setdefault(key, [0, 0, 0])
                        e[0] += 1
                        e[1] += int(ok)
                        e[2] += int(anywhere)
    out: dict[str, Any] = {}
    for m, a in acc.items():
        fams = {fam: {"units": d["n"], "coverage": 100.0 * d["covered"] / d["n"],
                      "false_alarms": 100.0 * d["flagged"] / d["n"],
                      "width_median": float(np.median(d["widths"])) if d["widths"] else math.nan}
                for fam, d in sorted(a["fam"].items(), key=lambda kv: FAMILIES.index(kv[0]))}
        order = sorted(a["case"].items(), key=lambda kv: (FAMILIES.index(kv[0][1]), kv[0][0], kv[0][2]))
        sens = [{"what": w, "family": fam, "amount": amt, "n": e[0], "sensitivity": 100.0 * e[1] / e[0],
                 "flagged_anywhere": 100.0 * e[2] / e[0]} for (w, fam, amt), e in order]
        per_roi = [{"what": w, "family": fam, "criterion": key, "amount": amt, "n": e[0],
                    "sensitivity": 100.0 * e[1] / e[0]}
                   for (w, fam, key, amt), e in sorted(a["roi"].items())]
        out[m] = {"families": fams, "sensitivity": sens, "per_criterion": per_roi,
                  "plans_flagged": 100.0 * a["plans"][1] / max(a["plans"][0], 1)}
        if m == "qa":
            out[m]["per_family_method"] = {fam: qa_methods.get(fam, "absolute") for fam in fams}
    return {"calibration_patients": n_cal, "test_patients": len(pids) - n_cal, "patients": len(pids),
            "methods": out}


def targets(res: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The issue-25 targets for ``method``: OAR mean-dose false alarms, +3/+6 Gy sensitivity, coverage."""
    r = res["methods"][method]
    nominal = res["coverage"] * 100
    out = []
    fam = r["families"].get("oar_mean")
    if fam:
        out.append({"what": "OAR mean doses: false alarms (%)", "value": fam["false_alarms"],
                    "goal": f"<= {TARGETS['fa_max']:g}", "met": fam["false_alarms"] <= TARGETS["fa_max"]})
    for amt, goal in TARGETS["sens"].items():
        row = next((s for s in r["sensitivity"] if s["what"] == "oar" and s["family"] == "oar_mean"
                    and s["amount"] == amt), None)
        if row:
            out.append({"what": f"OAR mean doses: +{amt:g} Gy caught (%)", "value": row["sensitivity"],
                        "goal": f">= {goal:g}", "met": row["sensitivity"] >= goal})
    worst = max((abs(f["coverage"] - nominal) for f in r["families"].values()), default=math.nan)
    out.append({"what": "coverage of every family: largest distance to nominal (points)", "value": worst,
                "goal": f"<= {TARGETS['coverage_tol']:g}", "met": worst <= TARGETS["coverage_tol"]})
    return out


def run(model: str | os.PathLike, data: str | os.PathLike, cfg: PowerConfig | None = None,
        prediction: str | os.PathLike | None = None, passes: dict[str, str | os.PathLike] | None = None,
        methods: Sequence[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """The benchmark: :func:`collect`, then :func:`cross_validate`; ``qa_methods`` are the methods the
    model's calibration.json chose per family (what ``dosepred qa`` uses), when it has one."""
    from ..models.checkpoint import resolve_model_path

    cfg = cfg or PowerConfig()
    cfg.check()
    resolve_model_path(model)  # a clear error for a model that is not there, before any work
    t0 = time.perf_counter()
    crits, cases, info = collect(model, data, cfg, prediction, passes, progress)
    t1 = time.perf_counter()
    try:
        qa_methods = load_calibration(model).methods
    except ValueError:  # no calibration.json: no "qa" row
        qa_methods = {}
    if methods is None and qa_methods:
        have = set.intersection(*(set(c.passes) for c in crits))
        methods = [*methods_default(have), "qa"]
    cv = cross_validate(crits, cases, cfg, methods, qa_methods)
    res: dict[str, Any] = {
        "benchmark": "qa-power", "model": str(model), "data": str(data), **info,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "coverage": cfg.coverage, "splits": cfg.splits,
        **{k: cv[k] for k in ("patients", "calibration_patients", "test_patients")},
        "degraded_plans": len(cases),
        "largest_change_error": _change_errors(cases),
        "qa_methods": qa_methods, "methods": cv["methods"],
        "difficulty_correlation": difficulty_correlation(crits),
        "seconds": {"collect": t1 - t0, "cross_validation": time.perf_counter() - t1},
        "machine": {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "load_average": list(os.getloadavg())},
    }
    res["targets"] = {m: targets(res, m) for m in cv["methods"]}
    return res


def difficulty_correlation(crits: Sequence[Crit]) -> dict[str, dict[str, dict[str, float]]]:
    """Per test-time pass and family: Spearman's correlation of the pass's disagreement with the
    plain prediction (|pass - predicted|) with the size of the error (|plan - predicted|), and with the
    size of the error less its criterion's mean (what the normalised interval leaves)."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, dict[str, float]]] = {}
    names = sorted(set.intersection(*(set(c.passes) for c in crits))) if crits else []
    for name in names:
        for fam in FAMILIES:
            cs = [c for c in crits if c.family == fam]
            if len(cs) < 3:
                continue
            r = np.array([c.plan - c.predicted for c in cs])
            mean: dict[str, list[float]] = {}
            for c, x in zip(cs, r, strict=True):
                mean.setdefault(c.key, []).append(float(x))
            centred = np.abs(r - np.array([np.mean(mean[c.key]) for c in cs]))
            d = np.array([abs(c.passes[name] - c.predicted) for c in cs])
            if d.std() == 0:
                continue
            out.setdefault(name, {})[fam] = {"error": float(spearmanr(d, np.abs(r))[0]),
                                             "centred_error": float(spearmanr(d, centred)[0]),
                                             "units": len(cs)}
    return out


def _change_errors(cases: Sequence[Case]) -> dict[str, float]:
    """Per kind of degradation, the largest |measured change - amount| (Gy, or % points for hot spots)."""
    out: dict[str, float] = {}
    for k in cases:
        e = abs(abs(k.change) - k.amount)
        out[k.what] = max(out.get(k.what, 0.0), e)
    return out


# ------------------------------------------------------------------------------------- console
def parse_amounts(text: str, flag: str) -> tuple[float, ...]:
    """``"2,3,4"`` -> (2.0, 3.0, 4.0); a clear error naming ``flag`` otherwise."""
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers such as 2,3,6") from None
    if not vals:
        raise ValueError(f"{flag} {text!r}: give at least one amount")
    return vals


def _degradation(s: dict[str, Any]) -> str:
    sign, unit = {"oar": ("+", "Gy"), "cold": ("-", "Gy"), "hot": ("+", "%")}[s["what"]]
    return f"{s['what']} {sign}{s['amount']:g} {unit}"


def detection_table(res: dict[str, Any], method: str) -> Any:
    """False alarms and sensitivity per family and amount for one method."""
    from rich.table import Table

    r = res["methods"][method]
    label = method
    if method == "qa":
        label = "as dosepred qa (" + ", ".join(f"{f} {v}" for f, v in r["per_family_method"].items()) + ")"
    t = Table(title=f"{label}: flags at {res['coverage']:g} coverage, {res['splits']} splits, "
                    f"{res['calibration_patients']} patients calibrating / {res['test_patients']} checked")
    for c in ("family", "false alarms %", "degradation", "caught %", "flagged anywhere %", "checks"):
        t.add_column(c, justify="left" if c in ("family", "degradation") else "right")
    for fam, f in r["families"].items():
        rows = [s for s in r["sensitivity"] if s["family"] == fam] or [None]
        for i, s in enumerate(rows):
            t.add_row(fam if i == 0 else "", f"{f['false_alarms']:.1f}" if i == 0 else "",
                      _degradation(s) if s else "-", f"{s['sensitivity']:.1f}" if s else "",
                      f"{s['flagged_anywhere']:.1f}" if s else "", str(s["n"]) if s else "")
    return t


def comparison_table(res: dict[str, Any]) -> Any:
    """Every method on the same splits: coverage / median width per family, OAR mean-dose false alarms
    and +3 / +6 Gy sensitivity, plans with at least one flag."""
    from rich.table import Table

    names = list(res["methods"])
    fams = list(res["methods"][names[0]]["families"])
    t = Table(title=f"methods on the same splits: coverage % / median width at {res['coverage']:g}")
    t.add_column("method")
    for f in fams:
        t.add_column(f, justify="right")
    for c in ("OAR mean FA %", "+3 Gy %", "+6 Gy %", "plans flagged %"):
        t.add_column(c, justify="right")
    for m in names:
        r = res["methods"][m]

        def sens(amt: float, r: dict[str, Any] = r) -> str:
            s = next((s for s in r["sensitivity"] if s["what"] == "oar" and s["family"] == "oar_mean"
                      and s["amount"] == amt), None)
            return f"{s['sensitivity']:.1f}" if s else "-"

        fa = r["families"].get("oar_mean", {}).get("false_alarms")
        t.add_row(m, *(f"{r['families'][f]['coverage']:.1f} / {r['families'][f]['width_median']:.2f}"
                       if f in r["families"] else "-" for f in fams),
                  f"{fa:.1f}" if fa is not None else "-", sens(3.0), sens(6.0), f"{r['plans_flagged']:.1f}")
    return t


def console_lines(res: dict[str, Any]) -> list[Any]:
    """What ``dosepred bench qa-power`` prints: QA's detection table, the comparison of methods, the
    issue's targets for QA's methods, provenance."""
    main = "qa" if "qa" in res["methods"] else next(iter(res["methods"]))
    out: list[Any] = [detection_table(res, main), comparison_table(res)]
    for tg in res["targets"][main]:
        out.append(f"{main}: {tg['what']}: {tg['value']:.1f} (goal {tg['goal']}) "
                   + ("[green]met[/]" if tg["met"] else "[red]not met[/]"))
    for name, fams in res.get("difficulty_correlation", {}).items():
        out.append(f"{name} pass: Spearman of |pass - predicted| with |plan - predicted| (and less the "
                   "criterion's mean): " + ", ".join(f"{f} {v['error']:+.2f} ({v['centred_error']:+.2f})"
                                                     for f, v in fams.items()))
    if res.get("warning"):
        out.append(f"[yellow]warning:[/] {res['warning']}")
    err = ", ".join(f"{k} {v:.2g}" for k, v in res["largest_change_error"].items())
    m = res["machine"]
    sec = res["seconds"]
    out.append(f"{res['patients']} patients, {res['degraded_plans']} degraded plans (largest |change - "
               f"amount|: {err}); predictions: {res['prediction_made_with']}; {sec['collect']:.0f} s to "
               f"degrade and evaluate, {sec['cross_validation']:.0f} s to cross-validate; {m['cpu_count']} "
               f"CPU cores ({m['cpu']}), load average {', '.join(f'{x:.1f}' for x in m['load_average'])}")
    return out
