"""The demo pipeline end to end on a tiny budget (the full demo is `dosepred demo`)."""

from dosepred.demo import DemoSettings, run_demo, summary_rows


def test_demo_tiny(tmp_path):
    s = DemoSettings(n_train=3, n_test=2, size=32, patch=16, base=4, levels=2, epochs=1, steps_per_epoch=2)
    res = run_demo(tmp_path, seed=0, settings=s)
    assert set(res["results"]) == {"MAE", "MAE+CDM"}
    assert (tmp_path / "report.html").is_file()
    rows = summary_rows(res["results"])
    assert [r[0] for r in rows][:2] == ["dose score (Gy)", "DVH score (Gy)"]
    assert all(len(v) == 2 for _, v in rows)
