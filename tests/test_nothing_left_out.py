"""Nothing of a source folder is left out without a word. A symbolic link to nothing (an unmounted
drive, a moved or deleted folder) is refused in one error naming the link, for every reader of folders
(OpenKBP, NIfTI, DICOM): the patient, ROI, slice or dose it stood for was left out (a cohort of 5
patients predicted as 3; an ROI read as not contoured; a DICOM folder read without its RTDOSE). A
patient folder named otherwise than the format expects is read (OpenKBP) or refused (NIfTI, whose CT
file has no name the folder could be recognised by)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from test_bad_dicom import template  # noqa: F401
from test_bad_inputs import cli, fails, ok, tiny_openkbp_patient, tree


def _break(path: Path) -> None:
    """Replace ``path`` (file or folder) by a link to a path that does not exist."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.symlink(path.parent / "gone" / path.name, path)


def _refused(r, link: Path, out: Path) -> None:
    text = fails(r, link.name, "does not exist")
    assert sum(line.startswith("error:") for line in text.splitlines()) == 1, text
    assert not out.exists() or tree(out) == {}


def test_openkbp_patient_link_to_nothing(tmp_path):
    root = tmp_path / "src"
    tiny_openkbp_patient(root / "pt_1")
    ok(cli("data", "import-openkbp", root, "--out", tmp_path / "ok"))  # the folder alone reads
    os.symlink(tmp_path / "unmounted" / "pt_2", root / "pt_2")
    _refused(cli("data", "import-openkbp", root, "--out", tmp_path / "out"), root / "pt_2", tmp_path / "out")


def test_openkbp_roi_file_link_to_nothing(tmp_path):
    root = tmp_path / "src"
    tiny_openkbp_patient(root / "pt_1")
    _break(root / "pt_1" / "SpinalCord.csv")  # would read as a cord not contoured
    _refused(cli("data", "import-openkbp", root, "--out", tmp_path / "out"), root / "pt_1" / "SpinalCord.csv",
             tmp_path / "out")


def test_nifti_links_to_nothing(tmp_path, template):  # noqa: F811
    root = tmp_path / "src"
    shutil.copytree(template["nifti"], root / "a")
    ok(cli("data", "import-nifti", root, "--out", tmp_path / "ok"))
    shutil.copytree(template["nifti"], root / "b")
    info = root / "b" / "rois.json"  # the copy is another patient: its own id (one id twice is refused)
    if info.is_file():
        obj = json.loads(info.read_text())
        if "id" in obj:
            obj["id"] = f"{obj['id']}_b"
            info.write_text(json.dumps(obj))
    cases = [root / "b"]  # a patient folder
    cases.append(root / "a" / "ct.nii.gz")  # a patient's CT: the folder would not be a patient
    rois = sorted((root / "a").glob("*/*.nii.gz"))
    assert rois, sorted(p.name for p in (root / "a").rglob("*"))
    cases.append(rois[0])  # an ROI file: read as not contoured
    for k, link in enumerate(cases):
        work = tmp_path / f"case{k}"
        shutil.copytree(root, work / "src", symlinks=True)
        target = work / "src" / link.relative_to(root)
        _break(target)
        _refused(cli("data", "import-nifti", work / "src", "--out", work / "out"), target, work / "out")


def test_dicom_links_to_nothing(tmp_path, template):  # noqa: F811
    src = tmp_path / "dcm"
    shutil.copytree(template["dicom"], src)
    ok(cli("data", "import-dicom", src, "--out", tmp_path / "ok"))
    for k, name in enumerate(["RD.dcm", sorted(p.name for p in src.glob("CT*.dcm"))[3]]):
        work = tmp_path / f"case{k}"
        shutil.copytree(template["dicom"], work / "dcm")
        _break(work / "dcm" / name)
        _refused(cli("data", "import-dicom", work / "dcm", "--out", work / "out"), work / "dcm" / name,
                 work / "out")


def test_openkbp_patient_folders_named_otherwise_are_read(tmp_path):
    """A patient folder not named pt_* (PT_2, case3) holding the patient's CSV files was left out of
    the cohort without a word; one lacking a file is named by the error of an incomplete patient."""
    root = tmp_path / "src"
    for name in ("pt_1", "PT_2", "case3"):
        tiny_openkbp_patient(root / name)
    (root / "notes").mkdir()  # no patient file: not a patient
    (root / "notes" / "readme.txt").write_text("x")
    ok(cli("data", "import-openkbp", root, "--out", tmp_path / "out"))
    from dosepred.io.cache import Cache

    assert sorted(Cache.open(tmp_path / "out").ids) == ["PT_2", "case3", "pt_1"]
    (root / "case3" / "ct.csv").unlink()
    fails(cli("data", "import-openkbp", root, "--out", tmp_path / "out2"), "case3", "ct.csv")
    assert not (tmp_path / "out2").exists()


def test_nifti_patient_folder_without_a_ct_by_its_name(tmp_path, template):  # noqa: F811
    """A cohort's patient folder whose CT is CT.nii.gz (or any other name) was left out without a word."""
    root = tmp_path / "src"
    shutil.copytree(template["nifti"], root / "a")
    shutil.copytree(template["nifti"], root / "b")
    (root / "b" / "ct.nii.gz").rename(root / "b" / "CT.nii.gz")
    (root / "atlas-notes").mkdir()  # no NIfTI file: not a patient
    fails(cli("data", "import-nifti", root, "--out", tmp_path / "out"), f"{root / 'b'}", "CT.nii.gz",
          "ct.nii.gz")
    assert not (tmp_path / "out").exists()
    (root / "b" / "CT.nii.gz").rename(root / "b" / "ct.nii.gz")
    shutil.rmtree(root / "a")  # the same patient id twice otherwise
    ok(cli("data", "import-nifti", root, "--out", tmp_path / "out"))
