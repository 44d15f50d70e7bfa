"""The ``dosepred`` command line: a thin typer shell over the API.

Heavy imports (torch, matplotlib, pydicom) stay inside the commands so ``--help`` is instant.
User mistakes end with one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="dosepred: 3D dose prediction for head-and-neck radiotherapy with clinical DVH "
                       "metric losses.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False)
data_app = typer.Typer(help="Import, export, synthesise and inspect datasets.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (print a table, --json FILE writes the numbers).",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def _err(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {msg}")


def friendly(fn):
    """Turn expected user errors into one clear message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .io.cache import CacheError
        from .metrics import MetricError

        try:
            return fn(*args, **kwargs)
        except (UserError, CacheError, MetricError, FileNotFoundError, ValueError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            _err(str(msg))
            raise typer.Exit(2) from None

    return wrapper


def _progress(no_progress: bool) -> None:
    from . import progress

    progress.set_enabled(False if no_progress else None)


NoProgress = Annotated[bool, typer.Option("--no-progress", help="Do not show progress bars.")]


def console():
    from rich.console import Console

    return Console(highlight=False)


# ============================================================================================ data

@data_app.command("import-openkbp")
@friendly
def data_import_openkbp(
    src: Annotated[Path, typer.Argument(help="Folder of OpenKBP pt_* folders (e.g. .../train-pats).")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    no_progress: NoProgress = False,
) -> None:
    """Read OpenKBP CSV patients into a compact cache (one .npz per patient + dataset.json)."""
    import warnings

    from .io import cache, openkbp

    _progress(no_progress)
    folders = openkbp.patient_folders(src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:  # all or nothing: a bad file aborts the import and leaves no cache behind
            c = cache.write_cache(openkbp.read_folder(src), out, source=str(Path(src).resolve()),
                                  progress=True)
        finally:  # warnings seen before a failure are still worth showing
            for msg in dict.fromkeys(str(w.message) for w in caught):
                _err(f"warning: {msg}")
    src_bytes = sum(f.stat().st_size for d in folders for f in d.glob("*.csv"))
    missing = {p["id"]: p["missing_rois"] for p in c.info["patients"] if p["missing_rois"]}
    con = console()
    con.print(f"wrote {len(c)} patients to {out}: {c.nbytes() / 1e6:.1f} MB "
              f"(source CSV {src_bytes / 1e6:.1f} MB, ratio {src_bytes / max(c.nbytes(), 1):.1f}x)")
    if missing:
        counts: dict[str, int] = {}
        for rois in missing.values():
            for r in rois:
                counts[r] = counts.get(r, 0) + 1
        con.print(f"{len(missing)} patients lack some ROIs (not contoured; `dosepred data inspect` lists "
                  "them): " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda x: -x[1])))


@data_app.command("export-openkbp")
@friendly
def data_export_openkbp(
    cache_dir: Annotated[Path, typer.Argument(help="Cache folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (pt_* folders are written inside).")],
    no_progress: NoProgress = False,
) -> None:
    """Write a cache back in the native OpenKBP layout."""
    from .io import cache, openkbp
    from .progress import track

    _progress(no_progress)
    c = cache.Cache.open(cache_dir)
    for p in track(c, description="exporting", total=len(c)):
        openkbp.write_patient(p, out)
    console().print(f"wrote {len(c)} patients to {out}")


@data_app.command("inspect")
@friendly
def data_inspect(cache_dir: Annotated[Path, typer.Argument(help="Cache folder.")]) -> None:
    """Print a table of the cache's patients, ROIs present and sizes."""
    from rich.table import Table

    from .io import cache

    c = cache.Cache.open(cache_dir)
    rs = c.roi_set
    t = Table(title=f"{cache_dir}: {len(c)} patients, {len(rs)} ROIs, {c.nbytes() / 1e6:.1f} MB")
    t.add_column("patient")
    t.add_column("shape")
    t.add_column("spacing (mm)")
    t.add_column("ROIs")
    t.add_column("missing")
    t.add_column("dose")
    t.add_column("MB", justify="right")
    for e in c.info["patients"]:
        miss = e.get("missing_rois", [])
        t.add_row(e["id"], "x".join(map(str, e["shape"])), " x ".join(f"{s:.3g}" for s in e["spacing"]),
                  f"{len(rs) - len(miss)}/{len(rs)}", ", ".join(miss) or "-",
                  "yes" if e.get("has_dose") else "no",
                  f"{(c.root / e['file']).stat().st_size / 1e6:.2f}")
    con = console()
    con.print(t)
    con.print("ROI set (bit: name kind Rx): " + "; ".join(
        f"{k}: {r.name} {r.kind}{f' {r.prescription:g} Gy' if r.prescription else ''}"
        for k, r in enumerate(rs)))


def _print_warnings(caught) -> None:
    for w in caught:
        _err(f"warning: {w.message}")


@data_app.command("import-dicom")
@friendly
def data_import_dicom(
    src: Annotated[Path, typer.Argument(help="Folder with CT series, RTSTRUCT and RTDOSE files (searched "
                                             "recursively; one patient per folder or mixed).")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    roi_map: Annotated[Path | None, typer.Option(
        "--roi-map", help="JSON: clinical ROI name -> canonical name (null ignores it); optional "
        "kinds/prescriptions.")] = None,
    no_progress: NoProgress = False,
) -> None:
    """Import DICOM RT (CT + RTSTRUCT + RTDOSE) into a cache; ROI names are mapped to canonical ones."""
    import warnings

    from .io import cache, dicom

    _progress(no_progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rs, ids, it = dicom.iter_dicom_folder(src, roi_map)
        c = cache.write_cache(it, out, source=str(Path(src).resolve()), roi_set=rs, progress=True)
    _print_warnings(caught)
    con = console()
    con.print(f"wrote {len(c)} patients to {out}: ROIs "
              + ", ".join(f"{r.name} ({r.kind}{f' {r.prescription:g} Gy' if r.prescription else ''})"
                          for r in rs))
    for e in c.info["patients"]:
        m = e["meta"]
        con.print(f"  {e['id']}: {'x'.join(map(str, e['shape']))}, dose {'yes' if e['has_dose'] else 'no'}, "
                  f"possible-dose mask from {m.get('possible_dose_mask')}"
                  + (f", missing {', '.join(e['missing_rois'])}" if e["missing_rois"] else ""))


@data_app.command("export-dicom")
@friendly
def data_export_dicom(
    cache_dir: Annotated[Path, typer.Argument(help="Cache folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (one folder per patient).")],
    no_progress: NoProgress = False,
) -> None:
    """Write each patient as a CT series + RTSTRUCT (+ RTDOSE when it has a dose)."""
    from .io import cache, dicom
    from .progress import track

    _progress(no_progress)
    c = cache.Cache.open(cache_dir)
    for p in track(c, description="exporting", total=len(c)):
        dicom.write_dicom(p, out)
    console().print(f"wrote {len(c)} patients to {out}")


@data_app.command("import-nifti")
@friendly
def data_import_nifti(
    src: Annotated[Path, typer.Argument(help="A NIfTI patient folder (ct.nii.gz, ...) or a folder of them.")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    no_progress: NoProgress = False,
) -> None:
    """Import NIfTI patients (ct, dose, possible_dose_mask, rois/<name> or roi_codes + rois.json)."""
    import warnings

    from .io import cache, nifti

    _progress(no_progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rs, it = nifti.iter_nifti_folder(src)
        c = cache.write_cache(it, out, source=str(Path(src).resolve()), roi_set=rs, progress=True)
    _print_warnings(caught)
    console().print(f"wrote {len(c)} patients to {out}: ROIs {', '.join(rs.names)}")


@data_app.command("export-nifti")
@friendly
def data_export_nifti(
    cache_dir: Annotated[Path, typer.Argument(help="Cache folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (one folder per patient).")],
    roi_format: Annotated[str, typer.Option("--roi-format", help="labels (rois/<name>.nii.gz) or codes "
                                            "(roi_codes.nii.gz + rois.json).")] = "labels",
    no_progress: NoProgress = False,
) -> None:
    """Write each patient as NIfTI files with the affine carrying spacing, orientation and origin."""
    from .io import cache, nifti
    from .progress import track

    if roi_format not in ("labels", "codes"):
        raise UserError(f"--roi-format must be labels or codes, got {roi_format!r}")
    _progress(no_progress)
    c = cache.Cache.open(cache_dir)
    for p in track(c, description="exporting", total=len(c)):
        nifti.write_patient(p, out, roi_format)
    console().print(f"wrote {len(c)} patients to {out}")


@data_app.command("synth")
@friendly
def data_synth(
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    seed: Annotated[int, typer.Option("--seed", help="Cohort seed (same seed, same data).")] = 0,
    size: Annotated[int, typer.Option("--size", min=8, help="Grid size (size^3 voxels).")] = 64,
    extra_rois: Annotated[int, typer.Option("--extra-rois", min=0,
                                            help="Add K rings/PRVs to the 10 OpenKBP ROIs (max 54).")] = 0,
    no_progress: NoProgress = False,
) -> None:
    """Write a seeded synthetic H&N cohort (OpenKBP ROI names, plausible dose) as a cache."""
    from . import synth
    from .io import cache

    _progress(no_progress)
    synth.extra_roi_defs(extra_rois)  # validate before any work
    c = cache.write_cache(synth.iter_cohort(patients, seed, size, extra_rois), out,
                          source=f"synth seed={seed} size={size} extra_rois={extra_rois}",
                          roi_set=synth.roi_set(extra_rois), progress=True)
    console().print(f"wrote {len(c)} synthetic patients ({size}^3, {len(c.roi_set)} ROIs, seed {seed}) "
                    f"to {out}: {c.nbytes() / 1e6:.1f} MB")


@data_app.command("split")
@friendly
def data_split(
    cache_dir: Annotated[Path, typer.Argument(help="Cache (or OpenKBP folder) whose patients to split.")],
    out: Annotated[Path, typer.Option("--out", help="Split JSON to write.")],
    random: Annotated[bool, typer.Option("--random", help="Seeded random split by --fractions.")] = False,
    ids: Annotated[list[str] | None, typer.Option(
        "--ids", help="User lists: name=pt_1,pt_2 (repeatable) or a JSON/text file.")] = None,
    temporal: Annotated[bool, typer.Option("--temporal", help="Earliest dates to the first split.")] = False,
    fractions: Annotated[str | None, typer.Option(
        "--fractions", help="Fractions or counts, e.g. 0.7,0.15,0.15 or 137,37.")] = None,
    names: Annotated[str | None, typer.Option("--names", help="Split names, e.g. train,val,test.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --random.")] = 0,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="CSV: an id and a date column.")] = None,
    date_column: Annotated[str, typer.Option("--date-column", help="Date column of --manifest.")] = "date",
) -> None:
    """Split a dataset's patients into named lists (train/val/test) and write them as JSON."""
    from . import split
    from .io import cache, openkbp

    if sum([random, bool(ids), temporal]) != 1:
        raise UserError("choose exactly one of --random, --ids, --temporal")
    if cache.is_cache(cache_dir):
        known = cache.Cache.open(cache_dir).ids
    elif openkbp.is_openkbp_folder(cache_dir):
        known = [f.name for f in openkbp.patient_folders(cache_dir)]
    else:
        raise UserError(f"{cache_dir} is neither a dosepred cache nor an OpenKBP folder")
    if random:
        obj = split.random_split(known, fractions or "0.7,0.15,0.15", names, seed)
    elif ids:
        obj = split.ids_split(split.read_id_lists(ids), known)
    else:
        if manifest is not None:
            dates = split.dates_from_manifest(manifest, date_column)
            split._check_known({"manifest": list(dates)}, known, "the data", manifest)
            lacking = [i for i in known if i not in dates]
            if lacking:
                raise UserError(f"manifest {manifest} has no date for {', '.join(lacking[:5])}"
                                f"{' ...' if len(lacking) > 5 else ''}")
        elif cache.is_cache(cache_dir):
            dates = split.dates_from_cache(cache_dir)
        else:
            raise UserError("--temporal on an OpenKBP folder needs --manifest FILE --date-column COL")
        obj = split.temporal_split(dates, fractions or "0.8,0.2", names)
    obj["source"] = str(Path(cache_dir).resolve())
    split.write_split(obj, out)
    console().print(f"wrote {out} ({obj['method']}): " + ", ".join(
        f"{k} {len(v)}" for k, v in obj["splits"].items()))


# ======================================================================================= baseline

@app.command("baseline")
@friendly
def baseline_cmd(
    data: Annotated[Path, typer.Option("--data", help="Cache or OpenKBP folder of pt_* patients.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the OpenKBP pt_N.csv predictions.")],
    falloff: Annotated[float, typer.Option(help="Fall-off length in mm outside each target.")] = 15.0,
    no_progress: NoProgress = False,
) -> None:
    """No-learning reference: prescription x exp(-distance to target / falloff), in the possible-dose mask."""
    from .baseline import distance_falloff
    from .io import cache, openkbp
    from .progress import track

    _progress(no_progress)
    n = 0
    for p in track(cache.load_patients(data, require_dose=False), description="baseline"):
        openkbp.write_dose_csv(out / f"{p.id}.csv", distance_falloff(p, falloff), p.possible_dose_mask)
        n += 1
    console().print(f"wrote {n} no-learning predictions to {out}")


# ======================================================================================= evaluate

def _fmt_num(x: float, nd: int = 3) -> str:
    return "-" if x != x else f"{x:.{nd}f}"


@app.command("evaluate")
@friendly
def evaluate_cmd(
    reference: Annotated[Path, typer.Option("--reference", help="Reference plans: a cache or an OpenKBP "
                                            "folder of pt_* patients (with dose).")],
    prediction: Annotated[Path, typer.Option("--prediction", help="Folder of predicted doses (OpenKBP "
                                             "pt_N.csv per patient) or a cache holding doses "
                                             "(`dosepred predict --format cache`, the fastest to read).")],
    protocol: Annotated[str, typer.Option("--protocol", help="openkbp, openkbp-clinical or a protocol "
                                          "JSON file.")] = "openkbp",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all results to this JSON "
                                                  "file.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write an HTML report (report.html + "
                                                "PNGs) into this folder.")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Evaluate the patients that "
                                                "have a prediction; list the others.")] = False,
    no_progress: NoProgress = False,
) -> None:
    """Score predicted doses against reference plans (OpenKBP dose/DVH scores, PTV/OAR scores,
    protocol criteria)."""
    from rich.table import Table

    from . import evaluation as ev
    from ._malloc import keep_freed_memory
    from .protocol import load_protocol

    _progress(no_progress)
    keep_freed_memory()  # patient after patient of same-sized arrays: reuse freed memory
    pairs, missing = ev.match_predictions(reference, prediction)
    if missing and not allow_missing:
        raise UserError(f"no prediction in {prediction} for {len(missing)} reference patient(s): "
                        f"{', '.join(missing)} (use --allow-missing to evaluate the others)")
    if missing:
        from rich.console import Console

        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[bold yellow]warning:[/] no prediction for {len(missing)} patient(s), skipped: "
            f"{', '.join(missing)}")
    if not pairs:
        raise UserError(f"no reference patient of {reference} has a prediction in {prediction}")
    proto = load_protocol(protocol)
    ids = [i for i, _ in pairs]
    it = ev.iter_pairs(reference, prediction, ids, with_ct=report is not None, compact=report is None)
    writer = None
    if report is not None:
        from .report import ReportWriter
        writer = ReportWriter(report, title=f"dosepred evaluation: {prediction}", protocol=proto)
        it = writer.tap(it)
    res = ev.evaluate_cohort(it, proto, progress=True)

    con = console()
    t = Table(title=f"{len(res.patients)} patients, protocol {proto.name}")
    for col in ("patient", "dose score", "DVH score", "PTV score", "OAR score", "criteria passed"):
        t.add_column(col, justify="left" if col == "patient" else "right")
    for p in res.patients:
        t.add_row(p.id, _fmt_num(p.dose_score), _fmt_num(p.dvh_score), _fmt_num(p.ptv_score),
                  _fmt_num(p.oar_score), "-" if not p.checked else
                  f"{sum(bool(c.pred_pass) for c in p.checked)}/{len(p.checked)}")
    t.add_section()
    t.add_row("[bold]cohort[/]", _fmt_num(res.dose_score), _fmt_num(res.dvh_score), _fmt_num(res.ptv_score),
              _fmt_num(res.oar_score), _fmt_num(res.criteria_pass_rate, 1) + " %")
    con.print(t)
    rows = res.criteria_table()
    if rows:
        ct = Table(title="criteria (patients passing)")
        for col in ("criterion", "prediction", "reference", "agree"):
            ct.add_column(col, justify="left" if col == "criterion" else "right")
        for r in rows:
            n = r["n"]
            worse = r["pred_pass"] < r["ref_pass"]
            style = "green" if r["pred_pass"] == n else ("red" if worse else "yellow")
            ct.add_row(r["criterion"],
                       f"[{style}]{r['pred_pass']}/{n}[/]", f"{r['ref_pass']}/{n}", f"{r['agree']}/{n}")
        con.print(ct)
        con.print(f"criteria pass rate: prediction {_fmt_num(res.criteria_pass_rate, 1)} %, reference "
                  f"{_fmt_num(res.reference_pass_rate, 1)} %, "
                  f"agreement {_fmt_num(res.criteria_agreement, 1)} %")
    if missing:
        con.print(f"not evaluated (no prediction): {', '.join(missing)}")
    if json_out is not None:
        js = res.to_json()
        js["missing_predictions"] = missing
        from .io.cache import write_json_atomic

        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_out, js)
        con.print(f"wrote {json_out}")
    if writer is not None:
        path = writer.finish({"prediction": res})
        con.print(f"wrote {path}")


@bench_app.command("evaluate")
@friendly
def bench_evaluate(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON "
                                                  "file.")] = None,
    data: Annotated[Path, typer.Option("--data", help="OpenKBP folder of pt_* patients.")] = Path(
        "/work/data/openkbp/provided-data/validation-pats"),
    patients: Annotated[int, typer.Option("--patients", help="Number of patients (0: all).")] = 0,
    cache_dir: Annotated[Path | None, typer.Option("--cache", help="Existing cache of the same patients "
                                                   "(else one is written to a temporary folder).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timing repeats (best is kept).")] = 1,
) -> None:
    """Evaluation throughput (patients/s): dosepred from CSV and from the cache vs naive pandas."""
    from rich.table import Table

    from .bench.evaluate import run
    from .io.cache import write_json_atomic

    if not data.is_dir():
        raise UserError(f"--data {data} does not exist (an OpenKBP folder of pt_* patients)")
    res = run(data, patients or None, cache_dir, repeats)
    t = Table(title=f"evaluation throughput, {res['patients']} patients (OpenKBP dose + DVH scores)")
    t.add_column("path")
    t.add_column("seconds", justify="right")
    t.add_column("patients/s", justify="right")
    t.add_column("vs naive", justify="right")
    t.add_column("vs dosepred CSV", justify="right")
    for r in res["rows"]:
        t.add_row(r["path"], f"{r['seconds']:.2f}", f"{r['patients_per_s']:.2f}",
                  f"{r['speedup_vs_naive']:.1f}x", f"{r['speedup_vs_csv']:.1f}x")
    console().print(t)
    console().print(f"cache format version {res['cache_version']}, allocator: {res['allocator']}, "
                    f"best of {res['repeats']} repeat(s)")
    if json_out is not None:
        write_json_atomic(json_out, res)


@bench_app.command("bitmask")
@friendly
def bench_bitmask(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON "
                                                  "file.")] = None,
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
    seed: Annotated[int, typer.Option("--seed", help="Cohort and crop seed.")] = 0,
    no_progress: NoProgress = False,
) -> None:
    """Bit-mask ROI pipeline vs one-hot float32 channels: disk, sample memory, load and step time."""
    from .bench.bitmask import BenchConfig, run, table
    from .io.cache import write_json_atomic
    from .progress import enabled

    _progress(no_progress)
    try:
        ks = tuple(int(x) for x in rois.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--rois {rois!r}: expected comma-separated integers such as 10,40") from None
    cfg = BenchConfig(rois=ks, size=size, patch=patch, steps=steps, warmup=warmup, repeats=repeats,
                      patients=patients, batch=batch, device=device, workers=workers, model=model,
                      pipelines=tuple(p.strip() for p in pipelines.split(",") if p.strip()),
                      isolate=isolate, seed=seed, threads=threads)
    con = console()
    # one line per finished run even without progress output: a long run cut short (a time limit on
    # a lent GPU machine, say) still leaves its measurements in the log
    log = ((lambda m: con.print(f"[dim]{m}[/]")) if enabled()
           else (lambda m: print(m, file=sys.stderr, flush=True)))
    res = run(cfg, log=log)
    con.print(table(res))
    m = res["machine"]
    con.print(f"model: {res['model']}; loss: {res['loss']}; {m['cpu_count']} CPU cores, "
              f"{res['torch_threads']} torch threads per run, {m.get('cuda_device', 'no GPU used')}; "
              f"{res['seconds']:.0f} s")
    for tg in res["targets"]:
        mark = "[green]met[/]" if tg["met"] else "[red]not met[/]"
        con.print(f"K={tg['rois']} {tg['pipeline']}: {tg['what']}: {tg['value']:.2f}x {mark}")
    if json_out is not None:
        write_json_atomic(json_out, res)


@bench_app.command("losses")
@friendly
def bench_losses(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON "
                                                  "file.")] = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Volume sizes (voxels per axis), comma-separated; "
                                       "the largest OpenKBP size is the full grid, smaller ones "
                                       "crops centred on the targets.")] = "64,128",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per loss (median).")] = 3,
    data: Annotated[Path, typer.Option("--data", help="OpenKBP patient folder (pt_N) or folder of "
                                       "them; synthetic spheres when absent.")] = Path(
        "/work/shared/data/openkbp/sample/train-pats"),
    losses: Annotated[str, typer.Option("--losses", help="Comma-separated subset of mae, mse, dvh, "
                                        "dvh-0.2gy, moment, cdm, cdm-clinical+constraint "
                                        "(empty: all).")] = "",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or all (cpu, and cuda when "
                                        "available).")] = "all",
    unet: Annotated[bool, typer.Option("--unet/--no-unet", help="Also time a U-Net training step.")] = True,
    no_progress: NoProgress = False,
) -> None:
    """Forward+backward time of each loss vs MAE and vs one U-Net training step."""
    from .bench.losses import markdown, run, table
    from .io.cache import write_json_atomic
    from .progress import enabled

    _progress(no_progress)
    try:
        sz = tuple(int(x) for x in sizes.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--sizes {sizes!r}: expected comma-separated integers such as 64,128") from None
    if device not in ("cpu", "cuda", "all"):
        raise UserError(f"--device must be cpu, cuda or all, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
    con = console()
    log = (lambda m: con.print(f"[dim]{m}[/]")) if enabled() else None
    res = run(sz, repeats, None if device == "all" else [device], data if data.exists() else None,
              [x.strip() for x in losses.split(",") if x.strip()] or None, unet, log)
    con.print(table(res))
    m = res["machine"]
    con.print(f"model: {res['model']}; {m['cpu_count']} CPU cores, {m['torch_threads']} torch threads, "
              f"{m.get('cuda_device', 'no GPU')}; load average {m.get('load_average', '?')}; "
              f"{res['seconds']:.0f} s")
    tg = res["target"]
    if tg["values"]:
        mark = "[green]met[/]" if tg["met"] else "[red]not met[/]"
        con.print(f"{tg['what']}: " + ", ".join(f"{k} {v:.3f}" for k, v in tg["values"].items()) + f" {mark}")
    if json_out is not None:
        res["markdown"] = markdown(res)
        write_json_atomic(json_out, res)


# ========================================================================== train / predict / demo

def _parse_opts(items: list[str] | None) -> dict:
    """``key=value`` strings -> dict, values parsed as JSON when possible (numbers, true/false, lists)."""
    import json

    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--loss-opt {it!r}: expected key=value")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@app.command("train")
@friendly
def train_cmd(
    out: Annotated[Path, typer.Option("--out", help="Run folder (config, checkpoints, metrics.csv, tb/).")],
    data: Annotated[Path | None, typer.Option("--data", help="Training cache (optional with "
                                               "--resume).")] = None,
    val: Annotated[Path | None, typer.Option("--val", help="Validation cache (whole-grid scores pick "
                                             "best.pt).")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Loss spec, e.g. mae, mae+cdm, "
                                             "mae+0.5*dvh.")] = None,
    protocol: Annotated[str | None, typer.Option("--protocol", help="Protocol for the CDM loss and "
                                                 "validation: openkbp, openkbp-clinical or a JSON "
                                                 "file.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Number of epochs [100].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue RUN from checkpoints/last.pt.")] = False,
    init: Annotated[Path | None, typer.Option("--init", help="Start from these weights (run, model "
                                              "folder or .pt; fresh optimiser).")] = None,
    patch: Annotated[int | None, typer.Option("--patch", help="Crop / window size [64].")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Crops per step (per process) [2].")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="AdamW learning rate [3e-4].")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="cosine | constant | step.")] = None,
    base: Annotated[int | None, typer.Option("--base", help="U-Net base channels [16].")] = None,
    levels: Annotated[int | None, typer.Option("--levels", help="U-Net levels [4].")] = None,
    res_units: Annotated[int | None, typer.Option("--res-units", help="Residual units per U-Net level "
                                                  "(0: plain convolutions) [2].")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option("--steps-per-epoch", help="Steps per epoch "
                                                        "[one crop per training patient].")] = None,
    val_patients: Annotated[int | None, typer.Option("--val-patients", help="Validate on the first N "
                                                     "validation patients.")] = None,
    val_every: Annotated[int | None, typer.Option("--val-every", help="Validate every N epochs [5].")] = None,
    select: Annotated[str | None, typer.Option("--select", help="best.pt by: dvh | dose | ptv | oar | "
                                               "dose+dvh [dvh].")] = None,
    loss_opt: Annotated[list[str] | None, typer.Option("--loss-opt", help="Loss option key=value "
                                                       "(repeatable), e.g. cdm_tau=0.5.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="FILE:NAME: train on these ids "
                                              "of --data.")] = None,
    val_split: Annotated[str | None, typer.Option("--val-split", help="FILE:NAME: validate on these "
                                                  "ids.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of weights and crop sampling [0].")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA [on].")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes [0].")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads [all cores].")] = None,
    stop_after: Annotated[int | None, typer.Option("--stop-after", help="End after this epoch (a job "
                                                   "slice); --resume continues exactly.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Any training-config field key=value "
                                                   "(repeatable), e.g. ema_decay=0.99, rotate_p=0.5, "
                                                   "shift=true.")] = None,
    no_progress: NoProgress = False,
) -> None:
    """Train a 3D U-Net dose model on a cache (resume, fine-tune with --init, DDP under torchrun)."""
    from .training import TrainConfig, train

    _progress(no_progress)
    overrides = dict(data=str(data) if data else None, val=str(val) if val else None, loss=loss,
                     protocol=protocol, epochs=epochs, init=str(init) if init else None,
                     patch=(patch,) * 3 if patch else None, batch=batch, lr=lr, schedule=schedule, base=base,
                     levels=levels, res_units=res_units, steps_per_epoch=steps_per_epoch,
                     val_patients=val_patients,
                     val_every=val_every, select=select, train_split=split, val_split=val_split, seed=seed,
                     device=device, amp=amp, workers=workers, threads=threads, out=str(out),
                     stop_after=stop_after)
    if loss_opt:
        overrides["loss_options"] = _parse_opts(loss_opt)
    overrides.update(_parse_opts(set_))
    stored = out / "config.json"
    if resume and stored.is_file():
        cfg = TrainConfig.load(stored).merged(overrides)
    else:
        if data is None:
            raise UserError("give --data CACHE (or --resume an existing run)")
        cfg = TrainConfig().merged(overrides)
    con = console()
    res = train(cfg, resume=resume, log=con.print)
    best = res.get("best")
    con.print(f"done: {res['global_step']} steps in {out}"
              + (f"; best epoch {best['epoch']} ({best['select']} {best['value']:.3f})"
                 if best and "value" in best else ""))


@app.command("predict")
@friendly
def predict_cmd(
    model: Annotated[Path, typer.Option("--model", help="Run folder, released model folder or checkpoint.")],
    data: Annotated[Path, typer.Option("--data", help="Cache or OpenKBP folder of pt_* patients.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    fmt: Annotated[str, typer.Option("--format", help="openkbp (pt_N.csv) | nifti | dicom | cache (a "
                                     "dosepred cache of the patients with the predicted dose: fastest to "
                                     "evaluate).")] = "openkbp",
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    split: Annotated[str | None, typer.Option("--split", help="FILE:NAME: predict only these ids.")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average with the left-right mirrored prediction "
                                                     "(Left/Right ROIs swapped; twice the time).")] = False,
    no_progress: NoProgress = False,
) -> None:
    """Predict whole-grid doses (sliding windows of the training patch) and write them."""
    from .predict import predict_to

    _progress(no_progress)
    ids = None
    if split:
        from .split import load_split, parse_split_arg

        f, name = parse_split_arg(split)
        ids = load_split(f, name)
    n = predict_to(model, data, out, fmt=fmt, device=device, ids=ids, tta=tta)
    console().print(f"wrote {n} predicted doses ({fmt}) to {out}")


@app.command("export-model")
@friendly
def export_model_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder or checkpoint to export.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (model.pt, "
                                    "config.json, README.md).")],
    fp32: Annotated[bool, typer.Option("--fp32", help="Keep fp32 weights (default fp16, "
                                      "half the size).")] = False,
) -> None:
    """Write a small released model folder usable by `dosepred predict --model`."""
    from .predict import export_model

    export_model(run, out, half=not fp32)
    console().print(f"wrote {out / 'model.pt'} ({(out / 'model.pt').stat().st_size / 1e6:.1f} MB)")


@app.command("demo")
@friendly
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output folder (data, runs, report.html).")
                   ] = Path("demo-out"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic cohort and training.")] = 0,
    no_progress: NoProgress = False,
) -> None:
    """Synthetic end to end: one MAE warm-up, MAE and MAE+CDM fine-tuned from it with the same budget,
    evaluated next to a no-learning reference, compared, reported."""
    from rich.table import Table

    from .demo import run_demo, summary_rows

    _progress(no_progress)
    con = console()
    res = run_demo(out, seed=seed, log=con.print)
    t = Table(title="held-out synthetic patients, protocol openkbp-clinical "
                    "(lower is better, except pass rate)")
    t.add_column("metric")
    for label in res["results"]:
        t.add_column(label, justify="right")
    for title, vals in summary_rows(res["results"]):
        t.add_row(title, *vals)
    con.print(t)
    con.print(res["note"], markup=False)
    con.print(f"wrote {res['report']}")


# ==================================================================================== entry point

def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
