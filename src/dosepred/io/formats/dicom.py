"""DICOM RT folders as a row of the table of formats (:mod:`dosepred.io.dicom` reads and writes them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ...patient import Patient, RoiSet
from .. import dicom
from .base import Format, place_dose


class DicomReader:
    """A scanned DICOM folder (:class:`~dosepred.io.dicom.DicomFolder`) as a :class:`~.base.Reader`."""

    cache = None

    def __init__(self, path: Path, roi_map: Any = None) -> None:
        self.folder = dicom.scan_dicom_folder(path, roi_map)
        self.roi_set = self.folder.roi_set
        self.ids = self.folder.ids

    def patients(self, ids: Any = None, require_dose: bool = False) -> Any:
        yield from self.folder.patients(ids)

    def headers(self) -> dict[str, dict[str, Any]]:
        """The DICOM UIDs of each patient (what predicted RTDOSE files are matched by)."""
        return self.folder.headers()


def read_source(path: Path, roi_map: Any = None) -> tuple[RoiSet | None, Iterable[Patient]]:
    rs, _, it = dicom.iter_dicom_folder(path, roi_map)
    return rs, it


def write_dose(patient: Patient, dose: np.ndarray, out: Path, dose_spacing: float | None = None,
               model_name: str | None = None) -> Path:
    """An RTDOSE file in ``out/<id>/`` (:func:`dosepred.io.dicom.write_rtdose`)."""
    d = out / patient.id
    d.mkdir(parents=True, exist_ok=True)
    res = dicom.write_rtdose(patient, dose, d, dose_spacing=dose_spacing, model_name=model_name)
    return Path(res) if res is not None else d


def read_dose_on(path: Path, ref: Patient) -> np.ndarray:
    """A predicted RTDOSE resampled onto the reference patient's grid in patient coordinates; an error
    reading it names the reference patient (prediction files are matched by UID, not by their path)."""
    try:
        dose, g = dicom.read_rtdose(path)
    except dicom.DicomImportError as e:
        raise dicom.DicomImportError(f"patient {ref.id}: the predicted {e}") from None
    return place_dose(dose, g, path, ref, "RTDOSE", strict=False)


def match_doses(folder: Path, headers: Callable[[], dict[str, dict[str, Any]]]) -> dict[str, Path]:
    """Reference id -> the predicted RTDOSE file under ``folder`` that belongs to it (what ``predict
    --format dicom`` writes), matched by the RTSTRUCT / RTPLAN it references, else FrameOfReference,
    else PatientID (:func:`dosepred.io.dicom.match_rtdose`); ``headers()``: the references' DICOM UIDs
    (:meth:`DicomReader.headers`), asked only when ``folder`` holds RTDOSE files."""
    if not any(f.suffix.lower() == ".dcm" for f in dicom.files_under(folder)):
        return {}
    doses = dicom.scan_rtdoses(folder)
    if not doses:
        return {}
    out: dict[str, Path] = {}
    heads = headers()
    plans = {Path(f).resolve(): pid for pid, meta in heads.items() for f in meta.get("rtdose_files", ())}
    for pid, meta in heads.items():
        f = dicom.match_rtdose(pid, meta, doses)
        if f is not None and f.resolve() in plans:  # the prediction folder is (or holds) the reference
            raise InputError(f"patient {pid}: the RTDOSE matched as its prediction, {f}, is the plan dose of "
                             f"reference patient {plans[f.resolve()]}: each \"prediction\" would be a plan "
                             "dose (its own: every score 0); give the folder the predictions were written to "
                             "(dosepred predict --out), not the reference's")
        if f is not None:
            out[pid] = f
    return out


FORMAT = Format(
    name=dicom.FORMAT_NAME, label="DICOM",
    described="a DICOM folder (CT series + RTSTRUCT)",
    described_short="a DICOM folder",
    import_help="Import DICOM RT (CT + RTSTRUCT + RTDOSE, one patient per folder or mixed, searched "
                "recursively) into a cache; ROI names are mapped to canonical ones.",
    export_help="Write each patient as a CT series + RTSTRUCT (+ RTDOSE when it has a dose).",
    dose_output="pt_N/RD.*.dcm: an RTDOSE file per patient",
    detect=dicom.is_dicom_folder,
    detect_late=None,
    open=DicomReader,
    roi_naming=None,  # clinical names: an ROI map names them (takes_roi_map)
    read_source=read_source,
    write_patient=lambda p, folder, roi_format="labels": dicom.write_dicom(p, folder),
    write_dose=write_dose,
    # RTDOSE files are matched to the references by what they reference (not by name)
    dose_suffixes=(".dcm",), dose_by_id=False, read_dose=None, read_dose_on=read_dose_on,
    read_dose_sparse=None, dose_geometry=None, source_bytes=None,
    read_reference_boxes=None, open_doses=None, match_doses=match_doses,
    takes_roi_map=True,
    takes_dose_spacing=True,
    lists_imported=True,
    near_miss=dicom.headerless_files,
)
