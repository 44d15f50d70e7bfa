"""scripts/warp_bias.py (docs/results.md round 29): unwarped windows give exactly the plan's target
D-metrics, and warped ones stay within a fraction of a Gy (nearest-neighbour dose)."""

import numpy as np

from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort
from script_loader import load_script


def test_warps_keep_target_metrics(tmp_path):
    write_cache(make_cohort(2, seed=5, size=40), tmp_path / "c")
    out = load_script("warp_bias").measure(tmp_path / "c", patients=2, windows=3, patch=(48, 48, 48),
                                           min_voxels=20)
    assert {m for m, _ in out} == {"none", "rotation", "scaling"} and out[("none", "D99")]
    for (mode, _), v in out.items():
        if mode == "none":
            assert np.all(np.asarray(v) == 0.0)
        else:
            assert abs(np.mean(v)) < 0.5, (mode, np.mean(v))
