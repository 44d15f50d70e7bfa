"""What every room of :mod:`dosepred.io.dicom` shares: the SOP classes, the tolerances, the error and
warning classes, and the checked reading of numeric header fields (each error names the file and the
field). Private to the package: other modules use the names :mod:`dosepred.io.dicom` exports."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np

from ...errors import DosepredError
from ...geometry import Geometry, GeometryError

#: The format's name: its row in :mod:`dosepred.io.formats` is named so, and the reader records it in
#: ``meta["format"]``.
FORMAT_NAME = "dicom"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"


# Tolerances in mm: positions within POS_TOL are the same; slice gaps may deviate by SPACING_REL.
POS_TOL = 1e-3
SPACING_REL = 0.01


#: DoseSummationTypes of a part of a plan's dose (PS3.3 C.8.8.3): used as the plan dose they would
#: make every comparison wrong by the missing fractions or beams, so they are never the patient's dose
PARTIAL_DOSES = {"FRACTION": "one fraction's dose", "BEAM": "one beam's dose",
                 "CONTROL_POINT": "one control point's dose", "FRACTION_SESSION": "one session's dose",
                 "BEAM_SESSION": "one beam's dose in one session",
                 "BRACHY_SESSION": "one brachytherapy session's dose"}


class DicomImportError(DosepredError, ValueError):
    """A DICOM file or series cannot be converted; the message names the file or series."""


class DicomWarning(UserWarning):
    pass


def warn(msg: str) -> None:
    warnings.warn(msg, DicomWarning, stacklevel=3)


def field_numbers(ds: Any, key: str, where: str, n: int | None = None) -> np.ndarray:
    """Field ``key`` of ``ds`` as finite floats (``n`` of them when given), or an error naming
    ``where`` (the file) and the field."""
    if key not in ds:
        raise DicomImportError(f"{where} lacks {key}")
    fast = _raw_numbers(ds, key)
    if fast is not None:
        val = fast
    else:
        val = ds[key].value
    if val is None or val == "":
        raise DicomImportError(f"{where}: {key} is empty")
    if isinstance(val, bytes) and ds[key].VR == "UN":
        # a DS/IS value longer than an explicit-VR 16-bit length (65534 bytes: a contour of some 3000
        # points) is written as UN (PS3.5 6.2.2, as pydicom and write_dicom do) and read as raw bytes:
        # it holds the backslash-separated numbers of its dictionary VR
        val = val.decode("ascii", "replace").strip(" \x00").split("\\")
    items = list(val) if hasattr(val, "__len__") and not isinstance(val, (str, bytes)) else [val]
    try:
        arr = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        shown = repr(items[:6])[:-1] + (f", ... ({len(items)} values)]" if len(items) > 6 else "]")
        raise DicomImportError(f"{where}: {key} holds non-numbers: {shown[:300]}") from None
    if n is not None and arr.size != n:
        raise DicomImportError(f"{where}: {key} must hold {n} numbers, got {arr.size}: {arr.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise DicomImportError(f"{where}: {key} holds NaN/inf: {arr.tolist()}")
    return arr


def _raw_numbers(ds: Any, key: str) -> list[str] | None:
    """The values of DS field ``key`` that pydicom has not converted yet, split from the bytes the file
    holds; None when it has, or the field is no DS. pydicom makes a validated DS object of each number:
    the 1 million contour numbers of 60 ROIs on a 512 x 512 x 160 CT took most of its import."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(key)
    elem = ds.get_item(tag) if tag is not None else None
    if elem is None or not getattr(elem, "is_raw", False) or not isinstance(elem.value, bytes):
        return None
    if elem.VR not in (None, "DS", "UN") or dictionary_VR(tag) != "DS":
        return None
    text = elem.value.decode("ascii", "replace").strip(" \x00")
    return text.split("\\") if text else None


def pixel_error(ds: Any, e: Exception) -> str:
    """Why the pixel data of ``ds`` could not be decoded, in one line: pydicom's message spans several
    lines; a compressed transfer syntax without an installed decoder (JPEG Lossless, as PACS export
    them, needs pylibjpeg-libjpeg or gdcm) is named with the remedy."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        from pydicom.pixels import get_decoder

        dec = get_decoder(ts) if ts is not None and ts.is_compressed else None
        needs = [] if dec is None or dec.is_available else list(dec.missing_dependencies)
    except (ImportError, NotImplementedError, ValueError):  # a transfer syntax pydicom has no decoder for
        needs = []
    if needs:
        return (f"it is compressed ({ts.name}, transfer syntax {ts}) and no decoder for it is installed: "
                f"install one ({', or '.join(_pip_commands(needs))}), or export the images uncompressed")
    return " ".join(str(e).split())


#: PyPI names of the packages pydicom's decoder plugins name otherwise: PyPI's "gdcm" is another project
#: (1.1, 2020), which ``pip install "gdcm>=3.0.10"`` refuses and ``pip install gdcm`` installs in vain
PIP_NAMES = {"gdcm": "python-gdcm"}


def _pip_commands(needs: list[str]) -> list[str]:
    """``pip install ...`` for each of pydicom's missing decoder plugins ('pylibjpeg - requires
    pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1'), the packages by their PyPI names."""
    out = []
    for need in needs:
        reqs = need.split(" - requires ", 1)[-1].split(" and ")
        names = [re.split(r"[<>=!~;\s]", r.strip(), maxsplit=1)[0] for r in reqs]
        names = [PIP_NAMES.get(n, n) for n in names if n and n != "numpy"]  # numpy: dosepred's own
        out.append(f"pip install {' '.join(names)}")
    return out


def raw_field(ds: Any, key: str) -> Any:
    """Field ``key`` of ``ds`` as pydicom reads it; None when absent; the stored text when pydicom cannot
    convert it (an IS holding 'inf' or '1e400' makes pydicom's own int() raise on access)."""
    if key not in ds:
        return None
    try:
        return ds[key].value
    except (ValueError, TypeError, OverflowError):
        from pydicom.datadict import tag_for_keyword

        v = ds.get_item(tag_for_keyword(key)).value
        return v.decode("ascii", "replace").strip() if isinstance(v, bytes) else str(v)


def field_int(ds: Any, key: str, where: str) -> int:
    """Field ``key`` of ``ds`` (an IS such as ROINumber) as an int, or an error naming ``where`` and the
    field when it is not a whole number (a bare ``int()`` would end in a traceback)."""
    val = raw_field(ds, key)
    try:
        f = float(str(val).strip())
    except (TypeError, ValueError):
        f = float("nan")
    if not (np.isfinite(f) and f.is_integer()):
        raise DicomImportError(f"{where}: {key} is {str(val)!r}, not a whole number")
    return int(f)


def image_orientation(ds: Any, where: str) -> np.ndarray:
    """A checked ImageOrientationPatient: two perpendicular unit vectors."""
    iop = field_numbers(ds, "ImageOrientationPatient", where, 6)
    try:
        Geometry.from_dicom(np.zeros(3), iop, (1.0, 1.0, 1.0))
    except GeometryError as e:
        raise DicomImportError(f"{where}: degenerate ImageOrientationPatient {iop.tolist()}: {e}") from None
    return iop


def pixel_spacing(ds: Any, where: str) -> np.ndarray:
    ps = field_numbers(ds, "PixelSpacing", where, 2)
    if not np.all(ps > 0):
        raise DicomImportError(f"{where}: PixelSpacing must be positive, got {ps.tolist()}")
    return ps


def round_mm(v: float) -> float:
    """A length computed from decimal strings, without its float noise (12 significant digits)."""
    return float(decimal_string(v))


def multi_value(v: Any) -> list[Any]:
    """A DICOM value as a list (a multi-valued element, one value, or none)."""
    if v is None:
        return []
    if isinstance(v, (str, bytes)):
        return [v]
    try:
        return list(v)
    except TypeError:
        return [v]


def referenced_uids(ds: Any, seq: str) -> list[str]:
    return [str(r.ReferencedSOPInstanceUID) for r in getattr(ds, seq, []) or []
            if getattr(r, "ReferencedSOPInstanceUID", None)]


def uid_of(ds: Any) -> str:
    return str(getattr(ds, "SOPInstanceUID", ""))


def decimal_string(v: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``v``."""
    v = float(v)
    if v == 0:
        return "0"
    for prec in range(12, 3, -1):
        s = f"{v:.{prec}g}"
        if len(s) <= 16:
            return s
    return f"{v:.3e}"
