import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dosepred import Patient, Roi, RoiSet
from dosepred.dvh import DVH, roi_metric, roi_metrics, roi_voxel_indices
from dosepred.errors import InputError
from dosepred.metrics import compute, percentile_index


@pytest.mark.parametrize("doses, vox, metric, want", [
    ([1, 2, 3, 4, 5], 1000.0, "Dmean", 3.0),
    ([1, 2, 3, 4, 5], 1000.0, "Dmax", 5.0),
    ([1, 2, 3, 4, 5], 1000.0, "Dmin", 1.0),
    ([1, 2, 3, 4, 5], 1000.0, "D50%", 3.0),          # percentile 50
    ([1, 2, 3, 4, 5], 1000.0, "D75%", 2.0),          # percentile 25 -> index 1
    ([1, 2, 3, 4, 5], 1000.0, "D90%", 1.4),          # percentile 10 -> index 0.4
    ([0, 10], 1000.0, "D99%", 0.1),                  # percentile 1 of two voxels
    # D0.1cc with 100 mm^3 voxels: n = 1 hottest of N=5 -> percentile 80 -> index 3.2
    ([1, 2, 3, 4, 5], 100.0, "D0.1cc", 4.2),
    # 25 mm^3 voxels: n = 4 -> percentile 100 - 4/5*100 = 20 -> index 0.8
    ([1, 2, 3, 4, 5], 25.0, "D0.1cc", 1.8),
    # huge voxels: n = max(1, round(0.1)) = 1
    ([1, 2, 3, 4, 5], 2000.0, "D0.1cc", 4.2),
    ([1, 2, 3, 4, 5], 1000.0, "V3Gy", 60.0),
    ([1, 2, 3, 4, 5], 1000.0, "V3.5Gy", 40.0),
])
def test_hand_computed(doses, vox, metric, want):
    d = DVH(np.array(doses, float), vox)
    assert d.metric(metric) == pytest.approx(want)
    assert roi_metrics(np.array(doses, float), [metric], vox)[0] == pytest.approx(want)


def test_v_percent_of_rx():
    d = DVH(np.array([60, 70, 77, 78, 80], float), 1.0, prescription=70)
    assert d.metric("V110%") == pytest.approx(60.0)
    with pytest.raises(ValueError, match="prescription"):
        DVH(np.ones(3), 1.0).metric("V95%")


def test_uniform_dose_is_a_step():
    d = DVH(np.full(1000, 50.0), 8.0, bin_width=0.5)
    cum = d.cumulative("%")
    e = d.edges
    assert np.all(cum[e <= 50.0] == 100.0) and np.all(cum[e > 50.0] == 0.0)
    assert d.volume_at_dose(50.0) == 100.0 and d.volume_at_dose(50.01) == 0.0
    for m in ("D99%", "D1%", "D0.1cc", "Dmean"):
        assert d.metric(m) == 50.0
    assert d.cumulative("cc")[0] == pytest.approx(8.0)


def test_differential_cumulative_roundtrip_and_units():
    rng = np.random.default_rng(0)
    doses = rng.uniform(0, 70, 5000)
    d = DVH(doses, 4 * 4 * 2.5, bin_width=0.2)
    diff = d.differential("cc")
    cum = d.cumulative("cc")
    assert diff.sum() == pytest.approx(d.volume_cc)
    assert np.allclose(-np.diff(cum), diff)
    assert np.allclose(d.cumulative("%"), cum / d.volume_cc * 100)
    # volume_at_dose at bin edges equals the binned cumulative curve
    for i in (0, 10, 100, 300):
        assert d.volume_at_dose(d.edges[i], "cc") == pytest.approx(cum[i])
    assert d.dose_at_volume(95) == pytest.approx(np.percentile(doses, 5))
    assert d.dose_at_volume(0.1, "cc") == pytest.approx(compute("D0.1cc", doses, 40.0))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 80, allow_nan=False), min_size=1, max_size=300),
       st.floats(1.0, 200.0))
def test_invariants(values, vox):
    doses = np.array(values)
    d = DVH(doses, vox)
    d99, d95, d1, dmax, dmin, dmean = (d.metric(m) for m in ("D99%", "D95%", "D1%", "Dmax", "Dmin", "Dmean"))
    eps = 1e-9
    assert dmin - eps <= d99 <= d95 + eps <= d1 + 2 * eps <= dmax + 3 * eps
    assert dmin - eps <= dmean <= dmax + eps
    assert d.metric("D0.1cc") <= dmax + eps
    ms = ["D99%", "D95%", "D1%", "D0.1cc", "Dmean", "Dmax", "V20Gy"]
    assert roi_metrics(doses, ms, vox) == [compute(m, doses, vox) for m in ms]


def test_np_percentile_directly():
    rng = np.random.default_rng(1)
    doses = rng.gamma(5, 10, 777)
    for pct_metric, q in (("D99%", 1), ("D95%", 5), ("D1%", 99), ("D50%", 50)):
        assert DVH(doses, 10.0).metric(pct_metric) == np.percentile(doses, q)
    n = max(1, round(100 / 10.0))
    assert DVH(doses, 10.0).metric("D0.1cc") == np.percentile(doses, 100 - n / 777 * 100)


def test_percentile_index_is_numpys():
    """lower, upper and fraction give np.percentile's value exactly (numpy's two-sided lerp), for
    scalar and array q; the array form equals the scalar form element by element."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 3, 7, 100, 777, 12345):
        x = np.sort(rng.gamma(5, 10, n))
        qs = np.concatenate([[0.0, 1.0, 5.0, 50.0, 95.0, 99.0, 100.0],
                             100 - np.arange(1, min(n, 20) + 1) / n * 100, rng.uniform(0, 100, 20)])
        lo, hi, frac = percentile_index(qs, n)
        assert lo.dtype == hi.dtype == np.int64 and frac.dtype == np.float64
        for k, q in enumerate(qs):
            i, j, f = percentile_index(float(q), n)
            assert (type(i), type(j), type(f)) == (int, int, float)
            assert (i, j, f) == (lo[k], hi[k], frac[k])
            assert 0 <= i <= j <= min(i + 1, n - 1) and 0.0 <= f < 1.0
            a, b = x[i], x[j]
            v = b - (b - a) * (1 - f) if f >= 0.5 else a + (b - a) * f
            assert v == np.percentile(x, q), (n, q)
    lo, hi, frac = percentile_index(50.0, np.array([1, 2, 5]))  # broadcast over n
    assert lo.tolist() == [0, 0, 2] and hi.tolist() == [0, 1, 3] and frac.tolist() == [0.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="percentile of"):
        percentile_index(50.0, 0)


def test_empty_and_bad():
    d = DVH(np.array([]), 1.0)
    assert np.isnan(d.mean) and np.isnan(d.metric("D95%")) and np.isnan(d.volume_at_dose(1))
    with pytest.raises(ValueError, match="voxel volume"):
        DVH(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="0..100"):
        DVH(np.ones(3), 1.0).dose_at_volume(101)


def test_roi_metric_patient_and_arrays():
    rs = RoiSet((Roi("A", "oar"), Roi("T", "target", 60.0), Roi("B", "oar")))
    rng = np.random.default_rng(2)
    shape = (6, 7, 8)
    ma = rng.random(shape) < 0.3
    mt = rng.random(shape) < 0.2
    dose = rng.uniform(0, 70, shape).astype(np.float32)
    p = Patient.from_masks("p1", np.zeros(shape), {"A": ma, "T": mt}, rs, (2.0, 2.0, 3.0), dose=dose)
    assert roi_metric(p, "A", "D95%") == pytest.approx(np.percentile(dose[ma].astype(float), 5))
    assert roi_metric(p, "T", "V95%") == pytest.approx((dose[mt] >= 57).mean() * 100)
    assert roi_metric(dose, ma, "Dmean", spacing=(2, 2, 3)) == pytest.approx(dose[ma].astype(float).mean())
    with pytest.raises(ValueError, match="spacing"):
        roi_metric(dose, ma, "Dmean")
    idx = roi_voxel_indices(p)
    assert set(idx) == {"A", "T"}
    assert np.array_equal(idx["A"], np.flatnonzero(ma)) and np.array_equal(idx["T"], np.flatnonzero(mt))


def test_v_metric_counts_a_voxel_at_the_threshold_as_read_from_a_file():
    """Doses are read as float32: an OpenKBP dose.csv's 59.85 Gy is 59.849998 Gy, under 95 % of 63 Gy
    (59.849999999999994 in float64). The voxel receives 95 % of the prescription and counts in V95%,
    as the criteria checks count a value at their limit."""
    from dosepred.dvh import roi_metrics_pair

    text = ["58.0", "59.85", "60.0", "61.6"]  # as written in the file
    d = np.array([float(np.float32(s)) for s in text])  # as read (float32), widened
    exact = {"V95%": 75.0, "V110%": 25.0}  # 59.85 = 95 % and 61.6 = 110 % of 63 / 56 Gy count
    for metric, rx in (("V95%", 63.0), ("V110%", 56.0)):
        assert compute(metric, d, 1.0, rx) == exact[metric]
        assert DVH(d, 1.0, prescription=rx).metric(metric) == exact[metric]
        assert roi_metrics(d, [metric], 1.0, rx)[0] == exact[metric]
        assert roi_metrics_pair(d, d[::-1], [metric], 1.0, rx) == ([exact[metric]], [exact[metric]])
    assert compute("V45.3Gy", np.array([np.float32(45.3), 40.0]), 1.0) == 50.0
    assert DVH(d, 1.0).volume_at_dose(59.85) == 75.0
    assert DVH(d, 1.0).volume_at_dose(59.86) == 50.0  # the tolerance is far below 0.01 Gy


def test_doses_at_bin_edges_count_from_their_edge_in_the_curves_and_rtdose_dvh_items():
    """Doses on the 0.1 Gy grid (a plan prescribed in whole cGy, float32 as read from files): a voxel
    at 0.3 Gy fell in the bin below 0.3 (0.3 / 0.1 = 2.9999...), so the curves and an exported RTDOSE's
    DVH items said fewer voxels receive at least 0.3 Gy than do (and than volume_at_dose and every
    V-metric count). Checked against integer counts of the cGy values."""
    from dosepred.io.dicom.write_dose import dvh_sequence
    from dosepred.synth import make_cohort

    rng = np.random.default_rng(4)
    cgy = rng.integers(0, 7000, 4000) // 10 * 10  # 0.1 Gy steps
    doses = (cgy / 100.0).astype(np.float32)
    d = DVH(doses, 8.0, bin_width=0.1)
    edge_cgy = np.rint(d.edges * 100).astype(int)
    want = np.array([(cgy >= e).sum() for e in edge_cgy])
    np.testing.assert_array_equal(np.rint(d.cumulative("cc") / 0.008), want)
    np.testing.assert_array_equal(np.rint(d.differential("cc") / 0.008), want[:-1] - want[1:])
    assert want[-1] == 0 and want[-2] > 0  # the last edge is the first above the maximum
    p = make_cohort(1, seed=2, size=20)[0]
    name = next(n for n in p.present_rois if p.mask(n).sum() > 20)
    mask = p.mask(name)
    vol = np.zeros(p.shape, np.float32)
    k = rng.integers(0, 700, int(mask.sum()))
    vol[mask] = (k / 10.0).astype(np.float32)
    (item,) = dvh_sequence(p, vol, {name: [1]})
    data = np.array([float(v) for v in item.DVHData]).reshape(-1, 2)
    counts = np.rint(data[:, 1] / p.voxel_volume_cc).astype(int)
    assert item.DVHNumberOfBins == len(counts) and np.all(data[:, 0] == 0.1)
    np.testing.assert_array_equal(counts, [(k >= j).sum() for j in range(len(counts))])
    assert len(counts) == k.max() + 1  # the last bin holds the maximum


@pytest.mark.parametrize("spacing", [2.0, (2.0, 2.0), (2.0, 0.0, 2.0), (2.0, np.nan, 2.0), "222"])
def test_roi_metric_refuses_a_spacing_that_is_not_three_positive_values(spacing):
    """A scalar spacing (isotropic 2 mm voxels) was a voxel of 2 mm3, not 8: D0.1cc took the hottest 50
    voxels, not 12, without a word; two values gave 4 mm3; a zero one a ZeroDivisionError."""
    dose = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    mask = np.ones((4, 4, 4), bool)
    want = np.percentile(np.arange(64.0), 100 - 12 / 64 * 100)  # n = round(100 mm3 / 8 mm3) = 12
    assert roi_metric(dose, mask, "D0.1cc", spacing=(2, 2, 2)) == pytest.approx(want)
    with pytest.raises(InputError, match=r"spacing must be three positive mm values .* got"):
        roi_metric(dose, mask, "D0.1cc", spacing=spacing)



def test_a_metric_that_is_no_string_is_a_metric_error():
    """roi_metric / compute / roi_metrics passed anything but a string through as a parsed metric: a
    number (95 for D95%) was AttributeError: 'int' object has no attribute 'kind'; roi_metrics given
    one string parsed its characters ('unknown metric 'D'')."""
    from dosepred.metrics import MetricError

    dose = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    mask = np.ones((3, 3, 3), bool)
    for call in (lambda: roi_metric(dose, mask, 95, spacing=(1, 1, 1)),
                 lambda: compute(95, dose.ravel(), 1.0),
                 lambda: roi_metrics(dose.ravel(), [95], 1.0)):
        with pytest.raises(MetricError, match="metric must be a string, got 95"):
            call()
    with pytest.raises(MetricError, match=r"a list of metrics, got one: D95%; give \['D95%'\]"):
        roi_metrics(dose.ravel(), "D95%", 1.0)
    assert roi_metrics(dose.ravel(), ["D95%", "Dmean"], 1.0) == pytest.approx(
        [np.percentile(np.arange(27.0), 5), 13.0])


def test_roi_metric_refuses_a_mask_that_is_not_binary():
    """roi_metric(dose, mask) read a float mask's every non-zero voxel as in the ROI: the Dmean of a mask
    resampled with linear interpolation (0.3 at its rim) took the rim voxels in without a word."""
    dose = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    m = np.zeros((4, 4, 4))
    m[1:3, 1:3, 1:3] = 1.0
    assert roi_metric(dose, m * 255, "Dmean", spacing=(1, 1, 1)) == pytest.approx(dose[m > 0].mean())
    m[0, 0, 0] = 0.3
    with pytest.raises(InputError, match=r"mask is no binary mask: .* 2 different values \(0.3, 1\)"):
        roi_metric(dose, m, "Dmean", spacing=(1, 1, 1))


@pytest.mark.parametrize("kw, match", [
    (dict(prescription=7000.0), r"prescription must be a number of Gy, 0 < Rx <= 200 \(cGy / 100\)"),
    (dict(prescription=0.0), "0 < Rx <= 200"),
    (dict(prescription="70"), "prescription must be a number, got '70'"),
    (dict(voxel_volume_mm3="8"), "voxel volume must be a number, got '8'"),
])
def test_dvh_refuses_a_prescription_in_cgy_or_a_value_that_is_no_number(kw, match):
    """DVH(doses, 8.0, prescription=7000) (cGy) gave V95% = 0 % (doses over 6650 Gy) without a word, and a
    prescription of 0 V95% = 100 %; a string was TypeError: can't multiply sequence by non-int."""
    doses = np.array([60.0, 67.0, 70.0])
    with pytest.raises(InputError, match=match):
        DVH(**(dict(doses=doses, voxel_volume_mm3=8.0) | kw)).metric("V95%")
    assert DVH(doses, 8.0, prescription=70.0).metric("V95%") == pytest.approx(100 * 2 / 3)  # >= 66.5 Gy


def test_a_v_percent_metric_refuses_a_prescription_in_cgy_on_plain_arrays():
    """roi_metric(dose, mask, "V95%", spacing, prescription=7000) and compute(...) took 7000 as Gy: V95%
    counted the voxels over 6650 Gy, 0 %, without a word."""
    from dosepred.metrics import MetricError

    dose = np.full((2, 2, 2), 70.0)
    mask = np.ones((2, 2, 2), bool)
    assert roi_metric(dose, mask, "V95%", spacing=(1, 1, 1), prescription=70.0) == 100.0
    for call in (lambda: roi_metric(dose, mask, "V95%", spacing=(1, 1, 1), prescription=7000.0),
                 lambda: compute("V95%", dose.ravel(), 1.0, 7000.0),
                 lambda: roi_metrics(dose.ravel(), ["V95%"], 1.0, "70")):
        with pytest.raises(MetricError, match=r"V95%: the prescription must be a number of Gy, 0 < Rx"):
            call()


def test_doses_in_cgy_are_refused_by_roi_metric_and_dvh():
    """roi_metric(dose_in_cgy, mask, "V20Gy", spacing) counted the voxels over 20 cGy (100 % where the
    truth in Gy is 50 %), and DVH(...) the same, without a word; a Patient and every reader refuse a dose
    over 1000 Gy."""
    from dosepred.metrics import MetricError

    gy = np.array([10.0, 30.0, 10.0, 30.0, 10.0, 30.0, 10.0, 30.0]).reshape(2, 2, 2)
    mask = np.ones((2, 2, 2), bool)
    assert roi_metric(gy, mask, "V20Gy", spacing=(1, 1, 1)) == 50.0
    with pytest.raises(MetricError, match="doses reach 3000 Gy, over 1000 Gy: a dose in cGy"):
        roi_metric(gy * 100, mask, "V20Gy", spacing=(1, 1, 1))
    with pytest.raises(MetricError, match="DVH PTV: doses reach 3000 Gy, over 1000 Gy"):
        DVH(gy.ravel() * 100, 1.0, name="PTV")
    assert DVH(np.array([1000.0]), 1.0).max == 1000.0  # the highest dose a plan may have


def test_roi_metric_of_a_patient_on_a_sheared_grid_uses_its_voxel_volume():
    """roi_metric(patient, ...) took the spacing's product as the voxel volume: on a grid whose axes 0 and
    1 are 60 degrees apart a voxel holds sin(60) of it, so D<x>cc counted the wrong number of voxels."""
    from dosepred.geometry import Geometry

    a = np.radians(60.0)
    direction = np.array([[1.0, np.cos(a), 0], [0, np.sin(a), 0], [0, 0, 1.0]])
    g = Geometry(np.zeros(3), direction, (4.0, 4.0, 4.0))
    shape = (4, 4, 4)
    dose = np.arange(64, dtype=np.float32).reshape(shape)
    mask = np.ones(shape, bool)
    rs = RoiSet((Roi("A", "oar"),))
    p = Patient.from_masks("x", np.zeros(shape), {"A": mask}, rs, (4, 4, 4), dose=dose, geometry=g)
    vox = 64 * np.sin(a)  # 55.4 mm3, not 64
    n = round(1000 / vox)  # D1cc: the hottest 18 voxels (16 with 64 mm3)
    assert n == 18
    assert roi_metric(p, "A", "D1cc") == pytest.approx(np.percentile(np.arange(64.0), 100 - n / 64 * 100))


def test_roi_metrics_refuses_doses_in_cgy_as_roi_metric_does():
    """roi_metrics (several metrics at once, 'values equal compute') took an ROI's doses in cGy as Gy:
    V20Gy of 1500 / 3000 cGy voxels read 100 % (every voxel over 20 cGy), Dmean 2250 'Gy', while
    roi_metric and compute refuse a dose over 1000 Gy."""
    from dosepred.metrics import MetricError

    gy = np.full(100, 15.0)
    gy[:50] = 30.0
    assert roi_metrics(gy, ["V20Gy", "Dmean"], 8.0) == pytest.approx([50.0, 22.5])
    with pytest.raises(MetricError, match="reach 3000 Gy, over 1000 Gy"):
        roi_metrics(gy * 100, ["V20Gy", "Dmean"], 8.0)


@pytest.mark.parametrize("vox", [-8.0, 0.0, float("nan"), (4, 4, 2.5), "8"])
def test_a_cc_metric_refuses_a_voxel_volume_that_is_no_positive_number(vox):
    """compute / roi_metrics took the voxel volume as given: a negative one (det of an affine with a
    flipped axis) made D0.1cc the single hottest voxel (n = max(1, round(100 / -8)) = 1) without a word;
    0, NaN, the spacing tuple or a string were ZeroDivisionError / ValueError / TypeError tracebacks."""
    from dosepred.metrics import MetricError

    d = np.linspace(10.0, 70.0, 500)
    n = round(100 / 8.0)  # 12 (banker's rounding of 12.5) hottest voxels of 8 mm^3: 0.1 cc
    want = np.percentile(d, 100 - n / d.size * 100)
    assert compute("D0.1cc", d, 8.0) == pytest.approx(want)
    assert roi_metrics(d, ["D0.1cc"], 8.0) == pytest.approx([want])
    for f in (lambda: compute("D0.1cc", d, vox), lambda: roi_metrics(d, ["D0.1cc", "Dmean"], vox)):
        with pytest.raises(MetricError, match=r"D0.1cc: the voxel volume must be a positive number of mm\^3"):
            f()
    assert compute("Dmean", d, vox) == pytest.approx(40.0)  # no volume needed: as before


def test_roi_voxel_indices_of_one_name_is_that_roi():
    """roi_voxel_indices(p, "T") iterated the string (Patient.masks takes one name since 26af75e): an
    ROI name of several characters was "ROI 'P' is not in the ROI set"."""
    rs = RoiSet((Roi("Cord", "oar"), Roi("PTV70", "target", 70.0)))
    shape = (4, 5, 6)
    m = np.zeros(shape, bool)
    m[1:3, 2:4, 1:5] = True
    p = Patient.from_masks("p1", np.zeros(shape), {"PTV70": m}, rs, (1.0, 1.0, 1.0))
    got = roi_voxel_indices(p, "PTV70")
    assert list(got) == ["PTV70"] and np.array_equal(got["PTV70"], np.flatnonzero(m))
