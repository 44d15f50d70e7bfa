"""OpenKBP patients written by hand (CSV text from known flat indices, no dosepred writer), so the
readers are checked against numpy, not against themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

GRID = (128, 128, 128)


def write_sparse_csv(path: Path, idx: np.ndarray, values: np.ndarray | None = None) -> None:
    """An OpenKBP sparse CSV written as text (``,data`` then ``index,value`` rows)."""
    vals = [""] * len(idx) if values is None else [repr(float(v)) for v in values]
    path.write_text(",data\n" + "".join(f"{i},{v}\n" for i, v in zip(idx.tolist(), vals, strict=True)))


def flat_block(sel: tuple[slice, ...], grid: tuple[int, ...] = GRID) -> np.ndarray:
    """C-order flat indices of the voxels of a box."""
    return np.ravel_multi_index(tuple(a.ravel() for a in np.mgrid[sel]), grid)


def dense(idx: np.ndarray, values: np.ndarray | float = 1.0, dtype=np.float64) -> np.ndarray:
    """A 128^3 array with ``values`` at the flat indices ``idx``, zero elsewhere."""
    a = np.zeros(int(np.prod(GRID)), dtype)
    a[idx] = values
    return a.reshape(GRID)


def write_openkbp(root: Path) -> dict:
    """Two OpenKBP patients (pt_3, pt_10) under ``root``: ``{"root": root, "truth": {id: {"mask",
    "dose", "PTV70", "Brainstem", "ct"}}}`` (flat indices on the 128^3 grid; ``dose`` the values at
    the mask's voxels, 64-76 Gy in the PTV70, some explicit zeros; the Brainstem lies partly outside
    the mask; spacing 3.906, 3.906, 2.5 mm; the other eight OpenKBP ROIs have no file)."""
    rng = np.random.default_rng(5)
    truth = {}
    for n, pid in enumerate(("pt_3", "pt_10")):
        f = root / pid
        f.mkdir(parents=True)
        mask = flat_block((slice(40 + n, 52), slice(50, 66), slice(60, 75)))
        dose_vals = rng.uniform(0, 70, mask.size).round(3)
        ptv = flat_block((slice(44, 48), slice(55, 60), slice(64, 70)))
        # the PTV near its 70 Gy, as a plan gives it (io.rx_check refuses a median under half of it)
        in_ptv = np.isin(mask, ptv)
        dose_vals[in_ptv] = rng.uniform(64, 76, int(in_ptv.sum())).round(3)
        dose_vals[::7] = 0.0  # explicit zeros, as OpenKBP files have
        stem = flat_block((slice(30, 44), slice(58, 61), slice(66, 68)))
        write_sparse_csv(f / "possible_dose_mask.csv", mask)
        write_sparse_csv(f / "dose.csv", mask, dose_vals)
        write_sparse_csv(f / "PTV70.csv", ptv)
        write_sparse_csv(f / "Brainstem.csv", stem)
        ct_idx = flat_block((slice(35, 60), slice(45, 70), slice(55, 80)))
        write_sparse_csv(f / "ct.csv", ct_idx, np.full(ct_idx.size, 1064.0))
        (f / "voxel_dimensions.csv").write_text("3.906\n3.906\n2.5\n")
        truth[pid] = {"mask": mask, "dose": dose_vals, "PTV70": ptv, "Brainstem": stem, "ct": ct_idx}
    return {"root": root, "truth": truth}
