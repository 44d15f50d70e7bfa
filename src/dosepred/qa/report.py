"""The plan QA report: one self-contained ``report.html`` (see docs/qa.md, "Reading the report").

Top: what was checked (model, protocol, calibration, coverage) and the cohort ranked by potential
improvement. Per plan: the criteria table with its colour key, the DVHs with the predicted interval
as a band and the criteria as markers, and the three orthogonal views of plan, prediction and
plan - prediction (:mod:`dosepred.report.views`; the page's parts: :mod:`dosepred.report.html`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from ..patient import Patient
from ..report.html import decimals_beside, esc, fmt, generated, head_html, write_html_atomic
from ..report.plots import dvh_qa_uri
from ..report.views import Panel, ViewRenderer, viewer_html
from .families import FAMILY_TITLES
from .result import (
    FLAG_BETTER,
    FLAG_NOT_CONTOURED,
    IMPROVEMENT_FLAGS,
    UNTRUSTED_LEGEND,
    PatientQA,
    QAResult,
    coverage_pct,
    rank_label,
)


class Bands(Protocol):
    """What the report needs of the checker (:class:`dosepred.qa.check.QAChecker` has it): the
    coverage of the intervals and the calibrated DVH band of an ROI, if the calibration has bands."""

    coverage: float

    @property
    def has_dvh_band(self) -> bool: ...

    def dvh_band(self, roi: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None: ...


QA_CSS = """
td.imp{background:#ffe2a8} td.better{background:#d6e6ff} .rel{color:#555;font-style:italic}
td.nc{color:#777;font-style:italic;text-align:center} tr.nc td{color:#777}
.notes{display:table;margin:4px 0 8px;padding:4px 8px;border-left:4px solid #999;background:#f4f4f4;
font-size:13px}
tr.imp td.l:first-child{border-left:4px solid #e69500}
tr.better td.l:first-child{border-left:4px solid #3b78e7}
.flag{display:block;font-size:12px;text-align:left}
"""

QA_KEY = (
    "<div class='key'><b>colour key</b> &middot; plan vs limit: "
    "<span style='background:#d9f2d9;color:#135c13'>green</span> the plan meets the protocol limit, "
    "<span style='background:#f8d7d7;color:#8a1010'>red</span> it does not, "
    "<span style='color:#999'>-</span> no limit &middot; flags: "
    "<span style='background:#ffe2a8'>amber</span> the plan is worse than the achievable interval "
    "(OAR dose above it, or target coverage below it: the plan might be improved), "
    "<span style='background:#d6e6ff'>blue</span> the plan is better than the interval, "
    "<i>grey italics</i>: the criterion's ROI is not contoured (not checked) or the criterion is not "
    "calibrated &middot; the grey box above the table: the plan's reliability notes (where validation "
    "measured larger errors, docs/qa.md) and the ROIs it lacks</div>")


class QAReportWriter:
    """Collects each plan's section as QA streams; :meth:`finish` writes ``report.html``."""

    def __init__(self, out_dir: str | os.PathLike, checker: Bands, max_patients: int | None = None,
                 title: str = "dosepred plan QA", point_mm: tuple[float, float, float] | None = None) -> None:
        self.out = Path(out_dir)  # created by finish(): a run that fails writes nothing
        self.chk = checker
        self.max_patients = max_patients
        self.title = title
        self.figures: dict[str, str] = {}
        self.point_mm = point_mm  # views through this patient point (LPS mm); else the target centroid

    def add(self, plan: Patient, pred: np.ndarray, pq: PatientQA) -> None:
        assert plan.dose is not None
        band = ({r: self.chk.dvh_band(r) for r in plan.present_rois} if self.chk.has_dvh_band else None)
        dvh = dvh_qa_uri(plan, pred, pq.criteria,
                         title=f"{plan.id}: DVH, plan (solid) vs prediction (dashed), "
                               f"{coverage_pct(self.chk.coverage)} band", band=band,
                         coverage=self.chk.coverage)
        panels = [Panel("plan", plan.dose), Panel("prediction (achievable)", pred),
                  Panel("plan - prediction", plan.dose - pred, "diff")]
        point = ix = None
        if self.point_mm is not None:
            assert plan.geometry is not None
            ix = plan.geometry.to_index(np.asarray(self.point_mm, dtype=float))
            point = np.clip(ix, 0, np.asarray(plan.shape) - 1)
        renderer = ViewRenderer(plan, panels, point=point)
        views = viewer_html(renderer)
        where = "the target centroid"
        if self.point_mm is not None:
            where = "the point ({}) mm".format(", ".join(f"{v:g}" for v in self.point_mm))
            # the slices are cut within the region shown (ROIs and dose): a point beyond it is not on them
            if any(not a - 0.5 <= k <= b - 0.5 for k, (a, b) in zip(ix, renderer.box, strict=True)):
                where = (f"the slices nearest {where}, which lies outside this plan's region shown "
                         "(its ROIs and dose)")
        self.figures[pq.id] = (f"<h4>DVH</h4><div class='imgs'><img src='{dvh}' alt='DVH of {esc(pq.id)}'>"
                               f"</div><h4>Views through {where}</h4>{views}")

    @staticmethod
    def _notes(pq: PatientQA) -> str:
        """The patient's reliability notes and the ROIs it lacks, once each (empty when none)."""
        items = [f"&#9888; {esc(n)}" for n in pq.notes]
        if pq.not_contoured:
            one = len(pq.not_contoured) == 1
            items.append(f"not contoured: {esc(', '.join(pq.not_contoured))} ({'its' if one else 'their'} "
                         f"criteria are not checked; the model predicts without {'it' if one else 'them'})")
        if not items:
            return ""
        return "<div class='notes'>" + "<br>".join(items) + "</div>"

    def _criteria_table(self, pq: PatientQA, coverage: float) -> str:
        rows = ["<table><tr><th class='l'>criterion</th><th class='l'>family</th><th>plan</th>"
                f"<th>predicted</th><th>{coverage_pct(coverage)} interval</th><th>limit</th>"
                "<th>plan vs limit</th><th class='l'>flags</th></tr>"]
        for c in pq.criteria:
            imp = [f for f in c.flags if f.startswith(IMPROVEMENT_FLAGS)]
            better = [f for f in c.flags if f.startswith(FLAG_BETTER)]
            rel = [f for f in c.flags if f not in imp and f not in better]
            cls = "imp" if imp else ("better" if better else ("nc" if FLAG_NOT_CONTOURED in c.flags else ""))
            pass_cls = "na" if c.plan_pass is None else ("pass" if c.plan_pass else "fail")
            pass_txt = "-" if c.plan_pass is None else ("pass" if c.plan_pass else "FAIL")
            flag_html = "".join(f"<span class='flag'>{esc(f)}</span>" for f in imp + better)
            flag_html += "".join(f"<span class='flag rel'>&#9888; {esc(f)}</span>" for f in rel)
            u = esc(c.unit)
            # decimals enough to show the plan on the side of its limit and interval that its verdict and
            # flags say (66.496 beside >= 66.50 and FAIL, not 66.50)
            nd = decimals_beside(c.plan, [c.limit, c.low, c.high])
            lim = ("-" if c.limit is None else
                   f"{'&ge;' if not c.lower_better else '&le;'} {fmt(c.limit, nd)} {u}")
            if cls == "nc":  # no values: one cell says why
                values = "<td colspan='3' class='nc'>not contoured: not checked</td>"
            else:
                values = (f"<td>{fmt(c.plan, nd)} {u}</td><td>{fmt(c.predicted, nd)} {u}</td>"
                          f"<td>{fmt(c.low, nd)} - {fmt(c.high, nd)} {u}</td>")
            rows.append(
                f"<tr class='{cls}'><td class='l'>{esc(c.name or f'{c.roi} {c.metric}')}</td>"
                f"<td class='l'>{esc(FAMILY_TITLES.get(c.family, c.family))}</td>"
                f"{values}<td>{lim}</td>"
                f"<td class='{pass_cls}'>{pass_txt}</td><td class='l {cls}'>{flag_html or '-'}</td></tr>")
        rows.append("</table>")
        return "".join(rows)

    def finish(self, res: QAResult) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        summary = res.summary()
        keep = {r["id"] for r in summary[: self.max_patients]} if self.max_patients else None
        by_id = {p.id: p for p in res.patients}
        meth = ", ".join(f"{FAMILY_TITLES.get(f, f)}: {m}" for f, m in res.methods.items())
        parts = [head_html(self.title, QA_CSS), f"<h1>{esc(self.title)}</h1>",
                 f"<div class='meta'>model {esc(res.model)} &middot; protocol {esc(res.protocol)} &middot; "
                 f"calibration: protocol {esc(res.calibration_protocol)} ({esc(meth)}) &middot; intervals at "
                 f"{coverage_pct(res.coverage)} coverage &middot; {len(res.patients)} plans &middot; "
                 "generated "
                 f"{generated()} by dosepred</div>"]
        for w in res.warnings:
            parts.append(f"<p class='meta'>&#9888; {esc(w)}</p>")
        parts.append(
            "<p>For each criterion, <b>predicted</b> is the value the model predicts as achievable for this "
            "patient and the <b>interval</b> is where a plan made like the model's training plans would lie "
            f"with {coverage_pct(res.coverage)} probability (split-conformal calibration on patients the "
            "model did not train on). A plan value outside the interval on the bad side is flagged: it might "
            "be improved. "
            "A flag is a prompt to look, not a verdict; see docs/qa.md.</p>")
        parts.append("<h2>Cohort: plans ranked by potential improvement</h2>")
        parts.append("<table><tr><th>rank</th><th class='l'>patient</th><th>potential improvement (Gy)</th>"
                     "<th>flags</th><th>failed limits</th><th class='l'>flagged criteria</th>"
                     "<th class='l'>reliability notes</th><th class='l'>not contoured</th></tr>")
        for r in summary:
            parts.append(f"<tr><td>{rank_label(r)}</td>"
                         f"<td class='l'><a href='#p-{esc(r['id'])}'>{esc(r['id'])}</a></td>"
                         f"<td>{r['potential_gy']:.1f}</td><td>{r['flags']}</td><td>{r['failed']}</td>"
                         f"<td class='l'>{esc(', '.join(r['flagged']) or '-')}</td>"
                         f"<td class='l'>{esc(', '.join(r['reliability']) or '-')}</td>"
                         f"<td class='l'>{esc(', '.join(r['not_contoured']) or '-')}</td></tr>")
        parts.append("</table><p class='meta'>Potential improvement: sum over the flagged dose criteria of "
                     "|plan - predicted| (Gy).</p>")
        if any(r["untrusted"] for r in summary):
            parts.append(f"<p class='meta'>&#9888; {esc(UNTRUSTED_LEGEND)}.</p>")
        parts.append("<h2>Plans</h2>")
        for r in summary:
            pq = by_id[r["id"]]
            parts.append(f"<div class='patient' id='p-{esc(pq.id)}'><h3>{esc(pq.id)} (rank {rank_label(r)}, "
                         f"potential {r['potential_gy']:.1f} Gy)</h3>")
            parts.append(QA_KEY)
            parts.append(self._notes(pq))
            parts.append(self._criteria_table(pq, res.coverage))
            if keep is None or pq.id in keep:
                parts.append(self.figures.get(pq.id, ""))
            else:
                parts.append("<p class='meta'>images left out (--report-max)</p>")
            parts.append("</div>")
        parts.append("</body></html>")
        return write_html_atomic(self.out / "report.html", parts)
