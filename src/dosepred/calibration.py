"""Calibrated prediction intervals for the DVH metrics of a protocol (split-conformal).

A dose-prediction model says what dose an OAR or target *could* get; plan QA asks whether a plan's
value is plausible for a patient like this one. :func:`calibrate` turns the model's errors on
patients it was not trained on into intervals that hold their nominal coverage on new patients:

- every (patient, criterion) pair is one *unit* with the plan's value ``y`` and the model's
  predicted value ``yhat`` (the spread of the predicted dose in the ROI is kept for diagnostics: as a
  difficulty score it did not predict the size of the errors, see docs/qa.md);
- units are pooled per metric **family** (:data:`FAMILIES`: target D-metrics, OAR mean doses, OAR
  near-max doses, V-metrics) because one criterion alone has one unit per patient: with 16
  calibration patients a two-sided 90 % split-conformal interval of one criterion would be infinite
  (``ceil(17 * 0.95) = 17 > 16``);
- per family, one of :data:`METHODS` gives the interval at coverage ``1 - alpha``:

  ``absolute``   ``yhat -/+ q``, ``q`` the conformal quantile of ``|y - yhat|`` (plain split
                 conformal, symmetric);
  ``signed``     ``[yhat + q_lo, yhat + q_hi]`` from the signed residuals ``r = y - yhat``, each
                 side at ``alpha / 2`` (asymmetric: plans are systematically hotter or colder than
                 predicted in some families);
  ``normalised`` ``[yhat + b_c + s_c q_lo, yhat + b_c + s_c q_hi]`` from the signed scores
                 ``(r - b_c) / s_c``, with a per-criterion bias ``b_c`` and scale ``s_c`` shrunk
                 towards the family's (:func:`criterion_stats`) and, for the calibration scores,
                 computed without the unit's own patient (cross-fitting): wide for criteria whose
                 errors are large, centred where a criterion is biased.

The conformal quantile of ``n`` scores at level ``1 - a`` (:func:`conformal_quantile`) is read
off the sorted scores at position ``c = (n + 1)(1 - a)``: the ``conservative`` rule takes the
``ceil(c)``-th smallest (coverage ``>= 1 - a`` for an exchangeable new unit, REFERENCE.md, 9, but up
to ``1 / (n + 1)`` more: 3.7 points with 26 V-metric units); the ``interpolated`` rule (the default
since calibration.json version 2) interpolates between the ``floor(c)``-th and the next score, the
deterministic mean of the randomised conformal threshold, which covers ``1 - a`` exactly on average.
Point masses of the scores (residuals exactly 0 where plan and prediction agree, e.g. a V110% of 0 in
both) are handled by :func:`signed_offsets`: a tail whose threshold sits on a tie hands its unused
miss to the other tail; plan values at a bound of the metric (V = 0 %) are left out of the tail they
cannot miss (:func:`tail_scores`). Every interval is deterministic: the same plan and calibration
give the same interval.

The method of a family is chosen by cross-validation (:func:`choose_methods`): since version 3 by
what plan QA does with the interval, which flags a plan beyond its bad end only: of the methods that
hold coverage and miss at most their one-sided share at that end, the one whose flagging end is
nearest the prediction.

The predictions are flipped (averaged with the left-right mirrored prediction, as ``dosepred
predict`` by default) since version 3, and the file records it (``tta``): plan QA predicts the same
way (:func:`calibration_tta`; versions 1 and 2: unflipped).

``calibration.json`` (written atomically into the model folder) keeps the sorted scores of every
family and method, the tail scores and the quantile rule, so any coverage can be asked for later
(``dosepred qa --coverage``); it also records the protocol and criteria it was computed for, the
method used per family, the cross-validated coverage, widths, false alarms and flag margins, the
ranges of ROI volumes and voxel
spacings of the training data (for the reliability flags of plan QA), and per ROI the residuals of D
at 15 volume levels (``dvh_band``: the report's DVH band, :func:`band_offsets`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fsutil import sha256_file
from .metrics import Metric, parse_metric
from .patient import Patient

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "dosepred-calibration"
#: Version 3: the file records whether its predictions were flipped (``tta``; plan QA predicts the
#: same way) and the rule that chose the methods (``method_rule``). Versions 1 and 2 were made from
#: unflipped predictions (:func:`calibration_tta`).
CALIBRATION_VERSION = 3
FAMILIES = ("target_dose", "oar_mean", "oar_nearmax", "v_metric")
FAMILY_TITLES = {"target_dose": "target D-metrics", "oar_mean": "OAR mean doses",
                 "oar_nearmax": "OAR near-max doses", "v_metric": "V-metrics"}
METHODS = ("absolute", "signed", "normalised")
#: Near-max: an OAR D-metric at a volume of at most this many cc or percent, or Dmax.
NEARMAX_CC = 2.0
NEARMAX_PCT = 5.0


class CalibrationError(ValueError):
    """No calibration, or one that does not fit the model, protocol or request."""


# ------------------------------------------------------------------------------------ families
def metric_family(metric: str | Metric, kind: str) -> str:
    """Family of a metric of an ROI of ``kind`` (target / oar / other)."""
    m = parse_metric(metric) if isinstance(metric, str) else metric
    if m.kind == "V":
        return "v_metric"
    if kind == "target":
        return "target_dose"
    if m.kind == "Dmax":
        return "oar_nearmax"
    if m.kind == "D" and m.value is not None:
        small = m.value <= (NEARMAX_CC if m.unit == "cc" else NEARMAX_PCT)
        return "oar_nearmax" if small else "oar_mean"
    return "oar_mean"  # Dmean, Dmin and mid-volume D-metrics of OARs


def lower_is_better(direction: str | None, metric: str, kind: str) -> bool:
    """Whether a smaller value of the metric is the better plan (plan QA flags a value above the
    interval then, below it otherwise): the criterion's direction when it has one; else OARs lower,
    target hot-spot metrics (Dmax, D<=5%, D<x>cc, V>100%) lower, other target metrics (coverage)
    higher."""
    if direction is not None:
        return direction == "<="
    m = parse_metric(metric)
    if kind != "target":
        return True
    if m.kind == "Dmax" or (m.kind == "D" and (m.unit == "cc" or (m.value or 0) <= 5)):
        return True
    return m.kind == "V" and m.unit == "%" and (m.value or 0) > 100


# ------------------------------------------------------------------------------- conformal core
#: How the conformal quantile of ``n`` scores at level ``1 - a`` is read off the sorted scores
#: (docs/qa.md, "Ties and small families"): ``interpolated`` (calibrations from version 2 on)
#: interpolates between the ``f``-th and ``(f + 1)``-th smallest scores, ``f = floor((n + 1)(1 - a))``,
#: with the weight ``(n + 1)(1 - a) - f``; ``conservative`` (version 1) takes the
#: ``ceil((n + 1)(1 - a))``-th smallest.
QUANTILE_RULES = ("interpolated", "conservative")
DEFAULT_RULE = "interpolated"
#: The rule of a calibration.json that does not name one (written before the rule existed).
LEGACY_RULE = "conservative"
_EPS = 1e-9


def _check_rule(rule: str) -> None:
    if rule not in QUANTILE_RULES:
        raise ValueError(f"unknown quantile rule {rule!r} (one of {', '.join(QUANTILE_RULES)})")


def conformal_quantile(scores: Sequence[float] | np.ndarray, alpha: float, rule: str = DEFAULT_RULE) -> float:
    """Upper conformal quantile of ``scores`` at level ``1 - alpha`` (+inf when too few scores).

    With ``c = (n + 1)(1 - alpha)``:

    - ``conservative``: the ``ceil(c)``-th smallest score. A new exchangeable score is at most it
      with probability >= ``1 - alpha``, and at most ``1 - alpha + 1 / (n + 1)`` for continuous
      scores: with 26 scores, a 80 % interval covers 81.5 % on average;
    - ``interpolated``: ``s_(f) + w (s_(f+1) - s_(f))`` with ``f = floor(c)``, ``w = c - f``. The
      randomised (smoothed) conformal rule takes ``s_(f+1)`` with probability ``w`` and ``s_(f)``
      otherwise, and covers exactly ``1 - alpha`` on average; this is its deterministic mean
      threshold. Its coverage lies between ``f / (n + 1)`` and ``(f + 1) / (n + 1)``, is exactly
      ``1 - alpha`` for uniformly spread scores, and at least that where the score density decreases
      (the tail, where the quantile sits). +inf when ``c > n``.
    """
    _check_rule(rule)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    if n == 0:
        return math.inf
    c = (n + 1) * (1 - alpha)
    if rule == "conservative":
        k = math.ceil(c - _EPS)
        return math.inf if k > n else float(s[k - 1])
    f = math.floor(c + _EPS)
    w = c - f if c - f > _EPS else 0.0
    if f > n or (f == n and w > 0):
        return math.inf
    if f == 0:
        return float(s[0])
    if w == 0 or s[f] == s[f - 1]:
        return float(s[f - 1])
    if not (math.isfinite(s[f - 1]) and math.isfinite(s[f])):
        return float(s[f])  # next to the implicit scores of units at a bound: the larger, conservatively
    return float(s[f - 1] + w * (s[f] - s[f - 1]))


def conformal_lower(scores: Sequence[float] | np.ndarray, alpha: float, rule: str = DEFAULT_RULE) -> float:
    """Lower counterpart: ``-conformal_quantile(-scores, alpha)`` (-inf when too few scores)."""
    return -conformal_quantile(-np.asarray(scores, dtype=np.float64), alpha, rule)


def _tail_miss(s: np.ndarray, t: float, side: str) -> float | None:
    """Where the threshold ``t`` of sorted scores ``s`` sits on a tie (a score value held by two or
    more scores): the share of scores strictly beyond it on ``side`` (``lower``: below ``t``),
    an unbiased estimate of a new score's chance to fall beyond it. None when ``t`` is not on a tie
    (the quantile rule then misses its nominal share)."""
    lo, hi = np.searchsorted(s, t, "left"), np.searchsorted(s, t, "right")
    if hi - lo < 2:
        return None
    return float(lo if side == "lower" else s.size - hi) / s.size


def signed_offsets(scores: Sequence[float] | np.ndarray, alpha: float, rule: str = DEFAULT_RULE,
                   upper_scores: Sequence[float] | np.ndarray | None = None) -> tuple[float, float]:
    """Two-sided interval of signed scores missing ``alpha / 2`` on each side: the lower offset from
    ``scores``, the upper one from ``upper_scores`` (default: the same). The two differ for units at
    a bound of the metric (:func:`tail_scores`).

    With the ``interpolated`` rule, a side whose threshold lands on a tie (a point mass of the
    scores, e.g. residuals exactly 0 where plan and prediction both have no hot spot) misses less
    than ``alpha / 2`` whatever is done short of excluding tied values; the miss it leaves unused is
    given to the other side (its threshold is recomputed at ``alpha - miss``), so that the interval
    misses ``alpha`` in all."""
    s_lo = np.sort(np.asarray(scores, dtype=np.float64))
    s_hi = s_lo if upper_scores is None else np.sort(np.asarray(upper_scores, dtype=np.float64))
    lo, hi = conformal_lower(s_lo, alpha / 2, rule), conformal_quantile(s_hi, alpha / 2, rule)
    if rule != "interpolated" or lo == -math.inf or hi == math.inf:  # too few scores
        return lo, hi
    m_lo, m_hi = _tail_miss(s_lo, lo, "lower"), _tail_miss(s_hi, hi, "upper")
    if m_lo is not None and m_hi is None and m_lo < alpha / 2:
        hi = conformal_quantile(s_hi, alpha - m_lo, rule)
    elif m_hi is not None and m_lo is None and m_hi < alpha / 2:
        lo = conformal_lower(s_lo, alpha - m_hi, rule)
    return lo, hi


def offsets(scores: np.ndarray, method: str, coverage: float, rule: str = DEFAULT_RULE,
            upper_scores: np.ndarray | None = None) -> tuple[float, float]:
    """(lower, upper) offsets of the interval from the prediction, in score units (multiply by the
    difficulty for ``normalised``); ``upper_scores``: see :func:`signed_offsets`."""
    alpha = 1.0 - coverage
    if method == "absolute":
        q = conformal_quantile(np.abs(scores), alpha, rule)
        return -q, q
    if method in ("signed", "normalised"):
        return signed_offsets(scores, alpha, rule, upper_scores)
    raise ValueError(f"unknown calibration method {method!r} (one of {', '.join(METHODS)})")


def family_offsets(fam: dict[str, Any], method: str, coverage: float, rule: str = DEFAULT_RULE
                   ) -> tuple[float, float]:
    """:func:`offsets` of a fitted family (:func:`fit_family`, or a family of calibration.json),
    with its tail scores where it has them (version 2)."""
    lower, upper = tail_scores(fam, method)
    return offsets(lower, method, coverage, rule, upper)


def tail_scores(fam: dict[str, Any], method: str) -> tuple[np.ndarray, np.ndarray]:
    """The scores of the lower and of the upper tail of ``method`` in a fitted family.

    A plan value at a bound of the metric (0, or 100 % for a V-metric: a plan without a hot spot has
    V110% = 0) lies in every interval clipped to the metric's range on that side: a V110% of 0 is
    inside ``[0, high]`` however low ``high`` is, because :func:`apply_offsets` never lets ``high``
    drop below 0. Its score therefore counts as -inf for the upper tail (and +inf for the lower
    tail at 100 %); otherwise the upper threshold is set by residuals such as ``0 - predicted``
    that can never miss, and the clipped interval over-covers (V-metrics: 85 % at 80 % nominal).
    ``fam["tail_scores"][method]`` holds the finite scores of each tail; families without it
    (version 1 files, ``absolute``, which clipping cannot change) use ``fam["scores"][method]``."""
    s = np.asarray(fam["scores"][method], dtype=np.float64)
    ts = (fam.get("tail_scores") or {}).get(method)
    if method == "absolute" or not ts:
        return s, s
    lo = np.asarray(ts["lower"], dtype=np.float64)
    hi = np.asarray(ts["upper"], dtype=np.float64)
    lo = np.concatenate([lo, np.full(s.size - lo.size, math.inf)])
    hi = np.concatenate([np.full(s.size - hi.size, -math.inf), hi])
    return lo, hi


# ----------------------------------------------------------------------------------- units
@dataclass
class Unit:
    """One (patient, criterion): plan value, predicted value, difficulty features."""

    patient: str
    roi: str
    metric: str
    family: str
    plan: float
    predicted: float
    spread: float  # std of the predicted dose inside the ROI (Gy)
    #: Whether plan QA flags a value above the interval (a smaller value is the better plan) or below
    #: it; None: from the family (targets' D-metrics: below; every other family: above).
    lower_better: bool | None = None

    @property
    def residual(self) -> float:
        return self.plan - self.predicted

    @property
    def flags_above(self) -> bool:
        """Whether plan QA flags this unit above its interval (else below): its flagging end."""
        if self.lower_better is not None:
            return self.lower_better
        return self.family != "target_dose" and lower_is_better(None, self.metric, "oar")


def roi_features(patient: Patient, pred_dose: np.ndarray, rois: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per present ROI: ``volume_cc``, ``spread`` (std of the predicted dose in it, Gy) and
    ``target_overlap`` (% of the ROI's voxels inside any target other than itself)."""
    from .dvh import roi_voxel_indices

    rs = patient.roi_set
    names = [r for r in dict.fromkeys(rois) if r in rs]
    targets = [t for t in rs.targets if t not in patient.missing_rois]
    idx = roi_voxel_indices(patient, list(dict.fromkeys(names + targets)))
    flat = np.asarray(pred_dose, dtype=np.float32).ravel()
    out: dict[str, dict[str, float]] = {}
    for r in names:
        if r not in idx:
            continue
        ix = idx[r]
        others = [idx[t] for t in targets if t != r and t in idx]
        ov = 0.0
        if others:
            ov = float(np.isin(ix, np.concatenate(others), assume_unique=False).mean() * 100.0)
        out[r] = {"volume_cc": ix.size * patient.voxel_volume_cc, "spread": float(flat[ix].std()),
                  "target_overlap": ov}
    return out


def patient_units(plan: Patient, pred_dose: np.ndarray, protocol: Any) -> tuple[list[Unit], Any]:
    """Units of one patient (its dose is the plan) and its evaluation result."""
    from .evaluation import evaluate_patient
    from .protocol import load_protocol

    proto = load_protocol(protocol, plan.roi_set)
    res = evaluate_patient(plan, pred_dose, proto)
    feats = roi_features(plan, pred_dose, [c.roi for c in res.criteria])
    kinds = {r.name: r.kind for r in plan.roi_set}
    units, seen = [], set()
    for c in res.criteria:
        key = (c.roi, c.metric)
        if key in seen or c.roi not in feats or not (c.ref == c.ref and c.pred == c.pred):
            continue
        seen.add(key)
        units.append(Unit(plan.id, c.roi, c.metric, metric_family(c.metric, kinds[c.roi]),
                          float(c.ref), float(c.pred), feats[c.roi]["spread"],
                          lower_is_better(c.direction, c.metric, kinds[c.roi])))
    return units, res


# ------------------------------------------------------------------------------------ fitting
#: Shrinkage of the per-criterion location and scale towards the family's (pseudo-units).
SHRINK_K = 8.0


def criterion_stats(units: Sequence[Unit], k: float = SHRINK_K) -> dict[str, dict[str, float]]:
    """Per criterion ``"ROI metric"``: ``bias`` and ``scale`` of its residuals, shrunk towards 0 and
    towards the family's spread with ``k`` pseudo-units: ``bias = n / (n + k) * mean_c``,
    ``scale = sqrt((n var_c + k var_f) / (n + k))``. They define the ``normalised`` scores
    ``(r - bias) / scale``; a criterion the calibration did not see (key ``"*"``) gets bias 0 and the
    family's scale."""
    r_all = np.array([u.residual for u in units], dtype=np.float64)
    var_f = float(r_all.var()) if r_all.size > 1 else 1.0
    var_f = max(var_f, 1e-6)
    by: dict[str, list[float]] = {}
    for u in units:
        by.setdefault(f"{u.roi} {u.metric}", []).append(u.residual)
    out = {"*": {"bias": 0.0, "scale": math.sqrt(var_f), "n": 0}}
    for key, rs in by.items():
        a = np.asarray(rs)
        n = a.size
        var_c = float(a.var()) if n > 1 else var_f
        out[key] = {"bias": float(n / (n + k) * a.mean()),
                    "scale": math.sqrt(max((n * var_c + k * var_f) / (n + k), 1e-6)), "n": n}
    return out


def _norm(stats: dict[str, dict[str, float]], key: str) -> tuple[float, float]:
    s = stats.get(key) or stats["*"]
    return s["bias"], s["scale"]


def fit_family(units: Sequence[Unit]) -> dict[str, Any]:
    """Sorted scores of every method for one family's units, and the per-criterion statistics of the
    ``normalised`` method. The normalised score of a unit uses statistics computed *without its
    patient* (cross-fitting), so that it is distributed like the score of a new patient, whose
    interval uses the statistics of all calibration patients."""
    r = np.array([u.residual for u in units], dtype=np.float64)
    y = np.array([u.plan for u in units], dtype=np.float64)
    top = np.array([100.0 if u.family == "v_metric" else math.inf for u in units])
    floor, ceil = y <= 0.0, y >= top  # plan values at a bound of the metric: see tail_scores
    stats = criterion_stats(units)
    by_patient: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_patient.setdefault(u.patient, []).append(i)
    za = np.empty(len(units), dtype=np.float64)  # in the order of units, like r and the bound masks
    for pid, mine in by_patient.items():
        rest = [u for u in units if u.patient != pid]
        st = criterion_stats(rest) if rest else stats
        for i in mine:
            b, sc = _norm(st, f"{units[i].roi} {units[i].metric}")
            za[i] = (units[i].residual - b) / sc

    def tails(s: np.ndarray) -> dict[str, list[float]]:
        return {"lower": np.sort(s[~ceil]).tolist(), "upper": np.sort(s[~floor]).tolist()}

    return {"n": len(units), "criterion_stats": stats,
            "scores": {"absolute": np.sort(np.abs(r)).tolist(), "signed": np.sort(r).tolist(),
                       "normalised": np.sort(za).tolist()},
            "tail_scores": {"signed": tails(r), "normalised": tails(za)}}


def interval(predicted: float, criterion: str, fam: dict[str, Any], method: str, coverage: float,
             rule: str = DEFAULT_RULE) -> tuple[float, float]:
    """(low, high) of the plan value of ``criterion`` (``"ROI metric"``) predicted as ``predicted``,
    clipped to the metric's range (doses >= 0 Gy, V-metrics 0-100 % of the ROI volume): plan values
    lie in that range, so clipping changes no coverage, only the width (a V-metric predicted 0 %
    gets ``[0, q]``, not ``[-q, q]``)."""
    lo, hi = family_offsets(fam, method, coverage, rule)
    return apply_offsets(predicted, criterion, fam, method, lo, hi)


def apply_offsets(predicted: float, criterion: str, fam: dict[str, Any], method: str, lo: float, hi: float
                  ) -> tuple[float, float]:
    """:func:`interval` from offsets computed once (:func:`offsets`) for many predictions."""
    if method == "normalised":
        b, s = _norm(fam["criterion_stats"], criterion)
        low, high = predicted + b + s * lo, predicted + b + s * hi
    else:
        low, high = predicted + lo, predicted + hi
    top = 100.0 if fam.get("family") == "v_metric" else math.inf  # % of the ROI volume; doses >= 0
    low, high = min(max(low, 0.0), top), max(min(high, top), 0.0)
    if low > high:
        # Only when a tail sits at a bound (e.g. high pinned at 0 % because most calibration plans have
        # no hot spot) while the other tail excludes the bound: the two one-sided statements disagree
        # for this prediction; the interval between them keeps both candidate values.
        low, high = high, low
    return low, high


def cross_validate(units: Sequence[Unit], coverages: Sequence[float] = (0.8, 0.9),
                   methods: Sequence[str] = METHODS, splits: int = 200, cal_fraction: float = 0.5,
                   seed: int = 0, rule: str = DEFAULT_RULE) -> dict[str, Any]:
    """Repeated random patient-level splits: calibrate on ``cal_fraction`` of the patients, measure
    on the others (intervals with the quantile ``rule``) the coverage, the mean width, the false
    alarms (the share of values beyond the *flagging end*, the end of the interval beyond which plan
    QA flags a unit: the upper one where lower is better, :attr:`Unit.flags_above`) and the mean
    flag margin (the distance from the prediction to the flagging end: how far a plan may be worse
    than predicted before QA flags it). Returns family -> method -> coverage -> stats (coverage and
    false alarms in %, their means over the splits; widths and margins the medians over the splits
    of each split's mean)."""
    rng = np.random.default_rng(seed)
    pids = sorted({u.patient for u in units})
    n_cal = max(1, int(round(len(pids) * cal_fraction)))
    by_fam: dict[str, list[Unit]] = {}
    for u in units:
        by_fam.setdefault(u.family, []).append(u)
    acc: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    for _ in range(splits):
        cal = set(rng.permutation(pids)[:n_cal].tolist())
        for fam, us in by_fam.items():
            cu = [u for u in us if u.patient in cal]
            tu = [u for u in us if u.patient not in cal]
            if not cu or not tu:
                continue
            f = fit_family(cu)
            f["family"] = fam
            y = np.array([u.plan for u in tu])
            yhat = np.array([u.predicted for u in tu])
            above = np.array([u.flags_above for u in tu])
            for m in methods:
                for cov in coverages:
                    lo, hi = family_offsets(f, m, cov, rule)
                    iv = np.array([apply_offsets(u.predicted, f"{u.roi} {u.metric}", f, m, lo, hi)
                                   for u in tu])
                    low, high = iv[:, 0], iv[:, 1]
                    d = acc.setdefault(fam, {}).setdefault(m, {}).setdefault(
                        f"{cov:g}", {"cov": [], "width": [], "fa": [], "margin": []})
                    d["cov"].append(float(np.mean((y >= low) & (y <= high))))
                    d["width"].append(float(np.mean(high - low)))
                    d["fa"].append(float(np.mean(np.where(above, y > high, y < low))))
                    d["margin"].append(float(np.mean(np.where(above, high - yhat, yhat - low))))
    out: dict[str, Any] = {}
    for fam, ms in acc.items():
        n_units = len(by_fam[fam])
        for m, covs in ms.items():
            for cov, d in covs.items():
                c = np.array(d["cov"])
                w = np.array(d["width"])
                g = np.array(d["margin"])
                out.setdefault(fam, {}).setdefault(m, {})[cov] = {
                    "coverage": float(c.mean() * 100), "coverage_sd": float(c.std() * 100),
                    "width": float(np.median(w)) if np.all(np.isfinite(w)) else math.inf,
                    "width_mean": float(w.mean()), "units": n_units,
                    "false_alarms": float(np.mean(d["fa"]) * 100),
                    "flag_margin": float(np.median(g)) if np.all(np.isfinite(g)) else math.inf}
    return out


#: How :func:`choose_methods` picks a family's method: ``flagging-end`` (calibrations from version 3
#: on) by the end of the interval beyond which plan QA flags, ``total-width`` (versions 1 and 2) by
#: the width of the whole interval.
METHOD_RULES = ("flagging-end", "total-width")
DEFAULT_METHOD_RULE = "flagging-end"
#: ``flagging-end``: a method whose flagging end is passed by more than its share of the miss,
#: ``(1 - coverage) / 2``, plus this many points flags more untouched plans than its coverage promises
#: on that side and is not chosen. The points allow for cross-validation noise on 33 patients: the
#: one-sided miss of ``signed`` target intervals (10 % by construction at 80 %) measured 10.4-10.7 %
#: over 200 splits and 11.2-11.4 % over 500 for the released models; ``absolute``'s excess where a
#: family is skewed is larger (13-14 % at 80 %, 9-10 % at 90 % on MAE+CDM's target D-metrics).
FA_TOLERANCE = 1.5


def choose_methods(cv: dict[str, Any], coverages: Sequence[float] = (0.8, 0.9), tolerance: float = 3.0,
                   margin: float = 0.05, rule: str = DEFAULT_METHOD_RULE,
                   fa_tolerance: float = FA_TOLERANCE) -> dict[str, str]:
    """Per family, the method of :data:`METHODS` plan QA uses, from the cross-validation of
    :func:`cross_validate`.

    ``flagging-end`` (what QA does with the interval: it flags a plan beyond its bad end only): a
    method is eligible when, at every level of ``coverages``, its coverage is within ``tolerance``
    points of nominal and its false alarms (held-out values beyond the flagging end) are at most the
    one-sided share ``(1 - coverage) / 2`` plus ``fa_tolerance`` points; of those, the one whose
    flagging end is nearest the prediction (flag margins summed over the levels): the smallest
    excess it lets through unflagged. ``absolute`` is kept unless another eligible method's margin is
    smaller by more than ``margin`` (5 %, against noise on 33 patients). ``absolute`` is symmetric:
    on a skewed family one of its ends misses more than its share (flags more untouched plans, e.g.
    target coverage of MAE+CDM: 8.9 % at 90 %) and the other less (flags less than it could, its
    OAR mean doses: 2.5 %); ``signed`` and ``normalised`` miss ``alpha / 2`` at each end. A family
    where no method is eligible falls back to ``total-width``.

    ``total-width`` (calibrations of versions 1 and 2): ``absolute`` unless another method's coverage
    is at least nominal - ``tolerance`` at every level and its widths (summed over the levels) are
    narrower by more than ``margin``: then the narrowest such method. Over-coverage is not held
    against a method."""
    if rule not in METHOD_RULES:
        raise ValueError(f"unknown method rule {rule!r} (one of {', '.join(METHOD_RULES)})")
    chosen = {}
    for fam, ms in cv.items():
        def stats_of(m: str, ms: dict[str, Any] = ms) -> list[dict[str, Any]] | None:
            stats = [ms.get(m, {}).get(f"{c:g}") for c in coverages]
            return None if any(s is None for s in stats) else stats  # type: ignore[return-value]

        def total(m: str) -> float | None:
            stats = stats_of(m)
            if stats is None or not all(s["coverage"] >= c * 100 - tolerance
                                        for s, c in zip(stats, coverages, strict=True)):
                return None
            return float(sum(s["width"] for s in stats))

        def flag_end(m: str) -> float | None:
            stats = stats_of(m)
            if stats is None or any("false_alarms" not in s for s in stats):
                return None
            for s, c in zip(stats, coverages, strict=True):
                fa_max = (1 - c) * 50 + fa_tolerance  # the one-sided share of the miss, in %
                if abs(s["coverage"] - c * 100) > tolerance or s["false_alarms"] > fa_max:
                    return None
            return float(sum(s["flag_margin"] for s in stats))

        score = flag_end if rule == "flagging-end" else total
        if rule == "flagging-end" and all(flag_end(m) is None for m in METHODS):
            score = total
        best, best_w = "absolute", score("absolute")
        others = sorted((w, m) for m in METHODS if m != "absolute" and (w := score(m)) is not None)
        if others:
            w, m = others[0]
            if best_w is None or w < best_w * (1 - margin):
                best = m
        chosen[fam] = best
    return chosen


# --------------------------------------------------------------------------- data and ranges
def training_ranges(patients: Iterable[Patient]) -> dict[str, Any]:
    """ROI volumes (cc, min/max per ROI) and voxel spacings (mm, min/max per array axis sorted
    ascending) of the training patients."""
    vols: dict[str, list[float]] = {}
    sp: list[list[float]] = []
    n = 0
    for p in patients:
        n += 1
        sp.append(sorted(p.spacing))
        from .dvh import roi_voxel_indices

        for r, ix in roi_voxel_indices(p).items():
            vols.setdefault(r, []).append(ix.size * p.voxel_volume_cc)
    a = np.array(sp) if sp else np.zeros((0, 3))
    return {"patients": n,
            "roi_volume_cc": {r: [float(min(v)), float(max(v))] for r, v in vols.items()},
            "spacing_mm": {"min": a.min(axis=0).tolist() if n else None,
                           "max": a.max(axis=0).tolist() if n else None}}


# ------------------------------------------------------------------------------- the DVH band
#: Volume levels (% of the ROI volume) at which the report's DVH band is calibrated: the residual
#: plan - prediction of D at each level, per ROI.
BAND_LEVELS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 98.0, 99.0)


def band_doses(patient: Patient, dose: np.ndarray, levels: Sequence[float] = BAND_LEVELS
               ) -> dict[str, list[float]]:
    """D at each volume level (Gy, OpenKBP's percentile definition) of every present ROI of
    ``patient`` in ``dose`` (on the patient's grid)."""
    from .dvh import roi_metrics, roi_voxel_indices

    flat = np.asarray(dose, dtype=np.float32).ravel()
    metrics = [f"D{v:g}%" for v in levels]
    return {r: roi_metrics(flat[ix], metrics, patient.voxel_volume_mm3)
            for r, ix in roi_voxel_indices(patient).items() if ix.size}


def fit_band(residuals: dict[str, dict[str, list[float]]], levels: Sequence[float] = BAND_LEVELS
             ) -> dict[str, Any]:
    """The ``dvh_band`` object of calibration.json from ROI -> patient -> residuals at each level:
    per ROI and level the sorted residuals (one per calibration patient; Gy, rounded to 0.1 mGy to
    keep the file small)."""
    rois = {}
    for roi, rows in sorted(residuals.items()):
        a = np.asarray(list(rows.values()), dtype=np.float64).reshape(-1, len(levels))  # (patients, levels)
        rois[roi] = [np.round(np.sort(col[np.isfinite(col)]), 4).tolist() for col in a.T]
    return {"levels": [float(v) for v in levels], "method": "signed", "rois": rois}


def band_offsets(band: dict[str, Any] | None, roi: str, coverage: float, rule: str = DEFAULT_RULE
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(levels %, lower offsets, upper offsets) in Gy of ``roi``'s calibrated DVH band at ``coverage``:
    at each volume level the signed conformal interval of D at that level (pointwise: each point of
    the band holds ``coverage`` for its own level; the whole curve lies inside less often). None when
    the calibration has no band for the ROI; levels with too few patients for the coverage are left
    out."""
    if not band or roi not in band.get("rois", {}):
        return None
    levels, lo, hi = [], [], []
    for v, scores in zip(band["levels"], band["rois"][roi], strict=True):
        a, b = signed_offsets(scores, 1.0 - coverage, rule) if scores else (-math.inf, math.inf)
        if math.isfinite(a) and math.isfinite(b):
            levels.append(v)
            lo.append(a)
            hi.append(b)
    if not levels:
        return None
    return np.asarray(levels), np.asarray(lo), np.asarray(hi)


def predictions_made_with(cache: Any) -> tuple[bool | None, bool]:
    """(flipped, translated) of a prediction cache, from the flags ``dosepred predict --format cache``
    records in its ``source`` (``--tta`` / ``--no-tta``, ``--tta-shift``): flipped is None when the
    cache records neither (not written by ``predict``, or by a version before the record)."""
    made = set(str(cache.info.get("source", "")).split())
    flipped = True if "--tta" in made else (False if "--no-tta" in made else None)
    return flipped, "--tta-shift" in made


def flags_words(flipped: bool, shifted: bool) -> str:
    """The ``dosepred predict`` flags of a prediction made that way: ``--tta --tta-shift``, ..."""
    return ("--tta" if flipped else "--no-tta") + (" --tta-shift" if shifted else "")


def _flip_words(tta: bool) -> str:
    return "with flipping (`dosepred predict`'s default, --tta)" if tta else "without flipping (--no-tta)"


def check_predictions(cache: Any, path: str | os.PathLike, tta: bool) -> None:
    """:class:`CalibrationError` unless the prediction cache at ``path`` was made as plan QA will
    predict with a calibration recording ``tta``: flipped or not as it says, never translated."""
    flipped, shifted = predictions_made_with(cache)
    want = "--tta" if tta else "--no-tta"
    fix = f"predict again with `dosepred predict ... --format cache {want}` (no --tta-shift)"
    if flipped is None:
        raise CalibrationError(f"{path}: these predictions do not record how they were made (flipped or "
                               f"not: {cache.info.get('source') or 'no source'!r}); plan QA predicts "
                               f"{_flip_words(tta)}, so the intervals must describe such predictions: {fix}")
    if flipped != tta or shifted:
        raise CalibrationError(f"{path}: these predictions were made with {flags_words(flipped, shifted)}, "
                               "but plan QA with this "
                               f"calibration predicts {_flip_words(tta)} and without --tta-shift, so the "
                               f"intervals would not describe QA's errors: {fix}")


def collect_units(model_path: str | os.PathLike, data: str | os.PathLike, protocol: Any,
                  predictions: str | os.PathLike | None = None, progress: bool = False,
                  dvh_band: dict[str, dict[str, list[float]]] | None = None, tta: bool = True
                  ) -> tuple[list[Unit], list[str]]:
    """Units of every patient of ``data`` (a cache or OpenKBP folder with plan doses). Predictions are
    read from ``predictions`` (a cache written by ``dosepred predict --format cache``, made with the
    flipping ``tta`` says and without translations, :func:`check_predictions`) when given, else
    computed with the model, flipped when ``tta`` (as ``predict`` by default and plan QA with a
    calibration that records it). ``dvh_band``: a dict that receives ROI -> patient -> residuals of
    D at the :data:`BAND_LEVELS` (for :func:`fit_band`)."""
    from .io.cache import Cache, load_patients

    pred_cache = Cache.open(predictions) if predictions is not None else None
    if pred_cache is not None:
        check_predictions(pred_cache, predictions, tta)  # type: ignore[arg-type]
    model = None
    if pred_cache is None:
        from .models.checkpoint import load_model

        model = load_model(model_path)
    units: list[Unit] = []
    ids: list[str] = []
    it: Iterable[Patient] = load_patients(data)
    if progress:
        from .progress import track
        it = track(it, description="calibrating")
    for p in it:
        if p.dose is None:
            raise CalibrationError(f"patient {p.id} of {data} has no dose: calibration needs plan doses")
        if pred_cache is not None:
            if p.id not in pred_cache.ids:
                raise CalibrationError(f"no prediction for patient {p.id} in {predictions}")
            pred = pred_cache.load_dose(p.id)
        else:
            from .predict import predict_dose

            pred = predict_dose(model, p, tta=tta)  # type: ignore[arg-type]
        us, _ = patient_units(p, pred, protocol)
        units += us
        ids.append(p.id)
        if dvh_band is not None:
            pd = band_doses(p, pred)
            for roi, dv in band_doses(p, p.dose).items():
                if roi in pd:
                    dvh_band.setdefault(roi, {})[p.id] = [a - b for a, b in zip(dv, pd[roi], strict=True)]
    return units, ids


#: Families with at most one unit per patient are cross-validated with this many times more splits.
SMALL_FAMILY_SPLITS = 10


def build_calibration(units: Sequence[Unit], ids: Sequence[str], protocol: Any, model_path: Path,
                      data: str, ranges: dict[str, Any] | None, splits: int = 200, seed: int = 0,
                      cal_fraction: float = 0.8, rule: str = DEFAULT_RULE,
                      dvh_band: dict[str, dict[str, list[float]]] | None = None, tta: bool = True
                      ) -> dict[str, Any]:
    """The calibration.json object (see the module docstring); ``dvh_band`` as filled by
    :func:`collect_units`; ``tta``: whether the units' predictions were flipped (recorded: plan QA
    predicts the same way)."""
    _check_rule(rule)
    from .protocol import load_protocol

    proto = load_protocol(protocol)
    by_fam: dict[str, list[Unit]] = {}
    for u in units:
        by_fam.setdefault(u.family, []).append(u)
    # A family with one unit per patient (PTV70 V110%) checks ~7 units per split: its mean coverage
    # over 200 splits still moves by 1-2 points; more splits are cheap for so few units.
    small = {f for f, us in by_fam.items() if len(us) <= len({u.patient for u in us})}
    cv = cross_validate([u for u in units if u.family not in small], splits=splits, cal_fraction=cal_fraction,
                        seed=seed, rule=rule)
    if small:
        cv.update(cross_validate([u for u in units if u.family in small], splits=SMALL_FAMILY_SPLITS * splits,
                                 cal_fraction=cal_fraction, seed=seed, rule=rule))
    chosen = choose_methods(cv)
    ckpt = model_path / "model.pt" if model_path.is_dir() else model_path
    return {
        "format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "quantile_rule": rule,
        "tta": bool(tta), "method_rule": DEFAULT_METHOD_RULE,
        "model_sha256": sha256_file(ckpt) if ckpt.is_file() else None,
        "protocol": proto.name,
        "criteria": sorted({f"{u.roi} {u.metric}" for u in units}),
        "data": str(data), "patients": list(ids),
        "normalisation": ("per criterion: (residual - bias) / scale, shrunk to the family with "
                          f"k={SHRINK_K:g}"),
        "families": {fam: {**fit_family(us), "family": fam, "method": chosen.get(fam, "absolute"),
                           "criteria": sorted({f"{u.roi} {u.metric}" for u in us})}
                     for fam, us in sorted(by_fam.items())},
        "cross_validation": {"splits": splits, "calibration_fraction": cal_fraction, "seed": seed,
                             "splits_small_families": {f: SMALL_FAMILY_SPLITS * splits
                                                       for f in sorted(small)},
                             "results": cv},
        "training_ranges": ranges,
        "dvh_band": fit_band(dvh_band) if dvh_band else None,
    }


#: Fewest patients :func:`calibrate` accepts (cross-validation calibrates on 80 % of them).
MIN_PATIENTS = 12


def calibration_path(model: str | os.PathLike) -> Path:
    """Where ``model``'s calibration lives: ``calibration.json`` beside its checkpoint."""
    from .models.checkpoint import resolve_model_path

    return resolve_model_path(model).parent / CALIBRATION_FILE


def write_calibration(model_dir: str | os.PathLike, calib: dict[str, Any]) -> Path:
    """Write ``model_dir/calibration.json`` atomically (temporary file, then rename); nothing else in
    the folder is touched."""
    from .fsutil import write_text

    d = Path(model_dir)
    if d.is_file():
        d = d.parent
    path = d / CALIBRATION_FILE
    write_text(path, json.dumps(_finite(calib), indent=1) + "\n")
    return path


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if x != x else ("inf" if x > 0 else "-inf")
    return x


def quantile_rule(calib: dict[str, Any]) -> str:
    """The quantile rule a calibration was made with (``conservative`` for version 1 files, which do
    not name it); :class:`CalibrationError` for an unknown one."""
    rule = calib.get("quantile_rule", LEGACY_RULE)
    if rule not in QUANTILE_RULES:
        raise CalibrationError(f"calibration quantile rule {rule!r} is not one of "
                               f"{', '.join(QUANTILE_RULES)}: recalibrate with this version of dosepred")
    return rule


def calibration_tta(calib: dict[str, Any]) -> bool:
    """Whether plan QA predicts with flipping for this calibration: what the file records (version 3
    on), else False (versions 1 and 2 were made from unflipped predictions, as QA then predicted:
    :func:`collect_units` refused flipped ones). :class:`CalibrationError` for a version 3 file
    without the record."""
    if int(calib.get("version", 1)) < 3:
        return False
    tta = calib.get("tta")
    if not isinstance(tta, bool):
        raise CalibrationError(f"calibration.json version {calib.get('version')} has no 'tta' record (true "
                               "or false: whether its predictions were flipped): recalibrate with "
                               "`dosepred calibrate`")
    return tta


def load_calibration(model: str | os.PathLike) -> dict[str, Any]:
    """The model's ``calibration.json``; :class:`CalibrationError` when it has none."""
    d = Path(model)
    if d.is_file():
        d = d.parent
    path = d / CALIBRATION_FILE
    if not path.is_file():
        raise CalibrationError(f"model {model} has no {CALIBRATION_FILE}: run `dosepred calibrate --model "
                               f"{model} --data SRC --protocol P` on patients the model was not trained on")
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(c, dict) or c.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path} is not a dosepred calibration (format {CALIBRATION_FORMAT!r})")
    return c


def calibrate(model: str | os.PathLike, data: str | os.PathLike, protocol: Any,
              predictions: str | os.PathLike | None = None, train_data: str | os.PathLike | None = None,
              splits: int = 200, seed: int = 0, progress: bool = False, rule: str = DEFAULT_RULE,
              tta: bool = True) -> tuple[Path, dict[str, Any]]:
    """Compute and write ``calibration.json`` for ``model`` from patients of ``data`` (plan doses;
    patients the model was not trained on). ``train_data``: the training patients (a source, or a JSON
    file of :func:`training_ranges`' output), for the ranges of ROI volumes and spacings (the
    calibration patients' own ranges when omitted). ``rule``: the conformal quantile rule
    (:data:`QUANTILE_RULES`), stored in the file. ``tta``: calibrate flipped predictions (the default,
    as ``dosepred predict``), recorded in the file so that plan QA predicts the same way;
    ``predictions`` must have been made that way (:func:`check_predictions`)."""
    from .io.cache import load_patients
    from .models.checkpoint import resolve_model_path

    ckpt = resolve_model_path(model)
    band: dict[str, dict[str, list[float]]] = {}
    units, ids = collect_units(model, data, protocol, predictions, progress, dvh_band=band, tta=tta)
    if not units:
        raise CalibrationError(f"no criterion of the protocol could be evaluated on {data}")
    if len(ids) < MIN_PATIENTS:
        raise CalibrationError(f"{data}: {len(ids)} patient(s) cannot calibrate intervals; at least "
                               f"{MIN_PATIENTS} patients the model was not trained on are needed (a 90 % "
                               "interval needs at least 9 calibration patients; cross-validation more)")
    src = train_data if train_data is not None else data
    if str(src).endswith(".json") and Path(src).is_file():  # ranges computed before (training_ranges)
        ranges = json.loads(Path(src).read_text(encoding="utf-8"))
    else:
        ranges = training_ranges(load_patients(src, require_dose=False))
        ranges["source"] = str(src)
    calib = build_calibration(units, ids, protocol, ckpt, str(data), ranges, splits, seed, rule=rule,
                              dvh_band=band, tta=tta)
    return write_calibration(ckpt.parent, calib), calib
