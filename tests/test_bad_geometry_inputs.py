"""Silent wrong answers and tracebacks on DICOM/NIfTI inputs found by a review (each failed before
its fix)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.geometry import Geometry
from dosepred.io import cache, dicom, nifti
from dosepred.resample import dose_on_grid
from test_dicom import make_patient

PROTOCOL = {"name": "t", "criteria": [
    {"roi": "PTV70", "metric": "D95%", "limit": 66.5, "direction": ">="},
    {"roi": "LeftParotid", "metric": "Dmean", "limit": 26, "direction": "<="}]}


def run(args):
    return CliRunner().invoke(app, args)


def flat(text: str) -> str:
    return " ".join(text.split())


def edit(path: Path, fn) -> None:
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return dicom.write_dicom(make_patient(), tmp_path_factory.mktemp("rv") / "dcm")


def _dup_number(ds):
    ds.StructureSetROISequence[1].ROINumber = ds.StructureSetROISequence[0].ROINumber


def _no_contour_ref(ds):
    del ds.ROIContourSequence[0].ReferencedROINumber


def _no_obs_ref(ds):
    del ds.RTROIObservationsSequence[0].ReferencedROINumber


def _roi_other_frame(ds):
    for r in ds.StructureSetROISequence:
        if r.ROIName == "PTV70":
            r.ReferencedFrameOfReferenceUID = pydicom.uid.generate_uid()


def _no_name(ds):
    ds.StructureSetROISequence[1].ROIName = ""


@pytest.mark.parametrize("mutate,message", [
    (_dup_number, r"StructureSetROISequence item 2: ROIs 'LeftParotid' and 'PTV70' share ROINumber 1"),
    (_no_contour_ref, r"ROIContourSequence item 1 lacks ReferencedROINumber"),
    (_no_obs_ref, r"RTROIObservationsSequence item 1 lacks ReferencedROINumber"),
    (_roi_other_frame, r"ROI PTV70 \(ROINumber 2\) has ReferencedFrameOfReferenceUID .* another frame"),
    (_no_name, r"StructureSetROISequence item 2 \(ROINumber \d+\) has no ROIName"),
], ids=["duplicate-roinumber", "contour-without-roinumber", "observation-without-roinumber",
        "roi-in-other-frame", "unnamed-roi"])
def test_rtstruct_roi_bookkeeping_is_checked(exported, tmp_path, mutate, message):
    import re

    src = tmp_path / "in"
    shutil.copytree(exported, src)
    edit(src / "RS.dcm", mutate)
    res = run(["data", "import-dicom", str(src), "--out", str(tmp_path / "c"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert re.search(r"RS\.dcm.*" + message, flat(res.output)), res.output
    assert not (tmp_path / "c").exists()


def test_evaluate_refuses_rtdose_of_another_frame_of_reference(exported, tmp_path):
    (q,) = dicom.read_dicom_folder(exported)
    pred = tmp_path / "pred"
    rd = dicom.write_rtdose(q, q.dose, pred / "RD.dcm")

    def other(ds):
        ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
        for k in ("ReferencedStructureSetSequence", "DVHSequence"):
            if k in ds:
                delattr(ds, k)
    edit(rd, other)
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps(PROTOCOL))
    res = run(["evaluate", "--reference", str(exported.parent), "--prediction", str(pred), "--protocol",
               str(proto), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "matched by PatientID" in flat(res.output) and "FrameOfReference" in flat(res.output)


def _strip_transforms(folder: Path) -> None:
    for f in [folder / "ct.nii.gz", *folder.glob("*.nii.gz"), *(folder / "rois").glob("*.nii.gz")]:
        img = nib.load(f)
        new = nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header.copy())
        new.set_sform(None, code=0)
        new.set_qform(None, code=0)
        nib.save(new, f)


def test_nifti_without_qform_and_sform_is_rejected(tmp_path):
    f = nifti.write_patient(make_patient(), tmp_path)
    info = json.loads((f / "rois.json").read_text())
    info.pop("geometry")
    (f / "rois.json").write_text(json.dumps(info))
    _strip_transforms(f)
    with pytest.raises(nifti.NiftiFormatError, match=r"ct\.nii\.gz: qform_code and sform_code are both 0"):
        nifti.read_patient(f)


def _write_nii(folder: Path, pid: str, arr: np.ndarray, g: Geometry) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(arr.astype(np.float32), g.ras_affine)
    img.set_qform(g.ras_affine, 1)
    img.set_sform(g.ras_affine, 1)
    nib.save(img, folder / f"{pid}.nii.gz")


def test_evaluate_places_nifti_predictions_by_their_affine(exported, tmp_path):
    (q,) = dicom.read_dicom_folder(exported)
    g = q.geometry
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps(PROTOCOL))

    def score(pred: Path, tag: str) -> float:
        out = tmp_path / f"{tag}.json"
        res = run(["evaluate", "--reference", str(exported.parent), "--prediction", str(pred), "--protocol",
                   str(proto), "--json", str(out), "--no-progress"])
        assert res.exit_code == 0, res.output
        return json.loads(out.read_text())["dose_score"]

    flips = [False] * 3
    flips[g.axis_along("LR")] = flips[g.axis_along("AP")] = True
    axes = tuple(i for i, f in enumerate(flips) if f)
    # the reference's own dose stored in another axis order (RAS-canonical), with its affine
    _write_nii(tmp_path / "a", q.id, np.flip(q.dose, axis=axes), g.reoriented((0, 1, 2), flips, q.shape))
    assert score(tmp_path / "a", "a") < 1e-4
    # the same array with an affine that mirrors it left-right: a wrong dose, not a perfect one
    mirrored = Geometry(g.origin * np.array([-1.0, 1, 1]), np.diag([-1.0, 1, 1]) @ g.direction, g.spacing)
    _write_nii(tmp_path / "b", q.id, q.dose, mirrored)
    assert score(tmp_path / "b", "b") > 1.0


def test_evaluate_cache_reference_refuses_nifti_prediction_on_another_grid(exported, tmp_path):
    (q,) = dicom.read_dicom_folder(exported)
    cache.write_cache([q], tmp_path / "c", roi_set=q.roi_set)
    g = q.geometry
    flips = [False] * 3
    flips[g.axis_along("LR")] = True
    _write_nii(tmp_path / "pred", q.id, np.flip(q.dose, axis=g.axis_along("LR")),
               g.reoriented((0, 1, 2), flips, q.shape))
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps(PROTOCOL))
    res = run(["evaluate", "--reference", str(tmp_path / "c"), "--prediction", str(tmp_path / "pred"),
               "--protocol", str(proto), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "lies on another grid" in flat(res.output)


def test_rtdose_of_an_absent_plan_does_not_borrow_the_present_plans_prescription(exported, tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dicom_layouts import write_rtplan

    src = tmp_path / "in"
    shutil.copytree(exported, src)
    write_rtplan(src, src / "RS.dcm", {"PTV70": 66.0}, fractions=33)

    def other_plan(ds):
        r = Dataset()
        r.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
        r.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
        ds.ReferencedRTPlanSequence = Sequence([r])
    edit(src / "RD.dcm", other_plan)
    with pytest.warns(dicom.DicomWarning, match=r"RD\.dcm references RTPLAN .* not among the patient's"):
        (q,) = dicom.read_dicom_folder(src)
    assert q.meta.get("fractions") != 33 and q.meta.get("rtplan_file") is None


@pytest.mark.parametrize("slope", ["0", "nan"])
def test_ct_rescale_slope_that_is_not_a_usable_number_is_an_error(exported, tmp_path, slope):
    src = tmp_path / "in"
    shutil.copytree(exported, src)
    cts = [f for f in src.glob("*.dcm") if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT"]
    ct = sorted(cts)[0]

    def bad(ds):
        ds.RescaleSlope = slope
    edit(ct, bad)
    res = run(["data", "import-dicom", str(src), "--out", str(tmp_path / "c"), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert f"RescaleSlope is '{slope}'" in flat(res.output) and ct.name in flat(res.output)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kind", ["BEAM", "FRACTION"])
def test_partial_dose_is_never_the_patients_dose(exported, tmp_path, kind):
    """An RTDOSE of one beam or one fraction used as the plan's dose would make every comparison wrong
    by the missing beams or fractions: not used, with a warning naming file and type; import then
    has no dose (prediction still works), and QA, which needs the plan's dose, is one clear error."""
    src = tmp_path / "in"
    shutil.copytree(exported, src)

    def partial(ds):
        ds.DoseSummationType = kind
    edit(src / "RD.dcm", partial)
    with pytest.warns(dicom.DicomWarning, match=rf"RD\.dcm \({kind}: one .*not used as the patient's dose"):
        (q,) = dicom.read_dicom_folder(src)
    assert q.dose is None
    model = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm"
    res = run(["qa", "--model", str(model), "--plans", str(src), "--out", str(tmp_path / "qa"),
               "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "has no dose" in flat(res.output)


def test_of_several_rtstructs_the_one_the_dose_references_is_used(exported, tmp_path):
    """Two structure sets on one CT (an older version beside the approved one): the one the folder's
    RTDOSE references is used whatever the file names, with a warning naming both."""
    src = tmp_path / "in"
    shutil.copytree(exported, src)
    old = pydicom.dcmread(src / "RS.dcm")
    old.SOPInstanceUID = pydicom.uid.generate_uid()
    for r in old.StructureSetROISequence:
        if r.ROIName == "PTV70":
            r.ROIName = "PTV70_old"
    old.save_as(src / "AA_old.dcm")  # first by path
    with pytest.warns(dicom.DicomWarning, match=r"several RTSTRUCTs; using .*RS\.dcm \(the one the "
                                                r"RTPLAN/RTDOSE references\), ignoring .*AA_old\.dcm"):
        (q,) = dicom.read_dicom_folder(src)
    assert q.meta["rtstruct_file"].endswith("RS.dcm") and "PTV70" in q.present_rois


def test_evaluate_refuses_a_nifti_prediction_whose_affine_is_a_placeholder(exported, tmp_path):
    """`nib.Nifti1Image(dose, np.eye(4))`: the header places the dose 1 mm apart at the origin, mostly
    beside the patient; scoring it there would be a wrong answer, so it is an error naming the file."""
    (q,) = dicom.read_dicom_folder(exported)
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(q.dose.astype(np.float32), np.eye(4)), tmp_path / "pred" / f"{q.id}.nii.gz")
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps(PROTOCOL))
    res = run(["evaluate", "--reference", str(exported.parent), "--prediction", str(tmp_path / "pred"),
               "--protocol", str(proto), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "of the possible-dose mask uncovered" in flat(res.output)


def test_an_empty_placeholder_roi_in_another_frame_is_not_an_error(exported, tmp_path):
    """The frame check concerns contours that would be drawn: an ROI item without contours (a
    placeholder) that names another frame does not stop the import."""
    src = tmp_path / "in"
    shutil.copytree(exported, src)

    def placeholder(ds):
        from pydicom.dataset import Dataset

        n = max(int(r.ROINumber) for r in ds.StructureSetROISequence) + 1
        r = Dataset()
        r.ROINumber, r.ROIName = n, "Couch"
        r.ReferencedFrameOfReferenceUID = pydicom.uid.generate_uid()
        ds.StructureSetROISequence.append(r)
        c = Dataset()
        c.ReferencedROINumber = n
        ds.ROIContourSequence.append(c)
    edit(src / "RS.dcm", placeholder)
    (q,) = dicom.read_dicom_folder(src)
    assert "PTV70" in q.present_rois


# ------------------------------------------------------------- written dose grids cover the patient

def _rotation(angles_deg) -> np.ndarray:
    a, b, c = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


COVERAGE_GRIDS = [  # spacing (mm per array axis), origin (mm), direction (columns), mask box per axis
    ((2.0, 0.74, 0.74), (-11.3, 7.77, 101.1), np.eye(3)[:, [2, 1, 0]] * [1, 1, 1], "edges"),
    ((1.25, 0.977, 1.3), (3.3, -250.01, 0.4), np.eye(3)[:, [2, 1, 0]], "inner"),
    ((3.0, 2.6, 2.6), (0.0, 0.0, 0.0), np.eye(3)[:, [2, 1, 0]], "edges"),
    ((2.5, 1.17, 0.93), (17.0, -4.2, -80.9), np.diag([-1.0, 1, -1])[:, [1, 2, 0]], "inner"),
    ((1.1, 3.3, 0.81), (-5.5, 12.25, 33.3), _rotation((0, 0, 17)) @ np.eye(3)[:, [2, 1, 0]], "edges"),
    ((2.2, 1.9, 1.7), (9.9, 9.9, -9.9), _rotation((11, -23, 7)), "inner"),
]


@pytest.mark.parametrize("spacing,origin,direction,where", COVERAGE_GRIDS,
                         ids=[f"grid{i}-{c[3]}" for i, c in enumerate(COVERAGE_GRIDS)])
def test_every_written_dose_grid_covers_the_possible_dose_mask(tmp_path, spacing, origin, direction, where):
    """A predicted dose (0 Gy outside the possible-dose mask) written as RTDOSE (cropped, on a coarser
    grid), NIfTI or cache and read back onto the patient's grid covers every voxel of the mask to its
    outermost voxel centres, with the values written: a dose linear in patient coordinates (computed
    here with numpy alone) comes back within 0.5 Gy at every mask voxel, the mask's edge included (0 Gy
    or a fraction of the dose there before)."""
    from dosepred.patient import Patient, Roi, RoiSet
    from dosepred.predict import write_prediction

    shape = (19, 23, 29)
    g = Geometry(np.asarray(origin, float), direction, spacing)
    if where == "edges":  # the mask touches every face of the array
        box = tuple(slice(0, n) for n in shape)
    else:
        box = (slice(3, 17), slice(1, 20), slice(5, 27))
    mask = np.zeros(shape, bool)
    mask[box] = True
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = (np.asarray(origin) + (idx * np.asarray(spacing)) @ np.asarray(direction).T).reshape(*shape, 3)
    linear = (40.0 + 0.05 * xyz[..., 0] - 0.03 * xyz[..., 1] + 0.02 * xyz[..., 2]).astype(np.float32)
    assert linear.min() > 1
    dose = np.where(mask, linear, 0).astype(np.float32)
    ptv = np.zeros(shape, bool)
    ptv[8:11, 9:12, 10:14] = True
    p = Patient.from_masks("pt_c", np.full(shape, 30, np.int16), {"PTV70": ptv},
                           RoiSet((Roi("PTV70", "target", 70.0),)), spacing, mask, None, geometry=g)
    # RTDOSE, default grid (max(spacing, 2.5 mm)) and a coarse one
    for ds in (None, 4.0):
        f = write_prediction(p, dose, tmp_path / f"dcm{ds}", "dicom", dose_spacing=ds)
        arr, dg = dicom.read_rtdose(f)
        np.testing.assert_allclose(dg.spacing, [ds or max(s, 2.5) for s in spacing], rtol=1e-9)
        back, inside = dose_on_grid(arr, dg, g, shape)
        assert inside[mask].all(), f"{int((~inside[mask]).sum())} mask voxels outside the RTDOSE grid"
        np.testing.assert_allclose(back[mask], linear[mask], atol=0.5)
    # NIfTI, placed by its affine
    f = write_prediction(p, dose, tmp_path / "nii", "nifti")
    fg = nifti.file_geometry(f)
    assert fg is not None and fg.same_as(g)
    np.testing.assert_array_equal(nifti.read_dose(f)[mask], dose[mask])
    # cache
    cache.write_cache([p.with_dose(dose)], tmp_path / "c")
    (q,) = list(cache.Cache.open(tmp_path / "c"))
    assert q.geometry.same_as(g)
    np.testing.assert_array_equal(q.dose[mask], dose[mask])


MODEL_SPACE_GRIDS = [  # spacing (mm per array axis), direction (columns), mask box; the model: 4-6 mm
    ((3.7, 4.3, 2.7), np.diag([-1.0, -1, 1]), "edges"),  # aligned, finer: resampled in its own axes
    ((8.0, 8.0, 6.0), np.eye(3)[:, [1, 0, 2]] * [1, 1, -1], "edges"),  # aligned, coarser
    ((3.1, 2.9, 4.4), _rotation((17, -9, 23)) @ np.eye(3)[:, [1, 0, 2]], "edges"),  # oblique
    ((2.2, 1.9, 1.7), _rotation((0, 0, 20)), "inner"),  # oblique, mask inside the array
]


@pytest.mark.parametrize("spacing,direction,where", MODEL_SPACE_GRIDS,
                         ids=[f"grid{i}-{c[2]}" for i, c in enumerate(MODEL_SPACE_GRIDS)])
def test_a_dose_predicted_in_the_model_space_covers_the_mask_edge(spacing, direction, where):
    """A patient resampled into the model's space (spacing outside its range, or an oblique grid) and
    its dose brought back (`Placement.back`): the network's dose is 0 Gy outside the model-space
    mask, and the patient's outermost mask voxels, between model voxels inside and outside that
    mask, read back a fraction of their dose (0 Gy on the last slice of an oblique CT: a NIfTI or
    RTDOSE prediction with a mean of 9 Gy on its last slice against 39-49 Gy on the next ones).
    A dose linear in patient coordinates (computed here with numpy), masked as the network's output
    is, comes back within 0.5 Gy at every mask voxel, the edge included."""
    from dosepred.models.space import ModelSpace, into_space
    from dosepred.patient import Patient, Roi, RoiSet

    shape = (24, 26, 22)
    g = Geometry(np.array([12.3, -40.7, 5.5]), direction, spacing)
    if where == "edges":  # a body: a cylinder along axis 0 through both end slices, touching the sides
        i1, i2 = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
        disk = ((i1 - 12.5) / 13.0) ** 2 + ((i2 - 10.5) / 11.0) ** 2 <= 1
        mask = np.broadcast_to(disk, shape).copy()
    else:
        mask = np.zeros(shape, bool)
        mask[3:20, 2:23, 4:19] = True
    ptv = np.zeros(shape, bool)
    ptv[9:14, 10:15, 8:13] = True
    p = Patient.from_masks("pt_m", np.full(shape, 30, np.int16), {"PTV70": ptv},
                           RoiSet((Roi("PTV70", "target", 70.0),)), spacing, mask, None, geometry=g)
    space = ModelSpace(spacing_min=(4.0,) * 3, spacing_max=(6.0,) * 3, fov_min=(50.0,) * 3,
                       fov_max=(400.0,) * 3, spacing_median=(5.0,) * 3, shape_median=None)
    placed = into_space(p, space, warn=False)
    assert placed.kind == "resampled"

    def linear(geo: Geometry, shp) -> np.ndarray:
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in shp], indexing="ij"), -1).astype(float)
        xyz = np.asarray(geo.origin) + (idx * np.asarray(geo.spacing)) @ np.asarray(geo.direction).T
        return (40.0 + 0.05 * xyz[..., 0] - 0.03 * xyz[..., 1] + 0.02 * xyz[..., 2]).astype(np.float32)

    q = placed.patient
    net_out = linear(q.geometry, q.shape) * q.possible_dose_mask  # as predict_in_space masks it
    back = placed.back(net_out)
    want = linear(g, shape)
    assert not back[~mask].any()
    worst = np.abs(back[mask] - want[mask]).max()
    off = int((np.abs(back - want)[mask] >= 0.5).sum())
    assert worst < 0.5, f"{off} of {int(mask.sum())} mask voxels off by up to {worst:.1f} Gy"


def _sheared(g: Geometry, cos: float = 0.3) -> Geometry:
    d = g.direction.copy()
    d[:, 1] = np.sqrt(1 - cos ** 2) * d[:, 1] + cos * d[:, 0]
    return Geometry(g.origin, d, g.spacing)


def test_sheared_grid_in_a_cache_is_refused(tmp_path):
    """A cache whose dataset.json places a patient on a sheared grid (edited, or written by another
    tool) is refused when read, naming the file, the patient and the shear, and the API refuses to
    write one: voxel volumes taken from the spacing would be wrong by the shear."""
    from dosepred.patient import Patient

    p = make_patient()
    cache.write_cache([p], tmp_path / "c")
    info = json.loads((tmp_path / "c" / "dataset.json").read_text())
    info["patients"][0]["geometry"]["direction"] = _sheared(p.geometry).direction.tolist()
    (tmp_path / "c" / "dataset.json").write_text(json.dumps(info))
    res = run(["data", "inspect", str(tmp_path / "c")])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    text = flat(res.output)
    assert "dataset.json: patient pt_a: geometry: its array axes 0 and 1 are 72.5 degrees apart" in text, text
    assert "sheared grid" in text
    q = Patient(p.id, p.ct, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, p.dose, (), {},
                _sheared(p.geometry))
    with pytest.raises(cache.CacheError, match=r"patient pt_a: its array axes 0 and 1 .* sheared grid"):
        cache.write_cache([q], tmp_path / "c2")
    assert not (tmp_path / "c2" / "dataset.json").exists()


@pytest.mark.parametrize("kind", ["BEAM", "FRACTION"])
def test_evaluate_refuses_a_predicted_rtdose_of_one_beam_or_fraction(exported, tmp_path, kind):
    """A predicted RTDOSE of DoseSummationType FRACTION (the plan's dose / 35) was scored against the
    plan's dose as if it were the whole plan (PTV70 D95 about 2 Gy against 66 Gy, no error); it is
    refused as an import of the same file is, naming the patient, the file and the type."""
    (q,) = dicom.read_dicom_folder(exported)
    pred = tmp_path / "pred" / q.id
    pred.mkdir(parents=True)
    rd = pydicom.dcmread(exported / "RD.dcm")
    rd.DoseSummationType = kind
    rd.DoseGridScaling = f"{float(rd.DoseGridScaling) / 35:.10g}"
    rd.SOPInstanceUID = pydicom.uid.generate_uid()
    rd.save_as(pred / "RD.part.dcm")
    proto = tmp_path / "p.json"
    proto.write_text(json.dumps(PROTOCOL))
    res = run(["evaluate", "--reference", str(exported.parent), "--prediction", str(tmp_path / "pred"),
               "--protocol", str(proto), "--json", str(tmp_path / "r.json"), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert "Traceback" not in res.output
    assert f"patient {q.id}" in text and "RD.part.dcm" in text and f"DoseSummationType is {kind}" in text
    assert not (tmp_path / "r.json").exists()


def test_a_structure_set_on_two_ct_series_joins_the_one_its_contours_are_drawn_on(exported, tmp_path):
    """An RTSTRUCT whose RTReferencedSeriesSequence lists two CT series of the folder (the planning CT
    and a contrast CT of one FrameOfReference): it joined one picked by the iteration order of a set of
    UIDs, which changes with PYTHONHASHSEED, so the ROIs, the dose and the patient id they went with
    changed from run to run, without a word. Now: the series its contours' ContourImageSequence
    references (else the first listed), with a warning naming both."""
    import copy

    src = tmp_path / "in"
    shutil.copytree(exported, src)
    other = src / "contrast"
    other.mkdir()
    b_uid = pydicom.uid.generate_uid()
    rs = pydicom.dcmread(src / "RS.dcm")
    listed = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence
    b = copy.deepcopy(listed[0])
    b.SeriesInstanceUID = b_uid
    images = []
    for f in sorted(src.glob("CT.*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = b_uid, pydicom.uid.generate_uid()
        ds.RescaleIntercept = float(ds.RescaleIntercept) + 100  # another CT: 100 HU brighter
        ds.save_as(other / f.name)
        im = copy.deepcopy(b.ContourImageSequence[0])
        im.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        images.append(im)
    b.ContourImageSequence = images
    listed.insert(0, b)  # listed first; the contours reference the planning CT's images
    rs.save_as(src / "RS.dcm")
    (q,) = dicom.read_dicom_folder(exported)
    with pytest.warns(dicom.DicomWarning, match=r"RS\.dcm references 2 CT series .*using CT series "
                                                rf"{q.meta['series_uid']}, the one its contours"):
        ps = dicom.read_dicom_folder(src)
    (mine,) = [p for p in ps if p.present_rois]
    assert mine.meta["series_uid"] == q.meta["series_uid"]
    assert np.array_equal(mine.ct, q.ct) and np.array_equal(mine.dose, q.dose)
