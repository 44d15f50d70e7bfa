"""Finding: a protocol written in cGy (limit 4500 for SpinalCord Dmax, prescription 7000 for PTV70) was
read as Gy without a word: the cord limit passes every plan, V95% of a 7000 'Gy' Rx is 0 % for every plan."""
import json, os, subprocess, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import handmade as H
root = Path("/tmp/rb/cgy"); data = H.make(root)
env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"), OMP_NUM_THREADS="1")
for name, obj in (("cord_4500", {"name": "cgy", "criteria": [{"roi": "SpinalCord", "metric": "Dmax", "limit": 4500, "direction": "<="}]}),
                  ("rx_7000", {"name": "cgy", "prescriptions": {"PTV70": 7000}, "criteria": [{"roi": "PTV70", "metric": "V95%", "limit": 95, "direction": ">="}]})):
    f = root / f"{name}.json"; f.write_text(json.dumps(obj))
    r = subprocess.run([sys.executable, "-m", "dosepred", "evaluate", "--reference", str(root / "ref"), "--prediction",
                        str(root / "pred"), "--protocol", str(f), "--json", str(root / "o.json"), "--overwrite", "--no-progress"],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        print(f"{name}: refused: {r.stderr.strip().splitlines()[-1]}")
        continue
    o = json.loads((root / "o.json").read_text())
    print(f"{name}: accepted; " + "; ".join(f"{p['id']} {c['name']} pred {c['pred']:.2f} pass {c['pred_pass']}"
                                            for p in o["per_patient"] for c in p["criteria"]))
d = data["pt_1"]; m = d["rois"]["PTV70"]
print("independent: pt_1 PTV70 V95% of 70 Gy =", 100 * np.mean(d["pred"][m] >= 66.5), "%; cord Dmax",
      float(d["pred"][d["rois"]["SpinalCord"]].max()), "Gy")
