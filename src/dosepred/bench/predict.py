"""Benchmark of whole-patient prediction on a clinical-size grid: resample in, predict, resample out.

An OpenKBP patient (CT, ROIs, possible-dose mask, reference dose) is put onto the grid a clinical CT
series has: 512 x 512 pixels of ~0.98 mm, 150 slices of 3 mm, stored (slice, row, column) as DICOM
holds it (axes "SPL": slices I->S, rows A->P, columns R->L), centred on the patient. That patient is
then predicted as ``dosepred predict`` does (:func:`dosepred.predict.predict_dose`): into the model's
space (permutation, then resampling to the spacing the model was trained at), sliding-window
inference, with test-time flipping as ``predict``'s default (``--tta``: twice the network passes;
``tta=False`` times ``predict --no-tta``), dose resampled back onto the 512 x 512 x 150 grid. Each
stage is timed; the best of ``repeats`` runs is kept. The prediction is scored (OpenKBP dose score)
on the clinical grid against the resampled reference dose and, moved back onto the OpenKBP grid,
against the original.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import dosepred

from ..evaluation import evaluate_patient
from ..geometry import Geometry
from ..inference import InferenceOptions
from ..io.openkbp import read_patient
from ..resample import resample
from . import check_at_least

CLINICAL_SHAPE = (150, 512, 512)
CLINICAL_SPACING = (3.0, 500.0 / 512, 500.0 / 512)
CLINICAL_AXES = "SPL"


def clinical_patient(p: Any, shape: tuple[int, int, int] = CLINICAL_SHAPE,
                     spacing: tuple[float, float, float] = CLINICAL_SPACING,
                     axes: str = CLINICAL_AXES) -> Any:
    """``p`` on a clinical CT grid (``axes``, ``spacing``, ``shape``) centred on its centre."""
    from ..models.space import axes_direction, resample_into

    d = axes_direction(axes)
    c = Geometry.centred(shape, spacing, d)
    g = Geometry(c.origin + p.geometry.centre(p.shape), d, spacing)
    q = resample_into(p, g, shape)
    q.id = f"{p.id}-clinical"
    return q


def run(data: str | os.PathLike, model_path: str | os.PathLike, pid: str = "pt_66", repeats: int = 2,
        threads: int | None = None, tta: bool = True) -> dict[str, Any]:
    """Time the prediction of patient ``pid`` of OpenKBP folder ``data`` on the clinical grid: the best
    of ``repeats`` (at least 1) runs, on ``threads`` torch CPU threads (None: torch's default, all
    cores; else at least 1); ``tta``: flipped as ``dosepred predict`` by default (False: ``--no-tta``)."""
    import warnings

    import torch

    from ..models.checkpoint import load_model
    from ..models.space import into_space
    from ..predict import crop_box, match_rois, model_space, predict_dose, predict_in_space

    check_at_least(repeats=(repeats, 1), threads=(threads, 1))
    if threads is not None:
        torch.set_num_threads(threads)
    model = load_model(model_path)
    options = InferenceOptions(tta=tta)
    space = model_space(model)
    p = read_patient(Path(data) / pid)
    t0 = time.perf_counter()
    clin = clinical_patient(p)
    t_setup = time.perf_counter() - t0
    best: dict[str, float] | None = None
    dose = None
    for _ in range(repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = [time.perf_counter()]
            q = match_rois(model.config, clin)
            placed = into_space(q, space)
            t.append(time.perf_counter())
            d_model = predict_in_space(model, placed.patient, options)
            t.append(time.perf_counter())
            dose = placed.back(d_model)
            t.append(time.perf_counter())
        stages = {"resample_in_s": t[1] - t[0], "predict_s": t[2] - t[1], "resample_out_s": t[3] - t[2],
                  "total_s": t[3] - t[0]}
        if best is None or stages["total_s"] < best["total_s"]:
            best = stages
    assert best is not None and dose is not None
    box = crop_box(placed.patient, model.config.patch)
    windows = int(np.prod([max(1, int(np.ceil((b.stop - b.start - s) / (s * 0.5))) + 1)
                           for b, s in zip(box, model.config.patch, strict=True)]))
    score_clin = evaluate_patient(clin, dose * clin.possible_dose_mask).dose_score
    back = np.maximum(resample(dose, clin.geometry, p.geometry, p.shape, 1, mode="nearest"), 0)
    score_orig = evaluate_patient(p, back * p.possible_dose_mask).dose_score
    score_native = evaluate_patient(p, predict_dose(model, p, options)).dose_score
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {"patient": pid, "model": str(model_path), "clinical_shape": list(clin.shape),
            "clinical_spacing": list(clin.spacing), "clinical_axes": clin.geometry.axis_letters(),
            "model_grid_shape": list(placed.patient.shape),
            "model_grid_spacing": list(placed.patient.spacing),
            "model_axes": space.axes, "window_box": [[b.start, b.stop] for b in box], "windows": windows,
            "tta": tta, "setup_s": t_setup, **best, "repeats": repeats, "threads": torch.get_num_threads(),
            "cpu": cpu, "cores": os.cpu_count(), "dose_score_clinical_grid": score_clin,
            "dose_score_on_openkbp_grid": score_orig, "dose_score_openkbp_path": score_native,
            "dosepred": dosepred.__version__}
