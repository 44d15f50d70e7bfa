"""The cache: lossless round trip, validation, and all-or-nothing writes."""

import json

import numpy as np
import pytest

from dosepred import Roi, RoiSet, synth
from dosepred.io import cache, source
from dosepred.io.cache import CacheError


@pytest.fixture(scope="module")
def patients():
    return synth.make_cohort(3, seed=1, size=16, extra_rois=3)


def test_roundtrip_lossless(tmp_path, patients):
    c = cache.write_cache(patients, tmp_path / "c", source="test")
    assert c.ids == [p.id for p in patients] and len(c) == 3
    assert c.roi_set == patients[0].roi_set
    for p, q in zip(patients, c, strict=True):
        for k in ("ct", "dose", "roi_codes", "possible_dose_mask"):
            a, b = getattr(p, k), getattr(q, k)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        assert p.spacing == q.spacing and p.missing_rois == q.missing_rois and p.meta == q.meta
    assert c.nbytes() > 0
    assert sorted(f.name for f in (tmp_path / "c").iterdir()) == sorted(
        ["dataset.json"] + [f"{p.id}.npz" for p in patients])
    assert [p.id for p in source.load_patients(tmp_path / "c", ids=["synth_002"])] == ["synth_002"]


def test_no_dose_patient(tmp_path, patients):
    c = cache.write_cache([patients[0].with_dose(None)], tmp_path / "c")
    assert c.load("synth_000").dose is None and c.entry("synth_000")["has_dose"] is False


def test_write_errors_leave_nothing(tmp_path, patients):
    other = synth.make_patient(5, size=16)  # plain OpenKBP RoiSet, differs from the cohort's
    out = tmp_path / "c"
    with pytest.raises(CacheError, match="synth_5: ROI set .* differs"):
        cache.write_cache([patients[0], other], out)
    assert list(out.iterdir()) == []
    with pytest.raises(CacheError, match="synth_000 appears twice"):
        cache.write_cache([patients[0], patients[0]], out)
    assert list(out.iterdir()) == []
    with pytest.raises(CacheError, match="no patients"):
        cache.write_cache([], out)

    def interrupted():
        yield patients[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.write_cache(interrupted(), out)
    assert list(out.iterdir()) == []


def test_open_errors(tmp_path, patients):
    with pytest.raises(CacheError, match="not a dosepred cache"):
        cache.Cache.open(tmp_path)
    (tmp_path / "dataset.json").write_text("{")
    with pytest.raises(CacheError, match="not valid JSON"):
        cache.Cache.open(tmp_path)
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(CacheError, match="lacks the key 'rois'"):
        cache.Cache.open(tmp_path)
    c = cache.write_cache(patients[:1], tmp_path / "c")
    info = json.loads((c.root / "dataset.json").read_text())
    info["rois"].append(dict(info["rois"][0]))
    (c.root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(CacheError, match="dataset.json: invalid ROI list.*duplicated"):
        _ = cache.Cache.open(c.root).roi_set
    (c.root / "synth_000.npz").unlink()
    with pytest.raises(CacheError, match="synth_000: cannot read"):
        cache.Cache.open(c.root).load("synth_000", RoiSet((Roi("A"),) * 1))
    with pytest.raises(KeyError, match="pt_1 is not in cache"):
        cache.Cache.open(c.root).entry("pt_1")


def test_load_patients_rejects_unknown_source(tmp_path):
    with pytest.raises(source.SourceError, match="neither a dosepred cache"):  # as open_source's
        list(source.load_patients(tmp_path))
