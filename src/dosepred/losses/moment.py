"""Moment loss (Jhanwar et al., PMB 2022): generalised means of each ROI's doses.

``M_p(s) = (mean_{i in s} x_i^p)^(1/p)`` with ``x = max(D, 0) / dose_scale`` (dose_scale 70 Gy by
default, so moments are O(1) fractions and p = 10 does not overflow float16/32); p in {1, 2, 10}
for OARs (mean .. near-max) and {2, 4, 6} for targets. Loss = mean over the (patient, ROI) pairs
present of the mean over p of ``(M_p(pred) - M_p(ref))^2``.

Each mean is computed relative to the ROI's highest dose ``s`` (held constant in the graph):
``M_p = s (mean (x / s)^p + eps)^(1/p)``, exact in value and gradient because ``M_p`` is homogeneous
of degree 1. The small ``eps`` keeps the gradient finite on all-zero doses; relative to ``s`` it is
negligible (``mean (x / s)^p >= 1 / n``), where added to ``mean x^p`` itself it was not: an OAR whose
doses stay under 4 Gy has ``mean x^10 < 1e-12``, and its M_10 read ``eps^(1/10)`` = 4.4 Gy whatever
its dose. An all-zero dose has ``M_p = 0`` (the ``eps^(1/p)`` of its ``s = 1`` form is taken off, the
gradient kept): a zero reference and a small positive prediction pull the prediction down, as any
other pair does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ._common import (
    DEFAULT_DOSE_SCALE,
    check_inputs,
    mean_over_present,
    roi_members,
    segment_counts,
    upcast,
    zero_like_graph,
)

OAR_POWERS = (1.0, 2.0, 10.0)
TARGET_POWERS = (2.0, 4.0, 6.0)


def _pow(x: torch.Tensor, p: float) -> torch.Tensor:
    """``x ** p`` for ``x >= 0``; for ``p < 1`` its derivative at 0 (infinite) is taken as 0, so a
    voxel of exactly 0 Gy (the model's dose outside the possible-dose mask, where a contour may
    reach) leaves the gradient finite (it was NaN through the chain rule: 0 x inf)."""
    if p >= 1:
        return x.pow(p)
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).pow(p), torch.zeros_like(x))


def moments(doses: torch.Tensor, powers: Sequence[float], dose_scale: float = DEFAULT_DOSE_SCALE,
            eps: float = 1e-12) -> torch.Tensor:
    """Generalised means (in units of dose_scale) of one ROI's 1-D voxel doses, one per power."""
    x = doses.clamp_min(0.0) / dose_scale
    top = x.detach().max() if x.numel() else x.new_zeros(())
    s = torch.where(top > 0, top, torch.ones_like(top))  # the ROI's highest dose (1 if none)
    zero = (top <= 0).to(x.dtype)  # an all-zero dose: M_p = 0, not eps^(1/p) (4.4 Gy for p = 10)
    return torch.stack([s * (_pow(x / s, p).mean() + eps) ** (1.0 / p) - zero * eps ** (1.0 / p)
                        for p in powers])


def moment_loss(pred: torch.Tensor, ref: torch.Tensor, roi_codes: torch.Tensor,
                powers_by_bit: dict[int, Sequence[float]], *, dose_scale: float = DEFAULT_DOSE_SCALE,
                eps: float = 1e-12) -> torch.Tensor:
    """Moment loss of a batch; ``powers_by_bit`` maps each ROI bit to its powers.

    The mean over the (patient, ROI) pairs present of the mean over the ROI's powers of
    ``(M_p(pred) - M_p(ref))^2`` (:func:`moments`); all pairs at once (segment sums per power).
    """
    codes, _, _ = check_inputs(pred, ref, roi_codes)
    pred, ref = upcast(pred, ref)
    if codes is None:
        raise ValueError("the moment loss needs roi_codes")
    bits = list(powers_by_bit)
    if not bits:
        return zero_like_graph(pred)
    nb, k = pred.shape[0], len(bits)
    seg, p, r = roi_members(pred, ref, codes, bits)
    x_p = p.clamp_min(0.0) / dose_scale
    x_r = r.clamp_min(0.0) / dose_scale
    cnt = segment_counts(seg, nb * k, pred.dtype)
    n = cnt.clamp_min(1.0)
    # each segment's highest dose (1 where none), constant in the graph: module docstring
    tops = [torch.zeros(nb * k, dtype=x.dtype, device=x.device).scatter_reduce(
        0, seg, x.detach(), "amax", include_self=True) for x in (x_p, x_r)]
    s_p, s_r = (torch.where(t > 0, t, torch.ones_like(t)) for t in tops)
    z_p, z_r = ((t <= 0).to(t.dtype) for t in tops)  # all-zero segments: M_p = 0 (module docstring)
    x_p, x_r = x_p / s_p[seg], x_r / s_r[seg]
    pw_all = sorted({float(q) for b in bits for q in powers_by_bit[b]})
    col = {pw: i for i, pw in enumerate(pw_all)}
    # per-segment means of x^p, one row per distinct power: (P, segments)
    m_p = torch.stack([pred.new_zeros(nb * k).index_add(0, seg, _pow(x_p, pw)) for pw in pw_all]) / n
    with torch.no_grad():
        m_r = torch.stack([ref.new_zeros(nb * k).index_add(0, seg, x_r.pow(pw)) for pw in pw_all]) / n
    # every (segment, power of its ROI) pair, read at once
    rows, segs, expo, wts = [], [], [], []
    for j, b in enumerate(bits):
        for pw in powers_by_bit[b]:
            for i in range(nb):
                rows.append(col[float(pw)])
                segs.append(i * k + j)
                expo.append(1.0 / float(pw))
                wts.append(1.0 / len(powers_by_bit[b]))
    dev, dt = pred.device, pred.dtype
    ri, si = torch.tensor(rows, device=dev), torch.tensor(segs, device=dev)
    e, w = torch.tensor(expo, dtype=dt, device=dev), torch.tensor(wts, dtype=dt, device=dev)
    floor = eps ** e  # an all-zero segment's M_p in the s = 1 form, taken off: its M_p is 0
    d = (s_p[si] * (m_p[ri, si] + eps) ** e - z_p[si] * floor) - (s_r[si] * (m_r[ri, si] + eps) ** e
                                                                  - z_r[si] * floor)
    return mean_over_present(pred.new_zeros(nb * k).index_add(0, si, d ** 2 * w), cnt, pred)


class MomentLoss(nn.Module):
    """Moment loss over the ROIs of ``roi_set``: ``oar_powers`` for OARs (and 'other'),
    ``target_powers`` for targets; ``dose_scale`` (Gy) normalises the doses."""

    name = "moment"

    def __init__(self, roi_set: Any, oar_powers: Sequence[float] = OAR_POWERS,
                 target_powers: Sequence[float] = TARGET_POWERS, dose_scale: float = DEFAULT_DOSE_SCALE,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if roi_set is None:
            raise ValueError("the moment loss needs the dataset's roi_set")
        for p in (*oar_powers, *target_powers):
            if not p > 0:
                raise InputError(f"moment powers must be > 0, got {p}")
        if not dose_scale > 0:
            raise InputError(f"moment dose_scale must be > 0 Gy, got {dose_scale}")
        self.powers_by_bit = {
            k: tuple(float(p) for p in (target_powers if r.kind == "target" else oar_powers))
            for k, r in enumerate(roi_set.rois)}
        self.dose_scale, self.eps = float(dose_scale), float(eps)

    def forward_with_parts(self, pred, ref, roi_codes, mask=None, spacing=None):
        return moment_loss(pred, ref, roi_codes, self.powers_by_bit, dose_scale=self.dose_scale,
                           eps=self.eps), {}

    def forward(self, pred, ref, roi_codes, mask=None, spacing=None) -> torch.Tensor:
        return self.forward_with_parts(pred, ref, roi_codes, mask, spacing)[0]

    def extra_repr(self) -> str:
        return f"rois={len(self.powers_by_bit)}, dose_scale={self.dose_scale:g}"
