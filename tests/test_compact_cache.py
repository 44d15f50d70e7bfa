"""scripts/compact_cache.py: pack a v2 cache for transport and unpack it into a v2 cache that
dosepred reads; only CT (clipped to the network's range, in steps) and dose (in cGy steps) change,
by at most half a step, everything else is kept bit for bit."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dosepred import synth
from dosepred.io import cache

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compact_cache.py"


def _module():
    spec = importlib.util.spec_from_file_location("compact_cache", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("ct_step,dose_step", [(1, 1), (8, 5)])
def test_pack_unpack_roundtrip(tmp_path, ct_step, dose_step):
    pats = synth.make_cohort(3, seed=5, size=20, extra_rois=1)
    ct = pats[0].ct.copy()
    ct[2, 3, 4], ct[3, 3, 4] = -1024, 3000  # outside the range the network reads: clipped
    pats[0].ct = ct
    src, packed, back = tmp_path / "src", tmp_path / "packed", tmp_path / "back"
    cache.write_cache(pats, src)
    for args in (["pack", str(src), str(packed), "--ct-step", str(ct_step), "--dose-step", str(dose_step),
                  "--jobs", "1"], ["unpack", str(packed), str(back), "--jobs", "1"]):
        subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True)
    assert sorted(p.name for p in packed.iterdir()) == sorted(["dataset.json"] + [f"{p.id}.xz" for p in pats])
    lo, hi = _module().HU_MIN, _module().HU_MAX
    got = {p.id: p for p in cache.load_patients(back)}
    assert sorted(got) == sorted(p.id for p in pats)
    for p in pats:
        q = got[p.id]
        np.testing.assert_array_equal(q.roi_codes, p.roi_codes)
        np.testing.assert_array_equal(q.possible_dose_mask, p.possible_dose_mask)
        assert q.roi_set.names == p.roi_set.names
        # CT: what the network reads (HU clipped to [lo, hi]) within half a step
        d_ct = np.abs(np.clip(q.ct.astype(int), lo, hi) - np.clip(p.ct.astype(int), lo, hi))
        assert d_ct.max() <= ct_step / 2
        if ct_step == 1:
            np.testing.assert_array_equal(np.clip(q.ct, lo, hi), np.clip(p.ct, lo, hi))
        # dose within half a step (cGy -> Gy), zero stays zero
        assert np.abs(q.dose - p.dose).max() <= dose_step / 200 + 1e-6
        assert (q.dose[p.dose == 0] == 0).all()
