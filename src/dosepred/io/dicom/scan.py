"""Finding and pairing the files of a DICOM folder (headers only): the CT series, and which RTSTRUCT,
RTPLANs and RTDOSEs belong to each (the matching rules are in the package docstring and
docs/formats.md); patient ids. Reads no pixels and decides no doses or prescriptions
(:mod:`.rtplan` does)."""

from __future__ import annotations

import itertools
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...fsutil import broken_links, broken_links_text, walk_once
from ...patient import WINDOWS_DEVICES
from .. import roi_names as _names
from ._common import DicomImportError, multi_value, referenced_uids, warn


@dataclass
class CtSeries:
    uid: str
    files: list[tuple[Path, Any]]  # (path, header dataset)
    # files under the scanned folder that are no readable DICOM (junk, empty, truncated): named when
    # the series turns out incomplete, since one of them may be the missing slice
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def unreadable_near(self, image_like: bool = False) -> list[tuple[Path, str]]:
        """The unreadable files beside this series' files (``image_like``: only those named as DICOM
        images are, ``*.dcm``, ``*.ima`` or without a suffix)."""
        folders = {p.parent for p, _ in self.files}
        return [(p, why) for p, why in self.unreadable if p.parent in folders
                and (not image_like or p.suffix.lower() in ("", ".dcm", ".ima", ".dicom"))]

    def unreadable_note(self) -> str:
        """``"; N file(s) ... are not readable DICOM: a (why), ..."`` for the unreadable files beside this
        series' files (empty when there are none)."""
        near = self.unreadable_near()
        return f"; beside it, {unreadable_text(near)}" if near else ""

    @property
    def first(self) -> Any:
        return self.files[0][1]

    @property
    def for_uid(self) -> str:
        return str(getattr(self.first, "FrameOfReferenceUID", ""))

    def describe(self) -> str:
        folders = sorted({str(p.parent) for p, _ in self.files})
        return f"CT series {self.uid} ({len(self.files)} files in {', '.join(folders)})"


def unreadable_text(files: list[tuple[Path, str]]) -> str:
    """``"N file(s) are not readable DICOM: a (why), ..."`` (the first five named)."""
    listed = ", ".join(f"{p} ({why})" for p, why in files[:5]) + (" ..." if len(files) > 5 else "")
    return f"{len(files)} file(s) are not readable DICOM: {listed}"


@dataclass
class PatientFiles:
    """One patient's files: a CT series, its RTSTRUCT, RTPLANs and RTDOSEs (if any)."""

    series: CtSeries
    rtstruct: tuple[Path, Any] | None = None
    rtplans: list[tuple[Path, Any]] = field(default_factory=list)
    rtdoses: list[tuple[Path, Any, str]] = field(default_factory=list)  # (path, header, how matched)
    dose: tuple[Path, Any, str] | None = None
    plan: tuple[Path, Any] | None = None
    # a sequential boost / concurrent plans that add up: every phase's plan and dose (their sum is the
    # patient's dose and their prescriptions add); empty for one plan
    plans_summed: list[tuple[Path, Any]] = field(default_factory=list)
    doses_summed: list[tuple[Path, Any, str]] = field(default_factory=list)
    canon: dict[str, _names.Canonical] = field(default_factory=dict)  # canonical -> info
    roi_sources: dict[str, list[int]] = field(default_factory=dict)  # canonical -> ROINumbers
    original_names: dict[str, list[str]] = field(default_factory=dict)
    prescriptions: dict[str, str] = field(default_factory=dict)  # canonical -> where the Rx came from
    id: str = ""


def files_under(src: str | os.PathLike, broken: list[Path] | None = None) -> Iterator[Path]:
    """Every file under folder ``src``, recursively and following symbolic links to folders (an
    export whose ``CT/`` and ``RS/`` are links is one folder), each real folder once (no loop on a link
    to a parent); in sorted order per folder. Links to nothing are appended to ``broken`` (when
    given), not yielded."""
    for root, dirs, files in walk_once(src):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.is_file():
                yield p
            elif broken is not None and broken_links([p]):
                broken.append(p)


def scan_files(src: Path) -> tuple[dict[str, CtSeries], list[tuple[Path, Any]], list[tuple[Path, Any]],
                                   list[tuple[Path, Any]]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not src.exists():
        raise FileNotFoundError(f"DICOM folder {src} does not exist")
    broken: list[Path] = []
    paths = [src] if src.is_file() else sorted(files_under(src, broken))
    if broken:  # a slice, structure set or dose that is not there: the patient would be read without it
        raise DicomImportError(f"DICOM folder {src}: {broken_links_text(broken)}")
    series: dict[str, CtSeries] = {}
    structs: list[tuple[Path, Any]] = []
    doses: list[tuple[Path, Any]] = []
    plans: list[tuple[Path, Any]] = []
    unreadable: list[tuple[Path, str]] = []
    multiframe: list[tuple[Path, Any]] = []
    for p in paths:
        if p.name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError) as e:
            why = ("empty, 0 bytes" if _size(p) == 0 else _not_part10(p)
                   if isinstance(e, InvalidDicomError) else f"unreadable: {type(e).__name__}")
            unreadable.append((p, why))
            continue
        short = _truncated(ds)
        mod = str(getattr(ds, "Modality", ""))
        if short is not None and mod in ("CT", "RTSTRUCT", "RTPLAN", "RTDOSE"):  # pydicom reads it silently
            raise DicomImportError(f"{mod} file {p} is truncated ({_size(p)} bytes): {short}, so what "
                                   "follows is missing (a file still being copied, an interrupted "
                                   "transfer?); copy it again")
        if short is not None:  # a file of no kind read here, or one cut before its Modality
            unreadable.append((p, f"truncated, {_size(p)} bytes"))
            continue
        if mod == "CT" and "LOCALIZER" in [str(v).upper()
                                           for v in multi_value(getattr(ds, "ImageType", None))]:
            warn(f"{p}: a localizer (scout, ImageType LOCALIZER), not a slice of a planning CT; ignored")
            continue
        if mod == "CT" and _frames(ds) > 1 and "ImagePositionPatient" not in ds:  # an enhanced CT: its
            # frames' positions lie in functional groups, which are not read
            multiframe.append((p, ds))
            continue
        if mod == "CT":
            uid = str(getattr(ds, "SeriesInstanceUID", ""))
            if not uid:
                raise DicomImportError(f"CT file {p} has no SeriesInstanceUID (a truncated or damaged file? "
                                       f"{_size(p)} bytes)")
            series.setdefault(uid, CtSeries(uid, [])).files.append((p, ds))
        elif mod == "RTSTRUCT":
            structs.append((p, ds))
        elif mod == "RTDOSE":
            doses.append((p, ds))
        elif mod == "RTPLAN":
            plans.append((p, ds))
    # one image that no structure set references (a stray slice of another series, a file given
    # instead of its folder) is no planning CT: not a one-slice patient (a referenced one stays, and
    # the structure set's missing images are named)
    referenced = {u for _, ds in structs for u in _struct_refs(ds)[1]}
    for p, ds in multiframe:  # not a one-slice series: say what it is, and refuse it where it is the CT
        what = (f"{p}: an enhanced (multi-frame) CT image, {_frames(ds)} frames in one file, which dosepred "
                "does not read (it reads CT series of one image per slice, CT Image Storage)")
        if str(getattr(ds, "SeriesInstanceUID", "")) in referenced:
            raise DicomImportError(f"{what}; an RTSTRUCT is drawn on it: export the planning CT as one image "
                                   "per slice")
        warn(f"{what}; ignored")
    for uid in [u for u, s in series.items() if len(s.files) == 1 and u not in referenced]:
        warn(f"{series.pop(uid).files[0][0]}: the only image of CT series {uid}, which no RTSTRUCT "
             "references: one slice is no planning CT; ignored")
    if not series:
        hint = ": a file: give the folder that holds the CT series" if src.is_file() else ""
        if multiframe:
            hint += (f"; {len(multiframe)} enhanced (multi-frame) CT file(s) were not read: export the CT as "
                     "one image per slice")
        if unreadable:  # a whole export without the file preamble reads as no DICOM at all
            hint += f"; {unreadable_text(unreadable)}"
        raise DicomImportError(f"no CT image series found under {src} (looked at {len(paths)} files){hint}")
    for s in series.values():
        s.unreadable = unreadable
    return series, structs, doses, plans


def _not_part10(p: Path) -> str:
    """Why a file pydicom refuses as no DICOM file is not read: a data set without the 128-byte preamble
    and 'DICM' prefix of a DICOM file (PS3.10; some older planning systems and scripts write them) is
    named as such, with its Modality."""
    import pydicom

    try:  # values over 1 KB are not loaded: the bytes of an archive or a video read as lengths
        ds = pydicom.dcmread(p, force=True, stop_before_pixels=True, defer_size="1 KB")
        mod = str(getattr(ds, "Modality", "") or "")
    except Exception:  # noqa: BLE001 - a forced read of arbitrary bytes fails in many ways
        mod = ""
    if not mod.strip() or not mod.isascii() or not mod.replace("_", "").isalnum():
        return "not a DICOM file"
    return f"{mod} data without the DICOM file preamble, 'DICM' (PS3.10): export it as a DICOM file"


def _frames(ds: Any) -> int:
    """NumberOfFrames of an image (1 when absent or not a number)."""
    try:
        return int(str(getattr(ds, "NumberOfFrames", 1) or 1).strip())
    except ValueError:
        return 1


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1


def _truncated(ds: Any) -> str | None:
    """Why the file ``ds`` was just read from (nothing of it accessed yet) ends before its data do, or
    None: its last element declares more bytes than the file holds. pydicom reads such an element short
    without a word, and a sequence in it ends at its last whole item: a structure set cut while being
    copied would lose its last ROIs, contours or body outline, a plan its last prescriptions."""
    tags = list(ds.keys())
    if not tags:
        return None
    raw = ds.get_item(max(tags))
    value, length = getattr(raw, "value", None), getattr(raw, "length", None)
    if isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF and len(value) < length:
        from pydicom.datadict import keyword_for_tag

        name = keyword_for_tag(raw.tag)  # "" for a private tag
        return f"its element {raw.tag}{f' {name}' if name else ''} declares {length} bytes, the file holds " \
               f"{len(value)} of them"
    return None


def _struct_refs(ds: Any) -> tuple[set[str], list[str]]:
    """(referenced FrameOfReference UIDs, referenced CT series UIDs in the order the RTSTRUCT lists
    them) of an RTSTRUCT."""
    fors: set[str] = set()
    sers: dict[str, None] = {}  # ordered: which series an RTSTRUCT joins must not depend on hashing
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        if getattr(fr, "FrameOfReferenceUID", None):
            fors.add(str(fr.FrameOfReferenceUID))
        for st in getattr(fr, "RTReferencedStudySequence", []) or []:
            for se in getattr(st, "RTReferencedSeriesSequence", []) or []:
                if getattr(se, "SeriesInstanceUID", None):
                    sers[str(se.SeriesInstanceUID)] = None
    for roi in getattr(ds, "StructureSetROISequence", []) or []:
        if getattr(roi, "ReferencedFrameOfReferenceUID", None):
            fors.add(str(roi.ReferencedFrameOfReferenceUID))
    return fors, list(sers)


def _contour_images(ds: Any) -> set[str]:
    """SOPInstanceUIDs of the images an RTSTRUCT's contours say they are drawn on (ContourImageSequence
    of each contour)."""
    return {str(im.ReferencedSOPInstanceUID) for rc in getattr(ds, "ROIContourSequence", []) or []
            for c in getattr(rc, "ContourSequence", []) or []
            for im in getattr(c, "ContourImageSequence", []) or []
            if getattr(im, "ReferencedSOPInstanceUID", None)}


def _referenced_series(ds: Any, path: Path, hit: list[str], series: dict[str, CtSeries]) -> str:
    """Of the CT series ``hit`` (present, in the order RTSTRUCT ``ds`` lists them), the one it joins: the
    one whose images most of its contours reference, else the first listed; a warning names them when
    there are several."""
    if len(hit) == 1:
        return hit[0]
    drawn = _contour_images(ds)
    on = {u: sum(str(getattr(h, "SOPInstanceUID", "")) in drawn for _, h in series[u].files) for u in hit}
    uid = max(hit, key=lambda u: on[u])  # the first listed of the most referenced
    why = ("the one its contours are drawn on (ContourImageSequence)" if on[uid] else
           "the first it lists; its contours reference none of their images")
    warn(f"RTSTRUCT {path} references {len(hit)} CT series ({', '.join(series[u].describe() for u in hit)}); "
         f"using CT series {uid}, {why}")
    return uid


def _struct_images(ds: Any, series_uid: str) -> set[str]:
    """SOPInstanceUIDs of the images of CT series ``series_uid`` that an RTSTRUCT lists."""
    out: set[str] = set()
    for fr in getattr(ds, "ReferencedFrameOfReferenceSequence", []) or []:
        for st in getattr(fr, "RTReferencedStudySequence", []) or []:
            for se in getattr(st, "RTReferencedSeriesSequence", []) or []:
                if str(getattr(se, "SeriesInstanceUID", "")) == series_uid:
                    for im in getattr(se, "ContourImageSequence", []) or []:
                        if getattr(im, "ReferencedSOPInstanceUID", None):
                            out.add(str(im.ReferencedSOPInstanceUID))
    return out


def pair_files(series: dict[str, CtSeries], structs: list[tuple[Path, Any]], doses: list[tuple[Path, Any]],
               plans: list[tuple[Path, Any]], src: Path) -> list[PatientFiles]:
    sources = {uid: PatientFiles(s) for uid, s in series.items()}
    known = "; ".join(f"{s.describe()} FrameOfReference {s.for_uid}" for s in series.values())
    struct_owner: dict[str, str] = {}  # RTSTRUCT SOPInstanceUID -> CT series UID
    # of several RTSTRUCTs on one series, the one a plan or dose of the folder references comes first
    used = {u for _, ds in [*plans, *doses] for u in referenced_uids(ds, "ReferencedStructureSetSequence")}
    structs = sorted(structs, key=lambda t: str(getattr(t[1], "SOPInstanceUID", "")) not in used)
    for path, ds in structs:
        fors, sers = _struct_refs(ds)
        hit = [uid for uid in sers if uid in series]
        if hit:
            uid = _referenced_series(ds, path, hit, series)
            if fors and series[uid].for_uid and series[uid].for_uid not in fors:
                raise DicomImportError(
                    f"RTSTRUCT {path} references {series[uid].describe()} but FrameOfReference "
                    f"{', '.join(sorted(fors))}, while that CT's FrameOfReference is {series[uid].for_uid}: "
                    "the contours belong to another CT")
        else:
            cands = [uid for uid, s in series.items() if s.for_uid in fors]
            if not cands:
                raise DicomImportError(
                    f"RTSTRUCT {path} references FrameOfReference {', '.join(sorted(fors)) or '(none)'}"
                    f"{' and CT series ' + ', '.join(sorted(sers)) if sers else ''}, which no CT series "
                    f"under {src} has ({known})")
            uid = cands[0]
            # the series it names is not here: another of its frame (a 4D-CT phase beside the average it
            # was drawn on, another reconstruction) holds other images of the patient
            absent = f"references CT series {', '.join(sers)}, which is not under {src}, and " if sers else ""
            if len(cands) > 1:
                warn(f"RTSTRUCT {path} {absent}matches several CT series by FrameOfReference; using {uid}")
            elif absent:
                warn(f"RTSTRUCT {path} {absent}is read on {series[uid].describe()}, which shares its "
                     f"FrameOfReference {series[uid].for_uid}: its contours were drawn on other images of "
                     "that frame (a 4D-CT phase or average, another reconstruction?); export the CT series "
                     "it references")
        s = sources[uid]
        if s.rtstruct is not None:
            why = ("the one the RTPLAN/RTDOSE references" if str(getattr(s.rtstruct[1], "SOPInstanceUID", ""))
                   in used else "the first by path")
            warn(f"{series[uid].describe()} has several RTSTRUCTs; using {s.rtstruct[0]} ({why}), "
                 f"ignoring {path}")
            continue
        s.rtstruct = (path, ds)
        struct_owner[str(getattr(ds, "SOPInstanceUID", ""))] = uid
        listed = _struct_images(ds, uid)
        have = {str(getattr(h, "SOPInstanceUID", "")) for _, h in series[uid].files}
        absent = sorted(listed - have)
        if absent:
            raise DicomImportError(
                f"RTSTRUCT {path} references {len(listed)} images of {series[uid].describe()}, but "
                f"{len(absent)} of them are not under {src} (e.g. SOPInstanceUID {absent[0]}): the CT "
                f"series is incomplete{series[uid].unreadable_note()}")

    plan_owner: dict[str, str] = {}  # RTPLAN SOPInstanceUID -> CT series UID
    for path, ds in plans:
        f = str(getattr(ds, "FrameOfReferenceUID", ""))
        owner = next((struct_owner[u] for u in referenced_uids(ds, "ReferencedStructureSetSequence")
                      if u in struct_owner), None)
        if owner is None:
            cands = [uid for uid, s in series.items() if s.for_uid == f]
            if len(cands) != 1:
                warn(f"RTPLAN {path} references no RTSTRUCT under {src} and its FrameOfReference "
                     f"{f or '(none)'} matches {len(cands)} CT series; ignored")
                continue
            owner = cands[0]
        if f and series[owner].for_uid and f != series[owner].for_uid:
            raise DicomImportError(f"RTPLAN {path} has FrameOfReference {f}, but the RTSTRUCT it references "
                                   f"lies on {series[owner].describe()} with FrameOfReference "
                                   f"{series[owner].for_uid}")
        sources[owner].rtplans.append((path, ds))
        plan_owner[str(getattr(ds, "SOPInstanceUID", ""))] = owner

    for path, ds in doses:
        f = str(getattr(ds, "FrameOfReferenceUID", ""))
        ref_plans = referenced_uids(ds, "ReferencedRTPlanSequence")
        ref_structs = referenced_uids(ds, "ReferencedStructureSetSequence")
        owner = next((plan_owner[u] for u in ref_plans if u in plan_owner), None)
        how = "referenced RTPLAN"
        if owner is None:
            owner = next((struct_owner[u] for u in ref_structs if u in struct_owner), None)
            how = "referenced RTSTRUCT"
        if owner is None:
            cands = [uid for uid, s in series.items() if s.for_uid == f]
            if not cands:
                raise DicomImportError(f"RTDOSE {path} has FrameOfReference {f or '(none)'}, which no CT "
                                       f"series under {src} has ({known})")
            if len(cands) > 1:
                warn(f"RTDOSE {path} references no RTPLAN/RTSTRUCT under {src} and its FrameOfReference "
                     f"{f} is shared by {len(cands)} CT series; not used (it cannot be told whose it is)")
                continue
            owner, how = cands[0], "FrameOfReference"
        elif f != series[owner].for_uid:
            raise DicomImportError(f"RTDOSE {path} has FrameOfReference {f or '(none)'}, but the "
                                   f"{how} lies on {series[owner].describe()} with FrameOfReference "
                                   f"{series[owner].for_uid}")
        sources[owner].rtdoses.append((path, ds, how))
    out = list(sources.values())
    out.sort(key=lambda s: (str(getattr(s.series.first, "PatientID", "")), str(s.series.files[0][0])))
    return out


def _safe_id(text: str) -> str:
    """``text`` as a file name on every disk: runs of other characters than letters, digits, '.', '-'
    and '_' made '_', no '.' or '_' at either end, a Windows device name (``CON``, ``nul.1``) given a
    '_' (``CON_``, ``nul_.1``), which no file there may be named."""
    s = re.sub(r"[^\w.-]+", "_", text.strip()).strip("._")
    stem, dot, rest = s.partition(".")
    if stem.upper() in WINDOWS_DEVICES:
        s = f"{stem}_{dot}{rest}"
    return s or "patient"


def assign_ids(sources: list[PatientFiles]) -> None:
    """Each source's id: its PatientID (else its folder's name) made a safe file name; the sources
    sharing one (several plans of a patient) numbered ``ID_1``, ``ID_2``, ... in order. Ids are unique
    ignoring case (they name files and folders, and some file systems ignore case): a number that
    another source's own id already is (PatientIDs ``A``, ``A`` and ``A_1``) is skipped."""
    base = []
    for s in sources:
        pid = str(getattr(s.series.first, "PatientID", "") or "")
        base.append(_safe_id(pid) if pid else _safe_id(s.series.files[0][0].parent.name))
    count = Counter(b.casefold() for b in base)
    used = {b.casefold() for b in base if count[b.casefold()] == 1}
    numbered: Counter[str] = Counter()
    for b, s in zip(base, sources, strict=True):
        if count[b.casefold()] == 1:
            s.id = b
            continue
        while True:
            numbered[b.casefold()] += 1
            s.id = f"{b}_{numbered[b.casefold()]}"
            if s.id.casefold() not in used:
                break
        used.add(s.id.casefold())


def headerless_files(src: str | os.PathLike, limit: int = 200) -> str | None:
    """``"N file(s) are not readable DICOM: a (CT data without the DICOM file preamble ...)"`` for the
    files among the first ``limit`` under ``src`` that are DICOM data without the preamble (what
    ``data import-dicom`` says of them), None when there are none: a folder :func:`is_dicom_folder`
    does not take, said when no format takes it."""
    src = Path(src)
    files = [src] if src.is_file() else files_under(src) if src.is_dir() else []
    found = []
    for p in itertools.islice((f for f in files if not f.name.startswith(".")), limit):
        try:
            with open(p, "rb") as fh:
                part10 = fh.read(132)[128:132] == b"DICM"
        except OSError:
            continue
        why = "" if part10 else _not_part10(p)
        if why.endswith("export it as a DICOM file"):
            found.append((p, why))
    return unreadable_text(found) if found else None


def is_dicom_folder(src: str | os.PathLike, limit: int = 200) -> bool:
    """True when ``src`` is a DICOM file or a folder holding one (files with the DICM preamble,
    looked for among the first ``limit`` files)."""
    src = Path(src)
    files = [src] if src.is_file() else files_under(src) if src.is_dir() else []
    for k, p in enumerate(files):
        if k >= limit:
            break
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
    return False
