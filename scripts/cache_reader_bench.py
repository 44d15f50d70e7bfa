"""Issue 28: is the cache's hand-written zip/.npy reader (dosepred.io.cache._Npz) still worth keeping
over numpy's own ``np.load`` of the same ``.npz`` files? Reads, for every patient of a cache, the
members evaluation reads (boxes, mask, dose and its support, ROI index and codes: everything but the
CT) both ways, in alternating rounds, and prints the best round of each and their ratio; the arrays
read are checked equal. One thread; nothing is written. The hand-written reader was replaced by
np.load after this measurement: the comparison needs the tree before (commit fbd16bf); run at or
after the switch, both rows read with np.load.

    python scripts/cache_reader_bench.py CACHE [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from dosepred.io.cache import _Npz

WANT = ("boxes", "possible_dose_mask", "dose_support", "dose", "roi_index", "roi_codes")


def ours(files: list[Path]) -> list[dict[str, np.ndarray]]:
    out = []
    for f in files:
        with _Npz(f) as z:
            out.append(z.read([k for k in WANT if k in z.files]))
    return out


def numpys(files: list[Path]) -> list[dict[str, np.ndarray]]:
    out = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            out.append({k: z[k] for k in WANT if k in z.files})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    files = sorted(a.cache.glob("*.npz"))
    best = {"dosepred _Npz": float("inf"), "np.load": float("inf")}
    for _ in range(a.rounds):
        for name, fn in (("dosepred _Npz", ours), ("np.load", numpys)):
            t = time.perf_counter()
            got = fn(files)
            best[name] = min(best[name], time.perf_counter() - t)
    for x, y in zip(ours(files), numpys(files), strict=True):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    n = len(files)
    for name, t in best.items():
        print(f"{name:14s} {t * 1000:8.1f} ms for {n} patients ({t / n * 1000:.2f} ms each)")
    print(f"np.load / dosepred: {best['np.load'] / best['dosepred _Npz']:.2f}x  (arrays equal: yes)")
    del got


if __name__ == "__main__":
    main()
