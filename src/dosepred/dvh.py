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
from typing import Literal

import numpy as np

from .constants import MAX_CRITERION_GY
from .errors import InputError
from .metrics import (
    Metric,
    MetricError,
    check_gy,
    compute,
    parse_metric,
    percentile_index,
    percentile_q,
    v_cut,
    v_percent,
    v_threshold,
)
from .patient import Patient, as_spacing
from .roi import binary_mask

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
            raise InputError(f"DVH {self.name}: doses contain NaN/inf")
        check_gy(d, f"DVH {self.name}: doses")
        for what, v in (("voxel volume", self.voxel_volume_mm3), ("bin width", self.bin_width),
                        ("prescription", self.prescription)):
            if v is not None and (isinstance(v, (bool, np.bool_))
                                  or not isinstance(v, (int, float, np.number))):
                raise InputError(f"DVH {self.name}: {what} must be a number, got {v!r}")
        rx = self.prescription  # as an ROI's (RoiSet): one in cGy made V95% count doses over 6650 Gy
        if rx is not None and not 0 < rx <= MAX_CRITERION_GY:
            raise InputError(f"DVH {self.name}: prescription must be a number of Gy, 0 < Rx <= "
                             f"{MAX_CRITERION_GY:g} (cGy / 100), got {rx!r}")
        if not self.voxel_volume_mm3 > 0:
            raise InputError(f"DVH {self.name}: voxel volume must be > 0 mm^3, got {self.voxel_volume_mm3}")
        if not self.bin_width > 0:
            raise InputError(f"DVH {self.name}: bin width must be > 0 Gy, got {self.bin_width}")
        object.__setattr__(self, "doses", d)

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
                raise InputError(f"volume must be 0..100 %, got {volume}")
            return self.metric(Metric("D", float(volume), "%"))
        if unit == "cc":
            if not volume > 0:
                raise InputError(f"volume must be > 0 cc, got {volume}")
            return self.metric(Metric("D", float(volume), "cc"))
        raise InputError(f"unit must be '%' or 'cc', got {unit!r}")

    def volume_at_dose(self, dose: float, unit: VolumeUnit = "%") -> float:
        """Volume receiving at least ``dose`` Gy (:func:`dosepred.metrics.v_cut`), in % of the ROI or
        in cc."""
        if self.n_voxels == 0:
            return math.nan
        n = self.n_voxels - int(np.searchsorted(self.doses, v_cut(dose), side="left"))
        if unit == "%":
            return n / self.n_voxels * 100.0
        if unit == "cc":
            return n * self.voxel_volume_mm3 / 1000.0
        raise InputError(f"unit must be '%' or 'cc', got {unit!r}")

    # ------------------------------------------------------------------------------ binned curves
    @property
    def edges(self) -> np.ndarray:
        """Bin edges (Gy) from 0 to the first edge above the maximum dose (:func:`dvh_edges`)."""
        return dvh_edges(self.max if self.n_voxels else 0.0, self.bin_width)

    def differential(self, unit: VolumeUnit = "cc") -> np.ndarray:
        """Volume per bin ``[edges[i], edges[i+1])`` (a dose at an edge, whatever its float rounding,
        in the bin it starts, as :meth:`volume_at_dose` counts it); length ``len(edges) - 1``."""
        c = self._at_least(self.edges)
        return self._scale((c[:-1] - c[1:]).astype(np.float64), unit)

    def cumulative(self, unit: VolumeUnit = "%") -> np.ndarray:
        """Volume receiving at least ``edges[i]`` Gy (:meth:`volume_at_dose` at each edge); same length
        as :attr:`edges` (last is 0)."""
        return self._scale(self._at_least(self.edges).astype(np.float64), unit)

    def _at_least(self, doses: np.ndarray) -> np.ndarray:
        """Voxels at or above each dose (:func:`dosepred.metrics.v_cut`'s tolerance)."""
        return self.n_voxels - np.searchsorted(self.doses, v_cut(doses), side="left")

    def _scale(self, counts: np.ndarray, unit: VolumeUnit) -> np.ndarray:
        if unit == "cc":
            return counts * (self.voxel_volume_mm3 / 1000.0)
        if unit == "%":
            return counts / max(self.n_voxels, 1) * 100.0
        raise InputError(f"unit must be '%' or 'cc', got {unit!r}")


# ---------------------------------------------------------------------------------- functions

def dvh_edges(max_dose: float, bin_width: float) -> np.ndarray:
    """Bin edges (Gy) ``0, w, 2w, ...`` up to the first edge above ``max_dose`` (beyond the
    :func:`~dosepred.metrics.v_cut` tolerance: a maximum at an edge, 0.3 Gy of 0.1 Gy bins, has one
    more edge above it, so the cumulative curve ends at 0)."""
    k = int(math.floor(max_dose / bin_width))
    while v_cut(k * bin_width) <= max_dose:
        k += 1
    return np.arange(k + 1, dtype=np.float64) * bin_width


def _parse_all(metrics: Sequence[str | Metric]) -> list[Metric]:
    """The parsed metrics of a list; one string (``"D95%"`` for ``["D95%"]``) is a MetricError, not
    its characters parsed one by one."""
    if isinstance(metrics, (str, Metric)):
        raise MetricError(f"metrics must be a list of metrics, got one: {metrics!s}; give [{str(metrics)!r}]")
    return [parse_metric(m) for m in metrics]


def roi_metrics(doses: np.ndarray, metrics: Sequence[str | Metric], voxel_volume_mm3: float,
                prescription: float | None = None) -> list[float]:
    """Several metrics of one ROI's voxel doses (1-D) at once: the percentile metrics share one
    ``np.percentile`` call. Values equal :func:`dosepred.metrics.compute` (NaN for an empty ROI)."""
    ms = _parse_all(metrics)
    d = np.asarray(doses, dtype=np.float64).ravel()
    if d.size == 0:
        return [math.nan] * len(ms)
    check_gy(d)  # as compute: V20Gy of a dose in cGy counted the voxels over 20 cGy
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
            out[i] = v_percent(d, v_threshold(m, prescription))
    return out


def _linear_percentiles(x: np.ndarray, qs: Sequence[float]) -> list[tuple[float, float]]:
    """``np.percentile(row, q)`` (method "linear") of both rows of a (2, n) float64 array for each q,
    partitioning ``x`` in place along its contiguous rows once. numpy's own arithmetic (virtual
    index, floor and fraction from :func:`dosepred.metrics.percentile_index`, the two-sided lerp)
    in Python floats, so values are identical, without numpy's axis moves and per-call overhead."""
    n = x.shape[1]
    spots = [percentile_index(float(q), n) for q in qs]
    x.partition(sorted({i for lo, hi, _ in spots for i in (lo, hi)}), axis=1)
    out = []
    for lo, hi, g in spots:
        pair = []
        for r in (0, 1):
            a, b = float(x[r, lo]), float(x[r, hi])
            d = b - a
            pair.append(b - d * (1 - g) if g >= 0.5 else a + d * g)
        out.append((pair[0], pair[1]))
    return out


def roi_metrics_pair(ref: np.ndarray, pred: np.ndarray, metrics: Sequence[str | Metric],
                     voxel_volume_mm3: float, prescription: float | None = None
                     ) -> tuple[list[float], list[float]]:
    """:func:`roi_metrics` of two dose arrays over the same ROI voxels (reference and prediction) at
    once: one ``np.percentile`` call serves every percentile metric of both. Same values."""
    ms = _parse_all(metrics)
    ref, pred = np.ravel(ref), np.ravel(pred)
    if ref.size != pred.size:
        raise ValueError(f"reference and prediction have {ref.size} and {pred.size} ROI voxels")
    if ref.size == 0:
        return [math.nan] * len(ms), [math.nan] * len(ms)
    x = np.empty((2, ref.size), dtype=np.float64)
    x[0], x[1] = ref, pred
    a, b = x
    ra, rb = [math.nan] * len(ms), [math.nan] * len(ms)
    for i, m in enumerate(ms):  # before the percentiles, which reorder x in place
        if m.kind == "Dmean":
            ra[i], rb[i] = float(a.mean()), float(b.mean())
        elif m.kind == "V":
            t = v_threshold(m, prescription)
            ra[i], rb[i] = v_percent(a, t), v_percent(b, t)
    pct = [(i, percentile_q(m, a.size, voxel_volume_mm3))
           for i, m in enumerate(ms) if m.kind in ("D", "Dmax", "Dmin")]
    if pct:
        if not (np.isfinite(a).all() and np.isfinite(b).all()):  # NaN/inf: numpy's own handling
            vals = np.percentile(x, [q for _, q in pct], axis=1)
        else:
            vals = _linear_percentiles(x, [q for _, q in pct])  # (len(pct), 2)
        for (i, _), (va, vb) in zip(pct, vals, strict=True):
            ra[i], rb[i] = float(va), float(vb)
    return ra, rb


def roi_metric(patient_or_dose: Patient | np.ndarray, mask: np.ndarray | str, metric: str | Metric,
               spacing: Sequence[float] | None = None, prescription: float | None = None) -> float:
    """Exact metric of one ROI.

    ``roi_metric(patient, "PTV70", "D95%")`` uses the patient's dose, ROI, voxel volume and prescription;
    ``roi_metric(dose, mask, "D0.1cc", spacing=(4, 4, 2.5))`` works on plain arrays.
    """
    if isinstance(patient_or_dose, Patient):
        p = patient_or_dose
        if p.dose is None:
            raise InputError(f"patient {p.id} has no dose")
        if isinstance(mask, str):
            if prescription is None:
                prescription = p.roi_set.prescription(mask)
            mask = p.mask(mask)
        dose = p.dose
        # the patient's voxel volume: |det| of its grid, which the spacing's product is not on a sheared one
        vox = p.voxel_volume_mm3 if spacing is None else float(np.prod(as_spacing(spacing)))
    else:
        dose = np.asarray(patient_or_dose)
        if isinstance(mask, str):
            raise InputError("an ROI name needs a Patient; pass a boolean mask with a dose array")
        if spacing is None:
            raise InputError("spacing (mm per axis) is needed to compute metrics from a dose array")
        vox = float(np.prod(as_spacing(spacing)))
    mask = binary_mask(mask, "mask")
    if mask.shape != np.shape(dose):
        raise InputError(f"mask shape {mask.shape} != dose shape {np.shape(dose)}")
    try:
        return compute(metric, dose[mask], vox, prescription)
    except MetricError:
        raise
    except (AssertionError, TypeError) as e:  # pragma: no cover - defensive
        raise ValueError(f"cannot compute {metric}: {e}") from None


def roi_voxel_indices(patient: Patient, names: Sequence[str] | str | None = None,
                      box: tuple[slice, ...] | None = None) -> dict[str, np.ndarray]:
    """Flat (C order) voxel indices of each present ROI of ``patient``, decoded in one pass.

    Only voxels with a non-zero code are read, so the cost is that of the ROIs, not of the grid.
    Missing ROIs (no contour) are left out. With ``box`` (slices per axis, holding every ROI voxel)
    the indices are into the C-order flattening of ``roi_codes[box]``.
    """
    names = patient.roi_set.names if names is None else [names] if isinstance(names, str) else names
    names = [n for n in names if n not in patient.missing_rois]
    bits = [patient.roi_set.index(n) for n in names]
    whole = box is None or all(s.start in (0, None) and s.stop in (n, None) and s.step in (1, None)
                               for s, n in zip(box, patient.shape, strict=True))
    known = patient.roi_voxels() if whole else None
    if known is not None:  # the reader recorded the non-zero voxels: no scan of the volume
        return voxel_list_indices(known[0], known[1], bits, names)
    codes = patient.roi_codes if box is None else patient.roi_codes[box]
    return codes_voxel_indices(codes, bits, names)


def codes_voxel_indices(codes: np.ndarray, bits: Sequence[int],
                        names: Sequence[str]) -> dict[str, np.ndarray]:
    """name -> flat indices of the voxels of ``codes`` with bit ``bits[i]`` set (empty ROIs left out)."""
    flat = codes.ravel()
    nz = np.flatnonzero(flat != 0)  # a bool volume first: ~7x faster than nonzero on uint16 codes
    return voxel_list_indices(nz, flat[nz], bits, names)


def voxel_list_indices(nz: np.ndarray, c: np.ndarray, bits: Sequence[int],
                       names: Sequence[str]) -> dict[str, np.ndarray]:
    """name -> the entries of ``nz`` (voxel indices, e.g. a reader's list of the non-zero-code voxels)
    whose code in ``c`` has bit ``bits[i]`` set (empty ones left out)."""
    one = c.dtype.type(1)
    out: dict[str, np.ndarray] = {}
    for n, k in zip(names, bits, strict=True):
        sel = (c >> c.dtype.type(k)) & one
        idx = nz[sel.view(bool) if sel.dtype.itemsize == 1 else sel.astype(bool)]
        if idx.size:
            out[n] = idx
    return out
