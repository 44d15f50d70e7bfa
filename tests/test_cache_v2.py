"""Cache format 2 (cropped, lazily read) and the cropped evaluation path: exact, and the same
results as the full-grid path, including dose predicted outside every box."""

import json
import zipfile

import numpy as np
import pytest

from dosepred import synth
from dosepred.evaluation import evaluate_cohort, evaluate_patient, iter_cases, iter_pairs, load_references
from dosepred.io import cache, openkbp
from dosepred.io.cache import CacheError

FIELDS = ("ct", "dose", "roi_codes", "possible_dose_mask")


@pytest.fixture(scope="module")
def patients():
    pats = synth.make_cohort(3, seed=3, size=24, extra_rois=2)
    p = pats[1]
    dose = p.dose.copy()
    outside = ~p.possible_dose_mask & (p.roi_codes == 0)
    dose[np.argwhere(outside)[0].tolist()] = 1.5  # non-zero dose outside mask and ROIs
    pats[1] = p.with_dose(dose)
    ct = pats[2].ct.copy()
    ct[0, 0, 0] = 5  # a corner that is not the fill value
    pats[2].ct = ct
    return pats


def _equal(p, q):
    for k in FIELDS:
        a, b = getattr(p, k), getattr(q, k)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("version", [1, 2])
def test_versions_roundtrip_exactly(tmp_path, patients, version):
    c = cache.write_cache(patients, tmp_path / "c", version=version)
    assert json.loads((tmp_path / "c" / "dataset.json").read_text())["version"] == version
    for p in patients:
        q = c.load(p.id)
        _equal(p, q)
        assert (q.support_box() is None) == (version == 1)
        r = c.load(p.id, with_ct=False)
        assert r.ct is None and "ct_loaded" not in r.meta
        np.testing.assert_array_equal(c.load_dose(p.id), p.dose)


def test_v2_members_and_support_box(tmp_path, patients):
    c = cache.write_cache(patients, tmp_path / "c")
    with zipfile.ZipFile(tmp_path / "c" / f"{patients[1].id}.npz") as z:
        kinds = {i.filename: i.compress_type for i in z.infolist()}
    assert kinds["ct.npy"] == zipfile.ZIP_DEFLATED and kinds["dose.npy"] == zipfile.ZIP_STORED
    assert "dose_support.npy" in kinds  # the dose outside the mask is kept
    p = c.load(patients[1].id)
    box = p.support_box()
    outside = np.ones(p.shape, bool)
    outside[box] = False
    assert not p.dose[outside].any() and not p.possible_dose_mask[outside].any()
    assert not p.roi_codes[outside].any()
    assert p.with_dose(p.dose).support_box() is None  # new arrays drop the hint
    p.dose = p.dose.copy()
    assert p.support_box() is None


def test_read_errors(tmp_path, patients):
    c = cache.write_cache(patients[:1], tmp_path / "c")
    f = tmp_path / "c" / f"{patients[0].id}.npz"
    raw = bytearray(f.read_bytes())
    i = raw.find(b"\x93NUMPY", raw.find(b"dose.npy"))
    raw[i + 200] ^= 0xFF  # corrupt a stored byte of the dose
    f.write_bytes(bytes(raw))
    corrupt = rf"patient {patients[0].id}: cannot read .*\.npz: Bad CRC-32 for file 'dose\.npy'"
    with pytest.raises(CacheError, match=corrupt):
        c.load(patients[0].id)
    # not a zip at all (empty, or replaced): said so, not numpy's advice to load it as a pickle
    for content, said in ((b"", "it is empty"), (b"garbage", "it starts with b'garb'")):
        f.write_bytes(content)
        with pytest.raises(CacheError, match=rf"{patients[0].id}: cannot read .*: not an \.npz \(zip\) "
                                             rf"file: {said}") as e:
            c.load(patients[0].id)
        assert "pickle" not in str(e.value)
    info = json.loads((tmp_path / "c" / "dataset.json").read_text())
    info["version"] = 99
    (tmp_path / "c" / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(CacheError, match="version 99 is not supported"):
        cache.Cache.open(tmp_path / "c")
    with pytest.raises(CacheError, match="unknown cache format version 7"):
        cache.write_cache(patients, tmp_path / "d", version=7)


def _preds(patients):
    rng = np.random.default_rng(5)
    out = []
    for p in patients:
        d = np.clip(p.dose * 0.95 + rng.normal(0, 1.0, p.shape).astype(np.float32) * p.possible_dose_mask, 0,
                    None)
        d[-1, -1, -3:] = 2.0  # predicted dose far outside the reference's box still counts
        out.append(d)
    return out


def _same(a, b):
    assert [p.id for p in a.patients] == [p.id for p in b.patients]
    for x, y in zip(a.patients, b.patients, strict=True):
        assert x.dose_score == pytest.approx(y.dose_score, abs=1e-9)
        assert x.dvh_errors == pytest.approx(y.dvh_errors, abs=1e-9)
        assert [(m.roi, m.metric) for m in x.metrics] == [(m.roi, m.metric) for m in y.metrics]
        for m, n in zip(x.metrics, y.metrics, strict=True):
            assert m.ref == pytest.approx(n.ref, abs=1e-9) and m.pred == pytest.approx(n.pred, abs=1e-9)


@pytest.mark.parametrize("version", [1, 2])
def test_cropped_evaluation_equals_full_grid(tmp_path, patients, version):
    preds = _preds(patients)
    ref = cache.write_cache(patients, tmp_path / "ref", version=version)
    cache.write_cache([p.with_dose(d) for p, d in zip(patients, preds, strict=True)], tmp_path / "pred",
                      version=version)
    ids = ref.ids
    direct = evaluate_cohort(zip(patients, preds, strict=True), "openkbp-clinical")
    # the direct evaluation is the plain full-grid numpy definition of the dose score (the reference's
    # dose outside the possible-dose mask, which a prediction is 0 Gy in, is not scored)
    for r, p, d in zip(direct.patients, patients, preds, strict=True):
        ref = np.where(p.possible_dose_mask, p.dose.astype(np.float64), 0.0)
        want = np.abs(ref - d).sum() / p.possible_dose_mask.sum()
        assert r.dose_score == pytest.approx(want, abs=1e-6)
    cropped = list(iter_cases(tmp_path / "ref", tmp_path / "pred", ids, compact=False))
    assert all(c.ref.size <= p.dose.size and c.pred_outside == 0
               for c, p in zip(cropped, patients, strict=True))
    _same(direct, evaluate_cohort(iter(cropped), "openkbp-clinical"))
    _same(direct, evaluate_cohort(iter_pairs(tmp_path / "ref", tmp_path / "pred", ids), "openkbp-clinical"))
    # reference from the cache with its support box, full-grid prediction array
    refs = list(load_references(tmp_path / "ref", ids))
    _same(direct, evaluate_cohort(zip(refs, preds, strict=True), "openkbp-clinical"))


def test_cropped_evaluation_from_openkbp_csv(tmp_path, sample_dir):
    pats = list(openkbp.read_folder(sample_dir))
    rng = np.random.default_rng(9)
    for p in pats:
        d = np.clip(p.dose * 0.97 + rng.normal(0, 1.0, p.shape).astype(np.float32) * p.possible_dose_mask, 0,
                    None)
        d[0, 0, :4] = 3.0  # outside everything
        openkbp.write_dose_csv(tmp_path / "pred" / f"{p.id}.csv", d, p.possible_dose_mask)
    ids = [p.id for p in pats]
    full = evaluate_cohort(iter_pairs(sample_dir, tmp_path / "pred", ids), "openkbp")
    crop = evaluate_cohort(iter_cases(sample_dir, tmp_path / "pred", ids), "openkbp")
    _same(full, crop)
    refs = {p.id: p for p in load_references(sample_dir, ids)}
    for p in pats:
        q = refs[p.id]
        assert q.support_box() is not None
        for k in ("dose", "roi_codes", "possible_dose_mask"):
            np.testing.assert_array_equal(getattr(p, k), getattr(q, k))
        pred = openkbp.read_dose_csv(tmp_path / "pred" / f"{p.id}.csv")
        a, b = evaluate_patient(p, pred), evaluate_patient(q, pred)
        assert a.dose_score == pytest.approx(b.dose_score, abs=1e-9)


@pytest.mark.parametrize("text", [",data\r\n3,\r\n7,\r\n", ",data\n3,\n7,", ",data\n3\n7\n",
                                  "x,data\n3,\n7,\n"])
def test_index_only_parser_falls_back_to_pandas(tmp_path, text):
    f = tmp_path / "m.csv"
    f.write_text(text, newline="")
    idx, vals = openkbp.read_sparse(f, False)
    assert idx.tolist() == [3, 7] and vals is None


def test_index_only_fast_path(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text(",data\n0,\n12,\n2097151,\n")
    assert openkbp.parse_index_only(f.read_bytes()).tolist() == [0, 12, 2097151]
    assert openkbp.read_sparse(f, False)[0].tolist() == [0, 12, 2097151]
    f.write_text(",data\n0,\n2097152,\n")
    with pytest.raises(openkbp.OpenKBPFormatError, match="row 3: flat index 2097152 is out of range"):
        openkbp.read_sparse(f, False)


@pytest.mark.parametrize("crop", [False, True])
def test_roi_voxels_equal_a_scan_of_the_codes(tmp_path, patients, crop):
    from dosepred.dvh import roi_voxel_indices

    cache.write_cache(patients, tmp_path / "c")
    for p in patients:
        arrays, box = cache.read_arrays(tmp_path / "c" / f"{p.id}.npz", ("roi_codes", "roi_voxels"), p.id,
                                        crop=crop)
        idx, codes = arrays["roi_voxels"]
        flat = arrays["roi_codes"].ravel()
        want = np.flatnonzero(flat)  # independent: a plain scan of the dense codes
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(codes, flat[want])
        # a Patient given the hint returns the same ROI voxels as without it, and drops it with new codes
        q = p.__class__(p.id, np.zeros(arrays["roi_codes"].shape, np.int16), arrays["roi_codes"], p.roi_set,
                        p.spacing)
        plain = roi_voxel_indices(q)
        q.set_roi_voxels(idx, codes)
        assert q.roi_voxels() is not None
        hinted = roi_voxel_indices(q)
        assert plain.keys() == hinted.keys()
        for k in plain:
            np.testing.assert_array_equal(plain[k], hinted[k])
            np.testing.assert_array_equal(hinted[k], np.flatnonzero(q.mask(k)))
        q.roi_codes = q.roi_codes.copy()
        assert q.roi_voxels() is None


def test_roi_voxels_of_a_version_1_file_is_none(tmp_path, patients):
    cache.write_cache(patients[:1], tmp_path / "c", version=1)
    f = tmp_path / "c" / f"{patients[0].id}.npz"
    arrays, box = cache.read_arrays(f, ("roi_codes", "roi_voxels"), "x")
    assert box is None and arrays["roi_voxels"] is None


def test_a_patient_file_rewritten_by_another_zip_tool_reads_the_same(tmp_path, patients):
    """The cache is read with numpy's np.load (issue 28: the hand-written zip reader is gone): a file
    another tool rewrote (here: an archive comment appended) gives the same arrays."""
    cache.write_cache(patients[:1], tmp_path / "c")
    f = tmp_path / "c" / f"{patients[0].id}.npz"
    with zipfile.ZipFile(f, "a") as z:
        z.comment = b"hello"
    q = cache.Cache.open(tmp_path / "c").load(patients[0].id)
    _equal(patients[0], q)


def test_compact_cases_score_exactly_as_boxes(tmp_path, patients):
    """Voxel-list cases (both caches, one mask, no dose outside it) give the box path's results; the
    other pairs fall back to boxes. Patient 0 gets ROI voxels outside its possible-dose mask."""
    p0 = patients[0]
    mask = p0.possible_dose_mask.copy()
    mask[: p0.shape[0] // 2] = False  # cut the mask through the ROIs
    assert (p0.roi_codes[~mask] != 0).any()
    refs = [p0.__class__(p0.id, p0.ct, p0.roi_codes, p0.roi_set, p0.spacing, mask, p0.dose * mask,
                         p0.missing_rois, dict(p0.meta)), patients[1], patients[2]]
    rng = np.random.default_rng(11)
    preds = [np.clip(r.dose * 0.9 + rng.normal(0, 1, r.shape).astype(np.float32), 0, None)
             * r.possible_dose_mask for r in refs]
    preds[2][0, 0, 0] = 1.0  # dose outside patient 2's mask: not a compact pair
    cache.write_cache(refs, tmp_path / "ref")
    cache.write_cache([r.with_dose(d) for r, d in zip(refs, preds, strict=True)], tmp_path / "pred")
    ids = [r.id for r in refs]
    cases = list(iter_cases(tmp_path / "ref", tmp_path / "pred", ids, compact=True))

    def voxel_list(c, r):  # the mask's voxels and the ROI voxels outside it, not a box
        return c.ref.size == np.count_nonzero(r.possible_dose_mask | (r.roi_codes != 0))

    # patient 1 has reference dose outside its mask: boxes too
    assert [voxel_list(c, r) for c, r in zip(cases, refs, strict=True)] == [True, False, False]
    direct = evaluate_cohort(zip(refs, preds, strict=True), "openkbp-clinical")
    for r, d, res in zip(refs, preds, direct.patients, strict=True):  # independent dose score
        ref = np.where(r.possible_dose_mask, r.dose.astype(np.float64), 0.0)  # not scored outside the mask
        want = np.abs(ref - d).sum() / r.possible_dose_mask.sum()
        assert res.dose_score == pytest.approx(want, abs=1e-6)
    _same(direct, evaluate_cohort(iter(cases), "openkbp-clinical"))
    # ROI voxel counts survive the voxel-list layout
    assert cases[0].rois.keys() == {n for n in refs[0].present_rois if refs[0].mask(n).any()}
    for name, idx in cases[0].rois.items():
        assert idx.size == refs[0].mask(name).sum()
    # a version-1 reference is never compact
    cache.write_cache(refs, tmp_path / "ref1", version=1)
    assert not any(voxel_list(c, r) for c, r in zip(iter_cases(tmp_path / "ref1", tmp_path / "pred", ids,
                                                               compact=True), refs, strict=True))
