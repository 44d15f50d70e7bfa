"""How faithful is the CDM loss's V-metric surrogate at each sigmoid temperature? (docs/results.md)

For every patient of a reference cache and a prediction cache (same ids), and every V-metric below,
this computes with numpy alone (independently of dosepred.losses): the exact V (percent of the ROI's
voxels at or above the threshold) and the surrogate ``100 * mean(sigmoid((D - x) / tau))`` for each
``tau``, on the reference and on the predicted dose; then per ``tau``:

- bias: mean over patients of |surrogate - exact| on the reference dose (% of volume);
- fidelity: the Pearson correlation over patients between the surrogate's error |S(pred) - S(ref)|
  (what the loss sees) and the exact error |V(pred) - V(ref)| (what is scored);
- reach: the share of the ROI's voxels of the prediction where the surrogate's gradient is at least
  1 % of its peak (|D - x| <= 4.6 tau), i.e. the voxels the term can move.

usage: python scripts/vmetric_tau.py REFERENCE_CACHE PREDICTION_CACHE [--json OUT]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from dosepred.io.source import load_patients

TAUS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
# (ROI, label, threshold in Gy): the openkbp-clinical protocol's V110% of PTV70 and the V95% of each
# target (the V-form of the protocol's D95% goals), where most of the ROI lies near the threshold
METRICS = (("PTV70", "V110%", 77.0), ("PTV70", "V95%", 66.5), ("PTV63", "V95%", 59.85),
           ("PTV56", "V95%", 53.2))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reference")
    ap.add_argument("prediction")
    ap.add_argument("--json")
    a = ap.parse_args()
    preds = {p.id: p for p in load_patients(a.prediction)}
    rows: dict[str, dict[float, list[tuple[float, float, float, float]]]] = {
        f"{r} {m}": {t: [] for t in TAUS} for r, m, _ in METRICS}
    for ref in load_patients(a.reference):
        pred = preds[ref.id]
        for roi, label, thr in METRICS:
            if roi not in ref.present_rois:
                continue
            m = ref.mask(roi)
            dr, dp = ref.dose[m].astype(np.float64), pred.dose[m].astype(np.float64)
            vr, vp = 100 * np.mean(dr >= thr), 100 * np.mean(dp >= thr)
            for t in TAUS:
                sr, sp = 100 * sigmoid((dr - thr) / t).mean(), 100 * sigmoid((dp - thr) / t).mean()
                reach = 100 * np.mean(np.abs(dp - thr) <= 4.6 * t)
                rows[f"{roi} {label}"][t].append((abs(sr - vr), abs(sp - sr), abs(vp - vr), reach))
    out = {}
    print("| V-metric | tau (Gy) | bias on reference (% vol) | corr(surrogate error, exact error) "
          "| reach (% of ROI) | exact error (% vol) |")
    print("|---|---|---|---|---|---|")
    for name, by_tau in rows.items():
        for t, vals in by_tau.items():
            v = np.array(vals)
            varies = v[:, 1].std() > 0 and v[:, 2].std() > 0
            corr = float(np.corrcoef(v[:, 1], v[:, 2])[0, 1]) if varies else float("nan")
            bias, reach, err = (float(v[:, i].mean()) for i in (0, 3, 2))
            out.setdefault(name, {})[str(t)] = {"bias": bias, "corr": corr, "reach": reach,
                                                "exact_error": err, "patients": len(v)}
            print(f"| {name} | {t:g} | {bias:.2f} | {corr:.3f} | {reach:.1f} | {err:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
