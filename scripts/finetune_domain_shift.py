"""Fine-tuning against domain shift: learning curves on a second institution (issue 27).

The second institution is :mod:`clinic_institution`'s: OpenKBP patients re-planned at 66 / 60 / 54 Gy
with stronger parotid sparing, contoured with TG-263 names, a cord PRV and no esophagus, written as
DICOM and imported with its ROI map (the documented workflow, docs/finetune.md). Patients:

- clinic training pool: the first ``max(--sizes)`` OpenKBP **train** patients (numeric id order),
  dated first; the sets of 10 / 20 / 40 / 80 are nested (the first n). The released models trained
  on these patients' anatomy with OpenKBP's plans, never with this institution's;
- validation (best.pt): the first ``--val`` OpenKBP validation patients;
- test: the other OpenKBP validation patients, dated last (no model ever trained on them).

Arms, each scored on the test patients (``predict --no-tta``, then ``evaluate``):

- ``released_openkbp``: the released model on the same test patients' **original** OpenKBP plans
  (OpenKBP names and protocol): what the model does at home;
- ``none``: the released model mapped onto the clinic's ROIs, no training
  (:func:`dosepred.models.transfer.transfer_checkpoint`): the domain shift;
- ``finetune_n``: ``train --init`` the released model on n clinic patients;
- ``scratch_n``: the same architecture trained from random weights on the same n patients;
- ``freeze_n`` (only when ``--arms`` names it): ``finetune_n`` with ``--freeze-steps``: the released
  model's contracting path kept for the first steps, then everything trained.

Fine-tuning and scratch runs take the same number of optimiser steps with the same network, patch,
batch, loss (the released model's MAE+CDM options) and augmentation, so the same CPU time per step;
the table reports each run's measured training seconds (metrics.csv) so the equality is checked
rather than assumed.

Resumable: every stage skips what it finds done (patients already written, the cache when it holds
the wanted ids, runs with a DONE file, arms with a score JSON); an interrupted run continues with
``train --resume``. Run it again with the same arguments to continue; ``--sizes 10`` runs the
smallest point only. Writes ``WORK/results.csv`` and ``WORK/results.md``; each command's output
goes to ``WORK/logs/``. Reads only the OpenKBP train / validation caches (never the test split)::

    python scripts/finetune_domain_shift.py /work/exp/finetune --threads 2            # everything (hours)
    python scripts/finetune_domain_shift.py /work/exp/finetune --sizes 10 --threads 1  # smallest point
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clinic_institution as inst  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RELEASED = ROOT / "models" / "openkbp-mae-cdm"

#: the OpenKBP DVH-score metrics on the clinic's ROIs (no limits): dose and DVH scores comparable
#: across arms; the clinic's criteria (clinic_institution.PROTOCOL) give the pass rates
SCORE_PROTOCOL = {
    "name": "clinic-openkbp-metrics",
    "description": "OpenKBP DVH-score metrics on the second institution's ROIs",
    "prescriptions": {"PTV66": 66.0, "PTV60": 60.0, "PTV54": 54.0},
    "criteria": [*({"roi": r, "metric": m} for r in ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid",
                                                    "Larynx", "Mandible", inst.PRV)
                   for m in ("D0.1cc", "Dmean")),
                 *({"roi": t, "metric": m} for t in ("PTV54", "PTV60", "PTV66")
                   for m in ("D99%", "D95%", "D1%"))],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def dosepred(work: Path, name: str, *args: object, threads: int = 1) -> None:
    """``dosepred ARGS`` with its output in ``work/logs/NAME.log``; a failure stops the script."""
    (work / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DOSEPRED_PROGRESS_INTERVAL": "60"}
    cmd = [sys.executable, "-m", "dosepred", *map(str, args)]
    log(" ".join(["dosepred", *map(str, args)]))
    with open(work / "logs" / f"{name}.log", "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed (exit {r.returncode}); see {work / 'logs' / f'{name}.log'}")


# -------------------------------------------------------------------------------- the institution

def build_institution(work: Path, train_src: str, val_src: str, pool: int, n_val: int
                      ) -> dict[str, list[str]]:
    """Write the patients' DICOM (skipping those written), the map and protocols; import them into
    ``work/cache`` unless it holds exactly them; write ``work/splits.json``. Returns the splits."""
    from dosepred.io.cache import Cache
    from dosepred.io.dicom import write_dicom
    from dosepred.split import write_split

    chosen = inst.select([train_src], patients=pool) + inst.select([val_src])
    if len(chosen) < pool + n_val + 1:
        raise SystemExit(f"not enough patients: {len(chosen)} for a pool of {pool}, {n_val} validation "
                         "and a test set")
    folder = work / "inst"
    dicom = folder / "dicom"
    for i, (c, pid) in enumerate(chosen):
        rank = i if i < pool else 200 + i - pool  # validation patients dated after any pool size
        if not (dicom / f"inst_{pid}").is_dir():
            write_dicom(inst.replan(next(iter(c.patients([pid]))), rank), dicom)
            log(f"wrote inst_{pid}")
    (folder / "roi-map.json").write_text(json.dumps(inst.ROI_MAP, indent=2))
    (folder / "protocol.json").write_text(json.dumps(inst.PROTOCOL, indent=2))
    (folder / "protocol-scores.json").write_text(json.dumps(SCORE_PROTOCOL, indent=2))
    ids = [f"inst_{pid}" for _, pid in chosen]
    cache = work / "cache"
    if not (cache / "dataset.json").is_file() or sorted(Cache.open(cache).ids) != sorted(ids):
        keep = set(ids)  # only this run's patients are imported (a folder of other sizes may hold more)
        extra = [d for d in dicom.iterdir() if d.name not in keep]
        if extra:
            raise SystemExit(f"{dicom} holds patients of another configuration ({extra[0].name}, ...); "
                             "use another WORK folder")
        dosepred(work, "import", "data", "import-dicom", dicom, "--roi-map", folder / "roi-map.json",
                 "--out", cache, "--overwrite")
    n_train = pool
    splits = {"pool": ids[:n_train], "val": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]}
    write_split({"splits": splits, "method": "ids", "seed": None,
                 "note": "pool: OpenKBP train patients re-planned; val/test: OpenKBP validation patients"},
                work / "splits.json")
    if not (work / "test-cache" / "dataset.json").is_file():
        dosepred(work, "subset-test", "data", "subset", cache, "--split", f"{work / 'splits.json'}:test",
                 "--out", work / "test-cache")
    return splits


def add_sizes(work: Path, splits: dict[str, list[str]], sizes: list[int]) -> None:
    from dosepred.split import write_split

    obj = json.loads((work / "splits.json").read_text())
    for n in sizes:
        obj["splits"][f"train_{n}"] = splits["pool"][:n]
    write_split(obj, work / "splits.json")


# ------------------------------------------------------------------------------------------- arms

def score(work: Path, arm: str, model: Path, threads: int, reference: Path | None = None,
          protocols: tuple[str, str] | None = None) -> dict[str, float]:
    """Predict the test patients with ``model`` and evaluate; ``work/eval/ARM.json`` (skipped when there)."""
    out = work / "eval" / f"{arm}.json"
    if out.is_file():
        return json.loads(out.read_text())
    ref = reference or work / "test-cache"
    pred = work / "pred" / arm
    scores_p, clinic_p = protocols or (work / "inst" / "protocol-scores.json",
                                       work / "inst" / "protocol.json")
    dosepred(work, f"predict-{arm}", "predict", "--model", model, "--data", ref, "--out", pred, "--format",
             "cache", "--no-tta", "--device", "cpu", "--overwrite", threads=threads)
    tmp = work / "eval" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    dosepred(work, f"evaluate-{arm}", "evaluate", "--reference", ref, "--prediction", pred, "--protocol",
             scores_p, "--json", tmp / f"{arm}-scores.json", "--overwrite")
    dosepred(work, f"evaluate-{arm}", "evaluate", "--reference", ref, "--prediction", pred, "--protocol",
             clinic_p, "--json", tmp / f"{arm}-clinic.json", "--overwrite")
    a = json.loads((tmp / f"{arm}-scores.json").read_text())
    b = json.loads((tmp / f"{arm}-clinic.json").read_text())
    n = a["patients"]
    res = {"patients": len(n) if isinstance(n, list) else n, "dose_score": a["dose_score"],
           "dvh_score": a["dvh_score"], "ptv_score": a["ptv_score"], "oar_score": a["oar_score"],
           "criteria_pass_rate": b.get("criteria_pass_rate"),
           "reference_pass_rate": b.get("reference_pass_rate"),
           "criteria_agreement": b.get("criteria_agreement")}
    out.write_text(json.dumps(res, indent=2))
    return res


def released_openkbp(work: Path, val_src: str, test_ids: list[str], threads: int) -> dict[str, float]:
    """The released model on the test patients' original OpenKBP plans (OpenKBP names and scores)."""
    from dosepred.split import write_split

    ids = [i.removeprefix("inst_") for i in test_ids]
    write_split({"splits": {"test": ids}, "method": "ids", "seed": None}, work / "splits-openkbp.json")
    ref = work / "openkbp-test-cache"
    if not (ref / "dataset.json").is_file():
        dosepred(work, "subset-openkbp", "data", "subset", val_src, "--split",
                 f"{work / 'splits-openkbp.json'}:test", "--out", ref)
    return score(work, "released_openkbp", RELEASED, threads, ref, ("openkbp", "openkbp-clinical"))


def no_finetune(work: Path, threads: int) -> dict[str, float]:
    """The released model mapped onto the clinic's ROIs without training."""
    from dosepred.io.cache import Cache
    from dosepred.models.checkpoint import load_checkpoint, save_checkpoint
    from dosepred.models.transfer import transfer_checkpoint

    model = work / "models" / "none" / "model.pt"
    if not model.is_file():
        ck = transfer_checkpoint(load_checkpoint(RELEASED), Cache.open(work / "cache").roi_set, "the clinic")
        save_checkpoint(ck, model)
    return score(work, "none", model.parent, threads)


def train_arm(work: Path, arm: str, n: int, a: argparse.Namespace) -> dict[str, float]:
    run = work / "runs" / arm
    if not (run / "DONE").is_file():
        common = ["--threads", a.threads, "--no-progress"]
        if (run / "checkpoints" / "last.pt").is_file():
            dosepred(work, f"train-{arm}", "train", "--out", run, "--resume", *common, threads=a.threads)
        else:
            epochs = max(1, a.steps // a.steps_per_epoch)
            args = ["train", "--data", work / "cache", "--split", f"{work / 'splits.json'}:train_{n}",
                    "--val", work / "cache", "--val-split", f"{work / 'splits.json'}:val",
                    "--protocol", work / "inst" / "protocol.json", "--loss", a.loss, "--patch", 128,
                    "--batch", 1, "--epochs", epochs, "--steps-per-epoch", a.steps_per_epoch,
                    "--val-every", max(1, epochs // 10), "--device", "cpu", "--seed", a.seed, "--out", run,
                    *(x for o in a.loss_opt for x in ("--loss-opt", o)), *(["--shift"] if a.shift else [])]
            if arm.startswith(("finetune", "freeze")):
                args += ["--init", RELEASED, "--lr", a.lr_finetune]
                if arm.startswith("freeze"):
                    args += ["--freeze-steps", a.freeze_steps]
            else:  # the released model's architecture, from random weights
                args += ["--base", 16, "--levels", 4, "--res-units", 0, "--norm", "instance",
                         "--lr", a.lr_scratch]
            dosepred(work, f"train-{arm}", *args, *common, threads=a.threads)
        (run / "DONE").write_text("done\n")
    res = dict(score(work, arm, run, a.threads))
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    res["steps"] = int(rows[-1]["step"])
    res["train_s"] = sum(float(r["sec_per_step"]) * a.steps_per_epoch for r in rows)
    return res


# ----------------------------------------------------------------------------------------- table

COLS = ("dose_score", "dvh_score", "ptv_score", "oar_score", "criteria_pass_rate", "criteria_agreement")


def write_table(work: Path, rows: list[dict]) -> None:
    keys = ("n", "arm", "steps", "train_s", "patients", *COLS)
    rows = [{**r, "patients": len(p) if isinstance(p := r.get("patients"), list) else p} for r in rows]
    with open(work / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        return "-" if v is None or v == "" else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| clinic patients | arm | steps | training s | test patients | dose score | DVH score "
             "| PTV score | OAR score | criteria pass % | agreement % |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    (work / "results.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {work / 'results.md'}\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="work folder (created; reused to resume)")
    ap.add_argument("--train-src", default="/work/exp/cache/train", help="OpenKBP train cache")
    ap.add_argument("--val-src", default="/work/exp/cache/val", help="OpenKBP validation cache")
    ap.add_argument("--sizes", default="10,20,40,80", help="clinic training-set sizes")
    ap.add_argument("--pool", type=int, default=80, help="clinic training pool (>= the largest size)")
    ap.add_argument("--val", type=int, default=5,
                    help="validation patients (the rest of OpenKBP validation: test)")
    ap.add_argument("--arms", default="released_openkbp,none,finetune,scratch")
    ap.add_argument("--steps", type=int, default=1500,
                    help="optimiser steps per training run (every arm alike)")
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--loss", default="mae+cdm")
    ap.add_argument("--loss-opt", action="append", default=None,
                    help="KEY=VALUE (repeatable; default: the released MAE+CDM model's cdm_target_weight=4, "
                         "cdm_oar_weight=1, cdm_spread=3)")
    ap.add_argument("--no-shift", dest="shift", action="store_false", help="no mask-in-view translations")
    ap.add_argument("--lr-finetune", type=float, default=1e-4)
    ap.add_argument("--freeze-steps", type=int, default=300,
                    help="the freeze arm: steps with the contracting path kept (train --freeze-steps)")
    ap.add_argument("--lr-scratch", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.loss_opt is None:
        a.loss_opt = ["cdm_target_weight=4", "cdm_oar_weight=1", "cdm_spread=3"]
    sizes = sorted(int(s) for s in a.sizes.split(","))
    if sizes[-1] > a.pool:
        raise SystemExit(f"--pool {a.pool} is smaller than the largest size {sizes[-1]}")
    arms = a.arms.split(",")
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(a).items()}, indent=2))
    splits = build_institution(work, a.train_src, a.val_src, a.pool, a.val)
    add_sizes(work, splits, sizes)
    rows: list[dict] = []
    if "released_openkbp" in arms:
        rows.append({"n": "-", "arm": "released, OpenKBP plans", "steps": 0,
                     **released_openkbp(work, a.val_src, splits["test"], a.threads)})
    if "none" in arms:
        rows.append({"n": "-", "arm": "released, no fine-tuning", "steps": 0, **no_finetune(work, a.threads)})
    write_table(work, rows)
    for n in sizes:
        for kind in ("finetune", "freeze", "scratch"):
            if kind in arms:
                label = f"freeze {a.freeze_steps}" if kind == "freeze" else kind
                rows.append({"n": n, "arm": label, **train_arm(work, f"{kind}_{n}", n, a)})
                write_table(work, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
