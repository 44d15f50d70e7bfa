"""The possible-dose mask and the planned dose of a DICOM patient (dosepred.io.dicom.folder).

A prediction is written within the possible-dose mask, so a plan's dose is read as 0 Gy outside it, as
OpenKBP's reference doses are (a dose computed in air would otherwise count as error of any prediction,
the plan's own RTDOSE included), and a target or organ reaching past the mask is named.
Checked with the plan's own RTDOSE given as the prediction: it must score 0 on everything."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.io import dicom
from dosepred.patient import Patient
from test_dicom import N, make_patient


def _self_evaluation(folder, tmp_path):
    """``evaluate`` of the reference folder against a copy of its own RTDOSE: (result JSON, output)."""
    pred = tmp_path / "pred" / "pt_a"
    pred.mkdir(parents=True)
    shutil.copy(folder / "RD.dcm", pred / "RD.copy.dcm")
    proto = tmp_path / "proto.json"
    proto.write_text(json.dumps({"name": "t", "criteria": [
        {"roi": "PTV70", "metric": "D99%"}, {"roi": "PTV70", "metric": "D1%"},
        {"roi": "LeftParotid", "metric": "Dmean"}]}))
    out = tmp_path / "e.json"
    res = CliRunner().invoke(app, ["evaluate", "--reference", str(folder.parent), "--prediction",
                                   str(pred.parent), "--protocol", str(proto), "--json", str(out),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), " ".join(res.output.split())


def _metric_errors(result) -> list[float]:
    (pp,) = result["per_patient"]
    return [abs(m["ref"] - m["pred"]) for r in pp["rois"].values() for m in r["metrics"].values()]


def test_dose_computed_in_air_is_read_as_0_gy_there(tmp_path):
    p = make_patient()
    body = np.asarray(p.possible_dose_mask)
    air = p.dose + np.float32(2.0)  # 2 Gy everywhere, air included (a planning system's dose grid)
    folder = dicom.write_dicom(p, tmp_path / "ref", dose=air)
    # by hand: the share of the planned dose outside the body
    share = 100.0 * float(air[~body].sum(dtype=np.float64)) / float(air.sum(dtype=np.float64))
    assert share > 5
    with pytest.warns(dicom.DicomWarning, match=rf"patient pt_a: {share:.1f} % of the planned dose \(RTDOSE "
                                                r"\S*RD\.dcm\) lies outside the possible-dose mask"):
        (q,) = dicom.read_dicom_folder(folder.parent)
    assert np.array_equal(q.possible_dose_mask, body)
    assert float(np.abs(q.dose[~body]).max()) == 0.0  # 0 Gy outside the mask, as a prediction is
    assert np.allclose(q.dose[body], air[body], atol=1e-3)  # and the plan's dose inside it
    assert abs(q.meta["dose_outside_mask_pct"] - share) < 0.01
    result, _ = _self_evaluation(folder, tmp_path)
    assert result["dose_score"] < 1e-6, result["dose_score"]
    assert max(_metric_errors(result)) < 1e-6


def test_a_target_past_the_body_contour_is_named_and_scored_as_openkbp_does(tmp_path):
    p = make_patient()
    z, y, x = np.mgrid[0:N, 0:N, 0:N]
    c = (N - 1) / 2
    ptv = p.mask("PTV70")
    body = np.asarray(p.possible_dose_mask) & (x > c - 6)  # the PTV (x down to c - 9) reaches past it
    beyond = int((ptv & ~body).sum())
    assert beyond > 0.01 * int(ptv.sum())
    r2 = (z - c) ** 2 + (y - c) ** 2 + (x - c + 3) ** 2
    dose = (72 * np.exp(-r2 / (2 * 9.0 ** 2))).astype(np.float32)  # computed in air too
    masks = {n: p.mask(n) for n in ("LeftParotid", "PTV70", "Ring")}
    q = Patient.from_masks("pt_a", p.ct, masks, p.roi_set, p.spacing, body, dose, dict(p.meta),
                           geometry=p.geometry)
    folder = dicom.write_dicom(q, tmp_path / "ref")
    want_warning = (rf"PTV70 has {beyond} of its {int(ptv.sum())} voxels outside the possible-dose mask "
                    r"\(body contour External\): their dose is neither predicted nor scored")
    with pytest.warns(dicom.DicomWarning, match=want_warning):
        (r,) = dicom.read_dicom_folder(folder.parent)
    assert np.array_equal(r.possible_dose_mask, body)
    assert r.meta["roi_voxels_outside_mask"]["PTV70"] == beyond
    result, _ = _self_evaluation(folder, tmp_path)
    assert result["dose_score"] < 1e-6
    assert max(_metric_errors(result)) < 1e-6
    # the reference's PTV D99% counts the voxels past the mask at 0 Gy, as OpenKBP's evaluator does
    (pp,) = result["per_patient"]
    want = float(np.percentile(np.where(body, dose, 0)[ptv], 1))
    assert abs(pp["rois"]["PTV70"]["metrics"]["D99%"]["ref"] - want) < 1e-2
