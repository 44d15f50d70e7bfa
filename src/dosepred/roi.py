"""Lossless bit-mask encoding of many overlapping ROIs in one integer volume.

Bit ``k`` of a voxel's code is set exactly when the voxel belongs to ROI ``k``. The dtype is the
smallest unsigned integer that holds the ROI count (uint8 / uint16 / uint32 / uint64), so up to 64
ROIs fit. Torch has no unsigned 16/32/64-bit arithmetic on every device, so torch codes are carried
as the signed integer of the same width (int16 / int32 / int64); bit ``k`` is read the same way
(``(codes >> k) & 1``) and the sign bit is simply bit 15/31/63.

This module does not know ROI names; :class:`dosepred.patient.RoiSet` maps names to bits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

MAX_ROIS = 64

_NUMPY_DTYPES = ((8, np.uint8), (16, np.uint16), (32, np.uint32), (64, np.uint64))


def code_dtype(n_rois: int) -> np.dtype:
    """Smallest unsigned dtype holding ``n_rois`` bits (uint8 for 0..8 ROIs)."""
    if n_rois < 0:
        raise ValueError(f"ROI count must be >= 0, got {n_rois}")
    for bits, dt in _NUMPY_DTYPES:
        if n_rois <= bits:
            return np.dtype(dt)
    raise InputError(
        f"{n_rois} ROIs cannot be bit-mask encoded: at most {MAX_ROIS} ROIs fit in one uint64 volume"
    )


def binary_mask(arr: Any, what: str) -> np.ndarray:
    """``arr`` as a boolean mask (its non-zero voxels), provided its non-zero voxels hold one value (1,
    255, a label number; float noise such as 1.0000001 allowed), as the NIfTI reader reads a label file;
    else an InputError naming ``what`` ("patient pt_1: ROI Brainstem mask"). NaN, fractional values (a
    mask resampled with linear interpolation, a probability map) or several labels (a label map) would
    make every non-zero voxel count: the ROI grown by its partial voxels, or one ROI of several organs."""
    a = np.asarray(arr)
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "biuf":
        raise InputError(f"{what} must be a boolean or numeric array, got dtype {a.dtype}")
    inside = a != 0
    if not inside.any():
        return inside
    vals = a[inside]
    lo, hi = vals.min(), vals.max()
    if lo != hi and not (float(lo) * float(hi) > 0 and abs(float(hi) - float(lo)) <= 1e-4 * abs(float(hi))):
        if a.dtype.kind == "f" and np.isnan(vals).any():
            raise InputError(f"{what} holds NaN in {int(np.isnan(vals).sum())} voxel(s); a mask is "
                             "True/False (or 0 and one value) in every voxel")
        uniq = np.unique(vals)
        shown = ", ".join(f"{float(v):.4g}" for v in uniq[:6]) + (", ..." if len(uniq) > 6 else "")
        raise InputError(f"{what} is no binary mask: its non-zero voxels hold {len(uniq)} different values "
                         f"({shown}); a mask holds 0 and one value. Threshold a resampled or probability "
                         "mask (e.g. >= 0.5), or give each label of a label map as a mask of its own")
    return inside


def encode(masks: Sequence[np.ndarray] | np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Encode boolean masks (a sequence, or an array of shape (K, *spatial)) into one code volume.

    ``shape`` is required when there are no masks.
    """
    masks = list(masks) if not isinstance(masks, np.ndarray) else list(masks)
    n = len(masks)
    dt = code_dtype(n)
    if n == 0:
        if shape is None:
            raise ValueError("encode() with no masks needs the spatial shape")
        return np.zeros(shape, dtype=dt)
    shape0 = np.shape(masks[0])
    if shape is not None and tuple(shape) != tuple(shape0):
        raise InputError(f"mask 0 has shape {shape0}, expected {tuple(shape)}")
    codes = np.zeros(shape0, dtype=dt)
    for k, m in enumerate(masks):
        m = np.asarray(m)
        if m.shape != shape0:
            raise InputError(f"mask {k} has shape {m.shape}, expected {shape0} like mask 0")
        codes |= m.astype(bool).astype(dt) << dt.type(k)
    return codes


def decode(codes: np.ndarray, k: int | Sequence[int] | None = None) -> np.ndarray:
    """Decode ROI ``k`` (bool volume), several ROIs (bool (K, *spatial)) or all bits (k=None).

    With ``k=None`` the number of decoded channels is the dtype's bit width; pass ``n_rois`` via
    :func:`decode_all` to get exactly the ROIs of a RoiSet.
    """
    codes = np.asarray(codes)
    if codes.dtype.kind != "u":
        raise TypeError(f"ROI codes must be an unsigned integer array, got {codes.dtype}")
    bits = codes.dtype.itemsize * 8
    if k is None:
        return decode_all(codes, bits)
    if isinstance(k, (int, np.integer)):
        _check_bit(int(k), bits)
        return ((codes >> codes.dtype.type(k)) & codes.dtype.type(1)).astype(bool)
    ks = [int(i) for i in k]
    for i in ks:
        _check_bit(i, bits)
    out = np.empty((len(ks),) + codes.shape, dtype=bool)
    for j, i in enumerate(ks):
        out[j] = (codes >> codes.dtype.type(i)) & codes.dtype.type(1)
    return out


def decode_all(codes: np.ndarray, n_rois: int) -> np.ndarray:
    """All ``n_rois`` masks as a bool array (n_rois, *spatial)."""
    return decode(codes, range(n_rois)) if n_rois else np.zeros((0,) + np.shape(codes), dtype=bool)


def _check_bit(k: int, bits: int) -> None:
    if not 0 <= k < bits:
        raise IndexError(f"ROI bit {k} out of range for {bits}-bit codes")


# ----------------------------------------------------------------------------------- left/right

#: Name parts that make two ROIs a left/right pair (``LeftParotid`` <-> ``RightParotid``).
_LR_PARTS = (("Left", "Right"), ("left", "right"), ("LEFT", "RIGHT"), ("Lt", "Rt"), ("_L", "_R"))
#: Words that name the patient's left and right side, in lower case, left first: English, Latin, German,
#: Spanish, Italian, Portuguese and French, as clinics write them after an organ (``Parotida izq``,
#: ``Parotide sx``, ``Parotis li``, ``Parotide G``), in the feminine and the masculine (``Ojo
#: izquierdo``, ``Nerf optique droit``); :mod:`dosepred.io.roi_names` reads the same words
SIDE_WORD_PAIRS = (("l", "r"), ("lt", "rt"), ("left", "right"), ("lft", "rgt"), ("sin", "dex"),
                   ("links", "rechts"), ("izq", "der"), ("izda", "dcha"), ("izquierda", "derecha"),
                   ("izquierdo", "derecho"), ("sx", "dx"), ("sinistra", "destra"), ("sinistro", "destro"),
                   ("esq", "dir"), ("esquerda", "direita"), ("esquerdo", "direito"), ("gauche", "droite"),
                   ("gauche", "droit"), ("li", "re"), ("g", "d"))
#: each side word (lower case) -> "Left" / "Right"
SIDE_WORDS = {w: side for pair in SIDE_WORD_PAIRS for w, side in zip(pair, ("Left", "Right"), strict=True)}
#: Whole words (between spaces, ``_``, ``-``, brackets, ...) that name a side (``Hippocampus L``,
#: ``Parotida izq``), as written in lower case, upper case or capitalised, each to the other side's
#: (French ``gauche`` to both ``droite`` and ``droit``)
_LR_WORDS = {f(a): tuple(f(d) for x, y in SIDE_WORD_PAIRS for c, d in ((x, y), (y, x)) if c == a)
             for x, y in SIDE_WORD_PAIRS for a in (x, y) for f in (str.lower, str.upper, str.capitalize)}


def _side_word_swaps(name: str) -> set[str]:
    """``name`` with one of its side words swapped (``Hippocampus L`` -> ``Hippocampus R``)."""
    parts = re.split(r"([^A-Za-z0-9]+)", name)  # words, with the separators between them
    return {"".join([*parts[:k], other, *parts[k + 1:]])
            for k, w in enumerate(parts) if w in _LR_WORDS for other in _LR_WORDS[w]}


def lr_pairs(rois: Any) -> list[tuple[int, int]]:
    """Bit pairs of ROIs whose names differ only by Left/Right (also L/R, Lt/Rt as a word part, or
    as a whole word: ``Hippocampus L`` <-> ``Hippocampus R``, ``L Carotid`` <-> ``R Carotid``,
    ``Parotida izq`` <-> ``Parotida der``: :data:`SIDE_WORD_PAIRS`).

    ``rois``: a :class:`~dosepred.patient.RoiSet` (anything with ``.names``) or a sequence of names in
    bit order. Mirroring a patient left-right maps ROI ``i`` onto ROI ``j`` for each pair. Of a
    RoiSet, two ROIs of other kinds or prescriptions are no pair (``PTV L`` 70 Gy, ``PTV R`` 56 Gy:
    swapped, the mirrored 70 Gy target would be read as 56 Gy)."""
    names = list(getattr(rois, "names", rois))
    if hasattr(rois, "rois"):  # a RoiSet: the pairs of its names that are of one kind and prescription
        same = [(r.kind, r.prescription) for r in rois.rois]
        return [(i, j) for i, j in lr_pairs(names) if same[i] == same[j]]
    pairs: list[tuple[int, int]] = []
    for i, n in enumerate(names):
        for a, b in _LR_PARTS:
            if a in n:
                for cand in {n.replace(a, b, 1), re.sub(f"{a}$", b, n)}:
                    if cand != n and cand in names:
                        j = names.index(cand)
                        if (j, i) not in pairs and (i, j) not in pairs:
                            pairs.append((i, j))
        for cand in sorted(_side_word_swaps(n)):
            j = names.index(cand) if cand in names else -1
            if j >= 0 and (j, i) not in pairs and (i, j) not in pairs:
                pairs.append((i, j))
    # two side words of no one pair ('Parotida izq' / 'Parotida dcha', 'Ojo izq' / 'Ojo derecho'): the
    # one name of the other side differing by its side word alone, where each is the other's only one
    paired = {k for pair in pairs for k in pair}
    others = {i: _other_side_names(n, names, paired) for i, n in enumerate(names) if i not in paired}
    for i, js in others.items():
        if len(js) == 1 and i < js[0] and others.get(js[0]) == [i]:
            pairs.append((i, js[0]))
    return pairs


def _other_side_names(name: str, names: Sequence[str], paired: set[int]) -> list[int]:
    """Indices of the names not in ``paired`` that are ``name`` with one side word replaced by any
    word of the other side (in any of the three cases)."""
    parts = re.split(r"([^A-Za-z0-9]+)", name)
    out = set()
    for k, w in enumerate(parts):
        side = SIDE_WORDS.get(w.lower()) if w in _LR_WORDS else None
        if side is None:
            continue
        for o, s in SIDE_WORDS.items():
            if s == side:
                continue
            for f in (str.lower, str.upper, str.capitalize):
                cand = "".join([*parts[:k], f(o), *parts[k + 1:]])
                if cand in names and names.index(cand) not in paired:
                    out.add(names.index(cand))
    return sorted(out)


def swap_bits(codes: np.ndarray, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Codes with the bits of each pair exchanged (a copy)."""
    t = codes.dtype.type
    out = codes.copy()
    for a, b in pairs:
        ba = (codes >> t(a)) & t(1)
        bb = (codes >> t(b)) & t(1)
        out &= ~t((1 << a) | (1 << b))
        out |= (ba << t(b)) | (bb << t(a))
    return out


def mirror_codes(codes: np.ndarray, axis: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """ROI codes mirrored along ``axis`` (the left-right axis) with each Left/Right pair's bits
    exchanged, so every name still labels the patient's own side (contiguous copy)."""
    return swap_bits(np.ascontiguousarray(np.flip(codes, axis)), pairs)


# --------------------------------------------------------------------------------------------- torch

_TORCH_SIGNED = {np.dtype(np.uint8): "uint8", np.dtype(np.uint16): "int16",
                 np.dtype(np.uint32): "int32", np.dtype(np.uint64): "int64"}


def to_torch(codes: np.ndarray, device: Any = None) -> torch.Tensor:
    """Numpy codes -> torch tensor of the same width (bit pattern preserved, see module doc)."""
    import torch

    codes = np.ascontiguousarray(codes)
    name = _TORCH_SIGNED.get(codes.dtype)
    if name is None:
        raise TypeError(f"ROI codes must be uint8/16/32/64, got {codes.dtype}")
    if name != "uint8":
        codes = codes.view(np.dtype(name))
    return torch.from_numpy(codes).to(device) if device is not None else torch.from_numpy(codes)


def decode_torch(codes: torch.Tensor, k: int | Sequence[int], dtype: Any = None) -> torch.Tensor:
    """Decode ROI bit ``k`` (or bits ``[k0, k1, ...]`` stacked on a new dim right after any
    leading dims, i.e. (..., K, *spatial) when codes are (..., *spatial) and ``k`` is a list... )
    on the tensor's own device.

    For a single int ``k`` the result has the codes' shape. For a sequence the ROI axis is
    inserted at position ``codes.dim() - 3`` when codes are at least 3-D (so (B, D, H, W) codes give
    (B, K, D, H, W) channels) and at 0 otherwise. ``dtype`` defaults to torch.bool.
    """
    import torch

    if codes.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"ROI codes must be an integer tensor, got {codes.dtype}")
    bits = codes.element_size() * 8
    dtype = torch.bool if dtype is None else dtype
    if isinstance(k, (int, np.integer)):
        _check_bit(int(k), bits)
        return ((codes >> int(k)) & 1).to(dtype)
    ks = [int(i) for i in k]
    for i in ks:
        _check_bit(i, bits)
    axis = codes.dim() - 3 if codes.dim() >= 3 else 0
    if not ks:
        shape = list(codes.shape)
        shape.insert(axis, 0)
        return torch.zeros(shape, dtype=dtype, device=codes.device)
    shifts = torch.tensor(ks, device=codes.device, dtype=codes.dtype)
    view = [1] * (codes.dim() + 1)
    view[axis] = len(ks)
    return ((codes.unsqueeze(axis) >> shifts.view(view)) & 1).to(dtype)
