"""OpenKBP CSV folders as a row of the table of formats (:mod:`dosepred.io.openkbp` reads and
writes them)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...boxes import Box, box_shape, coords_box, local_index
from ...dvh import codes_voxel_indices
from ...errors import InputError
from ...geometry import OPENKBP_AXES, Geometry
from ...patient import CASE_CLASH_WHY, Patient, RoiSet, case_clash, id_problem, voxel_volume_mm3
from .. import openkbp
from ..rx_check import check_plan_dose
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
    # the ids are the folders' names: a clash is named here, before any patient is read (the cache
    # writer would meet it patient by patient, naming neither the source nor the remedy)
    folders = openkbp.patient_folders(path)
    for f in folders:  # named as the folder, as NIfTI's: Patient would name the id alone
        why = id_problem(f.name)
        if why:
            raise openkbp.OpenKBPFormatError(f"{f}: the folder's name, the patient id, cannot name the "
                                             "patient's files (<id>.npz, <id>.csv, <id>.nii.gz, <id>/): "
                                             f"{why}; rename the folder")
    clash = case_clash(f.name for f in folders)
    if clash:
        raise openkbp.OpenKBPFormatError(f"{path}: patient ids {clash[0]!r} and {clash[1]!r} differ only in "
                                         f"case (or Unicode form): {CASE_CLASH_WHY}; rename one of the "
                                         "two patient folders")
    return None, openkbp.read_folder(path)


class GridWarning(UserWarning):
    """A prediction CSV written on a grid other than OpenKBP's 128^3 (:func:`write_dose`)."""


def write_dose(patient: Patient, dose: np.ndarray, out: Path, dose_spacing: float | None = None,
               model_name: str | None = None) -> Path:
    """``out/<id>.csv`` (sparse, within the possible-dose mask), its voxels numbered in OpenKBP's axis
    order (``"PLI"``, as every OpenKBP file and OpenKBP's own tools number them) whatever the
    patient's layout: a patient read from DICOM or NIfTI is permuted and flipped first (no
    interpolation); an oblique grid is an error (:func:`dosepred.io.openkbp.to_openkbp_axes`).

    The file records no grid: OpenKBP's tools read every flat index on 128^3. A patient on another grid
    (a clinic's CT) is written all the same (``evaluate`` places it on the reference's own grid), with
    a :class:`GridWarning` naming the grid the indices count on."""
    path = out / f"{patient.id}.csv"
    q = openkbp.to_openkbp_axes(patient.with_dose(dose))
    assert q.dose is not None
    if tuple(q.shape) != openkbp.GRID:
        grid = "x".join(str(n) for n in q.shape)
        warnings.warn(f"patient {patient.id}: {path.name} numbers its voxels on its own {grid} grid "
                      "(OpenKBP's axis order), not OpenKBP's 128x128x128, and a CSV records no grid: "
                      "OpenKBP's tools would put its dose in the wrong voxels; only dosepred evaluate "
                      "against this patient places it. For other tools predict with --format dicom or nifti",
                      GridWarning, stacklevel=2)
    openkbp.write_dose_csv(path, q.dose, q.possible_dose_mask)
    return path


def read_dose(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A prediction CSV as stored, on a grid of ``shape`` in OpenKBP's axis order."""
    return openkbp.read_dose_csv(path, grid=shape)


def _axes_of(pid: str, shape: tuple[int, ...], geometry: Geometry | None
             ) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]] | None:
    """How the reference grid's arrays map to OpenKBP's axis order, in which a prediction CSV numbers
    its voxels; None when they already run so (or no geometry is known)."""
    if geometry is None:
        return None
    if not geometry.is_axis_aligned(1e-4):
        raise InputError(f"patient {pid}: an OpenKBP prediction CSV numbers its voxels in OpenKBP's axis "
                         f"order, which the reference's oblique grid ({geometry.describe()}) has not; "
                         "predict in another format (cache, nifti, dicom)")
    perm, flips = geometry.permutation_to(OPENKBP_AXES)
    if perm == (0, 1, 2) and not any(flips):
        return None
    return perm, flips


def read_dose_sparse(path: Path, shape: tuple[int, ...], geometry: Geometry | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices into the reference grid of ``shape`` and ``geometry``, values) of a prediction
    CSV, whose indices count in OpenKBP's axis order (:func:`write_dose`): mapped onto the
    reference's own axes when they run otherwise (a DICOM or NIfTI reference)."""
    axes = _axes_of(path.stem, shape, geometry)
    stored = shape if axes is None else tuple(shape[j] for j in axes[0])
    idx, vals = openkbp.read_sparse(path, True, grid=stored, pid=path.stem)
    assert vals is not None
    openkbp.check_dose_values(path, vals, path.stem)
    if axes is not None:
        at = np.unravel_index(idx, stored)  # along OpenKBP's axes
        own: list[np.ndarray] = [np.empty(0)] * 3
        for i, (j, flip) in enumerate(zip(*axes, strict=True)):
            own[j] = shape[j] - 1 - at[i] if flip else at[i]
        idx = np.ravel_multi_index(tuple(own), shape)
    return idx, vals


def read_dose_on(path: Path, ref: Patient) -> np.ndarray:
    """A prediction CSV on the reference patient's grid (its indices in OpenKBP's axis order)."""
    idx, vals = read_dose_sparse(path, ref.shape, ref.geometry)
    d = np.zeros(int(np.prod(ref.shape)), np.float32)
    d[idx] = vals
    return d.reshape(ref.shape)


@dataclass
class SparseReference:
    """One OpenKBP reference as evaluation reads it (a :class:`~.base.ReferenceBox`): voxel
    coordinates, before any dense array."""

    id: str
    shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    roi_set: RoiSet
    mask: tuple[np.ndarray, ...]
    dose: tuple[np.ndarray, ...]
    dose_values: np.ndarray
    rois: list[tuple[int, tuple[np.ndarray, ...]]]
    missing_rois: tuple[str, ...]
    meta: dict[str, Any]
    box: Box | None
    #: no stored voxel lists (the compact path is the cache's)
    voxels = None

    @functools.cached_property
    def geometry(self) -> Geometry:
        return Geometry.openkbp(self.shape, self.spacing)

    @property
    def voxel_mm3(self) -> float:
        return voxel_volume_mm3(self.geometry)

    def _dense(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Possible-dose mask, dose and ROI codes on ``box`` (which holds the support box), C-order flat."""
        rs = self.roi_set
        n = int(np.prod(box_shape(box)))
        mask = np.zeros(n, bool)
        mask[local_index(self.mask, box)] = True
        dose = np.zeros(n, np.float32)
        dose[local_index(self.dose, box)] = self.dose_values
        codes = np.zeros(n, rs.dtype)
        for k, c in self.rois:
            codes[local_index(c, box)] |= rs.dtype.type(1 << k)
        return mask, dose, codes

    def patient(self) -> Patient:
        """The reference on its whole grid, without a CT, carrying its support box."""
        full = tuple(slice(0, n) for n in self.shape)
        mask, dose, codes = self._dense(full)
        p = Patient(self.id, None, codes.reshape(self.shape), self.roi_set, None, mask.reshape(self.shape),
                    dose.reshape(self.shape), self.missing_rois, dict(self.meta), self.geometry)
        if self.box is not None:
            p.set_support_box(self.box)
        return p

    def arrays(self, outer: Box) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        mask, dose, codes = self._dense(outer)
        names = self.roi_set.names
        return dose, mask, codes_voxel_indices(codes, range(len(names)), names)


def read_reference_boxes(path: Path, ids: Sequence[str] | None = None) -> Iterator[SparseReference]:
    """The patients of an OpenKBP folder (all, or those of ``ids`` in the folder's order) as voxel
    coordinates (:func:`dosepred.io.openkbp.read_sparse_patient`)."""
    want = set(ids) if ids is not None else None
    for f in openkbp.patient_folders(path):
        if want is not None and f.name not in want:
            continue
        s = openkbp.read_sparse_patient(f)
        grid = s.shape
        mask = np.unravel_index(s.mask_index, grid)
        dose = np.unravel_index(s.dose_index, grid)
        nonzero = s.dose_values != 0
        rois = [(k, np.unravel_index(idx, grid)) for k, idx in s.rois]
        box = coords_box([mask, tuple(c[nonzero] for c in dose)] + [c for _, c in rois])
        ref = SparseReference(s.id, grid, s.spacing, s.roi_set, mask, dose, s.dose_values, rois,
                              s.missing_rois, dict(s.meta), box)
        if box is not None:  # the check every source's patients pass (io.source.checked), on the box
            m, d, c = ref._dense(box)
            bshape = box_shape(box)
            check_plan_dose(Patient(s.id, None, c.reshape(bshape), s.roi_set, s.spacing, m.reshape(bshape),
                                    d.reshape(bshape), s.missing_rois, dict(s.meta)), str(f))
        yield ref


def source_bytes(path: Path) -> int:
    """The bytes of the CSV files of the patient folders."""
    return sum(f.stat().st_size for d in openkbp.patient_folders(path) for f in d.glob("*.csv"))


FORMAT = Format(
    name=openkbp.FORMAT_NAME, label="OpenKBP",
    described="an OpenKBP folder (pt_*/ct.csv)",
    described_short="an OpenKBP folder (pt_*)",
    import_help="Read OpenKBP CSV patients into a compact cache (one .npz per patient + dataset.json).",
    export_help="Write a cache back in the native OpenKBP layout (pt_* folders).",
    dose_output="pt_N.csv",
    detect=detect,
    # pt_* folders without CSV: the reader says what lacks
    detect_late=lambda p: p.is_dir() and openkbp.is_openkbp_folder(p),
    open=lambda path, roi_map=None: OpenKBPReader(path),
    roi_naming="an OpenKBP folder, whose ROI names are fixed",
    read_source=read_source,
    write_patient=lambda p, folder, roi_format="labels": openkbp.write_patient(p, folder),
    write_dose=write_dose,
    dose_suffixes=(".csv",), dose_by_id=True, read_dose=read_dose, read_dose_on=read_dose_on,
    read_dose_sparse=read_dose_sparse, dose_geometry=None, source_bytes=source_bytes,
    read_reference_boxes=read_reference_boxes, open_doses=None, match_doses=None, near_miss=None,
    fixed_roi_names=True,
)
