"""Pydantic models of a clinical protocol: :class:`Protocol` and its :class:`Criterion` list.

JSON schema (one object per file)::

    {
      "name": "my-hn-protocol",                 # required, free text
      "description": "what it is for",          # optional
      "prescriptions": {"PTV70": 70.0},         # optional, Gy per target; overrides the RoiSet's
      "criteria": [                             # required, evaluated in this order
        {"roi": "PTV70", "metric": "D99%",      # ROI name of the dataset, metric string
         "limit": 95, "limit_unit": "%Rx",      # optional limit: "Gy" | "%" | "%Rx"
         "direction": ">=",                     # ">=" or "<=", required with a limit or goal
         "goal": 100,                           # optional, same unit as the limit, no looser
         "priority": 1,                         # optional, 1 = required, larger = less important
         "weight": 1.0}                         # optional, weight in the CDM loss
      ]
    }

Metric strings are those of :func:`dosepred.metrics.parse_metric` (``Dmean``, ``Dmax``,
``D95%``, ``D0.1cc``, ``V20Gy``, ``V110%``). ``limit_unit`` defaults to ``Gy`` for dose metrics
(D-metrics, mean, max, min) and to ``%`` (of the ROI volume) for V-metrics. A dose limit may be
written as a percentage of the ROI's prescription with ``"%Rx"`` (e.g. ``D99% >= 95 %Rx``); it is
resolved with :meth:`Criterion.limit_value`. A criterion without limit is only measured (the
``openkbp`` protocol is a list of such metrics). Unknown keys are rejected so typos are caught, and
so are a goal looser than its limit (with ``<=`` the goal is at most the limit, with ``>=`` at least
it), a V-metric limit or goal above 100 % and, when the protocol is bound to an ROI set
(:meth:`Protocol.validate_for`), a prescription of an ROI that neither a criterion nor the set has.
:func:`dosepred.protocol.load_protocol` also rejects a key repeated in one JSON object.

This module only describes and validates; values are computed by :mod:`dosepred.evaluation`.
"""

from __future__ import annotations

import math
import unicodedata
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..constants import MAX_CRITERION_GY
from ..errors import DosepredError
from ..io.roi_names import canonical
from ..metrics import Metric, parse_metric
from .bound import BoundProtocol, bind

#: Relative tolerance of :meth:`Criterion.check`: a value within it of the limit meets the limit (a float32
#: dose carries 6e-8 relative error, a limit in %Rx 1e-16; 1e-6 is 0.06 mGy at 60 Gy)
CHECK_TOLERANCE = 1e-6

if TYPE_CHECKING:  # pragma: no cover
    from ..patient import RoiSet

Direction = Literal[">=", "<="]
#: A limit or goal in %Rx at most this is refused as a fraction of the prescription (0.95, 1.07: how
#: many scripts write relative doses), which read as a percentage would be met or missed by every plan
#: (D95% >= 0.95 %Rx is 0.67 Gy of 70 Gy); a relative limit this low means nothing in a plan check.
MAX_FRACTION_OF_RX = 2.0
LimitUnit = Literal["Gy", "%", "%Rx"]


class ProtocolError(DosepredError, ValueError):
    """A protocol is invalid, or does not fit a dataset's ROIs."""


class Criterion(BaseModel):
    """One line of a clinical protocol: ``roi metric direction limit`` (e.g. PTV70 D95% >= 66.5 Gy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    roi: str = Field(min_length=1)
    metric: str
    limit: float | None = None
    direction: Direction | None = None
    limit_unit: LimitUnit | None = None  # resolved to Gy / % in the validator below
    goal: float | None = None
    priority: int = Field(default=1, ge=1)
    weight: float = Field(default=1.0, ge=0.0)

    @field_validator("limit", "goal", "priority", "weight", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: Any) -> Any:
        if isinstance(v, bool):  # JSON true/false would otherwise be read as 1 / 0
            raise ProtocolError(f"{info.field_name} must be a number, got {str(v).lower()}")
        return v

    @field_validator("roi")
    @classmethod
    def _composed(cls, v: str) -> str:  # as every reader names ROIs (NFC: "ó" one character)
        return unicodedata.normalize("NFC", v)

    @field_validator("metric")
    @classmethod
    def _check_metric(cls, v: str) -> str:
        return str(parse_metric(v))  # canonical spelling; raises MetricError (a ValueError)

    @model_validator(mode="after")
    def _check(self) -> Criterion:
        m = self.parsed
        unit = self.limit_unit or ("Gy" if m.is_dose else "%")
        if m.is_dose and unit == "%":
            raise ProtocolError(f"{self.roi} {self.metric}: a dose limit is in Gy or %Rx (percent of the "
                             "prescription), not '%'")
        if not m.is_dose and unit != "%":
            raise ProtocolError(f"{self.roi} {self.metric}: a V-metric limit is a percentage of the ROI "
                             f"volume (limit_unit '%'), not {unit!r}")
        object.__setattr__(self, "limit_unit", unit)
        if (self.limit is not None or self.goal is not None) and self.direction is None:
            raise ProtocolError(f"{self.roi} {self.metric}: a limit or goal needs a direction ('>=' or '<=')")
        for label, v in (("limit", self.limit), ("goal", self.goal), ("weight", self.weight)):
            if v is not None and not math.isfinite(v):
                raise ProtocolError(f"{self.roi} {self.metric}: {label} must be a finite number, got {v}")
            if v is not None and v < 0:
                raise ProtocolError(f"{self.roi} {self.metric}: {label} must be >= 0, got {v}")
        if m.is_dose and unit == "Gy":  # a limit in cGy would be met (<=) or missed (>=) by every plan
            for label, v in (("limit", self.limit), ("goal", self.goal)):
                if v is not None and v > MAX_CRITERION_GY:
                    raise ProtocolError(f"{self.roi} {self.metric}: a dose {label} is in Gy, got {v:g} Gy, "
                                        f"over {MAX_CRITERION_GY:g} Gy: in cGy? (divide by 100)")
        if unit == "%Rx":  # 0.95 meant as 95 %: D95% >= 0.95 %Rx would pass every plan
            for label, v in (("limit", self.limit), ("goal", self.goal)):
                if v is not None and 0 < v <= MAX_FRACTION_OF_RX:
                    raise ProtocolError(f"{self.roi} {self.metric}: a {label} in %Rx is a percentage of the "
                                        f"prescription (95 for 95 %), got {v:g}: a fraction? "
                                        f"(write {v * 100:g})")
        if m.is_dose and unit == "Gy" and self.direction == ">=":
            # D95% >= 0.95 (limit_unit left out: 0.95 Gy) is met by every plan, as 0.95 %Rx would be
            for label, v in (("limit", self.limit), ("goal", self.goal)):
                if v is not None and 0 < v <= MAX_FRACTION_OF_RX:
                    raise ProtocolError(f"{self.roi} {self.metric}: a dose {label} of {v:g} Gy with '>=' is "
                                        f"met by every plan: a fraction of the prescription? (write "
                                        f"{v * 100:g} with \"limit_unit\": \"%Rx\")")
        if m.kind == "V" and m.unit == "Gy" and m.value is not None and m.value > MAX_CRITERION_GY:
            raise ProtocolError(f"{self.roi} {self.metric}: the threshold of V<x>Gy is in Gy, got "
                                f"{m.value:g} Gy, over {MAX_CRITERION_GY:g} Gy: in cGy? "
                                f"(V{m.value / 100:g}Gy)")
        if not m.is_dose:  # a share of the ROI volume: a limit above 100 % is met or missed by every plan
            for label, v in (("limit", self.limit), ("goal", self.goal)):
                if v is not None and v > 100:
                    raise ProtocolError(f"{self.roi} {self.metric}: a V-metric {label} is a percentage of "
                                        f"the ROI volume (0-100 %), got {v:g}")
                if v is not None and 0 < v <= 1 and self.direction == ">=":  # V95% >= 0.98: every plan passes
                    raise ProtocolError(f"{self.roi} {self.metric}: a V-metric {label} is a percentage of "
                                        f"the ROI volume (98 for 98 %), got {v:g} with '>=', met by almost "
                                        f"every plan: a fraction? (write {v * 100:g})")
        if self.limit is not None and self.goal is not None:
            # the goal is the stricter aim, in the limit's unit: a looser one is met whenever the limit
            # is, so it would say nothing (most likely the two were swapped)
            looser = self.goal > self.limit if self.direction == "<=" else self.goal < self.limit
            if looser:
                want = "at most" if self.direction == "<=" else "at least"
                raise ProtocolError(f"{self.roi} {self.metric}: goal {self.goal:g} is looser than limit "
                                    f"{self.limit:g} {self.limit_unit}; with {self.direction!r} the goal "
                                    f"must be {want} the limit (swapped?)")
        return self

    # ------------------------------------------------------------------------------- queries
    @property
    def parsed(self) -> Metric:
        return parse_metric(self.metric)

    @property
    def needs_prescription(self) -> bool:
        """True when the metric (V<x>%) or the limit/goal (%Rx) is relative to the prescription."""
        rel = self.limit_unit == "%Rx" and (self.limit is not None or self.goal is not None)
        return self.parsed.needs_prescription or rel

    @property
    def unit(self) -> str:
        """Unit of the metric's value: Gy for dose metrics, % for V-metrics."""
        return "Gy" if self.parsed.is_dose else "%"

    def _resolve(self, v: float | None, rx: float | None) -> float | None:
        if v is None:
            return None
        if self.limit_unit == "%Rx":
            if rx is None:
                raise ProtocolError(f"criterion {self.name}: the limit is in % of the prescription, "
                                    f"but {self.roi} has no prescription")
            return v / 100.0 * rx
        return float(v)

    def limit_value(self, rx: float | None = None) -> float | None:
        """The limit in the metric's unit (Gy or %), resolving %Rx with prescription ``rx`` (Gy)."""
        return self._resolve(self.limit, rx)

    def goal_value(self, rx: float | None = None) -> float | None:
        return self._resolve(self.goal, rx)

    def check(self, value: float, rx: float | None = None, goal: bool = False) -> bool | None:
        """Does ``value`` satisfy the limit (or the goal)? None when there is none or value is NaN."""
        lim = self.goal_value(rx) if goal else self.limit_value(rx)
        if lim is None or value != value:
            return None
        # a value at the limit meets it: doses are float32 (59.85 Gy is 59.849998...) and a %Rx limit
        # float64 (95 % of 63 Gy is 59.849999999999994); CHECK_TOLERANCE is far below any clinical meaning
        tol = CHECK_TOLERANCE * max(abs(lim), 1.0)
        return value >= lim - tol if self.direction == ">=" else value <= lim + tol

    @property
    def name(self) -> str:
        """Readable form, e.g. ``PTV70 D99% >= 95 %Rx`` or ``SpinalCord D0.1cc <= 45 Gy``."""
        s = f"{self.roi} {self.metric}"
        if self.limit is not None:
            s += f" {self.direction} {self.limit:g} {self.limit_unit}"
        elif self.goal is not None:
            s += f" {self.direction} {self.goal:g} {self.limit_unit} (goal)"
        return s

    def resolved_name(self, rx: float | None) -> str:
        """Like :attr:`name` with a %Rx limit also given in Gy (``PTV70 D99% >= 66.5 Gy``)."""
        if self.limit_unit != "%Rx" or rx is None or (self.limit is None and self.goal is None):
            return self.name
        v = self.limit_value(rx) if self.limit is not None else self.goal_value(rx)
        tail = "" if self.limit is not None else " (goal)"
        # to 0.1 mGy, as checked (95 % of 69.96 Gy is 66.462 Gy, not 66.46)
        return f"{self.roi} {self.metric} {self.direction} {round(v, 4):g} Gy{tail}"


def _canonical_name(name: str) -> bool:
    """Whether ``name`` is already an ROI's canonical spelling (:mod:`dosepred.io.roi_names`)."""
    c = canonical(name)
    return c.matched and c.name == name


class Protocol(BaseModel):
    """A clinical plan-evaluation template: criteria over ROIs, plus optional prescriptions (Gy)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    prescriptions: dict[str, float] = Field(default_factory=dict)
    criteria: list[Criterion] = Field(min_length=1)
    #: where the protocol came from: its file's path, or "" (built-in, or made in Python): errors name it
    _source: str = PrivateAttr(default="")
    #: a built-in protocol (:func:`dosepred.protocol.load_protocol` sets it): a set may lack any of its ROIs
    _builtin: bool = PrivateAttr(default=False)

    def __eq__(self, other: object) -> bool:
        """Same name, description, prescriptions and criteria (where it was read from does not count)."""
        if not isinstance(other, Protocol):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @field_validator("prescriptions", mode="before")
    @classmethod
    def _no_bool_rx(cls, v: Any) -> Any:
        if isinstance(v, dict):
            bad = {k: x for k, x in v.items() if isinstance(x, bool)}
            if bad:  # JSON true/false would otherwise be read as 1 / 0 Gy
                raise ProtocolError(f"prescriptions must be numbers (Gy), got {bad}")
        return v

    @field_validator("prescriptions")
    @classmethod
    def _check_rx(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not (x > 0 and math.isfinite(x))}
        if bad:
            raise ProtocolError(f"prescriptions must be > 0 Gy, got {bad}")
        high = {k: x for k, x in v.items() if x > MAX_CRITERION_GY}
        if high:  # a prescription in cGy: every %Rx limit and V<x>% threshold would be 100 times too high
            raise ProtocolError(f"prescriptions are in Gy, got {high}, over {MAX_CRITERION_GY:g} Gy: in cGy? "
                                "(divide by 100)")
        nfc = {unicodedata.normalize("NFC", k): x for k, x in v.items()}  # ROI names as the criteria's
        if len(nfc) != len(v):
            raise ProtocolError(f"prescriptions name one ROI twice (in composed and decomposed Unicode): "
                                f"{sorted(v)}")
        return nfc

    @property
    def rois(self) -> list[str]:
        """ROI names used by the criteria, in first-use order."""
        return list(dict.fromkeys(c.roi for c in self.criteria))

    def prescription(self, roi: str, roi_set: RoiSet | None = None) -> float | None:
        """Prescription (Gy) of ``roi``: the protocol's, else the RoiSet's, else None."""
        if roi in self.prescriptions:
            return float(self.prescriptions[roi])
        if roi_set is not None and roi in roi_set:
            return roi_set.prescription(roi)
        return None

    @property
    def where(self) -> str:
        """How errors name the protocol: ``<file>: protocol 'name'`` for one read from a file (the file is
        what the user can open and fix), else ``protocol 'name'``."""
        return f"{self._source}: protocol {self.name!r}" if self._source else f"protocol {self.name!r}"

    def validate_for(self, roi_set: RoiSet, roi_owner: str = "the dataset") -> Protocol:
        """Check every criterion against the ROIs of ``roi_owner`` (``"the dataset"``, ``"the model"``);
        raise :class:`ProtocolError` naming the protocol's file, the first offending criterion and the
        nearest ROI name. Returns self.

        A dataset may lack an ROI that a built-in protocol names, or that any other protocol (a file,
        PortPy's, one made in Python) names by its canonical name (``Esophagus``, ``PTV63``: a clinic's
        patient without that structure): its criteria are not evaluated (:func:`dosepred.protocol.lint`
        warns of criteria on ROIs contoured in no patient). Any other name absent from the set (a
        misspelling: ``PTV_70``) is an error, and so is every ROI a model lacks, and a protocol none of
        whose ROIs is in the set. The same holds for the ROIs ``prescriptions`` name, which may also be
        any ROI a criterion uses."""
        import difflib

        for i, c in enumerate(self.criteria, 1):
            if c.roi not in roi_set and canonical(c.roi).is_body:  # never an ROI: never checked
                raise ProtocolError(f"{self.where}, criterion {i} ({c.name}): ROI {c.roi!r} is the body "
                                    "contour, which dosepred reads as the possible-dose mask, not as an ROI: "
                                    "no criterion on it is checked; remove it")
            if c.roi not in roi_set and roi_owner == "the dataset" and (
                    self._builtin or _canonical_name(c.roi)):
                continue
            if c.roi not in roi_set:
                alias = canonical(c.roi)  # a clinical spelling of an ROI the set has: Cord, Parotid_L
                near = [alias.name] if alias.matched and alias.name in roi_set else []
                near = near or difflib.get_close_matches(c.roi, list(roi_set.names), n=1, cutoff=0.6)
                near += [n for n in roi_set.names if n.lower() == c.roi.lower() and n not in near]
                raise ProtocolError(f"{self.where}, criterion {i} ({c.name}): ROI {c.roi!r} is not among "
                                    f"{roi_owner}'s ROIs ({', '.join(roi_set.names)})"
                                    + (f"; did you mean {near[0]!r}?" if near else ""))
            if c.needs_prescription and self.prescription(c.roi, roi_set) is None:
                raise ProtocolError(f"{self.where}, criterion {i} ({c.name}): needs the prescription of "
                                    f"{c.roi}, which is neither in the protocol's 'prescriptions' nor in "
                                    f"{roi_owner}")
            m, rx = c.parsed, self.prescription(c.roi, roi_set)
            for label, v in (("limit", c.limit), ("goal", c.goal)):
                if c.limit_unit == "%Rx" and rx is not None and v is not None \
                        and v / 100 * rx > MAX_CRITERION_GY:  # as a limit in Gy's
                    raise ProtocolError(f"{self.where}, criterion {i} ({c.name}): the {label} is "
                                        f"{v / 100 * rx:g} Gy ({v:g} % of {c.roi}'s {rx:g} Gy), over "
                                        f"{MAX_CRITERION_GY:g} Gy: met (<=) or missed (>=) by every plan (a "
                                        "typo? 107 %Rx is 107 %)")
            if m.needs_prescription and rx is not None and m.value is not None \
                    and m.value / 100 * rx > MAX_CRITERION_GY:  # as V<x>Gy's: no plan reaches it
                raise ProtocolError(f"{self.where}, criterion {i} ({c.name}): the threshold of {c.metric} is "
                                    f"{m.value / 100 * rx:g} Gy ({m.value:g} % of {c.roi}'s {rx:g} Gy), over "
                                    f"{MAX_CRITERION_GY:g} Gy: no plan reaches it (a typo? V107% is 107 %)")
        used = set(self.rois)
        for roi in self.prescriptions:
            # a prescription is for an ROI of the criteria or of the set (its highest sets the CDM loss's
            # dose scale); any other name is a misspelling, and the ROI it meant silently keeps the set's
            if roi in roi_set or roi in used or (roi_owner == "the dataset" and (
                    self._builtin or _canonical_name(roi))):
                continue
            names = list(dict.fromkeys([*used, *roi_set.names]))
            near = difflib.get_close_matches(roi, names, n=1, cutoff=0.6)
            near += [n for n in names if n.lower() == roi.lower() and n not in near]
            raise ProtocolError(f"{self.where}: prescriptions name ROI {roi!r}, which no criterion uses and "
                                f"which is not among {roi_owner}'s ROIs ({', '.join(roi_set.names)})"
                                + (f"; did you mean {near[0]!r}?" if near else ""))
        if self.criteria and not any(c.roi in roi_set for c in self.criteria):
            # nothing could be evaluated: another site's data, or the wrong protocol
            raise ProtocolError(f"{self.where}: none of its ROIs ({', '.join(sorted(set(self.rois)))}) is "
                                f"among {roi_owner}'s ROIs ({', '.join(roi_set.names)}); no criterion "
                                "could be evaluated")
        return self

    def bind(self, roi_set: RoiSet, roi_owner: str = "the dataset") -> BoundProtocol:
        """Validate against ``roi_set`` (as :meth:`validate_for`) and resolve every criterion once:
        see :mod:`dosepred.protocol.bound`."""
        return bind(self, roi_set, roi_owner)

    def kinds(self, roi_set: RoiSet) -> dict[str, str]:
        """ROI name -> 'target' / 'oar' / 'other' as the dataset declares it."""
        return {r: roi_set[r].kind for r in self.rois if r in roi_set}
