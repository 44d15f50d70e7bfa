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


def test_one_patient_is_written_and_a_pair_is_refused_leaving_nothing(tmp_path, patients):
    """write_cache(patient, out) was TypeError 'Patient' object is not iterable, and a list of (patient,
    dose) pairs AttributeError 'tuple' object has no attribute 'roi_set', after the first patient's
    temporary file was written."""
    c = cache.write_cache(patients[0], tmp_path / "one")
    assert c.ids == [patients[0].id]
    np.testing.assert_array_equal(c.load(patients[0].id).dose, patients[0].dose)
    out = tmp_path / "c"
    with pytest.raises(CacheError, match=r"write_cache writes Patients, got a tuple after 1 patient\(s\) "
                                         r"\(a predicted dose: patient.with_dose\(dose\)\)"):
        cache.write_cache([patients[0], (patients[1], patients[1].dose)], out)
    assert list(out.iterdir()) == []


def test_ids_differing_only_in_case_are_refused(tmp_path, patients):
    """Patients "HN1" and "hn1" (NIfTI rois.json ids, a cache's free-text ids) are files HN1.npz and
    hn1.npz: one file on a case-insensitive disk (macOS's, Windows' default), where the second was
    written over the first while dataset.json listed both, so both ids read one patient, without a
    word. DICOM imports make such ids unique (2c510d5); a cache now refuses them, writing nothing."""
    import dataclasses

    a, b = (dataclasses.replace(p, id=i) for p, i in zip(patients, ("HN1", "hn1"), strict=False))
    out = tmp_path / "c"
    with pytest.raises(CacheError, match=r"patient ids 'HN1' and 'hn1' differ only in case.*<id>\.npz"):
        cache.write_cache([a, b], out)
    assert not out.exists() or list(out.iterdir()) == []

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


def _corrupt(tmp_path, patients, mutate):
    """A copy of a 2-patient cache whose ``dataset.json`` ``mutate`` changed; its path."""
    c = cache.write_cache(patients[:2], tmp_path / "c")
    info = json.loads((c.root / "dataset.json").read_text())
    mutate(info)
    (c.root / "dataset.json").write_text(json.dumps(info))
    return c.root


def _sheared(info):
    d = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.3, -1.0]])
    info["patients"][1]["geometry"]["direction"] = (d / np.linalg.norm(d, axis=0)).tolist()


@pytest.mark.parametrize("mutate, message", [
    (lambda i: i["patients"][1].pop("shape"), "invalid patient entry 'synth_001': it lacks the key 'shape'"),
    (lambda i: i["patients"][1].update(spacing="2.5mm"),
     "invalid patient entry 'synth_001': 'spacing' must be a list of numbers (mm), got '2.5mm'"),
    (lambda i: i["patients"][1]["geometry"].update(spacing=[1.0, 1.0]),
     "patient synth_001: invalid geometry: spacing must be three positive finite mm values, got (1.0, 1.0)"),
    (lambda i: i["patients"][1]["geometry"].pop("direction"),
     "patient synth_001: invalid geometry: it lacks the key 'direction'"),
    (_sheared, "patient synth_001: geometry: its array axes 1 and 2 are 106.7 degrees apart, not 90"),
    (lambda i: i.pop("patients"), "dataset.json lacks the key 'patients'"),
    (lambda i: i.update(rois={"PTV70": 0}), "dataset.json: 'rois' must be a list of ROI objects"),
])
def test_a_bad_dataset_json_is_one_error_line_and_no_export(tmp_path, patients, mutate, message):
    """A cache whose ``dataset.json`` holds a bad patient entry, an invalid or sheared geometry, lacks
    a key or has 'rois' of the wrong type: ``data inspect`` and ``data export-nifti`` stop with one
    line naming the file, the patient and the key, and the export leaves no output folder."""
    from typer.testing import CliRunner

    from dosepred.cli import app

    root = _corrupt(tmp_path, patients, mutate)
    out = tmp_path / "nifti"
    for args in (["data", "inspect", root], ["data", "export-nifti", root, "--out", out]):
        r = CliRunner().invoke(app, [str(a) for a in args])
        assert r.exit_code == 2, (r.output, r.exception)
        lines = r.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {root / 'dataset.json'}"), r.output
        assert message in lines[0] and "Traceback" not in r.output
    assert not out.exists()


def test_a_patient_not_in_the_cache(tmp_path, patients):
    """The command line checks ids against the data before any read (a split naming unknown patients
    is a SplitError); the API's own check names the patient and the cache."""
    c = cache.write_cache(patients[:1], tmp_path / "c")
    with pytest.raises(KeyError) as ei:
        list(source.load_patients(c.root, ids=["synth_000", "pt_9"]))
    assert ei.value.args[0] == f"patient pt_9 is not in cache {c.root}"


def test_cache_patients_of_one_id_given_as_a_string_is_that_patient(tmp_path, patients):
    """Cache.patients("synth_001") iterated the string: "patient s is not in cache" (load_patients and
    Source.patients read one id so since a6a16ac)."""
    c = cache.write_cache(patients, tmp_path / "c")
    pid = patients[1].id
    got = list(c.patients(pid))
    assert [p.id for p in got] == [pid]
    np.testing.assert_array_equal(got[0].dose, patients[1].dose)
