"""Ensembles: several trained models that predict one dose together, the weighted mean of theirs.

An ensemble is a folder holding ``ensemble.json`` (no weights of its own) that names its members'
model files (each a single network: a released ``model.pt`` or a run's checkpoint), their weights and
the SHA-256 of each file as the ensemble was made, next to a README and, once calibrated,
a plan-QA ``calibration.json``::

    {"format": "dosepred-ensemble", "version": 1,
     "members": [{"model": "../openkbp-mae-cdm/model.pt", "sha256": "...", "weight": 0.5},
                 {"model": "../openkbp-mae/model.pt", "sha256": "...", "weight": 0.5}]}

``dosepred ensemble`` takes model folders, runs or checkpoint files and records each as its model
file. A member's path is relative to the ensemble's folder (absolute paths are kept as they are), so a
repository's ensemble of its own released models moves with it and adds no binary. Every dosepred
command that takes a model for prediction takes an ensemble folder (``predict``, ``qa``,
``calibrate``, ``bench qa-power``, ``bench predict``); training (``--init``) and ``export-model`` need one
network and say so.

Why average models (docs/results.md, round 26): models trained independently make partly
independent errors, and their mean errs less than either; fine-tunes of one start do not (their
average changed nothing in rounds 10, 15 and 26). The released MAE and MAE+CDM models, trained
separately since round 11, disagree enough: their mean's OAR mean-dose errors are smaller than
either's, which is what plan QA's intervals are made of.

Rules, each an error naming the ensemble file, the member and the rule: at least two members; each
weight a positive finite number (they are normalised to sum to 1); each member a single model whose
file still has the recorded SHA-256 (a member retrained or replaced makes the ensemble, and any
calibration of it, another model), no two with one SHA-256 (a copy of a model, or a run's
``last.pt`` and ``best.pt`` of the same epoch, would make an "ensemble" that predicts as one model);
members predicting the same ROIs (names, kinds and prescriptions, in one bit order) from patients
placed one way: the same axes, and spacing and field-of-view ranges that share a value on every axis
(:func:`ensemble_space`). Members may differ in architecture and in
their patch: each predicts the placed patient with its own sliding windows and test-time passes
(:func:`dosepred.predict.predict_in_space`).

The ensemble's own model space (:func:`ensemble_space`) is where a patient is placed for all members
and what ``predict`` and ``qa`` warn from: the ranges every member was trained in (the intersection:
a patient inside it is inside each member's), and the training-data statistics combined so that a
warning any member's record would give is given (cross-validation folds, trained on different
patients, differ in them: which ROIs some training patients lacked, how many, which patients).
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fsutil import sha256_file, write_text
from ..io import formats
from .space import ModelSpace
from .tags import ENSEMBLE_FILE, ENSEMBLE_FORMAT
from .unet import ModelError

__all__ = ["ENSEMBLE_FILE", "EnsembleModel", "EnsembleSpec", "Member", "assemble", "ensemble_space",
           "is_ensemble", "read_ensemble", "write_ensemble"]
#: The version :func:`write_ensemble` writes (and the only one read)
ENSEMBLE_VERSION = 1


@dataclass(frozen=True)
class Member:
    """One model of an ensemble: its path as written in ``ensemble.json``, the SHA-256 of its file when
    the ensemble was made, and its weight (as written; :attr:`EnsembleSpec.weights` normalises)."""

    model: str
    sha256: str
    weight: float


@dataclass(frozen=True)
class EnsembleSpec:
    """A read ``ensemble.json``: where it is and its members."""

    path: Path
    members: tuple[Member, ...]

    @property
    def weights(self) -> tuple[float, ...]:
        """The members' weights normalised to sum to 1 (scaled by the largest first: no overflow)."""
        return normalised([m.weight for m in self.members])

    def member_path(self, m: Member) -> Path:
        """A member's file, its relative path read from the ensemble's folder."""
        p = Path(m.model)
        return p if p.is_absolute() else self.path.parent / p


def is_ensemble(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ensemble: its ``ensemble.json`` or a folder holding one."""
    p = Path(path)
    return (p.is_dir() and (p / ENSEMBLE_FILE).is_file()) or (p.is_file() and p.name == ENSEMBLE_FILE)


def normalised(weights: Sequence[float]) -> tuple[float, ...]:
    """Positive finite ``weights`` scaled to sum to 1 (divided by the largest first, so that weights
    near the float limit do not overflow their sum)."""
    top = max(weights)
    scaled = [w / top for w in weights]
    total = sum(scaled)
    return tuple(w / total for w in scaled)


def _weight(value: Any, where: str) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        f = float(value) if number else math.nan
    except OverflowError:  # an integer beyond any float
        f = math.inf
    if not math.isfinite(f) or f <= 0:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        raise ModelError(f"{where}: weight must be a positive finite number, got {shown}")
    return f


def read_ensemble(path: str | os.PathLike) -> EnsembleSpec:
    """Read and check an ``ensemble.json`` (or the folder holding one): its format, version and members'
    entries (not yet the member files: :func:`assemble`)."""
    p = Path(path)
    if p.is_dir():
        p = p / ENSEMBLE_FILE
    try:
        obj = json.loads(p.read_text(encoding="utf-8-sig"))  # a byte-order mark read as none
    except FileNotFoundError:
        raise ModelError(f"{p}: no such ensemble file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{p}: not a readable ensemble file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("format") != ENSEMBLE_FORMAT:
        raise ModelError(f"{p}: not a dosepred ensemble (its \"format\" must be {ENSEMBLE_FORMAT!r})")
    if obj.get("version") != ENSEMBLE_VERSION:
        raise ModelError(f"{p}: ensemble version {obj.get('version')!r} is not one this dosepred reads "
                         f"({ENSEMBLE_VERSION})")
    raw = obj.get("members")
    if not isinstance(raw, list) or len(raw) < 2:
        raise ModelError(f"{p}: \"members\" must list at least two models, got "
                         f"{len(raw) if isinstance(raw, list) else type(raw).__name__}")
    members = []
    for i, m in enumerate(raw, 1):
        where = f"{p}: member {i}"
        if not isinstance(m, dict):
            raise ModelError(f"{where} must be an object with \"model\", \"sha256\" and \"weight\"")
        model, sha = m.get("model"), m.get("sha256")
        if not isinstance(model, str) or not model:
            raise ModelError(f"{where}: \"model\" must be the path of a model file")
        hexdigits = isinstance(sha, str) and all(c in "0123456789abcdef" for c in sha.lower())
        if not hexdigits or len(sha) != 64:
            raise ModelError(f"{where}: \"sha256\" must be the 64 hex digits of its file's SHA-256")
        members.append(Member(model, sha.lower(), _weight(m.get("weight"), where)))
    return EnsembleSpec(p, tuple(members))


def _placement_conflict(common: ModelSpace, sp: ModelSpace) -> str:
    """Why patients placed in ``common`` (the space of the members before) cannot be given to a member
    trained in ``sp``: other axes, or a spacing or field-of-view range sharing no value with ``common``'s
    on some axis; "" when they can."""
    if sp.axes != common.axes:
        return f"axes {sp.axes} vs {common.axes}: its arrays run in other directions"
    for what, a, b in (("spacing", (sp.spacing_min, sp.spacing_max),
                        (common.spacing_min, common.spacing_max)),
                       ("field of view", (sp.fov_min, sp.fov_max), (common.fov_min, common.fov_max))):
        for j in range(3):
            if max(a[0][j], b[0][j]) > min(a[1][j], b[1][j]):
                return (f"{what} {a[0][j]:.4g}-{a[1][j]:.4g} mm along {common.axis_name(j)} vs "
                        f"{b[0][j]:.4g}-{b[1][j]:.4g} mm: no {what} every member was trained on")
    return ""


def _mean3(values: Sequence[tuple[float, float, float] | None]) -> tuple[float, float, float] | None:
    if any(v is None for v in values):
        return None
    return tuple(float(np.mean([v[j] for v in values if v is not None])) for j in range(3))  # type: ignore


def ensemble_space(spaces: Sequence[ModelSpace]) -> ModelSpace:
    """The model space of an ensemble whose members were trained in ``spaces`` (one axis order, and
    ranges sharing a value on every axis: :func:`assemble` checks it). Where a patient is placed:

    - ``axes``: the members'; the spacing and field-of-view ranges: the intersection of theirs (a
      patient whose spacing is inside it is placed without resampling, inside every member's range;
      one outside any member's is resampled into it, and warned of by ``predict`` and noted by ``qa``
      as any member would); the median spacing and array size (the resampling target): the mean;

    what the members' training data were, combined so that every warning and refusal any member's
    record would give is given:

    - ``masked``: whether any member's training patients all had a possible-dose mask;
    - ``absent_rois`` (a patient may lack them without ``--allow-missing-rois``): the ROIs every
      member's training patients lacked some of (those of a record without the list do not narrow it;
      None when no member has one);
    - ``absent_counts``: per ROI of those, the fewest training patients that lacked it in any member,
      of (``absent_patients``) the most patients any member counted: its share is at most each
      member's, so an ROI rarely missing for one member is rarely missing for the ensemble
      (:meth:`ModelSpace.rarely_absent`);
    - ``patients``: the most patients any member was trained on; ``patients_sha``: theirs when every
      member was trained on the same patients, else None (the union is not recorded)."""
    first = spaces[0]
    absent_lists = [s.absent_rois for s in spaces if s.absent_rois is not None]
    absent = None if not absent_lists else tuple(n for n in absent_lists[0]
                                                  if all(n in a for a in absent_lists))
    counted = [(dict(s.absent_counts), s.absent_of) for s in spaces
               if s.absent_rois is not None and s.absent_counts is not None and s.absent_of > 0]
    counts, of = None, None
    if absent is not None and counted:
        counts = tuple((n, min(c[n] for c, _ in counted if n in c)) for n in absent
                       if any(n in c for c, _ in counted))
        of = max(k for _, k in counted)
    patients = max(s.patients for s in spaces)
    if of == patients and all(s.absent_patients is None for s in spaces):
        of = None  # counted among ``patients``, as the members' are
    sources = list(dict.fromkeys(s.source for s in spaces))
    shas = {s.patients_sha for s in spaces}
    return ModelSpace(
        axes=first.axes,
        spacing_min=tuple(np.max([s.spacing_min for s in spaces], axis=0).tolist()),
        spacing_max=tuple(np.min([s.spacing_max for s in spaces], axis=0).tolist()),
        fov_min=tuple(np.max([s.fov_min for s in spaces], axis=0).tolist()),
        fov_max=tuple(np.min([s.fov_max for s in spaces], axis=0).tolist()),
        masked=any(s.masked for s in spaces), patients=patients,
        source=sources[0] if len(sources) == 1 else "ensemble of " + "; ".join(sources),
        spacing_median=_mean3([s.spacing_median for s in spaces]),
        shape_median=_mean3([s.shape_median for s in spaces]),
        absent_rois=absent, absent_counts=counts, absent_patients=of,
        patients_sha=shas.pop() if len(shas) == 1 else None)


class EnsembleModel(torch.nn.Module):
    """Loaded members (eval mode) and their normalised weights. ``config`` is the first member's (the
    ROIs and bit order every member shares), ``space`` their combined model space
    (:func:`ensemble_space`). Predict with
    :func:`dosepred.predict.predict_dose` (or ``predict_in_space``), which runs each member and
    returns :meth:`combine` of their doses; calling the module itself is refused."""

    def __init__(self, members: Sequence[torch.nn.Module], weights: Sequence[float],
                 space: ModelSpace, labels: Sequence[str] | None = None) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.weights = tuple(float(w) for w in weights)
        self.config = members[0].config
        self.space = space
        #: how errors name each member ("ENSEMBLE: member 2 (../run/model.pt)")
        self.labels = tuple(labels) if labels is not None else tuple(f"member {i}"
                                                                      for i in range(1, len(members) + 1))

    def combine(self, doses: Sequence[np.ndarray]) -> np.ndarray:
        """The weighted mean of the members' doses (accumulated in float64, returned float32)."""
        total = np.zeros(doses[0].shape, dtype=np.float64)
        for w, d in zip(self.weights, doses, strict=True):
            total += w * d
        return total.astype(np.float32)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise ModelError("an ensemble has no single forward pass: predict with dosepred.predict_dose, "
                         "which runs each member and averages their doses")


def assemble(spec: EnsembleSpec, load_one: Callable[[Path, Any], torch.nn.Module],
             device: Any = "cpu") -> EnsembleModel:
    """The ensemble of ``spec`` with its members loaded on ``device`` by ``load_one(file, device)`` (a
    single model's loader, :func:`dosepred.models.checkpoint.load_ensemble` passes its own), after
    checking every rule of the module docstring."""
    nets: list[torch.nn.Module] = []
    spaces: list[ModelSpace] = []
    seen: list[Path] = []
    for i, m in enumerate(spec.members, 1):
        mp = spec.member_path(m)
        where = f"{spec.path}: member {i} ({m.model})"
        if mp.exists() and mp.resolve() in seen:
            raise ModelError(f"{where} is the file of member {seen.index(mp.resolve()) + 1}: a model twice "
                             "is that model weighted more; list it once with the summed weight")
        seen.append(mp.resolve())
        if is_ensemble(mp):
            raise ModelError(f"{where} is an ensemble itself: members must be single models")
        if not mp.is_file():
            raise ModelError(f"{where}: no such model file"
                             + (" (a member is a model file, e.g. NAME/model.pt)" if mp.is_dir() else ""))
        if sha256_file(mp) != m.sha256:
            raise ModelError(f"{where}: the file is not the one the ensemble was made with (its SHA-256 "
                             "differs): remake the ensemble with `dosepred ensemble` (and recalibrate it)")
        twin = next((j for j, o in enumerate(spec.members[:i - 1], 1) if o.sha256 == m.sha256), None)
        if twin is not None:
            raise ModelError(f"{where} has the same weights as member {twin} (the same SHA-256: a copy of "
                             "one model): the ensemble would predict as that model alone; list it once")
        try:
            net = load_one(mp, device)
        except ModelError as e:  # its message starts with the file's path, which `where` names
            msg = str(e)
            raise ModelError(f"{where}: {msg[len(str(mp)):].lstrip(': ') if msg.startswith(str(mp)) else msg}"
                             ) from None
        if sha256_file(mp) != m.sha256:  # replaced while it was read (a training writing its best.pt)
            raise ModelError(f"{where}: the file changed while it was read; try again")
        if nets:
            first = nets[0].config
            if net.config.roi_set.to_dicts() != first.roi_set.to_dicts():
                raise ModelError(f"{where} predicts from other ROIs than member 1 "
                                 f"({', '.join(net.config.roi_set.names)} vs "
                                 f"{', '.join(first.roi_set.names)}, "
                                 "with their kinds and prescriptions, in bit order): members must share them")
            conflict = _placement_conflict(ensemble_space(spaces), net.space)
            if conflict:
                before = "member 1" if len(nets) == 1 else f"members 1-{len(nets)}"
                raise ModelError(f"{where} was trained in another model space than {before} ({conflict}): "
                                 "a patient cannot be placed for all of them at once")
        spaces.append(net.space)
        nets.append(net)
    labels = [f"{spec.path}: member {i} ({m.model})" for i, m in enumerate(spec.members, 1)]
    return EnsembleModel(nets, spec.weights, ensemble_space(spaces), labels).eval()


def write_ensemble(models: Sequence[str | os.PathLike], out: str | os.PathLike,
                   resolve: Callable[[str | os.PathLike], Path],
                   load_one: Callable[[Path, Any], torch.nn.Module],
                   weights: Sequence[float] | None = None, final: str | os.PathLike | None = None) -> Path:
    """Write an ensemble of ``models`` (model folders, runs or checkpoint files of single models, each
    found by ``resolve`` and loaded by ``load_one``: :func:`dosepred.models.checkpoint.write_ensemble`
    passes its own) into the folder ``out``: ``ensemble.json`` (each member's path relative to
    ``final``, the folder's path once in place, default ``out``; its SHA-256; its weight, default
    equal) and a README. The ensemble is loaded (every rule checked) before anything is written.
    Returns the ``ensemble.json`` path."""
    if len(models) < 2:
        raise ModelError(f"an ensemble needs at least two models, got {len(models)}")
    ws = [1.0] * len(models) if weights is None else list(weights)
    if len(ws) != len(models):
        raise ModelError(f"{len(ws)} weights for {len(models)} models: give one weight per model")
    out, shown = Path(out), Path(final) if final is not None else Path(out)
    files, members = [], []
    for i, (m, w) in enumerate(zip(models, ws, strict=True), 1):
        if is_ensemble(m):
            raise ModelError(f"model {i} ({m}) is an ensemble itself: members must be single models")
        try:
            f = resolve(m).resolve()
        except FileNotFoundError as e:
            raise ModelError(f"model {i}: {e}") from None
        if f in files:
            raise ModelError(f"model {i} ({m}) is the file of model {files.index(f) + 1}: a model twice is "
                             "that model weighted more; give it once, with --weights")
        files.append(f)
        # relative to the folder as it will be (its parent resolved, not a link --out is: that is replaced)
        rel = os.path.relpath(f, shown.parent.resolve() / shown.name)
        members.append({"model": rel, "sha256": sha256_file(f), "weight": _weight(w, f"model {i} ({m})")})
    # the same members by absolute path: checked as the written file will be read
    spec = EnsembleSpec(shown / ENSEMBLE_FILE,
                        tuple(Member(str(f), m["sha256"], m["weight"])
                              for f, m in zip(files, members, strict=True)))
    try:
        ens = assemble(spec, load_one)
    except ModelError as e:  # nothing is written yet: name the models as given, not the file to be
        raise ModelError(str(e).replace(f"{spec.path}: member ", "model ", 1)
                         .replace("the same weights as member ", "the same weights as model ")) from None
    out.mkdir(parents=True, exist_ok=True)
    path = out / ENSEMBLE_FILE
    write_text(path, json.dumps({"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION,
                                 "members": members}, indent=2) + "\n")
    use = shlex.quote(shown.name if shown.is_absolute() else str(shown))  # no user's folders: it is shared
    lines = [f"# {shown.name}", "",
             f"A dosepred ensemble: the weighted mean of the doses of {len(members)} models "
             "(each predicted with its own sliding windows and test-time passes).", ""]
    lines += [f"- `{m['model']}`, weight {w:.3g} (SHA-256 {m['sha256'][:12]}...)"
              for m, w in zip(members, spec.weights, strict=True)]
    lines += [f"- ROIs (bit order): {', '.join(ens.config.roi_set.names)}",
              f"- model space: {ens.space.summary()}", "",
              f"Use: `dosepred predict --model {use} --data PATIENTS --out DIR` "
              f"(PATIENTS: {formats.described()}); plan QA after `dosepred calibrate --model "
              f"{use} ...` (docs/qa.md).", ""]
    write_text(out / "README.md", "\n".join(lines))
    return path
