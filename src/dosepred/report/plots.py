"""Figures of a report: cumulative DVHs (matplotlib, Agg; PNG files or data URIs). The dose slices
are drawn by :mod:`dosepred.report.views`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dvh import DVH, roi_metrics, roi_voxel_indices
from ..metrics import parse_metric, v_threshold
from ..patient import Patient
from ..qa.result import IMPROVEMENT_FLAGS, coverage_pct
from .views import roi_colours as rgb255

LINESTYLES = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plain(text: str) -> str:
    """``text`` (an ROI name, a patient id) as matplotlib is to draw it, as it is: a ``$`` escaped (a
    pair of them is mathtext: "Ring $x_$" ended the report with a ParseSyntaxException) and a leading
    underscore kept from the legend (which leaves out labels starting with one: "_PTV_opt" drew an
    unlabelled curve)."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def roi_colours(names: list[str]) -> dict[str, tuple]:
    """The views' ROI colours (:data:`dosepred.report.views.PALETTE`) as matplotlib RGB (0-1)."""
    return {n: tuple(v / 255.0 for v in c) for n, c in rgb255(names).items()}


def _dvh_axes(ax, handles: list, title: str) -> None:  # type: ignore[no-untyped-def]
    """Legends (ROI colours; line styles and markers from ``handles``), labels, limits and title of a
    cumulative DVH plot."""
    leg1 = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="ROI", title_fontsize=8,
                     frameon=False)
    ax.add_artist(leg1)
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8, frameon=False)
    ax.set_xlabel("dose (Gy)")
    ax.set_ylabel("volume (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(plain(title), fontsize=10)


def plot_dvh(path: Path, ref: Patient, preds: dict[str, np.ndarray], bin_width: float = 0.25) -> None:
    """Cumulative DVHs of every present ROI: reference solid, each prediction in its own dash style."""
    plt = _plt()
    idx = roi_voxel_indices(ref)
    names = list(idx)
    col = roi_colours(list(ref.roi_set.names))
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
    vox = ref.voxel_volume_mm3
    assert ref.dose is not None
    rd = ref.dose.ravel()
    for n in names:
        d = DVH(rd[idx[n]], vox, bin_width)
        ax.plot(d.edges, d.cumulative("%"), color=col[n], lw=1.6, label=plain(n))
        for k, pd in enumerate(preds.values()):
            dp = DVH(pd.ravel()[idx[n]], vox, bin_width)
            ax.plot(dp.edges, dp.cumulative("%"), color=col[n], lw=1.3, ls=LINESTYLES[k % len(LINESTYLES)])
    # style legend: reference vs each prediction
    handles = [plt.Line2D([], [], color="k", lw=1.6, label="reference")]
    handles += [plt.Line2D([], [], color="k", lw=1.3, ls=LINESTYLES[k % len(LINESTYLES)], label=plain(label))
                for k, label in enumerate(preds)]
    _dvh_axes(ax, handles, f"{ref.id}: cumulative DVH")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fig_data_uri(fig) -> str:
    """A matplotlib figure as a base64 PNG data URI (the figure is closed)."""
    import base64
    import io

    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _marker_volume(metric: str, plan_dvh: DVH) -> float | None:
    """Volume (%) at which a dose criterion sits on a DVH: D95% at 95, D0.1cc at 0.1 cc of the ROI,
    Dmax at 0, Dmin at 100, Dmean where the plan's DVH crosses its mean; None for V-metrics."""
    m = parse_metric(metric)
    if m.kind == "D":
        if m.unit == "%":
            return float(m.value or 0)
        return float(min(100.0, 100.0 * (m.value or 0) / max(plan_dvh.volume_cc, 1e-9)))
    if m.kind == "Dmax":
        return 0.0
    if m.kind == "Dmin":
        return 100.0
    if m.kind == "Dmean":
        return float(plan_dvh.volume_at_dose(plan_dvh.mean, "%"))
    return None


def dvh_qa_uri(plan: Patient, pred: np.ndarray, criteria: list, title: str = "",
               bin_width: float = 0.25, band: dict[str, tuple | None] | None = None,
               coverage: float | None = None) -> str:
    """Cumulative DVHs for plan QA: plan solid, prediction dashed; each criterion as a marker at its
    DVH point (plan value, with the interval as an error bar and the limit as a black tick); flagged
    criteria as triangles. ``criteria``: :class:`dosepred.qa.result.CriterionQA` items.

    The band around each predicted DVH: with ``band`` (ROI -> (levels %, lower, upper offsets in Gy),
    :meth:`dosepred.qa.check.QAChecker.dvh_band`), the calibrated pointwise interval of D at each volume
    level, drawn from the predicted D at those levels; ROIs without one get no band. Without
    ``band`` (a calibration that has none), the predicted DVH shifted by the interval of the ROI's
    first dose criterion, labelled *illustrative*: it is not calibrated along the curve."""
    plt = _plt()
    idx = roi_voxel_indices(plan)
    col = roi_colours(list(plan.roi_set.names))
    fig, ax = plt.subplots(figsize=(9.0, 4.8), dpi=96)
    vox = plan.voxel_volume_mm3
    assert plan.dose is not None
    rd, pdv = plan.dose.ravel(), np.asarray(pred).ravel()
    dvhs: dict[str, DVH] = {}
    banded = 0  # ROIs drawn with a calibrated band
    first_crit = {}
    for c in criteria:
        if c.unit == "Gy" and c.roi not in first_crit:
            first_crit[c.roi] = c
    for n in idx:
        d = DVH(rd[idx[n]], vox, bin_width)
        dvhs[n] = d
        dp = DVH(pdv[idx[n]], vox, bin_width)
        ax.plot(d.edges, d.cumulative("%"), color=col[n], lw=1.6, label=plain(n))
        ax.plot(dp.edges, dp.cumulative("%"), color=col[n], lw=1.1, ls="--")
        if band is not None:
            b = band.get(n)
            if b is not None:
                levels, lo, hi = b
                dv = np.asarray(roi_metrics(pdv[idx[n]], [f"D{v:g}%" for v in levels], vox))
                ax.fill_betweenx(levels, np.maximum(dv + lo, 0.0), np.maximum(dv + hi, 0.0), color=col[n],
                                 alpha=0.15, lw=0)
                banded += 1
            continue
        c = first_crit.get(n)
        if c is not None and c.high == c.high and np.isfinite(c.high) and np.isfinite(c.low):
            y = dp.cumulative("%")
            ax.fill_betweenx(y, dp.edges + (c.low - c.predicted), dp.edges + (c.high - c.predicted),
                             color=col[n], alpha=0.15, lw=0, hatch="//")
    ticks: set[str] = set()  # the limit ticks drawn
    for c in criteria:
        if c.roi not in dvhs:
            continue
        colour = col[c.roi]
        flagged = any(f.startswith(IMPROVEMENT_FLAGS) for f in c.flags)
        mk = "^" if flagged else "o"
        m = parse_metric(c.metric)
        if m.kind == "V":
            rx = None
            for r in plan.roi_set:
                if r.name == c.roi:
                    rx = r.prescription
            try:
                x = v_threshold(m, rx)
            except Exception:  # noqa: BLE001 - no prescription: no marker
                continue
            ax.errorbar([x], [c.plan], yerr=[[max(c.plan - c.low, 0)], [max(c.high - c.plan, 0)]], fmt=mk,
                        color=colour, mec="k", ms=7, capsize=3, lw=1.2)
            if c.limit is not None:
                ax.plot([x], [c.limit], marker="_", color="k", ms=14, mew=2)
                ticks.add("_")
            continue
        yv = _marker_volume(c.metric, dvhs[c.roi])
        if yv is None:
            continue
        ax.errorbar([c.plan], [yv], xerr=[[max(c.plan - c.low, 0)], [max(c.high - c.plan, 0)]], fmt=mk,
                    color=colour, mec="k", ms=7, capsize=3, lw=1.2)
        if c.limit is not None:
            ax.plot([c.limit], [yv], marker="|", color="k", ms=14, mew=2)
            ticks.add("|")
    cov = "" if coverage is None else f"{coverage_pct(coverage)} "
    if band is not None and banded:
        band_handle = plt.matplotlib.patches.Patch(
            color="k", alpha=0.15, label=f"{cov}band of D at each volume\n(calibrated, pointwise)")
    elif band is not None:  # a calibration with bands, none of them finite at this coverage or for these ROIs
        band_handle = plt.matplotlib.patches.Patch(
            facecolor="none", edgecolor="none",
            label=f"no {cov}band: too few calibration\npatients for it (see the criteria table)")
    else:
        band_handle = plt.matplotlib.patches.Patch(facecolor="k", alpha=0.15, hatch="//",
                                                   label="illustrative band: first criterion's\n"
                                                         "interval, not calibrated along the curve")
    handles = [plt.Line2D([], [], color="k", lw=1.6, label="plan"),
               plt.Line2D([], [], color="k", lw=1.1, ls="--", label="prediction"),
               band_handle,
               plt.Line2D([], [], color="w", marker="o", mec="k", mfc="grey", label="criterion (plan)"),
               plt.Line2D([], [], color="w", marker="^", mec="k", mfc="grey", label="flagged criterion"),
               # a limit's tick across its axis: dose limits (D-metrics, means) vertical, volume limits
               # (V-metrics) horizontal; the legend shows the ones drawn
               *[plt.Line2D([], [], color="k", marker=t, ls="", ms=12, mew=2, label=label)
                 for t, label in (("|", "dose limit" if "_" in ticks else "limit"),
                                  ("_", "volume limit" if "|" in ticks else "limit")) if t in ticks]]
    _dvh_axes(ax, handles, title or f"{plan.id}: cumulative DVH")
    # fixed margins (legends right of the axes): tight_layout would draw the figure once more
    fig.subplots_adjust(left=0.075, right=0.725, bottom=0.1, top=0.93)
    return fig_data_uri(fig)


def dvh_uri(ref: Patient, preds: dict[str, np.ndarray], bin_width: float = 0.25) -> str:
    """:func:`plot_dvh` as a data URI (for the self-contained evaluation report)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "dvh.png"
        plot_dvh(p, ref, preds, bin_width)
        import base64

        return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
