"""A second "institution" built from OpenKBP patients: re-planned by another rule and written as
DICOM with another clinic's ROI names (docs/finetune.md walks the fine-tuning workflow on it;
scripts/finetune_domain_shift.py measures fine-tuning on it).

The rule, deterministic per patient:

- dose levels 70 / 63 / 56 Gy become 66 / 60 / 54 Gy: every dose value goes through the
  piecewise-linear map through (0, 0), (56, 54), (63, 60), (70, 66), slope 66/70 above 70 Gy;
- stronger parotid sparing: dose x (1 - 0.25 w (1 - t)), w the parotids blurred (sigma 2 voxels), t
  the targets blurred (sigma 1.5 voxels), both clipped to [0, 1];
- the clinic's ROI names: TG-263 spellings (``BrainStem``, ``Parotid_L``, ``Parotid_R``,
  ``Bone_Mandible``, ``SpinalCord``, ``Larynx``), targets ``PTV_High`` / ``PTV_Mid`` / ``PTV_Low`` with
  no dose in the name and no prescription in the RTSTRUCT (the ROI map gives them), a new OAR
  ``SpinalCord_PRV05`` (the cord grown by 5 mm), and no esophagus (this clinic does not contour it);
- one plan a week: StudyDate 2023-01-02 + 7 days x the patient's rank (in the order given), so
  ``data split --temporal`` puts the last patients in the last split.

Writes ``OUT/dicom/<id>/`` (CT series, RS.dcm, RD.dcm; ids ``inst_<OpenKBP id>``), ``OUT/roi-map.json``
(for ``data import-dicom --roi-map``), ``OUT/protocol.json`` (the clinic's criteria on the imported
names) and ``OUT/manifest.csv`` (id, date, OpenKBP id). Only OpenKBP train / validation caches may
be read (never the test split)::

    python scripts/clinic_institution.py --src /work/exp/cache/val --patients 6 --out clinic
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from dosepred.io.cache import Cache
from dosepred.io.dicom import write_dicom
from dosepred.patient import Patient, Roi, RoiSet

#: OpenKBP name -> the clinic's (None: not contoured there)
NAMES = {"Brainstem": "BrainStem", "SpinalCord": "SpinalCord", "RightParotid": "Parotid_R",
         "LeftParotid": "Parotid_L", "Esophagus": None, "Larynx": "Larynx", "Mandible": "Bone_Mandible",
         "PTV70": "PTV_High", "PTV63": "PTV_Mid", "PTV56": "PTV_Low"}
PRV = "SpinalCord_PRV05"
PRV_MM = 5.0
#: the clinic's dose levels (Gy) for OpenKBP's
LEVELS = {70.0: 66.0, 63.0: 60.0, 56.0: 54.0}
START = dt.date(2023, 1, 2)

CLINIC_ROIS = RoiSet((Roi("BrainStem"), Roi("SpinalCord"), Roi("Parotid_R"), Roi("Parotid_L"), Roi("Larynx"),
                      Roi("Bone_Mandible"), Roi(PRV), Roi("PTV_High", "target"), Roi("PTV_Mid", "target"),
                      Roi("PTV_Low", "target")))

#: data import-dicom --roi-map: the targets' names and prescriptions, the PRV an OAR (the TG-263
#: organ names need no entry: they are recognised)
ROI_MAP = {"names": {"PTV_High": "PTV66", "PTV_Mid": "PTV60", "PTV_Low": "PTV54", PRV: PRV},
           "kinds": {PRV: "oar"}, "prescriptions": {"PTV66": 66.0, "PTV60": 60.0, "PTV54": 54.0}}

#: the clinic's criteria, on the names the import gives (canonical organ names, the map's targets)
PROTOCOL = {
    "name": "clinic-66-60-54",
    "description": "A second institution's H&N criteria for a 66/60/54 Gy SIB "
                   "(scripts/clinic_institution.py)",
    "prescriptions": {"PTV66": 66.0, "PTV60": 60.0, "PTV54": 54.0},
    "criteria": [
        *({"roi": t, "metric": m, "limit": lim, "limit_unit": "%Rx", "direction": ">=", "priority": 1}
          for t in ("PTV66", "PTV60", "PTV54") for m, lim in (("D99%", 95), ("D98%", 90))),
        *({"roi": t, "metric": "D95%", "goal": 100, "limit_unit": "%Rx", "direction": ">=", "priority": 2}
          for t in ("PTV66", "PTV60", "PTV54")),
        {"roi": "PTV66", "metric": "D1%"},
        {"roi": "PTV66", "metric": "V110%", "limit": 20, "goal": 2, "limit_unit": "%", "direction": "<=",
         "priority": 1},
        {"roi": "SpinalCord", "metric": "D0.1cc", "limit": 45, "direction": "<=", "priority": 1},
        {"roi": PRV, "metric": "D0.1cc", "limit": 50, "direction": "<=", "priority": 1},
        {"roi": "Brainstem", "metric": "D0.1cc", "limit": 50, "direction": "<=", "priority": 1},
        {"roi": "RightParotid", "metric": "Dmean", "limit": 26, "direction": "<=", "priority": 2},
        {"roi": "LeftParotid", "metric": "Dmean", "limit": 26, "direction": "<=", "priority": 2},
        {"roi": "Larynx", "metric": "Dmean", "limit": 45, "direction": "<=", "priority": 2},
        {"roi": "Mandible", "metric": "D0.1cc", "limit": 70, "direction": "<=", "priority": 2},
    ],
}


def remap_levels(dose: np.ndarray) -> np.ndarray:
    """Dose values through the piecewise-linear map of the module docstring (float32)."""
    d = np.asarray(dose, dtype=np.float64)
    lo = sorted(LEVELS)
    out = np.interp(d, [0.0, *lo], [0.0, *(LEVELS[v] for v in lo)])
    top = max(LEVELS)
    out = np.where(d > top, d * LEVELS[top] / top, out)
    return out.astype(np.float32)


def replan(p: Patient, rank: int) -> Patient:
    """``p`` (OpenKBP names and plan) as the second institution planned and contoured it."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    if p.dose is None:
        raise ValueError(f"patient {p.id} has no dose to re-plan")
    present = set(p.present_rois)
    parotids = np.zeros(p.shape, np.float32)
    targets = np.zeros(p.shape, np.float32)
    for n in ("LeftParotid", "RightParotid"):
        if n in present:
            parotids += p.mask(n)
    for n in ("PTV70", "PTV63", "PTV56"):
        if n in present:
            targets = np.maximum(targets, p.mask(n))
    w = np.clip(gaussian_filter(np.minimum(parotids, 1), 2.0), 0, 1)
    t = np.clip(gaussian_filter(targets, 1.5), 0, 1)
    dose = remap_levels(p.dose) * (1 - 0.25 * w * (1 - t)).astype(np.float32)
    dose *= p.possible_dose_mask
    masks = {NAMES[n]: p.mask(n) for n in p.roi_set.names if NAMES.get(n) and n in present}
    if "SpinalCord" in present:
        cord = p.mask("SpinalCord")
        masks[PRV] = distance_transform_edt(~cord, sampling=p.spacing) <= PRV_MM
    meta = {"study_date": (START + dt.timedelta(days=7 * rank)).strftime("%Y%m%d"),
            "openkbp_id": p.id, "source": "scripts/clinic_institution.py"}
    return Patient.from_masks(f"inst_{p.id}", p.ct, masks, CLINIC_ROIS, p.spacing, p.possible_dose_mask,
                              dose.astype(np.float32), meta, p.geometry)


def select(src: Sequence[str | Path], ids: Iterable[str] | None = None, patients: int | None = None
           ) -> list[tuple[Cache, str]]:
    """(cache, id) of the patients to re-plan: ``ids`` (found in any cache of ``src``), else the first
    ``patients`` of the caches in order (each cache's ids in numeric order)."""
    if any("test" in Path(s).resolve().name.lower() for s in src):
        raise SystemExit("the OpenKBP test split is never read")
    caches = [Cache.open(s) for s in src]
    pool = [(c, i) for c in caches for i in sorted(c.ids, key=lambda s: (len(s), s))]
    if ids is not None:
        want = list(ids)
        found = {i: (c, i) for c, i in pool}
        lost = [i for i in want if i not in found]
        if lost:
            raise SystemExit(f"ids not in {', '.join(map(str, src))}: {', '.join(lost)}")
        return [found[i] for i in want]
    return pool[:patients] if patients is not None else pool


def build(chosen: list[tuple[Cache, str]], out: str | Path, rank0: int = 0) -> list[dict[str, str]]:
    """Re-plan ``chosen`` and write them as DICOM under ``out/dicom`` with the map, protocol and
    manifest (see the module docstring); returns the manifest rows."""
    out = Path(out)
    rows = []
    for rank, (c, pid) in enumerate(chosen, rank0):
        p = next(iter(c.patients([pid])))
        q = replan(p, rank)
        write_dicom(q, out / "dicom")
        rows.append({"id": q.id, "date": q.meta["study_date"], "openkbp_id": pid})
        print(f"{q.id}: {q.meta['study_date']}", flush=True)
    (out / "roi-map.json").write_text(json.dumps(ROI_MAP, indent=2))
    (out / "protocol.json").write_text(json.dumps(PROTOCOL, indent=2))
    with open(out / "manifest.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, ["id", "date", "openkbp_id"])
        wr.writeheader()
        wr.writerows(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", nargs="+", required=True, help="OpenKBP train/validation caches")
    ap.add_argument("--out", required=True,
                    help="new folder: dicom/, roi-map.json, protocol.json, manifest.csv")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--patients", type=int, help="the first N patients of the caches (numeric id order)")
    g.add_argument("--ids", nargs="+", help="these OpenKBP ids, in this (date) order")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty", file=sys.stderr)
        return 2
    build(select(a.src, a.ids, a.patients), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
