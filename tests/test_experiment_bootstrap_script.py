"""scripts/experiment_bootstrap.py: which errors each score pools (the cohort's scores of an
evaluation, recomputed by hand) and its paired change."""

import numpy as np
import pytest

from script_loader import load_script


def _script():
    return load_script("experiment_bootstrap")


def _eval(shift):
    per = []
    for i in range(6):
        per.append({"id": f"p{i}", "rois": {
            "PTV70": {"kind": "target", "metrics": {"D95%": {"ref": 70.0, "pred": 70.0 + 1 + shift},
                                                    "D1%": {"ref": 75.0, "pred": 74.0}}},
            "Brainstem": {"kind": "oar", "metrics": {"Dmean": {"ref": 10.0, "pred": 10.0 + 2 * (i + 1)},
                                                     "D0.1cc": {"ref": 40.0, "pred": None}}}}})
    return {"per_patient": per}


@pytest.mark.parametrize("score, want_a, want_b", [
    ("ptv", 1.0, 1.25), ("oar", 7.0, 7.0), ("dvh", (12 + 42) / 18, (6 * 2.5 + 42) / 18)])
def test_pooled_scores_and_their_change(tmp_path, capsys, score, want_a, want_b):
    import json

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_eval(0.0)))
    b.write_text(json.dumps(_eval(0.5)))
    _script().main([str(a), str(b), score])
    out = capsys.readouterr().out
    assert f"{want_a:.3f} -> {want_b:.3f}: {100 * (want_b / want_a - 1):+.1f} %" in out
    errs = _script().metric_errors(_eval(0.0), _script().KINDS[score])
    np.testing.assert_allclose(np.mean([x for v in errs.values() for x in v]), want_a)


def test_an_unknown_score_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="the score must be one of ptv, oar, dvh"):
        _script().main(["a.json", "b.json", "gamma"])
