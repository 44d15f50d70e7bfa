"""The body taken from the CT of a patient without a body contour (geometry.ct_body / body_from_ct):
devices in the CT (a couch top under the back, apart or touching, a headrest, stray voxels, a wire)
are not body, every piece of the patient is; checked against the patient drawn by hand (numpy)."""

import warnings

import numpy as np
import pytest

from dosepred import Patient, Roi, RoiSet
from dosepred.geometry import Geometry, body_from_ct, ct_body

SP = (2.0, 2.0, 3.0)  # mm: OpenKBP axes, axis 0 A->P (the couch is at high axis-0 indices), axis 2 S->I
SHAPE = (100, 140, 24)


def _patient_ct() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """An elliptic trunk (soft tissue, 0 HU; half-axes 50 mm A-P, 90 mm L-R) with an airway
    (-1000 HU, radius 8 mm) in air (-1000 HU); ``(ct, the trunk filled, (back row, trunk columns' span))``."""
    i, j = np.mgrid[:SHAPE[0], :SHAPE[1]]
    trunk = ((i - 45) * SP[0] / 50.0) ** 2 + ((j - 70) * SP[1] / 90.0) ** 2 <= 1.0
    airway = ((i - 40) * SP[0]) ** 2 + ((j - 70) * SP[1]) ** 2 <= 8.0 ** 2
    ct = np.full(SHAPE, -1000, np.int16)
    ct[trunk & ~airway] = 0
    body = np.repeat(trunk[..., None], SHAPE[2], 2)
    return ct, body, (int(np.nonzero(trunk.any(1))[0].max()), 0)


def _geom() -> Geometry:
    return Geometry.openkbp(SHAPE, SP)


def _old_body(ct: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.stack([ndimage.binary_fill_holes(ct[..., k] > -500) for k in range(ct.shape[2])], -1)


def test_the_patient_alone_is_its_body():
    ct, body, _ = _patient_ct()
    got, words = ct_body(ct, _geom())
    np.testing.assert_array_equal(got, body)  # the airway filled, as before
    assert words == ""
    np.testing.assert_array_equal(body_from_ct(ct, _geom()), body)


@pytest.mark.parametrize("gap_mm, thick_mm, foam", [(2, 16, False), (6, 20, False), (10, 12, False),
                                                    (6, 20, True)])
def test_a_couch_below_the_back_stray_voxels_and_a_wire_are_not_body(gap_mm, thick_mm, foam):
    """A couch top a few mm under the back, as wide as the field (a carbon-fibre board: two 4 mm sheets
    around a foam core, -900 HU, when ``foam``), 300 stray 1000 HU voxels and a wire outside the patient:
    all of it was body (CT > -500 HU, holes filled: the foam core too), 60-130 % more voxels than the
    patient for a 2-cm board. Now the body is the patient to the voxel, and the words say what went."""
    ct, body, (back, _) = _patient_ct()
    lo = back + 1 + gap_mm // 2
    hi = lo + thick_mm // 2
    ct[lo:hi, 5:135, :] = 200
    if foam:
        ct[lo + 2:hi - 2, 7:133, :] = -900
    rng = np.random.default_rng(0)
    from scipy import ndimage

    air = np.argwhere(~ndimage.binary_dilation(_old_body(ct), iterations=3))  # not touching the patient
    stray = air[rng.choice(len(air), 300, replace=False)]
    ct[tuple(stray.T)] = 1000
    ct[2, 10:60, 5] = 3000  # a wire
    old = _old_body(ct)
    assert old[lo:hi].sum() >= 130 * SHAPE[2] * (hi - lo)  # the case under test: the couch was body, foam too
    np.testing.assert_array_equal(body_from_ct(ct, _geom()), body)
    got, words = ct_body(ct, _geom())
    np.testing.assert_array_equal(got, body)
    removed = int(((ct > -500) & ~body).sum())
    assert f"thinner than 24 mm apart from the patient ({removed} voxels, {removed * 0.012:.1f} ml" in words
    assert "thin part" not in words


def test_a_couch_touching_the_back_keeps_only_what_lies_under_the_patient():
    """A 16 mm board touching the back, 260 mm wide under a 180 mm wide patient: its wings (beyond the
    patient by more than DEVICE_MM) are removed, the patient is whole."""
    ct, body, (back, _) = _patient_ct()
    ct[back + 1:back + 9, 5:135, :] = 200
    got, words = ct_body(ct, _geom())
    assert not (body & ~got).any()  # nothing of the patient lost
    extra = got & ~body
    cols = np.nonzero(body.any((0, 2)))[0]
    extra_cols = np.nonzero(extra.any((0, 2)))[0]
    assert extra_cols.min() >= cols.min() - 12 and extra_cols.max() <= cols.max() + 12  # 24 mm each side
    assert extra.sum() < 0.6 * (ct[back + 1:back + 9] > -500).sum()  # was all of it
    assert "2 thin part(s) of 50 ml or more joined to it" in words  # the two wings


def test_a_patient_in_two_pieces_keeps_both():
    """An arm (a cylinder of 25 mm radius, 8 mm of air from the trunk) and a small island of 15 mm radius
    on 6 slices (a shoulder at the edge of the field) are the patient: kept."""
    ct, body, _ = _patient_ct()
    i, j = np.mgrid[:SHAPE[0], :SHAPE[1]]
    arm = ((i - 45) * SP[0]) ** 2 + ((j - 70 - (90 + 8 + 25) // 2) * SP[1]) ** 2 <= 25.0 ** 2
    island = ((i - 45) * SP[0]) ** 2 + ((j - 70 + (90 + 8 + 16) // 2) * SP[1]) ** 2 <= 15.0 ** 2
    ct[arm, :] = 20
    ct[island, 18:] = 20
    want = body | arm[..., None]
    want[island, 18:] = True
    got, words = ct_body(ct, _geom())
    np.testing.assert_array_equal(got, want)
    assert words == ""


def test_a_patient_predicted_without_a_mask_is_told_what_was_removed():
    """predict's with_ct_body: the note names the devices taken out of the body."""
    from dosepred.predict import RoiNote, with_ct_body

    ct, body, (back, _) = _patient_ct()
    ct[back + 4:back + 12, 5:135, :] = 200
    p = Patient.from_masks("couch", ct.astype(np.float32), {"PTV70": _ptv()},
                           RoiSet((Roi("PTV70", "target", 70.0),)), SP, None, None, {}, geometry=_geom())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        q = with_ct_body(p)
    np.testing.assert_array_equal(q.possible_dose_mask, body)
    [note] = [str(x.message) for x in w if issubclass(x.category, RoiNote)]
    assert ("devices removed (couch, headrest, immobilisation, markers or noise): 1 piece(s) thinner than "
            f"24 mm apart from the patient ({8 * 130 * SHAPE[2]} voxels, {8 * 130 * SHAPE[2] * 0.012:.1f} ml)"
            ) in note, note


def _ptv() -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[40:50, 65:75, 8:16] = True
    return m
