"""The API functions the commands call (dosepred.workflows), used directly as a script would: results
checked against independent computations (numpy, the files on disk), outputs all or nothing."""

import json
from pathlib import Path

import numpy as np
import pytest

from dosepred import workflows as wf
from dosepred.io.cache import Cache, write_cache
from dosepred.synth import make_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    write_cache(make_cohort(5, seed=4, size=16), root / "c")
    return root / "c"


def test_import_openkbp_sample_matches_the_csv_files(sample_dir, tmp_path):
    c = wf.import_patients(sample_dir, tmp_path / "c", "openkbp")
    assert sorted(c.ids) == sorted(p.name for p in sample_dir.iterdir() if p.name.startswith("pt_"))
    p = c.load("pt_66", c.roi_set)
    # the dose CSV lists (flat index, value) of every non-zero voxel: the cache holds the same
    rows = np.loadtxt(sample_dir / "pt_66" / "dose.csv", delimiter=",", skiprows=1, usecols=(0, 1), ndmin=2)
    assert np.allclose(p.dose.reshape(-1)[rows[:, 0].astype(int)], rows[:, 1], atol=1e-4)
    assert int(np.count_nonzero(p.dose)) == int(np.count_nonzero(rows[:, 1]))  # nothing else
    with pytest.raises(ValueError, match="overwrite"):
        wf.import_patients(sample_dir, tmp_path / "c", "openkbp")  # never into a non-empty folder


def test_export_and_split_and_baseline(cohort, tmp_path):
    assert wf.export_cache(cohort, tmp_path / "nii", "nifti") == 5
    assert sorted(p.name for p in (tmp_path / "nii").iterdir()) == sorted(Cache.open(cohort).ids)
    obj = wf.make_split(tmp_path / "nii", tmp_path / "s.json", "random", fractions="3,2", seed=1)
    on_disk = json.loads((tmp_path / "s.json").read_text())
    assert on_disk["splits"] == obj["splits"] and [len(v) for v in obj["splits"].values()] == [3, 2]
    assert sorted(sum(obj["splits"].values(), [])) == sorted(Cache.open(cohort).ids)
    with pytest.raises(ValueError, match="method"):
        wf.make_split(cohort, tmp_path / "t.json", "alphabetical")
    assert not (tmp_path / "t.json").exists()
    assert wf.baseline(cohort, tmp_path / "base") == 5
    assert len(list((tmp_path / "base").glob("*.csv"))) == 5


def test_export_roi_layout_follows_the_format(cohort, tmp_path):
    """--roi-format names one of the format's ROI layouts (NIfTI: labels or codes); a format with one
    layout refuses another value instead of ignoring it; nothing is written either way."""
    assert wf.export_cache(cohort, tmp_path / "codes", "nifti", roi_format="codes") == 5
    assert all((d / "roi_codes.nii.gz").is_file() for d in (tmp_path / "codes").iterdir())
    with pytest.raises(ValueError, match="must be labels or codes for nifti, got 'bits'"):
        wf.export_cache(cohort, tmp_path / "x", "nifti", roi_format="bits")
    with pytest.raises(ValueError, match="'codes': openkbp has one ROI layout; the option is for nifti"):
        wf.export_cache(cohort, tmp_path / "y", "openkbp", roi_format="codes")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_export_of_a_format_with_one_layout_uses_it(cohort, tmp_path, monkeypatch):
    """A format whose only ROI layout is not called 'labels' exports with it by default (the CLI
    offers no --roi-format then), instead of refusing the default 'labels'."""
    import dataclasses

    from dosepred.io import formats

    seen: list[str] = []
    row = dataclasses.replace(formats.get("nifti"), name="toy", roi_layouts=(("mask", "m.toy"),),
                              write_patient=lambda p, folder, roi_format: seen.append(roi_format))
    real = formats.find
    monkeypatch.setattr(formats, "find", lambda name: row if name == "toy" else real(name))
    assert wf.export_cache(cohort, tmp_path / "t", "toy") == 5
    assert seen == ["mask"] * 5


def test_evaluate_sources_reports_missing_predictions(cohort, tmp_path):
    import warnings

    wf.baseline(cohort, tmp_path / "pred")
    (tmp_path / "pred" / f"{Cache.open(cohort).ids[0]}.csv").unlink()
    with pytest.raises(ValueError, match="--allow-missing"):
        wf.evaluate_sources(cohort, tmp_path / "pred")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res, missing = wf.evaluate_sources(cohort, tmp_path / "pred", "openkbp", json_out=tmp_path / "e.json",
                                           allow_missing=True)
    assert missing == [Cache.open(cohort).ids[0]] and len(res.patients) == 4
    assert any("no prediction" in str(x.message) for x in w)
    assert json.loads((tmp_path / "e.json").read_text())["missing_predictions"] == missing


def test_evaluate_s_json_and_report_name_what_was_scored_against_what(cohort, tmp_path):
    """evaluate's JSON held the scores and no word of the predictions or plans scored (two models' JSON
    files differed by their file names alone), and its report named the predictions (in its title) but
    not the reference plans. Both now name the two folders as given."""
    from html import escape

    pred = tmp_path / "pred & <co>"
    wf.baseline(cohort, pred)
    wf.evaluate_sources(cohort, pred, "openkbp", json_out=tmp_path / "e.json", report=tmp_path / "rep")
    j = json.loads((tmp_path / "e.json").read_text())
    assert (j["reference"], j["prediction"]) == (str(cohort), str(pred))
    page = (tmp_path / "rep" / "report.html").read_text()
    assert f"reference plans {escape(str(cohort))} &middot; predictions {escape(str(pred))}" in page


def test_parse_point():
    assert wf.parse_point("1,-2.5,3e1") == (1.0, -2.5, 30.0) and wf.parse_point(None) is None
    for bad in ("1,2", "a,b,c", "1,2,3,4"):
        with pytest.raises(ValueError, match="X,Y,Z"):
            wf.parse_point(bad)


# ------------------------------------------------------------ outputs apart from each other and the inputs
def _tree(root):
    """Every file under ``root`` with its bytes: the state of a folder, compared before and after."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["inside", "same"])
def test_evaluate_refuses_a_json_inside_or_at_its_report(cohort, tmp_path, where):
    """--report is renamed into place whole when the command succeeds: a --json inside it (or at its
    path) was written, announced and then dropped with the old folder; it is refused before any work."""
    from dosepred.fsutil import OutputError

    wf.baseline(cohort, tmp_path / "pred")
    rep = tmp_path / "rep"
    js = rep / "x.json" if where == "inside" else rep
    with pytest.raises(OutputError, match="--json (lies inside|is) --report"):
        wf.evaluate_sources(cohort, tmp_path / "pred", json_out=js, report=rep)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]


def test_evaluate_whose_report_cannot_be_written_leaves_its_json_as_it_was(cohort, tmp_path, monkeypatch):
    """--json was renamed into place before the report was written: a report that failed (a full disk)
    ended the command with an error while the --json beside it was already replaced by this run's (with
    --overwrite: a new JSON next to the old report, or a JSON of a command that failed). Now both are
    written once all succeeded, or neither: the old pair is left as it was."""
    import errno

    wf.baseline(cohort, tmp_path / "pred")
    js, rep = tmp_path / "e.json", tmp_path / "rep"
    js.write_text('{"old": 1}')
    rep.mkdir()
    (rep / "report.html").write_text("old report")
    before = {"json": js.read_bytes(), "report": _tree(rep)}

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wf.ReportWriter, "finish", full)
    with pytest.raises(OSError, match="No space"):
        wf.evaluate_sources(cohort, tmp_path / "pred", json_out=js, report=rep, overwrite=True)
    assert {"json": js.read_bytes(), "report": _tree(rep)} == before
    js.unlink()
    with pytest.raises(OSError, match="No space"):
        wf.evaluate_sources(cohort, tmp_path / "pred", json_out=tmp_path / "new.json",
                            report=tmp_path / "new", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred", "rep"]


def test_qa_refuses_a_json_inside_its_out(cohort, tmp_path, monkeypatch):
    """OUT is renamed into place whole when qa succeeds: a --json inside it was dropped silently."""
    from dosepred.fsutil import OutputError

    class Result:
        def to_json(self):
            return {"patients": []}

    monkeypatch.setattr(wf, "run_qa", lambda *a, **k: Result())
    (tmp_path / "model").mkdir()
    with pytest.raises(OutputError, match="--json lies inside --out"):
        wf.qa_plans(tmp_path / "model", cohort, tmp_path / "o", json_out=tmp_path / "o" / "x.json",
                    report=False)
    assert not (tmp_path / "o").exists()


def test_a_protocol_file_is_an_input_no_output_replaces(cohort, tmp_path):
    """A --protocol file is an input like the others: --json at its path, or a --report folder
    holding it, is refused (with --overwrite it was overwritten, or deleted with the old report)."""
    import shutil

    from dosepred.fsutil import OutputError

    wf.baseline(cohort, tmp_path / "pred")
    proto = tmp_path / "p" / "proto.json"
    proto.parent.mkdir()
    shutil.copy(Path(wf.__file__).parent / "protocol" / "builtin" / "openkbp.json", proto)
    before = _tree(tmp_path / "p")
    with pytest.raises(OutputError, match="is the input"):
        wf.evaluate_sources(cohort, tmp_path / "pred", proto, json_out=proto, overwrite=True)
    with pytest.raises(OutputError, match="holds the input"):
        wf.evaluate_sources(cohort, tmp_path / "pred", proto, report=proto.parent, overwrite=True)
    assert _tree(tmp_path / "p") == before
    # a built-in protocol's name is no file: an output of that name is no conflict
    res, _ = wf.evaluate_sources(cohort, tmp_path / "pred", "openkbp", json_out=tmp_path / "openkbp")
    assert json.loads((tmp_path / "openkbp").read_text())["patients"] == sorted(Cache.open(cohort).ids)


def test_predict_refuses_an_out_holding_its_split_file(cohort, tmp_path):
    """--split FILE:NAME is an input: --out holding FILE with --overwrite deleted it after reading."""
    from dosepred.fsutil import OutputError

    out = tmp_path / "out"
    wf.make_split(cohort, out / "s.json", "random", fractions="3,2", names="a,b")
    before = _tree(out)
    with pytest.raises(OutputError, match="holds the input"):
        wf.predict_folder(tmp_path / "no-model", cohort, out, split=f"{out / 's.json'}:a", overwrite=True)
    assert _tree(out) == before


@pytest.mark.parametrize("what", ["train_split", "protocol"])
def test_train_refuses_a_run_folder_holding_its_split_or_protocol(cohort, tmp_path, what):
    """A --split file or --protocol file inside --out: refused as an input (it was moved aside with
    the old run and then reported missing: 'split file ... does not exist')."""
    import shutil

    from dosepred.fsutil import OutputError

    out = tmp_path / "run"
    if what == "train_split":
        wf.make_split(cohort, out / "s.json", "random", fractions="3,2", names="a,b")
        value = f"{out / 's.json'}:a"
    else:
        out.mkdir()
        shutil.copy(Path(wf.__file__).parent / "protocol" / "builtin" / "openkbp.json", out / "p.json")
        value = str(out / "p.json")
    before = _tree(out)
    with pytest.raises(OutputError, match="holds the input"):
        wf.train_run(out, {"data": str(cohort), what: value, "epochs": 1, "steps_per_epoch": 1,
                           "patch": 16, "base": 4, "levels": 2, "res_units": 0, "batch": 1, "threads": 1},
                     overwrite=True)
    assert _tree(out) == before


def test_split_refuses_to_overwrite_its_ids_file(cohort, tmp_path):
    """An --ids file is an input: --out at its path (with overwrite) replaced the user's lists."""
    from dosepred.fsutil import OutputError

    ids = Cache.open(cohort).ids
    f = tmp_path / "ids.json"
    f.write_text(json.dumps({"a": ids[:3], "b": ids[3:]}))
    before = f.read_bytes()
    with pytest.raises(OutputError, match="is the input"):
        wf.make_split(cohort, f, "ids", ids=[str(f)], overwrite=True)
    assert f.read_bytes() == before
