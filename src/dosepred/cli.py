"""The ``dosepred`` command line: a thin typer shell over the API.

Heavy imports (torch, matplotlib, pydicom) stay inside the commands so ``--help`` is instant.
User mistakes end with one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

_CTX = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help="dosepred: 3D dose prediction for head-and-neck radiotherapy with clinical DVH "
                       "metric losses.", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False, context_settings=_CTX, rich_markup_mode=None)
data_app = typer.Typer(help="Import, export, synthesise and inspect datasets.", no_args_is_help=True,
                       rich_markup_mode=None,
                       context_settings=_CTX)
bench_app = typer.Typer(help="Benchmarks (print a table, --json FILE writes the numbers).",
                        no_args_is_help=True, context_settings=_CTX, rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")


def _tidy_help() -> None:
    """Click-style help: flags without a ``<bool>`` type column, arguments as ``SRC`` (not ``{src}``)
    in usage lines. Patches typer's display hooks when this typer version has them."""
    from typer import core

    opt, arg = getattr(core, "TyperOption", None), getattr(core, "TyperArgument", None)
    if opt is not None and hasattr(opt, "display_type_rich"):
        orig = opt.display_type_rich

        def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
            return None if getattr(self, "is_flag", False) and not getattr(self, "count", False) \
                else orig(self, ctx)

        opt.display_type_rich = display_type_rich
    if arg is not None and hasattr(arg, "_usage_display_name"):
        def usage_name(self) -> str:  # type: ignore[no-untyped-def]
            name = (self.metavar or self.name or "").upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        arg._usage_display_name = usage_name


_tidy_help()


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"dosepred {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """dosepred: 3D dose prediction for head-and-neck radiotherapy with clinical DVH metric losses."""


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def _colour(stream=None) -> bool:  # type: ignore[no-untyped-def]
    """ANSI colour only on a terminal and without NO_COLOR (https://no-color.org)."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("NO_COLOR")


def _say(kind: str, msg: str, colour: str) -> None:
    msg = str(msg)
    for prefix in ("error: ", "warning: "):  # never "error: warning: ..."
        while msg.startswith(prefix):
            msg = msg[len(prefix):]
    head = f"\x1b[1;{colour}m{kind}:\x1b[0m" if _colour(sys.stderr) else f"{kind}:"
    print(f"{head} {msg}", file=sys.stderr, flush=True)


def _err(msg: str) -> None:
    if str(msg).startswith("warning: "):
        _warn(msg)
    else:
        _say("error", msg, "31")


def _warn(msg: str) -> None:
    _say("warning", msg, "33")


_QUIET_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ResourceWarning)


@contextlib.contextmanager
def _show_warnings() -> Iterator[list[str]]:
    """Print each warning raised inside the block once, as it comes, as ``warning: ...`` (the one
    place the commands show warnings; a failure later still leaves them on screen). Deprecation and
    resource warnings of libraries stay quiet. Yields the list of messages shown."""
    import warnings

    shown: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
        m = str(message)
        if issubclass(category, _QUIET_WARNINGS) or m in shown:
            return
        shown.append(m)
        _warn(m)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield shown


def _os_message(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    if e.filename is None:
        return str(e) or what
    where = str(e.filename) + (f" -> {e.filename2}" if e.filename2 is not None else "")
    return f"{where}: {what}"


def friendly(fn):
    """Turn expected user errors into one clear message and exit code 2 (docs/formats.md):
    ``error: <path or what>: <what went wrong>``, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .io.cache import CacheError
        from .metrics import MetricError

        try:
            return fn(*args, **kwargs)
        except OSError as e:  # PermissionError on a read-only --out, a missing file, a full disk
            _err(_os_message(e))
            raise typer.Exit(2) from None
        except (UserError, CacheError, MetricError, ValueError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            _err(str(msg))
            raise typer.Exit(2) from None

    return wrapper


Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty output "
                                         "whole (never done without it).")]


def _progress(no_progress: bool) -> None:
    from . import progress

    progress.set_enabled(False if no_progress else None)


NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bars: plain progress lines "
                                            "instead (as when output is not a terminal; "
                                            "DOSEPRED_PROGRESS_INTERVAL=off silences them).")]


def console():
    from rich.console import Console

    return Console(highlight=False)


# ============================================================================================ data

@data_app.command("import-openkbp")
@friendly
def data_import_openkbp(
    src: Annotated[Path, typer.Argument(help="Folder of OpenKBP pt_* folders (e.g. .../train-pats).")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Read OpenKBP CSV patients into a compact cache (one .npz per patient + dataset.json)."""
    from .fsutil import output_dir
    from .io import cache, openkbp

    _progress(no_progress)
    folders = openkbp.patient_folders(src)
    # all or nothing: a bad file aborts the import and leaves --out as it was
    with _show_warnings(), output_dir(out, overwrite, [src]) as tmp:
        c = cache.write_cache(openkbp.read_folder(src), tmp, source=str(Path(src).resolve()),
                              progress=True)
    c = cache.Cache.open(out)
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
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Write a cache back in the native OpenKBP layout."""
    from .fsutil import output_dir
    from .io import cache, openkbp
    from .progress import track

    _progress(no_progress)
    c = cache.Cache.open(cache_dir)
    with output_dir(out, overwrite, [cache_dir]) as tmp:
        for p in track(c, description="exporting", total=len(c)):
            openkbp.write_patient(p, tmp)
    console().print(f"wrote {len(c)} patients to {out}")


@data_app.command("inspect")
@friendly
def data_inspect(src: Annotated[Path, typer.Argument(
        help="Any source: a cache, an OpenKBP, NIfTI or DICOM folder.")]) -> None:
    """Print the patients, their ROIs and dose, and each grid in patient coordinates (axes, origin,
    spacing; LPS mm)."""
    from rich.table import Table

    from .io.source import open_source

    geometry_lines = []
    with _show_warnings():
        s = open_source(src)
        rs = s.roi_set
        c = s.cache
        size = f", {c.nbytes() / 1e6:.1f} MB" if c is not None else ""
        t = Table(title=f"{src} ({s.kind}): {len(s)} patients, {len(rs)} ROIs{size}")
        t.add_column("patient", no_wrap=True)
        for col in ("shape", "spacing (mm)", "ROIs", "missing", "dose"):
            t.add_column(col)
        if c is not None:
            t.add_column("MB", justify="right")
        for p in (c.load(pid, rs, with_ct=False) for pid in c.ids) if c is not None else s.patients():
            g = p.geometry
            assert g is not None
            row = [p.id, "x".join(map(str, p.shape)), " x ".join(f"{v:.4g}" for v in p.spacing),
                   f"{len(rs) - len(p.missing_rois)}/{len(rs)}", ", ".join(p.missing_rois) or "-",
                   "yes" if p.dose is not None else "no"]
            if c is not None:
                e = c.entry(p.id)
                row[-1] = "yes" if e.get("has_dose") else "no"
                row.append(f"{(c.root / e['file']).stat().st_size / 1e6:.2f}")
            t.add_row(*row)
            assumed = " (assumed)" if p.meta.get("geometry") == "assumed" else ""
            geometry_lines.append(
                f"  {p.id}: axes {g.describe()}{assumed}; "
                f"origin ({', '.join(f'{v:.3f}' for v in g.origin)}) mm; spacing "
                f"({', '.join(f'{v:.6g}' for v in g.spacing)}) mm")
    con = console()
    con.print(t)
    con.print("ROI set (bit: name kind Rx): " + "; ".join(
        f"{k}: {r.name} {r.kind}{f' {r.prescription:g} Gy' if r.prescription else ''}"
        for k, r in enumerate(rs)))
    con.print("geometry (patient coordinates, LPS mm):")
    for line in geometry_lines:
        con.print(line)


@data_app.command("import-dicom")
@friendly
def data_import_dicom(
    src: Annotated[Path, typer.Argument(help="Folder with CT series, RTSTRUCT and RTDOSE files (searched "
                                             "recursively; one patient per folder or mixed).")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    roi_map: Annotated[Path | None, typer.Option(
        "--roi-map", help="JSON: clinical ROI name -> canonical name (null ignores it); optional "
        "kinds/prescriptions.")] = None,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Import DICOM RT (CT + RTSTRUCT + RTDOSE) into a cache; ROI names are mapped to canonical ones."""
    from .fsutil import check_output, output_dir
    from .io import cache, dicom

    _progress(no_progress)
    check_output(out, overwrite, [src, roi_map])
    with _show_warnings():
        rs, ids, it = dicom.iter_dicom_folder(src, roi_map)
        with output_dir(out, overwrite, [src, roi_map]) as tmp:
            cache.write_cache(it, tmp, source=str(Path(src).resolve()), roi_set=rs, progress=True)
    c = cache.Cache.open(out)
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
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Write each patient as a CT series + RTSTRUCT (+ RTDOSE when it has a dose)."""
    from .fsutil import output_dir
    from .io import cache, dicom
    from .progress import track

    _progress(no_progress)
    c = cache.Cache.open(cache_dir)
    with output_dir(out, overwrite, [cache_dir]) as tmp:
        for p in track(c, description="exporting", total=len(c)):
            dicom.write_dicom(p, tmp)
    console().print(f"wrote {len(c)} patients to {out}")


@data_app.command("import-nifti")
@friendly
def data_import_nifti(
    src: Annotated[Path, typer.Argument(help="A NIfTI patient folder (ct.nii.gz, ...) or a folder of them.")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write.")],
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Import NIfTI patients (ct, dose, possible_dose_mask, rois/<name> or roi_codes + rois.json)."""
    from .fsutil import check_output, output_dir
    from .io import cache, nifti

    _progress(no_progress)
    check_output(out, overwrite, [src])
    with _show_warnings():
        rs, it = nifti.iter_nifti_folder(src)
        with output_dir(out, overwrite, [src]) as tmp:
            cache.write_cache(it, tmp, source=str(Path(src).resolve()), roi_set=rs, progress=True)
    c = cache.Cache.open(out)
    console().print(f"wrote {len(c)} patients to {out}: ROIs {', '.join(rs.names)}")


@data_app.command("export-nifti")
@friendly
def data_export_nifti(
    cache_dir: Annotated[Path, typer.Argument(help="Cache folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (one folder per patient).")],
    roi_format: Annotated[str, typer.Option("--roi-format", help="labels (rois/<name>.nii.gz) or codes "
                                            "(roi_codes.nii.gz + rois.json).")] = "labels",
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Write each patient as NIfTI files with the affine carrying spacing, orientation and origin."""
    from .fsutil import output_dir
    from .io import cache, nifti
    from .progress import track

    if roi_format not in ("labels", "codes"):
        raise UserError(f"--roi-format must be labels or codes, got {roi_format!r}")
    _progress(no_progress)
    c = cache.Cache.open(cache_dir)
    with output_dir(out, overwrite, [cache_dir]) as tmp:
        for p in track(c, description="exporting", total=len(c)):
            nifti.write_patient(p, tmp, roi_format)
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
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Write a seeded synthetic H&N cohort (OpenKBP ROI names, plausible dose) as a cache."""
    from . import synth
    from .fsutil import output_dir
    from .io import cache

    _progress(no_progress)
    synth.extra_roi_defs(extra_rois)  # validate before any work
    with output_dir(out, overwrite) as tmp:
        cache.write_cache(synth.iter_cohort(patients, seed, size, extra_rois), tmp,
                          source=f"synth seed={seed} size={size} extra_rois={extra_rois}",
                          roi_set=synth.roi_set(extra_rois), progress=True)
    c = cache.Cache.open(out)
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
    overwrite: Overwrite = False,
) -> None:
    """Split a dataset's patients into named lists (train/val/test) and write them as JSON."""
    from . import split
    from .fsutil import check_output, output_file
    from .io import cache, openkbp

    if sum([random, bool(ids), temporal]) != 1:
        raise UserError("choose exactly one of --random, --ids, --temporal")
    check_output(out, overwrite, [cache_dir, manifest])
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
            split.check_known({"manifest": list(dates)}, known, "the data", manifest)
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
    with output_file(out, overwrite, [cache_dir, manifest]) as tmp:
        split.write_split(obj, tmp)
    console().print(f"wrote {out} ({obj['method']}): " + ", ".join(
        f"{k} {len(v)}" for k, v in obj["splits"].items()))


# ======================================================================================= baseline

@app.command("baseline")
@friendly
def baseline_cmd(
    data: Annotated[Path, typer.Option("--data", help="Cache, OpenKBP folder of pt_* patients, NIfTI or "
                                       "DICOM folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the OpenKBP pt_N.csv predictions.")],
    falloff: Annotated[float, typer.Option(help="Fall-off length in mm outside each target.")] = 15.0,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """No-learning reference: prescription x exp(-distance to target / falloff), in the possible-dose mask."""
    from .baseline import distance_falloff
    from .fsutil import output_dir
    from .io import cache, openkbp
    from .progress import track

    _progress(no_progress)
    n = 0
    with output_dir(out, overwrite, [data]) as tmp:
        for p in track(cache.load_patients(data, require_dose=False), description="baseline"):
            openkbp.write_dose_csv(tmp / f"{p.id}.csv", distance_falloff(p, falloff), p.possible_dose_mask)
            n += 1
        if n == 0:
            raise UserError(f"{data} holds no patients")
    console().print(f"wrote {n} no-learning predictions to {out}")


# ======================================================================================= evaluate

def _fmt_num(x: float, nd: int = 3) -> str:
    return "-" if x != x else f"{x:.{nd}f}"


@app.command("evaluate")
@friendly
def evaluate_cmd(
    reference: Annotated[Path, typer.Option("--reference", help="Reference plans (with dose): a cache, an "
                                            "OpenKBP folder of pt_* patients, a NIfTI or a DICOM folder.")],
    prediction: Annotated[Path, typer.Option("--prediction", help="Folder of predicted doses (OpenKBP "
                                             "pt_N.csv or NIfTI per patient, or RTDOSE files matched to the "
                                             "references by the RTSTRUCT/RTPLAN they reference, "
                                             "FrameOfReference or PatientID and resampled onto their "
                                             "grids) or a cache holding doses (`dosepred predict --format "
                                             "cache`, the fastest to read).")],
    protocol: Annotated[str, typer.Option("--protocol", help="openkbp, openkbp-clinical or a protocol "
                                          "JSON file.")] = "openkbp",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all results to this JSON "
                                                  "file.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write a self-contained HTML report "
                                                "(report.html, images embedded) into this folder.")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Evaluate the patients that "
                                                "have a prediction; list the others.")] = False,
    show_metrics: Annotated[bool, typer.Option("--show-metrics", help="Print each patient's metric "
                                               "values (reference, prediction); the default when "
                                               "the protocol has no limits.")] = False,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Score predicted doses against reference plans (OpenKBP dose/DVH scores, PTV/OAR scores,
    protocol criteria)."""

    from . import evaluation as ev
    from ._malloc import keep_freed_memory
    from .fsutil import check_output, output_dir
    from .protocol import load_protocol

    _progress(no_progress)
    keep_freed_memory()  # patient after patient of same-sized arrays: reuse freed memory
    if json_out is not None:  # refuse before any work
        check_output(json_out, overwrite, [reference, prediction], "--json")
    if report is not None:
        check_output(report, overwrite, [reference, prediction], "--report")
    pairs, missing = ev.match_predictions(reference, prediction)
    if missing and not allow_missing:
        raise UserError(f"no prediction in {prediction} for {len(missing)} reference patient(s): "
                        f"{', '.join(missing)} (use --allow-missing to evaluate the others)")
    if missing:
        _warn(f"no prediction for {len(missing)} patient(s), skipped: {', '.join(missing)}")
    if not pairs:
        raise UserError(f"no reference patient of {reference} has a prediction in {prediction}")
    proto = load_protocol(protocol)
    ids = [i for i, _ in pairs]
    it = ev.iter_pairs(reference, prediction, ids, with_ct=report is not None, compact=report is None)
    outputs = contextlib.ExitStack()  # the report's PNGs go to a temporary folder until all succeeded
    writer = None
    if report is not None:
        from .report import ReportWriter
        report_tmp = outputs.enter_context(output_dir(report, overwrite, [reference, prediction], "--report"))
        writer = ReportWriter(report_tmp, title=f"dosepred evaluation: {prediction}", protocol=proto)
        it = writer.tap(it)
    with outputs:  # all or nothing: a failure leaves --json and --report as they were
        res = ev.evaluate_cohort(it, proto, progress=True)
        if json_out is not None:
            from .fsutil import output_file, write_json

            js = res.to_json()
            js["missing_predictions"] = missing
            with output_file(json_out, overwrite, [reference, prediction], "--json") as tmp:
                write_json(tmp, js)
        if writer is not None:
            writer.finish({"prediction": res})
    _print_evaluation(res, proto, missing, show_metrics)
    if json_out is not None:
        console().print(f"wrote {json_out}")
    if report is not None:
        console().print(f"wrote {report / 'report.html'}")


def _print_evaluation(res, proto, missing: list[str], show_metrics: bool = False) -> None:  # type: ignore[no-untyped-def]
    """The evaluation summary on the console (warnings of the protocol lint on stderr); the metric
    values per patient with ``show_metrics`` or when the protocol has no limits."""
    from rich.table import Table

    from . import evaluation as ev

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
    if show_metrics or not rows:  # without limits there is nothing to pass: show the values
        con.print(ev.metrics_table(res))
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
    for w in res.warnings:
        _warn(w)


def _write_json_out(json_out: Path, overwrite: bool, res: dict) -> None:
    """A benchmark's ``--json`` file, written like every output (fsutil, the --overwrite rule)."""
    from .fsutil import output_file, write_json

    with output_file(json_out, overwrite, what="--json") as tmp:
        write_json(tmp, res)


@bench_app.command("evaluate")
@friendly
def bench_evaluate(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON "
                                                  "file.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="OpenKBP folder of pt_* patients [the "
                                              "example patient shipped in examples/].")] = None,
    patients: Annotated[int, typer.Option("--patients", help="Number of patients (0: all).")] = 0,
    cache_dir: Annotated[Path | None, typer.Option("--cache", help="Existing cache of the same patients "
                                                   "(else one is written to a temporary folder).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timing repeats (best is kept).")] = 1,
    overwrite: Overwrite = False,
) -> None:
    """Evaluation throughput (patients/s): dosepred from CSV and from the cache vs naive pandas."""
    from rich.table import Table

    from .bench import example_patients
    from .bench.evaluate import run
    from .fsutil import check_output

    data = data or example_patients()
    if json_out is not None:
        check_output(json_out, overwrite, what="--json")
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
        _write_json_out(json_out, overwrite, res)


@bench_app.command("predict")
@friendly
def bench_predict(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON "
                                                  "file.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="OpenKBP folder holding the patient [the "
                                              "example patient shipped in examples/].")] = None,
    patient: Annotated[str, typer.Option("--patient", help="Patient folder name.")] = "pt_201",
    model: Annotated[Path, typer.Option("--model", help="Model to predict with.")] = Path(
        "models/openkbp-mae"),
    repeats: Annotated[int, typer.Option("--repeats", help="Timing repeats (best is kept).")] = 2,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads [all cores].")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Clinical-size prediction (512x512x150 CT at ~0.98x0.98x3 mm): resample in, predict, resample out."""
    from .bench import example_patients
    from .bench.predict import run
    from .fsutil import check_output

    data = data or example_patients()
    if not (data / patient).is_dir():
        raise UserError(f"--data {data} holds no patient {patient} (an OpenKBP folder of pt_* patients)")
    if json_out is not None:
        check_output(json_out, overwrite, [data, model], "--json")
    res = run(data, model, patient, repeats, threads)
    con = console()
    con.print(f"{res['patient']} on a {'x'.join(map(str, res['clinical_shape']))} grid "
              f"({', '.join(f'{s:.3g}' for s in res['clinical_spacing'])} mm, "
              f"axes {res['clinical_axes']}) -> "
              f"model grid {'x'.join(map(str, res['model_grid_shape']))} "
              f"({', '.join(f'{s:.3g}' for s in res['model_grid_spacing'])} mm, axes {res['model_axes']}), "
              f"{res['windows']} window(s)")
    con.print(f"resample in {res['resample_in_s']:.2f} s, predict {res['predict_s']:.2f} s, resample out "
              f"{res['resample_out_s']:.2f} s: total {res['total_s']:.2f} s per patient "
              f"({res['threads']} threads, {res['cpu']}, best of {res['repeats']})")
    con.print(f"dose score {res['dose_score_clinical_grid']:.3f} Gy on the clinical grid, "
              f"{res['dose_score_on_openkbp_grid']:.3f} Gy moved onto the OpenKBP grid "
              f"(OpenKBP path: {res['dose_score_openkbp_path']:.3f} Gy)")
    if json_out is not None:
        _write_json_out(json_out, overwrite, res)


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
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Bit-mask ROI pipeline vs one-hot float32 channels: disk, sample memory, load and step time."""
    from .bench.bitmask import BenchConfig, run, table
    from .fsutil import check_output
    from .progress import enabled

    _progress(no_progress)
    if json_out is not None:
        check_output(json_out, overwrite, what="--json")
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
        _write_json_out(json_out, overwrite, res)


@bench_app.command("losses")
@friendly
def bench_losses(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the numbers to this JSON "
                                                  "file.")] = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Volume sizes (voxels per axis), comma-separated; "
                                       "the largest OpenKBP size is the full grid, smaller ones "
                                       "crops centred on the targets.")] = "64,128",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per loss (median).")] = 3,
    data: Annotated[Path | None, typer.Option("--data", help="OpenKBP patient folder (pt_N) or folder of "
                                              "them [the example patient shipped in examples/; synthetic "
                                              "spheres when absent].")] = None,
    losses: Annotated[str, typer.Option("--losses", help="Comma-separated subset of mae, mse, dvh, "
                                        "dvh-0.2gy, moment, cdm, cdm-clinical+constraint "
                                        "(empty: all).")] = "",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or all (cpu, and cuda when "
                                        "available).")] = "all",
    unet: Annotated[bool, typer.Option("--unet/--no-unet", help="Also time a U-Net training step.")] = True,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Forward+backward time of each loss vs MAE and vs one U-Net training step."""
    from .bench import example_patients
    from .bench.losses import markdown, run, table
    from .fsutil import check_output
    from .progress import enabled

    data = data or example_patients()
    _progress(no_progress)
    if json_out is not None:
        check_output(json_out, overwrite, what="--json")
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
        _write_json_out(json_out, overwrite, res)


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
    overwrite: Overwrite = False,
    orientation: Annotated[str | None, typer.Option("--orientation", help="Axis letters every training "
                                                    "patient is permuted into (recorded with the model): "
                                                    "e.g. PLI (OpenKBP arrays), or 'first' (the first "
                                                    "patient's) [PLI].")] = None,
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
                     stop_after=stop_after, orientation=orientation)
    if loss_opt:
        overrides["loss_options"] = _parse_opts(loss_opt)
    overrides.update(_parse_opts(set_))
    from .fsutil import check_output, output_in_place

    stored = out / "config.json"
    if resume and stored.is_file():
        cfg = TrainConfig.load(stored).merged(overrides)
    else:
        if data is None:
            raise UserError("give --data CACHE (or --resume an existing run)")
        cfg = TrainConfig().merged(overrides)
    inputs = [cfg.data, cfg.val, cfg.init]
    if not resume and not overwrite and (out / "checkpoints" / "last.pt").is_file():
        raise UserError(f"{out}: already holds a training run; use --resume to continue it, "
                        "--overwrite to replace it, or choose another --out")
    con = console()
    with _show_warnings():
        if resume or os.environ.get("RANK", "0") != "0":
            # --resume continues the run in place (it must still not be one of the inputs); under
            # torchrun only rank 0 writes the run and owns its transaction
            check_output(out, True, inputs)
            res = train(cfg, resume=resume, log=con.print)
        else:  # a fresh run: written where --resume finds it; a failure restores what was there
            with output_in_place(out, overwrite, inputs):
                res = train(cfg, resume=False, log=con.print)
    best = res.get("best")
    con.print(f"done: {res['global_step']} steps in {out}"
              + (f"; best epoch {best['epoch']} ({best['select']} {best['value']:.3f})"
                 if best and "value" in best else ""))


@app.command("predict")
@friendly
def predict_cmd(
    model: Annotated[Path, typer.Option("--model", help="Run folder, released model folder or checkpoint.")],
    data: Annotated[Path, typer.Option("--data", help="Cache, OpenKBP folder of pt_* patients, NIfTI or "
                                       "DICOM folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    fmt: Annotated[str, typer.Option("--format", help="openkbp (pt_N.csv) | nifti | dicom | cache (a "
                                     "dosepred cache of the patients with the predicted dose: fastest to "
                                     "evaluate).")] = "openkbp",
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    split: Annotated[str | None, typer.Option("--split", help="FILE:NAME: predict only these ids.")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average with the prediction of the patient mirrored "
                                                     "along its left-right axis (from its geometry; "
                                                     "Left/Right ROIs swapped; twice the time).")] = False,
    allow_missing_rois: Annotated[bool, typer.Option(
        "--allow-missing-rois", help="Predict patients lacking some of the model's ROIs (empty channels, "
        "a warning naming them).")] = False,
    dose_spacing: Annotated[float | None, typer.Option(
        "--dose-spacing", min=0.1, help="--format dicom: RTDOSE grid spacing in mm (default: the CT's, "
        "at least 2.5 mm per axis).")] = None,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Predict whole-grid doses in the model's own space (axes and spacing of its training data) and
    write them on each patient's grid."""
    from .fsutil import check_output, output_dir
    from .predict import predict_to

    _progress(no_progress)
    check_output(out, overwrite, [model, data])
    ids = None
    if split:
        from .split import load_split, parse_split_arg

        f, name = parse_split_arg(split)
        ids = load_split(f, name)
    with _show_warnings(), output_dir(out, overwrite, [model, data]) as tmp:
        n = predict_to(model, data, tmp, fmt=fmt, device=device, ids=ids, tta=tta,
                       allow_missing_rois=allow_missing_rois, dose_spacing=dose_spacing)
    console().print(f"wrote {n} predicted doses ({fmt}) to {out}")


@app.command("export-model")
@friendly
def export_model_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder or checkpoint to export.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (model.pt, "
                                    "config.json, README.md).")],
    fp32: Annotated[bool, typer.Option("--fp32", help="Keep fp32 weights (default fp16, "
                                      "half the size).")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Write a small released model folder usable by `dosepred predict --model`."""
    from .fsutil import output_dir
    from .predict import export_model

    with output_dir(out, overwrite, [run]) as tmp:
        export_model(run, tmp, half=not fp32, final=out)
    console().print(f"wrote {out / 'model.pt'} ({(out / 'model.pt').stat().st_size / 1e6:.1f} MB)")


@app.command("demo")
@friendly
def demo_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output folder (data, runs, report.html).")
                   ] = Path("demo-out"),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic cohort and training.")] = 0,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Synthetic end to end: one MAE warm-up, MAE and MAE+CDM fine-tuned from it with the same budget,
    evaluated next to a no-learning reference, compared, reported."""
    from rich.table import Table

    from .demo import run_demo, summary_rows

    _progress(no_progress)
    con = console()
    from .fsutil import output_in_place

    with _show_warnings(), output_in_place(out, overwrite):  # a failed demo leaves --out as it was
        res = run_demo(out, seed=seed, log=con.print)
    t = Table(title="held-out synthetic patients, protocol openkbp-clinical "
                    "(scores: lower is better; agreement with the plans: higher)")
    t.add_column("metric")
    for label in res["results"]:
        t.add_column(label, justify="right")
    for title, vals in summary_rows(res["results"]):
        t.add_row(title, *vals)
    con.print(t)
    con.print(res["note"], markup=False)
    con.print(f"wrote {res['report']}")


# ========================================================================================= plan QA

@app.command("calibrate")
@friendly
def calibrate_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model folder (released model or run folder).")],
    data: Annotated[Path, typer.Option("--data", help="Patients with plan doses that the model was NOT "
                                       "trained on: a cache or an OpenKBP folder.")],
    protocol: Annotated[str, typer.Option("--protocol", help="openkbp, openkbp-clinical or a protocol "
                                          "JSON file.")] = "openkbp-clinical",
    predictions: Annotated[Path | None, typer.Option("--predictions", help="Cache of the model's "
                                                     "predictions of DATA (`dosepred predict --format "
                                                     "cache`); else they are computed.")] = None,
    train_data: Annotated[Path | None, typer.Option("--train-data", help="The training patients, for the "
                                                    "ranges of ROI volumes and spacings behind the QA "
                                                    "reliability flags (default: DATA).")] = None,
    splits: Annotated[int, typer.Option("--splits", help="Random patient splits of the "
                                        "cross-validation.")] = 200,
    overwrite: Overwrite = False,
    no_progress: NoProgress = False,
) -> None:
    """Calibrate prediction intervals of the protocol's DVH metrics (split conformal per metric
    family, chosen by cross-validation); writes MODEL/calibration.json."""
    from rich.table import Table

    from .calibration import FAMILY_TITLES, calibrate, calibration_path

    _progress(no_progress)
    existing = calibration_path(model)
    if existing.is_file() and not overwrite:
        raise UserError(f"{existing} exists (the model's calibration); give --overwrite to replace it")
    path, cal = calibrate(model, data, protocol, predictions=predictions, train_data=train_data,
                          splits=splits, progress=True)
    con = console()
    cv = cal["cross_validation"]
    t = Table(title=f"{len(cal['patients'])} patients, protocol {cal['protocol']}; cross-validated "
                    f"({cv['splits']} random splits, {cv['calibration_fraction']:.0%} calibrating)")
    for col in ("family", "units", "method", "coverage 80 %", "width 80 % ", "coverage 90 %", "width 90 %"):
        t.add_column(col, justify="left" if col in ("family", "method") else "right")
    for fam, d in cal["families"].items():
        r = cv["results"].get(fam, {}).get(d["method"], {})
        cells = []
        for lev in ("0.8", "0.9"):
            x = r.get(lev)
            cells += ["-", "-"] if x is None else [f"{x['coverage']:.1f}", f"{x['width']:.2f}"]
        t.add_row(FAMILY_TITLES.get(fam, fam), str(d["n"]), d["method"], *cells)
    con.print(t)
    con.print(f"wrote {path}")


@app.command("qa")
@friendly
def qa_cmd(
    model: Annotated[Path, typer.Option("--model", help="Model folder with a calibration.json.")],
    plans: Annotated[Path, typer.Option("--plans", help="Plans with doses: a cache, an OpenKBP folder or a "
                                        "DICOM folder (CT + RTSTRUCT + RTDOSE).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (report.html, qa.json).")],
    protocol: Annotated[str, typer.Option("--protocol", help="openkbp, openkbp-clinical or a protocol "
                                          "JSON file.")] = "openkbp-clinical",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results to this JSON "
                                                  "file (always written to OUT/qa.json).")] = None,
    coverage: Annotated[float, typer.Option("--coverage", help="Coverage of the intervals "
                                            "(0-1).")] = 0.9,
    report_max: Annotated[int, typer.Option("--report-max", help="Patients with images in the report, "
                                            "highest potential improvement first (0: all).")] = 0,
    no_report: Annotated[bool, typer.Option("--no-report", help="Only the JSON and the table.")] = False,
    point: Annotated[str | None, typer.Option("--point", help="X,Y,Z: the report's views go through "
                                              "this patient point (LPS mm) instead of the target "
                                              "centroid.")] = None,
    no_progress: NoProgress = False,
) -> None:
    """Knowledge-based plan QA: each plan's criteria against the model's achievable dose with
    calibrated intervals; flags, a ranked cohort summary, OUT/report.html and OUT/qa.json."""
    from rich.table import Table

    from .qa import run_qa

    _progress(no_progress)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    point_mm = None
    if point is not None:
        try:
            point_mm = tuple(float(v) for v in point.split(","))
        except ValueError:
            point_mm = ()
        if len(point_mm) != 3:
            raise UserError(f"--point must be three numbers X,Y,Z in mm, got {point!r}")
    res = run_qa(model, plans, protocol, coverage=coverage, report=None if no_report else out,
                 progress=True, report_max=report_max or None, point_mm=point_mm)  # type: ignore[arg-type]
    con = console()
    for w in res.warnings:
        con.print(f"[bold yellow]warning:[/] {w}")
    t = Table(title=f"plan QA: {len(res.patients)} plans, protocol {res.protocol}, {coverage:.0%} intervals, "
                    "ranked by potential improvement")
    left = ("patient", "flagged criteria", "reliability")
    for col in ("rank", "patient", "potential (Gy)", "flags", "failed limits", *left[1:]):
        t.add_column(col, justify="left" if col in left else "right")
    for r in res.summary():
        t.add_row(str(r["rank"]), r["id"], f"{r['potential_gy']:.1f}", str(r["flags"]), str(r["failed"]),
                  ", ".join(r["flagged"]) or "-", ", ".join(r["reliability"]) or "-")
    con.print(t)
    secs = [p.seconds for p in res.patients]
    con.print(f"QA time per plan after the model is loaded (read excluded): mean "
              f"{sum(secs) / len(secs):.2f} s, max {max(secs):.2f} s")
    res.write_json(out / "qa.json")
    con.print(f"wrote {out / 'qa.json'}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        res.write_json(json_out)
        con.print(f"wrote {json_out}")
    if not no_report:
        con.print(f"wrote {out / 'report.html'}")


# ==================================================================================== entry point

def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
