"""What ``dosepred train`` refuses of its inputs beyond the config's own validation: a protocol that
prescribes a target of the training cache otherwise than the cache, and, with ``--resume``, beyond the
trainer's comparison of the run's config (seed, batch, loss, loss options, data, ...), other training
patients than the run's, another protocol than the one it started with and, for a run that chose
best.pt by validation, another validation (score, patients, windows). A resumed run continues the
same computation; each change would mix two trainings into one run (its loss, its validation
scores, its best.pt, its model-space record) without a word."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import DosepredError, InputError, name_some
from ..evaluation.scoring import dvh_metrics
from ..fsutil import write_bytes
from ..models.space import ModelSpace
from ..patient import RoiSet
from ..protocol import Protocol, load_protocol
from .config import TrainConfig


class TrainingDivergedError(DosepredError, FloatingPointError):
    """The training diverged (a learning rate too high for the data, most often): its loss became NaN
    or infinite (the message says at which step), or validation predicts a dose no plan gives."""


def diverged(loss: float, step: int, saved_epoch: int | None) -> TrainingDivergedError:
    """The error for a non-finite ``loss`` at optimiser ``step``. ``saved_epoch``: the step is the first
    from the weights saved after that epoch (last.pt), which then gave the NaN themselves (the update
    that ends an epoch is saved before any loss sees it): ``--resume``, whatever its ``--lr``, would
    meet it again, so the error says to start anew and is marked ``resumable = False``."""
    if saved_epoch is None:
        return TrainingDivergedError(f"loss became {loss} at step {step}; lower --lr?")
    e = TrainingDivergedError(f"loss became {loss} at step {step}, the first step from the weights saved "
                              f"after epoch {saved_epoch} (checkpoints/last.pt): they have diverged too, so "
                              "--resume would meet this again; start the run anew with a lower --lr "
                              "(--overwrite)")
    e.resumable = False  # type: ignore[attr-defined]
    return e


def check_gradient(model: Any, clip: float | None, scaler: Any, loss: Any, step: int) -> None:
    """Clip the gradient of ``model`` to norm ``clip`` (none or 0: not clipped) and refuse a non-finite
    one (TrainingDivergedError, before the optimiser step writes it into every weight): a loss term
    whose derivative is infinite where its value is finite (a moment power below 1 at a zero dose,
    which the network's ReLU gives exactly) left the loss of that step finite and the next NaN, read
    as a too high ``--lr``. Not under float16 loss scaling (``scaler`` enabled), whose overflowing
    steps the scaler skips."""
    params = [q for q in model.parameters() if q.grad is not None]
    if clip:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    elif scaler.is_enabled() or not params:
        return
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(q.grad) for q in params]))
    if not scaler.is_enabled() and not torch.isfinite(norm):
        raise TrainingDivergedError(f"the gradient became {norm.item()} at step {step} though the loss "
                                    f"({loss.item():.6g}) is finite: a loss term without a finite "
                                    "derivative there (moment powers below 1 at a zero dose?), or a --lr too "
                                    "high; no step was taken on it")


def diverged_weights(pid: str, epoch: int | None = None) -> TrainingDivergedError:
    """The error of a validation whose prediction is NaN or infinite: the weights of the epoch just
    saved are, so ``--resume`` would start from them (``resumable = False``)."""
    at = "" if epoch is None else f" after epoch {epoch}"
    e = TrainingDivergedError(f"validation{at}: the model predicts NaN or infinite doses for validation "
                              f"patient {pid}: training diverged, and the weights saved{at} are not usable; "
                              "start again (--overwrite) with a lower --lr")
    e.resumable = False  # type: ignore[attr-defined]
    return e


def validation_overdose(hi: float, pid: str, epoch: int | None = None) -> TrainingDivergedError:
    """The error of a validation whose prediction for patient ``pid`` reaches ``hi`` Gy, over
    :data:`~dosepred.constants.MAX_DOSE_GY` (prediction refuses such a dose:
    :class:`dosepred.predict.OverdoseError`): the weights, not the data, are at fault (the scoring's
    own message for such a prediction file asks whether it is in cGy)."""
    at = "" if epoch is None else f" after epoch {epoch}"
    return TrainingDivergedError(f"validation{at}: the model predicts {hi:.3g} Gy for validation patient "
                                 f"{pid}: training diverged; lower --lr?")


def check_protocol_prescriptions(protocol: Protocol, roi_set: RoiSet, cfg: TrainConfig) -> None:
    """InputError for a protocol that prescribes one of the training cache's targets (``roi_set``)
    otherwise than the cache, where a criterion depends on it
    (:meth:`BoundProtocol.prescription_conflicts <dosepred.protocol.BoundProtocol.prescription_conflicts>`):
    the CDM loss and the validation scores would ask for the dose of another prescription than the
    model's prescription input gives (``openkbp-clinical``'s PTV70 D99% >= 66.5 Gy on a cache whose
    PTV70 is prescribed 66 Gy)."""
    bound = protocol.bind(roi_set)
    if bound.prescription_conflicts():
        said = bound.said_conflicts("the cache")
        raise InputError(f"protocol {protocol.name!r} prescribes {said}: the CDM loss and the validation "
                         "scores would ask for another dose than the model's prescription input (training "
                         f"cache {cfg.data}) gives; give the protocol the cache's prescriptions (its "
                         "\"prescriptions\", or a protocol of the clinic's own)")
    bound.warn_roundings("the cache", f"training cache {cfg.data}: ")


def check_resumed_data(ck: dict[str, Any], path: Path, space: ModelSpace, cfg: TrainConfig) -> None:
    """``--resume`` trains on the patients the run trained on: the recorded fingerprint of their ids
    (``space.patients_sha`` of checkpoint ``ck``, read from ``path``) must be the data's now
    (``space``; another ``train_split``, or the cache or split file rewritten in place with other
    patients, would mix them into the run and its space record). A checkpoint recorded without the
    fingerprint is not checked."""
    was = ModelSpace.from_dict(ck["space"])
    if was.patients_sha is None or was.patients_sha == space.patients_sha:
        return
    split = (ck.get("train_config") or {}).get("train_split")
    how = (f" (train_split was {split!r}, now {cfg.train_split!r})" if split != cfg.train_split
           else f" (the ids of {cfg.data}{f' split {split}' if split else ''} are others now)")
    raise InputError(f"--resume: {path} was trained on {was.patients} other patients than the "
                     f"{space.patients} the data now gives{how}; resume with the same patients "
                     "or start a new run (--init to fine-tune it)")


#: the training-config fields that decide a validation score: best.pt's recorded score is comparable
#: with a resumed run's only when none of them changed
VALIDATION_FIELDS = ("select", "val", "val_split", "val_patients", "sw_overlap", "sw_mode")


#: The run's record of its validation cache's dataset.json (its training cache's: ``dataset.json``)
VAL_RECORD = "val_dataset.json"


def record_data(run: Path, cfg: TrainConfig) -> None:
    """Copy the ``dataset.json`` of the training cache (and of the validation cache, :data:`VAL_RECORD`)
    into the run: what ``--resume`` knows them by at another path (:func:`same_data`)."""
    write_bytes(run / "dataset.json", (Path(cfg.data) / "dataset.json").read_bytes())
    if cfg.val and (Path(cfg.val) / "dataset.json").is_file():
        write_bytes(run / VAL_RECORD, (Path(cfg.val) / "dataset.json").read_bytes())


def same_data(was: Any, now: str, run: Path, record: str = "dataset.json") -> bool:
    """Whether ``--resume``'s training cache ``now`` (validation cache: ``record`` :data:`VAL_RECORD`) is
    the run's, recorded as ``was``: the same path however it is spelt, or the same cache at another path
    (a run and its data copied to another machine, a disk mounted elsewhere): its ``dataset.json`` byte
    for byte the run's record of it (``run/record``, which holds every patient's id, grid and ROIs)."""
    if not was or not now:
        return False
    if Path(was).resolve() == Path(now).resolve():
        return True
    try:
        return (run / record).read_bytes() == (Path(now) / "dataset.json").read_bytes()
    except OSError:  # no record (a run from before it) or no cache there: not shown to be the same
        return False


def _same_path(a: Any, b: Any) -> bool:
    """Whether two config values name the same path however it is spelt (equal when not both paths)."""
    if a == b or not (isinstance(a, str) and isinstance(b, str)):
        return a == b
    return bool(a) and bool(b) and Path(a).resolve() == Path(b).resolve()


def _same_input(key: str, a: Any, b: Any) -> bool:
    """Whether two values of config field ``key`` are the same: ``val`` (a path) and ``val_split``
    (``FILE:NAME``) name the same input however the path is spelt; the others are equal."""
    if key == "val_split" and isinstance(a, str) and isinstance(b, str) and a != b:
        (fa, _, na), (fb, _, nb) = a.rpartition(":"), b.rpartition(":")
        return na == nb and _same_path(fa, fb)
    return _same_path(a, b) if key == "val" else a == b


def check_resumed_init(ck: dict[str, Any], path: Path, cfg: TrainConfig) -> None:
    """``--resume`` keeps the run's ``--init``: its weights descend from the model it started from, but
    another ``--init`` would be recorded as that start (the checkpoints' and an export's
    ``roi_transfer``, the README's "fine-tuned from") and give the ROIs its patients lacked."""
    old = ck.get("train_config") or {}
    if "init" not in old:
        return
    was, now = old["init"], cfg.init
    if not _same_path(was, now):
        raise InputError(f"--resume: init was {was!r} in {path}, now {now!r}: the run's weights descend "
                         "from the model it started from, and the new one would be recorded as its start; "
                         "resume with the run's init or start a new run")


def check_resumed_validation(ck: dict[str, Any], path: Path, cfg: TrainConfig) -> None:
    """``--resume`` of a run that chose best.pt by validation (``ck["best"]``) keeps what its scores
    are: the score ``select`` minimises, the validation patients and the sliding windows. Another
    would compare the new epochs' scores with best.pt's recorded one of another kind or other
    patients (a DVH score against a dose score) and keep the wrong best.pt without a word."""
    if not ck.get("best"):
        return
    old = ck.get("train_config") or {}
    for k in VALIDATION_FIELDS:
        if k not in old:  # a run from before the field: nothing to compare with
            continue
        was, now = old[k], getattr(cfg, k)
        moved = k == "val" and same_data(was, now, path.parent.parent, VAL_RECORD)  # run/checkpoints/last.pt
        if not (_same_input(k, was, now) or moved):
            raise InputError(f"--resume: {k} was {was!r} in {path}, now {now!r}: best.pt was chosen by "
                             "validation scores the new ones could not be compared with; resume with the "
                             f"run's {k} or start a new run (--init to fine-tune it)")


def check_resumed_protocol(old: dict[str, Any], path: Path, run: Path, protocol: Protocol | None,
                           roi_set: RoiSet, cfg: TrainConfig) -> None:
    """``--resume`` keeps the protocol of the run (``run/protocol.json``, read before it is rewritten;
    ``old``: the checkpoint's training config): the CDM loss's criteria and the validation scores that
    choose best.pt."""
    stored = run / "protocol.json"
    if protocol is None or not stored.is_file():
        return
    try:
        before = load_protocol(stored, roi_set).model_dump(mode="json")
    except DosepredError:  # a damaged record: nothing to compare with
        return
    if before != protocol.model_dump(mode="json"):
        was, now = old.get("protocol"), cfg.protocol
        what = (f"protocol was {was!r} in {path}, now {now!r}" if was != now else
                f"the protocol {now or 'openkbp'} differs from the one the run started with ({stored})")
        raise InputError(f"--resume: {what}: the loss and the validation scores would change mid-run; "
                         "resume with the run's protocol or start a new run")


def check_targets(cache: Any, ids: list[str], what: str, path: Any, init: Any = None) -> None:
    """InputError for a training cache without a prescribed target (targets reach the network only
    through the prescription channel; with ``init``, a fine-tune, :mod:`dosepred.models.transfer`
    refuses it naming the model), and naming the patients of ``ids`` in ``cache`` (``what``:
    training / validation, read from ``path``) that have none of its prescribed targets contoured:
    their plan dose would be learnt from an empty prescription channel (their PTVs under a name
    nobody mapped, most often), and predict refuses such a patient
    (:func:`dosepred.predict.match_rois`), so validation would stop the run at its first validation,
    epochs later."""
    targets = [r.name for r in cache.roi_set if r.kind == "target" and r.prescription]
    if not targets and what == "training" and not init:  # a fine-tune: models.transfer's rule says it
        tg = cache.roi_set.targets
        why = (f"its targets {', '.join(tg)} have no prescription" if tg else
               f"it has no target among its ROIs ({', '.join(cache.roi_set.names) or 'none'})")
        raise InputError(f"training cache {path}: {why}, so the model's prescription channel would be "
                         "empty and it would not see where the targets are; give each target its "
                         "prescription (kind and Gy) with data import-dicom --roi-map")
    want = set(ids)
    bare = [e["id"] for e in cache.info["patients"] if e["id"] in want and "missing_rois" in e
            and all(t in e["missing_rois"] for t in targets)]
    if targets and bare:
        one = len(bare) == 1
        raise InputError(f"{what} cache {path}: patient{'' if one else 's'} {name_some(bare)} "
                         f"{'has' if one else 'have'} none of its targets ({', '.join(targets)}) contoured, "
                         "so the model's prescription input would be empty there; contour or name "
                         f"{'its' if one else 'their'} targets (an ROI map with data import-dicom) or leave "
                         f"{'it' if one else 'them'} out (a split file: --split / --val-split)")


def select_value(scores: dict[str, float], select: str) -> float:
    """The number best.pt minimises: validation score ``select`` (``dose+dvh``: their sum)."""
    if select == "dose+dvh":
        return scores["dose_score"] + scores["dvh_score"]
    return scores[f"{select}_score"]


def check_selectable(protocol: Protocol, roi_set: RoiSet, val_cache: Any, val_ids: list[str],
                     cfg: TrainConfig) -> None:
    """InputError, before any work, when the validation score ``cfg.select`` can have no value on the
    validation patients (``val_ids`` of ``val_cache``) with ``protocol``: what it averages
    (:func:`dosepred.evaluation.evaluate_case`) is then empty and the score NaN every epoch, and
    best.pt would stay the first validated epoch (NaN is never lower). The PTV / OAR score averages
    the protocol's dose metrics (D-metrics, Dmean; not V-metrics) of targets / OARs, the DVH score
    OpenKBP's metrics of every OAR and target (:func:`dosepred.evaluation.scoring.dvh_metrics`); only
    ROIs some validation patient has
    count, and a metric relative to the prescription only for an ROI with one."""
    select = cfg.select
    if select == "dose":
        return
    want = set(val_ids)
    present = {n for e in val_cache.info["patients"] if e["id"] in want
               for n in roi_set.names if n not in e.get("missing_rois", ())}
    where = (f"any of the {len(val_ids)} validation patient{'s' if len(val_ids) != 1 else ''} of {cfg.val}"
             + (f" (split {cfg.val_split})" if cfg.val_split else ""))
    if select in ("dvh", "dose+dvh"):
        if present & set(dvh_metrics(roi_set)):
            return
        why = f"the DVH score has no value: no OAR or target of the ROI set is contoured in {where}"
    else:
        kind = "target" if select == "ptv" else "oar"
        bound = protocol.bind(roi_set)
        if any(c.parsed.is_dose and c.kind == kind and c.roi in present
               and not (c.parsed.needs_prescription and bound.prescription(c.roi) is None)
               for c in bound.criteria):
            return
        what = "a target" if kind == "target" else "an OAR"
        why = (f"the {select.upper()} score has no value: protocol {cfg.protocol or protocol.name} has no "
               f"dose metric (D-metric or Dmean) of {what} contoured in {where} (V-metrics do not count)")
    raise InputError(f"--select {select}: {why}, so best.pt would be chosen by NaN scores; choose another "
                     "score (--select dose)" + ("" if select in ("dvh", "dose+dvh") else
                                                 " or give the protocol such a criterion"))


__all__ = ["TrainingDivergedError", "check_protocol_prescriptions", "check_resumed_data",
           "check_resumed_init", "check_resumed_protocol", "check_resumed_validation", "check_selectable",
           "check_gradient", "check_targets", "diverged", "diverged_weights",
           "select_value", "validation_overdose"]
