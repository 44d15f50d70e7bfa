"""The margins of the two input checks on correct data (docs/formats.md "Input checks"): the side check
(:mod:`dosepred.io.side_check`) and the high dose outside the contoured targets
(:mod:`dosepred.io.target_dose_check`), measured on OpenKBP caches and folders as they are, and on the
versions of their plans with the lower targets removed (PTV70 only; what the second check is for).

    PYTHONPATH=src python scripts/measure_input_checks.py /work/exp/cache/train /work/exp/cache/val \
        ../shared/data/openkbp/sample/train-pats ../shared/data/openkbp/sample/validation-pats

Reads each patient once (no checks run while reading); prints one line per patient and the summary.
"""

import sys

import numpy as np

from dosepred.io.cache import Cache, is_cache
from dosepred.io.side_check import MIDLINE_MARGIN_MM, midline_x, side_findings, sided_centroids
from dosepred.io.target_dose_check import MAX_RATIO, outside_dose
from dosepred.patient import Patient


def patients(src):
    if is_cache(src):
        c = Cache.open(src)
        for pid in c.ids:
            yield c.load(pid)
    else:
        from dosepred.io.source import open_source
        s = open_source(src)
        yield from s._handle.patients(None, require_dose=False)  # as read, before the checks


def without(p, drop):
    masks = {n: p.mask(n) for n in p.present_rois if n not in drop}
    return Patient.from_masks(p.id, p.ct, masks, p.roi_set, p.spacing, p.possible_dose_mask, p.dose,
                              dict(p.meta), p.geometry)


pair, own, ratios, fired_side, fired_dose, only70 = [], {}, [], [], [], {3: [], 2: []}
for src in sys.argv[1:]:
    for p in patients(src):
        c = sided_centroids(p)
        by = {(o, s): x for s, o, x in c.values()}
        names = {(o, s): n for n, (s, o, _) in c.items()}
        for (o, s), x in by.items():
            if s == "Left" and (o, "Right") in by:
                pair.append((x - by[(o, "Right")], p.id, o))
            mid = midline_x(p, p.mask(names[(o, s)]))  # the body's on the ROI's own slices
            if mid is not None:
                own.setdefault(o + " " + s, []).append(((x - mid) if s == "Left" else (mid - x), p.id))
        if side_findings(p):
            fired_side.append(p.id)
        o = outside_dose(p)
        if o is not None:
            ratios.append((o.ratio, o.volume_cc, p.id))
            if o.large:
                fired_dose.append(p.id)
            lower = [t for t in o.targets if t != "PTV70"]
            if "PTV70" in o.targets and lower:
                q = outside_dose(without(p, lower))
                only70[len(o.targets)].append((q.ratio, q.volume_cc, q.large, p.id))
        mid = midline_x(p)  # the whole body's (each ROI is held against the body's on its own slices)
        print(p.id, src, f"midline {mid:+.1f}" if mid is not None else "no midline",
              " ".join(f"{n} {x:+.1f}" for n, (_, _, x) in c.items()),
              f"outside {o.volume_cc:.0f} cc = {o.ratio:.2f} x targets" if o else "", flush=True)

n = len(ratios)
print(f"\n{n} patients; side check fired on {fired_side or 'none'}; "
      f"dose check fired on {fired_dose or 'none'}")
if pair:
    lo = min(pair)
    print(f"pairs: {len(pair)}, min left x - right x = {lo[0]:.1f} mm ({lo[1]}, {lo[2]})")
for k, v in sorted(own.items()):
    print(f"{k}: {len(v)}, min distance on its own side of the midline {min(v)[0]:.1f} mm ({min(v)[1]}); "
          f"wrong side beyond {MIDLINE_MARGIN_MM:g} mm fires")
r = np.array([x[0] for x in ratios])
cc = np.array([x[1] for x in ratios])
i = int(r.argmax())
print(f"outside/targets: median {np.median(r):.3f}, p95 {np.percentile(r, 95):.3f}, max {r.max():.3f} "
      f"({ratios[i][2]}); cc median {np.median(cc):.0f}, max {cc.max():.0f}; threshold {MAX_RATIO:g}")
for k, v in only70.items():
    if v:
        rr = np.array([x[0] for x in v])
        print(f"PTV70-only versions of {k}-level plans: {len(v)}, fires on {sum(x[2] for x in v)} "
              f"({np.mean([x[2] for x in v]):.0%}); ratio median {np.median(rr):.2f}, min {rr.min():.2f}; "
              + ", ".join(f"{x[3]} {x[0]:.2f}" for x in v if x[3] in ("pt_201", "pt_204", "pt_208")))
