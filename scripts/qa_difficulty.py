"""Whether a disagreement predicts the error of OAR mean doses (issue 25; docs/qa.md "Difficulty
scores").

    python scripts/qa_difficulty.py --data VAL_CACHE --flipped PRED_TTA --unflipped PRED_NO_TTA \
        [--other PRED_OTHER_MODEL]

``PRED_TTA`` / ``PRED_NO_TTA``: one model's predictions of ``VAL_CACHE`` (``dosepred predict --format
cache``) with and without flipping; ``PRED_OTHER_MODEL``: another checkpoint's flipped predictions.
For every patient and contoured OAR: the error |plan - flipped| of the mean dose, against three
difficulty scores: the flip disagreement |unflipped - mirrored| (the mirrored pass is 2 x flipped -
unflipped, the mean dose being linear), the checkpoint disagreement |flipped - other| and the spread
(standard deviation of the flipped prediction in the OAR). Prints the rank and linear correlations
and the 90th percentile of the error in the lowest and highest third of each score: a score worth a
normalised interval separates those two.

``--detection`` then asks the question that matters for plan QA (docs/qa.md "Detection power"),
on the OAR mean doses with a criterion in ``openkbp-clinical`` (parotids, larynx, oesophagus):
cross-validated over 200 random splits of the patients (two thirds calibrate, one third checked),
the 90 % upper bound ``yhat + q |r| / s`` of the absolute method (q: the conservative conformal
quantile of the calibration patients' |r| / s) with ``s = 1`` and with ``s = c median(score) +
score`` for each score and c in 0.5, 1, 2: the share of untouched plans flagged above it and of plans
whose OAR mean dose was raised by 3 and 6 Gy. A score that helps catches more at the same false
alarms.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.stats import spearmanr

from dosepred.io.cache import Cache


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="reference cache (plans)")
    ap.add_argument("--flipped", required=True, help="predictions with flipping (predict's default)")
    ap.add_argument("--unflipped", required=True, help="the same model's predictions with --no-tta")
    ap.add_argument("--other", help="another checkpoint's flipped predictions")
    ap.add_argument("--detection", action="store_true", help="cross-validated false alarms and "
                    "detection of +3/+6 Gy with each score as the scale of a normalised interval")
    a = ap.parse_args(argv)
    from dosepred.protocol import load_protocol

    dmean_rois = {c.roi for c in load_protocol("openkbp-clinical").criteria if c.metric == "Dmean"}
    pat: list[int] = []
    signed: list[float] = []
    in_family: list[bool] = []
    ref = Cache.open(a.data)
    preds = {k: Cache.open(v) for k, v in (("tta", a.flipped), ("no", a.unflipped), ("other", a.other)) if v}
    err: list[float] = []
    scores: dict[str, list[float]] = {"flip disagreement": [], "spread": []}
    if a.other:
        scores["checkpoint disagreement"] = []
    for i, pid in enumerate(ref.ids):
        p = ref.load(pid, with_ct=False)
        dose = {k: c.load_dose(pid) for k, c in preds.items()}
        for roi in p.roi_set.oars:
            m = p.mask(roi) if roi not in p.missing_rois else None
            if m is None or not m.any():
                continue
            tta, no = float(dose["tta"][m].mean()), float(dose["no"][m].mean())
            err.append(abs(float(p.dose[m].mean()) - tta))
            signed.append(float(p.dose[m].mean()) - tta)
            pat.append(i)
            in_family.append(roi in dmean_rois)
            scores["flip disagreement"].append(abs(no - (2 * tta - no)))
            scores["spread"].append(float(dose["tta"][m].std()))
            if a.other:
                scores["checkpoint disagreement"].append(abs(tta - float(dose["other"][m].mean())))
    e = np.array(err)
    print(f"{len(e)} OAR mean doses of {len(ref.ids)} patients: |error| median {np.median(e):.2f}, "
          f"90th percentile {np.quantile(e, 0.9):.2f} Gy")
    for name, xs in scores.items():
        x = np.array(xs)
        lo, hi = np.quantile(x, [1 / 3, 2 / 3])
        print(f"{name}: median {np.median(x):.2f} Gy; Spearman {spearmanr(x, e)[0]:.3f}, Pearson "
              f"{np.corrcoef(x, e)[0, 1]:.3f}; |error| 90th percentile, lowest third "
              f"{np.quantile(e[x <= lo], 0.9):.2f} Gy, highest third {np.quantile(e[x > hi], 0.9):.2f} Gy")
    if a.detection:
        fam = np.array(in_family)
        detection(np.array(signed)[fam], np.array(pat)[fam], {k: np.array(v)[fam] for k, v in scores.items()})
    return 0


def detection(r: np.ndarray, pat: np.ndarray, scores: dict[str, np.ndarray], splits: int = 200,
              level: float = 0.9) -> None:
    """Print cross-validated false alarms and detection of +3/+6 Gy (module docstring)."""
    rng = np.random.default_rng(0)
    ids = np.unique(pat)
    n_cal = round(len(ids) * 2 / 3)
    print(f"detection, {len(r)} OAR mean doses with a criterion, {splits} splits of {n_cal}/"
          f"{len(ids) - n_cal} patients, {level:.0%} absolute intervals: false alarms / +3 Gy / +6 Gy "
          "caught, median upper margin")
    variants = {"none (s = 1)": lambda cal: np.ones_like(r)}
    for name, x in scores.items():
        for c in (0.5, 1.0, 2.0):
            variants[f"{name}, c = {c:g}"] = lambda cal, x=x, c=c: c * np.median(x[cal]) + x
    for name, scale in variants.items():
        rates, margins = [], []
        for _ in range(splits):
            cal = np.isin(pat, rng.permutation(ids)[:n_cal])
            s = scale(cal)
            z = np.sort(np.abs(r[cal]) / s[cal])
            q = z[min(int(np.ceil((len(z) + 1) * level)), len(z)) - 1]  # conservative conformal quantile
            up = q * s[~cal]
            rates.append([np.mean(r[~cal] + d > up) for d in (0, 3, 6)])
            margins.append(np.median(up))
        fa, d3, d6 = 100 * np.mean(rates, axis=0)
        print(f"  {name}: {fa:.1f} / {d3:.1f} / {d6:.1f} %, {np.median(margins):.2f} Gy")


if __name__ == "__main__":
    from dosepred.errors import DosepredError

    try:
        raise SystemExit(main())
    except (DosepredError, OSError) as e:  # a wrong path or cache: one line, not a traceback
        raise SystemExit(f"error: {e}") from None
