"""Rich renderings of dosepred's results, for terminals and notebooks (``rich.print(x)`` for each).

Each function takes a result of the API (a cache, an evaluation, a calibration, a QA result, a
benchmark's numbers) and returns the tables and lines ``dosepred``'s commands print; nothing here
reads data or computes a result.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from .bench.bitmask import table
from .bench.losses import table as losses_table
from .bench.networks import table as networks_table
from .bench.qa_power import console_lines
from .demo import QA_MODEL, TABLE_KEY, summary_rows
from .errors import name_some
from .io import formats
from .qa.families import FAMILY_TITLES
from .qa.result import UNTRUSTED_LEGEND, coverage_pct, rank_label


def met(ok: bool) -> Text:
    """A target's verdict: green "met" or red "not met" (styled text, not markup: the console prints
    markup as it is, since ids and ROI names may hold square brackets)."""
    return Text("met", style="green") if ok else Text("not met", style="red")


def num(x: float, nd: int = 3) -> str:
    """A number with ``nd`` decimals; ``-`` for NaN."""
    return "-" if x != x else f"{x:.{nd}f}"


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...] = ()) -> Table:
    t = Table(title=title)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if (i == 0 or c in left) else "right")
    return t


def _rx(r: Any) -> str:
    return f" {r.prescription:g} Gy" if r.prescription else ""


def imported(cache: Any, out: Any, kind: str, src_bytes: int | None = None) -> list[str]:
    """What ``data import-*`` wrote: patients, size, ROIs, and who lacks which ROI (``kind``: the
    imported format's name, :mod:`dosepred.io.formats`)."""
    fmt = formats.get(kind)
    c, rs = cache, cache.roi_set
    lines = [f"wrote {len(c)} patients to {out}: {c.nbytes() / 1e6:.1f} MB"
             + (f" (source CSV {src_bytes / 1e6:.1f} MB, ratio {src_bytes / max(c.nbytes(), 1):.1f}x)"
                if src_bytes else "")]
    if not fmt.fixed_roi_names:
        lines.append("ROIs " + ", ".join(f"{r.name} ({r.kind}{_rx(r)})" for r in rs))
    if fmt.lists_imported:
        for e in c.info["patients"]:
            lines.append(f"  {e['id']}: {'x'.join(map(str, e['shape']))}, dose "
                         f"{'yes' if e['has_dose'] else 'no'}, possible-dose mask from "
                         f"{e['meta'].get('possible_dose_mask')}"
                         + (f", missing {', '.join(e['missing_rois'])}" if e["missing_rois"] else ""))
    counts: dict[str, int] = {}
    lacking = [e for e in c.info["patients"] if e["missing_rois"]]
    for e in lacking:
        for r in e["missing_rois"]:
            counts[r] = counts.get(r, 0) + 1
    if lacking and not fmt.lists_imported:
        lines.append(f"{len(lacking)} patients lack some ROIs (not contoured; `dosepred data inspect` "
                     "lists them): " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items(),
                                                                               key=lambda x: -x[1])))
    return lines


def inspect(src: Any) -> list[Any]:
    """``data inspect``: a table of the patients of an opened source (ROIs, dose, grid), the ROI set,
    and each patient's geometry in patient coordinates."""
    rs, c = src.roi_set, src.cache
    size = f", {c.nbytes() / 1e6:.1f} MB" if c is not None else ""
    cols = ("patient", "shape", "spacing (mm)", "ROIs", "missing", "dose")
    cols += ("MB",) if c is not None else ()
    t = _table(f"{src.path} ({src.kind}): {len(src)} patients, {len(rs)} ROIs{size}", cols,
               cols[1:6])
    geo = []
    for p in (c.load(pid, rs, with_ct=False) for pid in c.ids) if c is not None else src.patients():
        g = p.geometry
        row = [p.id, "x".join(map(str, p.shape)), " x ".join(f"{v:.4g}" for v in p.spacing),
               f"{len(rs) - len(p.missing_rois)}/{len(rs)}", ", ".join(p.missing_rois) or "-",
               "yes" if p.dose is not None else "no"]
        if c is not None:
            e = c.entry(p.id)
            row[-1] = "yes" if e.get("has_dose") else "no"
            row.append(f"{(c.root / e['file']).stat().st_size / 1e6:.2f}")
        t.add_row(*row)
        assumed = " (assumed)" if p.meta.get("geometry") == "assumed" else ""
        geo.append(f"  {p.id}: axes {g.describe()}{assumed}; origin "
                   f"({', '.join(f'{v:.3f}' for v in g.origin)}) mm; spacing "
                   f"({', '.join(f'{v:.6g}' for v in g.spacing)}) mm")
    return [t, "ROI set (bit: name kind Rx): " + "; ".join(f"{k}: {r.name} {r.kind}{_rx(r)}"
                                                          for k, r in enumerate(rs)),
            "geometry (patient coordinates, LPS mm):", *geo]


def metrics_table(result: Any, title: str | None = None) -> Table:
    """The metric values of an evaluation (:meth:`dosepred.evaluation.CohortResult.metric_rows`:
    reference and prediction per patient and criterion metric, and their difference)."""
    t = Table(title=title or f"metric values, protocol {result.protocol} (prediction - reference)")
    for col in ("patient", "ROI", "metric", "reference", "prediction", "difference"):
        t.add_column(col, justify="left" if col in ("patient", "ROI", "metric") else "right")
    last = None
    for r in result.metric_rows():
        if last is not None and r["patient"] != last:
            t.add_section()
        last = r["patient"]
        t.add_row(r["patient"], r["roi"], f"{r['metric']} ({r['unit']})",
                  *("-" if v != v else f"{v:.2f}" for v in (r["reference"], r["prediction"])),
                  "-" if r["difference"] != r["difference"] else f"{r['difference']:+.2f}")
    return t


def evaluation(res: Any, missing: list[str], show_metrics: bool = False) -> list[Any]:
    """The evaluation summary: per patient scores, cohort, the criteria table; the metric values per
    patient with ``show_metrics`` or when the protocol has no limits."""
    t = _table(f"{len(res.patients)} patients, protocol {res.protocol}",
               ("patient", "dose score", "DVH score", "PTV score", "OAR score", "criteria passed"))
    for p in res.patients:
        t.add_row(p.id, num(p.dose_score), num(p.dvh_score), num(p.ptv_score), num(p.oar_score),
                  "-" if not p.checked else f"{sum(bool(c.pred_pass) for c in p.checked)}/{len(p.checked)}")
    t.add_section()
    t.add_row(Text("cohort", style="bold"), num(res.dose_score), num(res.dvh_score), num(res.ptv_score),
              num(res.oar_score), num(res.criteria_pass_rate, 1) + " %")
    out: list[Any] = [t]
    rows = res.criteria_table()
    if show_metrics or not rows:  # without limits there is nothing to pass: show the values
        out.append(metrics_table(res))
    if rows:
        ct = _table("criteria (patients passing)", ("criterion", "prediction", "reference", "agree"))
        for r in rows:
            n = r["n"]
            # as the report: by agreement with the plans patient by patient, not by the count (all passing
            # where plans fail is no better a prediction)
            style = "green" if r["agree"] == n else "red"
            ct.add_row(r["criterion"], Text(f"{r['pred_pass']}/{n}", style=style), f"{r['ref_pass']}/{n}",
                       f"{r['agree']}/{n}")
        out += [ct, "green: the prediction passes or fails the criterion exactly where the plan does; red: "
                    "not on every patient (agree)",
                f"criteria pass rate: prediction {num(res.criteria_pass_rate, 1)} %, reference "
                f"{num(res.reference_pass_rate, 1)} %, agreement {num(res.criteria_agreement, 1)} %"]
    if missing:
        out.append(f"not evaluated (no prediction): {len(missing)} patient(s), {name_some(missing, 10)}")
    return out


def calibration(cal: Any) -> Table:
    """The cross-validated coverage and width of each metric family's chosen method
    (``cal``: a :class:`~dosepred.qa.calibration.Calibration` computed with its cross-validation)."""
    cv = cal.cross_validation
    more = "".join(f", {n} for the {FAMILY_TITLES.get(f, f)}"  # families of one unit per patient
                   for f, n in (cv.splits_small_families or {}).items())
    t = _table(f"{len(cal.patients)} patients, protocol {cal.protocol}, {cal.quantile_rule} "
               f"quantiles; cross-validated ({cv.splits} random splits{more}, {cv.calibration_fraction:.0%} "
               "calibrating); widths in Gy, of V-metrics in % of the ROI volume",
               ("family", "units", "method", "coverage 80 %", "width 80 % ", "coverage 90 %", "width 90 %"),
               ("method",))
    unbounded = []
    for fam, d in cal.families.items():
        r = cv.results.get(fam, {}).get(d.method, {})
        cells = []
        for lev in ("0.8", "0.9"):
            x = r.get(lev)
            if x is None:
                cells += ["-", "-"]
                continue
            # an interval unbounded in some splits was clipped there (V-metrics to 0-100 %) and counted as
            # covering every held-out value: its coverage is no measurement; say so, never a plain number
            star = "*" if x.get("unbounded", 0) > 0 else ""
            if star:
                unbounded.append(f"{FAMILY_TITLES.get(fam, fam)}, {d.method} at {float(lev) * 100:g} %: "
                                 f"{x['unbounded']:.0f} %")
            cells += [f"{x['coverage']:.1f}{star}", f"{x['width']:.2f}{star}"]
        t.add_row(FAMILY_TITLES.get(fam, fam), str(d.n), d.method, *cells)
    if unbounded:
        t.caption = ("* unbounded in some cross-validation splits (too few calibrating units for the method "
                     f"at that coverage: {'; '.join(unbounded)} of the splits), counted there as covering "
                     "everything: not a measured coverage or width; calibrate on more patients")
    return t


def qa(res: Any, coverage: float) -> list[Any]:
    """Plan QA: the ranked cohort summary, the time per plan (its warnings are not here: ``dosepred qa``
    says them on stderr, ``workflows.qa_plans``)."""
    out: list[Any] = []
    t = _table(f"plan QA: {len(res.patients)} plans, protocol {res.protocol}, {coverage_pct(coverage)} "
               "intervals, ranked by potential improvement",
               ("rank", "patient", "potential (Gy)", "flags", "failed limits", "flagged criteria",
                "reliability"), ("patient", "flagged criteria", "reliability"))
    rows = res.summary()
    for r in rows:
        t.add_row(rank_label(r), r["id"], f"{r['potential_gy']:.1f}", str(r["flags"]), str(r["failed"]),
                  ", ".join(r["flagged"]) or "-", ", ".join(r["reliability"]) or "-")
    secs = [p.seconds for p in res.patients] or [float("nan")]
    legend = [UNTRUSTED_LEGEND] if any(r["untrusted"] for r in rows) else []
    out += [t, *legend, *qa_notes(res)]
    return out + [f"QA time per plan after the model is loaded (read excluded): mean "
                  f"{sum(secs) / len(secs):.2f} s, max {max(secs):.2f} s"]


def qa_notes(res: Any, max_ids: int = 5) -> list[Any]:
    """Plan QA: each plan's reliability notes, and per ROI the plans that lack it (their criteria are
    in the results as not contoured, not checked)."""
    out: list[Any] = [Text.assemble(("note:", "yellow"), f" {p.id}: {n}")
                      for p in res.patients for n in p.notes]
    lacking: dict[str, list[str]] = {}
    for p in res.patients:
        for r in p.not_contoured:
            lacking.setdefault(r, []).append(p.id)
    for r, ids in lacking.items():
        n = sum(c.roi == r for c in next(p for p in res.patients if p.id == ids[0]).criteria)
        who = ", ".join(ids) if len(ids) <= max_ids else f"{len(ids)} of the {len(res.patients)} plans"
        crit = f"its {n} criteria are" if n != 1 else "its criterion is"
        out.append(f"not contoured: {r} in {who}: {crit} not checked" if n else
                   f"not contoured: {r} in {who} (no criterion of the protocol)")
    return out


def demo(res: dict[str, Any]) -> list[Any]:
    """The demo's tables: train your own (synthetic) first, then the released models on real patients
    and their plan QA, so the real results are what stays on screen."""
    from rich.text import Text

    out: list[Any] = []
    synth, real = res.get("synthetic"), res.get("released")
    parts = [(synth, "train your own: MAE vs MAE+CDM trained here, held-out synthetic patients")]
    if real is not None:
        parts.append((real, f"released models on {len(real['patients'])} real OpenKBP validation patients"))
    for part, title in parts:
        if part is None:
            continue
        t = _table(f"{title} ({TABLE_KEY})", ("metric", *part["results"]))
        for name, vals in summary_rows(part["results"]):
            t.add_row(name, *vals)
        out += [t, Text(part["note"])]
    if real is not None:
        qa = real["qa"]
        t = _table(f"plan QA of the {len(qa['ranked'])} plans with {QA_MODEL} ({qa['model']}, "
                   f"{coverage_pct(qa['coverage'])} intervals): ranked by potential improvement",
                   ("rank", "plan", "potential (Gy)", "flags", "flagged criteria"),
                   left=("plan", "flagged criteria"))
        for r in qa["ranked"]:
            t.add_row(rank_label(r), r["id"], f"{r['potential_gy']:.1f}", str(r["flags"]),
                      ", ".join(r["flagged"]) or "-")
        legend = [Text(UNTRUSTED_LEGEND)] if any(r.get("untrusted") for r in qa["ranked"]) else []
        out += [t, *legend, Text(f"{qa['shown']}'s QA is in the report; every plan's: {qa['report']}")]
    return out


def bench(name: str, res: dict[str, Any]) -> list[Any]:
    """A benchmark's table and lines (``name``: evaluate, predict, bitmask, losses, train-step, networks,
    qa-power)."""
    if name == "evaluate":
        t = _table(f"evaluation throughput, {res['patients']} patients (OpenKBP dose + DVH scores)",
                   ("path", "seconds", "patients/s", "vs naive", "vs dosepred CSV"))
        for r in res["rows"]:
            t.add_row(r["path"], f"{r['seconds']:.2f}", f"{r['patients_per_s']:.2f}",
                      f"{r['speedup_vs_naive']:.1f}x", f"{r['speedup_vs_csv']:.1f}x")
        return [t, f"cache format version {res['cache_version']}, "
                   f"best of {res['repeats']} repeat(s)"]
    if name == "predict":
        def mm(v: Any) -> str:
            return ", ".join(f"{s:.3g}" for s in v)
        return [f"{res['patient']} on a {'x'.join(map(str, res['clinical_shape']))} grid "
                f"({mm(res['clinical_spacing'])} mm, axes {res['clinical_axes']}) -> model grid "
                f"{'x'.join(map(str, res['model_grid_shape']))} ({mm(res['model_grid_spacing'])} mm, axes "
                f"{res['model_axes']}), {res['windows']} window(s)",
                f"resample in {res['resample_in_s']:.2f} s, predict {res['predict_s']:.2f} s "
                f"({'with' if res.get('tta') else 'without'} test-time flipping), resample out "
                f"{res['resample_out_s']:.2f} s: total {res['total_s']:.2f} s per patient "
                f"({res['threads']} threads, {res['cpu']}, best of {res['repeats']})",
                f"dose score {res['dose_score_clinical_grid']:.3f} Gy on the clinical grid, "
                f"{res['dose_score_on_openkbp_grid']:.3f} Gy moved onto the OpenKBP grid "
                f"(OpenKBP path: {res['dose_score_openkbp_path']:.3f} Gy)"]
    if name == "qa-power":
        return console_lines(res)
    m = res["machine"]
    if name == "networks":
        return [networks_table(res), f"torch {res['torch']}; {m['cpu_count']} CPU cores ({m['cpu']}), "
                f"{m.get('cuda_device', 'no GPU used')}; load average {m['load_average']}"]
    if name == "bitmask":
        out: list[Any] = [table(res), f"model: {res['model']}; loss: {res['loss']}; {m['cpu_count']} CPU "
                          f"cores, {res['torch_threads']} torch threads per run, "
                          f"{m.get('cuda_device', 'no GPU used')}; {res['seconds']:.0f} s"]
        return out + [Text.assemble(f"K={tg['rois']} {tg['pipeline']}: {tg['what']}: {tg['value']:.2f}x ",
                                    met(tg["met"])) for tg in res["targets"]]
    if name == "train-step":
        t = _table(f"one training step, {res['size']}^3 voxels, base {res['base']}, {res['levels']} levels, "
                   f"{res['device']} (median of {res['repeats']} rounds of {res['steps']} steps, in turns)",
                   ("variant", "s/step", "vs fp32", "compile s"))
        for r in res["rows"]:
            if "failed" in r:
                t.add_row(r["variant"], "failed", r["failed"], "")
            else:
                t.add_row(r["variant"], f"{r['sec_per_step']:.3f}", f"{r['ratio_vs_fp32']:.2f}x",
                          f"{r['compile_s']:.0f}" if r["compile_s"] else "")
        return [t, f"torch {res['torch']}, {res['torch_threads']} threads; {m['cpu_count']} CPU cores "
                   f"({m['cpu']}); load average {m['load_average']}"]

    out = [losses_table(res), f"model: {res['model']}; {m['cpu_count']} CPU cores, {m['torch_threads']} "
           f"torch threads, {m.get('cuda_device', 'no GPU')}; load average {m.get('load_average', '?')}; "
           f"{res['seconds']:.0f} s"]
    tg = res["target"]
    if tg["values"]:
        values = ", ".join(f"{k} {v:.3f}" for k, v in tg["values"].items())
        out.append(Text.assemble(f"{tg['what']}: {values} ", met(tg["met"])))
    return out
