"""``dosepred baseline``, ``evaluate``, ``calibrate`` and ``qa``: score predictions, check plans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import console as render
from .. import workflows
from ..errors import InputError
from ..io import formats
from .common import SOURCES, NoProgress, Overwrite, RoiMapOption, app, friendly, prediction_help, show

#: --prediction: what `predict --format` writes, from the table of formats
_MATCHED = [f.label for f in formats.prediction_formats() if f.match_doses is not None]
_PREDICTION = (f"Predicted doses as `dosepred predict --format` writes them: {prediction_help()}"
               + (f"; {' and '.join(_MATCHED)} doses are matched to the references by what they reference "
                  "and resampled onto their grids" if _MATCHED else "") + ".")


def _json_file(path: Path | None) -> None:
    """Refuse a ``--json`` path that is a folder (even an empty one, which --overwrite would replace):
    it names the JSON file to write."""
    if path is not None and path.is_dir():
        raise InputError(f"--json {path} is a folder, not a JSON file path (give a file name, such as "
                         f"{path / 'results.json'})")


Protocol = Annotated[str, typer.Option("--protocol", help="openkbp, openkbp-clinical or a protocol JSON "
                                       "file.")]


@app.command("baseline")
@friendly
def baseline(
    data: Annotated[Path, typer.Option("--data", help=f"Patients: {SOURCES}.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the OpenKBP pt_N.csv predictions.")],
    falloff: Annotated[float, typer.Option(help="Fall-off length in mm outside each target.")] = 15.0,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """No-learning reference: prescription x exp(-distance to target / falloff), in the possible-dose mask."""
    show([f"wrote {workflows.baseline(data, out, falloff, overwrite)} no-learning predictions to {out}"])


@app.command("evaluate")
@friendly
def evaluate(
    reference: Annotated[Path, typer.Option("--reference", help=f"Reference plans (with dose): {SOURCES}.")],
    prediction: Annotated[Path, typer.Option("--prediction", help=_PREDICTION)],
    protocol: Protocol = "openkbp",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all results to this JSON "
                                                  "file.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write a self-contained HTML report "
                                                "(report.html, images embedded) into this folder.")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Evaluate the patients that "
                                                "have a prediction; list the others.")] = False,
    show_metrics: Annotated[bool, typer.Option("--show-metrics", help="Print each patient's metric values "
                                               "(reference, prediction); the default when the protocol "
                                               "has no limits.")] = False,
    roi_map: RoiMapOption = None,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """Score predicted doses against reference plans (OpenKBP dose/DVH scores, PTV/OAR scores,
    protocol criteria)."""
    _json_file(json_out)
    res, missing = workflows.evaluate_sources(reference, prediction, protocol, json_out, report,
                                              allow_missing, overwrite, roi_map)
    show(render.evaluation(res, missing, show_metrics)
         + [f"wrote {p}" for p in (json_out, report and report / "report.html") if p is not None])


@app.command("calibrate")
@friendly
def calibrate(
    model: Annotated[Path, typer.Option("--model", help="Model folder (released model, ensemble or run "
                                        "folder).")],
    data: Annotated[Path, typer.Option("--data", help="Patients with plan doses that the model was NOT "
                                       f"trained on: {SOURCES}.")],
    protocol: Protocol = "openkbp-clinical",
    predictions: Annotated[Path | None, typer.Option("--predictions", help="Cache of the model's "
                                                     "predictions of DATA made as QA will predict "
                                                     "(`dosepred predict --format cache --no-amp`: "
                                                     "flipped, full precision, no --tta-shift); else "
                                                     "they are computed.")] = None,
    train_data: Annotated[Path | None, typer.Option("--train-data", help="The training patients (a source, "
                                                    "or a JSON of their ranges written before: docs/qa.md), "
                                                    "for the ranges of ROI volumes and spacings behind the "
                                                    "QA reliability flags (default: DATA).")] = None,
    splits: Annotated[int, typer.Option("--splits", help="Random patient splits of the "
                                        "cross-validation.")] = 200,
    rule: Annotated[str, typer.Option("--quantile-rule", help="interpolated (nominal coverage, "
                                      "docs/qa.md) or conservative (at least nominal).")] = "interpolated",
    roi_map: RoiMapOption = None,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """Calibrate prediction intervals of the protocol's DVH metrics (split conformal per metric
    family, chosen by cross-validation); writes MODEL/calibration.json."""
    path, cal = workflows.calibrate_model(model, data, protocol, overwrite, roi_map, predictions=predictions,
                                          train_data=train_data, splits=splits, progress=True, rule=rule)
    show([render.calibration(cal), f"wrote {path}"])


@app.command("qa")
@friendly
def qa(
    model: Annotated[Path, typer.Option("--model", help="Model folder with a calibration.json (of the "
                                        "released ones, models/openkbp-ensemble catches the most: "
                                        "docs/qa.md).")],
    plans: Annotated[Path, typer.Option("--plans", help=f"Plans with doses: {SOURCES}.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (report.html, qa.json).")],
    protocol: Protocol = "openkbp-clinical",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON "
                                                  "file (always written to OUT/qa.json).")] = None,
    coverage: Annotated[float, typer.Option("--coverage", help="Coverage of the intervals (0-1).")] = 0.9,
    report_max: Annotated[int, typer.Option("--report-max", help="Patients with images in the report, "
                                            "highest potential improvement first (0: all).")] = 0,
    no_report: Annotated[bool, typer.Option("--no-report", help="Only the JSON and the table.")] = False,
    overwrite: Overwrite = False,
    point: Annotated[str | None, typer.Option("--point", help="X,Y,Z: the report's views go through this "
                                              "patient point (LPS mm) instead of the target "
                                              "centroid.")] = None,
    roi_map: RoiMapOption = None,
    no_progress: NoProgress = False,
) -> None:
    """Knowledge-based plan QA: each plan's criteria against the model's achievable dose with
    calibrated intervals; flags, a ranked cohort summary, OUT/report.html and OUT/qa.json."""
    _json_file(json_out)
    res = workflows.qa_plans(model, plans, out, protocol, coverage, json_out, not no_report, report_max,
                             point, overwrite, roi_map)
    show(render.qa(res, coverage) + [f"wrote {p}" for p in (
        out / "qa.json", json_out, None if no_report else out / "report.html") if p is not None])
