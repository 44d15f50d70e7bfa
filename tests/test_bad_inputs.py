"""Bad inputs end in one clear line and exit code 2, never a traceback, and never change an output
that existed before (issue #14). Each case asserts the exit code, a message naming the file or
field, no traceback, no ANSI codes, and an unchanged output tree (hashed before and after).

Classes: OpenKBP readers, evaluate (predictions, references, protocol lint), outputs
(transactional writes, --overwrite), OS errors and empty files, messages. DICOM/NIfTI reader checks
live with their readers' tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.io.cache import write_cache
from dosepred.synth import make_cohort
from dosepred.training import TrainConfig, train

TINY = dict(patch=(16, 16, 16), base=4, levels=2, res_units=1, batch=2, threads=1)
SRC = Path(__file__).resolve().parents[1] / "src"


# ------------------------------------------------------------------------------------------ helpers

def cli(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=True)


def tree(root: Path) -> dict[str, str]:
    """Relative path -> content hash ('dir' for folders) of everything under ``root``, hidden too."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fails(r, *needles: str, code: int = 2) -> str:
    """The command failed cleanly: exit ``code``, one ``error:`` line naming every needle."""
    text = r.output
    assert r.exit_code == code, (r.exit_code, text, r.exception)
    assert "Traceback" not in text and not isinstance(r.exception, (AssertionError, IndexError, TypeError))
    assert "\x1b[" not in text  # no colour without a terminal
    assert "error:" in text and "error: warning" not in text, text
    for n in needles:
        assert n in text, (n, text)
    return text


def ok(r) -> str:
    assert r.exit_code == 0, (r.output, r.exception)
    assert "Traceback" not in r.output and "\x1b[" not in r.output
    return r.output


def unchanged(root: Path):
    """Context: assert the tree under ``root`` (the test's whole work folder) does not change."""
    class _C:
        def __enter__(self):
            self.before = tree(root)
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                assert tree(root) == self.before, "an existing output changed or a stray file was left"
    return _C()


def tiny_openkbp_patient(folder: Path, shift: int = 0) -> Path:
    """A valid OpenKBP folder with a handful of voxels (the 128^3 grid, fast to read)."""
    folder.mkdir(parents=True)
    idx = [10 + shift, 11 + shift, 12 + shift]
    (folder / "ct.csv").write_text(",data\n" + "".join(f"{i},1000.0\n" for i in idx))
    (folder / "possible_dose_mask.csv").write_text(",data\n" + "".join(f"{i},\n" for i in idx))
    (folder / "dose.csv").write_text(f",data\n{idx[0]},70.5\n{idx[1]},60.0\n{idx[2]},3.25\n")
    (folder / "voxel_dimensions.csv").write_text("3.906\n3.906\n2.5\n")
    (folder / "PTV70.csv").write_text(f",data\n{idx[0]},\n{idx[1]},\n")
    (folder / "SpinalCord.csv").write_text(f",data\n{idx[2]},\n")
    return folder


def prediction_csv(path: Path, rows: dict[int, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",data\n" + "".join(f"{i},{v}\n" for i, v in rows.items()))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Shared inputs (never written by the tests): a 2-patient 24^3 synthetic cache, an OpenKBP
    folder of two tiny patients with predictions, a one-step training run."""
    root = tmp_path_factory.mktemp("inputs")
    write_cache(make_cohort(2, seed=3, size=24), root / "cache")
    for k in (1, 2):
        tiny_openkbp_patient(root / "okbp" / f"pt_{k}", shift=k)
        prediction_csv(root / "pred" / f"pt_{k}.csv", {10 + k: "70", 11 + k: "60", 12 + k: "3"})
    train(TrainConfig(data=str(root / "cache"), out=str(root / "run"), loss="mae", epochs=1,
                      steps_per_epoch=1, **TINY))
    return root


# ------------------------------------------------------------------------------- OpenKBP readers

@pytest.mark.parametrize("fname, content, needle", [
    ("dose.csv", ",data\n11,70\n12,60\n11,3\n", "flat index 11 appears twice"),
    ("possible_dose_mask.csv", ",data\n11,\n12,\n12,\n", "flat index 12 appears twice"),
    ("SpinalCord.csv", ",data\n13,\n5,\n13,\n", "flat index 13 appears twice (rows 2 and 4)"),
    ("ct.csv", ",data\n11,1000.0\n11,1000.0\n", "flat index 11 appears twice"),
    ("dose.csv", ",data\n11,70\n12,inf\n13,3\n", "row 3: value inf is not finite"),
    ("dose.csv", ",data\n11,70\n12,nan\n13,3\n", "row 3: value is missing"),
    ("PTV70.csv", ",data\n", "is empty (no voxels)"),
])
def test_import_openkbp_rejects_bad_csv(base, work, fname, content, needle):
    src = work / "src"
    tiny_openkbp_patient(src / "pt_1", shift=1)
    (src / "pt_1" / fname).write_text(content)
    with unchanged(work):
        text = fails(cli("data", "import-openkbp", src, "--out", work / "sub" / "cache"), fname, needle)
    assert "pt_1" in text
    assert not (work / "sub").exists()  # no empty --out, nor its parents


def test_failed_import_keeps_existing_cache_even_with_overwrite(base, work):
    src = work / "src"
    tiny_openkbp_patient(src / "pt_1", shift=1)
    (src / "pt_1" / "dose.csv").write_text(",data\n11,1\n11,2\n")
    out = work / "cache"
    ok(cli("data", "synth", "--patients", "1", "--size", "12", "--out", out))
    with unchanged(work):
        fails(cli("data", "import-openkbp", src, "--out", out, "--overwrite"), "dose.csv", "appears twice")


def test_evaluate_rejects_prediction_with_repeated_index(base, work):
    pred = work / "pred"
    prediction_csv(pred / "pt_1.csv", {11: "70", 12: "60"})
    (pred / "pt_1.csv").write_text(",data\n11,70\n12,60\n11,1\n")
    prediction_csv(pred / "pt_2.csv", {12: "70"})
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", pred), "pt_1.csv",
              "appears twice")


# -------------------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("value, kind", [("nan", "missing"), ("inf", "not finite"), ("-inf", "not finite")])
def test_evaluate_non_finite_csv_prediction(base, work, value, kind):
    pred = work / "pred"
    prediction_csv(pred / "pt_1.csv", {11: "70", 12: value, 13: "3"})
    prediction_csv(pred / "pt_2.csv", {12: "70", 13: "60", 14: "3"})
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", pred, "--json", work / "r.json"),
              "pt_1", "pt_1.csv", kind)


def test_evaluate_non_finite_cache_prediction(base, work):
    from dosepred.io.cache import Cache, write_members

    pats = list(Cache.open(base / "cache"))
    write_cache([p.with_dose(p.possible_dose_mask.astype(np.float32)) for p in pats], work / "predcache")
    f = work / "predcache" / f"{pats[1].id}.npz"  # a NaN written by another tool (Patient refuses it)
    with np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["dose"] = arrays["dose"].copy()
    arrays["dose"][0] = np.nan
    write_members(f, arrays)
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "cache", "--prediction", work / "predcache"),
              f"patient {pats[1].id}", f"{pats[1].id}.npz", "non-finite", "NaN")


def test_evaluate_non_finite_array_api(base):
    from dosepred.evaluation import evaluate_patient
    from dosepred.io.cache import Cache

    p = next(iter(Cache.open(base / "cache")))
    pred = p.dose.copy()
    pred[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=f"patient {p.id}: .*non-finite.*inf"):
        evaluate_patient(p, pred)


def test_evaluate_prediction_for_another_grid(base, work):
    pred = work / "pred"
    prediction_csv(pred / "pt_1.csv", {5000: "70", 5001: "60", 5002: "3"})  # all outside the mask
    prediction_csv(pred / "pt_2.csv", {12: "70", 13: "60", 14: "3"})
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", pred),
              "pt_1", "pt_1.csv", "outside the possible-dose mask")


def test_evaluate_cache_prediction_mostly_outside_mask(base, work):
    from dosepred.io.cache import Cache

    pats = list(Cache.open(base / "cache"))
    shifted = [p.with_dose(np.where(p.possible_dose_mask, 0.0, 50.0).astype(np.float32)) for p in pats]
    write_cache(shifted, work / "predcache")
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "cache", "--prediction", work / "predcache"),
              f"patient {pats[0].id}", "outside the possible-dose mask")


def test_evaluate_empty_reference_roi_file_is_an_error(base, work):
    ref = work / "ref"
    for k in (1, 2):
        tiny_openkbp_patient(ref / f"pt_{k}", shift=k)
    (ref / "pt_2" / "Larynx.csv").write_text(",data\n")
    with unchanged(work):
        fails(cli("evaluate", "--reference", ref, "--prediction", base / "pred"), "pt_2", "Larynx.csv",
              "is empty (no voxels)")


def _protocol(path: Path, criteria: list[dict], **extra) -> Path:
    path.write_text(json.dumps({"name": "t", "criteria": criteria, **extra}))
    return path


@pytest.mark.parametrize("crit, extra, needles", [
    ({"roi": "PTV70", "metric": "D95%", "limit": float("nan"), "direction": ">="}, {},
     ("criterion 1 (PTV70 D95%)", "limit must be a finite number")),
    ({"roi": "PTV70", "metric": "D95%", "limit": 60, "direction": ">=", "goal": float("inf")}, {},
     ("criterion 1", "goal must be a finite number")),
    ({"roi": "PTV70", "metric": "D95%", "weight": float("inf")}, {},
     ("criterion 1", "weight must be a finite number")),
    ({"roi": "PTV70", "metric": "D95%", "limit": 95, "limit_unit": "%Rx", "direction": ">="},
     {"prescriptions": {"PTV70": float("inf")}}, ("prescriptions", "> 0 Gy")),
])
def test_evaluate_protocol_non_finite_numbers(base, work, crit, extra, needles):
    proto = _protocol(work / "p.json", [crit], **extra)
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", base / "pred", "--protocol",
                  proto, "--json", work / "r.json"), "p.json", *needles)


def test_protocol_file_with_a_misspelt_roi_is_named_by_its_path(base, work):
    proto = _protocol(work / "p.json", [{"roi": "PTV_70", "metric": "D95%", "limit": 60, "direction": ">="}])
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", base / "pred", "--protocol",
                  proto),
              f"{proto}: protocol 't', criterion 1 (PTV_70 D95% >= 60 Gy): ROI 'PTV_70' is not among the "
              "dataset's ROIs", "did you mean 'PTV70'?")
        fails(cli("train", "--data", base / "cache", "--out", work / "run", "--loss", "mae+cdm", "--protocol",
                  proto, "--epochs", "1", "--patch", "16", "--no-progress"),
              f"{proto}: protocol 't'", "PTV_70")


def test_qa_protocol_with_an_roi_the_model_lacks_says_the_model_lacks_it(base, work):
    model = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae"
    proto = _protocol(work / "p.json", [{"roi": "Cochlea_L", "metric": "Dmean", "limit": 45,
                                         "direction": "<="}])
    with unchanged(work):
        text = fails(cli("qa", "--model", model, "--plans", base / "okbp", "--protocol", proto, "--out",
                         work / "qa", "--no-progress"),
                     f"{proto}: protocol 't', criterion 1", "ROI 'Cochlea_L' is not among the model's ROIs")
    assert "dataset" not in text


def test_evaluate_protocol_lint_warnings_in_console_and_json(base, work):
    crit = {"roi": "PTV70", "metric": "D95%", "limit": 60, "direction": ">="}
    proto = _protocol(work / "p.json", [crit, crit, {"roi": "Larynx", "metric": "Dmean"}])
    out = ok(cli("evaluate", "--reference", base / "okbp", "--prediction", base / "pred", "--protocol", proto,
                 "--json", work / "r.json"))
    assert "warning: protocol 't': criterion 2 (PTV70 D95% >= 60 Gy) repeats criterion 1" in out
    assert "contoured in no patient" in out and "Larynx" in out and "error: warning" not in out
    js = json.loads((work / "r.json").read_text())
    assert any("repeats criterion 1" in w for w in js["warnings"])
    assert any("Larynx" in w for w in js["warnings"])


def test_evaluate_builtin_protocol_warns_of_uncontoured_rois(base, work):
    out = ok(cli("evaluate", "--reference", base / "okbp", "--prediction", base / "pred", "--json",
                 work / "r.json"))
    assert "warning:" in out and "Brainstem" in out
    assert json.loads((work / "r.json").read_text())["warnings"]


@pytest.mark.parametrize("content, needle", [
    (b"\xff\xfe not text", "not UTF-8"), (b"{ not json", "not valid JSON"), (b"", "not valid JSON"),
    # criteria written as one object instead of a list of them (was "error: 0", a KeyError)
    (b'{"name": "t", "criteria": {"roi": "PTV70", "metric": "D95%", "limit": 60, "direction": ">="}}',
     "criteria")])
def test_evaluate_unreadable_protocol_file(base, work, content, needle):
    (work / "p.json").write_bytes(content)
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", base / "pred", "--protocol",
                  work / "p.json"), "p.json", needle)


def test_train_protocol_non_finite_limit_is_refused_before_writing(base, work):
    proto = _protocol(work / "p.json", [{"roi": "PTV70", "metric": "D95%", "limit": float("nan"),
                                         "direction": ">="}])
    with unchanged(work):
        fails(cli("train", "--data", base / "cache", "--out", work / "run", "--loss", "mae+cdm", "--protocol",
                  proto, "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "--base", "4",
                  "--levels", "2", "--no-progress"), "p.json", "finite")
    assert not (work / "run").exists()


def test_train_cdm_protocol_lint_warns(base, work):
    crit = {"roi": "PTV70", "metric": "D95%", "limit": 60, "direction": ">="}
    proto = _protocol(work / "p.json", [crit, crit])
    out = ok(cli("train", "--data", base / "cache", "--out", work / "run", "--loss", "mae+cdm", "--protocol",
                 proto, "--epochs", "1", "--steps-per-epoch", "1", "--patch", "16", "--base", "4", "--levels",
                 "2", "--threads", "1", "--no-progress"))
    assert "warning: protocol 't': criterion 2" in out and "repeats criterion 1" in out


# --------------------------------------------------------------------------------------- outputs

def _existing(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("something else")
    return path


#: Every command writing a folder, by id: (base, out) -> its arguments.
_FOLDER_COMMANDS = {
    "synth": lambda b, o: ("data", "synth", "--patients", "1", "--size", "12", "--out", o),
    "import-openkbp": lambda b, o: ("data", "import-openkbp", b / "okbp", "--out", o),
    "export-openkbp": lambda b, o: ("data", "export-openkbp", b / "cache", "--out", o),
    "export-nifti": lambda b, o: ("data", "export-nifti", b / "cache", "--out", o),
    "export-dicom": lambda b, o: ("data", "export-dicom", b / "cache", "--out", o),
    "predict": lambda b, o: ("predict", "--model", b / "run", "--data", b / "cache", "--out", o),
    "baseline": lambda b, o: ("baseline", "--data", b / "cache", "--out", o),
    "export-model": lambda b, o: ("export-model", b / "run", "--out", o),
    "train": lambda b, o: ("train", "--data", b / "cache", "--out", o, "--epochs", "1"),
    "demo": lambda b, o: ("demo", "--out", o),
    "evaluate-report": lambda b, o: ("evaluate", "--reference", b / "okbp", "--prediction", b / "pred",
                                     "--report", o),
}


@pytest.mark.parametrize("cmd", list(_FOLDER_COMMANDS.values()), ids=list(_FOLDER_COMMANDS))
def test_existing_output_is_never_touched_without_overwrite(base, work, cmd):
    out = _existing(work / "out")
    with unchanged(work):
        fails(cli(*cmd(base, out)), str(out), "--overwrite")


_NO_FILE_REPLACED = ["synth", "import-openkbp", "export-dicom", "predict", "baseline", "export-model",
                     "train", "demo", "evaluate-report"]


@pytest.mark.parametrize("cmd", [_FOLDER_COMMANDS[k] for k in _NO_FILE_REPLACED], ids=_NO_FILE_REPLACED)
def test_a_folder_output_never_replaces_a_file_even_with_overwrite(base, work, cmd):
    notes = work / "notes.txt"
    notes.write_text("my notes")
    with unchanged(work):
        fails(cli(*cmd(base, notes), "--overwrite"), str(notes), "is a file, and this output is a folder")
    assert notes.read_text() == "my notes"


_AT_A_FILE = ["synth", "import-openkbp", "export-nifti", "predict", "baseline", "train", "evaluate-report"]


@pytest.mark.parametrize("cmd", [_FOLDER_COMMANDS[k] for k in _AT_A_FILE], ids=_AT_A_FILE)
def test_a_folder_output_at_a_file_does_not_advise_overwrite(base, work, cmd):
    """Without --overwrite, a folder output (`baseline --out notes.txt`) at an existing file said "give
    --overwrite to replace it whole"; given it, the same command refused since a folder output never
    replaces a file (docs/formats.md, "Outputs"). The first error now says what the second does."""
    notes = work / "notes.txt"
    notes.write_text("my notes")
    with unchanged(work):
        msg = fails(cli(*cmd(base, notes)), str(notes), "is a file, and this output is a folder")
    assert "give --overwrite" not in msg
    assert notes.read_text() == "my notes"


@pytest.mark.parametrize("cmd", [
    lambda b, o: ("evaluate", "--reference", b / "okbp", "--prediction", b / "pred", "--json", o),
    lambda b, o: ("data", "split", b / "cache", "--random", "--out", o),
    lambda b, o: ("bench", "losses", "--json", o, "--sizes", "16", "--no-unet"),
], ids=["evaluate-json", "split", "bench-json"])
def test_existing_output_file_is_never_touched_without_overwrite(base, work, cmd):
    out = work / "out.json"
    out.write_text('{"old": true}')
    with unchanged(work):
        fails(cli(*cmd(base, out)), str(out), "--overwrite")


@pytest.mark.parametrize("cmd, marker", [
    (lambda b, o: ("data", "synth", "--patients", "1", "--size", "12", "--out", o), "dataset.json"),
    (lambda b, o: ("data", "export-nifti", b / "cache", "--out", o), "synth_000"),
    (lambda b, o: ("baseline", "--data", b / "okbp", "--out", o), "pt_1.csv"),
    (lambda b, o: ("export-model", b / "run", "--out", o), "model.pt"),
], ids=["synth", "export-nifti", "baseline", "export-model"])
def test_overwrite_replaces_whole(base, work, cmd, marker):
    out = _existing(work / "out")
    (out / "README.md").write_text("old readme")
    ok(cli(*cmd(base, out), "--overwrite"))
    names = {p.name for p in out.iterdir()}
    assert "keep.txt" not in names and any(n.startswith(marker) for n in names)
    assert not (out / "README.md").is_file() or "old readme" not in (out / "README.md").read_text()
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # no temporary sibling left


def test_export_dicom_overwrite_leaves_no_stale_patient(base, work):
    out = work / "dcm"
    ok(cli("data", "export-dicom", base / "cache", "--out", out))
    stale = out / "synth_999"
    stale.mkdir()
    (stale / "CT.1.dcm").write_bytes(b"stale")
    ok(cli("data", "export-dicom", base / "cache", "--out", out, "--overwrite"))
    assert not stale.exists()


@pytest.mark.parametrize("where", ["cache", "cache/run", "."])
def test_train_out_overlapping_the_training_cache_is_refused(base, work, where):
    import shutil

    cache = work / "cache"
    shutil.copytree(base / "cache", cache)
    out = work / where if where != "." else work
    with unchanged(work):
        fails(cli("train", "--data", cache, "--out", out, "--epochs", "1", "--overwrite"), "the input",
              str(cache))


@pytest.mark.parametrize("link", ["folder", "files"])
def test_overwrite_never_deletes_what_an_input_reaches_through_a_link(base, work, link):
    """Found by the CLI bad-input pass: an OpenKBP source whose pt_* folder (or whose CSV files) were links
    into --out passed the overlap check (it resolved the source, not its members); --overwrite replaced
    --out, deleting the patients, and the import then failed reading the links it had left dangling."""
    import shutil

    shutil.copytree(base / "okbp", work / "old")
    src = work / "src"
    if link == "folder":
        src.mkdir()
        (src / "pt_1").symlink_to(work / "old" / "pt_1", target_is_directory=True)
    else:
        (src / "pt_1").mkdir(parents=True)
        for f in (work / "old" / "pt_1").iterdir():
            (src / "pt_1" / f.name).symlink_to(f)
    with unchanged(work):
        fails(cli("data", "import-openkbp", src, "--out", work / "old", "--overwrite"),
              "--out holds", str(work / "old" / "pt_1"), "the input", "--overwrite would delete it")
    ok(cli("data", "import-openkbp", src, "--out", work / "cache"))  # the links themselves are fine


def test_predict_out_equal_to_data_is_refused(base, work):
    import shutil

    shutil.copytree(base / "cache", work / "cache")
    with unchanged(work):
        fails(cli("predict", "--model", base / "run", "--data", work / "cache", "--out", work / "cache",
                  "--overwrite"), "the input")


def test_failed_evaluate_report_leaves_nothing(base, work):
    pred = work / "pred"
    prediction_csv(pred / "pt_1.csv", {11: "70", 12: "60", 13: "3"})
    prediction_csv(pred / "pt_2.csv", {12: "70", 13: "nan", 14: "3"})
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", pred, "--report", work / "rep",
                  "--json", work / "r.json"), "pt_2.csv")
    report = _existing(work / "rep2")
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", pred, "--report", report,
                  "--overwrite"), "pt_2.csv")


def test_train_overwrite_replaces_a_run_and_refuses_without(base, work):
    args = ("train", "--data", base / "cache", "--out", work / "run", "--epochs", "1", "--steps-per-epoch",
            "1", "--patch", "16", "--base", "4", "--levels", "2", "--threads", "1", "--no-progress")
    ok(cli(*args))
    (work / "run" / "stale.txt").write_text("x")
    with unchanged(work):
        fails(cli(*args), "already holds a training run", "--resume", "--overwrite")
    ok(cli(*args, "--overwrite"))
    assert not (work / "run" / "stale.txt").exists() and (work / "run" / "checkpoints" / "last.pt").is_file()


# ------------------------------------------------------------------- ROIs a model expects of a patient

def _absent_in_training(base: Path) -> list[str]:
    """The ROIs some patient of the training cache lacks, from its dataset.json (numpy-free, by hand)."""
    info = json.loads((base / "cache" / "dataset.json").read_text())
    lacking = {r for e in info["patients"] for r in e["missing_rois"]}
    return [r["name"] for r in info["rois"] if r["name"] in lacking]


def _clinic_like(base: Path, out: Path, drop: tuple[str, ...] = (), extra_target: str | None = None,
                 extra_rx: float | None = 66.0) -> Path:
    """The training patients written as a clinic's export would hold them: ROI sets that list only the
    ROIs they have (``drop`` left out), optionally with a target the model does not know."""
    from dosepred.io.cache import Cache
    from dosepred.patient import Patient, Roi, RoiSet

    pats = []
    for p in Cache.open(base / "cache"):
        rois = [r for r in p.roi_set if r.name not in drop and r.name in p.present_rois]
        masks = {r.name: p.mask(r.name) for r in rois}
        if extra_target:
            rois.append(Roi(extra_target, "target", extra_rx))
            if extra_rx is None:  # a GTV or CTV: inside the prescribed targets (else it would be a dose
                # level nobody prescribed, which predict warns of: test_predict.py)
                masks[extra_target] = np.any([p.mask(r.name) for r in rois if r.prescription], axis=0)
            else:
                masks[extra_target] = p.possible_dose_mask & (p.ct > -2000)
        pats.append(Patient.from_masks(p.id, p.ct, masks, RoiSet(tuple(rois)), p.spacing,
                                       p.possible_dose_mask, geometry=p.geometry))
    sets = {q.roi_set for q in pats}
    if len(sets) > 1:  # one cache holds one set: keep each patient's own (others recorded missing)
        union = RoiSet(tuple({r.name: r for q in pats for r in q.roi_set}.values()))
        pats = [Patient.from_masks(q.id, q.ct, {n: q.mask(n) for n in q.present_rois}, union, q.spacing,
                                   q.possible_dose_mask, geometry=q.geometry) for q in pats]
    write_cache(pats, out)
    return out


def _with_dose(base: Path, out: Path, drop: tuple[str, ...]) -> Path:
    """_clinic_like with each patient's plan dose kept (an evaluation reference)."""
    from dosepred.io.cache import Cache

    src = _clinic_like(base, out.with_name(out.name + "-nodose"), drop=drop)
    doses = {p.id: p.dose for p in Cache.open(base / "cache")}
    write_cache([p.with_dose(doses[p.id]) for p in Cache.open(src)], out)
    return out


def test_evaluate_a_reference_lacking_an_roi_the_protocol_names(base, work):
    """A clinic's patients without an Esophagus contour (their ROI sets do not name it): the built-in
    protocol, and a protocol file naming the canonical 'Esophagus', evaluate the rest with a warning;
    a name that is no ROI of the data nor a canonical one ('Esophagos') is still an error."""
    import shutil

    ref = _with_dose(base, work / "ref", ("Esophagus",))
    pred = shutil.copytree(ref, work / "pred")  # the plans as predictions (the reference itself is refused)
    out = ok(cli("evaluate", "--reference", ref, "--prediction", pred, "--no-progress"))
    assert "warning: protocol 'openkbp'" in out and "Esophagus" in out
    crit = [{"roi": "Esophagus", "metric": "Dmean", "limit": 30, "direction": "<="},
            {"roi": "PTV70", "metric": "D95%", "limit": 60, "direction": ">="}]
    out = ok(cli("evaluate", "--reference", ref, "--prediction", pred, "--protocol",
                 _protocol(work / "p.json", crit), "--no-progress"))
    assert "contoured in no patient (Esophagus)" in out
    crit[0]["roi"] = "Esophagos"
    q = _protocol(work / "q.json", crit)
    fails(cli("evaluate", "--reference", ref, "--prediction", pred, "--protocol", q, "--no-progress"),
          "q.json", "ROI 'Esophagos' is not among the dataset's ROIs")


def test_model_records_the_rois_its_training_patients_lacked(base):
    """The list, and how many of the training patients lacked each (counted here from dataset.json)."""
    from dosepred.models.checkpoint import load_checkpoint

    absent = _absent_in_training(base)
    assert absent, "the synthetic cohort should lack some ROI (PTV63) in some patient"
    space = load_checkpoint(base / "run")["space"]
    assert space["absent_rois"] == absent
    info = json.loads((base / "cache" / "dataset.json").read_text())
    lacking = {n: sum(n in e["missing_rois"] for e in info["patients"]) for n in absent}
    assert space["absent_counts"] == lacking
    assert space["absent_patients"] == len(info["patients"]) == 2


#: the OpenKBP train split's patients lacking each ROI (of 169; counted from its dataset.json)
OPENKBP_LACKING = {"Brainstem": 13, "SpinalCord": 1, "RightParotid": 7, "LeftParotid": 6, "Esophagus": 111,
                   "Larynx": 89, "Mandible": 57, "PTV56": 15, "PTV63": 84}


def test_released_models_record_the_rois_openkbp_training_patients_lacked():
    """models/*: every OpenKBP train patient has PTV70 and some lack each other ROI (from the train split's
    missing ROIs: Esophagus 111 of 169 patients, ..., SpinalCord 1), with the counts; weights untouched."""
    from dosepred.models.checkpoint import load_checkpoint
    from dosepred.models.space import ModelSpace

    models = Path(__file__).resolve().parents[1] / "models"
    for m in sorted(f.parent for f in models.glob("openkbp-*/model.pt")):  # single models, not ensembles
        want = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
                "PTV56", "PTV63"]
        for space in (load_checkpoint(m)["space"], json.loads((m / "config.json").read_text())["space"]):
            assert space["absent_rois"] == want, m
            assert space["absent_counts"] == OPENKBP_LACKING and space["absent_patients"] == 169, m
        # fewer than 5 % of 169 (8.45): the cord and the parotids are rarely missing
        assert ModelSpace.from_dict(space).rarely_absent() == {"SpinalCord": 1, "RightParotid": 7,
                                                               "LeftParotid": 6}


def _with_space(base: Path, out: Path, **space: object) -> Path:
    """The base run's model with its space record changed (``space`` items replace the record's)."""
    from dosepred.models.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(base / "run")
    ck["space"] = {**ck["space"], **space}
    return save_checkpoint(ck, out)


def test_predict_warns_of_a_rarely_missing_roi_naming_how_many_lacked_it(base, work):
    """An ROI that only 1 of 100 training patients lacked (a cord under an unrecognised name): predicted
    (no flag needed) with a warning naming the ROI, the count, the consequence and the remedy, not a
    mere note; one lacked by 40 of 100 stays a note. Before, both were notes."""
    absent = _absent_in_training(base)
    others = {n: 50 for n in absent[1:]}
    model = _with_space(base, work / "m.pt", absent_counts={absent[0]: 1, **others}, absent_patients=100)
    src = _clinic_like(base, work / "src", drop=(absent[0],))
    out = " ".join(ok(cli("predict", "--model", model, "--data", src, "--out", work / "o", "--format",
                          "cache", "--no-progress")).split())
    assert (f"warning: patient synth_000 lacks {absent[0]} (1 of the model's 100 training patients lacked "
            "it): predicted as for a patient without it") in out, out
    assert "--roi-map" in out and f"note: patient synth_000 lacks {absent[0]}" not in out
    # 40 of 100 (>= 5 %): may be missing, a note as before
    model = _with_space(base, work / "m2.pt", absent_counts={absent[0]: 40, **others}, absent_patients=100)
    out = " ".join(ok(cli("predict", "--model", model, "--data", src, "--out", work / "o2", "--format",
                          "cache", "--no-progress")).split())
    assert f"note: patient synth_000 lacks {absent[0]}" in out, out
    assert "warning: patient synth_000 lacks" not in out, out  # (a 1-step model's dose is warned of)
    # a model file with only the list (recorded before the counts): a note, as before
    model = _with_space(base, work / "m3.pt", absent_counts=None, absent_patients=None)
    out = " ".join(ok(cli("predict", "--model", model, "--data", src, "--out", work / "o3", "--format",
                          "cache", "--no-progress")).split())
    assert f"note: patient synth_000 lacks {absent[0]}" in out, out
    assert "warning: patient synth_000 lacks" not in out, out  # (a 1-step model's dose is warned of)


def test_predict_accepts_a_patient_lacking_only_rois_training_patients_lacked(base, work):
    absent = _absent_in_training(base)
    src = _clinic_like(base, work / "src", drop=(absent[0],))
    out = ok(cli("predict", "--model", base / "run", "--data", src, "--out", work / "o", "--format", "cache",
                 "--no-progress"))
    assert f"note: patient synth_000 lacks {absent[0]}" in " ".join(out.split()), out
    assert "--allow-missing-rois" not in out and "error" not in out


@pytest.mark.parametrize("flag", [False, True])
def test_predict_refuses_a_patient_without_any_of_the_models_targets(base, work, flag):
    src = _clinic_like(base, work / "src", drop=("PTV56", "PTV63", "PTV70"))
    with unchanged(work):
        text = fails(cli("predict", "--model", base / "run", "--data", src, "--out", work / "o",
                         "--no-progress", *(["--allow-missing-rois"] if flag else [])),
                     "patient synth_000 has none of the model's targets (PTV56 (56 Gy), PTV63 (63 Gy), "
                     "PTV70 (70 Gy)); it has no target at all")
    assert "--allow-missing-rois" not in text


def test_predict_refuses_a_patient_lacking_every_roi_without_the_flags_hint(base, work):
    from dosepred.io.cache import Cache

    names = Cache.open(base / "cache").roi_set.names
    src = _clinic_like(base, work / "src", drop=tuple(names), extra_target="GTV")
    with unchanged(work):
        text = fails(cli("predict", "--model", base / "run", "--data", src, "--out", work / "o",
                         "--no-progress"),
                     "has none of the model's targets", "its own targets are GTV (66 Gy)")
    assert "--allow-missing-rois" not in text


def test_predict_needs_the_flag_for_an_roi_every_training_patient_had(base, work):
    absent = _absent_in_training(base)
    always = next(n for n in ("Brainstem", "SpinalCord", "Larynx") if n not in absent)
    src = _clinic_like(base, work / "src", drop=(always,))
    with unchanged(work):
        fails(cli("predict", "--model", base / "run", "--data", src, "--out", work / "o", "--no-progress"),
              f"lacks {always}, which every patient the model was trained on had", "--allow-missing-rois")
    out = ok(cli("predict", "--model", base / "run", "--data", src, "--out", work / "o", "--no-progress",
                 "--allow-missing-rois"))
    assert f"warning: patient synth_000 lacks the model's ROIs {always}" in " ".join(out.split())


def test_predict_refuses_a_target_the_model_does_not_know(base, work):
    src = _clinic_like(base, work / "src", extra_target="PTV66")
    with unchanged(work):
        fails(cli("predict", "--model", base / "run", "--data", src, "--out", work / "o", "--no-progress"),
              "patient synth_000: its target PTV66 (66 Gy) is not among the model's", "would ignore it",
              "--allow-missing-rois")


# ---------------------------------------------------------------------------- OS errors, empty files

READ_ONLY = Path("/sys/dosepred-bad-input-test")  # a read-only file system, even for root


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs /sys")
@pytest.mark.parametrize("cmd", [
    lambda b, o: ("data", "synth", "--patients", "1", "--size", "12", "--out", o),
    lambda b, o: ("predict", "--model", b / "run", "--data", b / "cache", "--out", o),
    lambda b, o: ("train", "--data", b / "cache", "--out", o, "--epochs", "1", "--patch", "16"),
    lambda b, o: ("evaluate", "--reference", b / "okbp", "--prediction", b / "pred", "--json", o / "r.json"),
], ids=["synth", "predict", "train", "evaluate-json"])
def test_read_only_out(base, cmd):
    fails(cli(*cmd(base, READ_ONLY)), str(READ_ONLY))


@pytest.mark.parametrize("content, needle", [
    (b"", "empty (0 bytes"), (b"PK\x03\x04 truncated", "truncated or corrupted"), (b"hello", "not a")])
def test_predict_with_a_broken_checkpoint(base, work, content, needle):
    (work / "m.pt").write_bytes(content)
    with unchanged(work):
        text = fails(cli("predict", "--model", work / "m.pt", "--data", base / "cache", "--out", work / "o"),
                     "m.pt", needle)
    assert "weights_only" not in text and "IndexError" not in text


def test_malicious_checkpoint_never_runs_and_no_unsafe_advice(base, work):
    import pickle

    flag = work / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {flag}",))

    torch.save({"format": "dosepred-checkpoint", "x": Evil()}, work / "evil.pt", pickle_module=pickle)
    with unchanged(work):
        text = fails(cli("predict", "--model", work / "evil.pt", "--data", base / "cache", "--out",
                         work / "o"), "evil.pt")
    assert "weights_only" not in text and "False" not in text and not flag.exists()


def _resumable(base: Path, run: Path, stop_after: int, epochs: int = 3) -> None:
    train(TrainConfig(data=str(base / "cache"), out=str(run), loss="mae", epochs=epochs, steps_per_epoch=2,
                      seed=4, stop_after=stop_after, **TINY))


@pytest.mark.parametrize("content, needle", [(b"{ not json", "not a readable training config"),
                                             (b"[1, 2]", "a training config is a JSON object"),
                                             (b"\xff\xfe", "not a readable training config")])
def test_resume_with_unreadable_config(base, work, content, needle):
    run = work / "run"
    _resumable(base, run, 1, epochs=2)
    (run / "config.json").write_bytes(content)
    with unchanged(work):
        fails(cli("train", "--out", run, "--resume", "--no-progress"), str(run / "config.json"), needle)


@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_resume_falls_back_to_prev_and_stays_exact(base, work, damage):
    full, cut = work / "full", work / "cut"
    _resumable(base, full, 3)
    _resumable(base, cut, 2)  # as if killed after epoch 2: last.pt = epoch 2, prev.pt = epoch 1
    assert (cut / "checkpoints" / "prev.pt").is_file()
    last = cut / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "missing":  # e.g. deleted by hand
        last.unlink()
    else:
        last.write_bytes(b"" if damage == "empty" else data[: len(data) // 3])
    out = ok(cli("train", "--out", cut, "--resume", "--stop-after", "3", "--threads", "1", "--no-progress"))
    assert "warning: --resume:" in out and "last.pt" in out and "prev.pt" in out
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_without_a_readable_checkpoint(base, work):
    run = work / "run"
    _resumable(base, run, 1, epochs=2)  # only last.pt (no prev.pt yet)
    assert not (run / "checkpoints" / "prev.pt").exists()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    with unchanged(work):
        fails(cli("train", "--out", run, "--resume", "--no-progress"), "last.pt", "empty", "no prev.pt")


@pytest.mark.parametrize("what", ["dataset.json", "npz"])
def test_damaged_cache_files(base, work, what):
    import shutil

    cache = work / "cache"
    shutil.copytree(base / "cache", cache)
    target = cache / "dataset.json" if what == "dataset.json" else next(cache.glob("*.npz"))
    target.write_bytes(b"")
    with unchanged(work):
        fails(cli("predict", "--model", base / "run", "--data", cache, "--out", work / "o"), target.name)


def test_missing_inputs(base, work):
    with unchanged(work):
        fails(cli("evaluate", "--reference", base / "okbp", "--prediction", work / "nope"),
              str(work / "nope"))
        fails(cli("data", "import-openkbp", work / "nope", "--out", work / "c"), str(work / "nope"))
        fails(cli("predict", "--model", work / "nope.pt", "--data", base / "cache", "--out", work / "o"),
              "nope.pt")


@pytest.mark.parametrize("cmd", [
    lambda b, n, w: ("predict", "--model", b / "run", "--data", n, "--out", w / "o", "--no-progress"),
    lambda b, n, w: ("baseline", "--data", n, "--out", w / "o", "--no-progress"),
    lambda b, n, w: ("train", "--data", n, "--out", w / "run", "--epochs", "1", "--no-progress"),
    lambda b, n, w: ("train", "--data", b / "cache", "--val", n, "--out", w / "run", "--epochs", "1",
                     "--no-progress"),
    lambda b, n, w: ("data", "export-nifti", n, "--out", w / "o", "--no-progress"),
    lambda b, n, w: ("data", "inspect", n),
    lambda b, n, w: ("calibrate", "--model", b / "run", "--data", n, "--no-progress"),
    lambda b, n, w: ("qa", "--model", b / "run", "--plans", n, "--out", w / "o", "--no-progress"),
    lambda b, n, w: ("evaluate", "--reference", n, "--prediction", b / "pred", "--no-progress"),
    lambda b, n, w: ("data", "unpack", n, "--out", w / "o", "--no-progress"),
], ids=["predict", "baseline", "train", "train-val", "export-nifti", "inspect", "calibrate", "qa",
        "evaluate", "unpack"])
def test_a_missing_input_folder_does_not_exist(base, work, cmd):
    """A mistyped --data says the folder does not exist (not that it is no cache or DICOM folder)."""
    nope = work / "no-such-folder"
    with unchanged(work):
        text = fails(cli(*cmd(base, nope, work)), f"{nope} does not exist")
    assert "neither" not in text and "is not a dosepred cache" not in text


def test_calibrate_says_it_needs_12_patients_before_predicting_them(base, work, monkeypatch):
    import dosepred.predict

    def never(*a, **k):
        raise RuntimeError("predicted a patient before counting them")
    monkeypatch.setattr(dosepred.predict, "predict_dose", never)
    with unchanged(work):
        fails(cli("calibrate", "--model", base / "run", "--data", base / "okbp", "--no-progress"),
              str(base / "okbp"), "2 patient(s) cannot calibrate intervals; at least 12 patients")


def test_the_calibrate_api_counts_the_patients_before_predicting_them(base, work, monkeypatch):
    """The Python API predicted every patient (minutes on a clinic's grid) before refusing too few."""
    import dosepred.predict
    from dosepred.qa.calibrating import CalibrationError, calibrate

    def never(*a, **k):
        raise RuntimeError("predicted a patient before counting them")
    monkeypatch.setattr(dosepred.predict, "predict_dose", never)
    with unchanged(work), pytest.raises(CalibrationError, match="2 patient.s. cannot calibrate intervals"):
        calibrate(base / "run", base / "okbp", "openkbp-clinical")


# -------------------------------------------------------------------------------------- messages

def test_warnings_are_not_errors(base, work):
    src = work / "src"
    tiny_openkbp_patient(src / "pt_1", shift=1)
    (src / "pt_1" / "Tumour.csv").write_text(",data\n11,\n")
    out = ok(cli("data", "import-openkbp", src, "--out", work / "c"))
    assert "warning: patient pt_1:" in out and "Tumour.csv" in out and "error:" not in out


def _sub(*args: str, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(SRC), **env}
    return subprocess.run([sys.executable, "-m", "dosepred", *args], capture_output=True, text=True, env=e,
                          timeout=120)


def test_version_help_alias_and_clean_help():
    r = _sub("--version")
    assert r.returncode == 0 and r.stdout.startswith("dosepred ")
    r = _sub("data", "import-openkbp", "-h")
    assert r.returncode == 0 and "Usage:" in r.stdout and "--overwrite" in r.stdout
    assert "<bool>" not in r.stdout and "{src}" not in r.stdout and "SRC" in r.stdout


def test_errors_have_no_colour_without_terminal_or_with_no_color(work):
    for env in ({}, {"NO_COLOR": "1"}):
        r = _sub("data", "import-openkbp", str(work / "nope"), "--out", str(work / "c"), **env)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and "\x1b[" not in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_kill_9_then_resume_is_exact_with_rotation(base, work):
    """kill -9 at any moment of a run (here: once prev.pt exists) and --resume end bit-exact."""
    import signal
    import time

    args = ["train", "--data", str(base / "cache"), "--loss", "mae", "--epochs", "12", "--steps-per-epoch",
            "2", "--patch", "16", "--base", "4", "--levels", "2", "--threads", "1", "--device", "cpu",
            "--seed", "2", "--no-progress"]
    ok(cli(*args, "--out", work / "full"))
    run = work / "killed"
    e = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dosepred", *args, "--out", str(run)], env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and not (run / "checkpoints" / "prev.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    ok(cli("train", "--out", run, "--resume", "--threads", "1", "--no-progress"))
    a = torch.load(work / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 12 and a["global_step"] == b["global_step"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(),
                                                 b["optimizer"]["state"][0].values(), strict=True))


def test_piped_tables_are_not_cut_at_80_columns(base, work):
    """`dosepred data inspect CACHE | less`: with output not a terminal rich assumed 80 columns and cut
    the table (the title's path wrapped, cells ellipsised); now the table keeps every column whole."""
    import shutil

    deep = work / ("a-cache-folder-with-a-long-descriptive-name-" + "x" * 60)
    shutil.copytree(base / "cache", deep)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-m", "dosepred", "data", "inspect", str(deep)], capture_output=True,
                       text=True, env={**env, "PYTHONPATH": str(SRC)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert any(str(deep) in line for line in r.stdout.splitlines()), r.stdout
    assert "…" not in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("│ synth_00")]
    assert len(rows) == 2 and all(row.rstrip().endswith("│") and "yes" in row for row in rows), r.stdout


def test_resume_of_a_finished_run_says_it_is_finished(base, work):
    import shutil

    shutil.copytree(base / "run", work / "run")
    with unchanged(work):
        fails(cli("train", "--out", work / "run", "--resume", "--no-progress"),
              str(work / "run"), "the run is finished (epoch 1 of 1 done)", "--epochs larger than 1")
    out = ok(cli("train", "--out", work / "run", "--resume", "--epochs", "2", "--threads", "1",
                 "--no-progress"))
    assert "epochs 2..2" in out


def test_resume_after_an_interrupted_rotation_leaves_no_stray_file(base, work):
    """Ctrl-C (or kill -9) between the rotation of last.pt to prev.pt (a hard link) and the save of the
    new last.pt leaves prev.pt and last.pt one file. The next save rotated it again: renaming a hard
    link onto the same file does nothing, so `.prev.pt.tmp-XXXX` (a whole checkpoint) was left in
    checkpoints/ at every such resume. Now prev.pt keeps that checkpoint and nothing else is left."""
    import shutil

    shutil.copytree(base / "run", work / "run")
    ck = work / "run" / "checkpoints"
    (ck / "prev.pt").unlink(missing_ok=True)
    os.link(ck / "last.pt", ck / "prev.pt")  # the state the interruption leaves
    before = (ck / "last.pt").read_bytes()
    ok(cli("train", "--out", work / "run", "--resume", "--epochs", "2", "--threads", "1", "--no-progress"))
    assert sorted(f.name for f in ck.iterdir()) == ["best.pt", "last.pt", "prev.pt"]
    assert (ck / "prev.pt").read_bytes() == before  # epoch 1, the checkpoint before the last
    assert torch.load(ck / "last.pt", weights_only=True)["epoch"] == 2


def test_ctrl_c_during_train_says_so_and_how_to_continue(base, work):
    """SIGINT (Ctrl-C) once the run has a checkpoint: exit code 130 and a last line that says it was
    interrupted and how to continue (typer used to exit 130 without a word, 'done' last on screen)."""
    import signal
    import time

    run = work / "run"
    args = ["train", "--data", str(base / "cache"), "--out", str(run), "--epochs", "500", "--steps-per-epoch",
            "2", "--patch", "16", "--base", "4", "--levels", "2", "--threads", "1", "--no-progress"]
    e = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    # a suite started in the background (`cmd &`) inherits SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child Ctrl-C's default disposition, as a terminal would
    proc = subprocess.Popen([sys.executable, "-m", "dosepred", *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600  # a loaded machine may take long to import torch and start
    while proc.poll() is None and not (run / "checkpoints" / "prev.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert (run / "checkpoints" / "prev.pt").exists(), "no epoch ended within 10 minutes"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    last = err.strip().splitlines()[-1]
    assert last == f"error: interrupted (Ctrl-C): {run} keeps its last finished epoch; continue with " \
                   f"`dosepred train --out {run} --resume`", err
    assert "Traceback" not in err


def test_ctrl_c_in_any_command_ends_with_a_line_that_says_so(base, work, monkeypatch):
    import dosepred.workflows

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(dosepred.workflows, "predict_folder", interrupted)
    with unchanged(work):
        fails(cli("predict", "--model", base / "run", "--data", base / "cache", "--out", work / "o",
                  "--no-progress"), "error: interrupted (Ctrl-C)", code=130)


def test_ctrl_c_that_a_library_replaces_with_its_own_error_is_still_a_ctrl_c(base, work, monkeypatch):
    """A library's clean-up may raise its own error while a Ctrl-C unwinds it (torch.save's zip writer
    does): one line and exit code 130, not "a bug in dosepred"."""
    import dosepred.workflows

    def interrupted(*a, **k):
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("unexpected pos 76928 vs 76816")
    monkeypatch.setattr(dosepred.workflows, "predict_folder", interrupted)
    with unchanged(work):
        out = fails(cli("predict", "--model", base / "run", "--data", base / "cache", "--out", work / "o",
                        "--no-progress"), "error: interrupted (Ctrl-C)", code=130)
    assert "bug" not in out


def test_predict_leaves_out_an_unprescribed_target_and_other_structures(base, work):
    """A clinic's export also holds a GTV/CTV (targets without a prescription) and other structures the
    model does not use: predicted without them, a note naming them (refused as a different ROI set
    before)."""
    src = _clinic_like(base, work / "src", extra_target="GTV", extra_rx=None)
    out = ok(cli("predict", "--model", base / "run", "--data", src, "--out", work / "o", "--format", "cache",
                 "--no-progress"))
    assert "note: patient synth_000: its ROIs GTV are not used by the model" in " ".join(out.split()), out


# ------------------------------------------------------------------------------------- ROI maps

@pytest.fixture(scope="module")
def dicom_export(base, tmp_path_factory) -> Path:
    """The first synthetic patient written as DICOM (CT, RTSTRUCT, RTDOSE), for --roi-map cases."""
    from dosepred.io import dicom
    from dosepred.io.cache import Cache

    root = tmp_path_factory.mktemp("roi-map")
    dicom.write_dicom(next(iter(Cache.open(base / "cache"))), root / "dcm")
    return root / "dcm"


@pytest.mark.parametrize("content, needles", [
    # a prescription that is not a number: was "could not convert string to float: '70Gy'"
    ('{"PTV70": {"name": "PTV70", "prescription": "70Gy"}}',
     ["m.json", "prescription of 'PTV70'", "'70Gy'", "a number of Gy"]),
    ('{"names": {}, "prescriptions": {"PTV70": "seventy"}}',
     ["m.json", "prescription of 'PTV70'", "'seventy'"]),
    # not finite / cGy written as Gy: was imported as "PTV70 target inf Gy" / 7000 Gy
    ('{"PTV70": {"name": "PTV70", "prescription": Infinity}}', ["m.json", "prescription of 'PTV70'", "inf"]),
    ('{"PTV70": {"name": "PTV70", "prescription": 7000}}', ["m.json", "prescription of 'PTV70'", "7000"]),
    # a binary file given as the map (an RTSTRUCT): was the bare 'utf-8' codec error
    (b"\x00\x01DICM\xd2\xff", ["m.json", "not UTF-8"]),
    # a folder given as the map: was "does not exist"
    (None, ["m.json", "is a folder"]),
])
def test_import_dicom_rejects_a_roi_map_with_mistakes(dicom_export, work, content, needles):
    m = work / "m.json"
    if content is None:
        m.mkdir()
    elif isinstance(content, bytes):
        m.write_bytes(content)
    else:
        m.write_text(content)
    with unchanged(work):
        text = fails(cli("data", "import-dicom", dicom_export, "--roi-map", m, "--out", work / "c",
                         "--no-progress"), *needles)
    assert "does not exist" not in text


def test_an_out_that_is_a_link_is_named_a_link(base, work):
    """`--out out` where out is a symbolic link to an empty folder (scratch space): it is not replaced
    without --overwrite, and the message says it is a link and to give the folder it points to (it
    said "exists and is a non-empty folder" of an empty one)."""
    (work / "scratch").mkdir()
    (work / "out").symlink_to(work / "scratch", target_is_directory=True)
    with unchanged(work):
        text = fails(cli("data", "synth", "--patients", "1", "--size", "12", "--out", work / "out",
                         "--no-progress"), f"{work / 'out'}: --out is a symbolic link", str(work / "scratch"))
    assert "non-empty folder" not in text
    ok(cli("data", "synth", "--patients", "1", "--size", "12", "--out", work / "scratch", "--no-progress"))
    assert (work / "scratch" / "dataset.json").is_file()


def test_import_dicom_warns_of_roi_map_names_that_match_no_roi(dicom_export, work):
    """A misspelt ROI map key ('PTV_7O' for the export's 'PTV70') maps nothing: the import says so,
    naming the map and the nearest ROI name (it was silently unused, and predict later only said
    'lacks PTV70' without pointing at the map)."""
    m = work / "m.json"
    m.write_text('{"PTV_7O": "PTV70", "Brainstem": "Brainstem"}')
    text = ok(cli("data", "import-dicom", dicom_export, "--roi-map", m, "--out", work / "c", "--no-progress"))
    assert f"ROI map {m}: 1 name(s) matched no ROI" in text and "'PTV_7O' (did you mean 'PTV70'?)" in text
    assert "'Brainstem'" not in text.split("matched no ROI")[1].splitlines()[0]


def test_an_empty_value_is_refused_not_read_as_the_current_folder(base, work):
    """`--data ""` was read as "." (the current folder: a prediction of whatever lies there, an output
    inside it): one error naming the option, exit 2, nothing written; the same for `--opt=` and an
    empty positional argument."""
    out = work / "o"
    for args, what in [(("predict", "--model", str(base / "run"), "--data", "", "--out", str(out)),
                        '--data is given an empty value ("")'),
                       (("predict", "--model=", "--data", str(base / "cache"), "--out", str(out)),
                        "--model is given an empty value (--model=)"),
                       (("data", "inspect", ""), 'argument 3 (after inspect) is empty ("")')]:
        r = _sub(*args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == f"error: {what}; give a value" + (
            " or leave the option out" if what.startswith("--") else ""), r.stderr
        assert not out.exists()


def test_ctrl_c_while_the_command_line_starts_is_one_line():
    """Ctrl-C while typer and the command modules load (before any command runs) ends like one during a
    command: exit 130, one line, no traceback. The interrupt is raised deterministically by the import."""
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'typer' or name.startswith('typer.'):\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "sys.argv = ['dosepred', '--version']\n"
            "from dosepred.cli import main\n"
            "main()\n")
    e = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "error: interrupted (Ctrl-C) while starting; nothing was done", r.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_mid_output_leaves_nothing_behind(tmp_path, sig):
    """SIGTERM (``kill``, ``timeout``, a batch system's time limit, ``docker stop``) or SIGHUP (the terminal
    closed) while a command fills its output: Python's default ended the process at once, without a word,
    and left the half-written temporary folder ``.OUT.tmp-XXXX`` beside --out. Now it unwinds like Ctrl-C:
    nothing is left, one line names the signal, exit code 128 + its number. The signal is sent by the
    command itself once the first patient is in the output (deterministic)."""
    import signal

    code = ("import os, signal, sys, time\n"
            "import dosepred.synth as s\n"
            "real = s.iter_cohort\n"
            "def iter_cohort(*a, **k):\n"
            "    for i, p in enumerate(real(*a, **k)):\n"
            "        if i == 1:\n"
            f"            os.kill(os.getpid(), signal.{sig})\n"
            "            time.sleep(30)\n"
            "        yield p\n"
            "s.iter_cohort = iter_cohort\n"
            f"sys.argv = ['dosepred', 'data', 'synth', '--patients', '3', '--size', '12', '--out', "
            f"{str(tmp_path / 'out')!r}, '--no-progress']\n"
            "from dosepred.cli import main\n"
            "main()\n")
    e = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120,
                       preexec_fn=lambda: signal.signal(getattr(signal, sig), signal.SIG_DFL))
    assert r.returncode == 128 + getattr(signal, sig), (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines()[-1] == \
        f"error: interrupted ({sig}); outputs not finished are left as they were", r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@pytest.mark.parametrize("old", [True, False], ids=["overwrite-old-run", "fresh"])
def test_ctrl_c_before_the_first_epoch_leaves_out_as_it_was(base, work, monkeypatch, old):
    """Ctrl-C (or SIGTERM) of a fresh ``train`` before its first epoch is saved: the new run has nothing to
    resume, yet it was kept and the old run that ``--overwrite`` had set aside was deleted (a finished run,
    hours of work, lost to a Ctrl-C seconds after a mistyped --overwrite; an --out without checkpoints left
    behind). Now the old run is restored, a fresh --out is removed, and the line says OUT is as it was."""
    import shutil

    import dosepred.training

    run = work / "run"
    if old:
        shutil.copytree(base / "run", run)

    def interrupted(cfg, **k):  # the run's files are written, no epoch has ended
        (Path(cfg.out) / "config.json").write_text("{}")
        (Path(cfg.out) / "tb").mkdir()
        raise KeyboardInterrupt
    monkeypatch.setattr(dosepred.training, "train", interrupted)
    with unchanged(work):
        text = fails(cli("train", "--data", base / "cache", "--out", run, "--overwrite", "--epochs", "2",
                         "--patch", "16", "--base", "4", "--levels", "2", "--threads", "1", "--no-progress"),
                     code=130)
    assert text.strip().splitlines()[-1] == ("error: interrupted (Ctrl-C) before the first epoch ended: "
                                             f"nothing to resume; {run} is left as it was"), text
    assert sorted(p.name for p in work.iterdir()) == (["run"] if old else [])


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
@pytest.mark.parametrize("how", ["resume", "fresh-into-empty", "overwrite"])
def test_a_run_being_trained_is_not_written_by_a_second_command(base, work, how):
    """Two trainings given one --out at once (a job submitted twice, a --resume of a run that is still
    training): the second set the first's folder aside (it was still empty while the first loaded its
    data) or trained into it, and both ended 'done' with one run's checkpoints and config, the other's
    prev.pt, metrics.csv rows of both under two headers. Now a command writing a run holds a lock on
    it (flock, gone with the process) and a second one is refused, the run untouched. The lock of the
    first command is taken here by hand."""
    import fcntl
    import shutil

    run = work / "run"
    if how == "fresh-into-empty":
        run.mkdir()  # the first command's folder before its files are written
    else:
        shutil.copytree(base / "run", run)
    args = {"resume": ["--resume", "--epochs", "2"],
            "fresh-into-empty": ["--data", base / "cache"],
            "overwrite": ["--data", base / "cache", "--overwrite"]}[how]
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with unchanged(work):
            fails(cli("train", "--out", run, *args, "--epochs", "2", "--patch", "16", "--base", "4",
                      "--levels", "2", "--threads", "1", "--no-progress"),
                  f"error: {run}: --out is being written by another dosepred command")
    finally:
        os.close(fd)
    if how == "resume":  # once the other command has ended, the run resumes
        ok(cli("train", "--out", run, "--resume", "--epochs", "2", "--threads", "1", "--no-progress"))


def test_a_folder_whose_name_is_not_utf8_is_written_like_any_other(base, tmp_path):
    """A folder named in Latin-1 (an old share, a USB disk: b'Patient\\xe9'), which Python reads with
    surrogate escapes: `train` ended in 'internal error (UnicodeEncodeError ...)' (TensorBoard takes only
    UTF-8 names), so did `export-model` and `ensemble` (the README names the run), and any command that
    printed the path on a terminal whose output is strict UTF-8 (PYTHONIOENCODING below, as a desktop's
    en_US.UTF-8 locale). Now the run trains (without a TensorBoard log, said once), the README keeps the
    name's original bytes, and the path is printed as those bytes."""
    import shutil

    bad = tmp_path / os.fsdecode(b"Patient\xe9")
    try:
        bad.mkdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    e = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8:strict"}

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "dosepred", *map(os.fsencode, args)], capture_output=True,
                           env=e, timeout=300)
        assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
        return r.stdout

    out = run("train", "--data", base / "cache", "--out", bad / "run", "--epochs", "1", "--steps-per-epoch",
              "1", "--patch", "16", "--base", "4", "--levels", "2", "--threads", "1", "--no-progress")
    flat = out.replace(b"\n", b"")  # the console wraps the long path (longer under pytest-xdist's workers)
    assert b"no TensorBoard log" in out and os.fsencode(bad / "run") in flat
    assert (bad / "run" / "checkpoints" / "last.pt").is_file()
    shutil.copytree(base / "run", bad / "copy")
    m = bad / os.fsdecode(b"m\xe9")
    run("export-model", bad / "copy", "--out", m)
    assert b"--model 'm\xe9' " in (m / "README.md").read_bytes()  # "Use: dosepred predict ..." (its name)
    run("ensemble", bad / "copy", bad / "run", "--out", bad / "ens")
    assert sorted(p.name for p in (bad / "ens").iterdir()) == ["README.md", "ensemble.json"]
