"""The pairing layer's public functions (:mod:`dosepred.evaluation.pairing`) on each kind of
reference and prediction, checked against numpy: the arrays they yield, the files they match, and
the dose score and a DVH value of the pairs computed independently on the full grids."""

from __future__ import annotations

import numpy as np
import pytest

from dosepred import synth
from dosepred.errors import InputError
from dosepred.evaluation import (
    ScoringCase,
    evaluate_cohort,
    evaluate_patient,
    find_prediction,
    iter_cases,
    iter_pairs,
    load_references,
    match_predictions,
    read_prediction,
    reference_ids,
)
from dosepred.io import cache, nifti, openkbp
from handmade import GRID, dense, write_sparse_csv


def _flat_nonzero(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(a)
    return idx, a.ravel()[idx]


def _numpy_scores(ref_dose, mask, stem, pred) -> tuple[float, float, float]:
    """Independent dose score (all voxels / mask count) and Brainstem mean dose of ref and pred."""
    ds = float(np.abs(ref_dose.astype(np.float64) - pred.astype(np.float64)).sum() / mask.sum())
    return ds, float(ref_dose[stem].astype(np.float64).mean()), float(pred[stem].astype(np.float64).mean())


# ------------------------------------------------------------------------------- OpenKBP references

@pytest.fixture(scope="module")
def okbp(openkbp_truth, tmp_path_factory) -> dict:
    """The hand-written OpenKBP patients, their dense truth, and predictions as CSV files and as a
    cache (each with a little dose outside the reference's data box)."""
    root = tmp_path_factory.mktemp("okbp-pred")
    rng = np.random.default_rng(2)
    truth = {}
    csv = root / "csv"
    csv.mkdir()
    for pid, t in openkbp_truth["truth"].items():
        ref = dense(t["mask"], t["dose"]).astype(np.float32)
        mask = dense(t["mask"]).astype(bool)
        pred = (ref * 0.95 + rng.uniform(0, 2, GRID).astype(np.float32) * mask).astype(np.float32)
        pred[60, 80, 90] = 3.0  # outside every reference box
        idx, vals = _flat_nonzero(pred)
        write_sparse_csv(csv / f"{pid}.csv", idx, vals)
        truth[pid] = {"ref": ref, "mask": mask, "stem": dense(t["Brainstem"]).astype(bool),
                      "ptv": dense(t["PTV70"]).astype(bool), "pred": pred,
                      "ct": np.where(dense(t["ct"]) != 0, 40, -1024).astype(np.int16)}  # ct.csv: HU + 1024
    refs = {p.id: p for p in openkbp.read_folder(openkbp_truth["root"])}
    cache.write_cache([refs[pid].with_dose(truth[pid]["pred"]) for pid in truth], root / "cache")
    return {"ref": openkbp_truth["root"], "csv": csv, "cache": root / "cache", "truth": truth}


def test_reference_ids_and_match_predictions(okbp, tmp_path):
    assert reference_ids(okbp["ref"]) == ["pt_3", "pt_10"]  # numeric order
    found, missing = match_predictions(okbp["ref"], okbp["csv"])
    assert found == [("pt_3", okbp["csv"] / "pt_3.csv"), ("pt_10", okbp["csv"] / "pt_10.csv")]
    assert missing == []
    assert match_predictions(okbp["ref"], okbp["cache"]) == ([("pt_3", None), ("pt_10", None)], [])
    some = tmp_path / "some"
    some.mkdir()
    (some / "pt_10.csv").write_bytes((okbp["csv"] / "pt_10.csv").read_bytes())
    assert match_predictions(okbp["ref"], some) == ([("pt_10", some / "pt_10.csv")], ["pt_3"])
    with pytest.raises(FileNotFoundError):
        match_predictions(okbp["ref"], tmp_path / "absent")


def test_find_and_read_prediction(okbp, tmp_path):
    f = find_prediction(okbp["csv"], "pt_3")
    assert f == okbp["csv"] / "pt_3.csv" and find_prediction(okbp["csv"], "pt_4") is None
    np.testing.assert_array_equal(read_prediction(f, GRID), okbp["truth"]["pt_3"]["pred"])
    (tmp_path / "pt_3.dose").write_text("")
    with pytest.raises(ValueError, match="unknown prediction format"):
        read_prediction(tmp_path / "pt_3.dose", GRID)


def test_a_prediction_file_with_an_upper_case_ending_is_the_patients(okbp, tmp_path):
    """pt_3.CSV beside pt_10.csv (the OpenKBP reader reads *.CSV files) was no prediction of pt_3:
    'ignored 1 prediction(s) with no reference patient (pt_3.CSV)', then 'no prediction for pt_3'.
    It is now pt_3's (read as written); two names differing only in case are refused, naming both."""
    import warnings

    up = tmp_path / "up"
    up.mkdir()
    (up / "pt_3.CSV").write_bytes((okbp["csv"] / "pt_3.csv").read_bytes())
    (up / "pt_10.csv").write_bytes((okbp["csv"] / "pt_10.csv").read_bytes())
    (up / "PT_10.csv").write_bytes(b"")  # another id (ids are case-sensitive): ignored, as before
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        found, missing = match_predictions(okbp["ref"], up)
    assert found == [("pt_3", up / "pt_3.CSV"), ("pt_10", up / "pt_10.csv")] and missing == []
    assert [str(w.message) for w in said] == [
        f"prediction folder {up}: ignored 1 prediction(s) with no reference patient in {okbp['ref']} "
        "(PT_10.csv)"]
    np.testing.assert_array_equal(read_prediction(found[0][1], GRID), okbp["truth"]["pt_3"]["pred"])
    (up / "pt_3.Csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"^patient pt_3: 2 prediction files in .* differ only in case "
                                         r"\(pt_3.CSV, pt_3.Csv\); keep one$"):
        find_prediction(up, "pt_3")


@pytest.mark.parametrize("with_ct", [False, True])
def test_load_references_from_openkbp(okbp, with_ct):
    refs = list(load_references(okbp["ref"], ["pt_10"], with_ct=with_ct))
    assert [p.id for p in refs] == ["pt_10"]
    p, t = refs[0], okbp["truth"]["pt_10"]
    np.testing.assert_array_equal(p.dose, t["ref"])
    np.testing.assert_array_equal(p.possible_dose_mask, t["mask"])
    np.testing.assert_array_equal(p.mask("Brainstem"), t["stem"])
    np.testing.assert_array_equal(p.mask("PTV70"), t["ptv"])
    if with_ct:
        np.testing.assert_array_equal(p.ct, t["ct"])
    else:
        assert p.ct is None and "ct_loaded" not in p.meta
        nz = np.nonzero(t["mask"] | t["stem"] | t["ptv"] | (t["ref"] != 0))
        assert p.support_box() == tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)


@pytest.mark.parametrize("pred_kind", ["csv", "cache"])
@pytest.mark.parametrize("cases", [True, False])
def test_iter_cases_and_pairs_from_openkbp_score_as_numpy(okbp, pred_kind, cases):
    ids = ["pt_3", "pt_10"]
    items = list(iter_cases(okbp["ref"], okbp[pred_kind], ids) if cases else
                 iter_pairs(okbp["ref"], okbp[pred_kind], ids))
    for item, pid in zip(items, ids, strict=True):
        want = str(okbp[pred_kind] / f"{pid}.{'csv' if pred_kind == 'csv' else 'npz'}")
        if cases:  # on the box holding both doses, the mask and the ROIs: fewer voxels than the grid
            t = okbp["truth"][pid]
            assert item.id == pid and item.source == want and item.ref.size < t["ref"].size
        else:
            p, d = item
            assert p.id == pid and p.meta["prediction_file"] == want and p.ct is None and d.shape == GRID
    res = evaluate_cohort(iter(items), "openkbp")
    for r in res.patients:
        t = okbp["truth"][r.id]
        ds, ref_mean, pred_mean = _numpy_scores(t["ref"], t["mask"], t["stem"], t["pred"])
        assert r.dose_score == pytest.approx(ds, rel=1e-6)
        v = r.value("Brainstem", "Dmean")
        assert v.ref == pytest.approx(ref_mean, rel=1e-6) and v.pred == pytest.approx(pred_mean, rel=1e-6)


def test_a_new_format_is_paired_through_its_row_alone(okbp, tmp_path, monkeypatch):
    """What pairing needs of a format is a capability of its row: a made-up reference format (the
    OpenKBP row under another name, its ``read_reference_boxes`` counted) is scored on boxes, and a
    made-up prediction format whose files are matched to the references by its own ``match_doses``
    (``dose of <id>.toy.npy``, not named by id) is read by its ``read_dose_on``, with no pairing code
    for either; the scores are numpy's on the full grids. Before, pairing read a reference on boxes
    only for the cache and OpenKBP, and matched only RTDOSE files."""
    import dataclasses

    from dosepred.io import formats

    base = formats.get("openkbp")
    boxed: list[str] = []

    def counted(path, ids):
        for r in base.read_reference_boxes(path, ids):
            boxed.append(r.id)
            yield r

    def match_doses(folder, headers):
        heads = headers()  # the references' headers: what a real format matches by
        return {pid: folder / f"dose of {pid}.toy.npy" for pid in heads
                if (folder / f"dose of {pid}.toy.npy").is_file()}

    ref_row = dataclasses.replace(base, name="toyref", read_reference_boxes=counted)
    pred_row = dataclasses.replace(
        formats.get("nifti"), name="toy", detect=lambda p: False, dose_suffixes=(".toy.npy",),
        dose_by_id=False, read_dose=None, read_dose_on=lambda path, ref: np.load(path),
        dose_geometry=None, match_doses=match_doses)
    monkeypatch.setattr(formats, "FORMATS", (ref_row, *formats.FORMATS, pred_row))
    pred_dir = tmp_path / "toy"
    pred_dir.mkdir()
    for pid, t in okbp["truth"].items():
        np.save(pred_dir / f"dose of {pid}.toy.npy", t["pred"])

    ids = ["pt_3", "pt_10"]
    found, missing = match_predictions(okbp["ref"], pred_dir)
    assert found == [(i, pred_dir / f"dose of {i}.toy.npy") for i in ids] and missing == []
    res = evaluate_cohort(iter_cases(okbp["ref"], okbp["csv"], ids), "openkbp")
    assert boxed == ids  # the reference row's box reader, not a pairing path of its own
    toy = evaluate_cohort(iter_cases(okbp["ref"], pred_dir, ids), "openkbp")
    for r, q in zip(res.patients, toy.patients, strict=True):
        t = okbp["truth"][r.id]
        ds, ref_mean, pred_mean = _numpy_scores(t["ref"], t["mask"], t["stem"], t["pred"])
        for x in (r, q):
            assert x.dose_score == pytest.approx(ds, rel=1e-6)
            v = x.value("Brainstem", "Dmean")
            assert v.ref == pytest.approx(ref_mean, rel=1e-6) and v.pred == pytest.approx(pred_mean, rel=1e-6)


# --------------------------------------------------------------------- cache and NIfTI references

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    """Three synthetic patients as a reference cache and a NIfTI folder; predictions as a cache
    (the reference's mask, no dose outside it: compact pairs) and as CSV files."""
    root = tmp_path_factory.mktemp("synthetic")
    pats = synth.make_cohort(3, seed=6, size=24)
    rng = np.random.default_rng(8)
    preds = {p.id: (np.clip(p.dose * 1.05 + rng.normal(0, 1, p.shape), 0, None) * p.possible_dose_mask
                    ).astype(np.float32) for p in pats}
    cache.write_cache(pats, root / "ref")
    for p in pats:
        nifti.write_patient(p, root / "nifti")
    cache.write_cache([p.with_dose(preds[p.id]) for p in pats], root / "pred-cache")
    csv = root / "pred-csv"
    csv.mkdir()
    for pid, d in preds.items():
        idx, vals = _flat_nonzero(d)
        write_sparse_csv(csv / f"{pid}.csv", idx, vals)
    return {"pats": {p.id: p for p in pats}, "preds": preds, "cache": root / "ref", "nifti": root / "nifti",
            "pred-cache": root / "pred-cache", "pred-csv": csv}


def test_reference_ids_of_cache_and_nifti(synthetic):
    ids = sorted(synthetic["pats"])
    assert reference_ids(synthetic["cache"]) == ids and sorted(reference_ids(synthetic["nifti"])) == ids


def test_load_references_from_a_cache(synthetic):
    for p in load_references(synthetic["cache"]):
        q = synthetic["pats"][p.id]
        np.testing.assert_array_equal(p.dose, q.dose)
        np.testing.assert_array_equal(p.roi_codes, q.roi_codes)
        assert p.ct is None and "ct_loaded" not in p.meta
        nz = np.nonzero(q.possible_dose_mask | (q.roi_codes != 0) | (q.dose != 0))
        assert p.support_box() == tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)


@pytest.mark.parametrize("ref_kind, pred_kind, compact", [
    ("cache", "pred-cache", True), ("cache", "pred-cache", False), ("cache", "pred-csv", True),
    ("nifti", "pred-cache", True), ("nifti", "pred-csv", False),
])
def test_iter_cases_score_as_numpy(synthetic, ref_kind, pred_kind, compact):
    ids = sorted(synthetic["pats"])
    cases = list(iter_cases(synthetic[ref_kind], synthetic[pred_kind], ids, compact=compact, read_ahead=0))
    assert [c.id for c in cases] == ids
    is_compact = ref_kind == "cache" and pred_kind == "pred-cache" and compact
    for c in cases:
        q = synthetic["pats"][c.id]
        voxels = np.count_nonzero(q.possible_dose_mask | (q.roi_codes != 0))  # the compact voxel list
        if is_compact:
            assert c.ref.size == voxels
        elif ref_kind == "nifti":  # read whole
            assert c.ref.size == q.dose.size
        else:  # the box holding both
            nz = np.nonzero(q.possible_dose_mask | (q.roi_codes != 0) | (q.dose != 0)
                            | (synthetic["preds"][c.id] != 0))
            assert c.ref.size == np.prod([a.max() - a.min() + 1 for a in nz])
    res = evaluate_cohort(iter(cases), "openkbp")
    for r in res.patients:
        q, d = synthetic["pats"][r.id], synthetic["preds"][r.id]
        want = np.abs(q.dose.astype(np.float64) - d).sum() / q.possible_dose_mask.sum()
        assert r.dose_score == pytest.approx(want, rel=1e-6)
        for roi in q.present_rois:
            if roi in q.roi_set and (v := r.value(roi, "Dmean")) is not None:
                m = q.mask(roi)
                assert v.ref == pytest.approx(q.dose[m].mean(dtype=np.float64), rel=1e-6)
                assert v.pred == pytest.approx(d[m].mean(dtype=np.float64), rel=1e-6)


def test_iter_pairs_names_what_it_cannot_pair(synthetic, tmp_path):
    p = next(iter(synthetic["pats"].values()))
    cache.write_cache([p.with_dose(None)], tmp_path / "no-dose")
    for it in (iter_cases, iter_pairs):
        with pytest.raises(ValueError, match=f"patient {p.id}: the prediction cache .* holds no dose"):
            list(it(synthetic["cache"], tmp_path / "no-dose", [p.id]))
        with pytest.raises(ValueError, match=f"patient {p.id}: the prediction cache .* holds no dose"):
            list(it(synthetic["nifti"], tmp_path / "no-dose", [p.id]))


def test_one_id_given_as_a_string_is_that_patient(synthetic):
    """iter_cases / iter_pairs / load_references(src, ..., "synth_001") took the string's characters as
    ids: "patient s is not in cache" (load_patients reads one id so since a6a16ac)."""
    pid = sorted(synthetic["pats"])[1]
    for ref in ("cache", "nifti"):
        for compact in (True, False):
            cases = list(iter_cases(synthetic[ref], synthetic["pred-cache"], pid, compact=compact,
                                    read_ahead=0))
            assert [c.id for c in cases] == [pid]
        assert [p.id for p, _ in iter_pairs(synthetic[ref], synthetic["pred-cache"], pid)] == [pid]
        assert [p.id for p in load_references(synthetic[ref], pid)] == [pid]


# ------------------------------------------------------------- fast-path cases == the full Patient's

def _canonical(c: ScoringCase) -> dict:
    """What scoring reads of a case, independent of the voxel layout (grid, box or voxel list): per
    ROI the sorted reference and predicted doses, the doses in the mask, the outside sums."""
    return {"rois": {n: (np.sort(c.ref[i]), np.sort(c.pred[i])) for n, i in c.rois.items()},
            "mask": (np.sort(c.ref[c.mask]), np.sort(c.pred[c.mask])), "n_mask": c.n_mask,
            "vox": c.voxel_mm3, "missing": c.missing_rois,
            "abs_pred": float(np.abs(c.pred.astype(np.float64)).sum()) + c.pred_outside,
            "abs_ref": float(c.ref.astype(np.float64).sum())}


@pytest.fixture(scope="module")
def sample_cases(sample_dir, tmp_path_factory) -> dict:
    """Two OpenKBP sample patients (pt_196 lacks the Esophagus) as CSV folder and cache, with a
    seeded prediction (dose outside the reference's mask too) as CSV files and as a cache."""
    root = tmp_path_factory.mktemp("sample-cases")
    ids = ["pt_196", "pt_66"]
    ref = root / "ref"
    ref.mkdir()
    for pid in ids:
        (ref / pid).symlink_to(sample_dir / pid)
    pats = {p.id: p for p in openkbp.read_folder(ref)}
    rng = np.random.default_rng(28)
    preds, csv = {}, root / "pred-csv"
    csv.mkdir()
    for pid, p in pats.items():
        noise = rng.normal(0, 1, p.shape) * p.possible_dose_mask
        d = np.clip(p.dose * 0.97 + noise, 0, None).astype(np.float32)
        d[2, 3, 4] = 1.5  # far outside the data box
        preds[pid] = d
        idx, vals = _flat_nonzero(d)
        write_sparse_csv(csv / f"{pid}.csv", idx, vals)
    cache.write_cache(list(pats.values()), root / "ref-cache")
    cache.write_cache([p.with_dose(preds[p.id] * p.possible_dose_mask) for p in pats.values()],
                      root / "pred-cache")
    return {"ids": ids, "pats": pats, "preds": preds, "ref": ref, "ref-cache": root / "ref-cache",
            "pred-csv": csv, "pred-cache": root / "pred-cache"}


@pytest.mark.parametrize("ref_kind, pred_kind, compact", [
    ("ref", "pred-csv", True), ("ref-cache", "pred-csv", True), ("ref", "pred-cache", True),
    ("ref-cache", "pred-cache", True), ("ref-cache", "pred-cache", False),
])
def test_fast_path_cases_equal_the_full_patients(sample_cases, ref_kind, pred_kind, compact):
    """Every fast path (sparse CSV boxes, cache boxes with the stored ROI voxels, voxel lists) builds
    the case the whole-grid Patient gives: the same doses on each ROI and in the mask, the same voxel
    counts and volume; and the same scores."""
    ids = sample_cases["ids"]
    for c in iter_cases(sample_cases[ref_kind], sample_cases[pred_kind], ids, compact=compact, read_ahead=0):
        p = sample_cases["pats"][c.id]
        pred = sample_cases["preds"][c.id] * (p.possible_dose_mask if pred_kind == "pred-cache" else 1)
        whole = ScoringCase.from_patient(p.with_dose(p.dose), pred)  # with_dose: no support box
        assert whole.ref.size == p.dose.size and c.ref.size < whole.ref.size
        got, want = _canonical(c), _canonical(whole)
        assert got["rois"].keys() == want["rois"].keys()
        assert ("Esophagus" in want["rois"]) == (c.id != "pt_196")
        for n, (r, q) in want["rois"].items():
            np.testing.assert_array_equal(got["rois"][n][0], r)
            np.testing.assert_array_equal(got["rois"][n][1], q)
        for k in ("n_mask", "vox", "missing"):
            assert got[k] == want[k]
        np.testing.assert_array_equal(got["mask"][0], want["mask"][0])
        np.testing.assert_array_equal(got["mask"][1], want["mask"][1])
        assert got["abs_pred"] == pytest.approx(want["abs_pred"], rel=1e-9)
        assert got["abs_ref"] == pytest.approx(want["abs_ref"], rel=1e-9)
        a, b = evaluate_cohort([c], "openkbp").patients[0], evaluate_patient(p, pred, "openkbp")
        assert a.dose_score == pytest.approx(b.dose_score, rel=1e-9)
        for va, vb in zip(a.metrics, b.metrics, strict=True):
            assert (va.roi, va.metric) == (vb.roi, vb.metric)
            assert va.ref == pytest.approx(vb.ref, rel=1e-9) and va.pred == pytest.approx(vb.pred, rel=1e-9)


def test_a_prediction_cache_on_another_grid_is_refused(synthetic, tmp_path):
    """A prediction cache whose patient lies on another grid of the same array shape (here: twice the
    spacing, as a prediction from a resampled copy or another patient) was scored as if on the
    reference's, on every path; it is refused naming the patient, the file and both grids."""
    from dosepred import Patient

    p = next(iter(synthetic["pats"].values()))
    moved = Patient(p.id, p.ct, p.roi_codes, p.roi_set, tuple(2 * s for s in p.spacing), p.possible_dose_mask,
                    synthetic["preds"][p.id], p.missing_rois, dict(p.meta))
    assert moved.shape == p.shape and not moved.geometry.same_as(p.geometry)
    cache.write_cache([moved], tmp_path / "pred")
    for ref in ("cache", "nifti"):
        for compact in (True, False):
            with pytest.raises(ValueError, match=rf"patient {p.id}: the predicted dose .*{p.id}.npz lies on "
                                                 r"another grid \(Geometry.*\) than the reference"):
                list(iter_cases(synthetic[ref], tmp_path / "pred", [p.id], compact=compact, read_ahead=0))
        with pytest.raises(ValueError, match="lies on another grid"):
            list(iter_pairs(synthetic[ref], tmp_path / "pred", [p.id], read_ahead=0))
    # the same dose on the reference's own grid scores as numpy says
    cache.write_cache([p.with_dose(synthetic["preds"][p.id])], tmp_path / "same")
    (r,) = evaluate_cohort(iter_cases(synthetic["cache"], tmp_path / "same", [p.id], read_ahead=0)).patients
    want = np.abs(p.dose.astype(np.float64) - synthetic["preds"][p.id]).sum() / p.possible_dose_mask.sum()
    assert r.dose_score == pytest.approx(want, rel=1e-6)


def test_a_prediction_csv_numbers_voxels_in_openkbp_axes_whatever_the_layout(synthetic, tmp_path):
    """A prediction ``pt_N.csv`` numbers its voxels in OpenKBP's axis order (PLI), as every OpenKBP file
    and OpenKBP's own tools do. The same patient in another layout (LPS, as DICOM and NIfTI patients
    come) writes the same file, its hottest voxel at the flat index counted by hand along P, L, I, and
    evaluation places either file by the reference's own axes: every pairing scores 0. Before, the LPS
    patient's CSV was numbered in its own order (read as OpenKBP reads it, up to 72 Gy off)."""
    from dosepred.geometry import Geometry
    from dosepred.io import formats
    from dosepred.patient import Patient

    p = synthetic["pats"][sorted(synthetic["pats"])[0]]
    assert p.geometry.axis_letters() == "PLI"
    q = p.reoriented("LPS")
    assert q.geometry.axis_letters() == "LPS"
    fmt = formats.get("openkbp")
    a = fmt.write_dose(p, p.dose, tmp_path / "pred-pli", None, None)
    b = fmt.write_dose(q, q.dose, tmp_path / "pred-lps", None, None)
    assert a.read_bytes() == b.read_bytes()
    i, j, k = np.unravel_index(int(np.argmax(q.dose)), q.shape)  # along L, P, S
    n_l, n_p, n_s = q.shape
    at = np.ravel_multi_index((j, i, n_s - 1 - k), (n_p, n_l, n_s))  # along P, L, I
    rows = dict(line.split(",") for line in b.read_text().splitlines()[1:])
    assert float(rows[str(at)]) == pytest.approx(float(q.dose.max()))
    cache.write_cache([p], tmp_path / "ref-pli")
    cache.write_cache([q], tmp_path / "ref-lps")
    for ref in ("ref-pli", "ref-lps"):
        for pred in ("pred-pli", "pred-lps"):
            (case,) = iter_cases(tmp_path / ref, tmp_path / pred, [p.id], read_ahead=0)
            (pair,) = iter_pairs(tmp_path / ref, tmp_path / pred, [p.id], read_ahead=0)
            for r in (evaluate_cohort([case], "openkbp"), evaluate_cohort([pair], "openkbp")):
                assert r.patients[0].dose_score == 0.0, (ref, pred)
    # a reference on an oblique grid has no OpenKBP axis order: one error naming the patient
    t = np.radians(10.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    g = Geometry(q.geometry.origin, rot @ q.geometry.direction, q.geometry.spacing)
    o = Patient(q.id, q.ct, q.roi_codes, q.roi_set, q.spacing, q.possible_dose_mask, q.dose,
                q.missing_rois, dict(q.meta), g)
    cache.write_cache([o], tmp_path / "ref-oblique")
    with pytest.raises(ValueError, match=rf"patient {p.id}: an OpenKBP prediction CSV numbers its voxels "
                                         r"in OpenKBP's axis order, which the reference's oblique grid"):
        list(iter_cases(tmp_path / "ref-oblique", tmp_path / "pred-pli", [p.id], read_ahead=0))
