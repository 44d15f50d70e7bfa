"""Whether a patient's plan dose is explained by its contoured targets: the check, made wherever a
patient with a plan dose enters dosepred (:func:`dosepred.io.source.checked`: ``qa``'s plans,
``evaluate``'s references, ``data import-*`` with a dose), that no large high-dose volume lies far from
every contoured target.

Nothing else notices a dose level whose target is missing: a three-level plan exported with only
PTV70 contoured (PTV56 and PTV63 left out, or named so that nothing recognises them) is read as a
single-level plan; the model predicts a single-level dose, and QA flags the parotids, larynx and
brainstem by up to 18 Gy. "Not contoured: PTV56" is no hint (many OpenKBP plans have no PTV63).

The rule (docs/formats.md, with the distribution measured on OpenKBP): the volume inside the body
(possible-dose mask) farther than :data:`MARGIN_MM` from every contoured target with a prescription
that receives at least :data:`LEVEL` x the highest of their prescriptions (53.2 Gy of 70 Gy: 95 % of
56 Gy, the lowest level of OpenKBP's three-level plans) must not exceed :data:`MAX_RATIO` x the
targets' own volume (their union) and :data:`MIN_CC`. On OpenKBP's 169 training and 33 validation
plans this ratio has median 0.055 and maximum 0.36 (``scripts/measure_input_checks.py``); their
PTV70-only versions (the lower targets removed) exceed 0.5 in 97 of the 112 three-level plans and 62
of the 78 two-level ones (those that do not: lower targets mostly within 10 mm of PTV70).

A patient breaking it gets one :class:`TargetDoseWarning` naming the patient, the source, the volume
(cc), the dose level, the targets and the likely cause.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..patient import Patient

#: the dose level, as a fraction of the highest contoured prescription: 0.95 x 56 / 70 (the 95 %
#: coverage level of OpenKBP's lowest prescription, relative to its highest)
LEVEL = 0.76
#: only voxels farther than this (mm) from every contoured target count: the dose fall-off around a
#: target is no missing target
MARGIN_MM = 10.0
#: at most this many times the contoured targets' volume may lie there (OpenKBP train + validation:
#: median 0.055, 95th percentile 0.20, max 0.36 (pt_43); a margin of 1.4 x)
MAX_RATIO = 0.5
#: and a volume below this (cc) is never large
MIN_CC = 20.0


class TargetDoseWarning(UserWarning):
    """A patient's plan dose has a large high-dose volume far from every contoured target."""


@dataclass(frozen=True)
class OutsideDose:
    """The high-dose volume far from a patient's contoured targets (the module docstring's rule)."""

    #: cc farther than MARGIN_MM from every contoured target receiving >= level_gy
    volume_cc: float
    level_gy: float
    #: the contoured targets with a prescription and the volume of their union (cc)
    targets: tuple[str, ...]
    targets_cc: float

    @property
    def ratio(self) -> float:
        return self.volume_cc / self.targets_cc if self.targets_cc > 0 else float("inf")

    @property
    def large(self) -> bool:
        return self.volume_cc >= MIN_CC and self.ratio > MAX_RATIO

    def described(self) -> str:
        return (f"{self.volume_cc:.0f} cc farther than {MARGIN_MM:g} mm from every contoured target "
                f"({', '.join(self.targets)}) receive >= {self.level_gy:.1f} Gy ({LEVEL:.0%} of the highest "
                f"prescription), {self.ratio:.2f} x the targets' {self.targets_cc:.0f} cc (OpenKBP plans: at "
                f"most 0.36 x; over {MAX_RATIO:g} x is warned of)")


def outside_dose(p: Patient) -> OutsideDose | None:
    """The high-dose volume of ``p``'s plan dose far from its contoured prescribed targets (None
    without a dose or such a target)."""
    from scipy import ndimage

    if p.dose is None:
        return None
    rx = {r.name: float(r.prescription) for r in p.roi_set
          if r.kind == "target" and r.prescription and r.name not in p.missing_rois}
    union = np.zeros(p.shape, bool)
    have = []
    for name in rx:
        m = p.mask(name)
        if m.any():
            union |= m
            have.append(name)
    if not have:
        return None
    level = LEVEL * max(rx[n] for n in have)
    dose = np.asarray(p.dose)
    body = np.asarray(p.possible_dose_mask, bool)
    hot = (dose >= level) & body & ~union
    vox = p.voxel_volume_cc
    targets_cc = float(np.count_nonzero(union) * vox)
    if not hot.any():
        return OutsideDose(0.0, level, tuple(have), targets_cc)
    # distances within the box holding every target and hot voxel are those of the whole grid
    idx = np.argwhere(hot | union)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0), strict=True))
    assert p.geometry is not None
    dist = ndimage.distance_transform_edt(~union[box], sampling=p.geometry.spacing)
    far = np.count_nonzero(hot[box] & (dist > MARGIN_MM))
    return OutsideDose(float(far * vox), level, tuple(have), targets_cc)


def check_target_dose(p: Patient, where: str | None = None) -> OutsideDose | None:
    """The check of the module docstring on ``p`` (``where``: the source it was read from; else
    ``meta["source"]``): nothing when the dose is explained by the contoured targets, else one
    :class:`TargetDoseWarning`. Returns the measurement when it is large, else None."""
    o = outside_dose(p)
    if o is None or not o.large:
        return None
    src = where or p.meta.get("source")
    warnings.warn(f"patient {p.id}{f' of {src}' if src else ''}: {described(o)}", TargetDoseWarning,
                  stacklevel=2)
    return o


#: what a large high dose far from every prescribed target most likely means (the warning's and plan
#: QA's note's words)
LIKELY_CAUSE = ("a target of the plan not contoured, named otherwise or without a prescription (only "
                "prescribed targets count; name it and give its prescription with an ROI map, --roi-map, "
                "where the source takes one)")


def described(o: OutsideDose) -> str:
    """What :func:`check_target_dose` says (without the patient)."""
    return (f"high dose outside the contoured targets: {o.described()}; likely cause: {LIKELY_CAUSE}, so the "
            "patient reads as planned for fewer dose levels than it was")


__all__ = ["LEVEL", "LIKELY_CAUSE", "MARGIN_MM", "MAX_RATIO", "MIN_CC", "OutsideDose", "TargetDoseWarning",
           "check_target_dose", "described", "outside_dose"]
