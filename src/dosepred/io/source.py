"""One entry point for every patient source: :func:`open_source` (and :func:`load_patients`, its
patients one at a time).

A source is recognised by what the path holds, in this order:

- **cache**: a folder with ``dataset.json`` (:mod:`dosepred.io.cache`);
- **openkbp**: a ``pt_*`` patient folder (``ct.csv``) or a folder of them (:mod:`dosepred.io.openkbp`);
- **nifti**: a patient folder with ``ct.nii.gz`` or a folder of them (:mod:`dosepred.io.nifti`);
- **dicom**: a DICOM file or a folder holding DICOM files, searched recursively
  (:mod:`dosepred.io.dicom`).

Each reader sets ``Patient.geometry`` from its source (see docs/formats.md), so whatever the source,
patients come out placed in patient coordinates (LPS, mm).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DosepredError
from ..patient import Patient, RoiSet

KINDS = ("cache", "openkbp", "nifti", "dicom")

class SourceError(DosepredError, ValueError):
    """A path that is no patient source dosepred reads."""


@dataclass
class Source:
    """An opened source: its kind, ROI set and patient ids; patients are read on demand."""

    path: Path
    kind: str
    roi_set: RoiSet
    ids: list[str]
    _handle: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def cache(self) -> Any:
        """The opened :class:`~dosepred.io.cache.Cache` when this source is a cache, else None."""
        return self._handle if self.kind == "cache" else None

    def patients(self, ids: Sequence[str] | None = None, require_dose: bool = False) -> Iterator[Patient]:
        """The patients (all, or those of ``ids`` in this source's order), one at a time."""
        want = None if ids is None else set(ids)
        if self.kind == "cache":
            yield from self._handle.patients(ids)
        elif self.kind == "openkbp":
            from . import openkbp

            for f in self._handle:
                if want is None or f.name in want:
                    yield openkbp.read_patient(f, require_dose=require_dose)
        elif self.kind == "nifti":
            from . import nifti

            for pid, folder in zip(self.ids, self._handle, strict=True):
                if want is None or pid in want:
                    yield nifti.read_patient(folder, self.roi_set)
        else:
            yield from self._handle.patients(ids)

    def __iter__(self) -> Iterator[Patient]:
        return self.patients()

    def headers(self) -> dict[str, dict[str, Any]]:
        """Per patient id, what identifies it without reading arrays (``meta`` of a cache entry,
        DICOM UIDs of a DICOM folder; empty for OpenKBP and NIfTI)."""
        if self.kind == "cache":
            return {e["id"]: dict(e.get("meta", {})) for e in self._handle.info["patients"]}
        if self.kind == "dicom":
            return self._handle.headers()
        return {i: {} for i in self.ids}


def source_kind(path: str | os.PathLike) -> str | None:
    """``"cache"``, ``"openkbp"``, ``"nifti"``, ``"dicom"`` or None (see the module docstring)."""
    from . import cache, dicom, nifti, openkbp

    p = Path(path)
    if not p.exists():
        return None
    if p.is_dir() and cache.is_cache(p):
        return "cache"
    if p.is_dir() and ((p / "ct.csv").is_file() or any(
            c.is_dir() and c.name.startswith("pt_") and any(c.glob("*.csv")) for c in p.iterdir())):
        return "openkbp"
    if p.is_dir() and (nifti.is_patient_folder(p)
                       or any(c.is_dir() and nifti.is_patient_folder(c) for c in p.iterdir())):
        return "nifti"
    if dicom.is_dicom_folder(p):
        return "dicom"
    if p.is_dir() and openkbp.is_openkbp_folder(p):  # pt_* folders without CSV: the reader says what lacks
        return "openkbp"
    return None


def open_source(path: str | os.PathLike, roi_map: Any = None) -> Source:
    """Open a cache, OpenKBP folder, NIfTI folder or DICOM folder. ``roi_map`` (a JSON file, a dict
    or a :class:`~dosepred.io.roi_names.RoiMap`): the ROI name map of a DICOM folder (as
    ``data import-dicom --roi-map``); given for another kind of source it is a :class:`SourceError`
    (their ROIs are named already: a cache's by its import, OpenKBP's fixed, NIfTI's by ``rois.json``
    or the file names)."""
    from . import cache, dicom, nifti, openkbp

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    kind = source_kind(p)
    if roi_map is not None and kind is not None and kind != "dicom":
        what = {"cache": "a dosepred cache, whose ROIs were named when it was imported",
                "openkbp": "an OpenKBP folder, whose ROI names are fixed",
                "nifti": "a NIfTI folder, whose ROIs are named by rois.json or the label files"}[kind]
        raise SourceError(f"{p}: an ROI map (--roi-map) applies to DICOM sources only, and this is "
                          f"{what} (give the DICOM folder, or leave out the map)")
    if kind == "cache":
        c = cache.Cache.open(p)
        return Source(p, kind, c.roi_set, list(c.ids), c)
    if kind == "openkbp":
        folders = openkbp.patient_folders(p)
        return Source(p, kind, RoiSet.openkbp(), [f.name for f in folders], folders)
    if kind == "nifti":
        folders = nifti.patient_folders(p)
        infos = [nifti.read_sidecar(f) for f in folders]
        roi_set, _ = nifti.iter_nifti_folder(p)
        ids = [str(i.get("id") or f.name) for f, i in zip(folders, infos, strict=True)]
        return Source(p, kind, roi_set, ids, folders)
    if kind == "dicom":
        f = dicom.scan_dicom_folder(p, roi_map)
        return Source(p, kind, f.roi_set, f.ids, f)
    raise SourceError(f"{p} is not a dosepred cache (dataset.json), an OpenKBP folder (pt_*/ct.csv), a "
                      "NIfTI folder (ct.nii.gz) nor a DICOM folder (CT series + RTSTRUCT)")


def load_patients(src: str | os.PathLike, ids: Sequence[str] | None = None,
                  require_dose: bool = True, roi_map: Any = None) -> Iterator[Patient]:
    """Patients from a cache, an OpenKBP, NIfTI or DICOM folder (the kind decided by
    :func:`source_kind`, the patients read by :func:`open_source`; ``roi_map`` for a DICOM folder)."""
    from .cache import DATASET_JSON, CacheError

    if not Path(src).exists():
        raise FileNotFoundError(f"{src} does not exist")
    if source_kind(src) is None:
        raise CacheError(f"{src} is neither a dosepred cache (no {DATASET_JSON}), an OpenKBP folder (pt_*), "
                         "a NIfTI folder (ct.nii.gz) nor a DICOM folder")
    yield from open_source(src, roi_map).patients(ids, require_dose=require_dose)


__all__ = ["Source", "SourceError", "open_source", "load_patients", "source_kind", "KINDS"]
