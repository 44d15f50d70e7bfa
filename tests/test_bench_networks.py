"""``dosepred bench networks``: each candidate is the network asked for, timed and its memory measured
in its own process; ratios are to the first network."""

import json

import pytest

from dosepred.bench import networks


def test_parse_network():
    assert networks.parse_network("16,32,64") == ([16, 32, 64], 0, None)
    assert networks.parse_network(" 8,16:2") == ([8, 16], 2, None)
    assert networks.parse_network("8,16+16,32:1") == ([8, 16], 1, [16, 32])
    assert networks.depth("8,16+16,32,64") == 4
    for bad in ("16", "a,b", "16,32:x", "16,0", "8,16+16", "8,16+a,b", "8,16+0,4"):
        with pytest.raises(ValueError, match="network"):
            networks.parse_network(bad)


def test_run_measures_each_network_in_its_own_process():
    res = networks.run(("4,8", "4,8,16", "4,8:1", "4,8+8,8"), size=16, steps=1, repeats=1)
    rows = {r["network"]: r for r in res["rows"]}
    # parameters counted independently: a 3D conv has k^3 * cin * cout weights + cout biases
    assert rows["4,8"]["parameters"] < rows["4,8,16"]["parameters"]
    assert rows["4,8:1"]["res_units"] == 1 and rows["4,8:1"]["parameters"] > rows["4,8"]["parameters"]
    # the coarse branch 8 -> 8 (k^3 * 8 * 8 + 8 down, 8 * 8 * k^3 + 8 bottom, 16 * 8 * k^3 + 8 up, 2 PReLUs
    # of 1 weight each, the up layer without norm nor PReLU: it is the branch's output)
    k3 = 27
    branch = (k3 * 8 * 8 + 8) * 2 + (k3 * 16 * 8 + 8) + 2
    assert rows["4,8+8,8"]["parameters"] - rows["4,8"]["parameters"] == branch
    assert rows["4,8+8,8"]["coarse"] == [8, 8]
    assert rows["4,8"]["time_vs_first"] == 1.0 and rows["4,8"]["memory_vs_first"] == 1.0
    for r in res["rows"]:
        assert r["sec_per_step"] > 0 and r["peak_rss_delta_mb"] > 0
    with pytest.raises(ValueError, match="divisible"):
        networks.run(("4,8,16,32,64",), size=8)
    with pytest.raises(ValueError, match="divisible"):  # 2 levels + 2 below the bottom: 2^3
        networks.run(("4,8+8,8,8",), size=4)


def test_cli_writes_json(tmp_path):
    from typer.testing import CliRunner

    from dosepred.cli import app

    out = tmp_path / "n.json"
    r = CliRunner().invoke(app, ["bench", "networks", "--network", "4,8", "--size", "8", "--steps", "1",
                                 "--repeats", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["rows"][0]["channels"] == [4, 8]


def test_each_network_in_each_precision(monkeypatch):
    res = networks.run(("4,8",), size=16, steps=1, repeats=1, precisions=("fp32", "bf16"))
    assert [(r["network"], r["precision"]) for r in res["rows"]] == [("4,8", "fp32"), ("4,8", "bf16")]
    rows = {(r["network"], r["precision"]): r for r in res["rows"]}
    assert rows["4,8", "bf16"]["parameters"] == rows["4,8", "fp32"]["parameters"]  # one network, two runs
    assert rows["4,8", "fp32"]["time_vs_first"] == 1.0 and rows["4,8", "bf16"]["sec_per_step"] > 0
    assert res["precisions"] == ["fp32", "bf16"]
    for bad, why in ((("fp16",), "unknown fp16"), ((), "none given"), (("bf16", "bf16"), "one given twice")):
        with pytest.raises(ValueError, match=f"--precisions .*{why}"):
            networks.run(("4,8",), size=16, precisions=bad)


def test_a_row_says_the_precision_its_process_ran(monkeypatch):
    """The precision of a row is what the measuring process reports, not what was asked for."""
    ran = []

    def isolated(spec):
        ran.append(spec["precision"])
        return {"network": spec["network"], "precision": spec["precision"], "channels": [4, 8],
                "coarse": None, "res_units": 0, "head": None, "parameters": 1, "sec_per_step": 1.0,
                "peak_rss_delta_mb": 1.0}

    monkeypatch.setattr(networks, "_isolated", isolated)
    res = networks.run(("4,8",), size=16, repeats=1, precisions=("bf16", "fp32"))
    assert ran == ["bf16", "fp32"] and [r["precision"] for r in res["rows"]] == ["bf16", "fp32"]


def test_bf16_runs_the_forward_pass_in_bfloat16(monkeypatch):
    import torch

    from dtype_spy import conv_output_dtypes

    seen = conv_output_dtypes(monkeypatch)
    spec = {"network": "4,8", "size": 16, "steps": 1, "warmup": 0, "device": "cpu", "threads": 1, "seed": 0}
    assert networks.run_one({**spec, "precision": "fp32"})["precision"] == "fp32" and seen == {torch.float32}
    seen.clear()
    assert networks.run_one({**spec, "precision": "bf16"})["precision"] == "bf16"
    assert torch.bfloat16 in seen


def test_cli_precisions(tmp_path):
    from typer.testing import CliRunner

    from dosepred.cli import app

    out = tmp_path / "n.json"
    r = CliRunner().invoke(app, ["bench", "networks", "--network", "4,8", "--size", "8", "--steps", "1",
                                 "--repeats", "1", "--precisions", "fp32,bf16", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert [x["precision"] for x in json.loads(out.read_text())["rows"]] == ["fp32", "bf16"]
    r = CliRunner().invoke(app, ["bench", "networks", "--network", "4,8", "--size", "8",
                                 "--precisions", "fp8"])
    assert r.exit_code != 0 and "precisions" in r.output and "Traceback" not in r.output
