"""--roi-map on the commands that read a DICOM source directly (predict, evaluate --reference, calibrate,
qa; issue 27): a clinic's folder whose ROI names need the map gives what importing it with the map and
using the cache gives. For any other kind of source a map is one clear error."""

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.inference import InferenceOptions

MODEL = Path(__file__).resolve().parents[1] / "models" / "openkbp-mae-cdm"
#: the clinic's names of two of the model's ROIs: neither is recognised without the map
CLINIC_NAMES = {"PTV70": "PTV_High", "SpinalCord": "Myelon"}
ROI_MAP = {"PTV_High": {"name": "PTV70", "kind": "target", "prescription": 70}, "Myelon": "SpinalCord"}

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def clinic(sample_dir, tmp_path_factory):
    """pt_66 written as DICOM with the clinic's names, its ROI map, the same folder imported with the map
    (the cache the docs used to say to make first), and a copy of the released model."""
    from dosepred.io import load_patients
    from dosepred.io.dicom import write_dicom

    root = tmp_path_factory.mktemp("clinic")
    p = next(iter(load_patients(sample_dir, ids=["pt_66"])))
    folder = write_dicom(p, root / "dicom")
    rs_path = next(f for f in folder.iterdir() if f.name.startswith("RS"))
    ds = pydicom.dcmread(rs_path)
    for r in ds.StructureSetROISequence:
        r.ROIName = CLINIC_NAMES.get(r.ROIName, r.ROIName)
    for o in ds.RTROIObservationsSequence:
        if "ROIObservationDescription" in o:  # where dosepred's writer keeps the canonical name
            del o.ROIObservationDescription
    ds.save_as(rs_path)
    roi_map = root / "map.json"
    roi_map.write_text(json.dumps(ROI_MAP))
    r = run("data", "import-dicom", root / "dicom", "--roi-map", roi_map, "--out", root / "imported",
            "--no-progress")
    assert r.exit_code == 0, r.output
    model = root / "model"
    shutil.copytree(MODEL, model)
    return root, roi_map, model


def test_the_clinic_s_names_need_the_map(clinic):
    from dosepred.io.source import open_source

    root, roi_map, _ = clinic
    plain = open_source(root / "dicom")
    assert "PTV70" not in plain.roi_set and "PTV_High" in plain.roi_set
    mapped = open_source(root / "dicom", roi_map)
    assert {"PTV70", "SpinalCord"} <= set(mapped.roi_set.names) and "PTV_High" not in mapped.roi_set
    assert mapped.roi_set["PTV70"].prescription == 70


def test_predict_with_a_roi_map_predicts_the_imported_patient(clinic):
    """Without the map: one error naming the patient and its own targets; with it, the dose predicted
    from the imported cache (predict_dose on the patient the import wrote), bit for bit."""
    from dosepred.io.cache import Cache
    from dosepred.models.checkpoint import load_model
    from dosepred.predict import predict_dose

    root, roi_map, model = clinic
    r = run("predict", "--model", model, "--data", root / "dicom", "--out", root / "nomap", "--format",
            "cache", "--no-progress")
    assert r.exit_code == 2 and "patient pt_66" in r.output and "Traceback" not in r.output, r.output
    assert not (root / "nomap").exists()
    r = run("predict", "--model", model, "--data", root / "dicom", "--roi-map", roi_map, "--out",
            root / "pred", "--format", "cache", "--no-progress")
    assert r.exit_code == 0, r.output
    (p,) = list(Cache.open(root / "imported"))
    want = predict_dose(load_model(model), p, InferenceOptions(device="cpu"), warn=False)
    np.testing.assert_array_equal(Cache.open(root / "pred").load_dose("pt_66"), want)


def test_evaluate_a_dicom_reference_with_a_roi_map(clinic):
    """The scores of the DICOM reference read with the map are those of the imported cache."""
    root, roi_map, model = clinic
    if not (root / "pred").is_dir():
        pytest.skip("needs the prediction of the test above")
    for ref, extra, out in ((root / "dicom", ["--roi-map", roi_map], "dicom.json"),
                            (root / "imported", [], "cache.json")):
        r = run("evaluate", "--reference", ref, *extra, "--prediction", root / "pred", "--protocol",
                "openkbp-clinical", "--json", root / out, "--no-progress")
        assert r.exit_code == 0, r.output
    got, want = (json.loads((root / f).read_text()) for f in ("dicom.json", "cache.json"))
    assert got["patients"] == want["patients"] == ["pt_66"]
    assert got["dose_score"] == pytest.approx(want["dose_score"], abs=1e-6)
    rois = got["per_patient"][0]["rois"]
    assert {"PTV70", "SpinalCord"} <= set(rois)
    for roi, v in want["per_patient"][0]["rois"].items():
        for metric, m in v["metrics"].items():
            assert rois[roi]["metrics"][metric]["ref"] == pytest.approx(m["ref"], abs=1e-4), (roi, metric)
            assert rois[roi]["metrics"][metric]["pred"] == pytest.approx(m["pred"], abs=1e-4), (roi, metric)


def test_qa_of_dicom_plans_with_a_roi_map(clinic):
    """Without the map QA cannot check the plan (its PTV70 is unnamed); with it, the same verdicts as
    QA of the imported cache."""
    root, roi_map, model = clinic
    r = run("qa", "--model", model, "--plans", root / "dicom", "--out", root / "qa-nomap", "--no-report",
            "--no-progress")
    assert r.exit_code == 2 and "pt_66" in r.output and "Traceback" not in r.output, r.output
    for plans, extra, out in ((root / "dicom", ["--roi-map", roi_map], "qa-dicom"),
                              (root / "imported", [], "qa-cache")):
        r = run("qa", "--model", model, "--plans", plans, *extra, "--out", root / out, "--no-report",
                "--no-progress")
        assert r.exit_code == 0, r.output
    got, want = (json.loads((root / d / "qa.json").read_text())["patients"] for d in ("qa-dicom", "qa-cache"))
    crit = {(c["roi"], c["metric"]): c for c in got[0]["criteria"]}
    assert ("PTV70", "D99%") in crit and ("SpinalCord", "D0.1cc") in crit
    assert [{k: v for k, v in c.items() if k != "seconds"} for c in got[0]["criteria"]] == \
        [{k: v for k, v in c.items() if k != "seconds"} for c in want[0]["criteria"]]


def test_calibrate_reads_a_dicom_folder_with_its_roi_map(clinic):
    """calibrate's units of the DICOM folder read with the map are those of the imported cache (the
    predictions read from `predict --format cache`, made as QA predicts)."""
    from dosepred.protocol import load_protocol
    from dosepred.qa.calibrating import collect_units

    root, roi_map, model = clinic
    if not (root / "pred").is_dir():
        pytest.skip("needs the prediction of the test above")
    proto = load_protocol("openkbp-clinical")
    got, ids = collect_units(model, root / "dicom", proto, root / "pred", roi_map=roi_map)
    want, _ = collect_units(model, root / "imported", proto, root / "pred")
    assert ids == ["pt_66"] and {u.criterion for u in got} >= {"PTV70 D99%", "SpinalCord D0.1cc"}
    assert [u.criterion for u in got] == [u.criterion for u in want]
    assert [v for u in got for v in (u.plan, u.predicted)] == \
        pytest.approx([v for u in want for v in (u.plan, u.predicted)])
    # the command takes the flag (and counts the patients with it before predicting any)
    r = run("calibrate", "--model", model, "--data", root / "dicom", "--roi-map", roi_map, "--overwrite",
            "--no-progress")
    assert r.exit_code == 2 and "1 patient(s) cannot calibrate" in r.output, r.output


@pytest.mark.parametrize("command", ["predict", "evaluate", "calibrate", "qa"])
def test_a_roi_map_for_a_source_that_is_not_dicom_is_one_error(clinic, command):
    root, roi_map, model = clinic
    cache = root / "imported"
    args = {"predict": ["predict", "--model", model, "--data", cache, "--out", root / "x"],
            "evaluate": ["evaluate", "--reference", cache, "--prediction", cache],
            "calibrate": ["calibrate", "--model", model, "--data", cache, "--overwrite"],
            "qa": ["qa", "--model", model, "--plans", cache, "--out", root / "x"]}[command]
    r = run(*args, "--roi-map", roi_map, "--no-progress")
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert text.startswith(f"error: {cache}: an ROI map (--roi-map) applies to DICOM sources only, and this "
                           "is a dosepred cache"), text
    assert len(lines) <= 2 and not (root / "x").exists()


def test_every_command_and_function_gives_the_one_roi_map_error(clinic, sample_dir, tmp_path):
    """One rule (:func:`dosepred.io.source.check_roi_map`), one line: a map given with an OpenKBP
    folder is the same error whichever command or function gets it, before anything is written.
    Before, importing through the API (`workflows.import_patients(..., "openkbp", roi_map)`) ignored
    the map silently and wrote the cache."""
    from dosepred import evaluation, workflows
    from dosepred.io.source import SourceError

    root, roi_map, model = clinic
    src = sample_dir
    line = (f"{src}: an ROI map (--roi-map) applies to DICOM sources only, and this is an OpenKBP folder, "
            "whose ROI names are fixed (give the DICOM folder, or leave out the map)")
    out = tmp_path / "x"
    commands = [["predict", "--model", model, "--data", src, "--out", out],
                ["evaluate", "--reference", src, "--prediction", root / "imported"],
                ["calibrate", "--model", model, "--data", src, "--overwrite"],
                ["qa", "--model", model, "--plans", src, "--out", out]]
    for args in commands:
        r = run(*args, "--roi-map", roi_map, "--no-progress")
        errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        said = " ".join(r.output[r.output.index("error:"):].split())
        assert len(errors) == 1 and said == f"error: {line}", (args[0], r.output)
    ids = ["pt_66"]
    calls = [lambda: workflows.import_patients(src, out, "openkbp", roi_map),
             lambda: evaluation.match_predictions(src, root / "imported", roi_map),
             lambda: list(evaluation.iter_cases(src, root / "imported", ids, read_ahead=0, roi_map=roi_map)),
             lambda: list(evaluation.iter_pairs(src, root / "imported", ids, read_ahead=0, roi_map=roi_map)),
             lambda: list(evaluation.load_references(src, ids, roi_map=roi_map))]
    for call in calls:
        with pytest.raises(SourceError) as err:
            call()
        assert str(err.value) == line
    assert not out.exists()


@pytest.mark.parametrize("bad, message", [
    ({"PTV_High": {"name": "PTV70", "kind": "Target"}, "Myelon": "SpinalCord"},
     "kind of 'PTV70' must be target/oar/other, got 'Target'"),
    ({"PTV_High": {"kind": "target", "prescription": 70}}, "entry 'PTV_High' lacks 'name'"),
    ({"Myelon": 5}, "entry 'Myelon' must map to a name, null or an object, got 5"),
    ({"names": {"Myelon": "SpinalCord"}, "kinds": {"SpinalCord": "organ"}},
     "kind of 'SpinalCord' must be target/oar/other, got 'organ'"),
    ({"names": {"Myelon": "SpinalCord"}, "prescription": {"PTV70": 70}},
     "unknown keys ['prescription'] (expected names, kinds, prescriptions)"),
])
def test_a_malformed_roi_map_is_one_error_before_anything_is_read(clinic, tmp_path, bad, message):
    """An ROI map decides which contour is which ROI and of what kind (a target's kind decides how it is
    scored): a kind it cannot mean, an entry without a name or a misspelt key is one error naming the
    map and the entry, and nothing is imported."""
    root, _, _ = clinic
    m = tmp_path / "bad-map.json"
    m.write_text(json.dumps(bad))
    r = run("data", "import-dicom", root / "dicom", "--roi-map", m, "--out", tmp_path / "out",
            "--no-progress")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert " ".join(r.output.split()) == f"error: ROI map {m}: {message}"
    assert not (tmp_path / "out").exists()


def test_a_cohort_whose_rois_do_not_fit_one_bit_mask_is_named_with_the_remedy():
    """Two clinic patients of 40 ROIs each, 30 of them per-patient optimisation structures, hold 70
    different ROIs: more than a bit-mask volume holds. The import said only '70 ROIs exceed the bit-mask
    limit of 64' (no folder, no patient, no remedy); it now names the folder, the patient with the most,
    the ROIs only some patients have and the ROI map that drops them."""
    from dosepred.errors import InputError
    from dosepred.io.roi_names import Canonical, union_roi_set

    common = {f"OAR{k}": Canonical(f"OAR{k}", "oar") for k in range(10)}
    per = [{**common, **{f"opt{k}_p{i}": Canonical(f"opt{k}_p{i}", "other") for k in range(30)}}
           for i in range(2)]
    assert len({n for p in per for n in p}) == 70
    with pytest.raises(InputError) as e:
        union_roi_set(per, ["pt_a", "pt_b"], "/data/clinic")
    msg = str(e.value)
    assert msg.startswith("/data/clinic: the 2 patient(s) hold 70 different ROIs"), msg
    assert "patient pt_a: 40" in msg and "opt0_p0" in msg and "(60 in all)" in msg, msg
    assert '--roi-map MAP.json holding {"NAME": null' in msg, msg
    assert "\n" not in msg
    assert len(union_roi_set(per[:1], ["pt_a"], "/data/clinic")) == 40  # one patient fits
