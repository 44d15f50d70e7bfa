"""OpenKBP CSV folders as a row of the table of formats (:mod:`dosepred.io.openkbp` reads and
writes them)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...patient import Patient, RoiSet
from .. import openkbp
from .base import Format


class OpenKBPReader:
    """The ``pt_*`` folders of an OpenKBP source as a :class:`~.base.Reader`."""

    cache = None

    def __init__(self, path: Path) -> None:
        self.folders = openkbp.patient_folders(path)
        self.roi_set = RoiSet.openkbp()
        self.ids = [f.name for f in self.folders]

    def patients(self, ids: Sequence[str] | None = None, require_dose: bool = False) -> Iterator[Patient]:
        want = None if ids is None else set(ids)
        for f in self.folders:
            if want is None or f.name in want:
                yield openkbp.read_patient(f, require_dose=require_dose)

    def headers(self) -> dict[str, dict[str, Any]]:
        return {i: {} for i in self.ids}


def detect(p: Path) -> bool:
    """A patient folder (``ct.csv``) or a folder of ``pt_*`` folders holding CSV files."""
    return p.is_dir() and ((p / "ct.csv").is_file() or any(
        c.is_dir() and c.name.startswith("pt_") and any(c.glob("*.csv")) for c in p.iterdir()))


def read_source(path: Path, roi_map: Any = None) -> tuple[RoiSet | None, Iterable[Patient]]:
    return None, openkbp.read_folder(path)


def write_dose(patient: Patient, dose: np.ndarray, out: Path, dose_spacing: float | None = None,
               model_name: str | None = None) -> Path:
    """``out/<id>.csv`` (sparse, within the possible-dose mask)."""
    path = out / f"{patient.id}.csv"
    openkbp.write_dose_csv(path, dose, patient.possible_dose_mask)
    return path


def read_dose(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    return openkbp.read_dose_csv(path, grid=shape)


def read_dose_sparse(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    idx, vals = openkbp.read_sparse(path, True, grid=shape, pid=path.stem)
    assert vals is not None
    return idx, vals


def source_bytes(path: Path) -> int:
    """The bytes of the CSV files of the patient folders."""
    return sum(f.stat().st_size for d in openkbp.patient_folders(path) for f in d.glob("*.csv"))


FORMAT = Format(
    name="openkbp", label="OpenKBP",
    described="an OpenKBP folder (pt_*/ct.csv)",
    described_short="an OpenKBP folder (pt_*)",
    detect=detect,
    # pt_* folders without CSV: the reader says what lacks
    detect_late=lambda p: p.is_dir() and openkbp.is_openkbp_folder(p),
    open=lambda path, roi_map=None: OpenKBPReader(path),
    roi_names="an OpenKBP folder, whose ROI names are fixed",
    read_source=read_source,
    write_patient=lambda p, folder, roi_format="labels": openkbp.write_patient(p, folder),
    write_dose=write_dose,
    dose_suffixes=(".csv",), dose_by_id=True, read_dose=read_dose, read_dose_on=None,
    read_dose_sparse=read_dose_sparse, dose_geometry=None, source_bytes=source_bytes,
    cropped=True, fixed_roi_names=True,
)
