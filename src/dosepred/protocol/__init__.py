"""Clinical protocols: JSON plan-evaluation templates that drive both evaluation and the CDM loss.

::

    from dosepred.protocol import load_protocol
    proto = load_protocol("openkbp-clinical", roi_set)   # or "openkbp", or a path to a JSON file
    for c in proto.criteria:
        print(c.name, c.parsed, c.limit_value(proto.prescription(c.roi, roi_set)), c.weight)

Built-ins (``src/dosepred/protocol/builtin/*.json``):

- ``openkbp``: exactly the metrics of the OpenKBP DVH score (OARs: D0.1cc and Dmean; PTV56/63/70:
  D99%, D95%, D1%), without limits.
- ``openkbp-clinical``: H&N criteria for a 70/63/56 Gy SIB (RTOG 0225, QUANTEC and the open-kbp-opt
  criteria; docs/protocols.md).

The JSON schema is documented in :mod:`dosepred.protocol.schema` and ``docs/protocols.md``.
:func:`from_portpy` converts a PortPy ``clinical_criteria`` JSON.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..errors import DosepredError
from ..fsutil import RepeatedKeyError, loads_unique
from .bound import BoundCriterion, BoundProtocol, bound_for
from .schema import Criterion, Direction, LimitUnit, Protocol, ProtocolError

if TYPE_CHECKING:  # pragma: no cover
    from ..patient import RoiSet

__all__ = ["BUILTIN", "BoundCriterion", "BoundProtocol", "Criterion", "Direction", "LimitUnit", "Protocol",
           "ProtocolError", "bound_for", "from_portpy", "lint", "load_protocol",
           "parse_protocol", "protocol_file"]

BUILTIN = ("openkbp", "openkbp-clinical")


def protocol_file(protocol: Any) -> str | os.PathLike | None:
    """The file of a protocol given as a path (an input, which no output may be, hold or lie inside);
    None for a built-in name or a loaded :class:`Protocol`."""
    return protocol if isinstance(protocol, (str, os.PathLike)) and str(protocol) not in BUILTIN else None


def _format_errors(e: ValidationError, raw: Any, source: str) -> str:
    """One line per problem, naming the criterion (number, ROI and metric) it is about."""
    lines = []
    for err in e.errors():
        loc = err.get("loc", ())
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        where = ".".join(str(x) for x in loc) or "protocol"
        if len(loc) >= 2 and loc[0] == "criteria" and isinstance(loc[1], int):
            i = loc[1]
            crit = raw.get("criteria", [])[i] if isinstance(raw, dict) else None
            desc = ""
            if isinstance(crit, dict):
                desc = f" ({crit.get('roi', '?')} {crit.get('metric', '?')})"
            field = ".".join(str(x) for x in loc[2:])
            where = f"criterion {i + 1}{desc}" + (f", field {field!r}" if field else "")
            if err.get("type") == "extra_forbidden":
                msg = f"unknown key {field!r} (allowed: {', '.join(Criterion.model_fields)})"
        elif err.get("type") == "extra_forbidden":
            msg = f"unknown key (allowed: {', '.join(Protocol.model_fields)})"
        lines.append(f"{where}: {msg}")
    return f"invalid protocol {source}: " + "; ".join(lines)


def parse_protocol(data: dict[str, Any], roi_set: RoiSet | None = None, source: str = "",
                   roi_owner: str = "the dataset", path: str | os.PathLike | None = None) -> Protocol:
    """Validate a protocol given as a dict (the parsed JSON); see :func:`load_protocol`. ``path``: the
    file it was read from (errors name it)."""
    if not isinstance(data, dict):
        raise ProtocolError(f"invalid protocol {source}: expected a JSON object with 'name' and 'criteria'")
    try:
        proto = Protocol.model_validate(data)
    except ValidationError as e:
        raise ProtocolError(_format_errors(e, data, source or repr(data.get("name", "")))) from None
    if path is not None:
        proto._source = str(path)
    if roi_set is not None:
        proto.validate_for(roi_set, roi_owner)
    return proto


def load_protocol(name_or_path: str | os.PathLike | Protocol, roi_set: RoiSet | None = None,
                  roi_owner: str = "the dataset") -> Protocol:
    """Load a built-in protocol (``openkbp``, ``openkbp-clinical``) or a user JSON file (a
    :class:`BoundProtocol` gives its protocol).

    With ``roi_set`` the protocol is checked against the dataset: an ROI it does not know, or a
    criterion relative to a prescription that no one gives, raises :class:`ProtocolError` naming
    the criterion; ``roi_owner`` says whose ROI set it is (``"the dataset"``, ``"the model"``), and an
    error names the protocol's file. A :class:`Protocol` passed in is returned (validated against
    ``roi_set``).
    """
    if isinstance(name_or_path, BoundProtocol):  # str() of it was taken as a file name (OSError: too long)
        name_or_path = name_or_path.protocol
    if isinstance(name_or_path, Protocol):
        return name_or_path.validate_for(roi_set, roi_owner) if roi_set is not None else name_or_path
    if isinstance(name_or_path, dict):
        raise ProtocolError("a protocol given as a dict is parsed by dosepred.protocol.parse_protocol(d); "
                            "load_protocol takes a built-in name, a JSON file or a Protocol")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ProtocolError(f"protocol must be a built-in name ({', '.join(BUILTIN)}), a JSON file or a "
                            f"Protocol, got {type(name_or_path).__name__} {name_or_path!r:.60}")
    s = str(name_or_path)
    if s in BUILTIN:
        text = resources.files(__package__).joinpath("builtin", f"{s}.json").read_text()
        source = f"built-in {s!r}"
    else:
        path = Path(s)
        if not path.is_file():
            raise ProtocolError(f"protocol {s!r} is neither a built-in ({', '.join(BUILTIN)}) nor an "
                                "existing JSON file")
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) read as none
        except UnicodeDecodeError as e:
            raise ProtocolError(f"protocol {path} is not UTF-8 text ({e})") from None
        source = str(path)
    data = _json(text, f"protocol {source}")
    if _portpy_layout(data):
        proto = _portpy_checked(data, None, f"protocol {source}")
        proto._source = "" if s in BUILTIN else str(Path(s))
    else:
        proto = parse_protocol(data, None, source, roi_owner, None if s in BUILTIN else Path(s))
    proto._builtin = s in BUILTIN  # before validating: a set may lack any ROI of a built-in
    return proto.validate_for(roi_set, roi_owner) if roi_set is not None else proto


def _portpy_layout(data: Any) -> bool:
    """Whether parsed JSON is a PortPy ``clinical_criteria`` file: its first criterion has a ``type`` (or,
    in older PortPy versions, a ``name`` beside its ``parameters``) and no ``roi``."""
    crits = data.get("criteria") if isinstance(data, dict) else None
    first = crits[0] if isinstance(crits, list) and crits else None
    return isinstance(first, dict) and "roi" not in first and (
        "type" in first or ("name" in first and "parameters" in first))


def _json(text: str, source: str) -> Any:
    """The JSON of a protocol file; :class:`ProtocolError` naming ``source`` when it is not valid
    JSON, or when an object repeats a key (JSON keeps the last silently: a second ``"limit"`` would
    replace the first without a word)."""
    try:
        return loads_unique(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{source} is not valid JSON: {e}") from None
    except RepeatedKeyError as e:
        where = (f" (the criterion {e.obj.get('roi', '?')} {e.obj.get('metric', '?')})"
                 if "roi" in e.obj or "metric" in e.obj else "")
        raise ProtocolError(f"{source} is not a valid protocol: {e}{where}; keep one") from None


def lint(protocol: Protocol, present: Any = None, where: str = "") -> list[str]:
    """Warnings about a valid protocol that probably does not say what was meant (errors, such as a
    non-finite limit or an unknown ROI, are raised when it is loaded):

    - a criterion repeated (same ROI, metric, direction, limit, unit and goal): it would count twice
      in the pass rate and the CDM loss;
    - the same ROI, metric and direction with different limits and no goal (two limits for one check);
    - criteria on an ROI contoured in no patient (``present``: the ROI names contoured in at least
      one patient; skipped when None): they are never checked and add nothing to the loss.

    ``where`` names the data in the last message (e.g. ``"training cache X"``).
    """
    out: list[str] = []
    first: dict[tuple[Any, ...], int] = {}
    limits: dict[tuple[str, str, Any], tuple[int, Any]] = {}
    for i, c in enumerate(protocol.criteria, 1):
        key = (c.roi, c.metric, c.direction, c.limit, c.limit_unit, c.goal)
        if key in first:
            out.append(f"protocol {protocol.name!r}: criterion {i} ({c.name}) repeats criterion "
                       f"{first[key]}; it counts twice in the pass rate and the CDM loss")
            continue
        first[key] = i
        if c.limit is not None and c.goal is None:
            lk = (c.roi, c.metric, c.direction)
            if lk in limits and limits[lk][1] != (c.limit, c.limit_unit):
                out.append(f"protocol {protocol.name!r}: criterion {i} ({c.name}) and criterion "
                           f"{limits[lk][0]} give two different limits for {c.roi} {c.metric} "
                           f"{c.direction}")
            limits.setdefault(lk, (i, (c.limit, c.limit_unit)))
    if present is not None:
        have = set(present)
        absent = [r for r in protocol.rois if r not in have]
        if absent:
            n = sum(1 for c in protocol.criteria if c.roi in absent)
            out.append(f"protocol {protocol.name!r}: {n} criteria are on ROIs contoured in no patient"
                       f"{' of ' + where if where else ''} ({', '.join(absent)}); they are never checked")
    return out


# ----------------------------------------------------------------------------------- PortPy import

_PORTPY_DOSE_KEYS = {"dose_gy": "Gy", "dose_perc": "%Rx"}


def _constraint(cons: dict[str, Any], kind: str) -> tuple[float | None, float | None, str | None]:
    """(limit, goal, unit) from PortPy constraints such as ``limit_dose_gy`` / ``goal_volume_perc``."""
    limit = goal = None
    unit = None
    for key, v in cons.items():
        for prefix in ("limit_", "goal_"):
            if key.startswith(prefix):
                rest = key[len(prefix):]
                if kind == "dose":
                    u = {"dose_gy": "Gy", "dose_perc": "%Rx"}.get(rest)
                else:
                    u = {"volume_perc": "%"}.get(rest)
                if u is None:
                    raise ProtocolError(f"PortPy constraint {key!r} is not supported")
                if unit is not None and u != unit:  # a criterion has one unit: 66.5 Gy was read as 66.5 %Rx
                    raise ProtocolError(f"PortPy constraints {', '.join(map(repr, cons))} mix a dose in Gy "
                                        "and one in % of the prescription; give the limit and goal in one "
                                        "unit")
                unit = u
                if prefix == "limit_":
                    limit = float(v)
                else:
                    goal = float(v)
    return limit, goal, unit


def from_portpy(data: dict[str, Any] | str | os.PathLike, roi_set: RoiSet | None = None) -> Protocol:
    """Convert a PortPy ``clinical_criteria`` JSON (dict or file) into a :class:`Protocol`.

    Supported types (a criterion's ``type``, or its ``name`` as older PortPy versions write it):
    ``max_dose`` (Dmax), ``mean_dose`` (Dmean), ``min_dose`` (Dmin, ``>=``),
    ``dose_volume_D`` (``volume_perc`` / ``volume_cc``) and ``dose_volume_V`` (``dose_gy`` /
    ``dose_perc``, volume limits in %). PortPy's limits are upper limits, so the direction is
    ``<=`` except for ``min_dose``. ``*_perc`` doses are % of the prescription, which is
    ``pres_per_fraction_gy * num_of_fractions`` for every structure listed in ``prescriptions``
    (an optional extension) or given by the RoiSet. Absolute volume limits (cc) are not supported.
    A file or dict that is not such JSON raises :class:`ProtocolError` naming it.
    """
    source = "PortPy protocol"
    path = None
    if not isinstance(data, dict):
        source = f"PortPy protocol {data}"
        path = Path(data)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) read as none
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{source} is not valid JSON: {e}") from None
        data = _json(text, source)
    proto = _portpy_checked(data, None, source)
    if path is not None:  # errors name the file, as load_protocol's do
        proto._source = str(path)
    return proto.validate_for(roi_set) if roi_set is not None else proto


def _portpy_checked(data: Any, roi_set: RoiSet | None, source: str) -> Protocol:
    """:func:`from_portpy` of parsed JSON; a field of the wrong type or shape is one
    :class:`ProtocolError` naming ``source``, never a ValueError of Python's own."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{source}: a PortPy protocol is a JSON object, got {type(data).__name__}")
    try:
        return _from_portpy(data, roi_set)
    except ProtocolError as e:  # a criterion's error names the file too, as load_protocol's do
        msg = str(e)
        raise ProtocolError(msg if source in msg else f"{source}: {msg}") from None
    except DosepredError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # e.g. float("fifty"), a list for a dict
        raise ProtocolError(f"{source} is not a PortPy clinical_criteria JSON dosepred reads "
                            f"({type(e).__name__}: {e})") from None


def _from_portpy(data: dict[str, Any], roi_set: RoiSet | None) -> Protocol:
    name = str(data.get("protocol_name") or data.get("name") or "portpy")
    crits: list[dict[str, Any]] = []
    for i, c in enumerate(data.get("criteria", []), 1):
        typ = c.get("type", c.get("name"))  # "name" in older PortPy versions
        par = c.get("parameters", {})
        roi = par.get("structure_name")
        where = f"PortPy criterion {i} ({roi} {typ})"
        direction = "<="
        if typ in ("max_dose", "mean_dose", "min_dose"):
            metric = {"max_dose": "Dmax", "mean_dose": "Dmean", "min_dose": "Dmin"}[typ]
            kind = "dose"
            direction = ">=" if typ == "min_dose" else "<="
        elif typ == "dose_volume_D":
            if "volume_perc" in par:
                metric = f"D{par['volume_perc']:g}%"
            elif "volume_cc" in par:
                metric = f"D{par['volume_cc']:g}cc"
            else:
                raise ProtocolError(f"{where}: needs parameters volume_perc or volume_cc")
            kind = "dose"
        elif typ == "dose_volume_V":
            if "dose_gy" in par:
                metric = f"V{par['dose_gy']:g}Gy"
            elif "dose_perc" in par:
                metric = f"V{par['dose_perc']:g}%"
            else:
                raise ProtocolError(f"{where}: needs parameters dose_gy or dose_perc")
            kind = "volume"
        else:
            raise ProtocolError(f"{where}: type {typ!r} is not supported (max_dose, mean_dose, min_dose, "
                                "dose_volume_D, dose_volume_V)")
        try:
            limit, goal, unit = _constraint(c.get("constraints", {}), kind)
        except ProtocolError as e:
            raise ProtocolError(f"{where}: {e}") from None
        item: dict[str, Any] = {"roi": roi, "metric": metric, "limit": limit, "goal": goal}
        if limit is not None or goal is not None:
            item["direction"] = direction
            item["limit_unit"] = unit
        crits.append(item)
    rx: dict[str, float] = {}
    if "pres_per_fraction_gy" in data and "num_of_fractions" in data:
        total = float(data["pres_per_fraction_gy"]) * float(data["num_of_fractions"])
        for s in data.get("prescriptions", []) or []:
            rx[s] = total
    out = {"name": name, "description": str(data.get("description", f"imported from PortPy ({name})")),
           "prescriptions": rx, "criteria": crits}
    return parse_protocol(out, roi_set, f"PortPy {name!r}")
