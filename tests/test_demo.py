"""The demo pipeline end to end on a tiny budget (the full demo is `dosepred demo`)."""

import math

from dosepred.demo import BASELINE, DemoSettings, run_demo, summary_rows


def test_demo_tiny(tmp_path):
    s = DemoSettings(n_train=3, n_test=2, size=24, patch=16, base=4, levels=2,
                     warmup_steps=2, finetune_steps=1)
    res = run_demo(tmp_path, seed=0, settings=s)
    assert list(res["results"]) == ["MAE", "MAE+CDM", BASELINE]
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "runs" / "warmup" / "checkpoints" / "last.pt").is_file()
    assert set(res["train_seconds"]) == {"warm-up (MAE)", "MAE", "MAE+CDM"}
    assert "warm-up" in res["note"]
    rows = summary_rows(res["results"])
    assert [r[0] for r in rows][:3] == ["dose score (Gy)", "DVH score (Gy)", "PTV Score (Gy)"]
    assert all(len(v) == 3 for _, v in rows)
    for r in res["results"].values():
        assert math.isfinite(r["dose_score"]) and r["dose_score"] >= 0
    # the no-learning reference is a real dose, far better than predicting nothing at all
    assert res["results"][BASELINE]["dose_score"] < 10.0
