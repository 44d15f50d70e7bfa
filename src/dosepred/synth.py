"""Synthetic head-and-neck cohort: seeded, deterministic phantoms with OpenKBP's ROIs and a plausible dose.

What it is for: tests, demos and benchmarks that need many patients without real data. Each phantom
has a CT (air, soft tissue, fat, bone, airway), the ten OpenKBP structures (same names, kinds and
prescriptions as :meth:`RoiSet.openkbp`, so models and protocols are interchangeable with OpenKBP),
and a dose that behaves like an optimised IMRT plan (:func:`_plan_dose`): each target covered near
its prescription with a realistic DVH (D95 at Rx, D99 3-12 % below it, median 2-3 % and hot spot
5-7 % above), coverage given up near the spinal cord and brainstem, every OAR spared the more the
farther it lies from the targets (an OAR next to a PTV cannot be spared), the cord kept below
about 40-44 Gy, smooth noise, zero outside the body (the possible-dose mask is the body). Like the
OpenKBP reference plans (76 %), these plans pass about 70-75 % of the ``openkbp-clinical`` criteria
(mostly failing PTV D99 >= 95 %, parotid and larynx means), so a prediction that passes more is
not closer to the plan.

What it is not: anatomy or dosimetry. The geometry is ellipsoids and cylinders; the dose is not
computed from beams. Numbers measured on it say nothing about clinical performance.

Grid: ``size``^3 voxels in OpenKBP's axis order (axis 0 anterior->posterior, axis 1 right->left,
axis 2 superior->inferior). The field of view is fixed (256 x 256 x 192 mm), so the spacing is
``(4, 4, 3) * 64 / size`` mm. Patients vary in body size, organ positions, which of PTV63/PTV56
exist, and occasionally lack an OAR contour (``Patient.missing_rois``).

OpenKBP rules kept: PTVs do not overlap each other (lower PTVs exclude higher ones); PTVs may
overlap parotids; the spinal cord and brainstem (with a margin) are never inside a PTV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .constants import AIR_HU
from .errors import InputError
from .geometry import Geometry
from .patient import OPENKBP_OARS, OPENKBP_RX, OPENKBP_TARGETS, Patient, Roi, RoiSet
from .roi import MAX_ROIS

#: Field of view in mm per axis (axis 0 AP, axis 1 RL, axis 2 SI).
FOV_MM = (256.0, 256.0, 192.0)
#: Extra ROIs are built from these bases in turn (targets get rings, OARs get PRVs).
_EXTRA_BASES = ("PTV70", "PTV63", "PTV56", "SpinalCord", "Brainstem", "LeftParotid", "RightParotid",
                "Mandible", "Larynx", "Esophagus")
MAX_EXTRA_ROIS = MAX_ROIS - len(OPENKBP_OARS) - len(OPENKBP_TARGETS)
#: OARs that may be left uncontoured (each patient lacks one with probability ``P_MISSING``).
_MAY_BE_MISSING = ("Esophagus", "Larynx", "Brainstem", "Mandible")
P_MISSING = 0.15


def spacing_for(size: int) -> tuple[float, float, float]:
    """Voxel spacing (mm) of a ``size``^3 phantom."""
    return tuple(f / size for f in FOV_MM)  # type: ignore[return-value]


def extra_roi_defs(k: int) -> list[Roi]:
    """The ``k`` extra ROIs' definitions: ``Ring_<PTV>_<r>mm`` (kind other, a shell ``r-5..r`` mm
    outside the target) and ``PRV_<OAR>_<m>mm`` (kind oar, the OAR grown by ``m`` mm)."""
    if not 0 <= k <= MAX_EXTRA_ROIS:
        raise InputError(f"extra_rois must be 0..{MAX_EXTRA_ROIS} (OpenKBP's 10 ROIs + extras "
                         f"<= {MAX_ROIS}), got {k}")
    out = []
    for i in range(k):
        base, rnd = _EXTRA_BASES[i % len(_EXTRA_BASES)], i // len(_EXTRA_BASES)
        if base.startswith("PTV"):
            out.append(Roi(f"Ring_{base}_{5 * (rnd + 1)}mm", "other"))
        else:
            out.append(Roi(f"PRV_{base}_{3 * (rnd + 1)}mm", "oar"))
    return out


def roi_set(extra_rois: int = 0) -> RoiSet:
    """OpenKBP's RoiSet followed by ``extra_rois`` extras (the same for every patient of a cohort)."""
    base = RoiSet.openkbp()
    return RoiSet(base.rois + tuple(extra_roi_defs(extra_rois))) if extra_rois else base


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 6) -> np.ndarray:
    """Smooth noise of unit-ish amplitude: a coarse random grid interpolated up (cheap)."""
    from scipy.ndimage import zoom

    g = rng.standard_normal((coarse,) * len(shape)).astype(np.float32)
    z = zoom(g, [s / coarse for s in shape], order=1, mode="nearest", grid_mode=True)
    return z[tuple(slice(0, s) for s in shape)]


def make_patient(seed: int, size: int = 64, pid: str | None = None, extra_rois: int = 0) -> Patient:
    """One synthetic H&N patient on a ``size``^3 grid; the same seed gives identical arrays.

    ``extra_rois`` adds that many rings/PRVs after the OpenKBP ROIs (see :func:`extra_roi_defs`).
    """
    from scipy.ndimage import distance_transform_edt

    if size < 8:
        raise InputError(f"size must be >= 8 voxels, got {size}")
    rs = roi_set(extra_rois)
    rng = np.random.default_rng(seed)
    sp = spacing_for(size)
    shape = (size, size, size)
    # mm coordinates of voxel centres relative to the grid centre (open grids broadcast cheaply)
    x, y, z = (((np.arange(size, dtype=np.float32) - (size - 1) / 2) * s) for s in sp)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    # ---- body: an elliptic cylinder, a little wider towards the head
    a, b = u(52, 66), u(60, 78)  # half axes (mm): AP, LR
    cx, cy = u(-6, 6), u(-6, 6)
    taper = 1.0 - 0.08 * (z / FOV_MM[2])  # superior (negative z) slightly larger
    r_body = np.sqrt(((x - cx) / (a * taper)) ** 2 + ((y - cy) / (b * taper)) ** 2)
    body = r_body <= 1.0
    near_skin = r_body > 1.0 - 6.0 / min(a, b)  # about a 6 mm fat layer

    def ellipsoid(c: tuple[float, float, float], r: tuple[float, float, float]) -> np.ndarray:
        return (((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2) <= 1.0

    def cylinder(c: tuple[float, float], r: float, z0: float, z1: float) -> np.ndarray:
        return (((x - c[0]) ** 2 + (y - c[1]) ** 2) <= r * r) & (z >= z0) & (z <= z1)

    zs = FOV_MM[2] / 2  # half SI extent
    # ---- spine: vertebral body, canal with cord, posterior elements
    vx = cx + a * u(0.22, 0.32)
    cord_x, cord_r = vx + u(14, 17), u(4.5, 5.5)
    z_bs = -zs + u(40, 55)  # brainstem/cord boundary
    vert_body = cylinder((vx, cy), u(9, 12), z_bs + 10, zs)
    canal = cylinder((cord_x, cy), cord_r + 3, z_bs, zs)
    post = cylinder((cord_x, cy), cord_r + 9, z_bs + 10, zs) & ~canal
    cord = cylinder((cord_x, cy), cord_r, z_bs, zs)
    brainstem = ellipsoid((cord_x - 4, cy, z_bs - u(12, 16)), (u(10, 13), u(11, 14), u(14, 18)))
    # ---- mandible: an anterior U-shaped bony shell in a slab
    mz0 = z_bs + u(0, 10)
    mx, ma, mb = cx - a * 0.05, a * u(0.85, 0.95), b * u(0.70, 0.80)
    rm = np.sqrt(((x - mx) / ma) ** 2 + ((y - cy) / mb) ** 2)
    mandible = (rm <= 1.0) & (rm >= 1.0 - 9.0 / ma) & (x < mx + 8) & (z >= mz0) & (z <= mz0 + u(18, 26))
    # ---- parotids: lateral, behind the mandible's ramus
    pz = z_bs + u(-2, 8)
    pr = (u(11, 15), u(8, 11), u(15, 20))
    r_par = ellipsoid((cx + u(-4, 4), cy - b * u(0.62, 0.72), pz), pr)  # axis 1 runs right -> left
    l_par = ellipsoid((cx + u(-4, 4), cy + b * u(0.62, 0.72), pz), (pr[0] * u(0.9, 1.1), pr[1], pr[2]))
    # ---- larynx (with airway) and oesophagus
    lz = mz0 + u(40, 55)
    larynx = ellipsoid((cx - a * u(0.40, 0.50), cy, lz), (u(10, 13), u(11, 14), u(16, 22)))
    airway = cylinder((cx - a * 0.42, cy), u(4, 6), -zs + 30, zs) & (z < lz + 10)
    esophagus = cylinder((vx - u(14, 17), cy), u(5, 7), lz - 5, zs)

    inner = r_body <= 1.0 - 5.0 / min(a, b)  # targets stay 5 mm inside the skin
    # ---- targets: PTV70 always, PTV63 / PTV56 per patient; none may reach the cord/brainstem
    d_cord = distance_transform_edt(~cord, sampling=sp).astype(np.float32)
    near_bs = brainstem
    side = 1.0 if rng.random() < 0.5 else -1.0  # primary tumour on the left or right
    ptv70 = ellipsoid((cx + u(-0.35, 0.0) * a, cy + side * b * u(0.0, 0.35), z_bs + u(25, 55)),
                      (u(18, 28), u(18, 30), u(20, 34)))
    ptv70 &= inner & (d_cord > 8.0) & ~near_bs
    ptvs = {"PTV70": ptv70}
    if rng.random() < 0.6:  # ipsilateral nodes at intermediate dose
        p63 = ellipsoid((cx + u(-0.1, 0.2) * a, cy + side * b * u(0.35, 0.6), z_bs + u(35, 75)),
                        (u(12, 18), u(10, 16), u(20, 35)))
        ptvs["PTV63"] = p63 & inner & (d_cord > 6.0) & ~near_bs & ~ptv70
    if rng.random() < 0.7:  # bilateral elective neck
        z0 = z_bs + u(10, 30)
        p56 = np.zeros(shape, bool)
        for s in (-1.0, 1.0):
            c = (cx + u(-0.15, 0.15) * a, cy + s * b * u(0.45, 0.6))
            p56 |= cylinder(c, u(12, 18), z0, z0 + u(60, 90))
        higher = ptv70 | ptvs.get("PTV63", np.zeros(shape, bool))
        ptvs["PTV56"] = p56 & inner & (d_cord > 4.0) & ~near_bs & ~higher
    ptvs = {k: v for k, v in ptvs.items() if v.any()}
    if "PTV70" not in ptvs:  # a tiny grid may lose the ellipsoid: keep one voxel at its centre
        ptvs["PTV70"] = _centre_voxel(shape, (size // 2 - size // 8, size // 2, size // 2))

    structs: dict[str, np.ndarray] = {
        "Brainstem": brainstem & body, "SpinalCord": cord, "RightParotid": r_par & body,
        "LeftParotid": l_par & body, "Esophagus": esophagus & body, "Larynx": larynx & body,
        "Mandible": mandible & body,
    }
    for name, m in structs.items():
        if not m.any():  # coarse grids: keep every OAR present with at least its nearest voxel
            structs[name] = _centre_voxel(shape, _nearest_index(x, y, z, m, name, a, cx, cy, z_bs))
    masks: dict[str, np.ndarray] = {**structs, **ptvs}
    if rng.random() < P_MISSING:
        del masks[_MAY_BE_MISSING[int(rng.integers(len(_MAY_BE_MISSING)))]]

    # ---- CT (HU): soft tissue with noise, fat under the skin, bone, airway, air outside
    ct = (40.0 + 12.0 * rng.standard_normal(shape)).astype(np.float32)
    ct[near_skin] -= 130.0
    bone = vert_body | post | mandible
    ct[bone] = 700.0 + 60.0 * rng.standard_normal(int(bone.sum()))
    ct[airway] = -900.0
    ct[~body] = AIR_HU

    # ---- dose (Gy): an optimised-plan look-alike (see :func:`_plan_dose`)
    dose, dists = _plan_dose(rng, ptvs, structs, body, d_cord, sp)

    # ---- extra ROIs (rings around targets, PRVs around OARs); missing with their base ROI
    for r in rs.rois[len(OPENKBP_OARS) + len(OPENKBP_TARGETS):]:
        _, base, mm = r.name.split("_")
        mm_v = float(mm[:-2])
        if base not in masks:
            continue
        if base not in dists:
            dists[base] = distance_transform_edt(~masks[base], sampling=sp).astype(np.float32)
        d = dists[base]
        if r.name.startswith("Ring_"):
            m = (d > mm_v - 5.0) & (d <= mm_v) & body & ~masks[base]
        else:
            m = (d <= mm_v) & body
        if m.any():
            masks[r.name] = m

    year, month, day = int(rng.integers(2012, 2024)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    meta: dict[str, Any] = {"source": "synth", "seed": int(seed), "size": size,
                            "study_date": f"{year}{month:02d}{day:02d}"}  # DICOM StudyDate style
    return Patient.from_masks(pid or f"synth_{seed}", ct, masks, rs, sp,
                              possible_dose_mask=np.ascontiguousarray(body), dose=dose, meta=meta,
                              geometry=Geometry.openkbp(shape, sp))


#: Target DVH of a plan, as fractions of Rx, before per-patient variation: D95 at Rx (plans are
#: normalised so), D99 a few % below, a median 2-3 % above and a 2 % hot spot 5-7 % above.
_D95, _D50, _HOT = 1.0, 1.025, 0.035
#: Dose-reduction strength of each OAR in the optimised plan (uniform range per patient) and how
#: far (mm) from the targets the sparing reaches its full strength.
_SPARING = {"LeftParotid": (0.03, 0.25), "RightParotid": (0.03, 0.25), "Larynx": (0.2, 0.45),
            "Esophagus": (0.3, 0.55), "Mandible": (0.1, 0.25), "Brainstem": (0.2, 0.4),
            "SpinalCord": (0.2, 0.4)}


def _plan_dose(rng: np.random.Generator, ptvs: dict[str, np.ndarray], structs: dict[str, np.ndarray],
               body: np.ndarray, d_cord: np.ndarray, sp: tuple[float, float, float]
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Dose of an "optimised plan" on the phantom, and each PTV's distance map (mm).

    Outside the targets: each target's Rx falling off with distance (a steep and a shallow
    exponential), lowered around every OAR (smoothed OAR masks times a per-patient strength), the
    more the farther the OAR is from the targets (an OAR next to a PTV cannot be spared), the cord
    kept below ~40-44 Gy with a steep gradient. Inside each target: voxel doses follow a per-patient
    DVH (D95 at Rx, D99 a few % lower, median and hot spot above) assigned by rank, coldest where a
    voxel is near the target's edge or near the cord/brainstem; the D99 deficit grows with the
    target's proximity to the cord/brainstem (the coverage-sparing trade-off of a real plan).
    """
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    shape = body.shape
    fall, tail, share, shoulder = u(8.0, 12.0), u(45.0, 65.0), u(0.4, 0.55), u(2.0, 4.0)
    noise = _smooth_noise(rng, shape)
    order = sorted(ptvs, key=lambda n: OPENKBP_RX[n])  # low to high Rx
    dists = {n: distance_transform_edt(~ptvs[n], sampling=sp).astype(np.float32) for n in order}
    # the high-dose region hugs each target for a few mm (shoulder), then falls off steeply, then slowly
    spill = {n: (OPENKBP_RX[n] * (share * np.exp(-np.maximum(dists[n] - shoulder, 0.0) / fall)
                                  + (1 - share) * np.exp(-dists[n] / tail))).astype(np.float32)
             for n in order}
    dose = np.zeros(shape, np.float32)
    for n in order:
        np.maximum(dose, spill[n], out=dose)
    in_ptv = np.zeros(shape, bool)
    for m in ptvs.values():
        in_ptv |= m
    d_ptv = distance_transform_edt(~in_ptv, sampling=sp).astype(np.float32)
    reach = u(8.0, 14.0)
    keep = np.ones(shape, np.float32)
    for name, (lo, hi) in _SPARING.items():
        w = gaussian_filter(structs[name].astype(np.float32), sigma=[5.0 / s for s in sp])
        w /= max(float(w.max()), 1e-6)
        keep *= 1.0 - u(lo, hi) * w * (1.0 - np.exp(-d_ptv / reach))
    dose *= keep * (1.0 + 0.03 * noise)
    dose = gaussian_filter(dose, sigma=0.6)
    # ---- inside the targets: the plan's DVH, voxels ranked by coldness
    crit = structs["SpinalCord"] | structs["Brainstem"]
    d_crit = distance_transform_edt(~crit, sampling=sp).astype(np.float32)
    for n in order:
        m = ptvs[n]
        rx = OPENKBP_RX[n]
        d_in = distance_transform_edt(np.pad(m, 1), sampling=sp)[1:-1, 1:-1, 1:-1][m]
        near = float(np.exp(-d_crit[m].min() / 12.0))  # 1 touching the cord/brainstem, ~0 far
        d95 = _D95 + float(np.clip(0.006 * rng.standard_normal(), -0.012, 0.012)) - 0.02 * near
        d99 = d95 - u(0.03, 0.08) - 0.08 * near
        d98 = d95 - 0.6 * (d95 - d99)
        d50 = _D50 + u(-0.008, 0.008)
        d2 = d50 + _HOT + u(-0.01, 0.015)
        pts = [(0.0, d99 - u(0.01, 0.04)), (1.0, d99), (2.0, d98), (5.0, d95), (50.0, d50),
               (98.0, d2), (100.0, d2 + 0.01)]
        cold = np.exp(-d_in / 5.0) + 1.5 * np.exp(-d_crit[m] / 10.0) + 0.25 * noise[m]
        rank = np.empty(cold.size, np.float64)
        rank[np.argsort(-cold, kind="stable")] = np.linspace(0.0, 100.0, cold.size) if cold.size > 1 else 50.0
        inside = rx * np.interp(rank, [p[0] for p in pts], [p[1] for p in pts])
        higher = [spill[h][m] for h in order if OPENKBP_RX[h] > rx]
        dose[m] = np.maximum.reduce([inside.astype(np.float32), *higher])
    np.minimum(dose, u(38.0, 42.0) + 4.0 * d_cord, out=dose)  # cord below ~40-44 Gy, steep gradient
    dose[~body] = 0.0
    np.maximum(dose, 0.0, out=dose)
    return dose, dists


def _centre_voxel(shape: tuple[int, ...], idx: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(int(np.clip(i, 0, s - 1)) for i, s in zip(idx, shape, strict=True))] = True
    return m


def _nearest_index(x, y, z, m, name, a, cx, cy, z_bs) -> tuple[int, int, int]:
    """Voxel index nearest to a structure's nominal centre (used when a coarse grid misses it)."""
    nominal = {"SpinalCord": (cx + a * 0.27 + 15, cy, z_bs + 40), "Brainstem": (cx + a * 0.27, cy, z_bs - 14),
               "Larynx": (cx - a * 0.45, cy, z_bs + 50), "Esophagus": (cx + a * 0.27 - 15, cy, z_bs + 70),
               "Mandible": (cx - a * 0.85, cy, z_bs + 15), "RightParotid": (cx, cy - 40, z_bs),
               "LeftParotid": (cx, cy + 40, z_bs)}[name]
    return (int(np.argmin(np.abs(x.ravel() - nominal[0]))), int(np.argmin(np.abs(y.ravel() - nominal[1]))),
            int(np.argmin(np.abs(z.ravel() - nominal[2]))))


def patient_seed(seed: int, i: int) -> int:
    """Seed of patient ``i`` in a cohort drawn with ``seed`` (independent streams per patient)."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def iter_cohort(n: int, seed: int = 0, size: int = 64, extra_rois: int = 0):
    """Yield the patients of :func:`make_cohort` one at a time (for writing large cohorts)."""
    if n < 1:
        raise InputError(f"a cohort needs at least 1 patient, got {n}")
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    for i in range(n):
        yield make_patient(patient_seed(seed, i), size=size, pid=f"synth_{i:03d}", extra_rois=extra_rois)


def make_cohort(n: int, seed: int = 0, size: int = 64, extra_rois: int = 0) -> list[Patient]:
    """``n`` patients ``synth_000``, ``synth_001``, ... sharing one RoiSet; deterministic in ``seed``."""
    return list(iter_cohort(n, seed, size, extra_rois))
