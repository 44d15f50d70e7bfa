"""CDM loss against the real protocols and a real OpenKBP dose; a tiny optimisation on the CDM alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dosepred import metrics, roi
from dosepred.losses import CDMLoss, build_loss, resolve_terms
from dosepred.losses.cdm import roi_metrics
from dosepred.patient import Roi, RoiSet
from dosepred.protocol import load_protocol, parse_protocol


@pytest.fixture(scope="module")
def sample_patient(sample_dir):
    from dosepred.io.openkbp import read_patient

    return read_patient(sorted(sample_dir.glob("pt_*"))[0])


def _tensors(p, dose):
    t = torch.as_tensor(dose, dtype=torch.float32)[None, None]
    codes = roi.to_torch(p.roi_codes)[None]
    mask = torch.as_tensor(p.possible_dose_mask)[None, None]
    sp = torch.tensor([p.spacing], dtype=torch.float64)
    return t, codes, mask, sp


@pytest.mark.parametrize("name", ["openkbp", "openkbp-clinical"])
def test_cdm_metrics_equal_numpy_on_openkbp_dose(sample_patient, name):
    p = sample_patient
    proto = load_protocol(name, p.roi_set)
    terms = resolve_terms(proto, p.roi_set)
    dose = torch.as_tensor(p.dose)
    checked = 0
    for t in terms:
        sel = p.mask(t.roi)
        if not sel.any() or t.metric.kind == "V":
            continue
        got = float(roi_metrics(dose[torch.as_tensor(sel)], [t], p.voxel_volume_mm3)[0])
        want = metrics.compute(t.metric, p.dose[sel], p.voxel_volume_mm3)
        assert got == pytest.approx(want, abs=1e-5), t.label
        checked += 1
    assert checked >= 10


def test_cdm_parts_are_the_batch_dvh_scores(sample_patient):
    """With the openkbp protocol, parts cdm_target_gy / cdm_oar_gy are the PTV / OAR halves of the
    DVH score of this prediction (numpy)."""
    p = sample_patient
    rng = np.random.default_rng(0)
    pred_np = (p.dose * rng.uniform(0.9, 1.1, size=p.dose.shape)).astype(np.float32)
    pred, codes, mask, sp = _tensors(p, pred_np)
    ref = _tensors(p, p.dose)[0]
    loss, parts = build_loss("cdm", roi_set=p.roi_set, protocol="openkbp")(pred, ref, codes, mask, sp)
    errs = {"target": [], "oar": []}
    for c in load_protocol("openkbp", p.roi_set).criteria:
        sel = p.mask(c.roi)
        if sel.any():
            e = abs(metrics.compute(c.metric, pred_np[sel], p.voxel_volume_mm3)
                    - metrics.compute(c.metric, p.dose[sel], p.voxel_volume_mm3))
            errs[p.roi_set[c.roi].kind].append(e)
    assert float(parts["cdm_target_gy"]) == pytest.approx(np.mean(errs["target"]), abs=1e-4)
    assert float(parts["cdm_oar_gy"]) == pytest.approx(np.mean(errs["oar"]), abs=1e-4)
    n = len(errs["target"]) + len(errs["oar"])
    assert float(loss) == pytest.approx((sum(errs["target"]) + sum(errs["oar"])) / n / 70.0, rel=1e-4)


def test_cdm_constraint_hinge_with_clinical_protocol(sample_patient):
    p = sample_patient
    dose, codes, mask, sp = _tensors(p, p.dose)
    hot = (dose * 1.5).requires_grad_()  # overdosed everywhere: OAR limits violated
    f = CDMLoss("openkbp-clinical", p.roi_set, match=False, constraint=True)
    loss = f(hot, dose, codes, mask, sp)
    loss.backward()
    assert float(loss.detach()) > 0 and torch.isfinite(hot.grad).all()
    assert float(f(torch.zeros_like(dose), dose, codes, mask, sp)) > 0  # targets underdosed


def test_cdm_weights_and_spread(sample_patient):
    p = sample_patient
    dose, codes, mask, sp = _tensors(p, p.dose)
    pred = dose * 0.95
    base = CDMLoss("openkbp", p.roi_set)
    tw = CDMLoss("openkbp", p.roi_set, target_weight=2.0, oar_weight=0.0)
    _, parts = base.forward_with_parts(pred, dose, codes, mask, sp)
    present = [r for r in p.present_rois if p.mask(r).any()]
    n_t = 3 * sum(p.roi_set[r].kind == "target" for r in present)
    n_o = 2 * sum(p.roi_set[r].kind == "oar" for r in present)
    assert len(base.terms) == 23
    assert float(tw(pred, dose, codes, mask, sp)) == pytest.approx(
        2.0 * n_t * float(parts["cdm_target_gy"]) / 70.0 / (n_t + n_o), rel=1e-4)
    spread = CDMLoss("openkbp", p.roi_set, spread=2.0)
    exact = float(base(pred, dose, codes, mask, sp))
    assert float(spread(pred, dose, codes, mask, sp)) == pytest.approx(exact, rel=0.2)


def test_cdm_alone_moves_ptv_d95_toward_reference():
    """From a flat 40 Gy start, a tiny conv net trained on the CDM loss alone gets PTV D95 close to
    the reference."""
    torch.manual_seed(0)
    n = 16
    z, y, x = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
    r = np.sqrt((z - 8) ** 2 + (y - 8) ** 2 + (x - 6) ** 2)
    ptv = r < 4.5
    cord = (np.abs(x - 13) <= 1) & (np.abs(y - 8) <= 2)
    noise = np.random.default_rng(0).normal(0, 1, ptv.shape)
    ref = np.where(ptv, 60 + noise, 60 * np.exp(-(r - 4.5).clip(0) / 3)).astype(np.float32)
    rs = RoiSet((Roi("Cord", "oar"), Roi("PTV", "target", 60.0)))
    crit = ([{"roi": "PTV", "metric": m} for m in ("D99%", "D95%", "D1%")]
            + [{"roi": "Cord", "metric": m} for m in ("D0.1cc", "Dmean")])
    proto = parse_protocol({"name": "t", "criteria": crit}, rs)
    codes = roi.to_torch(roi.encode([cord, ptv]))[None]
    feat = torch.tensor(np.stack([ptv, cord, r / 8]).astype(np.float32))[None]
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 1, 1))
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].bias.fill_(40.0)
    ref_t = torch.as_tensor(ref)[None, None]
    sp = torch.tensor([[3.0, 3.0, 3.0]])
    loss_fn = CDMLoss(proto, rs)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)

    def d95(pred):
        return metrics.compute("D95%", pred[0, 0].detach().numpy()[ptv], 27.0)

    want = d95(ref_t)
    start = abs(d95(net(feat)) - want)
    for _ in range(80):
        loss = loss_fn(net(feat), ref_t, codes, None, sp)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = abs(d95(net(feat)) - want)
    assert start > 15 and end < 0.25 * start


def _per_roi_reference(pred, ref, codes, vols, terms, tau, spread, dose_scale, constraint):
    """The CDM loss written the plain way: a loop over patients and ROIs, boolean masks, one
    :func:`roi_metrics` call per ROI (match + constraint terms, mean over present pairs)."""
    total_m, total_c, n = 0.0, 0.0, 0
    for b in range(pred.shape[0]):
        for t in terms:
            sel = ((codes[b] >> t.bit) & 1).bool()
            if not sel.any():
                continue
            mp = roi_metrics(pred[b, 0][sel], [t], vols[b], tau, spread)[0]
            mr = roi_metrics(ref[b, 0][sel], [t], vols[b], tau, spread)[0]
            scale = dose_scale if t.metric.is_dose else 100.0
            total_m = total_m + t.weight * (mp - mr).abs() / scale
            if constraint and t.limit is not None:
                viol = mp - t.limit if t.direction == "<=" else t.limit - mp
                total_c = total_c + t.weight * torch.relu(viol) / scale
            n += 1
    return (total_m + total_c) / n


@pytest.mark.parametrize("spread", [0.0, 3.0])
def test_batched_cdm_equals_a_per_roi_loop(spread):
    """Three patients, overlapping ROIs, one ROI absent from one patient, D%/Dcc/Dmax/Dmean and
    V-metrics, constraints on: the batched loss (one segmented sort) gives the per-ROI loop's value
    and gradient."""
    rs = RoiSet([Roi("PTV70", "target", 70.0), Roi("PTV56", "target", 56.0), Roi("Cord", "oar"),
                 Roi("Parotid", "oar")])
    proto = parse_protocol({"name": "t", "criteria": [
        {"roi": "PTV70", "metric": "D95%", "limit": 70, "direction": ">=", "weight": 2},
        {"roi": "PTV70", "metric": "D1%"}, {"roi": "PTV70", "metric": "V95%", "limit": 95, "direction": ">="},
        {"roi": "PTV56", "metric": "D99%"}, {"roi": "PTV56", "metric": "Dmean"},
        {"roi": "Cord", "metric": "D0.1cc", "limit": 45, "direction": "<="},
        {"roi": "Cord", "metric": "Dmax"},
        {"roi": "Parotid", "metric": "Dmean", "limit": 26, "direction": "<="},
        {"roi": "Parotid", "metric": "V30Gy"}]}, rs)
    terms = resolve_terms(proto, rs, target_weight=3.0, oar_weight=0.5)
    g = torch.Generator().manual_seed(7)
    shape = (3, 1, 16, 16, 16)
    codes = torch.zeros(shape[:1] + shape[2:], dtype=torch.uint8)
    codes[:, 4:12, 4:12, 4:12] |= 1  # PTV70
    codes[:, 2:14, 2:14, 6:10] |= 2  # PTV56 overlaps PTV70
    codes[:, 10:16, 6:9, 6:9] |= 4  # Cord overlaps both
    codes[:2, 0:5, 0:6, 10:16] |= 8  # Parotid: absent from patient 3
    ref = 30 + 40 * torch.rand(shape, generator=g, dtype=torch.float64)
    pred0 = ref + 4 * torch.randn(shape, generator=g, dtype=torch.float64)
    sp = torch.tensor([[2.0, 2.5, 3.0], [3.0, 3.0, 2.0], [2.5, 2.5, 2.5]], dtype=torch.float64)
    vols = sp.prod(dim=1).tolist()
    from dosepred.losses import cdm_loss

    a = pred0.clone().requires_grad_(True)
    got, _ = cdm_loss(a, ref, codes, sp, terms, tau=1.5, spread=spread, dose_scale=70.0, constraint=True)
    got.backward()
    b = pred0.clone().requires_grad_(True)
    want = _per_roi_reference(b, ref, codes, vols, terms, 1.5, spread, 70.0, True)
    want.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert a.grad.abs().sum() > 0
