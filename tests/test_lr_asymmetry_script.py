"""scripts/lr_asymmetry.py (docs/results.md round 21): which ROIs it pairs, and its residual and
reference asymmetries against numpy on hand-made evaluations and a synthetic cache."""

import numpy as np
import pytest

from script_loader import load_script


def _script():
    return load_script("lr_asymmetry")


@pytest.mark.parametrize("name, want", [
    ("RightParotid", ("right", "parotid")), ("LeftParotid", ("left", "parotid")),
    ("Parotid_L", ("left", "parotid")), ("Cochlea R", ("right", "cochlea")),
    ("Lens_Left", ("left", "lens")), ("Brainstem", None), ("PTV70", None),
])
def test_pairs_left_and_right_names(name, want):
    assert _script().pair_key(name) == want


def test_residual_asymmetry_is_the_mean_paired_difference():
    rng = np.random.default_rng(0)
    r, lt = rng.normal(-1, 1, 12), rng.normal(1, 1, 12)
    per = [{"id": f"p{i}", "rois": {
        "RightParotid": {"kind": "oar", "metrics": {"Dmean": {"ref": 30.0, "pred": 30.0 + r[i]}}},
        "LeftParotid": {"kind": "oar", "metrics": {"Dmean": {"ref": 20.0, "pred": 20.0 + lt[i]}}},
        "Brainstem": {"kind": "oar", "metrics": {"Dmean": {"ref": 5.0, "pred": 9.0}}}}} for i in range(12)]
    per.append({"id": "solo", "rois": {  # one side only: in the side's mean, not in the difference
        "RightParotid": {"kind": "oar", "metrics": {"Dmean": {"ref": 30.0, "pred": 40.0}}}}})
    out = _script().residual_asymmetry({"per_patient": per})
    assert list(out) == ["parotid"]
    v = out["parotid"]
    d = r - lt
    assert v["n"] == 12
    np.testing.assert_allclose(v["right_minus_left"], d.mean())
    np.testing.assert_allclose(v["sem"], d.std(ddof=1) / np.sqrt(12))
    np.testing.assert_allclose(v["right"], np.append(r, 10.0).mean())
    np.testing.assert_allclose(v["left"], lt.mean())


def test_reference_asymmetry_of_a_cache(tmp_path):
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_cohort

    pats = make_cohort(3, seed=4, size=24)
    write_cache(pats, tmp_path / "c")
    want = []
    for p in pats:
        rs = p.roi_set
        m = {n: (p.roi_codes >> rs.index(n)) & 1 > 0 for n in ("RightParotid", "LeftParotid")}
        if all(v.any() for v in m.values()):
            want.append(p.dose[m["RightParotid"]].mean() - p.dose[m["LeftParotid"]].mean())
    out = _script().reference_asymmetry(str(tmp_path / "c"))["parotid"]
    assert out["n"] == len(want) >= 2
    np.testing.assert_allclose(out["right_minus_left"], np.mean(want), rtol=1e-5)
