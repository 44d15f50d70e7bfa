"""The cache: one compressed ``<id>.npz`` per patient plus ``dataset.json``.

``dataset.json`` holds the RoiSet (names, kinds, prescriptions; bit order), and per patient its
file, shape, spacing, missing ROIs and provenance. The npz holds ``ct`` (int16 HU), ``roi_codes``
(bit mask), ``possible_dose_mask`` (bool) and ``dose`` (float32 Gy) when known. Files are written
to temporary names and renamed only when the whole import succeeded, so a failed or interrupted
import leaves no partial patient file and no ``dataset.json`` that lists absent patients.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..patient import Patient, RoiSet

DATASET_JSON = "dataset.json"
FORMAT_VERSION = 1


class CacheError(ValueError):
    pass


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    _atomic_write_bytes(path, lambda fh: fh.write(json.dumps(obj, indent=2).encode()))


def save_patient(p: Patient, path: Path) -> None:
    arrays: dict[str, np.ndarray] = {"ct": p.ct, "roi_codes": p.roi_codes,
                                     "possible_dose_mask": np.asarray(p.possible_dose_mask)}
    if p.dose is not None:
        arrays["dose"] = p.dose
    _atomic_write_bytes(path, lambda fh: np.savez_compressed(fh, **arrays))


def _entry(p: Patient, file: str) -> dict[str, Any]:
    return {"id": p.id, "file": file, "shape": list(p.shape), "spacing": list(p.spacing),
            "missing_rois": list(p.missing_rois), "has_dose": p.dose is not None, "meta": p.meta}


@dataclass
class Cache:
    """A cache folder opened for reading. Iterating yields Patients (loaded lazily)."""

    root: Path
    info: dict[str, Any]

    @classmethod
    def open(cls, root: str | os.PathLike) -> Cache:
        root = Path(root)
        js = root / DATASET_JSON
        if not js.is_file():
            raise CacheError(f"{root} is not a dosepred cache: {js} is missing "
                             "(create one with `dosepred data import-openkbp` or `data synth`)")
        try:
            info = json.loads(js.read_text())
        except json.JSONDecodeError as e:
            raise CacheError(f"{js} is not valid JSON: {e}") from None
        for key in ("rois", "patients"):
            if key not in info:
                raise CacheError(f"{js} lacks the key {key!r}")
        return cls(root, info)

    @property
    def roi_set(self) -> RoiSet:
        try:
            return RoiSet.from_dicts(self.info["rois"])
        except (ValueError, KeyError, TypeError) as e:
            raise CacheError(f"{self.root / DATASET_JSON}: invalid ROI list: {e}") from None

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.info["patients"]]

    def entry(self, pid: str) -> dict[str, Any]:
        for e in self.info["patients"]:
            if e["id"] == pid:
                return e
        raise KeyError(f"patient {pid} is not in cache {self.root}")

    def __len__(self) -> int:
        return len(self.info["patients"])

    def load(self, pid: str, roi_set: RoiSet | None = None) -> Patient:
        e = self.entry(pid)
        path = self.root / e["file"]
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise CacheError(f"patient {pid}: cannot read {path}: {err}") from None
        lacking = [k for k in ("ct", "roi_codes", "possible_dose_mask") if k not in arrays]
        if lacking:
            raise CacheError(f"patient {pid}: {path} lacks the arrays {', '.join(lacking)}")
        return Patient(pid, arrays["ct"], arrays["roi_codes"], roi_set or self.roi_set,
                       tuple(e["spacing"]), arrays["possible_dose_mask"], arrays.get("dose"),
                       tuple(e.get("missing_rois", ())), dict(e.get("meta", {})))

    def __iter__(self) -> Iterator[Patient]:
        rs = self.roi_set
        for pid in self.ids:
            yield self.load(pid, rs)

    def patients(self, ids: Sequence[str] | None = None) -> Iterator[Patient]:
        rs = self.roi_set
        for pid in ids if ids is not None else self.ids:
            yield self.load(pid, rs)

    def nbytes(self) -> int:
        return sum((self.root / e["file"]).stat().st_size for e in self.info["patients"])


def write_cache(patients: Iterable[Patient], out: str | os.PathLike, source: str = "",
                roi_set: RoiSet | None = None, progress: bool = False) -> Cache:
    """Write patients to a cache folder (creating it). Every patient must share the RoiSet.

    All or nothing: patient files are written under temporary names (``.<id>.npz.part``) and only
    renamed, followed by ``dataset.json``, once every patient has been read and written. If reading
    or writing fails (a bad source file, Ctrl-C), the temporary files are removed and the folder is
    left as it was, so no ``dataset.json`` ever claims a patient whose file is absent or half-written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    info: dict[str, Any] = {"format": "dosepred-cache", "version": FORMAT_VERSION, "source": source,
                            "rois": roi_set.to_dicts() if roi_set else None, "patients": entries}
    seen: set[str] = set()
    staged: list[tuple[Path, Path]] = []
    it: Iterable[Patient] = patients
    if progress:
        from ..progress import track
        it = track(patients, description="writing cache")
    try:
        for p in it:
            if info["rois"] is None:
                info["rois"] = p.roi_set.to_dicts()
                roi_set = p.roi_set
            elif p.roi_set != roi_set:
                raise CacheError(f"patient {p.id}: ROI set {p.roi_set.names} differs from the cache's "
                                 f"{roi_set.names if roi_set else None}")
            if p.id in seen:
                raise CacheError(f"patient id {p.id} appears twice")
            seen.add(p.id)
            fname = f"{p.id}.npz"
            part = out / f".{fname}.part"
            staged.append((part, out / fname))
            save_patient(p, part)
            entries.append(_entry(p, fname))
        if not entries:
            raise CacheError(f"no patients to write to {out}")
        for part, final in staged:
            os.replace(part, final)
        staged = []
        write_json_atomic(out / DATASET_JSON, info)
    finally:
        for part, _ in staged:
            part.unlink(missing_ok=True)
    return Cache.open(out)


def is_cache(path: str | os.PathLike) -> bool:
    return (Path(path) / DATASET_JSON).is_file()


def load_patients(src: str | os.PathLike, ids: Sequence[str] | None = None,
                  require_dose: bool = True) -> Iterator[Patient]:
    """Patients from a cache or an OpenKBP folder (the two sources every command accepts)."""
    from . import openkbp

    if is_cache(src):
        yield from Cache.open(src).patients(ids)
        return
    if openkbp.is_openkbp_folder(src):
        folders = openkbp.patient_folders(src)
        if ids is not None:
            want = set(ids)
            folders = [f for f in folders if f.name in want]
        for f in folders:
            yield openkbp.read_patient(f, require_dose=require_dose)
        return
    raise CacheError(f"{src} is neither a dosepred cache (no {DATASET_JSON}) nor an OpenKBP folder (pt_*)")
