"""The checkpoint format: what a trained model is on disk, how it is written, read and rebuilt.

Two kinds of file share one format (a ``dict`` of tensors and plain JSON-like metadata):

- a **training checkpoint** (``format: "dosepred-checkpoint"``, ``RUN/checkpoints/{last,best}.pt``):
  ``model_config``, ``model`` (state dict), ``space``, plus optimiser, scaler, RNG states, epoch,
  step, ``train_config``, ``best`` for exact resume;
- a **released model** (``format: "dosepred-model"``, ``models/NAME/model.pt`` next to a
  ``config.json`` and a README, written by :func:`export_model`): ``model_config``, ``model`` and the
  plain metadata only.

``space`` is the model's record of the data it was trained on (:class:`~dosepred.models.space.ModelSpace`:
axis letters, spacing and field-of-view ranges, whether a possible-dose mask was present). A model
saved before the record existed has none in its ``.pt``; its folder's ``config.json`` ``"space"`` is
read instead, and without either it is taken to be an OpenKBP model
(:meth:`~dosepred.models.space.ModelSpace.openkbp`).

Files are read with ``torch.load(weights_only=True)``: a malicious pickle is refused, never run.

Writing: every checkpoint is written atomically (:func:`save_checkpoint`, through
:func:`dosepred.fsutil.save_torch`); a training run's ``last.pt`` rotates its previous content to
``prev.pt`` (:func:`save_rotating`), and ``--resume`` reads ``last.pt`` or, when it is missing or
unreadable, falls back to ``prev.pt`` with a :class:`ResumeFallbackWarning` (:func:`load_resumable`).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import dosepred

from ..fsutil import atomic_path, json_dumps, save_torch, write_json, write_text
from ..io import formats
from .ensemble import EnsembleModel, assemble, is_ensemble, read_ensemble
from .ensemble import write_ensemble as _write_ensemble
from .space import ModelSpace
from .tags import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, ENSEMBLE_FILE, MODEL_FORMAT
from .unet import ModelConfig, ModelError, build_model


def resolve_model_path(path: str | os.PathLike) -> Path:
    """Run folder / model folder / checkpoint file -> the checkpoint file to load."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        if (p / "model.pt").is_file() and (p / ENSEMBLE_FILE).is_file():
            raise ModelError(f"{p} holds both model.pt and {ENSEMBLE_FILE}: a model folder is one model or "
                             "an ensemble, not both (move one of them)")
        for cand in (p / "model.pt", p / ENSEMBLE_FILE, p / "checkpoints" / "best.pt",
                     p / "checkpoints" / "last.pt"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(f"{p} holds no model: expected model.pt (a released model), "
                                f"{ENSEMBLE_FILE} (an ensemble) or checkpoints/best.pt / "
                                "checkpoints/last.pt (a training run)")
    raise FileNotFoundError(f"model {p} does not exist (give a run folder, a model folder or a .pt file)")


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint dict atomically (temporary name, then rename; the folder is created)."""
    save_torch(obj, path)
    return Path(path)


def save_rotating(obj: dict[str, Any], path: str | os.PathLike, prev: str | os.PathLike,
                  rotate: bool = True) -> Path:
    """Write checkpoint ``path`` atomically, keeping its previous content as ``prev``. At every
    moment ``path`` holds a complete checkpoint (the previous one is hard-linked to ``prev`` before
    the new one is renamed over ``path``), so a kill -9 at any point leaves both readable.
    ``rotate=False`` keeps ``prev`` as it is (used when ``path`` is known to be damaged)."""
    path, prev = Path(path), Path(prev)
    # prev already being path's file (an interruption between the rotation and the save below) keeps
    # it: renaming a hard link onto its own file does nothing and would leave the link behind
    if rotate and path.is_file() and not (prev.is_file() and os.path.samefile(path, prev)):
        with atomic_path(prev) as link:
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, link)
    return save_checkpoint(obj, path)


class ResumeFallbackWarning(UserWarning):
    """``--resume`` could not read last.pt and continues from prev.pt."""


def load_resumable(path: str | os.PathLike, prev: str | os.PathLike, map_location: Any = "cpu"
                   ) -> tuple[dict[str, Any], Path, bool]:
    """The checkpoint a run resumes from: ``path`` (``last.pt``), or ``prev`` (``prev.pt``, written by
    :func:`save_rotating`) when ``path`` is missing or unreadable; the fallback warns with a
    :class:`ResumeFallbackWarning`. Returns the checkpoint, the file it came from and whether it
    fell back (the next save must then not rotate the damaged ``path`` over ``prev``).

    Raises :class:`FileNotFoundError` when neither file exists and :class:`ModelError` when ``path``
    is unreadable and there is no ``prev``."""
    path, prev = Path(path), Path(prev)
    if not path.is_file() and not prev.is_file():
        raise FileNotFoundError(f"--resume: {path} does not exist (nothing to resume in "
                                f"{path.parent.parent})")
    try:
        if not path.is_file():
            raise ModelError(f"{path} does not exist")
        return load_checkpoint(path, map_location=map_location), path, False
    except ModelError as e:
        if not prev.is_file():
            raise ModelError(f"--resume: {e} (and there is no {prev.name} to fall back to)") from None
        try:
            ck = load_checkpoint(prev, map_location=map_location)
        except ModelError as e_prev:  # name both: the reason last.pt was not used is half the story
            raise ModelError(f"--resume: {e}; and the previous checkpoint {e_prev}") from None
        warnings.warn(f"--resume: {e}; continuing from the previous checkpoint {prev} (epoch "
                      f"{ck.get('epoch')}) instead", ResumeFallbackWarning, stacklevel=3)
        return ck, prev, True


#: What a model folder's config.json repeats of its model.pt (:func:`export_model`): one that differs is
#: another model's (copied beside it), so is its space record
_REPEATED = ("model_config", "train_config", "epoch", "global_step")


def _describes(a: Any, b: Any, key: str) -> bool:
    """Whether config.json's ``a`` and the checkpoint's ``b`` (entry ``key``) are one record."""
    if key == "model_config":
        try:
            a, b = (ModelConfig.from_dict(dict(x)).to_dict() for x in (a, b))
        except (ModelError, TypeError, ValueError):
            return False
    # as config.json writes them (json_dumps: a NaN or infinite number as null)
    return json_dumps(a, sort_keys=True, default=str) == json_dumps(b, sort_keys=True, default=str)


def _folder_space(path: Path, ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The ``"space"`` record of a released model folder's config.json, if any (None: no config.json, or
    one without ``"space"``). A config.json that is there but not readable, not a JSON object, or whose
    ``"space"`` is not an object is a :class:`ModelError`: taking it for "no record" would place the
    patients as for an OpenKBP model, whatever the model was trained on. So is a record of a config.json
    that describes another model than ``ckpt`` (:data:`_REPEATED`: one copied from another folder)."""
    cfg = path.parent / "config.json"
    if path.name != "model.pt" or not cfg.is_file():
        return None
    why = ("model.pt holds no space record (where the model's training data were), so it is read from "
           "there")
    try:
        info = json.loads(cfg.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelError(f"{cfg} is not readable JSON ({type(e).__name__}: {e}); {why}") from None
    if not isinstance(info, dict):
        raise ModelError(f"{cfg} is not a JSON object; {why}")
    sp = info.get("space")
    if sp is not None and not isinstance(sp, dict):
        raise ModelError(f"{cfg}: \"space\" is not a record (an object of axes, spacing and field of view "
                         f"ranges), got {type(sp).__name__}; {why}")
    other = next((k for k in _REPEATED if sp is not None and k in info and k in ckpt
                  and not _describes(info[k], ckpt[k], k)), None)
    if other:
        raise ModelError(f"{cfg} describes another model than {path.name} (its {other} differs: copied from "
                         f"another model's folder?), so its space record is not this model's; {why}")
    return sp


def _assumed_openkbp(path: Path, model_config: dict[str, Any]) -> dict[str, Any]:
    """The OpenKBP space record assumed for a model saved before the record existed, unless its
    ``model_config.flip_axis`` (the left-right array axis of its training data, set by hand then)
    says its arrays were not OpenKBP's, whose left-right axis is 1: a :class:`ModelError`, as its
    patients would be placed in axes it was not trained in."""
    space = ModelSpace.openkbp()
    axis = model_config.get("flip_axis", 1)
    if axis != space.lr_axis:
        raise ModelError(
            f"{path} has no space record (where its training data were; saved before dosepred kept one) "
            f"and its model_config has flip_axis {axis!r}: it was trained on arrays whose left-right axis "
            f"is {axis!r}, not the OpenKBP arrays (axes {space.axes}, left-right axis {space.lr_axis}) "
            "assumed for a model without a record; give it its training data's record as \"space\" in "
            "a config.json beside it, named model.pt (docs/model-space.md)")
    return space.to_dict()


def _load_error(e: Exception) -> str:
    """What went wrong reading a checkpoint, in our words: torch's own messages may advise loading
    with ``weights_only=False``, which would run code from the file (never relayed)."""
    import pickle

    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        return "it holds objects other than tensors and plain data, which are never loaded"
    if "zip archive" in text or "central directory" in text or isinstance(e, EOFError):
        return "the file is truncated or corrupted"
    first = text.splitlines()[0] if text.strip() else type(e).__name__
    return f"not a PyTorch checkpoint file; {type(e).__name__}: {first[:200]}"


def zip_damage(path: str | os.PathLike) -> str | None:
    """What is wrong with the data of a checkpoint's zip archive (torch's format), or None: an entry
    whose bytes no longer match the CRC-32 the archive recorded for them (a damaged copy or disk).
    torch's reader does not check them, so a flipped byte in a weight tensor would load silently and
    move the predicted dose by up to tens of Gy. A zip archive's start without its end is a
    truncated file; not a zip archive at all (a legacy checkpoint, another file): None, torch.load
    says what it is."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):  # a zip archive's start without its end: cut short
            with open(path, "rb") as f:
                return "the file is truncated or corrupted" if f.read(4) == b"PK\x03\x04" else None
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError):
        return "the file is truncated or corrupted"
    if bad is not None:
        return (f"the file is corrupted: its entry {bad} fails the archive's CRC-32 check (a damaged copy? "
                "copy or download it again)")
    return None


def state_dict_problem(e: RuntimeError) -> str:
    """What ``load_state_dict``'s error says is wrong: its first item (a size mismatch naming the weight
    and both shapes, or the missing or unexpected keys), not its first line, which names nothing."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else (lines or [""])[0]
    more = len(lines) - 2 if len(lines) > 2 else 0
    return (first if len(first) <= 200 else first[:200] + "...") + (f" (and {more} more)" if more else "")


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a dosepred checkpoint or exported model (weights_only) and check what it is.

    The returned dict always holds ``"space"`` (the record, the folder's config.json record, or the
    OpenKBP default; ``space["source"]`` says which) and ``"path"``."""
    path = resolve_model_path(path)
    if is_ensemble(path):
        spec = read_ensemble(path)
        raise ModelError(f"{path.parent} is an ensemble of {len(spec.members)} models "
                         f"({', '.join(m.model for m in spec.members)}): this needs a single model (give "
                         "one of its members)")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: the checkpoint file is empty (0 bytes; an interrupted copy or save?)")
    damaged = zip_damage(path)
    if damaged:
        raise ModelError(f"{path}: not a readable dosepred checkpoint ({damaged})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for foreign files
        raise ModelError(f"{path}: not a readable dosepred checkpoint ({_load_error(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise ModelError(f"{path} is not a dosepred checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    version = ckpt.get("version", 1)
    if type(version) is not int or version < 1:
        raise ModelError(f"{path}: the checkpoint's version {version!r} is not a positive integer (a damaged "
                         "or hand-edited file?)")
    if version > CHECKPOINT_VERSION:
        raise ModelError(f"{path}: written by a newer dosepred (checkpoint version {version}; this "
                         f"dosepred {dosepred.__version__} reads up to version {CHECKPOINT_VERSION}): "
                         "upgrade dosepred to use it (in its checkout: git pull, then pip install -e .)")
    if "model_config" not in ckpt or "model" not in ckpt:
        raise ModelError(f"{path}: checkpoint lacks model_config or model weights")
    if not isinstance(ckpt["model_config"], dict):
        raise ModelError(f"{path}: model_config is not a mapping of fields")
    try:  # checked here, so every reader's message names the file
        ModelConfig.from_dict(dict(ckpt["model_config"]))
    except ModelError as e:
        raise ModelError(f"{path}: model_config: {e}") from None
    if not isinstance(ckpt.get("space"), dict):
        ckpt["space"] = _folder_space(path, ckpt) or _assumed_openkbp(path, ckpt["model_config"])
    try:
        ModelSpace.from_dict(ckpt["space"])
    except (TypeError, ValueError, KeyError) as e:
        raise ModelError(f"{path}: the model's space record is invalid ({e})") from None
    if ckpt.get("roi_transfer") is not None:  # read again by export and fine-tunes: check it once here
        from .transfer import RoiTransfer

        try:
            RoiTransfer.from_dict(ckpt["roi_transfer"])
        except ModelError as e:
            raise ModelError(f"{path}: roi_transfer: {e}") from None
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], device: Any = "cpu") -> torch.nn.Module:
    """The model of a loaded checkpoint in eval mode, with ``model.space`` (its :class:`ModelSpace`)."""
    cfg = ModelConfig.from_dict(dict(ckpt["model_config"]))
    model = build_model(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"{ckpt.get('path', 'checkpoint')}: weights do not fit the recorded architecture "
                         f"({state_dict_problem(e)})") from None
    model.space = ModelSpace.from_dict(ckpt.get("space") or ModelSpace.openkbp().to_dict())
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: Any = "cpu") -> torch.nn.Module:
    """A ready-to-run model (eval mode, ``model.space`` set) from a run folder, model folder or
    checkpoint, or an ensemble folder (:class:`~dosepred.models.ensemble.EnsembleModel`)."""
    p = resolve_model_path(path)
    return load_ensemble(p, device) if is_ensemble(p) else _load_single(p, device)


def _load_single(path: Path, device: Any) -> torch.nn.Module:
    return model_from_checkpoint(load_checkpoint(path), device)


def load_ensemble(path: str | os.PathLike, device: Any = "cpu") -> EnsembleModel:
    """The ensemble at ``path`` (its folder or ``ensemble.json``), its members loaded on ``device``
    (:func:`dosepred.models.ensemble.assemble`: every rule of an ensemble checked)."""
    return assemble(read_ensemble(path), _load_single, device)


def write_ensemble(models: Sequence[str | os.PathLike], out: str | os.PathLike,
                   weights: Sequence[float] | None = None, final: str | os.PathLike | None = None) -> Path:
    """Write an ensemble folder of ``models`` (run folders, model folders or checkpoints of single
    models; ``weights`` default equal) at ``out`` (:func:`dosepred.models.ensemble.write_ensemble`)."""
    return _write_ensemble(models, out, resolve_model_path, _load_single, weights, final)


#: What an average of checkpoints keeps of each input (``"averaged_inputs"``): the entries that
#: describe one training (the average itself was neither trained nor validated)
ONE_TRAINING = ("train_config", "epoch", "global_step", "best")


#: The training-config fields that name an input, or the run, by its path on the machine that trained
PATH_FIELDS = ("data", "out", "val", "init", "protocol", "train_split", "val_split")


def shared_path(path: Any, split: bool = False) -> Any:
    """What a released model records of ``path`` on the machine that made it: the name alone
    (``/home/alice/clinic/train`` -> ``train``; a split's ``FILE:NAME`` -> ``s.json:NAME``; a built-in
    protocol name stays), a checkpoint with its run or model folder (``r1/checkpoints/best.pt``,
    ``openkbp-mae/model.pt``). The folders above name a user and where patients' data is stored, and
    mean nothing on the machine the model is copied to (the patients are ``space``'s count and
    fingerprint). Anything else is returned as it is."""
    if not isinstance(path, str) or not path:
        return path
    f, sep, name = path.rpartition(":") if split and ":" in path else (path, "", "")
    parts = Path(os.path.abspath(f)).parts  # ".", "..": the folder's own name
    keep = 3 if parts[-2:-1] == ("checkpoints",) else 2 if parts[-1:] == ("model.pt",) else 1
    return "/".join(parts[-keep:]) + sep + name


def _shared_record(meta: dict[str, Any]) -> dict[str, Any]:
    """An export's entries (:func:`export_model`) with the paths of the machine that made it
    :func:`shared_path`'s; a run's own checkpoints keep them (``--resume`` compares them)."""
    out = dict(meta)
    if isinstance(out.get("train_config"), dict):
        out["train_config"] = {k: shared_path(v, k.endswith("split")) if k in PATH_FIELDS else v
                               for k, v in out["train_config"].items()}
    if isinstance(out.get("roi_transfer"), dict):
        tr = out["roi_transfer"]
        out["roi_transfer"] = {**tr, "source": shared_path(tr.get("source"))}
    if "averaged" in out:
        out["averaged"] = [shared_path(str(p)) for p in out["averaged"]]
    if "averaged_inputs" in out:
        out["averaged_inputs"] = [{**r, "path": shared_path(str(r.get("path"))),
                                   "data": shared_path(r.get("data"))} for r in out["averaged_inputs"]]
    return out


def _input_record(c: dict[str, Any]) -> dict[str, Any]:
    """One averaged checkpoint as its export lists it: path, loss, data, epoch, steps, best score."""
    tc = c.get("train_config") or {}
    return {"path": c["path"], "loss": tc.get("loss"), "data": tc.get("data"), "epoch": c.get("epoch"),
            "global_step": c.get("global_step"), "best": c.get("best")}


def _loss_terms(spec: Any) -> Any:
    """A loss spec as its terms, so that ``mae+cdm`` and ``1*mae + cdm`` are one loss; as given when
    it cannot be read (or is None: not recorded)."""
    from ..losses.spec import parse_spec

    try:
        return frozenset((t.name, t.weight) for t in parse_spec(spec))
    except ValueError:
        return spec


def mixed_inputs(cks: Sequence[dict[str, Any]]) -> str | None:
    """Why averaging the loaded checkpoints ``cks`` is probably not what was meant, or None: one file
    given twice (it would weigh double), or models trained with different losses (the average is a
    model trained for neither)."""
    for i, c in enumerate(cks):
        for d in cks[:i]:
            if os.path.samefile(c["path"], d["path"]):
                same = c["path"] if c["path"] == d["path"] else f"{d['path']} and {c['path']}"
                return f"{same}: the same checkpoint is given twice (it would weigh double in the average)"
    losses = {c["path"]: _losses(c) for c in cks}
    if len({_loss_terms(v) for vs in losses.values() for v in vs}) > 1:
        return ("the checkpoints were trained with different losses (" + ", ".join(
            f"{p}: {' + '.join(repr(v) for v in vs) or 'unknown'}" for p, vs in losses.items()) + "), so "
            "their average is a model trained for neither")
    return None


def _losses(c: dict[str, Any]) -> list[Any]:
    """The losses a checkpoint was trained with, as recorded: its own, or its inputs' for an average
    (:func:`average_checkpoints` drops the training record); none where nothing was recorded (an
    unknown loss is not taken for a different one)."""
    own = (c.get("train_config") or {}).get("loss")
    if own is not None:
        return [own]
    return [r.get("loss") for r in c.get("averaged_inputs") or [] if isinstance(r, dict) and r.get("loss")]


def average_checkpoints(srcs: Sequence[str | os.PathLike], allow_mixed: bool = False) -> dict[str, Any]:
    """The uniform average of the weights of several checkpoints of one architecture, ROI set and
    model space (a "model soup" of fine-tunes of one model; docs/results.md measures it). The
    architecture, space and other entries are the first checkpoint's, without those of one training
    (:data:`ONE_TRAINING`: loss, epochs, best validation score); ``"averaged"`` lists the sources and
    ``"averaged_inputs"`` each one's training (:func:`_input_record`).

    A :class:`ModelError` for checkpoints of different models, and unless ``allow_mixed`` for inputs
    that are probably a mistake (:func:`mixed_inputs`: a file given twice, different losses)."""
    cks = [load_checkpoint(s) for s in srcs]
    if not cks:
        raise ModelError("no checkpoint to average")
    first = cks[0]

    def record(c: dict[str, Any], key: str) -> dict[str, Any]:
        d = ModelConfig.from_dict(dict(c[key])).to_dict() if key == "model_config" else dict(c[key])
        return {k: v for k, v in d.items() if k != "source"}  # model configs: fields added since, defaults

    for c in cks[1:]:
        for key, what in (("model_config", "architecture or ROI set"), ("space", "model space")):
            if record(c, key) != record(first, key):
                raise ModelError(f"{c['path']}: another {what} than {first['path']}; only checkpoints of "
                                 "one model can be averaged")
    problem = None if allow_mixed else mixed_inputs(cks)
    if problem:
        raise ModelError(f"{problem}; give --allow-mixed to average them anyway")
    avg = {k: (sum(c["model"][k].float() for c in cks) / len(cks)) if v.is_floating_point() else v
           for k, v in first["model"].items()}
    return {**{k: v for k, v in first.items() if k not in ONE_TRAINING}, "model": avg,
            "averaged": [c["path"] for c in cks], "averaged_inputs": [_input_record(c) for c in cks]}


#: With ``half``, tensors of at least this many elements are stored in fp16, smaller ones in fp32: the
#: coarse levels of a deep U-Net hold nearly all its parameters (a 6-level 16..512 network: 94.5 % in
#: tensors this large) and its fine levels, which set the dose's detail, keep full precision for 5 %
#: more file. Loading casts every tensor back to fp32.
HALF_MIN_NUMEL = 2 ** 18


def export_model(src: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike,
                 half: bool = True, description: str = "", final: str | os.PathLike | None = None,
                 allow_mixed: bool = False) -> Path:
    """Write a released model folder: ``model.pt`` (weights, fp16 by default for tensors of at least
    :data:`HALF_MIN_NUMEL` elements, and the space record),
    ``config.json`` and ``README.md``. ``src``: a run, checkpoint or model folder, or several of one
    model, whose weights are then averaged (:func:`average_checkpoints`; ``allow_mixed``: also a file
    given twice or models trained with different losses); the README and config.json of an average
    say so and list its inputs, each with its own training. ``final``: the path the folder will have
    when ``out`` is a temporary folder renamed there afterwards (named in the README)."""
    many = not isinstance(src, (str, os.PathLike))
    ckpt = (average_checkpoints(src, allow_mixed) if many  # type: ignore[arg-type]
            else load_checkpoint(src))  # type: ignore[arg-type]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if half and v.is_floating_point() and v.numel() >= HALF_MIN_NUMEL else v)
               .contiguous() for k, v in ckpt["model"].items()}
    keys = (*ONE_TRAINING, "version", "space", "averaged", "averaged_inputs", "roi_transfer")
    meta = _shared_record({k: ckpt[k] for k in keys if k in ckpt})
    obj = {"format": MODEL_FORMAT, "model_config": ckpt["model_config"], "model": weights, **meta}
    save_checkpoint(obj, out / "model.pt")
    source = (f"the average of {len(meta['averaged'])} checkpoints: {', '.join(meta['averaged'])}"
              if "averaged" in meta else shared_path(str(ckpt["path"])))
    info = {"format": MODEL_FORMAT, "model_config": ckpt["model_config"], "source": source,
            "dosepred_version": dosepred.__version__, **{k: v for k, v in meta.items()}}
    write_json(out / "config.json", info, default=str)
    readme = out / "README.md"
    shown = Path(final) if final is not None else out
    shown = Path(shown.name) if shown.is_absolute() else shown  # where it was written: no user's folders
    if not readme.exists():
        mc = ckpt["model_config"]
        tc = meta.get("train_config", {}) or {}
        from .transfer import RoiTransfer

        roi_names = ", ".join(r["name"] for r in mc["rois"])
        space = ModelSpace.from_dict(ckpt["space"])
        write_text(
            readme, f"# {shown.name}\n\n{description or 'A dosepred 3D U-Net dose-prediction model.'}\n\n"
            f"- architecture: {'two-stage cascade of 3D U-Nets' if mc.get('stages', 1) == 2 else '3D U-Net'}"
            f", channels {ModelConfig.from_dict(dict(mc)).widths} ({mc['levels']} levels)"
            + (f", a coarse branch {mc['coarse']} under the bottom" if mc.get("coarse") else "")
            + (f", a full-resolution head of {mc['head']} channels" if mc.get("head") else "")
            + (", target distance input channels" if mc.get("target_distance") else "")
            + (", a laterality input channel" if mc.get("laterality") else "")
            + f", {mc['res_units']} residual units, {mc['norm']} norm, patch {mc['patch']}"
            + (f", dropout {mc['dropout']:g} in training" if mc.get("dropout") else "") + "\n"
            f"- ROIs (bit order): {roi_names}\n"
            + (_averaged_lines(meta["averaged_inputs"]) if "averaged_inputs" in ckpt else
               f"- trained with loss `{tc.get('loss', '?')}` on `{tc.get('data', '?')}`"
               + (f" (split `{tc['train_split']}`: {space.patients} patients)" if tc.get("train_split")
                  else "")
               + (f", fine-tuned from `{tc['init']}`," if tc.get("init") else "")
               + f" for {ckpt.get('epoch', '?')} epochs ({ckpt.get('global_step', '?')} steps)\n")
            + f"- model space: {space.summary()}\n"
            + ("" if "averaged_inputs" in ckpt else f"- best validation: {json_dumps(ckpt.get('best'))}\n")
            + (f"- fine-tuned from `{meta['roi_transfer'].get('source', '?')}` onto other ROIs: "
               f"{RoiTransfer.from_dict(meta['roi_transfer']).summary()}\n"
               if ckpt.get("roi_transfer") else "")
            + "\n"
            f"Use: `dosepred predict --model {shlex.quote(str(shown))} --data PATIENTS --out DIR` "
            f"(PATIENTS: {formats.described()})\n")
    return out


def _averaged_lines(inputs: Sequence[dict[str, Any]]) -> str:
    """The README lines of an average: what it is, then each input with its own training."""
    def one(r: dict[str, Any]) -> str:
        loss, data, epoch, steps = ("?" if r.get(k) is None else r[k]
                                    for k in ("loss", "data", "epoch", "global_step"))
        return (f"  - `{r['path']}`: trained with loss `{loss}` on `{data}` for {epoch} epochs "
                f"({steps} steps); best validation: {json_dumps(r.get('best'))}\n")

    return (f"- the uniform average of the weights of {len(inputs)} checkpoints (the average itself was "
            "neither trained nor validated; its architecture and model space are theirs):\n"
            + "".join(one(r) for r in inputs))
