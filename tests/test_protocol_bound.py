"""A protocol bound to an ROI set (dosepred.protocol.bound): resolved once, read inside as data.

Values are checked against hand arithmetic (95 % of a 70 Gy prescription is 66.5 Gy), the number of
validations is counted, and the shared CDM dose scale is checked to read a protocol file's
prescriptions as the CDM term does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dosepred import Patient, Roi, RoiSet
from dosepred.evaluation import evaluate_cohort, evaluate_patient
from dosepred.protocol import BoundProtocol, Protocol, ProtocolError, load_protocol, parse_protocol

RS = RoiSet((Roi("PTV", "target", 70.0), Roi("Cord"), Roi("Parotid")))


def _proto(**extra):
    return parse_protocol({"name": "t", **extra, "criteria": [
        {"roi": "PTV", "metric": "D95%", "limit": 95, "limit_unit": "%Rx", "direction": ">="},
        {"roi": "Cord", "metric": "D0.1cc", "limit": 45, "direction": "<="},
        {"roi": "Parotid", "metric": "Dmean", "goal": 20, "direction": "<="},
        {"roi": "PTV", "metric": "V95%", "limit": 98, "direction": ">="}]})


def test_bind_resolves_every_criterion_once_by_hand():
    b = _proto().bind(RS)
    assert isinstance(b, BoundProtocol) and b.roi_set == RS and b.skipped == ()
    ptv = b.criteria[0]
    assert (ptv.index, ptv.kind, ptv.rx, ptv.goal) == (1, "target", 70.0, None)
    assert ptv.limit == pytest.approx(66.5)
    assert ptv.name == "PTV D95% >= 66.5 Gy" and ptv.unit == "Gy" and ptv.parsed.kind == "D"
    cord, par, v95 = b.criteria[1:]
    assert (cord.kind, cord.rx, cord.limit) == ("oar", None, 45.0)
    assert (par.limit, par.goal) == (None, 20.0)
    assert (v95.unit, v95.limit, v95.parsed.kind) == ("%", 98.0, "V")
    assert ptv.check(66.4) is False and ptv.check(66.5) is True and cord.check(44.0) is True
    assert par.check(19.0) is None and par.check(21.0, goal=True) is False
    # the protocol's own prescription wins over the ROI set's
    assert _proto(prescriptions={"PTV": 60.0}).bind(RS).criteria[0].limit == pytest.approx(57.0)


def test_bind_validates_and_leaves_out_uncontoured_builtin_rois():
    small = RoiSet((Roi("PTV70", "target", 70.0), Roi("SpinalCord"), Roi("Brainstem")))
    b = load_protocol("openkbp-clinical").bind(small)
    assert {c.roi for c in b.criteria} <= {"PTV70", "SpinalCord", "Brainstem"}
    assert b.skipped and all(n.split()[0] not in small for n in b.skipped)
    assert len(b.criteria) + len(b.skipped) == len(load_protocol("openkbp-clinical").criteria)
    # a model must have every ROI
    with pytest.raises(ProtocolError, match="PTV63.* not among the model's ROIs"):
        load_protocol("openkbp-clinical").bind(small, roi_owner="the model")
    no_rx = RoiSet((Roi("PTV", "target"), Roi("Cord"), Roi("Parotid")))
    with pytest.raises(ProtocolError, match="prescription"):
        _proto().bind(no_rx)


def _patients(n: int) -> list[Patient]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        m = np.zeros((6, 6, 6), bool)
        ptv, cord, par = m.copy(), m.copy(), m.copy()
        ptv[1:4, 1:4, 1:4] = True
        cord[4:, :2] = True
        par[:2, 4:] = True
        dose = (rng.random((6, 6, 6)) * 10 + 60 * ptv).astype(np.float32)
        masks = {"PTV": ptv, "Cord": cord, "Parotid": par}
        out.append(Patient.from_masks(f"p{i}", np.zeros((6, 6, 6)), masks, RS, (2.0, 2.0, 2.0), dose=dose))
    return out


def test_a_cohort_validates_its_protocol_once(monkeypatch):
    pats = _patients(4)
    calls = []
    orig = Protocol.validate_for

    def counting(self, roi_set, roi_owner="the dataset"):
        calls.append(roi_owner)
        return orig(self, roi_set, roi_owner)

    monkeypatch.setattr(Protocol, "validate_for", counting)
    proto = _proto()
    res = evaluate_cohort(((p, p.dose * 0.9) for p in pats), proto)
    assert len(calls) == 1 and len(res.patients) == 4  # once for the cohort, not once per patient
    # the same numbers as each patient evaluated on its own (each then binds for itself)
    for p, r in zip(pats, res.patients, strict=True):
        alone = evaluate_patient(p, p.dose * 0.9, proto)
        assert [c.pred for c in alone.criteria] == [c.pred for c in r.criteria]
        assert alone.dose_score == r.dose_score
        ptv = p.dose[p.mask("PTV")] * 0.9
        assert r.criteria[0].pred == pytest.approx(np.percentile(ptv, 5), abs=0.5)  # D95 by numpy, ~voxel
        assert r.criteria[0].limit == pytest.approx(66.5)


def test_a_protocol_bound_to_another_roi_set_is_bound_again():
    p = _patients(1)[0]
    other = RoiSet((Roi("PTV", "target", 50.0), Roi("Cord"), Roi("Parotid")))
    r = evaluate_patient(p, p.dose, _proto().bind(other))
    assert r.criteria[0].limit == pytest.approx(66.5)  # the patient's 70 Gy, not the other set's 50 Gy


def test_cdm_terms_and_shared_dose_scale_read_one_resolved_protocol(tmp_path):
    from dosepred.losses import build_loss, resolve_terms

    proto = _proto()
    assert resolve_terms(proto, RS) == resolve_terms(proto.bind(RS), RS)
    t = resolve_terms(proto, RS, target_weight=2.0)
    assert [x.roi for x in t] == ["PTV", "Cord", "Parotid", "PTV"]
    assert t[0].limit == pytest.approx(66.5) and t[0].weight == 2.0 and t[1].weight == 1.0
    assert t[3].threshold == pytest.approx(0.95 * 70.0)  # V95% of the 70 Gy prescription
    # a protocol FILE whose prescription is above the dataset's: the CDM term and the loss's shared
    # dose scale both use 80 Gy (the shared scale used to ignore a protocol given by path)
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"name": "f", "prescriptions": {"PTV": 80.0}, "criteria": [
        {"roi": "PTV", "metric": "D95%", "limit": 95, "limit_unit": "%Rx", "direction": ">="}]}))
    loss = build_loss("mae+cdm", roi_set=RS, protocol=str(f))
    assert loss.terms["cdm"].dose_scale == pytest.approx(80.0)
    assert loss.terms["cdm"].terms[0].limit == pytest.approx(76.0)
