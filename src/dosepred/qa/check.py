"""Knowledge-based plan QA: a clinical plan against the dose the model predicts as achievable.

::

    from dosepred.qa import run_qa
    result = run_qa("models/openkbp-mae-cdm", "plans/", "openkbp-clinical", coverage=0.9)
    result.to_json()   # {"coverage", "model", "patients": [{"id", "criteria": [...]}], "summary", ...}

For every patient and criterion of the protocol: the plan's value, the predicted achievable value,
the calibrated interval at ``coverage`` (the model must have a ``calibration.json``,
:mod:`dosepred.qa.calibration`), the plan's pass/fail against the limit, and flags
(:mod:`dosepred.qa.result`). A plan with none of the model's targets or none of its OARs is refused
(:class:`QAError`); a plan lacking another ROI keeps that ROI's criteria without values (``ROI not
contoured``).

Reliability notes concern the patient and are given once per patient, only where validation
measured a larger error (docs/qa.md, "Reliability notes"): a grid far from the model's training data
(a spacing more than :data:`COARSE_NOTE_FACTOR` times the coarsest training spacing on its axis; a
field of view far off or no body mask, :meth:`dosepred.models.space.ModelSpace.differences`) and an
ROI volume far outside the training range (:data:`VOLUME_FACTOR`).

The model predicts as the calibration's predictions were made (:attr:`QAChecker.tta`, the
calibration file's ``tta``): flipped, as ``dosepred predict`` by default, for calibrations of version 3;
unflipped for older ones (with a warning), whose intervals describe unflipped predictions.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..dvh import roi_voxel_indices
from ..errors import DosepredError, InputError, recording_warnings
from ..evaluation import evaluate_patient
from ..io import rx_check, side_check, target_dose_check
from ..io.rx_check import PrescriptionWarning
from ..io.side_check import LateralityWarning
from ..io.source import plan_source
from ..io.target_dose_check import TargetDoseWarning
from ..patient import SAME_LEVEL, Patient, RoiSet, same_level
from ..progress import track
from ..protocol import ProtocolError, load_protocol
from .band import band_offsets
from .calibration import CalibrationError, load_calibration
from .conformal import family_offsets, highest_coverage, interval
from .dose_gap import GAP_CAUSE, dose_gaps
from .families import lower_is_better, metric_family
from .report import QAReportWriter
from .result import (
    FLAG_NOT_CONTOURED,
    FLAG_UNCALIBRATED,
    NOTE_CT,
    NOTE_DOSE_GAP,
    NOTE_GRID,
    NOTE_OFF_RX,
    NOTE_RX,
    NOTE_SIDE,
    NOTE_TARGET_DOSE,
    NOTE_UNPRESCRIBED,
    NOTE_VOLUME,
    CriterionQA,
    PatientQA,
    QAResult,
    flags_for,
)

#: A spacing more than this many times the training data's coarsest on its axis gets a note: on the
#: validation plans put on coarser grids, errors grew from about 10 % beyond the training range
#: (docs/qa.md, "Reliability notes"); pt_201 of the OpenKBP validation split (5.42 mm in-plane) is
#: 7 % beyond it (OpenKBP's 128 voxels across a CT field of view of at most 700 mm: <= 5.47 mm).
COARSE_NOTE_FACTOR = 1.1
#: What the grid note says of its measured effect (docs/qa.md, "Reliability notes").
GRID_EFFECT = ("validation plans put on such grids: target dose errors 1.5 x larger, 23 % outside "
               "their 90 % intervals; docs/qa.md")
#: An ROI volume is "far outside" the training range below its minimum / VOLUME_FACTOR or above its
#: maximum x VOLUME_FACTOR (new patients of the training population fall just outside a range of 169
#: patients quite often: 4 of the 33 OpenKBP validation patients by 2 %).
VOLUME_FACTOR = 1.5
#: A target's median plan dose above this multiple of the highest prescription is a plan QA's intervals
#: do not describe (a note, :func:`input_notes`), though within the looser rule every source's patients
#: pass (:data:`dosepred.io.rx_check.HIGH`): the plans of the released calibrations and of the models'
#: training, OpenKBP's 202 train and validation plans, give each target at most 1.06 x the highest
#: prescription (PTV70 0.89-1.06 x its own); validation plans normalised to a PTV70 D95% of 77 Gy give
#: 1.13-1.22 x.
QA_HIGH = 1.1


class QAError(DosepredError, ValueError):
    """A plan QA cannot check (it lacks the model's targets or OARs); the message names the patient."""


def contoured(p: Patient) -> list[str]:
    """The ROIs of ``p`` (its own names) that have at least one voxel."""
    codes = np.asarray(p.roi_codes)
    bits = int(np.bitwise_or.reduce(codes, axis=None)) if codes.size else 0
    return [n for n in p.present_rois if (bits >> p.roi_set.index(n)) & 1]



# ------------------------------------------------------------------------------------ sources
def to_roi_set(p: Patient, roi_set: RoiSet) -> Patient:
    """The patient with its ROIs re-encoded in ``roi_set``'s bit order (by name); ROIs of the set that
    the patient lacks or has without a voxel are recorded missing, others are dropped. Prescriptions:
    ``roi_set``'s."""
    have = set(contoured(p))
    if p.roi_set.names == roi_set.names and p.roi_set == roi_set and have == set(p.present_rois):
        return p
    masks = {n: p.mask(n) for n in roi_set.names if n in have}
    return Patient.from_masks(p.id, p.ct, masks, roi_set, p.spacing, p.possible_dose_mask, p.dose,
                              dict(p.meta), p.geometry)


def open_plans(src: str | os.PathLike, roi_map: Any = None) -> Iterator[Patient]:
    """Patients with their plan dose from any source (:func:`dosepred.io.source.plan_source`: a cache,
    an OpenKBP folder, a NIfTI folder or a DICOM folder of CT + RTSTRUCT + RTDOSE; ``roi_map``: the
    DICOM folder's ROI name map)."""
    needs = "QA compares each plan's dose with the model's prediction"
    yield from plan_source(src, roi_map, needs).patients(require_dose=True)


def input_notes(plan: Patient) -> list[str]:
    """The notes of a plan's own inputs, from the checks every source's patients pass
    (:func:`dosepred.io.source.checked`, which warns of them as they are read): a large high dose far
    from every contoured target (:mod:`dosepred.io.target_dose_check`: the model predicts as for a
    plan of fewer dose levels, so the plan's flags cannot be trusted) and ROIs named for a side lying
    on the other (:mod:`dosepred.io.side_check`), and a plan dose that disagrees with its targets'
    prescriptions (:mod:`dosepred.io.rx_check`: a phase of the plan, a plan of other prescriptions under
    these names; the model predicts for the prescriptions, so the flags compare another plan), or, within
    that check, a median above :data:`QA_HIGH` x the highest prescription, which no plan of the
    calibration's gave (a plan prescribed higher than its names say, or normalised hot)."""
    out = []
    doses = rx_check.target_doses(plan)
    bad = [t for t in doses if t.inconsistent]
    hot = [t for t in doses if not t.inconsistent and t.ratio_highest > QA_HIGH]
    if bad:
        out.append(f"{NOTE_RX}: " + "; ".join(t.described() for t in bad)
                   + f" (a target's median plan dose should lie within {rx_check.LOW:g} x its "
                   f"prescription and {rx_check.HIGH:g} x the highest): the dose of a phase or of another "
                   "plan, its units or the targets' prescriptions? The achievable dose is predicted for the "
                   "prescriptions, so this plan's flags (target coverage above all) cannot be trusted; give "
                   "the plan's whole dose or the targets' prescriptions and run again")
    elif hot:
        listed = "; ".join(f"{t.name} (Rx {t.prescription:g} Gy): median {t.median:.1f} Gy = "
                           f"{t.ratio_highest:.2f} x the highest Rx" for t in hot)
        out.append(f"{NOTE_RX}: {listed}, above {QA_HIGH:g} x (the calibration's plans, OpenKBP's 202 train "
                   "and validation plans: at most 1.06 x): a plan prescribed higher than its targets' names "
                   "say, or normalised hot? The achievable dose is predicted, and the intervals calibrated, "
                   "for plans delivering the prescriptions, so this plan's flags (OAR doses and hot spots "
                   "above achievable above all) cannot be trusted; give the targets' prescriptions or "
                   "normalise the plan to them and run again")
    o = target_dose_check.outside_dose(plan)
    if o is not None and o.large:
        out.append(f"{NOTE_TARGET_DOSE}: {o.described()}: {target_dose_check.LIKELY_CAUSE}? The achievable "
                   "dose is predicted for the prescribed targets only, so this plan's flags (OAR doses above "
                   "achievable above all) cannot be trusted")
    from ..predict import loose_targets, loose_words  # heavy: dosepred.predict imports torch

    loose = loose_targets(plan)
    if loose:
        out.append(f"{NOTE_UNPRESCRIBED}: " + loose_words(plan, loose, ", so this plan's flags (OAR doses "
                                                          "above achievable above all) cannot be trusted"))
    found = side_check.side_findings(plan)
    if found:
        out.append(f"{NOTE_SIDE}: " + "; ".join(f.described() for f in found) + " (LPS x, + is the "
                   "patient's left): left and right labels swapped? Their criteria are checked against the "
                   "other side's intervals (and predicted with the names as given); correct the names")
    return out


def dose_gap_note(plan: Patient, pred: np.ndarray) -> str | None:
    """The note of a plan whose dose is missing in part of its ROIs (None when it is not,
    :func:`dosepred.qa.dose_gap.dose_gaps`): their criteria read only the dose that is there."""
    found = dose_gaps(plan, pred)
    if not found:
        return None
    return (f"{NOTE_DOSE_GAP}: " + "; ".join(found) + f": {GAP_CAUSE}? Their criteria read only the "
            "dose that is there (an OAR better than predicted, a target's coverage below it), so this plan's "
            "flags cannot be trusted; give the plan's dose on a grid covering every ROI and run again")


def off_rx_note(plan: Patient, pred: np.ndarray) -> str | None:
    """The note of a plan whose predicted dose does not deliver its prescriptions (None when it does,
    :func:`dosepred.predict.implausible_targets`, the rule a plan dose meets; ``predict`` warns of the
    same): the achievable dose it is compared with is no plan of them."""
    from ..predict import implausible_targets  # heavy: dosepred.predict imports torch

    bad = implausible_targets(plan, pred)
    if not bad:
        return None
    listed = "; ".join(f"{t.name} (Rx {t.prescription:g} Gy): predicted median {t.median:.1f} Gy = "
                       f"{t.ratio:.2f} x Rx" + (f" = {t.ratio_highest:.2f} x the highest Rx"
                                                if t.ratio_highest > rx_check.HIGH else "") for t in bad)
    return (f"{NOTE_OFF_RX}: {listed} (every plan, and the released models' predictions of the OpenKBP "
            f"validation patients, give a target {rx_check.LOW:g} x its prescription to {rx_check.HIGH:g} x "
            "the highest): "
            "the plan is unlike those the model was trained on (a target far smaller or larger than theirs, "
            "another site), so the dose it is compared with is no plan of its prescriptions and this plan's "
            "flags cannot be trusted; this model cannot check it")


# ---------------------------------------------------------------------------------------- qa
class QAChecker:
    """A loaded model and its calibration; :meth:`check` runs QA on one plan."""

    def __init__(self, model: str | os.PathLike, protocol: Any, coverage: float = 0.9,
                 device: Any = None) -> None:
        from ..models.checkpoint import load_model, resolve_model_path
        from ..predict import resolve_device

        if not 0 < coverage < 1:
            raise InputError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}")
        self.model_path = resolve_model_path(model)
        #: The model's calibration.json (:class:`~dosepred.qa.calibration.Calibration`)
        self.calibration = load_calibration(self.model_path)
        self._check_model_hash()
        self.net = load_model(self.model_path, resolve_device(device or "auto"))
        self._check_model_hash()  # again: a training may have saved over the file while it was read
        self.roi_set: RoiSet = self.net.config.roi_set
        self.protocol = load_protocol(protocol)
        #: the protocol resolved against the model's ROIs, once (plans are checked on those ROIs)
        self.bound = self.protocol.bind(self.roi_set, roi_owner="the model")
        self._check_prescriptions()
        self.coverage = coverage
        self.methods = self.calibration.methods
        self.calibrated = set(self.calibration.criteria)
        self.rule = self.calibration.quantile_rule
        #: Predict with flipping as the calibration's predictions were (False for versions 1 and 2)
        self.tta = self.calibration.tta
        #: How QA predicts (:func:`~dosepred.qa.calibration.qa_inference`: flipped as :attr:`tta`)
        self.inference = self.calibration.inference
        self._bands: dict[str, Any] = {}
        self.warnings: list[str] = []
        self._check_protocol()
        if not self.tta:
            self.warnings.append(
                f"{self.model_path.parent / 'calibration.json'} (version {self.calibration.version}) was "
                "made from unflipped predictions, so QA predicts without flipping to match it (not as "
                "`dosepred predict` does by default); recalibrate with `dosepred calibrate` for flipped "
                "predictions and their narrower intervals (docs/qa.md)")
        # only a file of version 1-3 may lack these (calibration.REQUIRED_FIELDS): say what is not checked
        lacks = [what for what, gone in (
            ("no model SHA-256, so QA cannot check that it was computed for this model file",
             self.calibration.model_sha256 is None),
            ("no criteria, so every criterion is flagged as not calibrated", not self.calibrated),
            ("no training ROI volume ranges, so no ROI volume is noted as far outside them",
             self.calibration.training_ranges is None or not self.calibration.training_ranges.roi_volume_cc))
            if gone]
        if lacks:
            self.warnings.append(f"{self.model_path.parent / 'calibration.json'} (version "
                                 f"{self.calibration.version}) records {'; '.join(lacks)}: recalibrate with "
                                 "`dosepred calibrate`")

    def _check_model_hash(self) -> None:
        self.calibration.check_model_file(self.model_path)

    def _check_prescriptions(self) -> None:
        """ProtocolError for a protocol that prescribes one of the model's targets otherwise than the
        model, where a criterion depends on it (a V-metric in % of the prescription such as V110%, a
        limit in %Rx). QA only checks plans prescribed as the model (:meth:`_other_prescriptions`);
        such a protocol would measure them against another prescription, and its ``PTV70 V110%``
        (the volume above 110 % of 66 Gy) would take the calibrated interval of the model's (above
        110 % of 70 Gy): the calibration's criteria are keyed by ROI and metric only."""
        if self.bound.prescription_conflicts():
            said = self.bound.said_conflicts("the model")
            raise ProtocolError(
                f"protocol {self.protocol.name!r} prescribes {said}: QA checks plans prescribed as the "
                f"model {self.model_path.parent.name} (others are refused), and these criteria, relative "
                "to the prescription, would be measured against another one and compared with intervals "
                "calibrated for the model's; give the protocol the model's prescriptions")
        rounded = self.bound.said_roundings("the model")
        if rounded:
            self.warnings.append(rounded)

    def _check_protocol(self) -> None:
        families = self.calibration.families
        missing: dict[str, list[str]] = {}
        short: dict[str, int] = {}  # family -> its units, too few for the coverage asked for

        def bounded(fam: str, coverage: float) -> bool:  # -inf / +inf: too few units for this coverage
            lo, hi = family_offsets(families[fam], self.methods[fam], coverage, self.rule)
            return lo > -math.inf and hi < math.inf

        for c in self.bound.criteria:
            fam = metric_family(c.metric, c.kind)
            if fam not in families:
                missing.setdefault(fam, []).append(c.criterion.name)
            elif fam not in short and not bounded(fam, self.coverage):
                short[fam] = len(families[fam].scores[self.methods[fam]])  # calibration.json's n agrees
        if short:  # every family that falls short, and the highest coverage all of them can give
            most = highest_coverage(lambda cov: all(bounded(f, cov) for f in short), self.coverage)
            fams = ", ".join(f"{f} ({n} unit{'s' if n != 1 else ''})" for f, n in short.items())
            which = f"families {fams} have" if len(short) > 1 else f"family {fams} has"
            lower = (f"ask for a lower --coverage (at most {most:g})" if most > 0 else
                     "no coverage can be given: recalibrate on more patients (`dosepred calibrate`)")
            raise CalibrationError(f"coverage {self.coverage:g} needs more calibration units than {which}: "
                                   f"{lower}")
        if missing:
            fams = "; ".join(f"{f} ({', '.join(v)})" for f, v in missing.items())
            raise CalibrationError(
                f"the calibration of {self.model_path.parent} (protocol {self.calibration.protocol!r}) "
                f"covers the families {', '.join(sorted(families))}, not {fams}: recalibrate with "
                f"`dosepred calibrate --protocol {self.protocol.name}`")
        if self.calibration.protocol != self.protocol.name:
            self.warnings.append(f"calibration computed for protocol {self.calibration.protocol!r}, QA "
                                 f"with {self.protocol.name!r}: criteria it did not see use their family's "
                                 "interval")

    def dvh_band(self, roi: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(levels %, lower, upper offsets in Gy) of ``roi``'s calibrated DVH band at the checker's
        coverage (:func:`dosepred.qa.band.band_offsets`); None without one (calibrations before
        version 2, ROIs the calibration patients did not have)."""
        if roi not in self._bands:
            self._bands[roi] = band_offsets(self.calibration.dvh_band, roi, self.coverage, self.rule)
        return self._bands[roi]

    @property
    def has_dvh_band(self) -> bool:
        """Whether the calibration has a DVH band (version 2); else the report's band is illustrative."""
        return self.calibration.dvh_band is not None

    def predict(self, plan: Patient) -> np.ndarray:
        """The achievable dose on ``plan``'s grid (``plan`` as :meth:`prepare` returns it), flipped
        (averaged with the left-right mirrored prediction) when the calibration's predictions were
        (:attr:`tta`): the intervals describe the errors of predictions made that way. A plan far
        from the training data gets a note (:meth:`notes`), not also a warning."""
        from ..predict import predict_dose

        return predict_dose(self.net, plan, self.inference, warn=False)

    def unusable(self, plan: Patient) -> str | None:
        """Why QA cannot check ``plan`` (None when it can): none of the model's targets is contoured,
        none of its OARs, none of the ROIs of the protocol's criteria, or it lacks an ROI that every
        patient the model was trained on had (the model space's ``absent_rois``; ``predict`` refuses
        such a patient without ``--allow-missing-rois``; one that few training patients lacked is
        checked with a warning, :meth:`check`), or it is planned for other prescriptions
        (:meth:`_other_prescriptions`). The message names the patient, what it lacks or has otherwise
        and the ROIs it has."""
        from ..predict import model_space

        have = contoured(plan)
        mine = set(have) & set(self.roi_set.names)
        targets = [r.name for r in self.roi_set if r.kind == "target"]
        oars = [r.name for r in self.roi_set if r.kind == "oar"]
        none_of = []
        if targets and not mine & set(targets):
            none_of.append(f"none of the model's targets ({', '.join(targets)})")
        if oars and not mine & set(oars):
            none_of.append(f"none of its OARs ({', '.join(oars)})")
        rois = list(dict.fromkeys(c.roi for c in self.protocol.criteria))
        if not none_of and not mine & set(rois):
            none_of.append(f"none of the ROIs of protocol {self.protocol.name}'s criteria "
                           f"({', '.join(rois)})")
        why = f"{' and '.join(none_of)} is contoured" if none_of else ""
        absent = model_space(self.net).absent_rois
        if not why and absent is not None:
            need = [n for n in self.roi_set.names if n not in mine and n not in absent]
            if need:
                why = f"it lacks {', '.join(need)}, which every patient the model was trained on had"
        if not why:
            why = self._other_prescriptions(plan, set(have))
        if not why:
            return None
        its = f"its ROIs: {', '.join(have)}" if have else "it has no contoured ROI"
        return f"patient {plan.id}: {why} ({its})"

    def _other_prescriptions(self, plan: Patient, have: set[str]) -> str:
        """Why ``plan`` is planned for other prescriptions than the model ("" when it is not): a
        contoured ROI of the model's with another kind or prescription, or a contoured prescribed
        target the model does not know (``predict`` refuses both). Checked as it is, the plan would be
        compared with a prediction for the model's prescriptions (:meth:`prepare` gives the plan the
        model's ROI set), by criteria relative to the model's prescriptions."""
        def rx(r: Any) -> str:
            return f" ({r.prescription:g} Gy)" if r.prescription else ""

        mine = {r.name: r for r in self.roi_set}
        parts = [f"its {r.name} is a {r.kind}{rx(r)} but the model's is a {m.kind}{rx(m)}"
                 for r in plan.roi_set if r.name in have and (m := mine.get(r.name)) is not None
                 and (r.kind != m.kind or not same_level(r.prescription, m.prescription))]
        unknown = [r for r in plan.roi_set
                   if r.name in have and r.name not in mine and r.kind == "target" and r.prescription]
        if unknown:
            one = len(unknown) == 1
            theirs = ", ".join(f"{r.name}{rx(r)}" for r in self.roi_set if r.kind == "target")
            parts.append(f"its target{'' if one else 's'} {', '.join(f'{r.name}{rx(r)}' for r in unknown)} "
                         f"{'is' if one else 'are'} not among the model's ({theirs}), so the achievable dose "
                         f"would be predicted without {'it' if one else 'them'}")
        return "; ".join(parts)

    def refusal(self, reasons: list[str], n_plans: int) -> QAError:
        """The one error of a run with plans QA cannot check (:meth:`unusable` reasons)."""
        what = (f"model {self.model_path.parent.name} predicts from {', '.join(self.roi_set.names)}; QA is "
                "all or nothing, nothing was written")
        if len(reasons) == 1 and n_plans == 1:
            return QAError(f"{reasons[0]}: QA cannot check this plan ({what})")
        return QAError(f"{len(reasons)} of the {n_plans} plans cannot be checked ({what}): "
                       + "; ".join(reasons))

    def prepare(self, plan: Patient) -> Patient:
        """The plan in the model's ROI bit order, ROIs without voxels recorded missing (prediction brings
        it into the model's own space and the dose back onto the plan's grid,
        :func:`dosepred.predict.predict_dose`). :class:`QAError` for a plan QA cannot check
        (:meth:`unusable`)."""
        if plan.dose is None:
            raise QAError(f"patient {plan.id} has no dose: QA needs the plan's dose (RTDOSE)")
        why = self.unusable(plan)
        if why is not None:
            raise self.refusal([why], 1)
        from ..predict import rounded_levels  # heavy: dosepred.predict imports torch

        rounded = rounded_levels(self.roi_set, plan)
        if rounded:  # same_level (unusable refuses the others): the plan is checked at the model's level
            self.warnings.append(f"patient {plan.id}: its {', '.join(rounded)}: one dose level (within "
                                 f"{SAME_LEVEL:.1%}), predicted and checked as the model's")
        return to_roi_set(plan, self.roi_set)

    def notes(self, plan: Patient) -> list[str]:
        """Reliability notes of a plan (:meth:`prepare`'d): its grid far from the model's training data (a
        spacing beyond :data:`COARSE_NOTE_FACTOR` x the coarsest training spacing; the field of view
        or body mask of :meth:`dosepred.models.space.ModelSpace.differences`), ROI volumes far outside
        the training range (:data:`VOLUME_FACTOR`), a CT not in HU
        (:func:`dosepred.models.space.ct_scale_problem`). One note per kind, each once per patient."""
        from ..models.space import ct_scale_problem
        from ..predict import model_space

        space = model_space(self.net)
        g = plan.geometry
        out = []
        if g is not None:
            perm, _ = g.permutation_to(space.axes)
            spacing = tuple(g.spacing[j] for j in perm)
            fov = tuple(plan.shape[j] * g.spacing[j] for j in perm)
            coarse: dict[str, list[str]] = {}  # one phrase per spacing and range, naming its axes
            for j, (v, lo, hi) in enumerate(zip(spacing, space.spacing_min, space.spacing_max, strict=True)):
                if v > hi * COARSE_NOTE_FACTOR:
                    coarse.setdefault(f"{v:.3g} mm along {{}} is coarser than the training data's "
                                      f"{lo:.3g}-{hi:.3g} mm by {(v / hi - 1) * 100:.0f} %", []).append(
                        space.axis_name(j))
            found = [f"spacing {k.format(' and '.join(axes))}" for k, axes in coarse.items()]
            # field of view and body mask as predict warns of them (its spacing rule is looser); a CT not
            # in HU is a note of its own
            ct = ct_scale_problem(plan)
            found += [d for d in space.differences(plan, spacing, fov)
                      if not d.startswith("spacing") and d != ct]
            if found:
                out.append(f"{NOTE_GRID}: " + "; ".join(found) + f" ({GRID_EFFECT})")
            if ct:
                out.append(f"{NOTE_CT}: {ct}, so this plan's prediction and flags cannot be trusted; give "
                           "the CT in HU and run again")
        ranges = self.calibration.training_ranges
        vol_ranges = ranges.roi_volume_cc if ranges is not None else {}
        for r, ix in roi_voxel_indices(plan, [n for n in plan.present_rois if n in vol_ranges]).items():
            lo, hi = vol_ranges[r]
            v = ix.size * plan.voxel_volume_cc
            if v < lo / VOLUME_FACTOR or v > hi * VOLUME_FACTOR:
                out.append(f"{NOTE_VOLUME}: {r} {v:.1f} cc, training {lo:.1f}-{hi:.1f} cc")
        return out

    def check(self, plan: Patient, pred: np.ndarray | None = None) -> tuple[PatientQA, np.ndarray, Patient]:
        """QA of one plan (its dose); returns the result, the predicted dose and the plan as checked
        (:meth:`prepare`; the predicted dose is on its grid). ``pred``: a prediction made already, on
        the plan's grid and flipped or not as :attr:`tta` says (else the intervals do not fit it).
        Every criterion of the protocol is in the result, those of ROIs the plan lacks without values
        (flag ``ROI not contoured``); lacking an ROI few training patients lacked (the cord, a parotid)
        adds a warning (:attr:`warnings`)."""
        from ..predict import model_space, rare_remedy, rarely_lacking

        t0 = time.perf_counter()
        inputs = input_notes(plan)  # on the plan as given (all its targets), before prepare drops ROIs
        plan = self.prepare(plan)
        if pred is None:
            pred = self.predict(plan)
        res = evaluate_patient(plan, pred, self.bound)
        lacking = [n for n in self.roi_set.names if n in plan.missing_rois]
        space = model_space(self.net)
        rare = [n for n in lacking if n in space.rarely_absent()]
        if rare:  # more likely there under a name nobody recognised than absent
            it, its = ("it", "its") if len(rare) == 1 else ("them", "their")
            self.warnings.append(f"patient {plan.id} lacks {rarely_lacking(space, rare)}: QA compares the "
                                 f"plan with the achievable dose of a patient without {it}, and {its} "
                                 f"criteria are not checked; {rare_remedy(len(rare))}")
        if res.small_rois:  # the plan's value and the prediction's are both the ROI's minimum dose
            self.warnings.append(f"patient {plan.id}: {', '.join(res.small_rois)}: an ROI smaller than the "
                                 "volume its D<x>cc asks for; the value is the ROI's minimum dose, not the "
                                 "dose of its hottest x cc")
        computed = res.by_criterion()  # each criterion's own result, whatever the list's order
        out: list[CriterionQA] = []
        for pc in self.bound.criteria:  # all of the protocol's: the model has every ROI it names
            kind = pc.kind
            fam = metric_family(pc.metric, kind)
            c = computed.get(pc.index)
            if c is None:
                if pc.roi in lacking:
                    out.append(CriterionQA(pc.roi, pc.metric, math.nan, math.nan, math.nan, math.nan,
                                           pc.limit, None, [FLAG_NOT_CONTOURED],
                                           name=pc.name, family=fam, unit=pc.unit, kind=kind,
                                           lower_better=lower_is_better(pc.direction, pc.metric, kind,
                                                                      self.roi_set.prescription(pc.roi))))
                continue  # else not computable (e.g. a %Rx metric without prescription)
            low, high = interval(c.pred, f"{c.roi} {c.metric}", self.calibration.families[fam],
                                 self.methods[fam], self.coverage, self.rule)
            lb = lower_is_better(c.direction, c.metric, kind, self.roi_set.prescription(c.roi))
            flags, gain = flags_for(c.ref, c.pred, low, high, kind, lb, c.unit)
            if f"{c.roi} {c.metric}" not in self.calibrated:  # an old file listing none: none was
                flags.append(f"{FLAG_UNCALIBRATED} (interval of the {fam} family)")
            out.append(CriterionQA(c.roi, c.metric, float(c.ref), float(c.pred), float(low), float(high),
                                   c.limit, c.ref_pass, flags, name=c.name, family=fam, unit=c.unit,
                                   kind=kind, lower_better=lb, gain=gain))
        gap = dose_gap_note(plan, pred)
        off = off_rx_note(plan, pred)
        notes = inputs + [n for n in (gap, off) if n] + self.notes(plan)
        return (PatientQA(plan.id, out, notes, time.perf_counter() - t0, lacking),
                pred, plan)


def _without_input_warnings(plans: Iterable[Patient]) -> Iterator[Patient]:
    """``plans`` read without the warnings of the input checks that QA gives as the plan's notes
    (:func:`input_notes`: in the JSON, the report and a ``note:`` line each), so they are said once."""
    it = iter(plans)
    while True:
        with warnings.catch_warnings():
            for cat in (LateralityWarning, TargetDoseWarning, PrescriptionWarning):
                warnings.filterwarnings("ignore", category=cat)
            p = next(it, None)
        if p is None:
            return
        yield p


def run_qa(model: str | os.PathLike, plans: str | os.PathLike | Patient | Iterable[Patient], protocol: Any,
           coverage: float = 0.9, report: str | os.PathLike | None = None, progress: bool = False,
           report_max: int | None = None, point_mm: tuple[float, float, float] | None = None,
           roi_map: Any = None) -> QAResult:
    """QA of every plan of ``plans``; with ``report`` also writes ``report/report.html`` (views through
    ``point_mm``, a patient point in LPS mm, else through the target centroid). ``roi_map``: the ROI
    name map of a DICOM folder of plans (:func:`open_plans`).

    All or nothing: a plan QA cannot check (:meth:`QAChecker.unusable`) stops predicting, the other
    plans are still read to name every such plan, and one :class:`QAError` lists them."""
    if report_max is not None and (isinstance(report_max, bool) or report_max < 0):
        # a negative count would slice the ranking from its end: the last patients left out silently
        raise InputError(f"--report-max (patients with images in the report) must be >= 0 (0: all), "
                         f"got {report_max!r}")
    chk = QAChecker(model, protocol, coverage)
    source = str(plans) if isinstance(plans, (str, os.PathLike)) else None  # named in qa.json
    if isinstance(plans, Patient):  # one plan: as a list of it (iterating a Patient was a TypeError)
        plans = [plans]
    it: Iterable[Patient] = open_plans(plans, roi_map) if isinstance(plans, (str, os.PathLike)) else plans
    if progress:
        it = track(it, description="plan QA")
    writer = None
    if report is not None:
        writer = QAReportWriter(report, chk, max_patients=report_max, point_mm=point_mm)
    patients: list[PatientQA] = []
    refused: list[str] = []
    n = 0
    read: list[str] = []  # warnings said as plans are read (a DICOM ROI beyond the body: its dose at 0 Gy)
    with recording_warnings(read):
        for p in _without_input_warnings(it):
            n += 1
            why = chk.unusable(p)
            if why is not None:
                refused.append(why)
            if refused:
                continue  # nothing will be written: read the rest only to name every plan QA cannot check
            pq, pred, checked = chk.check(p)
            patients.append(pq)
            if writer is not None:
                writer.add(checked, pred, pq)
    if refused:
        raise chk.refusal(refused, n)
    if not patients:
        raise InputError(f"no plans found in {plans}")
    # the JSON and the report, which may be read alone, say what the console said
    read = [w for w in dict.fromkeys(read) if w not in chk.warnings]
    res = QAResult(coverage, str(chk.model_path.parent), chk.protocol.name, str(chk.calibration.protocol),
                   patients, chk.methods, read + chk.warnings, chk.tta, shown=read, plans=source)
    if writer is not None:
        writer.finish(res)
    return res
