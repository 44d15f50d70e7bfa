"""The two input checks every source's patients pass (:func:`dosepred.io.source.checked`) besides the
prescription check: ROIs named for a side lie on that side (:mod:`dosepred.io.side_check`), and a plan
dose has no large high-dose volume far from every contoured target (:mod:`dosepred.io.target_dose_check`).
Small volumes with hand-known centroids and volumes, a cache read through the source, and plan QA's
per-plan notes on OpenKBP sample plans with swapped parotids and with only PTV70 contoured."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dosepred.geometry import Geometry
from dosepred.io import load_patients, write_cache
from dosepred.io.side_check import (
    MIDLINE_MARGIN_MM,
    LateralityWarning,
    check_sides,
    side_findings,
    side_of,
)
from dosepred.io.target_dose_check import LEVEL, MAX_RATIO, TargetDoseWarning, check_target_dose, outside_dose
from dosepred.patient import Patient, Roi, RoiSet


# ------------------------------------------------------------------------------------ sides
@pytest.mark.parametrize(("name", "want"), [
    ("LeftParotid", ("Left", "parotid")), ("RightParotid", ("Right", "parotid")),
    ("Parotid_L", ("Left", "parotid")), ("Cochlea_R", ("Right", "cochlea")),
    ("Left_Lens", ("Left", "lens")), ("OpticNerve_Lt", ("Left", "opticnerve")),
    ("Lips", None), ("PTV70", None), ("Larynx", None), ("Brainstem", None), ("Leftover", None),
    # prefixes other than Left/Right and a PRV's side (were None: a swapped one passed without a word)
    ("Lt Lacrimal", ("Left", "lacrimal")), ("L_Parotid", ("Left", "parotid")),
    ("Rt-Cochlea", ("Right", "cochlea")),
    ("Parotid_L_PRV05", ("Left", "parotidprv05")), ("Lens_R_PRV", ("Right", "lensprv")),
    ("OpticNrv_L_PRV3mm", ("Left", "opticnrvprv3mm")),
    ("L1", None), ("LN_Neck_II", None), ("Larynx_PRV", None), ("Ring_5mm", None),
])
def test_side_of_a_name(name, want):
    assert side_of(name) == want


# axis 1 runs towards the patient's RIGHT (x = 50 - 2.5 j): no code may assume an axis order or sense
SIDE_GEOM = Geometry(np.array([50.0, -10.0, 10.0]),
                     np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]), (3.0, 2.5, 2.0))
SHAPE = (10, 40, 12)


def _x(j: float) -> float:
    return 50.0 - 2.5 * j


def _sided(rois: dict[str, tuple[int, int]], pid: str = "pt_side") -> Patient:
    """Blocks spanning axis 1 indices [a, b) per ROI, in a body spanning [4, 36) (centroid j 19.5)."""
    body = np.zeros(SHAPE, bool)
    body[:, 4:36] = True
    masks = {}
    for n, (a, b) in rois.items():
        m = np.zeros(SHAPE, bool)
        m[3:6, a:b, 4:8] = True
        masks[n] = m
    rs = RoiSet(tuple(Roi(n, "oar") for n in rois))
    return Patient.from_masks(pid, np.zeros(SHAPE, np.int16), masks, rs, SIDE_GEOM.spacing, body, None, {},
                              SIDE_GEOM)


def test_parotids_on_their_sides_pass_and_swapped_ones_are_named_with_their_centroids():
    # LeftParotid at j 6..9 (centroid 7.5: x = +31.25 mm, the patient's left), RightParotid at j 30..33
    ok = _sided({"LeftParotid": (6, 10), "RightParotid": (30, 34)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", LateralityWarning)
        assert check_sides(ok) == []
    swapped = _sided({"LeftParotid": (30, 34), "RightParotid": (6, 10)}, "pt_swapped")
    with pytest.warns(LateralityWarning) as w:
        found = check_sides(swapped, "SRC")
    assert {f.roi for f in found} == {"LeftParotid", "RightParotid"}
    left = next(f for f in found if f.roi == "LeftParotid")
    assert left.x == pytest.approx(_x(31.5)) and left.midline == pytest.approx(_x(19.5))
    assert left.other == "RightParotid" and left.other_x == pytest.approx(_x(7.5))
    (msg,) = [str(x.message) for x in w]
    assert msg.startswith("patient pt_swapped of SRC: ROI named for a side lies on the other")
    assert ("LeftParotid at x = -28.8 mm, 30 mm right of the midline (x = +1.2 mm) and right of "
            "RightParotid (x = +31.2 mm)") in msg
    assert "RightParotid at x = +31.2 mm, 30 mm left of the midline" in msg and "--roi-map" in msg


def test_a_lone_sided_roi_is_checked_against_the_midline_with_a_margin():
    mid = _x(19.5)
    # Lens_L centred at j 22.5: 7.5 mm right of the midline, within the margin; at j 25.5: 15 mm, beyond
    assert mid - _x(22.5) < MIDLINE_MARGIN_MM < mid - _x(25.5)
    assert side_findings(_sided({"Lens_L": (22, 24)})) == []
    (f,) = side_findings(_sided({"Lens_L": (25, 27)}))
    assert f.roi == "Lens_L" and f.across_midline == pytest.approx(15.0) and f.other is None
    assert side_findings(_sided({"Lens_R": (25, 27), "Lips": (25, 27)})) == []  # its own side; no side


def test_a_target_is_held_by_the_pair_rule_only():
    """PTV_L may name a low-risk target, not a side, and a target may cross the midline: a lone PTV_L
    15 mm right of the midline is not warned of (a Lens_L there is, above); a PTV_L right of a PTV_R is."""
    def targets(rois):
        p = _sided(rois)
        rs = RoiSet(tuple(Roi(n, "target", 60.0) for n in rois))
        return Patient.from_masks(p.id, p.ct, {n: p.mask(n) for n in rois}, rs, p.spacing,
                                  p.possible_dose_mask, None, {}, p.geometry)

    assert side_findings(targets({"PTV_L": (25, 27)})) == []
    found = side_findings(targets({"PTV_L": (25, 27), "PTV_R": (6, 10)}))
    assert {f.roi for f in found} == {"PTV_L", "PTV_R"}


def test_without_a_body_mask_the_ct_gives_the_midline():
    p = _sided({"Lens_L": (25, 27)})
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 4:36] = 40
    q = Patient(p.id, ct, p.roi_codes, p.roi_set, None, None, None, (), {}, p.geometry)
    assert q.possible_dose_mask.all()
    (f,) = side_findings(q)
    assert f.midline == pytest.approx(_x(19.5))


def test_a_swapped_cache_warns_as_it_is_read(tmp_path):
    write_cache([_sided({"LeftParotid": (30, 34), "RightParotid": (6, 10)}, "pt_swapped")], tmp_path / "c")
    with pytest.warns(LateralityWarning, match=r"patient pt_swapped of .*LeftParotid at x = -28.8 mm"):
        list(load_patients(tmp_path / "c", require_dose=False))


# ------------------------------------------------------------------------- dose outside targets
DOSE_SHAPE = (30, 12, 12)
DOSE_GEOM = Geometry(np.array([0.0, 0.0, 0.0]), np.eye(3), (4.0, 3.0, 3.0))  # voxel 0.036 cc
VOX_CC = 4 * 3 * 3 / 1000


def _plan(block_gy: float = 56.0, contour_block: bool = False, pid: str = "pt_dose") -> Patient:
    """PTV70 at axis-0 indices [2, 8) (6 x 8 x 8 voxels, 13.8 cc) at 70 Gy; a fall-off slab at index 8
    (4 mm from PTV70) at 65 Gy; a block at [12, 24) (16 mm and more from PTV70; 12 x 8 x 8 voxels,
    27.6 cc) at ``block_gy``, contoured as PTV56 or not."""
    ptv70 = np.zeros(DOSE_SHAPE, bool)
    ptv70[2:8, 2:10, 2:10] = True
    block = np.zeros(DOSE_SHAPE, bool)
    block[12:24, 2:10, 2:10] = True
    dose = np.zeros(DOSE_SHAPE, np.float32)
    dose[ptv70] = 70
    dose[8, 2:10, 2:10] = 65
    dose[block] = block_gy
    rs = RoiSet((Roi("PTV56", "target", 56.0), Roi("PTV70", "target", 70.0)))
    masks = {"PTV70": ptv70, **({"PTV56": block} if contour_block else {})}
    return Patient.from_masks(pid, np.zeros(DOSE_SHAPE, np.int16), masks, rs, DOSE_GEOM.spacing, None,
                              dose, {}, DOSE_GEOM)


def test_a_dose_level_without_its_target_is_measured_and_warned_of():
    o = outside_dose(_plan())
    assert o.level_gy == pytest.approx(LEVEL * 70) and o.targets == ("PTV70",)
    assert o.targets_cc == pytest.approx(6 * 8 * 8 * VOX_CC)
    assert o.volume_cc == pytest.approx(12 * 8 * 8 * VOX_CC)  # the block; not the slab 4 mm from PTV70
    assert o.ratio == pytest.approx(2.0) and o.ratio > MAX_RATIO and o.large
    with pytest.warns(TargetDoseWarning) as w:
        check_target_dose(_plan(), "SRC")
    (msg,) = [str(x.message) for x in w]
    assert msg.startswith("patient pt_dose of SRC: high dose outside the contoured targets: 28 cc farther "
                          "than 10 mm from every contoured target (PTV70) receive >= 53.2 Gy"), msg
    assert "2.00 x the targets' 14 cc" in msg
    assert "not contoured, named otherwise or without a prescription" in msg
    assert "--roi-map" in msg


@pytest.mark.parametrize("plan", [_plan(contour_block=True), _plan(block_gy=50.0)], ids=["contoured", "low"])
def test_a_dose_explained_by_its_targets_passes(plan):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TargetDoseWarning)
        assert check_target_dose(plan) is None
    assert outside_dose(plan).volume_cc == 0.0


def test_no_dose_no_check():
    p = _plan()
    q = Patient(p.id, p.ct, p.roi_codes, p.roi_set, None, p.possible_dose_mask, None, (), {}, p.geometry)
    assert outside_dose(q) is None and check_target_dose(q) is None


def test_a_cache_with_a_missing_target_warns_as_it_is_read(tmp_path):
    write_cache([_plan()], tmp_path / "c")
    with pytest.warns(TargetDoseWarning, match=r"patient pt_dose of .*28 cc"):
        list(load_patients(tmp_path / "c"))


# ------------------------------------------------------------------------------------ QA notes
def test_qa_notes_a_plan_with_swapped_parotids_or_only_ptv70(sample_dir):
    """pt_66 (three levels) as it is: no note of either kind; with its parotid names swapped: a note
    naming both and their centroids; with only PTV70 contoured (592 cc at >= 53.2 Gy farther than
    10 mm from it, 1.75 x its 338 cc): a note saying its flags cannot be trusted."""
    from dosepred.qa.check import _without_input_warnings, input_notes
    from dosepred.qa.result import NOTE_SIDE, NOTE_TARGET_DOSE

    (p,) = load_patients(sample_dir, ids=["pt_66"])
    assert input_notes(p) == []
    m = {n: p.mask(n) for n in p.present_rois}

    def plan(pid, masks):
        return Patient.from_masks(pid, p.ct, masks, p.roi_set, p.spacing, p.possible_dose_mask, p.dose, {},
                                  p.geometry)

    swapped = plan("swapped", {**m, "LeftParotid": m["RightParotid"], "RightParotid": m["LeftParotid"]})
    (note,) = input_notes(swapped)
    assert note.startswith(f"{NOTE_SIDE}: "), note
    assert ("LeftParotid at x = -60.2 mm, 58 mm right of the midline (x = -2.1 mm) and right of "
            "RightParotid (x = +57.8 mm)") in note
    assert "RightParotid at x = +57.8 mm" in note and "swapped" in note
    only70 = plan("only70", {k: v for k, v in m.items() if k not in ("PTV56", "PTV63")})
    (note,) = input_notes(only70)
    assert note.startswith(f"{NOTE_TARGET_DOSE}: 592 cc farther than 10 mm"), note
    assert "1.75 x the targets' 338 cc" in note and "cannot be trusted" in note
    # QA reads its plans without these warnings: each is the plan's note (once), not also a warning
    def read():
        warnings.warn("x", LateralityWarning, stacklevel=1)
        yield swapped
        warnings.warn("y", TargetDoseWarning, stacklevel=1)
        yield only70
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [q.id for q in _without_input_warnings(read())] == ["swapped", "only70"]


def test_the_midline_is_the_bodys_on_the_rois_own_slices():
    """A body whose lower slices (shoulders, an arm, a field of view cut on one side) lie off the head's
    midline moves the whole body's centroid by up to 12 mm on OpenKBP (hunt/h1_midline_offset.py; on the
    parotids' own slices at most 5 mm): the midline a sided ROI is held against is the body's on the
    slices of that ROI, so a left submandibular gland near the midline (its centroid 1.25 mm left of the
    head's midline, 12 mm right of the whole body's centroid) is on its side."""
    body = np.zeros(SHAPE, bool)
    body[:, 14:26, :6] = True  # the head: axis-2 slices 0-5, centred at j 19.5 (x = +1.25 mm)
    body[:, 0:24, 6:] = True  # below it, a body reaching far to the patient's left (j 0 is x = +50 mm)
    gtv = np.zeros(SHAPE, bool)
    gtv[3:6, 17:22, 2:4] = True  # centroid j 19: x = +2.5 mm
    rs = RoiSet((Roi("Glnd_Submand_L", "oar"),))
    p = Patient.from_masks("pt_mid", np.zeros(SHAPE, np.int16), {"Glnd_Submand_L": gtv}, rs,
                           SIDE_GEOM.spacing, body, None, {}, SIDE_GEOM)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LateralityWarning)
        assert check_sides(p) == []
    # the same ROI 11.25 mm right of the head's midline is still found, against the head's midline
    gtv[:] = False
    gtv[3:6, 24:25, 2:4] = True  # x = -10 mm
    (f,) = side_findings(Patient.from_masks("pt_mid", np.zeros(SHAPE, np.int16), {"Glnd_Submand_L": gtv}, rs,
                                            SIDE_GEOM.spacing, body, None, {}, SIDE_GEOM))
    assert f.midline == pytest.approx(_x(19.5)) and f.across_midline == pytest.approx(11.25)


def test_a_swapped_prv_pair_and_a_prefixed_organ_are_named():
    """TG-263 PRVs (Parotid_L_PRV05) and Lt/L-prefixed names (Lt Lacrimal) were not read as sided, so a
    structure set with their sides swapped passed without a word."""
    swapped = _sided({"Parotid_L_PRV05": (30, 34), "Parotid_R_PRV05": (6, 10), "Lt Lacrimal": (28, 32)},
                     "pt_prv")
    with pytest.warns(LateralityWarning):
        found = check_sides(swapped, "SRC")
    assert {f.roi for f in found} == {"Parotid_L_PRV05", "Parotid_R_PRV05", "Lt Lacrimal"}
    ok = _sided({"Parotid_L_PRV05": (6, 10), "Parotid_R_PRV05": (30, 34), "Lt Lacrimal": (8, 12)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", LateralityWarning)
        assert check_sides(ok) == []


@pytest.mark.parametrize("left, right", [
    ("Parotida izq", "Parotida der"), ("Parotide_sx", "Parotide_dx"), ("Hippocampus Sin", "Hippocampus Dex"),
    ("Parotis links", "Parotis rechts"), ("Parótida Izquierda", "Parótida Derecha"),
    ("IZQ Parotida", "DER Parotida")])
def test_a_swapped_pair_named_with_a_clinic_s_side_words_is_named(left, right):
    """Names kept as written (no alias knows 'Parotida') whose side is a word the aliases read or a
    clinic writes (dosepred.roi.SIDE_WORD_PAIRS): swapped, they passed without a word, and qa checked
    each against the other side's interval."""
    assert side_findings(_sided({left: (6, 10), right: (30, 34)})) == []  # left at x = +31 mm: its side
    found = side_findings(_sided({left: (30, 34), right: (6, 10)}))
    assert {f.roi for f in found} == {left, right}
    assert {f.other for f in found} == {left, right}
    (f,) = side_findings(_sided({left: (30, 34)}))  # alone: 30 mm right of the midline
    assert f.roi == left and f.across_midline == pytest.approx(_x(19.5) - _x(31.5))
    assert side_of("Sinus") is None and side_of("Dexter") is None and side_of("Derma_ring") is None


@pytest.mark.parametrize("name", ["Re-irradiation", "G-tube", "Li_Ring", "D Ring"])
def test_a_short_side_word_before_a_name_is_no_side(name):
    """German li/re and French G/D name a side after an organ (Parotis li, Parotide G); before a name they
    begin a word: 'Re-irradiation' (a previous course's volume) on the patient's left was taken as a right
    ROI 30 mm on the wrong side of the midline (a LateralityWarning, and qa's side note on the plan)."""
    assert side_of(name) is None
    for block in ((6, 10), (30, 34)):  # on the patient's left, then right
        assert side_findings(_sided({name: block})) == []
    assert side_of("Parotis li") == ("Left", "parotis") and side_of("Parotide_D") == ("Right", "parotide")
    assert side_of("Lt Lacrimal") == ("Left", "lacrimal") and side_of("IZQ Parotida") == ("Left", "parotida")


@pytest.mark.parametrize("left, right", [
    ("Ojo izquierdo", "Ojo derecho"), ("Nerf optique gauche", "Nerf optique droit"),
    ("Occhio sinistro", "Occhio destro"), ("Olho esquerdo", "Olho direito")])
def test_a_swapped_pair_named_with_masculine_side_words_is_named(left, right):
    """A masculine organ's side words (ojo izquierdo / derecho; French 'droit', whose 'gauche' was
    read as a side alone): the right one was no sided ROI, so a swapped pair passed the pair rule
    without a word, and a right eye on the left side the midline rule."""
    assert side_findings(_sided({left: (6, 10), right: (30, 34)})) == []
    found = side_findings(_sided({left: (30, 34), right: (6, 10)}))
    assert {f.roi for f in found} == {left, right}
    assert {f.other for f in found} == {left, right}
    (f,) = side_findings(_sided({right: (6, 10)}))  # alone: on the patient's left
    assert f.roi == right and f.side == "Right"


def test_evaluate_s_json_and_report_say_the_input_checks_warnings(tmp_path):
    """evaluate printed a reader's warning (a high dose far from every target: a target not contoured, the
    PTV Score and criteria read without it) on the console only: the JSON's "warnings" and the report,
    which a physicist may read alone, listed the protocol's warnings and not this one. Both now hold it,
    and the console says it once."""
    import json
    from html import escape

    from dosepred.io.openkbp import write_dose_csv
    from dosepred.workflows import evaluate_sources

    p = _plan()
    write_cache([p], tmp_path / "ref")
    (tmp_path / "pred").mkdir()
    write_dose_csv(tmp_path / "pred" / "pt_dose.csv", p.dose * 0.98, np.ones(p.shape, bool))
    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, *a, **k: shown.append(str(m))
        evaluate_sources(tmp_path / "ref", tmp_path / "pred", "openkbp", json_out=tmp_path / "e.json",
                         report=tmp_path / "rep")
    said = [m for m in shown if m.startswith("patient pt_dose of ")]
    assert len(said) == 1 and "28 cc" in said[0], shown
    assert said[0] in json.loads((tmp_path / "e.json").read_text())["warnings"]
    assert f"<li>{escape(said[0])}</li>" in (tmp_path / "rep" / "report.html").read_text()
