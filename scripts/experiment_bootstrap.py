"""Paired bootstrap over validation patients of a score's change between two models.

usage: python scripts/experiment_bootstrap.py A.openkbp.json B.openkbp.json [ptv|oar|dvh]

Reads two `dosepred evaluate --json` files of the same patients; the score (default the PTV Score;
`oar`: the OAR Score; `dvh`: the DVH Score, all metrics) is pooled over all (patient, metric) errors
as the cohort score is. Prints B's change against A with a 95 % percentile interval from 5000
resamples of patients (seed 0) and on how many patients B is better.
"""

from __future__ import annotations

import json
import sys

import numpy as np

KINDS = {"ptv": ("target",), "oar": ("oar",), "dvh": ("target", "oar")}
NAMES = {"ptv": "PTV Score", "oar": "OAR Score", "dvh": "DVH Score"}


def metric_errors(js: dict, kinds: tuple[str, ...] = ("target",)) -> dict[str, list[float]]:
    out = {}
    for p in js["per_patient"]:
        out[p["id"]] = [abs(v["pred"] - v["ref"]) for r in p["rois"].values() if r["kind"] in kinds
                        for v in r["metrics"].values() if v["pred"] is not None and v["ref"] is not None]
    return out


def target_errors(js: dict) -> dict[str, list[float]]:
    return metric_errors(js, ("target",))


def main(argv: list[str]) -> None:
    score = argv[2] if len(argv) > 2 else "ptv"
    if score not in KINDS:
        raise SystemExit(f"the score must be one of {', '.join(KINDS)}, got {score!r}")
    ea, eb = (metric_errors(json.load(open(f)), KINDS[score]) for f in argv[:2])
    ids = sorted(ea)
    if sorted(eb) != ids:
        raise SystemExit("the two files hold different patients")

    def pooled(e: dict[str, list[float]], sample) -> float:
        return float(np.mean([x for i in sample for x in e[i]]))

    rng = np.random.default_rng(0)
    changes = []
    for _ in range(5000):
        s = rng.choice(ids, len(ids))
        changes.append(pooled(eb, s) / pooled(ea, s) - 1)
    pa, pb = pooled(ea, ids), pooled(eb, ids)
    better = sum(np.mean(eb[i]) < np.mean(ea[i]) for i in ids if eb[i])
    print(f"{NAMES[score]} {pa:.3f} -> {pb:.3f}: {100 * (pb / pa - 1):+.1f} %, 95 % interval "
          f"{100 * np.percentile(changes, 2.5):+.1f} .. {100 * np.percentile(changes, 97.5):+.1f} %; "
          f"B better on {better}/{len(ids)} patients")


if __name__ == "__main__":
    main(sys.argv[1:])
