"""A compact transport copy of a cache: :func:`pack_cache` writes it, :func:`unpack_cache` turns it
back into a cache.

What it is for: taking a training cache (the OpenKBP one is 154 MB) to a machine that can receive
only a few tens of MB, e.g. a lent GPU machine whose working tree may hold 64 MiB in all
(docs/results.md, "GPU run").

What changes: nothing but CT and dose. The CT is clipped to the window the network reads
(:data:`dosepred.constants.HU_MIN` .. :data:`~dosepred.constants.HU_MAX`; with ``ct_step=1`` the
network input is unchanged) and rounded to steps of ``ct_step`` HU; the dose is rounded to steps of
``dose_step`` cGy. So each voxel is at most half a step off, ROI codes, possible-dose mask, spacing,
geometry and metadata are kept bit for bit, and the unpacked cache equals the cache of
:func:`quantize_patient`'s patients.

The packed folder: ``dataset.json`` (the cache's, unchanged) and per patient ``<stem>.xz`` (the
stem of its cache file): an ``.npz`` compressed with LZMA that holds the members of the quantized
patient's cache file (:func:`dosepred.io.cache.encode_patient`) with ``ct`` and ``dose`` replaced by
``ct_q`` (steps of ``ct_step`` HU above ``HU_MIN``) and ``dose_q`` (steps of ``dose_step`` cGy), and
``steps`` = ``[ct_step, dose_step]``.

Both functions write their output as :func:`dosepred.fsutil.output_dir` does: into a temporary
sibling renamed into place when every patient is written, refusing a non-empty output unless
``overwrite`` (which then replaces it whole).
"""

from __future__ import annotations

import io
import lzma
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..constants import HU_MAX, HU_MIN
from ..errors import InputError, leave_stops, name_some, starting_workers
from ..fsutil import output_dir, write_bytes
from ..patient import Patient
from ..progress import track
from .cache import DATASET_JSON, Cache, CacheError, encode_patient, write_members

__all__ = ["PACKED_SUFFIX", "PackResult", "pack_cache", "quantize_patient", "unpack_cache"]

#: The suffix of a packed patient file.
PACKED_SUFFIX = ".xz"
PACKABLE_VERSIONS = (2, 3)

_HU_MIN, _HU_MAX = int(HU_MIN), int(HU_MAX)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack_cache` wrote."""

    out: Path  # the packed folder
    patients: int  # patient files written
    nbytes: int  # their total size in bytes (dataset.json not counted)
    ct_step: int  # HU
    dose_step: int  # cGy


def _check_step(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InputError(f"{name} must be a whole number >= 1, got {v!r}")
    return int(v)


def _ct_steps(ct: np.ndarray, ct_step: int) -> np.ndarray:
    """HU -> steps of ``ct_step`` above HU_MIN (clipped to the network's window, rounded)."""
    clipped = np.clip(ct.astype(np.int32), _HU_MIN, _HU_MAX)
    return np.rint((clipped - _HU_MIN) / ct_step).astype(np.uint16)


def _ct_from_steps(q: np.ndarray, ct_step: int) -> np.ndarray:
    return (q.astype(np.int32) * ct_step + _HU_MIN).astype(np.int16)


def _dose_steps(dose: np.ndarray, dose_step: int) -> np.ndarray:
    """Gy -> steps of ``dose_step`` cGy (rounded)."""
    k = np.rint(dose.astype(np.float64) * 100.0 / dose_step)
    if k.size and k.max() > np.iinfo(np.uint16).max:
        return k.astype(np.uint32)
    return k.astype(np.uint16)


def _dose_from_steps(q: np.ndarray, dose_step: int) -> np.ndarray:
    return (q.astype(np.float64) * (dose_step / 100.0)).astype(np.float32)


def quantize_patient(p: Patient, ct_step: int = 4, dose_step: int = 1) -> Patient:
    """Patient ``p`` as it comes back from a pack -> unpack round trip: the CT clipped to
    ``HU_MIN..HU_MAX`` and rounded to steps of ``ct_step`` HU, the dose rounded to steps of
    ``dose_step`` cGy; everything else shared with ``p``."""
    ct_step, dose_step = _check_step("ct_step", ct_step), _check_step("dose_step", dose_step)
    dose = None if p.dose is None else _dose_from_steps(_dose_steps(p.dose, dose_step), dose_step)
    ct = _ct_from_steps(_ct_steps(p.require_ct("packing"), ct_step), ct_step)
    return Patient(p.id, ct, p.roi_codes, p.roi_set, p.spacing, p.possible_dose_mask, dose, p.missing_rois,
                   dict(p.meta), p.geometry)


def _packed_name(entry: dict[str, Any]) -> str:
    return Path(entry["file"]).stem + PACKED_SUFFIX


def _pack_one(args: tuple[Cache, str, Path, int, int]) -> int:
    cache, pid, dst, ct_step, dose_step = args
    members = encode_patient(quantize_patient(cache.load(pid), ct_step, dose_step))
    packed: dict[str, np.ndarray] = {}
    for k, v in members.items():
        if k == "ct":
            packed["ct_q"] = _ct_steps(v, ct_step)
        elif k == "dose":
            packed["dose_q"] = _dose_steps(v, dose_step)
        else:
            packed[k] = v
    packed["steps"] = np.asarray([ct_step, dose_step], np.int32)
    buf = io.BytesIO()
    np.savez(buf, **packed)
    data = lzma.compress(buf.getvalue(), preset=9)
    write_bytes(dst, data)
    return len(data)


def _unpack_one(args: tuple[Path, Path]) -> None:
    src, dst = args
    try:
        raw = lzma.decompress(src.read_bytes())
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            packed = {k: z[k] for k in z.files}
        ct_step, dose_step = (int(v) for v in packed.pop("steps"))
        members = {}
        for k, v in packed.items():
            if k == "ct_q":
                members["ct"] = _ct_from_steps(v, ct_step)
            elif k == "dose_q":
                members["dose"] = _dose_from_steps(v, dose_step)
            else:
                members[k] = v
    except (OSError, lzma.LZMAError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise CacheError(f"{src}: not a packed patient file ({type(e).__name__}: {e})") from None
    write_members(dst, members)


def _run(fn: Callable[[T], R], work: list[T], jobs: int | None, progress: bool, what: str) -> list[R]:
    """``fn`` over ``work`` in ``jobs`` processes (in this one when 1 or a single item), in order."""
    n = max(1, min(jobs or os.cpu_count() or 1, len(work)))

    def shown(it: Iterable[R]) -> Iterator[R]:
        return track(it, description=what, total=len(work)) if progress else iter(it)

    if n == 1:
        return list(shown(fn(w) for w in work))
    ex = ProcessPoolExecutor(n, initializer=leave_stops)  # a stop reaching the workers is the command's
    try:
        with starting_workers():
            results = ex.map(fn, work)  # starts the workers
        return list(shown(results))
    finally:  # also after Ctrl-C: the work not started is dropped, the running ends, then the workers
        ex.shutdown(wait=True, cancel_futures=True)


def pack_cache(src: str | os.PathLike, out: str | os.PathLike, ct_step: int = 4, dose_step: int = 1,
               jobs: int = 2, overwrite: bool = False, progress: bool = False) -> PackResult:
    """Write the compact transport copy of cache ``src`` (format version 2 or 3) to folder ``out``:
    CT in steps of ``ct_step`` HU inside the network's window, dose in steps of ``dose_step`` cGy,
    everything else bit for bit (see the module docstring). ``jobs``: processes compressing in
    parallel (LZMA at its highest preset, about a second per OpenKBP patient). A non-empty ``out``
    is refused unless ``overwrite``; ``out`` may not overlap ``src``."""
    ct_step, dose_step = _check_step("ct_step", ct_step), _check_step("dose_step", dose_step)
    cache = Cache.open(src)
    version = cache.info.get("version", 1)
    if version not in PACKABLE_VERSIONS:
        raise CacheError(f"{src}: only caches of format version 2 or 3 can be packed (this one is version "
                         f"{version}; rewrite it with `dosepred data import-*`)")
    entries = cache.info["patients"]
    names = [_packed_name(e) for e in entries]
    if len(set(names)) != len(names):
        raise CacheError(f"{src}: two patient files share a name stem; they cannot be packed side by side")
    with output_dir(out, overwrite, [src]) as tmp:
        work = [(cache, e["id"], tmp / name, ct_step, dose_step)
                for e, name in zip(entries, names, strict=True)]
        sizes = _run(_pack_one, work, jobs, progress, "packing")
        write_bytes(tmp / DATASET_JSON, (Path(src) / DATASET_JSON).read_bytes())
    return PackResult(Path(out), len(sizes), sum(sizes), ct_step, dose_step)


def unpack_cache(src: str | os.PathLike, out: str | os.PathLike, jobs: int | None = None,
                 overwrite: bool = False, progress: bool = False) -> Cache:
    """Turn the packed copy ``src`` (written by :func:`pack_cache`) back into a cache in folder
    ``out`` and open it. ``jobs``: processes (None: one per CPU). A non-empty ``out`` is refused
    unless ``overwrite``; ``out`` may not overlap ``src``."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    if not (src / DATASET_JSON).is_file():
        raise CacheError(f"{src} is not a packed cache (a folder written by `dosepred data pack`): "
                         f"{src / DATASET_JSON} is missing")
    info = Cache.open(src).info
    entries = info["patients"]
    lacking = [_packed_name(e) for e in entries if not (src / _packed_name(e)).is_file()]
    if lacking:
        raise CacheError(f"{src} is not a packed cache: it lacks {name_some(lacking)}")
    with output_dir(out, overwrite, [src]) as tmp:
        work = [(src / _packed_name(e), tmp / e["file"]) for e in entries]
        _run(_unpack_one, work, jobs, progress, "unpacking")
        write_bytes(tmp / DATASET_JSON, (src / DATASET_JSON).read_bytes())
    return Cache.open(out)
