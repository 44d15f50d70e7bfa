"""Pairing of reference patients with predicted doses, read from their sources for scoring.

::

    from dosepred.evaluation import evaluate_cohort, iter_pairs, match_predictions

    found, missing = match_predictions("cache/val", "pred")       # ids with a prediction
    pairs = iter_pairs("cache/val", "pred", [i for i, _ in found])  # lazily, one read ahead
    result = evaluate_cohort(pairs, "openkbp-clinical")

Every source is read through its row of the table of formats (:data:`dosepred.io.formats.FORMATS`);
nothing here knows a format. A **reference** is any patient source
:func:`dosepred.io.source.open_source` opens, its format decided once by
:func:`dosepred.io.formats.detect`; a format whose row has ``read_reference_boxes`` (a cache, an
OpenKBP folder) is read without the CT and scored on the box that holds its data (the fast path),
others are read whole. A **prediction** is a source of a format with ``open_doses`` (a dosepred
cache of doses, what ``dosepred predict --format cache`` writes, the fastest to read), or a folder of
per-patient files named by patient id (:data:`PREDICTION_PATTERNS`) and/or dose files matched to
the references by what they reference (a row's ``match_doses``: RTDOSE files), placed onto their
grids; each file is read by its format's row.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..boxes import Box, box_shape, coords_box, embed, local_index, union
from ..dvh import codes_voxel_indices
from ..errors import InputError
from ..io import formats
from ..io.formats import DoseStore, Format, ReferenceBox
from ..io.source import check_roi_map, load_patients, open_source
from ..patient import Patient
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
    """The prediction file of patient ``pid`` in ``pred_dir`` (``pt_N.csv``, ``pt_N.nii.gz``; the
    ending in any case, ``pt_N.CSV``, as the readers read it, where no file has it as written), or None."""
    d = Path(pred_dir)
    for pat in PREDICTION_PATTERNS:
        f = d / pat.format(id=pid)
        if f.is_file():
            return f
    names = {pat.format(id=pid).lower(): pat.format(id=pid) for pat in PREDICTION_PATTERNS}
    try:
        found = sorted(f for f in d.iterdir() if f.name.lower() in names
                       and f.name.startswith(pid) and f.is_file())
    except OSError:
        return None
    if len(found) > 1:
        raise InputError(f"patient {pid}: {len(found)} prediction files in {d} differ only in case "
                         f"({', '.join(f.name for f in found)}); keep one")
    return found[0] if found else None


def read_prediction(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    """Read one predicted dose file (format chosen by suffix) on a grid of ``shape``."""
    path = Path(path)
    fmt = formats.dose_file_format(path)
    if fmt is not None and fmt.read_dose is not None:
        return fmt.read_dose(path, shape)
    raise InputError(f"{path}: unknown prediction format (expected {', '.join(PREDICTION_READERS)})")


def _match_doses(reference: str, prediction: str, roi_map: Any = None) -> dict[str, Path]:
    """Reference id -> predicted dose file of a prediction folder whose files are matched to the
    references by what they reference (the rows with ``match_doses``: RTDOSE files, what ``predict
    --format dicom`` writes). ``roi_map``: the reference's ROI name map."""
    heads = functools.cache(lambda: open_source(reference, roi_map).headers())
    out: dict[str, Path] = {}
    for f in formats.FORMATS:
        if f.match_doses is not None:
            for pid, path in f.match_doses(Path(prediction), heads).items():
                out.setdefault(pid, path)
    return out


#: (reference, prediction folder, its mtime, ROI map path) -> the matches found there (the last 8)
_MATCHED: dict[tuple[str, str, int, str | None], dict[str, Path]] = {}


def _matched_doses(reference: str, prediction: str, stamp: int, roi_map: Any = None) -> dict[str, Path]:
    """:func:`_match_doses`, remembered where some were found (a map that is no path: not remembered);
    a folder where none were is looked at again next time."""
    if roi_map is not None and not isinstance(roi_map, (str, os.PathLike)):
        return _match_doses(reference, prediction, roi_map)
    key = (reference, prediction, stamp, None if roi_map is None else str(roi_map))
    if key not in _MATCHED:
        out = _match_doses(reference, prediction, roi_map)
        if not out:
            return out
        while len(_MATCHED) >= 8:
            del _MATCHED[next(iter(_MATCHED))]
        _MATCHED[key] = out
    return _MATCHED[key]


def _dose_store(path: Path) -> tuple[Format, DoseStore] | None:
    """The source at ``path`` opened as a store of predicted doses (a row with ``open_doses`` whose
    ``detect`` holds: a prediction cache), or None."""
    for f in formats.FORMATS:
        if f.open_doses is not None and f.detect(path):
            return f, f.open_doses(path)
    return None


def _dose_files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` named as a predicted dose file of some format (``pt_N.csv``,
    ``pt_N.nii.gz``, RTDOSE ``.dcm``), sorted."""
    try:
        return sorted(f for f in folder.iterdir() if f.is_file() and formats.dose_file_format(f) is not None)
    except OSError:
        return []


def _file_id(f: Path, fmt: Format) -> str | None:
    """The patient id a per-patient dose file of ``fmt`` is named by (``pt_7.csv`` -> ``pt_7``), or
    None for a format whose files are matched otherwise (RTDOSE)."""
    if not fmt.dose_by_id:
        return None
    low = f.name.lower()
    for suffix in fmt.dose_suffixes:
        if low.endswith(suffix.lower()):
            return f.name[:len(f.name) - len(suffix)]
    return None


def _refuse_mixed(folder: Path, store: Format, ids: Iterable[str]) -> None:
    """Refuse a prediction folder that is a store of doses (a prediction cache) and also holds
    per-patient dose files of its patients (``ids``) or RTDOSE files: which of the two was meant
    cannot be told, and taking one silently could score the wrong predictions. Other files named
    like a dose file (``notes.csv``) are no prediction of a patient here: a warning names them."""
    known = set(ids)
    clash = []
    for f in _dose_files(folder):
        fmt = formats.dose_file_format(f)
        if fmt is not None and (not fmt.dose_by_id or _file_id(f, fmt) in known):
            clash.append((f, fmt))
    if clash:
        kinds = formats.listed(sorted({fmt.label for _, fmt in clash}), "and")
        names = [f.name for f, _ in clash]
        raise InputError(f"prediction folder {folder} is ambiguous: it holds both {store.described} of "
                         f"predicted doses and {len(clash)} {kinds} prediction file(s) "
                         f"({name_some(names)}); keep one kind of prediction per folder")


class _Predictions:
    """Where the predicted doses of one evaluation are: a store of doses (``store``, a prediction
    cache) or a folder of per-patient files and/or files matched to the references (``matched``, on
    first use). Decided once per call of :func:`match_predictions` / :func:`iter_pairs`."""

    def __init__(self, reference: str | os.PathLike, prediction: str | os.PathLike, roi_map: Any = None
                 ) -> None:
        self.reference = str(reference)
        self.roi_map = roi_map
        self.given = str(prediction)  # as the caller wrote it, for messages
        self.path = Path(prediction)
        opened = _dose_store(self.path)
        self.store_format, self.store = opened if opened is not None else (None, None)
        if self.store_format is not None:
            _refuse_mixed(self.path, self.store_format, self.store.ids)

    @functools.cached_property
    def matched(self) -> dict[str, Path]:
        """Reference id -> dose file matched by what it references (else empty)."""
        if self.store is not None or not self.path.is_dir() or not any(
                f.match_doses is not None for f in formats.FORMATS):
            return {}
        return _matched_doses(self.reference, str(self.path), self.path.stat().st_mtime_ns, self.roi_map)

    def file(self, pid: str) -> Path | None:
        """Patient ``pid``'s prediction file (its file in the store for a store), or None."""
        if self.store is not None:
            return self.store.file(pid)
        return find_prediction(self.path, pid) or self.matched.get(pid)

    def name(self, pid: str) -> str:
        """What ``meta["prediction_file"]`` says: the file, else the prediction folder."""
        f = self.file(pid)
        return str(f) if f is not None else self.given

    def _stored_dose(self, pid: str, crop: bool) -> tuple[np.ndarray, Box | None]:
        assert self.store is not None and self.store_format is not None
        d, box = self.store.dose(pid, crop)
        if d is None:
            raise InputError(f"patient {pid}: the prediction {self.store_format.label} {self.given} holds "
                             "no dose")
        return d, box

    def check_grid(self, pid: str, geometry: Any) -> None:
        """Refuse a stored dose whose grid lies elsewhere in the patient than the reference's
        ``geometry`` (another spacing, origin or orientation on the same array shape: a prediction made
        from another version of the patient, or from another patient under the same id)."""
        assert self.store is not None
        g = self.store.geometry(pid)
        if g is not None and geometry is not None and not g.same_as(geometry):
            raise InputError(f"patient {pid}: the predicted dose {self.file(pid)} lies on another grid "
                             f"({g!r}) than the reference ({geometry!r}); predict from the reference's own "
                             "patients")

    def full(self, ref: Patient) -> np.ndarray:
        """The predicted dose of ``ref`` on its whole grid (a file with its own geometry placed by it)."""
        if self.store is not None:
            self.check_grid(ref.id, ref.geometry)
            d, _ = self._stored_dose(ref.id, crop=False)
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
        if self.store is not None:
            self.check_grid(pid, geometry)
            stored = self.store.shape(pid)
            d, box = self._stored_dose(pid, crop=True)
            if box is None:  # a file of the whole grid
                box = full
            if stored != tuple(shape) or d.shape != box_shape(box):
                raise InputError(f"patient {pid}: predicted dose has shape {stored}, but the "
                                 f"reference grid is {tuple(shape)}")
            return d, box
        f = find_prediction(self.path, pid)
        assert f is not None
        fmt = formats.dose_file_format(f)
        if fmt is not None and fmt.read_dose_sparse is not None:
            idx, vals = fmt.read_dose_sparse(f, shape, geometry)
            keep = vals != 0
            coords = tuple(c[keep] for c in np.unravel_index(idx, shape))
            box = coords_box([coords])
            if box is None:
                return np.zeros((0, 0, 0), np.float32), None
            d = np.zeros(int(np.prod(box_shape(box))), np.float32)
            d[local_index(coords, box)] = vals[keep]
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
    """Pair reference ids with prediction files: ([(id, file or None for a cache of doses)], missing ids).

    ``prediction`` is a folder of per-patient files or a dosepred cache holding doses; ``roi_map``: the
    ROI name map of a DICOM reference (an error for another kind, :func:`dosepred.io.source.open_source`).
    """
    ids = reference_ids(reference, roi_map)
    pred = Path(prediction)
    if pred.is_file():
        raise InputError(f"prediction folder {pred} is a file, not a folder (give the folder that holds the "
                         "predictions)")
    if not pred.is_dir():
        raise FileNotFoundError(f"prediction folder {pred} does not exist")
    preds = _Predictions(reference, prediction, roi_map)
    if preds.store is not None:
        if pred.resolve() == Path(reference).resolve():  # one folder, however spelt (a link, ../x)
            raise InputError(f"prediction folder {pred} is the reference {reference}: each patient's "
                             "\"prediction\" would be its own plan dose and every score 0; give the folder "
                             "the predictions were written to (dosepred predict --out)")
        have = set(preds.store.ids)
        known = set(ids)
        _warn_unused(pred, reference, [i for i in preds.store.ids if i not in known],
                     [f.name for f in _dose_files(pred)])  # not its patients' (_refuse_mixed)
        return [(i, None) for i in ids if i in have], [i for i in ids if i not in have]
    found = [(i, find_prediction(pred, i)) for i in ids]
    if any(f is None for _, f in found):
        rd = preds.matched
        found = [(i, f if f is not None else rd.get(i)) for i, f in found]
    used = {f for _, f in found if f is not None}
    _warn_unused(pred, reference, *_unused_files(pred, used))
    return [(i, f) for i, f in found if f is not None], [i for i, f in found if f is None]


def _unused_files(folder: Path, used: set[Path]) -> tuple[list[str], list[str]]:
    """(prediction files named by patient id directly in ``folder`` that no reference patient uses,
    the other files there that are no prediction of any format). Hidden files, subfolders and DICOM
    files (matched by what they reference, among other DICOM files) are not listed; nor are the
    other files of a folder holding DICOM files."""
    try:
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    except OSError:
        return [], []
    unused, other, dicom = [], [], False
    for f in files:
        fmt = formats.dose_file_format(f)
        if fmt is None:
            other.append(f.name)
        elif not fmt.dose_by_id:
            dicom = True
        elif f not in used:
            unused.append(f.name)
    return unused, [] if dicom else other


def _warn_unused(folder: Path, reference: str | os.PathLike, unused: list[str], other: list[str]) -> None:
    """One warning naming the predictions that match no reference patient and the unrelated files
    of a prediction folder, which evaluation ignores."""
    parts = []
    if unused:
        parts.append(f"{len(unused)} prediction(s) with no reference patient in {reference} "
                     f"({name_some(unused)})")
    if other:
        parts.append(f"{len(other)} file(s) that are no prediction ({name_some(other)})")
    if parts:
        warnings.warn(f"prediction folder {folder}: ignored {' and '.join(parts)}", stacklevel=3)


def name_some(names: list[str], n: int = 3) -> str:
    """``"a, b, c and 2 more"``."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _id_list(ids: Any) -> Any:
    """``ids`` as a list when it is one id (a string), as :func:`dosepred.io.load_patients` takes it:
    its characters were taken as ids ("patient s is not in cache")."""
    return [ids] if isinstance(ids, str) else ids


def load_references(src: str | os.PathLike, ids: list[str] | None = None, with_ct: bool = False,
                    roi_map: Any = None) -> Iterable[Patient]:
    """Reference patients for evaluation from any source (:func:`dosepred.io.load_patients`).

    Evaluation needs no CT, so unless ``with_ct`` a source whose format's row has
    ``read_reference_boxes`` (a cache, an OpenKBP folder) is read without it (``Patient.ct`` is None):
    the biggest CSV file and the biggest cache array are skipped, and the patients carry their
    support box (:meth:`Patient.support_box`). ``roi_map``: the ROI name map of a DICOM ``src``.
    """
    return _references(src, formats.detect(src), _id_list(ids), with_ct, roi_map)


def _boxes(fmt: Format | None, roi_map: Any) -> Any:
    """The reader of ``fmt``'s references on boxes (its ``read_reference_boxes``), or None: the format
    has none, or its sources are read with an ROI map (``read_reference_boxes`` takes none)."""
    if fmt is None or (roi_map is not None and fmt.takes_roi_map):
        return None
    return fmt.read_reference_boxes


def _references(src: str | os.PathLike, fmt: Format | None, ids: list[str] | None, with_ct: bool,
                roi_map: Any = None) -> Iterator[Patient]:
    check_roi_map(src, fmt, roi_map)
    boxes = _boxes(fmt, roi_map)
    if with_ct or boxes is None:
        yield from load_patients(src, ids=ids, roi_map=roi_map)
        return
    for r in boxes(Path(src), ids):
        yield r.patient()


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

    - ``compact``: where reference and prediction both store voxel lists (version-2+ caches) with the
      same possible-dose mask and no dose outside it (predictions written by ``dosepred predict
      --format cache``), the case is over the mask's voxels and the ROI voxels outside it, straight
      from the stored voxel lists;
    - otherwise, for a reference of a format with ``read_reference_boxes`` (a cache, an OpenKBP
      folder) and predictions not matched by what they reference (not RTDOSE files), the case is
      over the smallest box that holds every non-zero voxel of the reference dose, possible-dose
      mask, ROIs and the predicted dose;
    - else (NIfTI, DICOM references; RTDOSE predictions placed by geometry) from the whole grids.

    Every score is the same on all three (both doses are zero outside the scored voxels).
    ``roi_map``: the ROI name map of a DICOM reference (an error for another kind of reference).
    """
    return prefetch(_iter_cases(reference, prediction, _id_list(ids), compact, roi_map), read_ahead)


def iter_pairs(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str],
               with_ct: bool = False, read_ahead: int = 1, roi_map: Any = None
               ) -> Iterator[tuple[Patient, np.ndarray]]:
    """Lazily yield (reference patient, predicted dose) on the reference's whole grid for ``ids``,
    reading ahead like :func:`iter_cases` (which is what to score with: it builds no full grids).
    The reference CT is read only ``with_ct`` (the report's dose slices need it; else
    ``Patient.ct`` is None); ``meta["prediction_file"]`` names the prediction.
    ``roi_map``: the ROI name map of a DICOM reference (an error for another kind of reference).
    """
    return prefetch(_iter_pairs(reference, prediction, _id_list(ids), with_ct, roi_map), read_ahead)


def _compact_case(ref: ReferenceBox, preds: _Predictions) -> ScoringCase | None:
    """A reference and a prediction that both store voxel lists (version-2 cache files) with one data
    box and possible-dose mask and no dose outside the mask, as voxel lists (see :func:`iter_cases`);
    None otherwise."""
    store = preds.store
    assert store is not None and store.voxels is not None and ref.voxels is not None
    pid, rs = ref.id, ref.roi_set
    if ref.shape != store.shape(pid):
        return None
    preds.check_grid(pid, ref.geometry)
    r = ref.voxels()
    p = store.voxels(pid)
    vox = ref.voxel_mm3
    if (r is None or p is None or r.dose is None or p.dose is None or r.dose_outside_mask
            or p.dose_outside_mask or not r.same_mask(p)):
        return None
    n = r.n_mask
    if r.dose.size != n or p.dose.size != n:
        raise InputError(f"patient {pid}: the reference / the prediction {preds.name(pid)} hold "
                         f"{r.dose.size} / {p.dose.size} dose values for {n} possible-dose voxels")
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
                       vox, ref.missing_rois, 0.0, preds.name(pid))


def _box_case(ref: ReferenceBox, preds: _Predictions) -> ScoringCase:
    """The case on the box that holds the data of both (see :func:`iter_cases`)."""
    pd, pbox = preds.crop(ref.id, ref.shape, ref.geometry)
    box = union(ref.box, pbox) or tuple(slice(0, 1) for _ in ref.shape)
    pred = embed(pd, pbox, box) if pbox is not None else np.zeros(box_shape(box), np.float32)
    source = preds.name(ref.id)
    dose, mask, rois = ref.arrays(box)
    return ScoringCase(ref.id, ref.roi_set, dose, pred.ravel(), mask, rois, ref.voxel_mm3, ref.missing_rois,
                       0.0, source)


def _open_pairing(reference: str | os.PathLike, prediction: str | os.PathLike, roi_map: Any
                  ) -> tuple[_Predictions, Format | None]:
    preds = _Predictions(reference, prediction, roi_map)
    fmt = formats.detect(reference)
    check_roi_map(reference, fmt, roi_map)
    return preds, fmt


def _iter_cases(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str],
                compact: bool, roi_map: Any) -> Iterator[ScoringCase]:
    preds, fmt = _open_pairing(reference, prediction, roi_map)
    boxes = _boxes(fmt, roi_map)
    if preds.matched or boxes is None:  # placed by geometry, or no box reader: whole grids
        for ref in _references(reference, fmt, ids, False, roi_map):
            yield ScoringCase.from_patient(ref, preds.full(ref), preds.name(ref.id))
        return
    voxels = compact and preds.store is not None and preds.store.voxels is not None
    for r in boxes(Path(reference), ids):
        case = _compact_case(r, preds) if voxels and r.voxels is not None else None
        yield case if case is not None else _box_case(r, preds)


def _iter_pairs(reference: str | os.PathLike, prediction: str | os.PathLike, ids: list[str], with_ct: bool,
                roi_map: Any) -> Iterator[tuple[Patient, np.ndarray]]:
    preds, fmt = _open_pairing(reference, prediction, roi_map)
    for ref in _references(reference, fmt, ids, with_ct, roi_map):
        d = preds.full(ref)
        ref.meta["prediction_file"] = preds.name(ref.id)
        yield ref, d
