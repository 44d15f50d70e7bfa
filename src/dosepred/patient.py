"""The one record type every stage speaks: :class:`Patient`, and the dataset's :class:`RoiSet`.

A Patient holds an optional CT (HU, int16; None when not loaded, e.g. references read for
scoring), an optional dose (Gy, float32), the possible-dose mask (bool), the bit-mask ROI codes (bit
k = ROI k of the RoiSet), its :class:`~dosepred.geometry.Geometry` (where the grid lies in patient
coordinates, LPS mm: origin, direction cosines, spacing per array axis; ``Patient.spacing`` is the
geometry's), and the ROI names, kinds and prescriptions through its RoiSet. Consistency is checked on
construction. What needs the CT (prediction, writers, the report) asks :meth:`Patient.require_ct`,
which names the patient when there is none.

Every reader sets the geometry from its source. A Patient built without one (tests, code that
predates geometry) is taken to be in the OpenKBP array convention (:meth:`Geometry.openkbp`), which
is what such arrays always were; ``meta["geometry"]`` then says ``"assumed"``.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

import numpy as np

from . import roi as _roi
from .constants import MAX_CRITERION_GY, MAX_DOSE_GY
from .errors import InputError, UnknownNameError
from .fsutil import NAME_MAX
from .geometry import Geometry, reorient

RoiKind = Literal["target", "oar", "other"]

#: The ten OpenKBP structures in the bit order dosepred uses for OpenKBP data.
OPENKBP_OARS = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
OPENKBP_TARGETS = ("PTV56", "PTV63", "PTV70")
OPENKBP_RX = {"PTV56": 56.0, "PTV63": 63.0, "PTV70": 70.0}

#: Prescriptions closer than this fraction of the larger are one dose level: a fractionation's
#: rounding (70 Gy and 33 x 2.12 = 69.96 Gy, 0.06 % apart; 70.2 Gy, 0.3 %), not another plan (66 Gy
#: is 5.7 % from 70, 69.3 Gy = 33 x 2.1 is 1 %). A model or protocol of one such level takes a plan of
#: the other as its own, with a warning (criteria relative to the prescription move by at most 0.5 %).
SAME_LEVEL = 0.005


def same_level(a: float | None, b: float | None) -> bool:
    """Whether two prescriptions (Gy, None for none) are one dose level (:data:`SAME_LEVEL`)."""
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= SAME_LEVEL * max(abs(a), abs(b))


@dataclass(frozen=True)
class Roi:
    """One ROI of a :class:`RoiSet`: its name, kind (target/oar/other) and, for targets, the
    prescription in Gy."""

    name: str
    kind: RoiKind = "oar"
    prescription: float | None = None  # Gy, targets only

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.prescription is not None:
            d["prescription"] = self.prescription
        return d


@dataclass(frozen=True)
class RoiSet:
    """Ordered ROI names <-> bit positions, with kinds and prescriptions (Gy) of targets."""

    rois: tuple[Roi, ...]

    def __post_init__(self) -> None:
        rois = self.rois
        if isinstance(rois, (str, Roi)) or not isinstance(rois, Iterable):
            raise InputError(f"a RoiSet takes a sequence of Roi, got {type(rois).__name__} {rois!r:.60}")
        rois = tuple(rois)  # a list was kept: unhashable, so evaluate_cohort's lookup by ROI set failed
        bad = [r for r in rois if not isinstance(r, Roi)]
        if bad:
            raise InputError(f"a RoiSet takes Roi objects (Roi(name, kind, prescription)), got "
                             f"{type(bad[0]).__name__} {bad[0]!r:.60}")
        object.__setattr__(self, "rois", rois)
        names = [r.name for r in self.rois]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"ROI names must be unique, duplicated: {', '.join(dup)}")
        if len(self.rois) > _roi.MAX_ROIS:
            raise InputError(f"{len(self.rois)} ROIs exceed the bit-mask limit of {_roi.MAX_ROIS}")
        for r in self.rois:
            if not isinstance(r.name, str) or not r.name.strip():
                raise InputError(f"ROI names must be non-empty strings, got {r.name!r}")
            if r.kind not in ("target", "oar", "other"):
                raise InputError(f"ROI {r.name}: kind must be target/oar/other, got {r.kind!r}")
            if r.prescription is not None:
                if r.kind != "target":
                    raise InputError(f"ROI {r.name}: only targets carry a prescription (kind is {r.kind})")
                rx = r.prescription
                # a number (a JSON "70" or true is none: the string compared with 0 was a TypeError)
                if isinstance(rx, (bool, np.bool_)) or not isinstance(rx, (int, float, np.number)):
                    raise InputError(f"ROI {r.name}: prescription must be a number of Gy, got {rx!r}")
                if not rx > 0:
                    raise InputError(f"ROI {r.name}: prescription must be > 0 Gy, got {rx}")
                if not math.isfinite(rx):
                    raise InputError(f"ROI {r.name}: prescription must be a finite number of Gy, got {rx}")
                if rx > MAX_CRITERION_GY:  # as a protocol's and an ROI map's: V95% would be of 6650 Gy
                    raise InputError(f"ROI {r.name}: prescription {rx:g} Gy is over {MAX_CRITERION_GY:g} Gy: "
                                     "in cGy? a prescription is in Gy (divide by 100)")

    # construction --------------------------------------------------------------------------
    @classmethod
    def openkbp(cls) -> RoiSet:
        return cls(tuple(Roi(n, "oar") for n in OPENKBP_OARS)
                   + tuple(Roi(n, "target", OPENKBP_RX[n]) for n in OPENKBP_TARGETS))

    @classmethod
    def from_dicts(cls, items: Iterable[dict[str, Any]]) -> RoiSet:
        """From ``[{"name", "kind", "prescription"}, ...]`` (:meth:`to_dicts`; kind defaults to oar). An
        item that is no such dict, or holds another key, is an InputError naming it: ``{"name": "PTV70",
        "kind": "target", "rx": 70}`` was a target without a prescription, without a word."""
        rois = []
        for i, d in enumerate(items, 1):
            if not isinstance(d, dict) or "name" not in d:
                raise InputError(f"ROI {i}: an ROI is a dict with \"name\" (and \"kind\", \"prescription\"), "
                                 f"got {d!r:.80}")
            other = sorted(set(d) - {"name", "kind", "prescription"})
            if other:
                raise InputError(f"ROI {d['name']!r}: unknown key(s) {', '.join(map(repr, other))}; an ROI "
                                 "has \"name\", \"kind\" (target/oar/other) and \"prescription\" (Gy)")
            rois.append(Roi(d["name"], d.get("kind", "oar"), d.get("prescription")))
        return cls(tuple(rois))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.rois]

    # queries -------------------------------------------------------------------------------
    @functools.cached_property
    def names(self) -> tuple[str, ...]:  # cached: looked up per ROI and metric during evaluation
        return tuple(r.name for r in self.rois)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rois if r.kind == "target")

    @property
    def oars(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rois if r.kind == "oar")

    def __len__(self) -> int:
        return len(self.rois)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self):
        return iter(self.rois)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise UnknownNameError(f"ROI {name!r} is not in the ROI set ({', '.join(self.names)})") from None

    def __getitem__(self, name: str) -> Roi:
        return self.rois[self.index(name)]

    def prescription(self, name: str) -> float | None:
        return self[name].prescription

    @property
    def dtype(self) -> np.dtype:
        return _roi.code_dtype(len(self.rois))


def as_spacing(spacing: Any, where: str = "") -> tuple[float, float, float]:
    """``spacing`` as three positive finite mm values, one per array axis; else an InputError starting
    with ``where`` (a scalar, 2.5 for isotropic voxels, was a TypeError in a Patient and a voxel of
    2.5 mm3 in :func:`dosepred.dvh.roi_metric`)."""
    try:
        if isinstance(spacing, (str, bytes)):
            raise TypeError
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        sp = ()
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"{where}spacing must be three positive mm values (one per array axis), "
                         f"got {spacing!r}")
    return sp  # type: ignore[return-value]


#: a float CT spanning fewer units than this, not in whole numbers, is no CT in HU (air -1000, bone > 300)
SCALED_CT_SPAN = 100.0


def _check_hu(ct: np.ndarray, pid: str) -> None:
    """Refuse a float CT that is normalised or scaled rather than in HU (spanning fewer than
    :data:`SCALED_CT_SPAN` units, not whole numbers: 0..1 or -1..1 of a network's input, HU/100 of
    -10..30, HU/1000): rounded to int16 HU it became a volume of a few HU, water everywhere, and a
    prediction from it a dose of no patient, without a word."""
    lo, hi = float(ct.min()), float(ct.max())
    if ct.size and 0 < hi - lo < SCALED_CT_SPAN and not np.array_equal(ct, np.rint(ct)):
        raise InputError(f"patient {pid}: CT values lie within {lo:.4g}..{hi:.4g} and are not whole "
                         "numbers: a normalised or scaled CT (0..1, HU/100, HU/1000)? the CT is in HU "
                         "(air -1000, water 0)")


def _check_offset(ct: np.ndarray, pid: str) -> None:
    """Refuse a CT without a voxel below 0 HU (no air, no fat, which every head-and-neck CT holds) that
    is stored as HU + 1024 (OpenKBP's ct.csv as read with numpy, DICOM pixels without their
    RescaleIntercept), as HU + 32768 (unsigned 16-bit pixels) or as an 8-bit image of grey levels. Read
    as HU, the network saw bone (or water) everywhere and predicted the dose of no patient, without a
    word. Checked before the int16 cast, which clipped HU + 32768 to 32767 everywhere. A constant CT
    (a placeholder) and other CTs without air (a phantom of water and bone) pass."""
    if not ct.size:
        return
    lo, hi = float(ct.min()), float(ct.max())
    if lo < 0 or lo == hi:
        return
    # above the air (~24 stored as HU + 1024 where a scanner measured it, 0 where OpenKBP padded it):
    # air is most of a CT's voxels, and the median of all non-zero ones was air's
    tissue = ct[ct > 500]
    med = float(np.median(tissue)) if tissue.size else 0.0
    head = f"patient {pid}: the CT holds no voxel below 0 HU"
    span = f" (values {lo:.6g}..{hi:.6g}: no air, no fat)"
    if 800 <= med <= 1300:
        raise InputError(f"{head} and its tissue reads {med:.0f} HU (median of its voxels above 500): "
                         "stored as HU + 1024 (OpenKBP's ct.csv, DICOM pixels without RescaleIntercept)? "
                         "give HU (subtract 1024)")
    if 31000 <= med <= 34500:
        raise InputError(f"{head} and its tissue reads {med:.0f} HU (median of its voxels above 500): "
                         "stored as HU + 32768 (unsigned 16-bit pixels)? give HU (subtract 32768)")
    if hi <= 255:
        raise InputError(f"{head} and none above 255{span}: an 8-bit image of grey levels (a window), not "
                         "HU? give the CT in HU (air -1000, water 0)")


def id_problem(pid: str) -> str | None:
    """Why ``pid`` cannot be a patient id, or None: an id names the patient's files and folders (a
    cache's ``<id>.npz``, a prediction's ``<id>.csv``, an export's ``<id>/``), and one holding a slash
    ("../escaped", "HN/001") wrote them elsewhere than the output folder."""
    if not isinstance(pid, str):  # Patient(1, ...) was told "it is empty"
        return f"it is not a string but {type(pid).__name__} {pid!r} (give str({pid!r}))"
    if not pid.strip():
        return "it is empty"
    return file_name_problem(pid)


#: The longest ending of a file named after a patient or an ROI (a prediction's ``<id>.nii.gz``)
LONGEST_SUFFIX = ".nii.gz"


#: Characters no Windows file name holds (':' is also the folder separator of macOS' Finder)
WINDOWS_BAD_CHARS = '<>:"|?*'

#: Names Windows keeps for devices, with any ending (``CON.npz``, ``nul.nii.gz`` are the device, not a file)
WINDOWS_DEVICES = frozenset(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                             *(f"{d}{k}" for d in ("COM", "LPT") for k in "0123456789\u00b9\u00b2\u00b3")])


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a file inside a folder on every disk, or None: a slash or a backslash
    (a folder on POSIX or on Windows: the file lands elsewhere), a NUL, "." or "..", or so long that
    its files' names (``name`` + :data:`LONGEST_SUFFIX`) pass the :data:`~dosepred.fsutil.NAME_MAX`
    bytes file systems take (a NIfTI folder's name of 252 bytes failed when its cache file was renamed
    into place, naming temporary files). Outputs are shared with Windows and macOS, so also a name that
    cannot exist there: one of :data:`WINDOWS_BAD_CHARS` or a control character, a device name of
    :data:`WINDOWS_DEVICES` (``CON``, ``nul.1``), or a name ending in '.' or ' ' (Windows drops them:
    the folder ``pt_1.`` is ``pt_1``). Digits, dashes, underscores, dots inside and accents are fine."""
    for ch, what in (("/", "a slash"), ("\\", "a backslash"), ("\0", "a NUL character")):
        if ch in name:
            return f"it holds {what}"
    if name in (".", ".."):
        return "it is no file name"
    bad = next((c for c in name if c in WINDOWS_BAD_CHARS or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        where = "Windows or macOS" if bad == ":" else "Windows"
        return f"it holds {bad!r}, which no file name on {where} may hold"
    stem = name.split(".")[0].rstrip(" ")
    if stem.upper() in WINDOWS_DEVICES:
        return (f"{stem!r} is a device name on Windows (CON, PRN, AUX, NUL, COM0-9, LPT0-9), which no file "
                "there may be named, whatever its ending")
    if name.endswith((".", " ")):
        return (f"it ends in {name[-1]!r}, which Windows drops from a file or folder name "
                f"({name.rstrip('. ')!r} would be meant)")
    n = len(name.encode("utf-8", "surrogateescape"))
    if n + len(LONGEST_SUFFIX) > NAME_MAX:
        return (f"it is {n} bytes long, and the files named after it ({name[:12]}...{LONGEST_SUFFIX}) would "
                f"have names longer than the {NAME_MAX} bytes file systems take; give a shorter one")
    return None


def case_clash(ids: Iterable[str]) -> tuple[str, str] | None:
    """Two of ``ids`` that differ only in case (``pt_1``, ``PT_1``), or None: each names files and
    folders, which are one on case-insensitive disks (macOS, Windows), so one patient's output would
    be written over the other's without a word."""
    seen: dict[str, str] = {}
    for pid in ids:
        other = seen.setdefault(file_key(pid), pid)
        if other != pid:
            return other, pid
    return None


def file_key(name: str) -> str:
    """``name`` as a case-insensitive, Unicode-normalising disk compares file names (macOS's and
    Windows' default): two names of one key are one file there."""
    return unicodedata.normalize("NFC", name).casefold()


CASE_CLASH_WHY = ("their files and folders (<id>.npz, <id>.csv, <id>/) are one on case-insensitive disks "
                  "(macOS, Windows), where one patient's would be written over the other's")


@dataclass
class Patient:
    """One patient on one voxel grid. Arrays share the same shape and the source's axis order."""

    id: str
    ct: np.ndarray | None  # int16, HU; None: not loaded (scoring needs none)
    roi_codes: np.ndarray  # unsigned int, bit k = roi_set.rois[k]
    roi_set: RoiSet
    #: mm per array axis: only to build the geometry when none is given (checked against it when
    #: both are); afterwards ``Patient.spacing`` is the geometry's (a property)
    spacing: InitVar[Sequence[float] | None] = None
    possible_dose_mask: np.ndarray | None = None  # bool; defaults to all True
    dose: np.ndarray | None = None  # float32, Gy
    missing_rois: tuple[str, ...] = ()  # ROIs of the set that this patient has no contour for
    meta: dict[str, Any] = field(default_factory=dict)  # provenance (source folder, study date, ...)
    geometry: Geometry | None = None  # voxel -> patient (LPS mm); None: derived, see the module docstring

    def __post_init__(self, spacing: Sequence[float] | None) -> None:
        pid = self.id
        why = id_problem(pid)
        if why:
            raise InputError(f"patient id {pid!r} cannot name the patient's files (<id>.npz, <id>.csv, "
                             f"<id>.nii.gz, <id>/): {why}")
        codes = np.asarray(self.roi_codes)
        if self.ct is not None:
            self.ct = np.asarray(self.ct)
            shape = self.ct.shape
            if self.ct.ndim != 3:
                raise InputError(f"patient {pid}: CT must be 3-D, got shape {shape}")
            if self.ct.dtype != np.int16:
                if np.issubdtype(self.ct.dtype, np.floating):
                    if not np.all(np.isfinite(self.ct)):
                        raise InputError(f"patient {pid}: CT contains NaN/inf")
                    _check_hu(self.ct, pid)
            _check_offset(self.ct, pid)
            if self.ct.dtype != np.int16:
                self.ct = np.clip(np.rint(self.ct), -32768, 32767).astype(np.int16)
            grid = "CT"
        else:
            shape = codes.shape
            if codes.ndim != 3:
                raise InputError(f"patient {pid}: ROI codes must be 3-D, got shape {shape}")
            grid = "ROI codes"
        self._shape = tuple(shape)
        sp = None
        if spacing is not None:
            sp = as_spacing(spacing, f"patient {pid}: ")
        elif self.geometry is None:
            raise InputError(f"patient {pid}: give the grid's geometry (or at least its spacing)")
        self.geometry = self._resolve_geometry(sp)
        if codes.shape != shape:
            raise InputError(f"patient {pid}: ROI codes shape {codes.shape} != CT shape {shape}")
        want = self.roi_set.dtype
        if codes.dtype.kind != "u":
            raise InputError(f"patient {pid}: ROI codes must be unsigned integers, got {codes.dtype}")
        n = len(self.roi_set)
        if n < codes.dtype.itemsize * 8 and codes.size and int(codes.max()) >> n:
            raise InputError(f"patient {pid}: ROI codes have bits set beyond the {n} ROIs of the set")
        if codes.dtype != want:
            codes = codes.astype(want)
        self.roi_codes = codes
        if self.possible_dose_mask is None:
            self.possible_dose_mask = np.ones(shape, dtype=bool)
        self.possible_dose_mask = _roi.binary_mask(self.possible_dose_mask,
                                                   f"patient {pid}: possible-dose mask")
        if self.possible_dose_mask.shape != shape:
            raise InputError(f"patient {pid}: possible-dose mask shape {self.possible_dose_mask.shape}"
                             f" != {grid} shape {shape}")
        if self.dose is not None:
            d = np.asarray(self.dose, dtype=np.float32)
            if d.shape != shape:
                raise InputError(f"patient {pid}: dose shape {d.shape} != {grid} shape {shape}")
            if d.size:  # min and max see any NaN/inf without a temporary bool volume
                lo, hi = d.min(), d.max()
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise InputError(f"patient {pid}: dose contains NaN/inf")
                if lo < 0:
                    raise InputError(f"patient {pid}: dose must be >= 0 Gy, min is {lo:.4g}")
                if hi > MAX_DOSE_GY:  # as every reader: a dose in cGy would be scored and shown as Gy
                    raise InputError(f"patient {pid}: dose reaches {hi:.6g} Gy, over {MAX_DOSE_GY:g} Gy: "
                                     "a dose in cGy? a dose is in Gy (divide by 100)")
            self.dose = d
        if isinstance(self.missing_rois, str):  # one name: its characters were taken as ROI names
            self.missing_rois = (self.missing_rois,)
        unknown = [m for m in self.missing_rois if m not in self.roi_set]
        if unknown:
            raise InputError(f"patient {pid}: missing ROIs {unknown} are not in the ROI set")
        self.missing_rois = tuple(self.missing_rois)
        if self.missing_rois and codes.size:
            present_bits = int(np.bitwise_or.reduce(codes, axis=None))
            for m in self.missing_rois:
                k = self.roi_set.index(m)
                if present_bits >> k & 1:
                    nvox = int(_roi.decode(codes, k).sum())
                    raise InputError(f"patient {pid}: ROI {m} is recorded missing but has {nvox} voxel(s)")

    def _resolve_geometry(self, sp: tuple[float, ...] | None) -> Geometry:
        g = self.geometry
        if g is None:
            assert sp is not None
            m = self.meta
            if "origin" in m and "orientation" in m:  # caches written before geometry (DICOM source)
                g = Geometry.from_dicom(m["origin"], m["orientation"], sp)
            elif "affine" in m:  # caches written before geometry (NIfTI source)
                g = Geometry.from_ras_affine(m["affine"])
            else:
                g = Geometry.openkbp(self._shape, sp)
                self.meta.setdefault("geometry", "assumed")
        elif not isinstance(g, Geometry):
            g = Geometry.from_dict(g)
        if sp is not None and not np.allclose(g.spacing, sp, rtol=1e-5, atol=1e-6):
            raise InputError(f"patient {self.id}: spacing {sp} differs from the geometry's {g.spacing}")
        return g

    def require_ct(self, what: str = "this") -> np.ndarray:
        """The CT; an InputError naming the patient when it was not loaded (``what`` needs it)."""
        if self.ct is None:
            raise InputError(f"patient {self.id}: no CT (read without one); {what} needs the CT")
        return self.ct

    # support -------------------------------------------------------------------------------
    def set_support_box(self, box: tuple[slice, ...]) -> None:
        """Record that dose, possible-dose mask and ROI codes are all zero outside ``box`` (slices per
        axis); readers that know it (the cache, the OpenKBP reader) set it so evaluation can crop.
        The hint is tied to the current arrays: replacing any of them discards it."""
        self._support = (tuple(box), self.dose, self.possible_dose_mask, self.roi_codes)

    def support_box(self) -> tuple[slice, ...] | None:
        """The box set by :meth:`set_support_box` while the arrays are unchanged, else None."""
        s = getattr(self, "_support", None)
        if (s is None or s[1] is not self.dose or s[2] is not self.possible_dose_mask
                or s[3] is not self.roi_codes):
            return None
        return s[0]

    def set_roi_voxels(self, index: np.ndarray, codes: np.ndarray) -> None:
        """Record the voxels with a non-zero ROI code: their ascending flat (C-order) indices into
        ``roi_codes`` and their codes. Readers that store them (the cache) set it so that evaluation
        need not scan the volume; tied to the current ``roi_codes`` like :meth:`set_support_box`."""
        self._roi_voxels = (np.asarray(index), np.asarray(codes), self.roi_codes)

    def roi_voxels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The (flat indices, codes) set by :meth:`set_roi_voxels` while ``roi_codes`` is unchanged."""
        s = getattr(self, "_roi_voxels", None)
        if s is None or s[2] is not self.roi_codes:
            return None
        return s[0], s[1]

    # geometry ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel: |det| of the voxel-to-patient matrix (spacing product when axes are
        perpendicular)."""
        assert self.geometry is not None
        return voxel_volume_mm3(self.geometry)

    @property
    def voxel_volume_cc(self) -> float:
        return self.voxel_volume_mm3 / 1000.0

    # ROIs ----------------------------------------------------------------------------------
    @property
    def present_rois(self) -> tuple[str, ...]:
        return tuple(n for n in self.roi_set.names if n not in self.missing_rois)

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of ROI ``name`` (all False when the ROI is missing)."""
        return _roi.decode(self.roi_codes, self.roi_set.index(name))

    def masks(self, names: Sequence[str] | str | None = None) -> dict[str, np.ndarray]:
        """ROI name -> boolean mask, of ``names`` (a list, or one name) or of every ROI of the set."""
        names = self.roi_set.names if names is None else [names] if isinstance(names, str) else names
        return {n: self.mask(n) for n in names}

    def prescription_map(self) -> np.ndarray:
        """Each voxel the highest prescription (Gy) of the targets containing it, else 0."""
        rx = np.zeros(self.shape, dtype=np.float32)
        for r in self.roi_set:
            if r.kind == "target" and r.prescription is not None and r.name not in self.missing_rois:
                m = self.mask(r.name)
                np.maximum(rx, np.where(m, np.float32(r.prescription), np.float32(0)), out=rx)
        return rx

    def with_dose(self, dose: np.ndarray | None) -> Patient:
        """A copy sharing every array but the dose."""
        return Patient(self.id, self.ct, self.roi_codes, self.roi_set, self.spacing,
                       self.possible_dose_mask, dose, self.missing_rois, dict(self.meta), self.geometry)

    def reoriented(self, letters: str) -> Patient:
        """A copy whose array axes run towards ``letters`` (e.g. ``"PLI"``, the OpenKBP convention), by
        permuting and flipping axes only (no interpolation); the geometry follows, so every voxel
        keeps its place in patient coordinates."""
        assert self.geometry is not None
        perm, flips = self.geometry.permutation_to(letters)
        if perm == (0, 1, 2) and not any(flips):
            return self

        def r(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.ascontiguousarray(reorient(a, perm, flips))

        g = self.geometry.reoriented(perm, flips, self.shape)
        return Patient(self.id, r(self.ct), r(self.roi_codes), self.roi_set, g.spacing,  # type: ignore[arg-type]
                       r(self.possible_dose_mask), r(self.dose), self.missing_rois, dict(self.meta), g)

    @classmethod
    def from_masks(cls, id: str, ct: np.ndarray | None, masks: dict[str, np.ndarray], roi_set: RoiSet,
                   spacing: Sequence[float], possible_dose_mask: np.ndarray | None = None,
                   dose: np.ndarray | None = None, meta: dict[str, Any] | None = None,
                   geometry: Geometry | None = None) -> Patient:
        """Build from a name -> mask dict; ROIs of the set absent from ``masks`` are recorded missing."""
        if not isinstance(masks, Mapping):  # a list of masks was "truth value of an array is ambiguous"
            raise InputError(f"patient {id}: masks must be a dict ROI name -> mask, got "
                             f"{type(masks).__name__} (masks in the ROI set's order: "
                             "dict(zip(roi_set.names, masks)))")
        extra = [n for n in masks if n not in roi_set]
        if extra:
            raise InputError(f"patient {id}: ROIs {extra} are not in the ROI set "
                             f"({', '.join(roi_set.names)})")
        shape = np.shape(ct) if ct is not None else np.shape(next(iter(masks.values()), possible_dose_mask))
        for n, m in masks.items():
            if np.shape(m) != shape:
                raise InputError(f"patient {id}: ROI {n} mask shape {np.shape(m)} != CT shape {shape}")
        masks = {n: _roi.binary_mask(m, f"patient {id}: ROI {n} mask") for n, m in masks.items()}
        ordered = [masks[n] if n in masks else np.zeros(shape, bool) for n in roi_set.names]
        codes = _roi.encode(ordered, shape=shape)
        if codes.dtype != roi_set.dtype:
            codes = codes.astype(roi_set.dtype)
        missing = tuple(n for n in roi_set.names if n not in masks)
        return cls(id, ct, codes, roi_set, spacing, possible_dose_mask, dose, missing,  # type: ignore
                   dict(meta or {}), geometry)


def _spacing(self: Patient) -> tuple[float, float, float]:
    """mm per array axis: the geometry's."""
    assert self.geometry is not None
    return tuple(float(v) for v in self.geometry.spacing)  # type: ignore[return-value]


# The constructor takes ``spacing`` (an InitVar, to build or check the geometry); reading it gives the
# geometry's, so the two cannot drift apart.
Patient.spacing = property(_spacing)  # type: ignore[assignment,method-assign]


def voxel_volume_mm3(geometry: Geometry) -> float:
    """Volume of one voxel of ``geometry`` (mm3): the spacing product when its axes are perpendicular,
    else |det| of the voxel-to-patient matrix."""
    if geometry.is_axis_aligned():
        return float(np.prod(tuple(float(v) for v in geometry.spacing)))
    return float(abs(np.linalg.det(geometry.matrix)))
