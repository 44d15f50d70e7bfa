"""Markdown tables of the OpenKBP experiment from the JSON files `dosepred evaluate --json` wrote.

usage: python scripts/experiment_table.py EVAL_DIR RUNS_DIR MODEL [MODEL ...]

EVAL_DIR holds MODEL.openkbp.json and MODEL.openkbp-clinical.json (scripts/openkbp_experiment.sh
writes them); RUNS_DIR/MODEL/metrics.csv gives the training time of each fine-tune.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import defaultdict
from pathlib import Path


def _load(d: Path, m: str, proto: str) -> dict:
    return json.loads((d / f"{m}.{proto}.json").read_text())


def _train_seconds(runs: Path, m: str) -> str:
    f = runs / m / "metrics.csv"
    if not f.is_file():
        return "-"
    rows = list(csv.DictReader(f.open()))
    steps = int(rows[-1]["step"])
    sec = sum(float(r["sec_per_step"]) for r in rows) * (steps / len(rows)) if rows else 0.0
    return f"{steps} steps, {sec / 60:.0f} min"


def per_roi_errors(js: dict) -> dict[tuple[str, str], float]:
    """Mean |pred - ref| (Gy) per (ROI, metric) over patients."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in js["per_patient"]:
        for roi, r in p["rois"].items():
            for met, v in r["metrics"].items():
                if v.get("ref") is not None and v.get("pred") is not None:
                    acc[(roi, met)].append(abs(v["pred"] - v["ref"]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def main(argv: list[str]) -> None:
    d, runs, models = Path(argv[0]), Path(argv[1]), argv[2:]
    print("| model | dose score | DVH score | PTV Score | OAR Score | clinical PTV | clinical OAR "
          "| criteria pass % (ref %) | agreement % | fine-tune |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        a, b = _load(d, m, "openkbp"), _load(d, m, "openkbp-clinical")
        print(f"| {m} | {a['dose_score']:.3f} | {a['dvh_score']:.3f} | {a['ptv_score']:.3f} | "
              f"{a['oar_score']:.3f} | {b['ptv_score']:.3f} | {b['oar_score']:.3f} | "
              f"{b['criteria_pass_rate']:.1f} ({b['reference_pass_rate']:.1f}) | "
              f"{b['criteria_agreement']:.1f} | {_train_seconds(runs, m)} |")
    print()
    errs = {m: per_roi_errors(_load(d, m, "openkbp")) for m in models}
    keys = sorted(set().union(*[e.keys() for e in errs.values()]),
                  key=lambda k: (not k[0].startswith("PTV"), k[0], k[1]))
    print("| ROI | metric | " + " | ".join(models) + " |")
    print("|---|---|" + "---|" * len(models))
    for k in keys:
        cells = " | ".join(f"{errs[m].get(k, float('nan')):.2f}" for m in models)
        print(f"| {k[0]} | {k[1]} | {cells} |")


if __name__ == "__main__":
    main(sys.argv[1:])
