"""What the RTPLANs say: target prescriptions and fractions, which RTDOSE is the patient's (a PLAN
sum, a MULTI_PLAN sum, the phases of a sequential boost that add up, a re-plan that replaces another;
partial doses refused), and the patient's ROI names, kinds and prescriptions from the RTSTRUCT, the
ROI map and the plans (docs/formats.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...patient import same_level
from .. import roi_names as _names
from ..rx_check import FROM_ROI_MAP
from ._common import (
    PARTIAL_DOSES,
    DicomImportError,
    field_int,
    field_numbers,
    raw_field,
    referenced_uids,
    uid_of,
    warn,
)
from .rtstruct import check_roi_numbers, roi_info
from .scan import PatientFiles


def plan_prescriptions(ds: Any, where: str = "RTPLAN") -> tuple[dict[int, float], list[float]]:
    """Target prescriptions (Gy) of an RTPLAN: ``({ReferencedROINumber: dose}, [site-level doses])``
    from the TARGET items of DoseReferenceSequence (TargetPrescriptionDose, the total dose)."""
    by_roi: dict[int, float] = {}
    sites: list[float] = []
    for k, dr in enumerate(getattr(ds, "DoseReferenceSequence", []) or []):
        if str(getattr(dr, "DoseReferenceType", "")).upper() != "TARGET":
            continue
        if "TargetPrescriptionDose" not in dr or dr.TargetPrescriptionDose in (None, ""):
            continue
        item = f"{where} DoseReferenceSequence item {k + 1}"
        rx = float(field_numbers(dr, "TargetPrescriptionDose", item, 1)[0])
        if not 0 < rx <= 200:
            raise DicomImportError(f"{where}: DoseReferenceSequence item {k + 1}: TargetPrescriptionDose "
                                   f"{rx:g} Gy is not a prescription (expected 0 < dose <= 200 Gy)")
        if raw_field(dr, "ReferencedROINumber") not in (None, ""):
            n = field_int(dr, "ReferencedROINumber", item)
            by_roi[n] = max(by_roi.get(n, 0.0), rx)
        else:
            sites.append(rx)
    return by_roi, sites


def planned_fractions(ds: Any, path: Any = "RTPLAN") -> int | None:
    """The plan's NumberOfFractionsPlanned (of its one fraction group that has one); None without one,
    for a value that is no positive whole number, and for several fraction groups (a warning naming
    ``path``: not recorded; whether their fractions share sessions is not told, as for concurrent
    plans)."""
    counts = []
    for fg in getattr(ds, "FractionGroupSequence", []) or []:
        n = getattr(fg, "NumberOfFractionsPlanned", None)
        if n not in (None, ""):
            try:
                k = float(str(n).strip())
            except ValueError:
                k = 0.0
            if not (k > 0 and k.is_integer()):
                warn(f"RTPLAN {path}: NumberOfFractionsPlanned {str(n).strip()!r} is not a positive whole "
                     "number; the plan's number of fractions is not recorded")
                return None
            counts.append(int(k))
    if len(counts) > 1:  # the first group's was recorded: 25 for a plan of 25 + 5 fractions
        warn(f"RTPLAN {path}: {len(counts)} fraction groups (FractionGroupSequence) of "
             f"{' + '.join(map(str, counts))} fractions, and whether they are delivered one after the other "
             "or in the same sessions is not told; the plan's number of fractions is not recorded")
        return None
    return counts[0] if counts else None




#: RTPlanRelationship values (PS3.3 C.8.8.9) saying two plans are delivered one after the other or in
#: parallel as parts of one treatment: their doses add up (a sequential boost, concurrent plans)
_ADDITIVE = {"PRIOR", "CONCURRENT"}

#: ... and saying one plan replaces another (a re-plan): the one no other plan names as predecessor is used
_REPLACING = {"PREDECESSOR"}


def _plan_relations(plans: list[tuple[Path, Any]]) -> dict[frozenset[str], set[str]]:
    """RTPlanRelationship values between the plans of one CT (either direction), keyed by the pair of
    plan UIDs; a plan referenced but absent is keyed with its UID too."""
    out: dict[frozenset[str], set[str]] = {}
    for _, ds in plans:
        for r in getattr(ds, "ReferencedRTPlanSequence", []) or []:
            other = str(getattr(r, "ReferencedSOPInstanceUID", "") or "")
            rel = str(getattr(r, "RTPlanRelationship", "") or "").upper()
            if other and other != uid_of(ds):
                out.setdefault(frozenset((uid_of(ds), other)), set()).add(rel)
    return out


def _additive_group(s: PatientFiles) -> list[tuple[Path, Any]]:
    """The plans of ``s`` that the RTPLANs say add up (PRIOR / CONCURRENT, linked transitively); empty
    when none do."""
    rel = _plan_relations(s.rtplans)
    uids = [uid_of(ds) for _, ds in s.rtplans]
    linked = {u: {u} for u in uids}
    for pair, kinds in rel.items():
        if kinds & _ADDITIVE and pair <= set(uids):
            a, b = tuple(pair)
            merged = linked[a] | linked[b]
            for u in merged:
                linked[u] = merged
    group = max(linked.values(), key=len, default=set())
    return [pl for pl in s.rtplans if uid_of(pl[1]) in group] if len(group) > 1 else []


def sequential_plans(plans: list[tuple[Path, Any]]) -> bool:
    """Whether the RTPLANs say ``plans`` are delivered one after the other: RTPlanRelationship PRIOR
    links them all and none names another CONCURRENT. Only then do their fractions add up (concurrent
    plans may share their sessions; a MULTI_PLAN sum alone does not say)."""
    uids = {uid_of(ds) for _, ds in plans}
    linked = {u: {u} for u in uids}
    for pair, kinds in _plan_relations(plans).items():
        if not pair <= uids:
            continue
        if "CONCURRENT" in kinds:
            return False
        if "PRIOR" in kinds:
            a, b = tuple(pair)
            merged = linked[a] | linked[b]
            for u in merged:
                linked[u] = merged
    return len(plans) > 0 and all(len(g) == len(uids) for g in linked.values())


def _is_error_grid(d: tuple[Path, Any, str]) -> bool:
    return str(getattr(d[1], "DoseType", "") or "").upper() == "ERROR"


def _dose_kind(d: tuple[Path, Any, str]) -> str:
    return str(getattr(d[1], "DoseSummationType", "") or "").upper()


def pick_dose(s: PatientFiles) -> None:
    """Choose the source's RTDOSE and RTPLAN: a PLAN sum (referenced, then first by path), or the sum
    of the plan doses of a sequential boost whose RTPLANs say they add up; several plans with their own
    doses and nothing saying how they relate are an error (see docs/formats.md). Another RTPLAN left
    out without anything saying how it relates to the plans used is named in a warning."""
    _pick_dose(s)
    if s.dose is not None and s.plan is not None:
        _warn_of_unrelated_plans(s)


def _pick_dose(s: PatientFiles) -> None:
    plan_uids = {uid_of(ds): (p, ds) for p, ds in s.rtplans}
    errors = [d for d in s.rtdoses if _is_error_grid(d)]
    if errors:  # an uncertainty grid beside the plan dose is no candidate for the patient's dose
        warn(f"{s.series.describe()}: RTDOSE {', '.join(str(d[0]) for d in errors)}: DoseType ERROR (a "
             "dose's uncertainty, not a dose); not used")
        s.rtdoses = [d for d in s.rtdoses if not _is_error_grid(d)]
    gridless = [d for d in s.rtdoses if "Rows" not in d[1]]
    if gridless:  # an RTDOSE of DVHs only (the dose image is optional, PS3.3 A.18.3): no candidate either
        warn(f"{s.series.describe()}: RTDOSE {', '.join(str(d[0]) for d in gridless)}: no dose grid (no "
             "Rows/Columns: DVHs only?); not used")
        s.rtdoses = [d for d in s.rtdoses if "Rows" in d[1]]
    if s.rtdoses:
        kind = _dose_kind
        plan = [d for d in s.rtdoses if kind(d) == "PLAN"]
        multi = [d for d in s.rtdoses if kind(d) == "MULTI_PLAN"]
        partial = [d for d in s.rtdoses if kind(d) in PARTIAL_DOSES]
        if partial and not plan and not multi:
            named = ", ".join(f"{d[0]} ({kind(d)}: {PARTIAL_DOSES[kind(d)]})" for d in partial)
            warn(f"{s.series.describe()}: RTDOSE {named}: part of a plan's dose, not the plan's, so not "
                 "used as the patient's dose (export the plan sum, DoseSummationType PLAN)")
        # the plans (of this CT) whose own dose is here: one entry per plan
        per_plan: dict[str, list[tuple[Path, Any, str]]] = {}
        for d in sorted(plan, key=lambda t: str(t[0])):
            u = next((u for u in referenced_uids(d[1], "ReferencedRTPlanSequence") if u in plan_uids), "")
            per_plan.setdefault(u, []).append(d)
        phased = {u: ds for u, ds in per_plan.items() if u}
        if multi:  # a sum of plans exported as such: the patient's total dose
            pool = sorted(multi, key=lambda t: str(t[0]))
            if len(pool) > 1:
                warn(f"{s.series.describe()}: {len(pool)} MULTI_PLAN RTDOSE files match "
                     f"({', '.join(str(p) for p, _, _ in pool)}); using {pool[0][0]}")
            s.dose = pool[0]
            refs = list(dict.fromkeys(referenced_uids(pool[0][1], "ReferencedRTPlanSequence")))
            summed = [plan_uids[u] for u in refs if u in plan_uids]
            absent = [u for u in refs if u not in plan_uids]
            if absent or (len(refs) < 2 and s.rtplans):  # the plans here are not all the sum's: their
                # prescriptions and fractions would be a part's (a boost's 20 Gy for a 70 Gy sum); a
                # MULTI_PLAN dose sums two or more plans (PS3.3 C.8.8.3), so one referenced is one part
                why = (f"sums {len(refs)} RTPLANs, {len(absent)} of them not in the folder "
                       f"({', '.join(absent)})" if absent else
                       f"references one RTPLAN ({plan_uids[refs[0]][0]}), not every plan it sums (two or "
                       "more)" if refs else
                       "does not say which RTPLANs it sums")
                warn(f"RTDOSE {pool[0][0]} (MULTI_PLAN) {why}: the folder's RTPLANs do not give the sum's "
                     "prescriptions and fractions, so none is used; prescriptions from the ROI names")
                return
            if summed:  # every plan it sums (two or more), each in the folder
                s.plans_summed, s.plan = summed, summed[0]
            return
        if len(phased) > 1:
            _several_plan_doses(s, phased)
            return
        group = _additive_group(s)
        if phased and group and next(iter(phased)) in {uid_of(ds) for _, ds in group}:
            u = next(iter(phased))
            others = ", ".join(str(p) for p, ds in group if uid_of(ds) != u)
            loose = ", ".join(str(d[0]) for d in per_plan.get("", []))
            whose = (f"whose dose cannot be told: RTDOSE {loose} references no RTPLAN of the folder" if loose
                     else "whose dose is not in the folder")
            warn(f"RTDOSE {phased[u][0][0]} is the dose of RTPLAN {plan_uids[u][0]}, which adds up with "
                 f"RTPLAN {others} (RTPlanRelationship PRIOR/CONCURRENT), {whose}: "
                 "one phase, not the patient's total dose, so not used (export every phase's RTDOSE "
                 "referencing its RTPLAN, or their sum as one RTDOSE)")
            s.plans_summed = group
            s.plan = group[0]
            return
        loose = per_plan.get("", [])
        if group and not phased and len(loose) > 1:  # the phases' doses, which is whose not told
            warn(f"RTDOSE {', '.join(str(d[0]) for d in loose)}: {len(loose)} plan doses referencing no "
                 f"RTPLAN of the folder, whose RTPLAN {' + '.join(str(p) for p, _ in group)} add up "
                 "(RTPlanRelationship PRIOR/CONCURRENT): which dose is which phase cannot be told, and one "
                 "phase is not the patient's total dose, so none is used (export every phase's "
                 "RTDOSE referencing its RTPLAN, or their sum as one RTDOSE)")
            s.plans_summed = group
            s.plan = group[0]
            return
        if phased:  # one plan's dose, the plan adding up with one not in the folder: one phase as well
            u = next(iter(phased))
            away = sorted({o for pair, kinds in _plan_relations(s.rtplans).items() if u in pair
                           and kinds & _ADDITIVE for o in pair - {u} if o not in plan_uids})
            if away:
                warn(f"RTDOSE {phased[u][0][0]} is the dose of RTPLAN {plan_uids[u][0]}, which adds up with "
                     f"RTPLAN {', '.join(away)} (RTPlanRelationship PRIOR/CONCURRENT), not in the folder: "
                     "one phase, not the patient's total dose, so neither its dose nor its prescriptions "
                     "are used (export every phase's RTPLAN and RTDOSE, or their sum as one RTDOSE)")
                return
        plan = _without_replaced(plan, plan_uids, s.rtplans)
        _refuse_doses_of_other_plans(s, plan, plan_uids)
        pool = sorted(plan or [d for d in s.rtdoses if kind(d) not in PARTIAL_DOSES],
                      key=lambda t: (t[2] == "FrameOfReference", str(t[0])))
        if len(pool) > 1:
            warn(f"{s.series.describe()}: {len(pool)} RTDOSE files match "
                 f"({', '.join(str(p) for p, _, _ in pool)}); using {pool[0][0]}")
        elif pool and not plan:
            warn(f"RTDOSE {pool[0][0]}: DoseSummationType is {kind(pool[0]) or '?'}, not PLAN; used as the "
                 "patient's dose")
        if pool:
            s.dose = pool[0]
    if s.rtplans:
        wanted = referenced_uids(s.dose[1], "ReferencedRTPlanSequence") if s.dose else []
        ref = [plan_uids[u] for u in wanted if u in plan_uids]
        group = _additive_group(s)
        if ref:
            s.plan = ref[0]
        elif wanted:  # the dose is another plan's: the folder's plan(s) would lend it a wrong Rx
            warn(f"RTDOSE {s.dose[0]} references RTPLAN {', '.join(wanted)}, which is not among the "
                 f"patient's ({', '.join(str(p) for p, _ in s.rtplans)}); prescriptions from names only")
        elif len(s.rtplans) == 1:
            s.plan = s.rtplans[0]
        elif group and s.dose is None:  # phases without doses: their prescriptions add up
            s.plans_summed, s.plan = group, group[0]
        else:
            warn(f"{s.series.describe()}: {len(s.rtplans)} RTPLANs and no RTDOSE saying which is the "
                 f"patient's ({', '.join(str(p) for p, _ in s.rtplans)}); prescriptions from names only")


def _warn_of_unrelated_plans(s: PatientFiles) -> None:
    """A warning naming the RTPLANs of ``s`` other than those whose dose is used (``s.plan``, or every
    plan of ``s.plans_summed``) that no RTPlanRelationship links to one of them: a boost phase exported
    without its dose and without the relationship would leave the patient's dose and prescriptions
    one phase's (consistent with each other, so nothing else notices), and a trial plan is better
    left out."""
    used = s.plans_summed or [s.plan]
    linked = {uid_of(ds) for _, ds in used}
    grown = True
    while grown:  # linked through any chain of relationships (a re-plan of a re-plan)
        grown = False
        for pair in _plan_relations(s.rtplans):
            if pair & linked and not pair <= linked:
                linked |= pair
                grown = True
    loose = [str(p) for p, ds in s.rtplans if uid_of(ds) not in linked]
    if loose:
        doses = s.doses_summed or [s.dose]
        warn(f"{s.series.describe()}: RTPLAN {', '.join(loose)} has no plan dose in the folder and nothing "
             f"says how it relates to RTPLAN {' + '.join(str(p) for p, _ in used)} (RTPlanRelationship), "
             f"whose RTDOSE {' + '.join(str(d[0]) for d in doses)} and prescriptions are used: were it a "
             "phase of the same treatment (a boost), they would miss its dose (export every phase's RTDOSE "
             "with RTPlanRelationship PRIOR in the later RTPLAN, or their sum as one RTDOSE); else leave it "
             "out of the folder")


def _without_replaced(plan: list[tuple[Path, Any, str]], plan_uids: dict[str, tuple[Path, Any]],
                      rtplans: list[tuple[Path, Any]]) -> list[tuple[Path, Any, str]]:
    """``plan`` (PLAN RTDOSEs) without the doses of an RTPLAN not in the folder that an RTPLAN of the
    folder names its PREDECESSOR (a re-plan exported with the replaced plan's dose but not its RTPLAN:
    the folder says which dose replaced it), with a warning; as it is when that leaves no dose."""
    rel = _plan_relations(rtplans)
    replaced = {o: next(u for u in pair if u != o) for pair, kinds in rel.items() if "PREDECESSOR" in kinds
                and not kinds & _ADDITIVE for o in pair if o not in plan_uids}
    if not replaced:
        return plan
    gone = {d[0]: refs[0] for d in plan if (refs := referenced_uids(d[1], "ReferencedRTPlanSequence"))
            and refs[0] in replaced}
    if not gone or len(gone) == len(plan):
        return plan
    for d in plan:
        if d[0] in gone:
            u = gone[d[0]]
            warn(f"RTDOSE {d[0]} is the dose of RTPLAN {u} (not in the folder), which RTPLAN "
                 f"{plan_uids[replaced[u]][0]} replaces (RTPlanRelationship PREDECESSOR); not used")
    return [d for d in plan if d[0] not in gone]


def _refuse_doses_of_other_plans(s: PatientFiles, plan: list[tuple[Path, Any, str]],
                                 plan_uids: dict[str, tuple[Path, Any]]) -> None:
    """A :class:`DicomImportError` when the PLAN RTDOSEs left to choose from reference different
    RTPLANs (ReferencedRTPlanSequence) of which the folder lacks some: the phases of a sequential boost
    exported without their RTPLANs, or a re-plan beside its predecessor's dose. Nothing says whether
    they add up or one replaces the other, so taking the first by path would make the patient's dose
    (and everything compared with it) one phase's. Doses of one plan, or referencing none, are left to
    the caller (the first by path, with a warning)."""
    by_plan: dict[str, list[Path]] = {}
    for d in plan:
        refs = referenced_uids(d[1], "ReferencedRTPlanSequence")
        if refs:
            by_plan.setdefault(refs[0], []).append(d[0])
    if len(by_plan) < 2 or all(u in plan_uids for u in by_plan):
        return
    listing = "; ".join(f"{', '.join(str(p) for p in paths)} of RTPLAN {u}"
                        f"{'' if u in plan_uids else ' (not in the folder)'}" for u, paths in by_plan.items())
    raise DicomImportError(
        f"patient {s.id}: {s.series.describe()}: {sum(map(len, by_plan.values()))} PLAN RTDOSE files of "
        f"{len(by_plan)} different RTPLANs ({listing}), and without the RTPLANs nothing says how the plans "
        "relate: the phases of a sequential boost add up, a re-plan replaces the other, and taking one of "
        "them as the patient's dose would be wrong by the other. Export their sum as one RTDOSE "
        "(DoseSummationType MULTI_PLAN), or add every RTPLAN to the folder (with RTPlanRelationship PRIOR, "
        "CONCURRENT or PREDECESSOR in the later one), or leave only the dose to use in the folder")


def _several_plan_doses(s: PatientFiles, phased: dict[str, list[tuple[Path, Any, str]]]) -> None:
    """Several RTPLANs of one CT, each with its own PLAN dose: their sum when the RTPLANs say they add
    up (PRIOR / CONCURRENT), the newest when they say one replaced the other (PREDECESSOR); otherwise
    a :class:`DicomImportError` (taking one phase of a sequential boost as the patient's dose and
    prescription would make every comparison wrong by the other phases)."""
    plans = {uid_of(ds): (p, ds) for p, ds in s.rtplans}
    listing = "; ".join(f"RTPLAN {plans[u][0]} with RTDOSE {', '.join(str(d[0]) for d in ds)}"
                        for u, ds in phased.items())
    for u, ds in phased.items():
        if len(ds) > 1:
            warn(f"RTPLAN {plans[u][0]} has {len(ds)} RTDOSE files ({', '.join(str(d[0]) for d in ds)}); "
                 f"using {ds[0][0]}")
    group = _additive_group(s)
    in_group = {uid_of(ds) for _, ds in group}
    if set(phased) <= in_group:
        s.plans_summed = group
        s.plan = group[0]
        lacking = [str(p) for p, ds in group if uid_of(ds) not in phased]
        if lacking:
            warn(f"{s.series.describe()}: the RTPLANs add up (RTPlanRelationship PRIOR/CONCURRENT) but "
                 f"RTPLAN {', '.join(lacking)} has no RTDOSE in the folder: the others' sum is not the "
                 "patient's total dose, so no dose is used (export every phase's RTDOSE, or their sum)")
            return
        s.doses_summed = [phased[uid_of(ds)][0] for _, ds in group]
        s.dose = s.doses_summed[0]
        return
    superseded = {str(getattr(r, "ReferencedSOPInstanceUID", "")) for _, ds in s.rtplans
                  for r in getattr(ds, "ReferencedRTPlanSequence", []) or []
                  if str(getattr(r, "RTPlanRelationship", "") or "").upper() in _REPLACING}
    current = [u for u in phased if u not in superseded]
    if len(current) == 1:  # every other plan is named a predecessor: a re-plan
        u = current[0]
        warn(f"{s.series.describe()}: RTPLAN {plans[u][0]} replaces "
             f"{', '.join(str(plans[v][0]) for v in phased if v != u)} (RTPlanRelationship PREDECESSOR); "
             f"using its RTDOSE {phased[u][0][0]}")
        s.plan, s.dose = plans[u], phased[u][0]
        return
    raise DicomImportError(
        f"{s.series.describe()}: {len(phased)} RTPLANs each with their own dose ({listing}), and nothing "
        "says how they relate: the phases of a sequential boost add up, a re-plan or an alternative "
        "replaces the other, and taking one of them as the patient's plan would be wrong by the other. "
        "Export their sum as one RTDOSE (DoseSummationType MULTI_PLAN referencing every plan), or mark the "
        "relationship in the later RTPLAN (ReferencedRTPlanSequence RTPlanRelationship PRIOR or CONCURRENT: "
        "summed; PREDECESSOR: replaced), or leave only the plan to use in the folder")


def _phase_prescriptions(s: PatientFiles, info: list[tuple[int, str, str, float | None]],
                         roi_map: _names.RoiMap) -> list[tuple[Path, dict[int, float]]]:
    """Per RTPLAN of the patient (every phase of a sum, else its one plan): its file and its target
    prescriptions by ROINumber (:func:`plan_prescriptions`; a plan's single SITE-level prescription
    goes to the only target of the RTSTRUCT that has none from its name, the ROI map or our label,
    unless it is the dose level (:func:`dosepred.patient.same_level`) another target is named for:
    then it is that target's, e.g. an SIB's 70 Gy (or 33 x 2.12 = 69.96 Gy) beside PTV70, not the
    elective PTV's, which keeps none, with a warning)."""
    open_targets: list[int] = []
    named: dict[str, float] = {}  # target -> the prescription its name, the map or our label gives
    for n, name, t, rx in info:
        c = roi_map.resolve(name, t)
        if c is None or c.is_body or t.upper() == "EXTERNAL":
            continue
        own = rx if rx is not None else c.prescription
        if own is not None and (c.kind == "target" or t.upper() in _names.TARGET_TYPES):
            named[name] = own
        elif own is None and t.upper() in _names.TARGET_TYPES:
            open_targets.append(n)
    out = []
    own = uid_of(s.rtstruct[1]) if s.rtstruct is not None else ""
    for pl in s.plans_summed or ([s.plan] if s.plan is not None else []):
        rx_k, sites_k = plan_prescriptions(pl[1], f"RTPLAN {pl[0]}")
        refs = referenced_uids(pl[1], "ReferencedStructureSetSequence")
        if rx_k and refs and own not in refs:  # its ReferencedROINumbers count another structure set's ROIs
            warn(f"RTPLAN {pl[0]} prescribes by ReferencedROINumber in RTSTRUCT {', '.join(refs)}, not in "
                 f"the patient's RTSTRUCT {s.rtstruct[0] if s.rtstruct else ''} ({own}): the numbers may "
                 "name other ROIs there, so its per-ROI prescriptions are not used")
            rx_k = {}
        if len(sites_k) == 1 and not rx_k and len(open_targets) == 1:
            # one dose level, not one number: a named PTV70 and a SITE dose of 33 x 2.12 = 69.96 Gy
            theirs = [name for name, v in named.items() if same_level(v, sites_k[0])]
            if theirs:
                other = next(name for n, name, _, _ in info if n == open_targets[0])
                warn(f"RTPLAN {pl[0]}: its one SITE-level prescription ({sites_k[0]:g} Gy, "
                     "DoseReferenceSequence without ReferencedROINumber) is the dose level of target "
                     f"{', '.join(theirs)} (its name, the ROI map or its label), so it is not given to "
                     f"{other}, the only target without a prescription, which keeps none (give it one with "
                     f'an ROI map, --roi-map MAP.json holding e.g. {{"{other}": {{"name": "{other}", '
                     '"prescription": 56}})')
            else:
                rx_k = {open_targets[0]: sites_k[0]}
        out.append((pl[0], rx_k))
    return out


def _summed_prescriptions(s: PatientFiles, phases: list[tuple[Path, dict[int, float]]],
                          names: dict[int, str]) -> tuple[dict[int, float], str]:
    """The patient's prescriptions by ROINumber from its plans: one plan's own, or the phases' sum
    when every phase prescribes the same targets; and "" or, when a target is prescribed by only some
    of the summed phases (a sequential boost whose first phase names the elective PTV and whose second
    names the boost PTV), the warning saying so: the sum is then ambiguous (the boost target also
    received the first phase's dose, or not) and no prescription is taken from the plans."""
    if len(phases) <= 1:
        return (dict(phases[0][1]) if phases else {}), ""
    named = sorted({n for _, rx in phases for n in rx})
    partial = [n for n in named if any(n not in rx for _, rx in phases)]
    if not partial:
        return {n: sum(rx[n] for _, rx in phases) for n in named}, ""
    by = "; ".join(f"{names.get(n, f'ROINumber {n}')} by "
                   f"{' and '.join(str(f) for f, rx in phases if n in rx)} only" for n in partial)
    return {}, (f"patient {s.id}: RTPLANs {' + '.join(str(f) for f, _ in phases)} add up (RTPlanRelationship "
                f"PRIOR/CONCURRENT or a MULTI_PLAN sum) but do not all prescribe the same targets ({by}): "
                "each target's summed prescription cannot be told (it may have received the other phases' "
                "dose too), so no prescription is taken from the RTPLANs; prescriptions from the ROI names")


def resolve_rois(s: PatientFiles, roi_map: _names.RoiMap) -> None:
    if s.rtstruct is None:
        return
    path, ds = s.rtstruct
    check_roi_numbers(ds, path, s.series.for_uid)
    info = roi_info(ds, path)
    phases = _phase_prescriptions(s, info, roi_map)
    plan_rx, ambiguous = _summed_prescriptions(s, phases, {n: name for n, name, _, _ in info})
    # the targets the plans prescribe: without the plans' prescription (an ambiguous sum), each needs
    # one from its name, our label or the ROI map, else nothing would tell the model its dose
    prescribed = {n for _, rx in phases for n in rx} if len(phases) > 1 and not plan_rx else set()
    unprescribed: list[str] = []
    for number, name, itype, rx in info:
        c = roi_map.resolve(name, itype)
        if c is None:
            continue
        if itype.upper() == "EXTERNAL" and not c.matched:
            c = _names.Canonical(_names.BODY, "other")
        user_rx = c.name in roi_map.prescriptions
        if number in plan_rx and not user_rx and not c.is_body:
            prx = plan_rx[number]
            if c.prescription is not None and abs(c.prescription - prx) > 1e-6:
                plans = " + ".join(str(pl[0]) for pl in s.plans_summed) if s.plans_summed else \
                    str(s.plan[0] if s.plan else "")
                warn(f"ROI {name} of RTSTRUCT {path}: the name says {c.prescription:g} Gy, RTPLAN "
                     f"{plans} prescribes {prx:g} Gy; using the plan's")
            if c.kind == "oar":  # a TARGET dose reference on an organ: say so, the plan wins
                warn(f"ROI {name} of RTSTRUCT {path}: its name or RTROIInterpretedType ({itype or '-'}) says "
                     f"an organ at risk, but the RTPLAN prescribes it {prx:g} Gy as a TARGET dose reference; "
                     "used as a target, as the plan says")
            c = _names.Canonical(c.name, "target", prx, c.matched)
            s.prescriptions[c.name] = (
                f"RTPLAN {' + '.join(str(pl[0]) for pl in s.plans_summed)} DoseReferenceSequence (sum)"
                if s.plans_summed else f"RTPLAN {s.plan[0] if s.plan else ''} DoseReferenceSequence")
        elif rx is not None and c.kind in ("other", "target") and c.prescription is None:
            c = _names.Canonical(c.name, "target", rx, c.matched)
            s.prescriptions.setdefault(c.name, f"RTSTRUCT {path} ROI {name} ROIObservationDescription")
        elif (rx is not None and c.kind == "target" and c.prescription is not None and not user_rx
              and not roi_map.lookup(name)[0] and abs(c.prescription - rx) > 1e-6):
            # our export's label records the prescription the exported data held (a plan's or a map's,
            # which won over the name on its import): the name's would change it without a word
            warn(f"ROI {name} of RTSTRUCT {path}: the name says {c.prescription:g} Gy, its label "
                 f"(ROIObservationDescription) {rx:g} Gy; using the label, the prescription the exported "
                 "data held (--roi-map with \"prescriptions\" sets another)")
            c = _names.Canonical(c.name, "target", rx, c.matched)
            s.prescriptions.setdefault(c.name, f"RTSTRUCT {path} ROI {name} ROIObservationDescription")
        if c.kind == "target" and c.prescription is not None and c.name not in s.prescriptions:
            # where the prescription came from, for the check of the plan dose against it (io.rx_check)
            s.prescriptions[c.name] = (
                f"{FROM_ROI_MAP} {roi_map.source} prescriptions" if user_rx else
                f"{FROM_ROI_MAP} {roi_map.source} ({name} -> {c.name})" if roi_map.lookup(name)[0] else
                f"ROI name {name}")
        if number in prescribed and c.prescription is None and not c.is_body:
            unprescribed.append(name)
        if c.name in s.canon and c.name != _names.BODY:
            warn(f"RTSTRUCT {path}: ROIs {s.original_names[c.name] + [name]} all map to {c.name}; "
                 "their union is used")
        s.canon.setdefault(c.name, c)
        s.roi_sources.setdefault(c.name, []).append(number)
        s.original_names.setdefault(c.name, []).append(name)
    if unprescribed:
        one = len(unprescribed) == 1
        files = " + ".join(str(f) for f, _ in phases)
        raise DicomImportError(
            f"patient {s.id}: RTSTRUCT {path}: target{'' if one else 's'} {', '.join(unprescribed)} "
            f"{'has' if one else 'have'} no prescription: RTPLANs {files} add up but do not all prescribe "
            "the same targets, so the summed prescription is not known, and "
            f"{'its name carries' if one else 'their names carry'} no dose. Name "
            f"{'it' if one else 'each'} with its total dose in an ROI map (--roi-map MAP.json holding e.g. "
            f'{{"{unprescribed[0]}": "PTV70"}}) or in the RTSTRUCT (PTV70)')
    if ambiguous:
        warn(ambiguous)
