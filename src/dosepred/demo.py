"""``dosepred demo``: the released models and plan QA on real patients, then the whole training loop
on a synthetic cohort, in a few minutes on a laptop CPU.

Part 1, **released models on real patients** (what the product does): the OpenKBP validation
patients shipped in ``examples/openkbp`` (pt_201 unpacked, four more in a checksummed archive)
are predicted by the released models ``models/openkbp-mae`` and ``models/openkbp-mae-cdm`` (the
same U-Net trained on the OpenKBP train split with MAE, or MAE plus the clinical DVH metric loss)
and by a no-learning dose (:func:`dosepred.baseline.distance_falloff`), then scored against the
clinical plans (the models predict flipped or not, as the QA calibration's predictions were made);
``dosepred qa`` of the plans with the released ensemble of the two (``models/openkbp-ensemble``, the
mean of their doses: plan QA's narrowest intervals) and its calibration ranks them, and the
first-ranked plan gets a QA section in the report. Nothing here depends on the models' internals:
bigger models in the same folders are compared the same way.

Part 2, **train your own** (a miniature of the real experiment, about a minute): synthetic
patients (:func:`dosepred.synth.make_cohort`) -> caches -> one shared MAE warm-up -> from that
checkpoint, two fine-tunes with the same number of steps, seed and schedule, one with MAE and one
with MAE + CDM (the CDM loss matches the ``openkbp`` protocol's D-metrics, with the released
MAE+CDM model's options) -> whole-grid predictions of held-out patients -> the same table.

Both parts use the same table: dose and DVH score, PTV and OAR Score on OpenKBP's metrics (protocol
``openkbp``, the numbers of docs/results.md), and the share of the ``openkbp-clinical`` criteria
the prediction passes and where it agrees with the plan (both pass or both fail). A higher pass
rate is not a better prediction: the no-learning dose puts exactly the prescription in every target
and passes more criteria than the plans themselves; agreement and the scores say how close a
prediction is to the plan. Every verdict line is computed from the run's numbers, never asserted.

What it is not: evidence about clinical performance. Part 1 has five patients of the split that
also chose the models and calibrated QA (docs/results.md compares them on the whole split); part 2
has geometric phantoms at 8 mm voxels and a budget of a few hundred steps, where a model can be
worse than no learning. Outputs: ``DIR/report.html`` (part 1, with the QA section and part 2's
table), ``DIR/qa/`` (``qa.json`` and the full QA report), ``DIR/synthetic/report.html``, and the
data and runs they were made from.
"""

from __future__ import annotations

import html
import itertools
import os
import shlex
import shutil
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .baseline import distance_falloff
from .errors import InputError
from .evaluation import evaluate_cohort
from .fsutil import sha256_file
from .inference import InferenceOptions
from .io import load_patients
from .io.cache import write_cache
from .qa.check import QAChecker
from .qa.families import FAMILY_TITLES
from .qa.report import QAReportWriter
from .qa.result import FLAG_BETTER, IMPROVEMENT_FLAGS, UNTRUSTED_LEGEND, QAResult, coverage_pct, rank_label
from .report import write_report
from .report.html import decimals_beside
from .synth import make_cohort

#: The two objectives compared after the shared warm-up, as (label, loss spec).
LOSSES = (("MAE", "mae"), ("MAE+CDM", "mae+cdm"))
#: The released models compared on real patients, as (label, folder in the repository).
RELEASED = (("MAE", "models/openkbp-mae"), ("MAE+CDM", "models/openkbp-mae-cdm"))
#: The model QA checks the plans with (its label, its folder): the released ensemble of the two
#: models above, whose intervals are the narrowest (docs/qa.md "Which model").
QA_MODEL = "the MAE+CDM and MAE ensemble"
QA_FOLDER = "models/openkbp-ensemble"
#: Label of the no-learning reference column.
BASELINE = "no learning"
#: Scores on OpenKBP's metrics (docs/results.md); criteria, pass rates and QA on the clinical ones.
SCORES_PROTOCOL = "openkbp"
CRITERIA_PROTOCOL = "openkbp-clinical"
#: Shipped OpenKBP validation patients: an unpacked folder (pt_201) and a checksummed archive.
EXAMPLE_DIR = "examples/openkbp/validation-pats"
EXAMPLE_ARCHIVE = "examples/openkbp/validation-extra.tar.xz"
EXAMPLE_SUMS = "examples/openkbp/validation-extra.sha256"


@dataclass
class DemoSettings:
    n_train: int = 24
    n_test: int = 8
    size: int = 32
    patch: int = 24
    base: int = 8
    levels: int = 3
    res_units: int = 1
    warmup_steps: int = 400  # shared MAE warm-up
    finetune_steps: int = 150  # each objective, from the warm-up checkpoint
    batch: int = 2
    lr: float = 3e-3
    finetune_lr: float = 1e-3
    train_protocol: str = "openkbp"  # CDM loss: OpenKBP's D-metrics (as the OpenKBP experiment)
    # the CDM options of the released MAE+CDM model (models/openkbp-mae-cdm): targets weighted 4x
    loss_options: dict[str, Any] = field(default_factory=lambda: {
        "cdm_target_weight": 4, "cdm_oar_weight": 1, "cdm_spread": 3})
    falloff_mm: float = 15.0  # the no-learning reference
    # torch threads of the synthetic training: the tiny network gains little from more, and on a busy
    # machine a second thread spinning against other work made it ten times slower (200 steps: 12 s
    # on one thread, 115-132 s on two, 2 cores shared with two trainings)
    threads: int = 1
    released: bool = True  # part 1: the released models on the shipped real patients
    released_patients: int | None = None  # the first N shipped patients (None: all)
    qa_coverage: float = 0.9
    root: str | None = None  # the repository holding models/ and examples/ (None: found)

    @property
    def budget(self) -> str:
        return (f"{self.warmup_steps} shared MAE warm-up steps + {self.finetune_steps} fine-tune steps "
                f"per objective, batch {self.batch}, {self.patch}^3 crops of {self.size}^3 grids")


def _steps(n: int) -> tuple[int, int]:
    """(epochs, steps_per_epoch) giving n steps in few epochs."""
    per = min(n, 20)
    while n % per:
        per -= 1
    return n // per, per


# ------------------------------------------------------------------------------- shipped data
def find_repository(root: str | os.PathLike | None = None) -> Path:
    """The repository folder holding the released models and the shipped patients: ``root``, else
    the current folder or the one this package was installed from (an editable install of a clone).
    ValueError naming what is missing where, when none has them."""
    need = ([f"{rel}/model.pt" for _, rel in RELEASED] + [f"{QA_FOLDER}/ensemble.json"]
            + [EXAMPLE_DIR, EXAMPLE_ARCHIVE, EXAMPLE_SUMS])
    places = [Path(root)] if root is not None else [Path.cwd(), Path(__file__).resolve().parents[2]]
    for place in places:
        if all((place / n).exists() for n in need):
            return place
    where = " or ".join(str(p) for p in dict.fromkeys(places))
    missing = [n for n in need if not (places[0] / n).exists()]
    raise InputError(f"{where}: no released models and example patients here ({', '.join(missing)} missing): "
                     "`dosepred demo` runs from a clone of the repository (its models/ and examples/)")


def unpack_examples(root: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """The shipped OpenKBP validation patients in one OpenKBP folder ``dest/validation-pats``: the
    archive unpacked and every file checked against its checksum list (a missing, extra or changed
    file is a ValueError naming it), and the unpacked examples (pt_201) copied beside them."""
    root, dest = Path(root), Path(dest)
    archive, sums = root / EXAMPLE_ARCHIVE, root / EXAMPLE_SUMS
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")
    folder = dest / "validation-pats"
    want: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            want[os.path.normpath(rel)] = digest
    have = {os.path.normpath(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    for rel in sorted(have - set(want)):
        raise InputError(f"{archive}: {rel} is not in {sums}: the shipped example data is damaged "
                         "(restore both files from the repository)")
    for rel, digest in want.items():
        if rel not in have:
            raise InputError(f"{archive}: {rel} is missing (listed in {sums}): the shipped example data is "
                             "damaged (restore both files from the repository)")
        if sha256_file(folder / rel) != digest:
            raise InputError(f"{archive}: {rel} does not match its sha256 in {sums}: the shipped example "
                             "data is damaged (restore both files from the repository)")
    for pt in sorted((root / EXAMPLE_DIR).glob("pt_*")):
        shutil.copytree(pt, folder / pt.name)
    return folder


# --------------------------------------------------------------------------------- evaluation
def evaluate(patients: Sequence[Any], doses: Sequence[Any]) -> tuple[Any, dict[str, float]]:
    """(the :class:`~dosepred.evaluation.CohortResult` on the clinical criteria, the summary of the
    demo's table): dose, DVH, PTV and OAR scores on OpenKBP's metrics (:data:`SCORES_PROTOCOL`),
    pass rates and agreement on the clinical criteria (:data:`CRITERIA_PROTOCOL`)."""
    clinical = evaluate_cohort(zip(patients, doses, strict=True), CRITERIA_PROTOCOL)
    scores = evaluate_cohort(zip(patients, doses, strict=True), SCORES_PROTOCOL).summary()
    crit = clinical.summary()
    summary = {k: scores[k] for k in ("dose_score", "dvh_score", "ptv_score", "oar_score")}
    summary.update({k: crit[k] for k in ("criteria_pass_rate", "reference_pass_rate", "criteria_agreement")})
    return clinical, summary


# ---------------------------------------------------------------------------------- the demo
def run_demo(out: str | os.PathLike, seed: int = 0, settings: DemoSettings | None = None,
             log: Callable[[str], None] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns {"released": part 1 (absent with ``settings.released``
    False), "synthetic": part 2, "report": path of ``out/report.html``}. Each part holds
    ``results`` ({label: summary dict}: MAE, MAE+CDM and the no-learning column), ``note`` (what is
    compared and the verdict); part 1 also ``patients`` and ``qa`` (the ranked plans, the plan
    shown, the QA report), part 2 ``train_seconds`` and ``report``."""
    s = settings or DemoSettings()
    say = log or (lambda _m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    real = run_released(out, s, say) if s.released else None
    synth = run_synthetic(out / "synthetic", seed, s, say, progress)
    if real is None:
        return {"synthetic": synth, "report": synth["report"]}
    # the QA section right under the table: the first screens of the report are the real product
    intro = (released_html(real) + f"<h2>Plan QA: {html.escape(real['qa']['shown'])}'s plan against "
             f"the achievable dose of {QA_MODEL}</h2>" + real["qa"]["html"])
    n = len(real["patients"])
    report = write_report(out, real["cohorts"], real["patient_records"], real["doses"],
                          title=f"dosepred demo: released models on {n} real head-and-neck patients "
                                "(OpenKBP validation split)", intro=intro,
                          sections=[("Train your own: the whole loop on synthetic patients",
                                     synthetic_html(synth, out))])
    public = {k: v for k, v in real.items() if k not in ("cohorts", "patient_records", "doses")}
    public["qa"] = {k: v for k, v in real["qa"].items() if k != "html"}
    return {"released": public, "synthetic": synth, "report": str(report)}


def run_released(out: Path, s: DemoSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """Part 1: the shipped patients, the released models and the no-learning dose, scored; plan QA
    with :data:`QA_MODEL` into ``out/qa`` (``qa.json``, the report with the first-ranked plan's
    figures). The QA section's HTML is in ``["qa"]["html"]``."""
    from .models.checkpoint import load_model
    from .predict import predict_dose

    root = find_repository(s.root)
    folder = unpack_examples(root, out / "data" / "openkbp")
    patients = list(itertools.islice(load_patients(folder), s.released_patients))
    ids = [p.id for p in patients]
    say(f"real patients: {len(patients)} OpenKBP validation patients ({', '.join(ids)}) in {folder}")
    doses: dict[str, list[Any]] = {}
    cohorts: dict[str, Any] = {}
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    qa_dir = QA_FOLDER
    chk = QAChecker(root / qa_dir, CRITERIA_PROTOCOL, s.qa_coverage)
    # every released model predicts as the QA calibration's predictions were made (flipped or not), so
    # the two models are compared alike and as QA's ensemble of them predicts
    for label, rel in RELEASED:
        t0 = time.time()
        model = load_model(root / rel)
        doses[label] = [predict_dose(model, p, chk.inference) for p in patients]
        seconds[label] = time.time() - t0
        cohorts[label], results[label] = evaluate(patients, doses[label])
        say(f"released {label} ({rel}): {len(patients)} patients predicted in {seconds[label]:.0f} s")
    doses[BASELINE] = [distance_falloff(p, s.falloff_mm) for p in patients]
    cohorts[BASELINE], results[BASELINE] = evaluate(patients, doses[BASELINE])

    t0 = time.time()
    checked = [chk.check(p) for p in patients]  # predicted by the QA model, as `dosepred qa` does
    say(f"plan QA ({qa_dir}): {len(patients)} plans predicted and checked in {time.time() - t0:.0f} s")
    qa_res = QAResult(coverage=chk.coverage, model=str(chk.model_path.parent), protocol=chk.protocol.name,
                      calibration_protocol=str(chk.calibration.protocol), patients=[c[0] for c in checked],
                      methods=chk.methods, warnings=chk.warnings, tta=chk.tta, plans=str(folder))
    ranked = qa_res.summary()
    shown = ranked[0]["id"]
    writer = QAReportWriter(out / "qa", chk, max_patients=1)
    pq, pred, plan = next(c for c in checked if c[0].id == shown)
    writer.add(plan, pred, pq)
    qa_report = writer.finish(qa_res)
    qa_res.write_json(out / "qa" / "qa.json")
    in_calib = [i for i in ids if i in set(chk.calibration.patients)]
    say(f"plan QA ({QA_MODEL}, {coverage_pct(chk.coverage)} intervals): {shown} ranked first of {len(ids)} "
        "plans")

    qa = {"model": qa_dir, "coverage": chk.coverage, "ranked": ranked, "shown": shown,
          "report": str(qa_report), "json": str(out / "qa" / "qa.json"), "in_calibration": in_calib}
    if root.resolve() != Path.cwd().resolve():  # the command as it would be typed here
        qa["model"] = str(root / qa_dir)
    qa["html"] = qa_html(qa, pq, writer.figures.get(shown, ""), str(folder))
    how = ("flipped left-right and averaged, as `dosepred predict` does and" if chk.tta else "not flipped,"
           ) + " as the QA calibration's predictions were made"
    note = (f"released models {', '.join(rel for _, rel in RELEASED)} ({how}) and no "
            f"learning (distance fall-off {s.falloff_mm:g} mm) on {len(ids)} OpenKBP validation patients; "
            f"scores on protocol {SCORES_PROTOCOL}, criteria {CRITERIA_PROTOCOL}; verdict: "
            + verdict_released(results, len(ids)))
    return {"results": results, "patients": ids, "note": note, "qa": qa, "predict_seconds": seconds,
            "data": str(folder), "cohorts": cohorts, "patient_records": patients, "doses": doses}


def run_synthetic(out: Path, seed: int, s: DemoSettings, say: Callable[[str], None],
                  progress: bool | None = None) -> dict[str, Any]:
    """Part 2, train your own: the synthetic cohort, warm-up, two fine-tunes, the table and
    ``out/report.html``."""
    from .models.checkpoint import load_model
    from .predict import predict_dose
    from .training import TrainConfig, train

    out.mkdir(parents=True, exist_ok=True)
    cohort = make_cohort(s.n_train + s.n_test, seed=seed, size=s.size)
    train_p, test_p = cohort[: s.n_train], cohort[s.n_train:]
    write_cache(train_p, out / "data" / "train", source=f"dosepred.synth seed {seed}")
    write_cache(test_p, out / "data" / "test", source=f"dosepred.synth seed {seed}")
    say(f"train your own: synthetic cohort of {len(train_p)} training + {len(test_p)} test patients, "
        f"{s.size}^3 voxels")

    runs = out / "runs"

    def fit(name: str, spec: str, steps: int, lr: float, init: Path | None) -> tuple[Path, float]:
        run = runs / name
        if run.exists():  # the demo owns this folder; a rerun starts afresh
            shutil.rmtree(run)
        epochs, per = _steps(steps)
        arch = {} if init else {"base": s.base, "levels": s.levels, "res_units": s.res_units}
        cfg = TrainConfig(data=str(out / "data" / "train"), out=str(run), loss=spec,
                          loss_options=dict(s.loss_options), protocol=s.train_protocol,
                          epochs=epochs, steps_per_epoch=per, batch=s.batch, patch=(s.patch,) * 3,
                          lr=lr, seed=seed, device="cpu", schedule="cosine", threads=s.threads,
                          init=str(init) if init else None, **arch)
        t0 = time.time()
        train(cfg, log=None, progress=progress)
        return run, time.time() - t0

    seconds: dict[str, float] = {}
    warm, seconds["warm-up (MAE)"] = fit("warmup", "mae", s.warmup_steps, s.lr, None)
    say(f"shared MAE warm-up: {s.warmup_steps} steps in {seconds['warm-up (MAE)']:.0f} s")

    results: dict[str, dict[str, float]] = {}
    cohorts: dict[str, Any] = {}
    doses: dict[str, list] = {}
    unflipped = InferenceOptions(allow_missing_rois=True, tta=False)
    for label, spec in LOSSES:
        run, seconds[label] = fit(label.lower().replace("+", "_"), spec, s.finetune_steps, s.finetune_lr,
                                  warm / "checkpoints" / "last.pt")
        model = load_model(run)
        # phantoms lack ROIs at random: a held-out one may lack an ROI every training phantom had (no
        # warning for what is by design)
        doses[label] = [predict_dose(model, p, unflipped, warn=False) for p in test_p]
        cohorts[label], results[label] = evaluate(test_p, doses[label])
        say(f"fine-tuned {label} ({spec}): {s.finetune_steps} steps in {seconds[label]:.0f} s")
    doses[BASELINE] = [distance_falloff(p, s.falloff_mm) for p in test_p]
    cohorts[BASELINE], results[BASELINE] = evaluate(test_p, doses[BASELINE])

    note = (f"MAE vs MAE+CDM (CDM on {s.train_protocol} D-metrics), both fine-tuned from one MAE warm-up "
            f"with the same seed and schedule; {s.budget}; no learning = distance fall-off "
            f"{s.falloff_mm:g} mm; {len(test_p)} held-out synthetic patients; verdict: "
            + verdict(results, s.warmup_steps + s.finetune_steps, len(train_p), sum(seconds.values())))
    extra = {"training budget": [
        {"model": k, "loss": dict(LOSSES).get(k, "mae"),
         "steps": s.finetune_steps if k in dict(LOSSES) else s.warmup_steps,
         "from": "warm-up" if k in dict(LOSSES) else "scratch", "batch": s.batch, "patch": s.patch,
         "seconds": round(v, 1)} for k, v in seconds.items()]}
    report = write_report(out, cohorts, test_p, doses,
                          title=f"dosepred demo, train your own: MAE vs MAE+CDM on {len(test_p)} synthetic "
                                "test patients",
                          extra_tables=extra, intro=synthetic_intro(results, note))
    return {"results": results, "report": str(report), "train_seconds": seconds, "note": note}


# ------------------------------------------------------------------------------------ verdicts
def _each(results: dict[str, dict[str, float]], key: str, nd: int = 1) -> str:
    return ", ".join(f"{k} {results[k][key]:.{nd}f}" for k in results)


def verdict_released(results: dict[str, dict[str, float]], n: int) -> str:
    """Part 1's conclusion, computed from the numbers: MAE+CDM's PTV Score against MAE's, each
    column's agreement with the plans, whether learning beats no learning on dose and DVH score,
    and what a handful of patients cannot show."""
    mae, cdm, ref = results["MAE"], results["MAE+CDM"], results[BASELINE]
    change = 100 * (cdm["ptv_score"] - mae["ptv_score"]) / mae["ptv_score"]
    out = (f"on these {n} patients MAE+CDM's PTV Score is {abs(change):.0f} % "
           f"{'lower (better)' if change < 0 else 'higher (worse), not lower'} than MAE's "
           f"({mae['ptv_score']:.2f} -> {cdm['ptv_score']:.2f} Gy)")
    agree = {k: r["criteria_agreement"] for k, r in results.items()}
    best = [k for k, v in agree.items() if f"{v:.1f}" == f"{max(agree.values()):.1f}"]  # ties as printed
    out += (f"; agreement with the plans' pass/fail {_each(results, 'criteria_agreement')} % "
            f"(highest: {' and '.join(best)})")
    learned = [k for k in results if k != BASELINE]
    for key, name in (("dose_score", "dose score"), ("dvh_score", "DVH score")):
        beat = [k for k in learned if results[k][key] < ref[key]]
        out += (f"; {name}: " + ("both learned models beat no learning" if len(beat) == len(learned) else
                                 f"only {' and '.join(beat)} beats no learning" if beat else
                                 "the learned models do NOT beat no learning"))
    out += (f"; the plans pass {ref['reference_pass_rate']:.1f} % of the criteria, no learning "
            f"{ref['criteria_pass_rate']:.1f} % (a rate above the plans' is not a closer prediction)")
    return out + (f". {n} patients are few (one patient moves these numbers by Gy); the comparison on the "
                  "whole validation split, which also chose the models, is in docs/results.md")


def verdict(results: dict[str, dict[str, float]], steps: int | None = None, n_train: int | None = None,
            seconds: float | None = None) -> str:
    """Part 2's conclusion, computed from the numbers: what the run shows (the loop runs; the plans'
    and each column's pass rate and agreement) and what it does not (which objective is better:
    where a learned model is worse than no learning it says so)."""
    learned = [k for k, _ in LOSSES if k in results]
    ref = results[BASELINE]
    budget = (f"after {steps} steps on {n_train} synthetic patients" if steps and n_train
              else "at this budget")
    took = f" in {seconds:.0f} s of training" if seconds is not None else ""
    out = (f"this shows that the whole loop (data, training, prediction, evaluation, report) runs{took}; "
           f"the reference plans pass {ref.get('reference_pass_rate', float('nan')):.1f} % of the "
           f"criteria; predictions pass {_each(results, 'criteria_pass_rate')} % (a rate above the plans' "
           f"is not better: it misses the plans' trade-offs); agreement with the plans' pass/fail "
           f"{_each(results, 'criteria_agreement')} %; PTV Score {_each(results, 'ptv_score', 2)} Gy")
    worse = []
    for k in learned:
        what = [name for key, name, hi in (("criteria_agreement", "agreement", True),
                                           ("dvh_score", "DVH score", False),
                                           ("ptv_score", "PTV Score", False))
                if (results[k][key] < ref[key] if hi else results[k][key] > ref[key])]
        if what:
            on = ", ".join(what[:-1]) + " and " + what[-1] if len(what) > 1 else what[0]
            worse.append(f"{k} is worse than no learning on {on}")
    out += ". It does NOT show which objective is better: " + budget + " " + (
        "; ".join(worse) if worse else "both learned models beat no learning on agreement, DVH and PTV Score")
    return out + (", with one seed on coarse phantoms (differences under ~1 Gy or a few % are noise); the "
                  "comparison that counts is the released models' on real patients")


def summary_rows(results: dict[str, dict[str, float]]) -> list[tuple[str, list[str]]]:
    """(metric name, [value per model]) rows of the side-by-side table."""
    plan = next((r.get("reference_pass_rate", float("nan")) for r in results.values()), float("nan"))
    plan_s = "-" if plan != plan else f"{plan:.1f}"
    keys = (("dose score (Gy)", "dose_score"), ("DVH score (Gy)", "dvh_score"),
            ("PTV Score (Gy)", "ptv_score"), ("OAR Score (Gy)", "oar_score"),
            (f"criteria pass rate (%; plans {plan_s})", "criteria_pass_rate"),
            ("agreement with plans (%, higher is better)", "criteria_agreement"))
    rows = []
    for title, k in keys:
        vals = []
        for r in results.values():
            v = r.get(k, float("nan"))
            vals.append("-" if v != v else f"{v:.{1 if k.startswith('criteria') else 3}f}")
        rows.append((title, vals))
    return rows


#: What the rows of the table are (under it, in the console and the reports).
TABLE_KEY = (f"scores: lower is better, on OpenKBP's metrics (protocol {SCORES_PROTOCOL}); pass rate and "
             f"agreement (both pass or both fail) on the {CRITERIA_PROTOCOL} criteria")


# --------------------------------------------------------------------------------------- HTML
#: Why a demo report's table and its cohort table give a model two PTV (and OAR) scores (both reports say it).
TWO_PTV = ("The cohort table further down scores PTV and OAR on the clinical criteria's metrics (protocol "
           f"{CRITERIA_PROTOCOL}: D99/D98/D95 for targets), where the no-learning dose, exactly the "
           "prescription inside each target, does well; the PTV Score above is OpenKBP's (with the D1 hot "
           "spot).")


def _esc(s: Any) -> str:
    return html.escape(str(s))


def _table_html(results: dict[str, dict[str, float]], note: str) -> str:
    head = "".join(f"<th>{_esc(k)}</th>" for k in results)
    rows = "".join(f"<tr><td class='l'>{_esc(t)}</td>" + "".join(f"<td>{_esc(v)}</td>" for v in vals)
                   + "</tr>" for t, vals in summary_rows(results))
    setup, _, conclusion = note.partition("; verdict: ")
    return (f"<table><tr><th class='l'>metric</th>{head}</tr>{rows}</table>"
            f"<p class='meta'>{_esc(TABLE_KEY)}; {_esc(setup)}</p>"
            + (f"<p><b>Verdict</b> (computed from the numbers above): {_esc(conclusion)}</p>"
               if conclusion else ""))


def synthetic_intro(results: dict[str, dict[str, float]], note: str) -> str:
    """The top of the train-your-own report: the table, the verdict, why its cohort table's PTV and OAR
    scores differ from the table's."""
    return _table_html(results, note) + f"<p class='meta'>{TWO_PTV}</p>"


def released_html(real: dict[str, Any]) -> str:
    """The top of the demo's report: what it shows, the table, the verdict, where the rest is."""
    n = len(real["patients"])
    models = ", ".join(f"<code>{_esc(rel)}</code> ({_esc(k)})" for k, rel in RELEASED)
    return (f"<p><b>What this shows.</b> The released models of this repository, {models}: 3D U-Nets "
            "trained on the OpenKBP <b>train</b> split with a voxel loss (MAE) or with MAE plus the clinical "
            "DVH metric (CDM) loss, with the same network and training budget (each model's README says "
            "how it was made, models/README.md), "
            "and a no-learning dose (the prescription with a distance fall-off), "
            f"predicted from CT and contours alone for {n} head-and-neck patients of the OpenKBP "
            f"<b>validation</b> split ({_esc(', '.join(real['patients']))}) and compared with their clinical "
            "plans. Below: the scores, the plan QA of the plan ranked first, the cohort's tables, the "
            "train-your-own loop on synthetic patients, and each patient's DVHs and dose views.</p>"
            + _table_html(real["results"], real["note"])
            + f"<p class='meta'>{TWO_PTV} Plan QA of all {n} plans: "
              "<a href='qa/report.html'>qa/report.html</a>"
              "; train your own: <a href='synthetic/report.html'>synthetic/report.html</a>.</p>")


def qa_html(qa: dict[str, Any], pq: Any, figures: str, plans: str) -> str:
    """The QA section of the demo's report: the ranking, the shown plan's flagged criteria, its DVH
    with the calibrated bands and its views; the full criteria table is in ``qa/report.html``.
    ``plans``: the plans' folder as the command line would name it."""
    cov = qa["coverage"]
    rows = "".join(
        f"<tr><td>{rank_label(r)}</td><td class='l'>{_esc(r['id'])}</td><td>{r['potential_gy']:.1f}</td>"
        f"<td>{r['flags']}</td><td>{r['failed']}</td>"
        f"<td class='l'>{_esc(', '.join(r['flagged']) or '-')}</td></tr>" for r in qa["ranked"])
    flagged = [c for c in pq.criteria if c.flags and c.plan == c.plan and
               any(f.startswith((*IMPROVEMENT_FLAGS, FLAG_BETTER)) for f in c.flags)]
    def row(c: Any) -> str:
        nd = decimals_beside(c.plan, [c.low, c.high], nd=1)  # the plan shown on its side of the interval
        return (f"<tr><td class='l'>{_esc(c.name or f'{c.roi} {c.metric}')}</td>"
                f"<td class='l'>{_esc(FAMILY_TITLES.get(c.family, c.family))}</td>"
                f"<td>{c.plan:.{nd}f} {_esc(c.unit)}</td><td>{c.predicted:.{nd}f} {_esc(c.unit)}</td>"
                f"<td>{c.low:.{nd}f} - {c.high:.{nd}f} {_esc(c.unit)}</td>"
                f"<td class='l'>{_esc('; '.join(c.flags))}</td></tr>")

    crit = "".join(row(c) for c in flagged)
    in_cal = qa["in_calibration"]
    cal_note = (f" The calibration used the validation split, {len(in_cal)} of these plans included "
                f"({', '.join(in_cal)}): for them the intervals are not out-of-sample." if in_cal else "")
    return (f"<p><code>dosepred qa</code> checks each plan's criteria against the dose {QA_MODEL} predicts "
            "as achievable for that patient, with intervals calibrated on patients the model did not train "
            f"on ({coverage_pct(cov)} coverage, <code>{_esc(qa['model'])}/calibration.json</code>). A plan "
            "value outside the interval on the bad side is flagged: the plan might be improved there. A flag "
            f"is a prompt to look, not a verdict (docs/qa.md).{_esc(cal_note)}</p>"
            "<table><tr><th>rank</th><th class='l'>plan</th><th>potential improvement (Gy)</th><th>flags</th>"
            f"<th>failed limits</th><th class='l'>flagged criteria</th></tr>{rows}</table>"
            "<p class='meta'>Potential improvement: sum over the flagged dose criteria of |plan - predicted| "
            "(Gy).</p>"
            + (f"<p class='meta'>&#9888; {_esc(UNTRUSTED_LEGEND)}.</p>"
               if any(r.get("untrusted") for r in qa["ranked"]) else "")
            + f"<h3>{_esc(qa['shown'])}: the plan ranked first</h3>"
            + ("<table><tr><th class='l'>criterion</th><th class='l'>family</th><th>plan</th><th>predicted "
               f"(achievable)</th><th>{coverage_pct(cov)} interval</th><th class='l'>flag</th></tr>"
               f"{crit}</table>"
               if crit else "<p>No criterion of this plan is outside its interval.</p>")
            + figures
            + "<p class='meta'>Every criterion of every plan: "
              f"<a href='qa/report.html#p-{_esc(qa['shown'])}'>qa/report.html</a> "
              "(and <code>qa/qa.json</code>); the same from the command line: "
              f"<code>dosepred qa --model {_esc(shlex.quote(qa['model']))} --plans "
              f"{_esc(shlex.quote(plans))} --protocol {CRITERIA_PROTOCOL} --out qa-out --coverage "
              f"{cov:g}</code>.</p>")


def synthetic_html(synth: dict[str, Any], out: Path) -> str:
    """Part 2's section in the demo's report: the table, the verdict, the link to its report."""
    rel = os.path.relpath(synth["report"], out)
    return ("<p>The same comparison trained from scratch here: a shared MAE warm-up on synthetic "
            "head-and-neck phantoms, then MAE and MAE+CDM fine-tuned with the same budget, on held-out "
            f"phantoms. Its own report: <a href='{_esc(rel)}'>{_esc(rel)}</a>.</p>"
            + _table_html(synth["results"], synth["note"]))
