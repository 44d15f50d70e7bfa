"""``dosepred bench qa-power``: does plan QA catch a plan made worse by a known amount, and how often
does it flag a plan nobody touched?

Plan QA (:mod:`dosepred.qa`) flags a criterion when the plan's value lies beyond the calibrated
interval on the bad side. This benchmark measures, on patients with clinical plans the model was
not trained on (the OpenKBP validation split), cross-validated:

- **false alarms**: the share of untouched plan values flagged (per metric family), and of untouched
  plans with at least one flag;
- **sensitivity**: the share of plans degraded by a known amount that are flagged on the degraded
  criterion in the right direction (and on any criterion), per family and amount:

  ``oar``   every OAR with a dose criterion gets its dose raised by X Gy inside the OAR, fading to 0
            over ``fade_mm`` outside it (a raised cosine, only where dose is possible): its Dmean
            (and every D-metric of it) rises by exactly X; flagged right = ``OAR dose above
            achievable`` on that OAR's criterion;
  ``cold``  every target with the ``cold_metric`` criterion (D95%) gets a cold spot: the dose
            lowered in a ball holding ``cold_fraction`` of its volume, centred on its voxel nearest
            an OAR (where coverage is traded for sparing), fading over ``fade_mm``, as deep as needed
            to lower the metric by exactly X Gy (bisection); flagged right = ``target coverage
            below achievable`` on that criterion;
  ``hot``   every target with the ``hot_metric`` criterion (V110%) gets a hot spot: the dose raised
            in a ball around its deepest voxel holding twice X % of its volume, by the least amount
            that raises the metric by X points of the volume (within a voxel); flagged right =
            ``target hot spot above achievable``.

  Every degraded value is recomputed by the evaluator and the change checked against X
  (:mod:`dosepred.bench.qa_degrade`).

Each split calibrates on ``calibration_patients`` patients (their untouched plans) with the same
conformal code as ``dosepred calibrate`` (:func:`dosepred.qa.conformal.fit_family`) and checks the
others with QA's flag rule (:func:`dosepred.qa.result.flags_for`): a degraded plan's prediction is its
untouched plan's (the prediction sees only the anatomy). Every method of
:data:`dosepred.qa.conformal.METHODS` is measured on the same splits, and so are locally adaptive
candidates (:data:`~dosepred.bench.qa_power_cv.ADAPTIVE`) when the test-time passes they need are
given (:mod:`dosepred.bench.qa_power_cv`): the normalised
interval scaled per unit by ``g(d) = a + b d``, ``d`` the disagreement of the criterion's value
between the plain prediction and another pass (left-right flipped, translated), ``a, b`` fitted to the
size of the calibration scores (cross-fitted per patient, as ``normalised`` is).

Predictions come from a cache (``dosepred predict --format cache``, flipped as plan QA predicts with a
calibration of version 3; ``--no-tta`` for older calibrations and for recovering the other passes:
computed once, the benchmark then runs in about a minute) or from the model, as plan QA predicts.
What it is not: a measure of what QA catches in real plans; the degradations are idealised (a
uniform excess, a spherical cold spot).

This module collects the plans (:func:`collect`), runs the benchmark (:func:`run`) and renders its
tables (:func:`console_lines`).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..inference import TTA_SHIFT, PredictionRecord, prediction_record
from ..io.cache import Cache
from ..io.source import plan_source
from ..patient import RoiSet
from ..progress import track
from ..protocol import BoundProtocol, load_protocol
from ..qa.calibrating import check_made_as_qa
from ..qa.calibration import CALIBRATION_FILE, Calibration, load_calibration, qa_inference
from .qa_degrade import Case, Crit, PowerConfig, criteria_of, degrade
from .qa_power_cv import (
    check_enough_patients,
    cross_validate,
    difficulty_correlation,
    methods_default,
    targets,
)


def qa_flipping(model: str | os.PathLike) -> bool:
    """Whether plan QA predicts with flipping for ``model``: its calibration's record
    (:attr:`dosepred.qa.calibration.Calibration.tta`), True without a calibration (``dosepred
    calibrate``'s default, as ``dosepred predict``)."""
    calib = _calibration(model)
    return True if calib is None else calib.tta


def _calibration(model: str | os.PathLike) -> Calibration | None:
    """``model``'s calibration, None when it has no calibration.json; one that is there but not readable
    or not valid is its error (:class:`CalibrationError`), not "no calibration": the benchmark would drop
    its "qa" row and assume flipping without a word. One made for another model file is refused, as
    `dosepred qa` refuses it."""
    from ..models.checkpoint import resolve_model_path

    ckpt = Path(resolve_model_path(model))  # a run folder: RUN/checkpoints/
    if not (ckpt.parent / CALIBRATION_FILE).is_file():
        return None
    calib = load_calibration(ckpt)
    calib.check_model_file(ckpt)  # another model's: `dosepred qa` refuses it, so its "qa" row is no QA's
    return calib


def _passes_words(made: PredictionRecord) -> str:
    """``--tta``, ``--no-tta, --tta-shift``, ...: the test-time passes a prediction was made with."""
    return made.words(["tta", "shifts"] if made.options.shifts else ["tta"])


#: The options compared with plan QA's: those that change the dose, except the test-time passes, which
#: the benchmark studies (a flipped or translated prediction is measured, with a warning).
COMPARED = ("amp", "overlap", "mode", "spacing_policy")
#: the benchmark's words in :func:`~dosepred.qa.calibrating.check_made_as_qa`'s message
_WORDS = {"qa": "plan QA", "so": "the benchmark would not measure QA's predictions",
          "role": "the model benchmarked"}


def _pass_dose(plain: np.ndarray, avg: np.ndarray) -> np.ndarray:
    """The dose of one other test-time pass from the plain prediction and their average: ``2 avg -
    plain`` (``--tta`` averages the plain and the flipped pass everywhere; ``--tta-shift`` the plain
    and the translated one where the translated input covers the voxel, the plain one alone at the
    array border, where this gives the plain pass)."""
    return np.maximum(2.0 * avg - plain, 0.0).astype(np.float32)


def collect(model: str | os.PathLike, data: str | os.PathLike, cfg: PowerConfig,
            prediction: str | os.PathLike | None = None,
            passes: dict[str, str | os.PathLike] | None = None, progress: bool = False
            ) -> tuple[list[Crit], list[Case], dict[str, Any]]:
    """Untouched criteria and degraded plans of every patient of ``data`` (plan doses). Predictions from
    the cache ``prediction`` (a warning in the info when it was not made as QA predicts, flipped or not
    as the model's calibration records, :func:`qa_flipping`), else the model, as QA predicts;
    ``passes``: pass name
    (``flip`` / ``shift``) -> a cache predicted with ``--tta`` / ``--no-tta --tta-shift``, from which
    (with the plain prediction) that pass alone is recovered."""
    passes = dict(passes or {})
    qa_tta = qa_flipping(model)
    qa_way = "with flipping" if qa_tta else "without flipping"
    info: dict[str, Any] = {"prediction": str(prediction) if prediction is not None else None,
                            "qa_tta": qa_tta}
    pred_cache = Cache.open(prediction) if prediction is not None else None
    model_net = None
    if pred_cache is not None:
        made = prediction_record(pred_cache)
        info["prediction_made_with"] = (made.options.to_json() if made is not None and not made.legacy
                                        else pred_cache.info.get("source", ""))
        if made is None:
            info["warning"] = (f"{prediction} does not record whether it was predicted with flipping; "
                               f"plan QA with this model's calibration predicts {qa_way}")
        else:
            check_made_as_qa(made, qa_tta, f"--prediction {prediction}", model, among=COMPARED,
                             error=InputError, **_WORDS)
            if made.options.tta != qa_tta or made.options.shifts:
                info["warning"] = (f"{prediction} was predicted with {_passes_words(made)}; plan QA "
                                   f"with this model's calibration predicts {qa_way} and without "
                                   "--tta-shift: these numbers describe QA with such a prediction")
        if passes and (made is None or made.options.tta or made.options.shifts):
            raise InputError(f"--prediction {prediction}: the other test-time passes are recovered "
                             "from the plain prediction, which must be predicted with --no-tta "
                             "(no --tta-shift)")
    else:
        from ..models.checkpoint import load_model

        model_net = load_model(model)
        info["prediction_made_with"] = f"the model, {qa_way} (as plan QA with its calibration)"
    want = {"flip": (True, ()), "shift": (False, (TTA_SHIFT,))}  # (tta, shifts) of each pass's cache
    pass_caches = {}
    for name, path in passes.items():
        if name not in want:
            raise InputError(f"unknown test-time pass {name!r} (flip or shift)")
        pc = Cache.open(path)
        pm = prediction_record(pc)
        if pm is None or (pm.options.tta, pm.options.shifts) != want[name]:
            flags = "--tta" if name == "flip" else "--no-tta --tta-shift"
            made_with = repr(pc.info.get("source", "?")) if pm is None else _passes_words(pm)
            raise InputError(f"--{name}-prediction {path}: made with {made_with}, not "
                             f"with `dosepred predict ... {flags}`")
        check_made_as_qa(pm, qa_tta, f"--{name}-prediction {path}", model, among=COMPARED,
                         error=InputError, **_WORDS)
        pass_caches[name] = pc
    proto = None
    bound: dict[RoiSet, BoundProtocol] = {}
    crits: list[Crit] = []
    cases: list[Case] = []

    # a cache of predicted doses is no plans (qa --plans and calibrate --data refuse it alike): --data and
    # --prediction swapped benchmarked QA of the predictions against the plans, exit 0
    source = plan_source(data, None, "the benchmark degrades plan doses and checks them as plan QA does")
    check_enough_patients(len(source.ids), f"--data {data}")  # before predicting any (run checks again)
    it: Any = source.patients(require_dose=True)
    if progress:
        it = track(it, description="degrading plans")
    for p in it:
        if p.dose is None:
            raise InputError(f"patient {p.id} of {data} has no dose: the benchmark needs plan doses")
        if proto is None:
            proto = load_protocol(cfg.protocol)
        if p.roi_set not in bound:  # resolved once per ROI set; each degraded plan is scored with it
            bound[p.roi_set] = proto.bind(p.roi_set)
        bp = bound[p.roi_set]
        if pred_cache is not None:
            if p.id not in pred_cache.ids:
                raise InputError(f"--prediction {prediction}: no prediction for patient {p.id}")
            pred = pred_cache.load_dose(p.id)
            if pred is None:
                raise InputError(f"--prediction {prediction}: patient {p.id} has no predicted dose")
            if np.array_equal(pred, p.dose):  # no model predicts a plan exactly: the plans given twice
                raise InputError(f"--prediction {prediction}: patient {p.id}'s predicted dose is its plan "
                                 f"dose in --data {data}, voxel for voxel (the plans given as their "
                                 "predictions?); give the cache `dosepred predict --format cache` wrote")
        else:
            from ..predict import predict_dose

            pred = predict_dose(model_net, p, qa_inference(qa_tta))  # type: ignore[arg-type]
        cs, _ = criteria_of(p, pred, bp)
        for name, pc in pass_caches.items():
            if p.id not in pc.ids:
                raise InputError(f"--{name}-prediction {passes[name]}: no prediction for patient {p.id}")
            avg = pc.load_dose(p.id)
            if avg is None:
                raise InputError(f"--{name}-prediction {passes[name]}: patient {p.id} has no predicted dose")
            other, _ = criteria_of(p, _pass_dose(pred, avg), bp)
            ov = {c.key: c.predicted for c in other}
            for c in cs:
                c.passes[name] = ov.get(c.key, c.predicted)
        crits += cs
        cases += degrade(p, pred, cs, bp, cfg)
    if not crits:
        raise InputError(f"no criterion of protocol {cfg.protocol} could be evaluated on {data}")
    return crits, cases, info


def run(model: str | os.PathLike, data: str | os.PathLike, cfg: PowerConfig | None = None,
        prediction: str | os.PathLike | None = None, passes: dict[str, str | os.PathLike] | None = None,
        methods: Sequence[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """The benchmark: :func:`collect`, then :func:`cross_validate`; ``qa_methods`` are the methods the
    model's calibration.json chose per family (what ``dosepred qa`` uses), when it has one."""
    from ..models.checkpoint import resolve_model_path

    cfg = cfg or PowerConfig()
    cfg.check()
    resolve_model_path(model)  # a clear error for a model that is not there, before any work
    t0 = time.perf_counter()
    crits, cases, info = collect(model, data, cfg, prediction, passes, progress)
    check_enough_patients(len({c.patient for c in crits}), f"--data {data}")
    t1 = time.perf_counter()
    calib = _calibration(model)  # none: no "qa" row
    qa_methods = {} if calib is None else calib.methods
    if methods is None and qa_methods:
        have = set.intersection(*(set(c.passes) for c in crits))
        methods = [*methods_default(have), "qa"]
    cv = cross_validate(crits, cases, cfg, methods, qa_methods)
    res: dict[str, Any] = {
        "benchmark": "qa-power", "model": str(model), "data": str(data), **info,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "coverage": cfg.coverage, "splits": cfg.splits,
        **{k: cv[k] for k in ("patients", "calibration_patients", "test_patients")},
        "degraded_plans": len(cases),
        "largest_change_error": _change_errors(cases),
        "qa_methods": qa_methods, "methods": cv["methods"],
        "difficulty_correlation": difficulty_correlation(crits),
        "seconds": {"collect": t1 - t0, "cross_validation": time.perf_counter() - t1},
        "machine": {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "load_average": list(os.getloadavg())},
    }
    res["targets"] = {m: targets(res, m) for m in cv["methods"]}
    return res


def _change_errors(cases: Sequence[Case]) -> dict[str, float]:
    """Per kind of degradation, the largest |measured change - amount| (Gy, or % points for hot spots)."""
    out: dict[str, float] = {}
    for k in cases:
        e = abs(abs(k.change) - k.amount)
        out[k.what] = max(out.get(k.what, 0.0), e)
    return out


# ------------------------------------------------------------------------------------- console
def parse_amounts(text: str, flag: str) -> tuple[float, ...]:
    """``"2,3,4"`` -> (2.0, 3.0, 4.0); a clear error naming ``flag`` otherwise."""
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated numbers such as 2,3,6") from None
    if not vals:
        raise InputError(f"{flag} {text!r}: give at least one amount")
    return vals


def _degradation(s: dict[str, Any]) -> str:
    sign, unit = {"oar": ("+", "Gy"), "cold": ("-", "Gy"), "hot": ("+", "%")}[s["what"]]
    return f"{s['what']} {sign}{s['amount']:g} {unit}"


def detection_table(res: dict[str, Any], method: str) -> Any:
    """False alarms and sensitivity per family and amount for one method."""
    from rich.table import Table

    r = res["methods"][method]
    label = method
    if method == "qa":
        label = "as dosepred qa (" + ", ".join(f"{f} {v}" for f, v in r["per_family_method"].items()) + ")"
    t = Table(title=f"{label}: flags at {res['coverage']:g} coverage, {res['splits']} splits, "
                    f"{res['calibration_patients']} patients calibrating / {res['test_patients']} checked")
    for c in ("family", "false alarms %", "degradation", "caught %", "flagged anywhere %", "checks"):
        t.add_column(c, justify="left" if c in ("family", "degradation") else "right")
    for fam, f in r["families"].items():
        rows = [s for s in r["sensitivity"] if s["family"] == fam] or [None]
        for i, s in enumerate(rows):
            t.add_row(fam if i == 0 else "", f"{f['false_alarms']:.1f}" if i == 0 else "",
                      _degradation(s) if s else "-", f"{s['sensitivity']:.1f}" if s else "",
                      f"{s['flagged_anywhere']:.1f}" if s else "", str(s["n"]) if s else "")
    return t


def comparison_table(res: dict[str, Any]) -> Any:
    """Every method on the same splits: coverage / median width per family, OAR mean-dose false alarms
    and +3 / +6 Gy sensitivity, plans with at least one flag."""
    from rich.table import Table

    names = list(res["methods"])
    fams = list(res["methods"][names[0]]["families"])
    t = Table(title=f"methods on the same splits: coverage % / median width at {res['coverage']:g}")
    t.add_column("method")
    for f in fams:
        t.add_column(f, justify="right")
    for c in ("OAR mean FA %", "+3 Gy %", "+6 Gy %", "plans flagged %"):
        t.add_column(c, justify="right")
    for m in names:
        r = res["methods"][m]

        def sens(amt: float, r: dict[str, Any] = r) -> str:
            s = next((s for s in r["sensitivity"] if s["what"] == "oar" and s["family"] == "oar_mean"
                      and s["amount"] == amt), None)
            return f"{s['sensitivity']:.1f}" if s else "-"

        fa = r["families"].get("oar_mean", {}).get("false_alarms")
        t.add_row(m, *(f"{r['families'][f]['coverage']:.1f} / {r['families'][f]['width_median']:.2f}"
                       if f in r["families"] else "-" for f in fams),
                  f"{fa:.1f}" if fa is not None else "-", sens(3.0), sens(6.0), f"{r['plans_flagged']:.1f}")
    return t


def console_lines(res: dict[str, Any]) -> list[Any]:
    """What ``dosepred bench qa-power`` prints: QA's detection table, the comparison of methods, the
    issue's targets for QA's methods, provenance."""
    from rich.text import Text

    main = "qa" if "qa" in res["methods"] else next(iter(res["methods"]))
    out: list[Any] = [detection_table(res, main), comparison_table(res)]
    for tg in res["targets"][main]:
        out.append(Text.assemble(f"{main}: {tg['what']}: {tg['value']:.1f} (goal {tg['goal']}) ",
                                 ("met", "green") if tg["met"] else ("not met", "red")))
    for name, fams in res.get("difficulty_correlation", {}).items():
        out.append(f"{name} pass: Spearman of |pass - predicted| with |plan - predicted| (and less the "
                   "criterion's mean): " + ", ".join(f"{f} {v['error']:+.2f} ({v['centred_error']:+.2f})"
                                                     for f, v in fams.items()))
    if res.get("warning"):
        out.append(Text.assemble(("warning:", "yellow"), f" {res['warning']}"))
    err = ", ".join(f"{k} {v:.2g}" for k, v in res["largest_change_error"].items())
    m = res["machine"]
    sec = res["seconds"]
    out.append(f"{res['patients']} patients, {res['degraded_plans']} degraded plans (largest |change - "
               f"amount|: {err}); predictions: {res['prediction_made_with']}; {sec['collect']:.0f} s to "
               f"degrade and evaluate, {sec['cross_validation']:.0f} s to cross-validate; {m['cpu_count']} "
               f"CPU cores ({m['cpu']}), load average {', '.join(f'{x:.1f}' for x in m['load_average'])}")
    return out
