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


def _summary(dose, dvh, ptv, passed, agree, plan=75.0):
    return {"dose_score": dose, "dvh_score": dvh, "ptv_score": ptv, "oar_score": 1.0,
            "criteria_pass_rate": passed, "reference_pass_rate": plan, "criteria_agreement": agree}


def test_verdict_states_pass_rate_and_agreement():
    from dosepred.demo import verdict

    res = {"MAE": _summary(3.0, 2.0, 3.0, 70.0, 85.0), "MAE+CDM": _summary(3.2, 1.5, 2.0, 72.0, 88.0),
           BASELINE: _summary(3.5, 4.0, 4.0, 95.0, 78.0)}
    v = verdict(res)
    assert "the reference plans pass 75.0 %" in v and "no learning 95.0" in v and "MAE+CDM 88.0" in v
    assert "agreement" in v and v.count("both learned models are closer to the plans") == 2
    assert "learned models beat no learning" in v and "PTV Score is lower" in v
    res["MAE"]["criteria_agreement"] = 70.0
    res["MAE+CDM"]["dvh_score"] = res["MAE"]["dvh_score"] = 5.0
    v = verdict(res)
    assert "only MAE+CDM is closer" in v and "the learned models are NOT closer" in v
    rows = dict(summary_rows(res))
    assert rows["criteria pass rate (%; plans 75.0)"] == ["70.0", "72.0", "95.0"]
    assert rows["agreement with plans (%, higher is better)"] == ["70.0", "88.0", "78.0"]
