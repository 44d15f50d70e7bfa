"""Clinical DVH metric (CDM) loss: the protocol's own metrics, made differentiable.

For each criterion of a :class:`dosepred.protocol.Protocol` (ROI + metric string, optional limit):

- **D-metrics** (``D95%``, ``D0.1cc``, ``Dmax``, ``Dmin``): the linear-interpolation percentile of
  the ROI's voxel doses at ``q = dosepred.metrics.percentile_q(metric, n_voxels, voxel_volume)``,
  computed from one sort of the ROI's doses. Its forward value equals ``np.percentile`` and so
  :func:`dosepred.metrics.compute` (OpenKBP's definition) exactly; its gradient reaches the two
  bracketing voxels. ``spread=k`` (percent) averages the percentiles over ``q - k .. q + k`` to
  spread gradients over more voxels (the value is then no longer exact; default 0 = exact).
- **Dmean**: the mean of the ROI's doses.
- **V-metrics** (``V20Gy``, ``V95%``): the surrogate ``100 * mean(sigmoid((D - x) / tau))``, with
  ``x = dosepred.metrics.v_cut(v_threshold(metric, rx))`` (the threshold less 1e-6 of it, where the
  exact V-metric starts counting) and temperature ``tau`` (Gy).

Two terms per criterion, each multiplied by ``criterion.weight`` and by the target or OAR weight:

- *matching* ``|M(pred) - M(ref)|`` (on by default);
- *constraint* ``max(0, M(pred) - limit)`` for ``<=`` (mirrored for ``>=``), only for criteria with a
  limit; off by default.

Dose-metric differences are divided by ``dose_scale`` (Gy; default the highest prescription, else
70 Gy) and V-metric differences by 100 so that every term is a fraction, comparable with MAE /
dose_scale. The loss is the mean over the (patient, criterion) pairs whose ROI is present; an ROI
absent from a patient's volume contributes nothing; with nothing to evaluate the loss is
``0 * pred.sum()`` (zero, with a gradient path).

ROIs are decoded from the bit-mask codes with :func:`dosepred.roi.decode_torch` on the tensor's
device, only at the voxels inside some ROI; no one-hot of all ROIs is built. All (patient, criterion)
pairs of a batch are evaluated together (one gather, one segmented sort, one read of every
percentile), so the host waits for the device three times per batch, not twice per ROI and
patient. This module does not evaluate plans (see :mod:`dosepred.evaluation`); it only makes the
same metrics differentiable.

The production path: training builds :class:`CDMLoss` (``losses.build_loss``), which resolves the
protocol's criteria once into :class:`CdmTerm` s (:func:`resolve_terms`); every step then calls the
batched :func:`cdm_loss`, which gathers each (patient, ROI) pair's voxel doses and sorts them within
their segments (``_roi_segments``), reads every percentile of the batch by one indexed gather, every
Dmean and V-metric surrogate by segmented sums, and adds the matching and constraint terms.
:func:`sorted_percentile`, :func:`d_metric`, :func:`v_metric` and :func:`roi_metrics` are the
reference implementation for one ROI, used by the tests to check :func:`cdm_loss` (and exported for
a single ROI's metric); training never calls them.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..metrics import Metric, MetricError, parse_metric, percentile_index, percentile_q, v_cut, v_threshold
from ..patient import RoiSet
from ..protocol import BoundProtocol, Protocol, bound_for, load_protocol
from ._common import DEFAULT_DOSE_SCALE, check_inputs, roi_members, upcast, voxel_volumes, zero_like_graph

_SPREAD_POINTS = 9  # percentiles averaged over the band q +- spread


@dataclass(frozen=True)
class CdmTerm:
    """One protocol criterion resolved against a RoiSet: everything the loss needs, as plain values."""

    roi: str
    bit: int
    metric: Metric
    is_target: bool
    weight: float  # criterion weight x target/OAR weight
    limit: float | None = None  # Gy for dose metrics, % for V-metrics
    direction: str | None = None  # ">=" / "<=" / None
    threshold: float | None = None  # Gy, V-metrics only

    @property
    def label(self) -> str:
        return f"{self.roi} {self.metric}"


# ------------------------------------------------------------------------------ metric functions

def sorted_percentile(sorted_doses: torch.Tensor, q: float | Sequence[float]) -> torch.Tensor:
    """Linear-interpolation percentile(s) ``q`` (0-100) of an ascending 1-D tensor.

    Same definition as ``np.percentile`` / ``torch.quantile`` (virtual index ``q / 100 * (n - 1)``),
    the index computed in float64 on the host so float32 doses lose nothing. Gradients reach the
    two order statistics around each index. Returns a scalar for a float ``q``, else a 1-D tensor.

    Reference implementation for one ROI, used by the tests to check :func:`cdm_loss`; training
    uses :func:`cdm_loss`.
    """
    n = sorted_doses.shape[0]
    if n == 0:
        raise ValueError("percentile of an empty ROI")
    scalar = isinstance(q, (int, float))
    qs = [float(q)] if scalar else [float(x) for x in q]
    lo, hi, frac = [], [], []
    for x in qs:
        if not 0.0 <= x <= 100.0:
            raise ValueError(f"percentile must be in 0..100, got {x}")
        i, j, f = percentile_index(x, n)
        lo.append(i)
        hi.append(j)
        frac.append(f)
    dev = sorted_doses.device
    a = sorted_doses[torch.tensor(lo, device=dev)]
    b = sorted_doses[torch.tensor(hi, device=dev)]
    t = torch.tensor(frac, device=dev, dtype=sorted_doses.dtype)
    out = a + (b - a) * t
    return out[0] if scalar else out


def _band(q: float, spread: float) -> list[float]:
    if spread <= 0:
        return [q]
    return [min(100.0, max(0.0, q + spread * (2.0 * j / (_SPREAD_POINTS - 1) - 1.0)))
            for j in range(_SPREAD_POINTS)]


def d_metric(doses: torch.Tensor, metric: Metric | str, voxel_volume_mm3: float | None = None,
             spread: float = 0.0, sorted_doses: torch.Tensor | None = None) -> torch.Tensor:
    """Differentiable D-metric (Dmean, Dmax, Dmin, D<x>%, D<x>cc) of one ROI's 1-D voxel doses (Gy).

    With ``spread=0`` the value equals :func:`dosepred.metrics.compute`. ``D<x>cc`` needs the voxel
    volume. ``sorted_doses`` (ascending, same voxels) may be passed to share one sort between metrics.

    Reference implementation for one ROI, used by the tests to check :func:`cdm_loss`; training
    uses :func:`cdm_loss`.
    """
    m = parse_metric(metric)
    if doses.dim() != 1 or doses.numel() == 0:
        raise ValueError("doses must be a non-empty 1-D tensor of ROI voxel doses, "
                         f"got shape {tuple(doses.shape)}")
    if m.kind == "Dmean":
        return doses.mean()
    if m.kind == "V":
        raise MetricError(f"{m} is a V-metric; use v_metric()")
    if m.kind == "D" and m.unit == "cc" and voxel_volume_mm3 is None:
        raise ValueError(f"{m} needs the voxel volume (pass spacing)")
    q = percentile_q(m, doses.numel(), voxel_volume_mm3 if voxel_volume_mm3 is not None else 1.0)
    s = sorted_doses if sorted_doses is not None else torch.sort(doses).values
    band = _band(q, spread)
    vals = sorted_percentile(s, band)
    return vals.mean()


def v_metric(doses: torch.Tensor, threshold: float, tau: float = 1.0) -> torch.Tensor:
    """Sigmoid surrogate of a V-metric: % of the ROI's voxels at or above ``threshold`` Gy.

    ``100 * mean(sigmoid((D - x) / tau))`` with ``x = v_cut(threshold)``; tends to the exact value
    (:func:`dosepred.metrics.compute`) as ``tau -> 0``.

    Reference implementation for one ROI, used by the tests to check :func:`cdm_loss`; training
    uses :func:`cdm_loss`.
    """
    if not 0 < tau < math.inf:
        raise InputError(f"tau must be a finite number > 0 Gy, got {tau}")
    if doses.numel() == 0:
        raise ValueError("V-metric of an empty ROI")
    return torch.sigmoid((doses - v_cut(float(threshold))) / tau).mean() * 100.0


def roi_metrics(doses: torch.Tensor, terms: Sequence[CdmTerm], voxel_volume_mm3: float | None,
                tau: float = 1.0, spread: float = 0.0) -> torch.Tensor:
    """Values of ``terms`` (all of one ROI) on its 1-D voxel doses, one sort shared by the D-metrics.

    Reference implementation for one ROI, used by the tests to check :func:`cdm_loss`; training
    uses :func:`cdm_loss`.
    """
    needs_sort = any(t.metric.kind in ("D", "Dmax", "Dmin") for t in terms)
    s = torch.sort(doses).values if needs_sort else None
    out = []
    for t in terms:
        if t.metric.kind == "V":
            assert t.threshold is not None
            out.append(v_metric(doses, t.threshold, tau))
        else:
            out.append(d_metric(doses, t.metric, voxel_volume_mm3, spread, sorted_doses=s))
    return torch.stack(out)


# ------------------------------------------------------------------------------ terms from a protocol

def resolve_terms(protocol: Protocol | BoundProtocol, roi_set: RoiSet, target_weight: float = 1.0,
                  oar_weight: float = 1.0) -> list[CdmTerm]:
    """Turn a protocol's criteria into :class:`CdmTerm` s for a dataset's RoiSet.

    ``protocol``: a :class:`~dosepred.protocol.Protocol`, or one already bound to ``roi_set``
    (:meth:`Protocol.bind`, which validates it: a misspelt ROI or a needed prescription that no one
    gives is a ProtocolError naming the criterion). Every criterion's ROI must be in the RoiSet
    (InputError naming the first that is not).
    """
    bound = bound_for(protocol, roi_set)
    for i, c in enumerate(bound.protocol.criteria, 1):
        if c.roi not in roi_set:  # binding leaves out a dataset's uncontoured ROI; the loss needs them all
            raise InputError(f"CDM loss: criterion {i} ({c.roi} {c.metric}) names ROI {c.roi!r}, which is "
                             f"not in the dataset's ROIs ({', '.join(roi_set.names)})")
    terms = []
    for c in bound.criteria:
        try:
            thr = v_threshold(c.parsed, c.rx) if c.parsed.kind == "V" else None
        except ValueError as e:
            raise InputError(f"CDM loss: criterion {c.index} ({c.roi} {c.metric}): {e}") from None
        is_target = c.kind == "target"
        w = c.weight * (target_weight if is_target else oar_weight)
        terms.append(CdmTerm(c.roi, roi_set.index(c.roi), c.parsed, is_target, w, c.limit,
                             c.direction if c.limit is not None else None, thr))
    return terms


def default_dose_scale(protocol: Protocol | BoundProtocol | None, roi_set: RoiSet) -> float:
    """The highest prescription (Gy) known to the protocol or the RoiSet, else 70 Gy."""
    proto = protocol.protocol if isinstance(protocol, BoundProtocol) else protocol
    rx = [r.prescription for r in roi_set if r.prescription]
    if proto is not None:
        rx += [proto.prescription(r, roi_set) or 0.0 for r in roi_set.names]
    rx = [x for x in rx if x]
    return float(max(rx)) if rx else DEFAULT_DOSE_SCALE


# ------------------------------------------------------------------------------ the loss

def _roi_segments(pred: torch.Tensor, ref: torch.Tensor, codes: torch.Tensor, bits: Sequence[int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Every (patient, ROI) pair's voxel doses as contiguous, ascending segments of flat tensors.

    Segment ``s = b * K + j`` holds the voxels of ROI ``bits[j]`` in patient ``b`` (an ROI voxel in
    several ROIs appears in each). Returns ``(seg, p_sorted, r_sorted, counts)``: the segment of each
    position, the prediction (differentiable) and reference doses sorted within each segment, and the
    voxel count of each segment on the host. Three host synchronisations in all, whatever the number
    of patients and ROIs (a loop over ROIs needs two per ROI and patient, which dominates on a GPU).
    """
    seg, p, r = roi_members(pred, ref, codes, bits)
    counts = [int(c) for c in torch.bincount(seg, minlength=pred.shape[0] * len(bits)).tolist()]

    def seg_sort(x: torch.Tensor) -> torch.Tensor:  # ascending within each segment, segments in order
        o1 = torch.argsort(x)
        o2 = torch.sort(seg[o1], stable=True).indices
        return o1[o2]

    op, orr = seg_sort(p.detach()), seg_sort(r)
    return seg[op], p[op], r[orr], counts


def cdm_loss(pred: torch.Tensor, ref: torch.Tensor, roi_codes: torch.Tensor, spacing: Any,
             terms: Sequence[CdmTerm], *, tau: float = 1.0, spread: float = 0.0,
             dose_scale: float = DEFAULT_DOSE_SCALE, match: bool = True, constraint: bool = False,
             constraint_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CDM loss of a batch. pred, ref (B, 1, *S) Gy; roi_codes (B, *S); spacing (B, 3) mm or None.

    Returns (loss, parts); parts (detached): ``cdm_match``, ``cdm_constraint`` (weighted means as in
    the loss), ``cdm_target_gy`` / ``cdm_oar_gy`` (mean |M_pred - M_ref| in Gy over target / OAR
    dose metrics: the batch's PTV and OAR scores) and ``cdm_v_pct`` (same for V-metrics, %).

    All (patient, criterion) pairs are evaluated at once: one gather of the ROI voxels, one segmented
    sort, every percentile read by one indexed gather; the values are those of :func:`roi_metrics`.
    """
    codes, _, sp = check_inputs(pred, ref, roi_codes, None, spacing)
    pred, ref = upcast(pred, ref)
    if codes is None:
        raise ValueError("the CDM loss needs roi_codes")
    if not 0 <= spread <= 100:  # NaN and inf too: a band wider than the ROI is none
        raise InputError(f"spread must be 0-100 percent, got {spread}")
    if not 0 < tau < math.inf and any(t.metric.kind == "V" for t in terms):
        raise InputError(f"tau must be a finite number > 0 Gy, got {tau}")
    nb = pred.shape[0]
    vols = voxel_volumes(sp, nb)
    bits = sorted({t.bit for t in terms})
    col = {bit: i for i, bit in enumerate(bits)}
    seg, ps, rs, counts = _roi_segments(pred, ref, codes, bits) if bits else (None, None, None, [])
    k = len(bits)
    starts = [0, *itertools.accumulate(counts)]  # where each segment begins in the sorted tensors

    # host: the (patient, term) pairs whose ROI is present, and where each percentile sits
    pairs: list[CdmTerm] = []
    q_pair, q_lo, q_hi, q_frac, q_w = [], [], [], [], []  # percentile reads (D, Dmax, Dmin)
    mean_pair, mean_seg = [], []  # Dmean
    v_reads: dict[float, tuple[list[int], list[int]]] = {}  # threshold -> (pairs, segments)
    for b in range(nb):
        for t in terms:
            s_id = b * k + col[t.bit]
            n = counts[s_id]
            if n == 0:
                continue
            i_pair = len(pairs)
            pairs.append(t)
            kind = t.metric.kind
            if kind == "Dmean":
                mean_pair.append(i_pair)
                mean_seg.append(s_id)
            elif kind == "V":
                assert t.threshold is not None
                vp, vs = v_reads.setdefault(float(t.threshold), ([], []))
                vp.append(i_pair)
                vs.append(s_id)
            else:
                if kind == "D" and t.metric.unit == "cc" and vols[b] is None:
                    raise ValueError(f"{t.metric} needs the voxel volume (pass spacing)")
                q = percentile_q(t.metric, n, vols[b] if vols[b] is not None else 1.0)
                band = _band(q, spread)
                for x in band:
                    i, j, f = percentile_index(x, n)
                    q_pair.append(i_pair)
                    q_lo.append(starts[s_id] + i)
                    q_hi.append(starts[s_id] + j)
                    q_frac.append(f)
                    q_w.append(1.0 / len(band))
    if not pairs:
        z = zero_like_graph(pred)
        return z, {"cdm_match": z.detach(), "cdm_constraint": z.detach()}
    assert seg is not None and ps is not None and rs is not None

    dev, dt = pred.device, pred.dtype

    def as_t(x: list, dtype: Any = torch.long) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype, device=dev)

    n_pairs = len(pairs)
    mp = pred.new_zeros(n_pairs)
    mr = ref.new_zeros(n_pairs)
    if q_pair:
        qp, lo, hi, fr, w = as_t(q_pair), as_t(q_lo), as_t(q_hi), as_t(q_frac, dt), as_t(q_w, dt)
        mp = mp.index_add(0, qp, (ps[lo] + (ps[hi] - ps[lo]) * fr) * w)
        mr = mr.index_add(0, qp, (rs[lo] + (rs[hi] - rs[lo]) * fr) * w)
    if mean_pair or v_reads:
        cnt = as_t(counts, dt)
    if mean_pair:
        ms, mi = as_t(mean_seg), as_t(mean_pair)
        mp = mp.index_add(0, mi, pred.new_zeros(nb * k).index_add(0, seg, ps)[ms] / cnt[ms])
        mr = mr.index_add(0, mi, ref.new_zeros(nb * k).index_add(0, seg, rs)[ms] / cnt[ms])
    for thr, (vp, vs) in v_reads.items():  # one pass over the ROI voxels per distinct threshold
        ms, mi = as_t(vs), as_t(vp)
        cut = v_cut(thr)  # where the exact V-metric starts counting
        sp_v = pred.new_zeros(nb * k).index_add(0, seg, torch.sigmoid((ps - cut) / tau))
        sr_v = ref.new_zeros(nb * k).index_add(0, seg, torch.sigmoid((rs - cut) / tau))
        mp = mp.index_add(0, mi, sp_v[ms] / cnt[ms] * 100.0)
        mr = mr.index_add(0, mi, sr_v[ms] / cnt[ms] * 100.0)

    is_dose = [t.metric.is_dose for t in pairs]
    scale = as_t([dose_scale if d else 100.0 for d in is_dose], dt)
    w = as_t([t.weight for t in pairs], dt)
    zero = pred.new_zeros(())
    match_term = (w * (mp - mr).abs() / scale).sum() / n_pairs if match else zero
    cons_idx = [i for i, t in enumerate(pairs) if t.limit is not None] if constraint else []
    if cons_idx:
        ci = as_t(cons_idx)
        lim = as_t([pairs[i].limit for i in cons_idx], dt)
        sign = as_t([1.0 if pairs[i].direction == "<=" else -1.0 for i in cons_idx], dt)
        cons_term = (w[ci] * torch.relu(sign * (mp[ci] - lim)) / scale[ci]).sum() / n_pairs
    else:
        cons_term = zero
    total = match_term + constraint_weight * cons_term if constraint else match_term
    if not match and not cons_idx:  # constraint only, and no criterion has a limit here
        total = total + zero_like_graph(pred)
    parts = {"cdm_match": match_term.detach(), "cdm_constraint": cons_term.detach()}
    diff = (mp.detach() - mr).abs()
    for key, sel in (("cdm_target_gy", [i for i, t in enumerate(pairs) if is_dose[i] and t.is_target]),
                     ("cdm_oar_gy", [i for i, t in enumerate(pairs) if is_dose[i] and not t.is_target]),
                     ("cdm_v_pct", [i for i, d in enumerate(is_dose) if not d])):
        if sel:
            parts[key] = diff[as_t(sel)].mean()
    return total, parts


class CDMLoss(nn.Module):
    """CDM loss built from a clinical protocol (see the module docstring).

    Args:
        protocol: a :class:`dosepred.protocol.Protocol`, a built-in name or JSON path for
            :func:`dosepred.protocol.load_protocol`, or None for ``"openkbp"`` (the DVH-score metrics).
        roi_set: the dataset's :class:`dosepred.patient.RoiSet` (bit k = ``roi_set.rois[k]``).
        tau: V-metric sigmoid temperature (Gy).
        spread: D-metric gradient spreading band (percent); 0 = exact metric values.
        dose_scale: Gy dividing dose-metric differences; None = highest prescription, else 70.
        target_weight, oar_weight: multiply the criteria of target / OAR (and other) ROIs.
        match: include the matching term |M(pred) - M(ref)|.
        constraint: include the hinge on the protocol limits; ``constraint_weight`` scales it.
    """

    name = "cdm"

    def __init__(self, protocol: Protocol | str | os.PathLike | None = None, roi_set: RoiSet | None = None,
                 tau: float = 1.0, spread: float = 0.0,
                 dose_scale: float | None = None, target_weight: float = 1.0, oar_weight: float = 1.0,
                 match: bool = True, constraint: bool = False, constraint_weight: float = 1.0) -> None:
        super().__init__()
        if roi_set is None:
            raise ValueError("the CDM loss needs the dataset's roi_set")
        protocol = load_protocol("openkbp" if protocol is None else protocol)
        if not 0 < tau < math.inf:  # inf: every V-metric a flat 50 % without gradient
            raise InputError(f"cdm tau must be a finite number > 0 Gy, got {tau}")
        for label, v in (("constraint_weight", constraint_weight), ("target_weight", target_weight),
                         ("oar_weight", oar_weight)):
            if not 0 <= v < math.inf:
                raise InputError(f"cdm {label} must be a finite number >= 0, got {v}")
        if not 0 <= spread <= 100:  # NaN and inf too: a band wider than the ROI is none
            raise InputError(f"cdm spread must be 0-100 percent, got {spread}")
        if not (match or constraint):
            raise InputError("the CDM loss needs match=True or constraint=True (both are off)")
        self.protocol = protocol
        self.terms = resolve_terms(protocol, roi_set, target_weight, oar_weight)  # binds: validates once
        self.tau = float(tau)
        self.spread = float(spread)
        if dose_scale is None:
            dose_scale = default_dose_scale(protocol, roi_set)
        self.dose_scale = float(dose_scale)
        if not self.dose_scale > 0:
            raise InputError(f"cdm dose_scale must be > 0 Gy, got {dose_scale}")
        self.match = bool(match)
        self.constraint = bool(constraint)
        self.constraint_weight = float(constraint_weight)
        self.target_weight = float(target_weight)
        self.oar_weight = float(oar_weight)

    def forward_with_parts(self, pred, ref, roi_codes, mask=None, spacing=None):
        return cdm_loss(pred, ref, roi_codes, spacing, self.terms, tau=self.tau, spread=self.spread,
                        dose_scale=self.dose_scale, match=self.match, constraint=self.constraint,
                        constraint_weight=self.constraint_weight)

    def forward(self, pred, ref, roi_codes, mask=None, spacing=None) -> torch.Tensor:
        return self.forward_with_parts(pred, ref, roi_codes, mask, spacing)[0]

    def extra_repr(self) -> str:
        return (f"criteria={len(self.terms)}, tau={self.tau:g}, spread={self.spread:g}, "
                f"dose_scale={self.dose_scale:g}, target_weight={self.target_weight:g}, "
                f"oar_weight={self.oar_weight:g}, match={self.match}, constraint={self.constraint}")
