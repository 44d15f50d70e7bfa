"""The io functions evaluation reads sources through, checked against numpy on known arrays:
``source_kind`` / ``open_source`` / ``load_patients`` on every kind of folder, the cache's typed
entry (:class:`CacheEntry`) and voxel lists (:class:`CacheVoxels`), and the OpenKBP sparse reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dosepred import synth
from dosepred.io import cache, dicom, nifti, openkbp
from dosepred.io.cache import EVAL_FIELDS, CacheEntry, CacheVoxels
from dosepred.io.source import KINDS, SourceError, load_patients, open_source, source_kind
from dosepred.patient import RoiSet
from handmade import GRID, write_sparse_csv

# ----------------------------------------------------------------------------------------- OpenKBP

def test_read_sparse_patient_lists_the_files_voxels(openkbp_truth):
    rs = RoiSet.openkbp()
    for pid, t in openkbp_truth["truth"].items():
        s = openkbp.read_sparse_patient(openkbp_truth["root"] / pid)
        assert s.id == pid and s.shape == GRID and s.spacing == (3.906, 3.906, 2.5)
        np.testing.assert_array_equal(s.mask_index, t["mask"])
        np.testing.assert_array_equal(s.dose_index, t["mask"])
        assert s.dose_values.dtype == np.float32
        np.testing.assert_array_equal(s.dose_values, t["dose"].astype(np.float32))
        assert [(rs.names[k], sorted(idx.tolist())) for k, idx in s.rois] == [
            (n, sorted(t[n].tolist())) for n in rs.names if n in ("PTV70", "Brainstem")]
        assert s.missing_rois == tuple(n for n in rs.names if n not in ("PTV70", "Brainstem"))
        assert s.meta["format"] == "openkbp"


def test_read_sparse_patient_errors(openkbp_truth, tmp_path):
    import shutil

    f = tmp_path / "pt_3"
    shutil.copytree(openkbp_truth["root"] / "pt_3", f)
    (f / "Larynx.csv").write_text(",data\n")
    with pytest.raises(openkbp.OpenKBPFormatError, match="Larynx.csv is empty"):
        openkbp.read_sparse_patient(f)
    (f / "Larynx.csv").unlink()
    (f / "dose.csv").unlink()
    with pytest.raises(openkbp.OpenKBPFormatError, match="pt_3: .* lacks dose.csv"):
        openkbp.read_sparse_patient(f)


# ---------------------------------------------------------------------------------- every source kind

@pytest.fixture(scope="module")
def sources(tmp_path_factory, openkbp_truth) -> dict[str, Path]:
    from test_dicom import make_patient

    root = tmp_path_factory.mktemp("sources")
    pats = synth.make_cohort(2, seed=1, size=20)
    okbp = openkbp_truth["root"]
    out = {"cache": root / "cache", "openkbp": okbp, "openkbp-patient": okbp / "pt_10",
           "nifti": root / "nifti", "dicom": root / "dicom"}
    cache.write_cache(pats, out["cache"])
    for p in pats:
        nifti.write_patient(p, out["nifti"])
    out["nifti-patient"] = out["nifti"] / pats[0].id
    for pid in ("pt_a", "pt_b"):
        dicom.write_dicom(make_patient(pid), out["dicom"])
    (root / "empty").mkdir()
    out["empty"] = root / "empty"
    csv = root / "csv-predictions"
    csv.mkdir()
    write_sparse_csv(csv / "pt_3.csv", np.arange(3), np.ones(3))
    out["csv-predictions"] = csv
    out["missing"] = root / "nothing-here"
    return out


@pytest.mark.parametrize("name, kind, ids", [
    ("cache", "cache", ["synth_000", "synth_001"]),
    ("openkbp", "openkbp", ["pt_3", "pt_10"]),
    ("openkbp-patient", "openkbp", ["pt_10"]),
    ("nifti", "nifti", ["synth_000", "synth_001"]),
    ("nifti-patient", "nifti", ["synth_000"]),
    ("dicom", "dicom", ["pt_a", "pt_b"]),
])
def test_source_kind_and_open_source(sources, name, kind, ids):
    assert kind in KINDS
    assert source_kind(sources[name]) == kind
    s = open_source(sources[name])
    assert s.kind == kind and sorted(s.ids) == sorted(ids)
    got = list(load_patients(sources[name], ids=ids[-1:]))
    assert [p.id for p in got] == ids[-1:]


@pytest.mark.parametrize("name, ids", [("openkbp", ["pt_3"]), ("nifti", ["synth_000"]), ("dicom", ["pt_a"])])
def test_patients_of_ids_the_source_lacks_is_an_error_in_every_format(sources, name, ids):
    """``load_patients(src, ids=[...])`` (``dosepred.predict.predict_to(ids=...)``) with an id the source
    does not hold gave the others of an OpenKBP, NIfTI or DICOM folder and left it out without a word
    (a cache said so: test_cache). Now one error naming the id and the source, before any patient."""
    with pytest.raises(SourceError, match=rf"pt_9 .*not in {name} source {sources[name]}"):
        list(load_patients(sources[name], ids=[*ids, "pt_9"]))


@pytest.mark.parametrize("name, pid", [("cache", "synth_001"), ("openkbp", "pt_10"), ("nifti", "synth_001")])
def test_one_id_given_as_a_string_reads_that_patient(sources, name, pid):
    """``load_patients(src, ids="pt_10")`` took the string's characters as ids: "patients p, t, _, 1, 0
    are not in openkbp source" (a cache: "patient p is not in cache")."""
    assert [p.id for p in load_patients(sources[name], ids=pid)] == [pid]
    assert [p.id for p in open_source(sources[name]).patients(pid)] == [pid]


def _case_twins(tmp_path: Path, kind: str, a: str, b: str) -> Path:
    """A source of ``kind`` whose two patients have the ids ``a`` and ``b``."""
    import dataclasses
    import shutil

    root = tmp_path / kind
    cohort = synth.make_cohort(2, seed=1, size=12)
    pats = [dataclasses.replace(p, id=pid) for p, pid in zip(cohort, (a, b), strict=True)]
    if kind == "openkbp":  # two patient folders (a case-sensitive disk holds both)
        from test_bad_inputs import tiny_openkbp_patient

        for pid in (a, b):
            tiny_openkbp_patient(root / pid)
    else:  # two NIfTI folders of other names whose rois.json ids clash
        for k, p in enumerate(pats):
            nifti.write_patient(p, tmp_path / "n")
            shutil.move(tmp_path / "n" / p.id, root / f"case{k}")
    return root


@pytest.mark.parametrize("kind", ["openkbp", "nifti"])
@pytest.mark.parametrize("a, b", [("pt_1", "PT_1"), ("pt_Jos\u00e9", "pt_Jose\u0301")])
def test_ids_that_differ_only_in_case_are_refused(tmp_path, kind, a, b):
    """Two patients whose ids differ only in case (or Unicode form) were read as two and their outputs
    written to <id>.csv / <id>.npz / <id>/: one file on macOS and Windows disks, one patient's
    prediction written over the other's without a word."""
    src = _case_twins(tmp_path, kind, a, b)
    refused = (SourceError, nifti.NiftiFormatError)  # the NIfTI reader names the two folders
    with pytest.raises(refused, match=r"patient ids .*(differ only in case|case-insensitive)"):
        open_source(src)
    with pytest.raises(refused, match="case-insensitive"):
        list(load_patients(src))


def test_an_older_cache_of_ids_that_differ_only_in_case_names_a_remedy_it_takes(tmp_path):
    """A cache written before such ids were refused cannot be given other ids; `data subset` (which
    reads the cache itself) leaves one out."""
    import dataclasses
    import json

    from dosepred.workflows import subset_cache

    cohort = synth.make_cohort(2, seed=1, size=12)
    cache.write_cache([dataclasses.replace(p, id=i) for p, i in zip(cohort, ("pt_a", "pt_b"), strict=True)],
                      tmp_path / "c")
    info = json.loads((tmp_path / "c" / "dataset.json").read_text())
    (tmp_path / "c" / "pt_b.npz").rename(tmp_path / "c" / "PT_A.npz")  # as an older dosepred wrote it
    info["patients"] = [{**e, "id": "PT_A", "file": "PT_A.npz"} if e["id"] == "pt_b" else e
                        for e in info["patients"]]
    (tmp_path / "c" / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(SourceError, match=r"'pt_a' and 'PT_A' differ only in case.*`dosepred data subset "):
        open_source(tmp_path / "c")
    (tmp_path / "s.json").write_text(json.dumps({"splits": {"keep": ["pt_a"]}}))
    subset_cache(tmp_path / "c", f"{tmp_path / 's.json'}:keep", tmp_path / "kept")
    assert open_source(tmp_path / "kept").ids == ["pt_a"]


def test_import_openkbp_of_folders_that_differ_only_in_case_names_the_folder(tmp_path):
    """`data import-openkbp` read the patients one by one and met the clash in the cache writer: its
    error named neither the source folder nor what to do. Refused before any patient is read."""
    from dosepred.errors import DosepredError
    from dosepred.workflows import import_patients

    src = _case_twins(tmp_path, "openkbp", "pt_1", "PT_1")
    with pytest.raises(DosepredError, match=rf"^{src}: patient ids .* differ only in case.*rename one"):
        import_patients(src, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_the_case_clash_remedy_of_a_cache_says_how_to_write_its_split_file(tmp_path):
    """The refusal asked for `data subset` with "a split file of the ids to keep"; the way to write one,
    `data split CACHE --ids ...`, opens the same cache and meets the same refusal. The message gives the
    file's layout (written by hand), and a file so written leaves the other patient out."""
    import dataclasses
    import json
    import re

    from dosepred.split import SplitError
    from dosepred.workflows import make_split, subset_cache

    cohort = synth.make_cohort(2, seed=1, size=12)
    cache.write_cache([dataclasses.replace(p, id=i) for p, i in zip(cohort, ("pt_a", "pt_b"), strict=True)],
                      tmp_path / "c")
    info = json.loads((tmp_path / "c" / "dataset.json").read_text())
    (tmp_path / "c" / "pt_b.npz").rename(tmp_path / "c" / "PT_A.npz")
    info["patients"] = [{**e, "id": "PT_A", "file": "PT_A.npz"} if e["id"] == "pt_b" else e
                        for e in info["patients"]]
    (tmp_path / "c" / "dataset.json").write_text(json.dumps(info))
    with pytest.raises((SourceError, SplitError), match="differ only in case"):
        make_split(tmp_path / "c", tmp_path / "s.json", method="ids", ids=["keep=pt_a"])
    with pytest.raises(SourceError) as e:
        open_source(tmp_path / "c")
    layout = re.search(r"(\{\"splits\": \{\"keep\": \[.*?\]\}\})", str(e.value))
    assert layout, str(e.value)
    (tmp_path / "s.json").write_text(layout.group(1).replace("...", '"pt_a"'))
    subset_cache(tmp_path / "c", f"{tmp_path / 's.json'}:keep", tmp_path / "kept")
    assert open_source(tmp_path / "kept").ids == ["pt_a"]


def test_a_cache_of_ids_that_differ_only_in_case_is_not_written(tmp_path):
    import dataclasses

    cohort = synth.make_cohort(2, seed=1, size=12)
    pats = [dataclasses.replace(p, id=pid) for p, pid in zip(cohort, ("HN_001", "hn_001"), strict=True)]
    with pytest.raises(cache.CacheError, match=r"'HN_001' and 'hn_001' differ only in case"):
        cache.write_cache(pats, tmp_path / "c")
    assert not (tmp_path / "c" / "dataset.json").exists()


@pytest.mark.parametrize("name", ["empty", "csv-predictions", "missing"])
def test_no_source(sources, name):
    assert source_kind(sources[name]) is None
    with pytest.raises((SourceError, FileNotFoundError)):
        open_source(sources[name])
    if name == "missing":  # a path that is not there says so (issue 26), not what it is not
        with pytest.raises(FileNotFoundError, match="does not exist"):
            list(load_patients(sources[name]))
        return
    with pytest.raises(SourceError, match="neither a dosepred cache"):  # as open_source's
        list(load_patients(sources[name]))


# ----------------------------------------------------------------------------------------- the cache

@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    pats = synth.make_cohort(2, seed=4, size=24, extra_rois=1)
    p = pats[1]
    mask = p.possible_dose_mask.copy()
    mask[: p.shape[0] // 2] = False  # ROI voxels outside the mask
    pats[1] = p.__class__(p.id, p.ct, p.roi_codes, p.roi_set, p.spacing, mask, p.dose * mask, p.missing_rois,
                          dict(p.meta), p.geometry)
    root = tmp_path_factory.mktemp("cached")
    c = cache.write_cache(pats, root / "c")
    return c, pats


def _box(p) -> tuple[slice, ...]:
    sel = p.possible_dose_mask | (p.roi_codes != 0) | (p.dose != 0)
    nz = np.nonzero(sel)
    return tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)


def test_cache_entry_is_the_dataset_json_entry(cached):
    c, pats = cached
    for p in pats:
        e = c.patient_entry(p.id)
        assert isinstance(e, CacheEntry)
        assert e.id == p.id and e.path == c.root / f"{p.id}.npz" and e.path.is_file()
        assert e.shape == p.shape and e.spacing == pytest.approx(p.spacing)
        assert e.missing_rois == p.missing_rois and e.has_dose is True and e.meta == p.meta
        assert e.geometry is not None and np.allclose(e.geometry.affine, p.geometry.affine)
    with pytest.raises(KeyError):
        c.patient_entry("nobody")


def test_cache_entry_read_arrays(cached):
    c, pats = cached
    assert EVAL_FIELDS == ("dose", "roi_codes", "possible_dose_mask")
    for p in pats:
        e = c.patient_entry(p.id)
        full, box = e.read_arrays()
        assert set(full) == set(EVAL_FIELDS) and box == _box(p)
        np.testing.assert_array_equal(full["dose"], p.dose)
        np.testing.assert_array_equal(full["roi_codes"], p.roi_codes)
        np.testing.assert_array_equal(full["possible_dose_mask"], p.possible_dose_mask)
        crop, box2 = e.read_arrays(("dose", "possible_dose_mask"), crop=True)
        assert box2 == box
        np.testing.assert_array_equal(crop["dose"], p.dose[box])
        np.testing.assert_array_equal(crop["possible_dose_mask"], p.possible_dose_mask[box])


def test_cache_voxels_ranks_equal_numpy(cached):
    c, pats = cached
    for p in pats:
        v = c.patient_entry(p.id).read_voxels()
        assert isinstance(v, CacheVoxels)
        box = _box(p)
        assert v.box == box and not v.dose_outside_mask
        m = p.possible_dose_mask[box].ravel()
        assert v.n_mask == int(m.sum())
        np.testing.assert_array_equal(v.dose, p.dose[box].ravel()[m])
        codes = p.roi_codes[box].ravel()
        np.testing.assert_array_equal(v.roi_index, np.flatnonzero(codes))
        np.testing.assert_array_equal(v.roi_codes, codes[codes != 0])
        probe = np.arange(m.size)
        inside, rank = v.mask_ranks(probe)
        np.testing.assert_array_equal(inside, m)
        np.testing.assert_array_equal(rank[m], np.arange(int(m.sum())))  # C-order rank among mask voxels
        assert v.same_mask(v) and not v.same_mask(c.patient_entry(pats[1 - pats.index(p)].id).read_voxels())
        assert c.patient_entry(p.id).read_voxels(rois=False).roi_index is None


def test_cache_voxels_of_a_version_1_file_is_none(cached, tmp_path):
    _, pats = cached
    c1 = cache.write_cache(pats, tmp_path / "v1", version=1)
    assert c1.patient_entry(pats[0].id).read_voxels() is None
    arrays, box = c1.patient_entry(pats[0].id).read_arrays()
    assert box is None
    np.testing.assert_array_equal(arrays["dose"], pats[0].dose)


@pytest.mark.parametrize("fmt", ["cache", "nifti"])
def test_require_dose_holds_for_every_format(tmp_path, fmt):
    """load_patients' require_dose (its default) refuses a patient without a plan dose in any format,
    naming the patient and the source; require_dose=False reads it (prediction needs no dose). It used
    to hold for OpenKBP folders only (whose reader refuses a missing dose.csv)."""
    with_dose, without = synth.make_cohort(2, seed=4, size=24)
    without.dose = None
    src = tmp_path / fmt
    if fmt == "cache":
        cache.write_cache([with_dose, without], src)
    else:
        for p in (with_dose, without):
            nifti.write_patient(p, src)
    with pytest.raises(ValueError, match=rf"patient {without.id} of .*{fmt}.* has no dose"):
        list(load_patients(src))
    got = list(load_patients(src, require_dose=False))
    assert [p.id for p in got] == [with_dose.id, without.id] and got[1].dose is None
    assert got[0].dose is not None and np.allclose(got[0].dose, with_dose.dose, atol=1e-3)
