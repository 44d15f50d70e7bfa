"""Starting a training from another model (``--init``): its architecture, its weights, its space.

A fine-tune (``TrainConfig.init``: a run folder, a released model or a checkpoint file) takes the
``--init`` model's architecture unless the config asks for another compatible one
(:func:`resolve_architecture`), starts from its weights, mapped onto the training cache's ROIs when
they differ (:func:`load_init_weights`, through :mod:`dosepred.models.transfer`), and lets patients
lack what the ``--init`` model's training patients lacked (:func:`inherit_absent`). The
:class:`~dosepred.training.trainer.Trainer` calls these from its ``setup_model`` and
``inherit_absent`` steps; docs/finetune.md says what a user sees.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

from ..models import DoseUNet, ModelConfig, ModelError
from ..models.checkpoint import state_dict_problem
from ..models.grow import grow_problem, grow_state
from ..models.space import COARSE_FACTOR, ModelSpace
from ..models.transfer import (
    RoiTransfer,
    absent_after,
    add_extra_inputs,
    counts_after,
    plan_transfer,
    transfer_state,
)
from ..models.unet import EXTRA_FLAGS
from ..patient import RoiSet
from .config import TrainConfig

#: the architecture fields a fine-tune takes from its ``--init`` model unless the config sets them
ARCH_KEYS = ("base", "levels", "res_units", "norm", "stages")
#: input channels computed from the whole patient grid: a fine-tune keeps --init's and may add them
EXTRA_KEYS = EXTRA_FLAGS


def resolve_architecture(cfg: TrainConfig, init_ckpt: dict[str, Any] | None) -> None:
    """Settle ``cfg``'s architecture fields in place (``base``, ``levels``, ``res_units``, ``norm``,
    ``stages``, ``channels``, ``coarse``, ``head``): those it sets, else the ``--init`` model's
    (``init_ckpt``, the loaded checkpoint, or None), else :class:`ModelConfig`'s defaults. A
    requested value that contradicts the ``--init`` model (except a second stage or a head on a model
    without one, and ``channels`` wider than the ``--init`` model's that
    :func:`~dosepred.models.grow.grow_problem` accepts: the model is grown) or the explicit
    ``channels`` is a :class:`ModelError`, as is ``freeze_stage1`` without two stages."""
    arch: dict[str, Any] = {}
    init_widths: list[int] | None = None
    grow = False
    if init_ckpt is not None:
        init_mc = ModelConfig.from_dict(dict(init_ckpt["model_config"]))
        init_widths = init_mc.widths
        arch = {k: init_mc.to_dict()[k] for k in ARCH_KEYS}
        if cfg.coarse is not None and init_mc.coarse not in (None, list(cfg.coarse)):
            raise ModelError(f"--init {cfg.init} has coarse={init_mc.coarse} but coarse="
                             f"{list(cfg.coarse)} was requested")
        cfg.coarse = init_mc.coarse if cfg.coarse is None else cfg.coarse
        if cfg.head is not None and init_mc.head not in (None, cfg.head):
            raise ModelError(f"--init {cfg.init} has head={init_mc.head} but head={cfg.head} was "
                             "requested")
        cfg.head = init_mc.head if cfg.head is None else cfg.head
        for k in EXTRA_KEYS:  # channels of the whole grid: --init's, and may be added
            if getattr(cfg, k) is False and getattr(init_mc, k):
                raise ModelError(f"--init {cfg.init} has the {k} input channels but {k}=false was "
                                 "requested")
            setattr(cfg, k, getattr(init_mc, k) or bool(getattr(cfg, k)))
    if cfg.dropout is None:  # a training choice, no weights: --init's unless set
        cfg.dropout = float(init_mc.dropout) if init_ckpt is not None else 0.0
    if cfg.channels is not None:  # explicit widths decide base and levels
        widths = ModelConfig(channels=cfg.channels, patch=(2 ** len(cfg.channels),) * 3).widths
        grow = init_widths is not None and widths != init_widths  # checked once all is settled
        for k, v in (("base", widths[0]), ("levels", len(widths))):
            if getattr(cfg, k) not in (None, v):
                raise ModelError(f"channels {widths} imply {k}={v} but {k}={getattr(cfg, k)} was "
                                 "requested")
            setattr(cfg, k, v)
    elif init_widths is not None and init_widths != [init_widths[0] * 2 ** i for i in
                                                     range(len(init_widths))]:
        cfg.channels = init_widths  # --init's own widths
    defaults = ModelConfig()
    for k in ARCH_KEYS:
        v = getattr(cfg, k)
        if v is None:
            v = arch.get(k, getattr(defaults, k))
        elif (k in arch and arch[k] != v and not (k == "stages" and arch[k] == 1)
              and not (grow and k in ("base", "levels"))):  # widths: grow_problem below
            hint = (" (--channels grows a model: the same levels, each at least as wide)"
                    if k in ("base", "levels") else "")
            raise ModelError(f"--init {cfg.init} has {k}={arch[k]} but {k}={v} was requested{hint}")
        setattr(cfg, k, v)
    if cfg.freeze_stage1 and cfg.stages != 2:
        raise ModelError("freeze_stage1 needs stages=2 (a one-stage model would train nothing)")
    added = [k for k in EXTRA_KEYS if init_ckpt is not None and getattr(cfg, k) and not getattr(init_mc, k)]
    if cfg.freeze_stage1 and added:
        raise ModelError(f"freeze_stage1 with {' and '.join(added)} added to --init {cfg.init}: the first "
                         "stage's weights of those channels would stay zero; add them first, then freeze "
                         "in a second fine-tune")
    if grow:  # wider channels than --init's: grown (dosepred.models.grow) where that can be done
        problem = grow_problem(init_mc, list(widths), cfg.res_units, cfg.coarse, cfg.stages, cfg.head)
        if problem:
            raise ModelError(f"--init {cfg.init} {problem}, but channels {widths} were requested")
        if cfg.freeze_stage1:
            raise ModelError(f"freeze_stage1 with channels {widths} wider than --init {cfg.init}'s "
                             f"{init_widths}: the first stage's new channels would never train; grow "
                             "first, then freeze in a second fine-tune")
        if cfg.freeze_steps:
            raise ModelError(f"freeze_steps with channels {widths} wider than --init {cfg.init}'s "
                             f"{init_widths}: the grown layers are partly new; leave freeze_steps out")


def load_init_weights(model: DoseUNet, init_ckpt: dict[str, Any], cfg: TrainConfig, roi_set: RoiSet,
                      log: Callable[[str], None]) -> tuple[dict[str, Any] | None, RoiTransfer | None]:
    """Load the ``--init`` checkpoint's weights into ``model`` (built for ``roi_set``, the training
    cache's ROIs): mapped onto its input channels when the ROIs differ (logged through ``log``), a
    one-stage model as the first stage of a cascade, a model without the coarse branch with the
    branch at zero. Returns ``(roi_transfer, transfer)``: the record the run's checkpoints keep (this
    run's mapping, else the one the ``--init`` model kept) and this run's :class:`RoiTransfer` (None
    for the same ROIs). Weights that do not fit are a :class:`ModelError`."""
    roi_transfer: dict[str, Any] | None = None
    transfer: RoiTransfer | None = None
    mc = ModelConfig.from_dict(dict(init_ckpt["model_config"]))
    # the cache's ROIs onto the model's input channels (dosepred.models.transfer)
    tr = plan_transfer(mc.roi_set, roi_set, f"training cache {cfg.data}", str(cfg.init))
    state = {k: v.float() if v.is_floating_point() else v for k, v in init_ckpt["model"].items()}
    added = [k for k in EXTRA_KEYS if getattr(cfg, k) and not getattr(mc, k)]
    if added:  # input channels of the whole grid added: their weights zero
        what = " and ".join(f"the {k} input channels" for k in added)
        if not tr.identity:
            raise ModelError(f"--init {cfg.init} cannot get {what} and move onto other ROIs in one "
                             "fine-tune: do them in two")
        new = ModelConfig.from_dict({**mc.to_dict(), **{k: True for k in added}})
        state = add_extra_inputs(state, mc, new)
        mc = new  # what state now is
        log(f"--init {cfg.init} gets {what}: their weights start at zero, so the network predicts "
            "what --init does until training moves them")
    if cfg.coarse and not mc.coarse:  # a model without the coarse branch: the branch starts at zero
        if mc.stages != cfg.stages:
            raise ModelError(f"--init {cfg.init}: add the coarse branch and the second stage in "
                             "two fine-tunes, not one")
        state = model.complete_state(state)
    if cfg.head and not mc.head:  # a model without the full-resolution head: the head starts at zero
        if not tr.identity:
            raise ModelError(f"--init {cfg.init} cannot get a full-resolution head and move onto other "
                             "ROIs in one fine-tune: do them in two")
        state = model.complete_state(state)
        log(f"--init {cfg.init} gets a full-resolution head of {cfg.head} channels: its correction starts "
            "at zero, so the network predicts what --init does until training moves it")
    if mc.widths != model.config.widths:  # wider channels (resolve_architecture checked that it can)
        if not tr.identity:
            raise ModelError(f"--init {cfg.init} cannot grow its channels and move onto other ROIs in "
                             "one fine-tune: do them in two")
        try:
            state = grow_state(state, mc, model)
        except ModelError as e:
            raise ModelError(f"--init {cfg.init}: {e}") from None
        log(f"--init {cfg.init} grown from channels {mc.widths} to {model.config.widths}: the new "
            "channels start with zero outgoing weights, so the network predicts what --init does "
            "until training moves them")
    try:
        if not tr.identity:
            model.load_state_dict(transfer_state(state, model, tr, f"--init {cfg.init}"))
            roi_transfer = tr.to_dict(model.config.n_extra)
            transfer = tr
            log(f"--init {cfg.init} onto the ROIs of {cfg.data}: {tr.summary()}")
            for note in tr.notes:
                log(f"note: {note}")
        elif mc.stages == 1 and cfg.stages == 2:  # a one-stage model becomes the first stage
            model.net.load_state_dict({k[len("net."):]: v for k, v in state.items()})
        else:
            model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"--init {cfg.init}: weights do not fit ({state_dict_problem(e)})") from None
    if tr.identity:  # a fine-tune of a transferred model keeps the record of its channels
        roi_transfer = init_ckpt.get("roi_transfer")
    return roi_transfer, transfer


def from_init(name: str, was: ModelConfig) -> bool:
    """Whether the weight ``name`` of a model set up by :func:`load_init_weights` holds a value of the
    ``--init`` model (``was``, its configuration): not a coarse branch or second stage the fine-tune
    adds to it (which start at zero or from random weights)."""
    return not ((".extra." in name and not was.coarse) or (name.startswith("refine.") and was.stages == 1)
                or (name.startswith("head.") and not was.head))


def same_patients(init: ModelSpace, space: ModelSpace, was: dict[str, int], own: dict[str, int]) -> bool:
    """Whether a fine-tune's training patients are the ``--init`` model's (a training continued in
    stages): their recorded id fingerprints agree; for a model recorded before fingerprints, its counts
    are those of these patients counted k times over (each earlier stage on them added them again)."""
    if init.patients_sha is not None or space.patients_sha is None:
        return init.patients_sha is not None and init.patients_sha == space.patients_sha
    k, rem = divmod(init.absent_of, space.absent_of) if space.absent_of else (0, 1)
    return rem == 0 and k >= 1 and set(was) == set(own) and all(was[n] == k * own[n] for n in own)


class InitSpacingWarning(UserWarning):
    """The training patients' voxels are far from those the ``--init`` model learnt at."""


def warn_init_spacing(space: ModelSpace, init_ckpt: dict[str, Any], init: str) -> ModelSpace:
    """``space`` (the fine-tune's training patients'), with an :class:`InitSpacingWarning` when their
    median voxel size along some axis is more than ``COARSE_FACTOR`` times finer or coarser than the
    ``--init`` model's recorded range: training keeps the patients' voxels (:class:`SpaceRecorder`), so
    the model's convolutions start on anatomy of another size in voxels than they learnt (a clinic's
    1 mm CT under a model of OpenKBP's 4 mm grid), and the fine-tuned model records the new spacing."""
    was = ModelSpace.from_dict(init_ckpt["space"])
    if was.source != "recorded" or space.spacing_median is None:
        return space
    med = space.spacing_median
    far = [max(lo / m, m / hi) for m, lo, hi in zip(med, was.spacing_min, was.spacing_max, strict=True)]
    if max(far) <= COARSE_FACTOR:
        return space
    mm = " x ".join(f"{v:.3g}" for v in med)
    rng = " x ".join(f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(was.spacing_min, was.spacing_max, strict=True))
    want = " x ".join(f"{v:.3g}" for v in was.spacing_median or was.spacing_max)
    warnings.warn(f"--init {init} learnt on voxels of {rng} mm (axes {was.axes}); the training patients' are "
                  f"{mm} mm (median), up to {max(far):.1f}x off: training keeps their voxels, so its "
                  "convolutions start on anatomy of another size than they learnt, and the fine-tuned "
                  "model records their spacing; resample the patients to about the --init model's "
                  f"spacing ({want} mm, dosepred.resample.resample_patient) before training on them",
                  InitSpacingWarning, stacklevel=2)
    return space


def inherit_absent(space: ModelSpace, init_ckpt: dict[str, Any], transfer: RoiTransfer | None,
                   roi_set: RoiSet, init: str | None = None) -> ModelSpace:
    """A fine-tune's ``space`` that also lets patients lack what the ``--init`` model's training
    patients lacked (its ``absent_rois``, in ``roi_set``'s names when the ROIs were mapped by
    ``transfer``), so a handful of clinic patients who all had an organ do not make it required at
    prediction; the counts are over both models' training patients, unless they are the same
    patients (:func:`same_patients`). ``init`` (the ``--init`` as given): first
    :func:`warn_init_spacing`."""
    if init is not None:
        space = warn_init_spacing(space, init_ckpt, init)
    if space.absent_rois is None:
        return space
    init = ModelSpace.from_dict(init_ckpt["space"])
    before = init.absent_rois
    if before is None:
        return space
    if transfer is not None:
        before = tuple(absent_after(before, transfer, new=False) or ())
    both = set(space.absent_rois) | set(before)
    absent = tuple(n for n in roi_set.names if n in both)
    counts = None  # over both models' training patients (the --init's first)
    if init.absent_counts is not None and space.absent_counts is not None:
        was = dict(init.absent_counts)
        if transfer is not None:
            was = counts_after(was, init.absent_of, transfer)
        own = dict(space.absent_counts)
        if same_patients(init, space, was, own):  # a continued training: nobody new to count
            return dataclasses.replace(space, absent_rois=absent)
        counts = tuple((n, was.get(n, 0) + own.get(n, 0)) for n in absent)
    of = None if counts is None else init.absent_of + space.absent_of
    return dataclasses.replace(space, absent_rois=absent, absent_counts=counts, absent_patients=of)


__all__ = ["ARCH_KEYS", "InitSpacingWarning", "from_init", "inherit_absent", "load_init_weights",
           "resolve_architecture", "same_patients", "warn_init_spacing"]
