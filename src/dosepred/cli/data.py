"""``dosepred data ...``: import, export, synthesise, split and inspect datasets."""

from __future__ import annotations

import inspect as signatures
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import console, workflows
from ..io import formats
from ..io.formats import Format
from ..io.pack import pack_cache, unpack_cache
from ..io.source import open_source
from .common import SOURCES, NoProgress, Overwrite, data_app, friendly, show

CacheArg = Annotated[Path, typer.Argument(help="Cache folder.")]
CacheOut = Annotated[Path, typer.Option("--out", help="Cache folder to write.")]
FolderOut = Annotated[Path, typer.Option("--out", help="Output folder (one folder per patient).")]


# ------------------------------------------------------------- import-<format>, export-<format>
# One command per row of the table of formats that imports (``read_source``) or exports
# (``write_patient``): its help is the row's words, its options what the row can do (``--roi-map``
# where the format takes an ROI map, ``--roi-format`` where it writes more than one ROI layout).
# A new format gets its commands from its row.

def _param(name: str, annotation: Any, default: Any = signatures.Parameter.empty) -> signatures.Parameter:
    return signatures.Parameter(name, signatures.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                                annotation=annotation)


def _register(app: typer.Typer, name: str, doc: str, params: list[signatures.Parameter], run: Any) -> None:
    """``app``'s command ``name`` calling ``run(**options)``, its options ``params``, its help ``doc``."""
    def command(**kw: Any) -> None:
        run(**kw)

    command.__signature__ = signatures.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__name__ = command.__qualname__ = name.replace("-", "_")
    app.command(name)(friendly(command))


def _common(params: list[signatures.Parameter]) -> list[signatures.Parameter]:
    return [*params, _param("overwrite", Overwrite, False), _param("no_progress", NoProgress, False)]


def _import_command(app: typer.Typer, f: Format) -> None:
    assert f.import_help is not None

    def run(src: Path, out: Path, overwrite: bool, roi_map: Path | None = None) -> None:
        c = workflows.import_patients(src, out, f.name, roi_map, overwrite)
        size = f.source_bytes(src) if f.source_bytes is not None else None
        show(console.imported(c, out, f.name, size))

    what = f.described[0].upper() + f.described[1:]
    params = [_param("src", Annotated[Path, typer.Argument(help=f"{what}.")]), _param("out", CacheOut)]
    if f.takes_roi_map:
        params.append(_param("roi_map", Annotated[Path | None, typer.Option(
            "--roi-map", help="JSON: clinical ROI name -> canonical name (null ignores it); optional "
            "kinds/prescriptions.")], None))
    _register(app, f"import-{f.name}", f.import_help, _common(params), run)


def _export_command(app: typer.Typer, f: Format) -> None:
    assert f.export_help is not None
    layouts = f.roi_layouts

    def run(cache_dir: Path, out: Path, overwrite: bool, roi_format: str | None = None) -> None:
        n = workflows.export_cache(cache_dir, out, f.name, roi_format, overwrite)
        show([f"wrote {n} patients to {out}"])

    params = [_param("cache_dir", CacheArg), _param("out", FolderOut)]
    if len(layouts) > 1:
        what = formats.listed([f"{k} ({v})" for k, v in layouts], "or")
        params.append(_param("roi_format", Annotated[str, typer.Option("--roi-format", help=f"{what}.")],
                             layouts[0][0]))
    _register(app, f"export-{f.name}", f.export_help, _common(params), run)


def add_format_commands(app: typer.Typer, rows: Iterable[Format]) -> None:
    """``import-<name>`` for each of ``rows`` that is imported, then ``export-<name>`` for each that is
    exported, on ``app``."""
    rows = tuple(rows)
    for f in rows:
        if f.read_source is not None:
            _import_command(app, f)
    for f in rows:
        if f.write_patient is not None:
            _export_command(app, f)


add_format_commands(data_app, formats.FORMATS)


# ---------------------------------------------------------------------------------- the others
@data_app.command("inspect")
@friendly
def inspect(src: Annotated[Path, typer.Argument(help=f"Any source: {SOURCES}.")]) -> None:
    """Print the patients, their ROIs and dose, and each grid in patient coordinates (axes, origin,
    spacing; LPS mm)."""
    show(console.inspect(open_source(src)))


@data_app.command("synth")
@friendly
def synth(
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")], out: CacheOut,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Cohort seed (same seed, same data).")] = 0,
    size: Annotated[int, typer.Option("--size", min=8, help="Grid size (size^3 voxels).")] = 64,
    extra_rois: Annotated[int, typer.Option("--extra-rois", min=0,
                                            help="Add K rings/PRVs to the 10 OpenKBP ROIs (max 54).")] = 0,
    overwrite: Overwrite = False, no_progress: NoProgress = False,
) -> None:
    """Write a seeded synthetic H&N cohort (OpenKBP ROI names, plausible dose) as a cache."""
    c = workflows.synth_cohort(out, patients, seed, size, extra_rois, overwrite)
    show([f"wrote {len(c)} synthetic patients ({size}^3, {len(c.roi_set)} ROIs, seed {seed}) to {out}: "
          f"{c.nbytes() / 1e6:.1f} MB"])


@data_app.command("split")
@friendly
def split(
    src: Annotated[Path, typer.Argument(help=f"Source whose patients to split: {SOURCES}.")],
    out: Annotated[Path, typer.Option("--out", help="Split JSON to write.")],
    random: Annotated[bool, typer.Option("--random", help="Seeded random split by --fractions.")] = False,
    ids: Annotated[list[str] | None, typer.Option(
        "--ids", help="User lists: name=pt_1,pt_2 (repeatable) or a JSON/text file.")] = None,
    temporal: Annotated[bool, typer.Option("--temporal", help="Earliest dates to the first split.")] = False,
    fractions: Annotated[str | None, typer.Option(
        "--fractions", help="Fractions or counts, e.g. 0.7,0.15,0.15 or 137,37 "
                     "[--random 0.7,0.15,0.15; --temporal 0.8,0.2].")] = None,
    names: Annotated[str | None, typer.Option(
        "--names", help="Split names, e.g. train,val,test [the first of train,val,test, one per fraction; "
                        "two --temporal fractions: train,test].")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of --random.")] = 0,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="CSV: an id and a date column.")] = None,
    date_column: Annotated[str, typer.Option("--date-column", help="Date column of --manifest.")] = "date",
    overwrite: Overwrite = False,
) -> None:
    """Split a dataset's patients into named lists (train/val/test) and write them as JSON."""
    methods = [m for m, on in (("random", random), ("ids", bool(ids)), ("temporal", temporal)) if on]
    method = methods[0] if len(methods) == 1 else None
    obj = workflows.make_split(src, out, method, ids, fractions, names, seed, manifest, date_column,
                               overwrite)
    show([f"wrote {out} ({obj['method']}): " + ", ".join(f"{k} {len(v)}" for k, v in obj["splits"].items())])


@data_app.command("subset")
@friendly
def subset(cache_dir: CacheArg, split: Annotated[str, typer.Option(
        "--split", help="FILE:NAME: the patients to keep (a `data split` file).")], out: CacheOut,
        overwrite: Overwrite = False, no_progress: NoProgress = False) -> None:
    """Write the patients of one split of a cache as a new cache with the same ROI set (for the
    commands without --split: evaluate, calibrate, qa)."""
    c = workflows.subset_cache(cache_dir, split, out, overwrite)
    show([f"wrote {len(c)} patients of {split} to {out}"])


@data_app.command("pack")
@friendly
def pack(cache_dir: CacheArg, out: Annotated[Path, typer.Option("--out", help="Packed folder to write.")],
         ct_step: Annotated[int, typer.Option("--ct-step", min=1, help="CT steps in HU.")] = 4,
         dose_step: Annotated[int, typer.Option("--dose-step", min=1, help="Dose steps in cGy.")] = 1,
         jobs: Annotated[int, typer.Option("--jobs", min=1, help="Worker processes.")] = 2,
         overwrite: Overwrite = False, no_progress: NoProgress = False) -> None:
    """A compact transport copy of a cache (CT and dose in steps, the rest bit for bit; .xz per patient)."""
    r = pack_cache(cache_dir, out, ct_step, dose_step, jobs, overwrite, progress=True)
    show([f"packed {r.patients} patients into {out}: {r.nbytes / 1e6:.1f} MB"])


@data_app.command("unpack")
@friendly
def unpack(packed: Annotated[Path, typer.Argument(help="Folder written by `data pack`.")], out: CacheOut,
           jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="Processes [one per CPU].")] = None,
           overwrite: Overwrite = False, no_progress: NoProgress = False) -> None:
    """Turn a packed folder back into a cache."""
    show([f"unpacked {len(unpack_cache(packed, out, jobs, overwrite, progress=True))} patients into {out}"])
