"""What a row of the table of formats holds (:class:`Format`), what opening a source of a format
gives (:class:`Reader`), what evaluation reads of a format through its row (:class:`ReferenceBox`,
:class:`DoseStore`), and :func:`place_dose`, shared by the formats whose doses are placed by their
own grid's geometry."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ...boxes import Box
from ...errors import InputError
from ...geometry import Geometry
from ...patient import Patient, RoiSet
from ...resample import dose_on_grid
from ..cache import CacheVoxels


class Reader(Protocol):
    """An opened source of one format: its ROI set and patient ids; patients read on demand."""

    roi_set: RoiSet
    ids: list[str]
    #: the opened :class:`~dosepred.io.cache.Cache` of a cache, else None
    cache: Any

    def patients(self, ids: Sequence[str] | None = None, require_dose: bool = False) -> Iterator[Patient]:
        """The patients (all, or those of ``ids`` in the source's order), one at a time."""
        ...

    def headers(self) -> dict[str, dict[str, Any]]:
        """Per patient id, what identifies it without reading arrays."""
        ...


class ReferenceBox(Protocol):
    """A reference patient as evaluation reads it, without its CT (a row's ``read_reference_boxes``):
    its data (dose, possible-dose mask, ROIs) lies within ``box``. What is not read yet is read on
    first use, so the compact path (``voxels``) reads no array it does not need. A bad file is an
    :class:`~dosepred.errors.InputError` naming the patient and the file."""

    id: str
    roi_set: RoiSet
    #: ``voxels()``: the stored voxel lists (:class:`~dosepred.io.cache.CacheVoxels`; None for a
    #: file without them), for a format that stores them; None: it stores none
    voxels: Callable[[], CacheVoxels | None] | None

    @property
    def shape(self) -> tuple[int, ...]:
        """The whole grid's shape."""
        ...

    @property
    def missing_rois(self) -> tuple[str, ...]:
        ...

    @property
    def box(self) -> Box | None:
        """The box holding every non-zero voxel of its dose, possible-dose mask and ROIs (None: none)."""
        ...

    @property
    def geometry(self) -> Geometry | None:
        ...

    @property
    def voxel_mm3(self) -> float:
        ...

    def arrays(self, outer: Box) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(reference dose float32, possible-dose mask bool, both C-order flat over ``outer``, which
        holds :attr:`box`; ROI name -> flat indices of its voxels in ``outer``)."""
        ...

    def patient(self) -> Patient:
        """The reference on its whole grid, without a CT, carrying its support box when known."""
        ...


class DoseStore(Protocol):
    """Predicted doses stored together and read by patient id (a row's ``open_doses``: a prediction
    cache). A bad file is an :class:`~dosepred.errors.InputError` naming the patient and the file."""

    ids: list[str]
    #: ``voxels(id)``: the stored voxel lists of a patient's dose (None for a file without them), for
    #: a store that keeps them; None: it keeps none
    voxels: Callable[[str], CacheVoxels | None] | None

    def file(self, pid: str) -> Path:
        """The file holding patient ``pid``'s dose."""
        ...

    def shape(self, pid: str) -> tuple[int, ...]:
        """The grid patient ``pid``'s dose lies on."""
        ...

    def dose(self, pid: str, crop: bool) -> tuple[np.ndarray | None, Box | None]:
        """(patient ``pid``'s dose or None when it holds none, the box it covers when ``crop``: the
        dose is zero outside it; None: the whole grid)."""
        ...

    def geometry(self, pid: str) -> Geometry | None:
        """Where patient ``pid``'s dose grid lies in patient coordinates (None: the store does not say)."""
        ...


@dataclass(frozen=True)
class Format:
    """One format dosepred reads or writes: one row of :data:`dosepred.io.formats.FORMATS`.

    A capability the format lacks is None (or False / empty), and every command that needs it
    says so with its own message (``import`` of a cache, ``predict --format`` of a format without a
    per-patient dose writer, ...).
    """

    #: the name commands and ``Source.kind`` use: ``"cache"``, ``"openkbp"``, ...
    name: str
    #: how messages name it: ``"OpenKBP"``, ``"DICOM"``, ...
    label: str
    #: what a path of this format is, in ``open_source``'s message for a path of no format
    described: str
    #: the same, shorter, in ``load_patients``' message
    described_short: str
    #: the help of ``data import-<name>`` (what it reads); None: not imported (``read_source`` None)
    import_help: str | None
    #: the help of ``data export-<name>`` (what it writes); None: not exported (``write_patient`` None)
    export_help: str | None
    #: what ``predict --format <name>`` writes, in its help; None: no prediction format
    dose_output: str | None
    #: whether an existing path holds this format (tried in the table's order; the first wins)
    detect: Callable[[Path], bool]
    #: a weaker sign, tried after every ``detect`` failed (a folder that looks like this format but
    #: lacks what its reader needs: the reader then says what); None: none
    detect_late: Callable[[Path], bool] | None
    #: ``open(path, roi_map)`` -> :class:`Reader` (``roi_map`` only for a format that takes one)
    open: Callable[[Path, Any], Reader]
    #: how its ROIs are named, a phrase said when an ROI map is given for a source of it ("a NIfTI
    #: folder, whose ROIs are named by ..."); None for a format that takes an ROI map
    #: (``takes_roi_map``), whose ROI names are what the map names
    roi_naming: str | None
    #: ``read_source(path, roi_map)`` -> (ROI set or None for the readers' own, the patients):
    #: what ``data import-<name>`` reads into a cache; None: not imported
    read_source: Callable[[Path, Any], tuple[RoiSet | None, Iterable[Patient]]] | None
    #: ``write_patient(patient, folder, roi_format)``: ``data export-<name>``; None: not exported
    write_patient: Callable[[Patient, Path, str], Any] | None
    #: ``write_dose(patient, dose, folder, dose_spacing, model_name)`` -> the path written: one
    #: predicted dose (``predict --format <name>``); None: no per-patient dose file
    write_dose: Callable[[Patient, np.ndarray, Path, float | None, str | None], Path] | None
    #: endings of a predicted dose file of this format (matched without case)
    dose_suffixes: tuple[str, ...]
    #: whether a patient's predicted dose file is named ``<id><suffix>`` (else found otherwise)
    dose_by_id: bool
    #: ``read_dose(path, shape)``: a predicted dose file as stored, on a grid of ``shape``; None
    read_dose: Callable[[Path, tuple[int, ...]], np.ndarray] | None
    #: ``read_dose_on(path, reference)``: a predicted dose on the reference patient's grid, placed
    #: by the file's own geometry; None: read as stored (``read_dose``)
    read_dose_on: Callable[[Path, Patient], np.ndarray] | None
    #: ``read_dose_sparse(path, shape, geometry)`` -> (flat indices into the reference grid of ``shape``
    #: and ``geometry``, values): a predicted dose without a dense array; None
    read_dose_sparse: Callable[[Path, tuple[int, ...], Geometry | None], tuple[np.ndarray, np.ndarray]] | None
    #: ``dose_geometry(path)``: the grid a predicted dose file says it lies on (None: it says none);
    #: None: the format's dose files carry no geometry
    dose_geometry: Callable[[Path], Geometry | None] | None
    #: ``source_bytes(path)``: the size of a source's files (``data import`` prints the ratio); None
    source_bytes: Callable[[Path], int] | None
    #: ``read_reference_boxes(path, ids)``: evaluation's references (all, or those of ``ids`` in that
    #: order), each as a :class:`ReferenceBox` (no CT; scored on the box of their data, the fast
    #: path); None: read whole (``open``) and scored on whole grids
    read_reference_boxes: Callable[[Path, Sequence[str] | None], Iterable[ReferenceBox]] | None
    #: ``open_doses(path)``: a source of this format as predicted doses read by patient id
    #: (:class:`DoseStore`: a prediction cache); None: its predicted doses are files (``read_dose``)
    open_doses: Callable[[Path], DoseStore] | None
    #: ``match_doses(folder, headers)``: reference id -> the predicted dose file under ``folder`` that
    #: belongs to it, for dose files not named by patient id (``dose_by_id`` False), matched by what
    #: they reference (``headers()``: the references' :meth:`Reader.headers`); ``{}`` when ``folder``
    #: holds none. Such doses are placed by their own geometry (``read_dose_on``) on whole grids. None
    match_doses: Callable[[Path, Callable[[], dict[str, dict[str, Any]]]], dict[str, Path]] | None
    #: ``near_miss(path)``: why a path ``detect`` does not take is still not of this format, said when
    #: no format is ("...: N file(s) are not readable DICOM: ... without the DICOM file preamble");
    #: None when nothing there is near it. None: no such check
    near_miss: Callable[[Path], str | None] | None
    #: a dosepred cache: ``Source.cache`` is the opened :class:`~dosepred.io.cache.Cache`, and
    #: ``predict`` writes it whole with its record
    is_cache: bool = False
    #: an ROI name map (``--roi-map``) applies to a source of it (DICOM: clinical names); every other
    #: format says how its ROIs are named instead (``roi_naming``)
    takes_roi_map: bool = False
    #: whether its predicted dose files have a grid of their own (``predict --dose-spacing``: the DICOM
    #: RTDOSE grid's spacing); the others are written on the patient's grid
    takes_dose_spacing: bool = False
    #: its ROI names are fixed (``data import`` does not list them)
    fixed_roi_names: bool = False
    #: ``data import`` lists each patient (grid, dose, mask source, missing ROIs) instead of a count
    #: of who lacks what
    lists_imported: bool = False
    #: the ROI layouts ``write_patient`` writes, (name, what it writes), the first the default; with
    #: more than one, ``data export-<name>`` has ``--roi-format``
    roi_layouts: tuple[tuple[str, str], ...] = ()

    def is_dose_file(self, path: str | Path) -> bool:
        """Whether ``path`` is named as a predicted dose file of this format."""
        name = Path(path).name.lower()
        return any(name.endswith(s) for s in self.dose_suffixes)


def place_dose(dose: np.ndarray, g: Geometry, path: Path, ref: Patient, what: str,
               strict: bool) -> np.ndarray:
    """A predicted dose on grid ``g`` resampled onto the reference patient's grid in patient
    coordinates, within the reference's possible-dose mask (as every prediction written on the
    reference's grid: a coarser grid resampled onto it spills up to one of its voxels beyond the
    body); mask voxels it does not cover count as 0 Gy (a warning), and with ``strict`` more than
    1 % of them uncovered is an error (a placeholder affine, such as the identity, places a dose
    mostly beside the patient)."""
    assert ref.geometry is not None
    lo = float(np.min(dose)) if np.size(dose) else 0.0
    if not lo >= 0:  # resampling clips at 0 Gy: a negative (or NaN) dose would pass unseen
        bad = "non-finite" if not np.isfinite(lo) else f"negative (min {lo:.4g} Gy)"
        raise InputError(f"patient {ref.id}: the predicted {what} {path} holds {bad} values; a dose is a "
                         "finite number of Gy >= 0 in every voxel")
    out, inside = dose_on_grid(dose, g, ref.geometry, ref.shape)
    mask = np.asarray(ref.possible_dose_mask, dtype=bool)
    uncovered = int((mask & ~inside).sum())
    frac = 100.0 * uncovered / max(int(mask.sum()), 1)
    if strict and frac > 1.0:
        raise InputError(f"patient {ref.id}: the predicted {what} {path}, placed where its header says "
                         f"({g!r}), leaves {frac:.1f} % of the possible-dose mask uncovered; write it on "
                         "the reference's grid, or with an affine that says where it lies")
    if uncovered:
        warnings.warn(f"patient {ref.id}: the predicted {what} {path} does not cover {uncovered} voxels "
                      f"({frac:.1f}%) of the possible-dose mask; they count as 0 Gy", stacklevel=3)
    out *= mask
    return out
