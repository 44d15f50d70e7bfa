"""scripts/beam_shadow_probe.py (docs/results.md round 32): the shadow of a disc target against the
analytic count of the field lines that meet it, with the head-feet axis first in the arrays."""

import numpy as np

from dosepred.geometry import Geometry
from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort
from script_loader import load_script


def test_disc_shadow_matches_the_lines_that_meet_it():
    mod = load_script("beam_shadow_probe")
    # array axes: 0 = LPS z (head-feet), 1 = y, 2 = x; 2 mm in plane, 3 mm between slices
    geo = Geometry(origin=np.zeros(3), direction=np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float).T,
                   spacing=(3.0, 2.0, 2.0))
    shape, c, radius = (3, 81, 81), np.array([40.0, 40.0]), 6.0  # voxels
    yy, xx = np.mgrid[:81, :81]
    disc = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= radius ** 2
    rx = np.zeros(shape, np.float32)
    rx[1][disc] = 0.9
    sh = mod.beam_shadow(rx, geo)
    assert np.all(sh[0] == 0) and np.all(sh[2] == 0)  # fields are coplanar: no other slice
    assert np.allclose(sh[1][disc], 0.9)  # every line through the target meets it
    gs = np.deg2rad(np.arange(9) * 20.0)  # the 9 fields' line orientations (gantry mod 180)
    checked = 0
    for y in range(0, 81, 3):
        for x in range(0, 81, 3):
            dy, dx = (y - c[0]), (x - c[1])  # voxels; x is LPS x, y is LPS y
            across = np.abs(dx * np.cos(gs) + dy * np.sin(gs))
            if disc[y, x] or np.any(np.abs(across - radius) < 1.5):
                continue  # a line grazing the disc: the one-voxel bins may go either way
            assert np.isclose(sh[1, y, x], 0.9 * np.mean(across < radius)), (y, x)
            checked += 1
    assert checked > 300


def test_reference_and_residual_run_on_a_cache(tmp_path):
    mod = load_script("beam_shadow_probe")
    write_cache(make_cohort(4, seed=3, size=40), tmp_path / "c")
    ref = mod.reference(tmp_path / "c", every=1, patients=4)
    assert ref["distance"] <= ref["none"] and ref["distance x shadow"] <= ref["distance"]
    res = mod.residual(tmp_path / "c", tmp_path / "c")  # the plans predicted exactly
    assert all(v == 0.0 for v in res.values())
