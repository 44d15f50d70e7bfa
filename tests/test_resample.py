"""Resampling between grids, checked against reorientation (exact) and hand-made volumes."""

import numpy as np

from dosepred.geometry import Geometry
from dosepred.resample import grid_with_spacing, resample, resample_mask, resample_patient
from dosepred.synth import make_patient


def test_identity_and_permutation_are_exact():
    rng = np.random.default_rng(0)
    shape = (6, 7, 8)
    g = Geometry(np.array([5.0, -3.0, 12.0]), np.eye(3), (2.0, 3.0, 4.0))
    arr = rng.normal(size=shape).astype(np.float32)
    assert np.allclose(resample(arr, g, g, shape), arr, atol=1e-6)
    perm, flips = g.permutation_to("SAL")
    g2 = g.reoriented(perm, flips, shape)
    from dosepred.geometry import reorient
    want = reorient(arr, perm, flips)
    assert np.allclose(resample(arr, g, g2, want.shape), want, atol=1e-5)


def test_linear_field_is_reproduced_on_a_finer_grid():
    # a dose linear in patient x is reproduced exactly by trilinear interpolation inside the grid
    shape = (10, 10, 10)
    g = Geometry.openkbp(shape, (4.0, 4.0, 3.0))
    x = g.to_patient(np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1))[..., 0]
    fine, fshape = grid_with_spacing(g, shape, (2.0, 2.0, 1.5))
    assert fshape == (20, 20, 20)
    assert np.allclose(fine.centre(fshape), g.centre(shape))
    out = resample(x.astype(np.float32), g, fine, fshape)
    fx = fine.to_patient(np.stack(np.meshgrid(*[np.arange(s) for s in fshape], indexing="ij"), -1))[..., 0]
    fidx = np.stack(np.meshgrid(*[np.arange(s) for s in fshape], indexing="ij"), -1)
    src_idx = g.to_index(fine.to_patient(fidx))
    inside = np.all((src_idx >= 0) & (src_idx <= 9), axis=-1)  # inside the source voxel centres
    assert np.allclose(out[inside], fx[inside], atol=1e-4)


def test_small_structure_survives_downsampling():
    shape = (16, 16, 16)
    g = Geometry.openkbp(shape, (1.0, 1.0, 1.0))
    m = np.zeros(shape, bool)
    m[7, 7, 7] = True  # 1 mm^3
    coarse, cshape = grid_with_spacing(g, shape, (4.0, 4.0, 4.0))
    out = resample_mask(m, g, coarse, cshape)
    assert out.sum() >= 1


def test_patient_round_trip_through_a_finer_grid_keeps_masks_and_dose():
    p = make_patient(2, size=24)
    fine, fshape = grid_with_spacing(p.geometry, p.shape, tuple(s / 2 for s in p.spacing))
    q = resample_patient(p, fine, fshape)
    back = resample_patient(q, p.geometry, p.shape)
    for name in p.present_rois:
        a, b = p.mask(name), back.mask(name)
        assert (a ^ b).sum() <= 0.2 * a.sum() + 2, name
    assert abs(float(back.dose.mean()) - float(p.dose.mean())) < 0.05 * float(p.dose.mean())


def test_separable_trilinear_matches_scipy():
    """Diagonal maps run as three 1-D numpy passes: the same values as scipy's affine_transform
    (trilinear, constant and nearest edges), on grids finer, coarser and mixed."""
    from scipy.ndimage import affine_transform

    from dosepred.resample import index_map

    rng = np.random.default_rng(3)
    shape = (30, 41, 23)
    g = Geometry(np.array([3.0, -2.0, 5.0]), np.eye(3)[:, [2, 0, 1]], (1.0, 0.7, 2.0))
    arr = rng.normal(size=shape).astype(np.float32)
    for sp in [(3.0, 2.0, 1.0), (0.5, 0.5, 3.0), (2.7, 2.7, 3.3)]:
        dst, dshape = grid_with_spacing(g, shape, sp)
        dst = Geometry(dst.origin + np.array([0.3, -0.7, 1.1]), dst.direction, dst.spacing)  # off-centre
        a, b = index_map(g, dst)
        for mode in ("constant", "nearest"):
            want = affine_transform(arr, np.diag(a), offset=b, output_shape=dshape, order=1, mode=mode,
                                    cval=-7, prefilter=False)
            got = resample(arr, g, dst, dshape, 1, cval=-7, mode=mode)
            np.testing.assert_allclose(got, want, atol=1e-5)
