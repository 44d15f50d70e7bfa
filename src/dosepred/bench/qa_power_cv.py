"""``dosepred bench qa-power``'s intervals: random calibrate / check splits of the untouched criteria
and the degraded plans (:mod:`dosepred.bench.qa_degrade`), flags as plan QA raises them
(:func:`dosepred.qa.result.flags_for`) with the conformal code of ``dosepred calibrate``
(:func:`dosepred.qa.conformal.fit_family`), for every method and the locally adaptive candidates
(:data:`ADAPTIVE`); the issue-25 targets (:func:`targets`) and how well the test-time passes' disagreement
predicts the size of the errors (:func:`difficulty_correlation`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ..qa.conformal import (
    METHODS,
    apply_offsets,
    clip_to_range,
    criterion_norm,
    criterion_stats,
    family_offsets,
    fit_family,
    highest_coverage,
    offsets,
)
from ..qa.families import FAMILIES
from ..qa.result import FLAG_COVERAGE_BELOW, FLAG_HOT_ABOVE, FLAG_OAR_ABOVE, IMPROVEMENT_FLAGS, flags_for
from .qa_degrade import Case, Crit, PowerConfig

#: Locally adaptive candidates: name -> the test-time passes whose disagreement is the difficulty.
ADAPTIVE = {"adaptive-flip": ("flip",), "adaptive-shift": ("shift",), "adaptive-passes": ("flip", "shift")}
#: Floor of the adaptive scale g(d), as a share of the calibration scores' mean size.
G_FLOOR = 0.2
#: The issue-25 targets: OAR mean-dose false alarms at most 5 %, +3 Gy caught >= 60 %, +6 Gy >= 95 %,
#: coverage of every family within 3 points of nominal.
TARGETS = {"fa_max": 5.0, "sens": {3.0: 60.0, 6.0: 95.0}, "coverage_tol": 3.0}


# ----------------------------------------------------------------------------- intervals
def _adaptive_fit(cu: list[Crit], names: Sequence[str]) -> dict[str, Any]:
    """A normalised family scaled per unit by g(d) = a + b d (d: the disagreement with the passes
    ``names``): per-criterion bias and scale as ``normalised`` (:func:`criterion_stats`), ``a, b``
    by least squares of the normalised scores' size on d (b >= 0; g >= :data:`G_FLOOR` of their
    mean); each calibration unit's score uses statistics fitted without its patient."""
    def d_of(c: Crit) -> float:
        return math.sqrt(sum((c.passes[n] - c.predicted) ** 2 for n in names) / len(names))

    def score(u: Crit, st: dict[str, Any]) -> float:  # the normalised score
        b, s = criterion_norm(st, u.key)
        return (u.plan - u.predicted - b) / s

    def fit(us: list[Crit]) -> tuple[dict[str, Any], float, float, float]:
        st = criterion_stats([u.unit_record() for u in us])
        z = np.array([abs(score(u, st)) for u in us])
        d = np.array([d_of(u) for u in us])
        b = float(np.polyfit(d, z, 1)[0]) if d.size > 2 and d.std() > 0 else 0.0
        b = max(b, 0.0)
        a = float(z.mean() - b * d.mean())
        return st, a, b, G_FLOOR * float(z.mean())

    def g(a: float, b: float, floor: float, c: Crit) -> float:
        return max(a + b * d_of(c), floor, 1e-6)

    st, a, b, floor = fit(cu)
    by: dict[str, list[Crit]] = {}
    for u in cu:
        by.setdefault(u.patient, []).append(u)
    lower, upper = [], []
    for pid, mine in by.items():
        rest = [u for u in cu if u.patient != pid]
        s2, a2, b2, f2 = fit(rest) if rest else (st, a, b, floor)
        for u in mine:
            bias, scale = criterion_norm(s2, u.key)
            z = (u.plan - u.predicted - bias) / (scale * g(a2, b2, f2, u))
            top = 100.0 if u.family == "v_metric" else math.inf
            lower.append(math.inf if u.plan >= top else z)  # plan values at a bound: see tail_scores
            upper.append(-math.inf if u.plan <= 0 else z)
    return {"stats": st, "a": a, "b": b, "floor": floor, "lower": np.array(lower), "upper": np.array(upper),
            "g": lambda c: g(a, b, floor, c)}


# ------------------------------------------------------------------------------ cross-validation
#: Patients each split calibrates on, at least; and one more is checked
MIN_CALIBRATION = 2
MIN_PATIENTS = MIN_CALIBRATION + 1


def check_enough_patients(n: int, where: str = "") -> None:
    """An :class:`~dosepred.errors.InputError` unless ``n`` patients (with criteria) are enough to
    split: :data:`MIN_CALIBRATION` calibrating and one checked. ``where``: the data, named first."""
    if n < MIN_PATIENTS:
        raise InputError(f"{where + ': ' if where else ''}{n} patient{'' if n == 1 else 's'} with plan-QA "
                         f"criteria; the benchmark needs at least {MIN_PATIENTS} ({MIN_CALIBRATION} "
                         "calibrating and 1 checked in each split)")


def methods_default(have: set[str]) -> list[str]:
    """Every method of :data:`METHODS`, and the adaptive candidates whose passes are in ``have``."""
    return [*METHODS, *(m for m, need in ADAPTIVE.items() if set(need) <= have)]


def _coverage_remedy(fam_offsets: Any, coverage: float, n_cal: int, n: int) -> str:
    """What to do when ``coverage`` gives an infinite interval: the highest coverage these units give
    (bisected, as qa's refusal names it), and more calibrating patients only where the data has them."""
    def bounded(cov: float) -> bool:
        a, b = fam_offsets(cov)
        return a > -math.inf and b < math.inf

    most = highest_coverage(bounded, coverage)
    more = (f"more --calibration-patients (up to {n - 1})" if n_cal < n - 1 else
            f"more patients in --data (all but one of its {n} calibrate already)")
    return (f"ask for a lower --coverage (at most {most:g}) or {more}" if most > 0 else f"give {more}")


def cross_validate(crits: Sequence[Crit], cases: Sequence[Case], cfg: PowerConfig,
                   methods: Sequence[str] | None = None, qa_methods: dict[str, str] | None = None
                   ) -> dict[str, Any]:
    """Random patient-level splits (``cfg.calibration_patients`` calibrate, the rest are checked);
    per method: coverage, median width, false alarms and sensitivity, counted over (split, checked
    unit) pairs. ``methods``: of :data:`METHODS` and :data:`ADAPTIVE` (default: every method, and
    the adaptive candidates whose passes every criterion has), and ``qa``: per family the method of
    ``qa_methods`` (family -> one of :data:`METHODS`; absolute for a family it does not name)."""
    have = set.intersection(*(set(c.passes) for c in crits)) if crits else set()
    if methods is None and not qa_methods:
        methods = methods_default(have)
    qa_methods = dict(qa_methods or {})
    if qa_methods and methods is None:
        methods = [*methods_default(have), "qa"]
    for m in methods or ():
        if m == "qa":
            bad = {f: v for f, v in qa_methods.items() if v not in METHODS}
            if bad:
                raise InputError(f"calibration methods {bad} are not among {', '.join(METHODS)}")
            continue
        if m not in METHODS and not (m in ADAPTIVE and set(ADAPTIVE[m]) <= have):
            raise InputError(f"--methods: {m!r} is not one of {', '.join(METHODS)}, qa, or an adaptive "
                             f"candidate whose test-time passes were given ({', '.join(ADAPTIVE)})")
    pids = sorted({c.patient for c in crits})
    check_enough_patients(len(pids))
    n_cal = cfg.calibration_patients or int(round(len(pids) * 2 / 3))
    if not MIN_CALIBRATION <= n_cal <= len(pids) - 1:
        raise InputError(f"--calibration-patients {n_cal}: must be between {MIN_CALIBRATION} and "
                         f"{len(pids) - 1} (the data has {len(pids)} patients; at least one is checked)")
    right = {"oar": FLAG_OAR_ABOVE, "cold": FLAG_COVERAGE_BELOW, "hot": FLAG_HOT_ABOVE}
    by_pat: dict[str, list[Crit]] = {}
    for c in crits:
        by_pat.setdefault(c.patient, []).append(c)
    cases_by_pat: dict[str, list[Case]] = {}
    for k in cases:
        cases_by_pat.setdefault(k.patient, []).append(k)
    rng = np.random.default_rng(cfg.seed)
    # acc[method]: counters
    acc: dict[str, dict[str, Any]] = {m: {"fam": {}, "case": {}, "plans": [0, 0], "roi": {}} for m in methods}

    def flagged(c: Crit, value: float, low: float, high: float) -> list[str]:
        return flags_for(value, c.predicted, low, high, c.kind, c.lower_better, c.unit)[0]

    for _ in range(cfg.splits):
        perm = rng.permutation(pids)
        cal, test = set(perm[:n_cal].tolist()), perm[n_cal:].tolist()
        fits: dict[str, Any] = {}
        cal_by_fam: dict[str, list[Crit]] = {}
        for c in crits:
            if c.patient in cal:
                cal_by_fam.setdefault(c.family, []).append(c)
        for fam, cu in cal_by_fam.items():
            f = fit_family([u.unit_record() for u in cu], fam)
            fits[fam] = f
        for m in methods:
            a = acc[m]
            meth = {fam: (qa_methods.get(fam, "absolute") if m == "qa" else m) for fam in fits}
            off: dict[str, tuple[float, float]] = {}
            ada: dict[str, dict[str, Any]] = {}
            for fam, f in fits.items():
                if m in ADAPTIVE:
                    ada[fam] = _adaptive_fit(cal_by_fam[fam], ADAPTIVE[m])

                    def fam_offsets(cov: float, fa: dict[str, Any] = ada[fam]) -> tuple[float, float]:
                        return offsets(fa["lower"], "normalised", cov, cfg.rule, fa["upper"])
                else:
                    def fam_offsets(cov: float, f: Any = f, how: str = meth[fam]) -> tuple[float, float]:
                        return family_offsets(f, how, cov, cfg.rule)
                off[fam] = fam_offsets(cfg.coverage)
                if off[fam][0] == -math.inf or off[fam][1] == math.inf:  # as QA refuses it (QAChecker)
                    raise InputError(
                        f"--coverage {cfg.coverage:g} needs more calibration units than the "
                        f"{len(cal_by_fam[fam])} of family {fam} on {n_cal} calibrating patients "
                        f"(method {m}): the interval is infinite and would flag nothing; "
                        f"{_coverage_remedy(fam_offsets, cfg.coverage, n_cal, len(pids))}")
            for pid in test:
                ivs: dict[str, tuple[float, float]] = {}
                any_flag = False
                for c in by_pat[pid]:
                    if c.family not in fits:
                        continue
                    lo, hi = off[c.family]
                    if m in ADAPTIVE:
                        fa = ada[c.family]
                        b, s = criterion_norm(fa["stats"], c.key)
                        s = s * fa["g"](c)
                        low, high = clip_to_range(c.predicted + (b + s * lo), c.predicted + (b + s * hi),
                                                  c.family)
                    else:
                        low, high = apply_offsets(c.predicted, c.key, fits[c.family], meth[c.family], lo, hi)
                    ivs[c.key] = (low, high)
                    fl = flagged(c, c.plan, low, high)
                    bad = any(x.startswith(IMPROVEMENT_FLAGS) for x in fl)
                    any_flag |= bad
                    d = a["fam"].setdefault(c.family, {"n": 0, "covered": 0, "flagged": 0, "widths": []})
                    d["n"] += 1
                    d["covered"] += int(low <= c.plan <= high)
                    d["flagged"] += int(bad)
                    d["widths"].append(high - low)
                a["plans"][0] += 1
                a["plans"][1] += int(any_flag)
                crit_of = {c.key: c for c in by_pat[pid]}
                for k in cases_by_pat.get(pid, []):
                    c = crit_of[k.key]
                    if k.key not in ivs:
                        continue
                    ok = any(x.startswith(right[k.what]) for x in flagged(c, k.values[k.key], *ivs[k.key]))
                    anywhere = any(x.startswith(IMPROVEMENT_FLAGS)
                                   for kk, v in k.values.items() if kk in ivs
                                   for x in flagged(crit_of[kk], v, *ivs[kk]))
                    for store, key in ((a["case"], (k.what, k.family, k.amount)),
                                       (a["roi"], (k.what, k.family, k.key, k.amount))):
                        e = store.setdefault(key, [0, 0, 0])
                        e[0] += 1
                        e[1] += int(ok)
                        e[2] += int(anywhere)
    out: dict[str, Any] = {}
    for m, a in acc.items():
        fams = {fam: {"units": d["n"], "coverage": 100.0 * d["covered"] / d["n"],
                      "false_alarms": 100.0 * d["flagged"] / d["n"],
                      "width_median": float(np.median(d["widths"])) if d["widths"] else math.nan}
                for fam, d in sorted(a["fam"].items(), key=lambda kv: FAMILIES.index(kv[0]))}
        order = sorted(a["case"].items(), key=lambda kv: (FAMILIES.index(kv[0][1]), kv[0][0], kv[0][2]))
        sens = [{"what": w, "family": fam, "amount": amt, "n": e[0], "sensitivity": 100.0 * e[1] / e[0],
                 "flagged_anywhere": 100.0 * e[2] / e[0]} for (w, fam, amt), e in order]
        per_roi = [{"what": w, "family": fam, "criterion": key, "amount": amt, "n": e[0],
                    "sensitivity": 100.0 * e[1] / e[0]}
                   for (w, fam, key, amt), e in sorted(a["roi"].items())]
        out[m] = {"families": fams, "sensitivity": sens, "per_criterion": per_roi,
                  "plans_flagged": 100.0 * a["plans"][1] / max(a["plans"][0], 1)}
        if m == "qa":
            out[m]["per_family_method"] = {fam: qa_methods.get(fam, "absolute") for fam in fams}
    return {"calibration_patients": n_cal, "test_patients": len(pids) - n_cal, "patients": len(pids),
            "methods": out}


def targets(res: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The issue-25 targets for ``method``: OAR mean-dose false alarms, +3/+6 Gy sensitivity, coverage."""
    r = res["methods"][method]
    nominal = res["coverage"] * 100
    out = []
    fam = r["families"].get("oar_mean")
    if fam:
        out.append({"what": "OAR mean doses: false alarms (%)", "value": fam["false_alarms"],
                    "goal": f"<= {TARGETS['fa_max']:g}", "met": fam["false_alarms"] <= TARGETS["fa_max"]})
    for amt, goal in TARGETS["sens"].items():
        row = next((s for s in r["sensitivity"] if s["what"] == "oar" and s["family"] == "oar_mean"
                    and s["amount"] == amt), None)
        if row:
            out.append({"what": f"OAR mean doses: +{amt:g} Gy caught (%)", "value": row["sensitivity"],
                        "goal": f">= {goal:g}", "met": row["sensitivity"] >= goal})
    worst = max((abs(f["coverage"] - nominal) for f in r["families"].values()), default=math.nan)
    out.append({"what": "coverage of every family: largest distance to nominal (points)", "value": worst,
                "goal": f"<= {TARGETS['coverage_tol']:g}", "met": worst <= TARGETS["coverage_tol"]})
    return out


def difficulty_correlation(crits: Sequence[Crit]) -> dict[str, dict[str, dict[str, float]]]:
    """Per test-time pass and family: Spearman's correlation of the pass's disagreement with the
    plain prediction (|pass - predicted|) with the size of the error (|plan - predicted|), and with the
    size of the error less its criterion's mean (what the normalised interval leaves)."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, dict[str, float]]] = {}
    names = sorted(set.intersection(*(set(c.passes) for c in crits))) if crits else []
    for name in names:
        for fam in FAMILIES:
            cs = [c for c in crits if c.family == fam]
            if len(cs) < 3:
                continue
            r = np.array([c.plan - c.predicted for c in cs])
            mean: dict[str, list[float]] = {}
            for c, x in zip(cs, r, strict=True):
                mean.setdefault(c.key, []).append(float(x))
            centred = np.abs(r - np.array([np.mean(mean[c.key]) for c in cs]))
            d = np.array([abs(c.passes[name] - c.predicted) for c in cs])
            if d.std() == 0:
                continue
            out.setdefault(name, {})[fam] = {"error": float(spearmanr(d, np.abs(r))[0]),
                                             "centred_error": float(spearmanr(d, centred)[0]),
                                             "units": len(cs)}
    return out
