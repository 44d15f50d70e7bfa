"""scripts/qa_difficulty.py --detection (docs/qa.md "Difficulty scores"): the cross-validated false
alarms and detection rates it prints, checked on synthetic residuals whose answer is known."""

import numpy as np
from scipy import optimize, stats

from script_loader import load_script


def _script():
    return load_script("qa_difficulty")


def _rates(out: str) -> dict[str, tuple[float, float, float]]:
    rows = {}
    for line in out.splitlines()[1:]:
        name, rest = line.strip().rsplit(": ", 1)
        fa, d3, d6 = (float(v) for v in rest.split(" %")[0].split(" / "))
        rows[name] = (fa, d3, d6)
    return rows


def test_detection_rates_match_the_gaussian_answer_and_a_true_scale_helps(capsys):
    rng = np.random.default_rng(4)
    pat = np.repeat(np.arange(1500), 2)
    sd = np.where(rng.random(pat.size) < 0.7, 0.5, 3.0)  # two kinds of unit, known noise
    r = rng.normal(0, sd)
    _script().detection(r, pat, {"true sd": sd, "noise": rng.random(pat.size)}, splits=40)
    out = capsys.readouterr().out
    assert "3000 OAR mean doses" in out and "40 splits of 1000/500 patients" in out
    rows = _rates(out)
    # scipy, independently: the 90 % bound q of |r| solves 0.7 P(|N(0,0.5)| > q) + 0.3 P(|N(0,3)| > q)
    # = 0.1; above it lie 5 % of the untouched units, and 56 % / 95 % of those raised by 3 / 6 Gy
    q = optimize.brentq(lambda q: 1.4 * stats.norm.sf(q / 0.5) + 0.6 * stats.norm.sf(q / 3) - 0.1, 0.1, 10)
    want = [100 * (0.7 * stats.norm.sf((q - d) / 0.5) + 0.3 * stats.norm.sf((q - d) / 3)) for d in (0, 3, 6)]
    fa, d3, d6 = rows["none (s = 1)"]
    assert abs(fa - want[0]) < 1.5 and abs(d3 - want[1]) < 8 and abs(d6 - want[2]) < 3
    assert abs(float(out.split("none (s = 1): ")[1].split("%, ")[1].split(" Gy")[0]) - q) < 0.25
    # with the true sd as the scale the quiet units get a bound near 1 Gy: far more +3 Gy caught at
    # the same false alarms
    fa_t, d3_t, _ = rows["true sd, c = 0.5"]
    assert abs(fa_t - fa) < 1.5 and d3_t > d3 + 15
    # a score unrelated to the error gains nothing
    assert all(rows[f"noise, c = {c}"][1] < d3 + 5 for c in ("0.5", "1", "2"))
