"""Text files as Windows editors and Excel save them (a byte-order mark, UTF-16 "Unicode", a Windows
code page, ';' separators and decimal commas, CRLF line ends): each is read as meant or refused in one
line naming the file, never read wrongly or ended in a traceback."""

from __future__ import annotations

import codecs
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dosepred import split, synth
from dosepred.errors import InputError
from dosepred.io import cache, openkbp
from dosepred.io.cache import CacheError
from dosepred.qa.calibration import CalibrationError, load_calibration
from dosepred.split import SplitError
from dosepred.training.logging import CsvLog


def _utf16(text: str) -> bytes:
    return codecs.BOM_UTF16_LE + text.encode("utf-16-le")  # Notepad's "Unicode"


def test_cache_dataset_json_saved_by_notepad(tmp_path):
    """A cache's dataset.json edited in Notepad (a patient's meta, e.g. its study date): with a
    byte-order mark it was refused ("Unexpected UTF-8 BOM"), in UTF-16 or cp1252 it ended in a
    traceback (UnicodeDecodeError, "internal error")."""
    c = cache.write_cache(synth.make_cohort(2, seed=1, size=16), tmp_path / "c")
    js = c.root / "dataset.json"
    text = js.read_text(encoding="utf-8")
    js.write_bytes(codecs.BOM_UTF8 + text.replace("\n", "\r\n").encode())
    assert cache.Cache.open(c.root).ids == [e["id"] for e in json.loads(text)["patients"]]
    for raw in (_utf16(text), text.replace('"source"', '"Par\u00f3tida"', 1).encode("cp1252")):
        js.write_bytes(raw)
        with pytest.raises(CacheError, match=r"dataset.json is not UTF-8 text .*save it as UTF-8"):
            cache.Cache.open(c.root)


def _metrics(path, edit):
    log = CsvLog(path, None)
    for e in (1, 2, 3):
        log.append({"epoch": e, "train_loss": 1.0 / e, "lr": 0.001})
    path.write_bytes(edit(path.read_text(encoding="utf-8")))
    return path


def test_resume_after_metrics_csv_was_saved_by_excel(tmp_path):
    """`train --resume` after metrics.csv was opened and saved in Excel ended in a traceback: a byte-order
    mark ("CSV UTF-8") or ';' separators (a European locale) gave KeyError 'epoch', UTF-16 a
    UnicodeDecodeError, a trailing empty row ValueError. A byte-order mark and empty rows are read as
    none; anything else is one InputError naming the file, which is left as it was."""
    path = _metrics(tmp_path / "bom.csv", lambda t: codecs.BOM_UTF8 + (t + ",,\r\n").encode())
    CsvLog(path, 2).append({"epoch": 3, "train_loss": 0.5, "lr": 0.001})
    with open(path, newline="", encoding="utf-8") as fh:  # read back as written: no mark, rows 1, 2, new 3
        rows = list(csv.reader(fh))
    assert rows == [["epoch", "train_loss", "lr"], ["1", "1.0", "0.001"], ["2", "0.5", "0.001"],
                    ["3", "0.5", "0.001"]]
    for name, edit in [("semi", lambda t: t.replace(",", ";").replace(".", ",").encode()),
                       ("utf16", _utf16), ("text", lambda t: t.replace("\n2,", "\nzwei,").encode())]:
        path = _metrics(tmp_path / f"{name}.csv", edit)
        before = path.read_bytes()
        with pytest.raises(InputError, match=rf"{name}.csv: not a metrics.csv as dosepred writes it .*"
                                              "move it aside"):
            CsvLog(path, 2)
        assert path.read_bytes() == before


MANIFEST = {"pt_1": "2020-01-15", "pt_2": "2019-12-31", "pt_10": "20200301"}


@pytest.mark.parametrize("name, encode", [
    ("bom_crlf", lambda rows: codecs.BOM_UTF8 + "\r\n".join(",".join(r) for r in rows).encode() + b"\r\n"),
    ("europe", lambda rows: "\r\n".join(";".join(r) for r in rows).encode("cp1252") + b"\r\n;;\r\n;;\r\n"),
    ("utf16_tabs", lambda rows: _utf16("\r\n".join("\t".join(r) for r in rows) + "\r\n")),
    ("quoted", lambda rows: "\n".join(",".join(f'"{c}"' for c in r) + "," for r in rows).encode()),
])
def test_manifest_as_excel_saves_it(tmp_path, name, encode):
    """A `data split --temporal --manifest` CSV as Excel saves it was refused: ';' separated (a
    European locale: "no column 'id' (columns: id;date)"), UTF-16 ("Unicode text", tabs), a header
    'ID ' / ' Date', a cell ' pt_1 ' ("names patients not in the data"), rows of empty cells at the end
    ("row 5: empty 'id'"). Each is read as the dates written."""
    rows = [["ID ", " Date"]] + [[f" {k} ", v] for k, v in MANIFEST.items()]
    path = tmp_path / f"{name}.csv"
    path.write_bytes(encode(rows))
    assert split.dates_from_manifest(path, "date") == MANIFEST


@pytest.mark.parametrize("text, needle", [
    ("id;date\npt_1;15.01.2020\n", r"row 2, column 'date': patient pt_1: date '15.01.2020' .*yyyy-mm-dd"),
    ("id,date\npt_1,2020-01-15\npt_2,1/15/2020\n", r"row 3, column 'date': .*'1/15/2020' .*yyyy-mm-dd"),
    ("id,date\npt_1,2020-01-15,x\n", "row 2 has 3 cells, its header 2 columns"),
    ("id,Date,DATE\npt_1,2020-01-15,2020-01-15\n", "more than one column 'date'"),
    ("id,note,date\npt_1,Par\u00f3tida,2020-01-15\n", r"not UTF-8 text .*save it as 'CSV UTF-8'"),
])
def test_manifest_refusals_name_the_file_and_the_row(tmp_path, text, needle):
    """A date in a locale's form (15.01.2020, 1/15/2020: the day and month of 01.02.2020 cannot be told
    apart) was refused naming the patient only, not the manifest, its row or what to do; a cell past the
    header shifted the columns (the first taken for pandas' index)."""
    path = tmp_path / "m.csv"
    path.write_bytes(text.encode("cp1252"))
    with pytest.raises(SplitError, match=rf"manifest {path} .*{needle}"):
        split.dates_from_manifest(path, "date")


def test_calibration_json_saved_by_notepad(tmp_path):
    """A calibration.json hand-edited in Notepad (a byte-order mark, CRLF line ends) was refused ("is not
    readable JSON: Unexpected UTF-8 BOM"), where every other JSON file dosepred reads takes the mark;
    it is read as the file without it. UTF-16 stays one error naming the file."""
    released = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm" / "calibration.json"
    text = released.read_text(encoding="utf-8")
    (tmp_path / "calibration.json").write_bytes(codecs.BOM_UTF8 + text.replace("\n", "\r\n").encode())
    assert load_calibration(tmp_path).to_json() == load_calibration(released.parent).to_json()
    (tmp_path / "calibration.json").write_bytes(_utf16(text))
    with pytest.raises(CalibrationError, match=r"calibration\.json is not readable JSON"):
        load_calibration(tmp_path)


def test_openkbp_voxel_dimensions_saved_by_excel(tmp_path):
    """voxel_dimensions.csv saved by Excel as "CSV UTF-8" (a byte-order mark, CRLF) was refused ("could
    not convert string '\\ufeff3.9' to float64"), though the sparse CSVs beside it are read with one; it
    is read as the three sizes written. A decimal comma (a European locale's '3,9') stays an error."""
    path = tmp_path / "voxel_dimensions.csv"
    path.write_bytes(codecs.BOM_UTF8 + b"3.90625\r\n3.90625\r\n2.5\r\n")
    assert openkbp.read_spacing(path, "pt_1") == (3.90625, 3.90625, 2.5)
    path.write_bytes(codecs.BOM_UTF8 + b"3,90625\r\n3,90625\r\n2,5\r\n")
    with pytest.raises(openkbp.OpenKBPFormatError, match=r"pt_1: .*voxel_dimensions.csv: expected three"):
        openkbp.read_spacing(path, "pt_1")


def test_openkbp_roi_file_with_an_upper_case_extension_is_read(openkbp_truth, tmp_path):
    """An OpenKBP ROI file named PTV70.CSV (Windows ignores the case of names; older tools write them
    upper case) was skipped without a word: the patient read as lacking its PTV70, no warning. It is read
    as PTV70.csv, its voxels those written."""
    src = openkbp_truth["root"] / "pt_3"
    folder = tmp_path / "pt_3"
    shutil.copytree(src, folder)
    (folder / "PTV70.csv").rename(folder / "PTV70.CSV")
    p = openkbp.read_patient(folder)
    assert "PTV70" not in p.missing_rois
    want = np.sort(openkbp_truth["truth"]["pt_3"]["PTV70"])
    np.testing.assert_array_equal(np.flatnonzero(p.mask("PTV70")), want)
    sparse = openkbp.read_sparse_patient(folder)  # what evaluate --reference reads
    assert "PTV70" not in sparse.missing_rois
    np.testing.assert_array_equal(np.sort(dict(sparse.rois)[p.roi_set.index("PTV70")]), want)


@pytest.mark.parametrize("sidecar", [True, False])
def test_nifti_label_file_with_an_upper_case_extension_is_read(tmp_path, sidecar):
    """A NIfTI label file rois/PTV70.NII.GZ (Windows ignores the case of names) was skipped without a
    word, with rois.json or without: the patient read as lacking its PTV70. It is read as PTV70.nii.gz,
    its voxels those of the file (nibabel)."""
    import nibabel as nib

    from dosepred.io import nifti

    folder = nifti.write_patient(synth.make_patient(3, size=16), tmp_path / "src")
    label = folder / "rois" / "PTV70.NII.GZ"
    (folder / "rois" / "PTV70.nii.gz").rename(label)
    if not sidecar:
        (folder / "rois.json").unlink()
    (q,) = nifti.read_nifti_folder(tmp_path / "src")
    assert "PTV70" not in q.missing_rois
    assert int(q.mask("PTV70").sum()) == int(np.asarray(nib.load(label).dataobj).sum()) > 0


def test_openkbp_patient_folder_in_upper_case_is_not_left_out(openkbp_truth, tmp_path):
    """A patient folder copied by a DOS or Windows tool (PT_3 holding CT.CSV, DOSE.CSV, ...) beside pt_10
    was left out of the cohort without a word: import-openkbp wrote 1 patient of 2. It is now an error
    naming the folder, the files it lacks and those it holds in upper case."""
    root = tmp_path / "pats"
    shutil.copytree(openkbp_truth["root"] / "pt_10", root / "pt_10")
    (root / "PT_3").mkdir()
    for f in (openkbp_truth["root"] / "pt_3").iterdir():
        shutil.copy(f, root / "PT_3" / f.name.upper())
    assert [p.name for p in openkbp.patient_folders(root)] == ["PT_3", "pt_10"]
    with pytest.raises(openkbp.OpenKBPFormatError, match=r"patient PT_3: .*PT_3 lacks ct.csv, dose.csv, "
                                                         r".* \(it holds CT.CSV, DOSE.CSV, .*case-sensitive"):
        list(openkbp.read_folder(root))


def test_openkbp_upper_case_folder_renamed_as_told_keeps_its_rois(openkbp_truth, tmp_path):
    """The remedy of the error above, done as it said (the four array files renamed), read the patient
    without the ROIs in upper case (BRAINSTEM.CSV: a warning 'not a known ROI; ignored' and the ROI
    missing). The error now names each ROI file's name, as does the warning."""
    folder = tmp_path / "pats" / "PT_3"
    folder.mkdir(parents=True)
    for f in (openkbp_truth["root"] / "pt_3").iterdir():
        shutil.copy(f, folder / f.name.upper())
    with pytest.raises(openkbp.OpenKBPFormatError) as e:
        openkbp.read_patient(folder)
    said = str(e.value)
    assert "BRAINSTEM.CSV -> Brainstem.csv" in said and "PTV70.CSV ->" not in said, said
    for name in openkbp.REQUIRED:
        (folder / name.upper()).rename(folder / name)
    told = r"BRAINSTEM.CSV is not a known ROI .*ignored \(the names are case-sensitive: rename it Brainstem"
    with pytest.warns(openkbp.UnknownRoiWarning, match=told):
        openkbp.read_patient(folder)
    for told in said.split("ROI files: ")[1].rstrip(")").split(", "):
        old, new = told.split(" -> ")
        (folder / old).rename(folder / new)
    ref = openkbp.read_patient(openkbp_truth["root"] / "pt_3")
    p = openkbp.read_patient(folder)
    assert p.missing_rois == ref.missing_rois
    assert all(np.array_equal(p.mask(n), ref.mask(n)) for n in p.roi_set.names)


def test_nifti_patient_folder_in_upper_case_is_not_left_out(tmp_path):
    """A NIfTI patient folder whose files a DOS or Windows tool named in upper case (CT.NII.GZ, ...) beside
    others was left out of the cohort without a word, its files not counted as NIfTI files; it is the
    error a folder with NIfTI files but no ct.nii.gz is, naming it."""
    from dosepred.io import nifti

    nifti.write_patient(synth.make_patient(1, size=16), tmp_path / "src")
    upper = nifti.write_patient(synth.make_patient(2, size=16), tmp_path / "src")
    for f in upper.iterdir():
        f.rename(f.with_name(f.name.upper()))
    with pytest.raises(nifti.NiftiFormatError, match=r"synth_2 holds NIfTI files \(CT.NII.GZ, .*no ct.nii"):
        nifti.patient_folders(tmp_path / "src")


@pytest.mark.parametrize("name", ["dose.nii.gz", "possible_dose_mask.nii.gz", "rois.json"])
def test_nifti_patient_file_in_another_case_is_refused(tmp_path, name):
    """A NIfTI patient's dose, mask or rois.json named in another case (DOSE.NII.GZ from a Windows tool)
    beside its ct.nii.gz was ignored without a word: import-nifti wrote the patient without its dose, or
    with the body of its CT (CT > -500 HU) for the mask it was given. It is an error naming the file."""
    from dosepred.io import nifti

    folder = nifti.write_patient(synth.make_patient(1, size=16), tmp_path / "src")
    assert (folder / name).is_file()
    upper = name.upper() if name != "possible_dose_mask.nii.gz" else "Possible_Dose_Mask.nii.gz"
    (folder / name).rename(folder / upper)
    if (folder / name).exists():  # a case-insensitive disk reads it by its name: nothing to refuse
        pytest.skip("case-insensitive file system")
    with pytest.raises(nifti.NiftiFormatError, match=rf"synth_1 holds {upper}, not {name}: names are "
                                                     rf"case-sensitive.*rename it {name}"):
        list(nifti.iter_nifti_folder(tmp_path / "src")[1])
