"""The one error path: everything a user can cause is a :class:`dosepred.errors.DosepredError` (one
line, exit code 2 on the command line); anything else is a bug and shows as one (a short traceback,
a line asking to report it, exit code 1), so an internal error never looks like a user's mistake.

- every error class of the package derives from DosepredError (and its ValueError / KeyError stays);
- the CLI: a user error is one line and exit 2; a TypeError, a plain ValueError or KeyError from inside
  a command is a short traceback + "please report" and exit 1; typer's own exits pass untouched;
- the source (AST): no ``raise ValueError(`` / ``raise KeyError(`` outside :data:`INTERNAL_CHECKS`, the
  consistency checks no input can reach, each with its reason.
"""

from __future__ import annotations

import ast
import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dosepred
from dosepred.cli import app
from dosepred.cli import common as cli_common
from dosepred.errors import DosepredError, InputError, UnknownNameError

SRC = Path(__file__).parents[1] / "src"

#: (file under src/, qualified function) -> (number of ``raise ValueError(`` / ``raise KeyError(`` there,
#: why no user input can reach them). Everything else a user can cause raises a DosepredError.
INTERNAL_CHECKS: dict[tuple[str, str], tuple[int, str]] = {
    ("dosepred/roi.py", "code_dtype"): (1, "a negative ROI count: counted by dosepred's code"),
    ("dosepred/roi.py", "encode"): (1, "no masks and no shape: a caller's mistake in Python"),
    ("dosepred/geometry.py", "Geometry.axis_along"): (1, "the axis names are literals in dosepred's code"),
    ("dosepred/boxes.py", "mask_box"): (1, "the 'empty' policy is a literal in dosepred's code"),
    ("dosepred/metrics.py", "percentile_index"): (2, "callers pass voxel counts they checked non-zero"),
    ("dosepred/dvh.py", "roi_metrics_pair"): (1, "scoring takes both dose lists through one mask"),
    ("dosepred/dvh.py", "roi_metric"): (1, "an AssertionError / TypeError inside the metric maths: a bug"),
    ("dosepred/losses/_common.py", "check_inputs"): (
        6, "tensor shapes between dosepred's dataset, model and loss (a shape contract, as in torch)"),
    ("dosepred/losses/cdm.py", "sorted_percentile"): (
        2, "empty ROIs are skipped and percentiles parsed (MetricError) before"),
    ("dosepred/losses/cdm.py", "d_metric"): (2, "the tensor and voxel volume the loss passes"),
    ("dosepred/losses/cdm.py", "v_metric"): (1, "empty ROIs are skipped before"),
    ("dosepred/losses/cdm.py", "cdm_loss"): (2, "codes and spacing the trainer always passes"),
    ("dosepred/losses/cdm.py", "CDMLoss.__init__"): (1, "build_loss always passes the dataset's ROI set"),
    ("dosepred/losses/dvh_curve.py", "soft_dvh"): (1, "empty ROIs are skipped before"),
    ("dosepred/losses/dvh_curve.py", "dvh_curve_loss"): (1, "codes the trainer always passes"),
    ("dosepred/losses/dvh_curve.py", "DVHCurveLoss.__init__"): (1, "build_loss always passes the ROI set"),
    ("dosepred/losses/moment.py", "moment_loss"): (1, "codes the trainer always passes"),
    ("dosepred/losses/moment.py", "MomentLoss.__init__"): (1, "build_loss always passes the ROI set"),
    ("dosepred/io/cache.py", "_Npz.__init__"): (
        1, "caught by read_arrays / read_voxels and re-raised as CacheError naming the patient and file"),
    ("dosepred/models/unet.py", "DoseUNet.assemble"): (3, "tensor shapes the dataset and predict build"),
    ("dosepred/qa/conformal.py", "fit_family"): (1, "the family is named by dosepred's code"),
    ("dosepred/bench/bitmask.py", "CropDataset.__init__"): (1, "pipeline names are checked before"),
}


def _error_classes() -> list[type]:
    """Every class named ``*Error`` defined in src/dosepred (found in the source, then imported)."""
    found = []
    for path in sorted((SRC / "dosepred").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Error")]
        if names:
            rel = path.relative_to(SRC).with_suffix("")
            mod = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            found += [getattr(importlib.import_module(mod), n) for n in names]
    return found


def test_every_error_class_is_a_dosepred_error():
    classes = _error_classes()
    assert len(classes) >= 17  # the 14 stage classes, InputError, UnknownNameError, TrainingDivergedError
    assert all(issubclass(c, DosepredError) for c in classes), \
        [c.__qualname__ for c in classes if not issubclass(c, DosepredError)]
    # each keeps the built-in base code may catch
    kept = [c for c in classes if c is not DosepredError and not issubclass(c, (ValueError, KeyError,
                                                                                 FloatingPointError))]
    assert not kept, kept
    assert dosepred.DosepredError is DosepredError and dosepred.InputError is InputError


def test_lookups_stay_key_errors():
    from dosepred.patient import Roi, RoiSet

    with pytest.raises(UnknownNameError) as e:
        RoiSet([Roi("PTV70", "target", 70.0)]).index("Cochlea")
    assert isinstance(e.value, KeyError) and e.value.args[0].startswith("ROI 'Cochlea' is not in the ROI set")


def _raise_sites(root: Path) -> Counter[tuple[str, str]]:
    """(file, qualified function) -> number of ``raise ValueError(...)`` / ``raise KeyError(...)``."""
    out: Counter[tuple[str, str]] = Counter()

    def visit(node: ast.AST, qual: list[str], rel: str) -> None:
        for c in ast.iter_child_nodes(node):
            if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(c, [*qual, c.name], rel)
                continue
            if isinstance(c, ast.Raise) and c.exc is not None:
                f = c.exc.func if isinstance(c.exc, ast.Call) else c.exc
                if isinstance(f, ast.Name) and f.id in ("ValueError", "KeyError"):
                    out[(rel, ".".join(qual) or "<module>")] += 1
            visit(c, qual, rel)

    for path in sorted(root.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), [], path.relative_to(root.parent).as_posix())
    return out


def test_user_errors_are_not_plain_value_or_key_errors():
    sites = _raise_sites(SRC / "dosepred")
    new = {k: n for k, n in sites.items() if k not in INTERNAL_CHECKS}
    assert not new, ("raise InputError (dosepred.errors) or the module's error class for what a user can "
                     f"cause; a check no input reaches goes into INTERNAL_CHECKS with its reason: {new}")
    stale = {k: (n, sites.get(k, 0)) for k, (n, _) in INTERNAL_CHECKS.items() if sites.get(k, 0) != n}
    assert not stale, f"INTERNAL_CHECKS entries whose count changed (listed, found): {stale}"


def test_the_rule_catches_a_plain_value_error(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("class A:\n    def f(self, x):\n        if x:\n"
                              "            raise ValueError('bad')\n        raise KeyError(x)\n\n"
                              "def g():\n    raise InputError('fine')\n")
    assert _raise_sites(pkg) == {("pkg/m.py", "A.f"): 2}


# ------------------------------------------------------------------------------------- the CLI


def _cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cache(tmp_path):
    out = tmp_path / "c"
    assert _cli("data", "synth", "--patients", "1", "--size", "16", "--out", out).exit_code == 0
    return out


def _boom(exc: BaseException):
    def f(*a, **k):
        def inner():
            raise exc
        inner()
    return f


@pytest.mark.parametrize("exc", [TypeError("unsupported operand"), ValueError("shapes (3,) and (4,)"),
                                 KeyError("roi_codes")], ids=lambda e: type(e).__name__)
def test_an_internal_error_is_shown_as_a_bug(monkeypatch, cache, tmp_path, exc):
    monkeypatch.setattr("dosepred.workflows.export_cache", _boom(exc))
    r = _cli("data", "export-nifti", cache, "--out", tmp_path / "n")
    assert r.exit_code == 1, r.output
    err = r.stderr
    assert "Traceback (most recent call last)" in err and "in inner" in err  # where it happened
    assert err.count('  File "') <= cli_common.TRACEBACK_FRAMES  # short: the innermost frames only
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: internal error ({type(exc).__name__}: ")
    assert last.endswith("this is a bug in dosepred, please report it with the command line that caused it")
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("exc", [InputError("patient pt_1: dose contains NaN/inf"),
                                 UnknownNameError("patient pt_9 is not in cache c")],
                         ids=lambda e: type(e).__name__)
def test_a_user_error_is_one_line(monkeypatch, cache, tmp_path, exc):
    monkeypatch.setattr("dosepred.workflows.export_cache", _boom(exc))
    r = _cli("data", "export-nifti", cache, "--out", tmp_path / "n")
    assert r.exit_code == 2
    assert r.stderr == f"error: {exc.args[0]}\n"  # the message as given, a KeyError's unquoted


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"),
                                 type("OutOfMemoryError", (RuntimeError,), {})("CUDA error")],
                         ids=["MemoryError", "RuntimeError", "torch-OutOfMemoryError"])
def test_running_out_of_memory_is_one_line_not_a_bug(monkeypatch, cache, tmp_path, exc):
    """The machine's limit, not dosepred's bug: one line that says so and what lowers the need."""
    monkeypatch.setattr("dosepred.workflows.export_cache", _boom(exc))
    r = _cli("data", "export-nifti", cache, "--out", tmp_path / "n")
    assert r.exit_code == 2
    assert r.stderr == f"error: out of memory ({type(exc).__name__}): {cli_common.OUT_OF_MEMORY_HINT}\n"


def test_a_real_user_error_and_typer_exits(cache, tmp_path):
    r = _cli("data", "export-nifti", cache, "--out", tmp_path / "n", "--roi-format", "bits")
    assert r.exit_code == 2
    assert r.stderr == "error: --roi-format must be labels or codes for nifti, got 'bits'\n"
    assert _cli("--version").exit_code == 0  # typer.Exit passes through
    r = _cli("data", "export-nifti", cache, "--no-such-option")
    assert r.exit_code == 2 and "No such option" in r.output and "internal error" not in r.output


def test_main_outside_a_command(monkeypatch, capsys):
    """What escapes typer itself (not a command) takes the same path."""
    monkeypatch.setattr("sys.argv", ["dosepred", "data"])
    for exc, code in ((AttributeError("'NoneType' object has no attribute 'id'"), 1),
                      (InputError("--data x: not a cache"), 2)):
        monkeypatch.setattr(cli_common, "app", _boom(exc))
        with pytest.raises(SystemExit) as e:
            cli_common.main()
        assert e.value.code == code
        err = capsys.readouterr().err
        if code == 1:
            assert "Traceback" in err and err.strip().splitlines()[-1].startswith(
                "error: internal error (AttributeError: 'NoneType' object has no attribute 'id'); "
                "this is a bug")
        else:
            assert err == "error: --data x: not a cache\n"


# --------------------------------------------------------------- library errors caught at the reader


def test_a_malformed_portpy_protocol_is_a_protocol_error(tmp_path):
    from dosepred.protocol import ProtocolError, from_portpy, load_protocol

    good = {"criteria": [{"type": "max_dose", "parameters": {"structure_name": "Brainstem"},
                          "constraints": {"limit_dose_gy": 54}}]}
    assert load_protocol(_write(tmp_path / "ok.json", good)).criteria[0].limit == 54
    bad_limit = {"criteria": [{"type": "max_dose", "parameters": {"structure_name": "Brainstem"},
                               "constraints": {"limit_dose_gy": "fifty"}}]}
    with pytest.raises(ProtocolError, match=r"bad\.json is not a PortPy clinical_criteria JSON .*ValueError"):
        from_portpy(_write(tmp_path / "bad.json", bad_limit))
    with pytest.raises(ProtocolError, match="is not valid JSON"):
        from_portpy(_write(tmp_path / "broken.json", "{"))
    with pytest.raises(ProtocolError, match=r"list\.json: a PortPy protocol is a JSON object"):
        from_portpy(_write(tmp_path / "list.json", [1]))
    with pytest.raises(ProtocolError, match=r"protocol \S*bad2\.json is not a PortPy"):  # via load_protocol
        load_protocol(_write(tmp_path / "bad2.json", bad_limit))


def _write(path: Path, obj: object) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


# Found by running the commands on malformed files: each was a Python error of the wrong kind (shown as
# a bug, or before this change as a bare library message).


def test_nifti_sidecar_fields_of_the_wrong_type(tmp_path):
    from dosepred.io.nifti import NiftiFormatError, read_sidecar

    for key, value, what in (("rois", [1, "a"], "a list of objects with a 'name' each"),
                             ("rois", None, "a list of objects"), ("missing_rois", 5, "a list of ROI names"),
                             ("meta", "x", "a JSON object")):
        _write(tmp_path / "rois.json", {"roi_format": "codes", key: value})
        with pytest.raises(NiftiFormatError, match=rf"rois\.json: '{key}' must be {what}"):
            read_sidecar(tmp_path)
    _write(tmp_path / "rois.json", {"rois": [{"name": "PTV70", "kind": "target"}], "missing_rois": [],
                                    "meta": {}})
    assert read_sidecar(tmp_path)["rois"][0]["name"] == "PTV70"


def test_cache_index_of_the_wrong_shape(tmp_path):
    from dosepred.io.cache import Cache, CacheError

    for patients in (None, "x", [1], [{"id": None, "file": "a.npz"}]):
        _write(tmp_path / "dataset.json", {"format": "dosepred-cache", "version": 3, "rois": [],
                                           "patients": patients})
        with pytest.raises(CacheError, match=r"dataset\.json: 'patients' must be a list of objects"):
            Cache.open(tmp_path)
    _write(tmp_path / "dataset.json", [1])
    with pytest.raises(CacheError, match="expected a JSON object"):
        Cache.open(tmp_path)


def test_cache_file_with_arrays_of_the_wrong_shape(tmp_path):
    import numpy as np

    from dosepred.io.cache import CacheError, read_voxels

    np.savez(tmp_path / "p.npz", boxes=np.arange(3), possible_dose_mask=np.ones(2, np.uint8),
             dose=np.ones(2, np.float32), roi_index=np.arange(2), roi_codes=np.ones(2, np.uint8))
    with pytest.raises(CacheError, match=r"patient p1: cannot read \S*p\.npz"):
        read_voxels(tmp_path / "p.npz", "p1")


def test_roi_map_kinds_and_prescriptions_must_be_objects():
    from dosepred.io.roi_names import RoiMap

    for key in ("kinds", "prescriptions"):
        with pytest.raises(InputError, match=rf"ROI map m\.json: '{key}' must be an object"):
            RoiMap.from_obj({"names": {}, key: ["PTV70"]}, "m.json")


def test_loss_options_of_the_wrong_type():
    from dosepred.losses import build_loss
    from dosepred.synth import make_patient

    rs = make_patient(0, size=16).roi_set
    for spec, opts in (("mae+dvh", {"max_dose": "x"}), ("mae+dvh", {"max_elements": "x"}),
                       ("mae+moment", {"eps": "x"})):
        with pytest.raises(InputError, match=rf"loss '{spec[4:]}': "):
            build_loss(spec, rs, None, **opts)


def test_a_negative_seed_is_a_user_error(tmp_path):
    from dosepred.split import SplitError, random_split
    from dosepred.synth import make_cohort
    from dosepred.training.config import TrainConfig

    with pytest.raises(InputError, match="seed must be >= 0, got -1"):
        make_cohort(1, seed=-1, size=16)
    with pytest.raises(SplitError, match="seed must be >= 0, got -1"):
        random_split(["a", "b"], "1,1", seed=-1)
    with pytest.raises(InputError, match="seed"):
        TrainConfig(seed=-1)
    for args in (("data", "synth", "--patients", "1", "--size", "16", "--out", tmp_path / "s"),
                 ("demo", "--out", tmp_path / "d")):
        r = CliRunner().invoke(app, [str(a) for a in args] + ["--seed", "-1"])
        assert r.exit_code == 2 and "--seed" in r.output and "internal error" not in r.output
        assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_an_unknown_device_is_a_user_error():
    from dosepred.predict import resolve_device

    with pytest.raises(InputError, match="device 'tpu' is not a device: give auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    assert resolve_device("cpu").type == "cpu"
