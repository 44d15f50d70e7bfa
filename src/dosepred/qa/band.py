"""The report's DVH band: per ROI, the calibrated pointwise interval of D at :data:`BAND_LEVELS`.

Calibration records per ROI the residuals plan - prediction of D at each volume level
(:func:`band_doses` of both doses, :func:`fit_band`); :func:`band_offsets` turns them into the signed
conformal interval at each level (pointwise: each point of the band holds its coverage for its own
level; the whole curve lies inside less often).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..dvh import roi_metrics, roi_voxel_indices
from ..patient import Patient
from .conformal import DEFAULT_RULE, signed_offsets

#: Volume levels (% of the ROI volume) at which the report's DVH band is calibrated: the residual
#: plan - prediction of D at each level, per ROI.
BAND_LEVELS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 98.0, 99.0)


@dataclass(frozen=True)
class DvhBand:
    """The ``dvh_band`` of calibration.json: the volume levels (%), the interval method (``signed``)
    and per ROI, per level, the sorted residuals of D (Gy; one per calibration patient)."""

    levels: tuple[float, ...]
    method: str
    rois: Mapping[str, tuple[tuple[float, ...], ...]]


def band_doses(patient: Patient, dose: np.ndarray, levels: Sequence[float] = BAND_LEVELS
               ) -> dict[str, list[float]]:
    """D at each volume level (Gy, OpenKBP's percentile definition) of every present ROI of
    ``patient`` in ``dose`` (on the patient's grid)."""
    flat = np.asarray(dose, dtype=np.float32).ravel()
    metrics = [f"D{v:g}%" for v in levels]
    return {r: roi_metrics(flat[ix], metrics, patient.voxel_volume_mm3)
            for r, ix in roi_voxel_indices(patient).items() if ix.size}


def fit_band(residuals: Mapping[str, Mapping[str, Sequence[float]]], levels: Sequence[float] = BAND_LEVELS
             ) -> DvhBand:
    """The band from ROI -> patient -> residuals at each level: per ROI and level the sorted residuals
    (one per calibration patient; Gy, rounded to 0.1 mGy to keep the file small)."""
    rois = {}
    for roi, rows in sorted(residuals.items()):
        a = np.asarray(list(rows.values()), dtype=np.float64).reshape(-1, len(levels))  # (patients, levels)
        rois[roi] = tuple(tuple(np.round(np.sort(col[np.isfinite(col)]), 4).tolist()) for col in a.T)
    return DvhBand(tuple(float(v) for v in levels), "signed", rois)


def band_offsets(band: DvhBand | None, roi: str, coverage: float, rule: str = DEFAULT_RULE
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(levels %, lower offsets, upper offsets) in Gy of ``roi``'s calibrated DVH band at ``coverage``:
    at each volume level the signed conformal interval of D at that level. None when the calibration
    has no band for the ROI; levels with too few patients for the coverage are left out."""
    if band is None or roi not in band.rois:
        return None
    levels, lo, hi = [], [], []
    for v, scores in zip(band.levels, band.rois[roi], strict=True):
        a, b = signed_offsets(scores, 1.0 - coverage, rule) if scores else (-math.inf, math.inf)
        if math.isfinite(a) and math.isfinite(b):
            levels.append(v)
            lo.append(a)
            hi.append(b)
    if not levels:
        return None
    return np.asarray(levels), np.asarray(lo), np.asarray(hi)
