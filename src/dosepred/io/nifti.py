"""Read and write NIfTI patients: one folder per patient.

Layout of ``<patient>/``::

    ct.nii.gz                     int16 HU
    dose.nii.gz                   float32 Gy (optional)
    possible_dose_mask.nii.gz     uint8 0/1 (optional; all ones when absent)
    rois/<name>.nii.gz            uint8 0/1, one label file per ROI      (--roi-format labels)
    roi_codes.nii.gz              bit-mask codes, bit k = ROI k          (--roi-format codes)
    rois.json                     {"rois": [{name, kind, prescription}], "missing_rois": [...],
                                   "roi_format": "labels"|"codes", "id": ..., "meta": {...}}

The array axes are the Patient's own (no reordering); the affine maps them to RAS mm and carries
spacing, orientation and origin. For a patient read from DICOM (axes slice, row, column) the affine
is built from ``meta["origin"]``/``meta["orientation"]`` (LPS -> RAS); for one read from NIfTI the
original affine (``meta["affine"]``) is written back; otherwise it is ``diag(spacing)``.
Spacing is read from the header's pixdim (float32) and restored to the shortest decimal that
float32 holds ("3.9", not 3.9000000953674316), so spacing round-trips exactly.

Label files written by other tools may use clinical names ("Parotid_L.nii.gz"); they are mapped
through :mod:`dosepred.io.roi_names` unless ``rois.json`` lists them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..patient import Patient, RoiSet
from . import roi_names as _names
from ._atomic import atomic_dir

CT_FILE = "ct.nii.gz"
DOSE_FILE = "dose.nii.gz"
MASK_FILE = "possible_dose_mask.nii.gz"
CODES_FILE = "roi_codes.nii.gz"
ROIS_JSON = "rois.json"
ROI_DIR = "rois"


class NiftiFormatError(ValueError):
    """A NIfTI patient folder that does not hold what the reader expects (the message names it)."""


# ------------------------------------------------------------------------------------- geometry

def patient_affine(p: Patient) -> np.ndarray:
    """RAS affine of the patient's array axes (see the module docstring)."""
    if "affine" in p.meta:
        a = np.asarray(p.meta["affine"], dtype=np.float64)
        if a.shape == (4, 4):
            return a
    if "origin" in p.meta and "orientation" in p.meta:
        from .dicom import Geometry, affine_of

        return affine_of(Geometry.of_patient(p))
    return np.diag([*p.spacing, 1.0])


def _f32_decimal(v: float) -> float:
    """The shortest decimal of a float32 value (pixdim is float32)."""
    return float(str(np.float32(v)))


def _spacing(img: Any, path: Path) -> tuple[float, float, float]:
    zooms = img.header.get_zooms()
    if len(zooms) < 3:
        raise NiftiFormatError(f"{path}: expected a 3-D image, header has {len(zooms)} dimensions")
    cols = np.linalg.norm(img.affine[:3, :3], axis=0)
    z = np.asarray([float(v) for v in zooms[:3]])
    use = z if np.allclose(z, cols, rtol=1e-4) else cols
    sp = tuple(_f32_decimal(v) for v in use)
    if not all(s > 0 for s in sp):
        raise NiftiFormatError(f"{path}: voxel sizes must be positive, got {sp}")
    return sp  # type: ignore[return-value]


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(arr), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_data_dtype(np.asarray(arr).dtype)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
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
        raise ValueError(f"patient {patient.id}: dose shape {d.shape} != CT shape {patient.shape}")
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
    return d


def write_patient(p: Patient, out_dir: str | os.PathLike, roi_format: str = "labels",
                  dose: np.ndarray | None = None) -> Path:
    """Write ``out_dir/<id>/`` (see the module docstring); returns the folder. Written to a
    temporary folder and renamed, so no half-written patient is left behind."""
    if roi_format not in ("labels", "codes"):
        raise ValueError(f"roi_format must be 'labels' or 'codes', got {roi_format!r}")
    final = Path(out_dir) / p.id
    with atomic_dir(final) as tmp:
        aff = patient_affine(p)
        _save(p.ct.astype(np.int16), aff, tmp / CT_FILE)
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
        info = {"id": p.id, "roi_format": roi_format, "rois": p.roi_set.to_dicts(),
                "missing_rois": list(p.missing_rois), "spacing": list(p.spacing),
                "meta": {k: v for k, v in p.meta.items() if k != "affine"}}
        (tmp / ROIS_JSON).write_text(json.dumps(info, indent=2))
    return final


# ---------------------------------------------------------------------------------------- reading

def is_patient_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CT_FILE).is_file()


def patient_folders(src: str | os.PathLike) -> list[Path]:
    """``src`` itself when it holds ``ct.nii.gz``, else its sub-folders that do (sorted)."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"NIfTI folder {src} does not exist")
    if is_patient_folder(src):
        return [src]
    folders = sorted(p for p in src.iterdir() if p.is_dir() and is_patient_folder(p))
    if not folders:
        raise FileNotFoundError(f"{src} holds no NIfTI patient folders (sub-folders with {CT_FILE})")
    return folders


def _read_json(folder: Path) -> dict[str, Any]:
    js = folder / ROIS_JSON
    if not js.is_file():
        return {}
    try:
        obj = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        raise NiftiFormatError(f"{js} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise NiftiFormatError(f"{js}: expected a JSON object")
    return obj


def _scan_rois(folder: Path, info: dict[str, Any]) -> dict[str, _names.Canonical]:
    """Canonical ROIs of one patient folder (for the union RoiSet), without reading the volumes."""
    listed = {d["name"]: d for d in info.get("rois", [])}
    out: dict[str, _names.Canonical] = {}
    if (folder / CODES_FILE).is_file():
        if not listed:
            raise NiftiFormatError(f"{folder / CODES_FILE} needs {folder / ROIS_JSON} listing the ROI "
                                   "names in bit order")
        missing = set(info.get("missing_rois", []))
        for n, d in listed.items():
            if n not in missing:
                out[n] = _names.Canonical(n, d.get("kind", "oar"), d.get("prescription"))
        return out
    for f in sorted((folder / ROI_DIR).glob("*.nii*")) if (folder / ROI_DIR).is_dir() else []:
        stem = f.name.split(".nii")[0]
        if stem in listed:
            d = listed[stem]
            out[stem] = _names.Canonical(stem, d.get("kind", "oar"), d.get("prescription"))
        else:
            c = _names.RoiMap.empty().resolve(stem)
            if c is not None:
                out[c.name] = c
    return out


def _read_patient(folder: Path, roi_set: RoiSet) -> Patient:
    info = _read_json(folder)
    pid = str(info.get("id") or folder.name)
    ct, img = _load(folder / CT_FILE, "CT")
    if not np.issubdtype(ct.dtype, np.integer):
        ct = np.asarray(img.get_fdata(dtype=np.float64))
    shape = ct.shape
    spacing = _spacing(img, folder / CT_FILE)

    def same_grid(arr: np.ndarray, path: Path) -> np.ndarray:
        if arr.shape != shape:
            raise NiftiFormatError(f"patient {pid}: {path} has shape {arr.shape}, CT {shape}")
        return arr

    dose = read_dose(folder / DOSE_FILE) if (folder / DOSE_FILE).is_file() else None
    if dose is not None:
        same_grid(dose, folder / DOSE_FILE)
    pdm = None
    if (folder / MASK_FILE).is_file():
        pdm = same_grid(_load(folder / MASK_FILE, "possible-dose mask")[0], folder / MASK_FILE) != 0
    masks: dict[str, np.ndarray] = {}
    if (folder / CODES_FILE).is_file():
        codes = same_grid(_load(folder / CODES_FILE, "ROI codes")[0], folder / CODES_FILE)
        if codes.dtype.kind != "u":
            if codes.dtype.kind == "i" and codes.min() >= 0:
                codes = codes.astype(np.dtype(f"u{codes.dtype.itemsize}"))
            else:
                raise NiftiFormatError(f"patient {pid}: {folder / CODES_FILE} must hold unsigned integers")
        missing = set(info.get("missing_rois", []))
        for k, d in enumerate(info["rois"]):
            if d["name"] not in missing:
                masks[d["name"]] = ((codes >> codes.dtype.type(k)) & codes.dtype.type(1)).astype(bool)
    elif (folder / ROI_DIR).is_dir():
        listed = {d["name"] for d in info.get("rois", [])}
        for f in sorted((folder / ROI_DIR).glob("*.nii*")):
            stem = f.name.split(".nii")[0]
            c = _names.Canonical(stem, "oar") if stem in listed else _names.RoiMap.empty().resolve(stem)
            if c is None or c.is_body:
                if c is not None and pdm is None:
                    pdm = same_grid(_load(f, "ROI")[0], f) != 0
                continue
            m = same_grid(_load(f, "ROI")[0], f) != 0
            masks[c.name] = masks[c.name] | m if c.name in masks else m
    meta = dict(info.get("meta", {}))
    meta.update({"format": "nifti", "source": str(folder.resolve()),
                 "affine": [[float(v) for v in row] for row in img.affine]})
    return Patient.from_masks(pid, ct, masks, roi_set, spacing, pdm, dose, meta)


def iter_nifti_folder(src: str | os.PathLike) -> tuple[RoiSet, Iterator[Patient]]:
    """``(roi_set, iterator of Patients)`` of a NIfTI patient folder or a folder of them. When every
    patient's ``rois.json`` lists the same ROIs, that order is kept; otherwise the union is built
    like a DICOM import (OpenKBP names first, then the others sorted)."""
    folders = patient_folders(src)
    infos = [_read_json(f) for f in folders]
    lists = [i.get("rois") for i in infos]
    if all(lists) and all(lst == lists[0] for lst in lists):
        roi_set = RoiSet.from_dicts(lists[0])  # type: ignore[arg-type]
    else:
        roi_set = _names.union_roi_set(_scan_rois(f, i) for f, i in zip(folders, infos, strict=True))

    def gen() -> Iterator[Patient]:
        for f in folders:
            yield _read_patient(f, roi_set)

    return roi_set, gen()


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
