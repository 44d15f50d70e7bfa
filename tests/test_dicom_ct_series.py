"""CT series and structure sets as clinics export them (compressed pixels, multi-frame images, a
structure set whose CT series is not in the folder): read exactly, or refused or warned of in one line
naming the file."""

from __future__ import annotations

import shutil

from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1

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
    assert not (out / "dataset.json").exists()
