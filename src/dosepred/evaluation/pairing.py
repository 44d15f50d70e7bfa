"""Pairing of reference patients with predicted doses, read from their sources for scoring.

::

    from dosepred.evaluation import evaluate_cohort, iter_pairs, match_predictions

    found, missing = match_predictions("cache/val", "pred")       # ids with a prediction
    pairs = iter_pairs("cache/val", "pred", [i for i, _ in found])  # lazily, one read ahead
    result = evaluate_cohort(pairs, "openkbp-clinical")

A **reference** is any patient source :func:`dosepred.io.source.open_source` opens; its kind is
decided once, by :func:`dosepred.io.formats.detect` (the table of formats). A reference of a
``cropped`` format (a cache, an OpenKBP folder) is read here without the CT and cropped to the box
that holds their data (:meth:`CacheEntry.read_arrays <dosepred.io.cache.CacheEntry.read_arrays>`,
:func:`dosepred.io.openkbp.read_sparse_patient`); NIfTI and DICOM references are read whole. A
**prediction** is a dosepred cache holding doses (what ``dosepred predict --format cache`` writes,
the fastest to read), or a folder of per-patient files
(:data:`PREDICTION_PATTERNS`) and/or RTDOSE files matched to the references and resampled onto their
grids, each read by its format's row of :data:`dosepred.io.formats.FORMATS`. Sources are read only
through the public functions of :mod:`dosepred.io`.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..boxes import Box, box_shape, coords_box, union
from ..dvh import codes_voxel_indices, voxel_list_indices
from ..errors import InputError
from ..geometry import Geometry
from ..io import dicom, formats, openkbp
from ..io.cache import EVAL_FIELDS, Cache, CacheError, is_cache
from ..io.dicom import files_under
from ..io.formats import Format
from ..io.source import load_patients, open_source
from ..patient import Patient, RoiSet, voxel_volume_mm3
from .case import ScoringCase, as_dose_array

T = TypeVar("T")

# ------------------------------------------------------------------------------ prediction files

#: File names tried for a patient's prediction in a prediction folder, in order. ``{id}`` is the
#: reference patient id. From the table of formats (:func:`dosepred.io.formats.dose_file_patterns`:
#: the ``dose_suffixes`` of the formats whose dose files are named by patient id).
PREDICTION_PATTERNS = formats.dose_file_patterns()

#: File-name ending -> ``reader(path, shape)`` of a predicted dose file as stored: each format's
#: ``read_dose`` (:data:`dosepred.io.formats.FORMATS`).
PREDICTION_READERS = {s: f.read_dose for f in formats.FORMATS if f.read_dose is not None
                      for s in f.dose_suffixes}


def find_prediction(pred_dir: str | os.PathLike, pid: str) -> Path | None:
    """The prediction file of patient ``pid`` in ``pred_dir`` (``pt_N.csv``, ``pt_N.nii.gz``), or None."""
    d = Path(pred_dir)
    for pat in PREDICTION_PATTERNS:
        f = d / pat.format(id=pid)
        if f.is_file():
            return f
    return None


def read_prediction(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """Read one predicted dose file (format chosen by suffix) on a grid of ``shape``."""
    path = Path(path)
    fmt = formats.dose_file_format(path)
    if fmt is not None and fmt.read_dose is not None:
        return fmt.read_dose(path, shape)
    raise InputError(f"{path}: unknown prediction format (expected {', '.join(PREDICTION_READERS)})")


@functools.lru_cache(maxsize=8)
def _rtdose_matches(reference: str, prediction: str, stamp: int = 0, roi_map: Any = None) -> dict[str, Path]:
    """Reference id -> predicted RTDOSE file of a prediction folder holding RTDOSE files (what
    ``predict --format dicom`` writes): matched by the RTSTRUCT/RTPLAN they reference, else
    FrameOfReference, else PatientID (:func:`dosepred.io.dicom.match_rtdose`). ``roi_map``: the
    reference's ROI name map (a path; a map that is no path is called uncached)."""
    doses = dicom.scan_rtdoses(prediction)
    if not doses:
        return {}
    heads = open_source(reference, roi_map).headers()
    out: dict[str, Path] = {}
    for pid, meta in heads.items():
        f = dicom.match_rtdose(pid, meta, doses)
        if f is not None:
            out[pid] = f
    return out


def _has_dicom(folder: Path) -> bool:
    return any(f.suffix.lower() == ".dcm" for f in files_under(folder))


class _Predictions:
    """Where the predicted doses of one evaluation are: a dosepred cache (``cache``) or a folder of
    per-patient files and/or RTDOSE files (``rtdoses``, matched to the reference on first use).
    Decided once per call of :func:`match_predictions` / :func:`iter_pairs`."""

    def __init__(self, reference: str | os.PathLike, prediction: str | os.PathLike, roi_map: Any = None
                 ) -> None:
        self.reference = str(reference)
        self.roi_map = roi_map
        self.given = str(prediction)  # as the caller wrote it, for messages
        self.path = Path(prediction)
        self.cache = Cache.open(prediction) if is_cache(prediction) else None

    @functools.cached_property
    def rtdoses(self) -> dict[str, Path]:
        """Reference id -> RTDOSE file, for a folder that holds DICOM files (else empty)."""
        if self.cache is not None or not self.path.is_dir() or not _has_dicom(self.path):
            return {}
        stamp = self.path.stat().st_mtime_ns
        if self.roi_map is None or isinstance(self.roi_map, (str, os.PathLike)):
            return _rtdose_matches(self.reference, str(self.path), stamp,
                                   None if self.roi_map is None else str(self.roi_map))
        return _rtdose_matches.__wrapped__(self.reference, str(self.path), stamp, self.roi_map)

    def file(self, pid: str) -> Path | None:
        """Patient ``pid``'s prediction file (its cache file for a cache), or None."""
        if self.cache is not None:
            return self.cache.patient_entry(pid).path
        return find_prediction(self.path, pid) or self.rtdoses.get(pid)

    def name(self, pid: str) -> str:
        """What ``meta["prediction_file"]`` says: the file, else the prediction folder."""
        f = self.file(pid)
        return str(f) if f is not None else self.given

    def _cache_dose(self, pid: str, crop: bool) -> tuple[np.ndarray, Box | None]:
        assert self.cache is not None
        try:
            arrays, box = self.cache.patient_entry(pid).read_arrays(("dose",), crop=crop)
        except CacheError as err:
            raise InputError(str(err)) from None
        d = arrays["dose"]
        if d is None:
            raise InputError(f"patient {pid}: the prediction cache {self.given} holds no dose")
        return d, box

    def full(self, ref: Patient) -> np.ndarray:
        """The predicted dose of ``ref`` on its whole grid (an RTDOSE placed by geometry)."""
        if self.cache is not None:
            d, _ = self._cache_dose(ref.id, crop=False)
        else:
            f = self.file(ref.id)
            assert f is not None
            fmt = formats.dose_file_format(f)
            if fmt is not None and fmt.read_dose_on is not None:  # placed by its own geometry
                d = fmt.read_dose_on(f, ref)
            else:
                d = read_prediction(f, ref.shape)
        return as_dose_array(d, ref.shape, ref.id)

    def crop(self, pid: str, shape: tuple[int, ...], geometry: Any = None) -> tuple[np.ndarray, Box | None]:
        """The predicted dose as (values on a box, the box) such that it is zero outside the box;
        the box is None for an all-zero dose. Only the prediction's own non-zero extent is made
        dense."""
        full = tuple(slice(0, n) for n in shape)
        if self.cache is not None:
            e = self.cache.patient_entry(pid)
            d, box = self._cache_dose(pid, crop=True)
            if box is None:  # version-1 file: the whole grid
                box = full
            if e.shape != tuple(shape) or d.shape != box_shape(box):
                raise InputError(f"patient {pid}: predicted dose has shape {e.shape}, but the "
                                 f"reference grid is {tuple(shape)}")
            return d, box
        f = find_prediction(self.path, pid)
        assert f is not None
        fmt = formats.dose_file_format(f)
        if fmt is not None and fmt.read_dose_sparse is not None:
            idx, vals = fmt.read_dose_sparse(f, shape)
            keep = vals != 0
            coords = tuple(c[keep] for c in np.unravel_index(idx, shape))
            box = coords_box([coords])
            if box is None:
                return np.zeros((0, 0, 0), np.float32), None
            d = np.zeros(int(np.prod(box_shape(box))), np.float32)
            d[_local(coords, box)] = vals[keep]
            return d.reshape(box_shape(box)), box
        if fmt is not None and fmt.dose_geometry is not None and geometry is not None:
            g = fmt.dose_geometry(f)
            if g is not None and not g.same_as(geometry):
                raise InputError(f"patient {pid}: the predicted dose {f} lies on another grid ({g!r}) than "
                                 f"the reference ({geometry!r}); write it on the reference's grid")
        return as_dose_array(read_prediction(f, shape), shape, pid), full


# ---------------------------------------------------------------------------------- references

def reference_ids(src: str | os.PathLike, roi_map: Any = None) -> list[str]:
    """Patient ids of a reference source (cache, OpenKBP, NIfTI or DICOM folder), without loading
    arrays; ``roi_map``: a DICOM folder's ROI name map (:func:`dosepred.io.source.open_source`)."""
    return open_source(src, roi_map).ids


def match_predictions(reference: str | os.PathLike, prediction: str | os.PathLike, roi_map: Any = None
                      ) -> tuple[list[tuple[str, Path | None]], list[str]]:
    """Pair reference ids with prediction files: ([(id, file or None for a cache)], missing ids).

    ``prediction`` is a folder of per-patient files or a dosepred cache holding doses; ``roi_map``: the
    ROI name map of a DICOM reference (an error for another kind, :func:`dosepred.io.source.open_source`).
    """
    ids = reference_ids(reference, roi_map)
    pred = Path(prediction)
    if not pred.is_dir():
        raise FileNotFoundError(f"prediction folder {pred} does not exist")
    preds = _Predictions(reference, prediction, roi_map)
    if preds.cache is not None:
        have = set(preds.cache.ids)
        return [(i, None) for i in ids if i in have], [i for i in ids if i not in have]
    found = [(i, find_prediction(pred, i)) for i in ids]
    if any(f is None for _, f in found):
        rd = preds.rtdoses
        found = [(i, f if f is not None else rd.get(i)) for i, f in found]
    return [(i, f) for i, f in found if f is not None], [i for i, f in found if f is None]


def load_references(src: str | os.PathLike, ids: list[str] | None = None, with_ct: bool = False,
                    roi_map: Any = None) -> Iterable[Patient]:
    """Reference patients for evaluation from any source (:func:`dosepred.io.load_patients`).

    Evaluation needs no CT, so unless ``with_ct`` a cache or an OpenKBP folder is read without it
    (``Patient.ct`` is None): the biggest CSV file and the biggest cache array are skipped, and the
    patients carry their support box (:meth:`Patient.support_box`). ``roi_map``: the ROI name map
    of a DICOM ``src``.
    """
    return _references(src, formats.detect(src), ids, with_ct, roi_map)


def _references(src: str | os.PathLike, fmt: Format | None, ids: list[str] | None, with_ct: bool,
                roi_map: Any = None) -> Iterator[Patient]:
    if with_ct or fmt is None or not fmt.cropped:
        yield from load_patients(src, ids=ids, roi_map=roi_map)
        return
    if roi_map is not None:
        open_source(src, roi_map)  # the error of a map for a source that is not DICOM
    if fmt.cache:
        c = Cache.open(src)
        rs = c.roi_set
        for pid in ids if ids is not None else c.ids:
            try:
                yield c.load(pid, rs, with_ct=False)
            except CacheError as err:
                raise InputError(str(err)) from None
        return
    for r in _csv_references(src, ids):
        p = r.patient()
        if r.box is not None:
            p.set_support_box(r.box)
        yield p


def _local(coords: tuple[np.ndarray, ...], box: Box) -> np.ndarray:
    """C-order flat indices inside ``box`` of voxel coordinates that lie in it."""
    return np.ravel_multi_index(tuple(c - s.start for c, s in zip(coords, box, strict=True)), box_shape(box))


def _embed(a: np.ndarray, box: Box, outer: Box) -> np.ndarray:
    """``a`` (the values on ``box``) on the larger ``outer`` box, zero elsewhere."""
    if box == outer:
        return a
    out = np.zeros(box_shape(outer), dtype=a.dtype)
    out[tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer, strict=True))] = a
    return out


@dataclass
class _SparseRef:
    """One OpenKBP reference as voxel coordinates, before any dense array."""

    id: str
    shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    roi_set: RoiSet
    mask: tuple[np.ndarray, ...]
    dose: tuple[np.ndarray, ...]
    dose_values: np.ndarray
    rois: list[tuple[int, tuple[np.ndarray, ...]]]
    missing: tuple[str, ...]
    meta: dict[str, Any]
    box: Box | None

    @functools.cached_property
    def geometry(self) -> Geometry:
        return Geometry.openkbp(self.shape, self.spacing)

    def _dense(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Possible-dose mask, dose and ROI codes on ``box`` (which holds the support box), C-order flat."""
        rs = self.roi_set
        n = int(np.prod(box_shape(box)))
        mask = np.zeros(n, bool)
        mask[_local(self.mask, box)] = True
        dose = np.zeros(n, np.float32)
        dose[_local(self.dose, box)] = self.dose_values
        codes = np.zeros(n, rs.dtype)
        for k, c in self.rois:
            codes[_local(c, box)] |= rs.dtype.type(1 << k)
        return mask, dose, codes

    def patient(self) -> Patient:
        """The reference on its whole grid, without a CT."""
        full = tuple(slice(0, n) for n in self.shape)
        mask, dose, codes = self._dense(full)
        return Patient(self.id, None, codes.reshape(self.shape), self.roi_set, None, mask.reshape(self.shape),
                       dose.reshape(self.shape), self.missing, dict(self.meta), self.geometry)

    def case(self, box: Box, pred: np.ndarray, source: str | None) -> ScoringCase:
        """The scoring case on ``box`` (which holds the support box) with ``pred``, the predicted
        dose on that box (zero outside it)."""
        mask, dose, codes = self._dense(box)
        names = self.roi_set.names
        return ScoringCase(self.id, self.roi_set, dose, pred.ravel(), mask,
                           codes_voxel_indices(codes, range(len(names)), names),
                           voxel_volume_mm3(self.geometry), self.missing, 0.0, source)


def _csv_references(src: str | os.PathLike, ids: list[str] | None) -> Iterable[_SparseRef]:
    """The patients of an OpenKBP folder as voxel coordinates."""
    want = set(ids) if ids is not None else None
    for f in openkbp.patient_folders(src):
        if want is not None and f.name not in want:
            continue
        s = openkbp.read_sparse_patient(f)
        grid = s.shape
        mask = np.unravel_index(s.mask_index, grid)
        dose = np.unravel_index(s.dose_index, grid)
        nonzero = s.dose_values != 0
        rois = [(k, np.unravel_index(idx, grid)) for k, idx in s.rois]
        box = coords_box([mask, tuple(c[nonzero] for c in dose)] + [c for _, c in rois])
        yield _SparseRef(s.id, grid, s.spacing, s.roi_set, mask, dose, s.dose_values, rois, s.missing_rois,
                         dict(s.meta), box)


def _entry_voxel_mm3(e: Any) -> float:
    """The voxel volume of a cache entry: its geometry's (the spacing product for caches before
    geometry, whose grids are axis-aligned)."""
    g = e.geometry
    return float(np.prod(e.spacing)) if g is None else voxel_volume_mm3(g)


def _reference_crops(src: str | os.PathLike, fmt: Format, ids: list[str] | None
                     ) -> Iterable[tuple[str, tuple[int, ...], Box | None, Any, Any]]:
    """(id, grid shape, support box, (box, predicted dose on it, source) -> the scoring case on that
    box, grid geometry) per reference patient of a ``cropped`` format: a cache or an OpenKBP folder."""
    if not fmt.cache:
        for r in _csv_references(src, ids):
            yield r.id, r.shape, r.box, r.case, r.geometry
        return
    c = Cache.open(src)
    rs = c.roi_set
    names = rs.names
    bits = range(len(names))
    for pid in ids if ids is not None else c.ids:
        e = c.patient_entry(pid)
        try:
            arrays, box = e.read_arrays((*EVAL_FIELDS, "roi_voxels"), crop=True)
            geometry = e.geometry
            vox = _entry_voxel_mm3(e)
        except CacheError as err:
            raise InputError(str(err)) from None
        if box is None:  # version-1 file: full-grid arrays
            box = tuple(slice(0, n) for n in e.shape)

        def make(outer: Box, pred: np.ndarray, source: str | None, e: Any = e, arrays: Any = arrays,
                 box: Box = box, vox: float = vox) -> ScoringCase:
            dose = arrays["dose"]
            if dose is None:
                raise InputError(f"patient {e.id}: the reference has no dose to compare with")
            known = arrays.get("roi_voxels")
            if known is not None:  # the stored non-zero-code voxels, as flat indices into the box
                idx, vals = known
                if box != outer:
                    local = np.unravel_index(idx, box_shape(box))
                    idx = np.ravel_multi_index(tuple(c + (s.start - o.start) for c, s, o in
                                                     zip(local, box, outer, strict=True)), box_shape(outer))
                rois = voxel_list_indices(idx, vals, bits, names)
            else:
                rois = codes_voxel_indices(_embed(arrays["roi_codes"], box, outer), bits, names)
            ref = np.asarray(_embed(dose, box, outer), np.float32).ravel()
            mask = _embed(arrays["possible_dose_mask"], box, outer).astype(bool, copy=False).ravel()
            return ScoringCase(e.id, rs, ref, pred.ravel(), mask, rois, vox, e.missing_rois, 0.0, source)
        yield pid, e.shape, box, make, geometry


# ---------------------------------------------------------------------------------- the pairs

_READ_AHEAD_THREAD = "dosepred-read-ahead"


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Yield ``items`` while one worker thread already produces the next ``depth`` of them.

    Reading a patient is mostly file I/O, CRC checks and numpy scatters, which release the GIL, so
    on a multi-core machine it overlaps with the evaluation of the previous patient. Items come in
    order; an exception of the producer is raised where its item would have come. ``depth=0``: plain
    iteration in the caller's thread.
    """
    if depth <= 0:
        yield from items
        return
    end = object()

    def produce() -> Any:
        return next(items, end)

    pool = ThreadPoolExecutor(1, thread_name_prefix=_READ_AHEAD_THREAD)
    pending: collections.deque = collections.deque()
    try:
        pending.extend(pool.submit(produce) for _ in range(depth))
        while pending:
            item = pending.popleft().result()
            if item is end:
                return
            pending.append(pool.submit(produce))
            yield item
    finally:
        # An abandoned generator may be finalised by the garbage collector inside the worker itself
        # (while it runs ``next(items)``): then neither join the worker nor close the producer.
        in_worker = threading.current_thread().name.startswith(_READ_AHEAD_THREAD)
        for f in pending:
            f.cancel()
        pool.shutdown(wait=not in_worker)
        close = getattr(items, "close", None)
        if close is not None and not in_worker:  # the worker is idle now: close the producer
            close()


def iter_cases(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str],
               read_ahead: int = 1, compact: bool = True, roi_map: Any = None) -> Iterator[ScoringCase]:
    """Lazily yield the :class:`ScoringCase` of each of ``ids`` (what ``dosepred evaluate`` scores
    without ``--report``), reading ahead ``read_ahead`` patients in a worker thread (0: none, one
    patient in memory at a time; 1, the default: two). No CT is read and no full-grid array is
    built where it can be avoided:

    - ``compact``: where reference and prediction are both version-2+ caches with the same
      possible-dose mask and no dose outside it (predictions written by ``dosepred predict --format
      cache``), the case is over the mask's voxels and the ROI voxels outside it, straight from the
      stored voxel lists;
    - otherwise, for a cache or an OpenKBP reference with predictions that are not RTDOSE files, the
      case is over the smallest box that holds every non-zero voxel of the reference dose,
      possible-dose mask, ROIs and the predicted dose;
    - else (NIfTI, DICOM references; RTDOSE predictions placed by geometry) from the whole grids.

    Every score is the same on all three (both doses are zero outside the scored voxels).
    ``roi_map``: the ROI name map of a DICOM reference (an error for another kind of reference).
    """
    return prefetch(_iter_cases(reference, prediction, ids, compact, roi_map), read_ahead)


def iter_pairs(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str],
               with_ct: bool = False, read_ahead: int = 1, roi_map: Any = None
               ) -> Iterator[tuple[Patient, np.ndarray]]:
    """Lazily yield (reference patient, predicted dose) on the reference's whole grid for ``ids``,
    reading ahead like :func:`iter_cases` (which is what to score with: it builds no full grids).
    The reference CT is read only ``with_ct`` (the report's dose slices need it; else
    ``Patient.ct`` is None); ``meta["prediction_file"]`` names the prediction.
    ``roi_map``: the ROI name map of a DICOM reference (an error for another kind of reference).
    """
    return prefetch(_iter_pairs(reference, prediction, ids, with_ct, roi_map), read_ahead)


def _compact_case(ref_cache: Any, preds: _Predictions, pid: str, rs: RoiSet) -> ScoringCase | None:
    """A reference and a prediction, both version-2 cache files with one data box and possible-dose
    mask and no dose outside the mask, as voxel lists (see :func:`iter_cases`); None otherwise."""
    assert preds.cache is not None
    er, ep = ref_cache.patient_entry(pid), preds.cache.patient_entry(pid)
    if er.shape != ep.shape:
        return None
    try:
        r = er.read_voxels()
        p = ep.read_voxels(rois=False)
        vox = _entry_voxel_mm3(er)
    except CacheError as err:
        raise InputError(str(err)) from None
    if (r is None or p is None or r.dose is None or p.dose is None or r.dose_outside_mask
            or p.dose_outside_mask or not r.same_mask(p)):
        return None
    n = r.n_mask
    if r.dose.size != n or p.dose.size != n:
        raise InputError(f"patient {pid}: cache file holds {r.dose.size} / {p.dose.size} dose values "
                         f"for {n} possible-dose voxels")
    # ROI voxels at their rank among the mask's voxels (the order of the dose values); the ones
    # outside the mask go after the mask's voxels
    assert r.roi_index is not None and r.roi_codes is not None
    hit, pos = r.mask_ranks(r.roi_index)
    out = ~hit
    pos[out] = n + np.arange(int(out.sum()))
    total = n + int(out.sum())
    codes = np.zeros(total, rs.dtype)
    codes[pos] = r.roi_codes
    mask = np.zeros(total, bool)
    mask[:n] = True
    ref_dose = np.zeros(total, np.float32)
    ref_dose[:n] = r.dose
    pred = np.zeros(total, np.float32)
    pred[:n] = p.dose
    names = rs.names
    return ScoringCase(pid, rs, ref_dose, pred, mask, codes_voxel_indices(codes, range(len(names)), names),
                       vox, er.missing_rois, 0.0, preds.name(pid))


def _box_cases(reference: str | os.PathLike, fmt: Format, preds: _Predictions, ids: list[str]
               ) -> Iterator[ScoringCase]:
    """Each case on the box that holds the data of both (see :func:`iter_cases`)."""
    for pid, shape, ref_box, make_case, geometry in _reference_crops(reference, fmt, ids):
        pd, pbox = preds.crop(pid, shape, geometry)
        box = union(ref_box, pbox) or tuple(slice(0, 1) for _ in shape)
        pred = _embed(pd, pbox, box) if pbox is not None else np.zeros(box_shape(box), np.float32)
        yield make_case(box, pred, preds.name(pid))


def _open_pairing(reference: str | os.PathLike, prediction: str | os.PathLike, roi_map: Any
                  ) -> tuple[_Predictions, Format | None]:
    preds = _Predictions(reference, prediction, roi_map)
    fmt = formats.detect(reference)
    if roi_map is not None and (fmt is None or not fmt.takes_roi_map):
        open_source(reference, roi_map)  # the error of a map for a source that is not DICOM
    return preds, fmt


def _iter_cases(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str],
                compact: bool, roi_map: Any) -> Iterator[ScoringCase]:
    preds, fmt = _open_pairing(reference, prediction, roi_map)
    if preds.rtdoses or fmt is None or not fmt.cropped:  # placed by geometry: whole grids
        for ref in _references(reference, fmt, ids, False, roi_map):
            yield ScoringCase.from_patient(ref, preds.full(ref), preds.name(ref.id))
        return
    if compact and preds.cache is not None and fmt.cache:
        ref_cache = Cache.open(reference)
        rs = ref_cache.roi_set
        for pid in ids:
            case = _compact_case(ref_cache, preds, pid, rs)
            yield case if case is not None else next(_box_cases(reference, fmt, preds, [pid]))
        return
    yield from _box_cases(reference, fmt, preds, ids)


def _iter_pairs(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str], with_ct: bool,
                roi_map: Any) -> Iterator[tuple[Patient, np.ndarray]]:
    preds, fmt = _open_pairing(reference, prediction, roi_map)
    for ref in _references(reference, fmt, ids, with_ct, roi_map):
        d = preds.full(ref)
        ref.meta["prediction_file"] = preds.name(ref.id)
        yield ref, d
