"""Read and write NIfTI patients: one folder per patient.

Layout of ``<patient>/``::

    ct.nii.gz                     int16 HU
    dose.nii.gz                   float32 Gy (optional)
    possible_dose_mask.nii.gz     uint8 0/1 (optional; else the union of body label files or of body
                                  bits, an outline filled per axial slice, else CT > -500 HU with each
                                  axial slice's holes filled, as DICOM)
    rois/<name>.nii.gz            uint8 0/1, one label file per ROI      (--roi-format labels)
    roi_codes.nii.gz              bit-mask codes, bit k = ROI k          (--roi-format codes)
    rois.json                     {"rois": [{name, kind, prescription}], "missing_rois": [...],
                                   "roi_format": "labels"|"codes", "id": ..., "meta": {...}}

The array axes are the Patient's own (no reordering); the affine is ``Patient.geometry.ras_affine``
(LPS -> RAS: x and y negated) and carries spacing, orientation and origin. Reading sets the geometry
from the header's affine (``Geometry.from_ras_affine``, any orientation). The header holds float32,
so ``rois.json`` also stores the geometry at full precision; it is used when it agrees with the
header (to float32 precision), which makes every round trip exact; a header edited since wins.

Checks on reading (each error names the file): a dose must be finite and at most 1000 Gy (a dose in
cGy is refused, as for RTDOSE); every file of a patient must lie on the CT's grid
(same shape and the same affine to 1e-3 mm: a dose shifted or a sheared affine is rejected, naming
both files); bits of ``roi_codes`` beyond the ROIs ``rois.json`` lists are rejected; a label file
that is neither listed in ``rois.json`` nor a recognised ROI name is rejected with its name.

Label files written by other tools may use clinical names ("Parotid_L.nii.gz"); they are mapped
through :mod:`dosepred.io.roi_names` unless ``rois.json`` lists them.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import BODY_HU, MAX_DOSE_GY
from ..errors import DosepredError, InputError
from ..fsutil import atomic_dir, atomic_path, broken_links, broken_links_text
from ..geometry import Geometry, GeometryError, ct_body, shear_problem
from ..patient import Patient, RoiSet, file_key, file_name_problem, id_problem
from ..resample import WARN_REF_DOSE_OUTSIDE_MASK, dose_within_mask
from ..roi import binary_mask
from . import roi_names as _names
from .nifti_checks import MASK_FILE, drop_empty, filled_body, warn_beyond_int16

#: The format's name: its row in :mod:`dosepred.io.formats` is named so, and the reader records it in
#: ``meta["format"]``.
FORMAT_NAME = "nifti"
CT_FILE = "ct.nii.gz"
DOSE_FILE = "dose.nii.gz"
# MASK_FILE, "possible_dose_mask.nii.gz": defined in .nifti_checks, whose messages name it
CODES_FILE = "roi_codes.nii.gz"
ROIS_JSON = "rois.json"
ROI_DIR = "rois"


class NiftiFormatError(DosepredError, ValueError):
    """A NIfTI patient folder that does not hold what the reader expects (the message names it)."""


# ------------------------------------------------------------------------------------- geometry

def patient_affine(p: Patient) -> np.ndarray:
    """RAS affine of the patient's array axes: ``p.geometry.ras_affine``."""
    assert p.geometry is not None
    return p.geometry.ras_affine


def _f32_decimal(v: float) -> float:
    """The shortest decimal of a float32 value (pixdim is float32)."""
    return float(str(np.float32(v)))


def _geometry(img: Any, path: Path, stored: dict[str, Any] | None) -> Geometry:
    """Geometry of an image from its affine (float32 noise removed), or the sidecar's full-precision
    ``stored`` geometry when it agrees with the header."""
    if not has_transform(img):
        raise NiftiFormatError(f"{path}: qform_code and sform_code are both 0: the header does not say "
                               "where the voxels lie in the patient (set a scanner/aligned qform or sform)")
    warn_forms_disagree(img, path)
    aff = mm_affine(img)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise NiftiFormatError(f"{path}: the affine is not a finite 4x4 matrix")
    try:
        g = Geometry.from_ras_affine(aff)
    except GeometryError as e:
        raise NiftiFormatError(f"{path}: invalid affine: {e}") from None
    problem = shear_problem(g)
    if problem:
        raise NiftiFormatError(f"{path}: the affine is not a grid dosepred can measure on: {problem}")
    lo, hi = CT_VOXEL_MM
    if not all(lo <= v <= hi for v in g.spacing):  # mm per voxel once the header's unit is applied
        sizes = ", ".join(f"{v:.4g}" for v in g.spacing)
        unit = _unit(img)
        raw = [v / _MM_PER_UNIT.get(unit, 1.0) for v in g.spacing]  # the affine's own numbers
        fit = next((u for u in ("mm", "meter", "micron") if _MM_PER_UNIT[u] != _MM_PER_UNIT.get(unit, 1.0)
                    and all(lo <= v * _MM_PER_UNIT[u] <= hi for v in raw)), None)
        words = {"mm": "millimetres", "meter": "metres", "micron": "microns"}
        fix = (f"an affine in {words.get(fit)} under another unit? Set xyzt_units to {fit!r} in every file "
               f"of the patient (nibabel: img.header.set_xyzt_units({fit!r}))" if fit else
               "set xyzt_units to the affine's unit in every file of the patient (nibabel: "
               "img.header.set_xyzt_units(...))")
        raise NiftiFormatError(
            f"{path}: voxel sizes {sizes} mm (header unit {unit!r}) are no CT's ({lo:g}-{hi:g} mm): {fix}")
    if stored:
        try:
            sg = Geometry.from_dict(stored)
        except (GeometryError, KeyError, TypeError, ValueError) as e:
            raise NiftiFormatError(f"{path.parent / ROIS_JSON}: invalid geometry: {e}") from None
        if _same_affine(sg.ras_affine, aff):
            return sg
    sp = tuple(_f32_decimal(v) for v in g.spacing)
    direction = np.round(g.direction, 7) + 0.0
    origin = [_f32_decimal(v) for v in g.origin]
    try:
        return Geometry(np.asarray(origin), direction, sp)  # type: ignore[arg-type]
    except GeometryError as e:
        raise NiftiFormatError(f"{path}: invalid affine: {e}") from None


#: millimetres per spatial unit of a NIfTI header (``xyzt_units``; "unknown": mm, as every tool writes)
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}


#: voxel sizes (mm) a CT can have: a header in metres or microns that says "unknown" (or mm) gives
#: 0.004 or 3900 mm voxels, which scale every cc-based metric by 1e-9 or 1e9
CT_VOXEL_MM = (0.05, 50.0)


def _unit(img: Any) -> str:
    try:
        return str(img.header.get_xyzt_units()[0])
    except (AttributeError, KeyError, ValueError):
        return "unknown"


def mm_affine(img: Any) -> np.ndarray:
    """The header's affine (nibabel's ``img.affine``) in millimetres: the NIfTI standard gives the
    qform/sform in the header's spatial unit (``xyzt_units``), which nibabel leaves as it is; a file
    in metres (or microns) was read with voxels of 0.001 mm (or 1000 mm) per mm. ITK converts alike."""
    aff = np.asarray(img.affine, dtype=np.float64).copy()
    aff[:3, :] *= _MM_PER_UNIT.get(_unit(img), 1.0)
    return aff


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name`` (a ``.nii.gz`` name) or its uncompressed twin ``.nii`` (dcm2niix and plastimatch
    write ``.nii`` by default), None when neither exists; both is an error (which one is the patient's?)."""
    gz, plain = folder / name, folder / name[: -len(".gz")]
    if gz.is_file() and plain.is_file():
        raise NiftiFormatError(f"{folder} holds both {gz.name} and {plain.name}: which one is the patient's? "
                               "Remove the other")
    return gz if gz.is_file() else plain if plain.is_file() else None


def has_transform(img: Any) -> bool:
    """False for a NIfTI header whose qform_code and sform_code are both 0 (no patient placement:
    nibabel then makes up an affine from the voxel sizes alone)."""
    h = img.header
    try:
        return int(h["qform_code"]) > 0 or int(h["sform_code"]) > 0
    except (KeyError, ValueError, TypeError):
        return True


def warn_forms_disagree(img: Any, path: Path) -> None:
    """Warn when a header's qform and sform (both codes > 0) place the voxels differently: dosepred
    (as nibabel and ITK from 5.1 on) uses the sform, ITK before 5.1 (3D Slicer 4.10, ITK-SNAP 3.x,
    ANTs up to 2.3.4) the qform, so the tools would disagree on where the patient lies."""
    h = img.header
    try:
        both = int(h["qform_code"]) > 0 and int(h["sform_code"]) > 0
    except (KeyError, ValueError, TypeError):
        return
    if not both:
        return
    q, s = (np.asarray(a, dtype=np.float64) for a in (img.get_qform(), img.get_sform()))
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(s))):
        return
    # the qform holds a quaternion in float32: allow its rounding, not a shift or another axis
    if _same_affine(q, s, tol_mm=0.01, rel=1e-4):
        return
    corners = np.array([[0, 0, 0], [n - 1 for n in img.shape[:3]]], dtype=np.float64)
    moved = max(float(np.linalg.norm((q[:3, :3] - s[:3, :3]) @ c + q[:3, 3] - s[:3, 3])) for c in corners)
    warnings.warn(f"{path}: its sform (code {int(h['sform_code'])}) and qform (code {int(h['qform_code'])}) "
                  f"place the voxels up to {moved:.3g} mm apart; dosepred uses the sform (as nibabel and ITK "
                  "5.1+), ITK before 5.1 (3D Slicer 4.10, ITK-SNAP 3.x) the qform: check which is the "
                  "patient's and write the file with both the same", stacklevel=3)


def file_geometry(path: str | os.PathLike) -> Geometry | None:
    """The grid a NIfTI file's header places its voxels on (LPS mm), or None when the header has
    no qform/sform."""
    path = Path(path)
    _, img = _load(path, "image")
    if not has_transform(img):
        return None
    warn_forms_disagree(img, path)
    try:
        return Geometry.from_ras_affine(mm_affine(img))
    except GeometryError as e:
        raise NiftiFormatError(f"{path}: invalid affine: {e}") from None


def _same_affine(a: np.ndarray, b: np.ndarray, tol_mm: float = 1e-3, rel: float = 1e-5) -> bool:
    """Same voxel grid to float32 precision: each axis step within ``rel`` (1e-5) relative and the
    origin within ``tol_mm``."""
    scale = float(np.abs(a[:3, :3]).max())
    return (bool(np.allclose(a[:3, :3], b[:3, :3], atol=rel * scale, rtol=0))
            and bool(np.allclose(a[:3, 3], b[:3, 3], atol=tol_mm, rtol=0)))


def _grid_difference(a: np.ndarray, b: np.ndarray) -> str:
    """How two RAS affines differ, in words."""
    parts = []
    shift = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    if shift > 1e-3:
        parts.append(f"origin {shift:.4g} mm apart")
    va, vb = abs(float(np.linalg.det(a[:3, :3]))), abs(float(np.linalg.det(b[:3, :3])))
    if abs(va - vb) > 1e-6 * max(va, vb):
        parts.append(f"voxel volume {va:.4g} vs {vb:.4g} mm3 ({100 * (va / vb - 1):+.1f} %)")
    if not parts or not np.allclose(a[:3, :3], b[:3, :3], atol=1e-5 * float(np.abs(b[:3, :3]).max())):
        parts.append("voxel axes differ")
    return ", ".join(dict.fromkeys(parts))


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    arr = np.asarray(arr)
    # the dtype given: nibabel refuses 64-bit integers (the ROI codes of more than 32 ROIs) without it
    img = nib.Nifti1Image(arr, affine, dtype=arr.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_data_dtype(arr.dtype)
    # nibabel picks the format (gzip or not) from the name: the temporary file keeps the extension
    with atomic_path(path, ".nii.gz" if path.name.endswith(".gz") else ".nii", only_writes=True) as tmp:
        nib.save(img, tmp)
    return path


def _load(path: Path, what: str) -> tuple[np.ndarray, Any]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types on bad files
        raise NiftiFormatError(f"cannot read {what} {path}: {e}") from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise NiftiFormatError(f"{what} {path} must be 3-D, got shape {arr.shape}")
    return arr, img


# ---------------------------------------------------------------------------------------- writing

def write_dose(patient: Patient, dose: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``dose`` (Gy, float32, on the patient's grid) as NIfTI with the patient's affine.
    A path without ``.nii``/``.nii.gz`` is a folder: ``<path>/<id>.nii.gz``."""
    path = Path(path)
    if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
        path = path / f"{patient.id}.nii.gz"
    d = np.asarray(dose, dtype=np.float32)
    if d.shape != patient.shape:
        raise InputError(f"patient {patient.id}: dose shape {d.shape} != CT shape {patient.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(d, patient_affine(patient), path)


def read_dose(path: str | os.PathLike) -> np.ndarray:
    """Read a NIfTI dose (Gy) as float32, in the file's array order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dose file {path} does not exist")
    arr, img = _load(path, "dose")
    if np.issubdtype(arr.dtype, np.floating):
        d = arr.astype(np.float32)
    else:
        d = np.asarray(img.get_fdata(dtype=np.float32))  # applies scl_slope/inter
    if not np.all(np.isfinite(d)):
        raise NiftiFormatError(f"dose {path} contains NaN/inf")
    if d.size and float(d.max()) > MAX_DOSE_GY:  # as RTDOSE: a dose in cGy is no dose in Gy
        raise NiftiFormatError(f"dose {path}: maximum dose {float(d.max()):.4g} Gy is not a radiotherapy "
                               "dose (a dose in cGy? NIfTI doses are read as Gy)")
    return d


def write_patient(p: Patient, out_dir: str | os.PathLike, roi_format: str = "labels",
                  dose: np.ndarray | None = None) -> Path:
    """Write ``out_dir/<id>/`` (see the module docstring); returns the folder. Written to a
    temporary folder and renamed, so no half-written patient is left behind."""
    if roi_format not in ("labels", "codes"):
        raise InputError(f"roi_format must be 'labels' or 'codes', got {roi_format!r}")
    if roi_format == "labels":
        for name in p.present_rois:
            _check_label_name(p.id, name)
        _names.check_names_apart(p.id, p.present_rois, "label files rois/<name>.nii.gz",
                                  "rename one, or export with --roi-format codes (names kept in "
                                  "rois.json)")
    final = Path(out_dir) / p.id
    with atomic_dir(final) as tmp:
        aff = patient_affine(p)
        _save(p.require_ct("NIfTI export").astype(np.int16), aff, tmp / CT_FILE)
        d = dose if dose is not None else p.dose
        if d is not None:
            _save(np.asarray(d, dtype=np.float32), aff, tmp / DOSE_FILE)
        _save(np.asarray(p.possible_dose_mask, dtype=np.uint8), aff, tmp / MASK_FILE)
        if roi_format == "codes":
            _save(p.roi_codes, aff, tmp / CODES_FILE)
        else:
            (tmp / ROI_DIR).mkdir()
            for name in p.present_rois:
                _save(p.mask(name).astype(np.uint8), aff, tmp / ROI_DIR / f"{name}.nii.gz")
        assert p.geometry is not None
        info = {"id": p.id, "roi_format": roi_format, "rois": p.roi_set.to_dicts(),
                "missing_rois": list(p.missing_rois), "spacing": list(p.spacing),
                "geometry": p.geometry.to_dict(),
                "meta": {k: v for k, v in p.meta.items() if k != "affine"}}
        (tmp / ROIS_JSON).write_text(json.dumps(info, indent=2))
    return final


def _check_label_name(pid: str, name: str) -> None:
    """Refuse an ROI name that cannot name its label file ``rois/<name>.nii.gz`` as it is (a slash
    makes a folder of it; ".nii" inside it is where the reader cuts the name), before anything is
    written: such names (DICOM names are kept as they are, "Ring 1/2") have their place in the codes
    layout, whose ``rois.json`` keeps any name."""
    why = file_name_problem(name) or ("it holds '.nii', where a label file's name ends" if ".nii" in name
                                      else None)
    if why:
        raise InputError(f"patient {pid}: ROI {name!r} cannot name a label file (rois/<name>.nii.gz): {why}; "
                         "export with --roi-format codes (roi_codes.nii.gz, names kept in rois.json), or "
                         "rename the ROI")


# ---------------------------------------------------------------------------------------- reading

def _binary(arr: np.ndarray, path: Path, pid: str) -> np.ndarray:
    """A label or mask file as a boolean mask (:func:`dosepred.roi.binary_mask`'s rule: its non-zero
    voxels hold one value), else a :class:`NiftiFormatError` naming the patient and the file."""
    try:
        return binary_mask(arr, f"patient {pid}: {path}")
    except InputError as e:
        raise NiftiFormatError(str(e)) from None


def is_patient_folder(path: str | os.PathLike) -> bool:
    """A folder holding ``ct.nii.gz`` (or ``ct.nii``), or a link by that name to nothing, which reading
    the folder then refuses (:func:`_check_links`): the patient is not left out."""
    path = Path(path)
    cts = [path / CT_FILE, path / CT_FILE[: -len(".gz")]]
    return any(p.is_file() for p in cts) or bool(broken_links(cts))


def _nifti_files(folder: Path) -> list[str]:
    """The names of the NIfTI files (``.nii``, ``.nii.gz`` in any case) in ``folder`` and its ROI folder."""
    return [f.name for d in (folder, folder / ROI_DIR) if d.is_dir() for f in d.iterdir()
            if f.name.lower().endswith((".nii", ".nii.gz")) and not f.name.startswith(".")]


def patient_folders(src: str | os.PathLike) -> list[Path]:
    """``src`` itself when it holds ``ct.nii.gz``, else its sub-folders that do (sorted)."""
    src = Path(src)
    if src.is_file():
        raise NiftiFormatError(f"NIfTI folder {src} is a file, not a folder (give a patient folder holding "
                               "ct.nii.gz or ct.nii, or a folder of them)")
    if not src.is_dir():
        raise FileNotFoundError(f"NIfTI folder {src} does not exist")
    if is_patient_folder(src):
        return [src]
    entries = list(src.iterdir())
    broken = broken_links(entries)
    if broken:  # a patient folder that is not there would be left out of the cohort without a word
        raise NiftiFormatError(f"NIfTI folder {src}: {broken_links_text(broken)}")
    folders = sorted(p for p in entries if p.is_dir() and is_patient_folder(p))
    # a sub-folder with NIfTI files but no CT by its name (CT.nii.gz, image.nii.gz) is a patient that
    # would be left out of the cohort without a word
    unnamed = [p for p in entries if p.is_dir() and not p.name.startswith(".") and not is_patient_folder(p)
               and any(_nifti_files(p))]
    if folders and unnamed:
        q = unnamed[0]
        names = ", ".join(sorted(_nifti_files(q))[:3])
        raise NiftiFormatError(f"NIfTI folder {src}: {q} holds NIfTI files ({names}) "
                               f"but no {CT_FILE} (nor {CT_FILE[: -len('.gz')]}): name its CT so, and its "
                               f"other files as dosepred names them ({DOSE_FILE}, {MASK_FILE}, {ROIS_JSON}: "
                               f"names are case-sensitive), or move the folder out"
                               + (f" ({len(unnamed) - 1} more such folders)" if len(unnamed) > 1 else ""))
    if not folders:
        raise NiftiFormatError(f"{src} holds no NIfTI patient folders (sub-folders with {CT_FILE} or "
                                f"{CT_FILE[: -len('.gz')]})")
    return folders


#: A ``roi_codes`` volume whose non-zero values are exactly 1..K (K >= 3, and K no more than the ROIs
#: the sidecar lists as present: one value per ROI) is a label map, not bit codes, when at least this
#: share of its ROI voxels would lie in two or more ROIs read as bits, or when a listed ROI's bit is
#: never set (its bit is beyond K's: a label map of K ROIs leaves the bits above log2 K empty).
#: OpenKBP's 202 training and validation plans as bit codes: at most 8.2 % (median 1.6 %), and none
#: has the values 1..K.
LABEL_MAP_SHARE = 0.25


def _refuse_label_map(codes: np.ndarray, path: Path, pid: str, present: dict[int, str]) -> None:
    """Refuse a label map saved as ``roi_codes``: read as bits, label 3 would be ROIs 0 and 1 both and
    every organ labelled with a number that is no power of two would be a mix of others. ``present``:
    bit -> name of the ROIs the sidecar lists as present; a label map holds at most one value per ROI,
    so bit codes with more distinct values than that (nested targets of a small ROI set) are never
    refused."""
    nz = codes[codes > 0]
    if nz.size == 0:
        return
    vals = np.unique(nz)
    k = len(vals)
    if k < 3 or int(vals[-1]) != k or k > len(present):  # exactly 1..K, at most one value per ROI
        return
    share = float(np.mean((nz & (nz - nz.dtype.type(1))) != 0))  # more than one bit set
    empty = [name for bit, name in present.items() if bit >= k.bit_length()]  # no value sets their bit
    if share >= LABEL_MAP_SHARE or empty:
        why = [f"{share:.0%} of its ROI voxels would lie in two or more ROIs (OpenKBP's plans: at most 8 %)"]
        if empty:
            why.append(f"{', '.join(empty[:4])}{' ...' if len(empty) > 4 else ''} would be empty though "
                       f"{ROIS_JSON} lists {'it' if len(empty) == 1 else 'them'}")
        raise NiftiFormatError(
            f"patient {pid}: {path} looks like a label map (the values 1-{k}, one per ROI), not bit codes: "
            f"read as bit k = ROI k, value 3 would be ROIs 0 and 1 both, {' and '.join(why)}; write one "
            f"label file per ROI ({ROI_DIR}/<name>.nii.gz) or set bit k for the k-th ROI of {ROIS_JSON} "
            f"(an ROI that is not contoured goes in its missing_rois)")


#: The names a NIfTI patient folder's files are read by (a ``.nii.gz`` name also as ``.nii``)
_FOLDER_NAMES = (*(n for f in (CT_FILE, DOSE_FILE, MASK_FILE, CODES_FILE) for n in (f, f[: -len(".gz")])),
                 ROIS_JSON, ROI_DIR)


def _check_name_case(folder: Path) -> None:
    """Refuse a patient folder holding one of its files named in another case (``DOSE.NII.GZ``,
    ``Possible_Dose_Mask.nii.gz``, ``ROIS.JSON``: a DOS or Windows tool's names) where the name itself
    is not there: names are case-sensitive, so it was ignored without a word (the patient read without
    its dose; without its mask, whose place the body of the CT took)."""
    for f in folder.iterdir() if folder.is_dir() else []:
        name = next((n for n in _FOLDER_NAMES if f.name != n and f.name.lower() == n), None)
        if name is not None and not (folder / name).exists():  # a case-insensitive disk finds it
            raise NiftiFormatError(f"{folder} holds {f.name}, not {name}: names are case-sensitive, so it "
                                   f"would be ignored; rename it {name}")


def read_sidecar(folder: Path) -> dict[str, Any]:
    _check_name_case(folder)
    js = folder / ROIS_JSON
    if not js.is_file():
        return {}
    try:
        obj = json.loads(js.read_text(encoding="utf-8-sig"))  # a byte-order mark read as none
    except UnicodeDecodeError as e:
        raise NiftiFormatError(f"{js} is not UTF-8 text: {e}") from None
    except json.JSONDecodeError as e:
        raise NiftiFormatError(f"{js} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise NiftiFormatError(f"{js}: expected a JSON object")
    for key, what, ok in _SIDECAR_FIELDS:
        if key in obj and not ok(obj[key]):
            raise NiftiFormatError(f"{js}: {key!r} must be {what}, got {_short(obj[key])}")
    # ROI names in NFC, as the label files' and DICOM's (a rois.json written from macOS file names, or
    # from a patient read before names were compared in NFC, lists "Parótida" decomposed: that patient's
    # ROI was another than an NFC-listing patient's, each missing the other's, though both print alike)
    if "rois" in obj:
        obj["rois"] = [_kind_from_name({**d, "name": _names.nfc(d["name"])}) for d in obj["rois"]]
        if _find(folder, CODES_FILE) is None:  # label files: one of the body listed without a kind (or
            # prescription) is the body, as unlisted; it was an OAR, the possible-dose mask the whole grid
            obj["rois"] = [d for d in obj["rois"] if not _listed_body(d)]
        names = [d["name"] for d in obj["rois"]]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise NiftiFormatError(f"{js}: 'rois' lists ROI {twice!r} twice (spelt alike: names are "
                                   "compared in Unicode NFC); list it once")
    if "missing_rois" in obj:
        obj["missing_rois"] = [_names.nfc(n) for n in obj["missing_rois"]]
    return obj


def _listed_body(d: dict[str, Any]) -> bool:
    """A ``rois.json`` ROI listed by name alone (no kind, no prescription) that the aliases read as the
    body (``Body``, ``External``, ``Skin``): the possible-dose mask, as its label file unlisted or a DICOM
    body contour, not an organ at risk."""
    return d.keys() == {"name"} and _names.canonical(d["name"]).is_body


def _kind_from_name(d: dict[str, Any]) -> dict[str, Any]:
    """A rois.json ROI without "kind" whose name the aliases read as a target with its dose ("PTV_7000",
    "PTV 70Gy": as its label file reads without rois.json) is that target, its prescription the
    name's unless given; any other takes the default kind (oar). A hand-written rois.json listing the
    clinic's label files by name only made its PTVs organs at risk without a prescription."""
    if "kind" in d:
        return d
    t = _names.target_from_name(d["name"])
    if t is None:
        return d
    rx = d.get("prescription")
    return {**d, "kind": "target", "prescription": t[1] if rx is None else rx}


#: the fields of rois.json the reader walks: (key, what it must be, the check)
_SIDECAR_FIELDS = (
    ("rois", "a list of objects with a 'name' each (and a 'prescription' in Gy, a number, for a target)",
     lambda v: isinstance(v, list) and all(isinstance(d, dict) and isinstance(d.get("name"), str)
                                           and _number_or_none(d.get("prescription")) for d in v)),
    ("missing_rois", "a list of ROI names",
     lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)),
    ("meta", "a JSON object", lambda v: isinstance(v, dict)),
)


def _number_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _short(v: Any) -> str:
    r = json.dumps(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _check_links(folder: Path) -> None:
    """A patient folder's files (its own and its ROI folder's) that are links to nothing: a CT, dose,
    mask or ROI file that is not there (an ROI would read as not contoured) is refused."""
    roi_dir = folder / ROI_DIR
    entries = list(folder.iterdir()) + (list(roi_dir.iterdir()) if roi_dir.is_dir() else [])
    broken = broken_links(entries)
    if broken:
        raise NiftiFormatError(f"NIfTI patient folder {folder}: {broken_links_text(broken)}")


def _label_name(f: Path, listed: Iterable[str]) -> str:
    """The ROI name of label file ``f``: its name before ".nii", in Unicode NFC, or the spelling of the
    name ``rois.json`` lists that it is in NFC (a file name written on macOS is decomposed, NFD:
    "Parótida" as "o" + a combining accent; it was refused as an ROI rois.json does not list, and
    without rois.json two patients' "Parótida" were two ROIs)."""
    stem = _names.nfc(re.split(r"\.nii", f.name, maxsplit=1, flags=re.IGNORECASE)[0])
    return next((n for n in listed if _names.nfc(n) == stem), stem)


def _label_files(folder: Path) -> list[Path]:
    """The label files ``rois/*.nii*`` of a patient folder, in name order; ``.NII.GZ`` is one too (as on
    Windows, whose names ignore case: ``PTV70.NII.GZ`` was skipped without a word); hidden files are none
    (a macOS copy's AppleDouble ``._Brainstem.nii.gz`` holds no image, and was refused as an unreadable
    ROI)."""
    d = folder / ROI_DIR
    return sorted(f for f in d.iterdir() if ".nii" in f.name.lower() and not f.name.startswith(".")) \
        if d.is_dir() else []


def _listed_roi_set(folder: Path, info: dict[str, Any]) -> RoiSet:
    """The RoiSet ``rois.json`` lists (:meth:`RoiSet.from_dicts`), its errors naming the file."""
    try:
        return RoiSet.from_dicts([d for d in info.get("rois") or [] if not _listed_body(d)])
    except InputError as e:  # a hand-written rois.json: name the file
        raise NiftiFormatError(f"{folder / ROIS_JSON}: {e}") from None


def _scan_rois(folder: Path, info: dict[str, Any]) -> dict[str, _names.Canonical]:
    """Canonical ROIs of one patient folder (for the union RoiSet), without reading the volumes."""
    _check_links(folder)
    _listed_roi_set(folder, info)  # its ROIs checked as one folder's are ("rx" for "prescription": refused)
    listed = {d["name"]: d for d in info.get("rois", [])}
    out: dict[str, _names.Canonical] = {}
    if _find(folder, CODES_FILE) is not None:
        if not listed:
            raise NiftiFormatError(f"{_find(folder, CODES_FILE)} needs {folder / ROIS_JSON} listing the ROI "
                                   "names in bit order")
        missing = set(info.get("missing_rois", []))
        for n, d in listed.items():
            if n not in missing and not _listed_body(d):
                out[n] = _names.Canonical(n, d.get("kind", "oar"), d.get("prescription"))
        return out
    for f in _label_files(folder):
        stem = _label_name(f, listed)
        if stem in listed:
            d = listed[stem]
            out[stem] = _names.Canonical(stem, d.get("kind", "oar"), d.get("prescription"))
        else:
            c = _names.RoiMap.empty().resolve(stem)
            if c is not None:
                out[c.name] = c
    return out


def _read_patient(folder: Path, roi_set: RoiSet) -> Patient:
    _check_links(folder)
    info = read_sidecar(folder)
    pid = str(info.get("id") or folder.name)
    ct_path = _find(folder, CT_FILE)
    if ct_path is None:
        raise NiftiFormatError(f"{folder} holds no {CT_FILE} (nor {CT_FILE[: -len('.gz')]})")
    ct, img = _load(ct_path, "CT")
    if not np.issubdtype(ct.dtype, np.integer):
        ct = np.asarray(img.get_fdata(dtype=np.float64))
        bad = int(np.count_nonzero(~np.isfinite(ct)))
        if bad:
            raise NiftiFormatError(f"patient {pid}: {ct_path} holds {bad} NaN/inf voxel(s); a CT is a finite "
                                   "number of HU in every voxel")
    warn_beyond_int16(ct, ct_path, pid)
    shape = ct.shape
    ct_aff = mm_affine(img)
    geom = _geometry(img, ct_path, info.get("geometry"))

    def same_grid(arr: np.ndarray, other: Any, path: Path) -> np.ndarray:
        if arr.shape != shape:
            raise NiftiFormatError(f"patient {pid}: {path} has shape {arr.shape}, CT {ct_path} {shape}")
        aff = mm_affine(other)
        if not _same_affine(aff, ct_aff):
            raise NiftiFormatError(f"patient {pid}: {path} is not on the grid of {ct_path} "
                                   f"({_grid_difference(aff, ct_aff)}); every file of a patient must share "
                                   "the CT's affine")
        return arr

    def load_on_grid(path: Path, what: str) -> np.ndarray:
        arr, im = _load(path, what)
        return same_grid(arr, im, path)

    dose = None
    dose_path, mask_path, codes_path = (_find(folder, n) for n in (DOSE_FILE, MASK_FILE, CODES_FILE))
    if dose_path is not None:
        dose = read_dose(dose_path)
        same_grid(dose, _load(dose_path, "dose")[1], dose_path)
        if dose.size and float(dose.min()) < 0:
            raise NiftiFormatError(f"patient {pid}: {dose_path} holds negative doses "
                                   f"({int((dose < 0).sum())} voxel(s), min {float(dose.min()):.4g} Gy); "
                                   "a dose must be >= 0 Gy")
    pdm = None
    if mask_path is not None:
        pdm = _binary(load_on_grid(mask_path, "possible-dose mask"), mask_path, pid)
    masks: dict[str, np.ndarray] = {}
    files_of: dict[str, list[str]] = {}
    body_files: list[str] = []  # the body's label files or bits: the possible-dose mask without one
    if codes_path is not None:
        codes = load_on_grid(codes_path, "ROI codes")
        if codes.dtype.kind != "u":
            if codes.dtype.kind == "i" and codes.min() >= 0:
                codes = codes.astype(np.dtype(f"u{codes.dtype.itemsize}"))
            else:
                raise NiftiFormatError(f"patient {pid}: {codes_path} must hold unsigned integers")
        listed = info["rois"]
        nbits = codes.dtype.itemsize * 8
        if len(listed) < nbits and codes.size:
            extra = int(np.bitwise_or.reduce(codes, axis=None)) >> len(listed)
            if extra:
                bits = [len(listed) + k for k in range(nbits) if extra >> k & 1]
                raise NiftiFormatError(f"patient {pid}: {codes_path} sets bit(s) {bits}, but "
                                       f"{folder / ROIS_JSON} lists only {len(listed)} ROIs (bits 0-"
                                       f"{len(listed) - 1}); those voxels belong to no known ROI")
        missing = set(info.get("missing_rois", []))
        _refuse_label_map(codes, codes_path, pid,
                          {b: d["name"] for b, d in enumerate(listed) if d["name"] not in missing})
        for k, d in enumerate(listed):
            if d["name"] in missing:
                continue
            m = ((codes >> codes.dtype.type(k)) & codes.dtype.type(1)).astype(bool)
            if _listed_body(d):  # the body, not an organ at risk (its bit was an OAR, the mask all ones)
                if mask_path is None and m.any():
                    pdm = m if pdm is None else pdm | m
                    body_files.append(f"{codes_path.name} bit {k} ({d['name']})")
                continue
            masks[d["name"]] = m
    elif (folder / ROI_DIR).is_dir():
        listed = {d["name"] for d in info.get("rois", [])}
        for f in _label_files(folder):
            stem = _label_name(f, listed)
            c = _names.Canonical(stem, "oar") if stem in listed else _names.RoiMap.empty().resolve(stem)
            if c is None or c.is_body:
                if c is not None and mask_path is None:  # body files: their union
                    body = _binary(load_on_grid(f, "ROI"), f, pid)
                    pdm = body if pdm is None else pdm | body
                    body_files.append(f.name)
                continue
            if c.name not in roi_set:
                raise NiftiFormatError(f"patient {pid}: label file {f} names ROI {c.name!r}, which is "
                                       f"neither listed in {folder / ROIS_JSON} nor in the ROI set "
                                       f"({', '.join(roi_set.names)})")
            m = _binary(load_on_grid(f, "ROI"), f, pid)
            masks[c.name] = masks[c.name] | m if c.name in masks else m
            files_of.setdefault(c.name, []).append(f.name)
        for name, fs in files_of.items():
            if len(fs) > 1:  # as the DICOM reader does for two structures of one name
                warnings.warn(f"patient {pid}: label files {', '.join(fs)} in {folder / ROI_DIR} all name "
                              f"ROI {name!r}; it is their union: check that they are one structure (else "
                              "remove or rename the others)", stacklevel=2)
    if body_files and pdm is not None:
        pdm = filled_body(pdm, geom, body_files, folder / ROI_DIR if codes_path is None else folder, pid)
    drop_empty(masks, pid, codes_path, folder / ROI_DIR, files_of)
    meta = dict(info.get("meta", {}))
    meta.pop("affine", None)
    meta.update({"format": FORMAT_NAME, "source": str(folder.resolve())})
    if pdm is None:  # as DICOM without a body contour (the whole grid was the body: PTV70 predicted 0 Gy)
        pdm, removed = ct_body(ct, geom, BODY_HU)
        meta["possible_dose_mask"] = f"CT > {BODY_HU:g} HU, holes filled (no {MASK_FILE} nor body ROI)" + \
            (f"; {removed}" if removed else "")
    if dose is not None and pdm is not None:  # a reference dose is 0 Gy outside its mask, as OpenKBP's
        dose, share = dose_within_mask(dose, pdm)
        if share > 0:
            meta["dose_outside_mask_pct"] = round(100.0 * share, 3)
        if share > WARN_REF_DOSE_OUTSIDE_MASK:
            warnings.warn(f"patient {pid}: {100.0 * share:.1f} % of the dose in {dose_path} lies "
                          "outside the possible-dose mask; read as 0 Gy there, where no prediction has dose: "
                          "does the mask miss part of the patient?", stacklevel=2)
    return Patient.from_masks(pid, ct, masks, roi_set, geom.spacing, pdm, dose, meta, geometry=geom)


def iter_nifti_folder(src: str | os.PathLike) -> tuple[RoiSet, Iterator[Patient]]:
    """``(roi_set, iterator of Patients)`` of a NIfTI patient folder or a folder of them. When every
    patient's ``rois.json`` lists the same ROIs, that order is kept; otherwise the union is built
    like a DICOM import (OpenKBP names first, then the others sorted)."""
    folders = patient_folders(src)
    infos = [read_sidecar(f) for f in folders]
    _check_unique_ids(folders, infos)
    lists = [i.get("rois") for i in infos]
    if all(lists) and all(lst == lists[0] for lst in lists):
        roi_set = _listed_roi_set(folders[0], infos[0])
    else:
        roi_set = _names.union_roi_set([_scan_rois(f, i) for f, i in zip(folders, infos, strict=True)],
                                       [f.name for f in folders], src)

    def gen() -> Iterator[Patient]:
        for f in folders:
            yield _read_patient(f, roi_set)

    return roi_set, gen()


def _check_unique_ids(folders: list[Path], infos: list[dict[str, Any]]) -> None:
    """Refuse two patient folders of one id (``rois.json``'s ``id``, else the folder's name): a folder
    copied to start another keeps its ``id``, and the two patients' predictions were one file."""
    seen: dict[str, list[tuple[str, Path]]] = {}
    for f, i in zip(folders, infos, strict=True):
        pid = str(i.get("id") or f.name)
        why = id_problem(pid)
        if why:  # the id rois.json gives, or the folder's name
            said = f"{f / ROIS_JSON}: \"id\" {pid!r}" if i.get("id") else f"{f}: the folder's name, the id,"
            raise NiftiFormatError(f"{said} cannot name the patient's files (<id>.nii.gz, <id>.npz, <id>/): "
                                   f"{why}; give another id (rois.json's \"id\")")
        seen.setdefault(file_key(pid), []).append((pid, f))  # ids name files: one ignoring case, as DICOM's
    for both in seen.values():
        if len(both) > 1:
            ids = list(dict.fromkeys(pid for pid, _ in both))
            given = (f"patient id {ids[0]!r} is given" if len(ids) == 1 else
                     f"patient ids {' and '.join(map(repr, ids))}, one file name on a case-insensitive disk "
                     "(macOS, Windows), are given")
            raise NiftiFormatError(f"{given} to {len(both)} patient folders: "
                                   f"{', '.join(str(f) for _, f in both)} (the id is {ROIS_JSON}'s \"id\", "
                                   "else the folder's name); set each folder's own id in its "
                                   f"{ROIS_JSON}, or remove the \"id\" to use the folder's name")


def read_nifti_folder(src: str | os.PathLike) -> list[Patient]:
    """All patients of a NIfTI patient folder or a folder of them (see the module docstring)."""
    return list(iter_nifti_folder(src)[1])


def read_patient(folder: str | os.PathLike, roi_set: RoiSet | None = None) -> Patient:
    """One patient folder, with ``roi_set`` or the ROIs its files name."""
    folder = Path(folder)
    if not is_patient_folder(folder):
        raise FileNotFoundError(f"{folder} is not a NIfTI patient folder ({CT_FILE} is missing)")
    if roi_set is None:
        roi_set = iter_nifti_folder(folder)[0]
    return _read_patient(folder, roi_set)


__all__ = ["write_dose", "read_dose", "write_patient", "read_patient", "read_nifti_folder",
           "iter_nifti_folder", "patient_affine", "NiftiFormatError"]
