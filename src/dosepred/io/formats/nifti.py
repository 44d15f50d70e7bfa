"""NIfTI patient folders as a row of the table of formats (:mod:`dosepred.io.nifti` reads and
writes them)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...patient import Patient, RoiSet
from .. import nifti
from .base import Format, place_dose


class NiftiReader:
    """The patient folders of a NIfTI source as a :class:`~.base.Reader`."""

    cache = None

    def __init__(self, path: Path) -> None:
        self.folders = nifti.patient_folders(path)
        infos = [nifti.read_sidecar(f) for f in self.folders]
        self.roi_set, _ = nifti.iter_nifti_folder(path)
        self.ids = [str(i.get("id") or f.name) for f, i in zip(self.folders, infos, strict=True)]

    def patients(self, ids: Sequence[str] | None = None, require_dose: bool = False) -> Iterator[Patient]:
        want = None if ids is None else set(ids)
        for pid, folder in zip(self.ids, self.folders, strict=True):
            if want is None or pid in want:
                yield nifti.read_patient(folder, self.roi_set)

    def headers(self) -> dict[str, dict[str, Any]]:
        return {i: {} for i in self.ids}


def detect(p: Path) -> bool:
    """A patient folder (``ct.nii.gz``) or a folder of them."""
    return p.is_dir() and (nifti.is_patient_folder(p)
                           or any(c.is_dir() and nifti.is_patient_folder(c) for c in p.iterdir()))


def read_source(path: Path, roi_map: Any = None) -> tuple[RoiSet | None, Iterable[Patient]]:
    return nifti.iter_nifti_folder(path)


def write_dose(patient: Patient, dose: np.ndarray, out: Path, dose_spacing: float | None = None,
               model_name: str | None = None) -> Path:
    """``out/<id>.nii.gz`` on the patient's grid."""
    path = out / f"{patient.id}.nii.gz"
    out.mkdir(parents=True, exist_ok=True)
    nifti.write_dose(patient, dose, path)
    return path


def read_dose(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(nifti.read_dose(path), dtype=np.float32)


def read_dose_on(path: Path, ref: Patient) -> np.ndarray:
    """A predicted NIfTI dose on the reference patient's grid: as stored when its header places it on
    that grid (or places it nowhere), else placed by its affine (:func:`~.base.place_dose`, strict)."""
    d = np.asarray(nifti.read_dose(path), dtype=np.float32)
    g = nifti.file_geometry(path)
    if g is None or ref.geometry is None or (d.shape == ref.shape and g.same_as(ref.geometry)):
        return d
    return place_dose(d, g, path, ref, "dose", strict=True)


FORMAT = Format(
    name=nifti.FORMAT_NAME, label="NIfTI",
    described="a NIfTI folder (ct.nii.gz or ct.nii)",
    described_short="a NIfTI folder (ct.nii.gz or ct.nii)",
    import_help="Import NIfTI patients (ct, dose, possible_dose_mask, rois/<name> or roi_codes + rois.json).",
    export_help="Write each patient as NIfTI files with the affine carrying spacing, orientation and origin.",
    dose_output="pt_N.nii.gz",
    detect=detect,
    detect_late=None,
    open=lambda path, roi_map=None: NiftiReader(path),
    roi_naming="a NIfTI folder, whose ROIs are named by rois.json or the label files",
    read_source=read_source,
    write_patient=lambda p, folder, roi_format="labels": nifti.write_patient(p, folder, roi_format),
    write_dose=write_dose,
    dose_suffixes=(".nii.gz", ".nii"), dose_by_id=True, read_dose=read_dose, read_dose_on=read_dose_on,
    read_dose_sparse=None, dose_geometry=nifti.file_geometry, source_bytes=None,
    read_reference_boxes=None, open_doses=None, match_doses=None, near_miss=None,
    roi_layouts=(("labels", "rois/<name>.nii.gz"), ("codes", "roi_codes.nii.gz + rois.json")),
)
