"""scripts/finetune_domain_shift.py (docs/finetune.md, "Measuring it against domain shift"): what
``--arms`` runs, as the page says (its heavy steps stubbed: no training here)."""

import re
from pathlib import Path

from script_loader import load_script

DOC = (Path(__file__).parents[1] / "docs" / "finetune.md").read_text()


def _run(tmp_path, monkeypatch, *argv: str) -> tuple[list[str], str]:
    mod = load_script("finetune_domain_shift")
    ran: list[str] = []
    scores = {"dose_score": 1.0, "dvh_score": 1.0}
    monkeypatch.setattr(mod, "build_institution", lambda *a: {"test": ["inst_pt_1"]})
    monkeypatch.setattr(mod, "add_sizes", lambda *a: None)
    monkeypatch.setattr(mod, "released_openkbp", lambda *a: ran.append("released_openkbp") or scores)
    monkeypatch.setattr(mod, "no_finetune", lambda *a: ran.append("none") or scores)
    monkeypatch.setattr(mod, "train_arm", lambda work, arm, n, a: ran.append(arm) or scores)
    assert mod.main([str(tmp_path / "w"), "--sizes", "10", "--pool", "10", *argv]) == 0
    return ran, (tmp_path / "w" / "results.md").read_text()


def test_arms_freeze_runs_the_freeze_arm_alone_as_the_page_says(tmp_path, monkeypatch):
    """The page said `--arms freeze` "adds" the freeze fine-tunes; it replaces the default arms: run in
    the work folder of the main experiment, it rewrote WORK/results.md with the freeze rows only."""
    ran, _ = _run(tmp_path, monkeypatch)
    assert ran == ["released_openkbp", "none", "finetune_10", "scratch_10"]
    ran, table = _run(tmp_path, monkeypatch, "--arms", "freeze")
    assert ran == ["freeze_10"] and "finetune" not in table and "released" not in table
    ran, _ = _run(tmp_path, monkeypatch, "--arms", "released_openkbp,none,finetune,scratch,freeze")
    assert ran == ["released_openkbp", "none", "finetune_10", "freeze_10", "scratch_10"]
    said = re.search(r"`--arms freeze`[^.]*\.", DOC.replace("\n", " ")).group(0)
    assert "adds" not in said and "alone" in said, said
    assert "`--arms released_openkbp,none,finetune,scratch,freeze`" in DOC.replace("\n", " ")
