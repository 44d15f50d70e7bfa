"""ROI name canonicalisation for clinical imports (DICOM RTSTRUCT, NIfTI label files).

Clinics spell the same structure many ways ("Parotid_L", "L Parotid", "Lt Parotid", "parotid left").
:func:`canonical` maps a name to dosepred's canonical spelling (the OpenKBP names where one exists,
TG-263-like CamelCase otherwise) and recognises targets with their prescription from the name
("PTV_70", "PTV 70Gy", "PTV7000" -> PTV70, 70 Gy). A user map (JSON) is applied first and wins.

:func:`union_roi_set` builds the RoiSet of one import (OpenKBP names first, then the others sorted).

This module only knows names; it reads no files except the user's map.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..patient import OPENKBP_OARS, OPENKBP_RX, OPENKBP_TARGETS, Roi, RoiSet, case_clash
from ..roi import MAX_ROIS, SIDE_WORDS

#: Canonical name of the body / external outline (used as the possible-dose mask, not as an ROI).
BODY = "Body"


def _plain(s: str) -> str:
    """``s`` without accents (``"parótida"`` -> ``"parotida"``, ``"rückenmark"`` -> ``"ruckenmark"``)."""
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


# organ (side-less) -> canonical stem; sided organs get "Left"/"Right" prepended. English (TG-263), then
# German, French, Spanish, Italian and Portuguese, as written without accents (they are ignored)
_SIDED = {
    "parotid": "Parotid", "parotid gland": "Parotid", "glnd parotid": "Parotid",
    "parotis": "Parotid", "glandula parotis": "Parotid", "parotide": "Parotid", "glande parotide": "Parotid",
    "ghiandola parotide": "Parotid", "parotida": "Parotid", "glandula parotida": "Parotid",
    "submandibular": "Submandibular", "submand": "Submandibular", "glnd submand": "Submandibular",
    "submandibular gland": "Submandibular", "glandula submandibularis": "Submandibular",
    "submandibularis": "Submandibular", "glande sous maxillaire": "Submandibular",
    "sous maxillaire": "Submandibular", "submaxilar": "Submandibular", "glandula submaxilar": "Submandibular",
    "submandibulaire": "Submandibular", "sottomandibolare": "Submandibular",
    "ghiandola sottomandibolare": "Submandibular",
    "cochlea": "Cochlea", "cochlee": "Cochlea", "coclea": "Cochlea", "coclea interna": "Cochlea",
    "eye": "Eye", "globe": "Eye", "auge": "Eye", "bulbus": "Eye", "oeil": "Eye", "ojo": "Eye",
    "occhio": "Eye", "olho": "Eye", "globo ocular": "Eye", "globo oculare": "Eye",
    "lens": "Lens", "linse": "Lens", "cristallin": "Lens", "cristalino": "Lens", "cristallino": "Lens",
    "optic nerve": "OpticNerve", "opticnrv": "OpticNerve", "opticnerve": "OpticNerve",
    "sehnerv": "OpticNerve", "nervus opticus": "OpticNerve", "nerf optique": "OpticNerve",
    "nervio optico": "OpticNerve", "nervo ottico": "OpticNerve", "nervo optico": "OpticNerve",
    "brachial plexus": "BrachialPlexus", "brachialplex": "BrachialPlexus",
    "plexus brachialis": "BrachialPlexus", "plexus brachial": "BrachialPlexus",
    "plexo braquial": "BrachialPlexus", "plesso brachiale": "BrachialPlexus",
    "lung": "Lung", "kidney": "Kidney", "femur": "Femur",
}
# side-less organs -> canonical name
_SINGLE: dict[str, str] = {
    "brainstem": "Brainstem", "brain stem": "Brainstem",
    "hirnstamm": "Brainstem", "truncus cerebri": "Brainstem", "tronc cerebral": "Brainstem",
    "tronco cerebral": "Brainstem", "tronco encefalico": "Brainstem", "tronco dell encefalo": "Brainstem",
    "spinalcord": "SpinalCord", "spinal cord": "SpinalCord", "cord": "SpinalCord",
    "myelon": "SpinalCord", "ruckenmark": "SpinalCord", "rueckenmark": "SpinalCord",
    "medulla spinalis": "SpinalCord", "moelle": "SpinalCord", "moelle epiniere": "SpinalCord",
    "medula": "SpinalCord", "medula espinal": "SpinalCord", "medula espinhal": "SpinalCord",
    "midollo": "SpinalCord", "midollo spinale": "SpinalCord",
    "esophagus": "Esophagus", "oesophagus": "Esophagus", "esoph": "Esophagus",
    "osophagus": "Esophagus", "speiserohre": "Esophagus", "speiseroehre": "Esophagus",
    "oesophage": "Esophagus", "esofago": "Esophagus",
    "larynx": "Larynx", "larynx glottic": "Larynx", "kehlkopf": "Larynx", "laringe": "Larynx",
    "mandible": "Mandible", "bone mandible": "Mandible", "jaw": "Mandible",
    "unterkiefer": "Mandible", "mandibula": "Mandible", "mandibule": "Mandible", "mandibola": "Mandible",
    "oral cavity": "OralCavity", "cavity oral": "OralCavity", "oralcavity": "OralCavity",
    "mundhohle": "OralCavity", "mundhoehle": "OralCavity", "cavite buccale": "OralCavity",
    "cavite orale": "OralCavity", "cavidad oral": "OralCavity", "cavita orale": "OralCavity",
    "cavidade oral": "OralCavity",
    "chiasm": "Chiasm", "optic chiasm": "Chiasm", "opticchiasm": "Chiasm",
    "chiasma": "Chiasm", "chiasma opticum": "Chiasm", "chiasma optique": "Chiasm", "quiasma": "Chiasm",
    "quiasma optico": "Chiasm", "chiasma ottico": "Chiasm",
    "brain": "Brain", "gehirn": "Brain", "cerveau": "Brain", "cerebro": "Brain", "cervello": "Brain",
    "encefalo": "Brain",
    "pharynx": "Pharynx", "rachen": "Pharynx", "faringe": "Pharynx",
    "lips": "Lips", "lippen": "Lips", "levres": "Lips", "labios": "Lips", "labbra": "Lips",
    "thyroid": "Thyroid", "schilddruse": "Thyroid", "schilddruese": "Thyroid", "thyroide": "Thyroid",
    "tiroides": "Thyroid", "tiroide": "Thyroid", "tireoide": "Thyroid",
    "body": BODY, "external": BODY, "skin": BODY, "outline": BODY, "body contour": BODY,
    "ext": BODY, "aussenkontur": BODY, "korper": BODY, "koerper": BODY, "contour externe": BODY,
    "contorno externo": BODY, "contorno esterno": BODY,
}
# spelling-insensitive lookups: words glued together ("spinal cord" == "spinalcord")
_SIDED_J = {k.replace(" ", ""): v for k, v in _SIDED.items()}
_SINGLE_J = {k.replace(" ", ""): v for k, v in _SINGLE.items()}
# the side words the flips and the side check read (dosepred.roi.SIDE_WORDS: L, Lt, Left, sin, links,
# izq, sx, gauche, ...), without accents
_LEFT = {_plain(w) for w, side in SIDE_WORDS.items() if side == "Left"}
_RIGHT = {_plain(w) for w, side in SIDE_WORDS.items() if side == "Right"}

# one number after "ptv" (spaces kept: "ptv70 1", a copy of PTV70, is no 701 cGy), then the unit
# ("7000cGy" reads "7000c gy" once CamelCase is split)
_PTV = re.compile(r"^ptv ?(\d+(?:\.\d+)?) ?(c ?gy|gy)?$")


@dataclass(frozen=True)
class Canonical:
    """Result of name canonicalisation. ``matched`` is False when the name was kept as it is."""

    name: str
    kind: str  # target / oar / other
    prescription: float | None = None
    matched: bool = True

    @property
    def is_body(self) -> bool:
        return self.name == BODY


def nfc(name: str) -> str:
    """``name`` in Unicode's composed form (NFC: "ó" one character, as keyboards type it), so that a name
    written decomposed ("o" and a combining accent: NFD, as macOS file names hold it) is the same name."""
    return unicodedata.normalize("NFC", name)


def check_names_apart(pid: str, names: Iterable[str], what: str, fix: str) -> None:
    """Refuse, before anything is written, two ROI names that differ only in case ("Cord" and "CORD"),
    whose files (``what``) are one file on a case-insensitive disk (macOS's and Windows' default): one
    ROI's file was written over the other's without a word, and read back as the other ROI."""
    clash = case_clash(names)
    if clash:
        raise InputError(f"patient {pid}: ROIs {clash[0]!r} and {clash[1]!r} differ only in case: their "
                         f"files ({what}) are one file on a case-insensitive disk (macOS, Windows); {fix}")


def _normalise(name: str) -> str:
    s = re.sub(r"([a-z])([A-Z])", r"\1 \2", nfc(name).strip())  # CamelCase -> words
    s = s.lower().replace("~", " ")
    s = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", s)  # keep the dot of "59.4"
    s = re.sub(r"[_\-,/()\[\]]+", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def _fmt_gy(v: float) -> str:
    return f"{v:g}"


#: A PTV name's number without a unit below this is the PTV's number (PTV1, PTV2, PTV3: the high-,
#: middle- and low-dose targets of many clinics and RTOG protocols), not its dose: it was read as a
#: prescription of 1, 2 or 3 Gy. A low dose written with its unit (PTV_8Gy) is still one.
MIN_BARE_RX_GY = 10.0


def target_from_name(name: str) -> tuple[str, float] | None:
    """``(canonical name, Rx Gy)`` for PTV names carrying a dose: PTV70, PTV_70, PTV 70Gy, PTV7000,
    PTV 7000cGy, PTV_59.4, PTV_59,4 (a decimal comma; PTV 7,000cGy a thousands one; values above 100
    are read as cGy). Only one number counts: PTV70_1, "PTV70 (1)", PTV1_70 or PTV_56-63 carry no
    dose (None); nor does a number below :data:`MIN_BARE_RX_GY` without a unit (PTV1, PTV_2: numbered
    PTVs)."""
    # a comma before exactly three digits groups thousands ("PTV 7,000cGy": 70 Gy, not 0.07), any other
    # between digits is a decimal comma
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", name)
    s = _normalise(re.sub(r"(?<=\d),(?=\d)", ".", s))
    m = _PTV.match(s)
    if not m:
        return None
    v = float(m.group(1))
    if m.group(2) is None and v < MIN_BARE_RX_GY:  # PTV1, PTV_2: a numbered PTV, not 1 or 2 Gy
        return None
    if (m.group(2) or "").replace(" ", "") == "cgy" or (m.group(2) is None and v > 100):
        v /= 100.0
    if not 0 < v <= 100:
        return None
    return f"PTV{_fmt_gy(v)}", v


def canonical(name: str) -> Canonical:
    """Canonical name, kind and prescription of a clinical ROI name (see the module docstring).

    Unrecognised names come back unchanged with ``matched=False`` and kind ``"other"`` (callers
    refine the kind from the RTROIInterpretedType).
    """
    t = target_from_name(name)
    if t:
        return Canonical(t[0], "target", t[1])
    s = _plain(_normalise(name))
    words = s.split(" ")
    side = None
    rest = []
    for w in words:
        if w in _LEFT and side is None:
            side = "Left"
        elif w in _RIGHT and side is None:
            side = "Right"
        else:
            rest.append(w)
    organ = "".join(rest)
    if side is None and organ not in _SIDED_J:
        # glued sides: "parotidl", "lparotid"
        for stem in _SIDED_J:
            if organ in (stem + "l", "l" + stem):
                side, organ = "Left", stem
            elif organ in (stem + "r", "r" + stem):
                side, organ = "Right", stem
    if side is not None and organ in _SIDED_J:
        return Canonical(side + _SIDED_J[organ], "oar")
    if side is None and organ in _SINGLE_J:
        c = _SINGLE_J[organ]
        return Canonical(c, "other" if c == BODY else "oar")
    return Canonical(name, "other", None, False)


# ------------------------------------------------------------------------------------ user maps

@dataclass
class RoiMap:
    """A user's ROI map: clinical name -> canonical name (None: ignore the ROI), plus optional kinds
    and prescriptions (Gy) keyed by canonical name.

    JSON forms accepted::

        {"Parotid Lt": "LeftParotid", "PTV_high": "PTV70", "Couch": null}
        {"names": {"CTV_hi": "CTV70"}, "kinds": {"CTV70": "target"}, "prescriptions": {"CTV70": 70}}
        {"PTV_high": {"name": "PTV70", "kind": "target", "prescription": 70}}
    """

    names: dict[str, str | None]
    kinds: dict[str, str]
    prescriptions: dict[str, float]
    source: str = ""
    used: set[str] = field(default_factory=set, compare=False)  # names keys that matched an ROI

    def unused(self) -> list[str]:
        """The names keys that matched no ROI looked up so far (a misspelt map entry does nothing)."""
        return [k for k in self.names if k not in self.used]

    @classmethod
    def empty(cls) -> RoiMap:
        return cls({}, {}, {})

    @classmethod
    def from_obj(cls, obj: Any, source: str = "<map>") -> RoiMap:
        if not isinstance(obj, Mapping):
            raise InputError(f"ROI map {source}: expected a JSON object (name -> canonical name)")
        names: dict[str, str | None] = {}
        kinds: dict[str, str] = {}
        rx: dict[str, float] = {}
        structured = isinstance(obj.get("names"), Mapping)
        if structured:
            extra = set(obj) - {"names", "kinds", "prescriptions"}
            if extra:
                raise InputError(f"ROI map {source}: unknown keys {sorted(extra)} (expected names, kinds, "
                                 "prescriptions)")
            for key in ("kinds", "prescriptions"):
                if obj.get(key) is not None and not isinstance(obj[key], Mapping):
                    raise InputError(f"ROI map {source}: {key!r} must be an object (canonical name -> "
                                     f"{'kind' if key == 'kinds' else 'Gy'}), got {obj[key]!r}")
            items = obj["names"].items()
            kinds.update({nfc(str(k)): str(v) for k, v in (obj.get("kinds") or {}).items()})
            rx.update({nfc(str(k)): _map_rx(source, str(k), v)
                       for k, v in (obj.get("prescriptions") or {}).items()})
        else:
            items = obj.items()
        for k, v in items:
            if v is None or isinstance(v, str):
                names[nfc(str(k))] = nfc(v) if v else None
            elif isinstance(v, Mapping) and not structured:
                if "name" not in v:
                    raise InputError(f"ROI map {source}: entry {k!r} lacks 'name'")
                cn = nfc(v["name"]) if isinstance(v["name"], str) else v["name"]
                names[nfc(str(k))] = cn
                if cn and "kind" in v:
                    kinds[cn] = str(v["kind"])
                if cn and v.get("prescription") is not None:
                    rx[cn] = _map_rx(source, cn, v["prescription"])
            else:
                raise InputError(f"ROI map {source}: entry {k!r} must map to a name, null or an object, "
                                 f"got {v!r}")
        for n, kd in kinds.items():
            if kd not in ("target", "oar", "other"):
                raise InputError(f"ROI map {source}: kind of {n!r} must be target/oar/other, got {kd!r}")
        for n in rx:
            kinds.setdefault(n, "target")
        return cls(names, kinds, rx, source)

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> RoiMap:
        if path is None:
            return cls.empty()
        p = Path(path)
        if p.is_dir():
            raise InputError(f"ROI map {p} is a folder; give the JSON file")
        if not p.is_file():
            raise FileNotFoundError(f"ROI map {p} does not exist")
        try:
            obj = json.loads(p.read_text(encoding="utf-8-sig"))  # a byte-order mark read as none
        except UnicodeDecodeError as e:
            raise InputError(f"ROI map {p} is not UTF-8 text, not a JSON file ({e})") from None
        except json.JSONDecodeError as e:
            raise InputError(f"ROI map {p} is not valid JSON: {e}") from None
        return cls.from_obj(obj, str(p))

    def lookup(self, name: str) -> tuple[bool, str | None]:
        """(found, canonical-or-None) for a clinical name: exact (in NFC, :func:`nfc`), then
        case/spacing-insensitive."""
        name = nfc(name)
        if name in self.names:
            self.used.add(name)
            return True, self.names[name]
        key = _normalise(name).replace(" ", "")
        for k, v in self.names.items():
            if _normalise(k).replace(" ", "") == key:
                self.used.add(k)
                return True, v
        return False, None

    def resolve(self, name: str, interpreted_type: str = "") -> Canonical | None:
        """Canonical form of a clinical name (None: the map says to ignore it). A name the map gives
        that the aliases do not know is an organ at risk, unless the RTROIInterpretedType says a target
        (renaming a PTV does not make it an organ); the map's ``kinds`` win. A name the aliases read as
        the body (``External``, ``Skin``) is the body, as ``Body`` is, unless the map gives it a kind
        (``"kinds": {"Skin": "oar"}``: a skin rind kept as an organ)."""
        found, mapped = self.lookup(name)
        if found and mapped is None:
            return None
        keys: list[str] = []  # the kinds and prescriptions of the map: by the name as the map writes it
        if found:
            assert mapped is not None
            c = canonical(mapped)
            if c.is_body and mapped not in self.kinds and mapped.strip() not in self.kinds:
                return Canonical(BODY, "other")  # "External", "Skin": the body, no ROI to keep as written
            typed = _kind_from_type(interpreted_type)
            kind = c.kind if c.matched else "target" if typed == "target" else "oar"
            # a canonical name but for case, spaces and underscores ("LeftParotid ", "spinalcord") is
            # that name: kept as written it was another ROI than the model's and the protocol's
            same = c.matched and _normalise(mapped).replace(" ", "") == _normalise(c.name).replace(" ", "")
            c = Canonical(c.name if same else mapped.strip(), kind, c.prescription, True)
            keys = [mapped, mapped.strip()]
        else:
            c = canonical(name)
            if not c.matched:
                c = Canonical(name, _kind_from_type(interpreted_type), None, False)
        keys = [c.name, *keys]
        kind = next((self.kinds[k] for k in keys if k in self.kinds), c.kind)
        rx = next((self.prescriptions[k] for k in keys if k in self.prescriptions),
                  c.prescription if kind == "target" else None)
        return Canonical(c.name, kind, rx, c.matched)


def _map_rx(source: str, name: str, v: Any) -> float:
    """A prescription of the user's ROI map: a finite number of Gy, 0 < Rx <= 200 (the RTPLAN rule;
    7000 is cGy written as Gy), else a ValueError naming the map, the ROI and the value."""
    try:
        rx = float(v) if not isinstance(v, bool) else float("nan")
    except (TypeError, ValueError):
        rx = float("nan")
    if not 0 < rx <= 200:  # NaN and inf fail too
        raise InputError(f"ROI map {source}: prescription of {name!r} must be a number of Gy, 0 < Rx <= 200 "
                         f"(cGy / 100), got {v!r}")
    return rx


#: RTROIInterpretedType values of treatment targets.
TARGET_TYPES = ("PTV", "CTV", "GTV", "ITV")
#: RTROIInterpretedType values of organs at risk.
OAR_TYPES = ("ORGAN", "AVOIDANCE", "OAR")


def _kind_from_type(interpreted_type: str) -> str:
    """Kind of an ROI whose name is not recognised, from its RTROIInterpretedType: ``target`` for
    PTV/CTV/GTV/ITV (the prescription then comes from the RTPLAN, the map or nowhere), ``oar`` for
    ORGAN/AVOIDANCE, else ``other`` (EXTERNAL is the body, handled by the DICOM reader)."""
    t = (interpreted_type or "").upper()
    if t in TARGET_TYPES:
        return "target"
    return "oar" if t in OAR_TYPES else "other"


# --------------------------------------------------------------------------------- ROI set union

_TOKEN = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")  # the words of a name: RightParotid, Parotid_Rt_old


def _words(name: str) -> set[str]:
    """The words of an ROI name of four letters or more, lower case, but those naming a side
    (``RightParotid``: parotid; ``Humerus_Left``: humerus): a side word alone names no organ."""
    return {w.lower() for w in _TOKEN.findall(name) if len(w) >= 4 and w.lower() not in SIDE_WORDS}


def _sides(name: str) -> set[str]:
    """The sides (``Left``, ``Right``) the words of an ROI name say (``Parotid_Rt_old``: Right)."""
    return {SIDE_WORDS[w.lower()] for w in _TOKEN.findall(name) if w.lower() in SIDE_WORDS}


def lookalikes(per_patient: Mapping[str, Mapping[str, Canonical]]) -> list[str]:
    """One line for each ROI kept under an unrecognised name (no alias matched it, no ROI map named it)
    that is contoured only in patients lacking a recognised OAR or target sharing a word of its name
    (``Parotid_Rt_old`` only where ``RightParotid`` is not): likely that organ under another name, which
    the import would otherwise keep as another ROI and that organ as absent for those patients, so
    a model trains on or predicts them as patients without it. ``per_patient``: id -> canonical name ->
    :class:`Canonical` (the patient's ROIs)."""
    info: dict[str, Canonical] = {}
    for rois in per_patient.values():
        for n, c in rois.items():
            info.setdefault(n, c)
    words = {n: _words(n) for n in info}
    sides = {n: _sides(n) for n in info}
    out = []
    for u, cu in info.items():
        if cu.matched or cu.is_body:
            continue
        having = [pid for pid, rois in per_patient.items() if u in rois]
        near = [r for r, cr in info.items() if cr.matched and cr.kind in ("oar", "target")
                and words[u] & words[r] and not any(r in per_patient[pid] for pid in having)
                and not (sides[u] and sides[r] and not sides[u] & sides[r])]  # not the other side's
        if near:
            ids = ", ".join(having[:3]) + (", ..." if len(having) > 3 else "")
            alt = " or ".join(near)
            hint = json.dumps({"names": {u: near[0]}})
            out.append(f"ROI {u!r} (patients {ids}) is contoured only in patients without {alt}: if it is "
                       f"{near[0]} under another name, map it with --roi-map ({hint}); as it is, {alt} is "
                       "absent for them, and a model trains on or predicts them as patients without it")
    return out


def union_roi_set(per_patient: Iterable[Mapping[str, Canonical]], ids: Sequence[str] = (),
                  src: Any = None) -> RoiSet:
    """RoiSet of one import: the union of canonical names, OpenKBP names first (in OpenKBP bit
    order) when present, then the others sorted case-insensitively. Conflicting kinds/prescriptions
    of one name across patients are an error, and so is a union of more ROIs than one bit-mask volume
    holds, naming ``src`` and the patients (``ids``, in the order of ``per_patient``)."""
    per_patient = list(per_patient)
    seen: dict[str, Canonical] = {}
    for rois in per_patient:
        for name, c in rois.items():
            if c.is_body:
                continue
            prev = seen.get(name)
            if prev is not None and (prev.kind, prev.prescription) != (c.kind, c.prescription):
                raise InputError(f"ROI {name}: kind/prescription differ between patients "
                                 f"({prev.kind} {prev.prescription} vs {c.kind} {c.prescription}); "
                                 "fix it with --roi-map")
            seen[name] = c
    if len(seen) > MAX_ROIS:
        raise InputError(_too_many_rois(per_patient, list(ids), src, seen))
    openkbp = [n for n in (*OPENKBP_OARS, *OPENKBP_TARGETS) if n in seen]
    others = sorted((n for n in seen if n not in openkbp), key=lambda n: (n.lower(), n))
    rois = []
    for n in openkbp + others:
        c = seen[n]
        rx = c.prescription if c.kind == "target" else None
        if n in OPENKBP_RX and c.kind == "target" and rx is None:
            rx = OPENKBP_RX[n]
        rois.append(Roi(n, c.kind, rx))  # type: ignore[arg-type]
    return RoiSet(tuple(rois))


def _too_many_rois(per_patient: list[Mapping[str, Canonical]], ids: list[str], src: Any,
                   seen: Mapping[str, Canonical]) -> str:
    """The error of a union of more than :data:`MAX_ROIS` ROIs: which patients hold how many, and the ROIs
    that only some of them have (per-patient optimisation structures, the usual cause)."""
    counts = [sum(1 for c in rois.values() if not c.is_body) for rois in per_patient]
    names = ids if len(ids) == len(per_patient) else [f"#{k + 1}" for k in range(len(per_patient))]
    most = max(range(len(counts)), key=counts.__getitem__)
    some = sorted(n for n in seen if sum(n in rois for rois in per_patient) < len(per_patient))
    shown = ", ".join(some[:8]) + (f", ... ({len(some)} in all)" if len(some) > 8 else "")
    where = f"{src}: " if src is not None else ""
    return (f"{where}the {len(per_patient)} patient(s) hold {len(seen)} different ROIs (names after the ROI "
            f"map and aliases, the body left out), more than the {MAX_ROIS} one bit-mask volume holds "
            f"(patient {names[most]}: {counts[most]})"
            + (f"; in some patients only: {shown}" if some else "")
            + '. Drop the ROIs not needed (rings, optimisation structures) with an ROI map, '
            '--roi-map MAP.json holding {"NAME": null, ...}, or import the patients in groups')
