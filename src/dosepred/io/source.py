"""One entry point for every patient source: :func:`open_source` (and :func:`load_patients`, its
patients one at a time).

A source is recognised by what the path holds, by the rows of the table of formats
(:data:`dosepred.io.formats.FORMATS`), in this order:

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DosepredError, InputError, name_some
from ..patient import CASE_CLASH_WHY, Patient, RoiSet, case_clash
from . import formats
from .formats import FORMATS, Format
from .rx_check import check_plan_dose
from .side_check import check_sides
from .target_dose_check import check_target_dose

#: the names of the formats a source may be in, in the order a path is tested (:data:`formats.FORMATS`)
KINDS = formats.names()

class SourceError(DosepredError, ValueError):
    """A path that is no patient source dosepred reads."""


@dataclass
class Source:
    """An opened source: its kind, ROI set and patient ids; patients are read on demand."""

    path: Path
    kind: str
    roi_set: RoiSet
    ids: list[str]
    _handle: Any = field(default=None, repr=False)  # the format's reader (formats.Reader)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def format(self) -> Format:
        """The row of the table of formats of this source's kind."""
        return formats.get(self.kind)

    @property
    def cache(self) -> Any:
        """The opened :class:`~dosepred.io.cache.Cache` when this source is a cache, else None."""
        return self._handle.cache if self.format.is_cache else None

    def patients(self, ids: Sequence[str] | None = None, require_dose: bool = False) -> Iterator[Patient]:
        """The patients (all, or those of ``ids`` in this source's order), one at a time. With
        ``require_dose`` a patient without a plan dose is an InputError naming it and the source,
        whatever the format (a reader may refuse it earlier, naming its missing file). Each patient's
        plan dose is checked against its prescriptions (:func:`checked`), but in a cache of predicted
        doses (``predict``'s: a prediction is no plan, and a poor model's is what evaluation is for)."""
        if isinstance(ids, str):  # one id: its characters were taken as ids ("patients p, t, _, 1, 8 ...")
            ids = [ids]
        if ids is not None and self.cache is None:  # a folder's reader gave the others and left an id it
            # lacks out without a word (a cache's refuses it: UnknownNameError naming the cache)
            held = set(self.ids)
            lacking = [i for i in ids if i not in held]
            if lacking:
                who = f"patients {name_some(lacking)} are" if len(lacking) > 1 else f"patient {lacking[0]} is"
                raise SourceError(f"{who} not in {self.kind} source {self.path} (its patients: "
                                  f"{name_some(self.ids)})")
        it = self._handle.patients(ids, require_dose=require_dose)
        for p in (it if self.predicted else checked(it, self.path, self.format)):
            if require_dose and p.dose is None:
                raise InputError(f"patient {p.id} of {self.path} ({self.format.label}) has no dose: this "
                                 "needs each patient's plan dose")
            yield p

    @property
    def predicted(self) -> bool:
        """Whether this source's doses are predictions: a cache written by ``predict`` (its
        ``"prediction"`` record, or the command string of an earlier ``predict``)."""
        c = self.cache
        return c is not None and (c.info.get("prediction") is not None
                                  or str(c.info.get("source", "")).startswith("dosepred predict"))

    def __iter__(self) -> Iterator[Patient]:
        return self.patients()

    def headers(self) -> dict[str, dict[str, Any]]:
        """Per patient id, what identifies it without reading arrays (``meta`` of a cache entry,
        DICOM UIDs of a DICOM folder; empty for OpenKBP and NIfTI)."""
        return self._handle.headers()


def checked(patients: Iterable[Patient], path: str | os.PathLike | None = None,
            fmt: Format | None = None) -> Iterator[Patient]:
    """``patients`` as they are read, each with a plan dose and prescribed targets checked by
    :func:`~dosepred.io.rx_check.check_plan_dose` (a warning, or a ``PrescriptionError`` before the
    patient is passed on) and by :func:`~dosepred.io.target_dose_check.check_target_dose` (no large
    high dose far from every contoured target: a warning), and each ROI named for a side by
    :func:`~dosepred.io.side_check.check_sides` (on that side: a warning): the one place every
    source's patients pass, :meth:`Source.patients` and
    ``data import-*`` (``workflows.import_patients``) alike. ``path``: the source, named when the
    patient does not record its own (``meta["source"]``), and always for a cache (``fmt``: the
    source's format), whose patients record the source they were imported from."""
    cache_read = fmt is not None and fmt.is_cache and path is not None
    for p in patients:
        own = p.meta.get("source")
        if cache_read:
            where = f"{path}" + (f" (imported from {own})" if own else "")
        else:
            where = own or (None if path is None else str(path))
        check_plan_dose(p, where, None if fmt is None else fmt.takes_roi_map)
        check_target_dose(p, where)
        check_sides(p, where)
        yield p


def source_kind(path: str | os.PathLike) -> str | None:
    """``"cache"``, ``"openkbp"``, ``"nifti"``, ``"dicom"`` or None (see the module docstring): the
    name of the first row of :data:`~dosepred.io.formats.FORMATS` that recognises ``path``."""
    f = formats.detect(path)
    return None if f is None else f.name


def check_roi_map(path: str | os.PathLike, fmt: Format | None, roi_map: Any) -> None:
    """The one rule of ROI name maps: a map (``--roi-map``) applies only to a source of a format that
    takes one (:attr:`Format.takes_roi_map <dosepred.io.formats.Format.takes_roi_map>`: DICOM, whose
    clinical ROI names it maps); given with a source of another format (``fmt``, the format ``path``
    is read as; None: not known, nothing to say) it is this one :class:`SourceError`, whichever
    command or function was given it."""
    if roi_map is not None and fmt is not None and not fmt.takes_roi_map:
        takers = [t.label for t in formats.roi_map_takers()]
        raise SourceError(f"{path}: an ROI map (--roi-map) applies to {' and '.join(takers)} sources only, "
                          f"and this is {fmt.roi_naming} (give the {' or '.join(takers)} folder, or leave "
                          "out the map)")


def _near_misses(p: Path) -> str:
    """``"; ..."``: what the formats' ``near_miss`` say of a path none of them takes (DICOM data without
    the file preamble, named as ``data import-dicom`` names it), or ``""``."""
    said = [s for f in FORMATS if f.near_miss is not None for s in [f.near_miss(p)] if s]
    return "".join(f"; {s}" for s in said)


def _listed(described: list[str]) -> str:
    return ", ".join(described[:-1]) + " nor " + described[-1]


def open_source(path: str | os.PathLike, roi_map: Any = None) -> Source:
    """Open a cache, OpenKBP folder, NIfTI folder or DICOM folder. ``roi_map`` (a JSON file, a dict
    or a :class:`~dosepred.io.roi_names.RoiMap`): the ROI name map of a DICOM folder (as
    ``data import-dicom --roi-map``); given for another kind of source it is a :class:`SourceError`
    (their ROIs are named already: a cache's by its import, OpenKBP's fixed, NIfTI's by ``rois.json``
    or the file names)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    f = formats.detect(p)
    check_roi_map(p, f, roi_map)
    if f is None and p.is_file():
        raise SourceError(f"{p} is a file, not a folder: give "
                          f"{_listed([t.described for t in FORMATS]).replace(' nor ', ' or ')}")
    if f is None:
        raise SourceError(f"{p} is not {_listed([t.described for t in FORMATS])}{_near_misses(p)}")
    reader = f.open(p, roi_map)  # a map only for a format that takes one (check_roi_map)
    clash = case_clash(reader.ids)
    if clash:
        remedy = (f"leave one of them out with `dosepred data subset {p} --split FILE:keep --out NEW`, FILE "
                  'a JSON file {"splits": {"keep": [...]}} listing the ids to keep, written by hand (`data '
                  'split` reads no such cache), or import its source again with other ids' if f.is_cache else
                  "give one of them another id")
        raise SourceError(f"{p}: patient ids {clash[0]!r} and {clash[1]!r} differ only in case (or Unicode "
                          f"form): {CASE_CLASH_WHY}; {remedy}")
    return Source(p, f.name, reader.roi_set, reader.ids, reader)


def plan_source(path: str | os.PathLike, roi_map: Any = None, needs: str = "this needs plan doses") -> Source:
    """:func:`open_source` for a command that reads plan doses (``qa --plans``, ``calibrate --data``): a
    :class:`SourceError` for a cache of predicted doses (:attr:`Source.predicted`), whose "plans" would
    be the model's own doses (QA flags none of them; a calibration of near-zero errors flags nearly
    every plan). ``needs``: what the command does with the plans, for the message."""
    s = open_source(path, roi_map)
    said = predicted_words(s)
    if said is not None:
        raise SourceError(f"{s.path}: {said}, not plans: {needs}; give the source of the plans (the one the "
                          "predictions were made from)")
    return s


def predicted_words(source: Source) -> str | None:
    """``"its doses are predictions written by `dosepred predict` (model M, data D)"`` for a cache of
    predicted doses (:attr:`Source.predicted`), else None."""
    if not source.predicted:
        return None
    rec = source.cache.info.get("prediction") if source.cache is not None else None
    made = (f" (model {rec.get('model')}, data {rec.get('data')})"
            if isinstance(rec, dict) and rec.get("model") else "")
    return f"its doses are predictions written by `dosepred predict`{made}"


def load_patients(src: str | os.PathLike, ids: Sequence[str] | None = None,
                  require_dose: bool = True, roi_map: Any = None) -> Iterator[Patient]:
    """Patients from a cache, an OpenKBP, NIfTI or DICOM folder (the kind decided by
    :func:`source_kind`, the patients read by :func:`open_source`; ``roi_map`` for a DICOM folder).
    ``ids``: the patients to read (a list of ids, or one id), all when None."""
    if not Path(src).exists():
        raise FileNotFoundError(f"{src} does not exist")
    if source_kind(src) is None:
        raise SourceError(f"{src} is neither {_listed([t.described_short for t in FORMATS])}"
                          f"{_near_misses(Path(src))}")
    yield from open_source(src, roi_map).patients(ids, require_dose=require_dose)


__all__ = ["Source", "SourceError", "check_roi_map", "checked", "open_source", "load_patients", "plan_source",
           "predicted_words", "source_kind",
           "KINDS"]
