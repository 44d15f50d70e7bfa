"""`dosepred data ...` commands through typer's CliRunner on temporary folders."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dosepred.cli import app
from dosepred.io import cache, openkbp

runner = CliRunner()


def _run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r, " ".join(r.output.split())


def test_synth_inspect_split(tmp_path):
    out = tmp_path / "syn"
    r, text = _run("data", "synth", "--patients", 5, "--out", out, "--size", 16, "--seed", 2, "--no-progress")
    assert r.exit_code == 0, text
    assert "wrote 5 synthetic patients" in text
    c = cache.Cache.open(out)
    assert c.ids == [f"synth_{i:03d}" for i in range(5)]
    r, text = _run("data", "inspect", out)
    assert r.exit_code == 0 and "synth_004" in text and "PTV70" in text
    r, text = _run("data", "split", out, "--out", tmp_path / "s.json", "--random",
                   "--fractions", "0.6,0.2,0.2")
    assert r.exit_code == 0, text
    s = json.loads((tmp_path / "s.json").read_text())
    assert [len(v) for v in s["splits"].values()] == [3, 1, 1] and s["method"] == "random"
    r, text = _run("data", "split", out, "--out", tmp_path / "t.json", "--temporal", "--fractions", "4,1")
    assert r.exit_code == 0, text
    t = json.loads((tmp_path / "t.json").read_text())["splits"]
    dates = {e["id"]: e["meta"]["study_date"] for e in c.info["patients"]}
    assert max(dates[i] for i in t["train"]) <= min(dates[i] for i in t["test"])
    r, text = _run("data", "split", out, "--out", tmp_path / "i.json", "--ids", "train=synth_000,synth_001",
                   "--ids", "val=synth_002")
    assert r.exit_code == 0
    assert json.loads((tmp_path / "i.json").read_text())["splits"]["val"] == ["synth_002"]
    # the two patients in no list are named, not dropped without a word
    assert "warning: 2 of the 5 patients of" in text and "in no split: synth_003, synth_004" in text


def test_synth_extra_rois_and_errors(tmp_path):
    r, text = _run("data", "synth", "--patients", 1, "--out", tmp_path / "x", "--size", 16,
                   "--extra-rois", 30)
    assert r.exit_code == 0 and "40 ROIs" in text
    r, text = _run("data", "synth", "--patients", 1, "--out", tmp_path / "y", "--extra-rois", 60)
    assert r.exit_code == 2 and "extra_rois must be 0..54" in text and not (tmp_path / "y").exists()


def test_split_errors(tmp_path):
    out = tmp_path / "syn"
    _run("data", "synth", "--patients", 3, "--out", out, "--size", 16)
    for args, msg in [((), "exactly one of"), (("--random", "--fractions", "0.5,0.2"), "add up to 1"),
                      (("--ids", "train=pt_9"), "not in the cache: pt_9"),
                      (("--temporal", "--manifest", tmp_path / "none.csv"), "does not exist")]:
        r, text = _run("data", "split", out, "--out", tmp_path / "s.json", *args)
        assert r.exit_code == 2 and msg in text, text
    assert not (tmp_path / "s.json").exists()
    r, text = _run("data", "inspect", tmp_path)
    assert r.exit_code == 2 and "not a dosepred cache" in text


def test_import_export_openkbp(tmp_path, sample_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pt_196").symlink_to(sample_dir / "pt_196")
    r, text = _run("data", "import-openkbp", src, "--out", tmp_path / "c", "--no-progress")
    assert r.exit_code == 0, text
    assert "wrote 1 patients" in text and "Esophagus" in text
    r, text = _run("data", "export-openkbp", tmp_path / "c", "--out", tmp_path / "e", "--no-progress")
    assert r.exit_code == 0, text
    a = openkbp.read_patient(sample_dir / "pt_196")
    b = openkbp.read_patient(tmp_path / "e" / "pt_196")
    for k in ("ct", "dose", "roi_codes", "possible_dose_mask"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


@pytest.mark.parametrize("bad", ["missing", "notafolder"])
def test_import_bad_source(tmp_path, bad):
    src = tmp_path / "src"
    if bad == "notafolder":
        src.mkdir()
    r, text = _run("data", "import-openkbp", src, "--out", tmp_path / "c")
    assert r.exit_code == 2 and "error:" in text and str(src) in text


# ------------------------------------------------------------- commands generated from the table
def _options(command) -> list[str]:
    return [p.opts[0] if p.opts[0].startswith("-") else p.name for p in command.params]


def test_import_and_export_commands_are_as_before():
    """The commands the table of formats generates are the ones users had, with the same options."""
    import typer

    group = typer.main.get_command(app).commands["data"]
    tail = ["--overwrite", "--no-progress"]
    want = {"import-openkbp": ["src", "--out", *tail], "import-nifti": ["src", "--out", *tail],
            "import-dicom": ["src", "--out", "--roi-map", *tail],
            "export-openkbp": ["cache_dir", "--out", *tail], "export-dicom": ["cache_dir", "--out", *tail],
            "export-nifti": ["cache_dir", "--out", "--roi-format", *tail]}
    got = {n: _options(c) for n, c in group.commands.items() if n.startswith(("import-", "export-"))}
    assert got == want
    roi_format = next(p for p in group.commands["export-nifti"].params if p.name == "roi_format")
    assert roi_format.default == "labels"


def test_a_new_format_gets_its_commands_from_its_row(tmp_path, monkeypatch):
    """Adding a format is one module and one row: a made-up row gets ``data import-<name>`` (with
    ``--roi-map`` as it takes an ROI map) and ``data export-<name>`` (with ``--roi-format`` from its
    three ROI layouts), their help its words, each calling the workflow with its name. Before, each
    command was written per format in cli/data.py."""
    import dataclasses

    import typer

    from dosepred import console, workflows
    from dosepred.cli.data import add_format_commands
    from dosepred.io import formats

    row = dataclasses.replace(formats.get("dicom"), name="toy", label="Toy",
                              described="a toy folder (toy.json)", import_help="Import toys.",
                              export_help="Write toys.",
                              roi_layouts=(("a", "a.toy"), ("b", "b.toy"), ("c", "c.toy")))
    toys = typer.Typer()
    add_format_commands(toys, [row])
    group = typer.main.get_command(toys)
    assert sorted(group.commands) == ["export-toy", "import-toy"]
    imp, exp = group.commands["import-toy"], group.commands["export-toy"]
    assert _options(imp) == ["src", "--out", "--roi-map", "--overwrite", "--no-progress"]
    assert _options(exp) == ["cache_dir", "--out", "--roi-format", "--overwrite", "--no-progress"]
    assert imp.help == "Import toys." and exp.help == "Write toys."
    assert imp.params[0].help == "A toy folder (toy.json)."
    roi_format = exp.params[2]
    assert roi_format.default == "a" and roi_format.help == "a (a.toy), b (b.toy) or c (c.toy)."
    calls = []
    monkeypatch.setattr(workflows, "import_patients", lambda *a: calls.append(("import", *a)))
    monkeypatch.setattr(workflows, "export_cache", lambda *a: calls.append(("export", *a)) or 0)
    monkeypatch.setattr(console, "imported", lambda *a: [])
    r = CliRunner().invoke(toys, ["import-toy", str(tmp_path), "--out", str(tmp_path / "c"), "--roi-map",
                                  str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(toys, ["export-toy", str(tmp_path), "--out", str(tmp_path / "e"), "--roi-format",
                                  "b"])
    assert r.exit_code == 0, r.output
    assert calls == [("import", tmp_path, tmp_path / "c", "toy", tmp_path / "m.json", False),
                     ("export", tmp_path, tmp_path / "e", "toy", "b", False)]


def test_help_lists_every_format_from_the_table():
    """Where a command takes any source, its help names every format of the table (before, each help
    listed them by hand and `qa --plans` left NIfTI out); `predict --format` lists every prediction
    format with what it writes."""
    import typer

    from dosepred.io import formats

    root = typer.main.get_command(app)
    where = [("data", "inspect", "src"), ("data", "split", "src"), ("evaluate", None, "reference"),
             ("baseline", None, "data"), ("calibrate", None, "data"), ("qa", None, "plans"),
             ("predict", None, "data")]
    for group, name, param in where:
        c = root.commands[group] if name is None else root.commands[group].commands[name]
        text = next(p.help for p in c.params if p.name == param)
        assert all(f.described in text for f in formats.FORMATS), (group, name, text)
    fmt_help = next(p.help for p in root.commands["predict"].params if p.name == "fmt")
    assert all(f"{f.name} ({f.dose_output})" in fmt_help for f in formats.prediction_formats())


def test_names_with_square_brackets_are_printed_as_they_are(tmp_path):
    """The console read patient ids and ROI names as rich markup: "pt [b]7" was printed as "pt 7"
    (bold), ROIs "Ring [i]" and "Cord [bold red]" as "Ring " and "Cord ", two ROIs "Ring [i]" and
    "Ring [u]" alike, and a name holding "[/x]" ended the command with a traceback. They are now
    printed as they are."""
    from dosepred import synth
    from dosepred.patient import Patient, Roi, RoiSet

    (p,) = list(synth.iter_cohort(1, seed=0, size=16))
    new = {"LeftParotid": "Ring [i]", "RightParotid": "Cord [bold red]", "Larynx": "Larynx [/x]",
           "Brainstem": "Stem :brain:"}
    rs = RoiSet(tuple(Roi(new.get(r.name, r.name), r.kind, r.prescription) for r in p.roi_set))
    q = Patient("pt [b]7", p.ct, p.roi_codes, rs, p.spacing, p.possible_dose_mask, p.dose,
                tuple(new.get(m, m) for m in p.missing_rois), dict(p.meta), p.geometry)
    cache.write_cache([q], tmp_path / "c", roi_set=rs)
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())  # lines wrap at the console's width, which the tmp path's length moves
    for name in ("pt [b]7", "Ring [i]", "Cord [bold red]", "Larynx [/x]", "Stem :brain:"):
        assert name in flat, name


def test_console_styles_are_styles_not_markup_text():
    """With the console's markup off, dosepred's own colours (evaluate's criteria table, qa's warnings
    and notes) are styled text, not "[green]...[/]" printed as it is."""
    from types import SimpleNamespace

    from rich.console import Console

    from dosepred import console as render

    # (qa's warnings go to stderr as every warning does; its notes are the console's own colours)
    res = SimpleNamespace(patients=[SimpleNamespace(id="pt [b]7", notes=["a [i]note"], not_contoured=[])])
    con = Console(markup=False, width=200, record=True, color_system="truecolor", force_terminal=True)
    for x in render.qa_notes(res):
        con.print(x)
    text = con.export_text(styles=False, clear=False)
    assert "note: pt [b]7: a [i]note" in text and "[/]" not in text and "[yellow" not in text
    assert "\x1b[33mnote:" in con.export_text(styles=True)


def test_split_help_states_the_defaults_it_applies(tmp_path):
    """`data split --help` gave no default for --fractions or --names, while --random split 0.7/0.15/0.15
    into train/val/test and --temporal 0.8/0.2 into train/test: a user could not tell from the help
    what a split without --fractions would be. The help states both; each is the one applied."""
    import re

    help_text = " ".join(runner.invoke(app, ["data", "split", "--help"]).output.split())
    shown = dict(re.findall(r"--(random|temporal) ([0-9.,]+\d)", help_text))
    assert shown == {"random": "0.7,0.15,0.15", "temporal": "0.8,0.2"}, help_text
    assert "train,val,test" in help_text and "train,test" in help_text
    out = tmp_path / "syn"
    r, text = _run("data", "synth", "--patients", 20, "--out", out, "--size", 16, "--no-progress")
    assert r.exit_code == 0, text
    for how, names in (("random", ["train", "val", "test"]), ("temporal", ["train", "test"])):
        r, text = _run("data", "split", out, "--out", tmp_path / f"{how}.json", f"--{how}")
        assert r.exit_code == 0, text
        s = json.loads((tmp_path / f"{how}.json").read_text())
        assert s["fractions"] == [float(x) for x in shown[how].split(",")] and list(s["splits"]) == names
        assert [len(v) for v in s["splits"].values()] == [round(20 * float(x)) for x in shown[how].split(",")]


def test_every_patients_option_names_every_source_it_reads():
    """`bench qa-power --data` said '(a cache or OpenKBP folder)' while it opens its patients as `qa`
    does (io.source.plan_source: NIfTI and DICOM folders too); the other patients options name every
    format (cli.common.SOURCES). Also: `predict --device` takes cuda:N, `--model` an ensemble folder."""
    from dosepred.io import formats

    for cmd in (["bench", "qa-power"], ["predict"], ["calibrate"], ["qa"], ["evaluate"], ["baseline"]):
        text = " ".join(runner.invoke(app, [*cmd, "--help"]).output.split())
        assert "cache or OpenKBP folder" not in text, cmd
        assert all(f.described in text for f in formats.FORMATS), cmd
    text = " ".join(runner.invoke(app, ["predict", "--help"]).output.split())
    assert "cuda:N" in text and "ensemble folder" in text
