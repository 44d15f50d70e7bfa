"""Plan QA's verdicts as data: the flags, the result of each criterion, plan and cohort, and the qa JSON.

Flags of a criterion (:func:`flags_for`, :data:`FLAG_*`):

- ``OAR dose above achievable`` - an OAR metric (lower is better) above the interval; the flag
  text says how much might be spared: plan - predicted (Gy, or % for V-metrics);
- ``target hot spot above achievable`` - the same for a target metric where lower is better
  (D1%, Dmax, V110%);
- ``target coverage below achievable`` - a target metric (higher is better) below the interval;
- ``OAR dose below achievable`` - an OAR metric whose criterion says higher is better (``>=``) below
  the interval;
- ``plan better than predicted`` - beyond the interval on the good side;
- ``ROI not contoured`` - the plan lacks the criterion's ROI: the criterion stays in the result
  without values;
- ``criterion not calibrated`` (the family's interval is used).

Reliability notes (:data:`NOTE_GRID`, :data:`NOTE_VOLUME`, :data:`NOTE_TARGET_DOSE`, :data:`NOTE_SIDE`,
:data:`NOTE_UNPRESCRIBED`, :data:`NOTE_CT`, :data:`NOTE_RX`, :data:`NOTE_DOSE_GAP`,
:data:`NOTE_OFF_RX`)
concern the patient and are given once per patient (:attr:`PatientQA.notes`). A plan's *potential
improvement* (Gy) is the sum of plan - predicted over its OAR and hot-spot flags plus predicted - plan
over its coverage flags (dose metrics only, each ROI and metric once: two criteria on one metric flag
one excess); the cohort summary ranks plans by it (:meth:`QAResult.summary`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..fsutil import write_json

FLAG_OAR_ABOVE = "OAR dose above achievable"
FLAG_HOT_ABOVE = "target hot spot above achievable"
FLAG_COVERAGE_BELOW = "target coverage below achievable"
#: an OAR criterion whose protocol says higher is better (direction ">=") below its interval
FLAG_OAR_BELOW = "OAR dose below achievable"
FLAG_BETTER = "plan better than predicted"
FLAG_UNCALIBRATED = "criterion not calibrated"
FLAG_NOT_CONTOURED = "ROI not contoured"
#: Patient notes (once per patient): the grid is far from the model's training data; an ROI's volume
#: is far outside the training range.
NOTE_GRID = "grid far from the training data"
NOTE_VOLUME = "ROI volume far outside the training range"
#: Patient notes of the plan's own inputs (the checks every source's patients pass,
#: :func:`dosepred.io.source.checked`): a large high dose far from every contoured target (a target not
#: contoured or named otherwise: the plan is checked as planned for fewer dose levels, and its flags
#: cannot be trusted); an ROI named for a side lying on the other (its criteria are checked against
#: the other side's intervals).
NOTE_TARGET_DOSE = "high dose outside the contoured targets"
NOTE_SIDE = "ROI named for a side lies on the other"
#: ... and a target without a prescription lying largely outside the prescribed ones
#: (:func:`dosepred.predict.loose_targets`: likely a dose level whose prescription nobody gave; the
#: model predicts it as unplanned, the plan as one of fewer dose levels).
NOTE_UNPRESCRIBED = "target without a prescription"
#: ... and a CT not in HU (:func:`dosepred.models.space.ct_scale_problem`: stored with an offset; the
#: model reads HU, so the achievable dose is predicted for another anatomy than the plan's).
NOTE_CT = "CT not in HU"
#: ... and a plan dose that disagrees with its targets' prescriptions (:mod:`dosepred.io.rx_check`: a
#: target's median dose below 0.8 x its prescription or above 1.3 x the highest; a phase of a plan, a
#: re-plan of another prescription under these names; in QA also above :data:`dosepred.qa.check.QA_HIGH`
#: x the highest, beyond the calibration's plans): the plan is compared with a prediction for
#: prescriptions it was not planned for.
NOTE_RX = "plan dose and prescriptions disagree"
#: ... and ROIs whose plan dose is missing in part (0 Gy where the prediction has dose: a dose grid that
#: does not cover them, :func:`dosepred.qa.check.dose_gap_note`): their criteria read the plan colder
#: than it is.
NOTE_DOSE_GAP = "plan dose missing in ROIs"
#: ... and a predicted (achievable) dose that does not deliver the plan's prescriptions
#: (:func:`dosepred.predict.implausible_targets`, ``predict``'s OffRxWarning: a target far smaller or larger
#: than any the model trained on): the plan is compared with a dose that is no plan of its prescriptions.
NOTE_OFF_RX = "achievable dose does not deliver the prescriptions"
#: Notes that say the plan's flags cannot be trusted (its inputs contradict themselves): the cohort
#: summary ranks such plans after every other, whatever their potential improvement.
UNTRUSTED_NOTES = (NOTE_TARGET_DOSE, NOTE_SIDE, NOTE_UNPRESCRIBED, NOTE_CT, NOTE_RX, NOTE_DOSE_GAP,
                   NOTE_OFF_RX)
#: How the cohort table marks such a plan's rank, and what the mark means.
UNTRUSTED_MARK = "*"
UNTRUSTED_LEGEND = ("* ranked after the others: a note says the plan's inputs are incomplete or contradict "
                    "themselves "
                    f"({NOTE_TARGET_DOSE}, a {NOTE_UNPRESCRIBED}, an {NOTE_SIDE}, a {NOTE_CT}, "
                    f"{NOTE_RX}, or {NOTE_DOSE_GAP}), or that the plan is unlike the model's "
                    f"({NOTE_OFF_RX}), so its flags "
                    "cannot be trusted until they are fixed")


def coverage_pct(coverage: float) -> str:
    """The coverage of the intervals as the outputs name it: the one asked for, in percent with the
    decimals it has (0.9: ``90%``; 0.875: ``87.5%``, not a whole percent that another coverage holds)."""
    return f"{round(coverage * 100, 4):g}%"


def rank_label(row: dict[str, Any]) -> str:
    """A summary row's rank as the tables show it: marked :data:`UNTRUSTED_MARK` when untrusted."""
    return f"{row['rank']}{UNTRUSTED_MARK if row.get('untrusted') else ''}"
#: Flags that say the plan might be improved (they add to the potential improvement): every flag
#: :func:`flags_for` gives with a gain.
IMPROVEMENT_FLAGS = (FLAG_OAR_ABOVE, FLAG_HOT_ABOVE, FLAG_COVERAGE_BELOW, FLAG_OAR_BELOW)
RELIABILITY_FLAGS = (FLAG_UNCALIBRATED, FLAG_NOT_CONTOURED)


def flags_for(plan: float, predicted: float, low: float, high: float, kind: str, lower_better: bool,
              unit: str = "Gy") -> tuple[list[str], float]:
    """Improvement flags of one value and its potential improvement (in ``unit``; 0 when none)."""
    if lower_better and plan > high:
        gain = plan - predicted
        name = FLAG_OAR_ABOVE if kind != "target" else FLAG_HOT_ABOVE
        return [f"{name}: {gain:.1f} {unit} might be spared"], gain
    if not lower_better and plan < low:
        gain = predicted - plan
        name = FLAG_COVERAGE_BELOW if kind == "target" else FLAG_OAR_BELOW
        return [f"{name}: {gain:.1f} {unit} below the prediction"], gain
    if (lower_better and plan < low) or (not lower_better and plan > high):
        return [FLAG_BETTER], 0.0
    return [], 0.0


@dataclass
class CriterionQA:
    """One criterion of one plan: its values, interval, limit and flags (the first nine fields are the
    criterion object of the qa JSON, :meth:`to_json`)."""

    roi: str
    metric: str
    plan: float
    predicted: float
    low: float
    high: float
    limit: float | None
    plan_pass: bool | None
    flags: list[str]
    # not in the JSON contract's criterion object
    name: str = ""
    family: str = ""
    unit: str = "Gy"
    kind: str = "oar"
    lower_better: bool = True
    gain: float = 0.0

    def to_json(self) -> dict[str, Any]:
        def f(x: float) -> float | None:
            return float(x) if x == x and math.isfinite(x) else None

        return {"roi": self.roi, "metric": self.metric, "plan": f(self.plan), "predicted": f(self.predicted),
                "low": f(self.low), "high": f(self.high),
                "limit": None if self.limit is None else float(self.limit),
                "plan_pass": self.plan_pass, "flags": list(self.flags)}


@dataclass
class PatientQA:
    """One plan's QA: every criterion of the protocol, the patient's reliability notes, the model's ROIs
    it lacks."""

    id: str
    criteria: list[CriterionQA]
    notes: list[str] = field(default_factory=list)  # reliability notes of the patient (grid, anatomy)
    seconds: float = 0.0
    not_contoured: list[str] = field(default_factory=list)  # the model's ROIs the plan lacks

    @property
    def potential_gy(self) -> float:
        """Sum of the gains (Gy) of the flagged dose metrics, each ROI and metric once: two criteria on
        one metric (a required and a desirable limit) flag the same excess, which is one dose to spare."""
        flagged = self._once(c for c in self.criteria if c.unit == "Gy" and c.gain > 0)
        return float(sum(c.gain for c in flagged))

    @staticmethod
    def _once(criteria: Any) -> list[CriterionQA]:
        """``criteria`` with the second and later of each ROI, metric and flagging end left out."""
        seen: dict[tuple[str, str, bool], CriterionQA] = {}
        for c in criteria:
            seen.setdefault((c.roi, c.metric, c.lower_better), c)
        return list(seen.values())

    @property
    def untrusted(self) -> bool:
        """Whether a note says the plan's flags cannot be trusted (:data:`UNTRUSTED_NOTES`)."""
        return any(n.startswith(UNTRUSTED_NOTES) for n in self.notes)

    @property
    def improvement_flags(self) -> list[CriterionQA]:
        """The criteria flagged as improvable, each ROI, metric and flagging end once (as
        :attr:`potential_gy` counts them)."""
        return self._once(c for c in self.criteria if any(f.startswith(IMPROVEMENT_FLAGS) for f in c.flags))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "criteria": [c.to_json() for c in self.criteria], "notes": list(self.notes),
                "not_contoured": list(self.not_contoured)}


@dataclass
class QAResult:
    """The QA of a cohort of plans with one model, calibration and coverage (:meth:`to_json`: the qa
    JSON, docs/qa.md)."""

    coverage: float
    model: str
    protocol: str
    calibration_protocol: str
    patients: list[PatientQA]
    methods: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    #: Whether the predictions were flipped (the calibration's record; None: not said)
    tta: bool | None = None
    #: Those of :attr:`warnings` already said as they came (while the plans were read): not said again
    shown: list[str] = field(default_factory=list)
    #: The plans checked, as given (a folder or file; None: patients given in memory)
    plans: str | None = None

    def summary(self) -> list[dict[str, Any]]:
        """Plans ranked by potential improvement (Gy), most first; plans whose notes say their flags
        cannot be trusted (``untrusted``, :data:`UNTRUSTED_NOTES`) after all others: a large potential
        read from a swapped side or a target not contoured is the inputs' error, not the plan's."""
        rows = []
        for p in self.patients:
            flagged = p.improvement_flags
            rows.append({"id": p.id, "potential_gy": round(p.potential_gy, 2),
                         "flags": len(flagged),
                         "failed": sum(c.plan_pass is False for c in p.criteria),
                         "flagged": [f"{c.roi} {c.metric}" for c in flagged],
                         "reliability": sorted({f.split(":")[0].split(" (")[0] for c in p.criteria
                                                for f in c.flags if f.startswith(FLAG_UNCALIBRATED)}
                                               | {n.split(":")[0] for n in p.notes}),
                         "not_contoured": list(p.not_contoured), "untrusted": p.untrusted})
        rows.sort(key=lambda r: (r["untrusted"], -r["potential_gy"], -r["flags"], r["id"]))
        for i, r in enumerate(rows, 1):
            r["rank"] = i
        return rows

    def to_json(self) -> dict[str, Any]:
        """The JSON contract (``coverage``, ``model``, ``patients``) plus ``plans`` (what was checked),
        ``protocol``, ``calibration``, the ranked ``summary`` and the run's ``warnings`` (those
        ``dosepred qa`` says on stderr)."""
        return {"coverage": self.coverage, "model": self.model, "plans": self.plans,
                "patients": [p.to_json() for p in self.patients],
                "protocol": self.protocol,
                "calibration": {"protocol": self.calibration_protocol, "methods": self.methods,
                                "tta": self.tta},
                "summary": self.summary(), "warnings": list(self.warnings)}

    def write_json(self, path: str | os.PathLike) -> None:
        import json

        json.dumps(self.to_json())  # fail before touching the file
        write_json(path, self.to_json())
