"""``dosepred train``, ``predict``, ``export-model`` and ``demo``."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import console as render
from .. import workflows
from ..errors import InputError, interruption
from ..inference import TTA_SHIFT, InferenceOptions
from ..io import formats
from ..training.config import TrainConfig
from .common import (
    SOURCES,
    NoProgress,
    Overwrite,
    RoiMapOption,
    app,
    console,
    error,
    friendly,
    prediction_help,
    show,
)

_FLAGS = {"train_split": "--split"}  # flags whose name is not the field's
_TYPES = {"patch": str,  # one size or three comma-separated on the command line (a list in a --config file)
          "channels": str,  # comma-separated on the command line (a list in a --config file)
          "coarse": str}


def _train(out: Path, config: Path | None = None, resume: bool = False, loss_opt: list[str] | None = None,
           set_: list[str] | None = None, overwrite: bool = False, no_progress: bool = False,
           **fields: Any) -> None:
    """Train a 3D U-Net dose model on a cache (resume, fine-tune with --init, DDP under torchrun).
    Every training-config field is a flag (defaults in brackets); --config FILE (JSON or TOML) sets
    many, flags and --set win over it."""
    opts = {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}
    opts.update(workflows.key_values(set_, "--set"))
    if loss_opt:
        opts["loss_options"] = workflows.key_values(loss_opt, "--loss-opt")
    con = console()
    try:
        res = workflows.train_run(out, opts, config, resume, overwrite, log=con.print)
    except KeyboardInterrupt as e:
        how, code = interruption(e)
        kept = getattr(e, "run_kept", None)  # a fresh run: whether it stayed (else OUT is as it was)
        if kept is False:
            error(f"interrupted ({how}) before the first epoch ended: nothing to resume; {out} is left as "
                  "it was")
        elif (out / "checkpoints" / "last.pt").is_file():
            error(f"interrupted ({how}): {out} keeps its last finished epoch; continue with "
                 f"`dosepred train --out {shlex.quote(str(out))} --resume`")
        else:
            error(f"interrupted ({how}) before the first epoch ended: nothing to resume in {out}")
        raise typer.Exit(code) from None
    best = res.get("best")
    con.print(f"done: {res['global_step']} steps in {out}" + (
        f"; best epoch {best['epoch']} ({best['select']} {best['value']:.3f})"
        if best and "value" in best else ""))


def _train_signature() -> inspect.Signature:
    """The train command's options: a few of its own, then one per :class:`TrainConfig` field, its
    help the field's description (documented once, in training/config.py)."""
    fields = TrainConfig.model_fields

    def opt(name: str, t: Any, help: str, *flags: str, **kw: Any) -> inspect.Parameter:
        default = inspect.Parameter.empty if t is Path else False if t is bool else None
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                 annotation=Annotated[t, typer.Option(*flags, help=help, **kw)])

    def shown(v: Any) -> Any:
        return ("on" if v else "off") if isinstance(v, bool) else v[0] if isinstance(v, tuple) else \
            f"{v:.4g}" if isinstance(v, float) else "none" if v in (None, "") else v
    params = [
        opt("out", Path, fields["out"].description, "--out"),
        opt("config", Path | None, "Training config file (JSON or TOML; keys: the fields below).",
            "--config"),
        opt("resume", bool, "Continue RUN from checkpoints/last.pt.", "--resume"),
        opt("loss_opt", list[str] | None, fields["loss_options"].description, "--loss-opt",
            metavar="KEY=VALUE"),
        opt("set_", list[str] | None, "Any field below by its config key (repeatable).", "--set",
            metavar="KEY=VALUE"),
        opt("overwrite", bool, "Replace an existing run whole (never done without it).", "--overwrite"),
        opt("no_progress", bool, "Plain progress lines instead of bars.", "--no-progress")]
    for name, f in fields.items():
        if name in ("out", "loss_options"):
            continue
        args = [a for a in getattr(f.annotation, "__args__", None) or (f.annotation,) if a is not type(None)]
        choices = all(isinstance(a, str) for a in args)  # a Literal: the values
        t = _TYPES.get(name) or (str if choices else args[0])
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        help = f.description + (f" ({' | '.join(args)})" if choices else "") + (
            f" (config key {name})" if flag[2:] != name.replace("_", "-") else "")
        flags = (f"{flag}/--no-{flag[2:]}",) if t is bool else (flag,)
        default = shown(f.get_default(call_default_factory=True))
        params.append(opt(name, t | None, f"{help} [{default}]", *flags))
    return inspect.Signature(params)


_train.__signature__ = _train_signature()  # type: ignore[attr-defined]
app.command("train")(friendly(_train))


@app.command("predict")
@friendly
def predict(
    model: Annotated[Path, typer.Option("--model", help="Run folder, released model folder, ensemble "
                                        "folder (`dosepred ensemble`) or checkpoint.")],
    data: Annotated[Path, typer.Option("--data", help=f"Patients: {SOURCES}.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    fmt: Annotated[str, typer.Option("--format", help=f"{prediction_help()}.")] = "openkbp",
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")] = "auto",
    split: Annotated[str | None, typer.Option("--split", help="FILE:NAME: predict only these ids.")] = None,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Average with the prediction of the patient "
                                      "mirrored along its left-right axis (Left/Right ROIs swapped): a "
                                      "lower dose score for every released model, lower DVH-metric "
                                      "errors for the voxel-loss ones (docs/results.md), twice the "
                                      "time.")] = True,
    tta_shift: Annotated[bool, typer.Option("--tta-shift", help="Also average with the predictions of "
                                            "the input translated by 4 voxels per axis (twice the time "
                                            "again).")] = False,
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on a GPU (faster; ignored on "
                                      "the CPU). Plan QA and `calibrate` predict in full precision: give "
                                      "--no-amp for predictions `calibrate --predictions` will "
                                      "take.")] = True,
    allow_missing_rois: Annotated[bool, typer.Option(
        "--allow-missing-rois", help="Predict patients lacking an ROI every training patient had (empty "
        "channels) or with a prescribed target the model does not know (left out), a warning naming them; "
        "ROIs some training patients lacked too need no flag (a note).")] = False,
    dose_spacing: Annotated[float | None, typer.Option(
        "--dose-spacing", min=0.1, max=10.0, help="--format dicom: RTDOSE grid spacing in mm, 0.1-10 "
        "(default: the CT's, at least 2.5 mm per axis; a grid coarser than 10 mm flattens a head-and-neck "
        "dose).")] = None,
    roi_map: RoiMapOption = None,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """Predict whole-grid doses in the model's own space (axes and spacing of its training data) and
    write them on each patient's grid."""
    if dose_spacing is not None and not formats.get(fmt).takes_dose_spacing:
        takes = formats.listed([f.name for f in formats.FORMATS if f.takes_dose_spacing])
        raise InputError(f"--dose-spacing applies to --format {takes} only (a dose grid of its own), "
                         f"not to --format {fmt}")
    options = InferenceOptions(device=device, amp=amp, tta=tta, shifts=(TTA_SHIFT,) if tta_shift else (),
                               allow_missing_rois=allow_missing_rois)
    n = workflows.predict_folder(model, data, out, fmt, options, split=split, overwrite=overwrite,
                                 roi_map=roi_map, dose_spacing=dose_spacing)
    show([f"wrote {n} predicted doses ({fmt}) to {out}"])


@app.command("export-model")
@friendly
def export_model(
    run: Annotated[list[Path], typer.Argument(help="Run folder or checkpoint to export (several of one "
                                                   "model: their weights averaged).")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (model.pt, config.json, "
                                      "README.md).")],
    fp32: Annotated[bool, typer.Option("--fp32", help="Keep every weight in fp32 (default: tensors of "
                                       "2^18 or more elements in fp16, about half the size).")] = False,
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Average several checkpoints even when "
                                              "they were trained with different losses or one is given "
                                              "twice (refused without it).")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Write a small released model folder usable by `dosepred predict --model` (of one run, or the
    average of several fine-tunes of one model)."""
    f = workflows.export_model(run, out, fp32, overwrite, allow_mixed)
    show([f"wrote {f} ({f.stat().st_size / 1e6:.1f} MB)"])


@app.command("ensemble")
@friendly
def ensemble(
    models: Annotated[list[Path], typer.Argument(help="Two or more models (released model folders, runs or "
                                                      "checkpoints; single models) predicting the same ROIs "
                                                      "in the same model space.")],
    out: Annotated[Path, typer.Option("--out", help="Ensemble folder to write (ensemble.json naming the "
                                      "members, README.md; no weights of its own).")],
    weights: Annotated[str | None, typer.Option("--weights", help="Comma-separated weight per model, e.g. "
                                                "2,1 (normalised to sum to 1; default equal).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write an ensemble: a model folder whose dose is the weighted mean of its members' (each predicted
    as it would be alone). `predict`, `calibrate` and `qa` take it like any model."""
    ws = None
    if weights is not None:
        try:
            ws = [float(w) for w in weights.split(",")]
        except ValueError:
            raise InputError(f"--weights must be comma-separated numbers, e.g. 2,1; got {weights!r}"
                             ) from None
    f = workflows.make_ensemble(models, out, ws, overwrite)
    show([f"wrote {f} ({len(models)} members)"])


@app.command("demo")
@friendly
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (report.html, qa/, synthetic/, the data "
                                      "and runs).")] = Path("demo-out"),
    seed: Annotated[int, typer.Option("--seed", min=0,
                                      help="Seed of the synthetic cohort and training.")] = 0,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """The released models (MAE, MAE+CDM) and a no-learning dose on real OpenKBP validation patients
    shipped with the repository, plan QA of their plans; then train your own: one MAE warm-up on
    synthetic patients, MAE and MAE+CDM fine-tuned from it with the same budget; tables and reports.
    Run it from a clone of the repository (it reads models/ and examples/)."""
    res = workflows.demo(out, seed, overwrite, log=console().print)
    show(render.demo(res) + [f"wrote {res['report']}"])
