"""Orientation of the report's views comes from the patient geometry, not from the array order."""

import re

import numpy as np
import pytest

from dosepred.geometry import Geometry
from dosepred.patient import Patient, RoiSet
from dosepred.report.views import Panel, ViewRenderer, orientations


def _patient(direction, shape=(24, 28, 32), spacing=(2.0, 2.5, 3.0)) -> Patient:
    """A body of soft tissue with a bright marker at the patient's right, anterior, superior corner of
    the target, and a target in the middle; placed by ``direction``."""
    g = Geometry.centred(shape, spacing, direction)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    pts = g.to_patient(idx)  # LPS mm
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    ct = np.where(np.abs(x) < 25, 40, -1000) * (np.abs(y) < 25) * (np.abs(z) < 30)
    ct = np.where((x < -8) & (x > -18) & (y < -8) & (y > -18) & (np.abs(z) < 5), 1500, ct)  # right, anterior
    target = (np.abs(x) < 6) & (np.abs(y) < 6) & (np.abs(z) < 6)
    rs = RoiSet.from_dicts([{"name": "PTV", "kind": "target", "prescription": 60.0}])
    dose = np.where(target, 60.0, 5.0).astype(np.float32)
    return Patient.from_masks("t", ct.astype(np.int16), {"PTV": target}, rs, spacing, dose=dose, geometry=g)


DIRECTIONS = {
    "openkbp (A->P, R->L, S->I)": [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]],
    "dicom (I->S, A->P, R->L)": [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
    "flipped (L->R, P->A, I->S)": [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_views_follow_radiology_convention(name):
    p = _patient(DIRECTIONS[name])
    letters = {o.name: o.letters for o in orientations(p)}
    assert letters == {"axial": ("A", "P", "R", "L"), "coronal": ("S", "I", "R", "L"),
                       "sagittal": ("S", "I", "A", "P")}
    r = ViewRenderer(p, [Panel("plan", p.dose)], mm_per_px=1.0, margin_mm=40)
    ax = next(o for o in orientations(p) if o.name == "axial")
    j = r._to_resampled(ax.slice_axis, r.point[ax.slice_axis])
    ct = r.ct_slice(ax, j)
    rows, cols = np.nonzero(ct > 1000)
    # the right-anterior marker sits in the top-left quadrant of the axial image
    assert rows.mean() < ct.shape[0] / 2 and cols.mean() < ct.shape[1] / 2
    # square pixels: the body (50 x 50 mm) is as wide as it is tall (an aspect error would be >= 10 px)
    body = ct > 0
    h = np.nonzero(body.any(axis=1))[0]
    w = np.nonzero(body.any(axis=0))[0]
    assert abs((h[-1] - h[0]) - (w[-1] - w[0])) <= 8  # one voxel of blur (3 mm) at each edge
    views = r.views()
    assert [v["name"] for v in views] == ["axial", "coronal", "sagittal"]
    assert all(v["images"][v["start"]].startswith("data:image/png;base64,") for v in views)


def test_difference_dead_zone_leaves_small_differences_uncoloured():
    p = _patient(DIRECTIONS["openkbp (A->P, R->L, S->I)"])
    d = np.full(p.shape, 0.5, dtype=np.float32)  # everywhere below the 1 Gy dead zone
    r = ViewRenderer(p, [Panel("plan", p.dose), Panel("diff", d, "diff")], mm_per_px=1.0)
    ax = orientations(p)[0]
    img = r.render(ax, r._to_resampled(ax.slice_axis, r.point[ax.slice_axis]))
    w = (img.shape[1] - 4) // 2
    diff_tile = img[:, w + 4:].astype(int)
    ct_only = diff_tile[(diff_tile[..., 0] == diff_tile[..., 1]) & (diff_tile[..., 1] == diff_tile[..., 2])]
    # apart from contours and letters the panel is grey (CT only)
    assert ct_only.shape[0] > 0.8 * diff_tile.shape[0] * diff_tile.shape[1]


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_views_go_through_the_chosen_point(name):
    p = _patient(DIRECTIONS[name])
    point_mm = np.array([6.0, -9.0, 12.0])  # LPS mm
    r = ViewRenderer(p, [Panel("plan", p.dose)], point=p.geometry.to_index(point_mm), mm_per_px=1.0)
    labels = {v["name"]: v["labels"][v["start"]] for v in r.views()}
    got = {k: float(v.split("=")[1].split()[0]) for k, v in labels.items()}
    assert [labels[v][0] for v in ("axial", "coronal", "sagittal")] == ["z", "y", "x"]
    for view, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        assert abs(got[view] - point_mm[axis]) <= 1.0  # within half a resampled pixel + rounding


def test_slices_equal_cuts_of_the_whole_box_resampled_by_scipy():
    """Only the slices shown are resampled; each must be the cut of the whole box zoomed by scipy
    (linear, grid mode, edge values) for CT and doses, and of the nearest-index ROI codes."""
    from scipy.ndimage import zoom

    p = _patient(DIRECTIONS["openkbp (A->P, R->L, S->I)"], shape=(20, 26, 30), spacing=(3.0, 2.5, 2.0))
    dose = np.random.default_rng(0).random(p.shape).astype(np.float32) * 60
    r = ViewRenderer(p, [Panel("plan", dose)], mm_per_px=1.3, margin_mm=100)
    bx = tuple(slice(a, b) for a, b in r.box)
    ct = zoom(p.ct[bx].astype(np.float32), r._z, order=1, mode="nearest", grid_mode=True)
    dz = zoom(dose[bx], r._z, order=1, mode="nearest", grid_mode=True)
    assert ct.shape == tuple(r.shape)
    mask = p.mask("PTV")[bx]
    near = [np.minimum(((np.arange(n) + 0.5) / z).astype(int), m - 1)
            for n, z, m in zip(r.shape, r._z, mask.shape, strict=True)]
    mz = mask[np.ix_(*near)]
    for o in orientations(p):
        for j in (0, r.shape[o.slice_axis] // 3, r.shape[o.slice_axis] - 1):
            sl = [slice(None)] * 3
            sl[o.slice_axis] = j
            want_ct, want_d, want_m = (r._orient(v[tuple(sl)], o) for v in (ct, dz, mz))
            np.testing.assert_allclose(r.ct_slice(o, j), want_ct, atol=1e-3)
            np.testing.assert_allclose(r.dose_slice(0, o, j), want_d, atol=1e-4)
            assert np.array_equal(r.masks_slice(o, j)["PTV"], want_m)


# ------------------------------------------------------------------------------ colours
def _lab(hex_colour: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB colour ``#rrggbb``, by the textbook formulas."""
    c = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ lin
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def _contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two sRGB colours."""
    def lum(h: str) -> float:
        c = np.array([int(h[i:i + 2], 16) for i in (1, 3, 5)], dtype=float) / 255.0
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return float(lin @ [0.2126, 0.7152, 0.0722])
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


#: Colours closer than this (CIELAB distance) read as the same colour: the cyan 56 Gy isodose line and
#: the cyan PTV70 contour of issue 25 were 26 apart.
MIN_DELTA_E = 30.0


def test_isodose_colours_are_distinct_from_each_other_and_every_roi_and_readable():
    """The legend as shown: every isodose colour differs from every ROI colour (15 ROIs, as many as
    the palette has before it repeats) and from the other isodose colours, and stands out from the
    background it is shown on; the image draws each isodose line in its legend colour."""
    from dosepred.report.views import legend_html

    shape, spacing = (40, 40, 40), (2.0, 2.0, 2.0)
    g = Geometry.centred(shape, spacing, np.eye(3))
    r2 = sum(((np.arange(n) - n / 2 + 0.5) ** 2).reshape([-1 if k == a else 1 for k in range(3)])
             for a, n in enumerate(shape))
    rx = [70.0, 63.0, 56.0]
    oars = [f"OAR{k}" for k in range(12)]
    rs = RoiSet.from_dicts([{"name": n, "kind": "oar"} for n in oars]
                           + [{"name": f"PTV{v:g}", "kind": "target", "prescription": v} for v in rx])
    masks = {f"PTV{v:g}": r2 < (6 + 4 * k) ** 2 for k, v in enumerate(rx)}
    for k, n in enumerate(oars):  # small cubes around the targets
        m = np.zeros(shape, bool)
        m[2 + 3 * k:4 + 3 * k, 2:5, 18:22] = True
        masks[n] = m
    dose = np.clip(75.0 - 1.2 * np.sqrt(r2), 0, None).astype(np.float32)  # 70, 63, 56 Gy at r = 4, 10, 16
    p = Patient.from_masks("c", np.full(shape, 40, np.int16), masks, rs, spacing, dose=dose, geometry=g)
    r = ViewRenderer(p, [Panel("plan", dose)], mm_per_px=2.0)
    html = legend_html(r)
    rois = dict(re.findall(r"class='sw' style='background:(#[0-9a-f]{6})'></span>([^ <]+)", html))
    rois = {name: col for col, name in rois.items()}
    iso = re.findall(r"class='sw iso' style='background:(#[0-9a-f]{6})'><span style='background:"
                     r"(#[0-9a-f]{6})'></span></span>([\d.]+) Gy", html)
    assert sorted(rois) == sorted(rs.names) and [float(v) for _, _, v in iso] == rx
    for _, col, lev in iso:
        for name, rc in rois.items():
            d = np.linalg.norm(_lab(col) - _lab(rc))
            assert d >= MIN_DELTA_E, f"{lev} Gy isodose {col} too close to ROI {name} {rc} ({d:.1f})"
    cols = [c for _, c, _ in iso]
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            assert np.linalg.norm(_lab(cols[i]) - _lab(cols[j])) >= MIN_DELTA_E, (cols[i], cols[j])
    for chip, col, lev in iso:
        assert _contrast(col, chip) >= 3.0, f"{lev} Gy isodose {col} unreadable on {chip}"
    # the image draws each isodose line in its legend colour
    ax = orientations(p)[0]
    img = r.render(ax, r._to_resampled(ax.slice_axis, r.point[ax.slice_axis]))
    present = {"#" + "".join(f"{v:02x}" for v in px) for px in img.reshape(-1, 3)}
    assert set(cols) <= present


def test_slider_runs_the_same_anatomical_way_whatever_the_array_layout():
    """The slices of each view are ordered by their place in the patient, not by the array's: a
    DICOM-ordered (I->S) or flipped grid had its axial slider run towards the head where an OpenKBP
    grid's runs towards the feet (and the coronal and sagittal ones likewise), the same anatomy shown
    in the opposite order. Now every layout runs axial towards I, coronal towards P, sagittal towards L
    (the OpenKBP order), from the same start slice."""
    want = {"axial": (2, -1), "coronal": (1, 1), "sagittal": (0, 1)}  # (LPS axis, sign of the steps)
    seen = []
    for direction in DIRECTIONS.values():
        p = _patient(direction)
        views = ViewRenderer(p, [Panel("plan", p.dose)], mm_per_px=1.0).views()
        got = {}
        for v in views:
            pos = [float(s.split("=")[1].split()[0]) for s in v["labels"]]
            axis, sign = want[v["name"]]
            assert v["labels"][0][0] == "xyz"[axis]
            assert np.all(sign * np.diff(pos) > 0), (v["name"], pos)
            got[v["name"]] = (pos, pos[v["start"]])
        seen.append(got)
    for got in seen[1:]:
        for name, (pos, start) in got.items():
            assert abs(start - seen[0][name][1]) <= 1.1, name  # the same slice, to a resampled pixel
            assert np.allclose(pos, seen[0][name][0], atol=1.1), name
