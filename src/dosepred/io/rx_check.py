"""Whether a patient's plan dose and its targets' prescriptions belong together: the one check made
wherever a patient with a plan dose and prescribed targets enters dosepred (:mod:`dosepred.io.source`:
every source's patients, and what ``data import-*`` reads), whatever the format.

Nothing else compares them: a prescription from two concurrent RTPLANs each stating the full dose
(summed to twice it), a per-beam or per-fraction RTDOSE, a dose in the wrong units, a prescription
read from a name such as ``PTV_7000`` or a dose grid of another patient would otherwise reach the
model's prescription channel, the evaluation and plan QA without a word.

The rule (docs/formats.md, with the range measured on OpenKBP): for each present target with a
prescription, the median plan dose inside it is compared with its own prescription and with the
highest prescription of the patient's targets (a low-dose PTV often contains the high-dose one, so
its median may reach the highest / its own):

- ``median < LOW x own`` or ``median > HIGH x highest``: inconsistent, one :class:`PrescriptionWarning`
  per patient naming each such target;
- ``median < ERROR_LOW x own`` or ``median > ERROR_HIGH x highest``: no plan delivering those
  prescriptions gives that dose, so it is a :class:`PrescriptionError` (one line, nothing written),
  unless every such target's prescription came from the user's ROI map (the user said so: a warning).

Where a prescription came from is what the reader records in ``Patient.meta["prescriptions_from"]``
(ROI name -> text; the DICOM reader: the RTPLAN(s), the ROI map, the ROI name); a text starting with
:data:`FROM_ROI_MAP` is the user's ROI map.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..patient import Patient

#: below this fraction of its own prescription a target's median plan dose is inconsistent
LOW = 0.8
#: above this multiple of the patient's highest prescription a target's median plan dose is inconsistent
HIGH = 1.3
#: below this fraction of its own prescription no plan of that prescription gave the dose: an error
ERROR_LOW = 0.5
#: above this multiple of the highest prescription no plan of those prescriptions gave it: an error
ERROR_HIGH = 2.0
#: how ``meta["prescriptions_from"]`` starts for a prescription the user's ROI map set
FROM_ROI_MAP = "ROI map"


class PrescriptionWarning(UserWarning):
    """A patient's plan dose and its targets' prescriptions disagree (the rule in the module docstring)."""


class PrescriptionError(InputError):
    """A patient's plan dose cannot be a delivered plan of its targets' prescriptions."""


@dataclass(frozen=True)
class TargetDose:
    """One present target with a prescription: its prescription and the median plan dose inside it."""

    name: str
    prescription: float
    median: float
    #: ``median / prescription``
    ratio: float
    #: ``median / (the patient's highest prescription)``
    ratio_highest: float
    #: where the prescription came from (``meta["prescriptions_from"]``), "" when not recorded
    source: str = ""

    @property
    def inconsistent(self) -> bool:
        return self.ratio < LOW or self.ratio_highest > HIGH

    @property
    def impossible(self) -> bool:
        return self.ratio < ERROR_LOW or self.ratio_highest > ERROR_HIGH

    @property
    def from_roi_map(self) -> bool:
        return self.source.startswith(FROM_ROI_MAP)

    def described(self) -> str:
        what = (f"{self.name} (Rx {self.prescription:g} Gy{f', from {self.source}' if self.source else ''}): "
                f"median {self.median:.1f} Gy = {self.ratio:.2f} x Rx")
        return what + (f" = {self.ratio_highest:.2f} x the highest Rx" if self.ratio_highest > HIGH else "")


def target_doses(p: Patient) -> list[TargetDose]:
    """Each present, non-empty target of ``p`` with a prescription and the median plan dose inside it;
    empty without a dose or prescribed targets."""
    if p.dose is None:
        return []
    rx = {r.name: float(r.prescription) for r in p.roi_set
          if r.kind == "target" and r.prescription is not None and r.name not in p.missing_rois}
    if not rx:
        return []
    sources = p.meta.get("prescriptions_from") or {}
    dose = np.asarray(p.dose)
    found: list[tuple[str, float, float]] = []
    for name, prescription in rx.items():
        values = dose[p.mask(name)]
        if values.size:
            found.append((name, prescription, float(np.median(values.astype(np.float64)))))
    if not found:
        return []
    highest = max(r for _, r, _ in found)
    if not isinstance(sources, dict):
        sources = {}
    return [TargetDose(n, r, m, m / r, m / highest, str(sources.get(n, ""))) for n, r, m in found]


def check_plan_dose(p: Patient, where: str | None = None, roi_map_applies: bool | None = None
                    ) -> list[TargetDose]:
    """The check of the module docstring on patient ``p`` (``where``: the source it was read from;
    else ``meta["source"]``): nothing when consistent, one :class:`PrescriptionWarning` naming the
    patient, the source and each inconsistent target, or a :class:`PrescriptionError`. Returns the
    inconsistent targets. ``roi_map_applies``: whether the source read takes an ROI map (DICOM; not
    a cache, even one imported from DICOM); None: ``p`` was read from DICOM (its
    ``meta["prescriptions_from"]``)."""
    bad = [t for t in target_doses(p) if t.inconsistent]
    if not bad:
        return []
    src = where or p.meta.get("source")
    impossible = [t for t in bad if t.impossible and not t.from_roi_map]
    rule = (f"a target's median plan dose should lie within {LOW:g} x its prescription and {HIGH:g} x the "
            "highest prescription (OpenKBP train and validation plans: 0.89-1.19 x its own)")
    from_dicom = "prescriptions_from" in p.meta
    if roi_map_applies is None:
        roi_map_applies = from_dicom
    if from_dicom:  # read from DICOM, where an ROI map can set prescriptions
        remedy = (f"ROI map (--roi-map MAP.json holding \"prescriptions\": {{\"{bad[0].name}\": <Gy>}}) "
                  "or give the patient's whole-plan RTDOSE")
        causes = ("likely causes: prescriptions of plans summed that should not be (concurrent RTPLANs each "
                  "stating the full dose), a per-beam or per-fraction RTDOSE, dose units (cGy), a "
                  "prescription read from a name, a target of another plan or course left in the structure "
                  "set (an ROI map leaves it out: {\"<its RTSTRUCT name>\": null}), or another patient's "
                  "dose; "
                  + (f"set the prescription with an {remedy}" if roi_map_applies else
                     f"import its DICOM again setting the prescription with an {remedy}"))
    else:  # OpenKBP, NIfTI, caches: no ROI map; the files themselves need correcting
        causes = ("likely causes: dose units (cGy), a per-beam or per-fraction dose, another patient's dose, "
                  "or targets named with the wrong prescription; correct the dose file or the targets' "
                  "prescriptions (names or sidecar) at the source")
    head = f"patient {p.id}{f' of {src}' if src else ''}: plan dose and prescriptions disagree: "
    listed = "; ".join(t.described() for t in bad)
    if impossible:
        raise PrescriptionError(
            head + listed + f" (below {ERROR_LOW:g} x Rx or above {ERROR_HIGH:g} x the highest Rx, which no "
            f"plan of these prescriptions delivers; {rule}); {causes}")
    warnings.warn(head + listed + f" ({rule}); {causes}", PrescriptionWarning, stacklevel=2)
    return bad


__all__ = ["ERROR_HIGH", "ERROR_LOW", "FROM_ROI_MAP", "HIGH", "LOW", "PrescriptionError",
           "PrescriptionWarning", "TargetDose", "check_plan_dose", "target_doses"]
