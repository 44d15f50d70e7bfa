"""Can anything known before the plan shrink the model's OAR mean-dose errors that plan QA's intervals carry?

Issue 25 needs those errors about 5-10 % smaller (docs/qa.md, "How much smaller the model's error must
be"). Four probes on one model's validation predictions, each cross-fitted over patients where it fits
anything (leave one patient out), against the per-ROI centring that `calibrate` already does:

1. *a linear correction* ``r = a_c + b (yhat - mean)``: is the model's prediction shrunk toward the
   mean (slope of the residual on the prediction), per criterion or pooled;
2. *other models* (``--also PRED``, repeatable): the residual of the average of several models'
   predicted values (an ensemble across objectives);
3. *the dose level*: do the centred residuals grow with the predicted mean dose (a scale by level);
4. *geometry* (``--geometry``): correlation of the centred residual with the overlap-volume
   histogram of the OAR against each target (median distance, fraction within 5 and 15 mm) and with
   the OAR's volume.

    python scripts/qa_residual_probes.py --model models/openkbp-mae-cdm --data CACHE/val \\
        --predictions PRED/mae-cdm-tta [--also PRED/mae-tta ...] [--geometry]

Prints one table per probe (numpy and scipy only beyond dosepred's unit collection).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

FAMILY = "oar_mean"
MIN_UNITS = 3


def _by_criterion(units: Sequence) -> dict[str, list]:
    by: dict[str, list] = defaultdict(list)
    for u in units:
        by[u.criterion].append(u)
    return by


def cross_fitted_scores(units: Sequence, kind: str) -> np.ndarray:
    """Per unit, its residual minus what ``kind`` predicts of it from the other patients' units:
    ``signed`` nothing, ``centred`` the criterion's median, ``mean`` its mean, ``linear`` its mean
    plus the pooled within-criterion slope times the unit's prediction's distance from the
    criterion's mean prediction (``mean`` is ``linear`` without the slope: the two rows tell the
    slope's effect from the mean's). In the order of ``units``."""
    out = np.empty(len(units))
    for pid in sorted({u.patient for u in units}):
        rest = _by_criterion([u for u in units if u.patient != pid])
        slope = 0.0
        if kind == "linear":
            ps = [np.array([u.predicted for u in v]) for v in rest.values()]
            rs = [np.array([u.residual for u in v]) for v in rest.values()]
            dp = np.concatenate([x - x.mean() for x in ps])
            dr = np.concatenate([x - x.mean() for x in rs])
            slope = float(dp @ dr / (dp @ dp)) if dp @ dp > 0 else 0.0
        for i, u in enumerate(units):
            if u.patient != pid:
                continue
            other = rest.get(u.criterion, [])
            r = np.array([v.residual for v in other])
            p = np.array([v.predicted for v in other])
            if kind == "signed" or len(other) < MIN_UNITS:
                out[i] = u.residual
            elif kind == "centred":
                out[i] = u.residual - np.median(r)
            elif kind == "mean":
                out[i] = u.residual - r.mean()
            elif kind == "linear":
                out[i] = u.residual - (r.mean() + slope * (u.predicted - p.mean()))
            else:
                raise ValueError(kind)
    return out


def spread(s: np.ndarray) -> str:
    q05, q95 = np.quantile(s, [0.05, 0.95])
    return f"sd {s.std():.3f} Gy, 5-95 % {q95 - q05:.2f} Gy, mean |.| {np.abs(s).mean():.3f} Gy"


def centred_in_sample(units: Sequence) -> np.ndarray:
    """Each residual minus its criterion's median over all the units (for correlations)."""
    med = {c: np.median([u.residual for u in v]) for c, v in _by_criterion(units).items()}
    return np.array([u.residual - med[u.criterion] for u in units])


def geometry_features(data: str, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, float]]:
    """(patient, OAR) -> overlap-volume features against each target present (LPS mm distances)."""
    from scipy import ndimage

    from dosepred.io.source import load_patients

    out: dict[tuple[str, str], dict[str, float]] = {}
    for p in load_patients(data):
        rois = [r for pid, r in keys if pid == p.id]
        if not rois:
            continue
        masks = p.masks(rois)  # each bit-mask decoded once
        feats: dict[str, dict[str, float]] = {r: {"volume cc": float(m.sum() * p.voxel_volume_cc)}
                                              for r, m in masks.items()}
        for t in p.roi_set.targets:
            if t in p.missing_rois:
                continue
            target = p.mask(t)
            if not target.any():
                continue
            d = ndimage.distance_transform_edt(~target, sampling=p.spacing)
            for r in rois:
                dd = d[masks[r]]
                feats[r] |= {f"{t} median mm": float(np.median(dd)),
                             f"{t} within 5 mm": float((dd <= 5).mean()),
                             f"{t} within 15 mm": float((dd <= 15).mean())}
        for r in rois:
            out[p.id, r] = feats[r]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--also", action="append", default=[], help="another model's predictions (MODEL=PRED)")
    ap.add_argument("--protocol", default="openkbp-clinical")
    ap.add_argument("--geometry", action="store_true")
    a = ap.parse_args(argv)
    from dosepred.qa.calibrating import collect_units

    def units_of(model: str, pred: str) -> list:
        us, _ = collect_units(model, a.data, a.protocol, predictions=pred)
        return [u for u in us if u.family == FAMILY]

    units = units_of(a.model, a.predictions)
    print(f"{len(units)} {FAMILY} units, {len({u.patient for u in units})} patients")
    print("1. cross-fitted scores (leave one patient out)")
    for kind in ("signed", "centred", "mean", "linear"):
        print(f"   {kind:8s} {spread(cross_fitted_scores(units, kind))}")
    for c, v in sorted(_by_criterion(units).items()):
        p, r = np.array([u.predicted for u in v]), np.array([u.residual for u in v])
        print(f"   {c:22s} n {len(v):2d}  slope of residual on prediction {np.polyfit(p, r, 1)[0]:+.3f}"
              f"  corr {np.corrcoef(p, r)[0, 1]:+.2f}")
    if a.also:
        from dataclasses import replace

        print("2. averaged with other models' predicted values (centred, cross-fitted)")
        others = []
        for spec in a.also:
            model, _, pred = spec.partition("=")
            others.append({(u.patient, u.criterion): u.predicted for u in units_of(model, pred)})
        both = [u for u in units if all((u.patient, u.criterion) in o for o in others)]
        avg = []
        for u in both:
            values = [u.predicted, *(o[u.patient, u.criterion] for o in others)]
            avg.append(replace(u, predicted=float(np.mean(values))))
        print(f"   this model        {spread(cross_fitted_scores(both, 'centred'))}")
        print(f"   with {len(others)} other(s)    {spread(cross_fitted_scores(avg, 'centred'))}")
    from scipy.stats import spearmanr

    rc = centred_in_sample(units)
    pred = np.array([u.predicted for u in units])
    rho = spearmanr(np.abs(rc), pred)
    print(f"3. |centred residual| against the predicted mean dose: Spearman {rho.statistic:+.2f} "
          f"(p {rho.pvalue:.2f})")
    for lo, hi in ((0, 20), (20, 30), (30, 45), (45, 100)):
        s = (pred >= lo) & (pred < hi)
        if s.any():
            print(f"   predicted {lo}-{hi} Gy: n {s.sum():3d}, "
                  f"mean |centred residual| {np.abs(rc[s]).mean():.2f} Gy")
    if a.geometry:
        feats = geometry_features(a.data, {(u.patient, u.roi) for u in units})
        names = sorted({k for f in feats.values() for k in f})
        print("4. correlation of the centred residual with geometry "
              "(r^2: the share of its variance a linear fit could remove)")
        for k in names:
            x = np.array([feats.get((u.patient, u.roi), {}).get(k, np.nan) for u in units])
            ok = np.isfinite(x)
            if ok.sum() > 2 and x[ok].std() > 0:
                c = np.corrcoef(x[ok], rc[ok])[0, 1]
                print(f"   {k:22s} n {ok.sum():3d} corr {c:+.2f} r^2 {c * c:.2f}")


if __name__ == "__main__":
    from dosepred.errors import DosepredError

    try:
        main()
    except (DosepredError, OSError) as e:  # a wrong folder or model: one line, as dosepred's commands
        raise SystemExit(f"error: {e}") from None
