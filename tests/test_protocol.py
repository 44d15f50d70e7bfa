import json

import pytest

from dosepred import Roi, RoiSet
from dosepred.protocol import Criterion, Protocol, ProtocolError, from_portpy, load_protocol, parse_protocol

OPENKBP_OARS = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]


def _write(tmp_path, obj, name="p.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj))
    return p


def test_builtin_openkbp_is_exactly_the_dvh_score_metrics():
    p = load_protocol("openkbp", RoiSet.openkbp())
    got = {(c.roi, c.metric) for c in p.criteria}
    want = {(o, m) for o in OPENKBP_OARS for m in ("D0.1cc", "Dmean")}
    want |= {(t, m) for t in ("PTV56", "PTV63", "PTV70") for m in ("D99%", "D95%", "D1%")}
    assert got == want and len(p.criteria) == len(want)
    assert all(c.limit is None for c in p.criteria)


def test_builtin_clinical_limits_resolved():
    rs = RoiSet.openkbp()
    p = load_protocol("openkbp-clinical", rs)
    by = {(c.roi, c.metric): c for c in p.criteria}
    d99 = by[("PTV63", "D99%")]
    assert d99.limit_value(p.prescription("PTV63", rs)) == pytest.approx(59.85)
    assert d99.direction == ">=" and d99.limit_unit == "%Rx"
    assert by[("SpinalCord", "D0.1cc")].limit_value() == 45 and by[("SpinalCord", "D0.1cc")].direction == "<="
    assert by[("Mandible", "D0.1cc")].limit_value() == 73.5
    assert by[("LeftParotid", "Dmean")].limit_value() == 26
    v110 = by[("PTV70", "V110%")]
    assert v110.limit_unit == "%" and v110.limit_value(70) == 20 and v110.needs_prescription
    assert by[("PTV70", "D95%")].goal_value(70) == pytest.approx(70) and by[("PTV70", "D95%")].limit is None
    assert by[("PTV70", "D99%")].resolved_name(70) == "PTV70 D99% >= 66.5 Gy"


def test_criterion_defaults_and_checks():
    c = Criterion(roi="PTV70", metric="d 95 %", limit=66.5, direction=">=")
    assert c.metric == "D95%" and c.limit_unit == "Gy" and c.weight == 1.0 and c.priority == 1
    assert c.name == "PTV70 D95% >= 66.5 Gy"
    assert c.parsed.kind == "D" and c.parsed.value == 95
    assert c.check(67) is True and c.check(66) is False and c.check(float("nan")) is None
    v = Criterion(roi="Larynx", metric="V50Gy", limit=30, direction="<=")
    assert v.limit_unit == "%" and v.check(10) is True
    assert Criterion(roi="Larynx", metric="Dmean").check(10) is None


@pytest.mark.parametrize("bad, words", [
    ({"roi": "PTV70", "metric": "D95x"}, ["criterion 1", "PTV70", "unknown metric"]),
    ({"roi": "PTV70", "metric": "D95%", "limit": 60}, ["criterion 1", "PTV70 D95%", "direction"]),
    ({"roi": "PTV70", "metric": "D95%", "limit": 60, "direction": ">", }, ["criterion 1", "direction"]),
    ({"roi": "PTV70", "metric": "V20Gy", "limit": 60, "direction": "<=", "limit_unit": "Gy"},
     ["criterion 1", "V-metric"]),
    ({"roi": "PTV70", "metric": "Dmean", "limt": 60}, ["criterion 1", "unknown key 'limt'"]),
    # units: a dose limit in '%' (of what?) is refused, not read as Gy or %Rx
    ({"roi": "PTV70", "metric": "D95%", "limit": 95, "direction": ">=", "limit_unit": "%"},
     ["criterion 1", "PTV70 D95%: a dose limit is in Gy or %Rx (percent of the prescription), not '%'"]),
    ({"roi": "PTV70", "metric": "D101%"}, ["criterion 1", "metric 'D101%': D<x>% needs 0 <= x <= 100"]),
    ({"roi": "PTV70", "metric": "D0cc"}, ["criterion 1", "metric 'D0cc': D<x>cc needs x > 0"]),
    # JSON true/false read by pydantic's lax mode as 1 / 0 (a 1 Gy limit, silently) before
    ({"roi": "PTV70", "metric": "D95%", "limit": True, "direction": ">="},
     ["criterion 1", "field 'limit'", "must be a number, got true"]),
    ({"roi": "PTV70", "metric": "D95%", "limit": 60, "direction": ">=", "priority": True},
     ["criterion 1", "field 'priority'", "got true"]),
    ({"roi": "PTV70", "metric": "Dmean", "weight": False}, ["criterion 1", "field 'weight'", "got false"]),
])
def test_bad_criteria_name_the_criterion(tmp_path, bad, words):
    path = _write(tmp_path, {"name": "x", "criteria": [bad]})
    with pytest.raises(ProtocolError) as ei:
        load_protocol(path)
    for w in words:
        assert w in str(ei.value)


def test_unknown_roi_and_missing_prescription(tmp_path):
    rs = RoiSet((Roi("PTV", "target"), Roi("Cord", "oar")))
    p1 = _write(tmp_path, {"name": "a", "criteria": [{"roi": "Cord", "metric": "Dmax"},
                                                      {"roi": "Brainstm", "metric": "Dmax"}]})
    with pytest.raises(ProtocolError, match=r"criterion 2 \(Brainstm Dmax\).*'Brainstm' is not"):
        load_protocol(p1, rs)
    # an ROI's canonical name the data lacks (a clinic's patient without it) is not an error: its
    # criteria are not evaluated (lint warns); against a model's ROIs it is
    p1b = _write(tmp_path, {"name": "a2", "criteria": [{"roi": "Cord", "metric": "Dmax"},
                                                        {"roi": "Brainstem", "metric": "Dmax"}]})
    assert load_protocol(p1b, rs).rois == ["Cord", "Brainstem"]
    with pytest.raises(ProtocolError, match=r"'Brainstem' is not among the model's ROIs"):
        load_protocol(p1b, rs, roi_owner="the model")
    p2 = _write(tmp_path, {"name": "b", "criteria": [
        {"roi": "PTV", "metric": "D99%", "limit": 95, "limit_unit": "%Rx", "direction": ">="}]})
    with pytest.raises(ProtocolError, match=r"criterion 1 \(PTV D99% >= 95 %Rx\).*prescription"):
        load_protocol(p2, rs)
    p3 = _write(tmp_path, {"name": "c", "criteria": [{"roi": "PTV", "metric": "V95%"}]})
    with pytest.raises(ProtocolError, match="prescription"):
        load_protocol(p3, rs)
    # the protocol's own prescription fixes it
    ok = load_protocol(_write(tmp_path, {"name": "d", "prescriptions": {"PTV": 60},
                                         "criteria": [{"roi": "PTV", "metric": "V95%"}]}), rs)
    assert ok.prescription("PTV", rs) == 60
    assert load_protocol("openkbp-clinical").prescription("PTV70") == 70


def test_not_a_protocol(tmp_path):
    with pytest.raises(ProtocolError, match="neither a built-in"):
        load_protocol(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        load_protocol(bad)


def test_roundtrip_json():
    p = load_protocol("openkbp-clinical")
    again = Protocol.model_validate_json(p.model_dump_json())
    assert again == p


def test_from_portpy(tmp_path):
    data = {"protocol_name": "HN", "pres_per_fraction_gy": 2, "num_of_fractions": 35,
            "prescriptions": ["PTV70"],
            "criteria": [
                {"type": "max_dose", "parameters": {"structure_name": "SpinalCord"},
                 "constraints": {"limit_dose_gy": 45}},
                {"type": "mean_dose", "parameters": {"structure_name": "LeftParotid"},
                 "constraints": {"limit_dose_gy": 26, "goal_dose_gy": 20}},
                {"type": "dose_volume_V", "parameters": {"structure_name": "PTV70", "dose_perc": 110},
                 "constraints": {"limit_volume_perc": 20}},
                {"type": "max_dose", "parameters": {"structure_name": "PTV70"},
                 "constraints": {"limit_dose_perc": 115}},
            ]}
    p = from_portpy(data, RoiSet.openkbp())
    assert [c.name for c in p.criteria] == ["SpinalCord Dmax <= 45 Gy", "LeftParotid Dmean <= 26 Gy",
                                           "PTV70 V110% <= 20 %", "PTV70 Dmax <= 115 %Rx"]
    assert p.criteria[3].limit_value(p.prescription("PTV70")) == pytest.approx(80.5)
    # load_protocol recognises the PortPy layout
    assert load_protocol(_write(tmp_path, data)).criteria == p.criteria


def test_a_portpy_criterion_mixing_gy_and_percent_of_rx_is_refused(tmp_path):
    """A PortPy min_dose with limit_dose_gy 66.5 and goal_dose_perc 97 took the last key's unit for both:
    PTV70 Dmin >= 46.55 Gy (66.5 %Rx of 70 Gy), and goal_dose_gy 74 beside limit_dose_perc 110 a 51.8 Gy
    goal, without a word."""
    data = {"protocol_name": "HN", "pres_per_fraction_gy": 2, "num_of_fractions": 35,
            "prescriptions": ["PTV70"],
            "criteria": [{"type": "min_dose", "parameters": {"structure_name": "PTV70"},
                          "constraints": {"limit_dose_gy": 66.5, "goal_dose_perc": 97}}]}
    path = _write(tmp_path, data, "pp.json")
    with pytest.raises(ProtocolError, match=r"pp\.json.*PortPy criterion 1 \(PTV70 min_dose\): PortPy "
                                            r"constraints 'limit_dose_gy', 'goal_dose_perc' mix a dose in Gy "
                                            "and one in % of the prescription; give the limit and goal in "
                                            "one unit"):
        load_protocol(path, RoiSet.openkbp())


def test_a_boolean_prescription_is_refused(tmp_path):
    path = _write(tmp_path, {"name": "x", "prescriptions": {"PTV70": True}, "criteria": [
        {"roi": "PTV70", "metric": "D95%"}]})
    with pytest.raises(ProtocolError, match=r"prescriptions must be numbers \(Gy\), got \{'PTV70': True\}"):
        load_protocol(path)


def test_a_misspelt_roi_is_an_error_however_the_protocol_is_made(tmp_path):
    # the same protocol through load_protocol (a file), from_portpy (a file or a dict), parse_protocol
    # and Protocol(...): a name that is not an ROI's canonical spelling and not in the set is an error
    # naming it, never a criterion silently left out (the cord's limit was never checked)
    rs = RoiSet.openkbp()
    portpy = {"name": "pp", "criteria": [
        {"type": "max_dose", "parameters": {"structure_name": "Spinal_Cord"},
         "constraints": {"limit_dose_gy": 45}},
        {"type": "mean_dose", "parameters": {"structure_name": "LeftParotid"},
         "constraints": {"limit_dose_gy": 26}}]}
    f = _write(tmp_path, portpy, "pp.json")
    own = {"name": "t", "criteria": [{"roi": "PTV_70", "metric": "D95%"}, {"roi": "PTV70", "metric": "D99%"}]}
    for make, what in ((lambda: load_protocol(f, rs), "Spinal_Cord"),
                       (lambda: from_portpy(f, rs), "Spinal_Cord"),
                       (lambda: from_portpy(portpy, rs), "Spinal_Cord"),
                       (lambda: parse_protocol(own, rs), "PTV_70"),
                       (lambda: Protocol(**own).bind(rs), "PTV_70")):
        with pytest.raises(ProtocolError, match=rf"'{what}' is not among the dataset's ROIs.*did you mean"):
            make()
    with pytest.raises(ProtocolError, match=r"pp\.json: protocol 'pp', criterion 1"):  # names the file
        from_portpy(f, rs)
    # a canonical name the data lacks stays allowed (a patient without an esophagus), and so does
    # a built-in's ROI a smaller set lacks
    small = RoiSet((Roi("PTV70", "target", 70.0), Roi("SpinalCord", "oar")))
    p = Protocol(name="c", criteria=[{"roi": "SpinalCord", "metric": "Dmax"},
                                     {"roi": "Esophagus", "metric": "Dmean"}])
    assert [c.roi for c in p.bind(small).criteria] == ["SpinalCord"]
    assert {c.roi for c in load_protocol("openkbp", small).bind(small).criteria} == {"SpinalCord", "PTV70"}


def test_a_portpy_file_naming_its_criterion_types_name_loads_as_with_type(tmp_path):
    """PortPy's clinical_criteria files give each criterion's type as "type" or, in older PortPy versions
    (its Lung_2Gy_30Fx.json, ClinicalCriteria.add_criterion), as "name": such a file was read as a dosepred
    protocol and refused with some twenty problems (no 'roi', no 'metric', unknown keys) and no word of
    PortPy."""
    crits = [{"name": "max_dose", "parameters": {"structure_name": "SpinalCord"},
              "constraints": {"limit_dose_gy": 45, "goal_dose_gy": 40}},
             {"name": "dose_volume_V", "parameters": {"structure_name": "LeftParotid", "dose_gy": 30},
              "constraints": {"limit_volume_perc": 50}}]
    old = {"protocol_name": "HN", "pres_per_fraction_gy": 2, "num_of_fractions": 35, "criteria": crits}
    new = dict(old, criteria=[{("type" if k == "name" else k): v for k, v in c.items()} for c in crits])
    want = [(c.roi, c.metric, c.direction, c.limit, c.goal)
            for c in from_portpy(new, RoiSet.openkbp()).criteria]
    assert want == [("SpinalCord", "Dmax", "<=", 45, 40), ("LeftParotid", "V30Gy", "<=", 50, None)]
    for p in (load_protocol(_write(tmp_path, old), RoiSet.openkbp()), from_portpy(old, RoiSet.openkbp())):
        assert [(c.roi, c.metric, c.direction, c.limit, c.goal) for c in p.criteria] == want


def test_a_resolved_limit_is_named_with_the_decimals_it_has():
    """A %Rx limit of an uneven prescription (95 % of 33 x 2.12 = 69.96 Gy: 66.462 Gy) is named as it is
    checked: '>= 66.46 Gy' beside a D99% of 66.461 Gy and its FAIL read as a contradiction."""
    c = Criterion(roi="PTV70", metric="D99%", limit=95, limit_unit="%Rx", direction=">=")
    assert c.resolved_name(69.96) == "PTV70 D99% >= 66.462 Gy"
    assert c.resolved_name(63) == "PTV70 D99% >= 59.85 Gy" and c.resolved_name(70) == "PTV70 D99% >= 66.5 Gy"


def test_an_roi_name_written_decomposed_is_the_roi_readers_name(tmp_path):
    """A protocol typed on macOS (or copied from its file names) holds "Parótida" decomposed (NFD: "o"
    and a combining accent): every reader names ROIs composed (NFC), so its criteria met no ROI ("did
    you mean 'Parótida'?", naming a string that prints the same) and its prescription none."""
    nfd, nfc = "Paro\u0301tida", "Par\u00f3tida"
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"name": "clinic", "prescriptions": {"PTE\u0301": 70},
                                "criteria": [{"roi": nfd, "metric": "Dmean", "direction": "<=", "limit": 26},
                                             {"roi": "PTE\u0301", "metric": "D95%", "direction": ">=",
                                              "limit": 95, "limit_unit": "%Rx"}]}))
    rs = RoiSet((Roi(nfc, "oar"), Roi("PT\u00c9", "target", 70.0)))
    p = load_protocol(path, rs)
    assert [c.roi for c in p.criteria] == [nfc, "PT\u00c9"] and p.prescriptions == {"PT\u00c9": 70}
    mean = {"roi": nfd, "metric": "Dmean", "direction": "<=", "limit": 26}
    path.write_text(json.dumps({"name": "clinic", "prescriptions": {"PTE\u0301": 70, "PT\u00c9": 70},
                                "criteria": [mean]}))
    with pytest.raises(ProtocolError, match="prescriptions name one ROI twice"):
        load_protocol(path)


def test_load_protocol_takes_a_bound_protocol_and_names_a_dict():
    """evaluate_patient takes a BoundProtocol, evaluate_cohort one was OSError '[Errno 36] File name too
    long' (its repr taken as a file name); a dict was 'neither a built-in nor an existing JSON file'."""
    import numpy as np

    from dosepred import Patient, evaluate_cohort, evaluate_patient

    rs = RoiSet((Roi("PTV70", "target", 70.0),))
    bound = load_protocol("openkbp").bind(rs)
    assert load_protocol(bound) is bound.protocol
    m = np.zeros((4, 4, 4), bool)
    m[1:3, 1:3, 1:3] = True
    dose = np.where(m, 70.0, 5.0).astype(np.float32)
    p = Patient.from_masks("x", np.zeros((4, 4, 4)), {"PTV70": m}, rs, (1, 1, 1), dose=dose)
    got = evaluate_cohort([(p, dose * 0.9)], bound).summary()
    assert got == evaluate_cohort([(p, dose * 0.9)], "openkbp").summary()
    assert got["dvh_score"] == pytest.approx(evaluate_patient(p, dose * 0.9, bound).dvh_score)
    with pytest.raises(ProtocolError, match=r"given as a dict is parsed by dosepred.protocol.parse_protocol"):
        load_protocol({"name": "x", "criteria": []})
    with pytest.raises(ProtocolError, match="protocol must be a built-in name .* got int 3"):
        load_protocol(3)
