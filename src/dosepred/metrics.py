"""Clinical DVH metric strings, parsed in one place, and their exact values on a dose array.

Grammar (case-insensitive, spaces ignored):

- ``Dmean``, ``Dmax``, ``Dmin``                     dose statistics (Gy)
- ``D<x>%`` e.g. ``D95%``, ``D99``                  dose received by at least x % of the ROI (Gy)
- ``D<x>cc`` e.g. ``D0.1cc``, ``D2cc``              dose received by the hottest x cc (Gy)
- ``V<x>Gy`` e.g. ``V30Gy``                          % of the ROI receiving at least x Gy (:func:`v_cut`)
- ``V<x>%`` e.g. ``V95%``                            % of the ROI receiving at least x % of its Rx

D-metrics follow OpenKBP's evaluator exactly: ``D<x>%`` is ``np.percentile(dose_in_roi, 100 - x)``
(linear interpolation) and ``D<x>cc`` is the percentile at ``100 - n / N * 100`` with
``n = max(1, round(x * 1000 / voxel_volume_mm3))`` hottest voxels out of ``N``. The same
:func:`percentile_q` is used by the differentiable versions in :mod:`dosepred.losses.cdm`, so the
two cannot drift apart.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .constants import MAX_CRITERION_GY, MAX_DOSE_GY
from .errors import DosepredError

MetricKind = Literal["Dmean", "Dmax", "Dmin", "D", "V"]
Unit = Literal["%", "cc", "Gy", "%Rx", ""]

_RE_D = re.compile(r"^D(\d+(?:\.\d+)?)(%|CC)?$")
_RE_V = re.compile(r"^V(\d+(?:\.\d+)?)(GY|%)$")


class MetricError(DosepredError, ValueError):
    """A metric string that does not follow the grammar (``D95``, ``D2cc``, ``V20Gy``, ``Dmean``, ...)."""


@dataclass(frozen=True)
class Metric:
    """A parsed metric. ``kind`` D with unit % or cc; V with unit Gy or % (of prescription)."""

    kind: MetricKind
    value: float | None = None
    unit: Unit = ""

    @property
    def is_dose(self) -> bool:
        """True when the metric's value is a dose in Gy (D-metrics, mean, max, min)."""
        return self.kind != "V"

    @property
    def needs_prescription(self) -> bool:
        return self.kind == "V" and self.unit == "%"

    def __str__(self) -> str:
        if self.kind in ("Dmean", "Dmax", "Dmin"):
            return self.kind
        v = f"{self.value:g}"
        return f"{self.kind}{v}{self.unit}"


def parse_metric(text: str | Metric) -> Metric:
    """Parse a metric string such as ``D95%``, ``D0.1cc``, ``Dmean``, ``V30Gy``, ``V95%`` (a parsed
    :class:`Metric` is returned as it is; anything else is a :class:`MetricError`)."""
    if isinstance(text, Metric):
        return text
    if not isinstance(text, str):
        raise MetricError(f"metric must be a string, got {text!r}")
    return _parse_metric(text)


@functools.lru_cache(maxsize=4096)
def _parse_metric(text: str) -> Metric:  # cached: evaluation parses the same few strings per ROI
    s = text.replace(" ", "").replace("_", "")
    u = s.upper()
    for k in ("DMEAN", "DMAX", "DMIN"):
        if u == k:
            return Metric("D" + k[1:].lower(), None, "")  # type: ignore[arg-type]
    if u in ("MEAN",):
        return Metric("Dmean")
    if u in ("MAX",):
        return Metric("Dmax")
    m = _RE_D.match(u)
    if m:
        x = float(m.group(1))
        unit = "cc" if m.group(2) == "CC" else "%"
        if unit == "%" and not 0 <= x <= 100:
            raise MetricError(f"metric {text!r}: D<x>% needs 0 <= x <= 100")
        if unit == "cc" and not x > 0:
            raise MetricError(f"metric {text!r}: D<x>cc needs x > 0")
        return Metric("D", x, unit)  # type: ignore[arg-type]
    m = _RE_V.match(u)
    if m:
        x = float(m.group(1))
        return Metric("V", x, "Gy" if m.group(2) == "GY" else "%")
    raise MetricError(
        f"unknown metric {text!r}: expected Dmean, Dmax, Dmin, D<x>% (D95%), D<x>cc (D0.1cc), "
        "V<x>Gy (V30Gy) or V<x>% (V95%, percent of the prescription)")


def hot_voxel_count(volume_cc: float, voxel_volume_mm3: float) -> int:
    """n of OpenKBP's D_0.1cc: max(1, round(volume in mm^3 / voxel volume))."""
    # Python's round() is banker's rounding like numpy's, which OpenKBP's evaluator uses.
    return max(1, int(round(volume_cc * 1000.0 / voxel_volume_mm3)))


def cc_voxel_volume(metric: Metric, voxel_volume_mm3: Any) -> float:
    """The voxel volume a ``D<x>cc`` metric counts its hottest voxels with, as a positive finite number
    of mm^3; else a MetricError naming the metric (a negative one, the determinant of an affine with a
    flipped axis, made D0.1cc the single hottest voxel without a word; 0, NaN or the spacing tuple
    were tracebacks)."""
    try:
        if isinstance(voxel_volume_mm3, (str, bytes, bool, np.bool_)):
            raise TypeError
        v = float(voxel_volume_mm3)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise MetricError(f"{metric}: the voxel volume must be a positive number of mm^3, got "
                          f"{voxel_volume_mm3!r}")
    return v


def larger_than_roi(metric: Metric, n_voxels: int, voxel_volume_mm3: float) -> bool:
    """True for a ``D<x>cc`` metric of an ROI smaller than ``x`` cc (fewer voxels than its hot-voxel
    count): its value is then the ROI's minimum dose (:func:`percentile_q` clips at 0; OpenKBP's
    evaluator fails there), which says nothing of the hottest ``x`` cc the metric is meant for."""
    return (metric.kind == "D" and metric.unit == "cc" and metric.value is not None
            and hot_voxel_count(metric.value, cc_voxel_volume(metric, voxel_volume_mm3)) > n_voxels)


def percentile_q(metric: Metric, n_voxels: int, voxel_volume_mm3: float) -> float:
    """Percentile (0-100) whose linear-interpolation value is D-metric ``metric`` of an ROI of
    ``n_voxels`` voxels. Dmax -> 100, Dmin -> 0."""
    if metric.kind == "Dmax":
        return 100.0
    if metric.kind == "Dmin":
        return 0.0
    if metric.kind != "D":
        raise MetricError(f"{metric} is not a percentile metric")
    assert metric.value is not None
    if metric.unit == "%":
        return 100.0 - metric.value
    n = hot_voxel_count(metric.value, cc_voxel_volume(metric, voxel_volume_mm3))
    return max(0.0, 100.0 - n / n_voxels * 100.0)


def percentile_index(q: float | np.ndarray, n: int | np.ndarray
                     ) -> tuple[int, int, float] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, fraction) of the linear-interpolation percentile ``q`` (0-100) of ``n`` sorted
    values, numpy's own arithmetic for ``np.percentile`` (method "linear"): virtual index
    ``q / 100 * (n - 1)`` in float64, its floor (clipped to ``n - 1``), the next index (clipped) and
    the fraction between them. The value is ``x[lower] + (x[upper] - x[lower]) * fraction``.

    Python ints and a float for scalar ``q`` and ``n``; numpy arrays (int64, int64, float64),
    broadcast, when either is an array. The one copy for the numpy (:mod:`dosepred.dvh`) and torch
    (:mod:`dosepred.losses.cdm`) code, which index their own sorted values with it."""
    if np.isscalar(q) and np.isscalar(n):
        n = int(n)
        if n < 1:
            raise ValueError(f"percentile of {n} values")
        pos = float(q) / 100.0 * (n - 1)
        lo = min(math.floor(pos), n - 1)
        return lo, min(lo + 1, n - 1), pos - lo
    qa, na = np.asarray(q, dtype=np.float64), np.asarray(n, dtype=np.int64)
    if (na < 1).any():
        raise ValueError("percentile of no values")
    pos = qa / 100.0 * (na - 1)
    lo = np.minimum(np.floor(pos), na - 1).astype(np.int64)
    return lo, np.minimum(lo + 1, na - 1), pos - lo


def v_threshold(metric: Metric, prescription: float | None) -> float:
    """Dose threshold (Gy) of a V-metric; V<x>% needs the ROI's prescription."""
    assert metric.kind == "V" and metric.value is not None
    if metric.unit == "Gy":
        return metric.value
    if prescription is None:
        raise MetricError(f"{metric} is relative to the prescription, but the ROI has none")
    if isinstance(prescription, bool) or not isinstance(prescription, (int, float, np.number)) \
            or not 0 < prescription <= MAX_CRITERION_GY:  # as an ROI's: 7000 (cGy) made V95% count 6650 Gy
        raise MetricError(f"{metric}: the prescription must be a number of Gy, 0 < Rx <= "
                          f"{MAX_CRITERION_GY:g} (cGy / 100), got {prescription!r}")
    return metric.value / 100.0 * prescription


#: relative tolerance below a V-metric's threshold within which a dose still counts (as the criteria
#: checks' ``CHECK_TOLERANCE`` in :mod:`dosepred.protocol.schema`): doses are float32, so a file's
#: 59.85 Gy reads 59.849998 Gy, under 95 % of 63 Gy; 1e-6 of the dose is far below any clinical meaning
V_TOLERANCE = 1e-6


def v_cut(threshold: Any) -> Any:
    """The dose from which a voxel counts in a V-metric of ``threshold`` Gy (a number, or an array of
    them: the DVH curve's edges): the threshold less :data:`V_TOLERANCE` of it, so a dose at the
    threshold counts whatever its float rounding."""
    cut = threshold - V_TOLERANCE * np.maximum(np.abs(threshold), 1.0)
    return cut if isinstance(cut, np.ndarray) else float(cut)


def v_percent(doses: np.ndarray, threshold: float) -> float:
    """% of ``doses`` (1-D, Gy) at or above ``threshold`` Gy (:func:`v_cut`); NaN for none."""
    d = np.asarray(doses)
    return float((d >= v_cut(threshold)).mean() * 100.0) if d.size else math.nan


def check_gy(doses: np.ndarray, what: str = "doses") -> None:
    """Refuse doses over :data:`~dosepred.constants.MAX_DOSE_GY` (a dose in cGy, refused wherever one is
    read): a V<x>Gy of cGy counted the voxels over x cGy, without a word."""
    hi = float(np.max(doses)) if np.size(doses) else 0.0
    if hi > MAX_DOSE_GY:
        raise MetricError(f"{what} reach {hi:.6g} Gy, over {MAX_DOSE_GY:g} Gy: a dose in cGy? a dose is in "
                          "Gy (divide by 100)")


def compute(metric: Metric | str, doses: np.ndarray, voxel_volume_mm3: float,
            prescription: float | None = None) -> float:
    """Exact value of ``metric`` on the doses (Gy) of one ROI's voxels (a 1-D array).

    Returns NaN for an empty ROI. V-metrics are percentages of the ROI volume (0-100).
    """
    m = parse_metric(metric)
    d = np.asarray(doses, dtype=np.float64).ravel()
    if d.size == 0:
        return math.nan
    check_gy(d)
    if m.kind == "Dmean":
        return float(d.mean())
    if m.kind == "V":
        return v_percent(d, v_threshold(m, prescription))
    return float(np.percentile(d, percentile_q(m, d.size, voxel_volume_mm3)))
