"""Shared tensor helpers of the loss family: input validation and ROI voxel gathering.

Not public API. Every loss takes the same five tensors (see :mod:`dosepred.losses`); these helpers
check them once and hand each loss the voxels of every (patient, ROI) pair of the batch as flat
"member" tensors with a segment index, decoded from the bit-mask codes on the tensor's own device,
so no one-hot tensor of all ROIs is ever built and no host synchronisation happens per ROI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..roi import decode_torch

#: Default dose scale (Gy) that makes dose differences dimensionless (the highest OpenKBP Rx).
DEFAULT_DOSE_SCALE = 70.0


def check_inputs(pred: torch.Tensor, ref: torch.Tensor, roi_codes: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, spacing: Any = None) -> tuple[
                     torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Validate shapes; return (roi_codes (B, *S), mask (B, *S) bool or None, spacing (B, 3) or None).

    ``pred`` and ``ref`` are (B, 1, *S); ``roi_codes`` may be (B, *S) or (B, 1, *S); ``mask``
    (B, 1, *S) or (B, *S), bool or float (non-zero = inside); ``spacing`` (B, 3) or (3,) in mm.
    """
    if not isinstance(pred, torch.Tensor) or not isinstance(ref, torch.Tensor):
        raise TypeError("pred and ref must be torch tensors")
    if pred.dim() < 3 or pred.shape[1] != 1:
        raise ValueError(f"pred must be (B, 1, *spatial), got shape {tuple(pred.shape)}")
    if ref.shape != pred.shape:
        raise ValueError(f"ref shape {tuple(ref.shape)} != pred shape {tuple(pred.shape)}")
    b, spatial = pred.shape[0], tuple(pred.shape[2:])
    codes = None
    if roi_codes is not None:
        codes = roi_codes
        if codes.dim() == pred.dim() and codes.shape[1] == 1:
            codes = codes[:, 0]
        if tuple(codes.shape) != (b, *spatial):
            raise ValueError(f"roi_codes must be (B, *spatial) = {(b, *spatial)}, "
                             f"got {tuple(roi_codes.shape)}")
        if codes.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
            raise TypeError(f"roi_codes must be an integer tensor (dosepred.roi.to_torch), got {codes.dtype}")
    m = None
    if mask is not None:
        m = mask
        if m.dim() == pred.dim() and m.shape[1] == 1:
            m = m[:, 0]
        if tuple(m.shape) != (b, *spatial):
            raise ValueError(f"mask must be (B, 1, *spatial) = {(b, 1, *spatial)}, got {tuple(mask.shape)}")
        m = m if m.dtype == torch.bool else m != 0
    sp = None
    if spacing is not None:
        sp = torch.as_tensor(spacing, dtype=torch.float64).detach().cpu()
        if sp.dim() == 1:
            sp = sp.expand(b, -1)
        if tuple(sp.shape) != (b, 3):
            raise ValueError(f"spacing must be (B, 3) mm per axis, got shape {tuple(sp.shape)}")
        if not bool(torch.all(sp > 0)):
            raise ValueError(f"spacing must be positive mm values, got {sp.tolist()}")
    return codes, m, sp


def upcast(pred: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-precision doses (AMP) -> float32: sums over millions of voxels overflow float16."""
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    if ref.dtype != pred.dtype:
        ref = ref.to(pred.dtype)
    return pred, ref


def voxel_volumes(spacing: torch.Tensor | None, batch: int) -> list[float | None]:
    """Voxel volume (mm^3) per patient, None where spacing is unknown."""
    if spacing is None:
        return [None] * batch
    return [float(v) for v in spacing.prod(dim=1).tolist()]


def roi_members(pred: torch.Tensor, ref: torch.Tensor, codes: torch.Tensor, bits: Sequence[int]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All voxels of ROIs ``bits`` of every patient at once, as flat (member) tensors.

    Returns ``(seg, p, r)``: member ``i`` is a voxel of ROI ``bits[seg[i] % K]`` in patient
    ``seg[i] // K`` (K = ``len(bits)``; a voxel in several ROIs is a member of each), with its
    predicted dose ``p[i]`` (differentiable) and reference dose ``r[i]`` (detached). Two host
    synchronisations (the two ``nonzero``), whatever the number of patients and ROIs, where a loop
    over ROIs with boolean indexing needs two per ROI and patient; segment sums are then ``index_add``.
    """
    nb, k = pred.shape[0], len(bits)
    flat = codes.reshape(-1)
    n_vox = flat.numel() // nb
    idx = torch.nonzero(flat != 0).squeeze(1)  # ROI voxels of the whole batch
    member = decode_torch(flat[idx], list(bits))  # (K, n)
    j, v = torch.nonzero(member, as_tuple=True)
    vox = idx[v]
    seg = torch.div(vox, n_vox, rounding_mode="floor") * k + j
    return seg, pred.reshape(-1)[vox], ref.detach().reshape(-1)[vox]


def segment_counts(seg: torch.Tensor, n_seg: int, dtype: torch.dtype) -> torch.Tensor:
    """Members per segment (``n_seg`` of them) of :func:`roi_members`, as ``dtype`` on the device."""
    return torch.bincount(seg, minlength=n_seg).to(dtype)


def mean_over_present(per_seg: torch.Tensor, counts: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_seg`` over the segments with members (no host synchronisation); with none, a
    zero that still depends on ``pred``. Absent segments' values are ignored, NaN or not."""
    present = counts > 0
    n_present = present.sum()
    total = torch.where(present, per_seg, torch.zeros_like(per_seg)).sum() / n_present.clamp_min(1)
    return torch.where(n_present > 0, total, zero_like_graph(pred))


def zero_like_graph(pred: torch.Tensor) -> torch.Tensor:
    """A zero scalar that still depends on ``pred`` (so backward() works when no term applies)."""
    return 0.0 * pred.sum()
