"""Prediction time of one OpenKBP patient in a model's space: plain, `--tta` (flipped) and
`--tta --tta-shift` (flipped + translated), the variants in turns, 3 rounds, median, one torch thread
(docs/results.md, "Round 12").

usage: python scripts/bench_tta.py MODEL OPENKBP_PATIENT_FOLDER
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from dosepred.inference import InferenceOptions
from dosepred.io.openkbp import read_patient
from dosepred.models.checkpoint import load_model
from dosepred.models.space import into_space
from dosepred.predict import TTA_SHIFT, match_rois, model_space, predict_in_space


def main(model_path: str, patient_dir: str) -> None:
    torch.set_num_threads(1)
    m = load_model(model_path)
    p = read_patient(patient_dir)
    q = into_space(match_rois(m.config, p), model_space(m), warn=False).patient
    variants = {"plain": InferenceOptions(tta=False), "tta": InferenceOptions(tta=True),
                "tta+shift": InferenceOptions(tta=True, shifts=(TTA_SHIFT,))}
    predict_in_space(m, q, variants["plain"])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(3):
        for k, options in variants.items():
            t = time.perf_counter()
            predict_in_space(m, q, options)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["plain"])
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k}: {med:.2f} s ({med / base:.2f}x)  rounds {[round(x, 2) for x in v]}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
