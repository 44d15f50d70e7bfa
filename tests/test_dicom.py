"""DICOM RT import/export on DICOM files written by the tests themselves from synthetic patients."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dosepred import metrics
from dosepred.errors import InputError
from dosepred.geometry import Geometry
from dosepred.io import dicom
from dosepred.io.roi_names import Canonical, RoiMap, canonical, union_roi_set
from dosepred.patient import Patient, Roi, RoiSet

N = 32


def make_patient(pid: str = "pt_a", spacing=(2.5, 2.0, 2.0), shift: float = 0.0) -> Patient:
    """32^3: body cylinder, spherical PTV70, a parotid (on the patient's left, as its name says: the
    laterality check), a ring (with a hole: the PTV) overlapping the parotid, and a dose blob centred
    on the PTV."""
    z, y, x = np.mgrid[0:N, 0:N, 0:N].astype(float)
    c = (N - 1) / 2
    r_xy = np.hypot(y - c, x - c)
    body = r_xy < N * 0.42
    ct = np.where(body, 40, -1000).astype(np.int16)
    ct[body & (r_xy < 3)] = 700
    ct[body & (x < c - 8)] = -120
    ptv = (z - c) ** 2 + (y - c) ** 2 + (x - c + 3 - shift) ** 2 < 6 ** 2
    par = ((z - c) ** 2 / 16 + (y - c + 6) ** 2 / 9 + (x - c - 7) ** 2 / 9) < 1  # on the patient's left
    ring = (np.hypot(y - c, x - c + 3) < 10) & ~ptv & (np.abs(z - c) < 8)  # inside the body
    rs = RoiSet((Roi("LeftParotid", "oar"), Roi("PTV70", "target", 70.0), Roi("Ring", "other")))
    dose = 72 * np.exp(-((z - c) ** 2 + (y - c) ** 2 + (x - c + 3) ** 2) / (2 * 9.0 ** 2)) * body
    # axial head-first-supine arrays (slice, row, column): axis 0 to the head, 1 posterior, 2 left
    origin = (-(N - 1) * spacing[2] / 2, -(N - 1) * spacing[1] / 2, 0.0)
    geom = Geometry.from_dicom(origin, (1, 0, 0, 0, 1, 0), spacing)
    return Patient.from_masks(pid, ct, {"LeftParotid": par, "PTV70": ptv, "Ring": ring}, rs, spacing,
                              body, dose.astype(np.float32), meta={"study_date": "20240131"}, geometry=geom)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def read_quiet(src, roi_map=None) -> list[Patient]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicom.DicomWarning)
        return dicom.read_dicom_folder(src, roi_map)


@pytest.fixture
def exported(tmp_path) -> tuple[Patient, Path]:
    p = make_patient()
    return p, dicom.write_dicom(p, tmp_path / "dcm")


# ------------------------------------------------------------------------------------ round trip

def test_round_trip_exact(exported):
    p, folder = exported
    assert sorted(f.name for f in folder.iterdir())[:2] == ["CT.0001.dcm", "CT.0002.dcm"]
    (q,) = read_quiet(folder)
    assert q.id == "pt_a"
    np.testing.assert_array_equal(q.ct, p.ct)
    assert q.spacing == p.spacing
    assert q.roi_set == p.roi_set
    # 32-bit DoseGridScaling: quantisation step dmax / 4e9 Gy
    assert np.abs(q.dose - p.dose).max() <= float(p.dose.max()) / 4e9 + 1e-6
    for name in p.roi_set.names:
        d = dice(p.mask(name), q.mask(name))
        assert d >= 0.97, (name, d)
        assert d == 1.0, (name, d)  # measured: iso-0.5 contours re-rasterise exactly
    np.testing.assert_array_equal(q.possible_dose_mask, p.possible_dose_mask)
    assert q.meta["possible_dose_mask"].startswith("body contour")
    assert q.meta["study_date"] == "20240131"
    assert q.meta["orientation"] == [1.0, 0, 0, 0, 1.0, 0]
    assert q.geometry.same_as(p.geometry) and q.geometry.describe() == "I->S, A->P, R->L"
    # export of the re-imported patient keeps geometry and UIDs of study / frame of reference
    folder2 = dicom.write_dicom(q, folder.parent / "again")
    a = pydicom.dcmread(folder / "CT.0005.dcm")
    b = pydicom.dcmread(folder2 / "CT.0005.dcm")
    assert list(a.ImagePositionPatient) == list(b.ImagePositionPatient)
    assert a.FrameOfReferenceUID == b.FrameOfReferenceUID and a.StudyInstanceUID == b.StudyInstanceUID


def test_exported_objects_reference_each_other(exported):
    p, folder = exported
    ct = pydicom.dcmread(folder / "CT.0001.dcm")
    rs = pydicom.dcmread(folder / "RS.dcm")
    rd = pydicom.dcmread(folder / "RD.dcm")
    assert ct.PixelRepresentation == 1 and float(ct.RescaleIntercept) == -1024
    fr = rs.ReferencedFrameOfReferenceSequence[0]
    assert fr.FrameOfReferenceUID == ct.FrameOfReferenceUID == rd.FrameOfReferenceUID
    se = fr.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == ct.SeriesInstanceUID
    assert len(se.ContourImageSequence) == N
    types = {o.ReferencedROINumber: o.RTROIInterpretedType for o in rs.RTROIObservationsSequence}
    names = {r.ROINumber: r.ROIName for r in rs.StructureSetROISequence}
    assert {names[k]: v for k, v in types.items()} == {"LeftParotid": "ORGAN", "PTV70": "PTV", "Ring": "",
                                                       "External": "EXTERNAL"}
    assert rd.DoseUnits == "GY" and rd.DoseType == "PHYSICAL" and rd.DoseSummationType == "PLAN"
    assert int(rd.NumberOfFrames) == N and len(rd.GridFrameOffsetVector) == N
    assert rd.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
    np.testing.assert_allclose(rd.pixel_array * float(rd.DoseGridScaling), p.dose, atol=1e-6)


def test_dicompyler_core_agrees(exported):
    """dicompyler-core's DVH on our RTSTRUCT + RTDOSE vs dosepred.metrics on the voxels.

    Tolerances: Dmean and Dmax 0.02 Gy (dicompyler bins at 1 cGy); D95 0.5 Gy (dicompyler reads
    the cumulative DVH at a bin edge, we interpolate between voxels; on these 150-4000 voxel ROIs
    the gap between neighbouring voxel doses is up to ~0.4 Gy). Volumes agree to 0.1 %.
    """
    pytest.importorskip("dicompylercore")
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):  # dicompyler-core 0.5.6 predates pydicom 3
        pydicom.dicomio.read_file = pydicom.dcmread
    from dicompylercore import dvhcalc

    p, folder = exported
    vv = p.voxel_volume_mm3
    for k, name in enumerate(p.roi_set.names):
        dv = dvhcalc.get_dvh(str(folder / "RS.dcm"), str(folder / "RD.dcm"), k + 1)
        d = p.dose[p.mask(name)]
        assert dv.volume == pytest.approx(d.size * vv / 1000.0, rel=1e-3)
        assert dv.mean == pytest.approx(metrics.compute("Dmean", d, vv), abs=0.02)
        assert dv.max == pytest.approx(metrics.compute("Dmax", d, vv), abs=0.02)
        assert dv.statistic("D95").value == pytest.approx(metrics.compute("D95", d, vv), abs=0.5)


def test_write_rtdose_lines_up_with_export(exported, tmp_path):
    p, folder = exported
    pred = (p.dose * 0.9).astype(np.float32)
    path = dicom.write_rtdose(p, pred, tmp_path / "pred", dose_spacing=p.spacing)
    assert path == tmp_path / "pred" / "RD.pt_a.dcm"
    rd = pydicom.dcmread(path)
    ct = pydicom.dcmread(folder / "CT.0001.dcm")
    assert rd.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert list(rd.ImageOrientationPatient) == list(ct.ImageOrientationPatient)
    # the dose grid is the CT grid cropped to the body (+1 voxel): its first voxel is a CT voxel
    start = np.rint(p.geometry.to_index([float(v) for v in rd.ImagePositionPatient])).astype(int)
    np.testing.assert_allclose(p.geometry.to_patient(start), [float(v) for v in rd.ImagePositionPatient],
                               atol=1e-6)
    nf, nr, nc = rd.pixel_array.shape
    box = tuple(slice(s, s + n) for s, n in zip(start, (nf, nr, nc), strict=True))
    np.testing.assert_allclose(rd.pixel_array * float(rd.DoseGridScaling), pred[box], atol=1e-6)
    assert pred[box].sum() == pytest.approx(pred.sum())
    assert dicom.write_rtdose(p, pred, tmp_path / "x.dcm") == tmp_path / "x.dcm"


@pytest.mark.parametrize(("model", "want"), [
    ("models/openkbp-mae", "dosepred predicted dose (model models/openkbp-mae)"),
    ("/work/exp/runs/r7-mae-cdm/checkpoints/best.pt",
     "dosepred predicted dose (model r7-mae-cdm/checkpoints/best.pt)"),
    ("m/clinicA-hn-mae-cdm-2026-11-retrained-v3", "dosepred: clinicA-hn-mae-cdm-2026-11-retrained-v3"),
    ("hn-" + "x" * 60 + "-v3", "dosepred: ..." + "x" * 48 + "-v3"),
])
def test_a_predicted_rtdose_names_its_model_within_dicom_s_64_characters(exported, tmp_path, model, want):
    """The RTDOSE's SeriesDescription (what a TPS lists) was "dosepred predicted dose (model NAME)" cut to
    64 characters, NAME the --model path's last part: a model folder named past 33 characters lost its
    end ('...-retrained-v3' and '...-retrained-v4' read alike, without the closing parenthesis) and a
    checkpoint was 'model best.pt' whichever run it came from. It now shows the end of the path that
    fits, or the name cut at its start; the whole path is in ImageComments."""
    p, _ = exported
    rd = pydicom.dcmread(dicom.write_rtdose(p, p.dose, tmp_path / "rd.dcm", model_name=model))
    assert rd.SeriesDescription == want and len(want) <= 64
    assert rd.ImageComments == f"dosepred predicted dose, model {model}"


def test_coarse_rtdose_is_zero_beyond_one_of_its_steps_from_the_body(exported, tmp_path):
    """A prediction (0 Gy outside the body) on the default coarser RTDOSE grid (2.5 mm from 2 mm): the
    zeros near the body are filled before resampling so its edge reads back its own dose, but no
    RTDOSE voxel farther than one RTDOSE step from every body voxel along some axis holds dose (the
    fill reached 3 steps: 6624 of these 8800 voxels held dose, up to 7.5 mm into the air). Positions
    from the header by hand (pydicom only)."""
    p, _ = exported
    body = p.possible_dose_mask
    idx = np.argwhere(np.ones(p.shape, bool)).reshape(*p.shape, 3)
    xyz = p.geometry.origin + (idx * np.asarray(p.spacing)) @ p.geometry.direction.T
    linear = 20 + 0.5 * xyz[..., 0] + 0.2 * xyz[..., 1] + 0.3 * xyz[..., 2]
    pred = np.where(body, linear, 0).astype(np.float32)
    assert pred[body].min() > 1
    rd = pydicom.dcmread(dicom.write_rtdose(p, pred, tmp_path / "pred"))
    dose = rd.pixel_array * float(rd.DoseGridScaling)
    row = np.array([float(v) for v in rd.ImageOrientationPatient[:3]])
    col = np.array([float(v) for v in rd.ImageOrientationPatient[3:]])
    ps = [float(v) for v in rd.PixelSpacing]
    gf = [float(v) for v in rd.GridFrameOffsetVector]
    step = np.array([gf[1] - gf[0], ps[0], ps[1]])
    assert np.allclose(step, 2.5)  # coarser than the CT's (2.5, 2, 2): resampled
    k, r, c = np.meshgrid(*[np.arange(n) for n in dose.shape], indexing="ij")
    ipp = np.array([float(v) for v in rd.ImagePositionPatient])
    pos = (ipp + np.asarray(gf)[k][..., None] * np.cross(row, col) + (r * ps[0])[..., None] * col
           + (c * ps[1])[..., None] * row)
    axes = np.stack([np.cross(row, col), col, row])  # rows: the RTDOSE's axes
    b = (xyz[body] @ axes.T) / step  # body voxel centres in RTDOSE steps
    q = (pos.reshape(-1, 3) @ axes.T) / step
    from scipy.spatial import cKDTree

    near = cKDTree(b).query(q, p=np.inf)[0] < 1 - 1e-6  # some body voxel less than 1 step away per axis
    far = ~near.reshape(dose.shape)
    assert far.sum() > 1000
    assert dose[far].max() == 0, f"{int((dose[far] > 0).sum())} voxels of {far.sum()} hold dose"
    # and the dose where the body is (its interior, two CT voxels deep: exact for a linear dose)
    from scipy.ndimage import binary_erosion

    ijk = np.rint((pos - p.geometry.origin) @ p.geometry.direction / np.asarray(p.spacing)).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.asarray(p.shape)), axis=-1)
    deep = np.zeros(dose.shape, bool)
    deep[ok] = binary_erosion(body, iterations=2)[tuple(ijk[ok].T)]
    want = 20 + 0.5 * pos[..., 0] + 0.2 * pos[..., 1] + 0.3 * pos[..., 2]
    assert deep.sum() > 500
    np.testing.assert_allclose(dose[deep], want[deep], atol=1e-3)


# -------------------------------------------------------------------------------- folder layouts

def test_mixed_folder_groups_two_patients(tmp_path):
    a, b = make_patient("pt_a"), make_patient("pt_b", spacing=(3.0, 1.5, 1.5), shift=2)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in (a, b):
        f = dicom.write_dicom(p, tmp_path / "tmp")
        for x in f.iterdir():
            shutil.move(str(x), mixed / f"{p.id}_{x.name}")
    pats = {p.id: p for p in read_quiet(mixed)}
    assert sorted(pats) == ["pt_a", "pt_b"]
    for src in (a, b):
        q = pats[src.id]
        np.testing.assert_array_equal(q.ct, src.ct)
        assert q.spacing == src.spacing
        np.testing.assert_array_equal(q.roi_codes, src.roi_codes)
        np.testing.assert_allclose(q.dose, src.dose, atol=1e-5)


def test_union_roi_set_and_missing(tmp_path):
    a = make_patient("pt_a")
    rs = RoiSet((Roi("SpinalCord", "oar"), Roi("PTV70", "target", 70.0)))
    b = Patient.from_masks("pt_b", a.ct, {"SpinalCord": a.mask("LeftParotid"), "PTV70": a.mask("PTV70")},
                           rs, a.spacing, a.possible_dose_mask)
    dicom.write_dicom(a, tmp_path)
    dicom.write_dicom(b, tmp_path)
    pats = {p.id: p for p in read_quiet(tmp_path)}
    # OpenKBP names first in OpenKBP order, then the others sorted
    assert pats["pt_a"].roi_set.names == ("SpinalCord", "LeftParotid", "PTV70", "Ring")
    assert pats["pt_a"].missing_rois == ("SpinalCord",)
    assert pats["pt_b"].missing_rois == ("LeftParotid", "Ring")
    assert pats["pt_b"].dose is None


# ---------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("raw,want,rx", [
    ("Parotid_L", "LeftParotid", None), ("L Parotid", "LeftParotid", None),
    ("Lt Parotid", "LeftParotid", None), ("parotid left", "LeftParotid", None),
    ("Parotid_R", "RightParotid", None), ("Cord", "SpinalCord", None),
    ("Spinal Cord", "SpinalCord", None), ("BrainStem", "Brainstem", None), ("PTV_70", "PTV70", 70.0),
    ("PTV 70Gy", "PTV70", 70.0), ("PTV7000", "PTV70", 70.0), ("PTV_59.4", "PTV59.4", 59.4),
    ("External", "Body", None), ("Esophagus", "Esophagus", None), ("PTV 7000cGy", "PTV70", 70.0),
    ("PTV_70_Gy", "PTV70", 70.0), ("PTV_59,4", "PTV59.4", 59.4), ("PTV 50,4Gy", "PTV50.4", 50.4),
    # a comma before three digits groups thousands: 7000 cGy, not 7.000 (cGy: 0.07 Gy), as before the
    # decimal comma was read
    ("PTV 7,000cGy", "PTV70", 70.0), ("PTV_7,000", "PTV70", 70.0), ("PTV 5,940 cGy", "PTV59.4", 59.4),
    ("PTV_54,12", "PTV54.12", 54.12), ("PTV_8Gy", "PTV8", 8.0), ("PTV_10", "PTV10", 10.0),
])
def test_aliases(raw, want, rx):
    c = canonical(raw)
    assert (c.name, c.prescription) == (want, rx)
    assert c.kind == ("target" if rx else "other" if want == "Body" else "oar")


@pytest.mark.parametrize("raw,want", [
    ("Parotis li", "LeftParotid"), ("Parotis_re.", "RightParotid"), ("Glandula parotis links", "LeftParotid"),
    ("Parotide G", "LeftParotid"), ("Parotide D", "RightParotid"), ("Parotide gauche", "LeftParotid"),
    ("Parótida Izq", "LeftParotid"), ("PAROTIDA_DER", "RightParotid"), ("Parotide sx", "LeftParotid"),
    ("Rückenmark", "SpinalCord"), ("Myelon", "SpinalCord"), ("Médula espinal", "SpinalCord"),
    ("Moelle épinière", "SpinalCord"), ("Midollo_spinale", "SpinalCord"), ("Hirnstamm", "Brainstem"),
    ("Tronc cérébral", "Brainstem"), ("Tronco encefalico", "Brainstem"), ("Ösophagus", "Esophagus"),
    ("Speiseröhre", "Esophagus"), ("Esófago", "Esophagus"), ("Kehlkopf", "Larynx"), ("Laringe", "Larynx"),
    ("Unterkiefer", "Mandible"), ("Mandíbula", "Mandible"), ("Nerf optique D", "RightOpticNerve"),
    ("Ojo derecho", "RightEye"), ("Sehnerv li", "LeftOpticNerve"), ("Mundhöhle", "OralCavity"),
])
def test_aliases_of_other_languages(raw, want):
    """German, French, Spanish, Italian and Portuguese names of the model's organs with the side words the
    flips read (li / re, G / D, izq / der, sx / dx) were unmatched: kept as written, so a German clinic's
    'Parotis li' was no LeftParotid, and the model predicted each such patient without its parotids (a
    warning asked for an ROI map)."""
    c = canonical(raw)
    assert (c.name, c.kind, c.matched) == (want, "oar", True), raw


@pytest.mark.parametrize("raw", ["D", "Der", "Li", "Parotis", "Parotide X", "Moelle PRV5", "G Tube"])
def test_side_words_alone_or_with_no_organ_are_unmatched(raw):
    """A side word counts only beside a sided organ: a bare 'D' or 'Der', a parotid without a side, a
    PRV or an unknown organ stay as written."""
    c = canonical(raw)
    assert (c.name, c.matched) == (raw, False), raw


@pytest.mark.parametrize("raw", ["PTV70_1", "PTV70 (1)", "PTV1_70", "PTV 1 60", "PTV70-3", "PTV_56-63",
                                 "PTV1", "PTV_2", "PTV 3"])
def test_separate_numbers_in_a_ptv_name_are_no_prescription(raw):
    """Two numbers in a PTV's name are not one dose: a copy (PTV70_1, RayStation's "PTV70 (1)"), a
    numbered PTV (PTV1_70) or a cropped one (PTV70-3) were glued into one number and read as 7.01, 1.7
    or 7.03 Gy (values over 100 as cGy), PTV_56-63 as 56.63 Gy; inside a PTV70 such a target passed the
    plan-dose check and entered the cache with that prescription. They are now names without a dose
    (the kind from RTROIInterpretedType, the prescription from the RTPLAN or the ROI map)."""
    c = canonical(raw)
    assert (c.name, c.prescription, c.matched) == (raw, None, False)
    assert RoiMap.empty().resolve(raw, "PTV").prescription is None


def test_unknown_names_kept():
    m = RoiMap.empty()
    assert m.resolve("Couch", "SUPPORT").kind == "other"
    assert m.resolve("Cochlea_Lx", "ORGAN").kind == "oar"
    c = m.resolve("PTV_high", "PTV")  # a target by its RTROIInterpretedType, no prescription known
    assert (c.name, c.kind, c.prescription, c.matched) == ("PTV_high", "target", None, False)


def test_mapped_name_keeps_target_kind_of_its_type():
    """A map that only renames an ROI its RTROIInterpretedType calls a target (PTV, CTV) keeps it a
    target, as it is unmapped; it was an organ at risk (and a plan's TARGET on it was then said to be
    on "an organ at risk"). Other unknown mapped names stay organs; the map's kinds win."""
    m = RoiMap.from_obj({"PTV_high": "PTV_boost", "CTV_hi": "CTV70", "Cochlea_Lx": "CochleaX"})
    assert RoiMap.empty().resolve("PTV_high", "PTV").kind == "target"
    assert (m.resolve("PTV_high", "PTV").name, m.resolve("PTV_high", "PTV").kind) == ("PTV_boost", "target")
    assert m.resolve("CTV_hi", "CTV").kind == "target"
    assert m.resolve("Cochlea_Lx", "ORGAN").kind == "oar"
    assert m.resolve("Cochlea_Lx", "").kind == "oar"
    kinds = RoiMap.from_obj({"names": {"PTV_high": "Boost"}, "kinds": {"Boost": "other"}})
    assert kinds.resolve("PTV_high", "PTV").kind == "other"


def _rename_rois(rs_path: Path, names: dict[str, str]) -> None:
    ds = pydicom.dcmread(rs_path)
    for r in ds.StructureSetROISequence:
        r.ROIName = names.get(r.ROIName, r.ROIName)
    for o in ds.RTROIObservationsSequence:
        if "ROIObservationDescription" in o:
            del o.ROIObservationDescription
    ds.save_as(rs_path)


def test_clinical_names_and_user_map(exported, tmp_path):
    p, folder = exported
    _rename_rois(folder / "RS.dcm", {"LeftParotid": "Parotid Lt", "PTV70": "PTV 70Gy", "Ring": "ring_hi",
                                     "External": "BODY"})
    (q,) = read_quiet(folder)
    assert q.roi_set.names == ("LeftParotid", "PTV70", "ring_hi")
    assert q.roi_set["PTV70"].prescription == 70.0 and q.roi_set["ring_hi"].kind == "other"
    assert q.meta["roi_names"]["LeftParotid"] == ["Parotid Lt"]
    mp = tmp_path / "map.json"
    mp.write_text(json.dumps({"ring_hi": {"name": "CTV63", "kind": "target", "prescription": 63},
                              "Parotid Lt": None}))
    (r,) = read_quiet(folder, mp)
    assert r.roi_set.names == ("PTV70", "CTV63")
    assert r.roi_set["CTV63"] == Roi("CTV63", "target", 63.0)
    np.testing.assert_array_equal(r.mask("CTV63"), p.mask("Ring"))


def test_union_roi_set_conflict():
    from dosepred.io.roi_names import Canonical

    with pytest.raises(ValueError, match="differ between patients"):
        union_roi_set([{"X": Canonical("X", "oar")}, {"X": Canonical("X", "target", 60.0)}])


def test_no_body_contour_uses_ct_threshold(exported):
    p, folder = exported
    ds = pydicom.dcmread(folder / "RS.dcm")
    num = [r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == "External"][0]
    for seq in ("StructureSetROISequence",):
        setattr(ds, seq, [r for r in getattr(ds, seq) if r.ROINumber != num])
    ds.ROIContourSequence = [r for r in ds.ROIContourSequence if r.ReferencedROINumber != num]
    ds.RTROIObservationsSequence = [r for r in ds.RTROIObservationsSequence if r.ReferencedROINumber != num]
    ds.save_as(folder / "RS.dcm")
    (q,) = read_quiet(folder)
    assert q.meta["possible_dose_mask"].startswith("CT > -500")
    np.testing.assert_array_equal(q.possible_dose_mask, p.ct > -500)


def _drop_body_contour(folder: Path) -> None:
    ds = pydicom.dcmread(folder / "RS.dcm")
    num = [r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == "External"][0]
    ds.StructureSetROISequence = [r for r in ds.StructureSetROISequence if r.ROINumber != num]
    ds.ROIContourSequence = [r for r in ds.ROIContourSequence if r.ReferencedROINumber != num]
    ds.RTROIObservationsSequence = [r for r in ds.RTROIObservationsSequence if r.ReferencedROINumber != num]
    ds.save_as(folder / "RS.dcm")


@pytest.mark.parametrize("vr, stored_pad, signed", [("US", 63536, False), ("SS", -2000, True),
                                                    ("SS", -2000, False)])  # the last: SS on unsigned pixels
def test_ct_pixel_padding_outside_the_scan_circle_is_air(exported, vr, stored_pad, signed):
    """A scanner's PixelPaddingValue (0028,0120) outside the scan circle (GE: 63536 on unsigned pixels
    with intercept -1024, or -2000) is no image: it reads as -1024 HU. Rescaled as pixels, 63536 read
    as 62512 HU (clipped to 32767): bone to the network, and the CT > -500 HU possible-dose mask of a
    patient without a body contour took the corners of every slice as body."""
    p, folder = exported
    _drop_body_contour(folder)
    yy, xx = np.mgrid[0:N, 0:N]
    outside = np.hypot(yy - (N - 1) / 2, xx - (N - 1) / 2) > N / 2  # the corners, beyond the scan circle
    for f in sorted(folder.glob("CT.*.dcm")):
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        raw = hu + 1024
        raw[outside] = stored_pad
        ds.PixelRepresentation = int(signed)
        ds.RescaleIntercept = "-1024"
        ds.PixelData = (raw.astype("<i2") if signed else (raw % 65536).astype("<u2")).tobytes()
        ds.add_new(0x00280120, vr, stored_pad)
        ds.save_as(f)
    (q,) = read_quiet(folder)
    want = p.ct.copy()
    want[:, outside] = -1024
    np.testing.assert_array_equal(q.ct, want)
    np.testing.assert_array_equal(q.possible_dose_mask, p.ct > -500)


def test_ct_values_beyond_int16_are_warned_of(exported):
    """Padding outside the scan circle that the header does not declare (65535 on unsigned pixels,
    intercept -1024: 64511 HU) was clipped to 32767 HU without a word; now a warning names the count,
    a value and a file (the voxels are still clipped: a CT is int16 HU)."""
    p, folder = exported
    corner = np.zeros((N, N), dtype=bool)
    corner[:3, :3] = True
    files = sorted(folder.glob("CT.*.dcm"))
    for f in files:
        ds = pydicom.dcmread(f)
        raw = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept) + 1024
        raw[corner] = 65535
        ds.PixelRepresentation, ds.RescaleIntercept = 0, "-1024"
        ds.PixelData = raw.astype("<u2").tobytes()
        ds.save_as(f)
    want = (rf"{9 * len(files)} voxel\(s\) in {len(files)} slice\(s\) read outside -32768\.\.32767 HU "
            r"\(e\.g\. 64511 HU in .*CT\..*\.dcm\) and were clipped")
    with pytest.warns(dicom.DicomWarning, match=want):
        (q,) = dicom.read_dicom_folder(folder)
    assert np.all(q.ct[:, corner] == 32767)


@pytest.mark.parametrize("vr, pad", [("US", 63536), ("SS", -2000)])
def test_a_16_bit_padding_value_pads_no_pixel_of_a_12_bit_ct(exported, vr, pad):
    """A 12-bit CT (BitsStored 12, unsigned, intercept -1024) whose header gives a 16-bit
    PixelPaddingValue (GE's 63536, or -2000): no stored pixel can hold it, so it pads nothing. Taken
    modulo 2^12 it was 2096, and every bone pixel of 1072 HU read as -1024 HU (air) without a word."""
    p, folder = exported
    bone = np.zeros((N, N), dtype=bool)
    bone[16, 4:28] = True
    for f in sorted(folder.glob("CT.*.dcm")):
        ds = pydicom.dcmread(f)
        raw = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept) + 1024
        raw[bone] = 2096  # 1072 HU
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, "-1024"
        ds.PixelData = raw.astype("<u2").tobytes()
        ds.add_new(0x00280120, vr, pad)
        ds.save_as(f)
    (q,) = read_quiet(folder)
    want = p.ct.copy()
    want[:, bone] = 1072
    np.testing.assert_array_equal(q.ct, want)


@pytest.mark.parametrize("key", ["RescaleIntercept", "RescaleSlope"])
def test_a_ct_slice_without_the_rescale_its_series_has_is_refused(exported, key):
    """One slice of a series stored with intercept -1024 lacking RescaleIntercept (a damaged header, a
    slice of another export) read its raw values as HU (intercept 0): that slice 1024 HU brighter than
    its neighbours, without a word. Now an error naming it and a slice that has the tag."""
    p, folder = exported
    f = folder / "CT.0006.dcm"
    ds = pydicom.dcmread(f)
    if key == "RescaleSlope":  # a slope absent where the others say 2: the slice would read half
        for g in sorted(folder.glob("CT.*.dcm")):
            d = pydicom.dcmread(g)
            hu = d.pixel_array.astype(np.int32) - 1024
            d.PixelData = ((hu + 1024) // 2).astype("<i2").tobytes()
            d.RescaleSlope = "2"
            d.save_as(g)
        ds = pydicom.dcmread(f)
    delattr(ds, key)
    ds.save_as(f)
    with pytest.raises(dicom.DicomImportError, match=rf"{f} lacks {key}, which {folder / 'CT.0001.dcm'} has "
                       r"\(1 of 32 slices lack it\)"):
        dicom.read_dicom_folder(folder)


# ------------------------------------------------------------------------------ malformed input

def test_missing_slice_names_series(exported):
    _, folder = exported
    (folder / "CT.0010.dcm").unlink()
    with pytest.raises(dicom.DicomImportError, match=r"RS.dcm references 32 images of CT series .*, but 1 "
                       r"of them are not under"):
        dicom.read_dicom_folder(folder)
    (folder / "RS.dcm").unlink()
    (folder / "RD.dcm").unlink()
    with pytest.raises(dicom.DicomImportError,
                       match=r"CT series .* 1 slice\(s\) missing between CT.0009.dcm"):
        dicom.read_dicom_folder(folder)


def test_inconsistent_spacing(exported):
    _, folder = exported
    ds = pydicom.dcmread(folder / "CT.0010.dcm")
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.9
    ds.save_as(folder / "CT.0010.dcm")
    with pytest.raises(dicom.DicomImportError, match="inconsistent slice spacing"):
        dicom.read_dicom_folder(folder)


def test_inconsistent_pixel_spacing(exported):
    _, folder = exported
    ds = pydicom.dcmread(folder / "CT.0003.dcm")
    ds.PixelSpacing = [2.1, 2.1]
    ds.save_as(folder / "CT.0003.dcm")
    with pytest.raises(dicom.DicomImportError, match="inconsistent PixelSpacing, .*CT.0003.dcm"):
        dicom.read_dicom_folder(folder)


def test_rtstruct_of_another_frame_of_reference(exported):
    _, folder = exported
    ds = pydicom.dcmread(folder / "RS.dcm")
    other = pydicom.uid.generate_uid()
    ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID = other
    for r in ds.StructureSetROISequence:
        r.ReferencedFrameOfReferenceUID = other
    ds.save_as(folder / "RS.dcm")
    with pytest.raises(dicom.DicomImportError, match=r"RTSTRUCT .*RS.dcm references .* another CT"):
        dicom.read_dicom_folder(folder)
    # and without the series reference it is matched by FrameOfReference only: no CT has it
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    ds.save_as(folder / "RS.dcm")
    with pytest.raises(dicom.DicomImportError, match=r"RTSTRUCT .*RS.dcm references FrameOfReference"):
        dicom.read_dicom_folder(folder)


def test_dose_grid_not_covering_body_warns(exported):
    p, folder = exported
    ds = pydicom.dcmread(folder / "RD.dcm")
    ds.ImagePositionPatient[0] = float(ds.ImagePositionPatient[0]) + 20.0  # 10 columns to the left
    ds.save_as(folder / "RD.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"RTDOSE .*RD.dcm: the dose grid does not cover the body"):
        (q,) = dicom.read_dicom_folder(folder)
    assert np.all(q.dose[:, :, :10] == 0)
    body = np.asarray(q.possible_dose_mask)  # the dose is read within it (0 Gy outside, as OpenKBP's)
    np.testing.assert_allclose(q.dose[:, :, 10:], p.dose[:, :, :-10] * body[:, :, 10:], atol=1e-5)


def test_dose_resampled_from_coarser_grid(exported):
    """An RTDOSE on every other voxel: trilinear interpolation reproduces a linear dose exactly."""
    p, folder = exported
    k, r, c = np.mgrid[0:N, 0:N, 0:N].astype(np.float32)
    lin = (0.5 * k + 0.25 * r + 0.1 * c + 1.0).astype(np.float32)
    frame = pydicom.dcmread(folder / "RD.dcm").FrameOfReferenceUID
    meta = {"origin": [-31.0, -31.0, 0.0], "orientation": [1, 0, 0, 0, 1, 0], "frame_of_reference_uid": frame}
    coarse = Patient(p.id, p.ct[::2, ::2, ::2], p.roi_codes[::2, ::2, ::2], p.roi_set,
                     tuple(2 * s for s in p.spacing), meta=meta)
    (folder / "RD.dcm").unlink()
    dicom.write_rtdose(coarse, lin[::2, ::2, ::2], folder / "RD.dcm")
    with pytest.warns(dicom.DicomWarning, match="does not cover"):  # last slice/row/col lie outside
        (q,) = dicom.read_dicom_folder(folder)
    inner = (slice(0, N - 1),) * 3
    body = np.asarray(q.possible_dose_mask)  # the dose is read within it (0 Gy outside, as OpenKBP's)
    np.testing.assert_allclose(q.dose[inner], (lin * body)[inner], atol=1e-4)
    assert body[inner].sum() > 5000  # most of the check is inside the body
    assert np.all(q.dose[-1] == 0)


def test_no_ct(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(dicom.DicomImportError, match="no CT image series"):
        dicom.read_dicom_folder(tmp_path)


# ------------------------------------------------------------------------------------------ CLI

def test_cli_import_export(exported, tmp_path):
    from typer.testing import CliRunner

    from dosepred.cli import app
    from dosepred.io.cache import Cache

    p, folder = exported
    _rename_rois(folder / "RS.dcm", {"LeftParotid": "Parotid_L"})
    mp = tmp_path / "map.json"
    mp.write_text(json.dumps({"Ring": "PRV_Ring"}))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "import-dicom", str(folder), "--out", str(tmp_path / "c"),
                              "--roi-map", str(mp), "--no-progress"])
    assert res.exit_code == 0, res.output
    c = Cache.open(tmp_path / "c")
    assert c.roi_set.names == ("LeftParotid", "PTV70", "PRV_Ring")
    res = runner.invoke(app, ["data", "export-dicom", str(tmp_path / "c"), "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "pt_a" / "RD.dcm").is_file()
    res = runner.invoke(app, ["data", "import-dicom", str(tmp_path / "nothing"),
                              "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "does not exist" in res.output


# ------------------------------------------------------- clinical inputs that must not read wrong

def _linear(x, y, z):
    return 30.0 + 0.1 * x + 0.2 * y + 0.3 * z


def _ct_voxel_centres(folder: Path) -> np.ndarray:
    """(slice, row, column, xyz) of the CT, from its headers alone (slices sorted by z)."""
    sl = sorted((pydicom.dcmread(f) for f in folder.glob("CT.*.dcm")),
                key=lambda d: float(d.ImagePositionPatient[2]))
    iop = np.array([float(v) for v in sl[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in sl[0].PixelSpacing)
    r, c = np.mgrid[0:sl[0].Rows, 0:sl[0].Columns]
    return np.array([np.array([float(v) for v in s.ImagePositionPatient]) + c[..., None] * dc * iop[:3]
                     + r[..., None] * dr * iop[3:] for s in sl])


def _linear_rtdose(path: Path, ipp, iop, n_frames: int, absolute: bool = False) -> None:
    """Overwrite RTDOSE ``path`` with a 30x25 grid (PixelSpacing 3, 4 mm, frames 2 mm apart along the
    normal) holding ``_linear`` at its voxel centres; GridFrameOffsetVector relative (0, 2, ...) or, with
    ``absolute``, the frames' patient z coordinates."""
    ds = pydicom.dcmread(path)
    iop_, ipp_ = np.array(iop, float), np.array(ipp, float)
    n = np.cross(iop_[:3], iop_[3:])
    r, c = np.mgrid[0:30, 0:25]
    off = 2.0 * np.arange(n_frames)
    pts = np.array([ipp_ + o * n + c[..., None] * 4.0 * iop_[:3] + r[..., None] * 3.0 * iop_[3:]
                    for o in off])
    ds.ImagePositionPatient = [f"{v:g}" for v in ipp_]
    ds.ImageOrientationPatient = [f"{v:g}" for v in iop_]
    ds.PixelSpacing = ["3", "4"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = 30, 25, n_frames
    ds.GridFrameOffsetVector = [f"{v:g}" for v in (ipp_[2] + off * n[2] if absolute else off)]
    ds.DoseGridScaling = "0.0001"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.PixelData = np.rint(_linear(*np.moveaxis(pts, -1, 0)) / 1e-4).astype(np.uint32).tobytes()
    ds.save_as(path)


@pytest.mark.parametrize("ipp,iop,absolute", [
    ([-40, -35, -5], [1, 0, 0, 0, 1, 0], False),
    ([-40, -35, -5], [1, 0, 0, 0, 1, 0], True),  # PS3.3 C.8.8.3.2 (b): z coordinates, axial planes only
    ([40, -35, 85], [-1, 0, 0, 0, 1, 0], False),  # normal -z: frames go to the feet
    ([40, -35, 85], [-1, 0, 0, 0, 1, 0], True),  # z coordinates of feet-first axial planes
], ids=["relative", "absolute-axial", "relative-normal-to-feet", "absolute-normal-to-feet"])
def test_rtdose_frames_are_placed_by_their_offsets(exported, ipp, iop, absolute):
    """A linear dose on an RTDOSE grid of its own (other spacing, orientation, frame offsets): trilinear
    resampling gives it back exactly at the CT voxel centres computed from the CT headers."""
    _, folder = exported
    _linear_rtdose(folder / "RD.dcm", ipp, iop, 45, absolute)
    with pytest.warns(dicom.DicomWarning, match=r"planned dose .* lies outside the possible-dose mask"):
        (q,) = dicom.read_dicom_folder(folder)  # a linear dose fills the air too: read as 0 Gy there
    w = _ct_voxel_centres(folder)
    body = np.asarray(q.possible_dose_mask)
    assert (q.dose[body] > 0).all() and (q.dose[~body] == 0).all() and body.sum() > 10000
    np.testing.assert_allclose(q.dose[body], _linear(w[..., 0], w[..., 1], w[..., 2])[body], atol=1e-3)


def test_rtdose_absolute_frame_offsets_of_non_axial_planes_are_refused(exported):
    """GridFrameOffsetVector holding patient z coordinates is defined only for axial planes; for
    sagittal ones (normal -x) z coordinates say nothing of where the planes lie: refused, naming the
    file and the field."""
    _, folder = exported
    _linear_rtdose(folder / "RD.dcm", [40, -35, 85], [0, 1, 0, 0, 0, -1], 45)
    edit = pydicom.dcmread(folder / "RD.dcm")
    edit.GridFrameOffsetVector = [f"{85 + 2 * k}" for k in range(45)]  # starts at IPP z
    edit.save_as(folder / "RD.dcm")
    with pytest.raises(dicom.DicomImportError, match=r"RD\.dcm: GridFrameOffsetVector starts at 85: .*"
                       r"defined only for axial planes"):
        dicom.read_dicom_folder(folder)
    _linear_rtdose(folder / "RD.dcm", [40, -35, 85], [-1, 0, 0, 0, 1, 0], 45)
    edit = pydicom.dcmread(folder / "RD.dcm")
    edit.GridFrameOffsetVector = [f"{5 + 2 * k}" for k in range(45)]  # neither 0 nor IPP z first
    edit.save_as(folder / "RD.dcm")
    with pytest.raises(dicom.DicomImportError, match=r"GridFrameOffsetVector starts at 5:"):
        dicom.read_dicom_folder(folder)


def test_rtdose_of_dose_type_error_is_no_dose(exported):
    """DoseType ERROR (PS3.3 C.8.8.3) is the uncertainty of a dose: never the patient's dose."""
    _, folder = exported
    ds = pydicom.dcmread(folder / "RD.dcm")
    ds.DoseType = "ERROR"
    ds.save_as(folder / "RD.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"RD\.dcm: DoseType ERROR .*not used"):
        (q,) = dicom.read_dicom_folder(folder)
    assert q.dose is None
    with pytest.raises(dicom.DicomImportError, match=r"RD\.dcm: DoseType is ERROR"):
        dicom.read_rtdose(folder / "RD.dcm")


def test_read_rtdose_of_another_modality_names_it(exported):
    """``read_rtdose`` (public API) on a CT slice: one error naming the file and its Modality. Folder
    readers and ``evaluate`` never reach it: they take only files whose Modality is RTDOSE."""
    _, folder = exported
    ct = sorted(folder.glob("CT.*.dcm"))[0]
    with pytest.raises(dicom.DicomImportError) as ei:
        dicom.read_rtdose(ct)
    assert str(ei.value) == f"{ct}: Modality is CT, not RTDOSE"


def _ptv_contours(ds):
    num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "PTV70")
    return next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == num).ContourSequence


def test_open_contours_enclose_no_area(exported):
    """OPEN_PLANAR contours are lines (PS3.3 C.8.8.6.1): not filled as polygons."""
    p, folder = exported
    ds = pydicom.dcmread(folder / "RS.dcm")
    for c in _ptv_contours(ds):
        c.ContourGeometricType = "OPEN_PLANAR"
    ds.save_as(folder / "RS.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"RS\.dcm: \d+ contour\(s\) of ROI PTV70 are open"):
        (q,) = dicom.read_dicom_folder(folder)
    assert "PTV70" not in q.present_rois and p.mask("PTV70").any()


def test_partly_overlapping_contours_of_one_roi_warn(exported):
    """Two contours of one ROI on a slice that overlap, neither inside the other: even-odd filling
    leaves out their overlap (a union would keep it); the reader says so."""
    p, folder = exported
    ds = pydicom.dcmread(folder / "RS.dcm")
    seq = _ptv_contours(ds)
    for c in list(seq):
        d = pydicom.Dataset()
        d.update(c)
        pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
        pts[:, 0] += 4.0  # two columns to the patient's left
        d.ContourData = [f"{v:g}" for v in pts.ravel()]
        seq.append(d)
    ds.save_as(folder / "RS.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"ROI PTV70 has contours that partly overlap .* on 12 CT "
                      r"slice\(s\)"):
        (q,) = dicom.read_dicom_folder(folder)
    m = p.mask("PTV70")
    shifted = np.zeros_like(m)
    shifted[:, :, 2:] = m[:, :, :-2]
    assert np.array_equal(q.mask("PTV70"), m ^ shifted)


def test_repeated_contour_of_one_roi_is_used_once(exported):
    """A contour exported twice on its slice (the same points, here once in reverse order) is one
    contour: filled even-odd the copy would cancel it and the ROI would lose that slice without a
    word. Used once, with a warning counting the copies."""
    p, folder = exported
    ds = pydicom.dcmread(folder / "RS.dcm")
    seq = _ptv_contours(ds)
    for k, c in enumerate(list(seq)):
        d = copy.deepcopy(c)
        if k % 2:
            d.ContourData = list(np.array([float(v) for v in c.ContourData]).reshape(-1, 3)[::-1].ravel())
        seq.append(d)
    n = len(seq) // 2
    ds.save_as(folder / "RS.dcm")
    with pytest.warns(dicom.DicomWarning, match=rf"{n} contour\(s\) of ROI PTV70 repeat another contour "
                      r"of the same slice point for point; each is used once"):
        (q,) = dicom.read_dicom_folder(folder)
    assert np.array_equal(q.mask("PTV70"), p.mask("PTV70"))


def test_plan_prescribing_another_structure_set_s_roi_numbers_is_not_used(exported):
    """An RTPLAN that references another RTSTRUCT (an earlier contour version, absent) prescribes by
    that structure set's ROINumbers: here number 1 is the parotid. Its per-ROI prescriptions are not
    used (a warning says why); the same plan referencing the patient's RTSTRUCT is used, and its
    TARGET on an organ-at-risk name is said."""
    from dicom_layouts import write_rtplan

    _, folder = exported
    rp = write_rtplan(folder, folder / "RS.dcm", {"LeftParotid": 70.0})
    with pytest.warns(dicom.DicomWarning, match=r"ROI LeftParotid .* says an organ at risk, but the RTPLAN "
                      r"prescribes it 70 Gy as a TARGET"):
        (q,) = dicom.read_dicom_folder(folder)
    assert q.roi_set["LeftParotid"].kind == "target"
    ds = pydicom.dcmread(rp)
    ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(rp)
    with pytest.warns(dicom.DicomWarning, match=r"RP\.dcm prescribes by ReferencedROINumber in RTSTRUCT .*"
                      r"its per-ROI prescriptions are not used"):
        (q,) = dicom.read_dicom_folder(folder)
    par, ptv = q.roi_set["LeftParotid"], q.roi_set["PTV70"]
    assert (par.kind, par.prescription) == ("oar", None) and (ptv.kind, ptv.prescription) == ("target", 70.0)


def test_two_rois_of_one_name_are_united_not_xored(exported):
    """Two ROIs that map to one name (a duplicate 'PTV 70Gy' beside 'PTV70', a copy shifted by two
    columns) give their union, as the warning says: even-odd filling is for the contours of one ROI
    (holes), not across ROIs, where it would drop their overlap (a duplicate would cancel itself)."""
    p, folder = exported
    ds = pydicom.dcmread(folder / "RS.dcm")
    src = next(r for r in ds.StructureSetROISequence if r.ROIName == "PTV70")
    src_contours = _ptv_contours(ds)
    new_number = max(int(r.ROINumber) for r in ds.StructureSetROISequence) + 1
    roi = copy.deepcopy(src)
    roi.ROINumber, roi.ROIName = new_number, "PTV 70Gy"
    ds.StructureSetROISequence.append(roi)
    obs_src = next(o for o in ds.RTROIObservationsSequence
                   if int(o.ReferencedROINumber) == int(src.ROINumber))
    obs = copy.deepcopy(obs_src)
    obs.ReferencedROINumber = new_number
    obs.ObservationNumber = new_number
    ds.RTROIObservationsSequence.append(obs)
    rc = pydicom.Dataset()
    rc.ReferencedROINumber = new_number
    rc.ROIDisplayColor = [255, 0, 0]
    rc.ContourSequence = pydicom.Sequence()
    for c in src_contours:
        d = copy.deepcopy(c)
        pts = np.array([float(v) for v in c.ContourData]).reshape(-1, 3)
        pts[:, 0] += 4.0  # two columns to the patient's left
        d.ContourData = [f"{v:g}" for v in pts.ravel()]
        rc.ContourSequence.append(d)
    ds.ROIContourSequence.append(rc)
    ds.save_as(folder / "RS.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"all map to PTV70; their union is used"):
        (q,) = dicom.read_dicom_folder(folder)
    m = p.mask("PTV70")
    shifted = np.zeros_like(m)
    shifted[:, :, 2:] = m[:, :, :-2]
    assert (m & shifted).any()  # they overlap, so XOR and union differ
    assert np.array_equal(q.mask("PTV70"), m | shifted)


def test_write_rtdose_dose_spacing_is_per_axis_of_the_given_patient(tmp_path):
    """Three spacings are read along the given patient's array axes, not along the axes of the layout
    the file is written in: an OpenKBP-layout patient (axes P, L, I; written as S, P, L) given its own
    spacing gets its CT grid copied (the values were applied to the SPL axes: a grid of 2.0 mm along
    left-right and 2.5 mm along z instead of 2.5 and 2.0, resampled, up to 12 Gy off at voxel centres)."""
    p = make_patient(spacing=(2.5, 2.0, 1.6)).reoriented("PLI")
    assert p.geometry.axis_letters() == "PLI"
    path = dicom.write_rtdose(p, p.dose, tmp_path / "pred", dose_spacing=p.spacing)
    d, dg = dicom.read_rtdose(path)
    for j in range(3):  # each RTDOSE axis has the spacing of the patient axis along it
        i = int(np.argmax(np.abs(p.geometry.direction.T @ dg.direction[:, j])))
        assert dg.spacing[j] == pytest.approx(p.spacing[i])
    idx = np.argwhere(np.ones(d.shape, bool))
    src = p.geometry.to_index(dg.to_patient(idx))
    np.testing.assert_allclose(src, np.rint(src), atol=1e-6)  # the CT's voxel centres
    np.testing.assert_allclose(d.reshape(-1), p.dose[tuple(np.rint(src).astype(int).T)], atol=1e-6)


def test_contours_on_every_second_slice_only_are_named(exported, tmp_path):
    """An ROI drawn on every second CT slice (the slices between never interpolated): its mask is the
    contoured slices only, half the volume dicompyler-core reports for the same file (it counts each
    contour as thick as the gap to the next), and nothing said so. Now a warning names the ROI and the
    pattern; the mask itself is still what the file holds (no contours are made up)."""
    p, folder = exported
    src = tmp_path / "in"
    shutil.copytree(folder, src)
    ds = pydicom.dcmread(src / "RS.dcm")
    num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "PTV70")
    rc = next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == num)
    zs = sorted({round(float(c.ContourData[2]), 3) for c in rc.ContourSequence})
    keep = set(zs[::2])
    rc.ContourSequence = [c for c in rc.ContourSequence if round(float(c.ContourData[2]), 3) in keep]
    ds.save_as(src / "RS.dcm")
    with pytest.warns(dicom.DicomWarning, match=r"ROI PTV70 has contours on (\d+) CT slices, no two of them "
                                                r"adjacent"):
        (q,) = dicom.read_dicom_folder(src)
    drawn = [k for k in range(N) if p.mask("PTV70")[k].any()][::2]
    want = p.mask("PTV70") & np.isin(np.arange(N), drawn)[:, None, None]
    assert np.array_equal(q.mask("PTV70"), want)
    read_quiet(folder)  # contours on consecutive slices: no warning


def test_a_body_contour_drawn_as_a_rind_is_filled_with_a_warning(tmp_path):
    """A clinic's only body-like ROI a skin rind (outer and inner contours): taken as it is, the
    possible-dose mask was a shell and the whole inside of the patient lay outside every prediction and
    score; now its axial slices are filled, with a warning (as the NIfTI reader does for skin.nii.gz)."""
    from scipy import ndimage

    p = make_patient()
    body = p.possible_dose_mask
    shell = np.stack([s & ~ndimage.binary_erosion(s, iterations=2) for s in body])  # axis 0: head-feet
    rind = Patient.from_masks("pt_a", p.ct, {n: p.mask(n) for n in p.roi_set.names}, p.roi_set, p.spacing,
                              shell, p.dose, geometry=p.geometry)
    src = dicom.write_dicom(rind, tmp_path / "dcm")
    with pytest.warns(dicom.DicomWarning, match="outline, not the body"):
        (q,) = dicom.read_dicom_folder(src)
    assert dice(q.possible_dose_mask, body) > 0.98 and q.possible_dose_mask.sum() > 1.5 * shell.sum()
    assert "outline filled" in q.meta["possible_dose_mask"]
    (solid,) = read_quiet(dicom.write_dicom(p, tmp_path / "solid"))  # a solid body: as it was, no warning
    assert dice(solid.possible_dose_mask, body) > 0.98


def test_exported_prescription_that_differs_from_the_name_comes_back(tmp_path):
    """A cache's target whose prescription differs from the dose its name carries (PTV70 at 66 Gy:
    an RTPLAN's, which wins over the name on import, or an ROI map's) is exported with its label
    "prescription 66 Gy"; importing the export took the name's 70 Gy instead, without a word
    (DICOM -> cache -> DICOM -> cache changed the prescription). The label, the prescription the
    exported data held, now wins over the name, with a warning naming both."""
    p = make_patient()
    rs = RoiSet((Roi("LeftParotid", "oar"), Roi("PTV70", "target", 66.0), Roi("Ring", "other")))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                dict(p.meta), p.geometry)
    folder = dicom.write_dicom(p, tmp_path / "dcm")
    with pytest.warns(dicom.DicomWarning, match=r"PTV70.*70 Gy.*66 Gy") as rec:
        (q,) = dicom.read_dicom_folder(folder)
    assert q.roi_set["PTV70"] == Roi("PTV70", "target", 66.0)
    assert "ROIObservationDescription" in q.meta["prescriptions_from"]["PTV70"]
    assert any("using the label" in str(w.message) for w in rec)
    # a name that agrees with its label: no word, as before
    (r,) = read_quiet(dicom.write_dicom(make_patient(), tmp_path / "same"))
    assert r.roi_set["PTV70"].prescription == 70.0
    # an ROI map's prescription still wins over both
    mp = tmp_path / "map.json"
    mp.write_text(json.dumps({"names": {}, "prescriptions": {"PTV70": 68}}))
    (s,) = dicom.read_dicom_folder(folder, mp)
    assert s.roi_set["PTV70"].prescription == 68.0


@pytest.mark.parametrize(("ids", "want"), [
    (["A", "B"], ["A", "B"]),
    (["A", "A", "B"], ["A_1", "A_2", "B"]),
    (["A", "A", "A_1"], ["A_2", "A_3", "A_1"]),  # A's second plan was named A_1, the other patient's id
    (["A_1", "A", "A"], ["A_1", "A_2", "A_3"]),
    (["abc", "ABC"], ["abc_1", "ABC_2"]),  # one folder on a file system that ignores case
    (["x/1", "x_1"], ["x_1_1", "x_1_2"]),  # made safe alike
    (["", ""], ["plans_1", "plans_2"]),  # no PatientID: the folder's name
    # Windows' device names (with any ending) are no file there: given a '_'; clinic ids are kept
    (["CON", "nul.1", "lpt\u00b9", "HN:001?", "COM10", "M\u00fcller-01.2"],
     ["CON_", "nul_.1", "lpt\u00b9_", "HN_001", "COM10", "M\u00fcller-01.2"]),
])
def test_imported_patient_ids_are_unique(ids, want):
    """Ids name the cache's files and the outputs' folders: two sources with one id wrote one over the
    other. PatientIDs A, A and A_1 (a clinic's second plan of patient A, and another patient whose ID
    is A_1) were imported as A_1, A_2 and A_1."""
    from types import SimpleNamespace

    from dosepred.io.dicom.scan import assign_ids

    sources = [SimpleNamespace(id=None, series=SimpleNamespace(
        first=SimpleNamespace(PatientID=i), files=[(Path("/data/plans/f.dcm"),)])) for i in ids]
    assign_ids(sources)
    got = [s.id for s in sources]
    assert got == want
    assert len({g.casefold() for g in got}) == len(got)


def test_names_latin_1_cannot_hold_are_written_in_utf_8(tmp_path):
    """Every exported file declared SpecificCharacterSet ISO_IR 100 (Latin-1): a name Latin-1 cannot
    hold (Polish "Łódź", Japanese "山田", Greek) was written as "?" with only pydicom's "Failed to
    encode" warning, so "Ślinianka L" and "腮腺 左" came back as other names, and two ROIs that differ
    only in such letters came back as one name (united). Such files now declare ISO_IR 192 (UTF-8) and
    the names come back as they were; a Latin-1 name keeps ISO_IR 100."""
    p = make_patient(pid="pt_ja")
    names = {"LeftParotid": "腮腺 左", "PTV70": "PTV70", "Ring": "Łódź Ring"}
    rs = RoiSet(tuple(Roi(names[r.name], r.kind, r.prescription) for r in p.roi_set))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                {**p.meta, "patient_name": "山田^太郎"}, p.geometry)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Failed to encode value" replacement
        folder = dicom.write_dicom(p, tmp_path / "dcm")
        rd = dicom.write_rtdose(p, p.dose, tmp_path / "RD.dcm", model_name="モデル")
    for f in [folder / "RS.dcm", next(folder.glob("CT*.dcm")), rd]:
        ds = pydicom.dcmread(f)
        assert ds.SpecificCharacterSet == "ISO_IR 192", f
        assert str(ds.PatientName) == "山田^太郎"
    ds = pydicom.dcmread(folder / "RS.dcm")
    assert {r.ROIName for r in ds.StructureSetROISequence} >= {"腮腺 左", "Łódź Ring"}
    (q,) = dicom.read_dicom_folder(folder)
    assert set(q.roi_set.names) == {"腮腺 左", "PTV70", "Łódź Ring"}
    assert np.array_equal(q.mask("腮腺 左"), p.mask("腮腺 左"))
    # Latin-1 text keeps the Latin-1 declaration
    (latin,) = [make_patient(pid="pt_é")]
    ds = pydicom.dcmread(dicom.write_dicom(latin, tmp_path / "l1") / "RS.dcm")
    assert ds.SpecificCharacterSet == "ISO_IR 100" and ds.PatientID == "pt_é"


@pytest.mark.parametrize("roi, pid, field", [
    ("Parotid_L_PRV05_minus_PTV_crop_3mm_for_optimisation_only_version_2", "pt_a", "ROIName"),
    ("Ring 1\\2", "pt_a", "ROIName"),
    ("Ring", "HN_0001_planning_CT_2019-03-01_with_contrast_reviewed_by_dr_smith_v2", "PatientID"),
])
def test_names_dicom_cannot_hold_are_refused_before_writing(tmp_path, roi, pid, field):
    """An ROI name of more than 64 characters (LO) was written with pydicom's warning naming neither
    the ROI nor the patient (software that keeps 64 reads another name, and two names alike in their
    first 64 characters as one); one with a backslash, DICOM's value delimiter, came back as
    "['Ring 1', '2']". A patient id (a NIfTI folder's name) alike. Now an error naming the patient,
    the field and the name, and nothing is written."""
    p = make_patient(pid=pid)
    rs = RoiSet(tuple(Roi(roi if r.name == "Ring" else r.name, r.kind, r.prescription) for r in p.roi_set))
    p = Patient(p.id, p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                dict(p.meta), p.geometry)
    bad = roi if field == "ROIName" else pid
    with pytest.raises(InputError, match=rf"patient .*{field}.*cannot be written in DICOM") as e:
        dicom.write_dicom(p, tmp_path / "dcm")
    assert repr(bad) in str(e.value)
    assert not (tmp_path / "dcm").exists() or not any((tmp_path / "dcm").iterdir())
    if field == "PatientID":
        with pytest.raises(InputError, match="PatientID"):
            dicom.write_rtdose(p, p.dose, tmp_path / "RD.dcm")
        assert not (tmp_path / "RD.dcm").exists()
    # 64 characters are written and come back
    ok = Patient(p.id[:64], p.ct, p.roi_codes, RoiSet(tuple(Roi(r.name.replace("\\", " ")[:64], r.kind,
                 r.prescription) for r in rs)), p.spacing, p.possible_dose_mask, p.dose, p.missing_rois,
                 dict(p.meta), p.geometry)
    (q,) = dicom.read_dicom_folder(dicom.write_dicom(ok, tmp_path / "ok"))
    assert set(q.roi_set.names) == set(ok.roi_set.names)


def test_names_in_nfd_are_the_names_in_nfc(tmp_path):
    """Unicode writes "Parótida" two ways: "ó" as one character (NFC, what keyboards type) or as "o" and
    a combining accent (NFD, what macOS file names hold). A structure set written in NFD was another
    ROI for dosepred: an ROI map's NFC key did not name it (and said nothing, since the key named the
    NFC patients' ROI), so those patients silently lacked LeftParotid, and two patients' "Parótida izq"
    became two ROIs. Names and map keys are now compared and kept in NFC."""
    import unicodedata

    nfc = "Lésion bord"  # no alias (the aliases read "Parótida izq" as LeftParotid)
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    for pid, name in (("pt_a", nfc), ("pt_b", nfd)):
        folder = dicom.write_dicom(make_patient(pid=pid), tmp_path / "dcm")
        ds = pydicom.dcmread(folder / "RS.dcm")
        ds.SpecificCharacterSet = "ISO_IR 192"
        for r in ds.StructureSetROISequence:
            r.ROIName = name if r.ROIName == "LeftParotid" else r.ROIName
        ds.save_as(folder / "RS.dcm")
    a, b = read_quiet(tmp_path / "dcm")
    assert a.roi_set.names == b.roi_set.names and nfc in a.roi_set.names
    assert nfc not in a.missing_rois and nfc not in b.missing_rois
    mp = tmp_path / "map.json"
    mp.write_text(json.dumps({nfc: "LeftParotid"}, ensure_ascii=False))
    a, b = read_quiet(tmp_path / "dcm", mp)
    for q in (a, b):
        assert "LeftParotid" in q.roi_set.names and "LeftParotid" not in q.missing_rois, q.id
        assert q.mask("LeftParotid").sum() == make_patient().mask("LeftParotid").sum()
    mp.write_text(json.dumps({nfd: "LeftParotid"}, ensure_ascii=False))  # a key typed on macOS
    assert all("LeftParotid" not in q.missing_rois for q in read_quiet(tmp_path / "dcm", mp))


def test_an_roi_name_holding_a_backslash_is_read_as_written(exported):
    """A backslash is DICOM's value delimiter, which some planning systems let into an ROIName all the
    same: pydicom reads "Ring 1\\\\2" as two values, and the ROI was named "['Ring 1', '2']" (a map or a
    protocol naming "Ring 1\\\\2" missed it). The name is now read as written."""
    _, folder = exported
    _rename_rois(folder / "RS.dcm", {"Ring": "Ring 1\\2"})
    (q,) = read_quiet(folder)
    assert "Ring 1\\2" in q.roi_set.names, q.roi_set.names
    (r,) = read_quiet(folder, {"Ring 1\\2": "RingMapped"})
    assert "RingMapped" in r.roi_set.names




def test_suffixed_ids_never_repeat_another_patient_s(tmp_path):
    """A PatientID with two CT series is suffixed (X -> X_1, X_2); a folder also holding PatientID "X_1"
    had two patients "X_1": `predict` wrote "3 predicted doses" as two files (X_1's dose written over by
    the other's) and the import ended in "patient id X_1 appears twice". Ids are now unique: the
    suffixes skip the ids other patients have."""
    dicom.write_dicom(make_patient(pid="X"), tmp_path / "dcm" / "a")
    dicom.write_dicom(make_patient(pid="X", shift=2.0), tmp_path / "dcm" / "b")
    dicom.write_dicom(make_patient(pid="X_1", shift=1.0), tmp_path / "dcm" / "c")
    ps = dicom.read_dicom_folder(tmp_path / "dcm")
    ids = [p.id for p in ps]
    assert len(set(ids)) == 3, ids
    by_pid = {}
    for p in ps:
        by_pid.setdefault(p.meta["patient_id"], []).append(p.id)
    assert by_pid["X_1"] == ["X_1"] and sorted(by_pid["X"]) == ["X_2", "X_3"]


def test_a_mapped_name_in_another_case_or_with_spaces_is_the_canonical_one():
    """An ROI map's value was taken verbatim: "LeftParotid " (a trailing space) or "spinalcord" named an
    ROI that is not the model's or the protocol's LeftParotid / SpinalCord, though it printed alike
    (predict then said the patient lacked LeftParotid, and qa listed it as not contoured). A mapped
    name that is a canonical name but for case, spaces and underscores is now that canonical name; a
    name of its own (TG-263's "Parotid_R", "PTV_boost") is kept as written."""
    m = RoiMap.from_obj({"Parotid Lt": "LeftParotid ", "Myelon": "spinalcord", "Hirnstamm": " BrainStem",
                         "PTV hoch": "ptv70", "Par R": "Parotid_R", "PTV_high": "PTV_boost"})
    got = {k: m.resolve(k, "PTV" if "PTV" in k else "ORGAN") for k in m.names}
    assert got["Parotid Lt"].name == "LeftParotid" and got["Parotid Lt"].kind == "oar"
    assert got["Myelon"].name == "SpinalCord"
    assert got["Hirnstamm"].name == "Brainstem"
    ptv = got["PTV hoch"]
    assert (ptv.name, ptv.kind, ptv.prescription) == ("PTV70", "target", 70)
    assert got["Par R"].name == "Parotid_R" and got["PTV_high"].name == "PTV_boost"
    # the map's kinds and prescriptions, given by the name as the map writes it, still apply
    m = RoiMap.from_obj({"names": {"PTV hoch": "ptv70"}, "prescriptions": {"ptv70": 66}})
    assert m.resolve("PTV hoch", "PTV") == Canonical("PTV70", "target", 66.0, True)


def test_a_contour_too_long_for_explicit_vr_is_written_as_numbers(tmp_path):
    """A body outline of some 3000 points (a 0.98 mm CT: a sample patient's Body held 4210) is more
    ContourData than an explicit-VR DS element's 16-bit length holds (65534 bytes). Written in explicit
    VR, pydicom stored it as UN bytes: dicompyler-core read such a contour as 28859 'points' of garbage
    and other readers may refuse it. The structure set is then written in implicit VR (the default
    transfer syntax, 32-bit lengths): every ContourData reads as DS numbers, the mask comes back exact."""
    n = 400
    body = np.zeros((2, n, n), bool)
    body[:, 10:n - 10, 10:n - 10] = True
    for e in (9, n - 10):  # one-pixel teeth along every side: a contour of some 3000 vertices
        body[:, e, 10:n - 10:2] = True
        body[:, 10:n - 10:2, e] = True
    ptv = np.zeros_like(body)
    ptv[:, 190:210, 190:210] = True
    spacing = (2.0, 0.9765625, 0.9765625)
    g = Geometry.from_dicom((-195.123456789, -201.987654321, 812.3456789), (1, 0, 0, 0, 1, 0), spacing)
    p = Patient.from_masks("pt_big", np.where(body, 40, -1000).astype(np.int16), {"PTV70": ptv},
                           RoiSet((Roi("PTV70", "target", 70.0),)), spacing, body, None, geometry=g)
    folder = dicom.write_dicom(p, tmp_path / "dcm")
    ds = pydicom.dcmread(folder / "RS.dcm")
    longest = 0
    for rc in ds.ROIContourSequence:
        for c in rc.ContourSequence:
            assert c["ContourData"].VR == "DS", c["ContourData"].VR
            longest = max(longest, len(c.ContourData))
    assert longest // 3 > 2500  # the case under test: a contour over the 16-bit length
    [q] = read_quiet(folder)
    assert np.array_equal(q.possible_dose_mask, body)
    assert np.array_equal(q.mask("PTV70"), ptv)


def test_a_body_mapped_to_a_name_the_aliases_read_as_the_body_is_the_body(exported, tmp_path):
    """{"Contorno Externo": "External"}: the map named the body by a name the aliases read as the body
    (External, Skin, Outline, Body), which was kept as written: an ROI 'External' of kind other, and the
    possible-dose mask taken from CT > -500 HU (couch and mask included) as for a patient without a body
    contour, though the RTROIInterpretedType said EXTERNAL, without a word. It is now the body."""
    p, folder = exported
    _rename_rois(folder / "RS.dcm", {"External": "Contorno Externo"})
    for value in ("External", "Skin", "OUTLINE"):
        m = RoiMap.from_obj({"Contorno Externo": value})
        assert m.resolve("Contorno Externo", "EXTERNAL").is_body, value
        assert m.resolve("Contorno Externo", "").is_body, value
    kept = RoiMap.from_obj({"names": {"Piel 5mm": "Skin"}, "kinds": {"Skin": "oar"}}).resolve("Piel 5mm", "")
    assert (kept.name, kept.kind, kept.is_body) == ("Skin", "oar", False)  # a kind given: an ROI, as before
    mp = tmp_path / "map.json"
    mp.write_text(json.dumps({"Contorno Externo": "External"}))
    (q,) = read_quiet(folder, mp)
    assert "External" not in q.roi_set.names
    assert q.meta["possible_dose_mask"] == "body contour Contorno Externo"
    np.testing.assert_array_equal(q.possible_dose_mask, p.possible_dose_mask)


def test_an_unrecognised_name_contoured_only_where_a_known_organ_is_not_is_warned_of(tmp_path):
    """A clinic's left parotid under a name no alias knows (``Parotid_Lt_old``) in one patient: imported
    as another ROI, with LeftParotid absent for that patient, without a word, so a fine-tune learnt
    its dose as for a patient without a left parotid (found on OpenKBP validation patients exported as
    DICOM, one's Parotid_R renamed Parotid_Rt_old). One warning naming the ROI, the patient, the organ
    and the map that fixes it; with that map, none, and the parotid is the patient's LeftParotid."""
    a, b = make_patient("pt_a"), make_patient("pt_b")
    src = tmp_path / "src"
    dicom.write_dicom(a, src / "pt_a")
    fb = dicom.write_dicom(b, src / "pt_b")
    _rename_rois(fb / "RS.dcm", {"LeftParotid": "Parotid_Lt_old"})
    with pytest.warns(dicom.DicomWarning) as got:
        pats = {p.id: p for p in dicom.read_dicom_folder(src)}
    (w,) = [str(x.message) for x in got if "Parotid_Lt_old" in str(x.message)]
    assert w.startswith("ROI 'Parotid_Lt_old' (patients pt_b) is contoured only in patients without "
                        "LeftParotid: ") and '{"names": {"Parotid_Lt_old": "LeftParotid"}}' in w
    assert "LeftParotid" in pats["pt_b"].missing_rois
    mp = tmp_path / "map.json"
    mp.write_text(json.dumps({"names": {"Parotid_Lt_old": "LeftParotid"}}))
    fixed = {p.id: p for p in read_quiet(src, mp)}
    assert fixed["pt_b"].roi_set.names == ("LeftParotid", "PTV70", "Ring")
    np.testing.assert_array_equal(fixed["pt_b"].mask("LeftParotid"), b.mask("LeftParotid"))
    assert read_quiet(src / "pt_a")[0].missing_rois == ()  # an ROI of one patient alone: no warning


def test_a_name_sharing_only_a_side_word_with_an_organ_is_no_lookalike(tmp_path):
    """``Humerus_Left`` in the one patient without LeftParotid was warned of as possibly LeftParotid
    ('map it with --roi-map {"Humerus_Left": "LeftParotid"}'): the two share only the word "left", which
    names a side, not an organ (import-dicom of synthetic patients, one's LeftParotid renamed so)."""
    a, b = make_patient("pt_a"), make_patient("pt_b")
    src = tmp_path / "src"
    dicom.write_dicom(a, src / "pt_a")
    fb = dicom.write_dicom(b, src / "pt_b")
    _rename_rois(fb / "RS.dcm", {"LeftParotid": "Humerus_Left"})
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        pats = {p.id: p for p in dicom.read_dicom_folder(src)}
    assert [str(x.message) for x in got if "Humerus_Left" in str(x.message)] == []
    assert "LeftParotid" in pats["pt_b"].missing_rois and "Humerus_Left" in pats["pt_b"].roi_set.names


def test_a_lookalike_of_the_other_side_is_not_offered_as_that_organ(tmp_path):
    """``Parotid_Rt_old`` in the one patient without LeftParotid was offered as LeftParotid ('map it with
    --roi-map {"Parotid_Rt_old": "LeftParotid"}'): a map that puts a contour named right into the left
    parotid's channel. An organ of the other side than the name says is no lookalike of it."""
    a, b = make_patient("pt_a"), make_patient("pt_b")
    src = tmp_path / "src"
    dicom.write_dicom(a, src / "pt_a")
    fb = dicom.write_dicom(b, src / "pt_b")
    _rename_rois(fb / "RS.dcm", {"LeftParotid": "Parotid_Rt_old"})
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        dicom.read_dicom_folder(src)
    assert [str(x.message) for x in got if "Parotid_Rt_old" in str(x.message)] == []
