"""``dosepred demo``: the whole pipeline on a synthetic cohort in a few minutes on a laptop CPU.

Synthetic patients (:func:`dosepred.synth.make_cohort`) -> caches -> two U-Nets trained with the
same budget and seed, one with MAE and one with MAE + CDM (the CDM loss driven by the clinical
protocol) -> whole-grid predictions of held-out patients -> scores and criteria with the
``openkbp-clinical`` protocol -> a side-by-side table and ``DIR/report.html``.

What it is not: evidence about clinical performance. The phantoms are geometric and the budget is
tiny; the demo shows that every stage runs and how the two objectives are compared.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The two objectives compared, as (label, loss spec).
LOSSES = (("MAE", "mae"), ("MAE+CDM", "mae+cdm"))


@dataclass
class DemoSettings:
    n_train: int = 24
    n_test: int = 8
    size: int = 48
    patch: int = 32
    base: int = 8
    levels: int = 3
    res_units: int = 1
    epochs: int = 5
    steps_per_epoch: int = 20
    batch: int = 2
    lr: float = 2e-3
    protocol: str = "openkbp-clinical"


def run_demo(out: str | os.PathLike, seed: int = 0, settings: DemoSettings | None = None,
             log: Callable[[str], None] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run the demo; returns {"results": {label: summary dict}, "report": path, "train_seconds": {...}}."""
    from .evaluation import evaluate_cohort
    from .io.cache import write_cache
    from .predict import load_model, predict_dose
    from .report import write_report
    from .synth import make_cohort
    from .training import TrainConfig, train

    s = settings or DemoSettings()
    say = log or (lambda _m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cohort = make_cohort(s.n_train + s.n_test, seed=seed, size=s.size)
    train_p, test_p = cohort[: s.n_train], cohort[s.n_train:]
    write_cache(train_p, out / "data" / "train", source=f"dosepred.synth seed {seed}")
    write_cache(test_p, out / "data" / "test", source=f"dosepred.synth seed {seed}")
    say(f"synthetic cohort: {len(train_p)} training + {len(test_p)} test patients, {s.size}^3 voxels")

    results: dict[str, Any] = {}
    doses: dict[str, list] = {}
    seconds: dict[str, float] = {}
    for label, spec in LOSSES:
        run = out / "runs" / label.lower().replace("+", "_")
        if run.exists():  # the demo owns this folder; a rerun starts afresh
            shutil.rmtree(run)
        cfg = TrainConfig(data=str(out / "data" / "train"), out=str(run), loss=spec, protocol=s.protocol,
                          epochs=s.epochs, steps_per_epoch=s.steps_per_epoch, batch=s.batch,
                          patch=(s.patch,) * 3, base=s.base, levels=s.levels, res_units=s.res_units,
                          lr=s.lr, seed=seed,
                          device="cpu", schedule="cosine")
        t0 = time.time()
        train(cfg, log=None, progress=progress)
        seconds[label] = time.time() - t0
        model = load_model(run)
        doses[label] = [predict_dose(model, p) for p in test_p]
        results[label] = evaluate_cohort(zip(test_p, doses[label], strict=True), s.protocol)
        say(f"trained {label} ({spec}): {s.epochs * s.steps_per_epoch} steps in {seconds[label]:.0f} s")

    steps = s.epochs * s.steps_per_epoch
    extra = {"training budget": [{"model": k, "loss": dict(LOSSES)[k], "steps": steps, "batch": s.batch,
                                  "patch": s.patch, "seconds": round(v, 1)} for k, v in seconds.items()]}
    report = write_report(out, results, test_p, doses,
                          title=f"dosepred demo: MAE vs MAE+CDM on {len(test_p)} synthetic test patients",
                          extra_tables=extra)
    return {"results": {k: r.summary() for k, r in results.items()}, "report": str(report),
            "train_seconds": seconds}


def summary_rows(results: dict[str, dict[str, float]]) -> list[tuple[str, list[str]]]:
    """(metric name, [value per model]) rows of the side-by-side table."""
    keys = (("dose score (Gy)", "dose_score"), ("DVH score (Gy)", "dvh_score"),
            ("PTV Score (Gy)", "ptv_score"), ("OAR Score (Gy)", "oar_score"),
            ("criteria pass rate (%)", "criteria_pass_rate"))
    rows = []
    for title, k in keys:
        vals = []
        for r in results.values():
            v = r.get(k, float("nan"))
            vals.append("-" if v != v else f"{v:.{1 if 'rate' in k else 3}f}")
        rows.append((title, vals))
    return rows
