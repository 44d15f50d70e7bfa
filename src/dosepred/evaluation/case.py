"""What scoring reads of one patient: :class:`ScoringCase`.

A case holds the reference and the predicted dose as flat arrays over the voxels that are scored
(the whole grid, the box outside which the reference's dose, mask and ROIs are zero, or a list of
voxels), which of them lie in the possible-dose mask, each ROI's voxels as indices into those
arrays, the volume of one voxel, and the prediction's dose on the voxels left out (the dose score's
numerator runs over all voxels). :meth:`ScoringCase.from_patient` builds it from a reference
:class:`~dosepred.Patient` and a dose; the fast paths of :mod:`dosepred.evaluation.pairing` build
it from what they read (cache voxel lists, boxes, sparse CSVs) without a Patient.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..constants import MAX_DOSE_GY
from ..dvh import roi_voxel_indices
from ..errors import InputError
from ..geometry import shear_problem
from ..patient import Patient, RoiSet
from ..resample import WARN_REF_DOSE_OUTSIDE_MASK, dose_within_mask


def as_dose_array(pred: Any, shape: tuple[int, ...], pid: str = "?") -> np.ndarray:
    """A prediction (numpy array or torch tensor, optionally with leading singleton axes) as a
    float array of ``shape``; raises ValueError naming the patient on a grid mismatch."""
    if hasattr(pred, "detach"):  # torch tensor, maybe on the GPU
        pred = pred.detach().float().cpu().numpy()
    a = np.asarray(pred)
    while a.ndim > len(shape) and a.shape[0] == 1:
        a = a[0]
    if a.shape != tuple(shape):
        raise InputError(f"patient {pid}: predicted dose has shape {np.shape(pred)}, but the reference grid "
                         f"is {tuple(shape)}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    return a


def abs_sum_outside(a: np.ndarray, box: tuple[slice, ...]) -> float:
    """sum |a| over the voxels of a 3-D ``a`` outside ``box``, as six slabs (no mask volume)."""
    (z0, z1), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in box)
    slabs = (a[:z0], a[z1:], a[z0:z1, :y0], a[z0:z1, y1:], a[z0:z1, y0:y1, :x0], a[z0:z1, y0:y1, x1:])
    return float(sum(np.abs(s).sum(dtype=np.float64) for s in slabs if s.size))


def prediction_where(pid: str, source: str | None) -> str:
    """The start of a message about a patient's predicted dose: the patient and, when known, its file."""
    return f"patient {pid}: " + (f"{source}: " if source else "")


def check_finite(pred: np.ndarray, pid: str, source: str | None) -> None:
    """Refuse a predicted dose holding NaN or inf (NaN would drop the patient from every mean)."""
    bad = int(np.count_nonzero(~np.isfinite(pred)))
    if bad:
        kinds = [k for k, f in (("NaN", np.isnan), ("inf", np.isinf)) if np.any(f(pred))]
        raise InputError(f"{prediction_where(pid, source)}the predicted dose holds {bad} non-finite value(s) "
                         f"({' and '.join(kinds)}); a dose is a finite number of Gy in every voxel")


def check_nonnegative(pred: np.ndarray, pid: str, source: str | None) -> None:
    """Refuse a predicted dose below 0 Gy anywhere (as a reference dose is refused): a negative
    voxel would lower the dose score's error and the DVH metrics without any warning."""
    lo = float(pred.min()) if pred.size else 0.0
    if lo < 0:
        n = int(np.count_nonzero(pred < 0))
        raise InputError(f"{prediction_where(pid, source)}the predicted dose must be >= 0 Gy, but {n} "
                         f"voxel(s) are negative (min is {lo:.4g} Gy)")


def scorable(ref: Patient) -> None:
    """Refuse a reference that cannot be scored against: no dose, or a sheared grid."""
    if ref.dose is None:
        raise InputError(f"patient {ref.id}: the reference has no dose to compare with")
    problem = None if ref.geometry is None else shear_problem(ref.geometry)
    if problem:  # the readers refuse such grids; a Patient built in Python reaches here directly
        raise InputError(f"patient {ref.id}: {problem}")


@dataclass(frozen=True, eq=False)
class ScoringCase:
    """One patient as scoring reads it. ``ref``, ``pred`` and ``mask`` are 1-D and of one length: the
    scored voxels (C order of a grid or box, or a voxel list); outside them the reference dose,
    possible-dose mask and ROIs are zero and the prediction's absolute dose sums to ``pred_outside``.
    ``rois``: each ROI of ``roi_set`` with voxels, as ascending indices into the arrays (ROIs with
    none are left out; a ROI of ``missing_rois`` must have none). ``source``: the prediction file,
    named in messages."""

    id: str
    roi_set: RoiSet
    ref: np.ndarray  # float, Gy
    pred: np.ndarray  # float, Gy
    mask: np.ndarray  # bool: the possible-dose voxels
    rois: Mapping[str, np.ndarray]
    voxel_mm3: float
    missing_rois: tuple[str, ...] = ()
    pred_outside: float = 0.0
    source: str | None = None
    n_mask: int = field(init=False)

    def __post_init__(self) -> None:
        n = self.ref.shape
        if self.ref.ndim != 1 or self.pred.shape != n or self.mask.shape != n or self.mask.dtype != bool:
            raise InputError(f"patient {self.id}: a scoring case needs 1-D reference, prediction and bool "
                             f"mask arrays of one length, got {self.ref.shape}, {self.pred.shape}, "
                             f"{self.mask.shape} {self.mask.dtype}")
        if self.ref.size:  # min and max see any NaN/inf without a temporary bool volume
            lo, hi = self.ref.min(), self.ref.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise InputError(f"patient {self.id}: dose contains NaN/inf")
            if lo < 0:
                raise InputError(f"patient {self.id}: dose must be >= 0 Gy, min is {lo:.4g}")
            if hi > MAX_DOSE_GY:  # as a Patient's: a reference in cGy (a case built by hand, a cache
                # written before the Patient refused one) scored thousands of Gy without a word
                raise InputError(f"patient {self.id}: the reference dose reaches {hi:.6g} Gy, over "
                                 f"{MAX_DOSE_GY:g} Gy: a dose in cGy? a dose is in Gy (divide by 100)")
            self._drop_dose_outside()
        for m in self.missing_rois:
            if m in self.rois:
                raise InputError(f"patient {self.id}: ROI {m} is recorded missing but has "
                                 f"{self.rois[m].size} voxel(s)")
        object.__setattr__(self, "n_mask", int(np.count_nonzero(self.mask)))

    def _drop_dose_outside(self) -> None:
        """The reference's dose outside the possible-dose mask is not scored (0 Gy there, for the dose
        score and the ROIs' metrics alike): a prediction is 0 Gy outside the mask, so it would count as
        its error. OpenKBP's references are 0 Gy there; one read from another format (a dose computed
        in air) may not be. A warning when over :data:`~dosepred.resample.WARN_REF_DOSE_OUTSIDE_MASK` of
        its dose is."""
        ref, share = dose_within_mask(self.ref, self.mask)
        if share > WARN_REF_DOSE_OUTSIDE_MASK:
            warnings.warn(f"patient {self.id}: {100 * share:.1f} % of the reference dose lies outside the "
                          "possible-dose mask; it is not scored (0 Gy there, as every prediction; a mask "
                          "that misses part of the patient?)", stacklevel=5)
        object.__setattr__(self, "ref", ref)

    @classmethod
    def from_patient(cls, ref: Patient, pred_dose: Any, source: str | None = None) -> ScoringCase:
        """The case of reference ``ref`` and predicted dose ``pred_dose`` (numpy array or torch tensor
        on ``ref``'s grid; leading singleton axes dropped). Only the box outside which the reference's
        dose, mask and ROIs are zero is kept (:meth:`Patient.support_box`, known from the cache or
        the CSV reader; else the whole grid), with the prediction's dose outside it as a sum.
        ``source``: the prediction file (default ``ref.meta["prediction_file"]``)."""
        scorable(ref)
        assert ref.dose is not None and ref.possible_dose_mask is not None
        source = source if source is not None else ref.meta.get("prediction_file")
        pred = as_dose_array(pred_dose, ref.shape, ref.id)
        box = ref.support_box()
        full = box is None or all(s.start == 0 and s.stop == n for s, n in zip(box, ref.shape, strict=True))
        if full:
            box = tuple(slice(0, n) for n in ref.shape)
        assert box is not None
        maskc = ref.possible_dose_mask[box]
        if not maskc.any():
            raise InputError(f"patient {ref.id}: the possible-dose mask is empty")
        outside = 0.0
        if not full:  # the voxels left out count in the dose score and in the checks
            check_finite(pred, ref.id, source)
            check_nonnegative(pred, ref.id, source)
            outside = abs_sum_outside(pred, box)
        return cls(ref.id, ref.roi_set, np.ascontiguousarray(ref.dose[box]).ravel(),
                   np.ascontiguousarray(pred[box]).ravel(), np.ascontiguousarray(maskc).ravel(),
                   roi_voxel_indices(ref, None, box), ref.voxel_volume_mm3, ref.missing_rois, outside, source)
