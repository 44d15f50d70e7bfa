"""The dosepred cache as a row of the table of formats (:mod:`dosepred.io.cache` reads and writes it)."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...boxes import Box, box_shape, embed
from ...dvh import codes_voxel_indices, voxel_list_indices
from ...errors import InputError
from ...geometry import Geometry
from ...patient import Patient, RoiSet, voxel_volume_mm3
from .. import cache as cache_io
from ..cache import EVAL_FIELDS, CacheError, CacheVoxels
from .base import Format


class CacheReader:
    """An opened cache (:class:`~dosepred.io.cache.Cache`) as a :class:`~.base.Reader`."""

    def __init__(self, c: cache_io.Cache) -> None:
        self.cache = c
        self.roi_set = c.roi_set
        self.ids = list(c.ids)

    def patients(self, ids: Sequence[str] | None = None, require_dose: bool = False) -> Iterator[Patient]:
        yield from self.cache.patients(ids)

    def headers(self) -> dict[str, dict[str, Any]]:
        """The ``meta`` of each cache entry."""
        return {e["id"]: dict(e.get("meta", {})) for e in self.cache.info["patients"]}


def _open(path: Path, roi_map: Any = None) -> CacheReader:
    return CacheReader(cache_io.Cache.open(path))


# ------------------------------------------------------------------ what evaluation reads of a cache
def _voxel_mm3(e: cache_io.CacheEntry) -> float:
    """The voxel volume of a cache entry: its geometry's (the spacing product for caches before
    geometry, whose grids are axis-aligned)."""
    g = e.geometry
    return float(np.prod(e.spacing)) if g is None else voxel_volume_mm3(g)


class CacheReference:
    """A reference patient of a cache as evaluation reads it (a :class:`~.base.ReferenceBox`): its
    arrays cropped to their data box, read on first use; its voxel lists (the compact path) without
    them."""

    def __init__(self, c: cache_io.Cache, pid: str, roi_set: RoiSet) -> None:
        self._cache = c
        self.id = pid
        self.roi_set = roi_set

    @functools.cached_property
    def entry(self) -> cache_io.CacheEntry:
        """The patient's entry of ``dataset.json`` (:meth:`patient` needs none)."""
        return self._cache.patient_entry(self.id)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.entry.shape

    @property
    def missing_rois(self) -> tuple[str, ...]:
        return self.entry.missing_rois

    @functools.cached_property
    def _read(self) -> tuple[dict[str, Any], Box, Geometry | None, float]:
        e = self.entry
        try:
            arrays, box = e.read_arrays((*EVAL_FIELDS, "roi_voxels"), crop=True, n_rois=len(self.roi_set))
            geometry = e.geometry
            vox = _voxel_mm3(e)
        except CacheError as err:
            raise InputError(str(err)) from None
        if box is None:  # version-1 file: full-grid arrays
            box = tuple(slice(0, n) for n in e.shape)
        return arrays, box, geometry, vox

    @property
    def box(self) -> Box:
        return self._read[1]

    @functools.cached_property
    def geometry(self) -> Geometry | None:
        """The entry's geometry (read from ``dataset.json`` alone: the compact path compares it)."""
        if "_read" in self.__dict__:
            return self._read[2]
        try:
            return self.entry.geometry
        except CacheError as err:
            raise InputError(str(err)) from None

    @functools.cached_property
    def voxel_mm3(self) -> float:
        if "_read" in self.__dict__:
            return self._read[3]
        try:
            return _voxel_mm3(self.entry)
        except CacheError as err:
            raise InputError(str(err)) from None

    def voxels(self) -> CacheVoxels | None:
        """The stored voxel lists (None for a version-1 file)."""
        try:
            return self.entry.read_voxels(n_rois=len(self.roi_set))
        except CacheError as err:
            raise InputError(str(err)) from None

    def arrays(self, outer: Box) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        arrays, box, _, _ = self._read
        names = self.roi_set.names
        bits = range(len(names))
        dose = arrays["dose"]
        if dose is None:
            raise InputError(f"patient {self.entry.id}: the reference has no dose to compare with")
        known = arrays.get("roi_voxels")
        if known is not None:  # the stored non-zero-code voxels, as flat indices into the box
            idx, vals = known
            if box != outer:
                local = np.unravel_index(idx, box_shape(box))
                idx = np.ravel_multi_index(tuple(c + (s.start - o.start) for c, s, o in
                                                 zip(local, box, outer, strict=True)), box_shape(outer))
            rois = voxel_list_indices(idx, vals, bits, names)
        else:
            rois = codes_voxel_indices(embed(arrays["roi_codes"], box, outer), bits, names)
        ref = np.asarray(embed(dose, box, outer), np.float32).ravel()
        mask = embed(arrays["possible_dose_mask"], box, outer).astype(bool, copy=False).ravel()
        return ref, mask, rois

    def patient(self) -> Patient:
        try:
            return self._cache.load(self.id, self.roi_set, with_ct=False)
        except CacheError as err:
            raise InputError(str(err)) from None


def read_reference_boxes(path: Path, ids: Sequence[str] | None = None) -> Iterator[CacheReference]:
    """The references of the cache at ``path`` (all, or ``ids`` in that order) as evaluation reads them."""
    c = cache_io.Cache.open(path)
    rs = c.roi_set
    for pid in ids if ids is not None else c.ids:
        yield CacheReference(c, pid, rs)


class CacheDoses:
    """A cache of predicted doses (what ``predict --format cache`` writes) as a :class:`~.base.DoseStore`."""

    def __init__(self, path: Path) -> None:
        self.cache = cache_io.Cache.open(path)
        self.ids = list(self.cache.ids)

    def file(self, pid: str) -> Path:
        return self.cache.patient_entry(pid).path

    def shape(self, pid: str) -> tuple[int, ...]:
        return self.cache.patient_entry(pid).shape

    def dose(self, pid: str, crop: bool) -> tuple[np.ndarray | None, Box | None]:
        try:
            arrays, box = self.cache.patient_entry(pid).read_arrays(("dose",), crop=crop)
        except CacheError as err:
            raise InputError(str(err)) from None
        return arrays["dose"], box

    def geometry(self, pid: str) -> Geometry | None:
        """Where patient ``pid``'s dose grid lies (None for a cache older than format version 3)."""
        try:
            return self.cache.patient_entry(pid).geometry
        except CacheError as err:
            raise InputError(str(err)) from None

    def voxels(self, pid: str) -> CacheVoxels | None:
        """The stored voxel lists of patient ``pid``'s dose, without its ROIs (None for a version-1 file)."""
        e = self.cache.patient_entry(pid)
        try:
            return e.read_voxels(rois=False)
        except CacheError as err:
            raise InputError(str(err)) from None


FORMAT = Format(
    name="cache", label="cache",
    described="a dosepred cache (dataset.json)",
    described_short=f"a dosepred cache (no {cache_io.DATASET_JSON})",
    import_help=None,
    export_help=None,
    dose_output="a dosepred cache of the patients with the predicted dose: fastest to evaluate",
    detect=lambda p: p.is_dir() and cache_io.is_cache(p),
    detect_late=None,
    open=_open,
    roi_naming="a dosepred cache, whose ROIs were named when it was imported",
    read_source=None,  # a cache is no import source: `data subset` copies one
    write_patient=None,
    write_dose=None,  # predict writes a cache whole (predict_to), with how it was predicted
    dose_suffixes=(), dose_by_id=False, read_dose=None, read_dose_on=None, read_dose_sparse=None,
    dose_geometry=None, source_bytes=None,
    read_reference_boxes=read_reference_boxes, open_doses=CacheDoses, match_doses=None, near_miss=None,
    is_cache=True,
)
