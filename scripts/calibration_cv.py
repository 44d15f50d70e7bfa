"""Cross-validated coverage and widths of the calibration methods (docs/results.md, "Plan QA
calibration").

    python scripts/calibration_cv.py --data VAL_CACHE --pred mae-cdm=PRED_CACHE [--pred ...]
        [--protocol openkbp-clinical] [--splits 200] [--json out.json]

For each model's predictions (a cache from `dosepred predict --format cache`): units of every
(patient, criterion), then repeated random patient-level halves (calibrate on one, check the other)
per metric family and method at 80 % and 90 %.
"""

from __future__ import annotations

import argparse
import json

from dosepred.calibration import (
    FAMILIES,
    FAMILY_TITLES,
    METHODS,
    choose_methods,
    collect_units,
    cross_validate,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--pred", action="append", required=True, help="NAME=PRED_CACHE")
    ap.add_argument("--protocol", default="openkbp-clinical")
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--cal-fraction", type=float, default=0.5)
    ap.add_argument("--json")
    a = ap.parse_args()
    allres = {}
    for spec in a.pred:
        name, path = spec.split("=", 1)
        units, ids = collect_units("", a.data, a.protocol, predictions=path)
        cv = cross_validate(units, splits=a.splits, cal_fraction=a.cal_fraction)
        chosen = choose_methods(cv)
        allres[name] = {"patients": len(ids), "cv": cv, "chosen": chosen}
        print(f"\n## {name}: {len(ids)} patients, {len(units)} units, {a.splits} random splits, "
              f"calibrating on {a.cal_fraction:.0%} of the patients")
        print("| family | units | method | cov 80 % | width 80 % | cov 90 % | width 90 % |")
        print("|---|---|---|---|---|---|---|")
        for fam in FAMILIES:
            if fam not in cv:
                continue
            for m in METHODS:
                s8, s9 = cv[fam][m]["0.8"], cv[fam][m]["0.9"]
                mark = " (chosen)" if chosen[fam] == m else ""
                print(f"| {FAMILY_TITLES[fam]} | {s8['units']} | {m}{mark} | {s8['coverage']:.1f} | "
                      f"{s8['width']:.2f} | {s9['coverage']:.1f} | {s9['width']:.2f} |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(allres, fh, indent=1)


if __name__ == "__main__":
    main()
