"""CT series and structure sets as clinics export them (compressed pixels, multi-frame images, a
structure set whose CT series is not in the folder): read exactly, or refused or warned of in one line
naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1, generate_uid

from dosepred.io import dicom
from test_bad_dicom import edit, flat, re_search, run, template  # noqa: F401 - template is a fixture


def test_a_ct_whose_compression_no_decoder_reads_is_refused_in_one_line(template, tmp_path):  # noqa: F811
    """A PACS export in JPEG Lossless (transfer syntax 1.2.840.10008.1.2.4.70), which pydicom decodes only
    with pylibjpeg-libjpeg or gdcm installed: the error carried pydicom's three-line message (plugin
    list, tab-indented), not one line; now one line naming the slice, the transfer syntax and what to
    install, or to export uncompressed."""
    from pydicom.pixels import get_decoder

    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)

    def fn(ds):
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\0" * 100])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    for f in sorted(src.glob("CT.*.dcm")):
        edit(f, fn)
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: patient pt_a: CT series"), res.output
    assert re_search(r"cannot decode pixel data of \S*CT\.0001\.dcm: ", lines[0]), lines[0]
    if not get_decoder(JPEGLosslessSV1).is_available:
        assert re_search(r"it is compressed \(JPEG Lossless, .*transfer syntax "
                         r"1\.2\.840\.10008\.1\.2\.4\.70\) and no decoder for it is installed: "
                         r"install one \(.*pylibjpeg-libjpeg.*\), or "
                         r"export the images uncompressed", flat(lines[0])), lines[0]
        # commands pip runs as told: PyPI's "gdcm" is another project (1.1); gdcm>=3.0.10 is python-gdcm
        assert "pip install pylibjpeg pylibjpeg-libjpeg" in flat(lines[0]), lines[0]
        assert "pip install python-gdcm" in flat(lines[0]) and "gdcm>=" not in lines[0], lines[0]
    assert not (out / "dataset.json").exists()


def _enhanced_ct(folder: Path, series_uid: str | None = None) -> pydicom.Dataset:
    """The CT slices of ``folder`` as one enhanced CT image (Enhanced CT Image Storage: positions,
    orientation, spacing and rescale in the functional groups, none at the top level), written beside
    them as CT_enhanced.dcm."""
    files = sorted(folder.glob("CT.*.dcm"))
    slices = [pydicom.dcmread(f) for f in files]
    e = pydicom.dcmread(files[0])
    e.SOPClassUID = e.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    e.SOPInstanceUID = e.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if series_uid is not None:
        e.SeriesInstanceUID = series_uid
    e.NumberOfFrames = len(slices)
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                "RescaleIntercept", "RescaleSlope"):
        delattr(e, key)
    shared, orient, measures, rescale = (Dataset() for _ in range(4))
    orient.ImageOrientationPatient = slices[0].ImageOrientationPatient
    measures.PixelSpacing = slices[0].PixelSpacing
    measures.SliceThickness = slices[0].SliceThickness
    rescale.RescaleIntercept, rescale.RescaleSlope = slices[0].RescaleIntercept, slices[0].RescaleSlope
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    shared.PixelValueTransformationSequence = [rescale]
    e.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for ds in slices:
        fg, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = ds.ImagePositionPatient
        fg.PlanePositionSequence = [pos]
        frames.append(fg)
    e.PerFrameFunctionalGroupsSequence = frames
    e.PixelData = b"".join(ds.PixelData for ds in slices)
    e.save_as(folder / "CT_enhanced.dcm")
    return e


def test_an_enhanced_ct_beside_the_planning_ct_is_named_and_ignored(template, tmp_path):  # noqa: F811
    """A scanner's enhanced (multi-frame) CT of 32 frames beside the planning CT was ignored as 'the only
    image of CT series ..., one slice is no planning CT': it is no slice. Now the warning says what it
    is; the planning CT is read as before."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    _enhanced_ct(src, generate_uid())
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert re_search(r"warning: \S*CT_enhanced\.dcm: an enhanced \(multi-frame\) CT image, 32 frames in one "
                     r"file, which dosepred does not read \(it reads CT series of one image per slice, CT "
                     r"Image Storage\); ignored", text), text
    assert "one slice is no planning CT" not in text
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    info = json.loads((out / "dataset.json").read_text())
    assert [q["id"] for q in info["patients"]] == [ref.id]


def test_an_enhanced_planning_ct_is_refused_in_one_line(template, tmp_path):  # noqa: F811
    """The planning CT exported as one enhanced CT image, the structure set drawn on its frames: refused
    with 'lacks ImageOrientationPatient' (the field lies in the functional groups), a missing field of
    a damaged slice; alone, with 'the only image of CT series ...: one slice is no planning CT' and 'no
    CT image series found'. Now one line saying what the file is and how to export it."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    e = _enhanced_ct(src)
    frame_of = {pydicom.dcmread(f).SOPInstanceUID: k + 1 for k, f in enumerate(sorted(src.glob("CT.*.dcm")))}
    for f in src.glob("CT.*.dcm"):
        f.unlink()

    def on_frames(ds):  # the contours reference the enhanced image's frames, as PS3.3 C.8.8.5 allows
        for fr in ds.ReferencedFrameOfReferenceSequence:
            for st in fr.RTReferencedStudySequence:
                for se in st.RTReferencedSeriesSequence:
                    se.ContourImageSequence = se.ContourImageSequence[:1]
                    se.ContourImageSequence[0].ReferencedSOPInstanceUID = e.SOPInstanceUID
        for rc in ds.ROIContourSequence:
            for c in rc.ContourSequence:
                for im in c.ContourImageSequence:
                    im.ReferencedFrameNumber = frame_of[im.ReferencedSOPInstanceUID]
                    im.ReferencedSOPInstanceUID = e.SOPInstanceUID
    edit(src / "RS.dcm", on_frames)
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert re_search(r"^error: \S*CT_enhanced\.dcm: an enhanced \(multi-frame\) CT image, 32 frames in one "
                     r"file, which dosepred does not read .*; an RTSTRUCT is drawn on it: export the "
                     r"planning CT as one image per slice$", lines[0]), lines[0]
    assert not (out / "dataset.json").exists()
    (src / "RS.dcm").unlink()
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert re_search(r"error: no CT image series found under \S+ \(looked at \d+ files\); 1 "
                     r"enhanced "
                     r"\(multi-frame\) CT file\(s\) were not read: export the CT as one image per slice",
                     text), text


def test_a_structure_set_whose_ct_series_is_absent_warns_when_read_on_another_of_its_frame(
        template, tmp_path):  # noqa: F811
    """A 4D-CT export: the structure set was drawn on the average CT, whose series is not in the folder,
    and a phase (another series, other images, the same FrameOfReference) is. The contours were read on
    the phase without a word (the frame matched); now a warning names the series the RTSTRUCT references
    and the one it is read on."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    drawn_on = pydicom.dcmread(src / "CT.0001.dcm").SeriesInstanceUID
    phase = generate_uid()

    def to_phase(ds):
        ds.SeriesInstanceUID = phase
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesDescription = "CT 4D 50%"
    for f in sorted(src.glob("CT.*.dcm")):
        edit(f, to_phase)
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 0, text
    assert re_search(rf"warning: RTSTRUCT \S*RS\.dcm references CT series {drawn_on}, which is not under "
                     rf"\S+, and is read on CT series {phase} \(32 files in \S+\), which shares its "
                     r"FrameOfReference [\d.]+: its contours were drawn on other images of that frame \(a "
                     r"4D-CT phase or average, another reconstruction\?\); export the CT series it "
                     r"references", text), text
    (ref,) = dicom.read_dicom_folder(template["dicom"])
    (p,) = dicom.read_dicom_folder(src)
    assert p.meta["series_uid"] == phase
    for name in ref.roi_set.names:  # the same slice positions: the contours land as drawn
        assert (p.mask(name) == ref.mask(name)).all()


def test_predict_names_a_ct_series_without_a_structure_set_as_such(template, tmp_path):  # noqa: F811
    """A diagnostic CT (or a CBCT) exported beside the planning CT: a second patient pt_a_1 without ROIs.
    predict refused the folder with 'patient pt_a_1 has none of the model's targets ... (if they are
    there under other names, name them ... with an ROI map)', sending the user to ROI names; now the one
    error line says it is a CT series without an RTSTRUCT and to leave it out. Nothing is written."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    diag, frame = generate_uid(), generate_uid()

    def to_diagnostic(ds):
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = diag, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (src / "diag").mkdir()
    for f in sorted(src.glob("CT.*.dcm")):
        shutil.copy(f, src / "diag" / f.name)
        edit(src / "diag" / f.name, to_diagnostic)
    model = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae"
    out = tmp_path / "pred"
    res = run(["predict", "--model", str(model), "--data", str(src), "--out", str(out), "--device", "cpu",
               "--no-tta", "--allow-missing-rois", "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert "Traceback" not in res.output
    assert re_search(rf"error: patient pt_a_\d is CT series {diag} without an RTSTRUCT, so without ROIs \(a "
                     r"diagnostic CT, a CBCT or another scan beside the planning CT\?\): it cannot be "
                     r"predicted; leave its files out of the folder", text), text
    assert not out.exists() or not any(out.iterdir())


def test_a_ct_of_two_slice_spacings_is_not_only_one_missing_slice(template, tmp_path):  # noqa: F811
    """A series reconstructed at 2.5 mm, then at 5 mm (every second slice of the tail absent, the structure
    set listing the images it holds): refused as '1 slice(s) missing between CT.0021.dcm and CT.0023.dcm',
    so the user looks for one lost file; the error now also counts the 5 irregular gaps and names the
    change of spacing."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    for k, f in enumerate(sorted(src.glob("CT.*.dcm"))):
        if k > 20 and k % 2:
            f.unlink()
    have = {pydicom.dcmread(f).SOPInstanceUID for f in src.glob("CT.*.dcm")}

    def listed(ds):
        study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        se = study.RTReferencedSeriesSequence[0]
        se.ContourImageSequence = [x for x in se.ContourImageSequence if x.ReferencedSOPInstanceUID in have]
    edit(src / "RS.dcm", listed)
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert re_search(r"error: patient pt_a: CT series \S+ \(26 files in \S+\): 1 slice\(s\) missing "
                     r"between CT\.0021\.dcm \(position 50\.00 mm\) and CT\.0023\.dcm \(55\.00 mm\): gap "
                     r"5\.00 mm, slice spacing 2\.50 mm; 5 irregular gaps in all \(up to 5\.00 mm\): if no "
                     r"file is missing, the series changes its slice spacing \(reconstructed at two "
                     r"spacings\?\)", text), text
    assert not (out / "dataset.json").exists()


def test_dicom_data_sets_without_the_file_preamble_are_named(template, tmp_path):  # noqa: F811
    """An export whose files hold the data sets without the 128-byte preamble and 'DICM' prefix of a DICOM
    file (PS3.10; some older planning systems and scripts write them so): pydicom refuses every file as
    'not a DICOM file', and the error was 'no CT image series found under ... (looked at 35 files)',
    naming none. Now it names the files and why they are not read."""
    src = tmp_path / "in"
    shutil.copytree(template["dicom"], src)
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(f, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert (src / "CT.0001.dcm").read_bytes()[128:132] != b"DICM"
    out = tmp_path / "cache"
    res = run(["data", "import-dicom", str(src), "--out", str(out), "--no-progress"])
    text = flat(res.output)
    assert res.exit_code == 2, text
    assert re_search(r"error: no CT image series found under \S+ \(looked at 35 files\); 35 file\(s\) are "
                     r"not readable DICOM: \S*CT\.0001\.dcm \(CT data without the DICOM file preamble, "
                     r"'DICM' \(PS3\.10\): export it as a DICOM file\)", text), text
    assert not (out / "dataset.json").exists()
    # predict's and evaluate's format detection said only 'IN is neither a dosepred cache, ... nor a
    # DICOM folder': they name the files as the import does
    model = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm"
    for args in (["predict", "--model", str(model), "--data", str(src), "--out", str(tmp_path / "p")],
                 ["evaluate", "--reference", str(src), "--prediction", str(tmp_path)]):
        res = run([*args, "--no-progress"])
        text = flat(res.output)
        assert res.exit_code == 2 and "Traceback" not in text, text
        assert re_search(r"error: \S+ is (neither|not) a dosepred cache .* nor a DICOM folder( \(CT series "
                         r"\+ RTSTRUCT\))?; 35 file\(s\) are not readable DICOM: \S*CT\.0001\.dcm \(CT data "
                         r"without the DICOM file preamble, 'DICM' \(PS3\.10\): export it as a DICOM file\)",
                         text), text
    assert not (tmp_path / "p").exists()
