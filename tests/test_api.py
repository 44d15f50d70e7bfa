"""The public API: what `dosepred` and `dosepred.io` export, its docstrings, the pdoc reference."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import dosepred
import dosepred.io
from dosepred import evaluation

ROOT = Path(__file__).parents[1]


def _own_doc(obj) -> str:
    """The object's own docstring (not a dataclass's generated signature, not a parent's)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    doc = (doc or "").strip()
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # dataclass placeholder
    return doc


@pytest.mark.parametrize("mod", [dosepred, dosepred.io], ids=lambda m: m.__name__)
def test_exported_names_resolve_and_have_docstrings(mod):
    assert _own_doc(mod)
    names = [n for n in mod.__all__ if not n.startswith("__")]
    assert len(names) == len(set(names))
    undocumented = [n for n in names if not _own_doc(getattr(mod, n))]
    assert not undocumented, f"{mod.__name__}: no docstring on {undocumented}"


def test_entry_points_are_the_implementations():
    from dosepred.io import cache, openkbp, source
    from dosepred.models.checkpoint import load_model
    from dosepred.predict import predict_dose
    from dosepred.training import train

    assert dosepred.load_patients is source.load_patients and dosepred.io.write_cache is cache.write_cache
    assert dosepred.io.read_openkbp_patient is openkbp.read_patient
    assert dosepred.load_model is load_model and dosepred.predict_dose is predict_dose
    assert dosepred.evaluate_cohort is evaluation.evaluate_cohort and dosepred.train is train
    with pytest.raises(AttributeError):
        dosepred.no_such_name  # noqa: B018


def test_import_stays_light():
    code = "import sys, dosepred, dosepred.io; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert r.stdout.strip() == "False"


def test_result_members_have_docstrings():
    for cls in (evaluation.CohortResult, evaluation.PatientResult):
        for name, v in vars(cls).items():
            if name.startswith("_"):
                continue
            f = v.fget if isinstance(v, property) else v
            if callable(f):
                assert (f.__doc__ or "").strip(), f"{cls.__name__}.{name} has no docstring"


def test_api_reference_builds(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_api_docs.py"), "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=600,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert r.returncode == 0, r.stderr
    index = (tmp_path / "dosepred.html").read_text()
    for name in ("load_patients", "load_model", "predict_dose", "evaluate_cohort", "train"):
        assert f'id="{name}"' in index
    assert (tmp_path / "dosepred" / "io.html").is_file()
