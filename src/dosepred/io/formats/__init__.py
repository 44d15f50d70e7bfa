"""The table of formats: one :class:`Format` row per format dosepred reads or writes, in
:data:`FORMATS`, and nothing else decides by a format's name.

Each row says how a path of the format is recognised (``detect``), how a source of it is opened
(``open``: ids, ROI set, patients), imported into a cache (``read_source``), exported
(``write_patient``), how one predicted dose is written (``write_dose``) and read back, as stored
(``read_dose``, ``read_dose_sparse``) or onto a reference grid (``read_dose_on``), what evaluation
reads of it (``read_reference_boxes``: references scored on the box of their data; ``open_doses``: a
store of predicted doses; ``match_doses``: dose files matched to references by what they
reference), and what the commands need to know of it (``is_cache``, ``takes_roi_map``,
``fixed_roi_names``, ...). A
capability the format lacks is None in its row. The readers and writers themselves live in the
format's module of :mod:`dosepred.io` (:mod:`~dosepred.io.cache`, :mod:`~dosepred.io.openkbp`,
:mod:`~dosepred.io.nifti`, :mod:`~dosepred.io.dicom`); each row's module here adapts them.

A new format: its reader / writer module in ``io/``, one module here defining its ``FORMAT`` row,
and that row in :data:`FORMATS` (where in the order decides which format a path that looks like two
is taken as).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ...errors import UnknownNameError
from . import cache, dicom, nifti, openkbp
from .base import DoseStore, Format, Reader, ReferenceBox, place_dose

#: Every format, in the order a path is tested against them (:func:`detect`): the first ``detect``
#: that holds wins, then the first ``detect_late``.
FORMATS: tuple[Format, ...] = (cache.FORMAT, openkbp.FORMAT, nifti.FORMAT, dicom.FORMAT)

_BY_NAME = {f.name: f for f in FORMATS}


def names(formats: tuple[Format, ...] = FORMATS) -> tuple[str, ...]:
    return tuple(f.name for f in formats)


def find(name: str | Format | None) -> Format | None:
    """The row named ``name`` (a row is returned as it is), or None."""
    if isinstance(name, Format):
        return name
    return _BY_NAME.get(name) if isinstance(name, str) else None


def get(name: str | Format) -> Format:
    """The row named ``name``; :class:`~dosepred.errors.UnknownNameError` (a ``KeyError``) for a
    name no row has (the commands check a user's name with :func:`find` and say so in their words)."""
    f = find(name)
    if f is None:
        raise UnknownNameError(f"no format {name!r} (formats: {', '.join(names())})")
    return f


def detect(path: str | os.PathLike) -> Format | None:
    """The format of what ``path`` holds, or None (nothing there, or no format recognised)."""
    p = Path(path)
    if not p.exists():
        return None
    for f in FORMATS:
        if f.detect(p):
            return f
    for f in FORMATS:
        if f.detect_late is not None and f.detect_late(p):
            return f
    return None


def importable() -> tuple[Format, ...]:
    """The formats ``data import-<name>`` reads into a cache."""
    return tuple(f for f in FORMATS if f.read_source is not None)


def exportable() -> tuple[Format, ...]:
    """The formats ``data export-<name>`` writes a cache as."""
    return tuple(f for f in FORMATS if f.write_patient is not None)


def prediction_formats() -> tuple[Format, ...]:
    """What ``predict --format`` writes: the formats with a per-patient dose file, then the caches."""
    return (tuple(f for f in FORMATS if f.write_dose is not None)
            + tuple(f for f in FORMATS if f.write_dose is None and f.is_cache))


def dose_file_format(path: str | os.PathLike) -> Format | None:
    """The format a predicted dose file is named as (by its ending), or None."""
    return next((f for f in FORMATS if f.is_dose_file(path)), None)


def dose_file_patterns() -> tuple[str, ...]:
    """The names of a patient's predicted dose file, ``{id}`` its id, in the order they are tried."""
    return tuple(f"{{id}}{s}" for f in FORMATS if f.dose_by_id for s in f.dose_suffixes)


def listed(words: Sequence[str], last: str = "or") -> str:
    """``"a, b or c"``."""
    return ", ".join(words) if len(words) < 2 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def one_of(formats: tuple[Format, ...], last: str = "or") -> str:
    """``"openkbp, nifti or dicom"``."""
    return listed(names(formats), last)


def described(formats: tuple[Format, ...] = FORMATS, last: str = "or") -> str:
    """``"a dosepred cache (dataset.json), an OpenKBP folder (pt_*/ct.csv), ... or a DICOM folder
    (CT series + RTSTRUCT)"``: what a path of each format is (the rows' ``described``), for help texts."""
    return listed([f.described for f in formats], last)


def roi_map_takers() -> tuple[Format, ...]:
    """The formats an ROI name map (``--roi-map``) applies to (:attr:`Format.takes_roi_map`)."""
    return tuple(f for f in FORMATS if f.takes_roi_map)


__all__ = ["FORMATS", "DoseStore", "Format", "Reader", "ReferenceBox", "described", "detect",
           "dose_file_format", "dose_file_patterns", "exportable", "find", "get", "importable", "listed",
           "names", "one_of", "place_dose", "prediction_formats", "roi_map_takers"]
