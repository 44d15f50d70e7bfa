"""What plan QA pools: metric families, which end of a metric is the better plan, calibration units.

Intervals are calibrated per metric **family** (:data:`FAMILIES`), not per criterion: one criterion
alone has one unit per patient, and with 16 calibration patients a two-sided 90 % split-conformal
interval of one criterion would be infinite (``ceil(17 * 0.95) = 17 > 16``). A :class:`Unit` is one
(patient, criterion) pair: the plan's value and the model's predicted value.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..metrics import Metric, parse_metric

FAMILIES = ("target_dose", "oar_mean", "oar_nearmax", "v_metric")
FAMILY_TITLES = {"target_dose": "target D-metrics", "oar_mean": "OAR mean doses",
                 "oar_nearmax": "OAR near-max doses", "v_metric": "V-metrics"}
#: Near-max: an OAR D-metric at a volume of at most this many cc or percent, or Dmax.
NEARMAX_CC = 2.0
NEARMAX_PCT = 5.0


def metric_family(metric: str | Metric, kind: str) -> str:
    """Family of a metric of an ROI of ``kind`` (target / oar / other)."""
    m = parse_metric(metric)
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


def lower_is_better(direction: str | None, metric: str, kind: str, prescription: float | None = None) -> bool:
    """Whether a smaller value of the metric is the better plan (plan QA flags a value above the
    interval then, below it otherwise): the criterion's direction when it has one; else OARs lower,
    target hot-spot metrics (Dmax, D<=5%, D<x>cc, V>100%, and V<x>Gy above the target's
    ``prescription``: PTV70 V77Gy is its V110%) lower, other target metrics (coverage) higher."""
    if direction is not None:
        return direction == "<="
    m = parse_metric(metric)
    if kind != "target":
        return True
    if m.kind == "Dmax" or (m.kind == "D" and (m.unit == "cc" or (m.value or 0) <= 5)):
        return True
    if m.kind == "V" and m.unit == "Gy" and prescription:
        return (m.value or 0) > prescription
    return m.kind == "V" and m.unit == "%" and (m.value or 0) > 100


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
    def criterion(self) -> str:
        """``"ROI metric"``: the key of the criterion's statistics."""
        return f"{self.roi} {self.metric}"

    @property
    def flags_above(self) -> bool:
        """Whether plan QA flags this unit above its interval (else below): its flagging end."""
        if self.lower_better is not None:
            return self.lower_better
        return self.family != "target_dose" and lower_is_better(None, self.metric, "oar")
