"""``dosepred bench evaluate``: every path scores the same perturbed predictions as the naive
pandas + numpy evaluator written in the benchmark (the run raises if any path disagrees), and the
command prints its table."""

import json

from typer.testing import CliRunner

from dosepred.bench import evaluate as bench_evaluate
from dosepred.cli import app


def test_every_path_agrees_with_the_naive_evaluator(sample_dir, tmp_path):
    res = bench_evaluate.run(sample_dir, n_patients=2, cache_dir=tmp_path / "cache")
    assert res["patients"] == 2 and res["cache_version"] >= 2
    paths = [r["path"] for r in res["rows"]]
    assert len(paths) == 5 and paths[0].startswith("naive")
    for r in res["rows"]:
        assert r["seconds"] > 0 and r["patients_per_s"] > 0
    assert 0 < res["dose_score"] < 5 and 0 < res["dvh_score"] < 10  # 0.98 x the plan, plus noise


def test_cli_prints_the_table_and_writes_json(sample_dir, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, ["bench", "evaluate", "--data", str(sample_dir), "--patients", "1",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "evaluation throughput, 1 patients" in r.output and "cache format version" in r.output
    assert json.loads(out.read_text())["patients"] == 1


def test_cli_refuses_a_json_inside_its_inputs(sample_dir, tmp_path):
    """--json is an output like any other: inside --data (or --cache) it is refused with one line
    before any work, and the input folder is left as it was (it was written into it)."""
    import shutil

    data = tmp_path / "pats"
    shutil.copytree(sample_dir / "pt_66", data / "pt_66")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    r = CliRunner().invoke(app, ["bench", "evaluate", "--data", str(data), "--patients", "1",
                                 "--json", str(data / "b.json")])
    assert r.exit_code != 0
    assert r.output.strip() == (f"error: {data / 'b.json'}: --json lies inside the input {data}; "
                                "choose an output outside the inputs")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
