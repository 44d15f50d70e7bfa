"""Data splits: named lists of patient ids (train / val / test) stored in one JSON file.

File format::

    {"splits": {"train": ["pt_1", ...], "val": [...], "test": [...]},
     "method": "random" | "ids" | "temporal", "seed": 0 | null, ...}

Three ways to make one:

- :func:`random_split`   seeded shuffle cut by fractions (``0.7,0.15,0.15``) or counts (``137,37``);
- :func:`ids_split`      lists given by the user (``{"train": [...], "val": [...]}``);
- :func:`temporal_split` by a date per patient (earliest to the first split, latest to the last),
  read from a manifest CSV (an ``id`` column and a date column) or from ``meta["study_date"]``
  (``YYYYMMDD``, as DICOM StudyDate) in the cache.

``random`` and ``temporal`` keep the ids of one patient together when given ``groups`` (``data split``
gives the source's ``patient_id``: an import names two plans of one DICOM PatientID pt_X_1, pt_X_2).

Consumers (train / predict / evaluate) accept ``--split FILE:NAME`` or ``--splits FILE --split NAME``
and call :func:`load_split` (or :func:`parse_split_arg` for the ``FILE:NAME`` form)::

    from dosepred.split import load_split
    ids = load_split("splits.json", "train", cache_ids=cache.ids)   # -> ["pt_1", ...]

This module only manipulates ids; it never reads images.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DosepredError, name_some
from .fsutil import write_json
from .io.cache import Cache

DEFAULT_NAMES = ("train", "val", "test")


class SplitError(DosepredError, ValueError):
    """A split file or split request is invalid."""


class SplitWarning(UserWarning):
    """A split request that leaves patients of the source out of every split (``--ids``)."""


# ------------------------------------------------------------------------------------------- parsing

def parse_fractions(text: str | Sequence[float]) -> list[float]:
    """``"0.7,0.15,0.15"`` -> [0.7, 0.15, 0.15]; counts like ``"137,37"`` are returned as given."""
    if isinstance(text, str):
        bad = SplitError(f"fractions must be comma-separated numbers, got {text!r}")
        parts = text.split(",")
        if not all(t.strip() for t in parts):  # '0.5,,0.5': a blank is a slip, never dropped
            raise bad
        try:
            vals = [float(t) for t in parts]
        except ValueError:
            raise bad from None
    else:
        vals = [float(v) for v in text]
    if not vals or any(v < 0 or not np.isfinite(v) for v in vals):
        raise SplitError(f"fractions must be non-negative numbers, got {text!r}")
    return vals


def _sizes(n: int, parts: Sequence[float], names: Sequence[str] | None = None) -> list[int]:
    """Split sizes for ``n`` ids: fractions summing to 1, or integer counts summing to <= n; a positive
    fraction that rounds to no patient is refused (``names``: the splits', for the message)."""
    parts = list(parts)
    if all(float(p).is_integer() for p in parts) and sum(parts) > 1:
        counts = [int(p) for p in parts]
        if sum(counts) != n:
            raise SplitError(f"split counts {counts} add up to {sum(counts)} but there are {n} patients")
        return counts
    total = sum(parts)
    if abs(total - 1.0) > 1e-6:
        raise SplitError(f"fractions must add up to 1 (or be integer counts), got {parts} (sum {total:g})")
    # largest-remainder rounding so sizes add up to n exactly
    raw = [p * n for p in parts]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(parts)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    empty = [i for i, (p, k) in enumerate(zip(parts, counts, strict=True)) if p > 0 and k == 0]
    if empty:  # a split asked for and written empty is a slip: its consumers would read no patient
        said = ", ".join(repr(names[i]) if names else str(i + 1) for i in empty)
        raise SplitError(f"fractions {', '.join(f'{p:g}' for p in parts)} of {n} patients leave split(s) "
                         f"{said} with no patient; give counts (e.g. 3,1,1) or fewer splits")
    return counts


def _names(names: str | Sequence[str] | None, k: int) -> list[str]:
    if names is None:
        if k > len(DEFAULT_NAMES):
            raise SplitError(f"{k} fractions given: name the splits (e.g. --names a,b,c,d)")
        return list(DEFAULT_NAMES[:k])
    out = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    if len(out) != k:
        raise SplitError(f"{len(out)} split names ({', '.join(out)}) for {k} fractions")
    if len(set(out)) != len(out) or not all(out):
        raise SplitError(f"split names must be unique and non-empty, got {out}")
    return out


# --------------------------------------------------------------------------------------------- makers

def random_split(ids: Sequence[str], fractions: str | Sequence[float] = (0.7, 0.15, 0.15),
                 names: str | Sequence[str] | None = None, seed: int = 0,
                 groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Seeded random split; the same ids (in any order: they are shuffled from their natural order,
    pt_2 before pt_10), fractions and seed give the same lists. ``groups`` (id -> key, e.g. the DICOM
    PatientID of each plan: an import names two plans of one patient pt_X_1, pt_X_2) keeps the ids of
    one key in one split: the keys are shuffled, each lands whole in the split its first id falls in
    (sizes then miss the fractions by less than a group); without groups nothing changes."""
    ids = sorted(_unique(ids), key=lambda i: (natural_key(i), i))  # ties (pt_01, pt_1) by the id itself
    fr = parse_fractions(fractions)
    nm = _names(names, len(fr))
    sizes = _sizes(len(ids), fr, nm)
    if seed < 0:
        raise SplitError(f"seed must be >= 0, got {seed}")
    units = _group(ids, groups)  # in the ids' natural order: singletons are the ids themselves
    perm = np.random.default_rng(seed).permutation(len(units))
    cut = _cut([units[i] for i in perm], sizes, nm)
    splits = {name: sorted(v, key=natural_key) for name, v in zip(nm, cut, strict=True)}
    obj = {"splits": splits, "method": "random", "seed": int(seed), "fractions": fr}
    return _grouped(obj, units)


def ids_split(lists: Mapping[str, Sequence[str]], known_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Splits given by the user; checks that no id is in two splits and (if given) that ids exist."""
    splits = {str(k): [str(i) for i in v] for k, v in lists.items()}
    if not splits:
        raise SplitError("no split lists given")
    seen: dict[str, str] = {}
    for name, lst in splits.items():
        for i in lst:
            if i in seen and seen[i] != name:
                raise SplitError(f"patient {i} is in both split {seen[i]!r} and split {name!r}")
            seen[i] = name
        if len(set(lst)) != len(lst):
            raise SplitError(f"split {name!r} lists a patient twice")
    if known_ids is not None:
        check_known(splits, known_ids, "the cache")
    return {"splits": splits, "method": "ids", "seed": None}


def temporal_split(dates: Mapping[str, str], fractions: str | Sequence[float] = (0.8, 0.2),
                   names: str | Sequence[str] | None = None,
                   groups: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Earliest patients to the first split, latest to the last; ``dates`` maps id -> date.

    Two fractions default to the names ``train, test`` (the paper's 137 / 37 split), three to
    ``train, val, test``.
    Dates are ``YYYYMMDD`` or ISO ``YYYY-MM-DD`` (time of day ignored); ties keep id order, but one date
    for all patients (an anonymiser's) is refused: the cut would be by id alone.
    ``groups`` (id -> key, as :func:`random_split`): the ids of one key go together, at the place of
    the earliest of them (a patient's later re-plan never tests a model trained on its first plan).
    """
    if not dates:
        raise SplitError("no dates given for a temporal split")
    parsed = {pid: _parse_date(d, pid) for pid, d in dates.items()}
    order = sorted(parsed, key=lambda pid: (parsed[pid], natural_key(pid), pid))
    fr = parse_fractions(fractions)
    nm = _names(names if names is not None or len(fr) != 2 else ("train", "test"), len(fr))
    sizes = _sizes(len(order), fr, nm)
    one = set(parsed.values())
    if len(one) == 1 and sum(k > 0 for k in sizes) > 1:  # the cut would be by id alone, not by time
        raise SplitError(f"all {len(parsed)} patients have the same date {one.pop()}: a temporal split would "
                         "order them by id only (dates replaced by an anonymiser?); give --manifest FILE "
                         "--date-column COL with the real dates, or split with --random")
    units = _group(order, groups)  # a patient's plans at its earliest plan's place
    cut = _cut(units, sizes, nm)
    splits = dict(zip(nm, cut, strict=True))
    ranges = {n: [min(parsed[i] for i in v), max(parsed[i] for i in v)] for n, v in splits.items() if v}
    obj = {"splits": splits, "method": "temporal", "seed": None, "fractions": fr, "date_ranges": ranges}
    return _grouped(obj, units)


def dates_from_manifest(path: str | os.PathLike, date_column: str, id_column: str = "id") -> dict[str, str]:
    """id -> date from a CSV manifest with an ``id`` column and ``date_column``, as Excel saves one:
    UTF-8 (a byte-order mark read as none) or UTF-16 with its mark, separated by ',', ';' (a European
    locale) or tabs (the header line's most frequent), column names matched whatever their case and
    the spaces around them, cells stripped, rows of empty cells skipped. A date that is not
    ``YYYYMMDD`` / ``YYYY-MM-DD`` is refused naming the file and row (``15.01.2020``, ``1/15/2020``:
    a locale's form, whose day and month cannot be told apart in general)."""
    import csv
    import io

    path = Path(path)
    if not path.is_file():
        raise SplitError(f"manifest {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
    except UnicodeDecodeError as e:
        raise SplitError(f"manifest {path} is not UTF-8 text ({e}); save it as 'CSV UTF-8'") from None
    sep = max(",;\t", key=text.split("\n", 1)[0].count)  # ',' on a tie (a header of one column)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=sep))
    except csv.Error as e:
        raise SplitError(f"manifest {path} is not a readable CSV: {e}") from None
    if not rows:
        raise SplitError(f"manifest {path} is not a readable CSV: it is empty (expected a header line naming "
                         f"the {id_column!r} and {date_column!r} columns, then a row per patient)")
    header = [h.strip() for h in rows[0]]
    cols = []
    for col in (id_column, date_column):
        same = [k for k, h in enumerate(header) if h.casefold() == col.strip().casefold()]
        if len(same) != 1:
            raise SplitError(f"manifest {path} has {'no' if not same else 'more than one'} column {col!r} "
                             f"(columns: {', '.join(header)})")
        cols.append(same[0])
    out: dict[str, str] = {}
    for row, cells in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in cells]
        if any(cells[len(header):]):  # a cell past the header's: columns shifted, never guessed
            raise SplitError(f"manifest {path} row {row} has {len(cells)} cells, its header {len(header)} "
                             "columns: name the extra column in the header, or clear its cells")
        if not any(cells):  # an empty line, or a row of empty cells (Excel writes ',,' for one)
            continue
        pid, d = (cells[k] if k < len(cells) else "" for k in cols)
        if not pid:
            raise SplitError(f"manifest {path} row {row}: empty {id_column!r}")
        if pid in out:
            raise SplitError(f"manifest {path} row {row}: patient {pid} appears twice")
        if not d:
            raise SplitError(f"manifest {path} row {row}: patient {pid} has no {date_column!r}")
        try:
            _parse_date(d, pid)
        except SplitError as e:
            raise SplitError(f"manifest {path} row {row}, column {date_column!r}: {e}; format the column as "
                             "yyyy-mm-dd (in Excel: Format Cells, Custom) and save again") from None
        out[pid] = d
    return out


def dates_from_cache(cache_dir: str | os.PathLike, key: str = "study_date") -> dict[str, str]:
    """id -> ``meta[key]`` of every patient of a cache (no image is loaded)."""
    c = Cache.open(cache_dir)
    out, lacking = {}, []
    for e in c.info["patients"]:
        d = (e.get("meta") or {}).get(key)
        if d in (None, ""):
            lacking.append(e["id"])
        else:
            out[e["id"]] = str(d)
    if lacking:
        raise SplitError(f"cache {cache_dir}: patients {name_some(lacking)} have no meta[{key!r}]; "
                         "give --manifest FILE --date-column COL instead")
    return out


def read_id_lists(specs: Sequence[str]) -> dict[str, list[str]]:
    """``--ids`` values: ``name=pt_1,pt_2`` pairs, or one file (JSON ``{"name": [ids]}`` or a split
    file, or text lines ``name: id id ...`` / ``name=id,id``)."""
    lists: dict[str, list[str]] = {}

    def add(name: str, ids: Sequence[str]) -> None:
        name = name.strip()
        if not name:
            raise SplitError("empty split name in --ids")
        lists.setdefault(name, []).extend(i.strip() for i in ids if i.strip())

    for spec in specs:
        if "=" not in spec and Path(spec).is_file():
            try:
                text = Path(spec).read_text(encoding="utf-8-sig")  # a byte-order mark read as none
            except UnicodeDecodeError as e:
                raise SplitError(f"{spec}: not a split file or list of ids (UTF-8 text): {e}") from None
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                obj = obj.get("splits", obj)
                for k, v in obj.items():
                    if not isinstance(v, list):
                        raise SplitError(f"{spec}: split {k!r} must be a list of patient ids")
                    add(k, [str(i) for i in v])
                continue
            for ln, line in enumerate(text.splitlines(), start=1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                sep = ":" if ":" in line else "=" if "=" in line else None
                if sep is None:
                    raise SplitError(f"{spec} line {ln}: expected 'name: id id ...' or 'name=id,id'")
                name, rest = line.split(sep, 1)
                add(name, rest.replace(",", " ").split())
        elif "=" in spec:
            name, rest = spec.split("=", 1)
            add(name, rest.split(","))
        else:
            raise SplitError(f"--ids {spec!r}: expected name=id1,id2 or an existing file")
    return lists


# ------------------------------------------------------------------------------------------- file I/O

def write_split(obj: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a split JSON atomically (temporary name, then rename)."""
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dict(obj))
    return path


def read_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """All splits of a split file: name -> ids."""
    path = Path(path)
    if path.is_dir():
        raise SplitError(f"split file {path} is a folder, not a split JSON file")
    if not path.is_file():
        raise SplitError(f"split file {path} does not exist")
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark read as none
    except UnicodeDecodeError as e:
        raise SplitError(f"split file {path} is not UTF-8 text: {e}") from None
    except json.JSONDecodeError as e:
        raise SplitError(f"split file {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("splits"), dict):
        raise SplitError(f"split file {path} lacks a 'splits' object ({{\"splits\": {{\"train\": [...]}}}})")
    out = {}
    for k, v in obj["splits"].items():
        if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
            raise SplitError(f"split file {path}: split {k!r} must be a list of patient id strings")
        dup = sorted({i for i in v if v.count(i) > 1})
        if dup:  # a patient listed twice is a slip: predicted, trained or kept once, never said
            raise SplitError(f"split file {path}: split {k!r} names {', '.join(map(repr, dup))} more "
                             "than once")
        out[k] = list(v)
    return out


def load_split(path: str | os.PathLike, name: str, cache_ids: Sequence[str] | None = None) -> list[str]:
    """The patient ids of split ``name`` in the split file ``path``.

    Raises :class:`SplitError` (a ValueError) naming the file when the split does not exist (listing
    the ones that do), names no patient, or, when ``cache_ids`` is given (e.g.
    ``Cache.open(dir).ids``), when some ids of the split are not in it. Used by train / predict /
    evaluate for ``--splits FILE --split NAME`` and, through :func:`parse_split_arg`, for
    ``--split FILE:NAME``.
    """
    splits = read_split(path)
    if name not in splits:
        raise SplitError(f"split file {path} has no split {name!r} (it has: {', '.join(splits) or 'none'})")
    ids = splits[name]
    if not ids:  # train --val-split of an empty list trained without validation, best.pt = last.pt
        raise SplitError(f"split file {path}: split {name!r} names no patient; give a split with patients")
    if cache_ids is not None:
        check_known({name: ids}, cache_ids, "the data", path)
    return ids


def parse_split_arg(arg: str, splits_file: str | os.PathLike | None = None) -> tuple[Path, str]:
    """``FILE:NAME`` -> (FILE, NAME); a bare ``NAME`` needs ``splits_file`` (from ``--splits FILE``)."""
    if ":" in arg:
        f, name = arg.rsplit(":", 1)
        if f and name:
            return Path(f), name
    if splits_file is None:
        raise SplitError(f"--split {arg!r}: give FILE:NAME, or --splits FILE together with --split NAME")
    return Path(splits_file), arg


# -------------------------------------------------------------------------------------------- helpers

def _group(ordered: Sequence[str], groups: Mapping[str, str] | None) -> list[list[str]]:
    """``ordered`` ids as units: the ids sharing a non-empty key of ``groups`` together, each unit at
    the place of its first id."""
    units: list[list[str]] = []
    at: dict[str, list[str]] = {}
    for i in ordered:
        key = (groups or {}).get(i) or ""
        if key and key in at:
            at[key].append(i)
            continue
        units.append([i])
        if key:
            at[key] = units[-1]
    return units


def _cut(units: Sequence[Sequence[str]], sizes: Sequence[int], names: Sequence[str]) -> list[list[str]]:
    """Each unit whole into the split its first id falls in by ``sizes`` (of single ids: the slices)."""
    ends = np.cumsum(sizes)
    out: list[list[str]] = [[] for _ in sizes]
    at = 0
    for u in units:
        k = int(np.searchsorted(ends, at, side="right"))
        out[min(k, len(sizes) - 1)].extend(u)
        at += len(u)
    empty = [names[k] for k, (n, v) in enumerate(zip(sizes, out, strict=True)) if n > 0 and not v]
    if empty:
        raise SplitError(f"split(s) {', '.join(map(repr, empty))} would hold no patient once the plans of "
                         "one patient (PatientID) are kept together; give other fractions or counts")
    return out


def groups_apart(splits: Mapping[str, Sequence[str]], groups: Mapping[str, str]) -> str:
    """The keys of ``groups`` whose ids lie in more than one of ``splits``, said (empty if none)."""
    where: dict[str, dict[str, list[str]]] = {}
    for name, lst in splits.items():
        for i in lst:
            if groups.get(i):
                where.setdefault(groups[i], {}).setdefault(name, []).append(i)
    apart = [f"{key}: " + ", ".join(f"{' '.join(v)} in {n!r}" for n, v in by.items())
             for key, by in sorted(where.items()) if len(by) > 1]
    return "; ".join(apart[:5]) + (f"; and {len(apart) - 5} more" if len(apart) > 5 else "")


def _grouped(obj: dict[str, Any], units: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``obj`` with, when some patient had several plans, what kept them together."""
    many = [list(u) for u in units if len(u) > 1]
    if many:
        obj["grouped_by"] = "patient_id"
        obj["groups"] = many
    return obj


def _unique(ids: Sequence[str]) -> list[str]:
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise SplitError(f"patient ids are not unique: {', '.join(dup)}")
    if not ids:
        raise SplitError("no patients to split")
    return ids


def check_known(splits: Mapping[str, Sequence[str]], known: Sequence[str], what: str,
                 path: str | os.PathLike | None = None) -> None:
    known_set = set(known)
    for name, lst in splits.items():
        bad = [i for i in lst if i not in known_set]
        if bad:
            where = f"split file {path}: " if path else ""
            raise SplitError(f"{where}split {name!r} names patients not in {what}: "
                             f"{name_some(bad)}")


def natural_key(pid: str) -> tuple:
    """Sort key of an id in natural order (pt_2 before pt_10): random splits and training crops."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", pid))


def _parse_date(d: str, pid: str) -> str:
    """Normalise to ``YYYYMMDD`` (sortable)."""
    s = str(d).strip()
    m = re.fullmatch(r"(\d{4})([-/.]?)(\d{2})\2(\d{2})(.*)", s)
    rest = m.group(5) if m else ""
    # after the day: a time (ISO 'T'/' ', a zone) or, after YYYYMMDD, DICOM DT's HHMMSS.ffffff&ZZXX
    # (or '.0', a number's); a digit more ('202001151', '2020-01-155') is no date, never read as its
    # first eight digits
    dt = r"\.0+|\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?([+-]\d{4})?"
    time = rest[:1] in ("", "T", " ", "Z", "+", "-") or (
        m is not None and not m.group(2) and re.fullmatch(dt, rest) is not None)
    if m is None or not time:
        raise SplitError(f"patient {pid}: date {d!r} is not YYYYMMDD or YYYY-MM-DD")
    digits = m.group(1) + m.group(3) + m.group(4)
    import datetime

    try:  # the calendar, not only the ranges: 2020-02-30 or 2021-02-29 is no date
        datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise SplitError(f"patient {pid}: date {d!r} is not a valid date") from None
    return digits
