"""Loss library: spec parsing, exact forward values of the CDM metrics, gradients, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dosepred import metrics, roi
from dosepred.losses import (
    CDMLoss,
    CdmTerm,
    build_loss,
    cdm_loss,
    d_metric,
    dvh_curve_loss,
    mae,
    moment_loss,
    mse,
    parse_spec,
    resolve_terms,
    sorted_percentile,
    v_metric,
)
from dosepred.metrics import parse_metric
from dosepred.patient import Roi, RoiSet
from dosepred.protocol import parse_protocol

RS = RoiSet.openkbp()
D_METRICS = ["D99%", "D95%", "D50%", "D1%", "D0.1cc", "D2cc", "Dmax", "Dmin", "Dmean"]


def _batch(shape=(8, 8, 8), b=2, seed=0, dtype=torch.float64, n_rois=10, p=0.3):
    rng = np.random.default_rng(seed)
    ref = torch.as_tensor(rng.random((b, 1, *shape)) * 70, dtype=dtype)
    pred = (ref + torch.as_tensor(rng.normal(size=(b, 1, *shape)) * 2, dtype=dtype)).clamp_min(0)
    codes = torch.stack([roi.to_torch(roi.encode(rng.random((n_rois, *shape)) < p)) for _ in range(b)])
    mask = torch.ones(b, 1, *shape, dtype=torch.bool)
    spacing = torch.tensor([[3.9, 3.9, 2.5]] * b, dtype=torch.float64)
    return pred, ref, codes, mask, spacing


# ------------------------------------------------------------------------------------ spec parsing

@pytest.mark.parametrize("spec,expected", [
    ("mae", [("mae", 1.0)]),
    ("mae+cdm", [("mae", 1.0), ("cdm", 1.0)]),
    ("mae + 0.5*dvh", [("mae", 1.0), ("dvh", 0.5)]),
    ("MAE+1e-1*moment", [("mae", 1.0), ("moment", 0.1)]),
    ("2*mse", [("mse", 2.0)]),
])
def test_parse_spec(spec, expected):
    assert [(t.name, t.weight) for t in parse_spec(spec)] == expected


@pytest.mark.parametrize("spec,needle", [("maee", "mae"), ("mae+cmd", "cdm"), ("mae+dvhh", "dvh"),
                                         ("momnet", "moment")])
def test_parse_spec_suggests(spec, needle):
    with pytest.raises(ValueError, match=f"did you mean '{needle}'"):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["", "mae+", "mae+mae", "x*mae", "mae*0.5"])
def test_parse_spec_rejects(spec):
    with pytest.raises(ValueError):
        parse_spec(spec)


def test_build_loss_options():
    f = build_loss("mae+cdm", roi_set=RS, cdm_tau=0.5, cdm_constraint=True, tau=2.0, dvh_bin_width=0.2)
    assert f.terms["cdm"].tau == 0.5 and f.terms["cdm"].constraint
    assert f.terms["mae"].dose_scale == 70.0 and f.terms["cdm"].dose_scale == 70.0
    with pytest.raises(ValueError, match="did you mean 'cdm_tau'"):
        build_loss("mae+cdm", roi_set=RS, cdm_tua=1.0)
    f = build_loss("mae+0.5*dvh", roi_set=RS, bin_width=2.0)
    assert f.terms["dvh"].bin_width == 2.0 and f.weights["dvh"] == 0.5


def test_build_loss_returns_total_and_parts():
    pred, ref, codes, mask, sp = _batch(dtype=torch.float32)
    pred.requires_grad_()
    for spec in ("mae", "mse", "mae+cdm", "mae+0.5*dvh", "mae+0.1*moment"):
        total, parts = build_loss(spec, roi_set=RS)(pred, ref, codes, mask, sp)
        assert total.dim() == 0 and torch.isfinite(total)
        assert "total" in parts and all(torch.isfinite(v) for v in parts.values())
        total.backward()
        assert torch.isfinite(pred.grad).all()
        pred.grad = None


# ------------------------------------------------------------------------------------ voxel losses

def test_mae_mse_masked_per_patient():
    pred = torch.zeros(2, 1, 2, 2, 1)
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2, 1).repeat(2, 1, 1, 1, 1)
    mask = torch.zeros(2, 1, 2, 2, 1, dtype=torch.bool)
    mask[0, 0, 0, 0, 0] = True  # patient 0: one voxel, error 1
    mask[1] = True  # patient 1: all voxels, mean error 2.5
    assert float(mae(pred, ref, mask)) == pytest.approx((1.0 + 2.5) / 2)
    assert float(mse(pred, ref, mask)) == pytest.approx((1.0 + 7.5) / 2)
    assert float(mae(pred, ref)) == pytest.approx(2.5)


# ------------------------------------------------------------------------------------ exact D-metrics

@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_sorted_percentile_equals_numpy_and_torch(n):
    x = torch.as_tensor(np.random.default_rng(n).random(n) * 70)
    s = torch.sort(x).values
    for q in (0.0, 1.0, 5.0, 37.3, 95.0, 99.0, 100.0):
        v = float(sorted_percentile(s, q))
        assert v == pytest.approx(np.percentile(x.numpy(), q), abs=1e-9)
        assert v == pytest.approx(float(torch.quantile(x, q / 100)), abs=1e-9)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@pytest.mark.parametrize("n", [1, 3, 50, 5000])
def test_d_metric_equals_metrics_compute(dtype, tol, n):
    rng = np.random.default_rng(n)
    x = (rng.random(n) * 70).astype(np.float32)
    for name in D_METRICS:
        for vv in (1.0, 38.1):
            want = metrics.compute(name, x, vv)
            got = float(d_metric(torch.as_tensor(x, dtype=dtype), name, vv))
            assert got == pytest.approx(want, abs=tol * max(1.0, abs(want))), (name, n, vv)


def test_cdm_forward_equals_metrics_compute_on_batch():
    pred, ref, codes, mask, sp = _batch(shape=(10, 9, 8), b=2, dtype=torch.float32)
    terms = [CdmTerm(r.name, k, parse_metric(m), r.kind == "target", 1.0)
             for k, r in enumerate(RS.rois) for m in ("D99%", "D95%", "D1%", "D0.1cc", "Dmean")]
    vv = float(sp[0].prod())
    for b in range(2):
        for t in terms:
            sel = roi.decode_torch(codes[b], t.bit)
            got = float(d_metric(pred[b, 0][sel], t.metric, vv))
            assert got == pytest.approx(metrics.compute(t.metric, pred[b, 0][sel].numpy(), vv), abs=1e-5)
    # the loss itself: mean |M_pred - M_ref| / scale over all pairs, checked against numpy
    loss, parts = cdm_loss(pred, ref, codes, sp, terms, dose_scale=70.0)
    diffs = []
    for b in range(2):
        for t in terms:
            sel = roi.decode_torch(codes[b], t.bit).numpy()
            diffs.append(abs(metrics.compute(t.metric, pred[b, 0].numpy()[sel], vv)
                             - metrics.compute(t.metric, ref[b, 0].numpy()[sel], vv)))
    assert float(loss) == pytest.approx(np.mean(diffs) / 70.0, rel=1e-5)


def test_v_metric_surrogate_tends_to_exact():
    x = torch.as_tensor(np.random.default_rng(1).random(2000) * 70)
    exact = metrics.compute("V30Gy", x.numpy(), 1.0)
    assert float(v_metric(x, 30.0, tau=0.01)) == pytest.approx(exact, abs=0.2)
    assert abs(float(v_metric(x, 30.0, tau=1.0)) - exact) < 2.0


def test_v_metric_surrogate_counts_a_dose_at_the_threshold():
    """A float32 dose of 59.85 Gy (59.849998) receives 95 % of 63 Gy: as tau -> 0 the surrogate counts
    it, in the batched loss too, as the exact V95% does (hand count: 3 of the 4 voxels)."""
    d = np.array([58.0, 59.85, 60.0, 61.6], dtype=np.float32)
    assert float(v_metric(torch.as_tensor(d), 0.95 * 63.0, tau=1e-7)) == pytest.approx(75.0, abs=1e-3)
    rs = RoiSet((Roi("PTV63", "target", 63.0),))
    terms = resolve_terms(parse_protocol({"name": "v", "criteria": [{"roi": "PTV63", "metric": "V95%"}]}), rs)
    pred = torch.as_tensor(d).reshape(1, 1, 4, 1, 1)
    codes = torch.ones((1, 4, 1, 1), dtype=torch.uint8)
    _, parts = cdm_loss(pred, torch.full_like(pred, 70.0), codes, None, terms, tau=1e-7)
    assert float(parts["cdm_v_pct"]) == pytest.approx(100.0 - 75.0, abs=1e-3)


# ------------------------------------------------------------------------------------ gradients

def _no_tie_batch(shape=(5, 5, 5), seed=3):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    ref = torch.as_tensor(rng.permutation(n).reshape(1, 1, *shape) * (70.0 / n) + 0.1)
    pred = torch.as_tensor(rng.permutation(n).reshape(1, 1, *shape) * (70.0 / n) + 0.05)
    rs = RoiSet((Roi("Cord", "oar"), Roi("PTV", "target", 60.0)))
    m0 = np.zeros(shape, bool)
    m0[:3] = True
    m1 = np.zeros(shape, bool)
    m1[2:] = True
    codes = roi.to_torch(roi.encode([m0, m1]))[None]
    sp = torch.tensor([[2.0, 2.0, 2.5]], dtype=torch.float64)
    return pred, ref, codes, torch.ones_like(pred, dtype=torch.bool), sp, rs


def _protocol(*criteria):
    """A real Protocol made in Python from (roi, metric, limit, direction) tuples."""
    return parse_protocol({"name": "test", "criteria": [
        {"roi": r, "metric": m, **({"limit": lim, "direction": d} if lim is not None else {})}
        for r, m, lim, d in criteria]})


def _stand_in_protocol():
    return _protocol(("PTV", "D95%", 57.0, ">="), ("PTV", "D99%", None, None), ("PTV", "D2%", None, None),
                     ("PTV", "V95%", 95.0, ">="), ("Cord", "D0.1cc", 45.0, "<="),
                     ("Cord", "Dmean", 20.0, "<="), ("Cord", "Dmax", None, None),
                     ("Cord", "V30Gy", 50, "<="))


@pytest.mark.parametrize("spec,opts", [
    ("mae", {}), ("mse", {}), ("dvh", {"dvh_bin_width": 5.0, "dvh_max_elements": 64}),
    ("moment", {}), ("cdm", {"cdm_constraint": True}), ("cdm", {"cdm_spread": 3.0}),
    ("mae+cdm+0.5*dvh+0.1*moment", {"dvh_bin_width": 7.0}),
])
def test_gradcheck(spec, opts):
    pred, ref, codes, mask, sp, rs = _no_tie_batch()
    f = build_loss(spec, roi_set=rs, protocol=_stand_in_protocol(), **opts)
    pred = pred.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda p: f(p, ref, codes, mask, sp)[0], (pred,), eps=1e-6, atol=1e-5)


# ------------------------------------------------------------------------------------ edge cases

@pytest.mark.parametrize("case", ["empty", "single", "constant", "zeros"])
@pytest.mark.parametrize("spec", ["mae", "mse", "dvh", "moment", "cdm"])
def test_edge_cases_finite(case, spec):
    pred, ref, codes, mask, sp, rs = _no_tie_batch()
    if case == "empty":
        codes = torch.zeros_like(codes)
    elif case == "single":
        codes = torch.zeros_like(codes)
        codes[0, 1, 1, 1] = 3  # one voxel in both ROIs
    elif case == "constant":
        pred = torch.full_like(pred, 40.0)
        ref = torch.full_like(ref, 40.0)
    else:
        pred = torch.zeros_like(pred)
        ref = torch.zeros_like(ref)
    f = build_loss(spec, roi_set=rs, protocol=_stand_in_protocol(), cdm_constraint=True)
    pred = pred.clone().requires_grad_()
    total, parts = f(pred, ref, codes, mask, sp)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred.grad).all()
    if case == "empty" and spec != "mae" and spec != "mse":
        assert float(total.detach()) == 0.0


def test_absent_roi_in_one_patient_contributes_nothing():
    pred, ref, codes, mask, sp, rs = _no_tie_batch()
    f = CDMLoss(_stand_in_protocol(), rs)
    one = f(pred, ref, codes, mask, sp)
    two = f(torch.cat([pred, pred]), torch.cat([ref, ref]), torch.cat([codes, torch.zeros_like(codes)]),
            torch.cat([mask, mask]), torch.cat([sp, sp]))
    assert float(two) == pytest.approx(float(one))


def test_cdm_validates_rois_and_spacing():
    # binding names the misspelt ROI (and the nearest) before the loss looks at it
    with pytest.raises(ValueError, match="'Parotid' is not among the dataset's ROIs"):
        CDMLoss(_protocol(("PTV70", "Dmean", None, None), ("Parotid", "Dmean", None, None)), RS)
    pred, ref, codes, mask, sp, rs = _no_tie_batch()
    with pytest.raises(ValueError, match="voxel volume"):
        CDMLoss(_stand_in_protocol(), rs)(pred, ref, codes, mask, None)


def test_dvh_and_moment_zero_when_equal():
    pred, ref, codes, mask, sp, rs = _no_tie_batch()
    assert float(dvh_curve_loss(ref, ref, codes, [0, 1])) == 0.0
    assert float(moment_loss(ref, ref, codes, {0: (1, 2, 10), 1: (2, 4, 6)})) == 0.0
    assert float(dvh_curve_loss(pred, ref, codes, [0, 1])) > 0.0


def test_half_precision_prediction_is_upcast():
    pred, ref, codes, mask, sp = _batch(shape=(6, 6, 6), b=1, dtype=torch.float32)
    full, _ = build_loss("mae+cdm+dvh+moment", roi_set=RS)(pred, ref, codes, mask, sp)
    half = pred.half().requires_grad_()
    total, _ = build_loss("mae+cdm+dvh+moment", roi_set=RS)(half, ref, codes, mask, sp)
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(half.grad).all()
    assert float(total.detach()) == pytest.approx(float(full), rel=1e-2)


def test_moment_loss_equals_a_per_roi_loop():
    """The batched moment loss (segment sums per power) equals the plain loop over patients and ROIs
    with boolean masks and :func:`moments`, value and gradient; an ROI absent from one patient is
    left out of the mean."""
    from dosepred.losses.moment import moment_loss, moments

    g = torch.Generator().manual_seed(3)
    shape = (3, 1, 12, 12, 12)
    codes = torch.zeros((3, 12, 12, 12), dtype=torch.uint8)
    codes[:, 2:8, 2:8, 2:8] |= 1
    codes[:, 5:12, 4:9, 3:6] |= 2  # overlaps ROI 0
    codes[:2, 0:3, 9:12, 9:12] |= 4  # absent from patient 3
    ref = 60 * torch.rand(shape, generator=g, dtype=torch.float64)
    pred0 = ref + 5 * torch.randn(shape, generator=g, dtype=torch.float64)  # some negative doses too
    powers = {0: (2.0, 4.0, 6.0), 1: (1.0, 2.0, 10.0), 2: (1.0, 3.0)}
    a = pred0.clone().requires_grad_(True)
    got = moment_loss(a, ref, codes, powers, dose_scale=70.0)
    got.backward()
    b = pred0.clone().requires_grad_(True)
    terms = []
    for i in range(3):
        for bit, ps in powers.items():
            sel = ((codes[i] >> bit) & 1).bool()
            if sel.any():
                mp = moments(b[i, 0][sel], ps, 70.0)
                mr = moments(ref[i, 0][sel], ps, 70.0)
                terms.append(((mp - mr) ** 2).mean())
    want = torch.stack(terms).mean()
    want.backward()
    assert len(terms) == 8
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-15)


def test_moment_loss_reads_low_doses_exactly():
    """An OAR that stays under a few Gy: its generalised means are those of numpy, not the
    ``eps^(1/p)`` floor (4.4 Gy for p = 10) that an eps added to ``mean x^p`` gave; the loss between a
    2 Gy and a 3 Gy uniform OAR is (1/70)^2 for every power, and its gradient pushes the dose up."""
    from dosepred.losses.moment import moment_loss, moments

    rng = np.random.default_rng(5)
    d = torch.tensor(rng.uniform(0.5, 3.0, 200))
    for p in (1.0, 2.0, 10.0):
        want = 70 * np.mean((d.numpy() / 70) ** p) ** (1 / p)
        assert 70 * float(moments(d, (p,), 70.0)[0]) == pytest.approx(want, rel=1e-9)
    assert float(moments(torch.zeros(5), (10.0,), 70.0)[0]) < 0.1  # all zero: finite, near 0
    codes = torch.zeros((1, 6, 6, 6), dtype=torch.uint8)
    codes[0, 1:5, 1:5, 1:5] = 1
    ref = torch.full((1, 1, 6, 6, 6), 3.0, dtype=torch.float64)
    pred = torch.full((1, 1, 6, 6, 6), 2.0, dtype=torch.float64, requires_grad=True)
    loss = moment_loss(pred, ref, codes, {0: (1.0, 2.0, 10.0)}, dose_scale=70.0)
    assert float(loss.detach()) == pytest.approx((1 / 70) ** 2, rel=1e-9)
    loss.backward()
    inside = codes[0].bool()
    assert (pred.grad[0, 0][inside] < 0).all() and (pred.grad[0, 0][~inside] == 0).all()


def test_moment_loss_zero_reference_pulls_prediction_down():
    """An OAR whose reference dose is 0 everywhere (its part of a crop beyond the dose grid): its
    generalised means are 0, so a uniform c Gy prediction costs (c/70)^2 for every power and its
    gradient pushes the dose down. With the all-zero mean read as eps^(1/10) (4.4 Gy for p = 10)
    a 1 Gy prediction was pulled up, towards about 2 Gy."""
    from dosepred.losses.moment import moment_loss, moments

    assert 70 * moments(torch.zeros(5, dtype=torch.float64), (1.0, 2.0, 10.0), 70.0).numpy() == \
        pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    codes = torch.zeros((1, 6, 6, 6), dtype=torch.uint8)
    codes[0, 1:5, 1:5, 1:5] = 1
    inside = codes[0].bool()
    ref = torch.zeros((1, 1, 6, 6, 6), dtype=torch.float64)
    for c in (0.5, 1.0, 3.0):
        pred = torch.full((1, 1, 6, 6, 6), c, dtype=torch.float64, requires_grad=True)
        loss = moment_loss(pred, ref, codes, {0: (1.0, 2.0, 10.0)}, dose_scale=70.0)
        assert float(loss.detach()) == pytest.approx((c / 70) ** 2, rel=1e-9)
        loss.backward()
        assert (pred.grad[0, 0][inside] > 0).all()
    same = moment_loss(ref.clone().requires_grad_(), ref, codes, {0: (1.0, 2.0, 10.0)}, dose_scale=70.0)
    assert float(same.detach()) == 0.0


@pytest.mark.parametrize("max_elements", [1 << 22, 1000])  # one chunk of bins, or many
def test_dvh_curve_loss_equals_a_per_roi_loop(max_elements):
    """The batched DVH-curve loss equals the plain loop over patients and ROIs with boolean masks
    and the soft DVH written out (mean of sigmoids), value and gradient, whatever the chunking of
    the bins."""
    g = torch.Generator().manual_seed(4)
    shape = (2, 1, 10, 10, 10)
    codes = torch.zeros((2, 10, 10, 10), dtype=torch.uint8)
    codes[:, 2:7, 2:7, 2:7] |= 1
    codes[:, 4:10, 3:8, 3:6] |= 2  # overlaps ROI 0
    codes[:1, 0:3, 7:10, 7:10] |= 4  # absent from patient 2
    ref = 70 * torch.rand(shape, generator=g, dtype=torch.float64)
    pred0 = ref + 6 * torch.randn(shape, generator=g, dtype=torch.float64)
    a = pred0.clone().requires_grad_(True)
    got = dvh_curve_loss(a, ref, codes, [0, 1, 2], bin_width=2.0, max_elements=max_elements)
    got.backward()
    b = pred0.clone().requires_grad_(True)
    t = torch.arange(int(float(ref.max()) // 2.0) + 1, dtype=torch.float64) * 2.0
    terms = []
    for i in range(2):
        for bit in (0, 1, 2):
            sel = ((codes[i] >> bit) & 1).bool()
            if sel.any():
                vp = torch.sigmoid((b[i, 0][sel][None, :] - t[:, None]) / 2.0).mean(dim=1)
                vr = torch.sigmoid((ref[i, 0][sel][None, :] - t[:, None]) / 2.0).mean(dim=1)
                terms.append(((vp - vr) ** 2).mean())
    want = torch.stack(terms).mean()
    want.backward()
    assert len(terms) == 5
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-15)


def test_soft_dvh_of_one_roi():
    """soft_dvh (one ROI) is the mean of sigmoids at each threshold, in one chunk or many."""
    from dosepred.losses import soft_dvh

    d = torch.tensor([10.0, 20.0, 30.0, 55.0, 61.0], dtype=torch.float64)
    t = torch.arange(0.0, 70.0, 5.0, dtype=torch.float64)
    want = torch.sigmoid((d[None, :] - t[:, None]) * 0.5).mean(dim=1)
    for max_elements in (1 << 20, 7):
        torch.testing.assert_close(soft_dvh(d, t, bin_width=2.0, max_elements=max_elements), want)


def test_moment_powers_below_one_keep_a_finite_gradient_at_zero_dose():
    """x^p with p < 1 has an infinite derivative at x = 0: an ROI voxel the prediction gives exactly
    0 Gy (outside the possible-dose mask, where the model predicts 0) made the whole gradient NaN
    while the loss stayed finite, and a training step wrote NaN into every weight. The value is
    numpy's; the gradient is finite, zero at the zero voxels and pushes the others toward the reference."""
    from dosepred.losses.moment import moment_loss, moments

    d = torch.tensor([0.0, 0.0, 10.0, 20.0, 40.0], dtype=torch.float64)
    want = 70 * np.mean((d.numpy() / 70) ** 0.5) ** 2
    assert 70 * float(moments(d, (0.5,), 70.0)[0]) == pytest.approx(want, rel=1e-9)
    x = d.clone().requires_grad_()
    moments(x, (0.5,), 70.0)[0].backward()
    assert torch.isfinite(x.grad).all() and (x.grad[:2] == 0).all()
    codes = torch.zeros((1, 6, 6, 6), dtype=torch.uint8)
    codes[0, 1:5, 1:5, 1:5] = 1
    ref = torch.full((1, 1, 6, 6, 6), 30.0, dtype=torch.float64)
    base = torch.full((1, 1, 6, 6, 6), 20.0, dtype=torch.float64)
    base[0, 0, 1, 1, 1:3] = 0.0  # two ROI voxels predicted 0 Gy
    pred = base.clone().requires_grad_()
    loss = moment_loss(pred, ref, codes, {0: (0.5, 2.0)}, dose_scale=70.0)
    vals = base[0, 0][codes[0].bool()].numpy() / 70
    want = np.mean([(np.mean(vals ** p) ** (1 / p) - 30 / 70) ** 2 for p in (0.5, 2.0)])
    assert float(loss.detach()) == pytest.approx(want, rel=1e-9)
    loss.backward()
    g = pred.grad[0, 0]
    assert torch.isfinite(g).all() and (g[1, 1, 1:3] == 0).all() and (g[2:5, 2:5, 2:5] < 0).all()
