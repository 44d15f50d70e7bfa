"""Writing RTDOSE: the dose grid (cropped, at the RTDOSE spacing), the exact DoseGridScaling, the RT
DVH items, and :func:`write_rtdose` (a predicted dose referencing the source's structure set and
plan)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...boxes import mask_box
from ...dvh import DVH
from ...errors import InputError
from ...geometry import Geometry
from ...patient import Patient
from ...resample import extend_dose, resample
from ._common import RTDOSE_STORAGE, RTPLAN_STORAGE, RTSTRUCT_STORAGE, decimal_string
from .export import (
    MAX_LO,
    ExportUids,
    ImagePlane,
    check_names,
    export_layout,
    export_roi_numbers,
    export_uids,
    new_file,
    save_file,
    set_image_plane,
)

#: Default finest dose-grid spacing (mm) of :func:`write_rtdose`.
DOSE_SPACING = 2.5


def dose_scaling(dose: np.ndarray) -> float:
    """DoseGridScaling for 32-bit storage: the coarsest of 1e-3 ... 1e-6 Gy that gives every float32
    value back exactly (doses written with a few decimals, e.g. OpenKBP's), else ``Dmax / 4e9``."""
    d = np.asarray(dose, dtype=np.float32)
    dmax = float(d.max(initial=0.0))
    if dmax <= 0:
        return 1.0
    nz = d[d != 0]
    for s in (1e-3, 1e-4, 1e-5, 1e-6):
        if dmax / s >= 2**32 - 1:
            break
        ok = True
        for part in (nz[:4096], nz):  # a sample first: most float doses fail on it at once
            q = np.rint(part.astype(np.float64) / s)
            if not np.array_equal((q * float(decimal_string(s))).astype(np.float32), part):
                ok = False
                break
        if ok:
            return float(decimal_string(s))
    return float(decimal_string(dmax / 4.0e9))


DVH_BIN_GY = 0.1


def dvh_sequence(p: Patient, dose: np.ndarray, numbers: dict[str, list[int]]) -> list[Any]:
    """RT DVH items (cumulative, Gy, cm3, 0.1 Gy bins) of each present ROI with known ROINumbers in
    the referenced RTSTRUCT, from ``dose`` on the patient's grid."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq

    items = []
    vv = p.voxel_volume_cc
    dose = np.asarray(dose)
    for name in p.present_rois:
        nums = numbers.get(name)
        if not nums:
            continue
        d = dose[p.mask(name)].astype(np.float64)  # the ROI's voxels only: not the grid once per ROI
        if d.size == 0:
            continue
        # volume receiving at least each bin's lower edge, counted as every dosepred DVH counts it
        # (a dose at an edge, whatever its float rounding, from that edge on); the last bin holds the maximum
        cum = DVH(d, vv * 1000.0, bin_width=DVH_BIN_GY).cumulative("cc")[:-1]
        nb = len(cum)
        item = Dataset()
        refs = []
        for n in nums:
            r = Dataset()
            r.ReferencedROINumber = int(n)
            r.DVHROIContributionType = "INCLUDED"
            refs.append(r)
        item.DVHReferencedROISequence = Seq(refs)
        item.DVHType = "CUMULATIVE"
        item.DoseUnits = "GY"
        item.DoseType = "PHYSICAL"
        item.DVHDoseScaling = "1"
        item.DVHVolumeUnits = "CM3"
        item.DVHNumberOfBins = nb
        item.DVHData = [v for c in cum for v in (decimal_string(DVH_BIN_GY), decimal_string(float(c)))]
        item.DVHMinimumDose = decimal_string(float(d.min()))
        item.DVHMaximumDose = decimal_string(float(d.max()))
        item.DVHMeanDose = decimal_string(float(d.mean()))
        items.append(item)
    return items


def write_dose_file(p: Patient, dose: np.ndarray, g: Geometry, path: Path, u: ExportUids,
                    plane_iop: list[str], rs_uid: str | None, plan_uid: str | None = None,
                    description: str = "", dvhs: list[Any] | None = None, comments: str = "") -> Path:
    """An RTDOSE of ``dose`` (Gy) on grid ``g`` (DICOM-ready axes, frames along axis 0); ``description``
    (its SeriesDescription) at most :data:`MAX_LO` characters, ``comments`` its ImageComments."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.tag import Tag
    from pydicom.uid import generate_uid

    dose = np.asarray(dose, dtype=np.float32)
    if not np.all(np.isfinite(dose)) or (dose.size and dose.min() < 0):
        raise InputError(f"patient {p.id}: dose must be finite and >= 0 Gy")
    scaling = dose_scaling(dose)
    stored = np.clip(np.rint(dose.astype(np.float64) / scaling), 0, 2**32 - 1).astype("<u4")
    sop = generate_uid()
    ds = new_file(path, RTDOSE_STORAGE, sop, p, "RTDOSE", u)
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    if description:
        assert len(description) <= MAX_LO, description
        ds.SeriesDescription = description
    if comments:
        ds.ImageComments = comments
    set_image_plane(ds, ImagePlane(g, g.origin, plane_iop), dose.shape, p)
    ds.ImagePositionPatient = [decimal_string(v) for v in g.origin]
    ds.NumberOfFrames = dose.shape[0]
    ds.FrameIncrementPointer = Tag(0x3004, 0x000C)
    ds.GridFrameOffsetVector = [decimal_string(k * g.spacing[0]) for k in range(dose.shape[0])]
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = "PLAN"
    ds.DoseGridScaling = decimal_string(scaling)
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if plan_uid:
        r = Dataset()
        r.ReferencedSOPClassUID = RTPLAN_STORAGE
        r.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = Seq([r])
    if rs_uid and dvhs:  # the RT DVH module: the structure set and the DVHs of its ROIs
        r = Dataset()
        r.ReferencedSOPClassUID = RTSTRUCT_STORAGE
        r.ReferencedSOPInstanceUID = rs_uid
        ds.ReferencedStructureSetSequence = Seq([r])
        ds.DVHSequence = Seq(dvhs)
    ds.PixelData = stored.tobytes()
    save_file(ds, path)
    return path


def dose_grid(p: Patient, dose: np.ndarray, dose_spacing: float | Sequence[float] | None = None,
              crop: bool = True) -> tuple[np.ndarray, Geometry]:
    """``dose`` (on ``p``'s grid) on the RTDOSE grid: ``p``'s axes, cropped (``crop``) to the box of
    the possible-dose mask and the non-zero dose plus one voxel, at ``dose_spacing`` mm (one value for
    every axis, or one per array axis) or by default ``max(spacing, DOSE_SPACING)`` per axis. Where the
    spacing is the patient's the values are copied, else resampled trilinearly (:mod:`dosepred.resample`)."""
    g = p.geometry
    assert g is not None
    dose = np.asarray(dose, dtype=np.float32)
    if dose.shape != p.shape:
        raise InputError(f"patient {p.id}: dose shape {dose.shape} != CT shape {p.shape}")
    if dose_spacing is None:
        target = tuple(max(s, DOSE_SPACING) for s in g.spacing)
    else:
        sp = np.atleast_1d(np.asarray(dose_spacing, dtype=np.float64))
        if sp.size == 1:
            sp = np.repeat(sp, 3)
        if sp.size != 3 or not np.all(np.isfinite(sp) & (sp > 0)):
            raise InputError(f"dose spacing must be one or three positive mm values, got {dose_spacing!r}")
        target = tuple(float(v) for v in sp)
    body = np.asarray(p.possible_dose_mask, dtype=bool)
    same = bool(np.allclose(target, g.spacing, rtol=1e-9, atol=0))
    # the box of the dose and the possible-dose mask plus one voxel (on a coarser grid: plus one coarse
    # voxel, so the grid's outer centres lie beyond the body); the whole grid when both are empty
    margin = [1] * 3 if same else [int(math.ceil(t / s - 1e-9)) + 1 for t, s in zip(target, g.spacing,
                                                                                  strict=True)]
    box = (mask_box((dose > 0) | body, margin, empty="full") if crop
           else tuple(slice(0, n) for n in p.shape))
    sub = Geometry(g.to_patient([s.start for s in box]), g.direction, g.spacing)
    cropped = dose[box]
    if same:
        return np.ascontiguousarray(cropped), sub
    new, shape = spanning_grid(sub, cropped.shape, target)
    inside = body[box]
    if inside.any() and not inside.all():
        # a prediction is 0 Gy outside the body: coarse voxels straddling its edge would mix in those
        # zeros and the body's edge voxels read back a fraction of their dose. The zeros within one
        # coarse voxel of the body take the mean of their filled neighbours first (a dose outside
        # the body that is not 0 is kept)
        cropped = extend_dose(cropped, inside, max(margin))
    # the new grid's last centres may lie beyond the source's (by less than one step): they take the
    # source's edge values ("nearest"), never 0 Gy
    out = resample(cropped, sub, new, shape, order=1, mode="nearest")
    if inside.any() and not inside.all():
        # the filled zeros serve the voxels within one coarse step of the body (which the mask's voxels
        # read back from); beyond that the grid holds the prediction's 0 Gy, not the fill's halo
        ratio = [t / s for t, s in zip(target, g.spacing, strict=True)]
        out = np.where(_near(inside | (dose[box] != 0), ratio, shape), out, 0)
    return np.maximum(out, 0).astype(np.float32), new


def _near(support: np.ndarray, ratio: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Voxels of a grid of ``shape`` whose centre ``k * ratio`` (source voxel units per axis, same
    origin and axes as ``support``'s) lies less than one of its own steps (``ratio`` source voxels)
    from a ``support`` voxel along every axis."""
    m = np.asarray(support, dtype=bool)
    for ax, (r, n_out) in enumerate(zip(ratio, shape, strict=True)):
        a = np.moveaxis(m, ax, 0)
        n = a.shape[0]
        c = np.arange(n_out) * r
        lo = np.clip(np.floor(c - r + 1e-6).astype(int) + 1, 0, n)  # first j with j > c - r
        hi = np.clip(np.ceil(c + r - 1e-6).astype(int), 0, n)  # one past the last j with j < c + r
        cs = np.concatenate([np.zeros((1, *a.shape[1:]), np.int64), np.cumsum(a, axis=0, dtype=np.int64)])
        m = np.moveaxis(cs[hi] - cs[np.minimum(lo, hi)] > 0, 0, ax)
    return m


def spanning_grid(g: Geometry, shape: Sequence[int], spacing: Sequence[float]
                  ) -> tuple[Geometry, tuple[int, int, int]]:
    """A grid along ``g``'s axes at ``spacing`` whose first voxel centre is that of ``(g, shape)``
    and whose last lies at or (by less than one step) beyond the source's last: a dose written on it
    covers every voxel centre of the source, its outermost included."""
    span = (np.asarray(shape, dtype=np.float64) - 1) * np.asarray(g.spacing, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    n = np.ceil(span / sp - 1e-6).astype(int) + 1
    return (Geometry(g.origin, g.direction, tuple(float(v) for v in sp)),  # type: ignore[arg-type]
            tuple(int(v) for v in n))  # type: ignore[return-value]


def _in_export_axes(p: Patient, q: Patient, spacing: float | Sequence[float] | None
                    ) -> float | Sequence[float] | None:
    """``spacing`` given per array axis of ``p`` (the caller's patient), per array axis of ``q`` (``p``
    in the export layout: its axes permuted and flipped). One value, or None, is returned as it is."""
    if spacing is None:
        return None
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size != 3:
        return spacing  # dose_grid checks it
    assert p.geometry is not None and q.geometry is not None
    cos = np.abs(p.geometry.direction.T @ q.geometry.direction)  # [i, j]: patient axis i vs export axis j
    return tuple(float(sp[int(np.argmax(cos[:, j]))]) for j in range(3))


def write_rtdose(patient: Patient, dose: np.ndarray, out: str | os.PathLike, *,
                 dose_spacing: float | Sequence[float] | None = None, model_name: str | None = None) -> Path:
    """Write ``dose`` (Gy, on the patient's grid) as an RTDOSE in the patient's FrameOfReference, on a
    grid of the layout :func:`write_dicom` writes, cropped to the body and at ``dose_spacing`` mm (by
    default ``max(CT spacing, 2.5 mm)`` per axis; see :func:`dose_grid`; three values are per array axis
    of ``patient``, whatever layout the file is written in). A path ending in ``.dcm`` is
    the file; otherwise ``<dir>/RD.<id>.dcm``.

    For a patient read from DICOM the file keeps its identity (PatientName, PatientID,
    PatientBirthDate, PatientSex), StudyInstanceUID and FrameOfReferenceUID, references the source
    RTSTRUCT (and RTPLAN), and its SeriesDescription names the prediction and ``model_name``."""
    path = Path(out)
    if path.suffix.lower() != ".dcm":
        path = path / f"RD.{patient.id}.dcm"
    d = np.asarray(dose, dtype=np.float32)
    if d.shape != patient.shape:
        raise InputError(f"patient {patient.id}: dose shape {d.shape} != CT shape {patient.shape}")
    check_names(patient, rois=False)
    u = export_uids(patient)
    q = export_layout(patient.with_dose(d))
    assert q.dose is not None
    plane = ImagePlane.of(q)
    arr, g = dose_grid(q, q.dose, _in_export_axes(patient, q, dose_spacing))
    g = Geometry(g.origin, plane.geometry.direction, g.spacing)  # the plane's exact direction
    if patient.meta.get("rtstruct_uid"):  # the source's structure set and its ROI numbers
        rs_uid = str(patient.meta["rtstruct_uid"])
        numbers = {k: [int(n) for n in v] for k, v in (patient.meta.get("roi_numbers") or {}).items()}
    else:  # the structure set write_dicom writes for this patient
        rs_uid, numbers = u.rs, export_roi_numbers(q)
    plan_uid = patient.meta.get("rtplan_uid")
    path.parent.mkdir(parents=True, exist_ok=True)
    if model_name:  # a path of a folder named in Latin-1 (surrogate escapes) has no text to encode
        model_name = model_name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    comments = f"dosepred predicted dose, model {model_name}" if model_name else ""
    return write_dose_file(q, arr, g, path, u, plane.iop, rs_uid, plan_uid,
                           prediction_description(model_name), dvh_sequence(q, q.dose, numbers), comments)


def prediction_description(model_name: str | None) -> str:
    """A predicted RTDOSE's SeriesDescription (at most :data:`MAX_LO` characters, as DICOM's LO holds):
    "dosepred predicted dose (model NAME)" with as much of the end of the model's path as fits (its name
    at least), else "dosepred: NAME", a name too long even for that cut at its start ("...": its end,
    a version, tells models apart). The whole path is in ImageComments."""
    parts = [x for x in (model_name or "unnamed").replace("\\", "/").split("/") if x]
    for k in range(len(parts)):
        desc = f"dosepred predicted dose (model {'/'.join(parts[k:])})"
        if len(desc) <= MAX_LO:
            return desc
    desc = f"dosepred: {parts[-1]}"
    return desc if len(desc) <= MAX_LO else f"dosepred: ...{parts[-1][len(desc) - MAX_LO + 3:]}"
