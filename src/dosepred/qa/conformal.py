"""Split-conformal intervals of a metric family: pure maths on scores (numpy; no model, no file).

Every (patient, criterion) pair is one *unit* (:class:`~dosepred.qa.families.Unit`) with the plan's
value ``y`` and the model's predicted value ``yhat``. Per family (:mod:`dosepred.qa.families`), one
of :data:`METHODS` gives the interval at coverage ``1 - alpha``:

``absolute``   ``yhat -/+ q``, ``q`` the conformal quantile of ``|y - yhat|`` (plain split
               conformal, symmetric);
``signed``     ``[yhat + q_lo, yhat + q_hi]`` from the signed residuals ``r = y - yhat``, each
               side at ``alpha / 2`` (asymmetric: plans are systematically hotter or colder than
               predicted in some families);
``normalised`` ``[yhat + b_c + s_c q_lo, yhat + b_c + s_c q_hi]`` from the signed scores
               ``(r - b_c) / s_c``, with a per-criterion bias ``b_c`` and scale ``s_c`` shrunk
               towards the family's (:func:`criterion_stats`) and, for the calibration scores,
               computed without the unit's own patient (cross-fitting): wide for criteria whose
               errors are large, centred where a criterion is biased;
``centred``    ``[yhat + m_c + q_lo, yhat + m_c + q_hi]`` from the signed scores ``r - m_c``, with
               ``m_c`` the median of the criterion's residuals over the calibration patients (0 for
               a criterion with fewer than :data:`MIN_CENTRE_UNITS` of them without any one
               patient), cross-fitted like
               ``normalised``: a per-criterion bias of the model (the parotids' left-right
               asymmetry of the plans that a mirrored model cannot learn, docs/qa.md) removed before
               one family-wide spread, without ``normalised``'s per-criterion scale and shrinkage
               (calibration.json version 4).

The conformal quantile of ``n`` scores at level ``1 - a`` (:func:`conformal_quantile`) is read
off the sorted scores at position ``c = (n + 1)(1 - a)``: the ``conservative`` rule takes the
``ceil(c)``-th smallest (coverage ``>= 1 - a`` for an exchangeable new unit, Lei et al., JASA 2018, but up
to ``1 / (n + 1)`` more: 3.7 points with 26 V-metric units); the ``interpolated`` rule (the default
since calibration.json version 2) interpolates between the ``floor(c)``-th and the next score, the
deterministic mean of the randomised conformal threshold, which covers ``1 - a`` exactly on average.
Point masses of the scores (residuals exactly 0 where plan and prediction agree, e.g. a V110% of 0 in
both) are handled by :func:`signed_offsets`: a tail whose threshold sits on a tie hands its unused
miss to the other tail; plan values at a bound of the metric (V = 0 %) are left out of the tail they
cannot miss (:func:`tail_scores`). Every interval is deterministic: the same plan and calibration
give the same interval.

:func:`fit_family` turns a family's calibration units into a :class:`Family` (its sorted scores
per method, so that any coverage can be asked for later); :func:`interval` gives a prediction's
interval from it. Which method a family uses is chosen by cross-validation
(:mod:`dosepred.qa.crossval`); the fitted families are stored in ``calibration.json``
(:mod:`dosepred.qa.calibration`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..errors import InputError
from .families import Unit

METHODS = ("absolute", "signed", "normalised", "centred")
#: How the conformal quantile of ``n`` scores at level ``1 - a`` is read off the sorted scores
#: (docs/qa.md, "Ties and small families"): ``interpolated`` (calibrations from version 2 on)
#: interpolates between the ``f``-th and ``(f + 1)``-th smallest scores, ``f = floor((n + 1)(1 - a))``,
#: with the weight ``(n + 1)(1 - a) - f``; ``conservative`` (version 1) takes the
#: ``ceil((n + 1)(1 - a))``-th smallest.
QUANTILE_RULES = ("interpolated", "conservative")
DEFAULT_RULE = "interpolated"
#: The rule of a calibration.json that does not name one (written before the rule existed).
LEGACY_RULE = "conservative"
#: Shrinkage of the per-criterion location and scale towards the family's (pseudo-units).
SHRINK_K = 8.0
#: ``centred``: a criterion with fewer calibration units than this keeps centre 0 (its median would be
#: one or two plans' residuals); in a fitted family, fewer than this without any one of its patients
#: (:func:`fit_family`).
MIN_CENTRE_UNITS = 3
_EPS = 1e-9


def check_rule(rule: str) -> None:
    """ValueError unless ``rule`` is one of :data:`QUANTILE_RULES`."""
    if rule not in QUANTILE_RULES:
        raise InputError(f"unknown quantile rule {rule!r} (one of {', '.join(QUANTILE_RULES)})")


# ------------------------------------------------------------------------------- quantiles
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
    check_rule(rule)
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
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
    if method in ("signed", "normalised", "centred"):
        return signed_offsets(scores, alpha, rule, upper_scores)
    raise InputError(f"unknown calibration method {method!r} (one of {', '.join(METHODS)})")


# ------------------------------------------------------------------------------ fitted families
@dataclass(frozen=True)
class CriterionStats:
    """Location and scale of one criterion's residuals, shrunk towards its family's
    (:func:`criterion_stats`); ``n`` its calibration units; ``centre`` the median of its residuals
    that ``centred`` removes (None in calibrations before version 4, which have no ``centred``)."""

    bias: float
    scale: float
    n: int
    centre: float | None = None


@dataclass(frozen=True)
class Tails:
    """The finite scores of the lower and of the upper tail of a method (:func:`tail_scores`)."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]


@dataclass(frozen=True)
class Family:
    """A metric family fitted on calibration units (:func:`fit_family`), as ``calibration.json``
    keeps it: the sorted scores of every method (any coverage can be asked for later), the tail
    scores (None in calibrations of version 1), the per-criterion statistics of ``normalised`` and
    ``centred`` (key ``"ROI metric"``; ``"*"``: a criterion the calibration did not see), and, in a
    calibration, the method plan QA uses and the criteria the units came from."""

    family: str
    n: int
    criterion_stats: Mapping[str, CriterionStats]
    scores: Mapping[str, tuple[float, ...]]
    tail_scores: Mapping[str, Tails] | None = None
    method: str = "absolute"
    criteria: tuple[str, ...] = ()


def _mean_var(a: np.ndarray) -> tuple[float, float]:
    """Mean and (population) variance of ``a`` from exactly rounded sums (``math.fsum``): the same
    for the same values in any order. numpy's pairwise sums differ in the last bits with the order,
    which split the point mass of the ``normalised`` scores (``fit_family``: the units at residual 0
    of every patient left out get one score in exact arithmetic) into values a few ulps apart, so that
    the tie rule of :func:`signed_offsets` held or not with the order of the patients."""
    mean = math.fsum(a.tolist()) / a.size
    return mean, math.fsum(((a - mean) ** 2).tolist()) / a.size


def criterion_stats(units: Sequence[Unit], k: float = SHRINK_K) -> dict[str, CriterionStats]:
    """Per criterion ``"ROI metric"``: ``bias`` and ``scale`` of its residuals, shrunk towards 0 and
    towards the family's spread with ``k`` pseudo-units: ``bias = n / (n + k) * mean_c``,
    ``scale = sqrt((n var_c + k var_f) / (n + k))``. They define the ``normalised`` scores
    ``(r - bias) / scale``; a criterion the calibration did not see (key ``"*"``) gets bias 0 and the
    family's scale. ``centre``: the median of the criterion's residuals, unshrunk (the ``centred``
    scores ``r - centre``); 0 with fewer than :data:`MIN_CENTRE_UNITS` units and for ``"*"``.
    Means and variances are exactly rounded sums (:func:`_mean_var`), a function of the residuals
    alone, not of their order."""
    r_all = np.array([u.residual for u in units], dtype=np.float64)
    var_f = _mean_var(r_all)[1] if r_all.size > 1 else 1.0
    var_f = max(var_f, 1e-6)
    by: dict[str, list[float]] = {}
    for u in units:
        by.setdefault(u.criterion, []).append(u.residual)
    out = {"*": CriterionStats(0.0, math.sqrt(var_f), 0, 0.0)}
    for key, rs in by.items():
        a = np.asarray(rs)
        n = a.size
        mean_c, var_c = _mean_var(a)
        var_c = var_c if n > 1 else var_f
        centre = float(np.median(a)) if n >= MIN_CENTRE_UNITS else 0.0
        out[key] = CriterionStats(float(n / (n + k) * mean_c),
                                  math.sqrt(max((n * var_c + k * var_f) / (n + k), 1e-6)), n, centre)
    return out


def criterion_norm(stats: Mapping[str, CriterionStats], criterion: str) -> tuple[float, float]:
    """(bias, scale) of ``criterion`` (``"ROI metric"``), the family's (``"*"``) when it has none."""
    s = stats.get(criterion) or stats["*"]
    return s.bias, s.scale


def criterion_centre(stats: Mapping[str, CriterionStats], criterion: str) -> float:
    """The ``centred`` method's centre of ``criterion`` (0 when it has none: unseen, or too few units)."""
    s = stats.get(criterion) or stats["*"]
    return s.centre or 0.0


def fit_family(units: Sequence[Unit], family: str | None = None) -> Family:
    """Sorted scores of every method for one family's units, and the per-criterion statistics of the
    ``normalised`` and ``centred`` methods. The normalised and centred scores of a unit use
    statistics computed *without its patient* (cross-fitting), so that they are distributed like the
    score of a new patient, whose interval uses the statistics of all calibration patients.
    ``family``: the units' (all of one family) when not given."""
    if family is None:
        names = {u.family for u in units}
        if len(names) != 1:
            raise ValueError(f"units of the families {sorted(names)}: name the family to fit them as one")
        family = names.pop()
    r = np.array([u.residual for u in units], dtype=np.float64)
    y = np.array([u.plan for u in units], dtype=np.float64)
    top = np.array([100.0 if u.family == "v_metric" else math.inf for u in units])
    floor, ceil = y <= 0.0, y >= top  # plan values at a bound of the metric: see tail_scores
    stats = criterion_stats(units)
    by_patient: dict[str, list[int]] = {}
    for i, u in enumerate(units):
        by_patient.setdefault(u.patient, []).append(i)
    # centred: a criterion is centred only where every fit without one patient still has
    # MIN_CENTRE_UNITS of its units, so that its calibration scores and a new patient's interval are
    # centred alike (else a bias would count twice: in the family's spread and in the shift)
    per: dict[str, Counter[str]] = {}
    for u in units:
        per.setdefault(u.criterion, Counter())[u.patient] += 1
    centrable = {c for c, k in per.items() if k.total() - max(k.values()) >= MIN_CENTRE_UNITS}
    stats = {c: v if c in centrable else replace(v, centre=0.0) for c, v in stats.items()}
    za = np.empty(len(units), dtype=np.float64)  # in the order of units, like r and the bound masks
    zc = np.empty(len(units), dtype=np.float64)
    for pid, mine in by_patient.items():
        rest = [u for u in units if u.patient != pid]
        st = criterion_stats(rest) if rest else stats
        for i in mine:
            c = units[i].criterion
            b, sc = criterion_norm(st, c)
            za[i] = (units[i].residual - b) / sc
            zc[i] = units[i].residual - (criterion_centre(st, c) if c in centrable else 0.0)

    def tails(s: np.ndarray) -> Tails:
        return Tails(tuple(np.sort(s[~ceil]).tolist()), tuple(np.sort(s[~floor]).tolist()))

    return Family(family, len(units), stats,
                  {"absolute": tuple(np.sort(np.abs(r)).tolist()), "signed": tuple(np.sort(r).tolist()),
                   "normalised": tuple(np.sort(za).tolist()), "centred": tuple(np.sort(zc).tolist())},
                  {"signed": tails(r), "normalised": tails(za), "centred": tails(zc)})


def tail_scores(fam: Family, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The scores of the lower and of the upper tail of ``method`` in a fitted family.

    A plan value at a bound of the metric (0, or 100 % for a V-metric: a plan without a hot spot has
    V110% = 0) lies in every interval clipped to the metric's range on that side: a V110% of 0 is
    inside ``[0, high]`` however low ``high`` is, because :func:`apply_offsets` never lets ``high``
    drop below 0. Its score therefore counts as -inf for the upper tail (and +inf for the lower
    tail at 100 %); otherwise the upper threshold is set by residuals such as ``0 - predicted``
    that can never miss, and the clipped interval over-covers (V-metrics: 85 % at 80 % nominal).
    ``fam.tail_scores[method]`` holds the finite scores of each tail; families without it
    (version 1 files, ``absolute``, which clipping cannot change) use ``fam.scores[method]``."""
    s = np.asarray(fam.scores[method], dtype=np.float64)
    ts = fam.tail_scores.get(method) if fam.tail_scores else None
    if method == "absolute" or ts is None:
        return s, s
    lo = np.asarray(ts.lower, dtype=np.float64)
    hi = np.asarray(ts.upper, dtype=np.float64)
    lo = np.concatenate([lo, np.full(s.size - lo.size, math.inf)])
    hi = np.concatenate([np.full(s.size - hi.size, -math.inf), hi])
    return lo, hi


def family_offsets(fam: Family, method: str, coverage: float, rule: str = DEFAULT_RULE
                   ) -> tuple[float, float]:
    """:func:`offsets` of a fitted family, with its tail scores where it has them (version 2 on)."""
    lower, upper = tail_scores(fam, method)
    return offsets(lower, method, coverage, rule, upper)


def highest_coverage(bounded: Callable[[float], bool], below: float) -> float:
    """The highest coverage under ``below`` (rounded down to 0.001) at which ``bounded(coverage)`` holds
    (an interval finite at both ends), by bisection: finiteness changes once as coverage grows, from
    every unit's quantile within the scores to one past the last; 0 when none is."""
    lo, hi = 0.0, below
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bounded(mid) else (lo, mid)
    return math.floor(lo * 1000) / 1000


def interval(predicted: float, criterion: str, fam: Family, method: str, coverage: float,
             rule: str = DEFAULT_RULE) -> tuple[float, float]:
    """(low, high) of the plan value of ``criterion`` (``"ROI metric"``) predicted as ``predicted``,
    clipped to the metric's range (doses >= 0 Gy, V-metrics 0-100 % of the ROI volume): plan values
    lie in that range, so clipping changes no coverage, only the width (a V-metric predicted 0 %
    gets ``[0, q]``, not ``[-q, q]``)."""
    lo, hi = family_offsets(fam, method, coverage, rule)
    return apply_offsets(predicted, criterion, fam, method, lo, hi)


def apply_offsets(predicted: float, criterion: str, fam: Family, method: str, lo: float, hi: float
                  ) -> tuple[float, float]:
    """:func:`interval` from offsets computed once (:func:`offsets`) for many predictions."""
    if method == "normalised":
        b, s = criterion_norm(fam.criterion_stats, criterion)
        low, high = predicted + b + s * lo, predicted + b + s * hi
    elif method == "centred":
        c = criterion_centre(fam.criterion_stats, criterion)
        low, high = predicted + c + lo, predicted + c + hi
    else:
        low, high = predicted + lo, predicted + hi
    return clip_to_range(low, high, fam.family)


def clip_to_range(low: float, high: float, family: str) -> tuple[float, float]:
    """An interval of a metric of ``family`` clipped to the metric's range: 0-100 % of the ROI volume
    for V-metrics, doses >= 0."""
    top = 100.0 if family == "v_metric" else math.inf
    low, high = min(max(low, 0.0), top), max(min(high, top), 0.0)
    if low > high:
        # Only when a tail sits at a bound (e.g. high pinned at 0 % because most calibration plans have
        # no hot spot) while the other tail excludes the bound: the two one-sided statements disagree
        # for this prediction; the interval between them keeps both candidate values.
        low, high = high, low
    return low, high
