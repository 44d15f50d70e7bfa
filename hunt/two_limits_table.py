"""Finding: the criteria table (CLI 'criteria (patients passing)' and the HTML report) merges two
criteria that share ROI, metric and direction but have different limits, counting each patient twice
under the first criterion's name. Evidence from the per-patient JSON (independent count)."""
import json, os, subprocess, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import handmade as H
root = Path("/tmp/rb/two"); H.make(root)
proto = Path(__file__).parent / "two_limits.json"
env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), OMP_NUM_THREADS="1")
r = subprocess.run([sys.executable, "-m", "dosepred", "evaluate", "--reference", str(root / "ref"), "--prediction",
                    str(root / "pred"), "--protocol", str(proto), "--json", str(root / "o.json"), "--overwrite",
                    "--no-progress"], env=env, capture_output=True, text=True)
print("\n".join(l for l in r.stdout.splitlines() if "SpinalCord" in l))
o = json.loads((root / "o.json").read_text())
for name in ("SpinalCord Dmax <= 45 Gy", "SpinalCord Dmax <= 15 Gy"):
    cs = [c for p in o["per_patient"] for c in p["criteria"] if c["name"] == name]
    print(f"independent from JSON: {name}: prediction passes {sum(c['pred_pass'] for c in cs)}/{len(cs)}, "
          f"reference {sum(c['ref_pass'] for c in cs)}/{len(cs)}")
