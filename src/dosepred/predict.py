"""Inference: load a trained model, predict whole-grid doses, write them as OpenKBP CSV, NIfTI or RTDOSE.

A model is given as

- a run folder (``RUN/checkpoints/best.pt``, else ``RUN/checkpoints/last.pt``),
- a checkpoint file (``*.pt`` written by the trainer or by :func:`export_model`),
- a released model folder (``models/NAME/`` holding ``model.pt``, ``config.json``, ``README.md``).

Whole-grid prediction uses MONAI's ``sliding_window_inference`` with windows of the training patch
size (overlap 0.5, gaussian blending): instance normalisation makes a crop-trained network depend on
its field of view, so it is always run on windows of the size it was trained on.

Every patient is predicted in the model's own space (:mod:`dosepred.models.space`): brought into the
axis order and spacing range of the training data, predicted, and the dose brought back onto the
patient's grid in patient coordinates. The checkpoint format (read with
``torch.load(weights_only=True)``) lives in :mod:`dosepred.models.checkpoint`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .boxes import mask_box
from .constants import BODY_HU, MAX_DOSE_GY
from .errors import InputError
from .fsutil import sha256_file
from .geometry import ct_body
from .inference import DEFAULT_TTA as DEFAULT_TTA
from .inference import TTA_SHIFT as TTA_SHIFT
from .inference import InferenceOptions, PredictionRecord
from .io import formats, rx_check
from .io.cache import CacheError, write_cache
from .io.source import load_patients
from .models import ModelConfig, ModelError
from .models.checkpoint import load_model
from .models.space import ModelSpace, into_space
from .patient import SAME_LEVEL, Patient, RoiSet, same_level
from .progress import track
from .roi import lr_pairs, mirror_codes, to_torch

#: What ``--format`` takes (:func:`dosepred.io.formats.prediction_formats`): the formats with a
#: per-patient dose file (openkbp, nifti, dicom), then the cache.
FORMAT_NAMES = formats.names(formats.prediction_formats())

#: The options of a prediction nobody chose otherwise (:class:`~dosepred.inference.InferenceOptions`
#: defaults: flipped as :data:`~dosepred.inference.DEFAULT_TTA` says, full precision, no translated
#: passes); ``dosepred predict`` builds its own from its flags (mixed precision on a GPU by default).
DEFAULT_OPTIONS = InferenceOptions()


def resolve_device(device: str | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch's own message lists two dozen device types
        raise InputError(f"device {device!r} is not a device: give auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


class RoiNote(UserWarning):
    """Information about a prediction, not a problem (e.g. the ROIs a patient lacks that some training
    patients lacked too); the commands print it as ``note: ...``."""

    prefix = "note"


def _targets(rs: RoiSet) -> str:
    return ", ".join(f"{r.name}" + (f" ({r.prescription:g} Gy)" if r.prescription else "")
                     for r in rs if r.kind == "target")


def rarely_lacking(space: ModelSpace | None, lacking: Sequence[str]) -> str:
    """``"SpinalCord (1 of the model's 169 training patients lacked it), ..."`` for the ROIs of
    ``lacking`` that ``space`` records as rarely missing (:meth:`ModelSpace.rarely_absent`: fewer than
    5 % of the training patients lacked them); "" when none is."""
    rare = space.rarely_absent() if space is not None else {}
    hit = [n for n in lacking if n in rare]
    if not hit:
        return ""
    of = space.absent_of if space is not None else 0
    first, *rest = hit
    out = [f"{first} ({rare[first]} of the model's {of} training patients lacked it)"]
    return ", ".join(out + [f"{n} ({rare[n]} of {of})" for n in rest])


def rare_remedy(n: int = 1) -> str:
    """What to do about ``n`` rarely missing ROIs a patient lacks (predict and qa say it)."""
    what = "it is" if n == 1 else "one is"
    return (f"if {what} contoured under a name dosepred does not recognise, name it as the model does "
            "with an ROI map (`--roi-map MAP.json` with the DICOM folder, or `dosepred data import-dicom "
            "--roi-map MAP.json` and use the cache)")


#: an unprescribed target with more than this share of its volume outside the prescribed targets (and
#: :data:`LOOSE_MIN_CC`) is likely a dose level whose prescription nobody gave (an SIB's PTV_Low), not a
#: GTV, CTV or optimisation copy inside the prescribed ones
LOOSE_SHARE = 0.2
LOOSE_MIN_CC = 1.0


def loose_targets(patient: Patient) -> list[tuple[str, float]]:
    """(name, cc outside) of each contoured target of ``patient`` without a prescription that lies
    largely outside its prescribed targets (:data:`LOOSE_SHARE`, :data:`LOOSE_MIN_CC`). A model sees
    targets only through their prescriptions, so such a target is predicted as unplanned: a lower dose
    level left out (an elective PTV_Low beside PTV70, its prescription in no name, plan or map) makes
    the predicted dose a plan of fewer levels, its OARs spared where the plan could not spare them."""
    rs = patient.roi_set
    present = [r for r in rs if r.kind == "target" and r.name not in patient.missing_rois]
    open_ = [r.name for r in present if r.prescription is None]
    if not open_:
        return []
    prescribed = np.zeros(patient.shape, bool)
    for r in present:
        if r.prescription is not None:
            prescribed |= patient.mask(r.name)
    out = []
    for name in open_:
        m = patient.mask(name)
        n = int(m.sum())
        outside = int((m & ~prescribed).sum())
        cc = outside * patient.voxel_volume_cc
        if n and outside > LOOSE_SHARE * n and cc >= LOOSE_MIN_CC:
            out.append((name, cc))
    return out


def loose_words(patient: Patient, found: list[tuple[str, float]], so: str = "") -> str:
    """:func:`loose_targets` in words (predict's warning, plan QA's note); ``so``: what follows for the
    caller, said before the remedy."""
    one = len(found) == 1
    rx = [r.name for r in patient.roi_set if r.kind == "target" and r.prescription is not None
          and r.name not in patient.missing_rois]
    return (f"target{'' if one else 's'} {', '.join(f'{n} ({cc:.0f} cc outside)' for n, cc in found)} "
            f"{'has' if one else 'have'} no prescription and lie{'s' if one else ''} largely outside the "
            f"prescribed targets ({', '.join(rx) or 'none'}): the model sees targets only by their "
            f"prescriptions and predicts {'it' if one else 'them'} as unplanned (a dose level left out: "
            f"the OARs near {'it' if one else 'them'} spared more than the plan could spare them){so}; if "
            f"{'it is a dose level' if one else 'they are dose levels'}, give "
            f"{'its prescription' if one else 'their prescriptions'} with an ROI map "
            '(--roi-map MAP.json: {"NAME": {"name": "PTV56", "prescription": 56}})')


#: what to do with a patient planned for another prescription than a model's (predict, plan QA)
OTHER_PLAN_REMEDY = ("the model predicts plans of its own prescriptions only; for plans of other dose levels "
                     "fine-tune a model on them (docs/finetune.md), or, if the patient's prescription is "
                     "wrong, correct it (an ROI map with \"prescription\", --roi-map MAP.json)")


def rounded_levels(mine: RoiSet, patient: Patient) -> list[str]:
    """The contoured ROIs of ``patient`` prescribed at the dose level of the model's ROI of their name
    (ROI set ``mine``) but not at its dose (69.96 for 70 Gy), in words; the caller has refused the ROIs
    of another level (:func:`dosepred.patient.same_level`)."""
    theirs = patient.roi_set
    return [f"{r.name} at {theirs[r.name].prescription:g} Gy (the model's {r.prescription:g} Gy)"
            for r in mine if r.name in theirs and r.name not in patient.missing_rois
            and None not in (r.prescription, theirs[r.name].prescription)
            and theirs[r.name].prescription != r.prescription]


def _rx(v: float | None) -> str:
    return f" (prescription {v:g} Gy)" if v is not None else " (no prescription)"


class OffRxWarning(UserWarning):
    """A predicted dose that does not deliver the patient's prescriptions (:func:`implausible_targets`):
    the patient is unlike those the model was trained on."""


def implausible_targets(patient: Patient, dose: np.ndarray) -> list[rx_check.TargetDose]:
    """The prescribed targets of ``patient`` (in the model's ROI set) whose median predicted ``dose`` is
    below :data:`~dosepred.io.rx_check.LOW` x their prescription or above
    :data:`~dosepred.io.rx_check.HIGH` x the highest: the rule a plan's dose meets
    (:mod:`dosepred.io.rx_check`). The released MAE and MAE+CDM models' predictions of the 33 OpenKBP
    validation patients lie within 0.95-1.22 x; a target far smaller than any the model trained on (PTV70 of
    1.5 cc, the smallest of the OpenKBP train split 42 cc) gets 0.75 x."""
    return [t for t in rx_check.target_doses(patient.with_dose(dose)) if t.inconsistent]


def implausible_words(patient: Patient, bad: Sequence[rx_check.TargetDose]) -> str:
    """:func:`implausible_targets` in words (predict's warning)."""
    listed = "; ".join(f"{t.name} (Rx {t.prescription:g} Gy): median {t.median:.1f} Gy = {t.ratio:.2f} x Rx"
                       + (f" = {t.ratio_highest:.2f} x the highest Rx" if t.ratio_highest > rx_check.HIGH
                          else "") for t in bad)
    return (f"patient {patient.id}: the predicted dose does not deliver its prescriptions: {listed} (a "
            f"target's median dose lies within {rx_check.LOW:g} x its prescription and {rx_check.HIGH:g} x "
            "the highest in every plan, and in the released models' predictions of the OpenKBP validation "
            "patients, 0.95-1.22 x): the patient is unlike those the model was trained on (a target far "
            "smaller or larger than theirs, another site), or the model is trained too little, so this dose "
            "is no plan of its prescriptions")


class NonFiniteDoseError(ModelError):
    """A model whose weights predict NaN or infinite doses (a training that diverged)."""


class OverdoseError(ModelError):
    """A model whose weights predict doses no plan gives (over :data:`~dosepred.constants.MAX_DOSE_GY`,
    finite: a training that diverged); ``peak``: its highest dose (Gy)."""

    def __init__(self, message: str, peak: float) -> None:
        super().__init__(message)
        self.peak = peak


class MissingRoisError(ModelError):
    """A patient lacking ROIs the model needs (or with targets it does not know), refused without
    ``allow_missing``: ``problem`` says what, without the remedy, for a command whose remedy is
    another than ``predict``'s ``--allow-missing-rois`` (``calibrate`` has no such flag)."""

    def __init__(self, problem: str, remedy: str) -> None:
        super().__init__(f"{problem}: {remedy}")
        self.problem = problem


def match_rois(config: ModelConfig, patient: Patient, allow_missing: bool = False,
               absent_ok: Sequence[str] | None = None, warn: bool = True,
               space: ModelSpace | None = None) -> Patient:
    """``patient`` with the model's ROI set (names, kinds, prescriptions and bit order).

    Judged on the ROIs the patient has contoured, however its set is written (a clinic's export lists
    only what it holds, a cache lists the rest as missing):

    - a patient with none of the model's targets is an error (:class:`ModelError`), flag or not;
    - the model's ROIs in ``absent_ok`` (those some training patients lacked too: the model space's
      ``absent_rois``) may be missing: empty channels, an :class:`RoiNote` for those its set does not
      name (an ROI the set lists as not contoured is the data's own record); those ``space`` records
      as rarely missing (:meth:`ModelSpace.rarely_absent`: the cord, the parotids for the released
      models) get a warning instead, listed or not, naming how many training patients lacked them:
      the patient more likely has the organ under a name nobody recognised, and the dose near it is
      predicted as for a patient without it;
    - any other missing ROI, or a prescribed target of the patient the model does not know (the
      prediction would ignore it), is an error unless ``allow_missing`` (then a warning names them);
      an unprescribed target (GTV, CTV) is left out like other unused ROIs. With ``absent_ok``
      None (a model recorded without it) the ROIs its set lists as missing are accepted, as before;
    - ROIs the model does not use (organs, other structures) are left out (a note);
    - a common ROI must agree in kind and prescription (an error otherwise).

    ``warn=False`` raises no note or warning. The message of every error is the same for every output
    format."""
    mine, theirs = config.roi_set, patient.roi_set
    who = f"patient {patient.id}"
    contoured = {n for n in theirs.names if n not in patient.missing_rois}
    lacking = [n for n in mine.names if n not in contoured]
    targets = [r.name for r in mine if r.kind == "target"]
    if not contoured and patient.meta.get("series_uid") and not patient.meta.get("rtstruct_file"):
        # a DICOM folder's CT series that no structure set is drawn on: not a patient to predict
        raise ModelError(f"{who} is CT series {patient.meta['series_uid']} without an RTSTRUCT, so without "
                         "ROIs (a diagnostic CT, a CBCT or another scan beside the planning CT?): it cannot "
                         "be predicted; leave its files out of the folder")
    if len(lacking) == len(mine):
        what = f"none of the model's targets ({_targets(mine)})" if targets else \
            f"none of the model's ROIs ({', '.join(mine.names)})"
        own = _targets(RoiSet(tuple(r for r in theirs if r.name in contoured)))
        raise ModelError(f"{who} has {what}{'; its own targets are ' + own if own else ''}: it cannot be "
                         "predicted (if they are there under other names, name them as the model does, "
                         "with an ROI map, `--roi-map MAP.json` with the DICOM folder)")
    if targets and not any(t in contoured for t in targets):
        own = _targets(RoiSet(tuple(r for r in theirs if r.name in contoured)))
        raise ModelError(f"{who} has none of the model's targets ({_targets(mine)})"
                         f"{'; its own targets are ' + own if own else '; it has no target at all'}: a dose "
                         "cannot be predicted without one (if one of its ROIs is one of them under another "
                         "name, name it as the model does with an ROI map, `--roi-map MAP.json` with the "
                         "DICOM folder)")
    for r in mine:
        if r.name in theirs and r.name in contoured:
            o = theirs[r.name]
            if o.kind != r.kind or not same_level(o.prescription, r.prescription):
                raise ModelError(f"{who}: ROI {r.name} is a {o.kind}{_rx(o.prescription)} but the model's is "
                                 f"a {r.kind}{_rx(r.prescription)}: {OTHER_PLAN_REMEDY}")
    rounded = rounded_levels(mine, patient)
    if rounded and warn:
        warnings.warn(f"{who}: its {', '.join(rounded)}: one dose level (within {SAME_LEVEL:.1%}), "
                      "predicted as the model's", stacklevel=3)
    optional = set(absent_ok) if absent_ok is not None else {n for n in lacking if n in theirs}
    need = [n for n in lacking if n not in optional]
    # a prescribed target the model does not know would be missing from its prescription input (the
    # dose there predicted as if unplanned); unprescribed targets (GTV, CTV) it never takes as input
    unknown_targets = [r for r in theirs if r.kind == "target" and r.prescription and r.name in contoured
                       and r.name not in mine]
    extra = [n for n in theirs.names if n in contoured and n not in mine
             and n not in {r.name for r in unknown_targets}]
    if (need or unknown_targets) and not allow_missing:
        parts = []
        if need:
            had = ("which every patient the model was trained on had" if absent_ok is not None
                   else "which the model was trained with")
            parts.append(f"lacks {', '.join(need)}, {had}")
        if unknown_targets:
            parts.append(f"its target{'s' if len(unknown_targets) > 1 else ''} "
                         f"{_targets(RoiSet(tuple(unknown_targets)))} "
                         f"{'are' if len(unknown_targets) > 1 else 'is'} not among the model's "
                         f"({_targets(mine)}), so the prediction would ignore "
                         f"{'them' if len(unknown_targets) > 1 else 'it'}")
        raise MissingRoisError(f"{who}{'' if need else ':'} {'; '.join(parts)}",  # "patient X: its target"
                               "--allow-missing-rois predicts it all the same"
                               f"{' with empty channels for the missing ones' if need else ''}")
    if warn:  # a note for the ROIs the patient's own set does not name (those it lists as not
        # contoured, as every OpenKBP or cache patient does, are the data's own record)
        rare_names = set(space.rarely_absent()) if space is not None else set()
        rare = [n for n in lacking if n not in need and n in rare_names]
        noted = [n for n in lacking if n not in need and n not in theirs and n not in rare_names]
        if rare:
            it, channel = ("it", "an empty channel") if len(rare) == 1 else ("them", "empty channels")
            if all(mine[n].kind == "oar" for n in rare):
                so = (f"the dose near {it} is not spared as it would be for "
                      f"{'the organ' if it == 'it' else 'the organs'}")
            else:
                so = "an organ there is not spared, a target there not given its prescription"
            warnings.warn(f"{who} lacks {rarely_lacking(space, rare)}: predicted as for a patient without "
                          f"{it} ({channel}), so {so}; {rare_remedy(len(rare))}", stacklevel=3)
        if noted:
            warnings.warn(f"{who} lacks {', '.join(noted)} (some of the model's training patients did too): "
                          "predicted with empty channels for them", RoiNote, stacklevel=3)
        if need:
            warnings.warn(f"{who} lacks the model's ROIs {', '.join(need)}: predicted with empty channels "
                          "for them", stacklevel=3)
        if unknown_targets:
            warnings.warn(f"{who}: its target(s) {_targets(RoiSet(tuple(unknown_targets)))} are not the "
                          "model's: predicted without them", stacklevel=3)
        loose = loose_targets(patient)
        if loose:
            warnings.warn(f"{who}: its {loose_words(patient, loose)}", stacklevel=3)
        extra = [n for n in extra if n not in {n for n, _ in loose}]
        if extra:
            warnings.warn(f"{who}: its ROIs {', '.join(extra)} are not used by the model", RoiNote,
                          stacklevel=3)
    if theirs == mine:
        return patient
    codes = np.zeros(patient.shape, dtype=mine.dtype)
    t = codes.dtype.type
    src_t = patient.roi_codes.dtype.type
    for k, name in enumerate(mine.names):
        if name in theirs:
            bit = (patient.roi_codes >> src_t(theirs.index(name))) & src_t(1)
            codes |= bit.astype(codes.dtype) << t(k)
    missing = tuple(n for n in mine.names if n not in contoured)
    return Patient(patient.id, patient.ct, codes, RoiSet(mine.rois), patient.spacing,
                   patient.possible_dose_mask, patient.dose, missing, dict(patient.meta), patient.geometry)


def model_space(model: torch.nn.Module) -> ModelSpace:
    """The space a loaded model was trained in (``model.space``; the OpenKBP record when absent)."""
    net = model.module if hasattr(model, "module") else model
    sp = getattr(net, "space", None)
    return sp if isinstance(sp, ModelSpace) else ModelSpace.openkbp()


def crop_box(patient: Patient, patch: tuple[int, ...]) -> tuple[slice, ...]:
    """Where sliding windows run: the box of the possible-dose mask (or, for a patient without one,
    of its CT above ``BODY_HU``, -500 HU), with a margin of patch/8 and grown to at least the patch
    size (within the array). Dose outside it is zero. An OpenKBP array (128^3, the released models' patch) is
    never cropped; a clinical CT with a wide field of view loses its empty surroundings, and with
    them most of the windows."""
    mask = np.asarray(patient.possible_dose_mask)
    region = mask if not mask.all() else patient.require_ct("the prediction's crop") > BODY_HU
    patch = tuple(int(p) for p in patch[:3])
    box = mask_box(region, [p // 8 for p in patch], empty="full")  # an empty region: the whole array
    sl = []
    for b, n, p in zip(box, patient.shape, patch, strict=True):
        lo, hi = b.start, b.stop
        if n <= p:
            lo, hi = 0, n
        elif hi - lo < p:
            lo = max(0, min(lo - (p - (hi - lo)) // 2, n - p))
            hi = lo + p
        sl.append(slice(lo, hi))
    return tuple(sl)


def _shifted(x: torch.Tensor, shift: Sequence[int]) -> torch.Tensor:
    """``x`` (N, C, *spatial) translated by ``shift`` voxels: out[i] = x[i - s], the border replicated."""
    for d, s in enumerate(shift):
        if s:
            n = x.shape[d + 2]
            x = x.index_select(d + 2, torch.clamp(torch.arange(n, device=x.device) - s, 0, n - 1))
    return x


def _unshifted(y: torch.Tensor, shift: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prediction of a translated input brought back (out[i] = y[i + s]) and where it is valid
    (1 where i + s lay inside the array, else 0)."""
    w = torch.ones_like(y)
    for d, s in enumerate(shift):
        if s:
            n = y.shape[d + 2]
            idx = torch.arange(n, device=y.device) + s
            shape = [n if k == d + 2 else 1 for k in range(y.dim())]
            inside = ((idx >= 0) & (idx < n)).to(y.dtype).view(shape)
            y = y.index_select(d + 2, idx.clamp(0, n - 1))
            w = w.index_select(d + 2, idx.clamp(0, n - 1)) * inside
    return y, w


def _options(options: Any) -> InferenceOptions:
    if not isinstance(options, InferenceOptions):  # an old positional call (device, overlap, ...)
        raise TypeError(f"options must be a dosepred.InferenceOptions, got {type(options).__name__}: the "
                        "inference keywords (device, overlap, tta, ...) are its fields now")
    return options


@torch.no_grad()
def predict_in_space(model: torch.nn.Module, patient: Patient,
                     options: InferenceOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Whole-grid dose of a patient already in the model's space and ROI set (float32, its shape):
    sliding windows of the training patch (``options.overlap``, ``mode``, ``sw_batch``; mixed
    precision with ``amp`` on CUDA) over :func:`crop_box`; ``options.tta`` averages with the
    prediction of the patient mirrored along its left-right axis (from its geometry), Left/Right ROI
    bits swapped, mirrored back. ``options.shifts``: also average the predictions of the input
    translated by each of these offsets (voxels per array axis, border replicated; mirrored too with
    ``tta``), translated back, each voxel over the passes in which it stayed inside the array.
    ``options.device`` ``"auto"``: the model's device. An ensemble
    (:class:`~dosepred.models.ensemble.EnsembleModel`) predicts with each member so, and returns the
    weighted mean of their doses."""
    from monai.inferers import sliding_window_inference

    from .models.ensemble import EnsembleModel

    o = _options(options)
    net = model.module if hasattr(model, "module") else model
    if isinstance(net, EnsembleModel):
        doses = []
        for label, m in zip(net.labels, net.members, strict=True):
            try:
                doses.append(predict_in_space(m, patient, o))
            except OverdoseError as e:  # "the model predicts ...": say which member's weights
                raise OverdoseError(f"{label}: {e}", e.peak) from None
            except NonFiniteDoseError as e:
                raise NonFiniteDoseError(f"{label}: {e}") from None
        return net.combine(doses)
    cfg: ModelConfig = net.config
    device = torch.device(o.device) if o.device != "auto" else next(net.parameters()).device
    amp, overlap, mode, sw_batch, tta = o.amp, o.overlap, o.mode, o.sw_batch, o.tta
    was_training = net.training
    net.eval()
    box = crop_box(patient, cfg.patch)
    mask_np = np.ascontiguousarray(patient.possible_dose_mask[box])
    codes_np = np.ascontiguousarray(patient.roi_codes[box])
    ct = torch.from_numpy(np.ascontiguousarray(patient.require_ct("prediction")[box])).to(device)[None, None]
    codes = to_torch(codes_np, device)[None]
    mask = torch.from_numpy(mask_np).to(device)[None, None]
    roi = tuple(cfg.patch)

    def windows(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            return sliding_window_inference(x, roi, sw_batch, net.from_input, overlap=overlap, mode=mode,
                                            padding_mode="replicate").float()

    offsets = [(0, 0, 0), *o.shifts]

    def passes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # sum of valid predictions, count
        total = count = None
        for off in offsets:
            y, w = _unshifted(windows(_shifted(x, off)), off)
            total, count = (y * w, w) if total is None else (total + y * w, count + w)
        assert total is not None and count is not None
        return total, count

    extra = None
    if cfg.n_extra:  # of the whole grid, then cut like the other inputs (as in training)
        full = net.extra_channels(patient.roi_codes, patient.possible_dose_mask, patient.geometry,
                                  patient.spacing)
        extra = torch.from_numpy(np.ascontiguousarray(full[(slice(None), *box)])).to(device)[None]
    total, count = passes(net.assemble(ct, codes, mask, extra=extra))
    if tta:
        assert patient.geometry is not None
        ax = patient.geometry.axis_along("LR")
        codes_f = mirror_codes(codes_np, ax, lr_pairs(patient.roi_set))
        tf, cf = passes(net.assemble(ct.flip(ax + 2), to_torch(codes_f, device)[None], mask.flip(ax + 2),
                                     extra=None if extra is None else extra.flip(ax + 2)))
        total, count = total + tf.flip(ax + 2), count + cf.flip(ax + 2)
    dose = total / count * mask.float()  # every voxel is inside the unshifted pass: count >= 1
    if was_training:
        net.train()
    out = np.zeros(patient.shape, dtype=np.float32)
    out[box] = dose[0, 0].cpu().numpy()
    if not np.isfinite(out[box]).all():  # the weights' fault, not the patient's: say so before any writer
        raise NonFiniteDoseError(f"the model predicts NaN or infinite doses for patient {patient.id}: its "
                                 "weights are not usable (from a training that diverged: train it again with "
                                 "a lower --lr)")
    peak = float(out[box].max()) if out[box].size else 0.0
    if peak > MAX_DOSE_GY:  # the weights' fault too: the patient's cache/writer said "a dose in cGy?"
        raise OverdoseError(f"the model predicts doses up to {peak:.4g} Gy for patient {patient.id}, over "
                            f"{MAX_DOSE_GY:g} Gy, which no plan gives: its weights are not usable (from a "
                            "training that diverged: train it again with a lower --lr)", peak)
    return out


def with_ct_body(patient: Patient, warn: bool = True) -> Patient:
    """``patient`` with the body of its CT (:func:`dosepred.geometry.ct_body`: above ``BODY_HU``, -500 HU,
    devices removed, each axial slice's holes filled) as its possible-dose mask when it has none (the mask
    is the whole grid), as a DICOM patient without a body contour gets; else ``patient`` itself. A model
    trained with body masks read a mask of the whole grid as a body filling the field of view: for an
    OpenKBP patient it predicted PTV70 a D95 of 0.01 Gy and 118 Gy hot spots, with no more than a warning
    that dose was "predicted everywhere". A CT without air or without tissue is left as it is (the model
    space names a CT that is not in HU)."""
    if not bool(np.all(patient.possible_dose_mask)) or patient.ct is None or patient.geometry is None:
        return patient
    body, removed = ct_body(patient.ct, patient.geometry, BODY_HU)
    if not body.any() or body.all():
        return patient
    if warn:
        warnings.warn(f"patient {patient.id} has no possible-dose (body) mask: its body is taken as CT > "
                      f"{BODY_HU:g} HU (each axial slice's holes filled), as for a DICOM patient without a "
                      "body contour, and its dose predicted there (give its body for its own: a "
                      "body/external ROI, possible_dose_mask.nii.gz)" + (f"; {removed}" if removed else ""),
                      RoiNote, stacklevel=3)
    return Patient(patient.id, patient.ct, patient.roi_codes, patient.roi_set, None, body, patient.dose,
                   patient.missing_rois, dict(patient.meta), patient.geometry)


def predict_dose(model: torch.nn.Module, patient: Patient, options: InferenceOptions = DEFAULT_OPTIONS, *,
                 space: ModelSpace | None = None, warn: bool = True) -> np.ndarray:
    """Whole-grid dose (Gy, float32, on the patient's own grid) by sliding windows of the training patch.

    The patient is brought into the model's space (:func:`dosepred.models.space.into_space`: axes
    permuted/flipped into the model's, resampled when its grid is oblique or a spacing is outside the
    training range; a warning when it is far from the training data), predicted there
    (:func:`predict_in_space`) and the dose brought back onto its grid in patient coordinates. A dose
    that does not deliver the patient's prescriptions gets an :class:`OffRxWarning`
    (:func:`implausible_targets`).
    ``space`` overrides the model's record; ``warn=False`` raises no note or warning.

    ``options`` (:class:`~dosepred.inference.InferenceOptions`, default :data:`DEFAULT_OPTIONS`):
    ``tta`` (default :data:`DEFAULT_TTA`, True, as ``dosepred predict``) averages the dose with the
    prediction of the patient mirrored along the left-right axis (taken from the geometry in the
    model's space; Left/Right ROI bits swapped, as in training), mirrored back: test-time
    augmentation, twice the time; ``shifts`` adds translated passes (:func:`predict_in_space`);
    ``allow_missing_rois``: see :func:`match_rois`; ``spacing_policy`` picks the spacing of an axis
    outside the training range (:meth:`dosepred.models.space.ModelSpace.target_spacing`: ``"fov"``
    its field of view on the training data's median array size, ``"median"`` the training median
    spacing, or the ``"nearest"`` end of the range).
    """
    if isinstance(model, (str, os.PathLike)):  # was AttributeError: 'str' object has no attribute 'config'
        raise InputError(f"predict_dose takes a loaded model, got the path {str(model)!r}: "
                         "predict_dose(dosepred.load_model(path), patient) (predict_to takes a path)")
    if not isinstance(patient, Patient):  # a list of patients: AttributeError (no attribute 'require_ct')
        raise InputError(f"predict_dose predicts one Patient, got {type(patient).__name__}: call it per "
                         "patient ([predict_dose(model, p) for p in patients])")
    o = _options(options)
    patient.require_ct("prediction")  # before any work: the network's input is the CT
    net = model.module if hasattr(model, "module") else model
    sp = space or model_space(net)
    if sp.masked:
        patient = with_ct_body(patient, warn)
    patient = match_rois(net.config, patient, o.allow_missing_rois, sp.absent_rois, warn=warn, space=sp)
    placed = into_space(patient, sp, warn=warn, spacing_policy=o.spacing_policy)
    dose = placed.back(predict_in_space(net, placed.patient, o))
    bad = implausible_targets(patient, dose) if warn else []
    if bad:
        warnings.warn(implausible_words(patient, bad), OffRxWarning, stacklevel=2)
    return dose


def write_prediction(patient: Patient, dose: np.ndarray, out: str | os.PathLike,
                     fmt: str = "openkbp", *, dose_spacing: float | None = None,
                     model_name: str | None = None) -> Path:
    """Write one predicted dose; returns the path written. ``dose_spacing`` (mm) and ``model_name``
    apply to ``fmt="dicom"`` (RTDOSE grid, SeriesDescription; see :func:`dosepred.io.dicom.write_rtdose`)."""
    f = formats.find(fmt)
    if f is None or f.write_dose is None:
        raise InputError(f"unknown format {fmt!r}: choose one of {', '.join(FORMAT_NAMES)}")
    return f.write_dose(patient, dose, Path(out), dose_spacing, model_name)


def predict_patients(model: torch.nn.Module, patients: Iterable[Patient],
                     options: InferenceOptions = DEFAULT_OPTIONS) -> Iterator[tuple[Patient, np.ndarray]]:
    """``(patient, dose)`` of each patient (:func:`predict_dose`)."""
    for p in patients:
        yield p, predict_dose(model, p, options)


def on_device(options: InferenceOptions, device: torch.device) -> InferenceOptions:
    """``options`` as they apply on ``device``: the device named, mixed precision only on CUDA (what a
    prediction records)."""
    return replace(options, device=str(device), amp=options.amp and device.type == "cuda")


def predict_to(model_path: str | os.PathLike, src: str | os.PathLike, out: str | os.PathLike,
               fmt: str = "openkbp", options: InferenceOptions = DEFAULT_OPTIONS, *,
               ids: list[str] | None = None, progress: bool = True,
               on_patient: Callable[[Patient, Path], None] | None = None, dose_spacing: float | None = None,
               roi_map: Any = None) -> int:
    """Predict every patient of ``src`` (a cache, OpenKBP, NIfTI or DICOM folder) and write them to ``out``.

    ``options``: how (:class:`~dosepred.inference.InferenceOptions`); the model is loaded on
    ``options.device`` (``"auto"``: CUDA when available). Patients lacking some of the model's ROIs
    are predicted only with ``options.allow_missing_rois`` (:func:`match_rois`); without it such a
    patient is the same error for every ``fmt``. ``dose_spacing``: RTDOSE grid spacing in mm for
    ``fmt="dicom"``. ``roi_map``: the ROI name map of a DICOM ``src``
    (:func:`dosepred.io.source.open_source`; an error for another kind of source).

    ``fmt="cache"`` writes ``out`` as a dosepred cache: each input patient with the predicted dose
    (all or nothing, like every cache write), and how it was predicted, as data: ``dataset.json``'s
    ``"prediction"`` (:class:`~dosepred.inference.PredictionRecord`: the options as they applied on
    the device, the model and its SHA-256, the data, the dosepred version). ``dosepred evaluate``
    reads such a prediction fastest.
    """
    from .models.checkpoint import resolve_model_path

    if fmt not in FORMAT_NAMES:
        raise InputError(f"unknown format {fmt!r}: choose one of {', '.join(FORMAT_NAMES)}")
    dev = resolve_device(_options(options).device)
    used = on_device(options, dev)
    model = load_model(model_path, dev)
    patients = load_patients(src, ids=ids, require_dose=False, roi_map=roi_map)
    it = track(patients, description="predicting") if progress else patients

    def predict(p: Patient) -> np.ndarray:
        return predict_dose(model, p, used)  # a dose over MAX_DOSE_GY is the model's OverdoseError

    n = 0
    if formats.get(fmt).is_cache:  # the whole cache at once, with how it was predicted
        done: list[Patient] = []
        seen = 0

        def predicted() -> Iterator[Patient]:
            nonlocal seen
            for p in it:
                seen += 1
                yield p.with_dose(predict(p))
                done.append(p)

        # the options are part of the record: plan-QA calibration must not take predictions made otherwise
        record = PredictionRecord(used, str(model_path), sha256_file(resolve_model_path(model_path)),
                                  str(src), __version__)
        try:
            write_cache(predicted(), out, source=f"dosepred predict: model {model_path}, data {src}",
                        record={"prediction": record.to_json()})
        except CacheError:
            if not seen:  # the cache's own "no patients to write", said in terms of the input
                raise InputError(f"{src} holds no patients to predict") from None
            raise
        for p in done:
            if on_patient is not None:
                on_patient(p, Path(out) / f"{p.id}.npz")
        return len(done)
    for p in it:
        path = write_prediction(p, predict(p), out, fmt, dose_spacing=dose_spacing,
                                model_name=str(model_path))
        n += 1
        if on_patient is not None:
            on_patient(p, path)
    if n == 0:
        raise InputError(f"{src} holds no patients to predict")
    return n
