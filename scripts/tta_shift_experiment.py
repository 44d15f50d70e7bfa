"""Does test-time translation pay? For every validation patient, predict the released model's dose with
left-right flips and with the input translated by a few voxels (border replicated, the prediction
translated back; a voxel averages only the passes in which it stayed in view), then write one
prediction cache per combination for `dosepred evaluate`.

usage: python scripts/tta_shift_experiment.py MODEL VAL_CACHE OUTDIR  (docs/results.md, "Round 12")
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from dosepred.io.cache import write_cache
from dosepred.io.source import load_patients
from dosepred.models.checkpoint import load_model
from dosepred.models.space import into_space
from dosepred.predict import match_rois, model_space
from dosepred.roi import lr_pairs, mirror_codes, to_torch

OFFSETS = [(0, 0, 0), (4, 4, 4), (-4, -4, -4), (4, -4, 2), (-4, 4, -2), (2, 6, -6)]
VARIANTS = {"f-s1": 1, "f-s2": 2, "f-s3": 3, "f-s6": 6}  # flips x the first k offsets

model_path, val, outdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
torch.set_num_threads(1)
net = load_model(model_path, torch.device("cpu"))
net.eval()
roi = tuple(net.config.patch)


def shift_idx(n: int, s: int) -> torch.Tensor:
    return torch.clamp(torch.arange(n) - s, 0, n - 1)


@torch.no_grad()
def passes(p):
    """One prediction per (flip, offset), each with its in-view weight, back in the patient's frame."""
    ct = torch.from_numpy(np.ascontiguousarray(p.ct))[None, None]
    codes_np = np.ascontiguousarray(p.roi_codes)
    mask = torch.from_numpy(np.ascontiguousarray(p.possible_dose_mask))[None, None]
    ax = p.geometry.axis_along("LR")
    x0 = net.assemble(ct, to_torch(codes_np, "cpu")[None], mask)
    codes_f = mirror_codes(codes_np, ax, lr_pairs(p.roi_set))
    xf = net.assemble(ct.flip(ax + 2), to_torch(codes_f, "cpu")[None], mask.flip(ax + 2))
    out = []
    for flip, x in ((False, x0), (True, xf)):
        for off in OFFSETS:
            xs = x
            for d, s in enumerate(off):
                xs = xs.index_select(d + 2, shift_idx(x.shape[d + 2], s))
            y = sliding_window_inference(xs, roi, 1, net.from_input, overlap=0.5, mode="gaussian",
                                         padding_mode="replicate").float()
            w = torch.ones_like(y)
            for d, s in enumerate(off):  # back: y_back[i] = y[i + s] where 0 <= i + s < n
                n = y.shape[d + 2]
                idx = torch.arange(n) + s
                ok = (idx >= 0) & (idx < n)
                y = y.index_select(d + 2, idx.clamp(0, n - 1))
                shape = [1] * y.dim()
                shape[d + 2] = n
                w = w.index_select(d + 2, idx.clamp(0, n - 1)) * ok.view(shape).float()
            if flip:
                y, w = y.flip(ax + 2), w.flip(ax + 2)
            out.append((y, w))
    return out, mask.float()


results: dict[str, list] = {k: [] for k in VARIANTS}
t0 = time.time()
for i, p in enumerate(load_patients(val, require_dose=True)):
    p = match_rois(net.config, p, False)
    placed = into_space(p, model_space(net), warn=False)
    ps, m = passes(placed.patient)
    half = len(OFFSETS)
    for name, k in VARIANTS.items():
        sel = ps[:k] + ps[half:half + k]
        num = sum(y * w for y, w in sel)
        den = sum(w for _, w in sel)
        dose = (num / den.clamp_min(1e-6) * m)[0, 0].numpy().astype(np.float32)
        results[name].append(p.with_dose(placed.back(dose)))
    print(f"{i + 1} {p.id} {time.time() - t0:.0f}s", flush=True)
for name, pats in results.items():
    write_cache(pats, outdir / name, source=f"tta_shift.py {model_path} {name}")
print("done", flush=True)
