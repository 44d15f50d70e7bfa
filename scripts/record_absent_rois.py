"""Record in released models which of their ROIs some training patients lacked (issue 26).

A model trained now records ``space.absent_rois`` itself (:class:`dosepred.models.space.SpaceRecorder`);
the models under ``models/`` were trained before. This reads the training cache's ``dataset.json``
(every patient's ``missing_rois``), and for each model folder writes the ROIs of the model's set that
some training patient lacked (``absent_rois``), how many lacked each (``absent_counts``) and of how many
(``absent_patients``) into the ``"space"`` record of ``model.pt`` and ``config.json``. The
weights are not touched (checked tensor by tensor after writing); ``calibration.json``'s
``model_sha256`` is brought up to date (only that string is replaced), since the model file's bytes
change with its metadata.

    python scripts/record_absent_rois.py --train /work/exp/cache/train models/openkbp-*
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dosepred.fsutil import save_torch, sha256_file, write_text


def absent_rois(train: Path, names: list[str]) -> tuple[dict[str, int], int]:
    """``({ROI: patients lacking it}, patients)`` of the training cache, for the model's ROIs ``names``
    that some patient lacks (in their order)."""
    info = json.loads((train / "dataset.json").read_text(encoding="utf-8"))
    lacking: dict[str, int] = {}
    for e in info["patients"]:
        for r in set(e.get("missing_rois", ())):
            lacking[r] = lacking.get(r, 0) + 1
    counts = {n: lacking[n] for n in names if n in lacking}
    print(f"{train}: {len(info['patients'])} patients; lacking: "
          f"{', '.join(f'{n} {k}' for n, k in counts.items())}")
    return counts, len(info["patients"])


def record(folder: Path, train: Path) -> None:
    pt = folder / "model.pt"
    ck = torch.load(pt, map_location="cpu", weights_only=True)
    names = [r["name"] for r in ck["model_config"]["rois"]]
    counts, patients = absent_rois(train, names)
    absent = list(counts)
    record = {"absent_rois": absent, "absent_counts": counts, "absent_patients": patients}
    before = {k: v.clone() for k, v in ck["model"].items()}
    old_sha = sha256_file(pt)
    ck["space"].update(record)
    save_torch(ck, pt)
    again = torch.load(pt, map_location="cpu", weights_only=True)
    assert again["model"].keys() == before.keys()
    assert all(torch.equal(again["model"][k], before[k]) and again["model"][k].dtype == before[k].dtype
               for k in before), "weights changed"
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg["space"].update(record)
    write_text(folder / "config.json", json.dumps(cfg, indent=2))
    cal = folder / "calibration.json"
    if cal.is_file():
        text = cal.read_text(encoding="utf-8")
        if old_sha in text:
            write_text(cal, text.replace(old_sha, sha256_file(pt)))
    print(f"{folder}: absent_rois {absent}, absent_counts {counts} of {patients}; weights unchanged")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=Path, required=True, help="the models' training cache")
    ap.add_argument("models", type=Path, nargs="+", help="model folders (model.pt, config.json)")
    args = ap.parse_args()
    for m in args.models:
        record(m, args.train)


if __name__ == "__main__":
    main()
