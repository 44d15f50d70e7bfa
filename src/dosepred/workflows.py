"""The commands' workflows as API functions: each ``dosepred`` command is one call into one of these
(or into :func:`~dosepred.predict.predict_to`, :func:`~dosepred.qa.check.run_qa`, ...), so whatever the CLI
does a script can do the same way, with the same checks and the same all-or-nothing outputs
(:mod:`dosepred.fsutil`: a non-empty output is replaced only with ``overwrite``; a failure leaves it
as it was).

Warnings (lacking ROIs, protocol lint, skipped patients) are raised with :mod:`warnings`; errors a
user can cause are ``ValueError`` / ``OSError`` subclasses with a message naming the file and rule.
"""

from __future__ import annotations

import contextlib
import html
import os
import shlex
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import evaluation as ev
from . import split, synth
from .baseline import distance_falloff
from .demo import run_demo
from .errors import InputError, name_some, recording_warnings
from .fsutil import check_apart, check_output, locked, output_dir, output_file, output_in_place, write_json
from .inference import InferenceOptions
from .io import cache, formats, openkbp
from .io.source import check_roi_map, checked, load_patients, open_source, predicted_words
from .progress import track
from .protocol import load_protocol, protocol_file
from .qa.calibrating import calibrate, calibration_path
from .qa.check import run_qa
from .report import ReportWriter
from .split import load_split, parse_split_arg

PathLike = str | os.PathLike


def _split_file(split: str | None) -> Path | None:
    """The file of a ``FILE:NAME`` split argument (an input); None without one (or a bare NAME, which
    the split's own parsing refuses)."""
    f = split.rsplit(":", 1)[0] if split and ":" in split else ""
    return Path(f) if f else None  # ':NAME' is no file (not '.'): parse_split_arg refuses it


#: the training-config fields that name inputs by a path, and their flags
_FLAGS = {"data": "data", "val": "val", "init": "init", "protocol": "protocol", "train_split": "split",
          "val_split": "val-split"}
#: those --resume refuses at another path (:func:`dosepred.training.checks.check_resumed_init`, a split
#: file of validation scores): giving the flag again does not help
_KEPT_BY_PATH = ("init", "val_split")


def _absolute_inputs(fields: dict[str, Any]) -> dict[str, Any]:
    """Training-config ``fields`` with their input paths absolute (a protocol's built-in name and a
    split's NAME kept): the run's config.json names the inputs wherever ``--resume`` is run from."""
    d = dict(fields)
    for k in _FLAGS:
        v = d.get(k)
        if not isinstance(v, str) or not v or (k == "protocol" and protocol_file(v) is None):
            continue
        f, _, name = v.rpartition(":") if k.endswith("split") else (v, "", "")
        if f:
            d[k] = os.path.abspath(f) + (f":{name}" if k.endswith("split") else "")
    return d


def import_patients(src: PathLike, out: PathLike, kind: str = "openkbp", roi_map: PathLike | None = None,
                    overwrite: bool = False) -> Any:
    """Read a source of ``kind`` (a format of :mod:`dosepred.io.formats` with a ``read_source``:
    openkbp, nifti, dicom) into a new cache at ``out``; all or nothing.
    Returns the opened :class:`~dosepred.io.cache.Cache`."""
    inputs = [src, roi_map]
    check_output(out, overwrite, inputs, folder=True)
    f = formats.find(kind)
    if f is None or f.read_source is None:
        raise InputError(f"unknown source kind {kind!r} ({formats.one_of(formats.importable())})")
    check_roi_map(src, f, roi_map)
    rs, it = f.read_source(src, roi_map)
    with output_dir(out, overwrite, inputs) as tmp:  # each plan dose checked against its prescriptions
        cache.write_cache(checked(it, src, f), tmp, source=str(Path(src).resolve()), roi_set=rs,
                          progress=True)
    return cache.Cache.open(out)


def export_cache(cache_dir: PathLike, out: PathLike, fmt: str = "openkbp", roi_format: str | None = None,
                 overwrite: bool = False) -> int:
    """Write every patient of a cache as ``fmt`` (a format of :mod:`dosepred.io.formats` with a
    ``write_patient``: openkbp, nifti, dicom) into ``out``; the count. ``roi_format``: one of the
    format's ROI layouts (``Format.roi_layouts``; None: its first)."""
    f = formats.find(fmt)
    if f is None or f.write_patient is None:
        raise InputError(f"unknown export format {fmt!r} ({formats.one_of(formats.exportable())})")
    layouts = [name for name, _ in f.roi_layouts]
    if roi_format is None:
        roi_format = layouts[0] if layouts else "labels"
    if layouts and roi_format not in layouts:
        raise InputError(f"--roi-format must be {formats.listed(layouts)} for {fmt}, got {roi_format!r}")
    if not layouts and roi_format != "labels":
        raise InputError(f"--roi-format {roi_format!r}: {fmt} has one ROI layout; the option is for "
                         f"{formats.one_of(tuple(x for x in formats.FORMATS if x.roi_layouts))}")
    c = cache.Cache.open(cache_dir)
    with output_dir(out, overwrite, [cache_dir]) as tmp:
        for p in track(c, description="exporting", total=len(c)):
            f.write_patient(p, tmp, roi_format)
    return len(c)


def synth_cohort(out: PathLike, patients: int, seed: int = 0, size: int = 64, extra_rois: int = 0,
                 overwrite: bool = False) -> Any:
    """A seeded synthetic cohort written as a cache; returns it opened."""
    synth.extra_roi_defs(extra_rois)  # validate before any work
    with output_dir(out, overwrite) as tmp:
        cache.write_cache(synth.iter_cohort(patients, seed, size, extra_rois), tmp,
                          source=f"synth seed={seed} size={size} extra_rois={extra_rois}",
                          roi_set=synth.roi_set(extra_rois), progress=True)
    return cache.Cache.open(out)


def make_split(src: PathLike, out: PathLike, method: str | None = None, ids: Sequence[str] | None = None,
               fractions: str | None = None, names: str | None = None, seed: int = 0,
               manifest: PathLike | None = None, date_column: str = "date",
               overwrite: bool = False) -> dict[str, Any]:
    """Split the patients of a source into named lists (``method``: random, ids or temporal; see
    :mod:`dosepred.split`) and write the split JSON; returns it."""
    if method is None:
        raise split.SplitError("choose exactly one of --random, --ids, --temporal")
    inputs = [src, manifest, *(f for f in ids or [] if "=" not in f and Path(f).is_file())]  # --ids files
    check_output(out, overwrite, inputs, file=True)
    s = open_source(src)
    known = list(s.ids)
    # the plans of one patient (one DICOM PatientID: an import names them pt_X_1, pt_X_2) go together
    groups = {i: str(h.get("patient_id") or "") for i, h in s.headers().items()}
    if method == "random":
        obj = split.random_split(known, fractions or "0.7,0.15,0.15", names, seed, groups)
    elif method == "ids":
        obj = split.ids_split(split.read_id_lists(ids or []), known)
        apart = split.groups_apart(obj["splits"], groups)
        if apart:  # the user's lists decide, but one patient's plans on two sides is leakage: said
            warnings.warn(f"the plans of one patient (PatientID) are in different splits: {apart}",
                          split.SplitWarning, stacklevel=2)
        listed = {i for lst in obj["splits"].values() for i in lst}
        left = [i for i in known if i not in listed]
        if left:  # the user's lists decide, but a patient left out of every one is said, not dropped silently
            warnings.warn(f"{len(left)} of the {len(known)} patients of {src} are in none of the lists given "
                          f"and so in no split: {name_some(left)}", split.SplitWarning, stacklevel=2)
    elif method == "temporal":
        if manifest is not None:
            dates = split.dates_from_manifest(manifest, date_column)
            split.check_known({"manifest": list(dates)}, known, "the data", manifest)
            lacking = [i for i in known if i not in dates]
            if lacking:
                raise split.SplitError(f"manifest {manifest} has no date for {name_some(lacking)}")
        elif s.cache is not None:
            dates = split.dates_from_cache(src)
        else:
            raise split.SplitError(f"--temporal on a {s.kind} folder needs --manifest FILE --date-column COL")
        obj = split.temporal_split(dates, fractions or "0.8,0.2", names, groups)
    else:
        raise split.SplitError(f"unknown split method {method!r} (random, ids or temporal)")
    obj["source"] = str(Path(src).resolve())
    with output_file(out, overwrite, inputs) as tmp:
        split.write_split(obj, tmp)
    return obj


def subset_cache(src: PathLike, split: str, out: PathLike, overwrite: bool = False) -> Any:
    """The patients of one split (``FILE:NAME``) of a cache as a new cache with the same ROI set, so
    a model trained on the cache reads it (``dosepred data subset``: the held-out patients that
    ``evaluate``, ``calibrate`` and ``qa`` read). Returns it opened."""
    f, name = parse_split_arg(split)
    check_output(out, overwrite, [src, f], folder=True)
    c = cache.Cache.open(src)
    ids = load_split(f, name, cache_ids=c.ids)
    # a cache of predicted doses stays one: its "prediction" record (how they were made, what calibrate
    # --predictions checks and qa --plans refuses) is kept; an older one's is its command string
    made = c.info.get("prediction")
    source = f"{Path(src).resolve()} split {split}"
    if made is None and str(c.info.get("source", "")).startswith("dosepred predict"):
        source = str(c.info["source"])
    with output_dir(out, overwrite, [src, f]) as tmp:
        cache.write_cache(c.patients(ids), tmp, source=source, roi_set=c.roi_set, progress=True,
                          record=None if made is None else {"prediction": made})
    return cache.Cache.open(out)


def baseline(data: PathLike, out: PathLike, falloff: float = 15.0, overwrite: bool = False) -> int:
    """No-learning predictions (:func:`dosepred.baseline.distance_falloff`) of every patient of a
    source, written as OpenKBP ``pt_N.csv`` files into ``out``; the count."""
    n = 0
    with output_dir(out, overwrite, [data]) as tmp:
        for p in track(load_patients(data, require_dose=False), description="baseline"):
            openkbp.write_dose_csv(tmp / f"{p.id}.csv", distance_falloff(p, falloff), p.possible_dose_mask)
            n += 1
        if n == 0:
            raise InputError(f"{data} holds no patients")
    return n


def evaluate_sources(reference: PathLike, prediction: PathLike, protocol: Any = "openkbp",
                     json_out: PathLike | None = None, report: PathLike | None = None,
                     allow_missing: bool = False, overwrite: bool = False, roi_map: PathLike | None = None
                     ) -> tuple[Any, list[str]]:
    """Score the predictions of a folder against the reference plans of a source (``dosepred
    evaluate``); optionally the JSON of all results and a self-contained HTML report. ``roi_map``:
    the ROI name map of a DICOM reference (an error for another kind). Returns the
    :class:`~dosepred.evaluation.CohortResult` and the reference ids that had no prediction."""
    inputs = [reference, prediction, roi_map, protocol_file(protocol)]
    for path, what in ((json_out, "--json"), (report, "--report")):  # refuse before any work
        if path is not None:
            check_output(path, overwrite, inputs, what, folder=path is report, file=path is not report)
    check_apart(json_out, report, "--json", "--report")
    pairs, missing = ev.match_predictions(reference, prediction, roi_map)
    if missing and not allow_missing:
        raise InputError(f"no prediction in {prediction} for {len(missing)} reference patient(s): "
                         f"{name_some(missing)} (use --allow-missing to evaluate the others)")
    if missing:
        warnings.warn(f"no prediction for {len(missing)} patient(s), skipped: {name_some(missing)}",
                      stacklevel=2)
    if not pairs:
        raise InputError(f"no reference patient of {reference} has a prediction in {prediction}")
    proto = load_protocol(protocol)
    ids = [i for i, _ in pairs]
    it: Any = (ev.iter_cases(reference, prediction, ids, roi_map=roi_map) if report is None
               else ev.iter_pairs(reference, prediction, ids, with_ct=True, roi_map=roi_map))
    outputs = contextlib.ExitStack()  # the report goes to a temporary folder until all succeeded
    writer = None
    if report is not None:
        tmp = outputs.enter_context(output_dir(report, overwrite, inputs, "--report"))
        writer = ReportWriter(tmp, title=f"dosepred evaluation: {prediction}", protocol=proto)
        it = writer.tap(it)
    # a reference of predicted doses (predict's cache): scores of predictions against predictions, said
    said = predicted_words(open_source(reference)) if cache.is_cache(reference) else None
    read: list[str] = []  # the warnings of the readers' input checks (sides swapped, dose outside targets)
    with outputs:  # all or nothing: a failure leaves --json and --report as they were
        with recording_warnings(read):
            res = ev.evaluate_cohort(it, proto, progress=True)
        # the JSON and the report, which a physicist may read alone, say what the console said
        res.warnings[:0] = [w for w in dict.fromkeys(read) if w not in res.warnings]
        if said is not None:
            res.warnings.insert(0, f"reference {reference}: {said}, not plans: the scores compare the "
                                   "predictions with these predictions")
        if json_out is not None:  # renamed into place with the report once both are written
            tmp_json = outputs.enter_context(output_file(json_out, overwrite, inputs, "--json"))
            # what was scored against what, as the report says it
            write_json(tmp_json, {"reference": str(reference), "prediction": str(prediction), **res.to_json(),
                                  "missing_predictions": missing})
        if writer is not None:
            # the report says who was left out, as the console and the JSON (missing_predictions) do
            left_out = ("" if not missing else "<div class='warn'>" + html.escape(
                f"not evaluated (no prediction): {len(missing)} patient(s), {name_some(missing, 10)}")
                + "</div>")
            scored = (f"<div class='meta'>reference plans {html.escape(str(reference))} &middot; predictions "
                      f"{html.escape(str(prediction))}</div>")
            writer.finish({"prediction": res}, intro=scored + left_out)
    for w in res.warnings:
        if w not in read:  # those were said as they came
            warnings.warn(w, stacklevel=2)
    return res, missing


def key_values(items: Sequence[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``key=value`` strings -> dict, values parsed as JSON when possible (numbers, true/false, null,
    lists), else kept as strings."""
    import json

    out: dict[str, Any] = {}
    for it in items or []:
        if "=" not in it:
            raise InputError(f"{flag} {it!r}: expected key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def train_run(out: PathLike, options: dict[str, Any], config: PathLike | None = None, resume: bool = False,
              overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``dosepred train``: the run's config from (lowest first) the defaults, ``out/config.json`` when
    resuming, the ``config`` file (JSON or TOML; its nulls unset fields) and ``options`` (their non-None
    values; ``loss_options`` merged key by key), then a fresh run
    written where ``--resume`` finds it or the run continued. A fresh run that fails or is interrupted
    before its first epoch is saved restores what was there; one that fails later stays, to be continued
    with ``--resume`` (a training run is hours of work; the log says so). An interrupted fresh run's
    ``KeyboardInterrupt`` carries ``run_kept`` (whether the new run stayed)."""
    from .training import TrainConfig, train

    out = Path(out)
    stored = out / "config.json"
    base = TrainConfig.load(stored) if resume and stored.is_file() else TrainConfig()
    was = base.to_dict()
    if config is not None:  # a file's null unsets a field; flags not given (None) leave it
        base = base.merged(_absolute_inputs(TrainConfig.read_file(config)), keep_none=True)
    cfg = base.merged({**_absolute_inputs(options), "out": str(out)})
    for k in _FLAGS:  # an input the run's config names (relative: before inputs were made absolute) not here
        v = _absolute_inputs(was)[k]
        f = v.rpartition(":")[0] if k.endswith("split") and v else v
        if resume and f and (v != was[k] or os.path.isabs(f)) and getattr(cfg, k) == was[k] and not Path(
                f).exists():
            again = f"give --{_FLAGS[k]} again" if k not in _KEPT_BY_PATH else ""
            why = ("a path relative to the folder the run was started in): resume from there"
                   + (f" or {again}" if again else "") if v != was[k] else
                   "the run was made on another machine, or its data moved?): " + (again or (
                       "a resumed run loads it and keeps it by this path, so put it back there (a symbolic "
                       "link will do)")))
            raise InputError(f"{stored}: {k} {was[k]!r} does not exist here ({why}")
    if not cfg.data:
        raise InputError(f"{out}: no training run to resume (no config.json); give --data CACHE to start "
                         "one" if resume else "give --data CACHE (or --resume an existing run)")
    inputs = [cfg.data, cfg.val, cfg.init, config]
    if not resume and not overwrite and (out / "checkpoints" / "last.pt").is_file():
        raise InputError(f"{out}: already holds a training run; use --resume to continue it, "
                         "--overwrite to replace it, or choose another --out")
    if resume:
        done = finished_epoch(out)
        if done is not None and done >= cfg.epochs:
            raise InputError(f"{out}: the run is finished (epoch {done} of {cfg.epochs} done); to train it "
                             f"longer, --resume with --epochs larger than {done}")
    if resume or os.environ.get("RANK", "0") != "0":
        # --resume continues the run in place (it must still not be one of the inputs); under
        # torchrun only rank 0 writes the run and owns its transaction
        check_output(out, True, inputs)
        if os.environ.get("RANK", "0") != "0":
            return train(cfg, resume=resume, log=log)
        with locked(out):  # not while another command trains this run
            return train(cfg, resume=resume, log=log)
    kept: list[bool] = []

    def resumable(run: Path) -> bool:
        kept.append((run / "checkpoints" / "last.pt").is_file())
        return kept[-1]

    # a fresh run replaces OUT: the files it reads (split files, a protocol file) may not lie in it
    inputs += [_split_file(cfg.train_split), _split_file(cfg.val_split), protocol_file(cfg.protocol)]
    try:
        with output_in_place(out, overwrite, inputs, keep_if=resumable):
            return train(cfg, resume=False, log=log)
    except KeyboardInterrupt as e:  # the command line says whether the new run stayed (to --resume)
        e.run_kept = bool(kept and kept[-1])  # type: ignore[attr-defined]
        raise
    except Exception as e:
        if kept and kept[-1] and getattr(e, "resumable", True):  # after a finished epoch: the run stays
            epoch = finished_epoch(out)
            (log or print)(f"{out} keeps its finished epochs (last: {epoch}); once the cause below is fixed, "
                           f"continue with `dosepred train --out {shlex.quote(str(out))} --resume`")
        raise


def finished_epoch(run: PathLike) -> int | None:
    """The last epoch a training run saved (``checkpoints/last.pt``, else ``prev.pt``); None when neither
    is readable (``--resume`` then says why)."""
    import torch

    for name in ("last.pt", "prev.pt"):
        f = Path(run) / "checkpoints" / name
        try:
            ck = torch.load(f, map_location="cpu", weights_only=True)
            return int(ck["epoch"])
        except Exception:  # noqa: BLE001, S112 - unreadable here: the trainer's --resume reports it
            continue
    return None


def demo(out: PathLike, seed: int = 0, overwrite: bool = False,
         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``dosepred demo`` (:func:`dosepred.demo.run_demo`), all or nothing: a failed or interrupted
    demo leaves ``out`` as it was (it has nothing to resume)."""
    with output_in_place(out, overwrite, keep_on_interrupt=False):
        return run_demo(out, seed=seed, log=log)


def calibrate_model(model: PathLike, data: PathLike, protocol: Any = "openkbp-clinical",
                    overwrite: bool = False, roi_map: PathLike | None = None, **kwargs: Any
                    ) -> tuple[Path, Any]:
    """:func:`dosepred.qa.calibrating.calibrate`, refusing to replace a model's calibration without
    ``overwrite``, and a source of too few patients before predicting any; ``roi_map``: the ROI name
    map of a DICOM ``data``."""
    if not Path(data).exists():
        raise FileNotFoundError(f"{data} does not exist")
    existing = calibration_path(model)
    if existing.is_file() and not overwrite:
        raise InputError(f"{existing} exists (the model's calibration); give --overwrite to replace it")
    return calibrate(model, data, protocol, roi_map=roi_map, **kwargs)


def parse_point(text: str | None) -> tuple[float, float, float] | None:
    """``"X,Y,Z"`` (mm) -> a point; None for None."""
    if text is None:
        return None
    try:
        point = tuple(float(v) for v in text.split(","))
    except ValueError:
        point = ()
    if len(point) != 3:
        raise InputError(f"--point must be three numbers X,Y,Z in mm, got {text!r}")
    return point  # type: ignore[return-value]


def qa_plans(model: PathLike, plans: PathLike, out: PathLike, protocol: Any = "openkbp-clinical",
             coverage: float = 0.9, json_out: PathLike | None = None, report: bool = True,
             report_max: int | None = None, point: str | None = None, overwrite: bool = False,
             roi_map: PathLike | None = None) -> Any:
    """``dosepred qa``: :func:`dosepred.qa.check.run_qa` into a new folder ``out`` (``qa.json``,
    ``report.html``) and the JSON also to ``json_out``, all or nothing; ``roi_map``: the ROI name map
    of a DICOM folder of plans. The run's warnings (``QAResult.warnings``, also in ``qa.json``) are
    Python warnings once the outputs are written (``warning:`` lines on stderr). Returns the
    :class:`~dosepred.qa.result.QAResult`."""
    import contextlib

    point_mm = parse_point(point)
    inputs = [model, plans, roi_map, protocol_file(protocol)]
    if isinstance(plans, (str, os.PathLike)) and not Path(plans).exists():
        raise FileNotFoundError(f"{plans} does not exist")
    for path, what in ((out, "--out"), (json_out, "--json")):  # refuse before any work
        if path is not None:
            check_output(path, overwrite, inputs, what, folder=path is out, file=path is not out)
    check_apart(json_out, out, "--json", "--out")
    with contextlib.ExitStack() as outputs:
        tmp = outputs.enter_context(output_dir(out, overwrite, inputs))
        res = run_qa(model, plans, protocol, coverage=coverage, report=tmp if report else None,
                     progress=True, report_max=report_max or None, point_mm=point_mm, roi_map=roi_map)
        write_json(tmp / "qa.json", res.to_json())
        if json_out is not None:
            tmp_json = outputs.enter_context(output_file(json_out, overwrite, inputs, "--json"))
            write_json(tmp_json, res.to_json())
    for w in res.warnings:  # on stderr with every other warning (and in qa.json), not among the tables
        if w not in res.shown:
            warnings.warn(w, stacklevel=2)
    return res


def predict_folder(model: PathLike, data: PathLike, out: PathLike, fmt: str = "openkbp",
                   options: Any = None, split: str | None = None, overwrite: bool = False,
                   roi_map: PathLike | None = None, dose_spacing: float | None = None) -> int:
    """``dosepred predict``: :func:`dosepred.predict.predict_to` of the patients of ``data`` (those of
    ``split``, ``FILE:NAME``) into a new folder ``out``, all or nothing; the count. ``options``: an
    :class:`~dosepred.inference.InferenceOptions` (its defaults when None); ``roi_map``: the ROI name
    map of a DICOM ``data``."""
    from .predict import predict_to

    inputs = [model, data, roi_map, _split_file(split)]
    check_output(out, overwrite, inputs, folder=True)
    ids = None
    if split:  # every patient it names must be in the data: one it lacks was left out without a word
        ids = load_split(*parse_split_arg(split), cache_ids=open_source(data, roi_map).ids)
    with output_dir(out, overwrite, inputs) as tmp:
        return predict_to(model, data, tmp, fmt, options if options is not None else InferenceOptions(),
                          ids=ids, dose_spacing=dose_spacing, roi_map=roi_map)


def make_ensemble(models: Sequence[PathLike], out: PathLike, weights: Sequence[float] | None = None,
                  overwrite: bool = False) -> Path:
    """``dosepred ensemble``: an ensemble folder at ``out`` of ``models`` (single models; ``weights``
    default equal), written whole or not at all (:func:`~dosepred.models.ensemble.write_ensemble`); the
    ``ensemble.json`` path."""
    from .models.checkpoint import write_ensemble
    from .models.tags import ENSEMBLE_FILE

    with output_dir(out, overwrite, list(models)) as tmp:
        write_ensemble(list(models), tmp, weights, final=out)
    return Path(out) / ENSEMBLE_FILE


def export_model(run: PathLike | Sequence[PathLike], out: PathLike, fp32: bool = False,
                 overwrite: bool = False, allow_mixed: bool = False) -> Path:
    """``dosepred export-model``: a small released model folder at ``out`` of one run or checkpoint,
    or of the average of the weights of several (:func:`~dosepred.models.checkpoint.average_checkpoints`;
    ``allow_mixed``: also of checkpoints trained with different losses, or one given twice); the
    model file's path."""
    from .models.checkpoint import export_model as export

    runs = [run] if isinstance(run, (str, os.PathLike)) else list(run)
    if allow_mixed and len(runs) == 1:
        raise InputError("--allow-mixed applies to averaging several checkpoints; one was given")
    with output_dir(out, overwrite, runs) as tmp:
        export(runs[0] if len(runs) == 1 else runs, tmp, half=not fp32, final=out, allow_mixed=allow_mixed)
    return Path(out) / "model.pt"
