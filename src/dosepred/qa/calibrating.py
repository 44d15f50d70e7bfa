"""Calibrating a model's intervals: its errors on patients it was not trained on, made into
``calibration.json`` (:mod:`dosepred.qa.calibration`).

A dose-prediction model says what dose an OAR or target *could* get; plan QA asks whether a plan's
value is plausible for a patient like this one. :func:`calibrate` predicts the dose of every patient
of a source with plan doses (or reads predictions made before, :func:`check_predictions`), evaluates
the protocol's criteria on the plan and on the prediction (one :class:`~dosepred.qa.families.Unit`
per patient and criterion; the spread of the predicted dose in the ROI is kept for diagnostics: as a
difficulty score it did not predict the size of the errors, see docs/qa.md), fits each metric family
(:func:`~dosepred.qa.conformal.fit_family`), chooses its method by cross-validation
(:mod:`dosepred.qa.crossval`), fits the DVH band (:mod:`dosepred.qa.band`) and records the ranges of
ROI volumes and spacings of the training patients (:func:`training_ranges`).

The predictions are flipped (averaged with the left-right mirrored prediction, as ``dosepred
predict`` by default) since version 3, and the file records it (``tta``): plan QA predicts the same
way (versions 1 and 2: unflipped).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..dvh import roi_voxel_indices
from ..errors import DosepredError, name_some
from ..evaluation import evaluate_patient
from ..fsutil import sha256_file
from ..inference import DOSE_OPTIONS, PredictionRecord, prediction_record
from ..io.cache import Cache
from ..io.formats import detect
from ..io.source import load_patients, open_source, plan_source
from ..patient import Patient, RoiSet
from ..progress import track
from ..protocol import BoundProtocol, Protocol, load_protocol
from .band import band_doses, fit_band
from .calibration import (
    CALIBRATION_FILE,
    CALIBRATION_VERSION,
    Calibration,
    CalibrationError,
    CrossValidation,
    TrainingRanges,
    qa_inference,
    read_json,
    write_calibration,
)
from .conformal import DEFAULT_RULE, SHRINK_K, check_rule, fit_family
from .crossval import DEFAULT_METHOD_RULE, check_cv_options, choose_methods, cross_validate
from .dose_gap import GAP_CAUSE, dose_gaps
from .families import Unit, lower_is_better, metric_family

#: Families with at most one unit per patient are cross-validated with this many times more splits.
SMALL_FAMILY_SPLITS = 10
#: Fewest patients :func:`calibrate` accepts (cross-validation calibrates on 80 % of them).
MIN_PATIENTS = 12
#: Share of the patients each cross-validation split calibrates on (the others check).
CAL_FRACTION = 0.8


# ------------------------------------------------------------------------------- predictions
def _flip_words(tta: bool) -> str:
    return "with flipping (`dosepred predict`'s default, --tta)" if tta else "without flipping (--no-tta)"


def other_model(made: Any, model: str | os.PathLike) -> str:
    """Why the predictions of ``made`` (a :class:`~dosepred.inference.PredictionRecord`) are not
    ``model``'s: ``"these predictions were made by model M (SHA-256 ...), not by CKPT"``; "" when they
    are, or when the record does not say (a cache of an earlier dosepred)."""
    if made.model_sha256 is None:
        return ""
    from ..models.checkpoint import resolve_model_path

    ckpt = resolve_model_path(model)
    if sha256_file(ckpt) == made.model_sha256:
        return ""
    return (f"these predictions were made by model {made.model} (SHA-256 {made.model_sha256[:12]}...), "
            f"not by {ckpt}")


def check_made_as_qa(made: PredictionRecord, tta: bool, where: str, model: str | os.PathLike | None = None,
                     *, among: Sequence[str] = DOSE_OPTIONS, error: type[DosepredError] = CalibrationError,
                     qa: str = "plan QA with this calibration",
                     so: str = "the intervals would not describe QA's errors",
                     role: str = "the model being calibrated") -> None:
    """The one check that predictions were made as plan QA predicts: ``error`` (a
    :class:`~dosepred.errors.DosepredError` class; :class:`CalibrationError` by default) naming
    ``where`` unless the options of ``among`` (default: all that change the dose,
    :data:`~dosepred.inference.DOSE_OPTIONS`) in ``made`` (a
    :class:`~dosepred.inference.PredictionRecord`) are those of
    :func:`~dosepred.qa.calibration.qa_inference` ``(tta)``, and, when the record holds its model's
    SHA-256 and ``model`` is given, unless it was made by ``model``. ``qa``, ``so`` and ``role`` are
    the caller's words in the message (who predicts, what would go wrong, what ``model`` is to it;
    by default those of calibrating). Used by :func:`check_predictions` (``calibrate --predictions``) and
    ``bench qa-power`` (which studies the test-time passes, so compares the other options only)."""
    need = qa_inference(tta)
    flips = "tta" in among
    want = (" --tta" if tta else " --no-tta") if flips else ""
    tail = " (no --tta-shift)" if "shifts" in among else ""
    diff = made.options.differences(need, among)
    if diff:
        others = [n for n in diff if n != "tta"]
        words = ["without --tta-shift" if n == "shifts" else need.words([n]) for n in others]
        need_words = " and ".join([_flip_words(tta), *words]) if flips else "with " + " and ".join(words)
        raise error(f"{where}: these predictions were made with "
                    f"{made.words((['tta'] if flips else []) + others)}, but {qa} predicts "
                    f"{need_words}, so {so}: predict again "
                    f"with `dosepred predict ... --format cache{want}{' --no-amp' if 'amp' in diff else ''}`"
                    f"{tail}")
    other = other_model(made, model) if model is not None else ""
    if other:
        raise error(f"{where}: {other}, {role}: predict again with `dosepred predict --model {model} ... "
                    f"--format cache{want} --no-amp`")


def check_predictions(cache: Any, path: str | os.PathLike, tta: bool,
                      model: str | os.PathLike | None = None) -> None:
    """:class:`CalibrationError` unless the prediction cache at ``path`` was made as plan QA will
    predict with a calibration recording ``tta`` (:func:`check_made_as_qa`: flipped or not as it
    says, never translated, in full precision, the default windows and spacing policy) and, when the
    cache records its model's SHA-256 and ``model`` is given, by that model;
    :func:`dosepred.inference.prediction_record` reads how they were made, also from the command
    string of a cache written before the record. A cache of an earlier dosepred, which did not
    record whether it used mixed precision (on a GPU), gets a warning."""
    made = prediction_record(cache)
    want = "--tta" if tta else "--no-tta"
    if made is None:
        raise CalibrationError(f"{path}: these predictions do not record how they were made (flipped or "
                               f"not: {cache.info.get('source') or 'no source'!r}); plan QA predicts "
                               f"{_flip_words(tta)}, so the intervals must describe such predictions: "
                               f"predict again with `dosepred predict ... --format cache {want} --no-amp` "
                               "(no --tta-shift)")
    check_made_as_qa(made, tta, str(path), model)
    if "amp" in made.unknown:
        import warnings

        warnings.warn(f"{path}: made by an earlier dosepred, which did not record whether it predicted in "
                      "mixed precision (it did on a GPU); plan QA predicts in full precision, so if these "
                      "were predicted on a GPU the intervals describe other predictions than QA's: predict "
                      f"again with `dosepred predict ... --format cache {want} --no-amp` to be sure",
                      stacklevel=2)


# ------------------------------------------------------------------------------------- units
def roi_features(patient: Patient, pred_dose: np.ndarray, rois: Iterable[str]) -> dict[str, dict[str, float]]:
    """Per present ROI: ``volume_cc``, ``spread`` (std of the predicted dose in it, Gy) and
    ``target_overlap`` (% of the ROI's voxels inside any target other than itself)."""
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


def patient_units(plan: Patient, pred_dose: np.ndarray, protocol: Protocol | BoundProtocol | str
                  ) -> tuple[list[Unit], Any]:
    """Units of one patient (its dose is the plan) and its evaluation result. ``protocol``: best bound
    to the plan's ROI set already (:meth:`Protocol.bind`), else bound here."""
    res = evaluate_patient(plan, pred_dose, protocol)
    feats = roi_features(plan, pred_dose, [c.roi for c in res.criteria])
    kinds = {r.name: r.kind for r in plan.roi_set}
    units, seen = [], set()
    for c in res.criteria:
        key = (c.roi, c.metric)
        if key in seen or c.roi not in feats or not (c.ref == c.ref and c.pred == c.pred):
            continue
        seen.add(key)
        units.append(Unit(plan.id, c.roi, c.metric, metric_family(c.metric, kinds[c.roi]),
                          float(c.ref), float(c.pred), feats[c.roi]["spread"],
                          lower_is_better(c.direction, c.metric, kinds[c.roi],
                                          plan.roi_set.prescription(c.roi))))
    return units, res


def collect_units(model_path: str | os.PathLike | None, data: str | os.PathLike, protocol: Protocol | str,
                  predictions: str | os.PathLike | None = None, progress: bool = False,
                  dvh_band: dict[str, dict[str, list[float]]] | None = None, tta: bool = True,
                  roi_map: Any = None, net: Any = None) -> tuple[list[Unit], list[str]]:
    """Units of every patient of ``data`` (a source with plan doses; ``roi_map``: the ROI name map of a
    DICOM folder). Predictions are read from ``predictions`` (a cache written by ``dosepred predict
    --format cache`` by this model, made as plan QA predicts: with the flipping ``tta`` says, without
    translations, in full precision, :func:`check_predictions`) when given, else computed with the
    model that way (as plan QA with a calibration that records ``tta``). ``dvh_band``: a dict that
    receives ROI -> patient -> residuals of D at the :data:`~dosepred.qa.band.BAND_LEVELS` (for
    :func:`~dosepred.qa.band.fit_band`); ``net``: the model loaded already (else loaded here).
    ``model_path`` None: no model to check ``predictions`` against (they must be given)."""
    if model_path is None and predictions is None and net is None:
        raise CalibrationError("no model and no predictions: give the model or a prediction cache")
    pred_cache = Cache.open(predictions) if predictions is not None else None
    if pred_cache is not None:
        check_predictions(pred_cache, predictions, tta, model_path)  # type: ignore[arg-type]
    model = net
    if pred_cache is None and model is None:
        from ..models.checkpoint import load_model

        model = load_model(model_path)
    proto = load_protocol(protocol)
    bound: dict[RoiSet, BoundProtocol] = {}  # resolved once per ROI set (one for a whole source)
    units: list[Unit] = []
    ids: list[str] = []
    it: Iterable[Patient] = load_patients(data, roi_map=roi_map)
    if progress:
        it = track(it, description="calibrating")
    for p in it:
        if p.dose is None:
            raise CalibrationError(f"patient {p.id} of {data} has no dose: calibration needs plan doses")
        if pred_cache is not None:
            if p.id not in pred_cache.ids:
                raise CalibrationError(f"no prediction for patient {p.id} in {predictions}")
            pred = pred_cache.load_dose(p.id)
        else:
            from ..predict import MissingRoisError, predict_dose

            try:
                pred = predict_dose(model, p, qa_inference(tta))  # type: ignore[arg-type]
            except MissingRoisError as e:  # predict's remedy is a flag calibrate has not, by design
                raise CalibrationError(f"{e.problem}: calibration predicts as plan QA does, which checks no "
                                       "such plan; leave the patient out of the calibration data (`dosepred "
                                       "data split --ids` and `data subset`), or name its ROIs as the model "
                                       "does (--roi-map)") from None
        gaps = dose_gaps(p, pred)
        if gaps:  # plan QA notes such a plan untrusted; here its missing dose would count as model error
            warnings.warn(f"patient {p.id} of {data}: plan dose missing in ROIs: {'; '.join(gaps)}: "
                          f"{GAP_CAUSE}? The calibration counts the dose that is not there as the "
                          "model's error (intervals wider and shifted for every plan QA checks); give the "
                          "plan's dose on a grid covering every ROI, or leave the patient out (`dosepred "
                          "data split --ids` and `data subset`)", stacklevel=2)
        if p.roi_set not in bound:
            bound[p.roi_set] = proto.bind(p.roi_set)
        us, _ = patient_units(p, pred, bound[p.roi_set])
        units += us
        ids.append(p.id)
        if dvh_band is not None:
            pd = band_doses(p, pred)
            for roi, dv in band_doses(p, p.dose).items():
                if roi in pd:
                    dvh_band.setdefault(roi, {})[p.id] = [a - b for a, b in zip(dv, pd[roi], strict=True)]
    return units, ids


# ------------------------------------------------------------------------------- calibrating
def training_ranges(patients: Iterable[Patient], source: str | None = None) -> TrainingRanges:
    """ROI volumes (cc, min/max per ROI) and voxel spacings (mm, min/max per array axis sorted
    ascending) of the training patients; ``source``: where they came from (recorded)."""
    vols: dict[str, list[float]] = {}
    sp: list[list[float]] = []
    n = 0
    for p in patients:
        n += 1
        sp.append(sorted(p.spacing))
        for r, ix in roi_voxel_indices(p).items():
            vols.setdefault(r, []).append(ix.size * p.voxel_volume_cc)
    a = np.array(sp) if sp else np.zeros((0, 3))
    return TrainingRanges(n, {r: (float(min(v)), float(max(v))) for r, v in vols.items()},
                          tuple(a.min(axis=0).tolist()) if n else None,
                          tuple(a.max(axis=0).tolist()) if n else None, source)


def build_calibration(units: Sequence[Unit], ids: Sequence[str], protocol: Protocol | str, model_path: Path,
                      data: str, ranges: TrainingRanges, splits: int = 200, seed: int = 0,
                      cal_fraction: float = CAL_FRACTION, rule: str = DEFAULT_RULE,
                      dvh_band: dict[str, dict[str, list[float]]] | None = None, tta: bool = True
                      ) -> Calibration:
    """The calibration of ``units`` (the module docstring says how); ``dvh_band`` as filled by
    :func:`collect_units`; ``tta``: whether the units' predictions were flipped (recorded: plan QA
    predicts the same way)."""
    check_rule(rule)  # the split options: cross_validate checks them
    proto = load_protocol(protocol)
    by_fam: dict[str, list[Unit]] = {}
    for u in units:
        by_fam.setdefault(u.family, []).append(u)
    # A family with one unit per patient (PTV70 V110%) checks ~7 units per split: its mean coverage
    # over 200 splits still moves by 1-2 points; more splits are cheap for so few units.
    small = {f for f, us in by_fam.items() if len(us) <= len({u.patient for u in us})}
    cv = cross_validate([u for u in units if u.family not in small], splits=splits, cal_fraction=cal_fraction,
                        seed=seed, rule=rule)
    if small:
        cv.update(cross_validate([u for u in units if u.family in small], splits=SMALL_FAMILY_SPLITS * splits,
                                 cal_fraction=cal_fraction, seed=seed, rule=rule))
    chosen = choose_methods(cv)
    ckpt = model_path / "model.pt" if model_path.is_dir() else model_path
    return Calibration(
        CALIBRATION_VERSION, rule, bool(tta), DEFAULT_METHOD_RULE,
        sha256_file(ckpt), proto.name,
        tuple(sorted({u.criterion for u in units})), str(data), tuple(ids),
        f"normalised: per criterion (residual - bias) / scale, shrunk to the family with k={SHRINK_K:g}; "
        "centred: per criterion residual - its median",
        {fam: replace(fit_family(us, fam), method=chosen.get(fam, "absolute"),
                      criteria=tuple(sorted({u.criterion for u in us})))
         for fam, us in sorted(by_fam.items())},
        CrossValidation(splits, cal_fraction, seed, cv,
                        {f: SMALL_FAMILY_SPLITS * splits for f in sorted(small)}),
        ranges, fit_band(dvh_band) if dvh_band else None)


#: What calibrate does with its data's plan doses (the message refusing predicted ones)
CALIBRATION_NEEDS = "calibration measures the model's errors against the plans' doses"


def calibration_path(model: str | os.PathLike) -> Path:
    """Where ``model``'s calibration lives: ``calibration.json`` beside its checkpoint."""
    from ..models.checkpoint import resolve_model_path

    return resolve_model_path(model).parent / CALIBRATION_FILE


def check_before_predicting(ckpt: Path, data: str | os.PathLike, roi_map: Any = None,
                         model: str | os.PathLike | None = None, protocol: Protocol | None = None) -> Any:
    """A warning when the patients of ``data`` have exactly the ids of those the model was trained on
    (its space record's ``patients_sha``, :func:`dosepred.models.space.ids_sha`): if they are the same
    patients, the intervals are made of the model's errors on its own training patients, smaller than
    on new ones (the released MAE+CDM: DVH score 1.33 on 40 of them, 1.60 on the validation split), so
    they are too narrow and QA would flag plans that are fine. A warning, not an error: the fingerprint
    holds the ids only, and other patients may carry the same ids (two clinics' pt_001 ...); a source
    that only overlaps the training patients cannot be told from it. With ``protocol``, first a
    :class:`CalibrationError` for a protocol prescribing one of the model's targets otherwise than the
    model (:meth:`BoundProtocol.prescription_conflicts`), which plan QA refuses with this model. Returns
    the loaded model (``collect_units`` predicts with it)."""
    from ..models.checkpoint import load_model  # heavy: torch
    from ..models.space import ids_sha  # heavy: dosepred.models imports torch
    from ..predict import model_space  # heavy: torch

    net = load_model(ckpt)
    if protocol is not None:  # QA refuses such a protocol with this calibration: say so before predicting
        bound = protocol.bind(net.config.roi_set, roi_owner="the model")
        if bound.prescription_conflicts():
            raise CalibrationError(
                f"protocol {protocol.name!r} prescribes {bound.said_conflicts('the model')}: plan QA checks "
                "plans prescribed as the model and refuses this protocol with the model, so its calibration "
                "could not be used; give the protocol the model's prescriptions")
    trained = model_space(net).patients_sha
    ids = open_source(data, roi_map).ids
    if trained is not None and ids and ids_sha(ids) == trained:
        warnings.warn(
            f"{data}: its {len(ids)} patients have the ids of the ones model {model or ckpt} was trained on: "
            "if they are those patients, the intervals are made of its errors on its training patients, "
            "smaller than on new ones, so they are too narrow and QA would flag plans that are fine; "
            "calibrate on patients it was not trained on (held out with `dosepred data split` and "
            "`data subset`)", stacklevel=3)
    return net


def check_train_overlap(data: str | os.PathLike, train_data: str | os.PathLike | None,
                        roi_map: Any = None) -> None:
    """A warning when patients of ``data`` have the ids of patients of ``train_data`` (a source: the
    model's training patients): the model's fingerprint catches only the very same set of patients,
    not a calibration source that holds some training patients (a whole cache given for its calib
    split, or splits made twice). A warning: other patients may carry the same ids."""
    if train_data is None or (str(train_data).endswith(".json") and Path(train_data).is_file()):
        return
    fmt = detect(train_data)
    train = set(open_source(train_data, roi_map if fmt is not None and fmt.takes_roi_map else None).ids)
    both = [i for i in open_source(data, roi_map).ids if i in train]
    if both:
        warnings.warn(f"{data}: {len(both)} of its patients have the ids of training patients of "
                      f"{train_data} ({name_some(both)}): if they are those patients, the intervals are "
                      "made of the model's errors on its training patients, too narrow; calibrate "
                      "on patients it was not trained on", stacklevel=3)


def too_few_message(data: str | os.PathLike, n: int, of: int | None = None) -> str:
    """Why ``n`` patients (of the source's ``of``, when some gave no criterion) cannot calibrate."""
    some = f" of its {of} gave a criterion" if of is not None and of != n else ""
    return (f"{data}: {n} patient(s){some} cannot calibrate intervals; at least {MIN_PATIENTS} patients the "
            "model was not trained on are needed (a 90 % interval needs at least 9 calibration patients; "
            "cross-validation more)")


def calibrate(model: str | os.PathLike, data: str | os.PathLike, protocol: Protocol | str,
              predictions: str | os.PathLike | None = None, train_data: str | os.PathLike | None = None,
              splits: int = 200, seed: int = 0, progress: bool = False, rule: str = DEFAULT_RULE,
              tta: bool = True, roi_map: Any = None) -> tuple[Path, Calibration]:
    """Compute and write ``calibration.json`` for ``model`` from patients of ``data`` (plan doses;
    patients the model was not trained on). ``train_data``: the training patients (a source, or a JSON
    file of :func:`training_ranges`' output), for the ranges of ROI volumes and spacings (the
    calibration patients' own ranges when omitted). ``rule``: the conformal quantile rule
    (:data:`~dosepred.qa.conformal.QUANTILE_RULES`), stored in the file. ``tta``: calibrate flipped
    predictions (the default, as ``dosepred predict``), recorded in the file so that plan QA predicts
    the same way;
    ``predictions`` must have been made that way (:func:`check_predictions`). ``roi_map``: the ROI name
    map of a DICOM ``data`` (and of ``train_data`` when that is a DICOM folder too)."""
    from ..models.checkpoint import resolve_model_path, shared_path

    check_rule(rule)  # the options first: nothing is predicted for a calibration that cannot be made
    check_cv_options(splits, CAL_FRACTION, seed)
    n_source = len(plan_source(data, roi_map, CALIBRATION_NEEDS).ids)
    check_train_overlap(data, train_data, roi_map)
    ckpt = resolve_model_path(model)
    if n_source < MIN_PATIENTS:  # before minutes of predicting, which could only end in the same refusal
        raise CalibrationError(too_few_message(data, n_source))
    protocol = load_protocol(protocol)  # resolved once, here
    sha = sha256_file(ckpt)  # the file the predictions are made with (checked again at the end)
    net = check_before_predicting(ckpt, data, roi_map, model, protocol)
    band: dict[str, dict[str, list[float]]] = {}
    units, ids = collect_units(model, data, protocol, predictions, progress, dvh_band=band, tta=tta,
                               roi_map=roi_map, net=net)
    if not units:
        raise CalibrationError(f"no criterion of the protocol could be evaluated on {data}")
    if len(ids) < MIN_PATIENTS:
        raise CalibrationError(too_few_message(data, len(ids), n_source))
    src = train_data if train_data is not None else data
    if str(src).endswith(".json") and Path(src).is_file():  # ranges computed before (training_ranges)
        ranges = TrainingRanges.from_json(read_json(src), src)
    else:
        fmt = detect(src)  # the training data's ROI map: only where that format takes one
        src_map = roi_map if train_data is None or (fmt is not None and fmt.takes_roi_map) else None
        ranges = training_ranges(load_patients(src, require_dose=False, roi_map=src_map),
                                 shared_path(str(src)))
    # the model folder is shared: its data named by name, not the folders of the machine that calibrated
    calib = build_calibration(units, ids, protocol, ckpt, shared_path(str(data)), ranges, splits, seed,
                              rule=rule, dvh_band=band, tta=tta)
    if calib.model_sha256 != sha:  # its SHA-256 would vouch for intervals of the model it replaced
        raise CalibrationError(f"{ckpt} changed while it was calibrated (a training saving it?): the "
                               "intervals are of the model it replaced; calibrate again once the file is "
                               "final")
    return write_calibration(ckpt.parent, calib), calib
