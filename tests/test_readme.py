"""README.md: the Quick start stays two commands, and the Python quick start runs as written."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, f"README.md has no section '## {title}'"
    return m.group(1)


def test_quick_start_is_two_commands_at_the_top():
    assert re.search(r"^## .*", README, re.M).group(0) == "## Quick start"  # the first section
    block = re.search(r"```bash\n(.*?)```", _section("Quick start"), re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 2 and "dosepred demo" in lines[0] and "pytest" in lines[1]


def test_python_quick_start_runs_as_written(tmp_path):
    code = re.search(r"```python\n(.*?)```", _section("Python quick start"), re.S).group(1)
    # the data it reads must be there: a missing file is a failure, not a skip
    for path in re.findall(r'"(\.\./[^"]+|models/[^"]+|examples/[^"]+)"', code):
        assert (ROOT / path).exists(), f"README Python quick start reads {path}, missing from {ROOT}"
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "", "DOSEPRED_PROGRESS_INTERVAL": "off"})
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert "'dose_score'" in out[0] and "'criteria_agreement'" in out[0]
    assert out[1].startswith("pt_201 PTV70 D95% plan ") and "predicted" in out[1]
    assert any(ln.startswith("SpinalCord D0.1cc <= 45 Gy") for ln in out[2:])


def test_quick_start_shows_the_demo_report_small():
    text = _section("Quick start")
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", text)
    assert images, "the Quick start shows a screenshot of the demo's report"
    for img in images:
        f = ROOT / img
        assert f.is_file(), f"README Quick start shows {img}, missing from {ROOT}"
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size < 200_000
    assert "real head-and-neck patients" in text and "`qa`" in text  # what the demo shows, first


def test_the_fresh_clone_examples_read_only_what_the_repository_ships():
    """models/README.md's 'Use (from a fresh clone)' read `../shared/data/openkbp/sample/train-pats`,
    outside the repository (absent from a fresh clone: 'does not exist'), and training patients the
    models had seen. The copyable commands of README.md and models/README.md read only data and models
    that ship in the repository (examples/: validation pt_201)."""
    for doc in ("README.md", "models/README.md"):
        text = (ROOT / doc).read_text()
        blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
        if doc == "models/README.md":
            blocks = blocks[:1]  # the 'Use' block; the next one records how the models were made
        for block in blocks:
            for path in re.findall(r"--(?:data|reference|plans|model) (\S+)", block):
                assert not path.startswith(("../", "/")), f"{doc} reads {path}, outside a fresh clone"
                if path.startswith(("examples/", "models/")):
                    assert (ROOT / path).exists(), f"{doc} reads {path}, missing from {ROOT}"
