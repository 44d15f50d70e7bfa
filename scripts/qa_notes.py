"""Whether QA's reliability notes predict a larger error (docs/qa.md, "Reliability notes").

    python scripts/qa_notes.py --model models/openkbp-mae-cdm --data VAL_CACHE --predictions PRED_CACHE \
        [--protocol openkbp-clinical] [--grids 0.5,1.6] [--json out.json]

``PRED_CACHE``: the model's predictions of ``VAL_CACHE`` made as ``qa`` predicts with the model's
calibration (``dosepred predict --format cache``, flipped, for a calibration of version 3; ``--no-tta``
for versions 1 and 2; anything else is refused). For every patient and criterion of the protocol: the error
``plan - predicted`` and whether the plan lies inside QA's interval at 90 %; then, per note (as QA
shows it, and the overlap note at several thresholds), the share of plans it appears on and the mean
|error| and the interval's miss rate of the criteria it concerns against the others of the same
family, with a 90 % bootstrap interval (patients resampled) of the ratio of mean |errors|.

``--grids F1,F2``: also resample every patient (CT, ROIs, mask and plan dose) to in-plane voxels F
times its own (``--slice-grids``: slices F times as thick), predict it there and compare the errors
with the same criteria on the patient's own grid (paired), per grid and by how far the coarsest axis
lies beyond the training range; and the grid note as QA gives it on the regridded plans (flagged
against not flagged). What a grid finer or coarser than the training data's does to the error.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

OVERLAP_THRESHOLDS = (1.0, 5.0, 10.0, 20.0, 30.0, 50.0)
BOOT = 2000


def concerning(notes: list[str], roi: str) -> list[str]:
    """The names of the patient's notes that concern a criterion of ``roi``: every grid note, the
    ROI-volume note of ``roi`` only."""
    from dosepred.qa.result import NOTE_VOLUME

    return [x.split(":")[0] for x in notes
            if not x.startswith(NOTE_VOLUME) or x.split(": ")[1].split()[0] == roi]


def unit_rows(chk: Any, plan: Any, pred: np.ndarray, ranges: Any) -> list[dict[str, Any]]:
    """One row per criterion of ``plan`` with a value: family, error, miss, features, QA's notes."""
    from dosepred.qa.calibrating import roi_features

    pq, _, checked = chk.check(plan, pred)
    feats = roi_features(checked, pred, [c.roi for c in pq.criteria])
    vols = ranges.roi_volume_cc if ranges is not None else {}  # the calibration's TrainingRanges
    rows = []
    for c in pq.criteria:
        if not (c.plan == c.plan and c.predicted == c.predicted):
            continue
        f = feats.get(c.roi, {})
        vr = vols.get(c.roi)
        v = f.get("volume_cc", math.nan)
        rows.append({"patient": plan.id, "roi": c.roi, "metric": c.metric, "family": c.family,
                     "kind": c.kind, "err": c.plan - c.predicted, "miss": not (c.low <= c.plan <= c.high),
                     "overlap": f.get("target_overlap", 0.0), "volume_cc": v,
                     "volume_out": bool(vr and (v < vr[0] * 0.98 or v > vr[1] * 1.02)),
                     "flags": [x.split(" (")[0].split(":")[0] for x in c.flags],
                     "patient_notes": concerning(pq.notes, c.roi),
                     "spacing": list(plan.spacing)})
    return rows


def effect(rows: list[dict[str, Any]], flagged: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Per family: units flagged / not, mean |error| of each, their ratio with a bootstrap 90 %
    interval over patients, and the interval miss rates."""
    out: dict[str, Any] = {}
    by_fam: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_fam[r["family"]].append(r)
    for fam, rs in sorted(by_fam.items()):
        fl = np.array([bool(flagged(r)) for r in rs])
        if not fl.any():
            continue
        err = np.abs([r["err"] for r in rs])
        miss = np.array([r["miss"] for r in rs])
        pats = sorted({r["patient"] for r in rs})
        pix = {p: i for i, p in enumerate(pats)}
        pid = np.array([pix[r["patient"]] for r in rs])
        ratios = []
        members = [np.nonzero(pid == i)[0] for i in range(len(pats))]
        for _ in range(BOOT):
            take = np.concatenate([members[i] for i in rng.integers(0, len(pats), len(pats))])
            f, e = fl[take], err[take]
            if f.any() and (~f).any():
                ratios.append(e[f].mean() / max(e[~f].mean(), 1e-9))
        ratio = err[fl].mean() / max(err[~fl].mean(), 1e-9) if (~fl).any() else math.nan
        out[fam] = {"units": int(fl.sum()), "of": len(rs), "mean_abs_flagged": float(err[fl].mean()),
                    "mean_abs_other": float(err[~fl].mean()) if (~fl).any() else None,
                    "ratio": float(ratio),
                    "ratio_ci90": [float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))]
                    if ratios else None,
                    "miss_flagged": float(miss[fl].mean()),
                    "miss_other": float(miss[~fl].mean()) if (~fl).any() else None}
    return out


def plan_rate(rows: list[dict[str, Any]], flagged: Any) -> float:
    pats = {r["patient"] for r in rows}
    return len({r["patient"] for r in rows if flagged(r)}) / max(len(pats), 1)


def paired(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family: mean |error| on the regridded plans against the same criteria on their own grid,
    their ratio, and the 90 % interval's miss rate on each."""
    out = {}
    for f in sorted({r["family"] for r in rows}):
        rs = [r for r in rows if r["family"] == f]
        a0 = np.abs([r["own_err"] for r in rs])
        a1 = np.abs([r["err"] for r in rs])
        out[f] = {"units": len(rs), "mean_abs_own_grid": float(a0.mean()),
                  "mean_abs_regridded": float(a1.mean()), "ratio": float(a1.mean() / max(a0.mean(), 1e-9)),
                  "miss_own_grid": float(np.mean([r["own_miss"] for r in rs])),
                  "miss_regridded": float(np.mean([r["miss"] for r in rs]))}
    return out


def regrid(p: Any, factor: float, axes: str = "in-plane") -> Any:
    """``p`` with voxels ``factor`` times its own along its in-plane axes (``axes="in-plane"``) or along
    its slice axis (``"slices"``); the same extent."""
    from dosepred.geometry import Geometry
    from dosepred.resample import resample_patient

    g = p.geometry
    inplane = [j for j in range(3) if (g.axis_letters()[j] in "SI") == (axes == "slices")]
    spacing = list(g.spacing)
    shape = list(p.shape)
    for j in inplane:
        extent = p.shape[j] * g.spacing[j]
        shape[j] = max(8, int(round(extent / (g.spacing[j] * factor))))
        spacing[j] = extent / shape[j]
    # same outer edges: the first voxel centre moves by half the change of the voxel size
    origin = g.to_patient(np.array([(spacing[j] / g.spacing[j] - 1) / 2 if j in inplane else 0.0
                                    for j in range(3)]))
    return resample_patient(p, Geometry(origin, g.direction, spacing), shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--protocol", default="openkbp-clinical")
    ap.add_argument("--grids", default="", help="in-plane voxel size factors to simulate, e.g. 0.5,1.6")
    ap.add_argument("--slice-grids", default="", help="slice thickness factors to simulate, e.g. 2")
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from dosepred.io import Cache, load_patients
    from dosepred.qa.calibrating import check_predictions
    from dosepred.qa.check import QAChecker

    chk = QAChecker(a.model, a.protocol, 0.9)
    # the intervals describe QA's own predictions (flipped or not as the calibration records): so must these
    check_predictions(Cache.open(a.predictions), a.predictions, chk.tta, a.model)
    ranges = chk.calibration.training_ranges
    preds = {p.id: p.dose for p in load_patients(a.predictions)}
    plans = list(load_patients(a.data))
    rows: list[dict[str, Any]] = []
    for plan in plans:
        rows += unit_rows(chk, plan, preds[plan.id], ranges)
    rng = np.random.default_rng(0)
    n_plans = len({r["patient"] for r in rows})
    res: dict[str, Any] = {"plans": n_plans, "units": len(rows), "notes": {}, "overlap": {}, "grids": {}}
    print(f"{n_plans} plans, {len(rows)} criteria with values")
    notes = sorted({f for r in rows for f in r["flags"] + r["patient_notes"]
                    if not f.startswith(("OAR dose", "target", "plan better"))})
    for note in notes:
        def has(r: dict[str, Any], note: str = note) -> bool:
            return note in r["flags"] or note in r["patient_notes"]
        res["notes"][note] = {"plan_rate": plan_rate(rows, has), "families": effect(rows, has, rng)}
    for t in OVERLAP_THRESHOLDS:
        def over(r: dict[str, Any], t: float = t) -> bool:
            return r["kind"] != "target" and r["overlap"] >= t
        res["overlap"][t] = {"plan_rate": plan_rate(rows, over), "families": effect(rows, over, rng)}
    res["volume_outside_range"] = {"plan_rate": plan_rate(rows, lambda r: r["volume_out"]),
                                   "families": effect(rows, lambda r: r["volume_out"], rng)}
    sp = sorted({tuple(r["spacing"]) for r in rows})
    res["spacings"] = [list(s) for s in sp]
    # per patient mean |error| (pt_201's grid: is it an outlier?)
    per_pat: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["family"] in ("oar_mean", "target_dose", "oar_nearmax"):
            per_pat[r["patient"]].append(abs(r["err"]))
    res["patient_mean_abs_gy"] = {p: float(np.mean(v)) for p, v in sorted(per_pat.items())}
    grids = [("in-plane", float(x)) for x in a.grids.split(",") if x.strip()]
    grids += [("slices", float(x)) for x in a.slice_grids.split(",") if x.strip()]
    if grids:
        from dosepred.predict import model_space, predict_dose

        space = model_space(chk.net)
        base = {(r["patient"], r["roi"], r["metric"]): r for r in rows}
        pooled: list[dict[str, Any]] = []
        for axes, fac in grids:
            grid_rows: list[dict[str, Any]] = []
            for plan in plans:
                q = regrid(plan, fac, axes)
                perm, _ = q.geometry.permutation_to(space.axes)
                beyond = max(q.spacing[j] / hi for j, hi in zip(perm, space.spacing_max, strict=True))
                pred = predict_dose(chk.net, q, chk.inference, warn=False)  # as QA predicts
                for r in unit_rows(chk, q, pred, ranges):
                    k = (r["patient"], r["roi"], r["metric"])
                    if k in base:
                        r.update(own_err=base[k]["err"], own_miss=base[k]["miss"], beyond=beyond,
                                 grid=f"{axes} x{fac:g}")
                        grid_rows.append(r)
            pooled += grid_rows
            sp = sorted({tuple(round(v, 2) for v in r["spacing"]) for r in grid_rows})
            res["grids"][f"{axes} x{fac:g}"] = {
                "spacings_mm": [list(sp[0]), list(sp[-1])], "families": paired(grid_rows),
                "notes_plan_rate": {n: plan_rate(grid_rows, lambda r, n=n: n in r["patient_notes"])
                                    for n in sorted({x for r in grid_rows for x in r["patient_notes"]})}}
        # by how far the coarsest axis lies beyond the training range (1.0: at its coarsest)
        bins = [(0.0, 1.01), (1.01, 1.1), (1.1, 1.25), (1.25, 1.5), (1.5, 2.0), (2.0, 9.0)]
        res["grids_by_spacing"] = {f"{lo:g}-{hi:g}": {"plans": len({(r["patient"], r["grid"]) for r in sel}),
                                                      "families": paired(sel)}
                                   for lo, hi in bins
                                   if (sel := [r for r in pooled if lo <= r["beyond"] < hi])}
        # the grid note as QA gives it, over every regridded plan: flagged against not flagged
        has = lambda r: any(n.startswith("grid") for n in r["patient_notes"])  # noqa: E731
        res["grid_note"] = {"plans": len({(r["patient"], r["grid"]) for r in pooled}),
                            "flagged_plans": len({(r["patient"], r["grid"]) for r in pooled if has(r)}),
                            "flagged": paired([r for r in pooled if has(r)]),
                            "not_flagged": paired([r for r in pooled if not has(r)])}
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
