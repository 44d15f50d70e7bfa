"""Shared fixtures. OpenKBP sample patients come from ``../shared/data/openkbp/sample`` when that
folder exists, else from the copy shipped in ``tests/data`` (checksummed), so tests that need real
data always run: in CI and in a fresh clone they never skip for want of data."""

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("DOSEPRED_NO_PROGRESS", "1")

#: At most this many pytest-xdist workers for ``-n auto`` (pyproject's addopts): each holds torch and
#: its own module fixtures, so more than a few cost memory without saving much time.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core, at most :data:`MAX_WORKERS` (2 on CI's 2 cores)."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1)))


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # each worker gets its share of the cores: N workers each with all cores' threads oversubscribe them
    import torch

    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLE = SHARED / "data" / "openkbp" / "sample" / "train-pats"
SHIPPED = ROOT / "tests" / "data" / "openkbp-sample-train-pats.tar.xz"
SHIPPED_SUMS = ROOT / "tests" / "data" / "openkbp-sample-train-pats.sha256"
#: OpenKBP validation patient pt_201, shipped for the README examples (the models never trained on it).
VALIDATION_EXAMPLE = ROOT / "examples" / "openkbp" / "validation-pats"


def _unpack_shipped(dest: Path) -> Path:
    with tarfile.open(SHIPPED) as tf:
        tf.extractall(dest, filter="data")
    root = dest / "train-pats"
    for line in SHIPPED_SUMS.read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        got = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        assert got == digest, f"{SHIPPED}: {rel} does not match {SHIPPED_SUMS}"
    return root


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The OpenKBP sample train patients pt_66, pt_187 (all ROIs), pt_196 (no Esophagus)."""
    if SAMPLE.is_dir():
        return SAMPLE
    return _unpack_shipped(tmp_path_factory.mktemp("openkbp-sample"))


@pytest.fixture(scope="session")
def validation_example() -> Path:
    """OpenKBP validation-pats folder holding pt_201 (shipped under examples/)."""
    assert (VALIDATION_EXAMPLE / "pt_201" / "dose.csv").is_file(), f"{VALIDATION_EXAMPLE} lacks pt_201"
    return VALIDATION_EXAMPLE


@pytest.fixture(scope="session")
def openkbp_truth(tmp_path_factory) -> dict:
    """Two OpenKBP patients written as CSV text from known voxels (:func:`handmade.write_openkbp`)."""
    from handmade import write_openkbp

    return write_openkbp(tmp_path_factory.mktemp("okbp") / "pats")


@pytest.fixture
def work(tmp_path) -> Path:
    """The test's own folder (``tmp_path/work``): nothing in it may change when a command fails."""
    w = tmp_path / "work"
    w.mkdir()
    return w
