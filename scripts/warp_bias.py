"""How far the training windows' warps move the targets' D-metrics (docs/results.md, round 29).

For the first N patients of a cache: each target's D99 / D95 / D1 in warped training windows (small
rotations, scalings, as ``CropDataset`` makes them, with ``shift`` keeping the whole mask in view)
minus the same metric of the whole plan, by numpy percentiles on the voxels (independent of the
loss). A warp that keeps the plans' D-metrics gives 0; round 29 measured -2.0 Gy (D99) with the
dose interpolated linearly (run this script on the source before 78c9dd8 to see it)::

    python scripts/warp_bias.py CACHE/train --patients 8 --windows 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dosepred.io.cache import Cache
from dosepred.training.dataset import CropDataset, prepare_patient

MODES = {"none": {}, "rotation": dict(rotate_p=1.0, rotate_max=10.0),
         "scaling": dict(scale_p=1.0, scale_max=0.1)}
METRICS = (("D99", 1), ("D95", 5), ("D1", 99))


def measure(cache: Path, patients: int = 8, windows: int = 6,
            patch: tuple[int, int, int] = (128, 128, 128), head_feet_axis: int = 2, lr_axis: int = 1,
            min_voxels: int = 50) -> dict[tuple[str, str], list[float]]:
    """(mode, metric) -> the window-minus-plan differences (Gy) over patients, windows and targets."""
    c = Cache.open(cache)
    out: dict[tuple[str, str], list[float]] = {}
    for pid in c.ids[:patients]:
        p = c.load(pid)
        arrays = prepare_patient(p, patch, rotate_axis=head_feet_axis, reach=1 / 0.9)
        for mode, kw in MODES.items():
            ds = CropDataset([arrays], p.roi_set, patch, windows, seed=7, flip=False, flip_axis=lr_axis,
                             shift=True, rotate_axis=head_feet_axis, **kw)
            for i in range(windows):
                item = ds[i]
                dose, codes = item["dose"][0].numpy(), item["codes"].numpy()
                for t in p.roi_set.targets:
                    bit = p.roi_set.index(t)
                    full, win = p.dose[p.mask(t)], dose[(codes >> bit) & 1 > 0]
                    if min(full.size, win.size) < min_voxels:
                        continue
                    for name, q in METRICS:
                        out.setdefault((mode, name), []).append(
                            float(np.percentile(win, q) - np.percentile(full, q)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path)
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--windows", type=int, default=6)
    a = ap.parse_args(argv)
    for (mode, name), v in sorted(measure(a.cache, a.patients, a.windows).items()):
        x = np.asarray(v)
        print(f"{mode:9s} {name:4s} mean {x.mean():+.2f} Gy  sd {x.std():.2f}  n {x.size}")


if __name__ == "__main__":
    main()
