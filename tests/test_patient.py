"""Patient / RoiSet: validation messages name the patient or ROI; masks, Rx map and copies."""

import re

import numpy as np
import pytest

from dosepred import Patient, Roi, RoiSet
from dosepred import roi as roi_mod
from dosepred.errors import InputError

SHAPE = (4, 5, 6)


def _rs() -> RoiSet:
    return RoiSet((Roi("Cord", "oar"), Roi("PTV70", "target", 70.0), Roi("PTV56", "target", 56.0)))


def _patient(**kw) -> Patient:
    masks = {"Cord": np.zeros(SHAPE, bool), "PTV70": np.zeros(SHAPE, bool)}
    masks["Cord"][0, 0, :] = True
    masks["PTV70"][1:3, 1:3, 1:3] = True
    args = dict(id="pt_7", ct=np.zeros(SHAPE, np.int16), masks=masks, roi_set=_rs(), spacing=(1, 2, 3))
    args.update(kw)
    return Patient.from_masks(**args)


def test_from_masks_records_missing_and_decodes():
    p = _patient()
    assert p.missing_rois == ("PTV56",)
    assert p.present_rois == ("Cord", "PTV70")
    assert p.mask("PTV70").sum() == 8 and not p.mask("PTV56").any()
    assert p.roi_codes.dtype == np.uint8
    assert p.voxel_volume_mm3 == 6.0 and p.voxel_volume_cc == pytest.approx(0.006)
    assert p.possible_dose_mask.all() and p.possible_dose_mask.dtype == bool


def test_prescription_map_takes_highest_target():
    masks = {"Cord": np.zeros(SHAPE, bool), "PTV70": np.zeros(SHAPE, bool), "PTV56": np.zeros(SHAPE, bool)}
    masks["PTV70"][0, 0, 0] = True
    masks["PTV56"][0, 0, :2] = True  # overlaps PTV70 at one voxel
    p = _patient(masks=masks)
    rx = p.prescription_map()
    assert rx[0, 0, 0] == 70 and rx[0, 0, 1] == 56 and rx[1, 1, 1] == 0


@pytest.mark.parametrize("kw, match", [
    (dict(ct=np.zeros((4, 5, 7), np.int16)), r"pt_7: ROI Cord mask shape \(4, 5, 6\) != CT shape"),
    (dict(spacing=(1, 0, 3)), "pt_7: spacing must be three positive"),
    (dict(spacing=(1, -2, 3)), "pt_7: spacing"),
    (dict(spacing=(1, 2)), "pt_7: spacing"),
    (dict(dose=np.zeros((4, 5, 7), np.float32)), r"pt_7: dose shape \(4, 5, 7\) != CT shape \(4, 5, 6\)"),
    (dict(dose=np.full(SHAPE, -1.0)), "pt_7: dose must be >= 0"),
    (dict(dose=np.full(SHAPE, np.nan)), "pt_7: dose contains NaN"),
    (dict(possible_dose_mask=np.ones((4, 5, 7), bool)), "pt_7: possible-dose mask shape"),
])
def test_validation_names_the_patient(kw, match):
    with pytest.raises(ValueError, match=match):
        _patient(**kw)


def test_roi_code_validation_names_the_patient():
    rs = _rs()
    with pytest.raises(ValueError, match="pt_9: CT must be 3-D"):
        Patient("pt_9", np.zeros((4, 5), np.int16), np.zeros((4, 5), np.uint8), rs, (1, 1, 1))
    with pytest.raises(ValueError, match=r"pt_9: ROI codes shape \(4, 5, 5\)"):
        Patient("pt_9", np.zeros(SHAPE, np.int16), np.zeros((4, 5, 5), np.uint8), rs, (1, 1, 1))
    with pytest.raises(ValueError, match="pt_9: ROI codes must be unsigned"):
        Patient("pt_9", np.zeros(SHAPE, np.int16), np.zeros(SHAPE, np.int8), rs, (1, 1, 1))
    with pytest.raises(ValueError, match="pt_9: ROI codes have bits set beyond the 3 ROIs"):
        Patient("pt_9", np.zeros(SHAPE, np.int16), np.full(SHAPE, 8, np.uint8), rs, (1, 1, 1))
    with pytest.raises(ValueError, match=r"pt_9: missing ROIs \['Nope'\]"):
        Patient("pt_9", np.zeros(SHAPE, np.int16), np.zeros(SHAPE, np.uint8), rs, (1, 1, 1),
                missing_rois=("Nope",))
    with pytest.raises(ValueError, match=r"pt_9: ROIs \['Parotid'\] are not in the ROI set"):
        Patient.from_masks("pt_9", np.zeros(SHAPE), {"Parotid": np.zeros(SHAPE, bool)}, rs, (1, 1, 1))


def test_missing_roi_with_voxels_is_rejected():
    codes = np.zeros(SHAPE, np.uint8)
    codes[0, 0, 0] = 1 << 2  # PTV56 has a voxel but is declared missing
    with pytest.raises(ValueError, match="pt_9: ROI PTV56 is recorded missing but has 1 voxel"):
        Patient("pt_9", np.zeros(SHAPE, np.int16), codes, _rs(), (1, 1, 1), missing_rois=("PTV56",))


def test_wider_codes_are_narrowed_to_the_roi_set_dtype():
    codes = roi_mod.encode(np.zeros((3, *SHAPE), bool)).astype(np.uint64)
    p = Patient("pt_1", np.zeros(SHAPE, np.int16), codes, _rs(), (1, 1, 1))
    assert p.roi_codes.dtype == np.uint8


def test_float_ct_is_rounded_to_int16():
    p = _patient(ct=np.full(SHAPE, 40.6))
    assert p.ct.dtype == np.int16 and int(p.ct[0, 0, 0]) == 41
    with pytest.raises(ValueError, match="pt_7: CT contains NaN"):
        _patient(ct=np.full(SHAPE, np.nan))


@pytest.mark.parametrize("rois, match", [
    ((Roi("A"), Roi("B"), Roi("A")), "duplicated: A"),
    ((Roi("Cord", "oar", 45.0),), "ROI Cord: only targets carry a prescription"),
    ((Roi("PTV", "target", 0.0),), "ROI PTV: prescription must be > 0"),
    ((Roi(""),), "non-empty"),
    ((Roi("X", "organ"),), "ROI X: kind must be"),  # type: ignore[arg-type]
    (tuple(Roi(f"R{i}") for i in range(65)), "65 ROIs exceed"),
    # a prescription in cGy was kept: V95% of PTV70 counted the voxels over 6650 Gy (0 %)
    ((Roi("PTV70", "target", 7000.0),), r"ROI PTV70: prescription 7000 Gy is over 200 Gy: in cGy\?"),
    # names, not Roi objects: was AttributeError 'str' object has no attribute 'name'
    (("Brainstem", "PTV70"), r"RoiSet takes Roi objects .* got str 'Brainstem'"),
    ("PTV70", "RoiSet takes a sequence of Roi, got str"),
    ((Roi(" "),), "non-empty"),
    ((Roi(7),), "non-empty strings, got 7"),  # type: ignore[arg-type]
])
def test_roiset_validation(rois, match):
    with pytest.raises(ValueError, match=match):
        RoiSet(rois)


def test_roiset_openkbp_and_dicts_roundtrip():
    rs = RoiSet.openkbp()
    assert rs.names[-3:] == ("PTV56", "PTV63", "PTV70")
    assert rs.prescription("PTV63") == 63.0 and rs.prescription("Brainstem") is None
    assert rs.targets == ("PTV56", "PTV63", "PTV70") and len(rs.oars) == 7
    assert RoiSet.from_dicts(rs.to_dicts()) == rs
    with pytest.raises(KeyError, match="'Cochlea' is not in the ROI set"):
        rs.index("Cochlea")
    assert RoiSet(tuple(Roi(f"R{i}") for i in range(64))).dtype == np.uint64


def test_with_dose_shares_arrays():
    p = _patient()
    q = p.with_dose(np.ones(SHAPE, np.float32))
    assert q.ct is p.ct and q.roi_codes is p.roi_codes and q.dose is not None and p.dose is None


def test_a_patient_without_ct_takes_its_grid_from_the_roi_codes_and_evaluates():
    """``ct=None``: the grid is the ROI codes'; shapes are checked against it; what needs the CT says
    so naming the patient; scoring needs no CT (dose score against numpy)."""
    from dosepred.errors import InputError
    from dosepred.evaluation import evaluate_patient

    p = _patient()
    dose = np.zeros(SHAPE, np.float32)
    dose[1:3, 1:3, 1:3] = 70.0
    dose[0, 0, :] = 10.0
    q = Patient(p.id, None, p.roi_codes, p.roi_set, (1, 2, 3), dose=dose, missing_rois=p.missing_rois)
    assert q.ct is None and q.shape == SHAPE and q.spacing == (1.0, 2.0, 3.0) and q.voxel_volume_mm3 == 6.0
    with pytest.raises(InputError, match="^patient pt_7: no CT .*the report needs the CT$"):
        q.require_ct("the report")
    with pytest.raises(InputError, match=r"patient pt_7: dose shape \(2, 2, 2\) != ROI codes shape"):
        Patient(p.id, None, p.roi_codes, p.roi_set, (1, 2, 3), dose=np.zeros((2, 2, 2), np.float32))
    pred = dose * 0.9
    r = evaluate_patient(q, pred, "openkbp")
    assert r.dose_score == pytest.approx(np.abs(dose - pred).sum() / dose.size)
    assert r.dose_score == evaluate_patient(p.with_dose(dose), pred, "openkbp").dose_score


def test_spacing_is_the_geometrys():
    """``spacing`` builds the geometry when none is given, is checked against a given one, and reads
    back as the geometry's (it cannot drift from it)."""
    from dosepred.errors import InputError
    from dosepred.geometry import Geometry

    p = _patient()
    assert p.spacing == tuple(p.geometry.spacing) == (1.0, 2.0, 3.0)
    g = Geometry.openkbp(SHAPE, (2.0, 2.0, 2.5))
    q = Patient("pt_8", p.ct, p.roi_codes, p.roi_set, geometry=g)
    assert q.spacing == (2.0, 2.0, 2.5) and q.voxel_volume_mm3 == 10.0
    with pytest.raises(InputError, match="pt_8: spacing .* differs from the geometry"):
        Patient("pt_8", p.ct, p.roi_codes, p.roi_set, (1, 2, 3), geometry=g)
    with pytest.raises(InputError, match="pt_8: give the grid's geometry"):
        Patient("pt_8", p.ct, p.roi_codes, p.roi_set)
    with pytest.raises(AttributeError):
        q.spacing = (1.0, 1.0, 1.0)


def test_same_level_is_a_fractionation_s_rounding_not_another_plan():
    """70 Gy and 33 x 2.12 = 69.96 Gy (0.06 %), 70.2 Gy (0.29 %) are one dose level; 69.3 Gy (33 x 2.1, 1 %)
    and 66 Gy are other plans; no prescription matches only no prescription."""
    from dosepred.patient import same_level

    assert same_level(70.0, 69.96) and same_level(69.96, 70.0) and same_level(70.0, 70.2)
    assert same_level(56.0, 56.0) and same_level(None, None)
    assert not same_level(70.0, 69.3) and not same_level(70.0, 66.0) and not same_level(63.0, 59.4)
    assert not same_level(70.0, None) and not same_level(None, 70.0)


@pytest.mark.parametrize("pid", ["../escaped", "HN/001", "..", ".", "", "..\\escaped", "HN\\001",
                                 "p" * 249])  # 249 + len(".nii.gz") > 255 bytes, a file name's most
def test_an_id_that_cannot_name_files_is_refused(pid):
    """A patient's id names its files (<id>.npz, <id>.csv, <id>.nii.gz, <id>/): an id "../escaped"
    (a NIfTI rois.json's or a cache's "id" is free text) made `predict` write ../escaped.nii.gz beside
    the output folder, which stayed empty, and `data import-nifti` a cache whose patient file lay
    outside it; "HN/001" a folder of it. Now an error naming the id."""
    from dosepred.errors import InputError

    with pytest.raises(InputError, match="patient id .*cannot name"):
        _patient(id=pid)


@pytest.mark.parametrize("pid, why", [
    ("HN:001", "':', which no file name on Windows or macOS"), ("pt?7", "'?', which no file name on Windows"),
    *((f"a{c}b", f"{c!r}, which no file name on Windows") for c in '*"<>|\t\n'),
    ("CON", "'CON' is a device name on Windows"), ("nul.1", "'nul' is a device name"),
    ("Com1", "'Com1' is a device"), ("LPT9.nii", "'LPT9' is a device"), ("aux .x", "'aux' is a device"),
    ("pt_7.", "ends in '.', which Windows drops from a file or folder name ('pt_7' would be meant)"),
    ("pt_7 ", "ends in ' '"),
])
def test_an_id_that_cannot_name_files_on_windows_or_macos_is_refused(pid, why):
    """Outputs are shared with Windows and macOS colleagues: an id "HN:001", "CON" or "pt_7." was taken
    (a cache HN:001.npz, CON.npz, a folder pt_7.), whose files cannot be copied there (':' '*' '?' '"' '<'
    '>' '|' and control characters are no part of a Windows name, ':' none of macOS' Finder; CON, PRN,
    AUX, NUL, COM0-9, LPT0-9 are devices whatever the ending; a trailing '.' or ' ' is dropped, so
    "pt_7." is "pt_7"). Now an error naming the id and the rule; clinic ids stay accepted."""
    with pytest.raises(InputError, match=f"patient id {re.escape(repr(pid))} cannot name .*: .*"
                                         + re.escape(why)):
        _patient(id=pid)


@pytest.mark.parametrize("pid", ["12345", "HN-001", "pt.1.2", "M\u00fcller_01", "\u5c71\u7530", "CONTOUR",
                                 "COM10", "nul_", "Pt 7", "_con", "x" * 248])
def test_clinic_ids_are_accepted(pid):
    assert _patient(id=pid).id == pid


def test_a_dose_in_cgy_is_refused():
    """A dose given in cGy (a notebook's own arrays, 7000 for 70 Gy) was taken as Gy: evaluating a
    reference built so against a prediction in Gy gave a dose score of thousands of Gy without a word,
    while every reader and a scored prediction refuse a dose over 1000 Gy."""
    with pytest.raises(InputError, match=r"pt_7: dose reaches 7000 Gy, over 1000 Gy: a dose in cGy"):
        _patient(dose=np.full(SHAPE, 7000.0, np.float32))
    assert float(_patient(dose=np.full(SHAPE, 1000.0)).dose.max()) == 1000.0  # the highest a plan may have
    p = _patient(dose=np.full(SHAPE, 70.0))
    with pytest.raises(InputError, match="over 1000 Gy"):
        p.with_dose(p.dose * 100)


def test_a_roiset_given_a_list_evaluates_like_one_given_a_tuple():
    """RoiSet([Roi(...), ...]) kept the list: the set was unhashable, and evaluate_cohort, which binds
    the protocol once per ROI set, failed with TypeError: unhashable type: 'list'."""
    from dosepred import evaluate_cohort
    rs = RoiSet([Roi("Cord", "oar"), Roi("PTV70", "target", 70.0)])
    masks = {"Cord": np.zeros(SHAPE, bool), "PTV70": np.zeros(SHAPE, bool)}
    masks["Cord"][0] = True
    masks["PTV70"][2:] = True
    dose = np.where(masks["PTV70"], 70.0, 10.0).astype(np.float32)
    p = Patient.from_masks("pt_1", np.zeros(SHAPE, np.int16), masks, rs, (1, 2, 3), dose=dose)
    r = evaluate_cohort([(p, dose + 1.0)], "openkbp")
    assert r.dose_score == pytest.approx(1.0)
    assert rs == RoiSet((Roi("Cord", "oar"), Roi("PTV70", "target", 70.0)))


@pytest.mark.parametrize("spacing", [2.5, "2.5", None])
def test_a_patient_refuses_a_scalar_spacing_in_one_line(spacing):
    """Patient(..., spacing=2.5) and Patient.from_masks(..., 2.5) were TypeError: 'float' object is not
    iterable (a string of three digits was read as three spacings)."""
    ct = np.zeros((3, 4, 5), np.int16)
    rs = RoiSet((Roi("A", "oar"),))
    with pytest.raises(InputError, match="patient p1: .*spacing"):
        Patient.from_masks("p1", ct, {"A": ct > 0}, rs, spacing)
    with pytest.raises(InputError, match="patient p1: .*spacing"):
        Patient("p1", ct, np.zeros(ct.shape, np.uint8), rs, spacing)


@pytest.mark.parametrize("bad, match", [
    (lambda m: np.where(m, 1.0, np.nan), "holds NaN in"),  # NaN outside the ROI: was the whole grid
    (lambda m: m * 0.7 + np.roll(m, 1, axis=2) * 0.3, r"3 different values \(0.3, 0.7, 1\)"),  # resampled
    (lambda m: m * 1 + np.roll(m, 1, axis=0) * 2, "different values"),  # a label map as one ROI
])
def test_a_mask_that_is_not_binary_is_refused(bad, match):
    """A mask given as numbers counted every non-zero voxel: NaN (outside a resampled field of view), the
    partial voxels of a mask resampled with linear interpolation, every label of a label map, all went
    into the ROI without a word (the NIfTI reader refuses such a label file)."""
    m = np.zeros(SHAPE, bool)
    m[1:3, 1:3, 1:3] = True
    with pytest.raises(InputError, match=r"patient pt_7: ROI Cord mask .*" + match):
        _patient(masks={"Cord": bad(m)})
    with pytest.raises(InputError, match=r"patient pt_7: possible-dose mask .*" + match):
        _patient(possible_dose_mask=bad(m))
    # 0/1 and 0/255 of any dtype, and float noise of one value, read as the boolean mask
    for ok in (m.astype(np.uint8) * 255, m.astype(np.int64), m * 1.0, m * (1 + 1e-7 * np.arange(6))):
        p = _patient(masks={"Cord": ok}, possible_dose_mask=ok)
        assert np.array_equal(p.mask("Cord"), m) and np.array_equal(p.possible_dose_mask, m)


def test_an_id_that_is_no_string_is_named_so():
    """Patient(1, ...) (a numeric id from a spreadsheet) was refused as "it is empty"."""
    with pytest.raises(InputError, match=r"patient id 1 cannot name .*: it is not a string but int 1"):
        _patient(id=1)


def test_one_missing_roi_given_as_a_string_is_that_roi():
    """missing_rois="PTV56" was read character by character: "missing ROIs ['P', 'T', 'V', '5', '6'] are
    not in the ROI set"."""
    codes = np.zeros(SHAPE, np.uint8)
    codes[0, 0, 0] = 1  # Cord
    p = Patient("pt_7", np.zeros(SHAPE, np.int16), codes, _rs(), (1, 2, 3), missing_rois="PTV56")
    assert p.missing_rois == ("PTV56",) and p.present_rois == ("Cord", "PTV70")


@pytest.mark.parametrize("scale", [lambda hu: (hu + 1000) / 3000, lambda hu: hu / 1000])
def test_a_normalised_ct_is_refused(scale):
    """A CT given as a network's normalised input (0..1, -1..1) was rounded to int16 HU: 0 and 1 HU,
    water everywhere, so a prediction from it was the dose of no patient, without a word."""
    hu = np.full(SHAPE, -1000.0)
    hu[1:3, 1:4, 1:5] = 40.0
    hu[2, 2, 2] = 1200.0
    with pytest.raises(InputError, match=r"pt_7: CT values lie within .* and are not whole numbers: a "
                                         r"normalised or scaled CT \(0..1, HU/100, HU/1000\)\? the CT "
                                         r"is in HU"):
        _patient(ct=scale(hu))
    assert _patient(ct=hu).ct[2, 2, 2] == 1200  # a float CT in HU reads as before
    assert _patient(ct=np.zeros(SHAPE)).ct.max() == 0  # a water phantom of float zeros


def test_masks_of_one_name_is_that_roi():
    """p.masks("PTV70") iterated the string: UnknownNameError "ROI 'P' is not in the ROI set"."""
    p = _patient()
    got = p.masks("PTV70")
    assert list(got) == ["PTV70"] and np.array_equal(got["PTV70"], p.mask("PTV70"))


@pytest.mark.parametrize("items, match", [
    ([{"name": "PTV70", "kind": "target", "rx": 70}], r"ROI 'PTV70': unknown key\(s\) 'rx'"),
    ([{"roi": "PTV70"}], r'ROI 1: an ROI is a dict with "name"'),
    (["Brainstem"], r"ROI 1: an ROI is a dict with \"name\" .* got 'Brainstem'"),
])
def test_roiset_from_dicts_names_a_key_it_does_not_know(items, match):
    """RoiSet.from_dicts([{"name": "PTV70", "kind": "target", "rx": 70}]) (a hand-written rois.json)
    made PTV70 a target without a prescription without a word; a dict without "name" was KeyError:
    'name', a string TypeError: string indices must be integers."""
    with pytest.raises(InputError, match=match):
        RoiSet.from_dicts(items)
    rs = RoiSet.from_dicts([{"name": "PTV70", "kind": "target", "prescription": 70}])
    assert rs.prescription("PTV70") == 70


def test_a_ct_stored_as_hu_plus_1024_is_refused(sample_dir):
    """OpenKBP's ct.csv holds HU + 1024; read with numpy (as the OpenKBP starter code does) and given as
    the CT it was taken as HU: air at 0 HU and tissue at ~1050 HU, so a prediction saw bone everywhere."""
    from dosepred.io.source import load_patients

    p = next(iter(load_patients(sample_dir)))
    raw = p.ct.astype(np.int32) + 1024  # what ct.csv stores, voxel for voxel
    assert raw.min() >= 0
    with pytest.raises(InputError, match=rf"patient {p.id}: the CT holds no voxel below 0 HU and its tissue "
                                         r"reads \d+ HU .*stored as HU \+ 1024"):
        Patient(p.id, raw, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose)
    q = Patient(p.id, raw - 1024, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose)
    assert np.array_equal(q.ct, p.ct)


def test_from_masks_given_a_list_says_it_takes_a_dict():
    """Patient.from_masks(id, ct, [m1, m2], ...) was ValueError: The truth value of an array with more
    than one element is ambiguous."""
    m = np.zeros(SHAPE, bool)
    with pytest.raises(InputError, match=r"patient pt_7: masks must be a dict ROI name -> mask, got list"):
        _patient(masks=[m, m])


def test_a_ct_with_scanner_air_stored_as_hu_plus_1024_is_refused(sample_dir):
    """DICOM pixels read without their RescaleIntercept hold the air around the head as it was measured
    (about -1000 HU: 24 +- noise stored, not 0 as in OpenKBP's ct.csv). Air is most of a CT's voxels, so
    the median of the non-zero voxels was air's ~27, not tissue's ~1000, and such a CT was taken as HU
    without a word. The tissue is read above the air."""
    from dosepred.io.source import load_patients

    p = next(iter(load_patients(sample_dir)))
    hu = p.ct.astype(np.int32)
    air = hu <= -1000
    hu[air] = np.random.default_rng(0).normal(-1000, 15, int(air.sum())).round().astype(np.int32)
    raw = np.clip(hu + 1024, 0, None)  # unsigned pixels, the rescale intercept -1024 not applied
    assert np.median(raw[raw > 0]) < 100 and air.mean() > 0.5  # air is most of the non-zero voxels
    with pytest.raises(InputError, match=rf"patient {p.id}: the CT holds no voxel below 0 HU and its tissue "
                                         r"reads \d+ HU .*stored as HU \+ 1024"):
        Patient(p.id, raw, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose)


def test_a_ct_in_hu_over_100_is_refused():
    """A CT given in HU/100 (-10..30, a scaled network input) spanned beyond the +-10 of a normalised one
    and was rounded to int16 HU: -10..30 HU, water everywhere, without a word."""
    hu = np.full(SHAPE, -1000.0)
    hu[1:3, 1:4, 1:5] = 40.0
    hu[2, 2, 2] = 1200.0
    assert (hu / 100).max() > NORMALISED  # beyond the +-10 of a normalised CT
    with pytest.raises(InputError, match=r"pt_7: CT values lie within -10..12 and are not whole numbers"):
        _patient(ct=hu / 100)
    assert _patient(ct=np.full(SHAPE, 40.6)).ct.max() == 41  # a constant float CT is a placeholder


NORMALISED = 10.0


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float64])
def test_a_ct_stored_as_hu_plus_32768_is_refused(sample_dir, dtype):
    """Unsigned 16-bit pixels holding HU + 32768 were clipped to int16 on the way in: 32767 HU in every
    voxel above the air's 31768, bone everywhere, and a prediction from it the dose of no patient."""
    from dosepred.io.source import load_patients

    p = next(iter(load_patients(sample_dir)))
    raw = (p.ct.astype(np.int32) + 32768).astype(dtype)
    with pytest.raises(InputError, match=rf"patient {p.id}: the CT holds no voxel below 0 HU and its tissue "
                                         r"reads 3\d{4} HU .*stored as HU \+ 32768"):
        Patient(p.id, raw, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose)


def test_an_8_bit_ct_image_is_refused():
    """A CT saved as an 8-bit image (grey levels 0..255 of a window) was read as 0..255 HU: no air, no
    bone, water and muscle everywhere, without a word."""
    img = np.zeros(SHAPE, np.uint8)
    img[1:3, 1:4, 1:5] = 128
    img[2, 2, 2] = 255
    with pytest.raises(InputError, match=r"pt_7: the CT holds no voxel below 0 HU and none above 255 "
                                         r"\(values 0..255: no air, no fat\): an 8-bit image"):
        _patient(ct=img)
    phantom = np.where(img == 255, 2000, np.where(img == 128, 600, 0)).astype(np.int16)
    assert _patient(ct=phantom).ct.max() == 2000  # a phantom of water and bone without air is no image
    assert _patient(ct=img.astype(np.int16) - 1000).ct.min() == -1000  # with air it is a CT
