"""How much of a model's PTV Score is the plan's normalisation (issue 24, round 18).

usage: python scripts/oracle_normalisation.py REFERENCE PREDICTION OUT [--target PTV70]

REFERENCE: the reference cache (plans with dose); PREDICTION: `dosepred predict --format cache` of the
same patients; OUT: a new cache of the predictions, each multiplied by one number per patient, the
reference's D95 of the target over the prediction's (numpy percentiles over the target's voxels). A
plan's normalisation is a planner's choice that anatomy alone cannot tell (docs/results.md,
Discussion: "Plans differ"); scoring OUT with `dosepred evaluate` gives the PTV Score a model would
have if it knew that one number, and nothing else, from the reference. Prints the factors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dosepred.io import load_patients
from dosepred.io.cache import write_cache


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("prediction", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--target", default="PTV70", help="the target whose D95 sets the factor")
    a = ap.parse_args(argv)
    if a.out.exists():
        print(f"error: {a.out} exists; choose a new folder", file=sys.stderr)
        return 2
    refs = {p.id: p for p in load_patients(a.reference)}
    out = []
    for p in load_patients(a.prediction):
        r = refs.get(p.id)
        if r is None or r.dose is None or p.dose is None:
            print(f"error: patient {p.id}: no reference or predicted dose", file=sys.stderr)
            return 2
        m = r.mask(a.target)
        if not m.any():
            print(f"error: patient {p.id}: {a.target} is empty", file=sys.stderr)
            return 2
        s = float(np.percentile(r.dose[m], 5) / np.percentile(p.dose[m], 5))
        print(f"{p.id} {s:.3f}")
        out.append(p.with_dose((p.dose * s).astype(np.float32)))
    write_cache(out, a.out, source=f"scripts/oracle_normalisation.py: {a.prediction} x reference "
                f"{a.target} D95 / predicted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
