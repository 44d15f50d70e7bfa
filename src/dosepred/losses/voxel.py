"""Voxel-wise losses inside the possible-dose mask: MAE and MSE.

Each patient's error is averaged over its mask voxels, then patients are averaged, so a patient
with a small mask weighs as much as one with a large mask. Patients with an empty mask contribute 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ._common import DEFAULT_DOSE_SCALE, check_inputs, upcast


def _masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """err (B, *S) -> mean over the batch of per-patient means over mask voxels."""
    b = err.shape[0]
    flat = err.reshape(b, -1)
    if mask is None:
        return flat.mean(dim=1).mean()
    m = mask.reshape(b, -1).to(err.dtype)
    per = (flat * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return per.mean()


def mae(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error (Gy) over the possible-dose mask. pred, ref: (B, 1, *S); mask (B, 1, *S)."""
    _, m, _ = check_inputs(pred, ref, mask=mask)
    pred, ref = upcast(pred, ref)
    return _masked_mean((pred - ref.detach()).abs()[:, 0], m)


def mse(pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error (Gy^2) over the possible-dose mask."""
    _, m, _ = check_inputs(pred, ref, mask=mask)
    pred, ref = upcast(pred, ref)
    return _masked_mean(((pred - ref.detach()) ** 2)[:, 0], m)


class MAELoss(nn.Module):
    """MAE inside the mask, divided by ``dose_scale`` (Gy) so it is dimensionless like the other terms.

    ``dose_scale=1`` gives the MAE in Gy. The unscaled value is reported as part ``mae_gy``.
    """

    name = "mae"

    def __init__(self, dose_scale: float = DEFAULT_DOSE_SCALE) -> None:
        super().__init__()
        if not dose_scale > 0:
            raise InputError(f"{self.name} dose_scale must be > 0 Gy, got {dose_scale}")
        self.dose_scale = float(dose_scale)

    def forward_with_parts(self, pred, ref, roi_codes=None, mask=None, spacing=None):
        v = mae(pred, ref, mask)
        return v / self.dose_scale, {"mae_gy": v.detach()}

    def forward(self, pred, ref, roi_codes=None, mask=None, spacing=None) -> torch.Tensor:
        return self.forward_with_parts(pred, ref, roi_codes, mask, spacing)[0]

    def extra_repr(self) -> str:
        return f"dose_scale={self.dose_scale:g}"


class MSELoss(MAELoss):
    """MSE inside the mask, divided by ``dose_scale ** 2``. The value in Gy^2 is part ``mse_gy2``."""

    name = "mse"

    def forward_with_parts(self, pred, ref, roi_codes=None, mask=None, spacing=None):
        v = mse(pred, ref, mask)
        return v / self.dose_scale ** 2, {"mse_gy2": v.detach()}
