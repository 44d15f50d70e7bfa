"""RTSTRUCT contours rasterised onto the CT (dosepred.io.dicom.rtstruct), checked against hand counts.

Contours drawn through voxel centres (what mask-to-contour tools write) put voxel centres exactly on
the polygon's boundary; whether those voxels belong must not depend on the way the contour is wound
or on the way the CT's axes run (a silent change of an ROI's volume otherwise)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_layouts import write_layout
from dosepred.io import dicom
from dosepred.io.dicom.rtstruct import _polygon_mask
from test_dicom import make_patient

#: make_patient's grid: voxel centres at x, y = -31, -29, ..., 31 mm (2 mm), z = 0, 2.5, ... mm
X0, X1, Y0, Y1 = -9.0, 11.0, -7.0, 9.0  # a 20 x 16 mm rectangle, corners on voxel centres
SLICES = range(10, 20)  # ten CT slices


def _rectangle(z: float, reverse: bool) -> list[float]:
    pts = [(X0, Y0), (X1, Y0), (X1, Y1), (X0, Y1)]
    if reverse:
        pts = pts[::-1]
    return [v for x, y in pts for v in (x, y, z)]


def _set_contours(rs_path, roi: str, reverse: bool) -> None:
    ds = pydicom.dcmread(rs_path)
    num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == roi)
    rc = next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == num)
    items = []
    for k in SLICES:  # no ContourImageSequence: the reader places a contour by its z
        c = pydicom.Dataset()
        c.ContourGeometricType = "CLOSED_PLANAR"
        c.NumberOfContourPoints = 4
        c.ContourData = _rectangle(2.5 * k, reverse)
        items.append(c)
    rc.ContourSequence = pydicom.Sequence(items)
    ds.save_as(rs_path)


@pytest.mark.parametrize("layout", ["axial", "feet_first", "prone", "transposed", "rows_flipped",
                                    "columns_flipped"])
def test_contours_through_voxel_centres_give_the_same_voxels_either_way_round(tmp_path, layout):
    folder = write_layout(make_patient(), tmp_path / "in", layout)
    _set_contours(folder / "RS.dcm", "LeftParotid", reverse=False)  # counter-clockwise in x, y
    _set_contours(folder / "RS.dcm", "Ring", reverse=True)  # clockwise
    [p] = dicom.read_dicom_folder(folder)
    q = p.reoriented("SPL")  # make_patient's axes: slices to the head, rows posterior, columns left
    a, b = q.mask("LeftParotid"), q.mask("Ring")
    # by hand: 20 x 16 mm over 2 x 2 mm pixels is 10 x 8 pixel areas on each of the ten slices; the
    # half-open rule keeps the centres on the right and anterior edges (x = -9, y = -7: the tie-break
    # points to +x, +y in patient coordinates) and not those on the left and posterior ones, in every
    # layout (boundary excluded would be 9 x 7, included 11 x 9)
    x = -31.0 + 2.0 * np.arange(32)  # voxel centres along the columns (to the left)
    y = -31.0 + 2.0 * np.arange(32)  # along the rows (posterior)
    want = np.zeros(q.shape, bool)
    want[list(SLICES)] = ((y >= Y0) & (y < Y1))[:, None] & ((x >= X0) & (x < X1))[None, :]
    assert int(want.sum()) == 10 * 8 * len(SLICES)
    assert np.array_equal(a, want), int((a ^ want).sum())
    assert np.array_equal(b, want), int((b ^ want).sum())


@pytest.mark.parametrize("mirror", [False, True])
def test_polygon_mask_does_not_depend_on_winding(mirror):
    # a square through pixel centres (rows 2..7, columns 3..9) and a triangle with an edge on centres
    square = np.array([[2, 3], [2, 9], [7, 9], [7, 3]], float)
    tri = np.array([[1, 1], [1, 11], [10, 1]], float)
    for poly, want in ((square, 5 * 6), (tri, None)):
        if mirror:  # the same polygon seen through a CT whose columns run the other way
            poly = np.column_stack([poly[:, 0], 12 - 1 - poly[:, 1]])
        ccw = _polygon_mask(poly, 12, 12)
        cw = _polygon_mask(poly[::-1], 12, 12)
        assert np.array_equal(ccw, cw)
        if want is not None:
            assert int(ccw.sum()) == want
    # pixel centres strictly inside or strictly outside are decided as before (no boundary involved)
    off = np.array([[2.5, 3.5], [2.5, 8.5], [6.5, 8.5], [6.5, 3.5]])
    m = _polygon_mask(off, 12, 12)
    assert int(m.sum()) == 4 * 5 and m[3:7, 4:9].all()


def test_a_contour_too_long_for_a_16_bit_length_reads(tmp_path):
    """A contour of more than about 3000 points holds more than 65534 bytes of ContourData, more than an
    explicit-VR DS element's 16-bit length can say: pydicom (and so write_dicom, for a body outline on a
    0.98 mm CT) writes it as UN (PS3.5 6.2.2, CP-1066), and pydicom reads it back as raw bytes. It was
    refused as 'ContourData holds non-numbers: [b'...']' (an error message of the whole 86 kB value),
    so dosepred could not read the DICOM it wrote; it reads as the DS it is."""
    folder = write_layout(make_patient(), tmp_path / "in", "axial")
    ds = pydicom.dcmread(folder / "RS.dcm")
    num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "LeftParotid")
    rc = next(r for r in ds.ROIContourSequence if int(r.ReferencedROINumber) == num)
    t = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    radius, z = 9.3, 2.5 * 15  # slice 15; no voxel centre (odd mm) lies within 0.1 mm of the circle
    c = pydicom.Dataset()
    c.ContourGeometricType = "CLOSED_PLANAR"
    c.NumberOfContourPoints = len(t)
    c.ContourData = [f"{v:.10f}" for a in t for v in (radius * np.cos(a), radius * np.sin(a), z)]
    rc.ContourSequence = pydicom.Sequence([c])
    ds.save_as(folder / "RS.dcm")
    assert pydicom.dcmread(folder / "RS.dcm").ROIContourSequence[rc_index(ds, num)].ContourSequence[0][
        "ContourData"].VR == "UN"  # as pydicom writes it: the case under test
    [p] = dicom.read_dicom_folder(folder)
    q = p.reoriented("SPL")  # make_patient's axes: slices to the head, rows posterior, columns left
    x = -31.0 + 2.0 * np.arange(32)
    want = np.zeros(q.shape, bool)
    want[15] = np.hypot(x[:, None], x[None, :]) < radius
    assert int(want[15].sum()) > 50
    assert np.array_equal(q.mask("LeftParotid"), want), int((q.mask("LeftParotid") ^ want).sum())


def rc_index(ds, num: int) -> int:
    return next(k for k, r in enumerate(ds.ROIContourSequence) if int(r.ReferencedROINumber) == num)


@pytest.mark.parametrize("origin,spacing,iop", [
    ((249.87, 123.4567, -700.1), (2.0, 1.17, 1.17), (-1, 0, 0, 0, -1, 0)),
    ((-0.3, -299.7, 10.0), (2.5, 0.68, 0.68), (1, 0, 0, 0, 1, 0)),
], ids=["prone-far", "axial"])
def test_an_roi_along_the_grid_edge_is_not_said_to_reach_beyond_it(tmp_path, origin, spacing, iop):
    """A body that fills the image to its edges (a CT cropped to the patient) and an ROI in its corner:
    their contours run along the outer pixel edges (half a pixel beyond the outer centres, as
    write_dicom and mask-to-contour tools draw them), which the decimal strings put a hair (1e-13
    pixel) beyond. They were warned of as reaching beyond the CT's field of view ("the part outside
    it is not in the ROI, so its volume and dose metrics are those of the part on the CT"), wrongly:
    nothing lies outside. They read back exact, without a warning."""
    import warnings

    from dosepred.geometry import Geometry
    from dosepred.patient import Patient, Roi, RoiSet

    shape = (6, 50, 60)
    g = Geometry.from_dicom(origin, iop, spacing)
    body = np.ones(shape, bool)
    body[:, 20:30, :3] = False
    ptv = np.zeros(shape, bool)
    ptv[:, 0:8, 50:60] = True
    p = Patient.from_masks("pt_e", np.where(body, 40, -1000).astype(np.int16), {"PTV70": ptv},
                           RoiSet((Roi("PTV70", "target", 70.0),)), spacing, body, None, geometry=g)
    folder = dicom.write_dicom(p, tmp_path / "dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicom.DicomWarning)
        [q] = dicom.read_dicom_folder(folder)
    assert np.array_equal(q.possible_dose_mask, body)
    assert np.array_equal(q.mask("PTV70"), ptv)


def test_export_writes_contour_data_without_a_ds_object_per_number(tmp_path, monkeypatch):
    """write_dicom set each contour's ContourData as a list of strings, and pydicom built and validated a
    DS object per number, twice (set, then again when written): 9.5 minutes (most of it) for 60 ROIs on a
    512 x 512 x 160 CT. The contour data is now written as the bytes the file holds: no DS object per
    number, and the file holds the numbers the contour has (read with pydicom, checked against the
    patient's own voxel centres)."""
    import pydicom.valuerep

    made = []
    real = pydicom.valuerep.DS
    monkeypatch.setattr(pydicom.valuerep, "DS", lambda *a, **k: made.append(1) or real(*a, **k))
    p = make_patient().with_dose(None)  # no RTDOSE: its DVHs are DS numbers too
    folder = dicom.write_dicom(p, tmp_path / "out")
    monkeypatch.undo()
    ds = pydicom.dcmread(folder / "RS.dcm")
    numbers = [len(c.ContourData) for r in ds.ROIContourSequence for c in r.ContourSequence]
    assert sum(numbers) > 10_000  # the case under test: many contour numbers
    assert len(made) < 1000, len(made)  # the other DS fields (positions, spacings) of the files
    # the PTV's contour on its middle slice: a staircase along voxel edges, its corners half a voxel off
    # the centres of the voxels the patient holds (independent of the reader: geometry by hand)
    num = next(int(r.ROINumber) for r in ds.StructureSetROISequence if r.ROIName == "PTV70")
    rc = ds.ROIContourSequence[rc_index(ds, num)]
    k = 15
    z = 0.0 + 2.5 * k  # make_patient: slice positions 0, 2.5, ... mm along the normal
    [c] = [c for c in rc.ContourSequence if abs(float(c.ContourData[2]) - z) < 1e-6]
    xyz = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
    assert int(c.NumberOfContourPoints) == len(xyz)
    col = (xyz[:, 0] + 31.0) / 2.0  # x = -31 + 2 * column
    row = (xyz[:, 1] + 31.0) / 2.0
    inside = p.mask("PTV70")[k]
    assert inside.any()
    rr, cc = np.nonzero(inside)
    assert col.min() == cc.min() - 0.5 and col.max() == cc.max() + 0.5
    assert row.min() == rr.min() - 0.5 and row.max() == rr.max() + 0.5


def test_import_reads_contour_data_without_a_ds_object_per_number(tmp_path, monkeypatch):
    """The reader took each contour's ContourData as pydicom converts it, a validated DS object per number:
    the 1 million numbers of 60 ROIs on a 512 x 512 x 160 CT were most of its import (20.5 s user and
    896 MB for a 256 x 256 x 64 one, 12.6 s and 427 MB now). The numbers are now read from the bytes the
    file holds; the ROIs are the voxels exported."""
    import pydicom.valuerep

    p = make_patient().with_dose(None)
    folder = dicom.write_dicom(p, tmp_path / "out")
    ds = pydicom.dcmread(folder / "RS.dcm")
    assert sum(len(c.ContourData) for r in ds.ROIContourSequence for c in r.ContourSequence) > 10_000
    made = []
    real = pydicom.valuerep.DSfloat.__init__

    def spy(self, *a, **k):
        made.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(pydicom.valuerep.DSfloat, "__init__", spy)
    [q] = dicom.read_dicom_folder(folder)
    monkeypatch.undo()
    assert len(made) < 1000, len(made)  # the CT's positions and spacings
    for name in p.roi_set.names:
        assert np.array_equal(q.mask(name), p.mask(name)), name


def test_export_holds_one_roi_mask_at_a_time(tmp_path, monkeypatch):
    """The RTSTRUCT writer decoded every ROI's mask before drawing the first contour: 60 ROIs of a 512 x 512
    x 160 CT held 2.5 GB of masks at once (export-dicom's peak: 5.3 GB). Each mask is now decoded when its
    contours are drawn: when the writer asks for a mask, the ones it asked for before are gone."""
    import weakref

    from dosepred import synth
    from dosepred.patient import Patient

    p = synth.make_patient(1, 32, "pt_m", extra_rois=30).with_dose(None)
    assert len(p.present_rois) >= 30
    alive, real = [], Patient.mask

    def spy(self, name):
        # refcounting frees a dropped mask at once (no gc.collect per call: 30 s with torch loaded)
        alive.append(sum(r() is not None for r in refs))
        m = real(self, name)
        refs.append(weakref.ref(m))
        return m

    refs: list = []
    monkeypatch.setattr(Patient, "mask", spy)
    dicom.write_dicom(p, tmp_path / "out")
    assert len(alive) >= 30
    assert max(alive) <= 1, alive
