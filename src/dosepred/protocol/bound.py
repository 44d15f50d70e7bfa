"""A protocol resolved against one ROI set, once: what scoring, the CDM loss and plan QA read inside.

A :class:`~dosepred.protocol.schema.Protocol` is the JSON as written: ROI names, metric strings, limits
that may be relative to a prescription. Every consumer needs the same resolution against the ROIs
of a dataset or model: which criteria apply (their ROI is in the set), each criterion's prescription,
its limit and goal in absolute units, its name with the prescription filled in, and the ROI's kind.
:meth:`Protocol.bind <dosepred.protocol.schema.Protocol.bind>` validates the protocol against the set
and does that resolution once, at the edge (a command's start, a loss's construction); the code inside
takes a :class:`BoundProtocol` and never looks a prescription up again.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..patient import SAME_LEVEL, same_level

if TYPE_CHECKING:  # pragma: no cover
    from ..metrics import Metric
    from ..patient import RoiSet
    from .schema import Criterion, Protocol


@dataclass(frozen=True)
class BoundCriterion:
    """One criterion of a protocol whose ROI is in the bound ROI set, resolved.

    ``index``: 1-based position in the protocol (how errors name it); ``parsed``: its metric, parsed
    once; ``kind``: the ROI's kind in the
    set (``target``, ``oar``, ``other``); ``rx``: the prescription used (protocol's, else the set's,
    else None); ``limit``/``goal``: absolute values (Gy, %, cc) or None; ``name``: the display name
    with the prescription resolved (``PTV70 D95% >= 66.5 Gy``)."""

    criterion: Criterion
    index: int
    parsed: Metric
    kind: str
    rx: float | None
    limit: float | None
    goal: float | None
    name: str

    @property
    def roi(self) -> str:
        return self.criterion.roi

    @property
    def metric(self) -> str:
        return self.criterion.metric

    @property
    def direction(self) -> str | None:
        return self.criterion.direction

    @property
    def unit(self) -> str:
        return self.criterion.unit

    @property
    def priority(self) -> int:
        return self.criterion.priority

    @property
    def weight(self) -> float:
        return float(self.criterion.weight)

    def check(self, value: float, goal: bool = False) -> bool | None:
        """Whether ``value`` meets the limit (or the goal); None without one (see Criterion.check)."""
        return self.criterion.check(value, self.rx, goal=goal)


@dataclass(frozen=True)
class BoundProtocol:
    """A protocol validated against ``roi_set`` and resolved once (see the module docstring).

    ``criteria`` holds the protocol's criteria whose ROI is in the set, in the protocol's order; a
    criterion on an ROI the set lacks (allowed only where :meth:`Protocol.validate_for` allows it: a
    dataset without an Esophagus under a built-in protocol) is left out and named in ``skipped``."""

    protocol: Protocol
    roi_set: RoiSet
    criteria: tuple[BoundCriterion, ...]
    skipped: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.protocol.name

    def prescription(self, roi: str) -> float | None:
        """The prescription (Gy) of ``roi``: the protocol's, else the ROI set's, else None."""
        return self.protocol.prescription(roi, self.roi_set)

    def prescription_conflicts(self) -> dict[str, tuple[float, float, list[str]]]:
        """ROI -> (the protocol's prescription, the ROI set's, the metrics relying on it) for each
        target the protocol prescribes otherwise than the set, where a criterion depends on the
        prescription (a V-metric in % of it such as V110%, a limit in %Rx): a model trained on the
        set, or calibrated for it, would be asked about another dose (what training and plan QA
        refuse). Empty when none. Prescriptions of one dose level (:func:`dosepred.patient.same_level`:
        70 and 69.96 Gy) are not a conflict: :meth:`prescription_roundings` lists them."""
        return self._differences(near=False)

    def prescription_roundings(self) -> dict[str, tuple[float, float, list[str]]]:
        """As :meth:`prescription_conflicts`, for the targets the protocol prescribes at the same dose
        level as the set but not the same dose (70 Gy and a plan's 33 x 2.12 = 69.96 Gy): accepted, the
        criteria judged at the protocol's prescription; what a warning names."""
        return self._differences(near=True)

    def _differences(self, near: bool) -> dict[str, tuple[float, float, list[str]]]:
        out: dict[str, tuple[float, float, list[str]]] = {}
        for c in self.criteria:
            mine = self.roi_set.prescription(c.roi)
            if (c.criterion.needs_prescription and mine is not None and c.rx is not None
                    and abs(c.rx - mine) > 1e-6 and same_level(c.rx, mine) == near):
                out.setdefault(c.roi, (c.rx, mine, []))[2].append(c.metric)
        return out

    def said_conflicts(self, owner: str, roundings: bool = False) -> str:
        """:meth:`prescription_conflicts` (or :meth:`prescription_roundings`) in words, the set's
        prescriptions called ``owner``'s."""
        found = self.prescription_roundings() if roundings else self.prescription_conflicts()
        return "; ".join(f"{r} at {rx:g} Gy where {owner}'s is {m:g} Gy (its {', '.join(ms)})"
                         for r, (rx, m, ms) in found.items())

    def said_roundings(self, owner: str) -> str:
        """:meth:`prescription_roundings` as the warning says them ("" when there are none): accepted as
        one dose level, the criteria judged at the protocol's prescriptions."""
        if not self.prescription_roundings():
            return ""
        return (f"protocol {self.name!r} prescribes {self.said_conflicts(owner, True)}: one dose level "
                f"(within {SAME_LEVEL:.1%}), judged at the protocol's")

    def warn_roundings(self, owner: str, where: str = "") -> None:
        """A warning of :meth:`said_roundings` (none when there are none)."""
        said = self.said_roundings(owner)
        if said:
            warnings.warn(where + said, stacklevel=3)


def bind(protocol: Protocol, roi_set: RoiSet, roi_owner: str = "the dataset") -> BoundProtocol:
    """Validate ``protocol`` against ``roi_set`` (raises ProtocolError naming the criterion, as
    :meth:`Protocol.validate_for`) and resolve every applicable criterion once."""
    protocol.validate_for(roi_set, roi_owner)
    out: list[BoundCriterion] = []
    skipped: list[str] = []
    for i, c in enumerate(protocol.criteria, 1):
        if c.roi not in roi_set:
            skipped.append(c.name)
            continue
        rx = protocol.prescription(c.roi, roi_set)
        out.append(BoundCriterion(c, i, c.parsed, roi_set[c.roi].kind, rx, c.limit_value(rx),
                                  c.goal_value(rx), c.resolved_name(rx)))
    return BoundProtocol(protocol, roi_set, tuple(out), tuple(skipped))


def bound_for(protocol: Protocol | BoundProtocol, roi_set: RoiSet) -> BoundProtocol:
    """``protocol`` resolved for ``roi_set``: as given when it is bound to that set already (no second
    validation), else (re)bound, which validates."""
    if isinstance(protocol, BoundProtocol):
        return protocol if protocol.roi_set == roi_set else bind(protocol.protocol, roi_set)
    return bind(protocol, roi_set)
