"""The cache: one ``<id>.npz`` per patient plus ``dataset.json``.

``dataset.json`` holds the RoiSet (names, kinds, prescriptions; bit order), and per patient its
file, shape, spacing, missing ROIs and provenance. Files are written to temporary names and renamed
only when the whole import succeeded, so a failed or interrupted import leaves no partial patient
file and no ``dataset.json`` that lists absent patients.

Format version 2 stores each patient compactly *and* cheap to read (members are read
lazily, so evaluation never touches the CT):

- ``boxes`` (int64 (3, 3, 2): three boxes, each [start, stop) per axis): the full grid, the *data
  box* and the CT box. The data box bounds possible-dose mask | ROI voxels | non-zero dose; outside
  it dose is 0, the mask False and the codes 0, so the arrays below are stored for that box only.
- ``possible_dose_mask``: ``np.packbits`` of the box's mask (C order).
- ``dose`` (float32, only when known): the values at the box voxels that are in the mask or have a
  non-zero dose (C order); ``dose_support`` (packbits) lists those voxels when they are not exactly
  the mask's (non-zero dose outside the mask).
- ``roi_index`` (uint32 flat index in the box) and ``roi_codes`` (bit mask): the voxels with a
  non-zero code.
- ``ct`` (int16 HU) over the CT box, the box of voxels differing from ``ct_fill`` (the corner
  value, e.g. -1024 HU of air), the only member compressed (zlib level 1; evaluation never reads it).

Version 3 (written now) has the files of version 2 and adds each patient's ``geometry`` (origin,
direction cosines, spacing in LPS mm; see :mod:`dosepred.geometry`) to its entry in
``dataset.json``. Versions 1 and 2 are still read: their patients get the geometry their ``meta``
implies (DICOM origin/orientation, NIfTI affine) or else the OpenKBP array convention.

Version 1 (still read): full-grid ``ct``, ``roi_codes``, ``possible_dose_mask``, ``dose`` in a
``np.savez_compressed`` file. Both round-trip losslessly.
"""

from __future__ import annotations

import functools
import io
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..boxes import mask_box
from ..errors import DosepredError, InputError, UnknownNameError
from ..fsutil import atomic_path, write_bytes, write_json
from ..geometry import Geometry, GeometryError, shear_problem
from ..patient import CASE_CLASH_WHY, Patient, RoiSet, case_clash
from ..progress import track

DATASET_JSON = "dataset.json"
FORMAT_VERSION = 3
READ_VERSIONS = (1, 2, 3)
#: the arrays evaluation reads (no CT): :meth:`CacheEntry.read_arrays`' default
EVAL_FIELDS = ("dose", "roi_codes", "possible_dose_mask")


class CacheError(DosepredError, ValueError):
    """A cache folder or file that cannot be read or written as asked (the message names it)."""


def _slices(box: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in box)


def _write_npz(fh, arrays: dict[str, np.ndarray], deflate: tuple[str, ...] = ()) -> None:
    """An npz (readable by ``np.load``) whose members in ``deflate`` are zlib level 1, the rest stored."""
    with zipfile.ZipFile(fh, "w", allowZip64=True) as zf:
        for k, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            if k in deflate:
                zf.writestr(f"{k}.npy", buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=1)
            else:
                zf.writestr(f"{k}.npy", buf.getvalue(), compress_type=zipfile.ZIP_STORED)


#: The members of a version-2/3 patient file, in the order they are written (see the module docstring).
MEMBERS = ("boxes", "possible_dose_mask", "dose_support", "dose", "roi_index", "roi_codes", "ct", "ct_fill")


def encode_patient(p: Patient) -> dict[str, np.ndarray]:
    """The members of patient ``p``'s version-2/3 file (see the module docstring), in file order;
    :func:`write_members` writes them. ``save_patient(p, path)`` is ``write_members(path,
    encode_patient(p))``."""
    assert p.possible_dose_mask is not None
    mask = p.possible_dose_mask
    sel = mask | (p.roi_codes != 0)
    if p.dose is not None:
        sel |= p.dose != 0
    box = np.array([[b.start, b.stop] for b in mask_box(sel)], np.int64)
    b = _slices(box)
    mc = mask[b]
    ct = p.require_ct("a cache file")
    fill = ct.flat[0] if ct.size else np.int16(0)
    ct_box = np.array([[b.start, b.stop] for b in mask_box(ct != fill)], np.int64)
    grid = np.stack([np.zeros(3, np.int64), np.asarray(p.shape, np.int64)], axis=1)
    arrays: dict[str, np.ndarray] = {"boxes": np.stack([grid, box, ct_box]),
                                     "possible_dose_mask": np.packbits(mc, axis=None)}
    if p.dose is not None:
        dc = p.dose[b]
        support = mc | (dc != 0)
        if (support != mc).any():
            arrays["dose_support"] = np.packbits(support, axis=None)
        arrays["dose"] = dc[support]
    cc = p.roi_codes[b].ravel()
    nz = np.flatnonzero(cc)
    arrays["roi_index"] = nz.astype(np.uint32)
    arrays["roi_codes"] = cc[nz]
    arrays.update(ct=ct[_slices(ct_box)], ct_fill=np.asarray(fill, dtype=np.int16))
    return arrays


def save_patient(p: Patient, path: Path, version: int = FORMAT_VERSION) -> None:
    """Write one patient file in cache format ``version`` (2 and 3: cropped, see the module docstring;
    the two differ only in ``dataset.json``)."""
    if version == 1:
        arrays: dict[str, np.ndarray] = {"ct": p.require_ct("a cache file"), "roi_codes": p.roi_codes,
                                         "possible_dose_mask": np.asarray(p.possible_dose_mask)}
        if p.dose is not None:
            arrays["dose"] = p.dose
        write_bytes(path, lambda fh: np.savez_compressed(fh, **arrays))
        return
    if version not in (2, 3):
        raise CacheError(f"unknown cache format version {version} (known: {READ_VERSIONS})")
    write_members(path, encode_patient(p))


def write_members(path: str | os.PathLike, members: dict[str, np.ndarray]) -> None:
    """Write a version-2/3 patient file from its members (:func:`encode_patient`'s, in any dict
    order: they are written in :data:`MEMBERS` order, the CT deflated, the rest stored), atomically."""
    unknown = sorted(set(members) - set(MEMBERS))
    if unknown:
        raise CacheError(f"{path}: {', '.join(unknown)} are not members of a cache patient file")
    ordered = {k: members[k] for k in MEMBERS if k in members}
    write_bytes(path, lambda fh: _write_npz(fh, ordered, deflate=("ct",)))


class _Npz:
    """One cache patient file opened with numpy's own ``np.load`` (a lazy ``NpzFile``: only the
    members asked for are read; zipfile checks each member's CRC). Until issue 28 this was a
    hand-written reader of the zip central directory and the .npy headers; numpy's reads the members
    evaluation needs 1.8x slower (0.77 against 0.43 ms per validation patient,
    ``scripts/cache_reader_bench.py``), about 0.01 s on `bench evaluate`'s 33 cache pairs (0.105 s):
    within the issue's 20 %, so the kept library wins (docs/results.md)."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"PK\x03\x04":  # else np.load tries it as a pickle and suggests loading it unsafely
            what = "it is empty" if not magic else f"it starts with {magic!r}"
            raise ValueError(f"not an .npz (zip) file: {what}; damaged or replaced")
        self.npz = np.load(path, allow_pickle=False)
        self.files = list(self.npz.files)
        #: member name -> None (what the readers test membership on)
        self.infos = dict.fromkeys(self.files)

    def __enter__(self) -> _Npz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.npz.close()

    def __getitem__(self, key: str) -> np.ndarray:
        return self.npz[key]

    def read(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The members ``keys``."""
        return {k: self.npz[k] for k in keys}


def _unbits(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    return np.unpackbits(bits, count=n).view(bool).reshape(shape)


def _paste(crop: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=crop.dtype)
    out[box] = crop
    return out


def check_codes(codes: np.ndarray, n_rois: int | None, path: Path, pid: str) -> None:
    """Refuse ROI codes with bits set beyond the ``n_rois`` ROIs of the cache's set (what
    :class:`~dosepred.patient.Patient` refuses; readers that build no Patient check here)."""
    if n_rois is None or not codes.size:
        return
    if codes.dtype.kind != "u":
        raise CacheError(f"patient {pid}: ROI codes must be unsigned integers, got {codes.dtype} (in {path})")
    if n_rois < codes.dtype.itemsize * 8 and int(codes.max()) >> n_rois:
        raise CacheError(f"patient {pid}: ROI codes have bits set beyond the {n_rois} ROIs of the set "
                         f"(in {path})")


def _check_boxes(boxes: np.ndarray, path: Path, pid: str, shape: tuple[int, ...] | None
                 ) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    """(the grid shape, the data box) of a version-2/3 file's ``boxes`` member, refused unless it is
    int (3, 3, 2) boxes within a grid starting at 0, the grid ``shape`` when given (``dataset.json``'s)."""
    b = np.asarray(boxes)
    where = f"patient {pid}: cannot read {path}: the member 'boxes'"
    if b.shape != (3, 3, 2) or b.dtype.kind not in "iu":
        raise CacheError(f"{where} must be integer (3, 3, 2) boxes, got {b.dtype} {b.shape}; damaged file")
    grid = tuple(int(x) for x in b[0, :, 1])
    if (b[0, :, 0] != 0).any() or min(grid) < 1:
        raise CacheError(f"{where}: the grid {b[0].tolist()} must start at 0 and be non-empty; damaged file")
    if shape is not None and grid != tuple(shape):
        raise CacheError(f"{where}: the grid {grid} differs from the shape {tuple(shape)} that "
                         f"{DATASET_JSON} records; damaged file")
    for k, what in ((1, "data"), (2, "CT")):
        lo, hi = b[k, :, 0], b[k, :, 1]
        if (lo < 0).any() or (hi < lo).any() or (hi > b[0, :, 1]).any():
            raise CacheError(f"{where}: the {what} box {b[k].tolist()} does not lie within the grid {grid}; "
                             "damaged file")
    return grid, _slices(b[1])


def _check_members(m: dict[str, np.ndarray], bshape: tuple[int, ...], path: Path, pid: str) -> None:
    """Refuse members of a version-2/3 file whose sizes do not fit its data box (``m``: those read)."""
    n = int(np.prod(bshape))
    where = f"patient {pid}: cannot read {path}:"
    if "possible_dose_mask" in m and m["possible_dose_mask"].size != (n + 7) // 8:
        raise CacheError(f"{where} the possible-dose mask holds {m['possible_dose_mask'].size} bytes, but "
                         f"the data box {bshape} needs {(n + 7) // 8}; damaged file")
    if "roi_index" in m:
        idx, codes = m["roi_index"], m.get("roi_codes")
        if codes is not None and idx.shape != codes.shape:
            raise CacheError(f"{where} {idx.size} ROI voxel indices but {codes.size} ROI codes; damaged file")
        if idx.size and (idx.dtype.kind not in "iu" or int(idx.max()) >= n or int(idx.min()) < 0):
            raise CacheError(f"{where} ROI voxel indices lie outside the data box {bshape}; damaged file")


#: members only a version-2/3 file has besides ``boxes`` (what tells a file that lost its boxes from
#: a version-1 file, whose full-grid arrays its voxel lists must not be taken for)
_V2_ONLY = ("roi_index", "ct_fill", "dose_support")


def _check_not_v2_without_boxes(names: set[str], path: Path, pid: str) -> None:
    if "boxes" not in names and any(k in names for k in _V2_ONLY):
        raise CacheError(f"patient {pid}: {path} lacks the arrays boxes (it holds the voxel lists of a "
                         "version-2/3 file); damaged file")


def read_arrays(path: str | os.PathLike, fields: Sequence[str] = ("ct", *EVAL_FIELDS), pid: str = "?",
                crop: bool = False, shape: tuple[int, ...] | None = None, n_rois: int | None = None
                ) -> tuple[dict[str, np.ndarray | None], tuple[slice, ...] | None]:
    """Arrays ``fields`` (of ct, dose, roi_codes, possible_dose_mask) of one cache file of either
    version, reading only the members they need, and the box outside which dose, mask and codes are
    zero (None for a version-1 file). ``dose`` is None when the file holds none. The extra field
    ``roi_voxels`` gives (ascending flat C-order indices into the returned ``roi_codes``, their
    codes) of the voxels with a non-zero code, as stored in a version-2 file (None for version 1).

    Arrays are full-grid, except with ``crop`` for a version-2 file: then dose, mask and codes are
    the box's (``arrays[k]`` equals ``full[k][box]``; the CT stays full-grid).

    A damaged file is a :class:`CacheError` naming the patient and the file: boxes outside the grid
    or a grid other than ``shape`` (``dataset.json``'s, when given), members that do not fit the box,
    and, given ``n_rois`` (the cache's ROI count), ROI codes with bits beyond its ROIs.
    """
    path = Path(path)
    out: dict[str, np.ndarray | None] = {}
    try:
        with _Npz(path) as z:
            names = set(z.files)
            _check_not_v2_without_boxes(names, path, pid)
            if "boxes" not in names:  # version 1
                lacking = [k for k in fields if k not in ("dose", "roi_voxels") and k not in names]
                if lacking:
                    raise CacheError(f"patient {pid}: {path} lacks the arrays {', '.join(lacking)}")
                v1 = {k: (z[k] if k in names else None) for k in fields}
                if v1.get("roi_codes") is not None:
                    check_codes(v1["roi_codes"], n_rois, path, pid)
                return v1, None
            lacking = [k for k in ("possible_dose_mask", "roi_index", "roi_codes", "ct", "ct_fill")
                       if k not in names]
            if lacking:
                raise CacheError(f"patient {pid}: {path} lacks the arrays {', '.join(lacking)}")
            want = ["boxes"]
            if "possible_dose_mask" in fields or ("dose" in fields and "dose" in names):
                want.append("possible_dose_mask")
            if "dose" in fields and "dose" in names:
                want += ["dose_support", "dose"] if "dose_support" in names else ["dose"]
            if "roi_codes" in fields or "roi_voxels" in fields:
                want += ["roi_index", "roi_codes"]
            if "ct" in fields:
                want += ["ct", "ct_fill"]
            m = z.read(want)
            boxes = m["boxes"]
            shape, box = _check_boxes(boxes, path, pid, shape)
            bshape = tuple(s.stop - s.start for s in box)
            _check_members(m, bshape, path, pid)
            if "roi_codes" in m:
                check_codes(m["roi_codes"], n_rois, path, pid)
            mc = None
            if "possible_dose_mask" in fields or ("dose" in fields and "dose" in names):
                mc = _unbits(m["possible_dose_mask"], bshape)
            if "possible_dose_mask" in fields:
                assert mc is not None
                out["possible_dose_mask"] = mc if crop else _paste(mc, box, shape)
            if "dose" in fields:
                if "dose" in names:
                    support = _unbits(m["dose_support"], bshape) if "dose_support" in names else mc
                    dc = np.zeros(bshape, dtype=np.float32)
                    n_support = int(np.count_nonzero(support))
                    if m["dose"].shape != (n_support,):
                        raise CacheError(f"patient {pid}: cannot read {path}: it holds {m['dose'].size} dose "
                                         f"values for {n_support} voxels of its dose support; damaged file")
                    dc[support] = m["dose"]
                    out["dose"] = dc if crop else _paste(dc, box, shape)
                else:
                    out["dose"] = None
            if "roi_codes" in fields:
                vals = m["roi_codes"]
                cc = np.zeros(int(np.prod(bshape)), dtype=vals.dtype)
                cc[m["roi_index"]] = vals
                cc = cc.reshape(bshape)
                out["roi_codes"] = cc if crop else _paste(cc, box, shape)
            if "roi_voxels" in fields:
                idx = m["roi_index"].astype(np.intp)
                if not crop:  # flat index in the box -> in the full grid (C order is kept)
                    local = np.unravel_index(idx, bshape)
                    idx = np.ravel_multi_index(tuple(c + s.start for c, s in zip(local, box, strict=True)),
                                               shape)
                out["roi_voxels"] = (idx, m["roi_codes"])
            if "ct" in fields:
                ct = np.full(shape, m["ct_fill"], dtype=np.int16)
                ct[_slices(boxes[2])] = m["ct"]
                out["ct"] = ct
            return out, box
    except CacheError:
        raise
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile) as err:
        raise CacheError(f"patient {pid}: cannot read {path}: {err}") from None


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass
class CacheVoxels:
    """The stored voxel lists of one version-2/3 patient file (:func:`read_voxels`), no box-sized
    array built. Flat indices are C order in the data ``box``."""

    #: the data box (slices of the full grid) outside which dose, mask and codes are zero
    box: tuple[slice, ...]
    #: ``np.packbits`` of the box's possible-dose mask (C order; the first voxel is the high bit)
    mask_bits: np.ndarray
    #: dose values at the mask's voxels in C order (None without a dose)
    dose: np.ndarray | None
    #: whether the file also stores dose outside the mask (``dose`` then follows another support)
    dose_outside_mask: bool
    #: flat indices in the box of the voxels with a non-zero ROI code (None unless read with ``rois``)
    roi_index: np.ndarray | None = None
    #: their codes
    roi_codes: np.ndarray | None = None

    @functools.cached_property
    def _mask_before(self) -> np.ndarray:
        """Per byte of ``mask_bits``: how many mask voxels the bytes before it hold."""
        pop = _POPCOUNT8[self.mask_bits]
        return np.cumsum(pop, dtype=np.int64) - pop

    @property
    def n_mask(self) -> int:
        """Number of possible-dose voxels (the length ``dose`` has when not ``dose_outside_mask``)."""
        b = self.mask_bits
        return int(self._mask_before[-1] + _POPCOUNT8[b[-1]]) if b.size else 0

    def same_mask(self, other: CacheVoxels) -> bool:
        """Whether ``other`` has the same data box and possible-dose mask."""
        return self.box == other.box and np.array_equal(self.mask_bits, other.mask_bits)

    def mask_ranks(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For flat box indices ``index``: (in the mask?, rank among the mask's voxels in C order,
        i.e. the position of the voxel's value in ``dose``; meaningless where not in the mask)."""
        idx = np.asarray(index).astype(np.intp)
        bits = self.mask_bits
        byte_at, bit_at = idx >> 3, (idx & 7).astype(np.uint16)
        byte = bits[byte_at].astype(np.uint16)  # packbits order: the first voxel is the high bit
        inside = ((byte >> (7 - bit_at)) & 1).astype(bool)
        rank = self._mask_before[byte_at] + _POPCOUNT8[byte >> (8 - bit_at)]
        return inside, rank


def read_voxels(path: str | os.PathLike, pid: str = "?", rois: bool = True,
                shape: tuple[int, ...] | None = None, n_rois: int | None = None) -> CacheVoxels | None:
    """The stored voxel lists of a version-2/3 file (:class:`CacheVoxels`), without building any
    box-sized array; ``roi_index`` / ``roi_codes`` only with ``rois``. None for a version-1 file.
    A damaged file is a :class:`CacheError` as for :func:`read_arrays` (``shape``, ``n_rois``)."""
    path = Path(path)
    try:
        with _Npz(path) as z:
            _check_not_v2_without_boxes(set(z.infos), path, pid)
            if "boxes" not in z.infos:
                return None
            want = ["boxes", "possible_dose_mask"] + (["dose"] if "dose" in z.infos else [])
            if rois:
                want += ["roi_index", "roi_codes"]
            lacking = [k for k in want if k not in z.infos]
            if lacking:
                raise CacheError(f"patient {pid}: {path} lacks the arrays {', '.join(lacking)}")
            m = z.read(want)
            _, box = _check_boxes(m["boxes"], path, pid, shape)
            _check_members(m, tuple(s.stop - s.start for s in box), path, pid)
            if "roi_codes" in m:
                check_codes(m["roi_codes"], n_rois, path, pid)
            out = CacheVoxels(box, m["possible_dose_mask"], m.get("dose"),
                              "dose_support" in z.infos, m.get("roi_index"), m.get("roi_codes"))
            if out.dose is not None and not out.dose_outside_mask and out.dose.shape != (out.n_mask,):
                raise CacheError(f"patient {pid}: cannot read {path}: it holds {out.dose.size} dose values "
                                 f"for {out.n_mask} possible-dose voxels; damaged file")
            return out
    except CacheError:
        raise
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile) as err:
        raise CacheError(f"patient {pid}: cannot read {path}: {err}") from None


@dataclass(frozen=True)
class CacheEntry:
    """One patient of a cache as ``dataset.json`` lists it (:meth:`Cache.patient_entry`), with
    readers of its file that read only the members asked for."""

    id: str
    #: the patient file (``<cache>/<id>.npz``)
    path: Path
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    missing_rois: tuple[str, ...] = ()
    #: whether the file holds a dose (None when ``dataset.json`` does not say)
    has_dose: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: the ``geometry`` dict of ``dataset.json`` (None for caches older than version 3)
    geometry_dict: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, root: Path, e: dict[str, Any]) -> CacheEntry:
        """The entry of ``dataset.json``'s patient dict ``e`` in the cache folder ``root``."""
        where = f"{Path(root) / DATASET_JSON}: invalid patient entry {e.get('id', '?')!r}"
        key = "id"
        try:
            # each key in turn, so that the message names the one that is wrong
            pid = str(e[key])
            key = "file"
            path = Path(root) / e[key]
            key = "shape"
            shape = tuple(int(n) for n in e[key])
            key = "spacing"
            spacing = tuple(float(x) for x in e[key])
            key = "meta"
            meta = dict(e.get(key) or {})
        except KeyError:
            raise CacheError(f"{where}: it lacks the key {key!r}") from None
        except (TypeError, ValueError) as err:
            rule = {"file": "a file name", "shape": "a list of integers",
                    "spacing": "a list of numbers (mm)", "meta": "an object"}[key]
            raise CacheError(f"{where}: {key!r} must be {rule}, got {e[key]!r} ({err})") from None
        return cls(pid, path, shape, spacing, tuple(e.get("missing_rois") or ()), e.get("has_dose"), meta,
                   e.get("geometry"))

    @property
    def geometry(self) -> Geometry | None:
        """The patient's :class:`~dosepred.geometry.Geometry` (None when the entry has none)."""
        if not self.geometry_dict:
            return None
        try:
            g = Geometry.from_dict(self.geometry_dict)
        except KeyError as err:
            raise CacheError(f"{self.path.parent / DATASET_JSON}: patient {self.id}: invalid geometry: it "
                             f"lacks the key {err}") from None
        except (GeometryError, TypeError, ValueError) as err:
            raise CacheError(f"{self.path.parent / DATASET_JSON}: patient {self.id}: invalid geometry: "
                             f"{err}") from None
        problem = shear_problem(g)
        if problem:
            raise CacheError(f"{self.path.parent / DATASET_JSON}: patient {self.id}: geometry: {problem}")
        return g

    def read_arrays(self, fields: Sequence[str] = EVAL_FIELDS, crop: bool = False, n_rois: int | None = None
                    ) -> tuple[dict[str, np.ndarray | None], tuple[slice, ...] | None]:
        """:func:`read_arrays` of this patient's file (default: the arrays evaluation needs), its grid
        checked against the entry's shape; ``n_rois``: the cache's ROI count (codes checked)."""
        return read_arrays(self.path, fields, self.id, crop, self.shape, n_rois)

    def read_voxels(self, rois: bool = True, n_rois: int | None = None) -> CacheVoxels | None:
        """:func:`read_voxels` of this patient's file, checked as :meth:`read_arrays`."""
        return read_voxels(self.path, self.id, rois, self.shape, n_rois)


def _entry(p: Patient, file: str) -> dict[str, Any]:
    return {"id": p.id, "file": file, "shape": list(p.shape), "spacing": list(p.spacing),
            "missing_rois": list(p.missing_rois), "has_dose": p.dose is not None, "meta": p.meta,
            "geometry": p.geometry.to_dict() if p.geometry is not None else None}


@dataclass
class Cache:
    """A cache folder opened for reading. Iterating yields Patients (loaded lazily)."""

    root: Path
    info: dict[str, Any]

    @classmethod
    def open(cls, root: str | os.PathLike) -> Cache:
        root = Path(root)
        js = root / DATASET_JSON
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        if not js.is_file():
            raise CacheError(f"{root} is not a dosepred cache: {js} is missing "
                             "(create one with `dosepred data import-openkbp` or `data synth`)")
        try:
            info = json.loads(js.read_text(encoding="utf-8-sig"))  # a byte-order mark read as none
        except UnicodeDecodeError as e:  # saved by an editor in UTF-16 or a Windows code page
            raise CacheError(f"{js} is not UTF-8 text ({e}); save it as UTF-8") from None
        except json.JSONDecodeError as e:
            raise CacheError(f"{js} is not valid JSON: {e}") from None
        if not isinstance(info, dict):
            raise CacheError(f"{js}: expected a JSON object, got {type(info).__name__}")
        for key in ("rois", "patients"):
            if key not in info:
                raise CacheError(f"{js} lacks the key {key!r}")
        pats = info["patients"]
        if not isinstance(pats, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str)
                                                 for e in pats):
            raise CacheError(f"{js}: 'patients' must be a list of objects with a string 'id' each")
        if not isinstance(info["rois"], list):
            raise CacheError(f"{js}: 'rois' must be a list of ROI objects")
        if info.get("version", 1) not in READ_VERSIONS:
            raise CacheError(f"{js}: cache format version {info.get('version')} is not supported by this "
                             f"dosepred (reads {', '.join(map(str, READ_VERSIONS))}); upgrade dosepred")
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
        """Patient ``pid``'s dict in ``dataset.json`` (KeyError if absent); :meth:`patient_entry`
        gives it typed."""
        for e in self.info["patients"]:
            if e["id"] == pid:
                return e
        raise UnknownNameError(f"patient {pid} is not in cache {self.root}")

    def patient_entry(self, pid: str) -> CacheEntry:
        """Patient ``pid``'s :class:`CacheEntry` (KeyError if absent)."""
        return CacheEntry.from_dict(self.root, self.entry(pid))

    def __len__(self) -> int:
        return len(self.info["patients"])

    def load(self, pid: str, roi_set: RoiSet | None = None, with_ct: bool = True) -> Patient:
        """Patient ``pid`` with full-grid arrays. ``with_ct=False`` skips reading the CT (the Patient's
        ``ct`` is then None), which is all evaluation needs."""
        e = self.patient_entry(pid)
        rs = roi_set or self.roi_set
        arrays, box = e.read_arrays(("ct", *EVAL_FIELDS) if with_ct else EVAL_FIELDS, n_rois=len(rs))
        codes = arrays["roi_codes"]
        assert codes is not None
        ct = arrays["ct"] if with_ct else None
        meta = dict(e.meta)
        try:
            p = Patient(pid, ct, codes, rs, e.spacing, arrays["possible_dose_mask"],
                        arrays.get("dose"), e.missing_rois, meta, e.geometry)
        except InputError as err:  # its checks name the patient and the field; add the file
            raise CacheError(f"{err} (in {e.path})") from None
        if box is not None:
            p.set_support_box(box)
        return p

    def load_dose(self, pid: str) -> np.ndarray | None:
        """Only the dose of patient ``pid`` (full grid, float32), or None when the cache holds none."""
        arrays, _ = self.patient_entry(pid).read_arrays(("dose",))
        return arrays["dose"]

    def __iter__(self) -> Iterator[Patient]:
        rs = self.roi_set
        for pid in self.ids:
            yield self.load(pid, rs)

    def patients(self, ids: Sequence[str] | str | None = None) -> Iterator[Patient]:
        """The patients of ``ids`` (a list, or one id), all when None, in that order."""
        if isinstance(ids, str):  # one id: its characters were taken as ids ("patient s is not in cache")
            ids = [ids]
        rs = self.roi_set
        for pid in ids if ids is not None else self.ids:
            yield self.load(pid, rs)

    def nbytes(self) -> int:
        return sum((self.root / e["file"]).stat().st_size for e in self.info["patients"])


def write_cache(patients: Iterable[Patient], out: str | os.PathLike, source: str = "",
                roi_set: RoiSet | None = None, progress: bool = False,
                version: int = FORMAT_VERSION, record: dict[str, Any] | None = None) -> Cache:
    """Write patients to a cache folder (creating it). Every patient must share the RoiSet.

    All or nothing: patient files are written under temporary names (``.<id>.npz.tmp-XXXX``,
    :func:`dosepred.fsutil.atomic_path`) and only renamed, followed by ``dataset.json``, once every
    patient has been read and written. If reading
    or writing fails (a bad source file, Ctrl-C), the temporary files are removed and the folder is
    left as it was, so no ``dataset.json`` ever claims a patient whose file is absent or half-written.
    ``version``: cache format to write (3, the default; 2 or 1 for readers that predate it).
    ``record``: further top-level entries of ``dataset.json`` (``predict``'s ``"prediction"``, what the
    doses were predicted with; readers keep what they do not know in :attr:`Cache.info`).
    A patient on a sheared grid (:func:`dosepred.geometry.shear_problem`) is refused.
    """
    if version not in READ_VERSIONS:
        raise CacheError(f"unknown cache format version {version} (known: {READ_VERSIONS})")
    if isinstance(patients, Patient):  # one patient: was TypeError 'Patient' object is not iterable
        patients = [patients]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    info: dict[str, Any] = {"format": "dosepred-cache", "version": version, "source": source,
                            "rois": roi_set.to_dicts() if roi_set else None, "patients": entries}
    assert not set(info) & set(record or {}), "a record may not replace the cache's own entries"
    info.update(record or {})
    seen: set[str] = set()
    it: Iterable[Patient] = patients
    if progress:
        it = track(patients, description="writing cache")
    with ExitStack() as staged:  # every patient file is renamed into place at its end, or none is
        for p in it:
            if not isinstance(p, Patient):  # a (patient, dose) pair: AttributeError 'tuple' ... 'roi_set'
                raise CacheError(f"write_cache writes Patients, got a {type(p).__name__} after {len(seen)} "
                                 "patient(s) (a predicted dose: patient.with_dose(dose))")
            if info["rois"] is None:
                info["rois"] = p.roi_set.to_dicts()
                roi_set = p.roi_set
            elif p.roi_set != roi_set:
                raise CacheError(f"patient {p.id}: ROI set {p.roi_set.names} differs from the cache's "
                                 f"{roi_set.names if roi_set else None}")
            if p.id in seen:
                raise CacheError(f"patient id {p.id} appears twice")
            clash = case_clash((*seen, p.id))
            if clash:
                raise CacheError(f"patient ids {clash[0]!r} and {clash[1]!r} differ only in case (or Unicode "
                                 f"form): {CASE_CLASH_WHY}")
            problem = None if p.geometry is None else shear_problem(p.geometry)
            if problem:
                raise CacheError(f"patient {p.id}: {problem}")
            seen.add(p.id)
            fname = f"{p.id}.npz"
            save_patient(p, staged.enter_context(atomic_path(out / fname)), version)
            entries.append(_entry(p, fname))
        if not entries:
            raise CacheError(f"no patients to write to {out}")
    write_json(out / DATASET_JSON, info)
    return Cache.open(out)


def is_cache(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a dosepred cache folder (it holds ``dataset.json``)."""
    return (Path(path) / DATASET_JSON).is_file()
