"""The folder API: scan a DICOM folder (:func:`scan_dicom_folder`, headers only: pairing, doses,
ROI names and prescriptions) and build its patients one at a time (CT, ROI masks, dose, provenance in
``meta``)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...constants import BODY_HU  # possible-dose mask from CT when there is no body contour
from ...geometry import ct_body, filled_outline
from ...patient import Patient, RoiSet
from ...resample import WARN_REF_DOSE_OUTSIDE_MASK, dose_within_mask
from .. import roi_names as _names
from ._common import FORMAT_NAME, DicomImportError, uid_of, warn
from .ct import read_ct
from .rtdose import read_dose_onto
from .rtplan import pick_dose, planned_fractions, resolve_rois, sequential_plans
from .rtstruct import rasterise, roi_info
from .scan import PatientFiles, assign_ids, pair_files, scan_files


def _within_mask(dose: np.ndarray, mask: np.ndarray, s: PatientFiles, meta: dict[str, Any]) -> np.ndarray:
    """The planned dose as every reference dose is read (OpenKBP's convention): 0 Gy outside the
    possible-dose mask, where no prediction has dose (a dose computed in air, or spread past the body
    contour by resampling the dose grid, would otherwise count as error of any prediction, and evaluation,
    plan QA and the report would each see another plan). The share set to 0 is recorded in ``meta``
    (``dose_outside_mask_pct``); over :data:`~dosepred.resample.WARN_REF_DOSE_OUTSIDE_MASK`, a warning."""
    out, share = dose_within_mask(dose, mask)
    if share > 0:
        meta["dose_outside_mask_pct"] = round(100.0 * share, 3)
        if share > WARN_REF_DOSE_OUTSIDE_MASK:
            warn(f"patient {s.id}: {100.0 * share:.1f} % of the planned dose (RTDOSE "
                 f"{meta.get('rtdose_file', '?')}) lies outside the possible-dose mask "
                 f"({meta.get('possible_dose_mask', 'body')}); read as 0 Gy there, where no prediction has "
                 "dose: does the body contour miss part of the patient?")
    return out


#: A warning when more than this share of a target's or organ's voxels lie outside the possible-dose mask
MAX_ROI_OUTSIDE_MASK = 0.01


@contextmanager
def _naming(s: PatientFiles) -> Iterator[None]:
    """An error about one patient's files names the patient too (a folder may hold several patients'
    files side by side under UID file names, where the path alone does not say whose they are)."""
    try:
        yield
    except DicomImportError as e:
        msg = str(e)
        if f"patient {s.id}" in msg:
            raise
        raise DicomImportError(f"patient {s.id}: {msg}") from None


def _build_patient(s: PatientFiles, roi_set: RoiSet) -> Patient:
    ct, geom, origin_raw, iop_raw = read_ct(s.series)
    first = s.series.first
    masks: dict[str, np.ndarray] = {}
    body = None
    meta: dict[str, Any] = {
        "format": FORMAT_NAME, "source": str(s.series.files[0][0].parent.resolve()),
        "patient_id": str(getattr(first, "PatientID", "")),
        "patient_name": str(getattr(first, "PatientName", "") or ""),
        "patient_birth_date": str(getattr(first, "PatientBirthDate", "") or ""),
        "patient_sex": str(getattr(first, "PatientSex", "") or ""),
        "patient_position": str(getattr(first, "PatientPosition", "") or ""),
        "study_uid": str(getattr(first, "StudyInstanceUID", "")),
        "series_uid": s.series.uid, "frame_of_reference_uid": s.series.for_uid,
        "study_date": str(getattr(first, "StudyDate", "") or ""),
        "origin": origin_raw, "orientation": iop_raw,
    }
    if s.rtstruct is not None:
        path, ds = s.rtstruct
        meta["rtstruct_uid"] = str(getattr(ds, "SOPInstanceUID", ""))
        meta["rtstruct_file"] = str(path.resolve())
        meta["roi_names"] = {k: v for k, v in s.original_names.items()}
        meta["roi_numbers"] = {k: list(v) for k, v in s.roi_sources.items() if k != _names.BODY}
        if s.prescriptions:
            meta["prescriptions_from"] = dict(s.prescriptions)
        for name, numbers in s.roi_sources.items():
            m = rasterise(ds, path, numbers, name, geom, ct.shape)  # type: ignore[arg-type]
            if name == _names.BODY:
                body = m
                continue
            if not m.any():
                warn(f"RTSTRUCT {path}: ROI {name} ({', '.join(s.original_names[name])}) has no voxel on "
                     "the CT grid; recorded as missing")
                continue
            masks[name] = m
    if s.plan is not None:
        meta["rtplan_uid"] = str(getattr(s.plan[1], "SOPInstanceUID", ""))
        meta["rtplan_file"] = str(s.plan[0].resolve())
        nfx = planned_fractions(s.plan[1], s.plan[0])
        if s.plans_summed:  # a sequential boost: every phase's plan, fractions added
            meta["rtplan_uids"] = [uid_of(ds) for _, ds in s.plans_summed]
            meta["rtplan_files"] = [str(p.resolve()) for p, _ in s.plans_summed]
            counts = [planned_fractions(ds, p) for p, ds in s.plans_summed]
            meta["rtplan_fractions"] = counts
            # the number of fractions is their sum only when the phases follow one another (PRIOR):
            # concurrent plans may be delivered in the same sessions, a MULTI_PLAN sum does not say
            nfx = None if any(c is None for c in counts) or not sequential_plans(s.plans_summed) else \
                sum(c for c in counts if c is not None)
        if nfx is not None:
            meta["fractions"] = nfx
    if body is not None and body.any():
        meta["possible_dose_mask"] = f"body contour {', '.join(s.original_names[_names.BODY])}"
        outline = filled_outline(body, geom)
        if outline is not None:  # a skin rind (outer and inner contours): the inside would be left out
            body = outline[0]
            meta["possible_dose_mask"] += ", its outline filled slice by slice"
            where = f"RTSTRUCT {s.rtstruct[0]}" if s.rtstruct is not None else s.series.describe()
            warn(f"patient {s.id}: {where}: the body contour {', '.join(s.original_names[_names.BODY])} is "
                 f"an outline, not the body (its axial slices filled hold {outline[1]:.1f} x its voxels; a "
                 "skin rind drawn with an inner contour?): filled slice by slice as the possible-dose mask "
                 "(draw the external contour without the inner one, or name the body ROI with an ROI map)")
    else:
        body, removed = ct_body(ct, geom, BODY_HU)  # the airways inside: body, as a drawn contour holds them
        meta["possible_dose_mask"] = f"CT > {BODY_HU:g} HU, holes filled (no body/external contour)" + \
            (f"; {removed}" if removed else "")
    # as OpenKBP's, the dose outside the possible-dose mask is neither predicted nor scored (0 Gy in both,
    # :class:`dosepred.evaluation.case.ScoringCase`): a target or organ reaching past it is named
    beyond = {n: (int((m & ~body).sum()), int(m.sum())) for n, m in masks.items()
              if n in roi_set and roi_set[n].kind in ("target", "oar")}
    beyond = {n: k for n, k in beyond.items() if k[0]}
    if beyond:
        meta["roi_voxels_outside_mask"] = {n: k for n, (k, _) in beyond.items()}
        many = {n: k for n, k in beyond.items() if k[0] > MAX_ROI_OUTSIDE_MASK * k[1]}
        if many:
            where = f"RTSTRUCT {s.rtstruct[0]}" if s.rtstruct is not None else s.series.describe()
            warn(f"patient {s.id}: {where}: " + ", ".join(f"{n} has {k} of its {t} voxels" for n, (k, t) in
                                                       many.items())
                 + f" outside the possible-dose mask ({meta['possible_dose_mask']}): their dose is neither "
                 "predicted nor scored (0 Gy in both, as OpenKBP's), so the ROI's dose metrics count them "
                 "at 0 Gy; crop the ROI to the body, or draw the body contour around it")
    dose = None
    if s.dose is not None:
        dpath, dds, how = s.dose
        dose = read_dose_onto(dpath, geom, ct.shape, body)  # type: ignore[arg-type]
        meta["rtdose_file"] = str(dpath.resolve())
        meta["rtdose_uid"] = str(getattr(dds, "SOPInstanceUID", ""))
        meta["rtdose_matched_by"] = how
        for ppath, _, _ in s.doses_summed[1:]:  # the other phases of a sequential boost
            dose = dose + read_dose_onto(ppath, geom, ct.shape, body)  # type: ignore[arg-type]
        if s.doses_summed:
            meta["rtdose_files"] = [str(d[0].resolve()) for d in s.doses_summed]
            meta["rtdose_uids"] = [uid_of(d[1]) for d in s.doses_summed]
            meta["dose"] = "sum of the plans' RTDOSEs (RTPlanRelationship PRIOR/CONCURRENT)"
        dose = _within_mask(dose, body, s, meta)
    return Patient.from_masks(s.id, ct, masks, roi_set, geom.spacing, body, dose, meta, geometry=geom)


@dataclass
class DicomFolder:
    """A scanned DICOM folder: its patients' ids and RoiSet, each patient built on demand."""

    src: Path
    roi_set: RoiSet
    sources: list[PatientFiles]

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.sources]

    def patients(self, ids: Sequence[str] | None = None) -> Iterator[Patient]:
        want = None if ids is None else set(ids)
        for s in self.sources:
            if want is None or s.id in want:
                with _naming(s):
                    p = _build_patient(s, self.roi_set)
                yield p

    def headers(self) -> dict[str, dict[str, Any]]:
        """Per patient id, the UIDs that identify it (for matching predicted RTDOSE files), and its plan
        dose's RTDOSE files (``rtdose_files``: never its prediction)."""
        out = {}
        for s in self.sources:
            first = s.series.first
            rs = str(getattr(s.rtstruct[1], "SOPInstanceUID", "")) if s.rtstruct else ""
            out[s.id] = {"patient_id": str(getattr(first, "PatientID", "")),
                         "frame_of_reference_uid": s.series.for_uid, "rtstruct_uid": rs,
                         "rtplan_uid": str(getattr(s.plan[1], "SOPInstanceUID", "")) if s.plan else "",
                         "rtdose_files": [str(d[0]) for d in s.doses_summed or ([s.dose] if s.dose else [])]}
        return out


def scan_dicom_folder(src: str | os.PathLike,
                      roi_map: _names.RoiMap | dict | str | os.PathLike | None = None) -> DicomFolder:
    """Scan ``src`` (headers only): pair the files, resolve ROI names, kinds and prescriptions."""
    rmap = roi_map if isinstance(roi_map, _names.RoiMap) else (
        _names.RoiMap.from_obj(roi_map) if isinstance(roi_map, dict) else _names.RoiMap.load(roi_map))
    src = Path(src)
    series, structs, doses, plans = scan_files(src)
    sources = pair_files(series, structs, doses, plans, src)
    assign_ids(sources)
    for s in sources:
        with _naming(s):
            pick_dose(s)
            resolve_rois(s, rmap)
        if s.rtstruct is None:
            warn(f"{s.series.describe()}: no RTSTRUCT; patient {s.id} has no ROIs"
                 f"{s.series.unreadable_note()}")
    unused = rmap.unused()
    if unused:  # a misspelt key maps nothing: say so here, not as a missing ROI later
        import difflib

        seen = sorted({name for s in sources if s.rtstruct is not None
                       for _, name, _, _ in roi_info(s.rtstruct[1], s.rtstruct[0])})
        hints = [f"{k!r}" + (f" (did you mean {near[0]!r}?)"
                             if (near := difflib.get_close_matches(k, seen, 1, 0.6)) else "") for k in unused]
        warn(f"ROI map {rmap.source or '(given)'}: {len(unused)} name(s) matched no ROI of any structure "
             f"set in {src}: {', '.join(hints)}")
    roi_set = _names.union_roi_set([s.canon for s in sources], [s.id for s in sources], src)
    for line in _names.lookalikes({s.id: s.canon for s in sources}):
        warn(line)
    return DicomFolder(src, roi_set, sources)


def iter_dicom_folder(src: str | os.PathLike, roi_map: _names.RoiMap | dict | str | os.PathLike | None = None
                      ) -> tuple[RoiSet, list[str], Iterator[Patient]]:
    """Scan ``src`` and return ``(roi_set, patient ids, iterator of Patients)``; the patients are
    built one at a time (a CT volume in memory at once). See :func:`read_dicom_folder`."""
    f = scan_dicom_folder(src, roi_map)
    return f.roi_set, f.ids, f.patients()


def read_dicom_folder(src: str | os.PathLike, roi_map: _names.RoiMap | dict | str | os.PathLike | None = None
                      ) -> list[Patient]:
    """Read every CT series under ``src`` (recursively) with its RTSTRUCT, RTPLAN and RTDOSE as
    Patients (matching rules in the package docstring, :mod:`dosepred.io.dicom`), one folder per
    patient or mixed. All patients share one RoiSet (see :func:`dosepred.io.roi_names.union_roi_set`);
    ``roi_map`` is a :class:`RoiMap`, a dict or a JSON path. Problems raise :class:`DicomImportError` or warn
    (:class:`DicomWarning`) naming the file.
    """
    _, _, it = iter_dicom_folder(src, roi_map)
    return list(it)
