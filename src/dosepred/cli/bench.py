"""``dosepred bench ...``: benchmarks print a table; ``--json FILE`` writes the numbers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import console as render
from ..bench import bitmask as bitmask_bench
from ..bench import evaluate as evaluate_bench
from ..bench import example_patients
from ..bench import losses as losses_bench
from ..bench import networks as networks_bench
from ..bench import predict as predict_bench
from ..bench import qa_power as qa_power_bench
from ..bench.bitmask import BenchConfig
from ..bench.networks import DEFAULT_NETWORKS
from ..bench.qa_degrade import PowerConfig
from ..bench.qa_power import parse_amounts
from ..errors import InputError
from ..fsutil import check_output
from ..progress import enabled
from ..protocol import protocol_file
from .common import SOURCES, NoProgress, Overwrite, bench_app, console, friendly, show, write_json_out

JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON file.")]
Example = Annotated[Path | None, typer.Option("--data", help="OpenKBP folder of pt_* patients [the example "
                                              "patient shipped in examples/].")]


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers such as 10,40") from None


def _finish(name: str, res: dict, json_out: Path | None, overwrite: bool) -> None:  # type: ignore[type-arg]
    show(render.bench(name, res))
    write_json_out(json_out, overwrite, res)


def _log(otherwise: Any) -> Any:
    """Dim progress lines on the console while progress output is on, else ``otherwise``."""
    from rich.text import Text

    return (lambda m: console().print(Text(m, style="dim"))) if enabled() else otherwise


def _check(json_out: Path | None, overwrite: bool, inputs: list[Path] | None = None) -> None:
    if json_out is not None:  # refuse before any work
        check_output(json_out, overwrite, inputs or [], "--json", file=True)


@bench_app.command("evaluate")
@friendly
def evaluate(
    json_out: JsonOut = None, data: Example = None,
    patients: Annotated[int, typer.Option("--patients", help="Number of patients (0: all).")] = 0,
    cache_dir: Annotated[Path | None, typer.Option("--cache", help="Existing cache of the same patients "
                                                   "(else one is written to a temporary folder).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timing repeats (best is kept).")] = 1,
    overwrite: Overwrite = False,
) -> None:
    """Evaluation throughput (patients/s): dosepred from CSV and from the cache vs naive pandas."""
    if patients < 0:
        raise InputError(f"--patients must be >= 1 (0: all), got {patients}")
    data = data or example_patients()
    _check(json_out, overwrite, [data, cache_dir])
    if not data.is_dir():
        raise InputError(f"--data {data} does not exist (an OpenKBP folder of pt_* patients)")
    _finish("evaluate", evaluate_bench.run(data, patients or None, cache_dir, repeats), json_out, overwrite)


@bench_app.command("predict")
@friendly
def predict(
    json_out: JsonOut = None, data: Example = None,
    patient: Annotated[str, typer.Option("--patient", help="Patient folder name.")] = "pt_201",
    model: Annotated[Path, typer.Option("--model", help="Model to predict with.")] = Path(
        "models/openkbp-mae"),
    repeats: Annotated[int, typer.Option("--repeats", help="Timing repeats (best is kept).")] = 2,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads [all cores].")] = None,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Predict with test-time flipping, as `dosepred "
                                      "predict` does by default (twice the network passes).")] = True,
    overwrite: Overwrite = False,
) -> None:
    """Clinical-size prediction (512x512x150 CT at ~0.98x0.98x3 mm): resample in, predict, resample out."""
    data = data or example_patients()
    if not (data / patient).is_dir():
        raise InputError(f"--data {data} holds no patient {patient} (an OpenKBP folder of pt_* patients)")
    _check(json_out, overwrite, [data, model])
    _finish("predict", predict_bench.run(data, model, patient, repeats, threads, tta), json_out, overwrite)


@bench_app.command("bitmask")
@friendly
def bitmask(
    json_out: JsonOut = None,
    rois: Annotated[str, typer.Option("--rois", help="ROI counts to compare, comma-separated "
                                      "(10 = OpenKBP; more adds synthetic rings/PRVs).")] = "10,40",
    size: Annotated[int, typer.Option("--size", help="Synthetic volume size (voxels per axis).")] = 64,
    patch: Annotated[int, typer.Option("--patch", help="Training crop size (voxels per axis).")] = 48,
    steps: Annotated[int, typer.Option("--steps", help="Timed training steps per run.")] = 4,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps before them.")] = 1,
    repeats: Annotated[int, typer.Option("--repeats", help="Runs per pipeline (alternating; medians).")] = 3,
    patients: Annotated[int, typer.Option("--patients", help="Synthetic patients.")] = 8,
    batch: Annotated[int, typer.Option("--batch", help="Batch size.")] = 2,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    workers: Annotated[int, typer.Option("--workers", help="DataLoader worker processes.")] = 0,
    model: Annotated[str, typer.Option("--model", help="unet (dosepred's U-Net) or basicunet "
                                       "(MONAI BasicUNet, ~5x the compute).")] = "unet",
    pipelines: Annotated[str, typer.Option("--pipelines", help="Comma-separated subset of bitmask, "
                                           "onehot-npz, onehot-npy.")] = "bitmask,onehot-npz",
    threads: Annotated[int, typer.Option("--threads", help="torch threads per run (0: torch's default; "
                                         "1 keeps timings stable on a shared CPU).")] = 1,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Each run in a fresh "
                                          "subprocess (clean peak RSS).")] = True,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Cohort and crop seed.")] = 0,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """Bit-mask ROI pipeline vs one-hot float32 channels: disk, sample memory, load and step time."""
    _check(json_out, overwrite)
    cfg = BenchConfig(rois=_ints(rois, "--rois"), size=size, patch=patch, steps=steps, warmup=warmup,
                      repeats=repeats, patients=patients, batch=batch, device=device, workers=workers,
                      model=model, pipelines=tuple(p.strip() for p in pipelines.split(",") if p.strip()),
                      isolate=isolate, seed=seed, threads=threads)
    # one line per finished run even without progress output: a long run cut short (a time limit on
    # a lent GPU machine, say) still leaves its measurements in the log
    res = bitmask_bench.run(cfg, log=_log(lambda m: print(m, file=sys.stderr, flush=True)))
    _finish("bitmask", res, json_out, overwrite)


@bench_app.command("networks")
@friendly
def networks(
    json_out: JsonOut = None,
    network: Annotated[list[str] | None, typer.Option(
        "--network", help="A candidate as CHANNELS[+COARSE][:RES_UNITS][@HEAD], e.g. 16,32,64,128, "
        "16,32,64,128+128,128,256 (a coarse branch under the bottom), 16,32,64,128,256,512:1 or "
        "16,64,64,128+128,128,256@4 (a full-resolution head of 4 channels) "
        "(repeatable; the first is the reference) [the issue-24 candidates, the release first].")] = None,
    size: Annotated[int, typer.Option("--size", help="Voxels per axis of the synthetic patient.")] = 128,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps per run (median).")] = 3,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Runs per network, in turns.")] = 2,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda.")] = "cpu",
    threads: Annotated[int, typer.Option("--threads", min=1, help="Torch CPU threads per run.")] = 1,
    precisions: Annotated[str, typer.Option(
        "--precisions", help="fp32 and/or bf16 (bfloat16 autocast of the forward pass, as `train "
        "--cpu-bf16`), comma-separated: each network in each.")] = "fp32",
    overwrite: Overwrite = False,
) -> None:
    """Candidate U-Nets: seconds and peak memory (RSS on CPU, allocated on GPU) of one training step."""
    _check(json_out, overwrite)
    res = networks_bench.run(tuple(network) if network else DEFAULT_NETWORKS, size, steps, 1, repeats, device,
                             threads, log=_log(None),
                             precisions=tuple(p.strip() for p in precisions.split(",") if p.strip()))
    _finish("networks", res, json_out, overwrite)


@bench_app.command("losses")
@friendly
def losses(
    json_out: JsonOut = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Volume sizes (voxels per axis), comma-separated; "
                                       "the largest OpenKBP size is the full grid, smaller ones "
                                       "crops centred on the targets.")] = "64,128",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per loss (median).")] = 3,
    data: Annotated[Path | None, typer.Option("--data", help="OpenKBP patient folder (pt_N) or folder of "
                                              "them, or 'synthetic' (spheres) [the example patient shipped "
                                              "in examples/; spheres when it is absent].")] = None,
    losses: Annotated[str, typer.Option("--losses", help="Comma-separated subset of mae, mse, dvh, "
                                        "dvh-0.2gy, moment, cdm, cdm-clinical+constraint "
                                        "(empty: all).")] = "",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or all (cpu, and cuda when "
                                        "available).")] = "all",
    unet: Annotated[bool, typer.Option("--unet/--no-unet", help="Also time a U-Net training step.")] = True,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """Forward+backward time of each loss vs MAE and vs one U-Net training step."""
    if data is not None and not data.exists() and str(data) != "synthetic":
        raise InputError(f"--data {data} does not exist (an OpenKBP patient folder, a folder of them, or "
                         "'synthetic')")
    data = data or example_patients()
    _check(json_out, overwrite, [data] if data.exists() else [])
    res = losses_bench.run(_ints(sizes, "--sizes"), repeats, [device], data if data.exists() else None,
                           [x.strip() for x in losses.split(",") if x.strip()] or None, unet, _log(None))
    _finish("losses", {**res, "markdown": losses_bench.markdown(res)}, json_out, overwrite)


@bench_app.command("qa-power")
@friendly
def qa_power(
    model: Annotated[Path, typer.Option("--model", help="Model (its calibration.json names the methods QA "
                                        "uses; predicts when --prediction is not given).")],
    data: Annotated[Path, typer.Option("--data", help="Patients with plan doses the model was not trained "
                                       f"on, e.g. the validation split: {SOURCES}.")],
    json_out: JsonOut = None,
    prediction: Annotated[Path | None, typer.Option("--prediction", help="Cache of their predictions "
                                                    "(dosepred predict --format cache: flipped as QA "
                                                    "predicts with the model's calibration; --no-tta "
                                                    "with the pass options).")] = None,
    flip_prediction: Annotated[Path | None, typer.Option(
        "--flip-prediction", help="Cache predicted with --tta: adds the adaptive-flip candidate.")] = None,
    shift_prediction: Annotated[Path | None, typer.Option(
        "--shift-prediction", help="Cache predicted with --no-tta --tta-shift: adds adaptive-shift.")] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="Protocol of the criteria.")] = (
        "openkbp-clinical"),
    coverage: Annotated[float, typer.Option("--coverage", help="Interval coverage QA flags at.")] = 0.9,
    splits: Annotated[int, typer.Option("--splits", help="Random calibrate/check splits.")] = 200,
    calibration_patients: Annotated[int | None, typer.Option(
        "--calibration-patients", help="Patients calibrating in each split [two thirds].")] = None,
    oar_gy: Annotated[str, typer.Option("--oar-gy", help="OAR dose excesses (Gy).")] = "2,3,4,6,8",
    cold_gy: Annotated[str, typer.Option("--cold-gy", help="Target D95% deficits (Gy).")] = "1,2,3",
    hot_pct: Annotated[str, typer.Option("--hot-pct", help="PTV V110% excesses (% points).")] = "2,5,10",
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated subset of absolute, signed, "
                                         "normalised, centred, adaptive-*, qa [all available].")] = "",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Split seed.")] = 0,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """Plan QA's detection power: flags on plans degraded by known amounts vs on untouched plans."""
    _check(json_out, overwrite, [data, model, prediction, flip_prediction, shift_prediction,
                                 protocol_file(protocol)])
    cfg = PowerConfig(protocol=protocol, coverage=coverage, splits=splits,
                      calibration_patients=calibration_patients, seed=seed,
                      oar_gy=parse_amounts(oar_gy, "--oar-gy"), cold_gy=parse_amounts(cold_gy, "--cold-gy"),
                      hot_pct=parse_amounts(hot_pct, "--hot-pct"))
    passes = {k: v for k, v in (("flip", flip_prediction), ("shift", shift_prediction)) if v is not None}
    ms = [x.strip() for x in methods.split(",") if x.strip()] or None
    res = qa_power_bench.run(model, data, cfg, prediction, passes, ms, progress=True)
    _finish("qa-power", res, json_out, overwrite)
