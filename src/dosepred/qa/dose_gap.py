"""Plan doses missing in part of an ROI: 0 Gy where the model's prediction has dose.

An RTDOSE grid that does not cover every ROI (a dose computed on a box around the targets) reads as
0 Gy outside it (DICOM import, with a console warning that a cache does not keep). The ROI's criteria
then read only the dose that is there: plan QA notes such a plan
(:func:`dosepred.qa.check.dose_gap_note`) and calibration warns of it (its residuals would be the
missing dose, not the model's error).
"""

from __future__ import annotations

import numpy as np

from ..dvh import roi_voxel_indices
from ..patient import Patient

#: An ROI whose plan dose is 0 Gy where the prediction gives at least GAP_GY, in at least GAP_SHARE of
#: its voxels, gets a note (:func:`dosepred.qa.check.dose_gap_note`): the plan's dose does not reach
#: there (an RTDOSE grid that does not cover the ROI reads as 0 Gy). On the 33 OpenKBP validation
#: plans (openkbp-ensemble) the most such voxels of one ROI are 0 % (plan 0 Gy in up to 11.5 % of a
#: brainstem, where the prediction is below 0.2 Gy; in 4 % of a cord, below 5 Gy).
GAP_GY = 5.0
GAP_SHARE = 0.05
#: What a dose missing in part of an ROI most likely is.
GAP_CAUSE = "a dose grid that does not cover them (the RTDOSE computed or exported on a smaller box)"


def dose_gaps(plan: Patient, pred: np.ndarray) -> list[str]:
    """Per ROI of ``plan`` whose plan dose is 0 Gy where the prediction ``pred`` (on the plan's grid)
    gives :data:`GAP_GY` or more, in at least :data:`GAP_SHARE` of its voxels: how many of its voxels
    inside the possible-dose mask have 0 Gy, and the prediction's highest dose there (empty: none)."""
    dose = np.asarray(plan.dose, dtype=np.float32).ravel()
    p = np.asarray(pred, dtype=np.float32).ravel()
    body = None if plan.possible_dose_mask is None else np.asarray(plan.possible_dose_mask, bool).ravel()
    found = []
    for r, ix in roi_voxel_indices(plan).items():
        if not ix.size:
            continue
        zero = dose[ix] <= 0
        gap = zero & (p[ix] >= GAP_GY)
        if gap.sum() < GAP_SHARE * ix.size:
            continue
        n = int((zero & body[ix]).sum()) if body is not None else int(zero.sum())
        found.append(f"{r}: {n} of its {ix.size} voxels ({100 * n / ix.size:.0f} %) have 0 Gy in the plan, "
                     f"where the prediction gives up to {float(p[ix][gap].max()):.1f} Gy")
    return found
