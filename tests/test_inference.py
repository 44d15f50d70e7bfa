"""dosepred.inference: InferenceOptions as one typed value, and what a prediction cache records of it
(the "prediction" record of dataset.json, and the command string of caches written before it)."""

import json

import pytest

from dosepred.inference import (
    DEFAULT_TTA,
    DOSE_OPTIONS,
    TTA_SHIFT,
    InferenceOptions,
    PredictionRecord,
    PredictionRecordError,
    prediction_record,
)
from dosepred.io.cache import Cache, write_cache
from dosepred.synth import make_cohort

#: every field set to a value other than its default
OTHER = InferenceOptions(device="cpu", overlap=0.25, mode="constant", sw_batch=3, amp=True, tta=False,
                         shifts=((4, 4, 4), (-2, 0, 1)), allow_missing_rois=True, spacing_policy="median")


def test_defaults_are_those_of_predict_dose():
    o = InferenceOptions()
    assert (o.device, o.overlap, o.mode, o.sw_batch, o.amp, o.tta, o.shifts, o.allow_missing_rois,
            o.spacing_policy) == ("auto", 0.5, "gaussian", 1, False, DEFAULT_TTA, (), False, "fov")
    assert all(getattr(OTHER, n) != getattr(o, n) for n in o.to_json())


def test_options_are_frozen_and_shifts_normalised():
    o = InferenceOptions(shifts=[[4, 4, 4]])
    assert o.shifts == (TTA_SHIFT,) and hash(o) == hash(InferenceOptions(shifts=((4, 4, 4),)))
    with pytest.raises(AttributeError):
        o.tta = False  # type: ignore[misc]


def test_json_round_trip_of_every_field():
    js = json.loads(json.dumps(OTHER.to_json()))
    assert js["shifts"] == [[4, 4, 4], [-2, 0, 1]]
    assert InferenceOptions.from_json(js) == OTHER


@pytest.mark.parametrize("field, value, needle", [
    ("overlap", 1.0, "0 <= overlap < 1"), ("overlap", "half", "0 <= overlap < 1"),
    ("mode", "mean", "gaussian, constant"), ("sw_batch", 0, "integer >= 1"),
    ("amp", "yes", "amp must be true or false"), ("tta", 1, "tta must be true or false"),
    ("shifts", [[4, 4]], "[i, j, k]"), ("shifts", [[4.5, 0, 0]], "[i, j, k]"),
    ("spacing_policy", "coarse", "fov, median, nearest"), ("device", "", "device name"),
])
def test_a_bad_option_is_one_clear_error(field, value, needle):
    from dosepred.errors import InputError

    with pytest.raises(InputError, match=f"inference option {field}") as e:
        InferenceOptions(**{field: value})
    assert needle in str(e.value)
    # read from a record: the same rule, named by where it was read
    js = {**InferenceOptions().to_json(), field: value}
    with pytest.raises(PredictionRecordError, match=f"^rec: inference option {field}"):
        InferenceOptions.from_json(js, "rec")


def test_a_record_with_an_unknown_or_missing_option_is_refused():
    js = InferenceOptions().to_json()
    with pytest.raises(PredictionRecordError, match="unknown inference option.*'temperature'.*newer"):
        InferenceOptions.from_json({**js, "temperature": 2}, "rec")
    del js["amp"]
    with pytest.raises(PredictionRecordError, match="lacks the inference option.*amp"):
        InferenceOptions.from_json(js, "rec")


def test_differences_name_only_the_options_that_change_the_dose():
    base = InferenceOptions()
    assert base.differences(OTHER) == DOSE_OPTIONS
    assert base.differences(InferenceOptions(device="cpu", sw_batch=4, allow_missing_rois=True)) == ()
    assert base.differences(InferenceOptions(amp=True)) == ("amp",)
    assert OTHER.words(["tta", "amp"]) == "--no-tta, mixed precision (--amp on a GPU)"
    assert InferenceOptions(shifts=(TTA_SHIFT,)).words(["shifts"]) == "--tta-shift"


@pytest.fixture(scope="module")
def patients():
    return make_cohort(1, seed=1, size=16)


def _cache(tmp_path, patients, name, **kw):
    write_cache(patients, tmp_path / name, **kw)
    return Cache.open(tmp_path / name)


def test_the_record_round_trips_through_a_written_cache(tmp_path, patients):
    rec = PredictionRecord(OTHER, "models/m", "ab" * 32, "data/val", "0.1.0")
    c = _cache(tmp_path, patients, "pred", source="dosepred predict: model models/m, data data/val",
               record={"prediction": rec.to_json()})
    got = prediction_record(c)
    assert got == rec and not got.legacy and got.unknown == ()
    js = json.loads((tmp_path / "pred" / "dataset.json").read_text())
    assert js["prediction"]["options"]["amp"] is True and js["prediction"]["version"] == 1
    assert js["version"] == 3  # the cache format itself is unchanged: its reader needs nothing new


@pytest.mark.parametrize("source, tta, shifts", [
    ("dosepred predict --model M --data D --tta", True, ()),
    ("dosepred predict --model M --data D --no-tta", False, ()),
    ("dosepred predict --model M --data D --tta --tta-shift", True, (TTA_SHIFT,)),
    ("dosepred predict --model M --data D --no-tta --tta-shift", False, (TTA_SHIFT,)),
])
def test_an_old_cache_s_command_string_is_understood(tmp_path, patients, source, tta, shifts):
    """Caches written before the record say how they were predicted in ``source``: flipping and
    translation are known, mixed precision (used on a GPU then) is not; the rest were the defaults."""
    rec = prediction_record(_cache(tmp_path, patients, "old", source=source))
    assert rec is not None and rec.legacy
    assert rec.options == InferenceOptions(tta=tta, shifts=shifts)
    assert "amp" in rec.unknown and rec.model == "M" and rec.data == "D" and rec.model_sha256 is None


def test_a_cache_that_does_not_say_has_no_record(tmp_path, patients):
    unsaid = _cache(tmp_path, patients, "a", source="dosepred predict --model M --data D")
    assert prediction_record(unsaid) is None
    assert prediction_record(_cache(tmp_path, patients, "b", source="/data/openkbp")) is None


@pytest.mark.parametrize("record, needle", [
    ("not a record", "'prediction' must be an object"),
    ({"version": 2, "options": {}}, "record version 2 is not one this dosepred reads"),
    ({"version": 1}, "lacks 'options'"),
    ({"version": 1, "options": {}, "model": 3}, "'model' must be a string"),
    ({"version": 1, "options": {"tta": True}}, "lacks the inference option"),
])
def test_a_malformed_record_is_one_error_naming_the_file(tmp_path, patients, record, needle):
    c = _cache(tmp_path, patients, "bad", record={"prediction": record})
    with pytest.raises(PredictionRecordError) as e:
        prediction_record(c)
    assert str(tmp_path / "bad" / "dataset.json") in str(e.value) and needle in str(e.value)


def test_docs_formats_call_of_prediction_record_runs_as_written(tmp_path, patients):
    """docs/formats.md wrote `dosepred.inference.prediction_record(cache)` beside paths everywhere else;
    given the cache's folder, as a reader would, it ended in AttributeError ('str' object has no
    attribute 'info'). The page now writes the call with an opened cache; evaluated as written, it
    reads the record."""
    import re
    from pathlib import Path

    import dosepred

    rec = PredictionRecord(OTHER, "models/m", "ab" * 32, "data/val", "0.1.0")
    _cache(tmp_path, patients, "pred", record={"prediction": rec.to_json()})
    doc = (Path(__file__).parents[1] / "docs" / "formats.md").read_text()
    call = re.search(r"`(dosepred\.inference\.prediction_record\([^`]*\))`", doc).group(1)
    where = str(tmp_path / "pred")  # `cache`, `path`: the prediction cache's folder, as a reader has it
    assert eval(call, {"dosepred": dosepred, "Cache": Cache, "cache": where, "path": where}) == rec, call
