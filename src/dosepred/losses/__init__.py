"""Training losses for dose prediction: voxel (MAE, MSE), DVH-curve, moment and the clinical DVH
metric (CDM) loss built from a protocol.

::

    from dosepred.losses import build_loss
    loss_fn = build_loss("mae+cdm", roi_set=roi_set, protocol=protocol, cdm_tau=1.0)
    total, parts = loss_fn(pred, ref, roi_codes, mask, spacing)

Every loss takes the same tensors: ``pred``, ``ref`` (B, 1, *S) doses in Gy; ``roi_codes`` (B, *S)
bit-mask codes (:func:`dosepred.roi.to_torch`; bit k = ``roi_set.rois[k]``); ``mask`` (B, 1, *S)
possible-dose mask (bool or float); ``spacing`` (B, 3) mm per axis. ``ref`` never receives
gradients. Each loss is a pure function over tensors (:func:`mae`, :func:`mse`,
:func:`dvh_curve_loss`, :func:`moment_loss`, :func:`cdm_loss`) plus a thin ``nn.Module`` holding its
settings. ROI-based losses use the ROI's voxels (not intersected with the possible-dose mask, like
OpenKBP's evaluator); an ROI absent from a patient contributes nothing, never NaN.

Spec grammar and options: :mod:`dosepred.losses.spec`.
"""

from .cdm import CDMLoss, CdmTerm, cdm_loss, d_metric, resolve_terms, sorted_percentile, v_metric
from .dvh_curve import DVHCurveLoss, dvh_curve_loss, soft_dvh
from .moment import MomentLoss, moment_loss, moments
from .spec import LOSSES, OPTIONS, CombinedLoss, Term, build_loss, parse_spec
from .voxel import MAELoss, MSELoss, mae, mse

__all__ = ["LOSSES", "OPTIONS", "CDMLoss", "CdmTerm", "CombinedLoss", "DVHCurveLoss", "MAELoss",
           "MSELoss", "MomentLoss", "Term", "build_loss", "cdm_loss", "d_metric", "dvh_curve_loss", "mae",
           "moment_loss", "moments", "mse", "parse_spec", "resolve_terms", "soft_dvh", "sorted_percentile",
           "v_metric"]
