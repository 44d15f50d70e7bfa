"""``dosepred data ...``: import, export, synthesise, split and inspect datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import console, workflows
from ..io import formats
from ..io.pack import pack_cache, unpack_cache
from ..io.source import open_source
from .common import NoProgress, Overwrite, data_app, friendly, show

Src = Annotated[Path, typer.Argument(help="Source folder (searched recursively for DICOM).")]
CacheArg = Annotated[Path, typer.Argument(help="Cache folder.")]
CacheOut = Annotated[Path, typer.Option("--out", help="Cache folder to write.")]
FolderOut = Annotated[Path, typer.Option("--out", help="Output folder (one folder per patient).")]


def _imported(src: Path, out: Path, kind: str, roi_map: Path | None, overwrite: bool) -> None:
    c = workflows.import_patients(src, out, kind, roi_map, overwrite)
    fmt = formats.get(kind)
    size = fmt.source_bytes(src) if fmt.source_bytes is not None else None
    show(console.imported(c, out, kind, size))


@data_app.command("import-openkbp")
@friendly
def import_openkbp(src: Annotated[Path, typer.Argument(help="Folder of OpenKBP pt_* folders.")],
                   out: CacheOut, overwrite: Overwrite = False, no_progress: NoProgress = False) -> None:
    """Read OpenKBP CSV patients into a compact cache (one .npz per patient + dataset.json)."""
    _imported(src, out, "openkbp", None, overwrite)


@data_app.command("import-dicom")
@friendly
def import_dicom(src: Src, out: CacheOut, roi_map: Annotated[Path | None, typer.Option(
        "--roi-map", help="JSON: clinical ROI name -> canonical name (null ignores it); optional "
        "kinds/prescriptions.")] = None, overwrite: Overwrite = False,
        no_progress: NoProgress = False) -> None:
    """Import DICOM RT (CT + RTSTRUCT + RTDOSE, one patient per folder or mixed) into a cache; ROI names
    are mapped to canonical ones."""
    _imported(src, out, "dicom", roi_map, overwrite)


@data_app.command("import-nifti")
@friendly
def import_nifti(src: Src, out: CacheOut, overwrite: Overwrite = False,
                 no_progress: NoProgress = False) -> None:
    """Import NIfTI patients (ct, dose, possible_dose_mask, rois/<name> or roi_codes + rois.json)."""
    _imported(src, out, "nifti", None, overwrite)


def _exported(cache_dir: Path, out: Path, fmt: str, overwrite: bool, roi_format: str = "labels") -> None:
    show([f"wrote {workflows.export_cache(cache_dir, out, fmt, roi_format, overwrite)} patients to {out}"])


@data_app.command("export-openkbp")
@friendly
def export_openkbp(cache_dir: CacheArg, out: Annotated[Path, typer.Option("--out", help="Output folder (pt_* "
                   "folders).")], overwrite: Overwrite = False, no_progress: NoProgress = False) -> None:
    """Write a cache back in the native OpenKBP layout."""
    _exported(cache_dir, out, "openkbp", overwrite)


@data_app.command("export-dicom")
@friendly
def export_dicom(cache_dir: CacheArg, out: FolderOut, overwrite: Overwrite = False,
                 no_progress: NoProgress = False) -> None:
    """Write each patient as a CT series + RTSTRUCT (+ RTDOSE when it has a dose)."""
    _exported(cache_dir, out, "dicom", overwrite)


@data_app.command("export-nifti")
@friendly
def export_nifti(cache_dir: CacheArg, out: FolderOut, roi_format: Annotated[str, typer.Option(
        "--roi-format", help="labels (rois/<name>.nii.gz) or codes (roi_codes.nii.gz + "
        "rois.json).")] = "labels",
        overwrite: Overwrite = False, no_progress: NoProgress = False) -> None:
    """Write each patient as NIfTI files with the affine carrying spacing, orientation and origin."""
    _exported(cache_dir, out, "nifti", overwrite, roi_format)


@data_app.command("inspect")
@friendly
def inspect(src: Annotated[Path, typer.Argument(help="Any source: a cache, an OpenKBP, NIfTI or DICOM "
                                                     "folder.")]) -> None:
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
    src: Annotated[Path, typer.Argument(help="Source (a cache, OpenKBP, NIfTI or DICOM folder) whose "
                                             "patients to split.")],
    out: Annotated[Path, typer.Option("--out", help="Split JSON to write.")],
    random: Annotated[bool, typer.Option("--random", help="Seeded random split by --fractions.")] = False,
    ids: Annotated[list[str] | None, typer.Option(
        "--ids", help="User lists: name=pt_1,pt_2 (repeatable) or a JSON/text file.")] = None,
    temporal: Annotated[bool, typer.Option("--temporal", help="Earliest dates to the first split.")] = False,
    fractions: Annotated[str | None, typer.Option(
        "--fractions", help="Fractions or counts, e.g. 0.7,0.15,0.15 or 137,37.")] = None,
    names: Annotated[str | None, typer.Option("--names", help="Split names, e.g. train,val,test.")] = None,
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
