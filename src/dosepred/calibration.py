"""Calibrated prediction intervals for the DVH metrics of a protocol (split-conformal).

A dose-prediction model says what dose an OAR or target *could* get; plan QA asks whether a plan's
value is plausible for a patient like this one. :func:`calibrate` turns the model's errors on
patients it was not trained on into intervals that hold their nominal coverage on new patients:

- every (patient, criterion) pair is one *unit* with the plan's value ``y`` and the model's
  predicted value ``yhat`` (the spread of the predicted dose in the ROI is kept for diagnostics: as a
  difficulty score it did not predict the size of the errors, see docs/qa.md);
- units are pooled per metric **family** (:data:`FAMILIES`: target D-metrics, OAR mean doses, OAR
  near-max doses, V-metrics) because one criterion alone has one unit per patient: with 16
  calibration patients a two-sided 90 % split-conformal interval of one criterion would be infinite
  (``ceil(17 * 0.95) = 17 > 16``);
- per family, one of :data:`METHODS` gives the interval at coverage ``1 - alpha``:

  ``absolute``   ``yhat -/+ q``, ``q`` the conformal quantile of ``|y - yhat|`` (plain split
                 conformal, symmetric);
  ``signed``     ``[yhat + q_lo, yhat + q_hi]`` from the signed residuals ``r = y - yhat``, each
                 side at ``alpha / 2`` (asymmetric: plans are systematically hotter or colder than
                 predicted in some families);
  ``normalised`` ``[yhat + b_c + s_c q_lo, yhat + b_c + s_c q_hi]`` from the signed scores
                 ``(r - b_c) / s_c``, with a per-criterion bias ``b_c`` and scale ``s_c`` shrunk
                 towards the family's (:func:`criterion_stats`) and, for the calibration scores,
                 computed without the unit's own patient (cross-fitting): wide for criteria whose
                 errors are large, centred where a criterion is biased.

The conformal quantile of ``n`` scores at level ``1 - a`` is the ``k``-th smallest with
``k = ceil((n + 1)(1 - a))`` (the ``ceil((n + 1)(1 - a)) / n`` empirical quantile; +inf when
``k > n``): it guarantees coverage ``>= 1 - a`` for an exchangeable new unit (REFERENCE.md, 9).

``calibration.json`` (written atomically into the model folder) keeps the sorted scores of every
family and method, so any coverage can be asked for later (``dosepred qa --coverage``); it also
records the protocol and criteria it was computed for, the method used per family (chosen by
cross-validation), the cross-validated coverage and widths, and the ranges of ROI volumes and voxel
spacings of the training data (for the reliability flags of plan QA).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import Metric, parse_metric
from .patient import Patient

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "dosepred-calibration"
FAMILIES = ("target_dose", "oar_mean", "oar_nearmax", "v_metric")
FAMILY_TITLES = {"target_dose": "target D-metrics", "oar_mean": "OAR mean doses",
                 "oar_nearmax": "OAR near-max doses", "v_metric": "V-metrics"}
METHODS = ("absolute", "signed", "normalised")
#: Near-max: an OAR D-metric at a volume of at most this many cc or percent, or Dmax.
NEARMAX_CC = 2.0
NEARMAX_PCT = 5.0


class CalibrationError(ValueError):
    """No calibration, or one that does not fit the model, protocol or request."""


# ------------------------------------------------------------------------------------ families
def metric_family(metric: str | Metric, kind: str) -> str:
    """Family of a metric of an ROI of ``kind`` (target / oar / other)."""
    m = parse_metric(metric) if isinstance(metric, str) else metric
    if m.kind == "V":
        return "v_metric"
    if kind == "target":
        return "target_dose"
    if m.kind == "Dmax":
        return "oar_nearmax"
    if m.kind == "D" and m.value is not None:
        small = m.value <= (NEARMAX_CC if m.unit == "cc" else NEARMAX_PCT)
        return "oar_nearmax" if small else "oar_mean"
    return "oar_mean"  # Dmean, Dmin and mid-volume D-metrics of OARs


# ------------------------------------------------------------------------------- conformal core
def conformal_quantile(scores: Sequence[float] | np.ndarray, alpha: float) -> float:
    """The ``k = ceil((n + 1)(1 - alpha))``-th smallest score (+inf when ``k > n``)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = s.size
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-12)
    return math.inf if k > n or n == 0 else float(s[k - 1])


def conformal_lower(scores: Sequence[float] | np.ndarray, alpha: float) -> float:
    """Lower counterpart: ``-conformal_quantile(-scores, alpha)`` (-inf when too few scores)."""
    return -conformal_quantile(-np.asarray(scores, dtype=np.float64), alpha)


def offsets(scores: np.ndarray, method: str, coverage: float) -> tuple[float, float]:
    """(lower, upper) offsets of the interval from the prediction, in score units (multiply by the
    difficulty for ``normalised``)."""
    alpha = 1.0 - coverage
    if method == "absolute":
        q = conformal_quantile(np.abs(scores), alpha)
        return -q, q
    if method in ("signed", "normalised"):
        return conformal_lower(scores, alpha / 2), conformal_quantile(scores, alpha / 2)
    raise ValueError(f"unknown calibration method {method!r} (one of {', '.join(METHODS)})")


# ----------------------------------------------------------------------------------- units
@dataclass
class Unit:
    """One (patient, criterion): plan value, predicted value, difficulty features."""

    patient: str
    roi: str
    metric: str
    family: str
    plan: float
    predicted: float
    spread: float  # std of the predicted dose inside the ROI (Gy)

    @property
    def residual(self) -> float:
        return self.plan - self.predicted


def roi_features(patient: Patient, pred_dose: np.ndarray, rois: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per present ROI: ``volume_cc``, ``spread`` (std of the predicted dose in it, Gy) and
    ``target_overlap`` (% of the ROI's voxels inside any target other than itself)."""
    from .dvh import roi_voxel_indices

    rs = patient.roi_set
    names = [r for r in dict.fromkeys(rois) if r in rs]
    targets = [t for t in rs.targets if t not in patient.missing_rois]
    idx = roi_voxel_indices(patient, list(dict.fromkeys(names + targets)))
    flat = np.asarray(pred_dose, dtype=np.float32).ravel()
    out: dict[str, dict[str, float]] = {}
    for r in names:
        if r not in idx:
            continue
        ix = idx[r]
        others = [idx[t] for t in targets if t != r and t in idx]
        ov = 0.0
        if others:
            ov = float(np.isin(ix, np.concatenate(others), assume_unique=False).mean() * 100.0)
        out[r] = {"volume_cc": ix.size * patient.voxel_volume_cc, "spread": float(flat[ix].std()),
                  "target_overlap": ov}
    return out


def patient_units(plan: Patient, pred_dose: np.ndarray, protocol: Any) -> tuple[list[Unit], Any]:
    """Units of one patient (its dose is the plan) and its evaluation result."""
    from .evaluation import evaluate_patient
    from .protocol import load_protocol

    proto = load_protocol(protocol, plan.roi_set)
    res = evaluate_patient(plan, pred_dose, proto)
    feats = roi_features(plan, pred_dose, [c.roi for c in res.criteria])
    kinds = {r.name: r.kind for r in plan.roi_set}
    units, seen = [], set()
    for c in res.criteria:
        key = (c.roi, c.metric)
        if key in seen or c.roi not in feats or not (c.ref == c.ref and c.pred == c.pred):
            continue
        seen.add(key)
        units.append(Unit(plan.id, c.roi, c.metric, metric_family(c.metric, kinds[c.roi]),
                          float(c.ref), float(c.pred), feats[c.roi]["spread"]))
    return units, res


# ------------------------------------------------------------------------------------ fitting
#: Shrinkage of the per-criterion location and scale towards the family's (pseudo-units).
SHRINK_K = 8.0


def criterion_stats(units: Sequence[Unit], k: float = SHRINK_K) -> dict[str, dict[str, float]]:
    """Per criterion ``"ROI metric"``: ``bias`` and ``scale`` of its residuals, shrunk towards 0 and
    towards the family's spread with ``k`` pseudo-units: ``bias = n / (n + k) * mean_c``,
    ``scale = sqrt((n var_c + k var_f) / (n + k))``. They define the ``normalised`` scores
    ``(r - bias) / scale``; a criterion the calibration did not see (key ``"*"``) gets bias 0 and the
    family's scale."""
    r_all = np.array([u.residual for u in units], dtype=np.float64)
    var_f = float(r_all.var()) if r_all.size > 1 else 1.0
    var_f = max(var_f, 1e-6)
    by: dict[str, list[float]] = {}
    for u in units:
        by.setdefault(f"{u.roi} {u.metric}", []).append(u.residual)
    out = {"*": {"bias": 0.0, "scale": math.sqrt(var_f), "n": 0}}
    for key, rs in by.items():
        a = np.asarray(rs)
        n = a.size
        var_c = float(a.var()) if n > 1 else var_f
        out[key] = {"bias": float(n / (n + k) * a.mean()),
                    "scale": math.sqrt(max((n * var_c + k * var_f) / (n + k), 1e-6)), "n": n}
    return out


def _norm(stats: dict[str, dict[str, float]], key: str) -> tuple[float, float]:
    s = stats.get(key) or stats["*"]
    return s["bias"], s["scale"]


def fit_family(units: Sequence[Unit]) -> dict[str, Any]:
    """Sorted scores of every method for one family's units, and the per-criterion statistics of the
    ``normalised`` method. The normalised score of a unit uses statistics computed *without its
    patient* (cross-fitting), so that it is distributed like the score of a new patient, whose
    interval uses the statistics of all calibration patients."""
    r = np.array([u.residual for u in units], dtype=np.float64)
    stats = criterion_stats(units)
    by_patient: dict[str, list[Unit]] = {}
    for u in units:
        by_patient.setdefault(u.patient, []).append(u)
    z: list[float] = []
    for pid, mine in by_patient.items():
        rest = [u for u in units if u.patient != pid]
        st = criterion_stats(rest) if rest else stats
        for u in mine:
            b, sc = _norm(st, f"{u.roi} {u.metric}")
            z.append((u.residual - b) / sc)
    return {"n": len(units), "criterion_stats": stats,
            "scores": {"absolute": np.sort(np.abs(r)).tolist(), "signed": np.sort(r).tolist(),
                       "normalised": np.sort(np.asarray(z)).tolist()}}


def interval(predicted: float, criterion: str, fam: dict[str, Any], method: str, coverage: float
             ) -> tuple[float, float]:
    """(low, high) of the plan value of ``criterion`` (``"ROI metric"``) predicted as ``predicted``,
    clipped to the metric's range (doses >= 0 Gy, V-metrics 0-100 %): clipping changes no coverage."""
    lo, hi = offsets(np.asarray(fam["scores"][method]), method, coverage)
    if method == "normalised":
        b, s = _norm(fam["criterion_stats"], criterion)
        low, high = predicted + b + s * lo, predicted + b + s * hi
    else:
        low, high = predicted + lo, predicted + hi
    top = 100.0 if fam.get("family") == "v_metric" else math.inf  # % of the ROI volume; doses >= 0
    return min(max(low, 0.0), top), max(min(high, top), 0.0)


def cross_validate(units: Sequence[Unit], coverages: Sequence[float] = (0.8, 0.9),
                   methods: Sequence[str] = METHODS, splits: int = 200, cal_fraction: float = 0.5,
                   seed: int = 0) -> dict[str, Any]:
    """Repeated random patient-level splits: calibrate on ``cal_fraction`` of the patients, measure
    coverage and mean width on the others. Returns family -> method -> coverage -> stats."""
    rng = np.random.default_rng(seed)
    pids = sorted({u.patient for u in units})
    n_cal = max(1, int(round(len(pids) * cal_fraction)))
    by_fam: dict[str, list[Unit]] = {}
    for u in units:
        by_fam.setdefault(u.family, []).append(u)
    acc: dict[str, dict[str, dict[str, dict[str, list[float]]]]] = {}
    for _ in range(splits):
        cal = set(rng.permutation(pids)[:n_cal].tolist())
        for fam, us in by_fam.items():
            cu = [u for u in us if u.patient in cal]
            tu = [u for u in us if u.patient not in cal]
            if not cu or not tu:
                continue
            f = fit_family(cu)
            f["family"] = fam
            y = np.array([u.plan for u in tu])
            for m in methods:
                for cov in coverages:
                    iv = np.array([interval(u.predicted, f"{u.roi} {u.metric}", f, m, cov) for u in tu])
                    low, high = iv[:, 0], iv[:, 1]
                    d = acc.setdefault(fam, {}).setdefault(m, {}).setdefault(f"{cov:g}",
                                                                            {"cov": [], "width": []})
                    d["cov"].append(float(np.mean((y >= low) & (y <= high))))
                    d["width"].append(float(np.mean(high - low)))
    out: dict[str, Any] = {}
    for fam, ms in acc.items():
        n_units = len(by_fam[fam])
        for m, covs in ms.items():
            for cov, d in covs.items():
                c = np.array(d["cov"])
                w = np.array(d["width"])
                out.setdefault(fam, {}).setdefault(m, {})[cov] = {
                    "coverage": float(c.mean() * 100), "coverage_sd": float(c.std() * 100),
                    "width": float(np.median(w)) if np.all(np.isfinite(w)) else math.inf,
                    "width_mean": float(w.mean()), "units": n_units}
    return out


def choose_methods(cv: dict[str, Any], coverages: Sequence[float] = (0.8, 0.9), tolerance: float = 3.0,
                   margin: float = 0.05) -> dict[str, str]:
    """Per family: ``absolute`` (plain split conformal), unless another method's cross-validated
    coverage is at least nominal - ``tolerance`` points at every level of ``coverages`` and its
    widths (summed over the levels) are narrower by more than ``margin`` (5 %): then the narrowest
    such method. Over-coverage is not held against a method (a narrower interval that still covers
    more is better on both counts); the margin keeps noise on 33 patients from choosing."""
    chosen = {}
    for fam, ms in cv.items():
        def total(m: str, ms: dict[str, Any] = ms) -> float | None:
            stats = [ms.get(m, {}).get(f"{c:g}") for c in coverages]
            if any(s is None for s in stats):
                return None
            if not all(s["coverage"] >= c * 100 - tolerance for s, c in zip(stats, coverages, strict=True)):
                return None
            return float(sum(s["width"] for s in stats))

        base = total("absolute")
        best, best_w = "absolute", base if base is not None else math.inf
        for m in METHODS:
            w = total(m)
            if m == "absolute" or w is None:
                continue
            if w < best_w * (1 - margin):
                best, best_w = m, w
        chosen[fam] = best
    return chosen


# --------------------------------------------------------------------------- data and ranges
def training_ranges(patients: Iterable[Patient]) -> dict[str, Any]:
    """ROI volumes (cc, min/max per ROI) and voxel spacings (mm, min/max per array axis sorted
    ascending) of the training patients."""
    vols: dict[str, list[float]] = {}
    sp: list[list[float]] = []
    n = 0
    for p in patients:
        n += 1
        sp.append(sorted(p.spacing))
        from .dvh import roi_voxel_indices

        for r, ix in roi_voxel_indices(p).items():
            vols.setdefault(r, []).append(ix.size * p.voxel_volume_cc)
    a = np.array(sp) if sp else np.zeros((0, 3))
    return {"patients": n,
            "roi_volume_cc": {r: [float(min(v)), float(max(v))] for r, v in vols.items()},
            "spacing_mm": {"min": a.min(axis=0).tolist() if n else None,
                           "max": a.max(axis=0).tolist() if n else None}}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def collect_units(model_path: str | os.PathLike, data: str | os.PathLike, protocol: Any,
                  predictions: str | os.PathLike | None = None, progress: bool = False
                  ) -> tuple[list[Unit], list[str]]:
    """Units of every patient of ``data`` (a cache or OpenKBP folder with plan doses). Predictions are
    read from ``predictions`` (a cache written by ``dosepred predict --format cache``) when given,
    else computed with the model."""
    from .io.cache import Cache, load_patients

    pred_cache = Cache.open(predictions) if predictions is not None else None
    model = None
    if pred_cache is None:
        from .predict import load_model

        model = load_model(model_path)
    units: list[Unit] = []
    ids: list[str] = []
    it: Iterable[Patient] = load_patients(data)
    if progress:
        from .progress import track
        it = track(it, description="calibrating")
    for p in it:
        if p.dose is None:
            raise CalibrationError(f"patient {p.id} of {data} has no dose: calibration needs plan doses")
        if pred_cache is not None:
            if p.id not in pred_cache.ids:
                raise CalibrationError(f"no prediction for patient {p.id} in {predictions}")
            pred = pred_cache.load_dose(p.id)
        else:
            from .predict import predict_dose

            pred = predict_dose(model, p)  # type: ignore[arg-type]
        us, _ = patient_units(p, pred, protocol)
        units += us
        ids.append(p.id)
    return units, ids


def build_calibration(units: Sequence[Unit], ids: Sequence[str], protocol: Any, model_path: Path,
                      data: str, ranges: dict[str, Any] | None, splits: int = 200, seed: int = 0,
                      cal_fraction: float = 0.8) -> dict[str, Any]:
    """The calibration.json object (see the module docstring)."""
    from .protocol import load_protocol

    proto = load_protocol(protocol)
    by_fam: dict[str, list[Unit]] = {}
    for u in units:
        by_fam.setdefault(u.family, []).append(u)
    cv = cross_validate(units, splits=splits, cal_fraction=cal_fraction, seed=seed)
    chosen = choose_methods(cv)
    ckpt = model_path / "model.pt" if model_path.is_dir() else model_path
    return {
        "format": CALIBRATION_FORMAT, "version": 1,
        "model_sha256": sha256_file(ckpt) if ckpt.is_file() else None,
        "protocol": proto.name,
        "criteria": sorted({f"{u.roi} {u.metric}" for u in units}),
        "data": str(data), "patients": list(ids),
        "normalisation": ("per criterion: (residual - bias) / scale, shrunk to the family with "
                          f"k={SHRINK_K:g}"),
        "families": {fam: {**fit_family(us), "family": fam, "method": chosen.get(fam, "absolute"),
                           "criteria": sorted({f"{u.roi} {u.metric}" for u in us})}
                     for fam, us in sorted(by_fam.items())},
        "cross_validation": {"splits": splits, "calibration_fraction": cal_fraction, "seed": seed,
                             "results": cv},
        "training_ranges": ranges,
    }


#: Fewest patients :func:`calibrate` accepts (cross-validation calibrates on 80 % of them).
MIN_PATIENTS = 12


def calibration_path(model: str | os.PathLike) -> Path:
    """Where ``model``'s calibration lives: ``calibration.json`` beside its checkpoint."""
    from .models.checkpoint import resolve_model_path

    return resolve_model_path(model).parent / CALIBRATION_FILE


def write_calibration(model_dir: str | os.PathLike, calib: dict[str, Any]) -> Path:
    """Write ``model_dir/calibration.json`` atomically (temporary file, then rename); nothing else in
    the folder is touched."""
    from .fsutil import write_text

    d = Path(model_dir)
    if d.is_file():
        d = d.parent
    path = d / CALIBRATION_FILE
    write_text(path, json.dumps(_finite(calib), indent=1) + "\n")
    return path


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if x != x else ("inf" if x > 0 else "-inf")
    return x


def load_calibration(model: str | os.PathLike) -> dict[str, Any]:
    """The model's ``calibration.json``; :class:`CalibrationError` when it has none."""
    d = Path(model)
    if d.is_file():
        d = d.parent
    path = d / CALIBRATION_FILE
    if not path.is_file():
        raise CalibrationError(f"model {model} has no {CALIBRATION_FILE}: run `dosepred calibrate --model "
                               f"{model} --data SRC --protocol P` on patients the model was not trained on")
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CalibrationError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(c, dict) or c.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path} is not a dosepred calibration (format {CALIBRATION_FORMAT!r})")
    return c


def calibrate(model: str | os.PathLike, data: str | os.PathLike, protocol: Any,
              predictions: str | os.PathLike | None = None, train_data: str | os.PathLike | None = None,
              splits: int = 200, seed: int = 0, progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Compute and write ``calibration.json`` for ``model`` from patients of ``data`` (plan doses;
    patients the model was not trained on). ``train_data``: the training patients (a source, or a JSON
    file of :func:`training_ranges`' output), for the ranges of ROI volumes and spacings (the
    calibration patients' own ranges when omitted)."""
    from .io.cache import load_patients
    from .predict import resolve_model_path

    ckpt = resolve_model_path(model)
    units, ids = collect_units(model, data, protocol, predictions, progress)
    if not units:
        raise CalibrationError(f"no criterion of the protocol could be evaluated on {data}")
    if len(ids) < MIN_PATIENTS:
        raise CalibrationError(f"{data}: {len(ids)} patient(s) cannot calibrate intervals; at least "
                               f"{MIN_PATIENTS} patients the model was not trained on are needed (a 90 % "
                               "interval needs at least 9 calibration patients; cross-validation more)")
    src = train_data if train_data is not None else data
    if str(src).endswith(".json") and Path(src).is_file():  # ranges computed before (training_ranges)
        ranges = json.loads(Path(src).read_text(encoding="utf-8"))
    else:
        ranges = training_ranges(load_patients(src, require_dose=False))
        ranges["source"] = str(src)
    calib = build_calibration(units, ids, protocol, ckpt, str(data), ranges, splits, seed)
    return write_calibration(ckpt.parent, calib), calib
