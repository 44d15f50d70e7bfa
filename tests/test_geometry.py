"""Geometry: transforms checked against hand-written coordinates, reorientation against numpy, and
the OpenKBP convention against the anatomy of the sample patients."""


import numpy as np
import pytest

from dosepred import Patient
from dosepred.geometry import Geometry, GeometryError, reorient, unreorient
from dosepred.io import cache as cache_io
from dosepred.io import openkbp
from dosepred.synth import make_patient


def test_openkbp_convention_by_hand():
    g = Geometry.openkbp((128, 128, 128), (4.0, 3.0, 2.5))
    assert g.describe() == "A->P, R->L, S->I"
    assert g.axis_letters() == "PLI"
    # one step along axis 0 moves 4 mm posterior (+y), axis 1 3 mm left (+x), axis 2 2.5 mm down (-z)
    p0 = g.to_patient([0, 0, 0])
    assert np.allclose(g.to_patient([1, 0, 0]) - p0, [0, 4, 0])
    assert np.allclose(g.to_patient([0, 1, 0]) - p0, [3, 0, 0])
    assert np.allclose(g.to_patient([0, 0, 1]) - p0, [0, 0, -2.5])
    assert np.allclose(g.centre((128, 128, 128)), 0)
    assert g.axis_along("LR") == 1 and g.axis_along("AP") == 0 and g.axis_along("SI") == 2


@pytest.mark.parametrize("turn", [45.0, -45.0, 135.0])
def test_axes_at_45_degrees_still_name_three_anatomical_axes(turn):
    """An in-plane rotation by exactly 45 degrees ties two LPS axes for two array axes; the letters
    must still name three distinct axes (the assignment with the largest cosines), and axis_along
    must agree with them (it decides the flip axis)."""
    c, s = np.cos(np.radians(turn)), np.sin(np.radians(turn))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    rot[:2, :2] = np.sign(rot[:2, :2]) * np.sqrt(0.5)  # exact ties
    g = Geometry([0, 0, 0], rot, (2.0, 2.0, 3.0))
    letters = g.axis_letters()
    assert sorted("".join(sorted(letters)).translate(str.maketrans("LRAPSI", "xxyyzz"))) == ["x", "y", "z"]
    assert letters[2] == "S"
    for anat, fam in (("LR", "LR"), ("AP", "AP"), ("SI", "SI")):
        assert letters[g.axis_along(anat)] in fam
    assert "~" in g.describe()


def test_dicom_axial_head_first_supine():
    # IOP (1,0,0, 0,1,0): rows run to the patient's left, columns posterior; slices ascend towards head
    g = Geometry.from_dicom([-250, -250, -100], [1, 0, 0, 0, 1, 0], (3.0, 0.98, 0.98))
    assert g.describe() == "I->S, A->P, R->L"
    assert np.allclose(g.to_patient([2, 10, 20]), [-250 + 20 * 0.98, -250 + 10 * 0.98, -100 + 6])
    with pytest.raises(GeometryError, match="perpendicular"):
        Geometry.from_dicom([0, 0, 0], [1, 0, 0, 1, 0, 0], (1, 1, 1))
    with pytest.raises(GeometryError, match="unit"):
        Geometry.from_dicom([0, 0, 0], [2, 0, 0, 0, 1, 0], (1, 1, 1))


def test_affine_round_trips_and_ras():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    g = Geometry(rng.normal(size=3) * 50, q, (1.5, 2.0, 3.0))
    assert Geometry.from_affine(g.affine).same_as(g, 1e-9, 1e-12)
    assert Geometry.from_ras_affine(g.ras_affine).same_as(g, 1e-9, 1e-12)
    ras = g.ras_affine
    assert np.allclose(ras[0], -g.affine[0]) and np.allclose(ras[2], g.affine[2])
    idx = rng.uniform(0, 50, size=(7, 3))
    assert np.allclose(g.to_index(g.to_patient(idx)), idx)
    assert Geometry.from_dict(g.to_dict()) == g


def test_degenerate_rejected():
    with pytest.raises(GeometryError, match="degenerate"):
        Geometry(np.zeros(3), np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1.0]]), (1, 1, 1))
    with pytest.raises(GeometryError, match="positive"):
        Geometry(np.zeros(3), np.eye(3), (1, 0, 1))


@pytest.mark.parametrize("target", ["LPS", "LSP", "PLS", "RAI", "PLI", "SAL", "IRP"])
def test_reorientation_keeps_every_voxel_in_place(target):
    rng = np.random.default_rng(1)
    shape = (5, 6, 7)
    g = Geometry.openkbp(shape, (2.0, 3.0, 4.0))
    arr = rng.normal(size=shape)
    perm, flips = g.permutation_to(target)
    out = reorient(arr, perm, flips)
    g2 = g.reoriented(perm, flips, shape)
    assert g2.axis_letters() == target
    # every voxel of the new array sits at the same patient point as the old voxel with that value
    for new_idx in [(0, 0, 0), tuple(s - 1 for s in out.shape), (1, 2, 3)]:
        pt = g2.to_patient(new_idx)
        old = np.rint(g.to_index(pt)).astype(int)
        assert out[new_idx] == arr[tuple(old)]
    assert np.array_equal(unreorient(out, perm, flips), arr)


def test_patient_reoriented_round_trip():
    p = make_patient(3, size=16)
    assert p.geometry.axis_letters() == "PLI" and "geometry" not in p.meta  # set explicitly by synth
    q = p.reoriented("SAL")
    assert q.geometry.axis_letters() == "SAL"
    lp = np.argwhere(q.mask("LeftParotid")).mean(0)
    rp = np.argwhere(q.mask("RightParotid")).mean(0)
    assert q.geometry.to_patient(lp)[0] > q.geometry.to_patient(rp)[0]  # left parotid at larger x
    back = q.reoriented("PLI")
    assert back.geometry.same_as(p.geometry, 1e-9)
    for a, b in [(back.ct, p.ct), (back.roi_codes, p.roi_codes), (back.dose, p.dose)]:
        assert np.array_equal(a, b)


def test_patient_without_geometry_is_openkbp_and_flagged():
    p = Patient("x", np.zeros((4, 5, 6), np.int16), np.zeros((4, 5, 6), np.uint8),
                make_patient(0, size=8).roi_set, (1, 2, 3))
    assert p.geometry.describe() == "A->P, R->L, S->I" and p.meta["geometry"] == "assumed"
    with pytest.raises(ValueError, match="spacing"):
        Patient("x", np.zeros((4, 5, 6), np.int16), np.zeros((4, 5, 6), np.uint8),
                make_patient(0, size=8).roi_set, (1, 2, 3), geometry=Geometry.openkbp((4, 5, 6), (1, 1, 1)))


def test_cache_keeps_geometry(tmp_path):
    p = make_patient(1, size=12).reoriented("SRA")
    g = Geometry(np.array([10.0, -20.0, 33.5]), p.geometry.direction, p.geometry.spacing)
    p = Patient(p.id, p.ct, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                {}, g)
    c = cache_io.write_cache([p], tmp_path / "c")
    assert c.info["version"] == 3
    q = c.load(p.id)
    assert q.geometry == g


def test_openkbp_anatomy_and_export_from_other_layout(sample_dir, tmp_path):
    for f in openkbp.patient_folders(sample_dir):
        p = openkbp.read_patient(f)
        g = p.geometry
        c = {r: g.to_patient(np.argwhere(p.mask(r)).mean(0)) for r in p.present_rois}
        assert c["Brainstem"][2] > c["SpinalCord"][2]  # superior: larger z
        assert c["Mandible"][1] < c["SpinalCord"][1]  # anterior: smaller y
        assert c["LeftParotid"][0] > c["RightParotid"][0]  # patient's left: larger x
    # a patient stored in another layout is written back in the OpenKBP layout, byte for byte
    p = openkbp.read_patient(openkbp.patient_folders(sample_dir)[0])
    openkbp.write_patient(p.reoriented("ILA"), tmp_path / "out")
    for name in ("ct.csv", "dose.csv", "possible_dose_mask.csv", "Brainstem.csv"):
        assert (tmp_path / "out" / p.id / name).read_bytes() == (sample_dir / p.id / name).read_bytes()
