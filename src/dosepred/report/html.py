"""HTML assembly of a report; see :mod:`dosepred.report`."""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..evaluation import CohortResult, PatientResult
from ..fsutil import write_text
from ..patient import Patient
from ..protocol.schema import CHECK_TOLERANCE
from .plots import dvh_uri
from .views import VIEW_CSS, VIEW_JS, Panel, ViewRenderer, viewer_html

if TYPE_CHECKING:  # pragma: no cover
    from ..protocol import Protocol

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:18px 0 6px} .meta{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d0d0;padding:3px 8px;text-align:right} th{background:#f2f2f2}
td.l,th.l{text-align:left} td.pass{background:#d9f2d9;color:#135c13} td.fail{background:#f8d7d7;color:#8a1010}
td.na{color:#999} .imgs img{max-width:100%;margin:4px 0;border:1px solid #eee}
.patient{margin-bottom:30px} .key{font-size:12px;margin:4px 0}
.key span{display:inline-block;padding:1px 6px;margin-right:6px;border:1px solid #ccc}
.warn{background:#fff4d6;border:1px solid #e0c060;padding:4px 10px;font-size:13px;margin:8px 0}
"""

#: What the colours of the evaluation criteria tables mean.
EVAL_KEY = ("<div class='key'>colour key: <span class='pass'>green</span> the dose meets the criterion's "
            "limit "
            "<span class='fail'>red</span> it does not <span class='na'>grey</span> no limit (only measured)"
            "</div>").replace("class='pass'", "style='background:#d9f2d9;color:#135c13'").replace(
    "class='fail'", "style='background:#f8d7d7;color:#8a1010'").replace("class='na'", "style='color:#999'")


def head_html(title: str, extra_css: str = "") -> str:
    """``<!DOCTYPE html>`` up to ``<body>``: the styles and the slice-slider script (no external
    resources)."""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}{VIEW_CSS}{extra_css}</style><script>{VIEW_JS}</script></head><body>")


def generated() -> str:
    """When a report is written, for its "generated" line: local time with its offset from UTC
    (``2026-12-07 18:27 UTC+01:00``), so a report read in another time zone, or after a clock change,
    says when it was made."""
    t = datetime.now().astimezone()
    off = t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M} UTC{off[:3]}:{off[3:5]}"


def write_html_atomic(path: Path, parts: list[str]) -> Path:
    write_text(path, "\n".join(parts))
    return path


def fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def decimals_beside(value: float, bounds: Iterable[float | None], nd: int = 2, most: int = 6) -> int:
    """The fewest decimals (``nd`` to ``most``) at which ``value`` rounded compares with each bound
    rounded as the unrounded numbers compare (below, equal within :data:`CHECK_TOLERANCE
    <dosepred.protocol.schema.CHECK_TOLERANCE>`, above): a D99% of 66.496 Gy beside a limit of 66.5 Gy
    and a FAIL is 66.496, not 66.50. NaN or None bounds are ignored."""
    def sign(a: float, b: float, tol: float) -> int:
        return 0 if abs(a - b) <= tol else (1 if a > b else -1)

    if value is None or not np.isfinite(value):
        return nd
    bs = [float(b) for b in bounds if b is not None and np.isfinite(b)]
    for k in range(nd, most + 1):
        if all(sign(round(value, k), round(b, k), 0.0) == sign(value, b, CHECK_TOLERANCE * max(abs(b), 1.0))
               for b in bs):
            return k
    return most


def esc(s: Any) -> str:
    return html.escape(str(s))


class ReportWriter:
    """Build a report while patients stream past (no volumes are kept).

    ``add_patient(ref, {"name": dose, ...})`` renders that patient's DVH and its three orthogonal
    views (reference, each prediction, each prediction - reference; slice sliders) as embedded
    images; ``finish({"name": cohort_result, ...})`` writes the single self-contained
    ``report.html`` and returns its path.
    """

    def __init__(self, out_dir: str | os.PathLike, title: str = "dosepred evaluation",
                 protocol: Protocol | None = None) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.protocol = protocol
        self.images: dict[str, str] = {}  # patient id -> HTML of its figures (embedded images)
        self.order: list[str] = []

    def add_patient(self, ref: Patient, preds: dict[str, np.ndarray]) -> None:
        assert ref.dose is not None
        panels = [Panel("reference", ref.dose)] + [Panel(k, np.asarray(v)) for k, v in preds.items()]
        panels += [Panel(f"{k} - reference", np.asarray(v) - ref.dose, "diff") for k, v in preds.items()]
        views = viewer_html(ViewRenderer(ref, panels))
        dvh = dvh_uri(ref, preds)
        self.images[ref.id] = f"<div class='imgs'><img src='{dvh}' alt='DVH of {esc(ref.id)}'></div>{views}"
        self.order.append(ref.id)

    def tap(self, pairs: Iterable[tuple[Patient, np.ndarray]], name: str = "prediction"
            ) -> Iterator[tuple[Patient, np.ndarray]]:
        """Pass (reference, prediction) pairs through, rendering each patient on the way."""
        for ref, pred in pairs:
            self.add_patient(ref, {name: pred})
            yield ref, pred

    # ------------------------------------------------------------------------------------ html
    def finish(self, cohorts: dict[str, CohortResult] | CohortResult,
               extra_tables: dict[str, list[dict[str, Any]]] | None = None, intro: str = "",
               sections: Sequence[tuple[str, str]] = ()) -> Path:
        """Write ``report.html``. ``intro``: HTML placed under the title, before the cohort table;
        ``sections``: (title, HTML) pairs placed after the tables, before the patients. Both are
        inserted as given (the caller escapes them)."""
        if isinstance(cohorts, CohortResult):
            cohorts = {"prediction": cohorts}
        names = list(cohorts)
        parts = [head_html(self.title),
                 f"<h1>{esc(self.title)}</h1>",
                 f"<div class='meta'>protocol {esc(next(iter(cohorts.values())).protocol)} &middot; "
                 f"{len(next(iter(cohorts.values())).patients)} patients &middot; generated "
                 f"{generated()} by dosepred</div>", intro]
        parts.append("<h2>Cohort</h2>" + self._cohort_table(cohorts))
        said = list(dict.fromkeys(w for c in cohorts.values() for w in c.warnings))
        if said:  # what the console and the JSON warn of (values that do not mean what they seem)
            parts.append("<div class='warn'><b>warnings</b><ul>" + "".join(f"<li>{esc(w)}</li>" for w in said)
                         + "</ul></div>")
        parts.append("<p class='meta'>Dose score: mean |ref - pred| over all voxels / possible-dose "
                     "voxels (Gy). DVH score: mean |&Delta;| of the OpenKBP metrics (Gy). PTV / OAR "
                     "score: mean |&Delta;| of the protocol's target / OAR dose metrics (Gy). Pass rate: "
                     "% of (patient, criterion) checks the prediction passes; agreement: % where "
                     "prediction and reference give the same verdict.</p>")
        crit = self._criteria_summary(cohorts)
        if crit:
            parts.append("<h2>Criteria (patients passing)</h2>" + crit)
        for title, rows in (extra_tables or {}).items():
            parts.append(f"<h2>{esc(title)}</h2>" + self._dict_table(rows))
        for title, body in sections:
            parts.append(f"<h2>{esc(title)}</h2>" + body)
        parts.append("<h2>Patients</h2>")
        by_id = {n: {p.id: p for p in c.patients} for n, c in cohorts.items()}
        ids = self.order or [p.id for p in next(iter(cohorts.values())).patients]
        for pid in ids:
            results = {n: by_id[n][pid] for n in names if pid in by_id[n]}
            parts.append(self._patient(pid, results))
        parts.append("</body></html>")
        return write_html_atomic(self.out / "report.html", parts)

    @staticmethod
    def _cohort_table(cohorts: dict[str, CohortResult]) -> str:
        head = ["prediction", "patients", "dose score", "DVH score", "PTV score", "OAR score",
                "criteria pass rate (%)", "reference pass rate (%)", "agreement (%)"]
        rows = []
        for n, c in cohorts.items():
            s = c.summary()
            rows.append(f"<tr><td class='l'>{esc(n)}</td><td>{len(c.patients)}</td>"
                        f"<td>{fmt(s['dose_score'], 3)}</td><td>{fmt(s['dvh_score'], 3)}</td>"
                        f"<td>{fmt(s['ptv_score'], 3)}</td><td>{fmt(s['oar_score'], 3)}</td>"
                        f"<td>{fmt(s['criteria_pass_rate'], 1)}</td>"
                        f"<td>{fmt(s['reference_pass_rate'], 1)}</td>"
                        f"<td>{fmt(s['criteria_agreement'], 1)}</td></tr>")
        return ("<table><tr>" + "".join(f"<th{' class=l' if i == 0 else ''}>{h}</th>"
                                        for i, h in enumerate(head)) + "</tr>" + "".join(rows) + "</table>")

    @staticmethod
    def _criteria_summary(cohorts: dict[str, CohortResult]) -> str:
        # rows by the criterion's position in the protocol (two criteria may share a name)
        tables = {n: {(r["index"], r["criterion"]): r for r in c.criteria_table()}
                  for n, c in cohorts.items()}
        crits: list[tuple[int, str]] = []
        for t in tables.values():
            crits += [k for k in t if k not in crits]
        if not crits:
            return ""
        head = "<tr><th class='l'>criterion</th><th>reference</th>" + "".join(
            f"<th>{esc(n)}</th>" for n in cohorts) + "</tr>"
        rows = []
        for k in crits:
            first = next(t[k] for t in tables.values() if k in t)
            cells = [f"<td class='l'>{esc(k[1])}</td>", f"<td>{first['ref_pass']}/{first['n']}</td>"]
            for t in tables.values():
                r = t.get(k)
                if r is None:
                    cells.append("<td class='na'>-</td>")
                    continue
                # coloured by agreement with the plans, patient by patient (not by the counts: 3/4
                # passing against the plans' 1/4 may agree on none)
                cls = "pass" if r["agree"] == r["n"] else "fail"
                said = f"{r['pred_pass']}/{r['n']} (agrees {r['agree']}/{r['n']})"
                cells.append(f"<td class='{cls}'>{said}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        return ("<table>" + head + "".join(rows) + "</table><p class='meta'>Patients passing each criterion; "
                "green: the prediction passes or fails it exactly where the plan does, red: not on every "
                "patient (agrees k/n: on k of the n).</p>")

    @staticmethod
    def _dict_table(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "<p>-</p>"
        cols = list(dict.fromkeys(k for r in rows for k in r))
        out = "<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"
        for r in rows:
            out += "<tr>" + "".join(
                f"<td>{fmt(v, 3) if isinstance(v, float) else esc(v if v is not None else '-')}</td>"
                for v in (r.get(c) for c in cols)) + "</tr>"
        return out + "</table>"

    def _patient(self, pid: str, results: dict[str, PatientResult]) -> str:
        names = list(results)
        first = next(iter(results.values())) if results else None
        out = [f"<div class='patient'><h3>{esc(pid)}</h3>"]
        if first is not None:
            out.append("<table><tr><th class='l'>prediction</th><th>dose score</th><th>DVH score</th>"
                       "<th>PTV score</th><th>OAR score</th><th>criteria passed</th></tr>")
            for n, r in results.items():
                ch = r.checked
                out.append(f"<tr><td class='l'>{esc(n)}</td><td>{fmt(r.dose_score, 3)}</td>"
                           f"<td>{fmt(r.dvh_score, 3)}</td><td>{fmt(r.ptv_score, 3)}</td>"
                           f"<td>{fmt(r.oar_score, 3)}</td><td>{sum(bool(c.pred_pass) for c in ch)}/{len(ch)}"
                           "</td></tr>")
            out.append("</table>")
            if first.missing_rois:
                out.append(f"<div class='meta'>not contoured: {esc(', '.join(first.missing_rois))}</div>")
            if first.criteria:
                out.append(EVAL_KEY)
                out.append("<table><tr><th class='l'>criterion</th><th>reference</th>" +
                           "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>")
                # each prediction's result of the same criterion, by its position in the protocol (results
                # made without one, index 0, by their position in the list)
                by = {n: results[n].by_criterion() for n in names}
                for i, c in enumerate(first.criteria):
                    cells = [f"<td class='l'>{esc(c.name)}</td>",
                             self._cell(c.ref, c.ref_pass, c.unit, c.limit)]
                    for n in names:
                        cc = (by[n].get(c.index) if c.index else
                              results[n].criteria[i] if i < len(results[n].criteria) else None)
                        cells.append(self._cell(cc.pred, cc.pred_pass, cc.unit, cc.limit) if cc
                                     else "<td>-</td>")
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</table>")
        out.append(self.images.get(pid, ""))
        out.append("</div>")
        return "".join(out)

    @staticmethod
    def _cell(v: float, ok: bool | None, unit: str, limit: float | None = None) -> str:
        """A value coloured by its verdict, with the decimals that show it on its side of ``limit``."""
        cls = "na" if ok is None else ("pass" if ok else "fail")
        return f"<td class='{cls}'>{fmt(v, decimals_beside(v, [limit]))} {esc(unit)}</td>"


def write_report(out_dir: str | os.PathLike, cohort_result: CohortResult | dict[str, CohortResult],
                 patients: Sequence[Patient] | Iterable[Patient],
                 pred_doses: Sequence[np.ndarray] | dict[str, Sequence[np.ndarray]],
                 title: str = "dosepred evaluation",
                 extra_tables: dict[str, list[dict[str, Any]]] | None = None, intro: str = "",
                 sections: Sequence[tuple[str, str]] = ()) -> Path:
    """Write the self-contained ``out_dir/report.html`` (images embedded); returns its path.

    ``cohort_result`` and ``pred_doses`` are either one prediction (a CohortResult and a sequence of
    doses in the order of ``patients``) or several named ones ({"MAE": result, "MAE+CDM": result}
    and {"MAE": doses, "MAE+CDM": doses}). ``extra_tables``: title -> list of row dicts, shown
    after the cohort table (e.g. training times); ``intro`` and ``sections``: HTML of the caller
    (:meth:`ReportWriter.finish`).
    """
    if isinstance(cohort_result, CohortResult):
        cohort_result = {"prediction": cohort_result}
    if not isinstance(pred_doses, dict):
        pred_doses = {next(iter(cohort_result)): pred_doses}
    w = ReportWriter(out_dir, title)
    seqs = {k: iter(v) for k, v in pred_doses.items()}
    for p in patients:
        w.add_patient(p, {k: np.asarray(next(it)) for k, it in seqs.items()})
    return w.finish(cohort_result, extra_tables, intro, sections)
