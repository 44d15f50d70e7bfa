"""DVH-curve loss (Nguyen et al., Med Phys 47(3) 2020): soft cumulative DVHs compared bin by bin.

Soft cumulative DVH of ROI s at threshold t: ``v(s, t) = mean_{i in s} sigmoid((D_i - t) * k)``
with ``k = steepness / bin_width`` (1/Gy); thresholds ``t = 0, w, 2w, ...`` up to the maximum dose.
Loss = mean over the (patient, ROI) pairs present of the mean over bins of ``(v_pred - v_ref)^2``.

Memory is bounded: the voxels of every (patient, ROI) pair are gathered at once
(:func:`._common.roi_members`, no per-ROI host synchronisation), and a custom autograd function
evaluates the sigmoids in chunks of bins (about ``max_elements`` at a time) in the forward pass and
recomputes them chunk by chunk in the backward pass, so nothing of size bins x voxels is ever
stored. The cost still grows as bins x ROI voxels, which is why this loss is slow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ._common import check_inputs, mean_over_present, roi_members, segment_counts, upcast, zero_like_graph


class _SegmentedSoftDvh(torch.autograd.Function):
    """v[s, j] = mean over the members i of segment s of sigmoid((d_i - t_j) * k), all segments at
    once, computed and differentiated in chunks of bins (members x chunk <= max_elements)."""

    @staticmethod
    def forward(ctx, d: torch.Tensor, seg: torch.Tensor, n: torch.Tensor, t: torch.Tensor, k: float,
                max_elements: int) -> torch.Tensor:
        chunk = max(1, max_elements // max(1, d.numel()))
        out = torch.zeros(n.shape[0], t.shape[0], dtype=d.dtype, device=d.device)
        for j in range(0, t.shape[0], chunk):
            sig = torch.sigmoid((d[:, None] - t[None, j:j + chunk]) * k)  # (members, chunk)
            out[:, j:j + chunk] = torch.zeros(n.shape[0], sig.shape[1], dtype=d.dtype,
                                              device=d.device).index_add_(0, seg, sig)
        ctx.save_for_backward(d, seg, n, t)
        ctx.k, ctx.chunk = k, chunk
        return out / n[:, None]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        d, seg, n, t = ctx.saved_tensors
        k, chunk = ctx.k, ctx.chunk
        gs = g / n[:, None]
        grad = torch.zeros_like(d)
        for j in range(0, t.shape[0], chunk):
            sig = torch.sigmoid((d[:, None] - t[None, j:j + chunk]) * k)
            grad += (gs[seg, j:j + chunk] * sig * (1.0 - sig)).sum(dim=1)
        return grad * k, None, None, None, None, None


def soft_dvh(doses: torch.Tensor, thresholds: torch.Tensor, bin_width: float = 1.0, steepness: float = 1.0,
             max_elements: int = 1 << 22) -> torch.Tensor:
    """Soft cumulative DVH (fractions 0-1) of one ROI's 1-D voxel doses at ``thresholds`` (Gy)."""
    if doses.dim() != 1 or doses.numel() == 0:
        raise ValueError(f"doses must be a non-empty 1-D tensor, got shape {tuple(doses.shape)}")
    k = steepness / bin_width
    one = torch.zeros(doses.numel(), dtype=torch.long, device=doses.device)  # a single segment
    n = torch.full((1,), float(doses.numel()), dtype=doses.dtype, device=doses.device)
    return _SegmentedSoftDvh.apply(doses, one, n, thresholds.to(doses.dtype), k, int(max_elements))[0]


def dvh_curve_loss(pred: torch.Tensor, ref: torch.Tensor, roi_codes: torch.Tensor,
                   bits: Sequence[int], *, bin_width: float = 1.0, steepness: float = 1.0,
                   max_dose: float | None = None, max_elements: int = 1 << 22) -> torch.Tensor:
    """DVH-curve loss of a batch over ROI ``bits``. pred, ref (B, 1, *S) Gy; roi_codes (B, *S).

    Bins run from 0 to ``max_dose`` (default: the batch's maximum reference dose) in steps of
    ``bin_width`` Gy.
    """
    codes, _, _ = check_inputs(pred, ref, roi_codes)
    pred, ref = upcast(pred, ref)
    if codes is None:
        raise ValueError("the DVH-curve loss needs roi_codes")
    if not bin_width > 0 or not steepness > 0:
        raise InputError(f"bin_width and steepness must be > 0, got {bin_width}, {steepness}")
    top = float(ref.detach().max()) if max_dose is None else float(max_dose)
    n_bins = max(1, int(math.floor(top / bin_width)) + 1)
    t = torch.arange(n_bins, dtype=pred.dtype, device=pred.device) * bin_width
    bits = list(bits)
    if not bits:
        return zero_like_graph(pred)
    seg, dp, dr = roi_members(pred, ref, codes, bits)  # every (patient, ROI) pair at once
    cnt = segment_counts(seg, pred.shape[0] * len(bits), pred.dtype)
    n = cnt.clamp_min(1.0)
    k = steepness / bin_width
    vp = _SegmentedSoftDvh.apply(dp, seg, n, t, k, int(max_elements))
    with torch.no_grad():
        vr = _SegmentedSoftDvh.apply(dr, seg, n, t, k, int(max_elements))
    return mean_over_present(((vp - vr) ** 2).mean(dim=1), cnt, pred)


class DVHCurveLoss(nn.Module):
    """DVH-curve loss over all ROIs of ``roi_set`` (or the names in ``rois``).

    Args:
        roi_set: the dataset's RoiSet.
        bin_width: Gy between thresholds (default 1 Gy; public implementations use 0.2 Gy, 5x slower).
        steepness: sigmoid steepness in units of 1 / bin_width.
        max_dose: highest threshold (Gy); None = the batch's maximum reference dose.
        rois: restrict to these ROI names.
        max_elements: sigmoid evaluations held in memory at once (bounds memory, not time).
    """

    name = "dvh"

    def __init__(self, roi_set: Any, bin_width: float = 1.0, steepness: float = 1.0,
                 max_dose: float | None = None, rois: Sequence[str] | None = None,
                 max_elements: int = 1 << 22) -> None:
        super().__init__()
        if roi_set is None:
            raise ValueError("the DVH-curve loss needs the dataset's roi_set")
        if not bin_width > 0 or not steepness > 0:
            raise InputError(f"dvh bin_width and steepness must be > 0, got {bin_width}, {steepness}")
        if max_dose is not None and not max_dose > 0:  # else one bin at 0 Gy: a loss that learns nothing
            raise InputError(f"dvh max_dose must be > 0 Gy (or none: the batch's highest dose), "
                             f"got {max_dose}")
        names = list(rois) if rois is not None else list(roi_set.names)
        self.bits = [roi_set.index(r) for r in names]
        self.bin_width, self.steepness = float(bin_width), float(steepness)
        self.max_dose = None if max_dose is None else float(max_dose)
        self.max_elements = int(max_elements)

    def forward_with_parts(self, pred, ref, roi_codes, mask=None, spacing=None):
        return dvh_curve_loss(pred, ref, roi_codes, self.bits, bin_width=self.bin_width,
                              steepness=self.steepness, max_dose=self.max_dose,
                              max_elements=self.max_elements), {}

    def forward(self, pred, ref, roi_codes, mask=None, spacing=None) -> torch.Tensor:
        return self.forward_with_parts(pred, ref, roi_codes, mask, spacing)[0]

    def extra_repr(self) -> str:
        return f"rois={len(self.bits)}, bin_width={self.bin_width:g}, steepness={self.steepness:g}"
