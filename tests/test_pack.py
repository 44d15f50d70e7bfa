"""dosepred.io.pack: a cache packed for transport and unpacked is the cache of the quantized
patients: ROI codes and mask bit for bit, the CT (inside the network's window) within half a
``ct_step``, the dose within half a ``dose_step`` cGy; outputs are all-or-nothing."""

import json
from pathlib import Path

import numpy as np
import pytest

from dosepred import synth
from dosepred.constants import HU_MAX, HU_MIN
from dosepred.fsutil import OutputError
from dosepred.io import cache
from dosepred.io.pack import PackResult, pack_cache, quantize_patient, unpack_cache
from dosepred.io.source import load_patients

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    pats = synth.make_cohort(3, seed=5, size=20, extra_rois=1)
    ct = pats[0].ct.copy()
    ct[2, 3, 4], ct[3, 3, 4] = -1024, 3000  # outside the window the network reads: clipped
    pats[0].ct = ct
    root = tmp_path_factory.mktemp("pack") / "src"
    cache.write_cache(pats, root)
    return root


@pytest.mark.parametrize("ct_step,dose_step,jobs", [(1, 1, 1), (8, 5, 2), (7, 3, 1)])
def test_pack_unpack_round_trip(src, tmp_path, ct_step, dose_step, jobs):
    packed, back = tmp_path / "packed", tmp_path / "back"
    res = pack_cache(src, packed, ct_step=ct_step, dose_step=dose_step, jobs=jobs)
    orig = {p.id: p for p in load_patients(src)}
    assert isinstance(res, PackResult) and res.patients == 3 and res.out == packed
    assert sorted(p.name for p in packed.iterdir()) == sorted(["dataset.json"] + [f"{i}.xz" for i in orig])
    assert res.nbytes == sum(f.stat().st_size for f in packed.glob("*.xz"))
    assert (packed / "dataset.json").read_bytes() == (src / "dataset.json").read_bytes()
    assert not any(src.glob("*.xz"))
    out = unpack_cache(packed, back, jobs=jobs)
    assert out.root == back
    assert sorted(p.name for p in back.iterdir()) == sorted(p.name for p in src.iterdir())
    got = {p.id: p for p in out}
    assert sorted(got) == sorted(orig)
    lo, hi = int(HU_MIN), int(HU_MAX)
    for pid, p in orig.items():
        q = got[pid]
        np.testing.assert_array_equal(q.roi_codes, p.roi_codes)
        assert q.roi_codes.dtype == p.roi_codes.dtype
        np.testing.assert_array_equal(q.possible_dose_mask, p.possible_dose_mask)
        assert q.roi_set == p.roi_set and q.spacing == p.spacing and q.missing_rois == p.missing_rois
        assert q.geometry == p.geometry and q.meta == p.meta
        # CT: what the network reads (HU clipped to [lo, hi]) within half a step
        assert q.ct.dtype == np.int16
        d_ct = np.abs(np.clip(q.ct.astype(int), lo, hi) - np.clip(p.ct.astype(int), lo, hi))
        assert d_ct.max() <= ct_step / 2
        if ct_step == 1:
            np.testing.assert_array_equal(np.clip(q.ct, lo, hi), np.clip(p.ct, lo, hi))
        # dose within half a step (cGy -> Gy), zero stays zero
        assert q.dose.dtype == np.float32
        assert np.abs(q.dose.astype(np.float64) - p.dose).max() <= dose_step / 200 + 1e-6
        assert (q.dose[p.dose == 0] == 0).all()
        # exactly the quantized patient
        w = quantize_patient(p, ct_step, dose_step)
        np.testing.assert_array_equal(q.ct, w.ct)
        np.testing.assert_array_equal(q.dose, w.dose)


def test_outputs_are_refused_or_replaced_whole(src, tmp_path):
    packed = tmp_path / "packed"
    packed.mkdir()
    (packed / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="overwrite"):
        pack_cache(src, packed, jobs=1)
    assert [p.name for p in packed.iterdir()] == ["keep.txt"]
    pack_cache(src, packed, jobs=1, overwrite=True)
    assert sorted(p.suffix for p in packed.iterdir()) == [".json", ".xz", ".xz", ".xz"]
    with pytest.raises(OutputError, match="input"):
        unpack_cache(packed, packed / "inside", jobs=1)
    with pytest.raises(OutputError, match="input"):
        pack_cache(src, src / "packed", jobs=1)
    # a damaged patient file: an error naming it, and no output left behind
    victim = next(packed.glob("*.xz"))
    victim.write_bytes(b"not xz")
    with pytest.raises(cache.CacheError, match=victim.name):
        unpack_cache(packed, tmp_path / "back", jobs=1)
    assert not (tmp_path / "back").exists() and not list(tmp_path.glob(".back*"))
    victim.unlink()
    with pytest.raises(cache.CacheError, match="lacks"):
        unpack_cache(packed, tmp_path / "back", jobs=1)


def test_bad_arguments(src, tmp_path):
    for bad in (dict(ct_step=0), dict(dose_step=1.5), dict(ct_step=True)):
        with pytest.raises(ValueError, match="step"):
            pack_cache(src, tmp_path / "p", jobs=1, **bad)
    v1 = tmp_path / "v1"
    cache.write_cache(list(load_patients(src))[:1], v1, version=1)
    with pytest.raises(cache.CacheError, match="version"):
        pack_cache(v1, tmp_path / "p", jobs=1)
    assert json.loads((v1 / "dataset.json").read_text())["version"] == 1
    assert not (tmp_path / "p").exists()


def test_cli_pack_unpack(src, tmp_path):
    from typer.testing import CliRunner

    from dosepred.cli import app

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    r = cli("data", "pack", src, "--out", tmp_path / "packed", "--ct-step", 8, "--jobs", 1, "--no-progress")
    assert r.exit_code == 0 and "packed" in r.output, r.output
    r = cli("data", "unpack", tmp_path / "packed", "--out", tmp_path / "back", "--jobs", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert cache.Cache.open(tmp_path / "back").ids == cache.Cache.open(src).ids
    r = cli("data", "pack", src, "--out", tmp_path / "packed", "--no-progress")  # never over an output
    assert r.exit_code == 2 and "--overwrite" in r.output and "Traceback" not in r.output


def test_a_stop_sent_to_every_process_of_the_job_is_one_line(src, tmp_path):
    """`data pack --jobs 2` stopped by SIGTERM sent to its whole process group (a batch system's time
    limit, a container stopping, `kill -TERM -PGID`): the worker processes inherited the command's
    SIGTERM handler, and one waiting for work printed a Python traceback ('Process ForkProcess-2: ...
    dosepred.errors.Terminated: SIGTERM') under the command's error line. Now the workers leave the
    signals to the command, which ends them: one line, exit code 143, no output left."""
    import os
    import signal
    import subprocess
    import sys

    first = cache.Cache.open(src).ids[0]
    script = tmp_path / "stop.py"
    script.write_text(f"""
import os, signal, sys, time
from dosepred.io import pack
real = pack._pack_one
def slow(item):
    if item[1] == {first!r}:
        time.sleep(1.5)  # meanwhile the other worker packs the other patients, then waits for work
        os.killpg(0, signal.SIGTERM)
        time.sleep(1)
    return real(item)
pack._pack_one = slow
sys.argv = ["dosepred", "data", "pack", {str(src)!r}, "--out", {str(tmp_path / "p")!r}, "--jobs", "2",
            "--no-progress"]
from dosepred.cli import main
main()
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120,
                       start_new_session=True)
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == ["error: interrupted (SIGTERM); outputs not finished are left "
                                             "as they were"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stop.py"]


@pytest.mark.parametrize("command", ["pack", "unpack"])
def test_an_out_that_is_the_folder_run_in_names_the_option_to_give(src, tmp_path, monkeypatch, command):
    """`data pack --out .` in the empty folder meant for it was refused with the remedy "give the packed
    copy here" (and a link as --out: "give that path as the packed copy"), naming no option; every other
    command names --out, which the remedy is to be given as."""
    from typer.testing import CliRunner

    from dosepred.cli import app

    packed = tmp_path / "packed"
    pack_cache(src, packed, ct_step=8, jobs=1)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    r = CliRunner().invoke(app, ["data", command, str(src if command == "pack" else packed), "--out", ".",
                                 "--jobs", "1", "--no-progress"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "and give --out here" in r.output, r.output
    assert list(here.iterdir()) == []
