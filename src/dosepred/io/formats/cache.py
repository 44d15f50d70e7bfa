"""The dosepred cache as a row of the table of formats (:mod:`dosepred.io.cache` reads and writes it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ...patient import Patient
from .. import cache as cache_io
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


FORMAT = Format(
    name="cache", label="cache",
    described="a dosepred cache (dataset.json)",
    described_short=f"a dosepred cache (no {cache_io.DATASET_JSON})",
    detect=lambda p: p.is_dir() and cache_io.is_cache(p),
    detect_late=None,
    open=_open,
    roi_names="a dosepred cache, whose ROIs were named when it was imported",
    read_source=None,  # a cache is no import source: `data subset` copies one
    write_patient=None,
    write_dose=None,  # predict writes a cache whole (predict_to), with how it was predicted
    dose_suffixes=(), dose_by_id=False, read_dose=None, read_dose_on=None, read_dose_sparse=None,
    dose_geometry=None, source_bytes=None,
    cropped=True, cache=True,
)
