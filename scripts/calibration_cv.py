"""Cross-validated coverage and widths of the calibration methods (docs/results.md, "Plan QA
calibration").

    python scripts/calibration_cv.py --data VAL_CACHE --pred mae-cdm=PRED_CACHE [--pred ...]
        [--protocol openkbp-clinical] [--splits 1000] [--cal-fraction 0.8]
        [--v-splits 5000] [--rule interpolated --rule conservative] [--band] [--json out.json]

For each model's predictions (a cache from `dosepred predict --format cache`): units of every
(patient, criterion), then repeated random patient-level splits (calibrate on --cal-fraction of the
patients, check the others) per metric family, method and conformal quantile rule at 80 % and 90 %.
The units are collected once per model; the splits are the same for every rule (same seed).

The V-metric family has one unit per patient (PTV70 V110% in openkbp-clinical), so a split checks
about 7 units and the mean coverage over 200 splits still moves by +/- 1-2 points from one set of
splits to another; it is cross-validated on its own with --v-splits splits (standard error about
0.25 points with 5000). "se" in the table is the Monte Carlo standard error of the mean coverage.

--band also cross-validates the report's DVH band: per ROI and volume level, the signed interval of
D at that level from the calibration patients, checked on the others (pointwise coverage, pooled
over ROIs per level, and the fraction of held-out DVHs inside the band at every level at once).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from dosepred.qa.band import BAND_LEVELS, band_offsets, fit_band
from dosepred.qa.calibrating import collect_units
from dosepred.qa.conformal import DEFAULT_RULE, METHODS, QUANTILE_RULES
from dosepred.qa.crossval import choose_methods, cross_validate
from dosepred.qa.families import FAMILIES, FAMILY_TITLES


def band_cv(band: dict, splits: int, cal_fraction: float, rule: str, coverages=(0.8, 0.9), seed: int = 0
            ) -> dict:
    """Pointwise coverage of the DVH band per level (pooled over ROIs) and whole-curve coverage."""
    rng = np.random.default_rng(seed)
    pids = sorted({pid for rows in band.values() for pid in rows})
    n_cal = max(1, int(round(len(pids) * cal_fraction)))
    acc: dict = {f"{c:g}": {"hits": np.zeros(len(BAND_LEVELS)), "n": np.zeros(len(BAND_LEVELS)),
                            "curve": [], "width": [[] for _ in BAND_LEVELS]} for c in coverages}
    for _ in range(splits):
        cal = set(rng.permutation(pids)[:n_cal].tolist())
        fitted = fit_band({r: {p: v for p, v in rows.items() if p in cal} for r, rows in band.items()})
        for cov in coverages:
            a = acc[f"{cov:g}"]
            for roi, rows in band.items():
                off = band_offsets(fitted, roi, cov, rule)
                if off is None:
                    continue
                levels, lo, hi = off
                k = [BAND_LEVELS.index(v) for v in levels]
                for p, res in rows.items():
                    if p in cal:
                        continue
                    r = np.asarray(res)[k]
                    inside = (r >= lo) & (r <= hi)
                    a["hits"][k] += inside
                    a["n"][k] += 1
                    a["curve"].append(bool(inside.all()))
                for j, kk in enumerate(k):
                    a["width"][kk].append(hi[j] - lo[j])
    return {c: {"pointwise": (a["hits"] / np.maximum(a["n"], 1) * 100).tolist(),
                "whole_curve": float(np.mean(a["curve"]) * 100),
                "width": [float(np.median(w)) if w else None for w in a["width"]]}
            for c, a in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--pred", action="append", required=True, help="NAME=PRED_CACHE")
    ap.add_argument("--protocol", default="openkbp-clinical")
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--cal-fraction", type=float, default=0.5)
    ap.add_argument("--v-splits", type=int, default=5000, help="splits for the V-metric family")
    ap.add_argument("--rule", action="append", choices=QUANTILE_RULES,
                    help=f"conformal quantile rule(s) to compare (default: {DEFAULT_RULE})")
    ap.add_argument("--band", action="store_true", help="also cross-validate the DVH band")
    ap.add_argument("--json")
    a = ap.parse_args()
    rules = a.rule or [DEFAULT_RULE]
    allres: dict = {}
    for spec in a.pred:
        name, path = spec.split("=", 1)
        band: dict = {}
        units, ids = collect_units(None, a.data, a.protocol, predictions=path,  # no model to check
                                   dvh_band=band if a.band else None)
        allres[name] = {"patients": len(ids), "units": len(units)}
        for rule in rules:
            t0 = time.perf_counter()
            vu = [u for u in units if u.family == "v_metric"]
            cv = cross_validate([u for u in units if u.family != "v_metric"], splits=a.splits,
                                cal_fraction=a.cal_fraction, rule=rule)
            if vu:
                cv.update(cross_validate(vu, splits=a.v_splits, cal_fraction=a.cal_fraction, rule=rule))
            chosen = choose_methods(cv)
            allres[name][rule] = {"cv": cv, "chosen": chosen}
            print(f"\n## {name}, rule {rule}: {len(ids)} patients, {len(units)} units, {a.splits} random "
                  f"splits ({a.v_splits} for V-metrics), calibrating on {a.cal_fraction:.0%} of the patients "
                  f"({time.perf_counter() - t0:.0f} s)")
            print("| family | units | method | cov 80 % (se) | width 80 % | cov 90 % (se) | width 90 % |")
            print("|---|---|---|---|---|---|---|")
            for fam in FAMILIES:
                if fam not in cv:
                    continue
                for m in METHODS:
                    s8, s9 = cv[fam][m]["0.8"], cv[fam][m]["0.9"]
                    k = a.v_splits if fam == "v_metric" else a.splits
                    se8, se9 = (s["coverage_sd"] / math.sqrt(k) for s in (s8, s9))
                    mark = " (chosen)" if chosen[fam] == m else ""
                    print(f"| {FAMILY_TITLES[fam]} | {s8['units']} | {m}{mark} | {s8['coverage']:.1f} "
                          f"({se8:.1f}) | {s8['width']:.2f} | {s9['coverage']:.1f} ({se9:.1f}) | "
                          f"{s9['width']:.2f} |", flush=True)
            if a.band:
                bc = band_cv(band, a.splits, a.cal_fraction, rule)
                allres[name][rule]["band"] = bc
                print(f"\nDVH band ({len(band)} ROIs): pointwise coverage per volume level, pooled over ROIs "
                      f"(median width, Gy); whole curve inside: {bc['0.8']['whole_curve']:.1f} % at 80 %, "
                      f"{bc['0.9']['whole_curve']:.1f} % at 90 %")
                print("| level (% volume) | " + " | ".join(f"{v:g}" for v in BAND_LEVELS) + " |")
                print("|---" * (len(BAND_LEVELS) + 1) + "|")
                for c in ("0.8", "0.9"):
                    print(f"| {float(c):.0%} | " + " | ".join(
                        f"{x:.0f} ({w:.1f})" if w is not None else "-"
                        for x, w in zip(bc[c]["pointwise"], bc[c]["width"], strict=True)) + " |", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(allres, fh, indent=1)


if __name__ == "__main__":
    main()
