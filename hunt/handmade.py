"""Hand-made OpenKBP patients (128^3 sparse CSV) with known masks and doses, plus an independent
metric implementation (own sort + linear interpolation; OpenKBP's definitions per REFERENCE.md).

make(root) writes root/ref/pt_K and root/pred/pt_K.csv and returns {pid: dict(arrays)}."""
from __future__ import annotations
import math, os
from pathlib import Path
import numpy as np

G = (128, 128, 128)

def _write_sparse(path, idx, vals=None):
    with open(path, "w") as f:
        f.write(",data\n")
        if vals is None:
            f.write("".join(f"{i},\n" for i in idx))
        else:
            f.write("".join(f"{i},{repr(float(v))}\n" for i, v in zip(idx, vals)))

def box(a0, a1, b0, b1, c0, c1):
    m = np.zeros(G, bool); m[a0:a1, b0:b1, c0:c1] = True; return m

def patients():
    out = {}
    rng = np.random.default_rng(7)
    for pid, spacing in (("pt_1", (3.906, 3.906, 2.5)), ("pt_2", (1.0, 2.0, 3.0)), ("pt_3", (4.0, 4.0, 2.5))):
        mask = box(20, 100, 20, 100, 20, 100)
        ref = np.zeros(G, np.float32)
        # smooth-ish background inside the mask
        ref[mask] = rng.uniform(0, 40, int(mask.sum())).astype(np.float32)
        rois = {}
        ptv70 = box(40, 50, 40, 50, 40, 50)
        rois["PTV70"] = ptv70
        k = np.arange(1, 1001, dtype=np.float64)
        ref[ptv70] = (60 + 0.015 * k).astype(np.float32)   # doses 60.015 .. 75 in C order
        ptv63 = box(40, 46, 52, 58, 40, 46); rois["PTV63"] = ptv63
        ref[ptv63] = rng.uniform(57, 66, 216).astype(np.float32)
        ptv56 = box(55, 63, 40, 48, 40, 48); rois["PTV56"] = ptv56
        ref[ptv56] = rng.uniform(50, 58, 512).astype(np.float32)
        sc = np.zeros(G, bool)
        if pid == "pt_1":
            sc[70, 70, 70] = True                         # 1 voxel
        else:
            sc[70:72, 70:72, 30:90] = True
        rois["SpinalCord"] = sc
        bs = np.zeros(G, bool)
        bs[75, 75, 60:62] = True                          # 2 voxels (< 0.1 cc in pt_1/pt_3, > in pt_2?)
        if pid == "pt_2":
            bs[75:80, 75:80, 60:62] = True                # 50 voxels x 6 mm3 = 0.3 cc
        rois["Brainstem"] = bs
        lp = box(45, 55, 45, 55, 45, 55)                  # overlaps PTV70
        rois["LeftParotid"] = lp
        rp = box(15, 30, 60, 70, 60, 70)                  # rows 15..19 outside the possible-dose mask
        rois["RightParotid"] = rp
        if pid != "pt_2":
            rois["Larynx"] = box(30, 35, 30, 35, 30, 35)  # missing in pt_2
        mand = np.zeros(G, bool)
        sel = rng.random((30, 30, 30)) < 0.3
        mand[60:90, 60:90, 60:90] = sel
        rois["Mandible"] = mand
        # Esophagus: absent from every patient
        pred = ref.copy()
        pred[mask] = np.clip(ref[mask] + rng.normal(0, 2.0, int(mask.sum())), 0, None).astype(np.float32)
        pred[ptv70] = (ref[ptv70] - 1.5).astype(np.float32)   # ptv70 under-dosed by 1.5 Gy
        outside = ~mask
        o = np.flatnonzero(outside)[:5000]
        pred.ravel()[o] = 0.3                                     # a little dose outside the mask
        pred[rp & ~mask] = 5.0                                    # prediction dose in the ROI outside the mask
        out[pid] = dict(spacing=spacing, mask=mask, ref=ref, pred=pred, rois=rois)
    return out

def make(root):
    root = Path(root)
    data = patients()
    for pid, d in data.items():
        p = root / "ref" / pid; p.mkdir(parents=True, exist_ok=True)
        (root / "pred").mkdir(parents=True, exist_ok=True)
        midx = np.flatnonzero(d["mask"].ravel())
        _write_sparse(p / "ct.csv", midx, np.full(midx.size, 1024.0))
        _write_sparse(p / "possible_dose_mask.csv", midx)
        _write_sparse(p / "dose.csv", midx, d["ref"].ravel()[midx])
        (p / "voxel_dimensions.csv").write_text("\n".join(repr(s) for s in d["spacing"]) + "\n")
        for n, m in d["rois"].items():
            _write_sparse(p / f"{n}.csv", np.flatnonzero(m.ravel()))
        pidx = np.flatnonzero(d["pred"].ravel())
        _write_sparse(root / "pred" / f"{pid}.csv", pidx, d["pred"].ravel()[pidx])
        # read back what was written (float text -> float32) so the truth is the stored values
        d["ref"] = d["ref"].astype(np.float32); d["pred"] = d["pred"].astype(np.float32)
    return data

# ------------------------------------------------------------------ independent metrics
def pct(x, q):
    """linear-interpolation percentile, written out (no np.percentile)."""
    s = sorted(float(v) for v in x)
    n = len(s)
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} out of range")
    h = (n - 1) * q / 100.0
    lo = math.floor(h); hi = min(lo + 1, n - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])

def round_half_even(x):
    f = math.floor(x); r = x - f
    if r > 0.5: return f + 1
    if r < 0.5: return f
    return f if f % 2 == 0 else f + 1

def metric(name, doses, vox, rx=None):
    d = np.asarray(doses, np.float64)
    if name == "Dmean": return float(d.sum() / d.size)
    if name == "Dmax": return float(d.max())
    if name == "Dmin": return float(d.min())
    if name.endswith("cc") and name.startswith("D"):
        x = float(name[1:-2]); n = max(1, round_half_even(x * 1000 / vox))
        q = 100 - n / d.size * 100
        return pct(d, max(q, 0.0))  # OpenKBP would raise for q < 0; see report
    if name.startswith("D") and name.endswith("%"):
        return pct(d, 100 - float(name[1:-1]))
    if name.startswith("V") and name.endswith("Gy"):
        return float((d >= float(name[1:-2])).sum() * 100.0 / d.size)
    if name.startswith("V") and name.endswith("%"):
        return float((d >= float(name[1:-1]) / 100 * rx).sum() * 100.0 / d.size)
    raise ValueError(name)
