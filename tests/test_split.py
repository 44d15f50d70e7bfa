"""Splits: random / ids / temporal, the JSON file, load_split and its errors."""

import json

import pytest

from dosepred import split
from dosepred.split import SplitError

IDS = [f"pt_{i}" for i in range(1, 21)]


def test_random_split_is_seeded_and_partitions():
    a = split.random_split(IDS, "0.7,0.15,0.15", seed=1)
    assert a == split.random_split(IDS, [0.7, 0.15, 0.15], seed=1)
    assert a != split.random_split(IDS, "0.7,0.15,0.15", seed=2)
    s = a["splits"]
    assert list(s) == ["train", "val", "test"] and [len(v) for v in s.values()] == [14, 3, 3]
    assert sorted(sum(s.values(), []), key=lambda x: int(x[3:])) == IDS
    assert a["method"] == "random" and a["seed"] == 1


@pytest.mark.parametrize("fr, sizes", [("0.5,0.5", [10, 10]), ("0.34,0.33,0.33", [7, 7, 6]),
                                       ("15,5", [15, 5]), ("1", [20])])
def test_sizes(fr, sizes):
    s = split.random_split(IDS, fr, names=[f"s{i}" for i in range(len(sizes))])["splits"]
    assert [len(v) for v in s.values()] == sizes


@pytest.mark.parametrize("fr, match", [("0.5,0.4", "add up to 1"), ("15,6", "add up to 21 but there are 20"),
                                       ("a,b", "comma-separated"), ("-0.5,1.5", "non-negative")])
def test_bad_fractions(fr, match):
    with pytest.raises(SplitError, match=match):
        split.random_split(IDS, fr)


def test_names_must_match():
    with pytest.raises(SplitError, match="2 split names"):
        split.random_split(IDS, "0.5,0.25,0.25", names="a,b")
    with pytest.raises(SplitError, match="unique"):
        split.random_split(IDS, "0.5,0.5", names="a,a")
    with pytest.raises(SplitError, match="not unique: pt_1"):
        split.random_split(["pt_1", "pt_1"], "1")


def test_ids_split_checks():
    obj = split.ids_split({"train": ["pt_1", "pt_2"], "val": ["pt_3"]}, known_ids=IDS)
    assert obj["method"] == "ids" and obj["splits"]["val"] == ["pt_3"]
    with pytest.raises(SplitError, match="pt_1 is in both split 'train' and split 'val'"):
        split.ids_split({"train": ["pt_1"], "val": ["pt_1"]})
    with pytest.raises(SplitError, match="split 'val' names patients not in the cache: pt_99"):
        split.ids_split({"train": ["pt_1"], "val": ["pt_99"]}, known_ids=IDS)


def test_read_id_lists(tmp_path):
    assert split.read_id_lists(["train=pt_1,pt_2", "val=pt_3", "train=pt_4"]) == {
        "train": ["pt_1", "pt_2", "pt_4"], "val": ["pt_3"]}
    js = tmp_path / "lists.json"
    js.write_text(json.dumps({"train": ["pt_1"], "test": ["pt_2"]}))
    assert split.read_id_lists([str(js)]) == {"train": ["pt_1"], "test": ["pt_2"]}
    txt = tmp_path / "lists.txt"
    txt.write_text("# my split\ntrain: pt_1 pt_2\nval=pt_3,pt_4\n")
    assert split.read_id_lists([str(txt)]) == {"train": ["pt_1", "pt_2"], "val": ["pt_3", "pt_4"]}
    txt.write_text("pt_1 pt_2\n")
    with pytest.raises(SplitError, match="line 1"):
        split.read_id_lists([str(txt)])
    with pytest.raises(SplitError, match="expected name=id1,id2"):
        split.read_id_lists(["nofile"])


def test_temporal_split_orders_by_date():
    dates = {"pt_3": "20200105", "pt_1": "2019-03-01", "pt_2": "20210710", "pt_4": "20180101"}
    obj = split.temporal_split(dates, "3,1")
    assert obj["splits"] == {"train": ["pt_4", "pt_1", "pt_3"], "test": ["pt_2"]}
    assert obj["date_ranges"]["test"] == ["20210710", "20210710"]
    obj = split.temporal_split(dates, "0.5,0.25,0.25")
    assert list(obj["splits"]) == ["train", "val", "test"]
    with pytest.raises(SplitError, match="pt_9: date '2020-13-01'"):
        split.temporal_split({"pt_9": "2020-13-01"}, "1")
    for bad in ("2020-02-30", "20210229", "2020-04-31", "0000-01-01"):  # no such day
        with pytest.raises(SplitError, match=f"pt_9: date '{bad}' is not a valid date"):
            split.temporal_split({"pt_9": bad}, "1")
    assert split.temporal_split({"pt_9": "2020-02-29"}, "1")["date_ranges"]["train"] == ["20200229"] * 2
    with pytest.raises(SplitError, match="pt_9: date 'yesterday'"):
        split.temporal_split({"pt_9": "yesterday"}, "1")


def test_temporal_137_37():
    dates = {f"pt_{i}": f"{2010 + i // 20}{1 + i % 12:02d}01" for i in range(174)}
    s = split.temporal_split(dates, "137,37")["splits"]
    assert len(s["train"]) == 137 and len(s["test"]) == 37
    assert max(dates[i] for i in s["train"]) <= min(dates[i] for i in s["test"])


def test_manifest(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("id,date\npt_1,20200101\npt_2,20190101\n")
    assert split.dates_from_manifest(m, "date") == {"pt_1": "20200101", "pt_2": "20190101"}
    with pytest.raises(SplitError, match="no column 'when'"):
        split.dates_from_manifest(m, "when")
    m.write_text("id,date\npt_1,20200101\npt_1,20190101\n")
    with pytest.raises(SplitError, match="row 3: patient pt_1 appears twice"):
        split.dates_from_manifest(m, "date")


def test_file_roundtrip_and_load_split(tmp_path):
    f = split.write_split(split.random_split(IDS, "0.8,0.2", seed=0), tmp_path / "sub" / "splits.json")
    ids = split.load_split(f, "val", cache_ids=IDS)
    assert len(ids) == 4 and set(ids) <= set(IDS)
    assert split.read_split(f)["train"] + ids != []
    with pytest.raises(SplitError, match=r"has no split 'test' \(it has: train, val\)"):
        split.load_split(f, "test")
    with pytest.raises(SplitError, match="split file .*names patients not in the data"):
        split.load_split(f, "train", cache_ids=["pt_1"])
    with pytest.raises(SplitError, match="does not exist"):
        split.load_split(tmp_path / "none.json", "train")
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": []}')
    with pytest.raises(SplitError, match="lacks a 'splits' object"):
        split.load_split(bad, "train")


def test_a_split_file_that_is_a_folder_or_lists_a_patient_twice_is_refused(tmp_path):
    """Found by the CLI bad-input pass: `predict --split sp.json:a` with synth_000 listed twice predicted it
    twice ('wrote 2 predicted doses', one file), and a folder given as the split file 'did not exist'."""
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"splits": {"a": ["pt_1", "pt_2", "pt_1"], "b": ["pt_3"]}}))
    with pytest.raises(SplitError, match="split file .*s.json: split 'a' names 'pt_1' more than once"):
        split.load_split(f, "b")
    with pytest.raises(SplitError, match="is a folder, not a split JSON file"):
        split.load_split(tmp_path, "a")


def test_cli_split_with_an_empty_file_part_asks_for_file_name(tmp_path, monkeypatch):
    """`predict --split :a` read the file as '.', which the output check then refused as an input holding
    --out ('--out lies inside the input .')."""
    from typer.testing import CliRunner

    from dosepred.cli import app

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["predict", "--model", "m", "--data", "d", "--split", ":a", "--out", "sub"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "error: --split ':a': give FILE:NAME, or --splits FILE together with --split NAME"], r.output


@pytest.mark.parametrize("text", ["0.5,,0.5", "0.5,0.5,", ",0.5,0.5", " "])
def test_fractions_with_a_blank_item_are_refused(text):
    """Found by the CLI bad-input pass: `data split --random --fractions 0.5,,0.5` dropped the blank and
    wrote two splits without a word."""
    with pytest.raises(SplitError, match="fractions must be comma-separated numbers"):
        split.parse_fractions(text)


def test_parse_split_arg():
    assert split.parse_split_arg("s.json:train") == (split.Path("s.json"), "train")
    assert split.parse_split_arg("train", "s.json") == (split.Path("s.json"), "train")
    with pytest.raises(SplitError, match="FILE:NAME"):
        split.parse_split_arg("train")


def test_random_split_does_not_depend_on_the_order_of_the_ids():
    """The same patients listed in another order (a NIfTI folder lists pt_1, pt_10, pt_11, pt_2, ...;
    an OpenKBP folder or its cache pt_1, pt_2, ...) gave another split with the same seed: 9 of 12
    patients changed split between a cache and its exact NIfTI export."""
    import random

    ids = [f"pt_{i}" for i in range(1, 13)]
    want = split.random_split(ids, "0.5,0.25,0.25", seed=0)
    for order in (sorted(ids), ids[::-1], random.Random(4).sample(ids, len(ids))):
        assert order != ids
        assert split.random_split(order, "0.5,0.25,0.25", seed=0) == want


def test_random_split_of_a_cache_and_of_its_nifti_export_agree(tmp_path):
    from dosepred import workflows
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_patient

    write_cache([make_patient(i, size=8, pid=f"pt_{i}") for i in range(1, 12)], tmp_path / "cache")
    workflows.export_cache(tmp_path / "cache", tmp_path / "nifti", "nifti")
    a, b = (workflows.make_split(tmp_path / src, tmp_path / f"{src}.json", "random",
                                 fractions="0.5,0.25,0.25") for src in ("cache", "nifti"))
    assert a["splits"] == b["splits"]
    everyone = sum(a["splits"].values(), [])
    assert sorted(everyone, key=lambda x: int(x[3:])) == [f"pt_{i}" for i in range(1, 12)]


def test_random_split_ties_of_the_natural_order_do_not_depend_on_the_input_order():
    """pt_01 / pt_1 (and pt_007 / pt_7) sort equal by number: they kept the source's order, so the
    seeded shuffle put them in other splits when a source listed them otherwise."""
    ids = [f"pt_{i}" for i in range(1, 11)] + ["pt_01", "pt_007"]
    for seed in range(5):
        a = split.random_split(ids, "0.5,0.5", seed=seed)
        assert a == split.random_split(list(reversed(ids)), "0.5,0.5", seed=seed)


@pytest.mark.parametrize("fr", ["0.9,0.1", "0.8,0.1,0.1"])
def test_a_positive_fraction_that_rounds_to_no_patient_is_refused(fr):
    """`data split --random --fractions 0.8,0.1,0.1` of 5 patients wrote 'test 0': an empty test split
    (and `train --val-split` of an empty split trained with no validation, best.pt = last.pt)."""
    ids = [f"pt_{i}" for i in range(1, 6)]
    with pytest.raises(SplitError, match=r"leave split\(s\) .(val|test). with no patient"):
        split.random_split(ids, fr)
    with pytest.raises(SplitError, match=r"leave split\(s\) .(val|test). with no patient"):
        split.temporal_split({i: f"202001{k + 1:02d}" for k, i in enumerate(ids)}, fr)
    # a fraction of 0 or a count of 0 asks for an empty split: kept
    assert split.random_split(ids, "1,0")["splits"]["val"] == []
    assert split.random_split(ids, "5,0")["splits"]["val"] == []


def _plans_cache(path):
    """A cache as `data import-dicom` writes two plans of one patient: PatientID HN7 with two plans
    (ids HN7_1, HN7_2, planned 2014 and 2023), and ten patients of one plan each (2015-2022)."""
    from dosepred.io.cache import write_cache
    from dosepred.synth import make_patient

    pts = []
    for k, (pid, mrn, date) in enumerate([("HN7_1", "HN7", "20140105"), ("HN7_2", "HN7", "20230610")]
                                         + [(f"pt_{i}", f"MRN{i}", f"20{15 + i % 8}0{1 + i % 9}01")
                                            for i in range(1, 11)]):
        p = make_patient(k, size=8, pid=pid)
        p.meta.update(patient_id=mrn, study_date=date)
        pts.append(p)
    write_cache(pts, path)
    return path


def _side(obj, pid):
    return next(n for n, v in obj["splits"].items() if pid in v)


def test_two_plans_of_one_patient_land_in_one_split(tmp_path):
    """An import names two plans (or CT series) of one PatientID HN7_1 / HN7_2; `data split --random`
    and `--temporal` ignored the PatientID, so the patient's first plan trained and its re-plan (the
    same anatomy) tested the model: for 5 of 10 seeds the random split put them apart, and the temporal
    split always (2014 to train, 2023 to test). Now the plans of one PatientID go together (temporal:
    at the earliest plan's place), and `--ids` lists that part them are warned about."""
    from dosepred import workflows
    from dosepred.io.cache import Cache

    src = _plans_cache(tmp_path / "cache")
    for seed in range(10):
        obj = workflows.make_split(src, tmp_path / f"r{seed}.json", "random", fractions="0.5,0.25,0.25",
                                   seed=seed)
        assert _side(obj, "HN7_1") == _side(obj, "HN7_2"), (seed, obj["splits"])
        assert split.read_split(tmp_path / f"r{seed}.json") == obj["splits"]
        assert sorted(sum(obj["splits"].values(), [])) == sorted(Cache.open(src).ids)
    obj = workflows.make_split(src, tmp_path / "t.json", "temporal", fractions="0.75,0.25")
    assert obj["splits"]["train"][:2] == ["HN7_1", "HN7_2"] and "HN7_2" not in obj["splits"]["test"]
    assert obj["groups"] == [["HN7_1", "HN7_2"]] and len(obj["splits"]["test"]) == 3
    with pytest.warns(split.SplitWarning, match="HN7: HN7_1 in 'train', HN7_2 in 'test'"):
        workflows.make_split(src, tmp_path / "i.json", "ids",
                             ids=["train=HN7_1,pt_1,pt_2,pt_3,pt_4,pt_5",
                                  "test=HN7_2,pt_6,pt_7,pt_8,pt_9,pt_10"])


def test_an_empty_split_is_refused_where_it_is_used(tmp_path):
    """A hand-written split file whose 'val' list is empty: train --val-split trained without any
    validation (best.pt = last.pt) and data subset said 'no patients to write to .sub0.tmp-...'."""
    import json

    from dosepred.split import SplitError, load_split

    f = tmp_path / "s.json"
    f.write_text(json.dumps({"splits": {"train": ["a"], "val": []}}))
    assert load_split(f, "train") == ["a"]
    with pytest.raises(SplitError, match="split 'val' names no patient"):
        load_split(f, "val")


def test_a_temporal_split_of_patients_all_of_one_date_is_refused():
    """DICOM StudyDates an anonymiser set to one date (19000101 for all): `data split --temporal` cut
    the cohort by patient id alone and recorded it as a temporal split, without a word. Refused now;
    ties at a cut (patients of one day) and a single split stay as they were."""
    dates = {f"pt_{i}": "19000101" for i in range(1, 11)}
    with pytest.raises(SplitError, match="all 10 patients have the same date 19000101"):
        split.temporal_split(dates, "0.8,0.2")
    assert split.temporal_split(dates, "1")["splits"] == {"train": sorted(dates, key=lambda i: int(i[3:]))}
    dates["pt_10"] = "19000102"
    s = split.temporal_split(dates, "0.5,0.5")["splits"]
    assert s["test"] == ["pt_6", "pt_7", "pt_8", "pt_9", "pt_10"]


@pytest.mark.parametrize("bad", ["202001151", "2020-01-155", "2019-12-3112"])
def test_a_date_with_a_digit_too_many_is_refused_not_cut_to_eight(bad):
    """A manifest date with a digit too many ('202001151', a typo) was read as its first eight digits
    (2020-01-15) and the patient placed by that date without a word; refused now. DICOM DT's time
    after YYYYMMDD, an ISO time and a number's '.0' are read as before."""
    with pytest.raises(SplitError, match=f"pt_9: date '{bad}' is not YYYYMMDD or YYYY-MM-DD"):
        split.temporal_split({"pt_9": bad}, "1")
    for ok in ("20200115103000.5", "2020011510", "20200115+0100", "2020-01-15T10:30", "2020-01-15 10:30",
               "20200115.0"):
        assert split.temporal_split({"pt_9": ok}, "1")["date_ranges"]["train"] == ["20200115"] * 2
