"""Side by side: the losses of an earlier git revision against the working tree's, on one batch.

What it is for: checking a change to :mod:`dosepred.losses` (same value and gradient, fewer aten ops
and host synchronisations, time) in one run on one machine. The earlier revision's
``src/dosepred/losses`` is extracted with ``git show`` into a temporary package ``oldlosses`` that
imports the rest of dosepred from the working tree.

usage: python scripts/compare_loss_versions.py REV [--patient DIR] [--batch 2] [--repeats 5]
(default patient: the OpenKBP sample pt_187, 128^3; prediction = reference x U(0.9, 1.1))
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "openkbp" / "sample" / "train-pats" / "pt_187"
CASES = {  # name: (spec, options)
    "cdm": ("cdm", {"protocol": "openkbp", "cdm_target_weight": 4.0, "cdm_spread": 3.0}),
    "moment": ("moment", {}),
    "dvh": ("dvh", {}),
}


def _old_package(rev: str, dest: Path) -> None:
    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", rev, "src/dosepred/losses/"],
                           check=True, capture_output=True, text=True).stdout.split()
    pkg = dest / "oldlosses"
    pkg.mkdir()
    for f in files:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{f}"], check=True,
                              capture_output=True, text=True).stdout
        # relative imports of the rest of the package -> the working tree's dosepred
        text = text.replace("from ..", "from dosepred.")
        (pkg / Path(f).name).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev")
    ap.add_argument("--patient", type=Path, default=SAMPLE)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    from dosepred import losses as new
    from dosepred import roi
    from dosepred.bench.losses import op_counts
    from dosepred.io.openkbp import read_patient

    tmp = tempfile.TemporaryDirectory()
    _old_package(a.rev, Path(tmp.name))
    sys.path.insert(0, tmp.name)
    import oldlosses as old  # noqa: E402

    p = read_patient(a.patient)
    nb = a.batch
    ref = torch.as_tensor(p.dose, dtype=torch.float32)[None, None].repeat(nb, 1, 1, 1, 1)
    codes = roi.to_torch(p.roi_codes)[None].repeat(nb, 1, 1, 1)
    mask = torch.as_tensor(p.possible_dose_mask)[None, None].repeat(nb, 1, 1, 1, 1)
    sp = torch.tensor([p.spacing] * nb, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    pred0 = ref * (0.9 + 0.2 * torch.rand(ref.shape, generator=g))
    print(f"patient {p.id} {p.shape}, batch {nb}, torch threads {torch.get_num_threads()}, rev {a.rev}")
    print("| loss | version | value | max grad diff | aten ops | host syncs | ms (median) |")
    print("|---|---|---|---|---|---|---|")
    for name, (spec, opts) in CASES.items():
        grads = {}
        for label, mod in (("old", old), ("new", new)):
            o = dict(opts)
            proto = o.pop("protocol", None)
            fn = mod.build_loss(spec, roi_set=p.roi_set, protocol=proto, **o)

            def once(fn=fn):
                x = pred0.clone().requires_grad_(True)
                loss, _ = fn(x, ref, codes, mask, sp)
                loss.backward()
                return float(loss.detach()), x.grad

            value, grads[label] = once()
            ops, syncs = op_counts(once)
            ts = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                once()
                ts.append(time.perf_counter() - t0)
            diff = "" if label == "old" else f"{float((grads['new'] - grads['old']).abs().max()):.1e}"
            ms = np.median(ts) * 1e3
            print(f"| {name} | {label} | {value:.7f} | {diff} | {ops} | {syncs} | {ms:.1f} |")


if __name__ == "__main__":
    main()
