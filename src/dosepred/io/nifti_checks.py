"""Checks on a NIfTI patient's volumes as :mod:`dosepred.io.nifti` reads them: CT values an int16 CT
clips, ROIs without a voxel, a body drawn as an outline. Each warns naming the patient and the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..geometry import Geometry, filled_outline

MASK_FILE = "possible_dose_mask.nii.gz"


def warn_beyond_int16(ct: np.ndarray, path: Path, pid: str) -> None:
    """Warn of CT voxels outside -32768..32767 HU, which a patient's int16 CT clips (as the DICOM reader
    warns): a scanner's padding outside the scan circle kept as stored (GE's 63536 on unsigned pixels
    with scl_inter -1024, as a DICOM-to-NIfTI converter may keep it, reads 62512 HU: bone to the
    network, and body to the ``CT > -500 HU`` possible-dose mask of a folder without one), or a wrong
    scl_slope/scl_inter."""
    if ct.dtype.kind in "iu" and ct.dtype.itemsize <= 2 and ct.dtype != np.uint16:
        return  # int8, uint8, int16: within int16
    out = (ct < -32768.5) | (ct > 32767.5)
    n = int(np.count_nonzero(out))
    if n:
        v = ct[out]
        v0 = float(v[np.argmax(np.abs(v.astype(np.float64)))])
        warnings.warn(f"patient {pid}: {path}: {n} voxel(s) read outside -32768..32767 HU (e.g. {v0:.6g} HU) "
                      "and were clipped to it: scanner padding outside the scan circle (no NIfTI header "
                      "declares it), or a wrong scl_slope/scl_inter? The CT's HU there are not what the "
                      "scanner measured (set them to -1024 HU, air)", stacklevel=3)


def drop_empty(masks: dict[str, np.ndarray], pid: str, codes_path: Path | None, roi_dir: Path,
                files_of: dict[str, list[str]]) -> None:
    """Record an ROI without a voxel (an empty label file, as segmentation tools write for an organ they
    did not find; a listed ROI whose bit no voxel of ``roi_codes`` sets) as missing, with a warning, as
    the DICOM reader does: kept as an ROI with no voxel, it counted as contoured, so training recorded
    no patient without it and prediction gave no word for a patient without it (the cord)."""
    empty = [n for n, m in masks.items() if not m.any()]
    for n in empty:
        del masks[n]
    if not empty:
        return
    if codes_path is not None:
        what = f"no voxel of {codes_path} sets the bit of {', '.join(empty)}"
    else:
        files = [f for n in empty for f in files_of.get(n, [])]
        what = (f"label file{'s' if len(files) > 1 else ''} {', '.join(files)} in {roi_dir} "
                f"hold{'' if len(files) > 1 else 's'} no voxel")
    warnings.warn(f"patient {pid}: {what}; {'they are' if len(empty) > 1 else 'it is'} recorded as not "
                  f"contoured (missing: {', '.join(empty)})", stacklevel=3)


def filled_body(body: np.ndarray, geom: Geometry, files: list[str], where: Path, pid: str) -> np.ndarray:
    """The possible-dose mask made of body label files ``files``: as it is, or, when it is an outline
    (:func:`dosepred.geometry.filled_outline`), its axial slices filled, with a warning: a shell taken as
    the body would leave the whole inside of the patient out of every prediction and score, without a
    word."""
    out = filled_outline(body, geom)
    if out is None:
        return body
    filled, ratio = out
    warnings.warn(f"patient {pid}: the body ({', '.join(files)}) in {where} holds an outline, not "
                  f"the body (its axial slices filled hold {ratio:.1f} x its voxels; a skin "
                  "segmentation?): filled slice by slice as the possible-dose mask (give a filled "
                  f"body, or {MASK_FILE}, to use another)", stacklevel=3)
    return filled
