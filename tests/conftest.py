import os
from pathlib import Path

import pytest

os.environ.setdefault("DOSEPRED_NO_PROGRESS", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLE = SHARED / "data" / "openkbp" / "sample" / "train-pats"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not SAMPLE.is_dir():
        pytest.skip(f"OpenKBP sample patients not found at {SAMPLE}")
    return SAMPLE
