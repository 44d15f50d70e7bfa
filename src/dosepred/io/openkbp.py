"""Read and write the native OpenKBP layout (sparse CSV per array, one folder per patient).

Format (OpenKBP, Babier et al., Med Phys 48(9), 2021; ababier/open-kbp): each CSV has the header
``,data`` and rows ``flat_index,value``
(value empty for masks); flat indices are C order on a 128^3 grid. ``ct.csv`` holds HU + 1024;
dosepred stores HU (int16) and adds 1024 back on export. ``dose.csv`` uses the possible-dose mask's
indices and may hold explicit zeros; ``voxel_dimensions.csv`` holds three floats (mm).

Parsing uses pandas' C reader, so reading is dominated by disk and tokenising, not Python loops.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import MAX_DOSE_GY
from ..errors import DosepredError, InputError
from ..fsutil import atomic_dir, broken_links, broken_links_text, write_text
from ..geometry import OPENKBP_AXES, Geometry
from ..patient import Patient, RoiSet, file_name_problem
from .roi_names import check_names_apart

#: The format's name: its row in :mod:`dosepred.io.formats` is named so, and the reader records it in
#: ``meta["format"]``.
FORMAT_NAME = "openkbp"
GRID = (128, 128, 128)
CT_OFFSET = 1024  # OpenKBP CT values are HU + 1024
REQUIRED = ("ct.csv", "dose.csv", "possible_dose_mask.csv", "voxel_dimensions.csv")
_ARRAY_FILES = {"ct.csv", "dose.csv", "possible_dose_mask.csv", "voxel_dimensions.csv"}


class OpenKBPFormatError(DosepredError, ValueError):
    """A file of an OpenKBP patient folder does not follow the format."""


class UnknownRoiWarning(UserWarning):
    pass


def parse_index_only(data: bytes) -> np.ndarray | None:
    """Flat indices of an index-only sparse CSV (``,data`` then rows ``<digits>,``, LF endings),
    parsed with a few vectorised numpy passes (about 2x faster than pandas on mask files); None
    when the text deviates in any way from that layout (the caller then uses the general parser)."""
    head = data.find(b"\n")
    if head < 0 or data[:head].rstrip(b"\r") != b",data":
        return None
    b = np.frombuffer(data, dtype=np.uint8)[head + 1:]
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] != 10:
        return None
    nl = np.flatnonzero(b == 10)
    comma = nl - 1
    starts = np.empty_like(nl)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    length = comma - starts
    if length.min() < 1 or length.max() > 18 or (b[comma] != 44).any():
        return None
    dig = b - np.uint8(48)
    if int(np.count_nonzero(dig < 10)) != b.size - 2 * nl.size:  # anything but digits, ',' and LF
        return None
    out = np.zeros(nl.size, dtype=np.int64)
    pos = starts.copy()
    for k in range(int(length.max())):
        live = length > k
        if live.all():
            out *= 10
            out += dig[pos]
        else:
            out[live] = out[live] * 10 + dig[pos[live]]
        pos += 1
    return out


def _check_unique(idx: np.ndarray, path: Path, pid: str) -> None:
    """Each voxel at most once: a repeated flat index would let the later row silently win."""
    if idx.size < 2 or bool((idx[1:] > idx[:-1]).all()):  # the usual, sorted case: one cheap pass
        return
    order = np.argsort(idx, kind="stable")
    s = idx[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
        raise OpenKBPFormatError(f"patient {pid}: {path}: flat index {int(s[dup[0]])} appears twice (rows "
                                 f"{first + 2} and {second + 2}); each voxel may be listed once")


def read_sparse(path: Path, with_values: bool, grid: tuple[int, ...] = GRID,
                 pid: str = "?") -> tuple[np.ndarray, np.ndarray | None]:
    """Return (flat indices int64, values float64 or None) of one sparse OpenKBP CSV."""
    import pandas as pd

    size = int(np.prod(grid))
    if not with_values:  # mask and ROI files: a strict numpy fast path, pandas for anything else
        try:
            fast = parse_index_only(path.read_bytes())
        except OSError:
            fast = None
        if fast is not None:
            if len(fast) and fast.max() >= size:
                bad = int(np.flatnonzero(fast >= size)[0])
                g = "x".join(map(str, grid))
                raise OpenKBPFormatError(f"patient {pid}: {path} row {bad + 2}: flat index {fast[bad]} "
                                         f"is out of range for a {g} grid (0..{size - 1})")
            _check_unique(fast, path, pid)
            return fast, None
    try:
        df = pd.read_csv(path, header=0, index_col=None, dtype={0: "float64"},
                         engine="c")
    except pd.errors.EmptyDataError:
        raise OpenKBPFormatError(f"patient {pid}: {path} is empty (expected header ',data' and "
                                 "rows 'flat_index,value')") from None
    except (ValueError, pd.errors.ParserError) as e:
        raise OpenKBPFormatError(f"patient {pid}: {path} is not a valid OpenKBP sparse CSV "
                                 f"(rows 'flat_index,value'): {str(e).strip()}") from None
    if df.shape[1] != 2:
        raise OpenKBPFormatError(f"patient {pid}: {path} has {df.shape[1]} columns, expected 2 "
                                 "(flat_index,value)")
    first = str(df.columns[0]).strip()
    if first and _is_number(first):  # no header: its first voxel was taken for the header and lost
        with path.open("rb") as fh:
            line = fh.readline().decode("utf-8", "replace").strip()
        raise OpenKBPFormatError(f"patient {pid}: {path} row 1 is {line!r}, a voxel, not the header ',data': "
                                 "a sparse CSV starts with the header line (without it, the first voxel "
                                 "would be dropped)")
    idx_col = df.iloc[:, 0].to_numpy()
    if len(idx_col) and (np.isnan(idx_col).any() or (idx_col != np.floor(idx_col)).any()):
        bad = int(np.flatnonzero(np.isnan(idx_col) | (idx_col != np.floor(idx_col)))[0])
        raise OpenKBPFormatError(f"patient {pid}: {path} row {bad + 2}: flat index is not an integer")
    idx = idx_col.astype(np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= size):
        bad = int(np.flatnonzero((idx < 0) | (idx >= size))[0])
        raise OpenKBPFormatError(f"patient {pid}: {path} row {bad + 2}: flat index {idx[bad]} is out of "
                                 f"range for a {'x'.join(map(str, grid))} grid (0..{size - 1})")
    _check_unique(idx, path, pid)
    col = df.iloc[:, 1]
    if not with_values:
        _check_mask_values(col, path, pid)
        _check_whole(path, len(df) + 1, pid, values=False)
        return idx, None
    if not pd.api.types.is_numeric_dtype(col.dtype):  # text (object or pandas StringDtype)
        vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        bad_rows = np.flatnonzero(np.isnan(vals) & col.notna().to_numpy())
        if len(bad_rows):
            r = int(bad_rows[0])
            raise OpenKBPFormatError(f"patient {pid}: {path} row {r + 2}: value {col.iloc[r]!r} "
                                     "is not a number")
    else:
        vals = col.to_numpy(dtype=np.float64)
    if np.isnan(vals).any():
        r = int(np.flatnonzero(np.isnan(vals))[0])
        raise OpenKBPFormatError(f"patient {pid}: {path} row {r + 2}: value is missing (truncated file?) "
                                 "or NaN")
    if np.isinf(vals).any():
        r = int(np.flatnonzero(np.isinf(vals))[0])
        raise OpenKBPFormatError(f"patient {pid}: {path} row {r + 2}: value {vals[r]} is not finite")
    _check_whole(path, len(df) + 1, pid, values=True)
    return idx, vals


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_whole(path: Path, last_row: int, pid: str, values: bool) -> None:
    """Refuse a sparse CSV cut short inside its last row (a copy interrupted, a full disk) where the cut
    left a number, which would be read whole, the cut value or index taken for the row's: a value file
    (dose, CT, prediction) whose last row does not end with a line break (OpenKBP's files, dosepred's
    and every CSV writer end each row with one), an index-only file (mask, ROI) whose unterminated last
    row lacks the comma its other rows end with (``7,`` without a line break is whole)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 256))
        tail = fh.read()
    if not tail or tail.endswith((b"\n", b"\r")):
        return
    lines = tail.split(b"\n")
    if not values and (lines[-1].endswith(b",") or len(lines) < 2
                       or not lines[-2].rstrip(b"\r").endswith(b",")):
        return
    raise OpenKBPFormatError(f"patient {pid}: {path} does not end with a line break after its last row "
                             f"(row {last_row}): truncated (a copy cut short)? Its last "
                             f"{'value' if values else 'index'} cannot be trusted; copy the file again, or, "
                             "if it is whole (written by a tool ending its last row without a line break), "
                             "add one at its end")


def check_dose_values(path: Path, vals: np.ndarray, pid: str) -> None:
    """Refuse a dose file (reference ``dose.csv`` or a predicted ``pt_N.csv``) with a negative value,
    naming its first row: a dose is >= 0 Gy."""
    if len(vals) and vals.min() < 0:
        neg = np.flatnonzero(vals < 0)
        r = int(neg[0])
        raise OpenKBPFormatError(f"patient {pid}: {path} holds negative doses ({len(neg)} row(s), the first "
                                 f"row {r + 2}: {vals[r]:g} Gy); a dose must be >= 0 Gy")


def check_plan_dose_values(path: Path, vals: np.ndarray, pid: str) -> None:
    """A patient's ``dose.csv``: >= 0 Gy (:func:`check_dose_values`) and at most ``MAX_DOSE_GY``, as
    an RTDOSE's or a NIfTI dose: a dose written in cGy (7000 for 70 Gy) is no dose in Gy."""
    check_dose_values(path, vals, pid)
    if len(vals) and float(vals.max()) > MAX_DOSE_GY:
        raise OpenKBPFormatError(f"patient {pid}: {path}: maximum dose {float(vals.max()):.6g} Gy is not a "
                                 "radiotherapy dose (a dose in cGy? OpenKBP doses are Gy)")


def _check_mask_values(col: Any, path: Path, pid: str) -> None:
    """A mask or ROI file lists the voxels inside; its ``data`` value is empty (as OpenKBP writes
    it) or 1. Any other value (0: a voxel listed as inside with value 0; 2; text) is refused, naming
    the first such row: counting it as inside, or as outside, would be a guess."""
    import pandas as pd

    vals = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(col.notna().to_numpy() & ~(vals == 1))
    if len(bad):
        r = int(bad[0])
        raise OpenKBPFormatError(f"patient {pid}: {path} row {r + 2}: value {col.iloc[r]} in the data "
                                 f"column ({len(bad)} such row(s)); a mask or ROI file lists the voxels "
                                 "inside, each with an empty value (or 1)")


def empty_roi_message(pid: str, path: Path) -> str:
    return f"patient {pid}: ROI file {path} is empty (no voxels); delete it if the ROI was not contoured"


def read_spacing(path: Path, pid: str) -> tuple[float, float, float]:
    if not path.is_file():
        raise OpenKBPFormatError(f"patient {pid}: {path} is missing (expected three voxel sizes in mm)")
    try:
        v = np.loadtxt(path, dtype=np.float64, ndmin=1, encoding="utf-8-sig")  # a byte-order mark: none
    except ValueError as e:
        raise OpenKBPFormatError(f"patient {pid}: {path}: expected three voxel sizes in mm ({e})") from None
    if v.shape != (3,) or not np.all(v > 0):
        raise OpenKBPFormatError(f"patient {pid}: {path}: expected three positive voxel sizes in mm, "
                                 f"got {v.tolist()}")
    spacing = (float(v[0]), float(v[1]), float(v[2]))
    why = implausible_extent(spacing)
    if why:
        raise OpenKBPFormatError(f"patient {pid}: {path}: voxel sizes {v.tolist()} {why}")
    return spacing


#: the extent (mm) of a 128-voxel OpenKBP axis that a head-and-neck CT can have: OpenKBP's own voxel
#: sizes (2.7-5.4 mm in-plane, 1.5-3.3 mm slices, train and validation) span 190-700 mm; in cm 19-70 mm
EXTENT_MM = (80.0, 1500.0)


def implausible_extent(spacing: tuple[float, float, float]) -> str | None:
    """Why a 128^3 grid with these voxel sizes cannot be a head-and-neck CT in mm (None if it can):
    voxel sizes written in cm (0.39) or m would place every ROI and dose-volume metric at 1/10 or
    1/1000 of its size (D2cc, V-metrics in cc), ones in micrometres at 1000 times."""
    ext = [GRID[k] * s for k, s in enumerate(spacing)]
    lo, hi = EXTENT_MM
    if min(ext) < lo:
        return (f"give a {min(ext):.3g} mm wide grid ({GRID[0]} voxels), smaller than a head (at least "
                f"{lo:g} mm): voxel sizes must be in mm (OpenKBP: about 3.9, 3.9, 2.5), not cm or m")
    if max(ext) > hi:
        return (f"give a {max(ext):.0f} mm wide grid ({GRID[0]} voxels), wider than any CT "
                f"(at most {hi:g} mm): voxel sizes must be in mm (OpenKBP: about 3.9, 3.9, 2.5)")
    return None


def roi_files(folder: Path, roi_set: RoiSet, pid: str) -> dict[str, Path]:
    """ROI name -> its file in an OpenKBP patient folder (the CSV files other than the array files),
    in file-name order; a CSV file named after no ROI of ``roi_set`` is ignored with an
    :class:`UnknownRoiWarning` naming it (every reader of a patient folder warns alike). ``.CSV`` is a
    CSV file too (as on Windows, whose names ignore case): ``PTV70.CSV`` was skipped without a word."""
    out: dict[str, Path] = {}
    for f in _csv_files(folder):
        if f.name in _ARRAY_FILES or f.name.startswith("."):  # a macOS copy's AppleDouble ._Brainstem.csv
            continue
        if f.stem not in roi_set:
            same = [n for n in roi_set.names if n.casefold() == f.stem.casefold()]  # BRAINSTEM.CSV
            fix = f" (the names are case-sensitive: rename it {same[0]}.csv)" if same else ""
            warnings.warn(f"patient {pid}: {f} is not a known ROI ({', '.join(roi_set.names)}); ignored{fix}",
                          UnknownRoiWarning, stacklevel=3)
            continue
        out[f.stem] = f
    return out


def _csv_files(folder: Path) -> list[Path]:
    """The files of ``folder`` named ``*.csv`` in any case, in name order."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() == ".csv")


def _case_renames(folder: Path, roi_set: RoiSet) -> list[str]:
    """``BRAINSTEM.CSV -> Brainstem.csv`` for each ROI file of ``folder`` named after an ROI of
    ``roi_set`` in another case (which is no ROI file: the names are case-sensitive)."""
    names = {n.casefold(): n for n in roi_set.names}
    return [f"{f.name} -> {names[f.stem.casefold()]}.csv" for f in _csv_files(folder)
            if f.stem not in roi_set and f.stem.casefold() in names]


def _lacks(folder: Path, pid: str, names: list[str], roi_set: RoiSet) -> OpenKBPFormatError:
    """The error of a patient folder lacking the files ``names``, naming those it holds in another case
    (CT.CSV: copied from Windows or a DOS tool; the names are case-sensitive), and its ROI files so
    named (BRAINSTEM.CSV, which would be ignored once the others are renamed)."""
    other = sorted(f.name for f in folder.iterdir() if f.name.lower() in names)
    rois = _case_renames(folder, roi_set)
    also = f", and the ROI files: {', '.join(rois)}" if rois else ""
    hint = f" (it holds {', '.join(other)}: the names are case-sensitive, rename them{also})" if other else ""
    return OpenKBPFormatError(f"patient {pid}: {folder} lacks {', '.join(names)}{hint}")


def read_patient(folder: str | os.PathLike, roi_set: RoiSet | None = None,
                 require_dose: bool = True) -> Patient:
    """Read one OpenKBP patient folder (``.../pt_N``).

    Missing ROI files are recorded in ``Patient.missing_rois`` (and not fatal); an unknown ROI file
    raises a warning naming it and is ignored; an empty ROI file is an error.
    """
    folder = Path(folder)
    pid = folder.name
    roi_set = roi_set or RoiSet.openkbp()
    if folder.is_file():
        raise OpenKBPFormatError(f"patient folder {folder} is a file, not a folder (give a pt_* patient "
                                 "folder or a folder of them)")
    if not folder.is_dir():
        raise FileNotFoundError(f"patient folder {folder} does not exist")
    broken = broken_links(_csv_files(folder))
    if broken:  # an array or ROI file that is not there: the ROI would read as not contoured
        raise OpenKBPFormatError(f"patient {pid}: {broken_links_text(broken)}")
    need = [f for f in REQUIRED if (f != "dose.csv" or require_dose)]
    missing_files = [f for f in need if not (folder / f).is_file()]
    if missing_files:
        raise _lacks(folder, pid, missing_files, roi_set)
    spacing = read_spacing(folder / "voxel_dimensions.csv", pid)
    size = int(np.prod(GRID))

    # Arrays are filled at the listed (sparse) indices only: dense passes over the 2M-voxel grid cost
    # as much as parsing, so checks run on the parsed values and ROI bits are set in place.
    idx, vals = read_sparse(folder / "ct.csv", True, pid=pid)
    assert vals is not None
    if (vals != np.rint(vals)).any():
        raise OpenKBPFormatError(f"patient {pid}: {folder / 'ct.csv'} holds non-integer CT values")
    lo, hi = -32768 + CT_OFFSET, 32767 + CT_OFFSET
    if len(vals) and (vals.min() < lo or vals.max() > hi):
        r = int(np.flatnonzero((vals < lo) | (vals > hi))[0])
        raise OpenKBPFormatError(f"patient {pid}: {folder / 'ct.csv'} row {r + 2}: CT value {vals[r]:g} is "
                                 f"outside {lo}..{hi} (HU + {CT_OFFSET}, stored as int16)")
    ct = np.full(size, -CT_OFFSET, dtype=np.int16)
    ct[idx] = vals - CT_OFFSET
    ct = ct.reshape(GRID)

    midx, _ = read_sparse(folder / "possible_dose_mask.csv", False, pid=pid)
    mask = np.zeros(size, dtype=bool)
    mask[midx] = True

    dose = None
    if (folder / "dose.csv").is_file():
        didx, dvals = read_sparse(folder / "dose.csv", True, pid=pid)
        assert dvals is not None
        check_plan_dose_values(folder / "dose.csv", dvals, pid)
        d = np.zeros(size, dtype=np.float32)
        d[didx] = dvals
        dose = d.reshape(GRID)

    codes = np.zeros(size, dtype=roi_set.dtype)
    present: set[str] = set()
    for name, f in roi_files(folder, roi_set, pid).items():
        ridx, _ = read_sparse(f, False, pid=pid)
        if len(ridx) == 0:
            raise OpenKBPFormatError(empty_roi_message(pid, f))
        codes[ridx] |= codes.dtype.type(1) << codes.dtype.type(roi_set.index(name))
        present.add(name)
    missing = tuple(n for n in roi_set.names if n not in present)
    return Patient(pid, ct, codes.reshape(GRID), roi_set, spacing, mask.reshape(GRID), dose, missing,
                   {"source": str(folder.resolve()), "format": FORMAT_NAME}, Geometry.openkbp(GRID, spacing))


@dataclass
class SparsePatient:
    """One OpenKBP patient folder as the voxel lists of its CSV files, without the CT and without
    any dense array (:func:`read_sparse_patient`; what evaluation reads). Indices are flat, C order
    on ``shape``."""

    id: str
    shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    roi_set: RoiSet
    #: the possible-dose mask's voxels
    mask_index: np.ndarray
    #: the voxels ``dose.csv`` lists (the mask's, maybe with explicit zeros) and their doses (Gy)
    dose_index: np.ndarray
    dose_values: np.ndarray
    #: (bit in ``roi_set``, voxels) of each ROI with a file, in ``roi_set`` order
    rois: list[tuple[int, np.ndarray]]
    missing_rois: tuple[str, ...]
    meta: dict[str, Any]


def read_sparse_patient(folder: str | os.PathLike, roi_set: RoiSet | None = None) -> SparsePatient:
    """Read the dose, possible-dose mask, voxel size and ROI files of one OpenKBP patient folder as
    voxel lists (:class:`SparsePatient`); ``ct.csv`` is not read. ``dose.csv`` is required; an ROI
    without a file is missing; an empty ROI file is an error (as :func:`read_patient`)."""
    folder = Path(folder)
    pid = folder.name
    rs = roi_set or RoiSet.openkbp()
    for req in ("dose.csv", "possible_dose_mask.csv", "voxel_dimensions.csv"):
        if not (folder / req).is_file():
            raise _lacks(folder, pid, [req], rs)
    spacing = read_spacing(folder / "voxel_dimensions.csv", pid)
    midx, _ = read_sparse(folder / "possible_dose_mask.csv", False, pid=pid)
    didx, dvals = read_sparse(folder / "dose.csv", True, pid=pid)
    assert dvals is not None
    check_plan_dose_values(folder / "dose.csv", dvals, pid)
    rois: list[tuple[int, np.ndarray]] = []
    missing: list[str] = []
    files = roi_files(folder, rs, pid)
    for k, name in enumerate(rs.names):
        rf = files.get(name)
        if rf is None or not rf.is_file():
            missing.append(name)
            continue
        ridx, _ = read_sparse(rf, False, pid=pid)
        if len(ridx) == 0:  # as read_patient does: an empty file is an error, not a missing ROI
            raise OpenKBPFormatError(empty_roi_message(pid, rf))
        rois.append((k, ridx))
    return SparsePatient(pid, GRID, spacing, rs, midx, didx, dvals.astype(np.float32), rois, tuple(missing),
                         {"source": str(folder), "format": FORMAT_NAME})


def _pt_key(p: Path) -> tuple[int, str]:
    m = re.search(r"(\d+)$", p.name)
    return (int(m.group(1)) if m else 1 << 30, p.name)


def patient_folders(src: str | os.PathLike) -> list[Path]:
    """The ``pt_*`` folders under ``src`` (or ``src`` itself if it is one), and its other sub-folders
    that hold one of the patient files (:data:`REQUIRED`), in numeric order."""
    src = Path(src)
    if src.is_file():
        raise OpenKBPFormatError(f"OpenKBP folder {src} is a file, not a folder (give a pt_* patient folder "
                                 "or a folder of them)")
    if not src.is_dir():
        raise FileNotFoundError(f"OpenKBP folder {src} does not exist")
    if (src / "ct.csv").is_file():
        return [src]
    entries = [p for p in src.iterdir() if p.name.startswith("pt_")]
    broken = broken_links(entries)
    if broken:  # a patient folder that is not there would be left out of the cohort without a word
        raise OpenKBPFormatError(f"OpenKBP folder {src}: {broken_links_text(broken)}")
    # a patient folder named otherwise (PT_7, case3) is still one: it holds the patient's CSV files
    # (read_patient then names any that it lacks); it was left out without a word, as was one whose
    # files are named in upper case (PT_7/CT.CSV, copied by a DOS or Windows tool)
    entries += [p for p in src.iterdir() if not p.name.startswith(("pt_", ".")) and p.is_dir()
                and any(f.name.lower() in REQUIRED for f in p.iterdir())]
    folders = sorted((p for p in entries if p.is_dir()), key=_pt_key)
    if not folders:
        raise OpenKBPFormatError(f"{src} holds no OpenKBP patient folders (pt_*)")
    return folders


def read_folder(src: str | os.PathLike, roi_set: RoiSet | None = None,
                require_dose: bool = True) -> Iterator[Patient]:
    """Yield each patient of a folder of ``pt_*`` patient folders."""
    for f in patient_folders(src):
        yield read_patient(f, roi_set, require_dose)


def is_openkbp_folder(src: str | os.PathLike) -> bool:
    """Whether ``src`` is one OpenKBP patient folder (``ct.csv``) or a folder of ``pt_*`` ones."""
    src = Path(src)
    if (src / "ct.csv").is_file():
        return True
    return src.is_dir() and any(p.name.startswith("pt_") and p.is_dir() for p in src.iterdir())


# ------------------------------------------------------------------------------------------ writing

def _fmt(values: np.ndarray) -> list[str]:
    """Shortest text that parses back to the same float32 value (e.g. 19.835, 759.0)."""
    v = values.astype(np.float32)
    return [np.format_float_positional(x, unique=True, trim="0") for x in v]


def _write_sparse(path: Path, idx: np.ndarray, values: list[str] | None) -> None:
    if values is None:
        body = "".join(f"{i},\n" for i in idx.tolist())
    else:
        body = "".join(f"{i},{v}\n" for i, v in zip(idx.tolist(), values, strict=True))
    write_text(path, ",data\n" + body)


def write_dose_csv(path: str | os.PathLike, dose: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Write a dose in the OpenKBP prediction format (``pt_N.csv``): rows at the mask's indices
    (all non-zero voxels when no mask is given), plus any non-zero dose outside the mask."""
    dose = np.asarray(dose, dtype=np.float32).ravel()
    sel = dose != 0
    if mask is not None:
        sel |= np.asarray(mask, dtype=bool).ravel()
    idx = np.flatnonzero(sel)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_sparse(path, idx, _fmt(dose[idx]))


def write_patient(p: Patient, out_dir: str | os.PathLike) -> Path:
    """Write a patient in the native OpenKBP layout ``out_dir/<id>/`` (written atomically).

    OpenKBP files have no position or orientation: arrays are brought into the OpenKBP axis
    convention (a permutation/flip of axes, see :mod:`dosepred.geometry`) and the origin is dropped.
    An oblique grid is an error (it would need resampling)."""
    p = to_openkbp_axes(p)
    if p.shape != GRID:
        raise InputError(f"patient {p.id}: OpenKBP export needs a {GRID} grid, got {p.shape}")
    why = implausible_extent(p.spacing)
    if why:  # the files would be refused when read back
        raise InputError(f"patient {p.id}: OpenKBP export of voxel sizes {list(p.spacing)} mm: they {why}")
    for name in p.present_rois:
        _check_roi_file_name(p.id, name)
    check_names_apart(p.id, p.present_rois, "an OpenKBP ROI file (<name>.csv)",
                      "rename one, or export as NIfTI (--roi-format codes keeps any names) or DICOM")
    final = Path(out_dir) / p.id
    with atomic_dir(final) as tmp:
        ct = p.require_ct("OpenKBP export").astype(np.int32).ravel() + CT_OFFSET
        idx = np.flatnonzero(ct)
        _write_sparse(tmp / "ct.csv", idx, [f"{v}.0" for v in ct[idx].tolist()])
        assert p.possible_dose_mask is not None
        mask = p.possible_dose_mask.ravel()
        _write_sparse(tmp / "possible_dose_mask.csv", np.flatnonzero(mask), None)
        if p.dose is not None:
            write_dose_csv(tmp / "dose.csv", p.dose, p.possible_dose_mask)
        np.savetxt(tmp / "voxel_dimensions.csv", np.asarray(p.spacing, dtype=np.float64))
        for name in p.present_rois:
            _write_sparse(tmp / f"{name}.csv", np.flatnonzero(p.mask(name).ravel()), None)
    return final


def _check_roi_file_name(pid: str, name: str) -> None:
    """Refuse, before anything is written, an ROI name that cannot name its file ``<name>.csv`` as it
    is: a slash (a folder), or a patient file's name in any case ("dose" was written over dose.csv
    without a word; "CT" is ct.csv on a case-insensitive disk)."""
    clash = next((f for f in _ARRAY_FILES if f.lower() == f"{name}.csv".lower()), None)
    why = file_name_problem(name) or (f"its file would be the patient's {clash}" if clash else None)
    if why:
        raise InputError(f"patient {pid}: ROI {name!r} cannot name an OpenKBP ROI file (<name>.csv): {why}; "
                         "rename the ROI, or export as NIfTI (--roi-format codes keeps any name) or DICOM")


def to_openkbp_axes(p: Patient) -> Patient:
    """``p`` with its arrays in the OpenKBP axis convention (itself when already so)."""
    assert p.geometry is not None
    if not p.geometry.is_axis_aligned(1e-4):
        raise InputError(f"patient {p.id}: an oblique grid ({p.geometry.describe()}) cannot be written in "
                         "OpenKBP layout without resampling")
    if p.geometry.axis_letters() == OPENKBP_AXES:
        return p
    return p.reoriented(OPENKBP_AXES)


def read_dose_csv(path: str | os.PathLike, grid: tuple[int, ...] = GRID) -> np.ndarray:
    """Read a prediction ``pt_N.csv`` into a dense float32 dose."""
    path = Path(path)
    idx, vals = read_sparse(path, True, grid=grid, pid=path.stem)
    assert vals is not None
    check_dose_values(path, vals, path.stem)
    d = np.zeros(int(np.prod(grid)), dtype=np.float32)
    d[idx] = vals
    return d.reshape(grid)
