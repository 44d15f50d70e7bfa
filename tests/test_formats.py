"""The table of formats (:mod:`dosepred.io.formats`): every row complete (a capability it lacks is
None), no string switch on a format's name outside it (checked on the source, and shown to fail on
made-up switches), and each format's detection on folders written in that format (and only it)."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest

from dosepred.io import formats
from dosepred.io.formats import FORMATS, Format
from dosepred.io.source import KINDS, open_source, source_kind

SRC = Path(__file__).parents[1] / "src"
NAMES = {f.name for f in FORMATS}

# ------------------------------------------------------------------------------------ the rows

#: fields that are a capability: a callable, or None where the format lacks it
CAPABILITIES = ("detect_late", "read_source", "write_patient", "write_dose", "read_dose", "read_dose_on",
                "read_dose_sparse", "dose_geometry", "source_bytes", "read_reference_boxes", "open_doses",
                "match_doses", "near_miss")


def test_every_row_is_complete_or_explicitly_none():
    hints = typing.get_type_hints(Format)
    for f in FORMATS:
        for fld in dataclasses.fields(Format):
            v = getattr(f, fld.name)
            hint = str(hints[fld.name])
            if fld.name in CAPABILITIES:
                assert v is None or callable(v), (f.name, fld.name)
            elif "Callable" in hint:
                assert callable(v), (f.name, fld.name)  # detect, open: every format has them
            elif hints[fld.name] is str:
                assert isinstance(v, str) and v, (f.name, fld.name)
            elif hints[fld.name] is bool:
                assert isinstance(v, bool), (f.name, fld.name)
        # a format takes an ROI map, or says how its ROIs are named when one is given: not both
        assert f.takes_roi_map == (f.roi_naming is None), f.name
        # what a capability needs comes with it
        if f.dose_by_id or f.read_dose is not None or f.read_dose_sparse is not None:
            assert f.dose_suffixes, f.name
        if f.dose_by_id:
            assert f.read_dose is not None, f.name  # a file found by id is read as stored
        if f.write_dose is not None:
            assert f.dose_suffixes and (f.read_dose is not None or f.read_dose_on is not None), f.name
        if f.is_cache:
            assert f.read_source is None
        # the commands' words come with the capability (data import-/export-, predict --format)
        assert (f.import_help is None) == (f.read_source is None), f.name
        assert (f.export_help is None) == (f.write_patient is None), f.name
        assert (f.dose_output is None) == (f not in formats.prediction_formats()), f.name
        if f.match_doses is not None:  # matched doses are placed by their own geometry
            assert not f.dose_by_id and f.read_dose_on is not None and f.dose_suffixes, f.name
    assert len(NAMES) == len(FORMATS) and KINDS == tuple(f.name for f in FORMATS)


def test_every_row_module_names_each_capability():
    """A row says what its format lacks: every capability is given in the row, None or not."""
    rows = 0
    for path in sorted((SRC / "dosepred" / "io" / "formats").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Format":
                rows += 1
                given = {k.arg for k in node.keywords}
                assert set(CAPABILITIES) <= given, (path.name, set(CAPABILITIES) - given)
    assert rows == len(FORMATS)


def test_lookups_derived_from_the_table():
    from dosepred.evaluation import PREDICTION_PATTERNS, PREDICTION_READERS
    from dosepred.predict import FORMAT_NAMES

    assert FORMAT_NAMES == ("openkbp", "nifti", "dicom", "cache")
    assert PREDICTION_PATTERNS == ("{id}.csv", "{id}.nii.gz", "{id}.nii")
    assert tuple(PREDICTION_READERS) == (".csv", ".nii.gz", ".nii")
    assert formats.names(formats.importable()) == ("openkbp", "nifti", "dicom")
    assert formats.find("nope") is None and formats.find(FORMATS[0]) is FORMATS[0]
    with pytest.raises(KeyError, match="no format 'nope'"):
        formats.get("nope")


# --------------------------------------------------------------- no string switch on a format name

#: (file under src/, the format name) -> why: a comparison with a format's name that is no switch on
#: a source's kind. Add one only with its reason.
ALLOWED: dict[tuple[str, str], str] = {
    ("dosepred/io/dicom/export.py", "dicom"):
        "the DICOM writer keeps the layout of a patient its own reader read (meta['format'], provenance)",
}


def _is_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in NAMES


def _names_in(node: ast.AST) -> list[str]:
    """The format names a constant or a tuple / list / set literal holds."""
    if _is_name(node):
        return [node.value]  # type: ignore[attr-defined]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if _is_name(e)]  # type: ignore[attr-defined]
    return []


def format_switches(root: Path, allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Where the modules under ``root/dosepred`` (but ``io/formats``) decide by a format's name:
    a comparison with it (``kind == "dicom"``, ``fmt in ("cache", "openkbp")``), a dict keyed by two
    or more of them (a table of writers or messages kept outside the table), a tuple / list / set of
    two or more (a list of kinds), or a ``match`` case on one. ``allowed``: (file, name) pairs."""
    allowed = ALLOWED if allowed is None else allowed
    found = []
    for path in sorted((root / "dosepred").rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[:3] == ("dosepred", "io", "formats"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            what, names = None, []
            if isinstance(node, ast.Compare):
                names = [n for s in (node.left, *node.comparators) for n in _names_in(s)]
                what = "compares with a format's name" if names else None
            elif isinstance(node, ast.Dict):
                names = [k.value for k in node.keys if k is not None and _is_name(k)]  # type: ignore[attr-defined]
                what = "keys a dict by format names" if len(names) >= 2 else None
            elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = _names_in(node)
                what = "lists format names" if len(names) >= 2 else None
            elif isinstance(node, ast.MatchValue) and _is_name(node.value):
                names, what = [node.value.value], "matches a format's name"  # type: ignore[attr-defined]
            if what and not all((rel.as_posix(), n) in allowed for n in names):
                found.append(f"{rel.as_posix()}:{node.lineno}: {what} ({', '.join(names)})")
    return found


def test_no_string_switch_on_a_format_outside_the_table():
    assert format_switches(SRC) == []


def test_allowed_entries_are_still_needed():
    for file, name in ALLOWED:
        assert format_switches(SRC, {}) and any(
            f.startswith(file + ":") and name in f for f in format_switches(SRC, {})), (file, name)


@pytest.mark.parametrize("code", [
    "def f(kind):\n    return kind == 'dicom'\n",
    "def f(s):\n    return 'cache' != s.kind\n",
    "def f(kind):\n    return kind not in ('cache', 'openkbp')\n",
    "def f(fmt):\n    return {'nifti': 1, 'dicom': 2}[fmt]\n",
    "def f(p):\n    return p.meta.get('format') == 'dicom'\n",
    "KINDS = ('cache', 'openkbp', 'nifti', 'dicom')\n",
    "def f(k):\n    match k:\n        case 'openkbp':\n            return 1\n",
])
def test_the_rule_finds_a_switch(tmp_path, code):
    (tmp_path / "dosepred" / "io" / "formats").mkdir(parents=True)
    (tmp_path / "dosepred" / "io" / "formats" / "x.py").write_text(code)  # the table's own room: allowed
    (tmp_path / "dosepred" / "ok.py").write_text("def f(r, p):\n    return r.kind == 'target', "
                                                 "p == 'openkbp-clinical', load('openkbp'), "
                                                 "{'cache': 'x', 'rows': []}\n")
    assert format_switches(tmp_path) == []
    (tmp_path / "dosepred" / "m.py").write_text(code)
    found = format_switches(tmp_path)
    assert found and all(f.startswith("dosepred/m.py:") for f in found), found


def test_evaluation_reads_sources_only_through_the_rows():
    """Pairing imports no module of one format (:mod:`dosepred.io.cache`, ``openkbp``, ``nifti``,
    ``dicom``): what it reads of a format is a capability of the format's row (so a new format
    that sets it needs no pairing code). Before, it read caches, OpenKBP folders and RTDOSE files
    with their own modules."""
    own = {"dosepred.io." + m for m in ("cache", "openkbp", "nifti", "dicom")}
    path = SRC / "dosepred" / "evaluation" / "pairing.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("io"):
            mods = [f"dosepred.{node.module}"] + [f"dosepred.{node.module}.{a.name}" for a in node.names]
            found += [m for m in mods if any(m == o or m.startswith(o + ".") for o in own)]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if any(a.name.startswith(o) for o in own)]
    assert found == []


def test_placing_a_dose_needs_no_format_s_module():
    """What every row shares (``base.py``: ``place_dose``) imports no DICOM module: placing a dose
    file by its own geometry is format-independent resampling (``dosepred.resample.dose_on_grid``;
    it lived in the DICOM package before)."""
    tree = ast.parse((SRC / "dosepred" / "io" / "formats" / "base.py").read_text())
    found = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             and "dicom" in ast.unparse(n)]
    assert found == []


# ------------------------------------------------------------------ detection of written folders

@pytest.fixture(scope="module")
def written(openkbp_truth, tmp_path_factory) -> dict[str, Path]:
    """The hand-made OpenKBP patients written in every format: name -> folder."""
    from dosepred.io.cache import write_cache

    root = tmp_path_factory.mktemp("formats")
    src = open_source(openkbp_truth["root"])
    patients = list(src.patients())
    out = {"openkbp": openkbp_truth["root"]}
    write_cache(patients, root / "cache")
    out["cache"] = root / "cache"
    for f in FORMATS:
        if f.write_patient is not None and f.name not in out:
            (root / f.name).mkdir()
            for p in patients:
                f.write_patient(p, root / f.name, "labels")
            out[f.name] = root / f.name
    assert set(out) == NAMES
    return out


@pytest.mark.parametrize("name", sorted(NAMES))
def test_detect_finds_the_written_format_and_only_it(written, name):
    folder = written[name]
    assert [f.name for f in FORMATS if f.detect(folder)] == [name]
    # (a late sign may hold too, e.g. OpenKBP's pt_* folders on a DICOM export: it counts only when no
    # format's detect does)
    assert source_kind(folder) == name and formats.detect(folder) is formats.get(name)
    s = open_source(folder)
    assert s.kind == name and s.format is formats.get(name) and len(s) == 2
    if not formats.get(name).is_cache:  # a reader records its row's name (a cache keeps its source's)
        assert all(p.meta["format"] == name for p in s.patients())
    assert (s.cache is not None) == formats.get(name).is_cache


def test_dose_files_are_read_back_by_their_format(written, tmp_path):
    """Each per-patient dose writer's file is recognised as its own format's and read back."""
    src = open_source(written["cache"])
    p = next(src.patients())
    dose = np.where(p.possible_dose_mask, np.float32(1.5), np.float32(0))
    for f in FORMATS:
        if f.write_dose is None:
            continue
        path = f.write_dose(p, dose, tmp_path / f.name, None, "test")
        assert formats.dose_file_format(path) is f
        back = f.read_dose_on(path, p) if f.read_dose_on is not None else f.read_dose(path, p.shape)
        np.testing.assert_allclose(back, dose, atol=0.01, err_msg=f.name)


def test_prediction_csv_of_a_grid_other_than_128_cubed_warns(tmp_path):
    """A pt_N.csv records no grid and OpenKBP's tools read its flat indices on 128^3: a clinic CT's
    prediction (here 20^3, stored as DICOM slices) numbered on its own grid was written without a word."""
    import warnings

    from dosepred.io.formats.openkbp import GridWarning
    from dosepred.predict import write_prediction
    from dosepred.synth import make_cohort

    p = make_cohort(1, seed=0, size=20)[0].reoriented("SPL")  # as read from an axial DICOM series
    dose = np.where(p.possible_dose_mask, 50.0, 0.0).astype(np.float32)
    with pytest.warns(GridWarning, match=r"20x20x20 grid .*--format dicom or nifti"):
        path = write_prediction(p, dose, tmp_path, "openkbp")
    idx = np.loadtxt(path, delimiter=",", skiprows=1)[:, 0].astype(np.int64)
    assert idx.max() < 20 ** 3  # numbered on the patient's grid: on OpenKBP's 128^3 these are other voxels
    assert len(idx) == int(np.count_nonzero(p.possible_dose_mask))

    big = make_cohort(1, seed=0, size=128)[0]  # OpenKBP's own grid: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridWarning)
        big_dose = np.where(big.possible_dose_mask, 1.0, 0.0).astype(np.float32)
        write_prediction(big, big_dose, tmp_path, "openkbp")
