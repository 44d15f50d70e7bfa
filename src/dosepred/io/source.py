"""One entry point for every patient source: :func:`open_source`.

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

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Geometry
from ..patient import Patient, RoiSet

KINDS = ("cache", "openkbp", "nifti", "dicom")

#: |cos| of the angle between two array axes above which a grid is sheared (0.006 degrees from 90)
SHEAR_TOL = 1e-4


def shear_problem(g: Geometry) -> str | None:
    """Why grid ``g`` cannot be used as it is (its array axes not perpendicular: a sheared grid, e.g.
    a CT with gantry tilt stored as one volume), in words; None for a grid with perpendicular axes.
    Voxel volumes, DVHs and every mm measured on a sheared grid from its spacing alone would be wrong
    (the voxel's true volume is the determinant), so readers refuse it."""
    d = g.direction
    worst = max(((abs(float(d[:, i] @ d[:, j])), i, j) for i, j in ((0, 1), (0, 2), (1, 2))))
    if worst[0] <= SHEAR_TOL:
        return None
    _, i, j = worst
    angle = math.degrees(math.acos(max(-1.0, min(1.0, float(d[:, i] @ d[:, j])))))
    true = abs(float(np.linalg.det(g.matrix)))
    nominal = float(np.prod(g.spacing))
    return (f"its array axes {i} and {j} are {angle:.1f} degrees apart, not 90: a sheared grid (e.g. a CT "
            f"with gantry tilt), whose voxels hold {true:.4g} mm3, not the {nominal:.4g} mm3 of their "
            f"spacing ({100 * (nominal / true - 1):+.1f} %); resample it onto a grid with perpendicular axes "
            "first")


class SourceError(ValueError):
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
    """Open a cache, OpenKBP folder, NIfTI folder or DICOM folder (``roi_map``: DICOM ROI name map)."""
    from . import cache, dicom, nifti, openkbp

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    kind = source_kind(p)
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


def iter_patients(path: str | os.PathLike, ids: Sequence[str] | None = None,
                  require_dose: bool = False) -> Iterator[Patient]:
    """The patients of any source (see :func:`open_source`)."""
    yield from open_source(path).patients(ids, require_dose=require_dose)


__all__ = ["Source", "SourceError", "open_source", "iter_patients", "source_kind", "shear_problem", "KINDS",
           "SHEAR_TOL"]
