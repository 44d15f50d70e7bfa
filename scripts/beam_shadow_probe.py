"""Is a beam-shadow input channel worth building? (docs/results.md, round 32)

OpenKBP's plans are 9 equispaced coplanar fields (gantry 0, 40, ..., 320 degrees). A field crosses
a voxel on its way to or from a target when the line through the voxel, in the axial plane and in
the field's direction, meets the target; the *shadow* of a voxel is the mean over the fields' line
orientations of the highest prescription / 70 Gy on that line (the same slice; a line's width is one
in-plane voxel). A voxel beside the target in its slices lies in many fields' paths, one as far from
it but above or below its slices in none: information the distance to the targets lacks.

Two measurements, both outside the targets and inside the possible-dose mask:

* ``reference``: how much of the reference plans' dose the two features explain, the mean absolute
  deviation from the mean dose of each bin (distance in 2 mm bins, shadow in 0.05 bins, and the
  product of the two; a control adds 21 random bins to the distance, for the bins' own freedom);
* ``residual``: whether a model's prediction errs systematically along them: its signed residuals'
  mean per (distance, shadow) bin, learnt on half of the patients and subtracted on the other half
  (two folds); if the mean absolute residual does not fall, the model already predicts what the
  features tell on average, and a channel could only help through per-patient detail.

::

    python scripts/beam_shadow_probe.py reference CACHE/train --every 8 --patients 20 [--offset 10]
    python scripts/beam_shadow_probe.py residual CACHE/val --prediction PRED_CACHE
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dosepred.geometry import Geometry
from dosepred.io.cache import Cache
from dosepred.models.unet import signed_distance


def beam_shadow(rx: np.ndarray, geometry: Geometry, n_beams: int = 9, offset_deg: float = 0.0) -> np.ndarray:
    """The shadow (float32, ``rx.shape``) of the prescription map ``rx`` (Gy / 70, 0 outside the
    targets) on a grid placed by ``geometry``, for ``n_beams`` equispaced gantry angles from
    ``offset_deg``. The head-feet array axis is the one closest to LPS z; each line orientation
    bins the in-plane coordinate across it (``x cos g + y sin g``, mm) by one in-plane voxel."""
    rx = np.asarray(rx, np.float32)
    m = geometry.matrix  # column j: the mm step (LPS) of array axis j
    shape = rx.shape
    zax = int(np.argmax(np.abs(m[2]) / np.linalg.norm(m, axis=0)))
    width = min(geometry.spacing[a] for a in range(3) if a != zax)
    idx = [np.arange(n).reshape([-1 if b == a else 1 for b in range(3)]) for a, n in enumerate(shape)]
    zi = np.broadcast_to(idx[zax], shape)
    orients = sorted({round((offset_deg + j * 360 / n_beams) % 180, 6) for j in range(n_beams)})
    inside = rx > 0
    out = np.zeros(shape, np.float32)
    for g in orients:
        r = np.deg2rad(g)
        step = m[0] * np.cos(r) + m[1] * np.sin(r)  # across-line mm per step of each array axis
        b = np.floor(sum(idx[a] * step[a] for a in range(3)) / width + 0.5).astype(np.int64)
        b = np.broadcast_to(b - b.min(), shape)
        nb = int(b.max()) + 1
        key = zi * nb + b
        table = np.zeros(shape[zax] * nb, np.float32)
        np.maximum.at(table, key[inside], rx[inside])
        out += table[key]
    return out / len(orients)


def features(cache: Cache, pid: str,
             offset_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Outside the targets, inside the possible-dose mask: (distance bin, shadow bin, reference dose,
    the voxels' mask) of one patient."""
    p = cache.load(pid, with_ct=False)
    rs = p.roi_set
    rx = np.zeros(p.roi_codes.shape, np.float32)
    for n in rs.targets:
        bit = p.roi_codes.dtype.type(rs.index(n))
        rx = np.maximum(rx, ((p.roi_codes >> bit) & 1) * np.float32(rs.prescription(n) / 70.0))
    sh = beam_shadow(rx, p.geometry, offset_deg=offset_deg)
    d = signed_distance(rx > 0, p.spacing)
    m = p.possible_dose_mask & (rx == 0)
    return (np.floor(np.clip(d[m], 0, 100) / 2).astype(np.int64), np.floor(sh[m] * 20).astype(np.int64),
            p.dose[m].astype(np.float64), m)


def bin_mad(keys: np.ndarray, y: np.ndarray) -> float:
    """Mean absolute deviation of ``y`` from the mean of its bin."""
    _, inv = np.unique(keys, return_inverse=True)
    means = np.bincount(inv, y) / np.bincount(inv)
    return float(np.mean(np.abs(y - means[inv])))


def reference(cache_dir: Path, every: int = 8, patients: int = 20, seed: int = 0,
              offset_deg: float = 0.0) -> dict[str, float]:
    c = Cache.open(cache_dir)
    rows = [features(c, pid, offset_deg)[:3] for pid in c.ids[::every][:patients]]
    d, s, y = (np.concatenate([r[i] for r in rows]) for i in range(3))
    rand = np.random.default_rng(seed).integers(0, 21, d.size)
    return {"voxels": float(y.size), "none": float(np.mean(np.abs(y - y.mean()))),
            "distance": bin_mad(d, y), "shadow": bin_mad(s, y), "distance x shadow": bin_mad(d * 100 + s, y),
            "distance x random (control)": bin_mad(d * 100 + rand, y)}


def residual(cache_dir: Path, prediction: Path) -> dict[str, float]:
    c, pc = Cache.open(cache_dir), Cache.open(prediction)
    rows = []
    for k, pid in enumerate(c.ids):
        d, s, y, m = features(c, pid)
        pred = pc.load_dose(pid)
        if pred is None:
            raise SystemExit(f"{prediction}: no dose for {pid}")
        rows.append((k % 2, d * 100, d * 100 + s, pred[m].astype(np.float64) - y))
    out: dict[str, float] = {"as predicted": float(np.mean(np.abs(np.concatenate([r[3] for r in rows]))))}
    for name, col in (("distance", 1), ("distance x shadow", 2)):
        errs = []
        for fold in (0, 1):
            train = [r for r in rows if r[0] != fold]
            keys, res = np.concatenate([r[col] for r in train]), np.concatenate([r[3] for r in train])
            u, inv = np.unique(keys, return_inverse=True)
            means = np.bincount(inv, res) / np.bincount(inv)
            for r in rows:
                if r[0] == fold:
                    pos = np.clip(np.searchsorted(u, r[col]), 0, u.size - 1)
                    corr = np.where(u[pos] == r[col], means[pos], 0.0)
                    errs.append(np.abs(r[3] - corr))
        out[f"after {name} bins (cross-fitted)"] = float(np.mean(np.concatenate(errs)))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("reference", "residual"))
    ap.add_argument("cache", type=Path)
    ap.add_argument("--prediction", type=Path, help="residual: a prediction cache of the same patients")
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--offset", type=float, default=0.0, help="reference: the fields' lines turned by this "
                    "many degrees (a control: 0 is OpenKBP's gantry angles)")
    a = ap.parse_args(argv)
    if a.mode == "residual" and a.prediction is None:
        ap.error("residual needs --prediction")
    if a.mode == "reference":
        res = reference(a.cache, a.every, a.patients, offset_deg=a.offset)
    else:
        res = residual(a.cache, a.prediction)
    for k, v in res.items():
        print(f"{k:32s} {v:.3f}")


if __name__ == "__main__":
    main()
