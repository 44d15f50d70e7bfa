"""Carrying a model onto another ROI set: ``train --init MODEL`` on a clinic's cache.

A model's input channels are tied to its ROI set (:meth:`DoseUNet.assemble
<dosepred.models.unet.DoseUNet.assemble>`)::

    [CT, prescription map / 70 Gy, one channel per OAR (bit order), possible-dose mask]

(a two-stage model's second U-Net reads the same channels plus the first stage's dose, a full-resolution
head the same channels plus the U-Net's outputs). A clinic's
cache names other structures, so :func:`plan_transfer` decides, and :func:`transfer_state` applies,
which input channel of the new model comes from which channel of the old one:

- **OARs matched by name**: a data OAR and a model OAR are the same organ when their canonical
  names agree (:func:`dosepred.io.roi_names.canonical`: TG-263 spellings such as ``Parotid_L``,
  ``Bone_Mandible`` and the OpenKBP names), else when the names agree ignoring case, spaces,
  ``_`` and ``-``. The new channel takes the old channel's first-layer weights.
- **New OARs** (the data's, unknown to the model) get a channel whose first-layer weights start at
  zero: until training moves them the model predicts exactly what it did without that structure.
- **Dropped OARs** (the model's, absent from the data) lose their channel and its first-layer
  weights; the model then predicts what it did for a patient without that structure. A note says so.
- **Targets** reach the network only through the prescription channel (each voxel the highest
  prescription of the targets containing it, / 70 Gy) and, in a model with target distance channels,
  the distances to the highest-prescription and to all targets, so they need no matching: the
  data's targets and dose levels (66 / 60 / 54 Gy, or one level) replace the model's. A data target
  without a prescription does not enter that channel (a note says so); data with no prescribed
  target at all is an error.

The result is recorded in every checkpoint of the run (``"roi_transfer"``: :meth:`RoiTransfer.to_dict`)
and in an exported model. This module decides and copies weights; it reads no files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..io.roi_names import canonical
from ..patient import Roi, RoiSet
from .tags import MODEL_FORMAT
from .unet import ModelConfig, ModelError, build_model

__all__ = ["RoiTransfer", "TransferError", "absent_after", "counts_after", "input_keys", "match_key",
           "plan_transfer", "transfer_checkpoint", "transfer_state"]

#: format tag of the record in checkpoints
TRANSFER_FORMAT = "dosepred-roi-transfer"
_PROBE = "__input_probe__"  # one more OAR (input_keys)


class TransferError(ModelError):
    """The data's ROI set cannot be mapped onto the model's input channels."""


def match_key(name: str) -> str:
    """The key two ROI names must share to be one organ: the canonical name when
    :func:`~dosepred.io.roi_names.canonical` recognises it, else the name without case, spaces,
    ``_``, ``-`` and ``.``."""
    c = canonical(name)
    base = c.name if c.matched else name
    return re.sub(r"[\s_.\-]+", "", base).casefold()


@dataclass(frozen=True)
class RoiTransfer:
    """How a model's input channels map onto a data ROI set (see the module docstring).

    ``matched``: data OAR -> model OAR; ``new``: data OARs with a zero-initialised channel;
    ``dropped``: model OARs whose channel is removed; ``model_targets`` / ``data_targets``: name ->
    prescription (Gy) of the targets that form each prescription channel; ``unprescribed``: data
    targets without a prescription (not in the prescription channel); ``not_oars``: data ROIs of kind
    ``other`` whose name matches a model OAR (that OAR is dropped)."""

    model_rois: list[dict[str, Any]]
    data_rois: list[dict[str, Any]]
    matched: dict[str, str]
    new: tuple[str, ...]
    dropped: tuple[str, ...]
    model_targets: dict[str, float]
    data_targets: dict[str, float]
    unprescribed: tuple[str, ...] = ()
    not_oars: tuple[str, ...] = ()
    source: str = ""
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def identity(self) -> bool:
        """The same ROI set (names, kinds, prescriptions, bit order): weights load unchanged."""
        return self.model_rois == self.data_rois

    def channel_sources(self, n_extra: int = 0) -> list[int | None]:
        """For each input channel of the new model (CT, Rx, the data's OARs, ``n_extra`` channels of
        the whole grid that both models have, mask): the index of the old model's channel it comes
        from, None for a new (zero-initialised) channel."""
        model_oars = [r["name"] for r in self.model_rois if r.get("kind", "oar") == "oar"]
        data_oars = [r["name"] for r in self.data_rois if r.get("kind", "oar") == "oar"]
        old_extra = 2 + len(model_oars)  # the old extra channels, then the mask
        oars = [2 + model_oars.index(self.matched[n]) if n in self.matched else None for n in data_oars]
        return [0, 1, *oars, *range(old_extra, old_extra + n_extra + 1)]

    def to_dict(self, n_extra: int = 0) -> dict[str, Any]:
        """The record a checkpoint keeps (``n_extra``: the model's channels of the whole grid, for
        its ``channel_sources``)."""
        return {"format": TRANSFER_FORMAT, "version": 1, "source": self.source,
                "model_rois": self.model_rois, "data_rois": self.data_rois, "matched": dict(self.matched),
                "new": list(self.new), "dropped": list(self.dropped),
                "model_targets": dict(self.model_targets), "data_targets": dict(self.data_targets),
                "unprescribed": list(self.unprescribed), "not_oars": list(self.not_oars),
                "channel_sources": self.channel_sources(n_extra), "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoiTransfer:
        if not isinstance(d, dict) or d.get("format") != TRANSFER_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ModelError(f"not an ROI transfer record (format {got!r}, expected {TRANSFER_FORMAT!r})")
        try:
            return cls([dict(r) for r in d["model_rois"]], [dict(r) for r in d["data_rois"]],
                       dict(d["matched"]), tuple(d["new"]), tuple(d["dropped"]),
                       {k: float(v) for k, v in d["model_targets"].items()},
                       {k: float(v) for k, v in d["data_targets"].items()},
                       tuple(d.get("unprescribed", ())), tuple(d.get("not_oars", ())),
                       str(d.get("source", "")), tuple(d.get("notes", ())))
        except KeyError as e:
            raise ModelError(f"the ROI transfer record lacks the key {e}") from None
        except (TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"invalid ROI transfer record ({e})") from None

    def summary(self) -> str:
        """One line: what maps to what."""
        parts = [f"{len(self.matched)} OARs matched"]
        renamed = [f"{d}<-{m}" for d, m in self.matched.items() if d != m]
        if renamed:
            parts[0] += f" ({', '.join(renamed)})"
        parts.append(f"new (zero-initialised): {', '.join(self.new) or 'none'}")
        parts.append(f"dropped: {', '.join(self.dropped) or 'none'}")
        rx_m = "/".join(f"{v:g}" for v in sorted(set(self.model_targets.values()), reverse=True))
        rx_d = "/".join(f"{v:g}" for v in sorted(set(self.data_targets.values()), reverse=True))
        parts.append(f"prescription channel: {rx_m} Gy -> {rx_d} Gy")
        return "; ".join(parts)


def _targets(rs: RoiSet) -> dict[str, float]:
    return {r.name: float(r.prescription) for r in rs if r.kind == "target" and r.prescription is not None}


def plan_transfer(model_rois: RoiSet, data_rois: RoiSet, where: str = "the data", source: str = ""
                  ) -> RoiTransfer:
    """Map a model's ROI set (``model_rois``) onto ``data_rois`` (the training cache's).

    ``where`` names the data in errors and notes (e.g. ``"training cache clinic-cache"``),
    ``source`` the model (recorded). Raises :class:`TransferError` when the data has no target
    with a prescription, when two data OARs are one model OAR, or when a name is a target on one
    side and an OAR on the other."""
    if not _targets(data_rois):
        tg = [r.name for r in data_rois if r.kind == "target"]
        what = (f"its targets {', '.join(tg)} have no prescription" if tg else
                f"it has no target among its ROIs ({', '.join(data_rois.names) or 'none'})")
        raise TransferError(f"{where} cannot train --init {source or 'the model'}: {what}, so the "
                            "model's prescription channel would be empty; give each target its "
                            "prescription (kind and Gy) with data import-dicom --roi-map")
    model_oars = {match_key(n): n for n in model_rois.oars}
    model_tg = {match_key(n): n for n in model_rois.targets}
    matched: dict[str, str] = {}
    by_model: dict[str, str] = {}
    new: list[str] = []
    not_oars: list[str] = []
    for r in data_rois:
        k = match_key(r.name)
        if r.kind == "oar":
            if k in model_tg:
                raise TransferError(f"{where}: ROI {r.name} is an OAR but the model's {model_tg[k]} is a "
                                    "target; fix its kind with --roi-map")
            m = model_oars.get(k)
            if m is None:
                new.append(r.name)
            elif m in by_model:
                raise TransferError(f"{where}: ROIs {by_model[m]} and {r.name} are both the model's OAR "
                                    f"{m}; merge or rename one with --roi-map")
            else:
                matched[r.name] = m
                by_model[m] = r.name
        elif r.kind == "target":
            if k in model_oars:
                raise TransferError(f"{where}: ROI {r.name} is a target but the model's {model_oars[k]} is "
                                    "an OAR; fix its kind with --roi-map")
        elif k in model_oars:
            not_oars.append(r.name)
    not_oars = [n for n in not_oars if model_oars[match_key(n)] not in by_model]  # not an OAR's alias
    dropped = tuple(n for n in model_rois.oars if n not in by_model)
    unprescribed = tuple(r.name for r in data_rois if r.kind == "target" and r.prescription is None)
    notes: list[str] = []
    if new:
        one = len(new) == 1
        notes.append(f"new OAR channel{'' if one else 's'} {', '.join(new)} start{'s' if one else ''} at "
                     f"zero weight: the model predicts what it did without {'it' if one else 'them'} until "
                     "training moves the weights")
    if dropped:
        one = len(dropped) == 1
        notes.append(f"the model's OAR{'' if one else 's'} {', '.join(dropped)} {'is' if one else 'are'} not "
                     f"in {where}: {'its' if one else 'their'} input channel{'' if one else 's'} (and "
                     "first-layer weights) are dropped")
    for n in not_oars:
        notes.append(f"{where}: {n} is of kind 'other', not an OAR, so the model's "
                     f"{model_oars[match_key(n)]} channel is dropped (mark it an OAR with --roi-map "
                     "to keep it)")
    if unprescribed:
        notes.append(f"{where}: targets {', '.join(unprescribed)} have no prescription and do not enter "
                     "the prescription channel")
    return RoiTransfer(model_rois.to_dicts(), data_rois.to_dicts(), matched, tuple(new), dropped,
                       _targets(model_rois), _targets(data_rois), unprescribed, tuple(not_oars),
                       str(source), tuple(notes))


def input_keys(config: ModelConfig) -> dict[str, int]:
    """The weights of a model of ``config`` that read its input channels, each with its input width
    (``in_channels``; one more for a second stage reading the first stage's dose too; ``1 + head``
    more for a full-resolution head reading the U-Net's outputs too): the
    tensors whose dimension 1 grows when one more OAR channel is added (found on the meta device,
    without allocating weights)."""
    name = _PROBE + "_" * sum(n.startswith(_PROBE) for n in config.roi_set.names)  # a name not in the set
    probe = RoiSet((*config.roi_set.rois, Roi(name, "oar")))
    bigger = ModelConfig.from_dict({**config.to_dict(), "rois": probe.to_dicts()})
    with torch.device("meta"):
        a = build_model(config).state_dict()
        b = build_model(bigger).state_dict()
    return {k: int(v.shape[1]) for k, v in a.items() if b[k].shape != v.shape}


def transfer_state(old: dict[str, torch.Tensor], model: torch.nn.Module, transfer: RoiTransfer,
                   where: str = "--init") -> dict[str, torch.Tensor]:
    """The state dict of ``model`` (built for the data's ROI set, :class:`~dosepred.models.unet.DoseUNet`)
    filled from ``old`` (the state dict of the model ``transfer`` starts from). The weights that
    read the input channels (:func:`input_keys`) are rebuilt channel by channel per
    :meth:`RoiTransfer.channel_sources`, new channels zero (the channels after the input's, a second
    stage's dose or a head's U-Net outputs, come from the same places after the old input's); every
    other tensor is copied. Keys only ``model`` has keep
    its values (a second stage added to a one-stage model). Raises :class:`ModelError` when a
    tensor does not fit."""
    fresh = model.state_dict()
    n_extra = model.config.n_extra
    src = transfer.channel_sources(n_extra)
    n_old = 3 + sum(r.get("kind", "oar") == "oar" for r in transfer.model_rois) + n_extra
    n_new = len(src)
    inputs = input_keys(model.config)
    extra = sorted(set(old) - set(fresh))
    if extra:
        raise ModelError(f"{where}: weights {', '.join(extra[:3])} have no place in the new model "
                         "(another architecture?)")
    out: dict[str, torch.Tensor] = {}
    for k, f in fresh.items():
        o = old.get(k)
        if o is None:
            out[k] = f
            continue
        if k in inputs:
            # channels after the input's: 0 for the U-Net; a second stage's dose channel (1); a head's
            # U-Net outputs (1 + head): each comes from the same place after the old input's
            plus = inputs[k] - n_new
            want = (f.shape[0], n_old + plus, *f.shape[2:])
            if plus < 0 or tuple(o.shape) != want:
                raise ModelError(f"{where}: input weights {k} of shape {tuple(o.shape)} do not fit "
                                 f"{want} (another architecture?)")
            t = torch.zeros_like(f)
            for j, i in enumerate([*src, *range(n_old, n_old + plus)]):
                if i is not None:
                    t[:, j] = o[:, i].to(f.dtype)
            out[k] = t
        elif o.shape == f.shape:
            out[k] = o.to(f.dtype) if o.is_floating_point() else o
        else:
            raise ModelError(f"{where}: weights {k} of shape {tuple(o.shape)} do not fit "
                             f"{tuple(f.shape)} (another architecture?)")
    return out


def add_extra_inputs(state: dict[str, torch.Tensor], config: ModelConfig,
                     new: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict ``state`` of a model of ``config`` with the channels of the whole grid that
    ``new`` (the same model with more of them: target distances, laterality) adds, in every weight
    that reads the input (:func:`input_keys`), their weights zero: the model predicts what it did
    until training moves them. The channels sit between the OARs and the mask, in
    :meth:`DoseUNet.extra_channels`'s order."""
    from .unet import EXTRA_FLAGS, N_DIST

    if any(getattr(config, k) and not getattr(new, k) for k in EXTRA_FLAGS):
        raise ModelError("a fine-tune cannot drop input channels of the whole grid")

    def layout(c: ModelConfig) -> list[str]:
        return ["target_distance"] * N_DIST * c.target_distance + ["laterality"] * c.laterality

    was, now = layout(config), layout(new)
    at = 2 + len(config.roi_set.oars)  # the first such channel: after CT, Rx and the OARs
    out = dict(state)
    for k in input_keys(config):
        w = state[k]
        cols = [w[:, :at]]
        for kind in dict.fromkeys(now):  # each kind once, in order
            n = now.count(kind)
            if kind in was:
                i0 = at + was.index(kind)
                cols.append(w[:, i0:i0 + n])
            else:
                cols.append(w.new_zeros((w.shape[0], n, *w.shape[2:])))
        cols.append(w[:, at + len(was):])
        out[k] = torch.cat(cols, dim=1)
    return out


def transfer_checkpoint(ckpt: dict[str, Any], data_rois: RoiSet, where: str = "the data") -> dict[str, Any]:
    """A released-model checkpoint (``format: dosepred-model``) of ``ckpt``'s architecture, weights
    and space for ``data_rois``, with no training: what the model predicts on the data's ROI set
    (new OARs ignored, dropped OARs absent, the data's prescriptions in the prescription channel).
    ``ckpt``: a loaded checkpoint (:func:`~dosepred.models.checkpoint.load_checkpoint`). Its
    ``"roi_transfer"`` records the mapping (None when the ROI sets are the same)."""
    mc = ModelConfig.from_dict(dict(ckpt["model_config"]))
    source = str(ckpt.get("path", ""))
    tr = plan_transfer(mc.roi_set, data_rois, where, source)
    new_mc = ModelConfig.from_dict({**mc.to_dict(), "rois": data_rois.to_dicts()})
    with torch.device("meta"):
        model = build_model(new_mc)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    fresh = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}
    if tr.identity:
        weights = state
    else:
        model.load_state_dict(fresh, assign=True)
        weights = transfer_state(state, model, tr, f"{source or 'model'}")
    keep = {k: ckpt[k] for k in ("space", "train_config", "epoch", "global_step", "version") if k in ckpt}
    if "space" in keep and not tr.identity:
        sp = keep["space"]
        absent = absent_after(sp.get("absent_rois"), tr)
        counts = sp.get("absent_counts")
        if counts is not None and absent is not None:
            of = int(sp.get("absent_patients") or sp.get("patients") or 0)
            mapped = counts_after(counts, of, tr)
            counts = {n: mapped[n] for n in absent}
        keep["space"] = {**sp, "absent_rois": absent, "absent_counts": counts}
    return {"format": MODEL_FORMAT, **keep, "model_config": new_mc.to_dict(), "model": weights,
            "roi_transfer": None if tr.identity else tr.to_dict(new_mc.n_extra)}


def absent_after(absent: list[str] | tuple[str, ...] | None, transfer: RoiTransfer, new: bool = True
                 ) -> list[str] | None:
    """A model's ``absent_rois`` (the ROIs some of its training patients lacked, which a patient may
    lack at prediction: :mod:`dosepred.models.space`) in the data's names: matched OARs keep their
    status, targets are paired by rank of prescription (the highest with the highest; a data target
    beyond the model's count may be absent when any model target could be), and new OARs may be
    absent when ``new`` (a model mapped without training never read them; a fine-tune's own
    training patients decide). None stays None."""
    if absent is None:
        return None
    was = set(absent)
    ok = {d for d, m in transfer.matched.items() if m in was} | (set(transfer.new) if new else set())
    model_t = sorted(transfer.model_targets, key=lambda n: -transfer.model_targets[n])
    data_t = sorted(transfer.data_targets, key=lambda n: -transfer.data_targets[n])
    any_t = any(t in was for t in model_t)
    for k, n in enumerate(data_t):
        if (model_t[k] in was) if k < len(model_t) else any_t:
            ok.add(n)
    return [r["name"] for r in transfer.data_rois if r["name"] in ok]


def counts_after(counts: dict[str, int], patients: int, transfer: RoiTransfer) -> dict[str, int]:
    """How many of a model's ``patients`` training patients lacked each ROI (its ``absent_counts``,
    model names; an ROI not listed none) in the data's names, as :func:`absent_after` pairs them:
    matched OARs keep their count, targets paired by rank of prescription theirs; a new OAR or a data
    target beyond the model's count was lacked by every one of them (they never had it)."""
    model_t = sorted(transfer.model_targets, key=lambda n: -transfer.model_targets[n])
    data_t = sorted(transfer.data_targets, key=lambda n: -transfer.data_targets[n])
    pair = {**transfer.matched, **dict(zip(data_t, model_t, strict=False))}
    return {r["name"]: int(counts.get(pair[r["name"]], 0)) if r["name"] in pair else int(patients)
            for r in transfer.data_rois}
