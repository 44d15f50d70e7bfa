"""Left-right asymmetry of the plans against a model's predictions (issue 24, round 21).

For each `evaluate --json` file: per pair of Left/Right OARs, the mean residual (predicted - reference
mean dose) of each side and of their difference Right - Left over the patients with both, with its
standard error. A model trained on left-right mirrored crops and predicting with a mirrored pass
predicts the two sides alike, so a plan set whose right side gets more dose than its left shows up
as a negative Right - Left residual. For each cache folder: the reference mean dose Right - Left.

    python scripts/lr_asymmetry.py --eval EVAL.json [--eval ...] [--cache CACHE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np

SIDE = re.compile(r"^(left|right)[ _-]?(.+)$|^(.+?)[ _-]?(left|right|l|r)$", re.IGNORECASE)


def pair_key(name: str) -> tuple[str, str] | None:
    """(side, base) of a Left/Right ROI name ("RightParotid" -> ("right", "parotid")), else None."""
    m = SIDE.match(name)
    if not m:
        return None
    side = (m.group(1) or m.group(4)).lower()
    base = (m.group(2) or m.group(3)).lower().strip(" _-")
    return ("right" if side in ("right", "r") else "left"), base


def mean_sem(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x, float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def residual_asymmetry(ev: dict) -> dict[str, dict[str, float]]:
    """Per OAR pair (its base name): mean residual of each side and of Right - Left, with its s.e.m."""
    sides: dict[str, dict[str, dict[str, float]]] = {}  # base -> side -> patient -> residual
    for pp in ev["per_patient"]:
        for name, roi in pp["rois"].items():
            key = pair_key(name)
            metric = roi.get("metrics", {}).get("Dmean") or roi.get("metrics", {}).get("mean")
            if key is None or roi.get("kind", "oar") != "oar" or metric is None:
                continue
            sides.setdefault(key[1], {}).setdefault(key[0], {})[pp["id"]] = metric["pred"] - metric["ref"]
    out = {}
    for base, s in sorted(sides.items()):
        if set(s) != {"left", "right"}:
            continue
        both = sorted(set(s["right"]) & set(s["left"]))
        if len(both) < 2:
            continue
        d, se = mean_sem([s["right"][p] - s["left"][p] for p in both])
        out[base] = {"n": len(both), "right": float(np.mean(list(s["right"].values()))),
                     "left": float(np.mean(list(s["left"].values()))), "right_minus_left": d, "sem": se}
    return out


def reference_asymmetry(cache_dir: str) -> dict[str, dict[str, float]]:
    """Per OAR pair: the reference mean dose Right - Left over the cache's patients with both."""
    from dosepred.io.cache import Cache

    c = Cache.open(cache_dir)
    diffs: dict[str, list[float]] = {}
    for pid in c.ids:
        p = c.load(pid, with_ct=False)
        means: dict[str, dict[str, float]] = {}
        for name in p.roi_set.names:
            key = pair_key(name)
            m = (p.roi_codes >> p.roi_set.index(name)) & 1 > 0
            if key is not None and m.any() and p.dose is not None:
                means.setdefault(key[1], {})[key[0]] = float(p.dose[m].mean())
        for base, s in means.items():
            if set(s) == {"left", "right"}:
                diffs.setdefault(base, []).append(s["right"] - s["left"])
    out = {}
    for base, d in sorted(diffs.items()):
        m, se = mean_sem(d)
        out[base] = {"n": len(d), "right_minus_left": m, "sem": se,
                     "right_higher": float(np.mean(np.asarray(d) > 0))}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", action="append", default=[], help="an `evaluate --json` file")
    ap.add_argument("--cache", action="append", default=[], help="a dosepred cache folder")
    a = ap.parse_args(argv)
    for f in a.eval:
        with open(f) as fh:
            r = residual_asymmetry(json.load(fh))
        for base, v in r.items():
            print(f"{f}: {base} residual right {v['right']:+.2f} Gy, left {v['left']:+.2f} Gy, right - left "
                  f"{v['right_minus_left']:+.2f} +- {v['sem']:.2f} Gy (n={v['n']})")
    for d in a.cache:
        for base, v in reference_asymmetry(d).items():
            print(f"{d}: {base} reference mean dose right - left {v['right_minus_left']:+.2f} +- "
                  f"{v['sem']:.2f} Gy, right higher in {100 * v['right_higher']:.0f} % (n={v['n']})")


if __name__ == "__main__":
    main()
