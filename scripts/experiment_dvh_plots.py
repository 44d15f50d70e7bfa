"""DVH plots (reference solid, predictions dashed) of representative validation patients.

usage: python scripts/experiment_dvh_plots.py CACHE PRED_DIR OUT_DIR MODEL [MODEL ...] [--patients pt_a,pt_b]

Without --patients the two patients whose first model's dose score is closest to that model's
cohort median are chosen (from EVAL: PRED_DIR/../eval/MODEL.openkbp.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dosepred.io.cache import Cache
from dosepred.io.openkbp import read_dose_csv
from dosepred.report.plots import plot_dvh


def main(argv: list[str]) -> None:
    ids = None
    if "--patients" in argv:
        i = argv.index("--patients")
        ids = argv[i + 1].split(",")
        argv = argv[:i] + argv[i + 2:]
    cache, pred, out, models = Cache.open(argv[0]), Path(argv[1]), Path(argv[2]), argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    if ids is None:
        js = json.loads((pred.parent / "eval" / f"{models[0]}.openkbp.json").read_text())
        scores = {p["id"]: p["dose_score"] for p in js["per_patient"]}
        med = float(np.median(list(scores.values())))
        ids = sorted(scores, key=lambda k: abs(scores[k] - med))[:2]
    for pid in ids:
        ref = cache.load(pid)
        doses = {m: read_dose_csv(pred / m / f"{pid}.csv") for m in models}
        path = out / f"dvh_{pid}.png"
        plot_dvh(path, ref, doses)
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
