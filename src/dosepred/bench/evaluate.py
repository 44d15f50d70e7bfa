"""Benchmark of evaluation throughput (patients/s): dosepred from OpenKBP CSV and from the cache,
against a straightforward per-file pandas + numpy evaluator written here as the baseline.

Every path scores the same predictions (the reference dose perturbed with seeded noise, written as
OpenKBP ``pt_N.csv`` files) with OpenKBP's dose and DVH scores, and the scores are checked to agree.
Timings include reading the reference and the prediction from disk. The dosepred paths use
:func:`dosepred.evaluation.iter_cases` as ``dosepred evaluate`` (without ``--report``) does: each
scoring case on the box holding all non-zero data, one patient read ahead in a worker thread, and,
with both in caches, as voxel lists (``compact``); one extra row times the cache pair on boxes
without read-ahead (the previous path). A
version-1 ``--cache`` is read whole (full-grid arrays), so pass a version-2 cache (the format
``data import-openkbp`` writes now) to time the cache as it is meant to be used. The result records
the cache's ``cache_version``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import evaluate_cohort, iter_cases
from ..io import cache, openkbp
from . import check_at_least

GRID = (128, 128, 128)
OARS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
TARGETS = ("PTV56", "PTV63", "PTV70")


def naive_evaluate(ref_dirs: list[Path], pred_dir: Path) -> tuple[float, float]:
    """Baseline: pandas.read_csv per file, dense arrays, OpenKBP's dose and DVH scores."""
    import pandas as pd

    def dense(path: Path, with_values: bool = True) -> np.ndarray:
        df = pd.read_csv(path, index_col=0)
        a = np.zeros(int(np.prod(GRID)))
        a[df.index.values] = df["data"].values if with_values else 1
        return a.reshape(GRID)

    dose_scores, dvh_errors = [], []
    for d in ref_dirs:
        ref = dense(d / "dose.csv")
        pred = dense(pred_dir / f"{d.name}.csv")
        mask = dense(d / "possible_dose_mask.csv", False)
        vox = float(np.prod(np.loadtxt(d / "voxel_dimensions.csv")))
        dose_scores.append(np.sum(np.abs(ref - pred)) / np.sum(mask))
        for roi in OARS + TARGETS:
            f = d / f"{roi}.csv"
            if not f.is_file():
                continue
            m = dense(f, False).astype(bool)
            a, b = ref[m], pred[m]
            if roi in OARS:
                q = 100 - max(1, round(100 / vox)) / m.sum() * 100
                dvh_errors += [abs(np.percentile(a, q) - np.percentile(b, q)), abs(a.mean() - b.mean())]
            else:
                dvh_errors += [abs(np.percentile(a, q) - np.percentile(b, q)) for q in (1, 5, 99)]
    return float(np.mean(dose_scores)), float(np.mean(dvh_errors))


def run(data: str | os.PathLike, n_patients: int | None = None, cache_dir: str | os.PathLike | None = None,
        repeats: int = 1, progress: bool = False) -> dict[str, Any]:
    """Time the three evaluators on ``n_patients`` patients of OpenKBP folder ``data``.

    ``cache_dir``: a cache of the same patients (written to a temporary folder when None or absent).
    ``n_patients``: None for all, else at least 1; ``repeats``: at least 1.
    Returns a dict with per-path seconds, patients/s and scores.
    """
    check_at_least(patients=(n_patients, 1), repeats=(repeats, 1))
    folders = openkbp.patient_folders(data)[: n_patients or None]
    ids = [f.name for f in folders]
    tmp = Path(tempfile.mkdtemp(prefix="dosepred-bench-eval-"))
    try:
        pred_dir = tmp / "pred"
        rng = np.random.default_rng(0)
        need_cache = cache_dir is None or not cache.is_cache(cache_dir) or not set(ids) <= set(
            cache.Cache.open(cache_dir).ids)
        cdir = Path(tmp / "cache") if need_cache else Path(cache_dir)  # type: ignore[arg-type]

        def prepare():  # write the predictions; stream the patients (one in memory at a time)
            for f in folders:
                p = openkbp.read_patient(f)
                assert p.dose is not None
                noise = rng.normal(0.0, 2.0, p.shape).astype(np.float32) * p.possible_dose_mask
                openkbp.write_dose_csv(pred_dir / f"{p.id}.csv", np.clip(p.dose * 0.98 + noise, 0, None),
                                       p.possible_dose_mask)
                yield p

        if need_cache:
            cache.write_cache(prepare(), cdir, source=str(data))
        else:
            for _ in prepare():
                pass

        def best(fn) -> tuple[float, Any]:
            times, out = [], None
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            return min(times), out

        t_naive, (ds_n, dvh_n) = best(lambda: naive_evaluate(folders, pred_dir))
        t_csv, r_csv = best(lambda: evaluate_cohort(iter_cases(data, pred_dir, ids), "openkbp",
                                                    progress=progress))
        t_cache, r_cache = best(lambda: evaluate_cohort(iter_cases(cdir, pred_dir, ids), "openkbp",
                                                        progress=progress))
        # the cache path reads the prediction CSVs too; time the cache-only read as well (pred cache)
        pcache = tmp / "pred-cache"
        refs = cache.Cache.open(cdir)
        cache.write_cache((refs.load(pid).with_dose(openkbp.read_dose_csv(pred_dir / f"{pid}.csv"))
                           for pid in ids), pcache)
        t_cc, r_cc = best(lambda: evaluate_cohort(iter_cases(cdir, pcache, ids), "openkbp",
                                                  progress=progress))
        boxes = lambda: iter_cases(cdir, pcache, ids, read_ahead=0, compact=False)  # noqa: E731
        t_cc0, r_cc0 = best(lambda: evaluate_cohort(boxes(), "openkbp", progress=progress))
        for r in (r_csv, r_cache, r_cc, r_cc0):
            if abs(r.dose_score - ds_n) > 1e-4 or abs(r.dvh_score - dvh_n) > 1e-4:
                raise RuntimeError(f"scores disagree: dosepred {r.dose_score:.6f}/{r.dvh_score:.6f}, "
                                   f"naive {ds_n:.6f}/{dvh_n:.6f}")
        n = len(ids)
        rows = [
            ("naive pandas + numpy (reference CSV, prediction CSV)", t_naive),
            ("dosepred, reference OpenKBP CSV, prediction CSV", t_csv),
            ("dosepred, reference cache, prediction CSV", t_cache),
            ("dosepred, reference cache, prediction cache", t_cc),
            ("dosepred, reference cache, prediction cache, boxes, no read-ahead", t_cc0),
        ]
        return {"patients": n, "data": str(data), "cache": str(cdir) if not need_cache else "temporary",
                "cache_version": cache.Cache.open(cdir).info.get("version", 1),
                "repeats": repeats, "read_ahead": 1,
                "dose_score": r_csv.dose_score, "dvh_score": r_csv.dvh_score,
                "rows": [{"path": name, "seconds": t, "patients_per_s": n / t,
                          "speedup_vs_naive": t_naive / t, "speedup_vs_csv": t_csv / t} for name, t in rows]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
