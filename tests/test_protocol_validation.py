"""Protocol files that loaded but said something else than meant: a goal looser than its limit, a
V-metric limit beyond 100 %, a key repeated in one JSON object (the last won silently) and a
prescription of an ROI nobody has. Each is one ProtocolError naming the file, the criterion or key
and the rule."""

import json
import re
from pathlib import Path

import pytest

from dosepred import Roi, RoiSet
from dosepred.protocol import BUILTIN, Protocol, ProtocolError, from_portpy, load_protocol


def _write(tmp_path, obj, name="p.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def _one(**crit):
    return {"name": "x", "criteria": [crit]}


def test_every_shipped_protocol_still_loads():
    for name in BUILTIN:
        load_protocol(name, RoiSet.openkbp())
    for f in (Path(__file__).resolve().parents[1] / "experiments" / "protocols").glob("*.json"):
        load_protocol(f, RoiSet.openkbp())


@pytest.mark.parametrize(("crit", "message"), [
    ({"roi": "SpinalCord", "metric": "D0.1cc", "direction": "<=", "limit": 45, "goal": 50},
     r"criterion 1 \(SpinalCord D0\.1cc\).*goal 50 is looser than limit 45 Gy; with '<=' the goal must be at "
     r"most the limit"),
    ({"roi": "PTV70", "metric": "D95%", "direction": ">=", "limit": 95, "goal": 90, "limit_unit": "%Rx"},
     r"criterion 1 \(PTV70 D95%\).*goal 90 is looser than limit 95 %Rx; with '>=' the goal must be at least "
     r"the limit"),
    ({"roi": "Larynx", "metric": "V50Gy", "direction": "<=", "limit": 30, "goal": 40},
     r"goal 40 is looser than limit 30 %"),
])
def test_a_goal_looser_than_its_limit_is_refused(tmp_path, crit, message):
    path = _write(tmp_path, _one(**crit))
    with pytest.raises(ProtocolError, match=message) as ei:
        load_protocol(path)
    assert str(ei.value).startswith(f"invalid protocol {path}: ")


@pytest.mark.parametrize("crit", [
    {"roi": "SpinalCord", "metric": "D0.1cc", "direction": "<=", "limit": 45, "goal": 40},
    {"roi": "SpinalCord", "metric": "D0.1cc", "direction": "<=", "limit": 45, "goal": 45},
    {"roi": "PTV70", "metric": "D95%", "direction": ">=", "limit": 95, "goal": 100, "limit_unit": "%Rx"},
    {"roi": "Larynx", "metric": "V50Gy", "direction": "<=", "limit": 100, "goal": 0},
    {"roi": "PTV70", "metric": "V110%", "direction": "<=", "goal": 2},
])
def test_a_goal_as_strict_as_its_limit_or_alone_is_fine(tmp_path, crit):
    assert load_protocol(_write(tmp_path, _one(**crit))).criteria[0].goal == crit["goal"]


@pytest.mark.parametrize(("crit", "message"), [
    ({"roi": "Larynx", "metric": "V20Gy", "direction": "<=", "limit": 120},
     r"criterion 1 \(Larynx V20Gy\).*a V-metric limit is a percentage of the ROI volume \(0-100 %\), "
     r"got 120"),
    ({"roi": "PTV70", "metric": "V95%", "direction": ">=", "goal": 100.5},
     r"a V-metric goal is a percentage of the ROI volume \(0-100 %\), got 100\.5"),
])
def test_a_v_metric_limit_beyond_100_percent_is_refused(tmp_path, crit, message):
    with pytest.raises(ProtocolError, match=message):
        load_protocol(_write(tmp_path, _one(**crit)))


@pytest.mark.parametrize(("text", "message"), [
    ('{"name": "a", "name": "b", "criteria": [{"roi": "PTV70", "metric": "D95%"}]}',
     r"key 'name' appears twice in one object; keep one"),
    ('{"name": "a", "criteria": [{"roi": "SpinalCord", "metric": "Dmax", "direction": "<=", "limit": 45, '
     '"limit": 50}]}',
     r"key 'limit' appears twice in one object \(the criterion SpinalCord Dmax\); keep one"),
    ('{"name": "a", "prescriptions": {"PTV70": 70, "PTV70": 66}, "criteria": [{"roi": "PTV70", '
     '"metric": "D95%"}]}',
     r"key 'PTV70' appears twice in one object; keep one"),
])
def test_a_key_repeated_in_a_protocol_file_is_refused(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ProtocolError, match=message) as ei:
        load_protocol(path)
    assert str(ei.value).startswith(f"protocol {path} is not a valid protocol: key ")


def test_a_key_repeated_in_a_portpy_file_is_refused(tmp_path):
    text = ('{"name": "pp", "criteria": [{"type": "max_dose", '
            '"parameters": {"structure_name": "SpinalCord"}, '
            '"constraints": {"limit_dose_gy": 45, "limit_dose_gy": 50}}]}')
    path = _write(tmp_path, text, "pp.json")
    for read in (load_protocol, from_portpy):
        with pytest.raises(ProtocolError, match=r"pp\.json is not a valid protocol: key 'limit_dose_gy' "
                                                r"appears twice in one object"):
            read(path)


def _rx(tmp_path, rx, name="rx.json"):
    return _write(tmp_path, {"name": "rx", "prescriptions": rx, "criteria": [
        {"roi": "PTV70", "metric": "D99%", "limit": 95, "limit_unit": "%Rx", "direction": ">="},
        {"roi": "SpinalCord", "metric": "Dmax", "limit": 45, "direction": "<="}]}, name)


def test_a_prescription_of_an_roi_nobody_has_is_refused_when_bound(tmp_path):
    rs = RoiSet((Roi("PTV70", "target", 70.0), Roi("PTV56", "target", 56.0), Roi("SpinalCord", "oar")))
    path = _rx(tmp_path, {"Foo": 50})
    with pytest.raises(ProtocolError, match=rf"^{re.escape(str(path))}: protocol 'rx': prescriptions name "
                                            r"ROI 'Foo', which no criterion uses and which is not among the "
                                            r"dataset's ROIs \(PTV70, PTV56, SpinalCord\)$"):
        load_protocol(path, rs)
    # a misspelling: PTV70 would silently keep the dataset's 70 Gy instead of the protocol's 66
    with pytest.raises(ProtocolError, match=r"prescriptions name ROI 'PTV_70'.*did you mean 'PTV70'\?"):
        load_protocol(_rx(tmp_path, {"PTV_70": 66}), rs)
    with pytest.raises(ProtocolError, match=r"prescriptions name ROI 'Foo'.*the model's ROIs"):
        Protocol(name="m", prescriptions={"Foo": 50},
                 criteria=[{"roi": "SpinalCord", "metric": "Dmax"}]).bind(rs, roi_owner="the model")
    # fine: an ROI of a criterion, an ROI of the set no criterion uses (the CDM loss's dose scale), an
    # ROI's canonical name a dataset lacks (as for criteria)
    for rx in ({"PTV70": 66}, {"PTV56": 54}, {"PTV63": 63}):
        assert load_protocol(_rx(tmp_path, rx), rs).bind(rs).criteria
    with pytest.raises(ProtocolError, match=r"prescriptions name ROI 'PTV63'.*the model's ROIs"):
        load_protocol(_rx(tmp_path, {"PTV63": 63}), rs, roi_owner="the model")


@pytest.mark.parametrize(("obj", "message"), [
    (_one(roi="SpinalCord", metric="D0.1cc", direction="<=", limit=4500),
     r"p\.json.*criterion 1 \(SpinalCord D0\.1cc\).*a dose limit is in Gy, got 4500 Gy, over 200 Gy: in cGy"),
    (_one(roi="PTV70", metric="D95%", direction=">=", limit=6500, goal=6650),
     r"criterion 1 \(PTV70 D95%\).*a dose limit is in Gy, got 6500 Gy, over 200 Gy: in cGy"),
    (_one(roi="Brainstem", metric="Dmax", direction="<=", limit=700),
     r"criterion 1 \(Brainstem Dmax\).*a dose limit is in Gy, got 700 Gy, over 200 Gy: in cGy"),
    (_one(roi="Larynx", metric="V5000Gy", direction="<=", limit=30),
     r"criterion 1 \(Larynx V5000Gy\).*threshold of V<x>Gy is in Gy, got 5000 Gy.*in cGy\? \(V50Gy\)"),
    ({"name": "x", "prescriptions": {"PTV70": 7000},
      "criteria": [{"roi": "PTV70", "metric": "V95%", "direction": ">=", "limit": 95}]},
     r"p\.json.*prescriptions are in Gy, got \{'PTV70': 7000\.0\}, over 200 Gy: in cGy"),
])
def test_a_dose_in_cgy_is_refused(tmp_path, obj, message):
    """A limit, V-threshold or prescription written in cGy loaded as Gy: SpinalCord D0.1cc <= 4500 Gy passed
    every plan, a 7000 Gy prescription made PTV70 V95% 0 % for every plan, without a word."""
    with pytest.raises(ProtocolError, match=message):
        load_protocol(_write(tmp_path, obj), RoiSet.openkbp())


def test_a_dose_limit_up_to_200_gy_and_a_percent_of_rx_limit_load(tmp_path):
    ok = {"name": "x", "prescriptions": {"PTV70": 70},
          "criteria": [{"roi": "SpinalCord", "metric": "Dmax", "direction": "<=", "limit": 200},
                       {"roi": "PTV70", "metric": "Dmax", "direction": "<=", "limit": 107,
                        "limit_unit": "%Rx"},
                       {"roi": "PTV70", "metric": "V200Gy", "direction": "<=", "limit": 0}]}
    p = load_protocol(_write(tmp_path, ok), RoiSet.openkbp())
    assert p.criteria[1].limit_value(70.0) == pytest.approx(74.9)


@pytest.mark.parametrize(("crit", "message"), [
    ({"roi": "PTV70", "metric": "D95%", "direction": ">=", "limit": 0.95, "limit_unit": "%Rx"},
     r"p\.json.*criterion 1 \(PTV70 D95%\).*a limit in %Rx is a percentage of the prescription \(95 for "
     r"95 %\), got 0\.95: a fraction\? \(write 95\)"),
    ({"roi": "PTV70", "metric": "Dmax", "direction": "<=", "limit": 110, "goal": 1.07, "limit_unit": "%Rx"},
     r"criterion 1 \(PTV70 Dmax\).*a goal in %Rx is a percentage of the prescription \(95 for 95 %\), got "
     r"1\.07: a fraction\? \(write 107\)"),
])
def test_a_percent_of_rx_limit_written_as_a_fraction_is_refused(tmp_path, crit, message):
    """PTV70 D95% >= 0.95 %Rx (RayStation's and Eclipse scripting's relative doses are fractions) loaded as
    D95% >= 0.665 Gy: every plan passed, without a word."""
    with pytest.raises(ProtocolError, match=message):
        load_protocol(_write(tmp_path, _one(**crit)), RoiSet.openkbp())


@pytest.mark.parametrize(("crit", "message"), [
    ({"roi": "PTV70", "metric": "D95%", "direction": ">=", "limit": 0.95},
     r"p\.json.*criterion 1 \(PTV70 D95%\).*a dose limit of 0\.95 Gy with '>=' is met by every plan: a "
     r"fraction of the prescription\? \(write 95 with \"limit_unit\": \"%Rx\"\)"),
    ({"roi": "PTV56", "metric": "Dmin", "direction": ">=", "limit": 50, "goal": 1.0},
     r"criterion 1 \(PTV56 Dmin\).*a dose goal of 1 Gy with '>='"),
])
def test_a_lower_dose_limit_written_as_a_fraction_is_refused(tmp_path, crit, message):
    """PTV70 D95% >= 0.95 without limit_unit (a fraction of the prescription, in Gy by default) passed every
    plan, the 33 validation references and a no-learning dose alike (33/33), without a word."""
    with pytest.raises(ProtocolError, match=message):
        load_protocol(_write(tmp_path, _one(**crit)), RoiSet.openkbp())


@pytest.mark.parametrize(("crit", "message"), [
    ({"roi": "PTV70", "metric": "V95%", "direction": ">=", "limit": 0.98},
     r"p\.json.*criterion 1 \(PTV70 V95%\).*a V-metric limit is a percentage of the ROI volume \(98 for 98 "
     r"%\), got 0\.98 with '>=', met by almost every plan: a fraction\? \(write 98\)"),
    ({"roi": "PTV56", "metric": "V53.2Gy", "direction": ">=", "goal": 0.99},
     r"criterion 1 \(PTV56 V53\.2Gy\).*a V-metric goal .* got 0\.99 with '>='"),
])
def test_a_lower_volume_limit_written_as_a_fraction_is_refused(tmp_path, crit, message):
    """PTV70 V95% >= 0.98 (98 % of the volume written as a fraction) was V95% >= 0.98 %: every plan passed,
    the 33 validation references and a no-learning dose alike (33/33), without a word."""
    with pytest.raises(ProtocolError, match=message):
        load_protocol(_write(tmp_path, _one(**crit)), RoiSet.openkbp())


def test_a_small_upper_volume_limit_loads(tmp_path):
    """PTV70 V110% <= 1 % is a hot-spot criterion: only '>=' is refused."""
    p = load_protocol(_write(tmp_path, _one(roi="PTV70", metric="V110%", direction="<=", limit=1)),
                      RoiSet.openkbp())
    assert p.criteria[0].limit_value(70.0) == 1.0


def test_a_v_percent_threshold_no_plan_reaches_is_refused(tmp_path):
    """PTV70 V1070% <= 2 % (V107% with a digit too many) counted the voxels over 749 Gy: 0 % in every plan,
    so every plan passed, without a word (V<x>Gy over 200 Gy was already refused)."""
    path = _write(tmp_path, _one(roi="PTV70", metric="V1070%", direction="<=", limit=2))
    with pytest.raises(ProtocolError, match=r"p\.json: protocol 'x', criterion 1 \(PTV70 V1070% <= 2 %\): "
                                            r"the threshold of V1070% is 749 Gy \(1070 % of PTV70's 70 Gy\), "
                                            "over 200 Gy: no plan reaches it"):
        load_protocol(path, RoiSet.openkbp())
    assert load_protocol(_write(tmp_path, _one(roi="PTV70", metric="V285%", direction="<=", limit=2)),
                         RoiSet.openkbp())  # 199.5 Gy


def test_a_percent_of_rx_limit_over_200_gy_is_refused(tmp_path):
    """PTV70 Dmax <= 1070 %Rx (107 with a digit too many) was Dmax <= 749 Gy: every plan passed, without a
    word (a limit in Gy over 200 Gy was already refused)."""
    path = _write(tmp_path, _one(roi="PTV70", metric="Dmax", direction="<=", limit=1070, limit_unit="%Rx"))
    with pytest.raises(ProtocolError, match=r"p\.json: protocol 'x', criterion 1 \(PTV70 Dmax <= 1070 %Rx\): "
                                            r"the limit is 749 Gy \(1070 % of PTV70's 70 Gy\), over 200 Gy"):
        load_protocol(path, RoiSet.openkbp())


def test_a_small_upper_dose_limit_in_gy_loads(tmp_path):
    """An upper limit of a few Gy is clinical (a pacemaker's Dmax <= 2 Gy): only '>=' is refused."""
    p = load_protocol(_write(tmp_path, _one(roi="Larynx", metric="Dmax", direction="<=", limit=2)),
                      RoiSet.openkbp())
    assert p.criteria[0].limit_value() == 2.0


@pytest.mark.parametrize("roi", ["Body", "External", "Skin"])
def test_a_criterion_on_the_body_is_refused(tmp_path, roi):
    """The body contour is the possible-dose mask, never an ROI: Body Dmax <= 77 Gy was left out of every
    patient's criteria (lint: 'contoured in no patient', though every patient has one) and External named
    no reason."""
    path = _write(tmp_path, {"name": "b", "criteria": [
        {"roi": roi, "metric": "Dmax", "limit": 77, "direction": "<="},
        {"roi": "SpinalCord", "metric": "Dmax", "limit": 45, "direction": "<="}]})
    with pytest.raises(ProtocolError, match=rf"p\.json: protocol 'b', criterion 1 \({roi} Dmax <= 77 Gy\): "
                                            rf"ROI '{roi}' is the body contour, which dosepred reads as the "
                                            "possible-dose mask, not as an ROI: no criterion on it is "
                                            "checked"):
        load_protocol(path, RoiSet.openkbp())


@pytest.mark.parametrize("roi, meant", [("Cord", "SpinalCord"), ("Parotid_L", "LeftParotid"),
                                        ("Glnd_Parotid_R", "RightParotid"), ("BrainStem", "Brainstem"),
                                        ("PTV_70", "PTV70")])
def test_an_roi_under_a_clinical_spelling_is_named_by_the_set_s_name(tmp_path, roi, meant):
    """A protocol written with a clinic's spelling of an ROI the dataset has under its canonical name
    (docs/formats.md's alias table: Cord, Parotid_L, ...) named no ROI ('did you mean' only from
    string similarity: 'Cord' and 'Parotid_L' are far from 'SpinalCord' and 'LeftParotid')."""
    path = _write(tmp_path, {"name": "c", "criteria": [
        {"roi": roi, "metric": "Dmax", "limit": 45, "direction": "<="}]})
    with pytest.raises(ProtocolError, match=rf"ROI '{roi}' is not among the dataset's ROIs .*; did you mean "
                                            rf"'{meant}'\?$"):
        load_protocol(path, RoiSet.openkbp())
