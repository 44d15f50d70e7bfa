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
    a = ap.parse_args(argv)
    ref = Cache.open(a.data)
    preds = {k: Cache.open(v) for k, v in (("tta", a.flipped), ("no", a.unflipped), ("other", a.other)) if v}
    err: list[float] = []
    scores: dict[str, list[float]] = {"flip disagreement": [], "spread": []}
    if a.other:
        scores["checkpoint disagreement"] = []
    for pid in ref.ids:
        p = ref.load(pid, with_ct=False)
        dose = {k: c.load_dose(pid) for k, c in preds.items()}
        for roi in p.roi_set.oars:
            m = p.mask(roi) if roi not in p.missing_rois else None
            if m is None or not m.any():
                continue
            tta, no = float(dose["tta"][m].mean()), float(dose["no"][m].mean())
            err.append(abs(float(p.dose[m].mean()) - tta))
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
    return 0


if __name__ == "__main__":
    from dosepred.errors import DosepredError

    try:
        raise SystemExit(main())
    except (DosepredError, OSError) as e:  # a wrong path or cache: one line, not a traceback
        raise SystemExit(f"error: {e}") from None
