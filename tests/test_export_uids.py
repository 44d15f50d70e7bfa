"""The UIDs DICOM export derives for a patient not read from DICOM depend on what the patient is (id,
grid, ROI voxels), not on where its files lie or in which array layout: ``data export-dicom`` of a
dataset and ``predict --format dicom`` of a copy of it, or of its NIfTI export, share one Study and
FrameOfReference, and the RTDOSE references the exported RTSTRUCT."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.io import nifti
from dosepred.io.dicom.export import export_uids
from dosepred.io.source import load_patients
from dosepred.patient import Patient, RoiSet
from dosepred.predict import write_prediction
from dosepred.synth import make_cohort

runner = CliRunner()


def _cli(*args: str) -> None:
    r = runner.invoke(app, [*args, "--no-progress"])
    assert r.exit_code == 0, r.output


def _read(src: Path) -> list[Patient]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(load_patients(src, require_dose=False))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[Patient]]:
    """Two synthetic patients as a NIfTI folder (``a/``), imported into a cache and exported as DICOM."""
    root = tmp_path_factory.mktemp("uids")
    cohort = make_cohort(2, seed=4, size=24)
    for p in cohort:
        nifti.write_patient(p, root / "a")
    _cli("data", "import-nifti", str(root / "a"), "--out", str(root / "cache"))
    _cli("data", "export-dicom", str(root / "cache"), "--out", str(root / "dcm"))
    return root, cohort


@pytest.mark.parametrize("where", ["copy", "nifti-export", "other-layout"])
def test_predicted_rtdose_shares_study_and_frame_with_export_dicom(dataset, where, tmp_path):
    """The same patients read from a byte-identical copy of the imported folder, from the cache's NIfTI
    export, or from a NIfTI folder in another array layout (axes permuted and reversed): the RTDOSE
    ``predict --format dicom`` writes (``write_prediction``) is in the Study and FrameOfReference of the
    exported CT and references the exported RTSTRUCT. Before, the UIDs were derived from the path the
    patient was read from, so none of these matched."""
    root, cohort = dataset
    src = tmp_path / "src"
    if where == "copy":
        shutil.copytree(root / "a", src)
    elif where == "nifti-export":
        _cli("data", "export-nifti", str(root / "cache"), "--out", str(src))
    else:
        for p in cohort:
            nifti.write_patient(p.reoriented("SAR"), src)
    patients = _read(src)
    assert sorted(p.id for p in patients) == sorted(p.id for p in cohort)
    for p in patients:
        if where == "other-layout":
            assert p.geometry.axis_letters() == "SAR" != cohort[0].geometry.axis_letters()
        rd = pydicom.dcmread(write_prediction(p, p.possible_dose_mask * np.float32(2.0), tmp_path / "pred",
                                              "dicom"))
        ct = pydicom.dcmread(root / "dcm" / p.id / "CT.0001.dcm")
        rs = pydicom.dcmread(root / "dcm" / p.id / "RS.dcm")
        assert rd.StudyInstanceUID == ct.StudyInstanceUID == rs.StudyInstanceUID
        assert rd.FrameOfReferenceUID == ct.FrameOfReferenceUID
        assert rd.FrameOfReferenceUID == rs.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
        assert rd.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == rs.SOPInstanceUID
        assert export_uids(p) == export_uids(next(q for q in cohort if q.id == p.id))


def test_two_patients_under_one_id_get_different_uids(dataset):
    """Another patient's ROIs under the same id and grid, or one ROI voxel more, is another patient:
    no UID is shared. The same patient gives the same UIDs every time; the ROI set's bit order, ROIs
    it has no voxel of, the CT, the dose and meta do not count."""
    _, (p, other) = dataset
    twin = Patient(p.id, p.ct, other.roi_codes, p.roi_set, possible_dose_mask=p.possible_dose_mask,
                   meta=dict(p.meta), geometry=p.geometry)
    codes = p.roi_codes.copy()
    i = np.flatnonzero(codes == 0)[0]
    codes.flat[i] = 1
    one_more = Patient(p.id, p.ct, codes, p.roi_set, possible_dose_mask=p.possible_dose_mask,
                       meta=dict(p.meta), geometry=p.geometry)
    u = export_uids(p)
    for q in (twin, one_more, other):
        v = export_uids(q)
        assert not {u.study, u.frame, u.ct_series, u.rs_series, u.rs} & {v.study, v.frame, v.ct_series,
                                                                        v.rs_series, v.rs}
    # the same patient: another path, CT, dose and meta, and its ROIs in reversed bit order
    rev = RoiSet(tuple(reversed(p.roi_set.rois)))
    same = Patient.from_masks(p.id, np.zeros(p.shape, np.int16), p.masks(p.present_rois), rev, p.spacing,
                              None, p.possible_dose_mask * np.float32(3.0), {"source": "/elsewhere"},
                              geometry=p.geometry)
    assert export_uids(same) == u == export_uids(p)


def test_dicom_patient_keeps_its_own_study_and_frame(dataset):
    _, (p, _) = dataset
    q = Patient(p.id, p.ct, p.roi_codes, p.roi_set, possible_dose_mask=p.possible_dose_mask,
                meta={"study_uid": "1.2.3.4", "frame_of_reference_uid": "1.2.3.5"}, geometry=p.geometry)
    u = export_uids(q)
    assert (u.study, u.frame) == ("1.2.3.4", "1.2.3.5")
