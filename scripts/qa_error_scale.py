"""Issue 25: how much smaller must a model's OAR mean-dose errors be for plan QA's detection targets?

Reads ``dosepred evaluate --json`` of a model's predictions (per-patient metrics; protocol
``openkbp-clinical``), takes the residuals ``plan - predicted`` of the OAR mean doses that the
protocol's criteria check, multiplies them by each factor, and runs the detection benchmark's
cross-validation on them with plain split-conformal intervals (``absolute``, 90 %): random splits of
the patients, 22 calibrating and the rest checked; a unit is flagged when its residual plus the
injected excess lies above the interval. Prints, per factor, the false alarms, the share of +3 and
+6 Gy excesses caught and the median interval width (docs/qa.md, "How much smaller the model's error
must be"). ``--centre-roi``: also with each ROI's residuals centred on their median over the split's
calibrating patients (a per-ROI bias of the model removed before the interval; docs/qa.md, "Centring
each ROI"), at several coverages, to compare at equal false alarms. Numpy only::

    python scripts/qa_error_scale.py EVAL.openkbp-clinical.json [--splits 200] [--calibrate 22] \
        [--centre-roi] [--per-roi]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
EXCESS = (0.0, 3.0, 6.0)


def oar_mean_units(evaluation: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patient index, ROI name, residual plan - predicted) of every OAR Dmean a criterion checks."""
    crit = {c["roi"] for p in evaluation["per_patient"] for c in p["criteria"] if c["metric"] == "Dmean"}
    pat, rois, res = [], [], []
    for i, p in enumerate(evaluation["per_patient"]):
        for roi, v in p["rois"].items():
            if roi in crit and v["kind"] == "oar" and "Dmean" in v["metrics"]:
                m = v["metrics"]["Dmean"]
                pat.append(i)
                rois.append(roi)
                res.append(m["ref"] - m["pred"])
    return np.array(pat), np.array(rois, dtype=object), np.array(res, dtype=np.float64)


def oar_mean_residuals(evaluation: dict) -> tuple[np.ndarray, np.ndarray]:
    """(patient index, residual plan - predicted) of every OAR Dmean a criterion checks."""
    pat, _, res = oar_mean_units(evaluation)
    return pat, res


def detection(pat: np.ndarray, r: np.ndarray, splits: int = 200, n_cal: int = 22, coverage: float = 0.9,
              seed: int = 0, rois: np.ndarray | None = None, per_roi: np.ndarray | None = None
              ) -> dict[str, float]:
    """Cross-validated false alarms and catch rates (%, means over the splits) of each excess in
    :data:`EXCESS`, and the median interval width (Gy), with ``absolute`` split-conformal intervals
    (the ``ceil((n + 1) coverage)``-th smallest calibration ``|r|``). ``rois`` (each unit's ROI):
    first centre each ROI's residuals on their median over the split's calibrating units (an ROI
    with fewer than 3 of them stays as it is). ``per_roi`` (each unit's ROI): also each ROI's own rates
    under the same intervals, as ``{"by_roi": {roi: {"false_alarms", "caught_3", "caught_6"}}}``."""
    rng = np.random.default_rng(seed)
    ids = np.unique(pat)
    flagged, widths = [], []
    by: dict[str, list[np.ndarray]] = {}
    r0 = r
    for _ in range(splits):
        cal = np.isin(pat, rng.permutation(ids)[:n_cal])
        if rois is not None:
            r = r0.copy()
            for name in np.unique(rois):
                sel = rois == name
                if np.sum(sel & cal) >= 3:
                    r[sel] -= np.median(r0[sel & cal])
        z = np.sort(np.abs(r[cal]))
        k = math.ceil((z.size + 1) * coverage)
        q = z[k - 1] if k <= z.size else math.inf
        flagged.append([np.mean(r[~cal] + e > q) for e in EXCESS])
        widths.append(2 * q)
        if per_roi is not None:  # every checked unit of the ROI, pooled over the splits
            for name in np.unique(per_roi):
                sel = ~cal & (per_roi == name)
                by.setdefault(name, []).append(np.stack([r[sel] + e > q for e in EXCESS]))
    m = 100 * np.mean(flagged, axis=0)
    out: dict = {"false_alarms": float(m[0]), "caught_3": float(m[1]), "caught_6": float(m[2]),
                 "width": float(np.median(widths))}
    if per_roi is not None:
        out["by_roi"] = {}
        for name, parts in sorted(by.items()):
            rates = 100 * np.concatenate(parts, axis=1).mean(axis=1)
            out["by_roi"][name] = dict(zip(("false_alarms", "caught_3", "caught_6"), map(float, rates),
                                           strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evaluation", type=Path, help="dosepred evaluate --json output (openkbp-clinical)")
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--calibrate", type=int, default=22, help="patients calibrating per split")
    ap.add_argument("--centre-roi", action="store_true", help="also centre each ROI's residuals")
    ap.add_argument("--per-roi", action="store_true", help="also each ROI's rates under the pooled intervals")
    a = ap.parse_args()
    pat, rois, r = oar_mean_units(json.loads(a.evaluation.read_text()))
    print(f"{r.size} OAR mean-dose units of {np.unique(pat).size} patients: "
          f"mean |r| {np.abs(r).mean():.3f} Gy, sd {r.std():.3f} Gy")
    for f in FACTORS:
        d = detection(pat, r * f, a.splits, a.calibrate)
        print(f"residuals x {f:.2f}: false alarms {d['false_alarms']:.1f} %, +3 / +6 Gy caught "
              f"{d['caught_3']:.1f} / {d['caught_6']:.1f} %, median 90 % width {d['width']:.2f} Gy")
    if a.per_roi:
        d = detection(pat, r, a.splits, a.calibrate, per_roi=rois)
        for name, v in d["by_roi"].items():
            print(f"  {name}: mean residual {r[rois == name].mean():+.2f} Gy, pooled 90 % interval: false "
                  f"alarms {v['false_alarms']:.1f} %, +3 / +6 Gy caught {v['caught_3']:.1f} / "
                  f"{v['caught_6']:.1f} %")
    if a.centre_roi:
        for name in sorted(set(rois)):
            print(f"  {name}: {np.sum(rois == name)} units, mean residual {r[rois == name].mean():+.2f} Gy")
        for cov in (0.9, 0.88, 0.87, 0.86):
            for label, by in (("pooled", None), ("ROI-centred", rois)):
                d = detection(pat, r, a.splits, a.calibrate, cov, rois=by)
                print(f"coverage {cov:.2f}, {label}: false alarms {d['false_alarms']:.1f} %, +3 / +6 Gy "
                      f"caught {d['caught_3']:.1f} / {d['caught_6']:.1f} %, median width {d['width']:.2f} Gy")


if __name__ == "__main__":
    main()
