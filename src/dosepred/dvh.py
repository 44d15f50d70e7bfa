"""Dose-volume histograms as value objects, and exact DVH metrics of ROIs.

:class:`DVH` holds one ROI's voxel doses and voxel volume. It offers the binned curves
(differential and cumulative, absolute cc or relative %) for plotting, and *exact* metrics that do
not snap to bins: :meth:`DVH.dose_at_volume` / :meth:`DVH.metric` use OpenKBP's definitions from
:mod:`dosepred.metrics` (numpy percentile with linear interpolation; D0.1cc with
``n = max(1, round(100 / voxel_mm3))`` hottest voxels), :meth:`DVH.volume_at_dose` counts voxels
with dose >= the threshold.

:func:`roi_metric` and :func:`roi_metrics` compute metrics straight from a dose volume and a mask (or
a :class:`~dosepred.patient.Patient` and an ROI name). :func:`roi_voxel_indices` decodes every ROI
of a patient at once (only voxels that belong to some ROI are touched), which is what evaluation
uses to stay fast. This module computes numbers; it does not judge them (see ``evaluation``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .metrics import Metric, MetricError, compute, parse_metric, percentile_q, v_threshold

if TYPE_CHECKING:  # pragma: no cover
    from .patient import Patient

VolumeUnit = Literal["%", "cc"]


@dataclass(frozen=True, eq=False)
class DVH:
    """The DVH of one ROI: its voxel doses (Gy, sorted ascending) and the voxel volume (mm^3).

    ``bin_width`` (Gy) only affects the binned curves (:attr:`edges`, :meth:`cumulative`,
    :meth:`differential`), never the metrics, which are exact.
    """

    doses: np.ndarray
    voxel_volume_mm3: float
    bin_width: float = 0.1
    prescription: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        d = np.sort(np.asarray(self.doses, dtype=np.float64).ravel())
        if d.size and not np.all(np.isfinite(d)):
            raise ValueError(f"DVH {self.name}: doses contain NaN/inf")
        if not self.voxel_volume_mm3 > 0:
            raise ValueError(f"DVH {self.name}: voxel volume must be > 0 mm^3, got {self.voxel_volume_mm3}")
        if not self.bin_width > 0:
            raise ValueError(f"DVH {self.name}: bin width must be > 0 Gy, got {self.bin_width}")
        object.__setattr__(self, "doses", d)

    @classmethod
    def from_dose(cls, dose: np.ndarray, mask: np.ndarray, spacing: Sequence[float], bin_width: float = 0.1,
                  prescription: float | None = None, name: str = "") -> DVH:
        """DVH of the voxels of ``dose`` where ``mask`` is true; ``spacing`` in mm per axis."""
        dose = np.asarray(dose)
        mask = np.asarray(mask, dtype=bool)
        if dose.shape != mask.shape:
            raise ValueError(f"DVH {name}: dose shape {dose.shape} != mask shape {mask.shape}")
        return cls(dose[mask], float(np.prod(spacing)), bin_width, prescription, name)

    # ------------------------------------------------------------------------------ statistics
    @property
    def n_voxels(self) -> int:
        return int(self.doses.size)

    @property
    def volume_cc(self) -> float:
        return self.n_voxels * self.voxel_volume_mm3 / 1000.0

    @property
    def mean(self) -> float:
        return float(self.doses.mean()) if self.n_voxels else math.nan

    @property
    def max(self) -> float:
        return float(self.doses[-1]) if self.n_voxels else math.nan

    @property
    def min(self) -> float:
        return float(self.doses[0]) if self.n_voxels else math.nan

    # ------------------------------------------------------------------------------ exact metrics
    def metric(self, metric: str | Metric) -> float:
        """Exact value of a metric string (``D95%``, ``D0.1cc``, ``Dmean``, ``V20Gy``, ``V95%``)."""
        return compute(metric, self.doses, self.voxel_volume_mm3, self.prescription)

    def dose_at_volume(self, volume: float, unit: VolumeUnit = "%") -> float:
        """Dose (Gy) received by at least ``volume`` (% of the ROI, or cc of its hottest part)."""
        if unit == "%":
            if not 0 <= volume <= 100:
                raise ValueError(f"volume must be 0..100 %, got {volume}")
            return self.metric(Metric("D", float(volume), "%"))
        if unit == "cc":
            if not volume > 0:
                raise ValueError(f"volume must be > 0 cc, got {volume}")
            return self.metric(Metric("D", float(volume), "cc"))
        raise ValueError(f"unit must be '%' or 'cc', got {unit!r}")

    def volume_at_dose(self, dose: float, unit: VolumeUnit = "%") -> float:
        """Volume receiving at least ``dose`` Gy, in % of the ROI or in cc."""
        if self.n_voxels == 0:
            return math.nan
        n = self.n_voxels - int(np.searchsorted(self.doses, dose, side="left"))
        if unit == "%":
            return n / self.n_voxels * 100.0
        if unit == "cc":
            return n * self.voxel_volume_mm3 / 1000.0
        raise ValueError(f"unit must be '%' or 'cc', got {unit!r}")

    # ------------------------------------------------------------------------------ binned curves
    @property
    def edges(self) -> np.ndarray:
        """Bin edges (Gy) from 0 to one bin past the maximum dose."""
        top = self.max if self.n_voxels else 0.0
        n = int(math.floor(top / self.bin_width)) + 2
        return np.arange(n, dtype=np.float64) * self.bin_width

    def differential(self, unit: VolumeUnit = "cc") -> np.ndarray:
        """Volume per bin ``[edges[i], edges[i+1])``; length ``len(edges) - 1``."""
        e = self.edges
        idx = np.floor(self.doses / self.bin_width).astype(np.int64)
        counts = np.bincount(np.clip(idx, 0, len(e) - 2), minlength=len(e) - 1).astype(np.float64)
        return self._scale(counts, unit)

    def cumulative(self, unit: VolumeUnit = "%") -> np.ndarray:
        """Volume receiving at least ``edges[i]`` Gy; same length as :attr:`edges` (last is 0)."""
        diff = self.differential("cc") / (self.voxel_volume_mm3 / 1000.0)
        counts = np.concatenate([np.cumsum(diff[::-1])[::-1], [0.0]])
        return self._scale(counts, unit)

    def _scale(self, counts: np.ndarray, unit: VolumeUnit) -> np.ndarray:
        if unit == "cc":
            return counts * (self.voxel_volume_mm3 / 1000.0)
        if unit == "%":
            return counts / max(self.n_voxels, 1) * 100.0
        raise ValueError(f"unit must be '%' or 'cc', got {unit!r}")


# ---------------------------------------------------------------------------------- functions

def roi_metrics(doses: np.ndarray, metrics: Sequence[str | Metric], voxel_volume_mm3: float,
                prescription: float | None = None) -> list[float]:
    """Several metrics of one ROI's voxel doses (1-D) at once: the percentile metrics share one
    ``np.percentile`` call. Values equal :func:`dosepred.metrics.compute` (NaN for an empty ROI)."""
    ms = [parse_metric(m) if isinstance(m, str) else m for m in metrics]
    d = np.asarray(doses, dtype=np.float64).ravel()
    if d.size == 0:
        return [math.nan] * len(ms)
    out = [math.nan] * len(ms)
    pct = [(i, percentile_q(m, d.size, voxel_volume_mm3))
           for i, m in enumerate(ms) if m.kind in ("D", "Dmax", "Dmin")]
    if pct:
        vals = np.percentile(d, [q for _, q in pct])
        for (i, _), v in zip(pct, vals, strict=True):
            out[i] = float(v)
    for i, m in enumerate(ms):
        if m.kind == "Dmean":
            out[i] = float(d.mean())
        elif m.kind == "V":
            out[i] = float((d >= v_threshold(m, prescription)).mean() * 100.0)
    return out


def roi_metric(patient_or_dose: Patient | np.ndarray, mask: np.ndarray | str, metric: str | Metric,
               spacing: Sequence[float] | None = None, prescription: float | None = None) -> float:
    """Exact metric of one ROI.

    ``roi_metric(patient, "PTV70", "D95%")`` uses the patient's dose, ROI, spacing and prescription;
    ``roi_metric(dose, mask, "D0.1cc", spacing=(4, 4, 2.5))`` works on plain arrays.
    """
    from .patient import Patient

    if isinstance(patient_or_dose, Patient):
        p = patient_or_dose
        if p.dose is None:
            raise ValueError(f"patient {p.id} has no dose")
        if isinstance(mask, str):
            if prescription is None:
                prescription = p.roi_set.prescription(mask)
            mask = p.mask(mask)
        dose, spacing = p.dose, spacing or p.spacing
    else:
        dose = np.asarray(patient_or_dose)
        if isinstance(mask, str):
            raise ValueError("an ROI name needs a Patient; pass a boolean mask with a dose array")
        if spacing is None:
            raise ValueError("spacing (mm per axis) is needed to compute metrics from a dose array")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(dose):
        raise ValueError(f"mask shape {mask.shape} != dose shape {np.shape(dose)}")
    try:
        return compute(metric, dose[mask], float(np.prod(spacing)), prescription)
    except MetricError:
        raise
    except (AssertionError, TypeError) as e:  # pragma: no cover - defensive
        raise ValueError(f"cannot compute {metric}: {e}") from None


def roi_voxel_indices(patient: Patient, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Flat (C order) voxel indices of each present ROI of ``patient``, decoded in one pass.

    Only voxels with a non-zero code are read, so the cost is that of the ROIs, not of the grid.
    Missing ROIs (no contour) are left out.
    """
    names = names if names is not None else patient.roi_set.names
    names = [n for n in names if n not in patient.missing_rois]
    codes = patient.roi_codes.ravel()
    nz = np.flatnonzero(codes)
    c = codes[nz]
    one = c.dtype.type(1)
    out: dict[str, np.ndarray] = {}
    for n in names:
        k = patient.roi_set.index(n)
        sel = (c >> c.dtype.type(k)) & one
        idx = nz[sel.astype(bool)]
        if idx.size:
            out[n] = idx
    return out
